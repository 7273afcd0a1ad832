// MoE experts with MXFP4 weights for passes of a few tokens (decode), in two shapes. (Large
// passes use moe.wgsl, which tiles slots and rows for the tensor cores.)
//
// Per slot (passes of up to SLOT_MAX_TOKENS tokens; down up to DOWN_SLOT_MAX_TOKENS, after the
// routing dispatch and the GROUPED gate_up above SLOT_MAX_TOKENS): one workgroup row per
// token-expert slot, routing in gate_up itself.
// GATE_UP: for slot s = t * K + j, the slot's expert e is the token's j-th largest router logit
//   (lower index wins a tie), the logits being the sums of the router's per-slice partials
//   (router.wgsl PARTIAL); every workgroup ranks them itself, so routing costs no dispatch of its
//   own, and the first workgroup of the slot stores e and its softmax weight (over the K chosen)
//   in idx and wts for DOWN. Then, when e is in this dispatch's experts:
//   g = W_gate_up[e] h[t] + bias[e] (2I values, even = gate, odd = up);
//   gate = min(g_even, limit); up = clamp(g_odd, -limit, limit);  (the clamp is upper-only on gate)
//   act[s, i] = gate * sigmoid(alpha * gate) * (up + 1).
//   Bindings: h [T, H] (normed), part [T, slices, E], idx [T*K] u32, wts [T*K] f32, blocks
//   [e_count, 2I, H/32, 16] u8 in 8-byte units, scales [e_count, 2I, H/32] u8, bias [E, 2I] f32,
//   act [T*K, I]. Grid: (ceil(2I / ROWS), T*K).
//   FOLDED (the router folded into the attention block, router_fold.wgsl): h is the residual x'
//   and part z_x [T, E]; every workgroup takes the norm's scale s of x' itself, ranks s (z_x +
//   z_a) + b_r and norms its inputs as it reads them (h = s x' g). Extra bindings: z_a [T, E],
//   g [H] the post-attention norm's gain, b_r [E] the router's bias.
// DOWN: x[t, n] += sum_j wts[s] * (W_down[e] act[s] + bias[e])[n] over the token's slots
//   s = t * K + j whose expert e is in this dispatch: the down projection, the weighting and the
//   residual add in one (moe.wgsl's COMBINE does that step for larger passes). Row group j of a
//   workgroup takes slot j (j, j + NG, ... when K > NG) for the workgroup's R rows; the groups'
//   sums meet in workgroup memory and are added in slot order.
//   Bindings: act, idx, wts [T*K], blocks [e_count, H, I/32, 16], scales, bias [E, H], x [T, H].
//   Grid: (ceil(H / R), T).
//
// Larger passes (GROUPED): a workgroup row per expert, so that an expert chosen by several tokens
// has its weights read once for all of them (PERF.md v0.15).
// ROUTE: idx and wts of every slot of token t, as the per-slot GATE_UP picks them.
//   Bindings: part, idx, wts. Grid: (1, T). FOLDED: also h = s x' g, the experts' input, which
//   the router writes where it is not folded. Extra bindings: x', z_a, g, b_r, h.
// GATE_UP + GROUPED: act[s] as above for every slot s with idx[s] = e, e the workgroup row's
//   expert. Bindings: h, idx, blocks (in 16-byte units: one block), scales, bias, act. Grid:
//   (ceil(2I / GROUPED_ROWS), e_count).
// DOWN + GROUPED: y[s, n] = wts[s] * (W_down[e] act[s] + bias[e])[n] for the same slots; COMBINE
//   then adds each token's slots to x in slot order, as the per-slot DOWN does. Bindings: act,
//   idx, wts, blocks, scales, bias, y [T*K, H]. Grid: (ceil(H / GROUPED_ROWS), e_count).
// A GROUPED workgroup takes GROUPED_ROWS rows of its expert for the slots routed to it, gathered
// WG at a time and run MAX_S at once. Thread t owns row t % GROUPED_ROWS and every KSPLIT-th
// 32-code block of it from t / GROUPED_ROWS: one 16-byte load, decoded once in registers and
// multiplied by the same 32 inputs of each slot, which the workgroup has put in workgroup
// memory, KC inputs of each slot at a time (a warp's lanes all read the same input: a broadcast,
// so an input load serves 32 rows and a decoded block MAX_S slots, where the first design's
// lanes each read their own inputs from memory: batch 32 on the H200 1219 -> 1625 tok/s, PERF.md
// v0.19). The KSPLIT partial sums of a row meet in workgroup memory at the end; a slot's sums run
// in the same order whatever else is in the pass.
//
// Per slot: a row group of GL lanes takes R rows: lane i of a group reads 8-byte unit i, i +
// GL, ... (16 codes; a warp reads 256 contiguous bytes) of each of its rows and the matching 16
// inputs (64 contiguous bytes per lane), an input load serving R rows. (8-byte units beat 4-byte
// ones by 3% on the H200; a byte-to-pair table in workgroup memory instead of the bit-twiddled
// decode lost 25%: PERF.md v0.11; lanes reading contiguous vec4s of the inputs, with 4-code
// weight pieces to match, took twice as long: v0.15; the GROUPED kernel for one token: 262 ->
// 205 tok/s, v0.19.) Short rows of work in many workgroups: on the H200, 2 rows per 32-lane
// group beat 4 and 8, 64-lane groups, one 16-byte block per lane (its 128-byte input strides do
// not coalesce) and 16 rows per 128-lane workgroup (PERF.md v0.9 and v0.10).
// F16_PRODUCTS (the `fast` precision on adapters with SHADER_F16): the products in f16 pairs, two
// codes against two inputs an instruction (no conversion of the decoded codes to f32), each
// pair's half summed in f16 over a unit (16 codes, one token) or a block (32, GROUPED) and then
// added in f32 with the block scale; GROUPED stages its inputs as f16 pairs, half the
// workgroup-memory reads. The grouped kernels are bound by their arithmetic, not their loads
// (PERF.md v0.31): batches 2-64 +12-25% on the H200.
// A dispatch holds the experts [e_start, e_start + e_count) of one weight buffer; slots routed to
// other experts do nothing in it. Variants: ROUTE, GATE_UP or DOWN (with or without GROUPED, and
// with GROUPED FEW; the per-slot GATE_UP also FOLDED, and FOLDED with ONE_TOKEN), F16_PRODUCTS,
// SUBGROUPS.
#ifdef F16_PRODUCTS
enable f16;
#endif
#include "common/step.wgsl"
#include "common/mxfp4.wgsl"

#include "common/moe_params.wgsl"

#ifdef ROUTE
// FOLDED: z_x [T, E] here.
@group(0) @binding(2) var<storage, read> part: array<f32>;
@group(0) @binding(3) var<storage, read_write> idx: array<u32>;
@group(0) @binding(4) var<storage, read_write> wts: array<f32>;
#ifdef FOLDED
@group(0) @binding(5) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> z_a: array<f32>;
@group(0) @binding(7) var<storage, read> norm_g: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> router_bias: array<f32>;
@group(0) @binding(9) var<storage, read_write> h: array<vec4<f32>>;

fn residual(i: u32) -> vec4<f32> {
    return x[i];
}
#endif
#endif

#ifdef GATE_UP
@group(0) @binding(2) var<storage, read> h: array<vec4<f32>>;
#ifdef GROUPED
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> scales: array<u32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> act: array<f32>;
#else
// FOLDED: z_x here, the residual's term of the router logits.
@group(0) @binding(3) var<storage, read> part: array<f32>;
@group(0) @binding(4) var<storage, read_write> idx: array<u32>;
@group(0) @binding(5) var<storage, read_write> wts: array<f32>;
@group(0) @binding(6) var<storage, read> blocks: array<vec2<u32>>;
@group(0) @binding(7) var<storage, read> scales: array<u32>;
@group(0) @binding(8) var<storage, read> bias: array<f32>;
@group(0) @binding(9) var<storage, read_write> act: array<f32>;
#ifdef FOLDED
@group(0) @binding(10) var<storage, read> z_a: array<f32>;
@group(0) @binding(11) var<storage, read> norm_g: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read> router_bias: array<f32>;

fn residual(i: u32) -> vec4<f32> {
    return h[i];
}
#endif
#endif

fn input(i: u32) -> vec4<f32> {
#ifdef FOLDED
    // h is the residual here, normed as it is read (the workgroup's token starts at norm_base).
    return normed(norm_base, i - norm_base);
#else
    return h[i];
#endif
}

// A slot reads the normed hidden state of its token (vec4 index).
fn input_base(s: u32) -> u32 {
    return (s / p.top_k) * (p.hidden / 4u);
}
#endif

#ifdef DOWN
@group(0) @binding(2) var<storage, read> act: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read> wts: array<f32>;
#ifdef GROUPED
@group(0) @binding(5) var<storage, read> blocks: array<vec4<u32>>;
#else
@group(0) @binding(5) var<storage, read> blocks: array<vec2<u32>>;
#endif
@group(0) @binding(6) var<storage, read> scales: array<u32>;
@group(0) @binding(7) var<storage, read> bias: array<f32>;
// x [T, H] (per slot: the residual stream) or y [T*K, H] (GROUPED: per slot, for COMBINE).
@group(0) @binding(8) var<storage, read_write> out: array<f32>;

fn input(i: u32) -> vec4<f32> {
    return act[i];
}

// A slot reads its own activation (vec4 index).
fn input_base(s: u32) -> u32 {
    return s * (p.inter / 4u);
}
#endif

// Per slot: rows per workgroup and lanes per row group of each projection (the Rust side reads
// these lines to size the grid; gate_up needs R even, a gate row beside its up row; down's row
// groups each take one of the token's slots, so its workgroup covers R = DOWN_ROWS / groups rows
// of all of them), and the most experts per token. Every workgroup of gate_up ranks its token's
// experts and every one of down gathers its slots, so more rows a workgroup spread that over more
// rows: 16 rather than 8 took the H200's batch-1 step 2.65 -> 2.58 ms; gate_up at 32, 2% less
// (down at 32 lost 20%: PERF.md v0.33, v0.34).
const GATE_UP_ROWS: u32 = 32u;
const GATE_UP_GL: u32 = 32u;
const DOWN_ROWS: u32 = 16u;
const DOWN_GL: u32 = 32u;
const MAX_K: u32 = 16u;
const VEC_WG: u32 = 128u;
// ONE_TOKEN (the FOLDED gate_up of a one-token pass): workgroups of ONE_TOKEN_WG lanes over
// ONE_TOKEN_GATE_UP_ROWS rows, the same R rows a row group, so half as many workgroups each rank,
// norm and sum (H100, PERF.md v0.48: gate_up 918-920 -> 857 us a step, 410 -> 413 tok/s). At two
// tokens the larger workgroups took more rounds of an SM's slots and lost (1345 -> 1390 us).
const ONE_TOKEN_GATE_UP_ROWS: u32 = 64u;
const ONE_TOKEN_WG: u32 = 256u;
// GROUPED: rows of each projection and invocations per workgroup (the Rust side reads these
// lines), slots at once, inputs of each slot in workgroup memory at once (8 KiB). On the H200 each
// of these beat its neighbours at batch 32 (128 rows, 128 invocations, 4 or 16 slots, 512 or 1024
// inputs; loading a chunk's weights before its inputs' barrier: PERF.md v0.19); down at 32 rows
// (8 threads a row, twice the workgroups of its 2880 rows) took 7-9% off its time at batches
// 8-64, gate_up at 32 added 1-4% (PERF.md v0.34).
const GATE_UP_GROUPED_ROWS: u32 = 64u;
const DOWN_GROUPED_ROWS: u32 = 32u;
const GROUPED_WG: u32 = 256u;
// This projection's shapes, of the two above.
#ifdef DOWN
const ROWS: u32 = DOWN_ROWS;
const GL: u32 = DOWN_GL;
const GROUPED_ROWS: u32 = DOWN_GROUPED_ROWS;
#else
#ifdef ONE_TOKEN
const ROWS: u32 = ONE_TOKEN_GATE_UP_ROWS;
#else
const ROWS: u32 = GATE_UP_ROWS;
#endif
const GL: u32 = GATE_UP_GL;
const GROUPED_ROWS: u32 = GATE_UP_GROUPED_ROWS;
#endif
// Passes of 2 tokens and more take the GROUPED kernels, up to COOP_VEC_MAX_TOKENS on adapters
// with tensor-core tiles, which win above (src/kernels/moe.rs). Those adapters have SHADER_F16, so
// the grouped products run in f16 pairs there (H200, batch 64: 3087 tok/s grouped in f16, 2767
// tiled; in f32 the tiles won, 2228 against 1980: PERF.md v0.31).
const COOP_VEC_MAX_TOKENS: u32 = 64u;
// Passes of up to SLOT_MAX_TOKENS tokens take the per-slot kernels (a workgroup row per slot,
// routing in gate_up, down adding to the residual: no routing or combining dispatch), larger
// ones the GROUPED kernels (the Rust side reads this line). A pass of T tokens has 4T slots on
// about 32 (1 - (31/32)^(4T)) distinct experts of the 20b's 32, so per slot reads 10% more
// bytes at 2 tokens, 27% at 4, 57% at 8, for two dispatches fewer a layer (H100, PERF.md
// v0.46, tok/s grouped -> per slot: 2 tokens 504-509 -> 564-569, 3 656-666 -> 715-717, 4
// 801-807 -> 827, 5 873-874 -> 853-857, 8 1165-1173 -> 1017-1041).
const SLOT_MAX_TOKENS: u32 = 4u;
// Down takes its per-slot kernel (adding to the residual: no COMBINE) up to DOWN_SLOT_MAX_TOKENS
// (at least SLOT_MAX_TOKENS), reading the slots that the routing dispatch picked above
// SLOT_MAX_TOKENS (the Rust side reads this line). H200, PERF.md v0.47, tok/s at 5 / 6 / 8
// tokens: 4 (grouped down and COMBINE above 4) 927 / 1026-1029 / 1228-1232; 6: 945-956 /
// 1057-1061 / 1230; 8: 956-957 / 1060 / 1225-1233.
const DOWN_SLOT_MAX_TOKENS: u32 = 6u;
// FEW (passes of up to FEW_MAX_TOKENS tokens, whose experts have few slots each): 4 slots at
// once, which takes fewer registers (H200, batch 8: 675 -> 727 tok/s; batch 32 with 4: 1625 ->
// 1492). With F16_PRODUCTS the Rust side takes FEW for every grouped pass (H200, batch 24 / 32 /
// 48: 2092 / 2437 / 2832 tok/s against 1824 / 2246 / 2767 with 8 slots at once; 64 even,
// PERF.md v0.31).
const FEW_MAX_TOKENS: u32 = 16u;
#ifdef GROUPED
const WG: u32 = GROUPED_WG;
const KSPLIT: u32 = WG / GROUPED_ROWS;
// KC inputs of each slot at a time: 8 KiB in both (4 slots of 512: H200 batch 16 expert time
// 11.1 -> 10.4 ms a step against 256).
#ifdef FEW
const MAX_S: u32 = 4u;
const KC: u32 = 512u;
#else
const MAX_S: u32 = 8u;
const KC: u32 = 256u;
#endif
#include "common/lanes.wgsl"
#else
#ifdef ONE_TOKEN
const WG: u32 = ONE_TOKEN_WG;
#else
const WG: u32 = VEC_WG;
#endif
const R: u32 = ROWS / (WG / GL);
const MAX_S: u32 = 1u;
const NSUM: u32 = MAX_S * R;
#include "common/row_group.wgsl"
#endif

// acc[q * R + r] = row row0 + r of local expert e_local (`rows` rows of k codes, 16 per unit)
// . the input vector of slot q < n_s, which starts at vec4 index inb[q], summed over the lanes
// of this lane's row group. Rows past `rows` are not read and sum to zero.
#ifndef ROUTE
#ifndef GROUPED
fn project(l: Lanes, e_local: u32, row0: u32, rows: u32, k: u32, inb: array<u32, MAX_S>,
           n_s: u32) -> array<f32, NSUM> {
    // Zeroed by hand: SwiftShader keeps a function-local array's old values (attention_split.wgsl).
    var acc: array<f32, NSUM>;
    for (var q = 0u; q < NSUM; q++) {
        acc[q] = 0.0;
    }
    let units = k / 16u;
    let first = l.lid % GL;
    // The next trip's units are loaded before this trip's products, so that every lane's loads
    // overlap the products rather than all lanes waiting, then all multiplying (with linear_vec
    // doing the same, H100 batch 1 387-390 -> 414-417 tok/s, PERF.md v0.45).
    var w_next = unit_words(e_local, row0, rows, units, min(first, units - 1u));
    for (var i = first; i < units; i += GL) {
        let w = w_next;
        w_next = unit_words(e_local, row0, rows, units, min(i + GL, units - 1u));
        // The scales stay with this trip: carried with the next trip's words (and its inputs)
        // they took the folded gate_up from 72 to 96 registers, past one round of its
        // workgroups, and batch 1 lost 13-15% (PERF.md v0.45).
        var sc: array<f32, R>;
        for (var r = 0u; r < R; r++) {
            sc[r] = 0.0;
            if row0 + r < rows {
                sc[r] = unit_scale(e_local * rows + row0 + r, k, 2u * i);
            }
        }
#ifndef F16_PRODUCTS
        // The unit's codes of each row, decoded once for all the slots.
        var lo: array<mat4x2<f32>, R>;
        var hi: array<mat4x2<f32>, R>;
        for (var r = 0u; r < R; r++) {
            lo[r] = fp4_decode8(w[r].x);
            hi[r] = fp4_decode8(w[r].y);
        }
#endif
        for (var q = 0u; q < MAX_S; q++) {
            if q < n_s {
                let a0 = input(inb[q] + 4u * i);
                let a1 = input(inb[q] + 4u * i + 1u);
                let a2 = input(inb[q] + 4u * i + 2u);
                let a3 = input(inb[q] + 4u * i + 3u);
#ifdef F16_PRODUCTS
                // A unit's 16 products in f16 pairs (8 a half), then its sum in f32. (The Rust
                // side asks this of DOWN only: gate_up's was slower on the H200, v0.31.)
                let x0 = f16_pairs(a0, a1);
                let x1 = f16_pairs(a2, a3);
                for (var r = 0u; r < R; r++) {
                    let s = dot8_f16(fp4_pairs(w[r].y), x1,
                                     dot8_f16(fp4_pairs(w[r].x), x0, vec2<f16>()));
                    acc[q * R + r] = fma(f32(s.x) + f32(s.y), sc[r], acc[q * R + r]);
                }
#else
                for (var r = 0u; r < R; r++) {
                    let unit = fp4_dot8_acc(hi[r], a2, a3, fp4_dot8_acc(lo[r], a0, a1, 0.0));
                    acc[q * R + r] = fma(unit, sc[r], acc[q * R + r]);
                }
#endif
            }
        }
    }
    group_sums(&acc, l);
    return acc;
}

// 8-byte unit i (16 codes) of the R rows from row0 of local expert e_local, zero past `rows`.
fn unit_words(e_local: u32, row0: u32, rows: u32, units: u32, i: u32) -> array<vec2<u32>, R> {
    var w: array<vec2<u32>, R>;
    for (var r = 0u; r < R; r++) {
        w[r] = vec2<u32>(0u);
        if row0 + r < rows {
            w[r] = blocks[(e_local * rows + row0 + r) * units + i];
        }
    }
    return w;
}

// The block scale of 8-code unit i of a row of k codes (16-code unit i is 8-code unit 2i).
fn unit_scale(row: u32, k: u32, i: u32) -> f32 {
    let blk = row * (k / 32u) + i / 4u;
    return mx_scale(byte_of(scales[blk / 4u], blk));
}
#endif
#endif

// Whether expert e is in this dispatch's buffer.
fn here(e: u32) -> bool {
    return e >= p.e_start && e < p.e_start + p.e_count;
}

#ifdef GATE_UP
#ifndef GROUPED
// act[s, i] for the R / 2 (gate, up) row pairs from row r0 of expert e, from slot q of acc.
fn store_slot(s: u32, e: u32, r0: u32, acc: array<f32, NSUM>, q: u32) {
    for (var c = 0u; c < R / 2u; c++) {
        let i = r0 / 2u + c;
        if i < p.inter {
            let rb = e * 2u * p.inter + 2u * i;
            let gate = min(acc[q * R + 2u * c] + bias[rb], p.limit);
            let up = clamp(acc[q * R + 2u * c + 1u] + bias[rb + 1u], -p.limit, p.limit);
            let glu = gate / (1.0 + exp(-p.alpha * gate));
            act[s * p.inter + i] = glu * (up + 1.0);
        }
    }
}
#endif
#endif

#ifdef GROUPED
// The slots of [c0, c0 + WG) whose expert is e, in `list` (in no particular order: each slot's
// sums are its own). Returns how many, uniformly. Called from uniform control flow. (Each
// workgroup scans idx itself rather than reading moe.wgsl ROUTE's per-expert lists: a few
// hundred cached words against a dependent dispatch a layer.)
var<workgroup> list: array<u32, WG>;
var<workgroup> n_found: atomic<u32>;
var<workgroup> n_list: u32;

fn gather(l: Lanes, e: u32, c0: u32) -> u32 {
    if l.lid == 0u {
        atomicStore(&n_found, 0u);
    }
    workgroupBarrier();
    let s = c0 + l.lid;
    if s < step.slots && idx[s] == e {
        list[atomicAdd(&n_found, 1u)] = s;
    }
    workgroupBarrier();
    if l.lid == 0u {
        n_list = atomicLoad(&n_found);
    }
    return workgroupUniformLoad(&n_list);
}

#ifdef F16_PRODUCTS
// The slots' chunk of inputs as f16 pairs, a word's 8 at a time; the threads' partial sums.
var<workgroup> xs: array<Pairs8, MAX_S * KC / 8u>;
var<workgroup> partials: array<f32, WG * MAX_S>;

fn put_sum(i: u32, v: f32) {
    partials[i] = v;
}

fn get_sum(i: u32) -> f32 {
    return partials[i];
}

// Stores inputs [8 i, 8 i + 8) of the chunk of slot q, which start at vec4 index at.
fn stash(q: u32, i: u32, at: u32) {
    xs[q * (KC / 8u) + i] = f16_pairs(input(at), input(at + 1u));
}
#else
// The slots' chunk of inputs; once the last chunk is multiplied, the threads' partial sums (as
// floats: WG * MAX_S of them fit, KC being at least WG), so that the two fit WebGPU's 16 KiB.
var<workgroup> xs: array<vec4<f32>, MAX_S * KC / 4u>;

fn put_sum(i: u32, v: f32) {
    xs[i / 4u][i % 4u] = v;
}

fn get_sum(i: u32) -> f32 {
    return xs[i / 4u][i % 4u];
}

// Stores inputs [8 i, 8 i + 8) of the chunk of slot q, which start at vec4 index at.
fn stash(q: u32, i: u32, at: u32) {
    xs[q * (KC / 4u) + 2u * i] = input(at);
    xs[q * (KC / 4u) + 2u * i + 1u] = input(at + 1u);
}
#endif

// Block b (32 codes, from block index row_blk of the buffer) of this thread's row against the
// same 32 inputs of the n_s slots, whose chunk of inputs starting at x0 is in xs; added into acc.
fn block_products(acc: ptr<function, array<f32, MAX_S>>, row_blk: u32, b: u32, x0: u32,
                  n_s: u32) {
    let blk = row_blk + b;
    let w = blocks[blk];
    let sc = mx_scale(byte_of(scales[blk / 4u], blk));
#ifdef F16_PRODUCTS
    // The block decoded once; each slot's 32 products in f16 pairs (16 a half), then their sum in
    // f32. (A word's codes at a time against every slot, as FEW does in f32, was slower: H200
    // batch 32 with 8 slots at once 1855 against 2206 tok/s, PERF.md v0.31.)
    let at = (32u * b - x0) / 8u;
    let c = array<Pairs8, 4>(fp4_pairs(w.x), fp4_pairs(w.y), fp4_pairs(w.z), fp4_pairs(w.w));
    for (var q = 0u; q < MAX_S; q++) {
        if q < n_s {
            var s = vec2<f16>();
            for (var j = 0u; j < 4u; j++) {
                s = dot8_f16(c[j], xs[q * (KC / 8u) + at + j], s);
            }
            (*acc)[q] = fma(f32(s.x) + f32(s.y), sc, (*acc)[q]);
        }
    }
#else
    let at = (32u * b - x0) / 4u;
#ifdef FEW
    // A word's 8 codes at a time against every slot, so that only they are live decoded: with 4
    // slots that takes fewer registers (H200 batch 8: gate_up 4.02 -> 3.75 ms a step); with 8 the
    // extra sums cost more (batch 32: 8.8 -> 9.6 ms). Each slot's sum runs over the words in order
    // either way.
    var sums: array<f32, MAX_S>;
    for (var q = 0u; q < MAX_S; q++) {
        sums[q] = 0.0;
    }
    for (var j = 0u; j < 4u; j++) {
        let c = fp4_decode8(w[j]);
        for (var q = 0u; q < MAX_S; q++) {
            if q < n_s {
                let base = q * (KC / 4u) + at;
                sums[q] = fp4_dot8_acc(c, xs[base + 2u * j], xs[base + 2u * j + 1u], sums[q]);
            }
        }
    }
    for (var q = 0u; q < MAX_S; q++) {
        (*acc)[q] = fma(sums[q], sc, (*acc)[q]);
    }
#else
    let c = array<mat4x2<f32>, 4>(fp4_decode8(w.x), fp4_decode8(w.y), fp4_decode8(w.z),
                                  fp4_decode8(w.w));
    for (var q = 0u; q < MAX_S; q++) {
        if q < n_s {
            let base = q * (KC / 4u) + at;
            var sum = 0.0;
            for (var j = 0u; j < 4u; j++) {
                sum = fp4_dot8_acc(c[j], xs[base + 2u * j], xs[base + 2u * j + 1u], sum);
            }
            (*acc)[q] = fma(sum, sc, (*acc)[q]);
        }
    }
#endif
#endif
}

// Row r (of the workgroup's rows) for its slot q: the KSPLIT partial sums, in order.
fn row_sum(q: u32, r: u32) -> f32 {
    var total = 0.0;
    for (var ks = 0u; ks < KSPLIT; ks++) {
        let i = (q * KSPLIT + ks) * GROUPED_ROWS + r;
        total += get_sum(i);
    }
    return total;
}

// The body of both GROUPED projections: rows wg.x GROUPED_ROWS .. of the workgroup row's expert
// (`rows` rows of k inputs) for its slots, each slot's sums handed to the variant's
// store_grouped. Called from uniform control flow.
fn run_grouped(l: Lanes, wg: vec3<u32>, rows: u32, k: u32) {
    let e = p.e_start + wg.y;
    let r = l.lid % GROUPED_ROWS;
    let ks = l.lid / GROUPED_ROWS;
    let row0 = wg.x * GROUPED_ROWS;
    let live = row0 + r < rows;
    let n_blocks = k / 32u;
    let row_blk = (wg.y * rows + min(row0 + r, rows - 1u)) * n_blocks;
    for (var c0 = 0u; c0 < step.slots; c0 += WG) {
        let n = gather(l, e, c0);
        for (var q0 = 0u; q0 < n; q0 += MAX_S) {
            let n_s = min(n - q0, MAX_S);
            var acc: array<f32, MAX_S>;
            for (var q = 0u; q < MAX_S; q++) {
                acc[q] = 0.0;
            }
            for (var x0 = 0u; x0 < k; x0 += KC) {
                let kc8 = min(KC, k - x0) / 8u;
                workgroupBarrier();
                for (var i = l.lid; i < n_s * kc8; i += WG) {
                    let q = i / kc8;
                    stash(q, i % kc8, input_base(list[q0 + q]) + x0 / 4u + 2u * (i % kc8));
                }
                workgroupBarrier();
                if live {
                    for (var b = x0 / 32u + ks; b < (x0 + 8u * kc8) / 32u; b += KSPLIT) {
                        block_products(&acc, row_blk, b, x0, n_s);
                    }
                }
            }
            workgroupBarrier();
            for (var q = 0u; q < MAX_S; q++) {
                put_sum((q * KSPLIT + ks) * GROUPED_ROWS + r, acc[q]);
            }
            workgroupBarrier();
            store_grouped(l.lid, e, row0, q0, n_s);
        }
        workgroupBarrier();
    }
}
#endif

#ifdef GATE_UP
#ifdef GROUPED
// act[s, i] for the (gate, up) row pairs from row0 (even) for the n_s slots from list[q0].
fn store_grouped(lid: u32, e: u32, row0: u32, q0: u32, n_s: u32) {
    for (var j = lid; j < n_s * (GROUPED_ROWS / 2u); j += WG) {
        let q = j / (GROUPED_ROWS / 2u);
        let c = j % (GROUPED_ROWS / 2u);
        let i = row0 / 2u + c;
        if i < p.inter {
            let rb = e * 2u * p.inter + 2u * i;
            let gate = min(row_sum(q, 2u * c) + bias[rb], p.limit);
            let up = clamp(row_sum(q, 2u * c + 1u) + bias[rb + 1u], -p.limit, p.limit);
            let glu = gate / (1.0 + exp(-p.alpha * gate));
            act[list[q0 + q] * p.inter + i] = glu * (up + 1.0);
        }
    }
}

@compute @workgroup_size(WG)
fn gate_up(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    run_grouped(l, wg, 2u * p.inter, p.hidden);
}
#else
@compute @workgroup_size(WG)
fn gate_up(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let s = wg.y;
    if s >= step.slots {
        return;
    }
    let j = s % p.top_k;
    route(l, s / p.top_k);
    let e = workgroupUniformLoad(&chosen[j]);
    if wg.x == 0u && l.lid == 0u {
        store_pick(s, j);
    }
    if !here(e) {
        return;
    }
    let r0 = (wg.x * NG + l.lid / GL) * R;
    let inb = array<u32, MAX_S>(input_base(s));
    let acc = project(l, e - p.e_start, r0, 2u * p.inter, p.hidden, inb, 1u);
    if l.lid % GL == 0u {
        store_slot(s, e, r0, acc, 0u);
    }
}
#endif
#endif

#ifdef DOWN
#ifdef GROUPED
@compute @workgroup_size(WG)
fn down(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    run_grouped(l, wg, p.hidden, p.inter);
}

// y[s, row0 + r] for the n_s slots from list[q0], weighted, with the bias.
fn store_grouped(lid: u32, e: u32, row0: u32, q0: u32, n_s: u32) {
    for (var i = lid; i < n_s * GROUPED_ROWS; i += WG) {
        let q = i / GROUPED_ROWS;
        let row = row0 + i % GROUPED_ROWS;
        if row < p.hidden {
            let s = list[q0 + q];
            let y = row_sum(q, i % GROUPED_ROWS) + bias[e * p.hidden + row];
            out[s * p.hidden + row] = wts[s] * y;
        }
    }
}
#else
// Each slot's expert, and each group's weighted row sums.
var<workgroup> slot_e: array<u32, MAX_K>;
var<workgroup> slot_sums: array<f32, NG * R>;

@compute @workgroup_size(WG)
fn down(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    if l.lid < p.top_k {
        slot_e[l.lid] = idx[t * p.top_k + l.lid];
    }
    workgroupBarrier();
    let grp = l.lid / GL;
    let r0 = wg.x * R;
    var sums: array<f32, R>;
    for (var j0 = 0u; j0 < p.top_k; j0 += NG) {
        // Every group runs the loop (group_sums needs the whole workgroup); j past K or an
        // expert of another buffer adds nothing.
        let j = j0 + grp;
        let s = t * p.top_k + min(j, p.top_k - 1u);
        let e = slot_e[min(j, p.top_k - 1u)];
        let live = j < p.top_k && here(e);
        // A group with nothing to do projects zero rows: no loads, but it joins the sums.
        let e_local = select(0u, e - p.e_start, live);
        let inb = array<u32, MAX_S>(input_base(s));
        let acc = project(l, e_local, r0, select(0u, p.hidden, live), p.inter, inb, 1u);
        if live {
            for (var r = 0u; r < R; r++) {
                let row = min(r0 + r, p.hidden - 1u);
                sums[r] += wts[s] * (acc[r] + bias[e * p.hidden + row]);
            }
        }
    }
    if l.lid % GL == 0u {
        for (var r = 0u; r < R; r++) {
            slot_sums[grp * R + r] = sums[r];
        }
    }
    workgroupBarrier();
    if l.lid < R && r0 + l.lid < p.hidden {
        var total = 0.0;
        for (var q = 0u; q < NG; q++) {
            total += slot_sums[q * R + l.lid];
        }
        out[t * p.hidden + r0 + l.lid] += total;
    }
}
#endif
#endif

#ifdef ROUTE
@compute @workgroup_size(WG)
fn route_slots(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    route(l, t);
    workgroupBarrier();
    if l.lid < p.top_k {
        store_pick(t * p.top_k + l.lid, l.lid);
    }
#ifdef FOLDED
    // The experts' input, which the router writes where it is not folded.
    let xb = t * (p.hidden / 4u);
    for (var i = l.lid; i < p.hidden / 4u; i += WG) {
        h[xb + i] = normed(xb, i);
    }
#endif
}
#endif

#ifndef GROUPED
#ifndef DOWN
// Most experts (the Rust side reads this line); the token's logits, the chosen experts and their
// logits by rank.
const MAX_E: u32 = 256u;
var<workgroup> logit: array<f32, MAX_E>;
var<workgroup> chosen: array<u32, MAX_K>;
var<workgroup> chosen_logit: array<f32, MAX_K>;

#ifdef FOLDED
const NV: u32 = 1u;
#include "common/reduce.wgsl"
// The norm's scale of the token's residual and where the residual starts (vec4 index; route
// sets both).
var<private> norm_scale: f32;
var<private> norm_base: u32;

// Element i (vec4) of the normed residual of the token whose residual starts at vec4 xb.
fn normed(xb: u32, i: u32) -> vec4<f32> {
    return residual(xb + i) * norm_scale * norm_g[i];
}
#endif

// Ranks token t's experts into `chosen` (by rank; read after a barrier). Called from uniform
// control flow.
fn route(l: Lanes, t: u32) {
#ifdef FOLDED
    // The norm's scale s of the token's residual, then s (z_x + z_a) + b_r (router_fold.wgsl);
    // the terms are loaded first, so that their loads are in flight with the residual's.
    reduce_setup(l);
    var zs: array<f32, MAX_E / WG>;
    var bs: array<f32, MAX_E / WG>;
    for (var j = 0u; j < MAX_E / WG; j++) {
        let e = l.lid + j * WG;
        if e < p.n_experts {
            zs[j] = part[t * p.n_experts + e] + z_a[t * p.n_experts + e];
            bs[j] = router_bias[e];
        }
    }
    // The residual's sum of squares, four loads of a lane in flight at once (dead ones past the
    // row add zero; the same sums in the same order: H100 batch 1 gate_up 889 -> 874 us a step,
    // PERF.md v0.43).
    let xb = t * (p.hidden / 4u);
    norm_base = xb;
    let n4 = p.hidden / 4u;
    var ss: array<f32, NV>;
    for (var i0 = l.lid; i0 < n4; i0 += 4u * WG) {
        var v: array<vec4<f32>, 4>;
        for (var u = 0u; u < 4u; u++) {
            let i = i0 + u * WG;
            v[u] = select(vec4<f32>(0.0), residual(xb + min(i, n4 - 1u)), i < n4);
        }
        for (var u = 0u; u < 4u; u++) {
            ss[0] += dot(v[u], v[u]);
        }
    }
    reduce_sum(&ss);
    norm_scale = inverseSqrt(red[0] / f32(p.hidden) + p.eps);
    for (var j = 0u; j < MAX_E / WG; j++) {
        let e = l.lid + j * WG;
        if e < p.n_experts {
            logit[e] = fma(norm_scale, zs[j], bs[j]);
        }
    }
#else
    for (var e = l.lid; e < p.n_experts; e += WG) {
        var sum = 0.0;
        for (var c = 0u; c < p.slices; c++) {
            sum += part[(t * p.slices + c) * p.n_experts + e];
        }
        logit[e] = sum;
    }
#endif
    workgroupBarrier();
    // Lane e ranks expert e by how many experts beat it: the K best get ranks 0..K-1 at once.
    for (var e = l.lid; e < p.n_experts; e += WG) {
        let v = logit[e];
        var rank = 0u;
        for (var o = 0u; o < p.n_experts; o++) {
            let u = logit[o];
            if u > v || (u == v && o < e) {
                rank++;
            }
        }
        if rank < p.top_k {
            chosen[rank] = e;
            chosen_logit[rank] = v;
        }
    }
}

// Stores slot s's expert (rank j of its token) and its softmax weight over the K chosen logits
// (the first is the largest).
fn store_pick(s: u32, j: u32) {
    var sum = 0.0;
    for (var q = 0u; q < p.top_k; q++) {
        sum += exp(chosen_logit[q] - chosen_logit[0]);
    }
    idx[s] = chosen[j];
    wts[s] = exp(chosen_logit[j] - chosen_logit[0]) / sum;
}
#endif
#endif
