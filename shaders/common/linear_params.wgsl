// The parameters of the dense-layer kernels (linear.wgsl and linear_vec.wgsl; Params in
// src/kernels/linear.rs): this buffer holds rows [row_start, row_start + rows) of a matrix of
// n_out rows and k inputs; eps is the fused RMSNorm's (linear_vec's NORM variant); the heads, head
// dim and which of a token's KV slots this layer writes are the q/k/v projection's (linear_vec's
// ROPE variant); the tile entries' k ranges (linear.wgsl SPLIT_K: split_units = k / 8 and
// splits = 1 when k is not cut).
struct Params {
    k: u32,
    rows: u32,
    row_start: u32,
    n_out: u32,
    count_which: u32,
    has_bias: u32,
    accumulate: u32,
    eps: f32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    kv_kind: u32,
    splits: u32,
    split_units: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
