// MoE experts with MXFP4 weights, dequantized in registers (experts stay packed on the GPU).
// Weights of experts [e_start, e_start + e_count) sit in this dispatch's buffers (the expert set may
// be split over buffers); slots routed to other experts are skipped and done by another dispatch.
//
// GATE_UP: for token-expert slot s = t * K + j with expert e = idx[s]:
//   g = W_gate_up[e] h[t] + bias[e] (2I values, even = gate, odd = up);
//   gate = min(g_even, limit); up = clamp(g_odd, -limit, limit);   (the clamp is upper-only on gate)
//   act[s, i] = gate * sigmoid(alpha * gate) * (up + 1).
//   Bindings: h [T, H], idx [T*K], blocks [e_count, 2I, H/32, 16] u8, scales [e_count, 2I, H/32] u8,
//   bias [E, 2I] f32, act [T*K, I]. Grid: (ceil(I / (R/2)), T*K).
// DOWN: x[t, n] += sum_j wts[t, j] * (W_down[e_j, n] act[t*K + j] + bias[e_j, n]) over the slots
//   whose expert is here; the residual add is fused.
//   Bindings: act, idx, wts [T*K], blocks [e_count, H, I/32, 16], scales, bias [E, H], x [T, H].
//   Grid: (ceil(H / R), T).
// Variants: GATE_UP or DOWN (different bindings), SUBGROUPS.
#include "common/step.wgsl"
#include "common/mxfp4.wgsl"

struct Params {
    hidden: u32,
    inter: u32,
    top_k: u32,
    e_start: u32,
    e_count: u32,
    limit: f32,
    alpha: f32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;

const WG: u32 = 64u;
const R: u32 = 8u;
const NV: u32 = R;
#include "common/reduce.wgsl"

// Dot of block `b` of MXFP4 row `row` (n_blocks blocks per row) with the 32 inputs in xs.
fn block_dot(row: u32, b: u32, n_blocks: u32, xs: array<vec4<f32>, 8>) -> f32 {
    let blk = row * n_blocks + b;
    let w = vec4<u32>(blocks[blk * 4u], blocks[blk * 4u + 1u], blocks[blk * 4u + 2u], blocks[blk * 4u + 3u]);
    let s = e8m0(byte_of(scales[blk / 4u], blk));
    let d = fp4_dot8(w.x, xs[0], xs[1]) + fp4_dot8(w.y, xs[2], xs[3])
        + fp4_dot8(w.z, xs[4], xs[5]) + fp4_dot8(w.w, xs[6], xs[7]);
    return d * s;
}

#ifdef GATE_UP
@group(0) @binding(2) var<storage, read> h: array<f32>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read> blocks: array<u32>;
@group(0) @binding(5) var<storage, read> scales: array<u32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> act: array<f32>;

@compute @workgroup_size(WG)
fn gate_up(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    reduce_setup(lanes);
    let lid = lanes.lid;
    let s = wg.y;
    if s >= step.slots {
        return;
    }
    let e = idx[s];
    if e < p.e_start || e >= p.e_start + p.e_count {
        return;
    }
    let t = s / p.top_k;
    let rows = 2u * p.inter;
    let r0 = wg.x * R;
    let n_blocks = p.hidden / 32u;
    let row_base = (e - p.e_start) * rows;
    var acc: array<f32, NV>;
    for (var b = lid; b < n_blocks; b += WG) {
        var xs: array<vec4<f32>, 8>;
        let xb = t * p.hidden + b * 32u;
        for (var q = 0u; q < 8u; q++) {
            xs[q] = vec4<f32>(h[xb + 4u * q], h[xb + 4u * q + 1u], h[xb + 4u * q + 2u], h[xb + 4u * q + 3u]);
        }
        for (var r = 0u; r < R; r++) {
            if r0 + r < rows {
                acc[r] += block_dot(row_base + r0 + r, b, n_blocks, xs);
            }
        }
    }
    reduce_sum(&acc);
    if lid < R / 2u {
        let i = r0 / 2u + lid;
        if i < p.inter {
            var gate = red[2u * lid] + bias[e * rows + 2u * i];
            var up = red[2u * lid + 1u] + bias[e * rows + 2u * i + 1u];
            gate = min(gate, p.limit);
            up = clamp(up, -p.limit, p.limit);
            let glu = gate / (1.0 + exp(-p.alpha * gate));
            act[s * p.inter + i] = glu * (up + 1.0);
        }
    }
}
#endif

#ifdef DOWN
@group(0) @binding(2) var<storage, read> act: array<f32>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read> wts: array<f32>;
@group(0) @binding(5) var<storage, read> blocks: array<u32>;
@group(0) @binding(6) var<storage, read> scales: array<u32>;
@group(0) @binding(7) var<storage, read> bias: array<f32>;
@group(0) @binding(8) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WG)
fn down(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    reduce_setup(lanes);
    let lid = lanes.lid;
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    let r0 = wg.x * R;
    let n_blocks = p.inter / 32u;
    var acc: array<f32, NV>;
    for (var j = 0u; j < p.top_k; j++) {
        let s = t * p.top_k + j;
        let e = idx[s];
        if e < p.e_start || e >= p.e_start + p.e_count {
            continue;
        }
        let wj = wts[s];
        let row_base = (e - p.e_start) * p.hidden;
        for (var b = lid; b < n_blocks; b += WG) {
            var xs: array<vec4<f32>, 8>;
            let xb = s * p.inter + b * 32u;
            for (var q = 0u; q < 8u; q++) {
                xs[q] = vec4<f32>(act[xb + 4u * q], act[xb + 4u * q + 1u], act[xb + 4u * q + 2u], act[xb + 4u * q + 3u]);
            }
            for (var r = 0u; r < R; r++) {
                if r0 + r < p.hidden {
                    acc[r] += wj * block_dot(row_base + r0 + r, b, n_blocks, xs);
                }
            }
        }
    }
    reduce_sum(&acc);
    if lid < R {
        let n = r0 + lid;
        if n < p.hidden {
            var v = red[lid];
            for (var j = 0u; j < p.top_k; j++) {
                let e = idx[t * p.top_k + j];
                if e >= p.e_start && e < p.e_start + p.e_count {
                    v += wts[t * p.top_k + j] * bias[e * p.hidden + n];
                }
            }
            x[t * p.hidden + n] += v;
        }
    }
}
#endif
