//! The paged KV cache with automatic prefix caching. Each layer's keys and values live in a pool
//! of fixed-size blocks [blocks, NKV, KV_BLOCK, D] (f16 where the adapter has SHADER_F16 and the
//! options allow, else f32); a sequence slot owns a table of blocks, and attention reads key
//! position j through entry j / KV_BLOCK of it. Layers of one kind (full attention, sliding
//! window) share their tables: block b of a table is block b of every such layer's pool.
//!
//! A slot takes blocks as its sequence grows. Sliding-window layers give back the blocks that
//! fall out of the window, so they hold a few blocks per sequence whatever its length. A block
//! whose positions are all written is registered under a hash chained over the token ids from
//! the sequence's start; when no slot holds it any more it stays in the pool, evicted least
//! recently used first, and a new sequence whose prompt starts with the same full blocks adopts
//! them instead of computing them again ([`KvCache::reuse_prefix`]).
//!
//! The host decides where each new token's K/V go and writes it into the token
//! (`TokenInfo::kv_slot`), so the kernels that write the cache need no table.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
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

/// The hash of a full block: its tokens chained onto the hash of the blocks before it.
pub fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

pub struct LayerCache {
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
    pub kind: Kind,
}

/// What a registered block holds, checked on lookup so that a hash collision cannot hand out
/// the wrong keys.
#[derive(Debug)]
struct Content {
    hash: u64,
    parent: u64,
    tokens: Box<[u32]>,
}

/// One kind's pool of blocks and the tables of every slot (host side; `KvCache` mirrors the
/// tables on the GPU). Blocks are free, held by one or more slots, or cached (held by none but
/// still registered, evicted least recently used first).
#[derive(Debug)]
pub struct BlockPool {
    /// Positions per block.
    block: u32,
    /// 0: a slot keeps all its blocks; else the positions a query sees, and blocks entirely
    /// before the window of a slot's next token are given back.
    window: u32,
    /// [slots][entries]: the block of each table entry, if held.
    held: Vec<Vec<Option<u32>>>,
    /// Per slot: entries below this one were given back (window only).
    low: Vec<usize>,
    refs: Vec<u32>,
    content: Vec<Option<Content>>,
    by_hash: HashMap<u64, u32>,
    free: Vec<u32>,
    /// Cached blocks by the tick they were last given back.
    lru: BTreeMap<u64, u32>,
    last_used: Vec<u64>,
    tick: u64,
}

impl BlockPool {
    /// `slots` tables of `entries` entries over `blocks` blocks of `block` positions, handed
    /// out in the order of `order` (last first; the pool's blocks in any order).
    pub fn new(slots: u32, entries: u32, block: u32, window: u32, order: Vec<u32>) -> BlockPool {
        let n = order.len();
        BlockPool {
            block,
            window,
            held: vec![vec![None; entries as usize]; slots as usize],
            low: vec![0; slots as usize],
            refs: vec![0; n],
            content: (0..n).map(|_| None).collect(),
            by_hash: HashMap::new(),
            free: order,
            lru: BTreeMap::new(),
            last_used: vec![0; n],
            tick: 0,
        }
    }

    /// Blocks in the pool.
    pub fn blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks a new position could take: free ones and cached ones.
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// Blocks held by a slot.
    pub fn used(&self) -> usize {
        self.blocks() - self.available()
    }

    fn take(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.lru.pop_first()?;
                if let Some(c) = self.content[b as usize].take() {
                    self.by_hash.remove(&c.hash);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    fn hold(&mut self, b: u32) {
        let i = b as usize;
        if self.refs[i] == 0 {
            self.lru.remove(&self.last_used[i]);
        }
        self.refs[i] += 1;
    }

    fn put(&mut self, b: u32) {
        let i = b as usize;
        self.refs[i] -= 1;
        if self.refs[i] == 0 {
            if self.content[i].is_some() {
                self.tick += 1;
                self.last_used[i] = self.tick;
                self.lru.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// Where position `pos` of `slot` goes (block * block size + offset), taking a block for
    /// its entry if it has none; true in the second value when the table changed.
    pub fn place(&mut self, slot: u32, pos: u32) -> Result<(u32, bool)> {
        // A pool without blocks serves a kind of layer the model has none of.
        if self.blocks() == 0 {
            return Ok((0, false));
        }
        let e = (pos / self.block) as usize;
        let row = &self.held[slot as usize];
        if e >= row.len() {
            return Err(Error::Request(format!(
                "position {pos} is beyond the {} positions of a KV-cache table",
                row.len() as u32 * self.block
            )));
        }
        let (b, new) = match row[e] {
            Some(b) => (b, false),
            None => {
                let b = self.take().ok_or_else(|| {
                    Error::Request("the KV cache is full: no free block for a new position".into())
                })?;
                self.held[slot as usize][e] = Some(b);
                (b, true)
            }
        };
        Ok((b * self.block + pos % self.block, new))
    }

    /// Gives back the blocks that no query from position `pos` on can see (window only).
    pub fn slide(&mut self, slot: u32, pos: u32) {
        if self.window == 0 {
            return;
        }
        let keep = self.first_in_view(pos);
        let s = slot as usize;
        // (A slot whose positions start over scans again from its new start.)
        for e in self.low[s].min(keep)..keep {
            if let Some(b) = self.held[s][e].take() {
                self.put(b);
            }
        }
        self.low[s] = keep;
    }

    /// The first table entry that a query at `pos` sees.
    fn first_in_view(&self, pos: u32) -> usize {
        if self.window == 0 {
            return 0;
        }
        ((pos + 1).saturating_sub(self.window) / self.block) as usize
    }

    /// Table entries of `slot` that positions [start, start + len) would have to take.
    pub fn missing(&self, slot: u32, start: u32, len: u32) -> usize {
        if self.blocks() == 0 {
            return 0;
        }
        let (a, b) = (start / self.block, (start + len - 1) / self.block);
        let row = &self.held[slot as usize];
        (a..=b).filter(|e| row[*e as usize].is_none()).count()
    }

    /// New blocks that this work (slot, first position, tokens) takes.
    pub fn needs(&self, work: &[(u32, u32, u32)]) -> usize {
        work.iter().map(|&(s, a, n)| self.missing(s, a, n)).sum()
    }

    /// Whether this work takes more new blocks than are free (so that some would be cached ones,
    /// evicted).
    pub fn evicts(&self, work: &[(u32, u32, u32)]) -> bool {
        self.needs(work) > self.free.len()
    }

    /// Gives a slot's blocks back.
    pub fn release(&mut self, slot: u32) {
        let s = slot as usize;
        for e in 0..self.held[s].len() {
            if let Some(b) = self.held[s][e].take() {
                self.put(b);
            }
        }
        self.low[s] = 0;
    }

    /// Registers entry `e` of `slot`, now full, as holding `tokens` after the blocks hashed
    /// `parent`. A block already registered, or content another block already holds, is left
    /// as it is.
    fn register(&mut self, slot: u32, e: usize, hash: u64, parent: u64, tokens: &[u32]) {
        let Some(b) = self.held[slot as usize][e] else {
            return;
        };
        if self.content[b as usize].is_some() || self.by_hash.contains_key(&hash) {
            return;
        }
        self.content[b as usize] = Some(Content {
            hash,
            parent,
            tokens: tokens.into(),
        });
        self.by_hash.insert(hash, b);
    }

    /// The block registered with this content, if any.
    fn lookup(&self, hash: u64, parent: u64, tokens: &[u32]) -> Option<u32> {
        let b = *self.by_hash.get(&hash)?;
        let c = self.content[b as usize].as_ref()?;
        (c.parent == parent && *c.tokens == *tokens).then_some(b)
    }

    /// Makes `b` entry `e` of `slot` (the slot's entry is empty).
    fn adopt(&mut self, slot: u32, e: usize, b: u32) {
        self.hold(b);
        self.held[slot as usize][e] = Some(b);
    }

    /// One slot's table as the GPU reads it (entries not held read block 0: only positions
    /// that were written and are in view are ever attended to).
    pub fn row(&self, slot: u32) -> Vec<u32> {
        self.held[slot as usize]
            .iter()
            .map(|e| e.unwrap_or(0))
            .collect()
    }
}

/// How many blocks each kind's pool has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSizes {
    /// Table entries per slot (a whole context).
    pub entries: u32,
    /// Blocks of each kind (full, window).
    pub blocks: [u32; 2],
    /// Bytes of one block in one layer's K or V pool.
    pub block_bytes: u64,
}

impl PoolSizes {
    /// Pools for `max_seqs` sequences of up to `max_context` positions, written at most
    /// `max_tokens` at a time, with `elem`-byte elements. Without a byte budget, every slot can
    /// hold a whole context; with one, full-attention layers get what the window layers leave
    /// (at least one whole context, else an error says so).
    pub fn new(
        cfg: &ModelConfig,
        block: u32,
        max_seqs: u32,
        max_context: u32,
        max_tokens: u32,
        elem: u64,
        budget: Option<u64>,
    ) -> Result<PoolSizes> {
        let entries = max_context.div_ceil(block);
        let block_bytes = block as u64 * cfg.kv_heads as u64 * cfg.head_dim as u64 * elem;
        let layers = |w: bool| cfg.sliding.iter().filter(|s| **s == w).count() as u64;
        let per_block = [layers(false), layers(true)].map(|n| 2 * n * block_bytes);
        // The positions one pass reads and writes span window + max_tokens - 1, which touch at
        // most one block more than they fill. Twice that per slot, so that blocks leaving the
        // window stay cached for a while.
        let window_need =
            ((cfg.sliding_window + max_tokens - 1).div_ceil(block) + 1).min(entries) as u64;
        let window_blocks = if per_block[1] > 0 {
            2 * max_seqs as u64 * window_need
        } else {
            0
        };
        let window_bytes = window_blocks * per_block[1];
        let full_blocks = match (per_block[0], budget) {
            (0, _) => 0,
            (_, None) => max_seqs as u64 * entries as u64,
            (per, Some(budget)) => {
                let blocks = budget.saturating_sub(window_bytes) / per;
                if blocks < entries as u64 {
                    return Err(Error::Request(format!(
                        "a KV cache of {:.2} GiB holds {} positions per full-attention layer \
                         after {:.2} GiB for the sliding-window layers; one context of \
                         {max_context} needs {:.2} GiB: raise the KV cache size or lower the \
                         context",
                        budget as f64 / GIB,
                        blocks * block as u64,
                        window_bytes as f64 / GIB,
                        (entries as u64 * per + window_bytes) as f64 / GIB,
                    )));
                }
                blocks
            }
        };
        let blocks = [full_blocks, window_blocks].map(|b| u32::try_from(b).unwrap_or(u32::MAX));
        Ok(PoolSizes {
            entries,
            blocks,
            block_bytes,
        })
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Blocks of one kind: in the pool, held by running sequences, and cached (held by none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockUsage {
    pub total: usize,
    pub used: usize,
    pub cached: usize,
}

/// The cache of every layer, the pools and tables of both kinds and their GPU copies.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    /// [slots, entries] u32 per kind.
    pub tables: [wgpu::Buffer; 2],
    pub sizes: PoolSizes,
    block: u32,
    host: Mutex<Host>,
}

struct Host {
    pools: [BlockPool; 2],
    /// Per slot: the hash of each of its full blocks so far.
    chains: Vec<Vec<u64>>,
}

impl Host {
    /// Uploads the rows of `slot` in both kinds.
    fn upload(&self, gpu: &Gpu, tables: &[wgpu::Buffer; 2], entries: u32, slot: u32) {
        for (pool, table) in self.pools.iter().zip(tables) {
            let row = pool.row(slot);
            gpu.write(
                table,
                slot as u64 * entries as u64 * 4,
                bytemuck::cast_slice(&row),
            );
        }
    }
}

impl KvCache {
    /// Pools for `max_seqs` sequences of up to `max_context` positions, written at most
    /// `max_tokens` at a time, in `budget` bytes if given (see [`PoolSizes::new`]).
    pub fn allocate(
        gpu: &Gpu,
        cfg: &ModelConfig,
        max_seqs: u32,
        max_context: u32,
        max_tokens: u32,
        f16: bool,
        budget: Option<u64>,
    ) -> Result<KvCache> {
        let block = block_size()?;
        let elem = if f16 { 2 } else { 4 };
        let sizes = PoolSizes::new(cfg, block, max_seqs, max_context, max_tokens, elem, budget)?;
        let mut layers = Vec::new();
        for l in 0..cfg.layers as usize {
            let kind = if cfg.sliding[l] {
                Kind::Window
            } else {
                Kind::Full
            };
            let blocks = sizes.blocks[kind as usize];
            let bytes = (blocks as u64 * sizes.block_bytes).max(4);
            if bytes > gpu.caps.max_binding {
                return Err(Error::Limit {
                    what: format!("KV cache of layer {l} ({blocks} blocks of {block} positions)"),
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
        let table_bytes = max_seqs as u64 * sizes.entries as u64 * 4;
        let tables = [
            gpu.storage("kv_table", table_bytes)?,
            gpu.storage("kv_table", table_bytes)?,
        ];
        let windows = [0, cfg.sliding_window];
        let pools = [0, 1].map(|k| {
            // Lowest blocks first.
            let order = (0..sizes.blocks[k]).rev().collect();
            BlockPool::new(max_seqs, sizes.entries, block, windows[k], order)
        });
        Ok(KvCache {
            layers,
            tables,
            sizes,
            block,
            host: Mutex::new(Host {
                pools,
                chains: vec![Vec::new(); max_seqs as usize],
            }),
        })
    }

    fn host(&self) -> Result<std::sync::MutexGuard<'_, Host>> {
        self.host
            .lock()
            .map_err(|_| Error::Device("KV cache tables poisoned".into()))
    }

    /// Writes where each token's K/V go into the tokens, giving back blocks that left every
    /// window and taking blocks as sequences grow, and uploads the table rows that changed.
    pub fn place(&self, gpu: &Gpu, tokens: &mut [TokenInfo]) -> Result<()> {
        let mut host = self.host()?;
        let mut first: Vec<(u32, u32)> = Vec::new();
        for t in tokens.iter() {
            match first.iter_mut().find(|f| f.0 == t.seq) {
                Some(f) => f.1 = f.1.min(t.pos),
                None => first.push((t.seq, t.pos)),
            }
        }
        for &(seq, pos) in &first {
            host.pools[Kind::Window as usize].slide(seq, pos);
        }
        // Only rows that took a block go up (entries given back need no upload: attention never
        // reads them), so a decode step uploads a row once every KV_BLOCK tokens.
        let mut changed: Vec<u32> = Vec::new();
        let mut placed = Ok(());
        'tokens: for t in tokens.iter_mut() {
            for (kind, pool) in host.pools.iter_mut().enumerate() {
                match pool.place(t.seq, t.pos) {
                    Ok((slot, new)) => {
                        t.kv_slot[kind] = slot;
                        if new && !changed.contains(&t.seq) {
                            changed.push(t.seq);
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
        for seq in changed {
            host.upload(gpu, &self.tables, self.sizes.entries, seq);
        }
        placed
    }

    /// Whether each kind has the blocks that this work (slot, first position, tokens) takes.
    pub fn fits(&self, work: &[(u32, u32, u32)]) -> bool {
        let Ok(host) = self.host() else {
            return false;
        };
        host.pools
            .iter()
            .all(|pool| pool.needs(work) <= pool.available())
    }

    /// Whether this work (slot, first position, tokens) takes more new blocks of some kind than
    /// are free, so that it would evict cached blocks.
    pub fn evicts(&self, work: &[(u32, u32, u32)]) -> bool {
        self.host()
            .map_or(true, |host| host.pools.iter().any(|pool| pool.evicts(work)))
    }

    /// Whether a sequence slot with `cached` positions can take `len` more and still leave
    /// `spare` blocks of each kind (one per running sequence, so they can grow). A kind the
    /// model has no layers of (a pool without blocks) never stands in the way.
    pub fn admits(&self, slot: u32, cached: u32, len: u32, spare: usize) -> bool {
        self.host().is_ok_and(|h| {
            h.pools
                .iter()
                .filter(|p| p.blocks() > 0)
                .all(|p| p.missing(slot, cached, len) + spare <= p.available())
        })
    }

    /// Gives an empty slot the cached blocks that hold the longest block-aligned prefix of
    /// `tokens` (all but the last token, whose logits the caller needs), and returns how many
    /// positions that covers. Full-attention layers need every block of the prefix, window
    /// layers the blocks in view of the position after it.
    pub fn reuse_prefix(&self, gpu: &Gpu, slot: u32, tokens: &[u32]) -> Result<u32> {
        let mut host = self.host()?;
        let bs = self.block as usize;
        let blocks = tokens.len().saturating_sub(1) / bs;
        // Full blocks of the prompt found in the full-attention pool, in order.
        let mut hashes = Vec::new();
        let mut parent = 0u64;
        let full = &host.pools[Kind::Full as usize];
        for i in 0..blocks {
            let toks = &tokens[i * bs..(i + 1) * bs];
            let h = chain_hash(parent, toks);
            if full.blocks() > 0 && full.lookup(h, parent, toks).is_none() {
                break;
            }
            hashes.push((h, parent));
            parent = h;
        }
        // The longest of those prefixes whose window blocks are cached too.
        let window = &host.pools[Kind::Window as usize];
        let from = |n: usize| [0, window.first_in_view((n * bs) as u32).min(n)];
        let mut n = hashes.len();
        while n > 0 && window.blocks() > 0 {
            let cached = (from(n)[1]..n).all(|i| {
                let toks = &tokens[i * bs..(i + 1) * bs];
                window.lookup(hashes[i].0, hashes[i].1, toks).is_some()
            });
            if cached {
                break;
            }
            n -= 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let from = from(n);
        for (k, pool) in host.pools.iter_mut().enumerate() {
            if pool.blocks() == 0 {
                continue;
            }
            for i in from[k]..n {
                let toks = &tokens[i * bs..(i + 1) * bs];
                if let Some(b) = pool.lookup(hashes[i].0, hashes[i].1, toks) {
                    pool.adopt(slot, i, b);
                }
            }
            pool.low[slot as usize] = from[k];
        }
        host.chains[slot as usize] = hashes[..n].iter().map(|h| h.0).collect();
        host.upload(gpu, &self.tables, self.sizes.entries, slot);
        Ok((n * bs) as u32)
    }

    /// Registers the blocks of `slot` that its first `cached` tokens (now in the cache) fill.
    pub fn commit(&self, slot: u32, tokens: &[u32], cached: usize) {
        let Ok(mut host) = self.host() else {
            return;
        };
        let bs = self.block as usize;
        let host = &mut *host;
        let chain = &mut host.chains[slot as usize];
        for i in chain.len()..cached.min(tokens.len()) / bs {
            let parent = chain.last().copied().unwrap_or(0);
            let toks = &tokens[i * bs..(i + 1) * bs];
            let h = chain_hash(parent, toks);
            chain.push(h);
            for pool in &mut host.pools {
                pool.register(slot, i, h, parent, toks);
            }
        }
    }

    /// Gives the blocks of a sequence slot back (its sequence ended or was preempted); the full
    /// ones stay cached.
    pub fn release(&self, slot: u32) {
        if let Ok(mut host) = self.host() {
            for pool in &mut host.pools {
                pool.release(slot);
            }
            host.chains[slot as usize].clear();
        }
    }

    /// Positions per block.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// Blocks of each kind.
    pub fn usage(&self) -> [BlockUsage; 2] {
        self.host().map_or([BlockUsage::default(); 2], |h| {
            h.pools.each_ref().map(|p| BlockUsage {
                total: p.blocks(),
                used: p.used(),
                cached: p.lru.len(),
            })
        })
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
        let mut t = BlockPool::new(2, 4, 16, 0, (0..8).rev().collect());
        // Positions of one block share it; the next block takes the next free one.
        assert_eq!(t.place(0, 0).unwrap(), (0, true));
        assert_eq!(t.place(0, 15).unwrap(), (15, false));
        assert_eq!(t.place(0, 16).unwrap(), (16, true));
        assert_eq!(t.place(1, 3).unwrap(), (2 * 16 + 3, true));
        assert_eq!(t.row(0), vec![0, 1, 0, 0]);
        assert_eq!((t.available(), t.used()), (5, 3));
        assert_eq!(t.missing(0, 20, 30), 2);
        t.release(0);
        assert_eq!(t.available(), 7);
        assert_eq!(t.row(0), vec![0; 4]);
        // Running out is an error, not a panic.
        let mut small = BlockPool::new(1, 4, 16, 0, vec![0]);
        small.place(0, 0).unwrap();
        assert!(small.place(0, 16).is_err());
        // A kind the model has no layers of has no blocks and never runs out.
        let mut none = BlockPool::new(1, 4, 16, 0, vec![]);
        assert_eq!(none.place(0, 40).unwrap(), (0, false));
        assert_eq!(none.missing(0, 0, 64), 0);
    }

    #[test]
    fn window_slots_give_back_blocks_out_of_view() {
        // A window of 20 positions: a query at 39 sees 20..=39, so block 0 (0..16) went back
        // and blocks 1 and 2 are held; from position 51 on block 1 (16..32) is out of view too.
        let mut t = BlockPool::new(1, 8, 16, 20, (0..4).rev().collect());
        for pos in 0..40 {
            t.slide(0, pos);
            t.place(0, pos).unwrap();
        }
        assert_eq!(t.used(), 2);
        t.slide(0, 50);
        assert_eq!(t.used(), 2);
        t.slide(0, 51);
        assert_eq!(t.used(), 1);
        // Four blocks serve a sequence of any length.
        for pos in 40..128 {
            t.slide(0, pos);
            t.place(0, pos).unwrap();
        }
    }

    #[test]
    fn full_blocks_stay_cached_and_are_evicted_least_recently_used() {
        let mut t = BlockPool::new(2, 4, 2, 0, (0..3).rev().collect());
        let toks = [5u32, 6, 7, 8];
        for pos in 0..4 {
            t.place(0, pos).unwrap();
        }
        let h0 = chain_hash(0, &toks[..2]);
        let h1 = chain_hash(h0, &toks[2..]);
        t.register(0, 0, h0, 0, &toks[..2]);
        t.register(0, 1, h1, h0, &toks[2..]);
        t.release(0);
        // Both blocks are cached: found by content, not by hash alone.
        assert_eq!(t.lookup(h0, 0, &toks[..2]), Some(0));
        assert_eq!(t.lookup(h0, 0, &[5, 9]), None);
        assert_eq!(t.lookup(h1, h0, &toks[2..]), Some(1));
        assert_eq!(t.available(), 3);
        // One free block: a new position's block comes from it, a second would evict.
        assert!(!t.evicts(&[(1, 0, 2)]));
        assert!(t.evicts(&[(1, 0, 4)]));
        assert!(t.evicts(&[(1, 0, 2), (0, 0, 1)]));
        // Adopting takes a cached block out of the eviction order.
        t.adopt(1, 0, 0);
        assert_eq!(t.available(), 2);
        // The free block goes first, then the least recently given back cached one (block 1).
        assert_eq!(t.place(1, 2).unwrap().0, 2 * 2);
        assert_eq!(t.place(1, 4).unwrap().0, 2);
        assert_eq!(t.lookup(h1, h0, &toks[2..]), None);
        assert_eq!(t.lookup(h0, 0, &toks[..2]), Some(0));
    }
}
