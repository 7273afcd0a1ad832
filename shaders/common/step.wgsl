// Bindings and types every kernel shares. Binding 0 carries the per-step counts (StepCounts in
// src/gpu/dispatch.rs); a kernel's grid y scales with one of them and it reads the same count here.
struct Step {
    tokens: u32,
    outputs: u32,
    slots: u32,
    // Split attention: spans per token's keys, and positions per span.
    splits: u32,
    span: u32,
    // logit_bias entries of the pass (the Rust side's dispatch condition for sampling's BIAS).
    biased: u32,
    _pad: vec2<u32>,
}

// One token of the forward pass (TokenInfo in src/model/inputs.rs): its id, position in its
// sequence, the KV-cache slot of its sequence, and where its K/V go in the paged cache for each
// kind of layer (common/kv.wgsl).
struct TokenInfo {
    id: u32,
    pos: u32,
    seq: u32,
    // 0, or r + 1: the token is the previous pass's sampled id of output row r (embed.wgsl).
    fed: u32,
    kv_slot: vec2<u32>,
    _pad2: vec2<u32>,
}

@group(0) @binding(0) var<uniform> step: Step;

// 0: tokens, 1: outputs, 2: token-expert slots.
fn step_count(which: u32) -> u32 {
    switch which {
        case 1u: { return step.outputs; }
        case 2u: { return step.slots; }
        default: { return step.tokens; }
    }
}
