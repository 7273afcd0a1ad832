// MoE router top-k: for each token pick the K largest router logits (lower index wins a tie) and
// weight them by the softmax over those K logits only.
// Bindings: logits [T, E] f32 (router linear output, bias included), idx [T, K] u32, wts [T, K] f32.
// Grid: (1, ceil(T / WG)), one thread per token.
#include "common/step.wgsl"

struct Params {
    n_experts: u32,
    top_k: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> idx: array<u32>;
@group(0) @binding(4) var<storage, read_write> wts: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32,
        @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y * WG + lid;
    if t >= step.tokens {
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
            let v = logits[t * e_n + e];
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
