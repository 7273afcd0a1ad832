// Dense layer with bf16 weights for passes of a few tokens (decode), one token per workgroup row:
// y[t, row_start + r] (+)= sum_k in[t, k] * W[r, k] + bias[row_start + r], in = x, or with NORM
// in = x * rsqrt(mean(x^2) + eps) * g: the RMSNorm that precedes the projection, fused so the
// normed vector never goes through memory.
// Bindings: x [count, k] f32 (k a multiple of 8), W rows [rows, k] bf16 (this buffer's rows of
// the matrix, read 8 weights per 16-byte load), bias [n_out] f32, y [count, n_out] f32,
// g [k] f32 (NORM only).
// Grid: (min(ceil(rows / ROWS), 65535), count); workgroups stride over the row blocks. Each of
// the NG row groups of GL lanes takes R rows (a lane reads 8-weight units lane, lane + GL, ... of
// each), so even a per-layer matrix spreads over thousands of short workgroups: at batch 1 a
// workgroup's serial latency, not the bandwidth, is what costs (PERF.md v0.9 and v0.10).
// Variants: SUBGROUPS, NORM. ACCUMULATE (a parameter) adds into y, the residual stream.
#include "common/step.wgsl"
#include "common/bf16.wgsl"

#include "common/linear_params.wgsl"
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
#include "common/linear_out.wgsl"
#ifdef NORM
@group(0) @binding(6) var<storage, read> g: array<vec4<f32>>;
#endif

// Rows per workgroup (the Rust side reads this line to size the grid).
const ROWS: u32 = 4u;
const WG: u32 = 128u;
const GL: u32 = 32u;
const R: u32 = ROWS / (WG / GL);
#include "common/row_group.wgsl"
#ifdef NORM
// The fused norm's sum of squares is one workgroup-wide sum.
const NV: u32 = 1u;
#include "common/reduce.wgsl"
#endif

@compute @workgroup_size(WG)
fn main(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = wg.y;
    if t >= step_count(p.count_which) {
        return;
    }
    let units = p.k / 8u;
    let xb = t * 2u * units;
    var scale = 1.0;
#ifdef NORM
    reduce_setup(l);
    var ss: array<f32, NV>;
    for (var i = l.lid; i < 2u * units; i += WG) {
        let v = x[xb + i];
        ss[0] += dot(v, v);
    }
    reduce_sum(&ss);
    scale = inverseSqrt(red[0] / f32(p.k) + p.eps);
#endif
    let blocks = (p.rows + ROWS - 1u) / ROWS;
    let lane = l.lid % GL;
    for (var rb = wg.x; rb < blocks; rb += nwg.x) {
        let r0 = rb * ROWS + (l.lid / GL) * R;
        var acc: array<f32, R>;
        for (var i = lane; i < units; i += GL) {
            var a = x[xb + 2u * i] * scale;
            var b = x[xb + 2u * i + 1u] * scale;
#ifdef NORM
            a *= g[2u * i];
            b *= g[2u * i + 1u];
#endif
            for (var r = 0u; r < R; r++) {
                if r0 + r < p.rows {
                    acc[r] += bf16_dot8(w[(r0 + r) * units + i], a, b);
                }
            }
        }
        group_sums(&acc, l);
        if lane == 0u {
            for (var r = 0u; r < R; r++) {
                let row = r0 + r;
                if row < p.rows {
                    store_out(t, p.row_start + row, acc[r]);
                }
            }
        }
    }
}
