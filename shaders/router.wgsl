// MoE router, whole: h = RMSNorm(x) * g (written for the experts), logits = W h + b, the K largest
// logits (lower index wins a tie), weighted by the softmax over those K only. One workgroup per
// token; norm, projection and top-k never leave it.
// Bindings: x [T, H] f32, g [H] f32, W [E, H] bf16 (8 per 16-byte load), b [E] f32, h [T, H] f32,
// idx [T, K] u32, wts [T, K] f32. Grid: (1, T). E <= MAX_E. Variants: SUBGROUPS.
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

const WG: u32 = 128u;
const R: u32 = 4u;
const MAX_E: u32 = 256u;
#include "common/row_group.wgsl"

var<workgroup> logits: array<f32, MAX_E>;

@compute @workgroup_size(WG)
fn main(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    let units = p.hidden / 8u;
    let xb = t * 2u * units;
    var ss = 0.0;
    for (var i = l.lid; i < 2u * units; i += WG) {
        let v = x[xb + i];
        ss += dot(v, v);
    }
    let scale = inverseSqrt(workgroup_sum(ss, l) / f32(p.hidden) + p.eps);
    for (var i = l.lid; i < 2u * units; i += WG) {
        h[xb + i] = x[xb + i] * scale * g[i];
    }
    let lane = l.lid % GL;
    for (var e0 = 0u; e0 < p.n_experts; e0 += NG * R) {
        let r0 = e0 + (l.lid / GL) * R;
        var acc: array<f32, R>;
        for (var i = lane; i < units; i += GL) {
            let a = x[xb + 2u * i] * scale * g[2u * i];
            let b = x[xb + 2u * i + 1u] * scale * g[2u * i + 1u];
            for (var r = 0u; r < R; r++) {
                if r0 + r < p.n_experts {
                    acc[r] += bf16_dot8(w[(r0 + r) * units + i], a, b);
                }
            }
        }
        group_sums(&acc, l);
        if lane == 0u {
            for (var r = 0u; r < R; r++) {
                if r0 + r < p.n_experts {
                    logits[r0 + r] = acc[r] + bias[r0 + r];
                }
            }
        }
    }
    workgroupBarrier();
    if l.lid != 0u {
        return;
    }
    let e_n = p.n_experts;
    let k_n = p.top_k;
    // Pass j picks the largest logit ranked after pick j-1 in (value descending, index ascending)
    // order, so no list of taken experts is needed.
    var prev_v = 3.0e38;
    var prev_e = 0u;
    var top = 0.0;
    for (var j = 0u; j < k_n; j++) {
        var best = -3.0e38;
        var best_e = e_n;
        for (var e = 0u; e < e_n; e++) {
            let v = logits[e];
            let after_prev = j == 0u || v < prev_v || (v == prev_v && e > prev_e);
            if after_prev && (best_e == e_n || v > best) {
                best = v;
                best_e = e;
            }
        }
        idx[t * k_n + j] = best_e;
        wts[t * k_n + j] = best;
        if j == 0u {
            top = best;
        }
        prev_v = best;
        prev_e = best_e;
    }
    var sum = 0.0;
    for (var j = 0u; j < k_n; j++) {
        let e = exp(wts[t * k_n + j] - top);
        wts[t * k_n + j] = e;
        sum += e;
    }
    for (var j = 0u; j < k_n; j++) {
        wts[t * k_n + j] /= sum;
    }
}
