// MoE experts with MXFP4 weights for passes of a few tokens (decode): one workgroup row per
// token-expert slot, so only the routed experts' weights are read. (Large passes use moe.wgsl,
// which groups slots by expert to reuse weights across tokens.)
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
//   residual add in one (moe.wgsl's COMBINE does that step for large passes). Row group j of a
//   workgroup takes slot j (j, j + NG, ... when K > NG) for the workgroup's R rows; the groups'
//   sums meet in workgroup memory and are added in slot order.
//   Bindings: act, idx, wts [T*K], blocks [e_count, H, I/32, 16], scales, bias [E, H], x [T, H].
//   Grid: (ceil(H / R), T).
// A row group of GL lanes takes R rows: lane i of a group reads 8-byte unit i, i + GL, ... (16
// codes; a warp reads 256 contiguous bytes) of each of its rows and the matching 16 inputs (64
// contiguous bytes per lane), an input load serving R rows. (8-byte units beat 4-byte ones by 3%
// on the H200; a byte-to-pair table in workgroup memory instead of the bit-twiddled decode lost
// 25%: PERF.md v0.11.) Short rows of
// work in many workgroups: on the H200, 2 rows per 32-lane group beat 4 and 8, 64-lane groups,
// one 16-byte block per lane (its 128-byte input strides do not coalesce) and 16 rows per
// 128-lane workgroup (PERF.md v0.9 and v0.10).
// A dispatch holds the experts [e_start, e_start + e_count) of one weight buffer; slots routed to
// other experts do nothing in it. Variants: GATE_UP or DOWN, SUBGROUPS.
#include "common/step.wgsl"
#include "common/mxfp4.wgsl"

#include "common/moe_params.wgsl"

#ifdef GATE_UP
@group(0) @binding(2) var<storage, read> h: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> part: array<f32>;
@group(0) @binding(4) var<storage, read_write> idx: array<u32>;
@group(0) @binding(5) var<storage, read_write> wts: array<f32>;
@group(0) @binding(6) var<storage, read> blocks: array<vec2<u32>>;
@group(0) @binding(7) var<storage, read> scales: array<u32>;
@group(0) @binding(8) var<storage, read> bias: array<f32>;
@group(0) @binding(9) var<storage, read_write> act: array<f32>;

fn input(i: u32) -> vec4<f32> {
    return h[i];
}
#endif

#ifdef DOWN
@group(0) @binding(2) var<storage, read> act: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read> wts: array<f32>;
@group(0) @binding(5) var<storage, read> blocks: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read> scales: array<u32>;
@group(0) @binding(7) var<storage, read> bias: array<f32>;
@group(0) @binding(8) var<storage, read_write> x: array<f32>;

fn input(i: u32) -> vec4<f32> {
    return act[i];
}
#endif

// Rows per workgroup (the Rust side reads this line to size the grid; gate_up needs R even, a
// gate row beside its up row), and the most experts per token.
const ROWS: u32 = 8u;
const MAX_K: u32 = 16u;
const WG: u32 = 128u;
const GL: u32 = 32u;
const R: u32 = ROWS / (WG / GL);
const NSUM: u32 = R;
#include "common/row_group.wgsl"

// acc[r] = row row0 + r of local expert e_local (`rows` rows of k codes, 16 per unit) . the
// input vector at vec4 index `inb`, summed over the lanes of this lane's row group.
fn project(l: Lanes, e_local: u32, row0: u32, rows: u32, k: u32, inb: u32) -> array<f32, R> {
    var acc: array<f32, R>;
    let units = k / 16u;
    for (var i = l.lid % GL; i < units; i += GL) {
        let a0 = input(inb + 4u * i);
        let a1 = input(inb + 4u * i + 1u);
        let a2 = input(inb + 4u * i + 2u);
        let a3 = input(inb + 4u * i + 3u);
        for (var r = 0u; r < R; r++) {
            if row0 + r < rows {
                let row = e_local * rows + row0 + r;
                let w = blocks[row * units + i];
                acc[r] += (fp4_dot8(w.x, a0, a1) + fp4_dot8(w.y, a2, a3)) * unit_scale(row, k, 2u * i);
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

// Whether expert e is in this dispatch's buffer.
fn here(e: u32) -> bool {
    return e >= p.e_start && e < p.e_start + p.e_count;
}

#ifdef GATE_UP
@compute @workgroup_size(WG)
fn gate_up(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let s = wg.y;
    if s >= step.slots {
        return;
    }
    let e = route(l, s, wg.x == 0u);
    if !here(e) {
        return;
    }
    let rows = 2u * p.inter;
    let r0 = (wg.x * NG + l.lid / GL) * R;
    let acc = project(l, e - p.e_start, r0, rows, p.hidden, (s / p.top_k) * (p.hidden / 4u));
    if l.lid % GL == 0u {
        for (var q = 0u; q < R / 2u; q++) {
            let i = r0 / 2u + q;
            if i < p.inter {
                let rb = e * rows + 2u * i;
                let gate = min(acc[2u * q] + bias[rb], p.limit);
                let up = clamp(acc[2u * q + 1u] + bias[rb + 1u], -p.limit, p.limit);
                let glu = gate / (1.0 + exp(-p.alpha * gate));
                act[s * p.inter + i] = glu * (up + 1.0);
            }
        }
    }
}
#endif

#ifdef DOWN
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
        let acc = project(l, e_local, r0, select(0u, p.hidden, live), p.inter, s * (p.inter / 4u));
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
        x[t * p.hidden + r0 + l.lid] += total;
    }
}
#endif

#ifdef GATE_UP
// Most experts (the Rust side reads this line); the token's logits, the chosen experts and their
// logits by rank.
const MAX_E: u32 = 256u;
var<workgroup> logit: array<f32, MAX_E>;
var<workgroup> chosen: array<u32, MAX_K>;
var<workgroup> chosen_logit: array<f32, MAX_K>;

// The expert of slot s (workgroup-uniform), stored with its weight in idx and wts when `store`.
// Called from uniform control flow.
fn route(l: Lanes, s: u32, store: bool) -> u32 {
    let t = s / p.top_k;
    let j = s % p.top_k;
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
    let e = workgroupUniformLoad(&chosen[j]);
    if store && l.lid == 0u {
        // Softmax over the K chosen logits; the first is the largest.
        var sum = 0.0;
        for (var q = 0u; q < p.top_k; q++) {
            sum += exp(chosen_logit[q] - chosen_logit[0]);
        }
        idx[s] = e;
        wts[s] = exp(chosen_logit[j] - chosen_logit[0]) / sum;
    }
    return e;
}
#endif
