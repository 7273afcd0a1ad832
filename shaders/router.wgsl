// The MoE router: h = RMSNorm(x) * g (written for the experts) and the router logits W h + bias.
// MAIN (passes of many tokens), one workgroup per token: the norm, all logits, then the K largest
//   (lower index wins a tie), weighted by the softmax over those K only.
//   Bindings: x [T, H] f32, g [H] f32, W [E, H] bf16 (read 8 weights per 16-byte load), bias [E]
//   f32, h [T, H] f32, idx [T, K] u32, wts [T, K] f32. Grid: (1, T).
// PARTIAL (decode): one token's logits are spread over ceil(H / (8 SLICE_UNITS)) workgroups, each
//   taking a slice of the inputs for all experts (a row group's lanes take consecutive 8-weight
//   units of its rows, so each lane has a few independent loads): part[t, slice, e] = W[e, slice]
//   . h[t, slice] (+ bias[e] in slice 0), and the slice of h. A workgroup alone would walk the
//   whole matrix serially (33 us a layer on the H200); moe_vec's gate_up adds the slices up and
//   picks the experts itself. Bindings: x, g, W, bias, h, part [T, slices, E].
//   Grid: (slices, T).
// E <= MAX_E, H a multiple of 8. Variants: PARTIAL, SUBGROUPS.
#include "common/step.wgsl"
#include "common/bf16.wgsl"

struct Params {
    hidden: u32,
    n_experts: u32,
    top_k: u32,
    eps: f32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> h: array<vec4<f32>>;
#ifdef PARTIAL
@group(0) @binding(7) var<storage, read_write> part: array<f32>;
#else
@group(0) @binding(7) var<storage, read_write> idx: array<u32>;
@group(0) @binding(8) var<storage, read_write> wts: array<f32>;
#endif

const WG: u32 = 256u;
// Row groups of GL lanes take R experts each, NG * R experts per pass over the input.
const GL: u32 = 32u;
const R: u32 = 4u;
const NV: u32 = 1u;
const MAX_E: u32 = 256u;
// 8-input units per PARTIAL slice (the Rust side reads this line).
const SLICE_UNITS: u32 = 32u;
// Passes of up to this many tokens (or moe_vec's, if more) take PARTIAL, and moe_vec's ROUTE
// picks their experts (the Rust side reads this line): MAIN's one workgroup a token walks the
// whole matrix (H200, batch 64: 751 us a step against 254 + 180).
const PARTIAL_MAX_TOKENS: u32 = 64u;
#include "common/reduce.wgsl"
const NSUM: u32 = R;
#include "common/row_group.wgsl"

// RMSNorm's scale for token t (its x starts at vec4 index xb). Called from uniform control flow.
fn norm_scale(l: Lanes, xb: u32) -> f32 {
    reduce_setup(l);
    var ss: array<f32, NV>;
    for (var i = l.lid; i < p.hidden / 4u; i += WG) {
        let v = x[xb + i];
        ss[0] += dot(v, v);
    }
    reduce_sum(&ss);
    return inverseSqrt(red[0] / f32(p.hidden) + p.eps);
}

// Router rows r0 .. r0 + R (those below E) dotted with the normed input over the 8-weight units
// [u_begin, u_end) of the token at vec4 index xb: lane i of a group reads units u_begin + i,
// + GL, ...; the sums are over the group. Called from uniform control flow.
fn logit_rows(l: Lanes, xb: u32, scale: f32, u_begin: u32, u_end: u32, r0: u32) -> array<f32, R> {
    let units = p.hidden / 8u;
    var acc: array<f32, R>;
    for (var u = u_begin + l.lid % GL; u < u_end; u += GL) {
        let a = x[xb + 2u * u] * scale * g[2u * u];
        let b = x[xb + 2u * u + 1u] * scale * g[2u * u + 1u];
        for (var r = 0u; r < R; r++) {
            if r0 + r < p.n_experts {
                acc[r] += bf16_dot8(w[(r0 + r) * units + u], a, b);
            }
        }
    }
    group_sums(&acc, l);
    return acc;
}

#ifdef PARTIAL
@compute @workgroup_size(WG)
fn partial(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    let xb = t * (p.hidden / 4u);
    let scale = norm_scale(l, xb);
    let units = p.hidden / 8u;
    let u0 = wg.x * SLICE_UNITS;
    let u_end = min(u0 + SLICE_UNITS, units);
    for (var i = 2u * u0 + l.lid; i < 2u * u_end; i += WG) {
        h[xb + i] = x[xb + i] * scale * g[i];
    }
    let e_n = p.n_experts;
    let lane = l.lid % GL;
    for (var eb = 0u; eb < e_n; eb += NG * R) {
        let r0 = eb + (l.lid / GL) * R;
        let acc = logit_rows(l, xb, scale, u0, u_end, r0);
        if lane == 0u {
            for (var r = 0u; r < R; r++) {
                let e = r0 + r;
                if e < e_n {
                    part[(t * nwg.x + wg.x) * e_n + e] = acc[r] + select(0.0, bias[e], wg.x == 0u);
                }
            }
        }
    }
}
#else
// The token's logits, then the chosen ones by rank.
var<workgroup> lg: array<f32, MAX_E>;
var<workgroup> picked: array<f32, MAX_E>;

@compute @workgroup_size(WG)
fn main(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    let n4 = p.hidden / 4u;
    let xb = t * n4;
    let scale = norm_scale(l, xb);
    for (var i = l.lid; i < n4; i += WG) {
        h[xb + i] = x[xb + i] * scale * g[i];
    }

    // Logits: each row group takes R experts at a time over all the inputs.
    let e_n = p.n_experts;
    let lane = l.lid % GL;
    for (var eb = 0u; eb < e_n; eb += NG * R) {
        let r0 = eb + (l.lid / GL) * R;
        let acc = logit_rows(l, xb, scale, 0u, p.hidden / 8u, r0);
        if lane == 0u {
            for (var r = 0u; r < R; r++) {
                if r0 + r < e_n {
                    lg[r0 + r] = acc[r] + bias[r0 + r];
                }
            }
        }
    }
    workgroupBarrier();

    // Lane e ranks expert e by how many experts beat it (a higher logit, or an equal one at a
    // lower index): the K best have ranks 0..K-1, all found at once.
    let k_n = p.top_k;
    for (var e = l.lid; e < e_n; e += WG) {
        let v = lg[e];
        var rank = 0u;
        for (var o = 0u; o < e_n; o++) {
            let u = lg[o];
            if u > v || (u == v && o < e) {
                rank++;
            }
        }
        if rank < k_n {
            idx[t * k_n + rank] = e;
            picked[rank] = v;
        }
    }
    workgroupBarrier();
    if l.lid != 0u {
        return;
    }
    // Softmax over the K chosen logits; the first is the largest.
    var sum = 0.0;
    for (var j = 0u; j < k_n; j++) {
        sum += exp(picked[j] - picked[0]);
    }
    for (var j = 0u; j < k_n; j++) {
        wts[t * k_n + j] = exp(picked[j] - picked[0]) / sum;
    }
}
#endif
