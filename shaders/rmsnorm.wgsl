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

// Values i0, i0 + WG, ... (UNROLL of them, 0 past the row) of the row at xb, their loads in flight
// together: a loop of one load a trip waits out each in turn (12 for a 2880-wide row). Sums over
// them run in the order a one-value loop would take.
fn lane_values(xb: u32, i0: u32) -> array<f32, UNROLL> {
    var v: array<f32, UNROLL>;
    for (var u = 0u; u < UNROLL; u++) {
        let i = i0 + u * WG;
        v[u] = select(0.0, x[xb + min(i, p.n - 1u)], i < p.n);
    }
    return v;
}

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
    let xb = src * p.n;
    var acc: array<f32, NV>;
    for (var i0 = lid; i0 < p.n; i0 += UNROLL * WG) {
        let v = lane_values(xb, i0);
        for (var u = 0u; u < UNROLL; u++) {
            acc[0] += v[u] * v[u];
        }
    }
    reduce_sum(&acc);
    let scale = inverseSqrt(red[0] / f32(p.n) + p.eps);
    for (var i0 = lid; i0 < p.n; i0 += UNROLL * WG) {
        let v = lane_values(xb, i0);
        for (var u = 0u; u < UNROLL; u++) {
            // The gain loaded unconditionally (clamped), so its loads need not wait on the test.
            let i = i0 + u * WG;
            let gain = w[min(i, p.n - 1u)];
            if i < p.n {
                out[r * p.n + i] = gain * (v[u] * scale);
            }
        }
    }
}
