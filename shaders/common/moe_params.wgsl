// The parameters of the MoE kernels (moe.wgsl and moe_vec.wgsl; Params in src/kernels/moe.rs).
struct Params {
    hidden: u32,
    inter: u32,
    top_k: u32,
    // The experts [e_start, e_start + e_count) whose weights this dispatch's buffers hold.
    e_start: u32,
    e_count: u32,
    // SwiGLU: the clamp limit and the sigmoid's alpha.
    limit: f32,
    alpha: f32,
    // Row stride of moe.wgsl's slot lists (T_max * K); moe_vec does not use it.
    list_stride: u32,
    // moe_vec's routing: experts, and the router's partial sums per token (router.wgsl PARTIAL).
    n_experts: u32,
    slices: u32,
    // moe_vec's FOLDED gate_up: the post-attention norm's epsilon (router_fold.wgsl).
    eps: f32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
