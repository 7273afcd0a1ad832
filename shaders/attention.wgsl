// Causal attention with sinks, sliding window and GQA, one workgroup per (query head, token).
// Query head h reads KV head h / (NH / NKV). The sink is a learned logit per head that joins the
// softmax denominator only: p_j = exp(s_j - m) / (sum exp(s_j - m) + exp(sink - m)). Starting the
// online softmax at m = sink, l = 1 includes it exactly once.
// Bindings: tokens [T], qkv [T, (NH + 2 NKV) * D] (q already rotated), k_cache, v_cache (the
// paged pools, read through kv_table: common/kv_table.wgsl), sinks [NH] f32, out [T, NH * D] f32,
// kv_table [seqs, entries] u32.
// Grid: (NH, T). Keys are visited in chunks of WG: one score per thread, then the chunk's
// contribution to each output dim. Keys are read 4 dims per load (D is a multiple of 4).
// Variants: KV_F16 (cache stored in f16, math in f32).
#include "common/kv_table.wgsl"
#include "common/step.wgsl"

#include "common/attention_params.wgsl"
@group(0) @binding(2) var<storage, read> tokens: array<TokenInfo>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read> k_cache: array<vec4<kv>>;
@group(0) @binding(5) var<storage, read> v_cache: array<kv>;
@group(0) @binding(6) var<storage, read> sinks: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read> kv_table: array<u32>;

const WG: u32 = 64u;
const MAX_D: u32 = 256u;
const DPT: u32 = MAX_D / WG;
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<vec4<f32>, MAX_D / 4u>;
var<workgroup> score: array<f32, WG>;
var<workgroup> prob: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    let tok = tokens[t];
    let d = p.head_dim;
    let kvh = h / (p.n_heads / p.n_kv);
    let stride = (p.n_heads + 2u * p.n_kv) * d;
    let q0 = t * stride + h * d;
    for (var i = lid; i < d / 4u; i += WG) {
        qs[i] = vec4<f32>(qkv[q0 + 4u * i], qkv[q0 + 4u * i + 1u], qkv[q0 + 4u * i + 2u], qkv[q0 + 4u * i + 3u]);
    }
    workgroupBarrier();

    var start = 0u;
    if p.window > 0u && tok.pos + 1u > p.window {
        start = tok.pos + 1u - p.window;
    }
    var m = sinks[h];
    var l = 1.0;
    var acc: array<f32, DPT>;
    for (var base = start; base <= tok.pos; base += WG) {
        let n = min(WG, tok.pos + 1u - base);
        var s = NEG;
        if lid < n {
            let kb = kv_at(tok.seq, base + lid, kvh) / 4u;
            var dot_qk = 0.0;
            for (var i = 0u; i < d / 4u; i++) {
                dot_qk += dot(qs[i], vec4<f32>(k_cache[kb + i]));
            }
            s = dot_qk * p.scale;
        }
        score[lid] = s;
        workgroupBarrier();
        var m_chunk = NEG;
        for (var j = 0u; j < n; j++) {
            m_chunk = max(m_chunk, score[j]);
        }
        let m_new = max(m, m_chunk);
        let corr = exp(m - m_new);
        // Each key's weight once, shared by every output dim.
        prob[lid] = select(0.0, exp(s - m_new), lid < n);
        workgroupBarrier();
        var psum = 0.0;
        for (var j = 0u; j < n; j++) {
            psum += prob[j];
        }
        l = l * corr + psum;
        for (var k = 0u; k < DPT; k++) {
            let i = lid + k * WG;
            if i < d {
                var a = acc[k] * corr;
                for (var j = 0u; j < n; j++) {
                    let vb = kv_at(tok.seq, base + j, kvh);
                    a += prob[j] * f32(v_cache[vb + i]);
                }
                acc[k] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var k = 0u; k < DPT; k++) {
        let i = lid + k * WG;
        if i < d {
            out[t * p.n_heads * d + h * d + i] = acc[k] / l;
        }
    }
}
