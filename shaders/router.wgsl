// The MoE router in one workgroup per token: h = RMSNorm(x) * g (written for the experts), the
// router logits W h + bias, then the K largest (lower index wins a tie), weighted by the softmax
// over those K only. One dispatch instead of a projection and a pick: at decode every dispatch
// is a wait for the previous one, and the matrix is small (E x H bf16).
// Bindings: x [T, H] f32, g [H] f32, W [E, H] bf16 (read 8 weights per 16-byte load), bias [E]
// f32, h [T, H] f32, idx [T, K] u32, wts [T, K] f32. Grid: (1, T). E <= MAX_E, H a multiple of 8.
// Variants: SUBGROUPS.
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
@group(0) @binding(7) var<storage, read_write> idx: array<u32>;
@group(0) @binding(8) var<storage, read_write> wts: array<f32>;

const WG: u32 = 256u;
// Row groups of GL lanes take R experts each, NG * R experts per pass over the input.
const GL: u32 = 32u;
const R: u32 = 4u;
const NV: u32 = 1u;
const MAX_E: u32 = 256u;
#include "common/reduce.wgsl"
#include "common/row_group.wgsl"

// The token's logits, then the chosen ones by rank.
var<workgroup> lg: array<f32, MAX_E>;
var<workgroup> picked: array<f32, MAX_E>;

@compute @workgroup_size(WG)
fn main(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    reduce_setup(l);
    let n4 = p.hidden / 4u;
    let xb = t * n4;
    var ss: array<f32, NV>;
    for (var i = l.lid; i < n4; i += WG) {
        let v = x[xb + i];
        ss[0] += dot(v, v);
    }
    reduce_sum(&ss);
    let scale = inverseSqrt(red[0] / f32(p.hidden) + p.eps);
    for (var i = l.lid; i < n4; i += WG) {
        h[xb + i] = x[xb + i] * scale * g[i];
    }

    // Logits: lane i of a group reads 8-weight units i, i + GL, ... of its R rows.
    let e_n = p.n_experts;
    let units = p.hidden / 8u;
    let lane = l.lid % GL;
    for (var eb = 0u; eb < e_n; eb += NG * R) {
        let r0 = eb + (l.lid / GL) * R;
        var acc: array<f32, R>;
        for (var i = lane; i < units; i += GL) {
            let a = x[xb + 2u * i] * scale * g[2u * i];
            let b = x[xb + 2u * i + 1u] * scale * g[2u * i + 1u];
            for (var r = 0u; r < R; r++) {
                if r0 + r < e_n {
                    acc[r] += bf16_dot8(w[(r0 + r) * units + i], a, b);
                }
            }
        }
        group_sums(&acc, l);
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
