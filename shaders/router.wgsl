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
    var top = -3.0e38;
    for (var j = 0u; j < k_n; j++) {
        var best = -3.0e38;
        var best_e = 0u;
        var found = false;
        for (var e = 0u; e < e_n; e++) {
            var taken = false;
            for (var jj = 0u; jj < j; jj++) {
                taken = taken || idx[t * k_n + jj] == e;
            }
            let v = logits[t * e_n + e];
            if !taken && (!found || v > best) {
                best = v;
                best_e = e;
                found = true;
            }
        }
        idx[t * k_n + j] = best_e;
        wts[t * k_n + j] = best;
        if j == 0u {
            top = best;
        }
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
