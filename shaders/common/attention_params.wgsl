// The parameters of the attention kernels (attention.wgsl and attention_split.wgsl; Params in
// src/kernels/attention.rs).
struct Params {
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    // Entries of each slot's block table (common/kv_table.wgsl).
    entries: u32,
    // Keys visible to a query: 0 for all earlier positions, else the sliding window.
    window: u32,
    scale: f32,
    _pad: vec2<u32>,
}

@group(0) @binding(1) var<uniform> p: Params;
