// Portable tile products (f32, no subgroups, no f16), shared by the SIMT variant of moe.wgsl and
// linear.wgsl's `tiled`: a workgroup multiplies the TS inputs of its tile (expert slots or
// tokens) by TR rows of a weight matrix, KS = 16 columns of each at a time through workgroup
// memory. Thread (sq, rq) accumulates 8 inputs by 8 rows: inputs 4 sq .. 4 sq + 3 and the same
// TS / 2 further, rows 4 rq .. 4 rq + 3 and the same TR / 2 further, so that a column costs it
// four 16-byte loads of workgroup memory for 64 multiply-adds (a 4 x 4 thread tile needs half
// as many multiply-adds per load), and a warp's row loads are consecutive vec4s.
// Each step the includer's fetch(lid, step) brings the next KS columns of both operands into
// registers while the current ones are multiplied, and stash() writes them to workgroup memory
// (a column's 32 lanes store consecutive words: no bank conflicts). A thread's items per step:
// item u of the W tile is 8 weights of tile row u % TR, columns 8 (u / TR) .. + 7, item u of the
// X tile the same 8 columns of tile input u % TS; thread lid has items lid + i TILE_WG (i < WI,
// XI), which the includer's weights8(f, i) and inputs8(f, i) turn into their 8 values (columns
// 0..3, then 4..7). A sum runs over k in order in one thread, so an input's results do not
// depend on what else shares the pass. Results leave through the includer's store_quad(j, row,
// v): rows row .. row + 3 of tile input j. The includer defines TR and TS (multiples of 8, with
// KS (TR + TS) floats within WebGPU's 16 KiB of workgroup memory), Fetch, fetch, weights8,
// inputs8 and store_quad, and runs TILE_WG invocations per workgroup.
#include "common/tile_step.wgsl"
const KS: u32 = 16u;
const TILE_WG: u32 = (TS / 8u) * (TR / 8u);

const WI: u32 = (KS / 8u) * TR / TILE_WG;
const XI: u32 = (KS / 8u) * TS / TILE_WG;

// [k][row / 4] and [k][input / 4] of the step.
var<workgroup> w_tile: array<vec4<f32>, KS * TR / 4u>;
var<workgroup> x_tile: array<vec4<f32>, KS * TS / 4u>;

fn put_w(k: u32, row: u32, v: f32) {
    w_tile[k * (TR / 4u) + row / 4u][row % 4u] = v;
}

fn put_x(k: u32, j: u32, v: f32) {
    x_tile[k * (TS / 4u) + j / 4u][j % 4u] = v;
}

// Writes a fetched step into the tiles.
fn stash(lid: u32, f: Fetch) {
    for (var i = 0u; i < WI; i++) {
        let u = lid + i * TILE_WG;
        let v = weights8(f, i);
        for (var q = 0u; q < 4u; q++) {
            put_w(8u * (u / TR) + q, u % TR, v[0][q]);
            put_w(8u * (u / TR) + q + 4u, u % TR, v[1][q]);
        }
    }
    for (var i = 0u; i < XI; i++) {
        let u = lid + i * TILE_WG;
        let v = inputs8(f, i);
        for (var q = 0u; q < 4u; q++) {
            put_x(8u * (u / TS) + q, u % TS, v[0][q]);
            put_x(8u * (u / TS) + q + 4u, u % TS, v[1][q]);
        }
    }
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
