// Sampling on the GPU, one workgroup per logits row; only the chosen token id is read back.
// temperature <= 0 or top_k == 1: argmax (lowest index on ties). Otherwise, as transformers'
// warpers do in order: logits / temperature, keep the top_k largest (top_k = 0: all), keep the
// smallest set of largest ones whose probability mass reaches top_p, renormalize, and draw with a
// counter-based generator seeded per request, so a (seed, step) pair always gives the same token.
// Thresholds are found by bisection on the logit value, so no sort is needed.
// Bindings: logits [outputs, V] f32, params [outputs], ids [outputs] u32. Grid: (1, outputs).
#include "common/step.wgsl"

struct Params {
    vocab: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// One row's sampling settings (SampleParams in src/kernels/sample.rs).
struct Sampling {
    temperature: f32,
    top_p: f32,
    top_k: u32,
    seed: u32,
    counter: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> sp: array<Sampling>;
@group(0) @binding(4) var<storage, read_write> ids: array<u32>;

const WG: u32 = 256u;
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

@compute @workgroup_size(WG)
fn main(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    reduce_setup(lanes);
    let lid = lanes.lid;
    let row = wg.y;
    if row >= step.outputs {
        return;
    }
    let v_n = p.vocab;
    let base = row * v_n;
    let s = sp[row];

    // Max (with its lowest index) and min of the row.
    var bv = -3.0e38;
    var bi = 0u;
    var lv = 3.0e38;
    for (var i = lid; i < v_n; i += WG) {
        let l = logits[base + i];
        if l > bv {
            bv = l;
            bi = i;
        }
        lv = min(lv, l);
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    low_v[lid] = lv;
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        workgroupBarrier();
        if lid < stride {
            let ov = best_v[lid + stride];
            let oi = best_i[lid + stride];
            if ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid]) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
            low_v[lid] = min(low_v[lid], low_v[lid + stride]);
        }
    }
    workgroupBarrier();
    let mx = best_v[0];
    let argmax = best_i[0];
    let mn = low_v[0];
    if s.temperature <= 0.0 || s.top_k == 1u || mx == mn {
        if lid == 0u {
            ids[row] = argmax;
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
    let u = f32(pcg(s.seed ^ pcg(s.counter)) >> 8u) / 16777216.0;
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
