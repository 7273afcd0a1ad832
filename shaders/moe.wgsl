// MoE experts with MXFP4 weights for passes of many tokens (prefill), grouped by expert: a
// workgroup owns TR rows of one expert and runs the token-expert slots routed to it TS at a time as
// a tiled matrix product. Each step of the K loop decodes one MXFP4 block of each of its rows into
// workgroup memory (a weight is decoded once per TS slots, not once per slot) beside the TS slots'
// 32 inputs, then each thread accumulates an MS x MR block of outputs from the two tiles (two
// 16-byte loads of workgroup memory per 16 multiply-adds). A slot's sums run over k in order in
// one thread, so a sequence's results do not depend on what else is in the pass.
//
// ROUTE: lists[e, 0..counts[e]] = the slots s = t * K + j with idx[s] == e, in slot order.
//   Bindings: idx [T*K], lists [E, T_max*K], counts [E]. Grid: (E, 1).
// GATE_UP: for each slot s of expert e (weights of experts [e_start, e_start + e_count) are in this
//   dispatch's buffers; a split expert set takes one dispatch per buffer):
//   g = W_gate_up[e] h[t] + bias[e] (2I values, even = gate, odd = up);
//   gate = min(g_even, limit); up = clamp(g_odd, -limit, limit);   (the clamp is upper-only on gate)
//   act[s, i] = gate * sigmoid(alpha * gate) * (up + 1).
//   Bindings: h [T, H], lists, counts, blocks [e_count, 2I, H/32] of 16 bytes, scales [e_count, 2I, H/32]
//   u8, bias [E, 2I] f32, act [T*K, I]. Grid: (ceil(2I / TR), e_count).
// DOWN: y[s, n] = wts[s] * (W_down[e] act[s] + bias[e])[n].
//   Bindings: act, lists, counts, wts [T*K], blocks [e_count, H, I/32, 16], scales, bias [E, H],
//   y [T*K, H]. Grid: (ceil(H / TR), e_count).
// COMBINE: x[t, n] += sum_j y[t*K + j, n] (the residual add), j in order.
//   Bindings: y, x [T, H]. Grid: (ceil(H / 64), T).
// Variants: ROUTE, GATE_UP, DOWN or COMBINE (different bindings). Passes of a few tokens take
// moe_vec.wgsl instead.
#include "common/step.wgsl"
#include "common/mxfp4.wgsl"

#include "common/moe_params.wgsl"

// Slots and rows per tile (the Rust side reads the TR line), and per thread.
const TS: u32 = 32u;
const TR: u32 = 64u;
const MS: u32 = 4u;
const MR: u32 = 4u;
const WG: u32 = (TS / MS) * (TR / MR);

#ifdef ROUTE
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> lists: array<u32>;
@group(0) @binding(4) var<storage, read_write> counts: array<u32>;

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

#ifdef GATE_UP
@group(0) @binding(2) var<storage, read> h: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> lists: array<u32>;
@group(0) @binding(4) var<storage, read> counts: array<u32>;
@group(0) @binding(5) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> scales: array<u32>;
@group(0) @binding(7) var<storage, read> bias: array<f32>;
@group(0) @binding(8) var<storage, read_write> act: array<f32>;
#endif

#ifdef DOWN
@group(0) @binding(2) var<storage, read> act: array<vec2<f32>>;
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

// GATE_UP and DOWN share the tiled projection.
#ifndef ROUTE
#ifndef COMBINE
// [k][TR / 4]: rows 4q .. 4q + 3 of the tile at input k of the block.
var<workgroup> w_tile: array<vec4<f32>, 32u * TR / 4u>;
// [k][TS / 4]: slots 4q .. 4q + 3 of the tile at input k of the block.
var<workgroup> x_tile: array<vec4<f32>, 32u * TS / 4u>;

// Two e2m1 codes (the low nibbles of the two bytes of q) as values times 2^-14 (fp4_pair).
fn fp4_two(q: u32) -> vec2<f32> {
    return fp4_pair((q & 0xfu) | ((q & 0xf0u) << 12u));
}

// acc[a][b] = sum over k of input(slot j0 + 4 sq + a)[k] * W[row0 + 4 rq + b, k] for the tile's
// slots (lists[e, j0 ..], `live` of them) and rows [row0, row0 + TR) of the expert's `rows`;
// thread lid computes slots 4 sq .. and rows 4 rq .. (sq = lid / (TR / 4), rq = lid % (TR / 4)).
fn project(lid: u32, e_local: u32, row0: u32, rows: u32, k: u32, e: u32, j0: u32, live: u32)
    -> array<vec4<f32>, MS> {
    let n_blocks = k / 32u;
    // Loading: thread (lq, lk) decodes inputs 4 lk .. 4 lk + 3 of rows 4 lq .. 4 lq + 3, and
    // reads inputs 2 ik, 2 ik + 1 of slots 4 iq .. 4 iq + 3.
    let lq = lid % (TR / 4u);
    let lk = lid / (TR / 4u);
    let iq = lid % (TS / 4u);
    let ik = lid / (TS / 4u);
    var slot_base: array<u32, 4>;
    for (var a = 0u; a < 4u; a++) {
        let j = 4u * iq + a;
        slot_base[a] = 0xffffffffu;
        if j < live {
            slot_base[a] = input_base(lists[e * p.list_stride + j0 + j]) / 2u;
        }
    }
    let rq = lid % (TR / 4u);
    let sq = lid / (TR / 4u);
    var acc: array<vec4<f32>, MS>;
    for (var b = 0u; b < n_blocks; b++) {
        var v: array<vec4<f32>, 4>;
        for (var r = 0u; r < 4u; r++) {
            let row = row0 + 4u * lq + r;
            var q = vec4<f32>(0.0);
            if row < rows {
                let blk = (e_local * rows + row) * n_blocks + b;
                let word = blocks[blk][lk / 2u] >> (16u * (lk % 2u));
                let sc = mx_scale(byte_of(scales[blk / 4u], blk));
                q = vec4<f32>(fp4_two(word & 0xffu), fp4_two((word >> 8u) & 0xffu)) * sc;
            }
            v[r] = q;
        }
        var xs: array<vec2<f32>, 4>;
        for (var a = 0u; a < 4u; a++) {
            if slot_base[a] != 0xffffffffu {
                xs[a] = input(slot_base[a] + b * 16u + ik);
            } else {
                xs[a] = vec2<f32>(0.0);
            }
        }
        workgroupBarrier();
        for (var c = 0u; c < 4u; c++) {
            w_tile[(4u * lk + c) * (TR / 4u) + lq] = vec4<f32>(v[0][c], v[1][c], v[2][c], v[3][c]);
        }
        for (var c = 0u; c < 2u; c++) {
            x_tile[(2u * ik + c) * (TS / 4u) + iq] = vec4<f32>(xs[0][c], xs[1][c], xs[2][c], xs[3][c]);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk++) {
            let xv = x_tile[kk * (TS / 4u) + sq];
            let wv = w_tile[kk * (TR / 4u) + rq];
            acc[0] += xv.x * wv;
            acc[1] += xv.y * wv;
            acc[2] += xv.z * wv;
            acc[3] += xv.w * wv;
        }
    }
    return acc;
}

// Slots routed to expert e (none when the pass has no tokens).
fn expert_slots(e: u32) -> u32 {
    return select(counts[e], 0u, step.slots == 0u);
}
#endif
#endif

#ifdef GATE_UP
fn input(i: u32) -> vec2<f32> {
    return h[i];
}

// A slot reads the normed hidden state of its token.
fn input_base(slot: u32) -> u32 {
    return (slot / p.top_k) * p.hidden;
}

@compute @workgroup_size(WG)
fn gate_up(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let e = p.e_start + wg.y;
    let n = expert_slots(e);
    let rows = 2u * p.inter;
    let row0 = wg.x * TR;
    let rq = lid % (TR / 4u);
    let sq = lid / (TR / 4u);
    for (var j0 = 0u; j0 < n; j0 += TS) {
        let live = min(TS, n - j0);
        let acc = project(lid, wg.y, row0, rows, p.hidden, e, j0, live);
        // Rows 4 rq .. 4 rq + 3 are two gate/up pairs.
        for (var a = 0u; a < 4u; a++) {
            let j = 4u * sq + a;
            if j >= live {
                break;
            }
            let slot = lists[e * p.list_stride + j0 + j];
            for (var pr = 0u; pr < 2u; pr++) {
                let i = row0 / 2u + 2u * rq + pr;
                if i < p.inter {
                    let rb = e * rows + 2u * i;
                    var gate = acc[a][2u * pr] + bias[rb];
                    var up = acc[a][2u * pr + 1u] + bias[rb + 1u];
                    gate = min(gate, p.limit);
                    up = clamp(up, -p.limit, p.limit);
                    let glu = gate / (1.0 + exp(-p.alpha * gate));
                    act[slot * p.inter + i] = glu * (up + 1.0);
                }
            }
        }
    }
}
#endif

#ifdef DOWN
fn input(i: u32) -> vec2<f32> {
    return act[i];
}

// A slot reads its own activation.
fn input_base(slot: u32) -> u32 {
    return slot * p.inter;
}

@compute @workgroup_size(WG)
fn down(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let e = p.e_start + wg.y;
    let n = expert_slots(e);
    let row0 = wg.x * TR;
    let rq = lid % (TR / 4u);
    let sq = lid / (TR / 4u);
    for (var j0 = 0u; j0 < n; j0 += TS) {
        let live = min(TS, n - j0);
        let acc = project(lid, wg.y, row0, p.hidden, p.inter, e, j0, live);
        for (var a = 0u; a < 4u; a++) {
            let j = 4u * sq + a;
            if j >= live {
                break;
            }
            let s = lists[e * p.list_stride + j0 + j];
            for (var r = 0u; r < 4u; r++) {
                let row = row0 + 4u * rq + r;
                if row < p.hidden {
                    y[s * p.hidden + row] = wts[s] * (acc[a][r] + bias[e * p.hidden + row]);
                }
            }
        }
    }
}
#endif
