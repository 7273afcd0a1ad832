// Dense layer with bf16 weights for passes of a few tokens (decode), one token per workgroup row:
// y[t, row_start + r] (+)= sum_k in[t, k] * W[r, k] + bias[row_start + r], in = x, or with NORM
// in = x * rsqrt(mean(x^2) + eps) * g: the RMSNorm that precedes the projection, fused so the
// normed vector never goes through memory.
// Bindings: x [count, k] f32 (k a multiple of 8), W rows [rows, k] bf16 (this buffer's rows of
// the matrix, read 8 weights per 16-byte load), bias [n_out] f32, y [count, n_out] f32,
// g [k] f32 (NORM only).
// Grid: (min(ceil(rows / ROWS), 65535), count); workgroups stride over the row blocks. Each of
// the NG row groups of GL lanes takes R rows (a lane reads 8-weight units lane, lane + GL, ... of
// each, UNROLL at a time so that their loads are in flight together), so even a per-layer matrix
// spreads over thousands of short workgroups: at batch 1 a workgroup's serial latency, not the
// bandwidth, is what costs (PERF.md v0.9 to v0.11).
// ROPE (the q/k/v projection, with NORM): the four rows of a workgroup are two rotation pairs
// (i, i + D/2) of one head, so the epilogue applies RoPE (as rope.wgsl does) and stores q into y
// and k, v straight into the KV cache: no separate rope dispatch at decode. Extra bindings:
// tokens [count], table [max_pos, D/2] (cos, sin), k_cache, v_cache (common/kv.wgsl). The
// buffer's rows start at a head boundary.
// Variants: SUBGROUPS, NORM, ROPE (with KV_F16). ACCUMULATE (a parameter) adds into y, the
// residual stream.
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
#endif

// Rows per workgroup (the Rust side reads this line to size the grid).
const ROWS: u32 = 4u;
const WG: u32 = 128u;
const GL: u32 = 32u;
const R: u32 = ROWS / (WG / GL);
// 8-weight units a lane has in flight per row.
const UNROLL: u32 = 4u;
#include "common/row_group.wgsl"
#ifdef NORM
// The fused norm's sum of squares is one workgroup-wide sum.
const NV: u32 = 1u;
#include "common/reduce.wgsl"
#endif

// The first of the R rows (of this buffer) that row group `grp` computes in row block `rb`.
fn first_row(rb: u32, grp: u32) -> u32 {
#ifdef ROPE
    // R = 1: groups 0, 1 take rows i, i + D/2 of a head, groups 2, 3 rows i + 1, i + 1 + D/2.
    let quarter = p.head_dim / 4u;
    let i = 2u * (rb % quarter) + grp / 2u;
    return (rb / quarter) * p.head_dim + i + (grp % 2u) * (p.head_dim / 2u);
#else
    return rb * ROWS + grp * R;
#endif
}

@compute @workgroup_size(WG)
fn main(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = wg.y;
    if t >= step_count(p.count_which) {
        return;
    }
    let units = p.k / 8u;
    let xb = t * 2u * units;
    var scale = 1.0;
#ifdef NORM
    reduce_setup(l);
    var ss: array<f32, NV>;
    for (var i = l.lid; i < 2u * units; i += WG) {
        let v = x[xb + i];
        ss[0] += dot(v, v);
    }
    reduce_sum(&ss);
    scale = inverseSqrt(red[0] / f32(p.k) + p.eps);
#endif
    let blocks = (p.rows + ROWS - 1u) / ROWS;
    let lane = l.lid % GL;
    let grp = l.lid / GL;
    for (var rb = wg.x; rb < blocks; rb += nwg.x) {
        let r0 = first_row(rb, grp);
        var acc: array<f32, R>;
        for (var i0 = lane; i0 < units; i0 += UNROLL * GL) {
            // Straight-line code over UNROLL units (indices clamped, dead ones zeroed rather
            // than branched around) lets the compiler issue all their loads at once.
            for (var u = 0u; u < UNROLL; u++) {
                let i = i0 + u * GL;
                let live = i < units;
                let ic = select(0u, i, live);
                let a = input(xb, ic, scale);
                for (var r = 0u; r < R; r++) {
                    let row = min(r0 + r, p.rows - 1u);
                    acc[r] += select(0.0, bf16_dot8(w[row * units + ic], a[0], a[1]), live);
                }
            }
        }
        group_sums(&acc, l);
#ifdef ROPE
        rope_store(t, r0, acc[0], lane, grp);
#else
        if lane == 0u {
            for (var r = 0u; r < R; r++) {
                let row = r0 + r;
                if row < p.rows {
                    store_out(t, p.row_start + row, acc[r]);
                }
            }
        }
#endif
    }
}

// The 8 inputs of unit i of the token at vec4 `xb`, normed with NORM.
fn input(xb: u32, i: u32, scale: f32) -> array<vec4<f32>, 2> {
    var a = x[xb + 2u * i] * scale;
    var b = x[xb + 2u * i + 1u] * scale;
#ifdef NORM
    a *= g[2u * i];
    b *= g[2u * i + 1u];
#endif
    return array<vec4<f32>, 2>(a, b);
}

#ifdef ROPE
var<workgroup> pair_v: array<f32, 4>;

// Rotates the workgroup's two (i, i + D/2) pairs and stores them: q into y, k and v into the
// cache. Called from uniform control flow by every lane.
fn rope_store(t: u32, row: u32, v: f32, lane: u32, grp: u32) {
    let col = p.row_start + row;
    if lane == 0u {
        var out = v;
        if p.has_bias != 0u {
            out += bias[col];
        }
        pair_v[grp] = out;
    }
    workgroupBarrier();
    if lane == 0u && grp % 2u == 0u && row < p.rows {
        let d = p.head_dim;
        let head = col / d;
        let i = col % d;
        let x1 = pair_v[grp];
        let x2 = pair_v[grp + 1u];
        let tok = tokens[t];
        var o1 = x1;
        var o2 = x2;
        if head < p.n_heads + p.n_kv {
            let cs = table[tok.pos * (d / 2u) + i];
            o1 = x1 * cs.x - x2 * cs.y;
            o2 = x2 * cs.x + x1 * cs.y;
        }
        if head < p.n_heads {
            y[t * p.n_out + col] = o1;
            y[t * p.n_out + col + d / 2u] = o2;
        } else if head < p.n_heads + p.n_kv {
            let c = kv_at_slot(tok.kv_slot[p.kv_kind], head - p.n_heads) + i;
            k_cache[c] = kv(o1);
            k_cache[c + d / 2u] = kv(o2);
        } else {
            let c = kv_at_slot(tok.kv_slot[p.kv_kind], head - p.n_heads - p.n_kv) + i;
            v_cache[c] = kv(o1);
            v_cache[c + d / 2u] = kv(o2);
        }
    }
    workgroupBarrier();
}
#endif
