//! What the host writes each step: the tokens of the forward pass and which rows want logits.

/// One token of a forward pass (`TokenInfo` in `shaders/common/step.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TokenInfo {
    pub id: u32,
    /// Position within its sequence.
    pub pos: u32,
    /// KV-cache slot of its sequence.
    pub seq: u32,
    pub _pad: u32,
    /// Where its K/V go in the paged cache, per kind of layer (full, window): block * KV_BLOCK
    /// + offset. Filled in by the model (`KvCache::place`).
    pub kv_slot: [u32; 2],
    pub _pad2: [u32; 2],
}

impl TokenInfo {
    pub fn new(id: u32, pos: u32, seq: u32) -> TokenInfo {
        TokenInfo {
            id,
            pos,
            seq,
            ..Default::default()
        }
    }
}
