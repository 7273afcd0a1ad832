//! RoPE on q and k plus the KV-cache write (`shaders/rope.wgsl`).

use crate::error::Result;
use crate::gpu::mirror::wgsl_mirror;
use crate::gpu::{Count, Dispatch, Gpu, Grid, ShaderKey};

wgsl_mirror! {
    "rope.wgsl", Params:
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub(crate) struct Params {
        pub n_heads: u32,
        pub n_kv: u32,
        pub head_dim: u32,
        /// Which of a token's KV slots this layer writes (`kv_cache::Kind`).
        pub kv_kind: u32,
    }
}

/// Rotates q in qkv: [T, (NH + 2 NKV) * D] in place and writes rotated k and v into the paged
/// caches k_cache, v_cache at each token's KV slot. table: [max_pos, D/2] (cos, sin).
pub struct Rope<'a> {
    pub tokens: &'a wgpu::Buffer,
    pub table: &'a wgpu::Buffer,
    pub qkv: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
}

/// `kv_f16` stores the cache in f16 (the adapter must have SHADER_F16).
pub(crate) fn build(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    a: &Rope,
    p: Params,
    kv_f16: bool,
) -> Result<Dispatch> {
    let key = ShaderKey::new("rope.wgsl", "main").define_if("KV_F16", kv_f16);
    Dispatch::new(
        gpu,
        &key,
        step,
        bytemuck::bytes_of(&p),
        &[a.tokens, a.table, a.qkv, a.k_cache, a.v_cache],
        Grid::new(1, Count::Tokens, 1),
    )
}
