// RMSNorm: out[r, :] = w * (x[src, :] * rsqrt(mean(x[src, :]^2) + eps)), src = r, or rows[r] when
// gathering (the final norm picks only the positions whose logits are wanted).
// Bindings: x [*, n] f32, w [n] f32, rows [count] u32, out [count, n] f32.
// Grid: (1, count). Variants: SUBGROUPS.
#include "common/step.wgsl"

struct Params {
    n: u32,
    eps: f32,
    count_which: u32,
    gather: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> rows: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// 256 threads: one workgroup per row, so a decode step's norm is one workgroup's latency.
const WG: u32 = 256u;
const UNROLL: u32 = 4u;
const NV: u32 = 1u;
#include "common/reduce.wgsl"

@compute @workgroup_size(WG)
fn main(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    reduce_setup(lanes);
    let lid = lanes.lid;
    let r = wg.y;
    if r >= step_count(p.count_which) {
        return;
    }
    var src = r;
    if p.gather != 0u {
        src = rows[r];
    }
    // UNROLL values a lane at a time, their loads in flight together (a loop of one load a trip
    // waits out each in turn: 12 for a 2880-wide row), summed in the same order.
    let xb = src * p.n;
    var acc: array<f32, NV>;
    for (var i0 = lid; i0 < p.n; i0 += UNROLL * WG) {
        var v: array<f32, UNROLL>;
        for (var u = 0u; u < UNROLL; u++) {
            let i = i0 + u * WG;
            v[u] = select(0.0, x[xb + min(i, p.n - 1u)], i < p.n);
        }
        for (var u = 0u; u < UNROLL; u++) {
            acc[0] += v[u] * v[u];
        }
    }
    reduce_sum(&acc);
    let scale = inverseSqrt(red[0] / f32(p.n) + p.eps);
    for (var i0 = lid; i0 < p.n; i0 += UNROLL * WG) {
        var v: array<f32, UNROLL>;
        var g: array<f32, UNROLL>;
        for (var u = 0u; u < UNROLL; u++) {
            let i = min(i0 + u * WG, p.n - 1u);
            v[u] = x[xb + i];
            g[u] = w[i];
        }
        for (var u = 0u; u < UNROLL; u++) {
            let i = i0 + u * WG;
            if i < p.n {
                out[r * p.n + i] = g[u] * (v[u] * scale);
            }
        }
    }
}
