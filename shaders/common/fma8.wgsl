// acc plus the dot product of 8 values c (column n: elements n and n + 4, as fp4_decode8 and
// bf16_dot8_acc lay them out) with inputs a (elements 0..3) and b (elements 4..7), as one chain of
// multiply-adds: the sum a dot() form would take costs half again as many instructions (a
// multiply per pair and an add per dot), which shaders may not reassociate (H200: the grouped
// expert kernels 14.3 -> 13.4 ms of a batch-32 step, PERF.md v0.22).
fn fma8_acc(c: mat4x2<f32>, a: vec4<f32>, b: vec4<f32>, acc: f32) -> f32 {
    var s = fma(c[0].x, a.x, acc);
    s = fma(c[0].y, b.x, s);
    s = fma(c[1].x, a.y, s);
    s = fma(c[1].y, b.y, s);
    s = fma(c[2].x, a.z, s);
    s = fma(c[2].y, b.z, s);
    s = fma(c[3].x, a.w, s);
    return fma(c[3].y, b.w, s);
}
