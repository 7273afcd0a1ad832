//! What the host writes each step: the tokens of the forward pass and which rows want logits.

use crate::gpu::mirror::wgsl_mirror;

wgsl_mirror! {
    "common/step.wgsl", TokenInfo:
    /// One token of a forward pass (`TokenInfo` in `shaders/common/step.wgsl`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct TokenInfo {
        pub id: u32,
        /// Position within its sequence.
        pub pos: u32,
        /// KV-cache slot of its sequence.
        pub seq: u32,
        /// 0: `id` is the token. r + 1: the token is the id that the previous forward pass sampled
        /// for its output row r, read from the GPU's copy (`TokenInfo::fed`), so that the pass can
        /// be queued before that id comes back to the host.
        pub fed: u32,
        /// Where its K/V go in the paged cache, per kind of layer (full, window): block * KV_BLOCK
        /// + offset. Filled in by the model (`KvCache::place`).
        pub kv_slot: [u32; 2],
        pub _pad2: [u32; 2],
    }
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

    /// The token that the previous pass sampled for its output row `row`.
    pub fn fed(row: u32, pos: u32, seq: u32) -> TokenInfo {
        TokenInfo {
            pos,
            seq,
            fed: row + 1,
            ..Default::default()
        }
    }
}
