// MXFP4: blocks of 32 values, 16 bytes of e2m1 codes plus one e8m0 scale byte. Element 2j is the
// low nibble of byte j, so nibble n of a little-endian word (low to high) is element n of its 8.
// e2m1 codes to f32 by building the float's bits: sign s, exponent field e, mantissa bit m gives
// 0, 0.5 (e = 0, m = 1: subnormal) or (1 + m/2) * 2^(e - 1). Arithmetic instead of a table keeps the
// decode in registers (a dynamically indexed private array lands in slow local memory on NVIDIA).
fn fp4x4(n: vec4<u32>) -> vec4<f32> {
    let mag = n & vec4<u32>(7u);
    var bits = (((mag >> vec4<u32>(1u)) + vec4<u32>(126u)) << vec4<u32>(23u)) | ((mag & vec4<u32>(1u)) << vec4<u32>(22u));
    bits = select(bits, vec4<u32>(126u << 23u), mag == vec4<u32>(1u));
    bits = select(bits, vec4<u32>(0u), mag == vec4<u32>(0u));
    return bitcast<vec4<f32>>(bits | ((n & vec4<u32>(8u)) << vec4<u32>(28u)));
}

// Dot product of the 8 codes in `w` with inputs a (elements 0..3) and b (elements 4..7).
fn fp4_dot8(w: u32, a: vec4<f32>, b: vec4<f32>) -> f32 {
    let lo = vec4<u32>(w, w >> 4u, w >> 8u, w >> 12u) & vec4<u32>(15u);
    let hi = vec4<u32>(w >> 16u, w >> 20u, w >> 24u, w >> 28u) & vec4<u32>(15u);
    return dot(fp4x4(lo), a) + dot(fp4x4(hi), b);
}

// e8m0 scale: 2^(s - 127), built as the float whose exponent field is s (s = 0 is the subnormal
// 2^-127), which avoids a general ldexp.
fn e8m0(s: u32) -> f32 {
    return select(bitcast<f32>(s << 23u), bitcast<f32>(0x00400000u), s == 0u);
}

// Byte `i` of a u32 array viewed as bytes.
fn byte_of(word: u32, i: u32) -> u32 {
    return (word >> ((i & 3u) * 8u)) & 0xffu;
}
