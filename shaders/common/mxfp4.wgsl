// MXFP4: blocks of 32 values, 16 bytes of e2m1 codes plus one e8m0 scale byte. In the checkpoint
// element 2j is the low nibble of byte j (nibble n of a little-endian word is element n of its
// 8); on the GPU each word's bits are moved once after the upload (mxfp4_layout.wgsl) to where
// fp4_halves takes them.
// The 8 codes of `w`, in units of 2^-14 (the caller folds 2^14 into the block scale): column n
// holds elements n and n + 4, the two f16 of fp4_halves(w)[n].
fn fp4_decode8(w: u32) -> mat4x2<f32> {
    let h = fp4_halves(w);
    return mat4x2<f32>(unpack2x16float(h[0]), unpack2x16float(h[1]), unpack2x16float(h[2]),
                       unpack2x16float(h[3]));
}

// Elements n and n + 4 of `w` as the two halves of f16 bit pattern n. Each code becomes the f16
// whose exponent and mantissa bits are the code's: (1 + m/2) * 2^(e - 15), and the subnormal
// m * 2^-15 for e = 0, which is exactly the e2m1 value times 2^-14: a code's e e m bits at 9..11
// of its half, its sign at 15. The GPU layout has pair 0 in place, pair 1 seven bits lower, pair
// 2's e e m bits at 5..7 and signs at 0, pair 3's at 12..14 and 1 (+16 for each pair's second
// code): 11 integer operations a word where the checkpoint's order took 15. (No third pair can
// sit a single shift away: no three translates of a pair's 8 bits are disjoint in a word.)
fn fp4_halves(w: u32) -> vec4<u32> {
    return vec4<u32>(
        w & 0x8e008e00u,
        (w << 7u) & 0x8e008e00u,
        ((w << 4u) & 0x0e000e00u) | ((w << 15u) & 0x80008000u),
        ((w >> 3u) & 0x0e000e00u) | ((w << 14u) & 0x80008000u),
    );
}

// The GPU layout of a checkpoint word (nibble n, low to high, is element n: e e m bits then the
// sign): element n's e e m bits go to EEM_AT[n] .. + 2, its sign to SIGN_AT[n], where fp4_halves
// takes them (mxfp4_layout.wgsl moves every expert block's words so once after the upload).
const EEM_AT = array<u32, 8>(9u, 2u, 5u, 12u, 25u, 18u, 21u, 28u);
const SIGN_AT = array<u32, 8>(15u, 8u, 0u, 1u, 31u, 24u, 16u, 17u);

fn gpu_layout(w: u32) -> u32 {
    var out = 0u;
    for (var e = 0u; e < 8u; e++) {
        let c = (w >> (4u * e)) & 15u;
        out |= ((c & 7u) << EEM_AT[e]) | ((c >> 3u) << SIGN_AT[e]);
    }
    return out;
}

// acc plus the dot product of 8 decoded codes with inputs a (elements 0..3) and b (elements
// 4..7), as one chain of multiply-adds: the sum a dot() form would take costs half again as many
// instructions (a multiply per pair and an add per dot), which shaders may not reassociate
// (H200: the grouped expert kernels 14.3 -> 13.4 ms of a batch-32 step, PERF.md v0.22).
fn fp4_dot8_acc(c: mat4x2<f32>, a: vec4<f32>, b: vec4<f32>, acc: f32) -> f32 {
    var s = fma(c[0].x, a.x, acc);
    s = fma(c[0].y, b.x, s);
    s = fma(c[1].x, a.y, s);
    s = fma(c[1].y, b.y, s);
    s = fma(c[2].x, a.z, s);
    s = fma(c[2].y, b.z, s);
    s = fma(c[3].x, a.w, s);
    return fma(c[3].y, b.w, s);
}

// The block scale for fp4_decode8's units: 2^(s - 127) * 2^14, the float whose exponent field is
// s + 14 (one integer multiply-add, and never subnormal); bytes from 241 up give +inf, as the
// product in f32 would.
fn mx_scale(s: u32) -> f32 {
    return bitcast<f32>(min(s, 241u) * 0x00800000u + 0x07000000u);
}

#ifdef F16_PRODUCTS
// 8 inputs (or codes) as f16 pairs in fp4_halves' order: pair n holds elements n and n + 4.
#include "common/f16_pairs.wgsl"

// 8 inputs as Pairs8, from a (elements 0..3) and b (4..7).
fn f16_pairs(a: vec4<f32>, b: vec4<f32>) -> Pairs8 {
    return Pairs8(vec2<f16>(vec2<f32>(a.x, b.x)), vec2<f16>(vec2<f32>(a.y, b.y)),
                  vec2<f16>(vec2<f32>(a.z, b.z)), vec2<f16>(vec2<f32>(a.w, b.w)));
}

// The 8 codes of `w` in fp4_decode8's units, as f16 pairs (fp4_halves' own bit patterns).
fn fp4_pairs(w: u32) -> Pairs8 {
    let h = fp4_halves(w);
    return Pairs8(half_pair(h[0]), half_pair(h[1]), half_pair(h[2]), half_pair(h[3]));
}
#endif

// Byte `i` of a u32 array viewed as bytes.
fn byte_of(word: u32, i: u32) -> u32 {
    return (word >> ((i & 3u) * 8u)) & 0xffu;
}
