// Dense layer with bf16 weights: y[t, row_start + r] (+)= sum_k x[t, k] * W[r, k] + bias[row_start + r].
// Bindings: x [count, k] f32, W rows [rows, k] bf16 (this buffer's part of the matrix), bias [n_out]
// f32, y [count, n_out] f32. Grid: (ceil(rows / R), ceil(count / TT)); each workgroup computes R
// rows for TT tokens so a weight word is read once per TT tokens. ACCUMULATE adds into y (the
// residual stream) instead of overwriting. Variants: SUBGROUPS.
#include "common/step.wgsl"
#include "common/bf16.wgsl"

struct Params {
    k: u32,
    rows: u32,
    row_start: u32,
    n_out: u32,
    count_which: u32,
    has_bias: u32,
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
const R: u32 = 4u;
const TT: u32 = 4u;
const NV: u32 = R * TT;
#include "common/reduce.wgsl"

@compute @workgroup_size(WG)
fn main(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    reduce_setup(lanes);
    let lid = lanes.lid;
    let count = step_count(p.count_which);
    let r0 = wg.x * R;
    let t0 = wg.y * TT;
    let half_k = p.k / 2u;
    var acc: array<f32, NV>;
    for (var i = lid; i < half_k; i += WG) {
        var xv: array<vec2<f32>, TT>;
        for (var tt = 0u; tt < TT; tt++) {
            let t = t0 + tt;
            if t < count {
                xv[tt] = vec2<f32>(x[t * p.k + 2u * i], x[t * p.k + 2u * i + 1u]);
            }
        }
        for (var r = 0u; r < R; r++) {
            if r0 + r < p.rows {
                let word = w[(r0 + r) * half_k + i];
                let wv = vec2<f32>(bf16_lo(word), bf16_hi(word));
                for (var tt = 0u; tt < TT; tt++) {
                    acc[r * TT + tt] += dot(wv, xv[tt]);
                }
            }
        }
    }
    reduce_sum(&acc);
    if lid < NV {
        let row = r0 + lid / TT;
        let t = t0 + lid % TT;
        if row < p.rows && t < count {
            let col = p.row_start + row;
            var v = red[lid];
            if p.has_bias != 0u {
                v += bias[col];
            }
            let o = t * p.n_out + col;
            if p.accumulate != 0u {
                y[o] += v;
            } else {
                y[o] = v;
            }
        }
    }
}
