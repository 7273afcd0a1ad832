// MoE router after its projection: h = RMSNorm(x) * g (written for the experts), then the K
// largest router logits (lower index wins a tie), weighted by the softmax over those K only.
// One workgroup per token: all lanes norm, one picks.
// Bindings: x [T, H] f32, g [H] f32, logits [T, E] f32 (bias included), h [T, H] f32,
// idx [T, K] u32, wts [T, K] f32. Grid: (1, T). E <= MAX_E. Variants: SUBGROUPS.
#include "common/step.wgsl"

struct Params {
    hidden: u32,
    n_experts: u32,
    top_k: u32,
    eps: f32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> logits: array<f32>;
@group(0) @binding(5) var<storage, read_write> h: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> idx: array<u32>;
@group(0) @binding(7) var<storage, read_write> wts: array<f32>;

const WG: u32 = 128u;
const NV: u32 = 1u;
const MAX_E: u32 = 256u;
#include "common/reduce.wgsl"

// The token's logits, loaded by all lanes at once: the picking thread then scans fast memory.
var<workgroup> lg: array<f32, MAX_E>;
// The chosen logits by rank.
var<workgroup> picked: array<f32, MAX_E>;

@compute @workgroup_size(WG)
fn main(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    reduce_setup(l);
    let n4 = p.hidden / 4u;
    var ss: array<f32, NV>;
    for (var i = l.lid; i < n4; i += WG) {
        let v = x[t * n4 + i];
        ss[0] += dot(v, v);
    }
    reduce_sum(&ss);
    let scale = inverseSqrt(red[0] / f32(p.hidden) + p.eps);
    for (var i = l.lid; i < n4; i += WG) {
        h[t * n4 + i] = x[t * n4 + i] * scale * g[i];
    }
    let e_n = p.n_experts;
    let k_n = p.top_k;
    for (var e = l.lid; e < e_n; e += WG) {
        lg[e] = logits[t * e_n + e];
    }
    workgroupBarrier();
    // Lane e ranks expert e by how many experts beat it (a higher logit, or an equal one at a
    // lower index): the K best have ranks 0..K-1, all found at once.
    for (var e = l.lid; e < e_n; e += WG) {
        let v = lg[e];
        var rank = 0u;
        for (var o = 0u; o < e_n; o++) {
            let w = lg[o];
            if w > v || (w == v && o < e) {
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
