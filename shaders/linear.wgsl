#ifdef COOP
enable f16;
enable wgpu_cooperative_matrix;
#endif
// Dense layer with bf16 weights: y[t, row_start + r] (+)= sum_k x[t, k] * W[r, k] + bias[row_start + r].
// Bindings: x [count, k] f32, W rows [rows, k] bf16 (this buffer's part of the matrix), bias [n_out]
// f32, y [count, n_out] f32. Grid: (ceil(rows / R), ceil(count / TT)); each workgroup computes R
// rows for TT tokens so a weight word is read once per TT tokens. ACCUMULATE adds into y (the
// residual stream) instead of overwriting. Variants: SUBGROUPS; VEC8 (k a multiple of 8) reads 8
// weights and 8 inputs per load, which quarters the load instructions of the memory-bound decode;
// ONE_TOKEN (TT = 1) serves passes of a single row, where the token tile would only add reduction
// work. Both give each token the same sums in the same order.
// coop (entry, with COOP, VEC8 and SPLIT_INPUTS; k a multiple of 32): the tensor-core path of the
// `fast` precision (common/coop_tile.wgsl): TS tokens by TR rows per workgroup, inputs in two f16
// parts (f16 inputs alone move the logits 30 times more), f32 sums. Grid: (ceil(rows / TR),
// ceil(count / TS)).
#include "common/step.wgsl"
#include "common/bf16.wgsl"

#include "common/linear_params.wgsl"
#ifdef VEC8
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
#endif
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
#include "common/linear_out.wgsl"

#ifndef COOP
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
#ifdef VEC8
    // Unit i covers inputs 8i .. 8i + 7: one vec4 of bf16 pairs, two vec4 of inputs.
    let units = p.k / 8u;
    for (var i = lid; i < units; i += WG) {
        var xa: array<vec4<f32>, TT>;
        var xb: array<vec4<f32>, TT>;
        for (var tt = 0u; tt < TT; tt++) {
            let t = t0 + tt;
            if t < count {
                xa[tt] = x[(t * p.k) / 4u + 2u * i];
                xb[tt] = x[(t * p.k) / 4u + 2u * i + 1u];
            }
        }
        for (var r = 0u; r < R; r++) {
            if r0 + r < p.rows {
                let q = w[(r0 + r) * units + i];
                let wa = vec4<f32>(bf16_lo(q.x), bf16_hi(q.x), bf16_lo(q.y), bf16_hi(q.y));
                let wb = vec4<f32>(bf16_lo(q.z), bf16_hi(q.z), bf16_lo(q.w), bf16_hi(q.w));
                for (var tt = 0u; tt < TT; tt++) {
                    acc[r * TT + tt] += dot(wa, xa[tt]) + dot(wb, xb[tt]);
                }
            }
        }
    }
#else
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
#endif
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

#ifdef COOP
// Tokens and rows per tile (the Rust side reads these lines).
const TS: u32 = 64u;
const TR: u32 = 128u;
// Two blocks a step: 65 -> 45 ms of a 2048-token pass on the H200 (PERF.md v0.15).
const KB: u32 = 2u;
#include "common/coop_tile.wgsl"

// The tile's first token and row, and the pass's tokens.
var<private> tile_t0: u32;
var<private> tile_row0: u32;
var<private> tile_count: u32;

// Each item's 8 columns adjacent: one 16-byte load of weights, two of inputs (col_spread's four
// and eight loads made the layer 8% slower on the H200, PERF.md v0.16).
fn item_col(u: u32, j: u32) -> u32 {
    return col_chunk(u, j);
}

// A thread's loads for one step (common/coop_tile.wgsl's items): a W item's 8 bf16 weights, an
// X item's 8 inputs; zeros past the k inputs.
struct Fetch {
    w: array<vec4<u32>, WI>,
    x: array<vec4<f32>, 2u * XI>,
}

fn fetch(lid: u32, step: u32) -> Fetch {
    var f: Fetch;
    let units = p.k / 8u;
    for (var i = 0u; i < WI; i++) {
        let u = lid + i * TILE_WG;
        let row = tile_row0 + item_row(u);
        let unit = step * 4u * KB + item_part(u);
        if u < TR * 4u * KB && row < p.rows && unit < units {
            f.w[i] = w[row * units + unit];
        }
    }
    for (var i = 0u; i < XI; i++) {
        let u = lid + i * TILE_WG;
        let t = tile_t0 + item_row(u);
        let unit = step * 4u * KB + item_part(u);
        if u < TS * 4u * KB && t < tile_count && unit < units {
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

// Token j of the tile, rows `row` and row + 1 of this buffer.
fn store_rows(j: u32, row: u32, v: vec2<f32>) {
    let t = tile_t0 + j;
    for (var c = 0u; c < 2u; c++) {
        if t < tile_count && row + c < p.rows {
            store_out(t, p.row_start + row + c, v[c]);
        }
    }
}

@compute @workgroup_size(TILE_WG)
fn coop(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    tile_count = step_count(p.count_which);
    tile_t0 = wg.y * TS;
    tile_row0 = wg.x * TR;
    coop_products(lid, tile_row0, p.k / 32u);
}
#endif
