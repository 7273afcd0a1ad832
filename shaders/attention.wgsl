#ifdef COOP
enable wgpu_cooperative_matrix;
#endif
// Causal attention with sinks, sliding window and GQA for passes of many tokens (prefill).
// Query head h reads KV head h / (NH / NKV). The sink is a learned logit per head that joins the
// softmax denominator only: p_j = exp(s_j - m) / (sum exp(s_j - m) + exp(sink - m)). Starting the
// online softmax at m = sink, l = 1 includes it exactly once.
// Bindings: tokens [T], qkv [T, (NH + 2 NKV) * D] (q already rotated), k_cache, v_cache (the
// paged pools, read through kv_table: common/kv_table.wgsl), sinks [NH] f32, out [T, NH * D] f32,
// kv_table [seqs, entries] u32.
// main: one workgroup per (query head, token), any head dim up to MAX_D. Grid: (NH, T). Keys are
//   visited in chunks of WG: one score per thread, then the chunk's contribution to each output
//   dim. Keys are read 4 dims per load (D is a multiple of 4).
// tiled (head dims up to TD, GQA groups dividing ROWS): one workgroup per (KV head, ROWS / G
//   consecutive tokens), whose ROWS query rows (the G heads of the KV head for each token) share
//   every key and value it loads: keys stream through workgroup memory BK at a time, each row
//   keeps an online softmax (flash attention). A row's TPR threads each score BK / TPR keys
//   and accumulate every TPR-th 4 output dims. Grid: (NKV, ceil(T / (ROWS / G))).
// coop (COOP, with KV_F16; head dim TD, GQA groups dividing QR): the tensor-core twin of tiled for
//   the `fast` precision: QR query rows (QR / G tokens, the G heads of one KV head each) per
//   workgroup, CK keys a step; S = Q K^T and O += P V on 16x16x16 f16 matrices with f32 sums, the
//   output kept in its matrices and rescaled only when a row's max has grown by LAG; the online
//   softmax in f32 between them (q scaled, then rounded to f16; p rounded to f16 for the product).
//   Grid: (NKV, ceil(T / (QR / G))), the last tiles (the most keys) first.
// Variants: KV_F16 (cache stored in f16, math in f32); COOP (the coop entry only).
#include "common/kv_table.wgsl"
#include "common/step.wgsl"

#include "common/attention_params.wgsl"
@group(0) @binding(2) var<storage, read> tokens: array<TokenInfo>;
@group(0) @binding(6) var<storage, read> sinks: array<f32>;
@group(0) @binding(8) var<storage, read> kv_table: array<u32>;
#ifdef COOP
@group(0) @binding(3) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> k_cache: array<vec4<kv>>;
@group(0) @binding(5) var<storage, read> v_cache: array<vec4<kv>>;
@group(0) @binding(7) var<storage, read_write> out: array<vec4<f32>>;
#else
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read> k_cache: array<vec4<kv>>;
@group(0) @binding(5) var<storage, read> v_cache: array<kv>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
#endif

const NEG: f32 = -3.0e38;

// The visible keys of a token: [first, pos].
fn first_key(pos: u32) -> u32 {
    if p.window > 0u && pos + 1u > p.window {
        return pos + 1u - p.window;
    }
    return 0u;
}

// The end of a tile of `rows` query rows (the G heads of a KV head for each of rows / G tokens)
// that starts at token t0.
fn tile_end(t0: u32, rows: u32) -> u32 {
    return min(t0 + rows / (p.n_heads / p.n_kv), step.tokens);
}

// The tiled kernels take a tile's tokens run by run of one sequence (a run's rows share its keys):
// the run from token ta (up to t_end), its sequence and the keys its tokens see together.
struct Run {
    seq: u32,
    end: u32,
    k_lo: u32,
    k_hi: u32,
}

fn token_run(ta: u32, t_end: u32) -> Run {
    var r = Run(tokens[ta].seq, ta, 0xffffffffu, 0u);
    while r.end < t_end && tokens[r.end].seq == r.seq {
        r.k_lo = min(r.k_lo, first_key(tokens[r.end].pos));
        r.k_hi = max(r.k_hi, tokens[r.end].pos);
        r.end++;
    }
    return r;
}

#ifndef COOP
const WG: u32 = 64u;
const MAX_D: u32 = 256u;
const DPT: u32 = MAX_D / WG;

var<workgroup> qs: array<vec4<f32>, MAX_D / 4u>;
var<workgroup> score: array<f32, WG>;
var<workgroup> prob: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let t = wg.y;
    if t >= step.tokens {
        return;
    }
    let tok = tokens[t];
    let d = p.head_dim;
    let kvh = h / (p.n_heads / p.n_kv);
    let stride = (p.n_heads + 2u * p.n_kv) * d;
    let q0 = t * stride + h * d;
    for (var i = lid; i < d / 4u; i += WG) {
        qs[i] = vec4<f32>(qkv[q0 + 4u * i], qkv[q0 + 4u * i + 1u], qkv[q0 + 4u * i + 2u],
                          qkv[q0 + 4u * i + 3u]);
    }
    workgroupBarrier();

    var start = 0u;
    if p.window > 0u && tok.pos + 1u > p.window {
        start = tok.pos + 1u - p.window;
    }
    var m = sinks[h];
    var l = 1.0;
    var acc: array<f32, DPT>;
    for (var base = start; base <= tok.pos; base += WG) {
        let n = min(WG, tok.pos + 1u - base);
        var s = NEG;
        if lid < n {
            let kb = kv_at(tok.seq, base + lid, kvh) / 4u;
            var dot_qk = 0.0;
            for (var i = 0u; i < d / 4u; i++) {
                dot_qk += dot(qs[i], vec4<f32>(k_cache[kb + i]));
            }
            s = dot_qk * p.scale;
        }
        score[lid] = s;
        workgroupBarrier();
        var m_chunk = NEG;
        for (var j = 0u; j < n; j++) {
            m_chunk = max(m_chunk, score[j]);
        }
        let m_new = max(m, m_chunk);
        let corr = exp(m - m_new);
        // Each key's weight once, shared by every output dim.
        prob[lid] = select(0.0, exp(s - m_new), lid < n);
        workgroupBarrier();
        var psum = 0.0;
        for (var j = 0u; j < n; j++) {
            psum += prob[j];
        }
        l = l * corr + psum;
        for (var k = 0u; k < DPT; k++) {
            let i = lid + k * WG;
            if i < d {
                var a = acc[k] * corr;
                for (var j = 0u; j < n; j++) {
                    let vb = kv_at(tok.seq, base + j, kvh);
                    a += prob[j] * f32(v_cache[vb + i]);
                }
                acc[k] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var k = 0u; k < DPT; k++) {
        let i = lid + k * WG;
        if i < d {
            out[t * p.n_heads * d + h * d + i] = acc[k] / l;
        }
    }
}

// The tiled kernel's shape: query rows per workgroup, threads per row, keys per tile, and the
// largest head dim (the Rust side reads these lines).
const ROWS: u32 = 32u;
const TPR: u32 = 4u;
const BK: u32 = 16u;
const TD: u32 = 64u;

// Key rows padded by one vec4 and score rows by one float: the four threads of a row read keys
// c, c + 4, ... and 8 rows of a warp read their scores at once, which without the padding fall
// in the same memory banks.
const KP4: u32 = TD / 4u + 1u;
const SBK: u32 = BK + 1u;
var<workgroup> k_tile: array<vec4<f32>, BK * KP4>;
var<workgroup> v_tile: array<vec4<f32>, BK * TD / 4u>;
var<workgroup> s_tile: array<f32, ROWS * SBK>;

@compute @workgroup_size(ROWS * TPR)
fn tiled(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let group = p.n_heads / p.n_kv;
    let kvh = wg.x;
    let t0 = wg.y * (ROWS / group);
    let t_end = tile_end(t0, ROWS);
    let d4 = p.head_dim / 4u;
    // This thread's row: token tq, query head h; c picks its keys and output dims.
    let r = lid / TPR;
    let c = lid % TPR;
    let tq = t0 + r / group;
    let h = kvh * group + r % group;
    let live = tq < t_end;
    var tok: TokenInfo;
    var q: array<vec4<f32>, TD / 4u>;
    var m = 0.0;
    if live {
        tok = tokens[tq];
        let q0 = (tq * (p.n_heads + 2u * p.n_kv) + h) * p.head_dim;
        for (var i = 0u; i < TD / 4u; i++) {
            if i < d4 {
                let b = q0 + 4u * i;
                q[i] = vec4<f32>(qkv[b], qkv[b + 1u], qkv[b + 2u], qkv[b + 3u]) * p.scale;
            }
        }
        m = sinks[h];
    }
    let lo = first_key(tok.pos);
    var l = 1.0;
    var acc: array<vec4<f32>, TD / 16u>;
    var ta = t0;
    while ta < t_end {
        let run = token_run(ta, t_end);
        let mine = live && tq >= ta && tq < run.end;
        for (var kb = run.k_lo; kb <= run.k_hi; kb += BK) {
            workgroupBarrier();
            for (var u = lid; u < BK * d4; u += ROWS * TPR) {
                let j = u / d4;
                let i = u % d4;
                var kv4 = vec4<f32>(0.0);
                var vv4 = vec4<f32>(0.0);
                if kb + j <= run.k_hi {
                    let at = kv_at(run.seq, kb + j, kvh);
                    kv4 = vec4<f32>(k_cache[at / 4u + i]);
                    let v0 = at + 4u * i;
                    vv4 = vec4<f32>(f32(v_cache[v0]), f32(v_cache[v0 + 1u]), f32(v_cache[v0 + 2u]),
                                    f32(v_cache[v0 + 3u]));
                }
                k_tile[j * KP4 + i] = kv4;
                v_tile[j * (TD / 4u) + i] = vv4;
            }
            workgroupBarrier();
            for (var jj = 0u; jj < BK / TPR; jj++) {
                let j = c + jj * TPR;
                let key = kb + j;
                var sc = NEG;
                if mine && key >= lo && key <= tok.pos {
                    var dq = 0.0;
                    // A constant trip count keeps q in registers (indexed by d4, it went to
                    // memory).
                    for (var i = 0u; i < TD / 4u; i++) {
                        if i < d4 {
                            dq += dot(q[i], k_tile[j * KP4 + i]);
                        }
                    }
                    sc = dq;
                }
                s_tile[r * SBK + j] = sc;
            }
            workgroupBarrier();
            var m_new = m;
            for (var j = 0u; j < BK; j++) {
                m_new = max(m_new, s_tile[r * SBK + j]);
            }
            let corr = exp(m - m_new);
            l *= corr;
            for (var a = 0u; a < TD / 16u; a++) {
                acc[a] *= corr;
            }
            for (var j = 0u; j < BK; j++) {
                let pj = exp(s_tile[r * SBK + j] - m_new);
                l += pj;
                for (var a = 0u; a < TD / 16u; a++) {
                    let i = c + a * TPR;
                    if i < d4 {
                        acc[a] += pj * v_tile[j * (TD / 4u) + i];
                    }
                }
            }
            m = m_new;
        }
        ta = run.end;
    }
    if live {
        let o = (tq * p.n_heads + h) * p.head_dim;
        for (var a = 0u; a < TD / 16u; a++) {
            let i = c + a * TPR;
            if i < d4 {
                let v = acc[a] / l;
                out[o + 4u * i] = v.x;
                out[o + 4u * i + 1u] = v.y;
                out[o + 4u * i + 2u] = v.z;
                out[o + 4u * i + 3u] = v.w;
            }
        }
    }
}
#endif

#ifdef COOP
// The coop kernel's shape: query rows per workgroup (eight subgroups of 16 rows), keys a step, and
// the head dim it takes (the Rust side reads QR, CK and CD). Each step's keys and values are
// loaded once for all QR rows: with 64 rows (8 tokens of a KV head's 8 query heads) those loads,
// every tile reading all its keys again from L2, were 60% of the kernel; 128 rows took an
// 8192-token prefill's attention from 208 to 87 ms on an H100 (PERF.md v0.50). 128 rows fill the
// 48 KB of workgroup memory that NVIDIA's Vulkan driver allows.
const QR: u32 = 128u;
const CK: u32 = 32u;
const CD: u32 = 64u;
const CWG: u32 = 2u * QR;
// Tile rows in vec4<f16> units, padded by 8 values so that a fragment's 16 rows spread over the
// memory banks.
const DP4: u32 = (CD + 8u) / 4u;
const PP4: u32 = (CK + 8u) / 4u;
// Stage rows in vec4<f32> units, as wide as half the output, which holds a step's scores too (CK
// at most CD / 2, asserted): 10 = 2 (mod 8), so the 4 rows x 2 threads of a quarter warp reading
// interleaved vec4s hit distinct banks.
const SP4: u32 = CD / 8u + 2u;
const_assert CK <= CD / 2u;
// How far a row's scores may rise above the max its output is scaled to before it is rescaled:
// the products' p = exp(s - m) stay below exp(LAG) ~ 245, exact enough in f16 (FlashAttention-4's
// lazy rescaling: most steps then leave the output in its matrices).
const LAG: f32 = 5.5;
// The queries, then (once every subgroup holds its query fragments) each step's weights P in rows
// of PP4: one array for both, and the output staged in halves, keep QR = 128 within 48 KB.
var<workgroup> q_s: array<vec4<f16>, QR * DP4>;
var<workgroup> k_s: array<vec4<f16>, CK * DP4>;
var<workgroup> v_s: array<vec4<f16>, CK * DP4>;
// Each subgroup's own 16 rows: a step's scores, or half its output when rescaled and at the end.
// Only that subgroup touches them, so a subgroup barrier orders them.
var<workgroup> stage: array<vec4<f32>, QR * SP4>;
// Set in a step when some row's scores outgrew its max (then every subgroup rescales: the branch
// must be uniform for the matrix loads and stores in it).
var<workgroup> rescale: u32;

fn to_h4(v: vec4<f32>) -> vec4<f16> {
    return vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
}

// A thread's share of one step's keys and values: 4 dims of keys u / (CD / 4) for items
// u = lid + n CWG (zeros past k_hi).
const KV_ITEMS: u32 = CK * CD / 4u / CWG;
const_assert KV_ITEMS * CWG == CK * CD / 4u;
struct KvFetch {
    k: array<vec4<kv>, KV_ITEMS>,
    v: array<vec4<kv>, KV_ITEMS>,
}

fn kv_fetch(lid: u32, seq: u32, kvh: u32, kb: u32, k_hi: u32) -> KvFetch {
    var f: KvFetch;
    for (var n = 0u; n < KV_ITEMS; n++) {
        let u = lid + n * CWG;
        let j = u / (CD / 4u);
        if kb + j <= k_hi {
            let at = kv_at(seq, kb + j, kvh) / 4u + u % (CD / 4u);
            f.k[n] = k_cache[at];
            f.v[n] = v_cache[at];
        }
    }
    return f;
}

fn kv_stash(lid: u32, f: KvFetch) {
    for (var n = 0u; n < KV_ITEMS; n++) {
        let u = lid + n * CWG;
        let at = (u / (CD / 4u)) * DP4 + u % (CD / 4u);
        k_s[at] = f.k[n];
        v_s[at] = f.v[n];
    }
}

// acc + P V for output dims 16 n .. 16 n + 15 (pa0, pa1: the step's keys 0-15 and 16-31).
fn pv_add(pa0: coop_mat16x16<f16, A>, pa1: coop_mat16x16<f16, A>, n: u32,
          acc: coop_mat16x16<f32, C>) -> coop_mat16x16<f32, C> {
    let o = coopMultiplyAdd(pa0, coopLoadT<coop_mat16x16<f16, B>>(&v_s[4u * n], DP4), acc);
    return coopMultiplyAdd(pa1, coopLoadT<coop_mat16x16<f16, B>>(&v_s[16u * DP4 + 4u * n], DP4), o);
}

// Half the output (two 16-dim matrices) into this subgroup's stage rows from s0 (once its
// threads are done reading them), readable by all its threads on return.
fn stage_half(s0: u32, a: coop_mat16x16<f32, C>, b: coop_mat16x16<f32, C>) {
    subgroupBarrier();
    coopStoreT(a, &stage[s0], SP4);
    coopStoreT(b, &stage[s0 + 4u], SP4);
    subgroupBarrier();
}

// Row r's staged half times its correction, readable by all the subgroup's threads on return.
fn rescale_half(r: u32, hh: u32, corr: f32) {
    for (var a = 0u; a < CD / 16u; a++) {
        stage[r * SP4 + 2u * a + hh] *= corr;
    }
    subgroupBarrier();
}

// Row r's staged half (dims 32 half ..) over l into out from o_row.
fn store_half(r: u32, hh: u32, live: bool, o_row: u32, half: u32, l: f32) {
    if live {
        for (var a = 0u; a < CD / 16u; a++) {
            out[o_row + half * (CD / 8u) + 2u * a + hh] = stage[r * SP4 + 2u * a + hh] / l;
        }
    }
}

@compute @workgroup_size(CWG)
fn coop(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let group = p.n_heads / p.n_kv;
    let kvh = wg.x;
    // The last tiles see the most keys: they start first, so the short ones fill the tail.
    let t0 = (nwg.y - 1u - wg.y) * (QR / group);
    let t_end = tile_end(t0, QR);
    // Subgroup sg multiplies rows 16 sg ..; thread lid keeps row r's softmax state with its
    // partner lid ^ 1, and takes vec4 2 a + hh of the row's scores and outputs.
    let sg = lid / 32u;
    let r = lid / 2u;
    let hh = lid % 2u;
    let tq = t0 + r / group;
    let h = kvh * group + r % group;
    let live = tq < t_end;
    for (var u = lid; u < QR * CD / 4u; u += CWG) {
        let row = u / (CD / 4u);
        let t = t0 + row / group;
        var qv = vec4<f32>(0.0);
        if t < t_end {
            let hq = kvh * group + row % group;
            qv = qkv[(t * (p.n_heads + 2u * p.n_kv) + hq) * (CD / 4u) + u % (CD / 4u)] * p.scale;
        }
        q_s[row * DP4 + u % (CD / 4u)] = to_h4(qv);
    }
    var tok: TokenInfo;
    var m = 0.0;
    if live {
        tok = tokens[tq];
        m = sinks[h];
    }
    let lo = first_key(tok.pos);
    var l = 1.0;
    var o0 = coop_mat16x16<f32, C>();
    var o1 = coop_mat16x16<f32, C>();
    var o2 = coop_mat16x16<f32, C>();
    var o3 = coop_mat16x16<f32, C>();
    let s0 = 16u * sg * SP4;
    workgroupBarrier();
    let q0 = 16u * sg * DP4;
    let qa0 = coopLoadT<coop_mat16x16<f16, A>>(&q_s[q0], DP4);
    let qa1 = coopLoadT<coop_mat16x16<f16, A>>(&q_s[q0 + 4u], DP4);
    let qa2 = coopLoadT<coop_mat16x16<f16, A>>(&q_s[q0 + 8u], DP4);
    let qa3 = coopLoadT<coop_mat16x16<f16, A>>(&q_s[q0 + 12u], DP4);
    var ta = t0;
    while ta < t_end {
        let run = token_run(ta, t_end);
        let mine = live && tq >= ta && tq < run.end;
        var f = kv_fetch(lid, run.seq, kvh, run.k_lo, run.k_hi);
        for (var kb = run.k_lo; kb <= run.k_hi; kb += CK) {
            workgroupBarrier();
            kv_stash(lid, f);
            if lid == 0u {
                rescale = 0u;
            }
            if kb + CK <= run.k_hi {
                f = kv_fetch(lid, run.seq, kvh, kb + CK, run.k_hi);
            }
            workgroupBarrier();
            // S = Q K^T: this subgroup's 16 rows by the step's keys, 16 at a time.
            for (var n = 0u; n < CK / 16u; n++) {
                let k0 = 16u * n * DP4;
                var s = coop_mat16x16<f32, C>();
                s = coopMultiplyAdd(qa0, coopLoad<coop_mat16x16<f16, B>>(&k_s[k0], DP4), s);
                s = coopMultiplyAdd(qa1, coopLoad<coop_mat16x16<f16, B>>(&k_s[k0 + 4u], DP4), s);
                s = coopMultiplyAdd(qa2, coopLoad<coop_mat16x16<f16, B>>(&k_s[k0 + 8u], DP4), s);
                s = coopMultiplyAdd(qa3, coopLoad<coop_mat16x16<f16, B>>(&k_s[k0 + 12u], DP4), s);
                coopStoreT(s, &stage[s0 + 4u * n], SP4);
            }
            subgroupBarrier();
            // Row r's scores for keys 8 a + 4 hh .. (masked), and their max over the row.
            var sc: array<vec4<f32>, CK / 8u>;
            var mx = NEG;
            for (var a = 0u; a < CK / 8u; a++) {
                let v = stage[r * SP4 + 2u * a + hh];
                for (var c = 0u; c < 4u; c++) {
                    let key = kb + 8u * a + 4u * hh + c;
                    let ok = mine && key >= lo && key <= tok.pos;
                    sc[a][c] = select(NEG, v[c], ok);
                }
                mx = max(mx, max(max(sc[a].x, sc[a].y), max(sc[a].z, sc[a].w)));
            }
            mx = max(mx, subgroupShuffleXor(mx, 1u));
            // Rescale the outputs only when a row has outgrown its max.
            if mx > m + LAG {
                rescale = 1u;
            }
            if workgroupUniformLoad(&rescale) != 0u {
                let m_new = max(m, mx);
                let corr = exp(m - m_new);
                l *= corr;
                m = m_new;
                stage_half(s0, o0, o1);
                rescale_half(r, hh, corr);
                o0 = coopLoadT<coop_mat16x16<f32, C>>(&stage[s0], SP4);
                o1 = coopLoadT<coop_mat16x16<f32, C>>(&stage[s0 + 4u], SP4);
                stage_half(s0, o2, o3);
                rescale_half(r, hh, corr);
                o2 = coopLoadT<coop_mat16x16<f32, C>>(&stage[s0], SP4);
                o3 = coopLoadT<coop_mat16x16<f32, C>>(&stage[s0 + 4u], SP4);
            }
            var ps = 0.0;
            for (var a = 0u; a < CK / 8u; a++) {
                let pv = exp(sc[a] - m);
                ps += pv.x + pv.y + pv.z + pv.w;
                q_s[r * PP4 + 2u * a + hh] = vec4<f16>(pv);
            }
            l += ps + subgroupShuffleXor(ps, 1u);
            subgroupBarrier();
            // This step's P V, added to the output's four 16-dim matrices.
            let pa0 = coopLoadT<coop_mat16x16<f16, A>>(&q_s[16u * sg * PP4], PP4);
            let pa1 = coopLoadT<coop_mat16x16<f16, A>>(&q_s[16u * sg * PP4 + 4u], PP4);
            o0 = pv_add(pa0, pa1, 0u, o0);
            o1 = pv_add(pa0, pa1, 1u, o1);
            o2 = pv_add(pa0, pa1, 2u, o2);
            o3 = pv_add(pa0, pa1, 3u, o3);
        }
        ta = run.end;
    }
    let o_row = (tq * p.n_heads + h) * (CD / 4u);
    stage_half(s0, o0, o1);
    store_half(r, hh, live, o_row, 0u, l);
    stage_half(s0, o2, o3);
    store_half(r, hh, live, o_row, 1u, l);
}
#endif
