// Decode attention split over the keys (flash-decoding), for passes of a few tokens. The keys a
// token sees are cut into step.splits spans of step.span positions; a workgroup takes one span of
// one KV head for one token and all G = NH / NKV query heads that share that KV head, so each key
// and value is read once per group. Spans combine in MERGE, where the sink joins the denominator:
// p_j = exp(s_j - M) / (sum_j exp(s_j - M) + exp(sink - M)), M the max over scores and sink.
// SPLIT: Bindings tokens [T], qkv [T, (NH + 2 NKV) * D] (q rotated), k_cache, v_cache (the paged
//   pools, read through kv_table: common/kv_table.wgsl), part [T, NH, MAX_SPLITS, D + 2] f32
//   (acc[D], m, l per span). Grid: (NKV, T * splits). Keys in chunks of WG: lane j scores key j
//   for the G heads (each 4 dims of the key loaded once), the chunk's max and sum are reduced,
//   then the values: lane (q, f) accumulates dims 4q..4q+3 over keys f, f + WG / (D/4), ..., so
//   that all lanes load at once rather than one key after another; the phases f meet in
//   workgroup memory at the end.
// A pass whose keys fit one span (step.splits == 1) ends in SPLIT itself: the sink joins there
// and the output goes straight to `out`, with no merge dispatch (Rust runs MERGE only for more).
// So does every pass of a window layer whose window is at most ONE_SPAN keys (WHOLE_WINDOW: one
// span from the window's start, however long the context: gpt-oss's 128-key windows never need
// a merge).
// SPLIT's extra bindings: sinks [NH] f32, out [T, NH * D] f32.
// MERGE: Bindings part, sinks [NH] f32, out [T, NH * D] f32. Grid: (NH, T); lane i is dim
//   i % D of part i / D. Each span's max and sum are staged in workgroup memory once, while a
//   lane's loads of all its part's spans' outputs are in flight (at 8k keys, 64 spans: 169 ->
//   147 us a step on the H200, PERF.md v0.26), then added in span order, and the parts' sums in
//   part order.
// FEW_HEADS (SPLIT): a workgroup takes one query head, or two with TWO_HEADS (grid (NH / HG,
// T * splits)), for passes of few spans in all (tokens times splits, ONE_HEAD_MAX_SPANS and
// TWO_HEADS_MAX_SPANS): each key is then read by G / HG workgroups, but each carries HG heads'
// scores, reductions and sums instead of G's.
// KEY_GROUPS (FEW_HEADS, entry `keys`): a group of D / 8 lanes a key instead of a lane a key,
// where subgroups allow (below).
// STAGED (entry `staged`, grid (NKV, T * splits); D = STAGE_D, with subgroups): all G heads of a
// KV head a workgroup again, for tokens cut into STAGED_MIN_SPLITS spans or more, chunks of keys
// staged in workgroup memory and taken in two phases (below).
// Limits: D <= WG, G <= MAX_G, D a multiple of 4, HG dividing G. Variants: SPLIT (with
// FEW_HEADS, and TWO_HEADS, or not, and KEY_GROUPS; or STAGED; WHOLE_WINDOW or not) or MERGE,
// KV_F16, SUBGROUPS (SPLIT's reductions in registers).
#ifdef SPLIT
#include "common/kv_table.wgsl"
#endif
// The staged tier's scores over an f16 cache take f16 pairs (common/kv.wgsl enables f16 there).
#ifdef STAGED
#ifdef KV_F16
#include "common/f16_pairs.wgsl"
#endif
#endif
#include "common/step.wgsl"

#include "common/attention_params.wgsl"

// Spans per token at most, and query heads per KV head at most (the Rust side reads these), and
// how spans are sized: keys up to ONE_SPAN take a single span, more are cut into spans of at
// least MIN_SPAN (longer when MAX_SPLITS would not do). One span up to 256 keys rather than 128
// spares the merge at short contexts (H200, 129-160 keys: batch 8 / 32 attention 460 / 776 ->
// 350 / 548 us a step, +1% / +1.3% tok/s; PERF.md v0.28). At most 32 spans: at batch 1 the
// staged tier's 256 workgroups then run in one round of two an SM, each over more chunks (H100,
// 32k keys: staged + merge 866 -> 811 us a step against 64 spans, 16: 923 without the merge;
// PERF.md v0.40).
const MAX_SPLITS: u32 = 32u;
const ONE_SPAN: u32 = 256u;
const MIN_SPAN: u32 = 64u;
const MAX_G: u32 = 8u;
// Passes of up to this many tokens take the split path (the Rust side reads this line); larger
// ones attention.wgsl's query tiles (H200, batch 64: 2.96 -> 1.80 ms of attention a step).
const MAX_TOKENS: u32 = 64u;
// A workgroup takes one query head, not its KV head's group, when a pass's tokens times spans
// are at most ONE_HEAD_MAX_SPANS, and two heads up to TWO_HEADS_MAX_SPANS (the Rust side reads
// these lines): with few spans the grouped workgroups are few and each carries G heads through
// every phase serially (batch 1, PERF.md v0.18); two heads a workgroup read each key half as
// often as one head does and carry a quarter of a group's serial work (batch 8: 625 -> 365 us a
// step against the group, v0.26); with many spans, reading each key once per group wins (batch
// 32: 1.03 -> 0.91 ms a step against one head, v0.20).
const ONE_HEAD_MAX_SPANS: u32 = 4u;
const TWO_HEADS_MAX_SPANS: u32 = 64u;
// Tokens whose keys are cut into at least this many spans (long contexts) take STAGED, where the
// adapter allows, whatever the pass's size (the Rust side reads this line).
const STAGED_MIN_SPLITS: u32 = 8u;
// Lanes per workgroup, a chunk of keys at a time (the Rust side reads these lines: D <= all). Two
// heads' workgroups take 128 keys a chunk (a window layer's keys in one round; H200 batch 1 2.87
// -> 2.79 ms a step), one head's 256 (its 128-256 keys in one or two trips of a lane group, not
// two to four: H100 batches 1-4 `keys` 310-320 -> 280-290 us a step; at 256 the two-head
// workgroups of batch 8 lost, 562 -> 740, PERF.md v0.42 and v0.43), a group's 64 (128 there:
// batch 32 attention 775 -> 1263 us a step).
const HEAD_WG: u32 = 128u;
const ONE_HEAD_WG: u32 = 256u;
const GROUP_WG: u32 = 64u;
// STAGED's lanes (below).
const STAGE_WG: u32 = 256u;
#ifdef STAGED
const WG: u32 = STAGE_WG;
#else
#ifdef FEW_HEADS
#ifdef TWO_HEADS
const HG: u32 = 2u;
const WG: u32 = HEAD_WG;
#else
const HG: u32 = 1u;
const WG: u32 = ONE_HEAD_WG;
#endif
#else
const HG: u32 = MAX_G;
const WG: u32 = GROUP_WG;
#endif
#endif
const NEG: f32 = -3.0e38;

#ifdef SPLIT
@group(0) @binding(2) var<storage, read> tokens: array<TokenInfo>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
#ifdef STAGED
// STAGED moves the caches as 16-byte words (8 dims in f16, 4 in f32) into workgroup memory.
@group(0) @binding(4) var<storage, read> k_cache: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> v_cache: array<vec4<u32>>;
#else
@group(0) @binding(4) var<storage, read> k_cache: array<vec4<kv>>;
@group(0) @binding(5) var<storage, read> v_cache: array<vec4<kv>>;
#endif
@group(0) @binding(6) var<storage, read_write> part: array<f32>;
@group(0) @binding(7) var<storage, read> sinks: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
@group(0) @binding(9) var<storage, read> kv_table: array<u32>;

var<workgroup> tok_shared: TokenInfo;
#include "common/lanes.wgsl"

// `split`'s workgroup memory and reductions (the other entries have their own, below).
#ifndef STAGED
#ifndef KEY_GROUPS
var<workgroup> qs: array<vec4<f32>, HG * WG / 4u>;
var<workgroup> prob: array<f32, HG * WG>;
var<workgroup> red: array<f32, HG * WG>;
// Where each key of the chunk starts in the cache (vec4 index), looked up once by its scoring lane.
var<workgroup> key_at: array<u32, WG>;
// The value phases' sums, [phase, head, quad].
var<workgroup> vsum: array<vec4<f32>, HG * WG>;

// Per head g < G: the max (or sum) over lanes of v[g], returned to every lane; called from
// uniform control flow. With SUBGROUPS in registers, then across the few subgroups; otherwise a
// tree in workgroup memory.
#ifdef SUBGROUPS
fn reduce_heads(v: array<f32, HG>, l: Lanes, use_max: bool) -> array<f32, HG> {
    let sg = l.lid / l.size;
    for (var g = 0u; g < HG; g++) {
        var r: f32;
        if use_max {
            r = subgroupMax(v[g]);
        } else {
            r = subgroupAdd(v[g]);
        }
        if l.lane == 0u {
            red[sg * HG + g] = r;
        }
    }
    workgroupBarrier();
    var out: array<f32, HG>;
    for (var g = 0u; g < HG; g++) {
        out[g] = red[g];
        for (var q = 1u; q < (WG + l.size - 1u) / l.size; q++) {
            let b = red[q * HG + g];
            out[g] = select(out[g] + b, max(out[g], b), use_max);
        }
    }
    workgroupBarrier();
    return out;
}
#else
fn reduce_heads(v: array<f32, HG>, l: Lanes, use_max: bool) -> array<f32, HG> {
    let lid = l.lid;
    for (var g = 0u; g < HG; g++) {
        red[lid * HG + g] = v[g];
    }
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        workgroupBarrier();
        if lid < stride {
            for (var g = 0u; g < HG; g++) {
                let a = red[lid * HG + g];
                let b = red[(lid + stride) * HG + g];
                red[lid * HG + g] = select(a + b, max(a, b), use_max);
            }
        }
    }
    workgroupBarrier();
    var out: array<f32, HG>;
    for (var g = 0u; g < HG; g++) {
        out[g] = red[g];
    }
    workgroupBarrier();
    return out;
}
#endif
#endif
#endif

// Spans per token of this pass: a window layer whose window fits one span (WHOLE_WINDOW) has
// each token's keys in one, whatever the pass's split (which the full layers' keys decide).
fn span_count() -> u32 {
#ifdef WHOLE_WINDOW
    return 1u;
#else
    return step.splits;
#endif
}

// A split workgroup's job: token t's span c of the pass's `splits` spans a token.
struct SpanJob {
    t: u32,
    c: u32,
    splits: u32,
}

// The job of workgroup row y.
fn span_job(y: u32) -> SpanJob {
    let splits = span_count();
    return SpanJob(y / splits, y % splits, splits);
}

// Token t's position and cache slot: its position decides the loop bounds, so a uniform copy
// keeps the barriers legal.
fn token_uniform(t: u32) -> TokenInfo {
    tok_shared = tokens[t];
    return workgroupUniformLoad(&tok_shared);
}

// Four query values from qkv at index i.
fn qkv4(i: u32) -> vec4<f32> {
    return vec4<f32>(qkv[i], qkv[i + 1u], qkv[i + 2u], qkv[i + 3u]);
}

// The key positions [x, y) of span c of token `tok`.
fn span_keys(tok: TokenInfo, c: u32) -> vec2<u32> {
    var lo = 0u;
    if p.window > 0u && tok.pos + 1u > p.window {
        lo = tok.pos + 1u - p.window;
    }
    var hi = tok.pos + 1u;
#ifndef WHOLE_WINDOW
    lo = max(lo, c * step.span);
    hi = min(hi, (c + 1u) * step.span);
#endif
    return vec2<u32>(lo, hi);
}

// Dims 4q .. 4q + 3 of head h's output o over the job's span, whose scores have max m and sum
// of exponentials l: the attention output itself when the token has one span (the sink joins
// the denominator here), else the span's partial for MERGE (with m and l once, at q = 0).
fn finish(job: SpanJob, h: u32, m: f32, l: f32, o: vec4<f32>, q: u32) {
    let d = p.head_dim;
    let t = job.t;
    if job.splits == 1u {
        let mx = max(m, sinks[h]);
        let cm = exp(m - mx);
        let ob = (t * p.n_heads + h) * d + 4u * q;
        let r = o * cm / (l * cm + exp(sinks[h] - mx));
        out[ob] = r.x;
        out[ob + 1u] = r.y;
        out[ob + 2u] = r.z;
        out[ob + 3u] = r.w;
    } else {
        let pb = ((t * p.n_heads + h) * MAX_SPLITS + job.c) * (d + 2u);
        part[pb + 4u * q] = o.x;
        part[pb + 4u * q + 1u] = o.y;
        part[pb + 4u * q + 2u] = o.z;
        part[pb + 4u * q + 3u] = o.w;
        if q == 0u {
            part[pb + d] = m;
            part[pb + d + 1u] = l;
        }
    }
}

#ifndef STAGED
#ifndef KEY_GROUPS
@compute @workgroup_size(WG)
fn split(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = lanes.lid;
#ifdef FEW_HEADS
    let h0 = wg.x * HG;
    let gn = HG;
    let kvh = h0 / (p.n_heads / p.n_kv);
#else
    let kvh = wg.x;
    let gn = p.n_heads / p.n_kv;
    let h0 = kvh * gn;
#endif
    let job = span_job(wg.y);
    if job.t >= step.tokens {
        return;
    }
    let tok = token_uniform(job.t);
    let d = p.head_dim;
    let d4 = d / 4u;
    let stride = (p.n_heads + 2u * p.n_kv) * d;
    for (var i = lid; i < gn * d4; i += WG) {
        let q0 = job.t * stride + h0 * d + 4u * i;
        qs[i] = qkv4(q0);
    }
    let keys = span_keys(tok, job.c);
    let lo = keys.x;
    let hi = keys.y;
    var m: array<f32, HG>;
    var l: array<f32, HG>;
    var acc: array<vec4<f32>, HG>;
    for (var g = 0u; g < HG; g++) {
        m[g] = NEG;
    }
    // The value lanes: quad q of the head dims, key phase f of `phases`.
    let phases = WG / d4;
    let q = lid % d4;
    let f = lid / d4;
    workgroupBarrier();
    for (var base = lo; base < hi; base += WG) {
        let n = min(WG, hi - base);
        var s: array<f32, HG>;
        for (var g = 0u; g < HG; g++) {
            s[g] = NEG;
        }
        if lid < n {
            let kb = kv_at(tok.seq, base + lid, kvh) / 4u;
            key_at[lid] = kb;
            // Zeroed by hand: SwiftShader (Chrome's software WebGPU) keeps the previous chunk's
            // sums in a loop-local array that WGSL says starts at zero (the kernel tests in
            // headless Chromium caught it).
            var dot_qk: array<f32, HG>;
            for (var g = 0u; g < HG; g++) {
                dot_qk[g] = 0.0;
            }
            // Four loads of the key at once (then the rest): a loop of one load an iteration
            // waits out each load in turn.
            var i = 0u;
            for (; i + 4u <= d4; i += 4u) {
                let k0 = vec4<f32>(k_cache[kb + i]);
                let k1 = vec4<f32>(k_cache[kb + i + 1u]);
                let k2 = vec4<f32>(k_cache[kb + i + 2u]);
                let k3 = vec4<f32>(k_cache[kb + i + 3u]);
                for (var g = 0u; g < HG; g++) {
                    let qb = min(g, gn - 1u) * d4 + i;
                    dot_qk[g] += dot(qs[qb], k0);
                    dot_qk[g] += dot(qs[qb + 1u], k1);
                    dot_qk[g] += dot(qs[qb + 2u], k2);
                    dot_qk[g] += dot(qs[qb + 3u], k3);
                }
            }
            for (; i < d4; i++) {
                let k4 = vec4<f32>(k_cache[kb + i]);
                for (var g = 0u; g < HG; g++) {
                    dot_qk[g] += dot(qs[min(g, gn - 1u) * d4 + i], k4);
                }
            }
            for (var g = 0u; g < HG; g++) {
                if g < gn {
                    s[g] = dot_qk[g] * p.scale;
                }
            }
        }
        let m_chunk = reduce_heads(s, lanes, true);
        var e: array<f32, HG>;
        var corr: array<f32, HG>;
        for (var g = 0u; g < HG; g++) {
            let m_new = max(m[g], m_chunk[g]);
            corr[g] = exp(m[g] - m_new);
            e[g] = select(0.0, exp(s[g] - m_new), lid < n);
            prob[g * WG + lid] = e[g];
            m[g] = m_new;
        }
        let sums = reduce_heads(e, lanes, false);
        for (var g = 0u; g < HG; g++) {
            l[g] = l[g] * corr[g] + sums[g];
            acc[g] *= corr[g];
        }
        if f < phases {
            // Keys j, j + phases, ... four at a time, their loads in flight together (keys past
            // n load the last key's value and weigh it 0), added in key order.
            for (var j = f; j < n; j += 4u * phases) {
                var v4: array<vec4<f32>, 4>;
                var jk: array<u32, 4>;
                for (var u = 0u; u < 4u; u++) {
                    jk[u] = min(j + u * phases, n - 1u);
                    v4[u] = vec4<f32>(v_cache[key_at[jk[u]] + q]);
                }
                for (var u = 0u; u < 4u; u++) {
                    let live = j + u * phases < n;
                    for (var g = 0u; g < HG; g++) {
                        acc[g] += select(0.0, prob[g * WG + jk[u]], live) * v4[u];
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if f < phases {
        for (var g = 0u; g < HG; g++) {
            vsum[(f * HG + g) * d4 + q] = acc[g];
        }
    }
    workgroupBarrier();
    if f != 0u {
        return;
    }
    for (var g = 0u; g < gn; g++) {
        var o = vec4<f32>(0.0);
        for (var ph = 0u; ph < phases; ph++) {
            o += vsum[(ph * HG + g) * d4 + q];
        }
        finish(job, h0 + g, m[g], l[g], o, q);
    }
}
#endif
#endif

#ifdef STAGED
// STAGED (entry `staged`, grid (NKV, T * splits)): a workgroup takes all G query heads of its KV
// head over one span, so each key and value is read from memory once. Chunks of CHUNK keys go
// through workgroup memory (coalesced 16-byte loads, the next chunk's in flight while this one is
// used), and each chunk runs in two phases, so that no work is repeated across lanes:
// - weights: a run of RUN (32) lanes takes one head and the whole chunk, lane j keys j + RUN i:
//   whole dot products, reading the keys' words (swizzled, so that a warp's lanes, each on its
//   own key, hit distinct banks) and the head's queries (in workgroup memory, one address across
//   a warp: a broadcast); then the chunk max over the run (shuffles, and across subgroups only
//   where they are narrower than a run), the head's running max m and the weights
//   p = 2^(s - m) (scores in log2 units: the queries carry scale * log2(e)), each computed once,
//   into workgroup memory;
// - values: lane (dim pair, key set) adds p[h] v[j] for every head, each value converted once for
//   all G heads.
// A key costs its products and one exponential a head, where key groups (8 lanes a key) spent 3
// shuffles, a max and an exponential on each of its lanes and converted it once per head pair
// (at 32k keys on the H100: 856 -> 740 us a step, PERF.md v0.40). A run holding a head's whole
// chunk finds its max without a barrier: three a chunk instead of four, and 94 registers instead
// of 120 (740 -> 619 us, v0.41). The key sets' sums meet in workgroup memory at the end.
// Over an f16 cache (the `fast` precision) the scores take f16 pairs: the queries rounded to f16
// once, each word of a key (8 dims) two products an instruction summed in f16, then added in f32
// (half the instructions of converting the keys to f32: 32k keys on the H100 615 -> 549 us a
// step, PERF.md v0.43); each product is rounded to f16 (relative 2^-11), as the cache's values
// already are.
#ifdef KV_F16
const WORD_DIMS: u32 = 8u;
#else
const WORD_DIMS: u32 = 4u;
#endif
// The tier's head size, keys a chunk and words a key (the Rust side reads these lines).
const STAGE_D: u32 = 64u;
const CHUNK: u32 = 64u;
const KEY_WORDS: u32 = STAGE_D / WORD_DIMS;
// Keys a chunk: CHUNK in f16 (keys' and values' words 16 KiB), half as many in f32 (KEY_WORDS
// 16), in the same bytes.
#ifdef KV_F16
const CHUNK_KEYS: u32 = CHUNK;
#else
const CHUNK_KEYS: u32 = CHUNK / 2u;
#endif
const STAGE_WORDS: u32 = CHUNK_KEYS * KEY_WORDS;
const STAGE_LOADS: u32 = STAGE_WORDS / WG;
// Lanes a head in the weights phase (WG = RUN * MAX_G), and keys a lane.
const RUN: u32 = 32u;
const KPL: u32 = CHUNK_KEYS / RUN;
const_assert WG == RUN * MAX_G && CHUNK_KEYS % RUN == 0u;
// The narrowest subgroup the tier takes (the Rust side reads this line).
const MIN_SUBGROUP: u32 = 4u;
// Key sets of the values phase: a lane takes dims 2 dp, 2 dp + 1 of every head.
const PAIRS: u32 = STAGE_D / 2u;
const KEY_SETS: u32 = WG / PAIRS;
// The chunk's keys and values, at the end the key sets' value sums (two pairs a word).
const STAGE_SIZE: u32 = max(2u * STAGE_WORDS, KEY_SETS * MAX_G * PAIRS / 2u);
var<workgroup> stage: array<vec4<u32>, STAGE_SIZE>;
// The token's queries [G, D] (times scale * log2(e); over an f16 cache as f16 pairs, a key
// word's 8 dims a word), the chunk's weights [key, head], each subgroup's chunk max where
// subgroups are narrower than a run (at the end each run part's sum of weights), and each head's
// correction of the values' sums at this chunk.
#ifdef KV_F16
var<workgroup> qh: array<vec4<u32>, MAX_G * KEY_WORDS>;

// A staged word's 8 dims (a key's, or the queries') as f16 pairs, dims 2n and 2n + 1 in pair n.
fn word_pairs(w: vec4<u32>) -> Pairs8 {
    return Pairs8(half_pair(w.x), half_pair(w.y), half_pair(w.z), half_pair(w.w));
}
#else
var<workgroup> qs: array<vec4<f32>, MAX_G * STAGE_D / 4u>;
#endif
var<workgroup> probs: array<vec4<f32>, CHUNK_KEYS * MAX_G / 4u>;
var<workgroup> sub_max: array<f32, WG / MIN_SUBGROUP>;
var<workgroup> corr: array<vec4<f32>, MAX_G / 4u>;
var<workgroup> head_m: array<f32, MAX_G>;
const LOG2E: f32 = 1.4426950408889634;
// A head's running max moves only when a chunk's score exceeds it by LAG (log2 units): the
// weights p = 2^(s - m) stay below 2^LAG, exact enough in f32, and with subgroups as wide as a
// run most chunks take one vote instead of the max's five shuffles (FlashAttention-4's lazy
// rescaling; the max's reduction was ~6% of the tier at 32k keys, PERF.md v0.49).
const LAG: f32 = 16.0;

// A lane's share of a chunk: words lid + i WG of its keys and of its values.
struct ChunkLoads {
    k: array<vec4<u32>, STAGE_LOADS>,
    v: array<vec4<u32>, STAGE_LOADS>,
}

// The lane's share of the chunk of keys from `base` (keys past `end` load the last one, which
// the scores skip).
fn fetch_chunk(lid: u32, seq: u32, kvh: u32, base: u32, end: u32) -> ChunkLoads {
    var c: ChunkLoads;
    for (var i = 0u; i < STAGE_LOADS; i++) {
        let e = lid + i * WG;
        let at = kv_at(seq, min(base + e / KEY_WORDS, end - 1u), kvh) / WORD_DIMS + e % KEY_WORDS;
        c.k[i] = k_cache[at];
        c.v[i] = v_cache[at];
    }
    return c;
}

// Where word w of staged key j sits: the words of key j rotated by j, so that the lanes of a
// warp reading word w of consecutive keys fall in distinct banks.
fn key_slot(j: u32, w: u32) -> u32 {
    return j * KEY_WORDS + (w ^ (j % KEY_WORDS));
}

// The chunk's loads into workgroup memory (keys swizzled, values in order).
fn stage_chunk(lid: u32, c: ChunkLoads) {
    for (var i = 0u; i < STAGE_LOADS; i++) {
        let e = lid + i * WG;
        stage[key_slot(e / KEY_WORDS, e % KEY_WORDS)] = c.k[i];
        stage[STAGE_WORDS + e] = c.v[i];
    }
}

// Head h's scores of staged keys j + RUN i (log2 units).
fn key_scores(j: u32, h: u32) -> array<f32, KPL> {
    var s: array<f32, KPL>;
    for (var w = 0u; w < KEY_WORDS; w++) {
#ifdef KV_F16
        let q = word_pairs(qh[h * KEY_WORDS + w]);
        for (var i = 0u; i < KPL; i++) {
            let t = dot8_f16(word_pairs(stage[key_slot(j + RUN * i, w)]), q, vec2<f16>());
            s[i] += f32(t.x) + f32(t.y);
        }
#else
        let q0 = qs[h * (STAGE_D / 4u) + w];
        for (var i = 0u; i < KPL; i++) {
            s[i] += dot(q0, bitcast<vec4<f32>>(stage[key_slot(j + RUN * i, w)]));
        }
#endif
    }
    return s;
}

// Dims 2 dp and 2 dp + 1 of staged value j.
fn value_pair(j: u32, dp: u32) -> vec2<f32> {
#ifdef KV_F16
    return unpack2x16float(stage[STAGE_WORDS + j * KEY_WORDS + dp / 4u][dp % 4u]);
#else
    let w = stage[STAGE_WORDS + j * KEY_WORDS + dp / 2u];
    return bitcast<vec2<f32>>(select(w.xy, w.zw, dp % 2u == 1u));
#endif
}

// The values phase's sums of key set ks, head h, pair dp, kept in the stage at the end.
fn acc_slot(ks: u32, h: u32, dp: u32) -> u32 {
    return (ks * MAX_G + h) * PAIRS + dp;
}

fn keep_pair(i: u32, v: vec2<f32>) {
    let c = 2u * (i % 2u);
    stage[i / 2u][c] = bitcast<u32>(v.x);
    stage[i / 2u][c + 1u] = bitcast<u32>(v.y);
}

fn kept_pair(i: u32) -> vec2<f32> {
    let w = stage[i / 2u];
    return bitcast<vec2<f32>>(select(w.xy, w.zw, i % 2u == 1u));
}

// Lanes of a run that one subgroup holds: the whole run, or a part where subgroups are narrower.
fn run_width(lanes: Lanes) -> u32 {
    return min(lanes.size, RUN);
}

// A value of the lane's run part (the same in each of its `width` lanes) into sub_max, where run
// h's RUN / width parts sit from h * (RUN / width) in lane order; part i of run h read back.
fn keep_part(lanes: Lanes, width: u32, v: f32) {
    if lanes.lane % width == 0u {
        sub_max[lanes.lid / width] = v;
    }
}

fn run_part(h: u32, i: u32, width: u32) -> f32 {
    return sub_max[h * (RUN / width) + i];
}

// The chunk's weights (n live keys) of head h for keys j + RUN i into probs, the head's
// correction into corr, its running max m and the lane's part of its sum l moved on (width:
// run_width). Called from uniform control flow.
fn chunk_weights(j: u32, h: u32, n: u32, lanes: Lanes, width: u32, m: ptr<function, f32>,
                 l: ptr<function, f32>) {
    var s = key_scores(j, h);
    var cm = NEG;
    for (var i = 0u; i < KPL; i++) {
        s[i] = select(NEG, s[i], j + RUN * i < n);
        cm = max(cm, s[i]);
    }
    // The run's max, where it moves the head's (LAG above; it is then above m): subgroups
    // narrower than a run reduce it by shuffles and then across their parts, wider ones vote
    // first.
    var mx = *m;
    if width < RUN {
        cm = neighbour_max(cm, width);
        keep_part(lanes, width, cm);
        workgroupBarrier();
        for (var i = 0u; i < RUN / width; i++) {
            cm = max(cm, run_part(h, i, width));
        }
        if cm > *m + LAG {
            mx = cm;
        }
    } else if subgroupAny(cm > *m + LAG) {
        mx = neighbour_max(cm, width);
    }
    let c = exp2(*m - mx);
    var ps = 0.0;
    for (var i = 0u; i < KPL; i++) {
        let pw = exp2(s[i] - mx);
        ps += pw;
        probs[((j + RUN * i) * MAX_G + h) / 4u][h % 4u] = pw;
    }
    *l = *l * c + ps;
    *m = mx;
    if j == 0u {
        corr[h / 4u][h % 4u] = c;
    }
}

// Once the weights are in: every head's sums of the lane's dim pair (dp) corrected, then the
// chunk's keys ks, ks + KEY_SETS, ... (of n live) added.
fn chunk_values(acc: ptr<function, array<vec2<f32>, MAX_G>>, ks: u32, dp: u32, n: u32) {
    for (var h = 0u; h < MAX_G; h++) {
        (*acc)[h] *= corr[h / 4u][h % 4u];
    }
    for (var jv = ks; jv < n; jv += KEY_SETS) {
        let v = value_pair(jv, dp);
        for (var h4 = 0u; h4 < MAX_G / 4u; h4++) {
            let pv = probs[jv * (MAX_G / 4u) + h4];
            (*acc)[4u * h4] += pv.x * v;
            (*acc)[4u * h4 + 1u] += pv.y * v;
            (*acc)[4u * h4 + 2u] += pv.z * v;
            (*acc)[4u * h4 + 3u] += pv.w * v;
        }
    }
}

@compute @workgroup_size(WG)
fn staged(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = lanes.lid;
    let kvh = wg.x;
    let gn = p.n_heads / p.n_kv;
    let job = span_job(wg.y);
    if job.t >= step.tokens {
        return;
    }
    let tok = token_uniform(job.t);
    let d = p.head_dim;
    // The queries, scaled, into workgroup memory (heads past G zero).
    let stride = (p.n_heads + 2u * p.n_kv) * d;
    let qb = job.t * stride + kvh * gn * d;
#ifdef KV_F16
    for (var i = lid; i < MAX_G * KEY_WORDS; i += WG) {
        let h = i / KEY_WORDS;
        var w = vec4<u32>(0u);
        if h < gn {
            let a = qkv4(qb + 8u * i) * (p.scale * LOG2E);
            let b = qkv4(qb + 8u * i + 4u) * (p.scale * LOG2E);
            w = vec4<u32>(pack2x16float(a.xy), pack2x16float(a.zw), pack2x16float(b.xy),
                          pack2x16float(b.zw));
        }
        qh[i] = w;
    }
#else
    for (var i = lid; i < MAX_G * STAGE_D / 4u; i += WG) {
        let h = i / (STAGE_D / 4u);
        var q = vec4<f32>(0.0);
        if h < gn {
            q = qkv4(qb + 4u * i) * (p.scale * LOG2E);
        }
        qs[i] = q;
    }
#endif
    // Weights: head `head`, keys j + RUN i of the chunk; values: pair dp, keys ks,
    // ks + KEY_SETS, ...
    let j = lid % RUN;
    let head = lid / RUN;
    let dp = lid % PAIRS;
    let ks = lid / PAIRS;
    let width = run_width(lanes);
    var m = NEG;
    var l = 0.0;
    var acc: array<vec2<f32>, MAX_G>;
    let keys = span_keys(tok, job.c);
    var next: ChunkLoads;
    if keys.x < keys.y {
        next = fetch_chunk(lid, tok.seq, kvh, keys.x, keys.y);
    }
    for (var base = keys.x; base < keys.y; base += CHUNK_KEYS) {
        // The last chunk's readers are done; this one into workgroup memory; the next one's loads
        // in flight.
        workgroupBarrier();
        stage_chunk(lid, next);
        workgroupBarrier();
        if base + CHUNK_KEYS < keys.y {
            next = fetch_chunk(lid, tok.seq, kvh, base + CHUNK_KEYS, keys.y);
        }
        let n = min(CHUNK_KEYS, keys.y - base);
        chunk_weights(j, head, n, lanes, width, &m, &l);
        workgroupBarrier();
        chunk_values(&acc, ks, dp, n);
    }
    // The heads' sums of weights (each subgroup's part of a run, then in part order) and the key
    // sets' value sums meet in workgroup memory.
    workgroupBarrier();
    keep_part(lanes, width, neighbour_sum(l, width));
    if j == 0u {
        head_m[head] = m;
    }
    for (var h = 0u; h < MAX_G; h++) {
        keep_pair(acc_slot(ks, h, dp), acc[h]);
    }
    workgroupBarrier();
    // Lane (head, quad) of the G heads: the span's output, max and sum (natural units).
    let d4 = STAGE_D / 4u;
    if lid < gn * d4 {
        let h = lid / d4;
        let q = lid % d4;
        var o = vec4<f32>(0.0);
        for (var k = 0u; k < KEY_SETS; k++) {
            o += vec4<f32>(kept_pair(acc_slot(k, h, 2u * q)),
                           kept_pair(acc_slot(k, h, 2u * q + 1u)));
        }
        var den = 0.0;
        for (var i = 0u; i < RUN / width; i++) {
            den += run_part(h, i, width);
        }
        finish(job, kvh * gn + h, head_m[h] / LOG2E, den, o, q);
    }
}
#else
#ifdef KEY_GROUPS
// KEY_GROUPS (one or two heads a workgroup, on adapters whose subgroups all hold a key's lanes):
// L = D / 8 adjacent lanes of a subgroup take one key, 8 dims a lane, so a workgroup's round of
// loads reads WG / L adjacent positions, contiguous in the cache (a block's 16 keys of a head
// are 2 KB at D = 64 in f16): coalesced, where `split` gives each lane a key of its own (32 lines
// a warp instruction). A key's score is summed across its lanes by shuffles. Each lane group
// keeps its own running max, sum and value sums over its keys, KEY_ROUNDS keys at once with all
// their loads in flight and no barrier in the loop; the groups meet in workgroup memory at the
// end. Each head's state is its own variable, not an array indexed by head (which a compiler
// may keep in memory). H200, split kernel at 8k keys: 702 us a step with `split`, 552 with 2
// keys at once, 589 with 1, 766 with 4 (which spills); PERF.md v0.28.
const KEY_ROUNDS: u32 = 2u;
var<workgroup> group_m: array<f32, WG * HG>;
var<workgroup> group_l: array<f32, WG * HG>;
// [group, head, quad] value sums (a group has 2 quads a lane of its L lanes: 8 WG HG floats).
var<workgroup> group_acc: array<vec4<f32>, 2u * WG * HG>;

fn acc_at(i: u32) -> vec4<f32> {
    return group_acc[i];
}

fn set_acc(i: u32, a: vec4<f32>) {
    group_acc[i] = a;
}

// One head's run over a lane group's keys: the max and sum of exponentials of its scores so far
// and the lane's 8 dims of the weighted value sums; q its 8 dims of the query.
struct HeadRun {
    m: f32,
    l: f32,
    a0: vec4<f32>,
    a1: vec4<f32>,
    q0: vec4<f32>,
    q1: vec4<f32>,
}

// A run that has seen no key yet, for the 8 query dims at qkv index q.
fn head_run(q: u32) -> HeadRun {
    return HeadRun(NEG, 0.0, vec4<f32>(0.0), vec4<f32>(0.0), qkv4(q), qkv4(q + 4u));
}

// A trip's keys and values, 8 dims of each of KEY_ROUNDS keys.
struct KeyTrip {
    k: array<vec4<kv>, 2u * KEY_ROUNDS>,
    v: array<vec4<kv>, 2u * KEY_ROUNDS>,
}

// h's run through the trip's keys, of which the first `live` are real; kl lanes a key.
fn run_head(h: HeadRun, trip: ptr<function, KeyTrip>, live: u32, kl: u32) -> HeadRun {
    var r = h;
    var s: array<f32, KEY_ROUNDS>;
    var m_new = h.m;
    for (var k = 0u; k < KEY_ROUNDS; k++) {
        let dot_qk = neighbour_sum(dot(h.q0, vec4<f32>((*trip).k[2u * k]))
            + dot(h.q1, vec4<f32>((*trip).k[2u * k + 1u])), kl);
        s[k] = select(NEG, dot_qk * p.scale, k < live);
        m_new = max(m_new, s[k]);
    }
    let corr = exp(h.m - m_new);
    r.l *= corr;
    r.a0 *= corr;
    r.a1 *= corr;
    for (var k = 0u; k < KEY_ROUNDS; k++) {
        let e = select(0.0, exp(s[k] - m_new), k < live);
        r.l += e;
        r.a0 += e * vec4<f32>((*trip).v[2u * k]);
        r.a1 += e * vec4<f32>((*trip).v[2u * k + 1u]);
    }
    r.m = m_new;
    return r;
}

// Head g's run of lane group `slot` into workgroup memory (part: the lane's place in its group).
fn keep_run(h: HeadRun, slot: u32, g: u32, part: u32, d4: u32) {
    if part == 0u {
        group_m[slot * HG + g] = h.m;
        group_l[slot * HG + g] = h.l;
    }
    let at = (slot * HG + g) * d4 + 2u * part;
    set_acc(at, h.a0);
    set_acc(at + 1u, h.a1);
}

// The job's output for `heads` heads from h0 on, once every group has kept its runs: head i of
// them is head i % HG of the groups [set_groups (i / HG), set_groups (i / HG + 1)), whose runs
// meet here (max over groups, rescaled sums); lane j takes quad j % d4 of head j / d4.
fn finish_runs(job: SpanJob, lid: u32, h0: u32, heads: u32, set_groups: u32, d4: u32) {
    for (var i = lid; i < heads * d4; i += WG) {
        let g = (i / d4) % HG;
        let first = (i / d4 / HG) * set_groups;
        let q = i % d4;
        var mx = NEG;
        for (var r = first; r < first + set_groups; r++) {
            mx = max(mx, group_m[r * HG + g]);
        }
        var den = 0.0;
        var o = vec4<f32>(0.0);
        for (var r = first; r < first + set_groups; r++) {
            let w = exp(group_m[r * HG + g] - mx);
            den += w * group_l[r * HG + g];
            o += w * acc_at((r * HG + g) * d4 + q);
        }
        finish(job, h0 + i / d4, mx, den, o, q);
    }
}

// A lane's place among the key groups: lane `part` of its key's L = D / 8 lanes, in the
// workgroup's `slot`-th group.
struct KeyLane {
    kl: u32,
    part: u32,
    slot: u32,
}

fn key_lane(lanes: Lanes) -> KeyLane {
    let kl = p.head_dim / 8u;
    let slot = (lanes.lid / lanes.size) * (lanes.size / kl) + lanes.lane / kl;
    return KeyLane(kl, lanes.lane % kl, slot);
}

@compute @workgroup_size(WG)
fn keys(lanes: Lanes, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = lanes.lid;
    let h0 = wg.x * HG;
    let kvh = h0 / (p.n_heads / p.n_kv);
    let job = span_job(wg.y);
    if job.t >= step.tokens {
        return;
    }
    let tok = token_uniform(job.t);
    let d = p.head_dim;
    let d4 = d / 4u;
    let kl = key_lane(lanes);
    let groups = WG / kl.kl;
    let stride = (p.n_heads + 2u * p.n_kv) * d;
    let qb = job.t * stride + h0 * d + 8u * kl.part;
    var h_0 = head_run(qb);
    var h_1 = h_0;
    if HG == 2u {
        h_1 = head_run(qb + d);
    }
    let keys = span_keys(tok, job.c);
    for (var base = keys.x; base < keys.y; base += KEY_ROUNDS * groups) {
        // Every key and value of the trip loaded first (dead positions load the last live key
        // and weigh 0).
        var trip: KeyTrip;
        for (var k = 0u; k < KEY_ROUNDS; k++) {
            let pos = min(base + k * groups + kl.slot, keys.y - 1u);
            let at = kv_at(tok.seq, pos, kvh) / 4u + 2u * kl.part;
            trip.k[2u * k] = k_cache[at];
            trip.k[2u * k + 1u] = k_cache[at + 1u];
            trip.v[2u * k] = v_cache[at];
            trip.v[2u * k + 1u] = v_cache[at + 1u];
        }
        // Keys base + k groups + slot for k < live are real.
        let first = base + kl.slot;
        let live = select(0u, (keys.y - first + groups - 1u) / groups, first < keys.y);
        h_0 = run_head(h_0, &trip, live, kl.kl);
        if HG == 2u {
            h_1 = run_head(h_1, &trip, live, kl.kl);
        }
    }
    keep_run(h_0, kl.slot, 0u, kl.part, d4);
    if HG == 2u {
        keep_run(h_1, kl.slot, 1u, kl.part, d4);
    }
    workgroupBarrier();
    finish_runs(job, lid, h0, HG, groups, d4);
}
#endif
#endif
#endif

#ifdef MERGE
@group(0) @binding(2) var<storage, read> part: array<f32>;
@group(0) @binding(3) var<storage, read> sinks: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// A span's max and sum, staged once for all the lanes.
var<workgroup> span_m: array<f32, MAX_SPLITS>;
var<workgroup> span_l: array<f32, MAX_SPLITS>;
// Lanes a merge workgroup: MERGE_WG / D parts of D lanes (a lane a dim), part r taking the r-th
// run of spans, so that a lane walks a quarter of the spans at D = 64 (at 8k keys, 2 rounds of
// loads instead of 8: H200 merge 150 -> 127 us a step; at 512 keys 106 -> 113). The parts' sums
// meet in workgroup memory, added in part order.
const MERGE_WG: u32 = 256u;
// A lane's spans, all loaded at once: the split path's head dims are at most GROUP_WG (the Rust
// side's split_fits), so a part has at most MAX_SPLITS / (MERGE_WG / GROUP_WG) of them.
const MERGE_LOADS: u32 = MAX_SPLITS * GROUP_WG / MERGE_WG;
const_assert MERGE_WG % GROUP_WG == 0u;
var<workgroup> part_o: array<f32, MERGE_WG>;
var<workgroup> part_den: array<f32, MERGE_WG>;

@compute @workgroup_size(MERGE_WG)
fn merge(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let t = wg.y;
    let d = p.head_dim;
    if t >= step.tokens {
        return;
    }
    let splits = step.splits;
    let base = (t * p.n_heads + h) * MAX_SPLITS * (d + 2u);
    let parts = MERGE_WG / d;
    let r = lid / d;
    let dim = lid % d;
    let per = (splits + parts - 1u) / parts;
    let c0 = min(splits, r * per);
    let c_end = select(c0, min(splits, (r + 1u) * per), r < parts);
    // The lane's spans' outputs, in flight with the spans' maxima and sums (which they do not
    // wait for; their loads after the barrier took one more round trip).
    var po: array<f32, MERGE_LOADS>;
    for (var u = 0u; u < MERGE_LOADS; u++) {
        if c0 + u < c_end {
            po[u] = part[base + (c0 + u) * (d + 2u) + dim];
        }
    }
    for (var c = lid; c < splits; c += MERGE_WG) {
        span_m[c] = part[base + c * (d + 2u) + d];
        span_l[c] = part[base + c * (d + 2u) + d + 1u];
    }
    workgroupBarrier();
    var mx = sinks[h];
    for (var c = 0u; c < splits; c++) {
        mx = max(mx, span_m[c]);
    }
    // Added in span order.
    var den = 0.0;
    var o = 0.0;
    for (var u = 0u; u < MERGE_LOADS; u++) {
        let c = c0 + u;
        if c < c_end {
            let w = exp(span_m[c] - mx);
            den += w * span_l[c];
            o += w * po[u];
        }
    }
    if r < parts {
        part_o[lid] = o;
        part_den[lid] = den;
    }
    workgroupBarrier();
    if lid < d {
        var den = exp(sinks[h] - mx);
        var o = 0.0;
        for (var q = 0u; q < parts; q++) {
            den += part_den[q * d + lid];
            o += part_o[q * d + lid];
        }
        out[t * p.n_heads * d + h * d + lid] = o / den;
    }
}
#endif
