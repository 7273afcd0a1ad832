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
}
