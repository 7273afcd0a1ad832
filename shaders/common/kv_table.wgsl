// Reading the paged cache through a sequence slot's block table: key position `pos` of slot
// `seq` lives in block kv_table[seq * ring + (pos / KV_BLOCK) % ring]. The including file binds
// `kv_table` (array<u32>) and its `p` has ring (entries per slot), n_kv and head_dim.
#include "common/kv.wgsl"

fn kv_at(seq: u32, pos: u32, kvh: u32) -> u32 {
    let block = kv_table[seq * p.ring + (pos / KV_BLOCK) % p.ring];
    return kv_at_slot(block * KV_BLOCK + pos % KV_BLOCK, kvh);
}
