#ifdef COOP
enable f16;
enable wgpu_cooperative_matrix;
#endif
// MoE experts with MXFP4 weights for passes of many tokens (prefill), grouped by expert: a
// workgroup owns TR rows of one expert and TS of the token-expert slots routed to it, a tiled
// matrix product (common/coop_tile.wgsl on the tensor cores, common/simt_tile.wgsl otherwise). Each
// step of the K loop decodes the MXFP4 codes of its rows into workgroup memory (a weight is
// decoded once per TS slots, not once per slot) beside the TS slots' inputs. A slot's sums run
// over k in order, so a sequence's results do not depend on what else is in the pass.
//
// ROUTE: lists[e, 0..counts[e]] = the slots s = t * K + j with idx[s] == e, in slot order.
//   Bindings: idx [T*K], lists [E, T_max*K], counts [E]. Grid: (E, 1).
// GATE_UP: for each slot s of expert e (weights of experts [e_start, e_start + e_count) are in this
//   dispatch's buffers; a split expert set takes one dispatch per buffer):
//   g = W_gate_up[e] h[t] + bias[e] (2I values, even = gate, odd = up);
//   gate = min(g_even, limit); up = clamp(g_odd, -limit, limit);  (the clamp is upper-only on gate)
//   act[s, i] = gate * sigmoid(alpha * gate) * (up + 1).
//   Bindings: h [T, H], lists, counts, blocks [e_count, 2I, H/32] of 16 bytes, scales
//   [e_count, 2I, H/32]
//   u8, bias [E, 2I] f32, act [T*K, I]. Grid: (ceil(2I / TR), ceil(T / TS), e_count): a workgroup
//   per tile of TR rows by TS of the expert's slots (an expert has at most T; the workgroups of
//   tiles past its slots return at once), so an expert with many slots spreads over the GPU
//   instead of keeping a few workgroups busy after the rest are done.
// DOWN: y[s, n] = wts[s] * (W_down[e] act[s] + bias[e])[n].
//   Bindings: act, lists, counts, wts [T*K], blocks [e_count, H, I/32, 16], scales, bias [E, H],
//   y [T*K, H]. Grid: (ceil(H / TR), ceil(T / TS), e_count).
// COMBINE: x[t, n] += sum_j y[t*K + j, n] (the residual add), j in order.
//   Bindings: y, x [T, H]. Grid: (ceil(H / 64), T).
// PACK: h16 = h in f16 (two to a word, clamped as the tiles clamp their inputs), for the X16
//   tiles. Bindings: h [T, H], h16 [T, H / 2] u32. Grid: (ceil(H / 8 / 64), T).
// Variants: ROUTE, GATE_UP, DOWN, COMBINE or PACK (different bindings); COOP (GATE_UP and DOWN on
// adapters with 16x16x16 f16 cooperative matrices and subgroups of 32: the tiles go to workgroup
// memory as f16 and each subgroup multiplies 16 slots by the 64 rows on the tensor cores, f32
// accumulation; inputs rounded to f16, which moves the logits little, unlike the dense layers'
// inputs: common/coop_tile.wgsl; the `fast` precision); with X16 (the full tiles of prefill
// passes) the inputs are already f16: GATE_UP reads h16 (PACK) and writes act in f16, which DOWN
// reads. A 32-input step of a 64-slot tile reads 8 KB of f32 inputs against 2 KB of weights, and
// every row tile of an expert reads them again: in f16, gate_up and down take 5% and 9% less time
// (PERF.md v0.51). Passes of a few tokens take moe_vec.wgsl instead.
#include "common/step.wgsl"
#include "common/mxfp4.wgsl"

#include "common/moe_params.wgsl"

// Rows and slots per tile of each variant (the Rust side reads these four lines). SIMT's tiles
// fit the 16 KiB of workgroup memory WebGPU promises.
const COOP_TR: u32 = 128u;
const COOP_TS: u32 = 64u;
const SIMT_TR: u32 = 128u;
const SIMT_TS: u32 = 64u;
#ifdef COOP
const TR: u32 = COOP_TR;
const TS: u32 = COOP_TS;
const SUB_ROWS: u32 = 64u;
#else
const TR: u32 = SIMT_TR;
const TS: u32 = SIMT_TS;
#endif

#ifdef ROUTE
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> lists: array<u32>;
@group(0) @binding(4) var<storage, read_write> counts: array<u32>;

// Slots a route workgroup scans at a time.
const WG: u32 = 128u;
var<workgroup> scan: array<u32, WG>;

@compute @workgroup_size(WG)
fn route(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let e = wg.x;
    var found = 0u;
    for (var base = 0u; base < step.slots; base += WG) {
        let s = base + lid;
        let hit = select(0u, 1u, s < step.slots && idx[s] == e);
        // Inclusive prefix sum of the hits over the chunk.
        scan[lid] = hit;
        for (var d = 1u; d < WG; d <<= 1u) {
            workgroupBarrier();
            var v = scan[lid];
            if lid >= d {
                v += scan[lid - d];
            }
            workgroupBarrier();
            scan[lid] = v;
        }
        workgroupBarrier();
        if hit == 1u {
            lists[e * p.list_stride + found + scan[lid] - 1u] = s;
        }
        found += scan[WG - 1u];
        workgroupBarrier();
    }
    if lid == 0u {
        counts[e] = found;
    }
}
#endif

// The tiles' inputs: 8 of them in X_LOADS loads (X16: f16, two to a word).
#ifdef X16
alias Inputs = vec4<u32>;
const X_LOADS: u32 = 1u;
#else
alias Inputs = vec4<f32>;
const X_LOADS: u32 = 2u;
#endif

#ifdef GATE_UP
@group(0) @binding(2) var<storage, read> h: array<Inputs>;
@group(0) @binding(3) var<storage, read> lists: array<u32>;
@group(0) @binding(4) var<storage, read> counts: array<u32>;
@group(0) @binding(5) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> scales: array<u32>;
@group(0) @binding(7) var<storage, read> bias: array<f32>;
#ifdef X16
@group(0) @binding(8) var<storage, read_write> act: array<u32>;
#else
@group(0) @binding(8) var<storage, read_write> act: array<f32>;
#endif
#endif

#ifdef DOWN
@group(0) @binding(2) var<storage, read> act: array<Inputs>;
@group(0) @binding(3) var<storage, read> lists: array<u32>;
@group(0) @binding(4) var<storage, read> counts: array<u32>;
@group(0) @binding(5) var<storage, read> wts: array<f32>;
@group(0) @binding(6) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read> scales: array<u32>;
@group(0) @binding(8) var<storage, read> bias: array<f32>;
@group(0) @binding(9) var<storage, read_write> y: array<f32>;
#endif

#ifdef COMBINE
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn combine(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    let n = wg.x * 64u + lid;
    if t >= step.tokens || n >= p.hidden {
        return;
    }
    var sum = 0.0;
    for (var j = 0u; j < p.top_k; j++) {
        sum += y[(t * p.top_k + j) * p.hidden + n];
    }
    x[t * p.hidden + n] += sum;
}
#endif

// Two values as an f16 pair, clamped to f16's range as the tiles' conversions clamp.
fn pack_pair(a: f32, b: f32) -> u32 {
    return pack2x16float(clamp(vec2<f32>(a, b), vec2<f32>(-65504.0), vec2<f32>(65504.0)));
}

#ifdef PACK
@group(0) @binding(2) var<storage, read> h: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> h16: array<vec4<u32>>;

@compute @workgroup_size(64)
fn pack(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    let g = wg.x * 64u + lid;
    let groups = p.hidden / 8u;
    if t >= step.tokens || g >= groups {
        return;
    }
    let at = t * groups + g;
    let lo = h[2u * at];
    let hi = h[2u * at + 1u];
    h16[at] = vec4<u32>(pack_pair(lo.x, lo.y), pack_pair(lo.z, lo.w), pack_pair(hi.x, hi.y),
                        pack_pair(hi.z, hi.w));
}
#endif

// GATE_UP and DOWN share the tiled projection.
#ifndef ROUTE
#ifndef COMBINE
#ifndef PACK
const WG: u32 = TILE_WG;
// Each slot of the tile: its id, or NONE past the live slots.
var<workgroup> tile_slot: array<u32, TS>;
const NONE: u32 = 0xffffffffu;

// Fills tile_slot with slots j0 .. j0 + live of expert e.
fn load_slots(lid: u32, e: u32, j0: u32, live: u32) {
    workgroupBarrier();
    for (var j = lid; j < TS; j += WG) {
        tile_slot[j] = NONE;
        if j < live {
            tile_slot[j] = lists[e * p.list_stride + j0 + j];
        }
    }
}

// The tile's expert and rows, for fetch() and the stores.
struct Job {
    e: u32,
    e_local: u32,
    row0: u32,
    rows: u32,
    n_blocks: u32,
    live: u32,
}
var<private> job: Job;

// A thread's loads for one step of the tile file's WI weight and XI input items: 8 codes (one
// word) and the scale byte of its block for a weight item, 8 inputs for an input item.
struct Fetch {
    words: array<u32, WI>,
    scales: array<u32, WI>,
    xs: array<Inputs, X_LOADS * XI>,
}

#ifdef COOP
// One block a step: two made gate_up slower (197 -> 287 ms of a 2048-token pass on the H200)
// and down faster on long passes but slower on a batch-64 decode step (PERF.md v0.15).
const KB: u32 = 1u;
#include "common/coop_tile.wgsl"

fn item_col(u: u32, j: u32) -> u32 {
    return col_spread(u, j);
}

// A thread's loads for one step (common/coop_tile.wgsl's items): a W item's 8 weights are word
// b = item_part(u) % 4 of an MXFP4 block (elements 8b .. 8b + 7), with the block's scale byte;
// an X item's 8 inputs the same elements of the slot's (two vec4 loads); zeros past the row's
// blocks. Within the block the tile's columns take them in the order the codes unpack in: column
// pair q of lane b (common/coop_tile.wgsl's col_spread) holds elements 8b + q and 8b + q + 4,
// for weights and inputs alike (the product sums over k in any order), so that two masks and two
// multiplies of the word decode a pair (fp4_halves), as in the matrix-vector kernels.
fn fetch(lid: u32, step: u32) -> Fetch {
    var f: Fetch;
    for (var i = 0u; i < WI; i++) {
        let u = lid + i * WG;
        let row = job.row0 + item_row(u);
        let b = step * KB + item_part(u) / 4u;
        if u < TR * 4u * KB && row < job.rows && b < job.n_blocks {
            let blk = (job.e_local * job.rows + row) * job.n_blocks + b;
            f.words[i] = blocks[blk][item_part(u) % 4u];
            f.scales[i] = byte_of(scales[blk / 4u], blk);
        }
    }
    for (var i = 0u; i < XI; i++) {
        let u = lid + i * WG;
        let b = step * KB + item_part(u) / 4u;
        if u < TS * 4u * KB && b < job.n_blocks {
            let slot = tile_slot[item_row(u)];
            if slot != NONE {
                let at = ((input_base(slot) + b * 32u) / 8u + item_part(u) % 4u) * X_LOADS;
                for (var c = 0u; c < X_LOADS; c++) {
                    f.xs[X_LOADS * i + c] = input(at + c);
                }
            }
        }
    }
    return f;
}

// 2^n as f16, n in [-14, 15].
fn pow2_h(n: i32) -> f16 {
    return f16(bitcast<f32>(u32(n + 127) << 23u));
}

// Item i's 8 weights (pair q: elements q and q + 4 of its word), decoded and scaled in f16: a
// code times 2^-14 (fp4_halves' f16 values, which come back to f16 unchanged) times 2^n,
// n = s - 127 + 14. For n in [-14, 15] (scale bytes 99 to 128, where real checkpoints' are)
// that is one multiply, correctly rounded and at most 12. Otherwise two exact power-of-two
// steps that each fit f16's exponent range and a clamp that keeps values beyond f16's range
// finite, as rounding from f32 does: exact for every scale byte up to 143; above it (every
// nonzero weight 2^16 or more, no real checkpoint's) the two steps stop at 2^30 and such weights
// come out below the f32 path's clamped 65504.
fn weights8(f: Fetch, i: u32, u: u32) -> array<vec2<f16>, 4> {
    var v: array<vec2<f16>, 4>;
    let h = fp4_halves(f.words[i]);
    let n = i32(f.scales[i]) - 113;
    let na = clamp(n, -14, 15);
    let sa = pow2_h(na);
    if n == na {
        for (var q = 0u; q < 4u; q++) {
            v[q] = vec2<f16>(unpack2x16float(h[q])) * sa;
        }
    } else {
        let sb = pow2_h(clamp(n - na, -14, 15));
        for (var q = 0u; q < 4u; q++) {
            let pair = vec2<f16>(unpack2x16float(h[q]));
            v[q] = clamp(pair * sa * sb, vec2<f16>(-65504.0h), vec2<f16>(65504.0h));
        }
    }
    return v;
}

fn inputs8(f: Fetch, i: u32, u: u32) -> array<vec2<f32>, 4> {
#ifdef X16
    let w = f.xs[i];
    let lo = vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    let hi = vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
#else
    let lo = f.xs[2u * i];
    let hi = f.xs[2u * i + 1u];
#endif
    return array<vec2<f32>, 4>(vec2(lo.x, hi.x), vec2(lo.y, hi.y), vec2(lo.z, hi.z),
                               vec2(lo.w, hi.w));
}

// The tile's slots are its first `live` rows.
fn x_live() -> u32 {
    return job.live;
}

#ifdef DRAIN_QUADS
// Tile slot j's rows `row` .. row + 3 (GATE_UP with X16: two activations, one word).
fn store_quad(j: u32, row: u32, v: vec4<f32>) {
    let slot = tile_slot[j];
    if slot != NONE {
        store_slot_quad(job.e, slot, row, v);
    }
}
#else
// Tile slot j's rows `row` and row + 1.
fn store_rows(j: u32, row: u32, v: vec2<f32>) {
    let slot = tile_slot[j];
    if slot != NONE {
        store_slot_rows(job.e, slot, row, v);
    }
}
#endif

fn tile_products(lid: u32, row0: u32, k: u32) {
    coop_products(lid, row0, k / 32u);
}
#else
#include "common/simt_tile.wgsl"

// A thread's loads for one step of KS = 16 columns, half an MXFP4 block (common/simt_tile.wgsl's
// items): a W item is word 2 (step % 2) + u / TR of its row's block (8 codes) with the block's
// scale byte, an X item the same 8 inputs of its slot (two vec4 loads); zeros past the data.
fn fetch(lid: u32, step: u32) -> Fetch {
    var f: Fetch;
    let b = step / 2u;
    for (var i = 0u; i < WI; i++) {
        let u = lid + i * TILE_WG;
        let row = job.row0 + u % TR;
        if row < job.rows && b < job.n_blocks {
            let blk = (job.e_local * job.rows + row) * job.n_blocks + b;
            f.words[i] = blocks[blk][2u * (step % 2u) + u / TR];
            f.scales[i] = byte_of(scales[blk / 4u], blk);
        }
    }
    for (var i = 0u; i < XI; i++) {
        let u = lid + i * TILE_WG;
        let slot = tile_slot[u % TS];
        if slot != NONE && b < job.n_blocks {
            let at = (input_base(slot) + 16u * step + 8u * (u / TS)) / 4u;
            f.xs[2u * i] = input(at);
            f.xs[2u * i + 1u] = input(at + 1u);
        }
    }
    return f;
}

// Codes q and q + 4 of a word are pair q of fp4_decode8, times the block's scale.
fn weights8(f: Fetch, i: u32) -> array<vec4<f32>, 2> {
    let c = fp4_decode8(f.words[i]);
    let sc = mx_scale(f.scales[i]);
    return array<vec4<f32>, 2>(
        vec4<f32>(c[0].x, c[1].x, c[2].x, c[3].x) * sc,
        vec4<f32>(c[0].y, c[1].y, c[2].y, c[3].y) * sc,
    );
}

fn inputs8(f: Fetch, i: u32) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(f.xs[2u * i], f.xs[2u * i + 1u]);
}

// Tile slot j's rows `row` .. row + 3.
fn store_quad(j: u32, row: u32, v: vec4<f32>) {
    let slot = tile_slot[j];
    if slot != NONE {
        store_slot_rows(job.e, slot, row, v.xy);
        store_slot_rows(job.e, slot, row + 2u, v.zw);
    }
}

fn tile_products(lid: u32, row0: u32, k: u32) {
    simt_products(lid, row0, k / 16u);
}
#endif

// The tile's products: slots tile_slot[..] by rows [row0, row0 + TR) of the expert's `rows`
// (k inputs), handed to store_slot_rows.
fn run_tile(lid: u32, e_local: u32, row0: u32, rows: u32, k: u32, e: u32, j0: u32, live: u32) {
    load_slots(lid, e, j0, live);
    workgroupBarrier();
    job = Job(e, e_local, row0, rows, k / 32u, live);
    tile_products(lid, row0, k);
}

// Slots routed to expert e (none when the pass has no tokens).
fn expert_slots(e: u32) -> u32 {
    return select(counts[e], 0u, step.slots == 0u);
}

// Workgroup wg's tile of a projection with `rows` outputs and k inputs: rows wg.x TR .. by slots
// wg.y TS .. of expert e_start + wg.z; nothing past the expert's slots.
fn run_grid_tile(lid: u32, wg: vec3<u32>, rows: u32, k: u32) {
    let e = p.e_start + wg.z;
    let j0 = wg.y * TS;
    let n = expert_slots(e);
    if j0 < n {
        run_tile(lid, wg.z, wg.x * TR, rows, k, e, j0, min(TS, n - j0));
    }
}
#endif
#endif
#endif

#ifdef GATE_UP
fn input(i: u32) -> Inputs {
    return h[i];
}

// A slot reads the normed hidden state of its token.
fn input_base(slot: u32) -> u32 {
    return (slot / p.top_k) * p.hidden;
}

// Rows `row` (even) and row + 1 of expert e's sums v are one gate/up pair.
fn glu(e: u32, row: u32, v: vec2<f32>) -> f32 {
    let rb = e * 2u * p.inter + row;
    let gate = min(v.x + bias[rb], p.limit);
    let up = clamp(v.y + bias[rb + 1u], -p.limit, p.limit);
    return gate / (1.0 + exp(-p.alpha * gate)) * (up + 1.0);
}

#ifdef X16
// Rows `row` .. row + 3 of a slot: activations i and i + 1 (i = row / 2 even, so both are there
// or neither: I is a multiple of 32), one word of f16.
fn store_slot_quad(e: u32, slot: u32, row: u32, v: vec4<f32>) {
    let i = row / 2u;
    if i < p.inter {
        act[(slot * p.inter + i) / 2u] = pack_pair(glu(e, row, v.xy), glu(e, row + 2u, v.zw));
    }
}
#else
fn store_slot_rows(e: u32, slot: u32, row: u32, v: vec2<f32>) {
    let i = row / 2u;
    if i < p.inter {
        act[slot * p.inter + i] = glu(e, row, v);
    }
}
#endif

@compute @workgroup_size(WG)
fn gate_up(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    run_grid_tile(lid, wg, 2u * p.inter, p.hidden);
}
#endif

#ifdef DOWN
fn input(i: u32) -> Inputs {
    return act[i];
}

// A slot reads its own activation.
fn input_base(slot: u32) -> u32 {
    return slot * p.inter;
}

// Rows `row` (even) and row + 1 of a slot, weighted, with the bias.
fn store_slot_rows(e: u32, slot: u32, row: u32, v: vec2<f32>) {
    for (var c = 0u; c < 2u; c++) {
        let n = row + c;
        if n < p.hidden {
            y[slot * p.hidden + n] = wts[slot] * (v[c] + bias[e * p.hidden + n]);
        }
    }
}

@compute @workgroup_size(WG)
fn down(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    run_grid_tile(lid, wg, p.hidden, p.inter);
}
#endif
