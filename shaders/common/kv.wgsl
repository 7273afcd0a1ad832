// The KV cache element type: f16 with KV_F16 (half the memory and attention bandwidth; this file
// must be included first, since `enable` precedes all declarations), f32 otherwise.
#ifdef KV_F16
enable f16;
alias kv = f16;
#else
alias kv = f32;
#endif

// Where head `kvh` of position `pos` of sequence slot `seq` starts in a cache [seqs, cap, NKV, D]
// (slot = pos % cap: the sliding window's ring or the whole context). The including file's `p`
// has cap, n_kv and head_dim.
fn cache_at(seq: u32, pos: u32, kvh: u32) -> u32 {
    return ((seq * p.cap + pos % p.cap) * p.n_kv + kvh) * p.head_dim;
}
