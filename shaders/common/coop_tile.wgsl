// Tensor-core tile products, shared by the COOP variants of moe.wgsl and linear.wgsl: a workgroup
// multiplies the TS inputs of its tile (expert slots or tokens) by TR rows of a weight matrix, KS =
// 32 KB inputs of each at a time (KB MXFP4 blocks). Each step the includer's fetch(lid, step)
// brings the next KS columns of both operands into registers while the tensor cores multiply the
// current ones, and stash() writes them to workgroup memory as f16 (the includer's weights8 and
// inputs8 turn what was fetched for item u into its 8 values as 4 pairs, value j for column
// item_col(u, j)): weights as f16 (bf16 and scaled e2m1 values are exact in f16 within its range;
// to_h clamps beyond it), inputs in f32 through put_x: with SPLIT_INPUTS (a define, not a branch:
// no control flow around the matrix operations) as two f16 parts (high and the rest) multiplied one
// after the other, so that inputs keep about 22 bits instead of f16's 11 (on the parity checkpoint
// q/k/v's f16 inputs move the logits by 1.7e-2 relative L2, split ones by 6e-4; o_proj's, the
// lm_head's and the experts' f16 inputs add little: PERF.md v0.12, v0.52). Subgroups of 32 each own
// 16 inputs by SUB_ROWS rows: 64 (four 16 x 16 f32 accumulators) or 16 (one), so that tiles of few
// inputs (a decode batch's tokens) still get enough subgroups to share the decoding of their
// weights; results leave through the includer's store_rows(j, row, v): input j of the tile, rows
// row and row + 1. The includer enables f16 and wgpu_cooperative_matrix and defines TS, TR and
// SUB_ROWS (TS a multiple of 16, TR of SUB_ROWS), KB (blocks of 32 inputs per step: more halve the
// steps and their barriers and put more bytes in flight per step, but take more registers and
// workgroup memory; PERF.md v0.15), Fetch, fetch(lid, step), weights8(f, i, u), inputs8(f, i, u),
// item_col(u, j), x_live() (the tile's inputs that are stored: a decode batch's expert has ~8 of
// 64) and store_rows (with DIRECT_DRAIN store_block instead; with DRAIN_QUADS store_quad(j, row,
// v), rows row .. row + 3 of input j), and runs TILE_WG invocations per workgroup.
#include "common/tile_step.wgsl"
const TILE_WG: u32 = 32u * (TS / 16u) * (TR / SUB_ROWS);
const KS: u32 = 32u * KB;
// A thread's items per step: item u of the W tile is 8 weights of tile row item_row(u), item u of
// the X tile the same 8 inputs of tile input item_row(u); thread lid has items lid + i TILE_WG.
// Value j of an item is column item_col(u, j) of the step, values 2q and 2q + 1 adjacent. The
// includer picks item_col from the two layouts below: col_chunk gives each item 8 adjacent
// columns (one 16-byte load of bf16 weights; but the 4 lanes of a row store into one memory
// bank, 4-way conflicts), col_spread gives lane b of a block's four columns 8q + 2b + {0, 1}, so
// each of stash()'s four stores puts its 32 lanes (8 rows of 4) in 32 different banks (MXFP4
// blocks: which elements a column holds is the includer's, the same for both operands).
const WI: u32 = (TR * 4u * KB + TILE_WG - 1u) / TILE_WG;
const XI: u32 = (TS * 4u * KB + TILE_WG - 1u) / TILE_WG;

fn item_row(u: u32) -> u32 {
    return u / (4u * KB);
}

// Which 8 of the step's columns: in col_chunk the chunk of 8, in col_spread block part / 4 and
// lane part % 4 of it.
fn item_part(u: u32) -> u32 {
    return u % (4u * KB);
}

fn col_chunk(u: u32, j: u32) -> u32 {
    return 8u * item_part(u) + j;
}

fn col_spread(u: u32, j: u32) -> u32 {
    let part = item_part(u);
    return 32u * (part / 4u) + 8u * (j / 2u) + 2u * (part % 4u) + j % 2u;
}

// [input][k] (high and low parts) and [row][k] of the step, rows KP apart: the padding spreads
// a fragment's 16 rows over the memory banks. Stored as pairs of columns, so that a store moves
// two values (a four-byte store instead of two two-byte ones: fewer instructions for the same
// bytes); the matrix loads read them as f16 with strides and offsets counted in pairs.
const KP: u32 = KS + 8u;
const KP2: u32 = KP / 2u;
var<workgroup> x_hi: array<vec2<f16>, TS * KP2>;
#ifdef SPLIT_INPUTS
var<workgroup> x_lo: array<vec2<f16>, TS * KP2>;
#endif
var<workgroup> w_h: array<vec2<f16>, TR * KP2>;
// Per subgroup, one 16 x 16 accumulator tile [input][row] on its way out.
var<workgroup> stage: array<f32, (TILE_WG / 32u) * 256u>;

fn to_h(v: vec2<f32>) -> vec2<f16> {
    return vec2<f16>(clamp(v, vec2<f32>(-65504.0), vec2<f32>(65504.0)));
}

// Input pair i of the tile as a high part (each value's top 11 significant bits, exact in f16
// within its range) and the rest (exact in f32, rounded to f16 at 2^-11 of itself: 2^-22 of v).
fn put_x(i: u32, v: vec2<f32>) {
#ifdef SPLIT_INPUTS
    let hi = bitcast<vec2<f32>>(bitcast<vec2<u32>>(v) & vec2<u32>(0xffffe000u));
    x_hi[i] = to_h(hi);
    x_lo[i] = to_h(v - hi);
#else
    x_hi[i] = to_h(v);
#endif
}

// Writes a fetched block into the tiles.
fn stash(lid: u32, f: Fetch) {
    for (var i = 0u; i < WI; i++) {
        let u = lid + i * TILE_WG;
        if u < TR * 4u * KB {
            let v = weights8(f, i, u);
            for (var q = 0u; q < 4u; q++) {
                w_h[(item_row(u) * KP + item_col(u, 2u * q)) / 2u] = v[q];
            }
        }
    }
    // Rows past the live inputs are left as they are: their sums are never stored.
    let live = x_live();
    for (var i = 0u; i < XI; i++) {
        let u = lid + i * TILE_WG;
        if u < TS * 4u * KB && item_row(u) < live {
            let v = inputs8(f, i, u);
            for (var q = 0u; q < 4u; q++) {
                put_x((item_row(u) * KP + item_col(u, 2u * q)) / 2u, v[q]);
            }
        }
    }
}

// Subgroup sg's output tile n (its inputs 16 ss .., rows r0 + 16 n ..) handed to store_rows two
// rows at a time (with DRAIN_QUADS to store_quad four at a time: whole words of f16 outputs), or
// with DIRECT_DRAIN to the includer's store_block(c, ss, row) whole, which stores it straight to
// memory without the round trip through `stage` and its two barriers (H200, the dense layers'
// decode tiles at batch 16 / 32: 14 / 6% faster, PERF.md v0.33).
fn drain(c: coop_mat16x16<f32, C>, n: u32, sg: u32, lane: u32, r0: u32) {
#ifdef DIRECT_DRAIN
    store_block(c, sg % (TS / 16u), r0 + 16u * n);
#else
    workgroupBarrier();
    coopStoreT(c, &stage[sg * 256u], 16u);
    workgroupBarrier();
    let ss = sg % (TS / 16u);
#ifdef DRAIN_QUADS
    for (var q = lane; q < 64u; q += 32u) {
        let m = q / 4u;
        let at = sg * 256u + m * 16u + 4u * (q % 4u);
        let v = vec4<f32>(stage[at], stage[at + 1u], stage[at + 2u], stage[at + 3u]);
        store_quad(16u * ss + m, r0 + 16u * n + 4u * (q % 4u), v);
    }
#else
    for (var q = lane; q < 128u; q += 32u) {
        let m = q / 8u;
        let pr = q % 8u;
        let at = sg * 256u + m * 16u + 2u * pr;
        store_rows(16u * ss + m, r0 + 16u * n + 2u * pr, vec2<f32>(stage[at], stage[at + 1u]));
    }
#endif
#endif
}

// The tile's products over n_blocks blocks of 32 inputs (fetch() gives zeros past them), rows
// [row0, row0 + TR).
fn coop_products(lid: u32, row0: u32, n_blocks: u32) {
    let steps = (n_blocks + KB - 1u) / KB;
    // Subgroup sg multiplies inputs 16 ss .. by rows SUB_ROWS sr .. of the tile.
    let sg = lid / 32u;
    let lane = lid % 32u;
    let ss = sg % (TS / 16u);
    let sr = sg / (TS / 16u);
    // c1 .. c3 only with 64 rows (a constant condition: no code otherwise).
    let four = SUB_ROWS == 64u;
    var c0 = coop_mat16x16<f32, C>();
    var c1 = coop_mat16x16<f32, C>();
    var c2 = coop_mat16x16<f32, C>();
    var c3 = coop_mat16x16<f32, C>();
    // With SPARSE_TILES (the includer's passes whose tiles are mostly dead inputs: a decode
    // batch's expert holds ~8 of 64), subgroups whose 16 inputs are all dead skip their products,
    // whose sums are never stored. Full tiles would only pay the check (prefill -1.3%, PERF.md
    // v0.27), hence a define.
#ifdef SPARSE_TILES
    let k_end = select(0u, KS / 2u, 16u * ss < x_live());
#else
    let k_end = KS / 2u;
#endif
    var f = fetch(lid, 0u);
    for (var b = 0u; b < steps; b++) {
        tile_step(lid, &f, b, steps);
        for (var kk = 0u; kk < k_end; kk += 8u) {
            let a_hi = coopLoadT<coop_mat16x16<f16, A>>(&x_hi[16u * ss * KP2 + kk], KP2);
            let w0 = SUB_ROWS * sr * KP2 + kk;
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&w_h[w0], KP2);
            c0 = coopMultiplyAdd(a_hi, b0, c0);
#ifdef SPLIT_INPUTS
            let a_lo = coopLoadT<coop_mat16x16<f16, A>>(&x_lo[16u * ss * KP2 + kk], KP2);
            c0 = coopMultiplyAdd(a_lo, b0, c0);
#endif
            if four {
                let b1 = coopLoad<coop_mat16x16<f16, B>>(&w_h[w0 + 16u * KP2], KP2);
                let b2 = coopLoad<coop_mat16x16<f16, B>>(&w_h[w0 + 32u * KP2], KP2);
                let b3 = coopLoad<coop_mat16x16<f16, B>>(&w_h[w0 + 48u * KP2], KP2);
                c1 = coopMultiplyAdd(a_hi, b1, c1);
                c2 = coopMultiplyAdd(a_hi, b2, c2);
                c3 = coopMultiplyAdd(a_hi, b3, c3);
#ifdef SPLIT_INPUTS
                c1 = coopMultiplyAdd(a_lo, b1, c1);
                c2 = coopMultiplyAdd(a_lo, b2, c2);
                c3 = coopMultiplyAdd(a_lo, b3, c3);
#endif
            }
        }
    }
    let r0 = row0 + SUB_ROWS * sr;
    drain(c0, 0u, sg, lane, r0);
    if four {
        drain(c1, 1u, sg, lane, r0);
        drain(c2, 2u, sg, lane, r0);
        drain(c3, 3u, sg, lane, r0);
    }
}
