// MoE experts with MXFP4 weights for passes of a few tokens (decode), in two shapes. (Large
// passes use moe.wgsl, which tiles slots and rows for the tensor cores.)
//
// One token (batch-1 decode): one workgroup row per token-expert slot, routing in gate_up itself.
// GATE_UP: for slot s = t * K + j, the slot's expert e is the token's j-th largest router logit
//   (lower index wins a tie), the logits being the sums of the router's per-slice partials
//   (router.wgsl PARTIAL); every workgroup ranks them itself, so routing costs no dispatch of its
//   own, and the first workgroup of the slot stores e and its softmax weight (over the K chosen)
//   in idx and wts for DOWN. Then, when e is in this dispatch's experts:
//   g = W_gate_up[e] h[t] + bias[e] (2I values, even = gate, odd = up);
//   gate = min(g_even, limit); up = clamp(g_odd, -limit, limit);   (the clamp is upper-only on gate)
//   act[s, i] = gate * sigmoid(alpha * gate) * (up + 1).
//   Bindings: h [T, H] (normed), part [T, slices, E], idx [T*K] u32, wts [T*K] f32, blocks
//   [e_count, 2I, H/32, 16] u8 in 8-byte units, scales [e_count, 2I, H/32] u8, bias [E, 2I] f32,
//   act [T*K, I]. Grid: (ceil(2I / ROWS), T*K).
// DOWN: x[t, n] += sum_j wts[s] * (W_down[e] act[s] + bias[e])[n] over the token's slots
//   s = t * K + j whose expert e is in this dispatch: the down projection, the weighting and the
//   residual add in one (moe.wgsl's COMBINE does that step for larger passes). Row group j of a
//   workgroup takes slot j (j, j + NG, ... when K > NG) for the workgroup's R rows; the groups'
//   sums meet in workgroup memory and are added in slot order.
//   Bindings: act, idx, wts [T*K], blocks [e_count, H, I/32, 16], scales, bias [E, H], x [T, H].
//   Grid: (ceil(H / R), T).
//
// Several tokens (GROUPED): a workgroup row per expert, so that an expert chosen by several tokens
// has its weights read once for all of them (PERF.md v0.15).
// ROUTE: idx and wts of every slot of token t, as the one-token GATE_UP picks them.
//   Bindings: part, idx, wts. Grid: (1, T).
// GATE_UP + GROUPED: act[s] as above for every slot s with idx[s] = e, e the workgroup row's
//   expert; the workgroup gathers them WG slots at a time and runs MAX_S at once, each weight
//   load serving them all. Bindings: h, idx, blocks, scales, bias, act. Grid: (ceil(2I / ROWS),
//   e_count).
// DOWN + GROUPED: y[s, n] = wts[s] * (W_down[e] act[s] + bias[e])[n] for the same slots; COMBINE
//   then adds each token's slots to x in slot order, as the one-token DOWN does. Bindings: act,
//   idx, wts, blocks, scales, bias, y [T*K, H]. Grid: (ceil(H / ROWS), e_count).
//
// A row group of GL lanes takes R rows: lane i of a group reads 8-byte unit i, i + GL, ... (16
// codes; a warp reads 256 contiguous bytes) of each of its rows and the matching 16 inputs (64
// contiguous bytes per lane), an input load serving R rows and a decoded unit MAX_S slots.
// (8-byte units beat 4-byte ones by 3% on the H200; a byte-to-pair table in workgroup memory
// instead of the bit-twiddled decode lost 25%: PERF.md v0.11; lanes reading contiguous vec4s of
// the inputs, with 4-code weight pieces to match, took twice as long: v0.15.) Short rows of work
// in many workgroups: on the H200, 2 rows per 32-lane group beat 4 and 8, 64-lane groups, one
// 16-byte block per lane (its 128-byte input strides do not coalesce) and 16 rows per 128-lane
// workgroup (PERF.md v0.9 and v0.10); 4 slots at once did as well as 1 or 2 and better than 8
// (v0.15).
// A dispatch holds the experts [e_start, e_start + e_count) of one weight buffer; slots routed to
// other experts do nothing in it. Variants: ROUTE, GATE_UP or DOWN (with or without GROUPED),
// SUBGROUPS.
#include "common/step.wgsl"
#include "common/mxfp4.wgsl"

#include "common/moe_params.wgsl"

#ifdef ROUTE
@group(0) @binding(2) var<storage, read> part: array<f32>;
@group(0) @binding(3) var<storage, read_write> idx: array<u32>;
@group(0) @binding(4) var<storage, read_write> wts: array<f32>;
#endif

#ifdef GATE_UP
@group(0) @binding(2) var<storage, read> h: array<vec4<f32>>;
#ifdef GROUPED
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read> blocks: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read> scales: array<u32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> act: array<f32>;
#else
@group(0) @binding(3) var<storage, read> part: array<f32>;
@group(0) @binding(4) var<storage, read_write> idx: array<u32>;
@group(0) @binding(5) var<storage, read_write> wts: array<f32>;
@group(0) @binding(6) var<storage, read> blocks: array<vec2<u32>>;
@group(0) @binding(7) var<storage, read> scales: array<u32>;
@group(0) @binding(8) var<storage, read> bias: array<f32>;
@group(0) @binding(9) var<storage, read_write> act: array<f32>;
#endif

fn input(i: u32) -> vec4<f32> {
    return h[i];
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
@group(0) @binding(5) var<storage, read> blocks: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read> scales: array<u32>;
@group(0) @binding(7) var<storage, read> bias: array<f32>;
// x [T, H] (one token: the residual stream) or y [T*K, H] (GROUPED: per slot, for COMBINE).
@group(0) @binding(8) var<storage, read_write> out: array<f32>;

fn input(i: u32) -> vec4<f32> {
    return act[i];
}

// A slot reads its own activation (vec4 index).
fn input_base(s: u32) -> u32 {
    return s * (p.inter / 4u);
}
#endif

// Rows per workgroup (the Rust side reads this line to size the grid; gate_up needs R even, a
// gate row beside its up row), and the most experts per token.
const ROWS: u32 = 8u;
const MAX_K: u32 = 16u;
const WG: u32 = 128u;
const GL: u32 = 32u;
const R: u32 = ROWS / (WG / GL);
// Slots a projection serves at once.
#ifdef GROUPED
const MAX_S: u32 = 4u;
#else
const MAX_S: u32 = 1u;
#endif
const NSUM: u32 = MAX_S * R;
#include "common/row_group.wgsl"

// acc[q * R + r] = row row0 + r of local expert e_local (`rows` rows of k codes, 16 per unit)
// . the input vector of slot q < n_s, which starts at vec4 index inb[q], summed over the lanes
// of this lane's row group. Rows past `rows` are not read and sum to zero.
#ifndef ROUTE
fn project(l: Lanes, e_local: u32, row0: u32, rows: u32, k: u32, inb: array<u32, MAX_S>,
           n_s: u32) -> array<f32, NSUM> {
    // Zeroed by hand: SwiftShader keeps a function-local array's old values (attention_split.wgsl).
    var acc: array<f32, NSUM>;
    for (var q = 0u; q < NSUM; q++) {
        acc[q] = 0.0;
    }
    let units = k / 16u;
    for (var i = l.lid % GL; i < units; i += GL) {
        // The unit's codes of each row, decoded once for all the slots.
        var lo: array<mat4x2<f32>, R>;
        var hi: array<mat4x2<f32>, R>;
        var sc: array<f32, R>;
        for (var r = 0u; r < R; r++) {
            var w = vec2<u32>(0u);
            sc[r] = 0.0;
            if row0 + r < rows {
                let row = e_local * rows + row0 + r;
                w = blocks[row * units + i];
                sc[r] = unit_scale(row, k, 2u * i);
            }
            lo[r] = fp4_decode8(w.x);
            hi[r] = fp4_decode8(w.y);
        }
        for (var q = 0u; q < MAX_S; q++) {
            if q < n_s {
                let a0 = input(inb[q] + 4u * i);
                let a1 = input(inb[q] + 4u * i + 1u);
                let a2 = input(inb[q] + 4u * i + 2u);
                let a3 = input(inb[q] + 4u * i + 3u);
                for (var r = 0u; r < R; r++) {
                    acc[q * R + r] += (fp4_dot8(lo[r], a0, a1) + fp4_dot8(hi[r], a2, a3)) * sc[r];
                }
            }
        }
    }
    group_sums(&acc, l);
    return acc;
}

// The block scale of 8-code unit i of a row of k codes (16-code unit i is 8-code unit 2i).
fn unit_scale(row: u32, k: u32, i: u32) -> f32 {
    let blk = row * (k / 32u) + i / 4u;
    return mx_scale(byte_of(scales[blk / 4u], blk));
}
#endif

// Whether expert e is in this dispatch's buffer.
fn here(e: u32) -> bool {
    return e >= p.e_start && e < p.e_start + p.e_count;
}

#ifdef GATE_UP
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

// The body of both GROUPED projections: the slots of the workgroup row's expert, MAX_S at a
// time, rows r0 .. r0 + R of the expert's `rows` (k inputs) for row group (wg.x * NG + group),
// each slot's sums handed to the variant's store_slot.
fn run_grouped(l: Lanes, wg: vec3<u32>, rows: u32, k: u32) {
    let e = p.e_start + wg.y;
    let r0 = (wg.x * NG + l.lid / GL) * R;
    for (var c0 = 0u; c0 < step.slots; c0 += WG) {
        let n = gather(l, e, c0);
        for (var q0 = 0u; q0 < n; q0 += MAX_S) {
            var inb: array<u32, MAX_S>;
            for (var q = 0u; q < MAX_S; q++) {
                inb[q] = input_base(list[min(q0 + q, n - 1u)]);
            }
            let n_s = min(n - q0, MAX_S);
            let acc = project(l, wg.y, r0, rows, k, inb, n_s);
            if l.lid % GL == 0u {
                for (var q = 0u; q < n_s; q++) {
                    store_slot(list[q0 + q], e, r0, acc, q);
                }
            }
        }
        workgroupBarrier();
    }
}
#endif

#ifdef GATE_UP
#ifdef GROUPED
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

// y[s, rows r0 ..] of expert e, weighted, with the bias, from slot q of acc.
fn store_slot(s: u32, e: u32, r0: u32, acc: array<f32, NSUM>, q: u32) {
    for (var r = 0u; r < R; r++) {
        let row = r0 + r;
        if row < p.hidden {
            out[s * p.hidden + row] = wts[s] * (acc[q * R + r] + bias[e * p.hidden + row]);
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

// Ranks token t's experts into `chosen` (by rank; read after a barrier). Called from uniform
// control flow.
fn route(l: Lanes, t: u32) {
    for (var e = l.lid; e < p.n_experts; e += WG) {
        var sum = 0.0;
        for (var c = 0u; c < p.slices; c++) {
            sum += part[(t * p.slices + c) * p.n_experts + e];
        }
        logit[e] = sum;
    }
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
