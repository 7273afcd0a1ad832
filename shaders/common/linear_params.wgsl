// The parameters of the dense-layer kernels (linear.wgsl and linear_vec.wgsl; Params in
// src/kernels/linear.rs): this buffer holds rows [row_start, row_start + rows) of a matrix of
// n_out rows and k inputs; eps is the fused RMSNorm's (linear_vec's NORM variant).
struct Params {
    k: u32,
    rows: u32,
    row_start: u32,
    n_out: u32,
    count_which: u32,
    has_bias: u32,
    accumulate: u32,
    eps: f32,
}

@group(0) @binding(1) var<uniform> p: Params;
