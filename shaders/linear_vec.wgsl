// Dense layer with bf16 weights for passes of a few tokens (decode): for each of up to MAX_T
// tokens t of the pass, y[t, row_start + r] (+)= sum_k in[t, k] * W[r, k] + bias[row_start + r],
// in = x, or with NORM in = x * rsqrt(mean(x^2) + eps) * g: the RMSNorm that precedes the
// projection, fused so the normed vector never goes through memory. Every workgroup serves all
// the tokens, so each weight is read once per pass however many sequences decode together.
// Bindings: x [count, k] f32 (k a multiple of 8), W rows [rows, k] bf16 (this buffer's rows of
// the matrix, read 8 weights per 16-byte load), bias [n_out] f32, y [count, n_out] f32,
// g [k] f32 (NORM only).
// Grid: (min(ceil(rows / WG_ROWS), 65535), ceil(count / MAX_T)); workgroups stride over the row
// blocks. Each of the NG row groups of GL lanes takes R rows (a lane reads 8-weight units lane,
// lane + GL, ... of each, UNROLL at a time so that their loads are in flight together), so even a
// per-layer matrix spreads over thousands of short workgroups: at batch 1 a workgroup's serial
// latency, not the bandwidth, is what costs (PERF.md v0.9 to v0.11).
// MULTI lays a row group's lanes out differently: a warp's lanes are COLS neighbouring lanes of
// each of several row groups, reading COLS neighbouring units, so that one input load of the warp
// touches one cache line that all its rows share (lanes of one row read 32 different units: four
// lines a load, for every token of the pass).
// ROPE (the q/k/v projection, with NORM): the rows of a workgroup are rotation pairs
// (i, i + D/2) of one head, so the epilogue applies RoPE (common/rope.wgsl) and stores q into y
// and k, v straight into the KV cache at each token's slot: no separate rope dispatch at decode.
// Extra bindings: tokens [count], table [max_pos, D/2] (cos, sin), k_cache, v_cache
// (common/kv.wgsl). The buffer's rows start at a head boundary.
// Variants: SUBGROUPS, NORM, ROPE (with KV_F16), MULTI; the `short` entry (plain or MULTI) for
// short rows. ACCUMULATE (a parameter) adds into y, the residual stream.
#ifdef ROPE
#include "common/kv.wgsl"
#endif
#include "common/step.wgsl"
#include "common/bf16.wgsl"

#include "common/linear_params.wgsl"
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
#include "common/linear_out.wgsl"
#ifdef NORM
@group(0) @binding(6) var<storage, read> g: array<vec4<f32>>;
#endif
#ifdef ROPE
@group(0) @binding(7) var<storage, read> tokens: array<TokenInfo>;
@group(0) @binding(8) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(9) var<storage, read_write> k_cache: array<kv>;
@group(0) @binding(10) var<storage, read_write> v_cache: array<kv>;
#include "common/rope.wgsl"
#endif

// Rows per workgroup, one token and MULTI (the Rust side reads these lines to size the grid):
// two rows per row group for one token (H200 batch 1: 1192 -> 1183 us a step against one, each
// input load serving both; four: 1390), one in MULTI. (Four rows per group with 8 tokens, so that
// an input load serves four rows, made the H200's batch-8 step 60% slower in the dense layers:
// PERF.md v0.11.)
const ROWS: u32 = 8u;
const MULTI_ROWS: u32 = 8u;
const ONE_WG: u32 = 128u;
const MULTI_WG: u32 = 256u;
// Lanes a row takes in both (in MULTI spread over the workgroup's warps).
const GL: u32 = 32u;
// 8-weight units a lane has in flight per row, and tokens per workgroup: MULTI serves up to 8
// (the Rust side reads this line), the plain variant one (batch-1 decode keeps its registers).
const ONE_UNROLL: u32 = 4u;
const MULTI_UNROLL: u32 = 4u;
#ifdef MULTI
const MAX_T: u32 = 8u;
const WG_ROWS: u32 = MULTI_ROWS;
const UNROLL: u32 = MULTI_UNROLL;
const WG: u32 = MULTI_WG;
#else
const MAX_T: u32 = 1u;
const WG_ROWS: u32 = ROWS;
const UNROLL: u32 = ONE_UNROLL;
const WG: u32 = ONE_WG;
#endif
const R: u32 = WG_ROWS / (WG / GL);
const NSUM: u32 = R * MAX_T;
#ifdef MULTI
// The fused norm's sums of squares, one workgroup-wide sum per token; `red` (NV values a lane) is
// also the row sums' scratch (multi_sums).
const NV: u32 = NSUM;
#include "common/reduce.wgsl"
const NG: u32 = WG / GL;
const COLS: u32 = 4u;
const PARTS: u32 = GL / COLS;
var<workgroup> multi_total: array<f32, NG * NSUM>;

// Row group grp's NSUM totals, for each of its lanes. A row's GL lanes are COLS neighbours in each
// of PARTS parts: with SUBGROUPS the neighbours add by shuffles first (the same sum in each), so
// only the parts' sums go through memory. The totals run over a fixed order. Called from uniform
// control flow.
fn multi_sums(acc: ptr<function, array<f32, NSUM>>, lid: u32, lane: u32, grp: u32) {
    // Earlier readers of `red` (the norm's totals, the last row block's sums) are done.
    workgroupBarrier();
#ifdef SUBGROUPS
    for (var q = 0u; q < NSUM; q++) {
        let v = neighbour_sum((*acc)[q], COLS);
        if lane % COLS == 0u {
            red[(q * NG + grp) * PARTS + lane / COLS] = v;
        }
    }
    let n = PARTS;
#else
    for (var q = 0u; q < NSUM; q++) {
        red[(q * NG + grp) * GL + lane] = (*acc)[q];
    }
    let n = GL;
#endif
    workgroupBarrier();
    if lid < NG * NSUM {
        var total = 0.0;
        for (var i = 0u; i < n; i++) {
            total += red[lid * n + i];
        }
        multi_total[lid] = total;
    }
    workgroupBarrier();
    for (var q = 0u; q < NSUM; q++) {
        (*acc)[q] = multi_total[q * NG + grp];
    }
}
#else
#include "common/row_group.wgsl"
#ifdef NORM
// The fused norm's sums of squares, one workgroup-wide sum per token.
const NV: u32 = MAX_T;
#include "common/reduce.wgsl"
#endif
#endif

// The first of the R rows (of this buffer) that row group `grp` computes in row block `rb`.
fn first_row(rb: u32, grp: u32) -> u32 {
#ifdef ROPE
    // A workgroup takes (NG / 2) R consecutive dims i of the first half of a head (the even
    // groups) and the same dims i + D/2 of the second half (the odd ones), so that rotation pairs
    // meet.
    let per_head = p.head_dim / WG_ROWS;
    let i = (rb % per_head) * (NG / 2u) * R + (grp / 2u) * R;
    return (rb / per_head) * p.head_dim + i + (grp % 2u) * (p.head_dim / 2u);
#else
    return rb * WG_ROWS + grp * R;
#endif
}

// Workgroup row y's tokens: the first, and how many of its MAX_T the pass has (0: none).
fn token_block(y: u32) -> vec2<u32> {
    let t0 = y * MAX_T;
    let count = step_count(p.count_which);
    return vec2<u32>(t0, select(0u, min(count - t0, MAX_T), t0 < count));
}

// The weights of a trip from unit i0: unit i0 + u GL of row r0 + r at [u R + r] (clamped).
fn trip_words(i0: u32, r0: u32, units: u32) -> array<vec4<u32>, UNROLL * R> {
    var out: array<vec4<u32>, UNROLL * R>;
    for (var u = 0u; u < UNROLL; u++) {
        let i = i0 + u * GL;
        let ic = select(0u, i, i < units);
        for (var r = 0u; r < R; r++) {
            out[u * R + r] = w[min(r0 + r, p.rows - 1u) * units + ic];
        }
    }
    return out;
}

@compute @workgroup_size(WG)
fn main(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tb = token_block(wg.y);
    if tb.y == 0u {
        return;
    }
    let t0 = tb.x;
    let n_tok = tb.y;
    let units = p.k / 8u;
    // Token t's inputs start at vec4 index (t0 + t) * xs.
    let xs = 2u * units;
#ifdef NORM
    reduce_setup(l);
    var ss: array<f32, NV>;
    for (var t = 0u; t < n_tok; t++) {
        for (var i = l.lid; i < xs; i += WG) {
            let v = x[(t0 + t) * xs + i];
            ss[t] += dot(v, v);
        }
    }
    reduce_sum(&ss);
    var scale: array<f32, MAX_T>;
    for (var t = 0u; t < MAX_T; t++) {
        scale[t] = inverseSqrt(red[t] / f32(p.k) + p.eps);
    }
#endif
    let blocks = (p.rows + WG_ROWS - 1u) / WG_ROWS;
#ifdef MULTI
    // lid = (part * NG + grp) * COLS + col.
    let lane = (l.lid / (COLS * NG)) * COLS + l.lid % COLS;
    let grp = (l.lid / COLS) % NG;
#else
    let lane = l.lid % GL;
    let grp = l.lid / GL;
#endif
    for (var rb = wg.x; rb < blocks; rb += nwg.x) {
        let r0 = first_row(rb, grp);
        // acc[r * MAX_T + t]: row r0 + r for token t0 + t. Zeroed by hand each block: SwiftShader
        // keeps a loop-local array's old values (see attention_split.wgsl).
        var acc: array<f32, NSUM>;
        for (var q = 0u; q < NSUM; q++) {
            acc[q] = 0.0;
        }
        // The next trip's weights are loaded before this trip's products, so that every lane's
        // loads overlap the products rather than all lanes waiting, then all multiplying (H100
        // batch 1, with moe_vec doing the same: 387-390 -> 414-417 tok/s, PERF.md v0.45).
        var wn = trip_words(lane, r0, units);
        for (var i0 = lane; i0 < units; i0 += UNROLL * GL) {
            let wc = wn;
            wn = trip_words(i0 + UNROLL * GL, r0, units);
            // Straight-line code over UNROLL units (indices clamped, dead ones zeroed rather
            // than branched around) lets the compiler issue all their loads at once.
            for (var u = 0u; u < UNROLL; u++) {
                let i = i0 + u * GL;
                let live = select(0.0, 1.0, i < units);
                let ic = select(0u, i, i < units);
                // What multiplies the unit's weights rather than each token's inputs: the norm's
                // gains and the dead-unit zero (each token's norm scale multiplies its sums at
                // the end), so a token costs two loads and eight multiply-adds a unit.
#ifdef NORM
                let ga = g[2u * ic] * live;
                let gb = g[2u * ic + 1u] * live;
#else
                let ga = vec4<f32>(live);
                let gb = ga;
#endif
                for (var r = 0u; r < R; r++) {
                    let wq = bf16_wide8(wc[u * R + r]);
                    let wr = array<vec4<f32>, 2>(wq[0] * ga, wq[1] * gb);
                    for (var t = 0u; t < MAX_T; t++) {
                        if t < n_tok {
                            let xb = (t0 + t) * xs + 2u * ic;
                            let a = r * MAX_T + t;
                            acc[a] = dot8_acc(wr, x[xb], x[xb + 1u], acc[a]);
                        }
                    }
                }
            }
        }
#ifdef NORM
        for (var q = 0u; q < NSUM; q++) {
            acc[q] *= scale[q % MAX_T];
        }
#endif
#ifdef MULTI
        multi_sums(&acc, l.lid, lane, grp);
#else
        group_sums(&acc, l);
#endif
#ifdef ROPE
        rope_store(t0, n_tok, r0, acc, lane, grp);
#else
        if lane == 0u {
            for (var r = 0u; r < R; r++) {
                let row = r0 + r;
                for (var t = 0u; t < n_tok; t++) {
                    if row < p.rows {
                        store_out(t0 + t, p.row_start + row, acc[r * MAX_T + t]);
                    }
                }
            }
        }
#endif
    }
}

// Rows of at most SHORT_UNITS 8-weight units (a small model's lm_head: 128 inputs, 201088 rows;
// no real gpt-oss layer is that short) take `short` instead (the Rust side reads this line): a
// lane per row, its units summed in order, no reduction. Row groups would leave most of their 32
// lanes idle on such rows, their unrolled loads mostly clamped dead ones, and reduce after every
// 128 products: a tiny model's decode step on lavapipe was 1.77 s, 97% of it that one dispatch.
const SHORT_UNITS: u32 = 32u;
const SHORT_WG: u32 = 128u;

@compute @workgroup_size(SHORT_WG)
fn short(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let tb = token_block(wg.y);
    if tb.y == 0u {
        return;
    }
    let t0 = tb.x;
    let n_tok = tb.y;
    let units = p.k / 8u;
    let xs = 2u * units;
    for (var row = wg.x * SHORT_WG + lid; row < p.rows; row += nwg.x * SHORT_WG) {
        var acc: array<f32, MAX_T>;
        for (var t = 0u; t < MAX_T; t++) {
            acc[t] = 0.0;
        }
        for (var i = 0u; i < units; i++) {
            let wq = w[row * units + i];
            for (var t = 0u; t < n_tok; t++) {
                let xb = (t0 + t) * xs + 2u * i;
                acc[t] += bf16_dot8(wq, x[xb], x[xb + 1u]);
            }
        }
        for (var t = 0u; t < n_tok; t++) {
            store_out(t0 + t, p.row_start + row, acc[t]);
        }
    }
}

#ifdef ROPE
var<workgroup> pair_v: array<f32, NG * NSUM>;

// Rotates the workgroup's rotation pairs for each token and stores them: q into y, k and v into
// the cache. Lane r * MAX_T + t of the even groups takes row r0 + r of token t0 + t (R * MAX_T
// <= GL). Called from uniform control flow by every lane.
fn rope_store(t0: u32, n_tok: u32, r0: u32, acc: array<f32, NSUM>, lane: u32, grp: u32) {
    if lane == 0u {
        for (var q = 0u; q < NSUM; q++) {
            var out = acc[q];
            let col = p.row_start + min(r0 + q / MAX_T, p.rows - 1u);
            if p.has_bias != 0u {
                out += bias[col];
            }
            pair_v[grp * NSUM + q] = out;
        }
    }
    workgroupBarrier();
    let r = lane / MAX_T;
    let tq = lane % MAX_T;
    let row = r0 + r;
    if r < R && tq < n_tok && grp % 2u == 0u && row < p.rows {
        let col = p.row_start + row;
        let t = t0 + tq;
        let d = p.head_dim;
        let x = vec2<f32>(pair_v[grp * NSUM + lane], pair_v[(grp + 1u) * NSUM + lane]);
        let o = rope_pair(tokens[t], col / d, col % d, x);
        if col / d < p.n_heads {
            y[t * p.n_out + col] = o.x;
            y[t * p.n_out + col + d / 2u] = o.y;
        }
    }
    workgroupBarrier();
}
#endif
