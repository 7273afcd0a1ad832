// MXFP4: blocks of 32 values, 16 bytes of e2m1 codes plus one e8m0 scale byte. Element 2j is the
// low nibble of byte j, so nibble n of a little-endian word (low to high) is element n of its 8.
// The 8 codes of `w`, in units of 2^-14 (the caller folds 2^14 into the block scale): column n
// holds elements n and n + 4. Each code becomes the f16 whose exponent and mantissa bits are the
// code's: (1 + m/2) * 2^(e - 15), and the subnormal m * 2^-15 for e = 0, which is exactly the
// e2m1 value times 2^-14. Elements n and n + 4 sit 16 bits apart in the word, so one mask and one
// unpack2x16float decode two codes: a handful of integer operations per pair instead of a table
// (a dynamically indexed private array lands in slow local memory on NVIDIA).
fn fp4_decode8(w: u32) -> mat4x2<f32> {
    let m = 0x000f000fu;
    return mat4x2<f32>(
        fp4_pair(w & m),
        fp4_pair((w >> 4u) & m),
        fp4_pair((w >> 8u) & m),
        fp4_pair((w >> 12u) & m),
    );
}

// Dot product of 8 decoded codes with inputs a (elements 0..3) and b (elements 4..7).
fn fp4_dot8(c: mat4x2<f32>, a: vec4<f32>, b: vec4<f32>) -> f32 {
    return dot(c[0], vec2<f32>(a.x, b.x))
        + dot(c[1], vec2<f32>(a.y, b.y))
        + dot(c[2], vec2<f32>(a.z, b.z))
        + dot(c[3], vec2<f32>(a.w, b.w));
}

// Two codes, in the low nibbles of the two 16-bit halves of q, as values times 2^-14.
fn fp4_pair(q: u32) -> vec2<f32> {
    return unpack2x16float(((q & 0x00070007u) << 9u) | ((q & 0x00080008u) << 12u));
}

// The block scale for fp4_dot8's units: 2^(s - 127) * 2^14.
fn mx_scale(s: u32) -> f32 {
    return e8m0(s) * 16384.0;
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
