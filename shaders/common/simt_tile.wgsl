// Portable tile products (f32, no subgroups, no f16), shared by the SIMT variant of moe.wgsl and
// linear.wgsl's `tiled`: a workgroup multiplies the TS inputs of its tile (expert slots or
// tokens) by TR rows of a weight matrix, KS = 16 columns of each at a time through workgroup
// memory. Thread (sq, rq) accumulates 8 inputs by 8 rows: inputs 4 sq .. 4 sq + 3 and the same
// TS / 2 further, rows 4 rq .. 4 rq + 3 and the same TR / 2 further, so that a column costs it
// four 16-byte loads of workgroup memory for 64 multiply-adds (a 4 x 4 thread tile needs half
// as many multiply-adds per load), and a warp's row loads are consecutive vec4s.
// Each step the includer's fetch(lid, step) brings the next KS columns of both operands into
// registers while the current ones are multiplied, and stash(lid, f) writes them with put_w and
// put_x (a column's 32 lanes store consecutive words: no bank conflicts). A sum runs over k in
// order in one thread, so an input's results do not depend on what else shares the pass.
// Results leave through the includer's store_quad(j, row, v): rows row .. row + 3 of tile input
// j. The includer defines TR and TS (multiples of 8, with KS (TR + TS) floats within WebGPU's
// 16 KiB of workgroup memory), Fetch, fetch, stash and store_quad, and runs TILE_WG invocations
// per workgroup.
#include "common/tile_step.wgsl"
const KS: u32 = 16u;
const TILE_WG: u32 = (TS / 8u) * (TR / 8u);

// [k][row / 4] and [k][input / 4] of the step.
var<workgroup> w_tile: array<vec4<f32>, KS * TR / 4u>;
var<workgroup> x_tile: array<vec4<f32>, KS * TS / 4u>;

fn put_w(k: u32, row: u32, v: f32) {
    w_tile[k * (TR / 4u) + row / 4u][row % 4u] = v;
}

fn put_x(k: u32, j: u32, v: f32) {
    x_tile[k * (TS / 4u) + j / 4u][j % 4u] = v;
}

// The tile's sums over `steps` steps of KS columns (fetch() gives zeros past the data), rows
// [row0, row0 + TR), handed to store_quad.
fn simt_products(lid: u32, row0: u32, steps: u32) {
    let rq = lid % (TR / 8u);
    let sq = lid / (TR / 8u);
    // a_ih: rows quad rq + h TR / 8 (h = 0, 1) by inputs quad sq + i TS / 8 (i = 0, 1), column c
    // for input c of the quad; named matrices, indexed by constants only.
    var a00 = mat4x4<f32>();
    var a01 = mat4x4<f32>();
    var a10 = mat4x4<f32>();
    var a11 = mat4x4<f32>();
    var f = fetch(lid, 0u);
    for (var s = 0u; s < steps; s++) {
        tile_step(lid, &f, s, steps);
        for (var kk = 0u; kk < KS; kk++) {
            let w0 = w_tile[kk * (TR / 4u) + rq];
            let w1 = w_tile[kk * (TR / 4u) + rq + TR / 8u];
            let x0 = x_tile[kk * (TS / 4u) + sq];
            let x1 = x_tile[kk * (TS / 4u) + sq + TS / 8u];
            a00 += mat4x4<f32>(w0 * x0.x, w0 * x0.y, w0 * x0.z, w0 * x0.w);
            a01 += mat4x4<f32>(w1 * x0.x, w1 * x0.y, w1 * x0.z, w1 * x0.w);
            a10 += mat4x4<f32>(w0 * x1.x, w0 * x1.y, w0 * x1.z, w0 * x1.w);
            a11 += mat4x4<f32>(w1 * x1.x, w1 * x1.y, w1 * x1.z, w1 * x1.w);
        }
    }
    let j0 = 4u * sq;
    let j1 = 4u * sq + TS / 2u;
    let r0 = row0 + 4u * rq;
    let r1 = r0 + TR / 2u;
    // Constant column indices, written out: a loop over them that the driver does not unroll
    // would index the matrices dynamically and send them to memory for the whole kernel.
    store_matrix(j0, r0, a00);
    store_matrix(j0, r1, a01);
    store_matrix(j1, r0, a10);
    store_matrix(j1, r1, a11);
}

// Column c of m: rows row .. row + 3 of tile input j + c.
fn store_matrix(j: u32, row: u32, m: mat4x4<f32>) {
    store_quad(j, row, m[0]);
    store_quad(j + 1u, row, m[1]);
    store_quad(j + 2u, row, m[2]);
    store_quad(j + 3u, row, m[3]);
}
