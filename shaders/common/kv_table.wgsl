// Reading the paged cache through a sequence slot's block table: key position `pos` of slot
// `seq` lives in block kv_table[seq * entries + pos / KV_BLOCK]. The including file binds
// `kv_table` (array<u32>) and its `p` has entries (per slot), n_kv and head_dim.
#include "common/kv.wgsl"

fn kv_at(seq: u32, pos: u32, kvh: u32) -> u32 {
    let block = kv_table[seq * p.entries + pos / KV_BLOCK];
    return kv_at_slot(block * KV_BLOCK + pos % KV_BLOCK, kvh);
}
