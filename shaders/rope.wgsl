// RoPE (YaRN) on q and k, and the KV-cache write. Rotates halves: dims i and i + D/2 form a pair.
// cos/sin come from a table computed on the host exactly as the reference does (f32 product
// position * inv_freq, then cos, then the YaRN attention factor), so long positions agree too.
// Bindings: tokens [T], table [max_pos, D/2] vec2 (cos, sin), qkv [T, (NH + 2 NKV) * D] f32 (q is
// rotated in place), k_cache and v_cache: the paged pools (common/kv.wgsl), written at the
// token's kv_slot[kv_kind]. Grid: (1, T). Variants: KV_F16 stores the cache in f16 (half the
// memory and attention bandwidth).
#include "common/kv.wgsl"
#include "common/step.wgsl"

struct Params {
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    kv_kind: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> tokens: array<TokenInfo>;
@group(0) @binding(3) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<kv>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<kv>;
#include "common/rope.wgsl"

// One workgroup per token: 256 threads cover the heads of a decode step in a few passes.
const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    let tok = tokens[t];
    let d = p.head_dim;
    let half = d / 2u;
    let base = t * (p.n_heads + 2u * p.n_kv) * d;
    for (var idx = lid; idx < (p.n_heads + 2u * p.n_kv) * half; idx += WG) {
        let head = idx / half;
        let i = idx % half;
        let off = base + head * d + i;
        let o = rope_pair(tok, head, i, vec2<f32>(qkv[off], qkv[off + half]));
        if head < p.n_heads {
            qkv[off] = o.x;
            qkv[off + half] = o.y;
        }
    }
}
