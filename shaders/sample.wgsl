// Sampling on the GPU in two dispatches; only the chosen token id is read back.
// SCAN: the row is cut into chunks of CHUNK logits, a workgroup each (a decode step has one row
//   of 2 * 10^5 logits: one workgroup alone would take 0.3 ms): each chunk's max (lowest index on
//   ties), min, and for rows sampled with temperature alone the chunk's best Gumbel-perturbed
//   score l / T - log(-log u_i), with u_i from a counter-based generator per (seed, counter, i):
//   the argmax over the row of that score is an exact draw from softmax(l / T) (the Gumbel-max
//   trick), so the plain temperature case needs no second pass over the row.
//   Bindings: logits [outputs, V] f32, params [outputs], part [outputs, chunks, 6].
//   Grid: (chunks, outputs).
// Otherwise (PICK), one workgroup per row combines the chunks: temperature <= 0 or top_k == 1:
//   the argmax; temperature alone: the Gumbel winner. With top_k or top_p, as transformers'
//   warpers do in order: logits / temperature, keep the top_k largest (top_k = 0: all), keep the
//   smallest set of largest ones whose probability mass reaches top_p, renormalize, and draw with
//   the same generator, so a (seed, step) pair always gives the same token. Thresholds are found
//   by bisection on the logit value, so no sort is needed (this path reads the whole row ~50
//   times).
//   Bindings: logits, params, part, ids [outputs] u32. Grid: (1, outputs).
// BIAS (before SCAN, only in passes where some row has any): OpenAI's logit_bias and
//   penalties, added to the logits in place: row r's entries are bias[bias_start, bias_start +
//   bias_count) of its settings, each (token, value bits), distinct tokens, GENERATED set on
//   those of tokens generated before. A row whose last token is still on the GPU (pending = r'
//   + 1: the previous pass's id for its row r', as the embedding reads it) also takes that
//   token's penalty: frequency, plus presence unless an entry marked it generated before, so a
//   penalized request's next pass can be queued before its token comes back.
//   Bindings: logits, params, bias [entries] vec2<u32>, ids [O] u32 (the previous pass's).
//   Grid: (1, outputs).
#include "common/step.wgsl"

struct Params {
    vocab: u32,
    // Chunks per row in SCAN (ceil(vocab / CHUNK)).
    chunks: u32,
    _pad: vec2<u32>,
}

// One row's sampling settings (SampleParams in src/kernels/sample.rs).
struct Sampling {
    temperature: f32,
    top_p: f32,
    top_k: u32,
    seed: u32,
    counter: u32,
    // The row's logit_bias entries (BIAS), and the penalties of its token still on the GPU.
    bias_start: u32,
    bias_count: u32,
    pending: u32,
    presence: f32,
    frequency: f32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
#ifdef BIAS
@group(0) @binding(2) var<storage, read_write> logits: array<f32>;
@group(0) @binding(3) var<storage, read> sp: array<Sampling>;
@group(0) @binding(4) var<storage, read> bias_entries: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read> prev_ids: array<u32>;

const BIAS_WG: u32 = 64u;
// Marks an entry's token as generated before (`GENERATED` in src/kernels/sample.rs; a test
// checks that they agree).
const GENERATED: u32 = 2147483648u;
var<workgroup> pending_generated: u32;

@compute @workgroup_size(BIAS_WG)
fn bias(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row = wg.y;
    if row >= step.outputs {
        return;
    }
    let s = sp[row];
    var pending = GENERATED;
    if s.pending != 0u {
        pending = prev_ids[s.pending - 1u];
    }
    if lid == 0u {
        pending_generated = 0u;
    }
    workgroupBarrier();
    for (var i = lid; i < s.bias_count; i += BIAS_WG) {
        let e = bias_entries[s.bias_start + i];
        let token = e.x & ~GENERATED;
        logits[row * p.vocab + token] += bitcast<f32>(e.y);
        if e.x == (pending | GENERATED) {
            pending_generated = 1u;
        }
    }
    // After the entries: the pending token's entry, if any, added to the same logit.
    workgroupBarrier();
    storageBarrier();
    if lid == 0u && s.pending != 0u {
        let presence = select(s.presence, 0.0, pending_generated != 0u);
        logits[row * p.vocab + pending] -= s.frequency + presence;
    }
}
#else
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> sp: array<Sampling>;
#ifdef SCAN
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
#else
@group(0) @binding(4) var<storage, read> part: array<f32>;
@group(0) @binding(5) var<storage, read_write> ids: array<u32>;
#endif

const WG: u32 = 256u;
// Logits per SCAN workgroup (the Rust side reads this line), and the values it keeps per chunk:
// max, its index, min, best Gumbel score, its index (indices as f32 bit patterns), unused.
const CHUNK: u32 = 2048u;
const PART: u32 = 6u;
const NV: u32 = 1u;
const BISECT_STEPS: u32 = 24u;
#include "common/reduce.wgsl"

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;
var<workgroup> low_v: array<f32, WG>;
var<workgroup> prefix: array<f32, WG>;
var<workgroup> chosen: u32;

fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Sum over the workgroup of one value per thread (totals read before the next call overwrites).
fn wg_sum(v: f32) -> f32 {
    var acc: array<f32, NV>;
    acc[0] = v;
    reduce_sum(&acc);
    let total = red[0];
    workgroupBarrier();
    return total;
}

var<workgroup> gum_v: array<f32, WG>;
var<workgroup> gum_i: array<u32, WG>;

// Whether a row is drawn with temperature alone (the Gumbel path).
fn temperature_only(s: Sampling) -> bool {
    return s.temperature > 0.0 && s.top_k != 1u && (s.top_k == 0u || s.top_k >= p.vocab)
        && s.top_p >= 1.0;
}

// Whether (v, i) beats (bv, bi): larger, or equal at a lower index.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return v > bv || (v == bv && i < bi);
}

// Tree-reduces the lanes' (best_v, best_i), (gum_v, gum_i) and low_v into lane 0's slots.
fn reduce_best(lid: u32) {
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        workgroupBarrier();
        if lid < stride {
            if beats(best_v[lid + stride], best_i[lid + stride], best_v[lid], best_i[lid]) {
                best_v[lid] = best_v[lid + stride];
                best_i[lid] = best_i[lid + stride];
            }
            if beats(gum_v[lid + stride], gum_i[lid + stride], gum_v[lid], gum_i[lid]) {
                gum_v[lid] = gum_v[lid + stride];
                gum_i[lid] = gum_i[lid + stride];
            }
            low_v[lid] = min(low_v[lid], low_v[lid + stride]);
        }
    }
    workgroupBarrier();
}

// A uniform draw in [0, 1) from 24 bits, fixed by (seed, counter, i).
fn draw_u(s: Sampling, i: u32) -> f32 {
    return f32(pcg(s.seed ^ pcg(s.counter ^ pcg(i))) >> 8u) / 16777216.0;
}

#ifdef SCAN
@compute @workgroup_size(WG)
fn scan(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = lanes.lid;
    let row = wg.y;
    if row >= step.outputs {
        return;
    }
    let s = sp[row];
    let gumbel = temperature_only(s);
    let inv_t = select(0.0, 1.0 / s.temperature, gumbel);
    let base = row * p.vocab;
    let end = min((wg.x + 1u) * CHUNK, p.vocab);
    var bv = -3.0e38;
    var bi = 0u;
    var lv = 3.0e38;
    var gv = -3.0e38;
    var gi = 0u;
    for (var i = wg.x * CHUNK + lid; i < end; i += WG) {
        let l = logits[base + i];
        if l > bv {
            bv = l;
            bi = i;
        }
        lv = min(lv, l);
        if gumbel {
            // u = 0 would give -inf: such a draw is never the winner anyway.
            let g = l * inv_t - log(-log(max(draw_u(s, i), 1.0e-30)));
            if g > gv {
                gv = g;
                gi = i;
            }
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    low_v[lid] = lv;
    gum_v[lid] = gv;
    gum_i[lid] = gi;
    reduce_best(lid);
    if lid == 0u {
        let o = (row * p.chunks + wg.x) * PART;
        part[o] = best_v[0];
        part[o + 1u] = bitcast<f32>(best_i[0]);
        part[o + 2u] = low_v[0];
        part[o + 3u] = gum_v[0];
        part[o + 4u] = bitcast<f32>(gum_i[0]);
    }
}
#else
@compute @workgroup_size(WG)
fn pick(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    reduce_setup(lanes);
    let lid = lanes.lid;
    let row = wg.y;
    if row >= step.outputs {
        return;
    }
    let v_n = p.vocab;
    let base = row * v_n;
    let s = sp[row];

    // Max (with its lowest index), min and the Gumbel winner over the chunks.
    best_v[lid] = -3.0e38;
    best_i[lid] = 0u;
    low_v[lid] = 3.0e38;
    gum_v[lid] = -3.0e38;
    gum_i[lid] = 0u;
    for (var c = lid; c < p.chunks; c += WG) {
        let o = (row * p.chunks + c) * PART;
        if beats(part[o], bitcast<u32>(part[o + 1u]), best_v[lid], best_i[lid]) {
            best_v[lid] = part[o];
            best_i[lid] = bitcast<u32>(part[o + 1u]);
        }
        low_v[lid] = min(low_v[lid], part[o + 2u]);
        if beats(part[o + 3u], bitcast<u32>(part[o + 4u]), gum_v[lid], gum_i[lid]) {
            gum_v[lid] = part[o + 3u];
            gum_i[lid] = bitcast<u32>(part[o + 4u]);
        }
    }
    reduce_best(lid);
    // Uniform loads: the early return below must be provably the same for every thread (WebGPU
    // rejects barriers after a branch on plain workgroup reads).
    let mx = workgroupUniformLoad(&best_v[0]);
    let argmax = best_i[0];
    let mn = workgroupUniformLoad(&low_v[0]);
    if s.temperature <= 0.0 || s.top_k == 1u || mx == mn {
        if lid == 0u {
            ids[row] = argmax;
        }
        return;
    }
    if temperature_only(s) {
        if lid == 0u {
            ids[row] = gum_i[0];
        }
        return;
    }
    let inv_t = 1.0 / s.temperature;

    // top_k: the largest threshold that still keeps at least top_k logits.
    var thr = mn;
    if s.top_k > 0u && s.top_k < v_n {
        var lo = mn;
        var hi = mx;
        for (var it = 0u; it < BISECT_STEPS; it++) {
            let mid = 0.5 * (lo + hi);
            var c = 0.0;
            for (var i = lid; i < v_n; i += WG) {
                c += select(0.0, 1.0, logits[base + i] >= mid);
            }
            if wg_sum(c) >= f32(s.top_k) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        thr = lo;
    }
    // top_p: the largest threshold whose kept mass reaches top_p of the top_k mass.
    if s.top_p < 1.0 {
        var z = 0.0;
        for (var i = lid; i < v_n; i += WG) {
            let l = logits[base + i];
            z += select(0.0, exp((l - mx) * inv_t), l >= thr);
        }
        let target_mass = s.top_p * wg_sum(z);
        var lo = thr;
        var hi = mx;
        for (var it = 0u; it < BISECT_STEPS; it++) {
            let mid = 0.5 * (lo + hi);
            var m = 0.0;
            for (var i = lid; i < v_n; i += WG) {
                let l = logits[base + i];
                m += select(0.0, exp((l - mx) * inv_t), l >= mid);
            }
            if wg_sum(m) >= target_mass {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        thr = lo;
    }

    // Draw: each thread owns a contiguous range; a prefix sum over the ranges finds the owner of
    // the drawn mass, which then walks its range.
    let per = (v_n + WG - 1u) / WG;
    let begin = min(lid * per, v_n);
    let end = min(begin + per, v_n);
    var mine = 0.0;
    for (var i = begin; i < end; i++) {
        let l = logits[base + i];
        mine += select(0.0, exp((l - mx) * inv_t), l >= thr);
    }
    prefix[lid] = mine;
    if lid == 0u {
        chosen = argmax;
    }
    workgroupBarrier();
    if lid == 0u {
        var run = 0.0;
        for (var i = 0u; i < WG; i++) {
            let v = prefix[i];
            prefix[i] = run;
            run += v;
        }
        prefix[0] = run;
    }
    workgroupBarrier();
    let total = prefix[0];
    let u = draw_u(s, v_n);
    let target_draw = u * total;
    var before = prefix[lid];
    if lid == 0u {
        before = 0.0;
    }
    var after = total;
    if lid + 1u < WG {
        after = prefix[lid + 1u];
    }
    if mine > 0.0 && target_draw >= before && target_draw < after {
        // Rounding can leave the crossing unfound; the last kept id of the range is then drawn.
        var run = before;
        var pick = begin;
        for (var i = begin; i < end; i++) {
            let l = logits[base + i];
            if l >= thr {
                pick = i;
                run += exp((l - mx) * inv_t);
                if run > target_draw {
                    break;
                }
            }
        }
        chosen = pick;
    }
    workgroupBarrier();
    if lid == 0u {
        ids[row] = chosen;
    }
}
#endif
#endif
