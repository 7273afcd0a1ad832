// MXFP4: blocks of 32 values, 16 bytes of e2m1 codes plus one e8m0 scale byte. Element 2j is the
// low nibble of byte j, so nibble n of a little-endian word (low to high) is element n of its 8.
var<private> FP4: array<f32, 16> = array<f32, 16>(
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
);

// Dot product of the 8 codes in `w` with inputs a (elements 0..3) and b (elements 4..7).
fn fp4_dot8(w: u32, a: vec4<f32>, b: vec4<f32>) -> f32 {
    let lo = vec4<f32>(FP4[w & 15u], FP4[(w >> 4u) & 15u], FP4[(w >> 8u) & 15u], FP4[(w >> 12u) & 15u]);
    let hi = vec4<f32>(FP4[(w >> 16u) & 15u], FP4[(w >> 20u) & 15u], FP4[(w >> 24u) & 15u], FP4[w >> 28u]);
    return dot(lo, a) + dot(hi, b);
}

// e8m0 scale: 2^(s - 127). ldexp keeps the tiny exponents exact where the hardware has denormals.
fn e8m0(s: u32) -> f32 {
    return ldexp(1.0, i32(s) - 127);
}

// Byte `i` of a u32 array viewed as bytes.
fn byte_of(word: u32, i: u32) -> u32 {
    return (word >> ((i & 3u) * 8u)) & 0xffu;
}
