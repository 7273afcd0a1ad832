//! The paged KV cache. Each layer's keys and values live in a pool of fixed-size blocks
//! [blocks, NKV, KV_BLOCK, D] (f16 where the adapter has SHADER_F16 and the options allow, else
//! f32); a sequence slot owns a table of blocks, and attention reads key position j through entry
//! (j / KV_BLOCK) % ring of it. Full-attention layers have a table as long as the context
//! (`ring` never wraps); sliding-window layers a ring just long enough that one forward pass's
//! new tokens never take a block that one of them still reads, so blocks that leave the window
//! are reused in place. Layers of one kind share their tables (block b of a table is block b of
//! every such layer's pool). A slot takes blocks as its sequence grows and gives them back when
//! the sequence ends ([`KvCache::release`]).
//!
//! The host decides where each new token's K/V go and writes it into the token
//! (`TokenInfo::kv_slot`), so the kernels that write the cache need no table.

use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::shader::wgsl_const;
use crate::model::config::ModelConfig;
use crate::model::inputs::TokenInfo;

/// The two kinds of layers, by the table they read (`TokenInfo::kv_slot` index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Full = 0,
    Window = 1,
}

/// Positions per block (KV_BLOCK in `shaders/common/kv.wgsl`).
pub fn block_size() -> Result<u32> {
    wgsl_const("common/kv.wgsl", "KV_BLOCK")
}

pub struct LayerCache {
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
    pub kind: Kind,
}

/// The block tables of one kind of layer: which block each slot's ring entry holds, and the
/// blocks no slot holds. Host side only; `KvCache` mirrors the tables on the GPU.
#[derive(Debug)]
pub struct BlockTables {
    /// Entries per slot.
    pub ring: u32,
    /// [slots][ring]: the block of each entry, if taken.
    held: Vec<Vec<Option<u32>>>,
    free: Vec<u32>,
}

impl BlockTables {
    /// `slots` tables of `ring` entries over a pool of `blocks` blocks, handed out in the order
    /// of `free` (last first).
    pub fn new(slots: u32, ring: u32, free: Vec<u32>) -> BlockTables {
        BlockTables {
            ring,
            held: vec![vec![None; ring as usize]; slots as usize],
            free,
        }
    }

    /// Where position `pos` of `slot` goes (block * KV_BLOCK + offset), taking a block for its
    /// entry if it has none; true in the second value when the table changed.
    pub fn place(&mut self, slot: u32, pos: u32, block: u32) -> Result<(u32, bool)> {
        let entry = &mut self.held[slot as usize][((pos / block) % self.ring) as usize];
        let (b, new) = match *entry {
            Some(b) => (b, false),
            None => {
                let b = self.free.pop().ok_or_else(|| {
                    Error::Request("the KV cache is full: no free block for a new position".into())
                })?;
                *entry = Some(b);
                (b, true)
            }
        };
        Ok((b * block + pos % block, new))
    }

    /// Gives a slot's blocks back.
    pub fn release(&mut self, slot: u32) {
        for e in &mut self.held[slot as usize] {
            if let Some(b) = e.take() {
                self.free.push(b);
            }
        }
    }

    /// One slot's table as the GPU reads it (entries not taken read block 0: only positions
    /// that were written are ever attended to).
    pub fn row(&self, slot: u32) -> Vec<u32> {
        self.held[slot as usize]
            .iter()
            .map(|e| e.unwrap_or(0))
            .collect()
    }

    /// Blocks no slot holds.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }
}

/// The cache of every layer, the tables of both kinds and their GPU copies.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    /// [slots, ring] u32 per kind.
    pub tables: [wgpu::Buffer; 2],
    block: u32,
    host: Mutex<[BlockTables; 2]>,
}

impl KvCache {
    /// Pools for `max_seqs` sequences of up to `max_context` positions, written at most
    /// `max_tokens` at a time.
    pub fn allocate(
        gpu: &Gpu,
        cfg: &ModelConfig,
        max_seqs: u32,
        max_context: u32,
        max_tokens: u32,
        f16: bool,
    ) -> Result<KvCache> {
        let block = block_size()?;
        let full_ring = max_context.div_ceil(block);
        // The positions one pass reads and writes span window + max_tokens - 1, which touch at
        // most one block more than they fill.
        let window_ring =
            ((cfg.sliding_window + max_tokens - 1).div_ceil(block) + 1).min(full_ring);
        let rings = [full_ring, window_ring];
        let elem = if f16 { 2 } else { 4 };
        let block_bytes = block as u64 * cfg.kv_heads as u64 * cfg.head_dim as u64 * elem;
        let mut layers = Vec::new();
        for l in 0..cfg.layers as usize {
            let kind = if cfg.sliding[l] {
                Kind::Window
            } else {
                Kind::Full
            };
            let bytes = max_seqs as u64 * rings[kind as usize] as u64 * block_bytes;
            if bytes > gpu.caps.max_binding {
                return Err(Error::Limit {
                    what: format!(
                        "KV cache of layer {l} ({max_seqs} sequences x {} positions)",
                        rings[kind as usize] * block
                    ),
                    needed: bytes,
                    max: gpu.caps.max_binding,
                });
            }
            layers.push(LayerCache {
                k: gpu.storage(&format!("blk.{l}.k_cache"), bytes)?,
                v: gpu.storage(&format!("blk.{l}.v_cache"), bytes)?,
                kind,
            });
        }
        let tables = rings.map(|r| gpu.storage("kv_table", max_seqs as u64 * r as u64 * 4));
        let [t0, t1] = tables;
        let host = rings.map(|r| {
            // Lowest blocks first.
            BlockTables::new(max_seqs, r, (0..max_seqs * r).rev().collect())
        });
        Ok(KvCache {
            layers,
            tables: [t0?, t1?],
            block,
            host: Mutex::new(host),
        })
    }

    /// Entries per slot of a kind's table.
    pub fn ring(&self, kind: Kind) -> u32 {
        self.host.lock().map_or(0, |h| h[kind as usize].ring)
    }

    /// Writes where each token's K/V go into the tokens, taking blocks as sequences grow, and
    /// uploads the table rows that changed.
    pub fn place(&self, gpu: &Gpu, tokens: &mut [TokenInfo]) -> Result<()> {
        let mut host = self
            .host
            .lock()
            .map_err(|_| Error::Device("KV cache tables poisoned".into()))?;
        let mut changed: Vec<(usize, u32)> = Vec::new();
        let mut placed = Ok(());
        'tokens: for t in tokens.iter_mut() {
            for (kind, tables) in host.iter_mut().enumerate() {
                match tables.place(t.seq, t.pos, self.block) {
                    Ok((slot, new)) => {
                        t.kv_slot[kind] = slot;
                        if new && !changed.contains(&(kind, t.seq)) {
                            changed.push((kind, t.seq));
                        }
                    }
                    Err(e) => {
                        placed = Err(e);
                        break 'tokens;
                    }
                }
            }
        }
        // Blocks taken before a failure stay taken: their rows go up either way.
        for (kind, seq) in changed {
            let tables = &host[kind];
            let row = tables.row(seq);
            gpu.write(
                &self.tables[kind],
                seq as u64 * tables.ring as u64 * 4,
                bytemuck::cast_slice(&row),
            );
        }
        placed
    }

    /// Gives the blocks of a sequence slot back (its sequence ended).
    pub fn release(&self, slot: u32) {
        if let Ok(mut host) = self.host.lock() {
            for t in host.iter_mut() {
                t.release(slot);
            }
        }
    }

    /// Free blocks of each kind.
    pub fn free_blocks(&self) -> [usize; 2] {
        self.host
            .lock()
            .map_or([0, 0], |h| [h[0].free_blocks(), h[1].free_blocks()])
    }

    /// Bytes the cache takes.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|c| c.k.size() + c.v.size()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_taken_as_sequences_grow_and_given_back() {
        let mut t = BlockTables::new(2, 4, (0..8).rev().collect());
        // Positions of one block share it; the next block takes the next free one.
        assert_eq!(t.place(0, 0, 16).unwrap(), (0, true));
        assert_eq!(t.place(0, 15, 16).unwrap(), (15, false));
        assert_eq!(t.place(0, 16, 16).unwrap(), (16, true));
        assert_eq!(t.place(1, 3, 16).unwrap(), (2 * 16 + 3, true));
        assert_eq!(t.row(0), vec![0, 1, 0, 0]);
        assert_eq!(t.free_blocks(), 5);
        // A ring reuses its entry's block for the block one ring later.
        assert_eq!(t.place(0, 4 * 16 + 5, 16).unwrap(), (5, false));
        t.release(0);
        assert_eq!(t.free_blocks(), 7);
        assert_eq!(t.row(0), vec![0; 4]);
        // Running out is an error, not a panic.
        let mut small = BlockTables::new(1, 4, vec![0]);
        small.place(0, 0, 16).unwrap();
        assert!(small.place(0, 16, 16).is_err());
    }
}
