//! The KV cache: per layer a K and a V buffer [seqs, cap, NKV, D] in f16 (where the adapter has
//! SHADER_F16 and the options allow) or f32. Full-attention layers keep
//! every position up to the context limit; sliding-window layers keep a ring of
//! `window + max_tokens - 1` positions, enough that writing a whole forward pass of new tokens
//! never overwrites a key that one of those tokens still needs.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::config::ModelConfig;

pub struct LayerCache {
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
    /// Positions kept per sequence (slot = position % cap).
    pub cap: u32,
}

/// Positions a layer keeps per sequence.
pub fn capacity(cfg: &ModelConfig, layer: usize, max_context: u32, max_tokens: u32) -> u32 {
    if cfg.sliding[layer] {
        (cfg.sliding_window + max_tokens - 1).min(max_context)
    } else {
        max_context
    }
}

pub fn allocate(
    gpu: &Gpu,
    cfg: &ModelConfig,
    max_seqs: u32,
    max_context: u32,
    max_tokens: u32,
    f16: bool,
) -> Result<Vec<LayerCache>> {
    let elem = if f16 { 2 } else { 4 };
    (0..cfg.layers as usize)
        .map(|l| {
            let cap = capacity(cfg, l, max_context, max_tokens);
            let bytes =
                max_seqs as u64 * cap as u64 * cfg.kv_heads as u64 * cfg.head_dim as u64 * elem;
            if bytes > gpu.caps.max_binding {
                return Err(Error::Limit {
                    what: format!("KV cache of layer {l} ({max_seqs} sequences x {cap} positions)"),
                    needed: bytes,
                    max: gpu.caps.max_binding,
                });
            }
            Ok(LayerCache {
                k: gpu.storage(&format!("blk.{l}.k_cache"), bytes)?,
                v: gpu.storage(&format!("blk.{l}.v_cache"), bytes)?,
                cap,
            })
        })
        .collect()
}

/// Bytes the cache takes.
pub fn bytes(caches: &[LayerCache]) -> u64 {
    caches.iter().map(|c| c.k.size() + c.v.size()).sum()
}
