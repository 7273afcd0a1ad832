// bf16 pairs packed in u32 words: the element at the even index is the low half (little endian).
// bf16 is the top half of an f32, so widening is a shift.
fn bf16_lo(w: u32) -> f32 {
    return bitcast<f32>(w << 16u);
}

fn bf16_hi(w: u32) -> f32 {
    return bitcast<f32>(w & 0xffff0000u);
}

// 8 bf16 weights (4 words) widened: elements 0..3, then 4..7.
fn bf16_wide8(q: vec4<u32>) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(
        vec4<f32>(bf16_lo(q.x), bf16_hi(q.x), bf16_lo(q.y), bf16_hi(q.y)),
        vec4<f32>(bf16_lo(q.z), bf16_hi(q.z), bf16_lo(q.w), bf16_hi(q.w)),
    );
}

// 8 bf16 weights (4 words) against 8 inputs (a: elements 0..3, b: 4..7).
fn bf16_dot8(q: vec4<u32>, a: vec4<f32>, b: vec4<f32>) -> f32 {
    let w = bf16_wide8(q);
    return dot(w[0], a) + dot(w[1], b);
}

// acc plus w . a as one chain of multiply-adds (a dot() form costs a multiply and an add more,
// PERF.md v0.22).
fn fma4_acc(w: vec4<f32>, a: vec4<f32>, acc: f32) -> f32 {
    return fma(w.w, a.w, fma(w.z, a.z, fma(w.y, a.y, fma(w.x, a.x, acc))));
}

// acc plus 8 widened weights (w[0]: elements 0..3, w[1]: 4..7) against 8 inputs, in element order
// (on the H200 faster than the pairwise order of mxfp4.wgsl's chain: batch 4 645 -> 667 tok/s,
// PERF.md v0.29).
fn dot8_acc(w: array<vec4<f32>, 2>, a: vec4<f32>, b: vec4<f32>, acc: f32) -> f32 {
    return fma4_acc(w[1], b, fma4_acc(w[0], a, acc));
}
