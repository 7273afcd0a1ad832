// The expert blocks' GPU layout, made in place once after the upload: each word's 8 codes moved
// from the checkpoint's order to where common/mxfp4.wgsl's fp4_halves takes them with fewest
// operations (gpu_layout there).
// Bindings: words [n] u32, the count n. Grid: (x, y) workgroups, word (y * x + wx) * WG + lane.
#include "common/mxfp4.wgsl"

@group(0) @binding(0) var<storage, read_write> words: array<u32>;
@group(0) @binding(1) var<uniform> count: vec4<u32>;

// Lanes per workgroup (the Rust side reads this line to size the grid).
const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i >= count.x {
        return;
    }
    words[i] = gpu_layout(words[i]);
}
