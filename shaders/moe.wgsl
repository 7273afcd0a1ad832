// MoE experts with MXFP4 weights, dequantized in registers (experts stay packed on the GPU),
// grouped by expert: a workgroup owns R rows of one expert and runs every token-expert slot routed
// to it, TT slots at a time, so each weight word is read once per TT slots instead of once per slot.
// Each slot's sums are accumulated in the same order whatever else is in the batch, so a sequence's
// results do not depend on which other sequences share the forward pass.
//
// ROUTE: lists[e, 0..counts[e]] = the slots s = t * K + j with idx[s] == e, in slot order.
//   Bindings: idx [T*K], lists [E, T_max*K], counts [E]. Grid: (E, 1).
// GATE_UP: for each slot s of expert e (weights of experts [e_start, e_start + e_count) are in this
//   dispatch's buffers; a split expert set takes one dispatch per buffer):
//   g = W_gate_up[e] h[t] + bias[e] (2I values, even = gate, odd = up);
//   gate = min(g_even, limit); up = clamp(g_odd, -limit, limit);   (the clamp is upper-only on gate)
//   act[s, i] = gate * sigmoid(alpha * gate) * (up + 1).
//   Bindings: h [T, H], lists, counts, blocks [e_count, 2I, H/32] of 16 bytes, scales [e_count, 2I, H/32]
//   u8, bias [E, 2I] f32, act [T*K, I]. Grid: (ceil(2I / R), e_count).
// DOWN: y[s, n] = wts[s] * (W_down[e] act[s] + bias[e])[n].
//   Bindings: act, lists, counts, wts [T*K], blocks [e_count, H, I/32, 16], scales, bias [E, H],
//   y [T*K, H]. Grid: (ceil(H / R), e_count).
// COMBINE: x[t, n] += sum_j y[t*K + j, n] (the residual add), j in order.
//   Bindings: y, x [T, H]. Grid: (ceil(H / WG), T).
// Variants: ROUTE, GATE_UP, DOWN or COMBINE (different bindings), SUBGROUPS. Passes of a few
// tokens take moe_vec.wgsl instead.
#include "common/step.wgsl"
#include "common/mxfp4.wgsl"

#include "common/moe_params.wgsl"

const WG: u32 = 64u;
const R: u32 = 8u;
#include "common/token_tile.wgsl"
const NV: u32 = R * TT;
#include "common/reduce.wgsl"

#ifdef ROUTE
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> lists: array<u32>;
@group(0) @binding(4) var<storage, read_write> counts: array<u32>;

var<workgroup> scan: array<u32, WG>;

@compute @workgroup_size(WG)
fn route(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = lanes.lid;
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
@group(0) @binding(2) var<storage, read> h: array<f32>;
@group(0) @binding(3) var<storage, read> lists: array<u32>;
@group(0) @binding(4) var<storage, read> counts: array<u32>;
@group(0) @binding(5) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> scales: array<u32>;
@group(0) @binding(7) var<storage, read> bias: array<f32>;
@group(0) @binding(8) var<storage, read_write> act: array<f32>;
#endif

#ifdef DOWN
@group(0) @binding(2) var<storage, read> act: array<f32>;
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

@compute @workgroup_size(WG)
fn combine(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    let n = wg.x * WG + lid;
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

// GATE_UP and DOWN share the projection: R rows of expert e against TT slots' inputs.
#ifndef ROUTE
#ifndef COMBINE
// acc[r * TT + tt] += row r (of rows [row0, row0 + R) of the expert's `rows` rows, k inputs) . the
// input of slot[tt], for the blocks this thread owns. Each variant defines input(i) and
// input_base(slot), the offset of a slot's input vector.
fn project(acc: ptr<function, array<f32, NV>>, lid: u32, e_local: u32, row0: u32, rows: u32, k: u32,
           slot: array<u32, TT>, live: u32) {
    let n_blocks = k / 32u;
    for (var b = lid; b < n_blocks; b += WG) {
        var w: array<vec4<u32>, R>;
        var sc: array<f32, R>;
        for (var r = 0u; r < R; r++) {
            if row0 + r < rows {
                let blk = (e_local * rows + row0 + r) * n_blocks + b;
                // One 16-byte load per block of 32 codes.
                w[r] = blocks[blk];
                sc[r] = mx_scale(byte_of(scales[blk / 4u], blk));
            }
        }
        // Constant trip counts with a guard: the loops unroll and the arrays stay in registers
        // (a dynamically indexed array would live in local memory).
        for (var tt = 0u; tt < TT; tt++) {
            if tt >= live {
                break;
            }
            let xb = input_base(slot[tt]) + b * 32u;
            var xs: array<vec4<f32>, 8>;
            for (var q = 0u; q < 8u; q++) {
                xs[q] = vec4<f32>(input(xb + 4u * q), input(xb + 4u * q + 1u), input(xb + 4u * q + 2u), input(xb + 4u * q + 3u));
            }
            for (var r = 0u; r < R; r++) {
                let d = fp4_dot8(w[r].x, xs[0], xs[1]) + fp4_dot8(w[r].y, xs[2], xs[3])
                    + fp4_dot8(w[r].z, xs[4], xs[5]) + fp4_dot8(w[r].w, xs[6], xs[7]);
                (*acc)[r * TT + tt] += d * sc[r];
            }
        }
    }
}

// Slots routed to expert e (none when the pass has no tokens).
fn expert_slots(e: u32) -> u32 {
    return select(counts[e], 0u, step.slots == 0u);
}

// Slots j0 .. j0 + live of expert e.
fn tile_slots(e: u32, j0: u32, live: u32) -> array<u32, TT> {
    var slot: array<u32, TT>;
    for (var tt = 0u; tt < TT; tt++) {
        if tt < live {
            slot[tt] = lists[e * p.list_stride + j0 + tt];
        }
    }
    return slot;
}
#endif
#endif

#ifdef GATE_UP
fn input(i: u32) -> f32 {
    return h[i];
}

// A slot reads the normed hidden state of its token.
fn input_base(slot: u32) -> u32 {
    return (slot / p.top_k) * p.hidden;
}

@compute @workgroup_size(WG)
fn gate_up(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    reduce_setup(lanes);
    let lid = lanes.lid;
    let e = p.e_start + wg.y;
    let n = expert_slots(e);
    let rows = 2u * p.inter;
    let row0 = wg.x * R;
    for (var j0 = 0u; j0 < n; j0 += TT) {
        let live = min(TT, n - j0);
        let slot = tile_slots(e, j0, live);
        var acc: array<f32, NV>;
        project(&acc, lid, wg.y, row0, rows, p.hidden, slot, live);
        reduce_sum(&acc);
        // Thread (pair, tt) finishes one gate/up pair of one slot.
        if lid < (R / 2u) * TT {
            let pair = lid / TT;
            let tt = lid % TT;
            let i = row0 / 2u + pair;
            if tt < live && i < p.inter {
                let rb = e * rows + 2u * i;
                var gate = red[(2u * pair) * TT + tt] + bias[rb];
                var up = red[(2u * pair + 1u) * TT + tt] + bias[rb + 1u];
                gate = min(gate, p.limit);
                up = clamp(up, -p.limit, p.limit);
                let glu = gate / (1.0 + exp(-p.alpha * gate));
                act[slot[tt] * p.inter + i] = glu * (up + 1.0);
            }
        }
        workgroupBarrier();
    }
}
#endif

#ifdef DOWN
fn input(i: u32) -> f32 {
    return act[i];
}

// A slot reads its own activation.
fn input_base(slot: u32) -> u32 {
    return slot * p.inter;
}

@compute @workgroup_size(WG)
fn down(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    reduce_setup(lanes);
    let lid = lanes.lid;
    let e = p.e_start + wg.y;
    let n = expert_slots(e);
    let row0 = wg.x * R;
    for (var j0 = 0u; j0 < n; j0 += TT) {
        let live = min(TT, n - j0);
        let slot = tile_slots(e, j0, live);
        var acc: array<f32, NV>;
        project(&acc, lid, wg.y, row0, p.hidden, p.inter, slot, live);
        reduce_sum(&acc);
        if lid < NV {
            let r = lid / TT;
            let tt = lid % TT;
            let row = row0 + r;
            if tt < live && row < p.hidden {
                let s = slot[tt];
                y[s * p.hidden + row] = wts[s] * (red[lid] + bias[e * p.hidden + row]);
            }
        }
        workgroupBarrier();
    }
}
#endif
