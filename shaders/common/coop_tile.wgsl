// Tensor-core tile products, shared by the COOP variants of moe.wgsl and linear.wgsl: a
// workgroup multiplies the TS inputs of its tile (expert slots or tokens) by TR rows of a weight
// matrix, 32 inputs of each at a time. Each step the includer's fetch() brings the next 32
// columns of both operands into registers while the tensor cores multiply the current ones, and
// stash() writes them to x_h and w_h as f16 (values clamped to its range). Subgroups of 32 each
// own 16 inputs by 64 rows (four 16 x 16 f32 accumulators); results leave through the includer's
// store_rows(j, row, v): input j of the tile, rows row and row + 1. The includer enables f16 and
// wgpu_cooperative_matrix and defines TS and TR (multiples of 16 and 64), Fetch, fetch(lid, b),
// stash(lid, f) and store_rows, and runs TILE_WG invocations per workgroup.
const TILE_WG: u32 = 32u * (TS / 16u) * (TR / 64u);

// [input][k] and [row][k] of the block, rows KP apart: the padding spreads a fragment's 16 rows
// over the memory banks.
const KP: u32 = 40u;
var<workgroup> x_h: array<f16, TS * KP>;
var<workgroup> w_h: array<f16, TR * KP>;
// Per subgroup, one 16 x 16 accumulator tile [input][row] on its way out.
var<workgroup> stage: array<f32, (TILE_WG / 32u) * 256u>;

fn to_h(v: f32) -> f16 {
    return f16(clamp(v, -65504.0, 65504.0));
}

// Subgroup sg's output tile n (its inputs 16 ss .., rows r0 + 16 n ..) handed to store_rows.
fn drain(c: coop_mat16x16<f32, C>, n: u32, sg: u32, lane: u32, r0: u32) {
    workgroupBarrier();
    coopStoreT(c, &stage[sg * 256u], 16u);
    workgroupBarrier();
    let ss = sg % (TS / 16u);
    for (var q = lane; q < 128u; q += 32u) {
        let m = q / 8u;
        let pr = q % 8u;
        let at = sg * 256u + m * 16u + 2u * pr;
        store_rows(16u * ss + m, r0 + 16u * n + 2u * pr, vec2<f32>(stage[at], stage[at + 1u]));
    }
}

// The tile's products over n_blocks steps of 32 inputs, rows [row0, row0 + TR).
fn coop_products(lid: u32, row0: u32, n_blocks: u32) {
    // Subgroup sg multiplies inputs 16 ss .. by rows 64 sr .. of the tile.
    let sg = lid / 32u;
    let lane = lid % 32u;
    let ss = sg % (TS / 16u);
    let sr = sg / (TS / 16u);
    var c0 = coop_mat16x16<f32, C>();
    var c1 = coop_mat16x16<f32, C>();
    var c2 = coop_mat16x16<f32, C>();
    var c3 = coop_mat16x16<f32, C>();
    var f = fetch(lid, 0u);
    for (var b = 0u; b < n_blocks; b++) {
        workgroupBarrier();
        stash(lid, f);
        if b + 1u < n_blocks {
            f = fetch(lid, b + 1u);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk += 16u) {
            let a = coopLoadT<coop_mat16x16<f16, A>>(&x_h[16u * ss * KP + kk], KP);
            let w0 = 64u * sr * KP + kk;
            c0 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&w_h[w0], KP), c0);
            c1 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&w_h[w0 + 16u * KP], KP), c1);
            c2 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&w_h[w0 + 32u * KP], KP), c2);
            c3 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&w_h[w0 + 48u * KP], KP), c3);
        }
    }
    let r0 = row0 + 64u * sr;
    drain(c0, 0u, sg, lane, r0);
    drain(c1, 1u, sg, lane, r0);
    drain(c2, 2u, sg, lane, r0);
    drain(c3, 3u, sg, lane, r0);
}
