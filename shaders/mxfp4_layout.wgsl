// The expert blocks' GPU layout, made in place once after the upload: each word's 8 codes moved
// from the checkpoint's order (nibble n, low to high, is element n: e e m bits then the sign) to
// where common/mxfp4.wgsl's fp4_halves takes them with fewest operations. Element n's e e m bits
// go to EEM_AT[n] .. + 2, its sign to SIGN_AT[n]; elements n and n + 4 sit 16 bits apart.
// Bindings: words [n] u32, the count n. Grid: (x, y) workgroups, word (y * x + wx) * WG + lane.
@group(0) @binding(0) var<storage, read_write> words: array<u32>;
@group(0) @binding(1) var<uniform> count: vec4<u32>;

// Lanes per workgroup (the Rust side reads this line to size the grid).
const WG: u32 = 256u;
const EEM_AT = array<u32, 8>(9u, 2u, 5u, 12u, 25u, 18u, 21u, 28u);
const SIGN_AT = array<u32, 8>(15u, 8u, 0u, 1u, 31u, 24u, 16u, 17u);

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i >= count.x {
        return;
    }
    let w = words[i];
    var out = 0u;
    for (var e = 0u; e < 8u; e++) {
        let c = (w >> (4u * e)) & 15u;
        out |= ((c & 7u) << EEM_AT[e]) | ((c >> 3u) << SIGN_AT[e]);
    }
    words[i] = out;
}
