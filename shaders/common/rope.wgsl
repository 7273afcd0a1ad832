// RoPE's rotation of one pair and the KV-cache write, shared by rope.wgsl and the epilogues that
// fuse them (linear_vec.wgsl's q/k/v projection, linear.wgsl's k-range sums). The including file
// binds `table` [max_pos, D/2] (cos, sin), `k_cache` and `v_cache` (common/kv.wgsl, included
// first), and its `p` has n_heads, n_kv, head_dim and kv_kind.

// Dims (i, i + D/2) of head `head` of a token's q/k/v row (n_heads q heads, then n_kv k heads,
// then n_kv v heads): q and k heads rotated by the token position's (cos, sin), k and v heads
// stored into the caches at the token's slot. Returns the pair as rotated (v unchanged), for the
// includer to store q.
fn rope_pair(tok: TokenInfo, head: u32, i: u32, x: vec2<f32>) -> vec2<f32> {
    let half = p.head_dim / 2u;
    var o = x;
    if head < p.n_heads + p.n_kv {
        let cs = table[tok.pos * half + i];
        o = vec2<f32>(x.x * cs.x - x.y * cs.y, x.y * cs.x + x.x * cs.y);
    }
    if head >= p.n_heads + p.n_kv {
        let c = kv_at_slot(tok.kv_slot[p.kv_kind], head - p.n_heads - p.n_kv) + i;
        v_cache[c] = kv(o.x);
        v_cache[c + half] = kv(o.y);
    } else if head >= p.n_heads {
        let c = kv_at_slot(tok.kv_slot[p.kv_kind], head - p.n_heads) + i;
        k_cache[c] = kv(o.x);
        k_cache[c + half] = kv(o.y);
    }
    return o;
}
