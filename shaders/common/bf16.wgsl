// bf16 pairs packed in u32 words: the element at the even index is the low half (little endian).
// bf16 is the top half of an f32, so widening is a shift.
fn bf16_lo(w: u32) -> f32 {
    return bitcast<f32>(w << 16u);
}

fn bf16_hi(w: u32) -> f32 {
    return bitcast<f32>(w & 0xffff0000u);
}
