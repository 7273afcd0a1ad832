// MoE experts with MXFP4 weights for passes of a few tokens (decode): only the routed experts'
// weights are read, one 16-byte MXFP4 block (32 codes) per lane and row, so even one token's
// four experts spread over thousands of workgroups. (Large passes use moe.wgsl, which groups
// slots by expert to reuse weights across tokens.)
// GATE_UP: for slot s = t * K + j with e = idx[s] in this dispatch's experts:
//   g = W_gate_up[e] h[t] + bias[e] (2I values, even = gate, odd = up);
//   gate = min(g_even, limit); up = clamp(g_odd, -limit, limit);   (the clamp is upper-only on gate)
//   act[s, i] = gate * sigmoid(alpha * gate) * (up + 1).
//   Bindings: h [T, H] (normed), idx [T*K], blocks [e_count, 2I, H/32, 16] u8, scales
//   [e_count, 2I, H/32] u8, bias [E, 2I] f32, act [T*K, I]. Grid: (ceil(2I / ROWS), T*K); a row
//   group computes one gate/up pair (R = 2 rows).
// DOWN: x[t, n] += sum_j wts[t*K + j] * (W_down[e_j] act[t*K + j] + bias[e_j])[n], j in order: the
//   combine and the residual add fused, so a token's result does not depend on the batch.
//   Bindings: act, idx, wts [T*K], blocks [e_count, H, I/32, 16], scales, bias [E, H], x [T, H].
//   Grid: (ceil(H / R), T): the NG row groups of a workgroup take the slots j = g, g + NG, ...
//   for the same R rows, and their sums meet in workgroup memory.
// A dispatch holds the experts [e_start, e_start + e_count) of one weight buffer; slots routed to
// other experts do nothing in it. Variants: GATE_UP or DOWN, SUBGROUPS.
#include "common/step.wgsl"
#include "common/mxfp4.wgsl"

struct Params {
    hidden: u32,
    inter: u32,
    top_k: u32,
    e_start: u32,
    e_count: u32,
    limit: f32,
    alpha: f32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;

#ifdef GATE_UP
@group(0) @binding(2) var<storage, read> h: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> scales: array<u32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> act: array<f32>;

fn input(i: u32) -> vec4<f32> {
    return h[i];
}
#endif

#ifdef DOWN
@group(0) @binding(2) var<storage, read> act: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read> wts: array<f32>;
@group(0) @binding(5) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> scales: array<u32>;
@group(0) @binding(7) var<storage, read> bias: array<f32>;
@group(0) @binding(8) var<storage, read_write> x: array<f32>;

fn input(i: u32) -> vec4<f32> {
    return act[i];
}
#endif

// Gate_up rows per workgroup (the Rust side reads this line to size the grid); down covers R.
const ROWS: u32 = 8u;
const WG: u32 = 128u;
const GL: u32 = 32u;
const R: u32 = 2u;
#include "common/row_group.wgsl"

// acc[r] += row row0 + r of local expert e_local (`rows` rows of k codes) . the input vector at
// vec4 index `inb`, over the blocks this lane owns. `live` false skips the work (the caller still
// reaches the group reduction: barriers must stay in uniform control flow).
fn project(acc: ptr<function, array<f32, R>>, lane: u32, live: bool, e_local: u32, row0: u32,
           rows: u32, k: u32, inb: u32) {
    let n_blocks = select(0u, k / 32u, live);
    for (var b = lane; b < n_blocks; b += GL) {
        var xs: array<vec4<f32>, 8>;
        for (var q = 0u; q < 8u; q++) {
            xs[q] = input(inb + 8u * b + q);
        }
        for (var r = 0u; r < R; r++) {
            if row0 + r < rows {
                let blk = (e_local * rows + row0 + r) * (k / 32u) + b;
                let w = blocks[blk];
                let d = fp4_dot8(w.x, xs[0], xs[1]) + fp4_dot8(w.y, xs[2], xs[3])
                    + fp4_dot8(w.z, xs[4], xs[5]) + fp4_dot8(w.w, xs[6], xs[7]);
                (*acc)[r] += d * mx_scale(byte_of(scales[blk / 4u], blk));
            }
        }
    }
}

// Whether expert e is in this dispatch's buffer.
fn here(e: u32) -> bool {
    return e >= p.e_start && e < p.e_start + p.e_count;
}

#ifdef GATE_UP
@compute @workgroup_size(WG)
fn gate_up(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let s = wg.y;
    let rows = 2u * p.inter;
    let lane = l.lid % GL;
    let r0 = (wg.x * NG + l.lid / GL) * R;
    let live = s < step.slots && here(idx[s]);
    let e = select(p.e_start, idx[s], live);
    var acc: array<f32, R>;
    project(&acc, lane, live, e - p.e_start, r0, rows, p.hidden, (s / p.top_k) * (p.hidden / 4u));
    group_sums(&acc, l);
    let i = r0 / 2u;
    if live && lane == 0u && i < p.inter {
        let rb = e * rows + r0;
        let gate = min(acc[0] + bias[rb], p.limit);
        let up = clamp(acc[1] + bias[rb + 1u], -p.limit, p.limit);
        let glu = gate / (1.0 + exp(-p.alpha * gate));
        act[s * p.inter + i] = glu * (up + 1.0);
    }
}
#endif

#ifdef DOWN
var<workgroup> slot_sums: array<f32, NG * R>;

@compute @workgroup_size(WG)
fn down(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    let lane = l.lid % GL;
    let grp = l.lid / GL;
    let r0 = wg.x * R;
    var total: array<f32, R>;
    for (var j0 = 0u; j0 < p.top_k; j0 += NG) {
        let j = j0 + grp;
        let s = t * p.top_k + j;
        let live = t < step.tokens && j < p.top_k && here(idx[s]);
        let e = select(p.e_start, idx[s], live);
        var acc: array<f32, R>;
        project(&acc, lane, live, e - p.e_start, r0, p.hidden, p.inter, s * (p.inter / 4u));
        group_sums(&acc, l);
        if live {
            for (var r = 0u; r < R; r++) {
                let row = min(r0 + r, p.hidden - 1u);
                total[r] += wts[s] * (acc[r] + bias[e * p.hidden + row]);
            }
        }
    }
    // Groups add their slots' sums in group order: slot order whenever K <= NG.
    if lane == 0u {
        for (var r = 0u; r < R; r++) {
            slot_sums[grp * R + r] = total[r];
        }
    }
    workgroupBarrier();
    if l.lid == 0u {
        for (var r = 0u; r < R; r++) {
            let row = r0 + r;
            if row < p.hidden {
                var sum = 0.0;
                for (var q = 0u; q < NG; q++) {
                    sum += slot_sums[q * R + r];
                }
                x[t * p.hidden + row] += sum;
            }
        }
    }
}
#endif
