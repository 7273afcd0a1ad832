// Products two at a time in f16 (one instruction a pair), for the `fast` precision's f16 paths;
// the including shader enables f16. Eight values travel as four pairs; which elements share a
// pair is the caller's layout, the same for both operands of dot8_f16.
alias Pairs8 = array<vec2<f16>, 4>;

// The two f16 values packed in a word (through f32 because naga 30 rejects
// bitcast<vec2<f16>>(u32): a round trip that is exact, so a compiler may fold it away).
fn half_pair(w: u32) -> vec2<f16> {
    return vec2<f16>(unpack2x16float(w));
}

// acc plus the products of c with x, pair by pair. The caller keeps a chain short (a few words)
// and adds it into f32.
fn dot8_f16(c: Pairs8, x: Pairs8, acc: vec2<f16>) -> vec2<f16> {
    var s = fma(c[0], x[0], acc);
    s = fma(c[1], x[1], s);
    s = fma(c[2], x[2], s);
    return fma(c[3], x[3], s);
}
