// The KV cache element type: f16 with KV_F16 (half the memory and attention bandwidth; this file
// must be included first, since `enable` precedes all declarations), f32 otherwise.
#ifdef KV_F16
enable f16;
alias kv = f16;
#else
alias kv = f32;
#endif

// The paged cache (src/model/kv_cache.rs): a layer's pool is [blocks, NKV, KV_BLOCK, D], so the
// positions of one block and head are contiguous. Positions per block (the Rust side reads this
// line):
const KV_BLOCK: u32 = 16u;

// Where head `kvh` of cache slot `slot` (block * KV_BLOCK + offset, as TokenInfo.kv_slot holds
// it) starts. The including file's `p` has n_kv and head_dim.
fn kv_at_slot(slot: u32, kvh: u32) -> u32 {
    return (((slot / KV_BLOCK) * p.n_kv + kvh) * KV_BLOCK + slot % KV_BLOCK) * p.head_dim;
}
