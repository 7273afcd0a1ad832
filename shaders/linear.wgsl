#ifdef COOP
enable f16;
enable wgpu_cooperative_matrix;
#endif
#ifdef ROPE
#include "common/kv.wgsl"
#endif
// Dense layer with bf16 weights:
// y[t, row_start + r] (+)= sum_k x[t, k] * W[r, k] + bias[row_start + r],
// for passes above the matrix-vector kernel's (linear_vec.wgsl). Bindings: x [count, k] f32, W rows
// [rows, k] bf16 (this buffer's part of the matrix), bias [n_out] f32, y [count, n_out] f32.
// ACCUMULATE (a parameter) adds into y (the residual stream) instead of overwriting. Four entries:
// tiled (with SIMT and TILES; k a multiple of 8): TS tokens by TR rows per workgroup through
//   workgroup memory in f32 (common/simt_tile.wgsl), 8 weights and 8 inputs per load. Grid:
//   (ceil(rows / TR), ceil(count / TS)).
// coop (with COOP and TILES; k a multiple of 32): the tensor-core path of the `fast` precision
//   (common/coop_tile.wgsl): inputs in f16, or with SPLIT_INPUTS in two f16 parts (the q/k/v
//   projection: there f16 inputs alone move the logits 20 times more), f32 sums. Grid:
//   (ceil(rows / TR), ceil(count / TS)).
// staged (with STAGED and TILES; k a multiple of 8): decode passes of up to STAGED_TS tokens
//   (FEW: STAGED_FEW_TS), f32 products, the tokens' inputs through workgroup memory (below).
//   With NORM (and SPLIT_K) it reads the un-normed input and multiplies it by the gains (binding
//   5), and sum_splits applies each token's RMSNorm scale: no rmsnorm dispatch before it. Grid:
//   (ceil(rows / TR), ceil(count / TS)).
// main (any even k): R rows for TT tokens per workgroup, each lane a strided part of k, reduced
//   across the workgroup (SUBGROUPS: in registers first); ONE_TOKEN (TT = 1) serves passes of a
//   single row, where the token tile would only add reduction work. Grid: (ceil(rows / R),
//   ceil(count / TT)).
// A pass of one token tile (decode batches) would give a layer of few rows a few dozen
// workgroups (q/k/v: 40 tiles of 128 rows on a GPU of 132 cores), each running the whole of k.
// With SPLIT_K the tile entries cut k into p.splits ranges of p.split_units 8-input units
// (grid z), each writing its sums to part [count, splits, n_out] (binding 4, in place of bias
// and y); sum_splits (SPLIT_SUM) then adds a token's ranges in order and stores as the others
// do. Bindings: part, bias, y. Grid: (ceil(n_out / SUM_WG), count). With ROPE (the q/k/v
// projection) a thread takes a rotation pair (i, i + D/2) of a head instead of a column, and
// rotates and stores it as rope.wgsl would (q into y, k and v into the cache: no rope dispatch
// for decode batches). Extra bindings: tokens, table, k_cache, v_cache. Grid: (ceil(n_out / 2 /
// SUM_WG), count). With NORM the sums are multiplied by the token's RMSNorm scale, reduced by
// each workgroup from the un-normed input (an extra binding after the others).
// Each entry gives a token the same sums in the same order whatever else is in the pass. TILES
// gives the three tile entries their bindings (8 values per load) and shared tile helpers.
#include "common/step.wgsl"
#include "common/bf16.wgsl"

#include "common/linear_params.wgsl"
#ifdef SPLIT_SUM
@group(0) @binding(2) var<storage, read> part: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
#ifdef ROPE
@group(0) @binding(5) var<storage, read> tokens: array<TokenInfo>;
@group(0) @binding(6) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> k_cache: array<kv>;
@group(0) @binding(8) var<storage, read_write> v_cache: array<kv>;
#include "common/rope.wgsl"
#endif
#ifdef NORM
// The un-normed input [count, k] (the staged tiles multiplied their inputs by the gains): the
// binding after the others.
#ifdef ROPE
@group(0) @binding(9) var<storage, read> norm_x: array<vec4<f32>>;
#else
@group(0) @binding(5) var<storage, read> norm_x: array<vec4<f32>>;
#endif
const WG: u32 = SUM_WG;
const NV: u32 = 1u;
#include "common/reduce.wgsl"
#endif
#else
#ifdef TILES
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
#endif
#ifdef SPLIT_K
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
#ifdef NORM
// The fused norm's gains [k] (STAGED with SPLIT_K only: sum_splits applies the norm's scale).
@group(0) @binding(5) var<storage, read> gain: array<vec4<f32>>;
#endif
#else
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
#endif
#endif
#ifndef SPLIT_K
#include "common/linear_out.wgsl"
#endif

// Columns per sum_splits workgroup (the Rust side reads this line).
const SUM_WG: u32 = 64u;

#ifdef SPLIT_SUM
// Token t's sum of column col over the k ranges, in range order.
fn split_sum(t: u32, col: u32) -> f32 {
    var sum = 0.0;
    for (var z = 0u; z < p.splits; z++) {
        sum += part[(t * p.splits + z) * p.n_out + col];
    }
    return sum;
}

#include "common/lanes.wgsl"

// With NORM, RMSNorm's scale of token t (its inputs' sum of squares over the workgroup); else 1.
// Called from uniform control flow.
fn norm_scale(l: Lanes, t: u32) -> f32 {
#ifdef NORM
    reduce_setup(l);
    var ss: array<f32, NV>;
    for (var i = l.lid; i < p.k / 4u; i += SUM_WG) {
        let v = norm_x[t * (p.k / 4u) + i];
        ss[0] += dot(v, v);
    }
    reduce_sum(&ss);
    return inverseSqrt(red[0] / f32(p.k) + p.eps);
#else
    return 1.0;
#endif
}

// The token is the workgroup's (grid y), so that the early return is uniform for the norm's
// barriers.
@compute @workgroup_size(SUM_WG)
fn sum_splits(l: Lanes, @builtin(global_invocation_id) id: vec3<u32>,
              @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    if t >= step_count(p.count_which) {
        return;
    }
    let scale = norm_scale(l, t);
#ifdef ROPE
    let half = p.head_dim / 2u;
    let head = id.x / half;
    let i = id.x % half;
    let col = head * p.head_dim + i;
    if col >= p.n_out {
        return;
    }
    var x = vec2<f32>(split_sum(t, col), split_sum(t, col + half)) * scale;
    if p.has_bias != 0u {
        x += vec2<f32>(bias[col], bias[col + half]);
    }
    let o = rope_pair(tokens[t], head, i, x);
    if head < p.n_heads {
        y[t * p.n_out + col] = o.x;
        y[t * p.n_out + col + half] = o.y;
    }
#else
    let col = id.x;
    if col < p.n_out {
        store_out(t, col, split_sum(t, col) * scale);
    }
#endif
}
#endif

// Tokens and rows per tile of each tile entry, and blocks of 32 inputs per step of the
// tensor-core tiles (the Rust side reads these lines; the portable tiles' step is KS = 16).
const SIMT_TS: u32 = 64u;
const SIMT_TR: u32 = 128u;
const COOP_TS: u32 = 64u;
const COOP_TR: u32 = 128u;
// STAGED (decode batches above linear_vec's): tokens and rows a tile, rows a lane, 8-input
// units of each token's inputs in workgroup memory at once, and about how many workgroups a
// pass (k cut to reach them; the Rust side reads these lines). H200, batch 8 (PERF.md v0.30):
// 4 rows a lane 1734 us a step against 2208 with 2 and 3221 with 1 (each input read from
// workgroup memory serves more rows); 16 tokens a tile lost to the narrow tensor-core tiles.
const STAGED_TS: u32 = 8u;
// FEW: the passes of up to STAGED_FEW_TS tokens take tiles of that many (16 sums a lane, 80
// registers against 124: H200 batch 3 / 4 593.9 / 726.4 tok/s against 571.8 / 698.9).
const STAGED_FEW_TS: u32 = 4u;
const STAGED_TR: u32 = 128u;
const STAGED_RL: u32 = 4u;
const STAGED_KC: u32 = 64u;
const STAGED_WORKGROUPS: u32 = 1024u;
// NARROW (with COOP): the tensor-core tiles for passes of up to NARROW_TS tokens (decode
// batches), 16 tokens a tile and a subgroup per 16 rows rather than 64 (common/coop_tile.wgsl),
// so that the subgroups that would only multiply the zeros of absent tokens decode weights too.
const NARROW_TS: u32 = 16u;
// Two blocks a step: 65 -> 45 ms of a 2048-token pass on the H200 (PERF.md v0.15).
const COOP_KB: u32 = 2u;
// SPLIT_K: about this many workgroups a pass, each range at least this many steps.
const SPLIT_WORKGROUPS: u32 = 256u;
const SPLIT_MIN_STEPS: u32 = 4u;
// The tensor-core tiles with k cut store their sums straight to part (DIRECT_DRAIN) in passes of
// up to this many tokens; above, through workgroup memory (H200, PERF.md v0.33: batch 16 / 32
// +3.0 / +1.2% direct, 56 / 64 -0.2 / -0.3%).
const DIRECT_DRAIN_MAX_TOKENS: u32 = 48u;
// The largest pass the tiles leave to linear_vec.wgsl, with and without tensor cores, and the
// first that the staged tiles take from it (src/kernels/linear.rs plan()): on the H200 the
// staged tiles win from 3 tokens (3 / 4 / 5: 578 / 695 / 764 against 566 / 666 / 723 tok/s; 2:
// 431 against 438, PERF.md v0.30), on the portable path from 2 (408 against 373); there
// linear_vec keeps 9-16 (batch 12: 922 against the portable tiles' 800).
const COOP_VEC_MAX_TOKENS: u32 = 2u;
const SIMT_VEC_MAX_TOKENS: u32 = 16u;
const COOP_STAGED_FROM: u32 = 3u;
const SIMT_STAGED_FROM: u32 = 2u;
// Rows of linear_vec's `short` entry (a small model's lm_head) stay with it up to here (lavapipe,
// the test model's batch 8: 168 ms a step, 220 with the staged tiles).
const SHORT_VEC_MAX_TOKENS: u32 = 16u;

#ifdef TILES
#ifdef STAGED
#ifdef FEW
const TS: u32 = STAGED_FEW_TS;
#else
const TS: u32 = STAGED_TS;
#endif
const TR: u32 = STAGED_TR;
#else
#ifdef COOP
#ifdef NARROW
const TS: u32 = NARROW_TS;
const SUB_ROWS: u32 = 16u;
#else
const TS: u32 = COOP_TS;
const SUB_ROWS: u32 = 64u;
#endif
const TR: u32 = COOP_TR;
#else
const TS: u32 = SIMT_TS;
const TR: u32 = SIMT_TR;
#endif
#endif

// The tile entries' first token and row, the pass's tokens, and the tile's range of k in
// 8-input units: [tile_unit0, tile_unit_end).
var<private> tile_t0: u32;
var<private> tile_count: u32;
var<private> tile_row0: u32;
var<private> tile_unit0: u32;
var<private> tile_unit_end: u32;
var<private> tile_split: u32;

// The tile's range of k: computed from the grid and the parameters rather than read back from
// the private copies, so that the step loop's bound (barriers inside) is uniform to analyses
// such as Tint's, which take private variables to vary by invocation.
fn tile_units(wg: vec3<u32>) -> vec2<u32> {
    let unit0 = wg.z * p.split_units;
    return vec2<u32>(unit0, min(p.k / 8u, unit0 + p.split_units));
}

// Sets the tile's state; returns its range of k (tile_units).
fn tile_begin(wg: vec3<u32>) -> vec2<u32> {
    let units = tile_units(wg);
    tile_count = step_count(p.count_which);
    tile_t0 = wg.y * TS;
    tile_row0 = wg.x * TR;
    tile_split = wg.z;
    tile_unit0 = units.x;
    tile_unit_end = units.y;
    return units;
}

#ifndef STAGED
// A thread's loads for one step of the tile file's WI weight and XI input items: 8 bf16 weights
// (one 16-byte load) or the same 8 inputs of a token (two vec4 loads).
struct Fetch {
    w: array<vec4<u32>, WI>,
    x: array<vec4<f32>, 2u * XI>,
}
#endif

// Token j of the tile, row `row` of this buffer (SPLIT_K: the tile's range's sum, in part).
fn store_tile(j: u32, row: u32, v: f32) {
    let t = tile_t0 + j;
    if t < tile_count && row < p.rows {
#ifdef SPLIT_K
        part[(t * p.splits + tile_split) * p.n_out + p.row_start + row] = v;
#else
        store_out(t, p.row_start + row, v);
#endif
    }
}
#endif

#ifndef TILES
#ifndef SPLIT_SUM
const WG: u32 = 64u;
const R: u32 = 4u;
#include "common/token_tile.wgsl"
const NV: u32 = R * TT;
#include "common/reduce.wgsl"

@compute @workgroup_size(WG)
fn main(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    reduce_setup(lanes);
    let lid = lanes.lid;
    let count = step_count(p.count_which);
    let r0 = wg.x * R;
    let t0 = wg.y * TT;
    var acc: array<f32, NV>;
    let half_k = p.k / 2u;
    for (var i = lid; i < half_k; i += WG) {
        var xv: array<vec2<f32>, TT>;
        for (var tt = 0u; tt < TT; tt++) {
            let t = t0 + tt;
            if t < count {
                xv[tt] = vec2<f32>(x[t * p.k + 2u * i], x[t * p.k + 2u * i + 1u]);
            }
        }
        for (var r = 0u; r < R; r++) {
            if r0 + r < p.rows {
                let word = w[(r0 + r) * half_k + i];
                let wv = vec2<f32>(bf16_lo(word), bf16_hi(word));
                for (var tt = 0u; tt < TT; tt++) {
                    acc[r * TT + tt] += dot(wv, xv[tt]);
                }
            }
        }
    }
    reduce_sum(&acc);
    if lid < NV {
        let row = r0 + lid / TT;
        let t = t0 + lid % TT;
        if row < p.rows && t < count {
            store_out(t, p.row_start + row, red[lid]);
        }
    }
}
#endif
#endif

#ifdef SIMT
#include "common/simt_tile.wgsl"

// A thread's loads for one step of KS = 16 columns (common/simt_tile.wgsl's items): a W item is 8
// bf16 weights (one 16-byte load), an X item the same 8 inputs of its token (two vec4 loads);
// zeros past the data.
fn fetch(lid: u32, step: u32) -> Fetch {
    var f: Fetch;
    let units = p.k / 8u;
    for (var i = 0u; i < WI; i++) {
        let u = lid + i * TILE_WG;
        let row = tile_row0 + u % TR;
        let unit = tile_unit0 + 2u * step + u / TR;
        if row < p.rows && unit < tile_unit_end {
            f.w[i] = w[row * units + unit];
        }
    }
    for (var i = 0u; i < XI; i++) {
        let u = lid + i * TILE_WG;
        let t = tile_t0 + u % TS;
        let unit = tile_unit0 + 2u * step + u / TS;
        if t < tile_count && unit < tile_unit_end {
            let at = t * (p.k / 4u) + 2u * unit;
            f.x[2u * i] = x[at];
            f.x[2u * i + 1u] = x[at + 1u];
        }
    }
    return f;
}

fn weights8(f: Fetch, i: u32) -> array<vec4<f32>, 2> {
    return bf16_wide8(f.w[i]);
}

fn inputs8(f: Fetch, i: u32) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(f.x[2u * i], f.x[2u * i + 1u]);
}

fn store_quad(j: u32, row: u32, v: vec4<f32>) {
    store_tile(j, row, v.x);
    store_tile(j, row + 1u, v.y);
    store_tile(j, row + 2u, v.z);
    store_tile(j, row + 3u, v.w);
}

@compute @workgroup_size(TILE_WG)
fn tiled(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let units = tile_begin(wg);
    simt_products(lid, tile_row0, (units.y - units.x + 1u) / 2u);
}
#endif

#ifdef COOP
const KB: u32 = COOP_KB;
#include "common/coop_tile.wgsl"

// Each item's 8 columns adjacent: one 16-byte load of weights, two of inputs (col_spread's four
// and eight loads made the layer 8% slower on the H200, PERF.md v0.16).
fn item_col(u: u32, j: u32) -> u32 {
    return col_chunk(u, j);
}

// A thread's loads for one step (common/coop_tile.wgsl's items): a W item's 8 bf16 weights, an
// X item's 8 inputs; zeros past the k inputs.
fn fetch(lid: u32, step: u32) -> Fetch {
    var f: Fetch;
    let units = p.k / 8u;
    for (var i = 0u; i < WI; i++) {
        let u = lid + i * TILE_WG;
        let row = tile_row0 + item_row(u);
        let unit = tile_unit0 + step * 4u * KB + item_part(u);
        if u < TR * 4u * KB && row < p.rows && unit < tile_unit_end {
            f.w[i] = w[row * units + unit];
        }
    }
    for (var i = 0u; i < XI; i++) {
        let u = lid + i * TILE_WG;
        let t = tile_t0 + item_row(u);
        let unit = tile_unit0 + step * 4u * KB + item_part(u);
        if u < TS * 4u * KB && t < tile_count && unit < tile_unit_end {
            let at = t * (p.k / 4u) + unit * 2u;
            f.x[2u * i] = x[at];
            f.x[2u * i + 1u] = x[at + 1u];
        }
    }
    return f;
}

fn weights8(f: Fetch, i: u32, u: u32) -> array<vec2<f16>, 4> {
    var v: array<vec2<f16>, 4>;
    for (var q = 0u; q < 4u; q++) {
        v[q] = to_h(vec2<f32>(bf16_lo(f.w[i][q]), bf16_hi(f.w[i][q])));
    }
    return v;
}

fn inputs8(f: Fetch, i: u32, u: u32) -> array<vec2<f32>, 4> {
    let a = f.x[2u * i];
    let b = f.x[2u * i + 1u];
    return array<vec2<f32>, 4>(a.xy, a.zw, b.xy, b.zw);
}

// The pass's tokens in this tile.
fn x_live() -> u32 {
    return tile_count - tile_t0;
}

fn store_rows(j: u32, row: u32, v: vec2<f32>) {
    store_tile(j, row, v.x);
    store_tile(j, row + 1u, v.y);
}

#ifdef DIRECT_DRAIN
// The sums of tile inputs 16 s16 .. by rows row .. straight into part (SPLIT_K only). The Rust side
// takes this variant where the buffer's rows are a multiple of 16 and part holds whole blocks of 16
// tokens, so that a block is stored whole or not at all; a block past the pass's tokens is not.
fn store_block(c: coop_mat16x16<f32, C>, s16: u32, row: u32) {
    if 16u * s16 < x_live() && row < p.rows {
        // (The stride as a named value: naga 30's SPIR-V writer panics on an expression there.)
        let stride = p.splits * p.n_out;
        let at = ((tile_t0 + 16u * s16) * p.splits + tile_split) * p.n_out + p.row_start + row;
        coopStoreT(c, &part[at], stride);
    }
}
#endif

@compute @workgroup_size(TILE_WG)
fn coop(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let units = tile_begin(wg);
    coop_products(lid, tile_row0, (units.y - units.x) / 4u);
}
#endif

#ifdef STAGED
// The tile's tokens' inputs for STAGED_KC units of k: [token][unit] pairs of vec4 (8 inputs).
var<workgroup> xs: array<vec4<f32>, TS * STAGED_KC * 2u>;
// A row's lanes: neighbours, each taking two adjacent units (32 bytes) of every 8, so that a
// warp's load covers whole 128-byte lines of 32 / COLS rows. A lane takes RL rows, TR / RL apart,
// so that each input it reads from workgroup memory serves RL rows.
const COLS: u32 = 4u;
const STAGED_WG: u32 = STAGED_TR / STAGED_RL * COLS;
const RL: u32 = STAGED_RL;
// A lane's sums: [row * TS + token].
const NS: u32 = RL * TS;
#include "common/lanes.wgsl"

// Each sum over the COLS neighbouring lanes of a row, in every one of them, added as
// (c0 + c1) + (c2 + c3) on both paths. Called from uniform control flow.
fn staged_sums(acc: ptr<function, array<f32, NS>>, l: Lanes) {
#ifdef SUBGROUPS
    for (var q = 0u; q < NS; q++) {
        (*acc)[q] = neighbour_sum((*acc)[q], COLS);
    }
#else
    // xs holds TS * STAGED_KC * 2 vec4s, at least the STAGED_WG * NS / 4 the sums take
    // (STAGED_KC >= STAGED_TR / 2).
    const NQ: u32 = NS / 4u;
    workgroupBarrier();
    for (var q = 0u; q < NQ; q++) {
        let a = 4u * q;
        xs[l.lid * NQ + q] = vec4<f32>((*acc)[a], (*acc)[a + 1u], (*acc)[a + 2u], (*acc)[a + 3u]);
    }
    workgroupBarrier();
    let first = (l.lid / COLS) * COLS * NQ;
    for (var q = 0u; q < NS; q++) {
        let at = first + q / 4u;
        let e = q % 4u;
        (*acc)[q] = (xs[at][e] + xs[at + NQ][e]) + (xs[at + 2u * NQ][e] + xs[at + 3u * NQ][e]);
    }
#endif
}

// Up to TS tokens by TR rows, k cut into ranges like the tiles (grid z): the tokens' inputs of a
// range go through workgroup memory STAGED_KC units at a time, so that an input load serves TR
// rows (linear_vec's lanes read every token's inputs for their own rows from the caches); each
// lane keeps its rows' sums for all the tokens in registers and reads its weights once. f32
// products, in unit order within a lane.
@compute @workgroup_size(STAGED_WG)
fn staged(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let units = tile_begin(wg);
    // tile_count and tile_t0 again, as values Tint sees uniform (the barriers below).
    let count = step_count(p.count_which);
    let t0 = wg.y * TS;
    if t0 >= count {
        return;
    }
    let live = min(count - t0, TS);
    let rg = l.lid / COLS;
    let c = l.lid % COLS;
    // A row past the buffer reads the last one; its sums are not stored.
    var wrow: array<u32, RL>;
    for (var r = 0u; r < RL; r++) {
        wrow[r] = min(tile_row0 + r * (TR / RL) + rg, p.rows - 1u) * (p.k / 8u);
    }
    var acc: array<f32, NS>;
    for (var q = 0u; q < NS; q++) {
        acc[q] = 0.0;
    }
    for (var u0 = units.x; u0 < units.y; u0 += STAGED_KC) {
        let n = min(STAGED_KC, units.y - u0);
        workgroupBarrier();
        for (var i = l.lid; i < live * STAGED_KC * 2u; i += STAGED_WG) {
            let j = i % (2u * STAGED_KC);
            var v = vec4<f32>(0.0);
            if j / 2u < n {
                v = x[(t0 + i / (2u * STAGED_KC)) * (p.k / 4u) + 2u * u0 + j];
#ifdef NORM
                v *= gain[2u * u0 + j];
#endif
            }
            xs[i] = v;
        }
        workgroupBarrier();
        for (var g = 0u; g < n; g += 2u * COLS) {
            let u = g + 2u * c;
            // All the trip's weight loads first; units past the range weigh zero (their inputs
            // are zero too).
            var wq: array<vec4<u32>, 2u * RL>;
            for (var r = 0u; r < RL; r++) {
                for (var h = 0u; h < 2u; h++) {
                    let w_at = wrow[r] + u0 + min(u + h, n - 1u);
                    wq[2u * r + h] = select(vec4<u32>(0u), w[w_at], u + h < n);
                }
            }
            for (var h = 0u; h < 2u; h++) {
                var wf: array<array<vec4<f32>, 2>, RL>;
                for (var r = 0u; r < RL; r++) {
                    wf[r] = bf16_wide8(wq[2u * r + h]);
                }
                for (var t = 0u; t < TS; t++) {
                    if t < live {
                        let xb = (t * STAGED_KC + u + h) * 2u;
                        let a = xs[xb];
                        let b = xs[xb + 1u];
                        for (var r = 0u; r < RL; r++) {
                            acc[r * TS + t] = dot8_acc(wf[r], a, b, acc[r * TS + t]);
                        }
                    }
                }
            }
        }
    }
    staged_sums(&acc, l);
    for (var q = 0u; q < NS; q++) {
        if q % COLS == c {
            store_tile(q % TS, tile_row0 + (q / TS) * (TR / RL) + rg, acc[q]);
        }
    }
}
#endif
