// The MoE router folded into the attention block for decode passes, so that no dispatch of its
// own sits between o_proj and the experts (a dependent dispatch costs ~4.5 us on the H200 whatever
// it does: PERF.md v0.27). o_proj leaves the residual x' = x + O a + b_o; the
// router's logits are W_r (RMSNorm(x') g) + b_r = s (z_x + z_a) + b_r with s = rsqrt(mean(x'^2) +
// eps), z_x = (W_r g) (x + b_o) and z_a = M a, M = (W_r g) O. Both are linear in what the block
// already has: z_x is computed beside the q/k/v projection (from x, which nothing writes until
// o_proj) and z_a beside o_proj (from the attention output a), each into a buffer of its own so
// that wgpu records no barrier between it and the kernel it runs beside. moe_vec's FOLDED kernels
// take s from x' themselves and rank the logits (one token's gate_up; route_slots for more, which
// also writes the experts' input).
// fold [E, N] M then [E, H] W_r g, f32: N = heads * head_dim inputs of O, H hidden.
// PREPARE (once at load, for each buffer of O's rows [row_start, row_start + rows)): M[e, j] +=
//   sum_i (W_r g)[e, i] O[i, j] over the buffer's rows, and (W_r g)[e, i] for them. Bindings: wr
//   [E, H] bf16, g [H] f32, o [rows, N] bf16, fold (zeroed at first), from binding 0 (it runs
//   outside the forward pass: no step counts). Grid: (ceil(N / (2 WG)), E): a lane per pair of
//   columns, its rows summed in order (the buffers in order, one dispatch each).
// Otherwise (every decode pass): z[t, e] = sum_k fold[offset + e k_len + k] (v[t, k] + add[k])
//   for either half of fold (add: b_o, or nothing). Bindings: v [T, k_len], fold, add, z [T, E].
//   Grid: (ceil(E / PROJECT_EXPERTS), ceil(T / PROJECT_TOKENS)): a workgroup takes a block of
//   experts and tokens, each fold row read once for its block's tokens and each token's inputs
//   once for its experts.
// N even, H and N multiples of 4. Variants: PREPARE, SUBGROUPS.

// Passes of up to this many tokens fold the router (the Rust side reads this line); larger ones
// run its own dispatch. On the H200 (tok/s against the router's dispatch): batch 1 +4.8%, 2 +2.8%,
// 8 +1.3%, 16 and 32 even, 64 -0.6% (its terms, a workgroup per expert and token, read 64 MB of
// L2 each: PERF.md v0.35).
const MAX_TOKENS: u32 = 16u;

struct Params {
    hidden: u32,
    width: u32,
    n_experts: u32,
    row_start: u32,
    rows: u32,
    // The half of fold a projection reads (in f32), its input length, whether `add` is added.
    offset: u32,
    k_len: u32,
    has_add: u32,
}

const WG: u32 = 256u;
// A projection workgroup's experts and tokens (the Rust side reads these lines); their product
// is the sums a lane keeps and sizes the reduction's workgroup array. On the H200 (PERF.md
// v0.37) blocks of tokens lose (2 x 8: batch 8 -4%; fewer workgroups beside q/k/v), two
// experts a workgroup gain a little over one (b8 1226 against 1222-1230, b16 1860-1868).
const PROJECT_EXPERTS: u32 = 2u;
const PROJECT_TOKENS: u32 = 1u;

#ifdef PREPARE
#include "common/bf16.wgsl"
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wr: array<u32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> o: array<u32>;
@group(0) @binding(4) var<storage, read_write> fold: array<f32>;

// Element i of row e of the bf16 router matrix (two to a word) times the gain.
fn router_gain(e: u32, i: u32) -> f32 {
    let at = e * p.hidden + i;
    let w = wr[at / 2u];
    return select(bf16_lo(w), bf16_hi(w), at % 2u == 1u) * g[i];
}

@compute @workgroup_size(WG)
fn prepare(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = wg.y;
    let pairs = p.width / 2u;
    let jw = wg.x * WG + lid;
    if jw < pairs {
        var lo = 0.0;
        var hi = 0.0;
        for (var i = 0u; i < p.rows; i++) {
            let r = router_gain(e, p.row_start + i);
            let w = o[i * pairs + jw];
            lo = fma(r, bf16_lo(w), lo);
            hi = fma(r, bf16_hi(w), hi);
        }
        let m = e * p.width + 2u * jw;
        fold[m] += lo;
        fold[m + 1u] += hi;
    }
    let rg = p.n_experts * p.width + e * p.hidden + p.row_start;
    for (var i = jw; i < p.rows; i += nwg.x * WG) {
        fold[rg + i] = router_gain(e, p.row_start + i);
    }
}
#else
#include "common/step.wgsl"
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> fold: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> add: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> z: array<f32>;
const NV: u32 = PROJECT_EXPERTS * PROJECT_TOKENS;
#include "common/reduce.wgsl"

@compute @workgroup_size(WG)
fn project(l: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let t0 = wg.y * PROJECT_TOKENS;
    if t0 >= step.tokens {
        return;
    }
    reduce_setup(l);
    let e0 = wg.x * PROJECT_EXPERTS;
    let tokens = min(PROJECT_TOKENS, step.tokens - t0);
    let n4 = p.k_len / 4u;
    // Sum j is expert e0 + j / PROJECT_TOKENS's for token t0 + j % PROJECT_TOKENS.
    var acc: array<f32, NV>;
    for (var i = l.lid; i < n4; i += WG) {
        var f: array<vec4<f32>, PROJECT_EXPERTS>;
        for (var j = 0u; j < PROJECT_EXPERTS; j++) {
            // An expert past the last (E not a multiple of the block) reads row 0, unstored.
            let e = select(0u, e0 + j, e0 + j < p.n_experts);
            f[j] = fold[(p.offset + e * p.k_len) / 4u + i];
        }
        var b = vec4<f32>(0.0);
        if p.has_add != 0u {
            b = add[i];
        }
        for (var t = 0u; t < tokens; t++) {
            let x = v[(t0 + t) * n4 + i] + b;
            for (var j = 0u; j < PROJECT_EXPERTS; j++) {
                acc[j * PROJECT_TOKENS + t] += dot(f[j], x);
            }
        }
    }
    reduce_sum(&acc);
    let e = e0 + l.lid / PROJECT_TOKENS;
    let t = t0 + l.lid % PROJECT_TOKENS;
    if l.lid < NV && e < p.n_experts && t < step.tokens {
        z[t * p.n_experts + e] = red[l.lid];
    }
}
#endif
