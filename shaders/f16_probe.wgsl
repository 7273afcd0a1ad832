// Whether f16 arithmetic keeps subnormals, as the f16-pair expert products need: codes of +-0.5
// decode to the subnormal f16 2^-15 (common/mxfp4.wgsl's fp4_halves), and a product chain may pass
// through subnormal partial sums. A driver that flushes them would make those codes zero, so
// src/gpu/context.rs runs this once per device and keeps f32 products where the answer is wrong.
// v[0..8]: eight inputs (1.0 from the host, so that nothing folds at compile time); v[8]: a word of
// eight codes 0.5 in the checkpoint's order, moved to the kernels' layout here as the upload moves
// the experts' (gpu_layout); v[9] = the dot product, in fp4_decode8's units (2^-12 when
// subnormals work).
enable f16;
#include "common/mxfp4.wgsl"

@group(0) @binding(0) var<storage, read_write> v: array<u32>;

@compute @workgroup_size(1)
fn main() {
    let a = bitcast<vec4<f32>>(vec4<u32>(v[0], v[1], v[2], v[3]));
    let b = bitcast<vec4<f32>>(vec4<u32>(v[4], v[5], v[6], v[7]));
    let s = dot8_f16(fp4_pairs(gpu_layout(v[8])), f16_pairs(a, b), vec2<f16>());
    v[9] = bitcast<u32>(f32(s.x) + f32(s.y));
}
