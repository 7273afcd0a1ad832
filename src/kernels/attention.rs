//! Attention with sinks, sliding window and GQA over the KV cache: for passes of a few tokens
//! (decode) split over the keys with one workgroup per query head (few spans) or KV head and span
//! (`attention_split.wgsl`, then a merge), for larger passes tiles of queries (`attention.wgsl`).

use crate::error::{Error, Result};
use crate::gpu::mirror::wgsl_mirror;
use crate::gpu::shader::wgsl_const;
use crate::gpu::{Count, Dispatch, Gpu, Grid, ShaderKey};

wgsl_mirror! {
    "common/attention_params.wgsl", Params:
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub(crate) struct Params {
        pub n_heads: u32,
        pub n_kv: u32,
        pub head_dim: u32,
        /// Entries of each slot's block table.
        pub entries: u32,
        /// Keys visible to a query: 0 for all earlier positions, else the sliding window.
        pub window: u32,
        pub scale: f32,
        pub _pad: [u32; 2],
    }
}

/// Largest head dim the kernel's shared q buffer holds (MAX_D in the shader).
pub const MAX_HEAD_DIM: u32 = 256;

/// out: [T, NH * D] from q in qkv: [T, (NH + 2 NKV) * D] and the paged caches read through the
/// block table [seqs, entries] (`model::kv_cache`).
pub struct Attention<'a> {
    pub tokens: &'a wgpu::Buffer,
    pub qkv: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub table: &'a wgpu::Buffer,
    pub sinks: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    /// Scratch for the split path: [split_max_tokens(), NH, max_splits(), D + 2] f32
    /// (`partials_bytes`).
    pub partials: &'a wgpu::Buffer,
}

/// Most spans a token's keys are split into (MAX_SPLITS in the shader).
pub fn max_splits() -> Result<u32> {
    wgsl_const("attention_split.wgsl", "MAX_SPLITS")
}

/// Most tokens of a pass that takes the split path (MAX_TOKENS in the shader).
pub fn split_max_tokens() -> Result<u32> {
    wgsl_const("attention_split.wgsl", "MAX_TOKENS")
}

/// Bytes of the split path's scratch for passes of up to `max_tokens` tokens (the split path
/// takes at most split_max_tokens() of them) and `n_heads` heads of `head_dim`.
pub fn partials_bytes(max_tokens: u32, n_heads: u32, head_dim: u32) -> Result<u64> {
    Ok(max_tokens.min(split_max_tokens()?) as u64
        * n_heads as u64
        * max_splits()? as u64
        * (head_dim as u64 + 2)
        * 4)
}

/// How split attention cuts a token's keys into spans: a short context takes one span (no
/// merge dispatch); longer ones spans of at least `min_span` keys, as many as `max_splits`
/// allows, so that a workgroup's serial work stays short.
#[derive(Clone, Copy, Debug)]
pub struct SplitRule {
    pub one_span: u32,
    pub min_span: u32,
    pub max_splits: u32,
}

impl SplitRule {
    /// The rule as the shader's constants set it.
    pub fn from_shader() -> Result<SplitRule> {
        let c = |name| wgsl_const("attention_split.wgsl", name);
        Ok(SplitRule {
            one_span: c("ONE_SPAN")?,
            min_span: c("MIN_SPAN")?.max(1),
            max_splits: c("MAX_SPLITS")?,
        })
    }

    /// (spans, positions per span) for a pass whose tokens see at most `keys` positions.
    pub fn split(&self, keys: u32) -> (u32, u32) {
        let splits = if keys <= self.one_span {
            1
        } else {
            keys.div_ceil(self.min_span).clamp(1, self.max_splits)
        };
        (splits, keys.div_ceil(splits).max(1))
    }

    /// Whether a sliding window of `window` keys always fits one span, so that its layer takes
    /// one span a token from the window's start and never merges.
    pub fn window_fits_one_span(&self, window: u32) -> bool {
        window > 0 && self.split(window).0 == 1
    }
}

/// Whether the split path serves this shape (a lane per head dim in one workgroup, few query
/// heads per KV head).
fn split_fits(p: &Params) -> Result<bool> {
    let group = p.n_heads / p.n_kv;
    let lanes = wgsl_const("attention_split.wgsl", "GROUP_WG")?
        .min(wgsl_const("attention_split.wgsl", "HEAD_WG")?);
    Ok(p.head_dim <= lanes && group <= wgsl_const("attention_split.wgsl", "MAX_G")?)
}

/// `kv_f16` reads a cache stored in f16; `coop` lets passes above the split path's run on the
/// tensor cores where the shape allows (`Caps::coop` must hold; the `fast` precision).
pub(crate) fn build(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    a: &Attention,
    p: Params,
    kv_f16: bool,
    coop: bool,
) -> Result<Vec<Dispatch>> {
    if p.head_dim > MAX_HEAD_DIM
        || !p.head_dim.is_multiple_of(4)
        || p.n_kv == 0
        || !p.n_heads.is_multiple_of(p.n_kv)
    {
        return Err(Error::Unsupported(format!(
            "attention with {} heads, {} kv heads, head dim {}",
            p.n_heads, p.n_kv, p.head_dim
        )));
    }
    let split_max = if split_fits(&p)? {
        split_max_tokens()?
    } else {
        0
    };
    let site = Site {
        gpu,
        step,
        a,
        p,
        kv_f16,
    };
    let mut out = Vec::new();
    if split_max > 0 {
        out = site.split_dispatches(split_max)?;
    }
    out.push(
        site.prefill_dispatch(coop)?
            .only_for(Count::Tokens, split_max + 1..=u32::MAX),
    );
    Ok(out)
}

/// What every attention dispatch of a layer is made from.
struct Site<'a> {
    gpu: &'a Gpu,
    step: &'a wgpu::Buffer,
    a: &'a Attention<'a>,
    p: Params,
    kv_f16: bool,
}

impl Site<'_> {
    fn dispatch(&self, key: &ShaderKey, bufs: &[&wgpu::Buffer], grid: Grid) -> Result<Dispatch> {
        let params = bytemuck::bytes_of(&self.p);
        Dispatch::new(self.gpu, key, self.step, params, bufs, grid)
    }

    /// The split path's dispatches for passes of up to `split_max` tokens: one tier by the
    /// pass's spans in all (one query head a workgroup, two, a KV head's group), the
    /// long-context tier for tokens of many spans, and the merge where tokens have more than one
    /// span.
    fn split_dispatches(&self, split_max: u32) -> Result<Vec<Dispatch>> {
        let (gpu, a, p) = (self.gpu, self.a, self.p);
        let mut out = Vec::new();
        let bufs = [
            a.tokens, a.qkv, a.k_cache, a.v_cache, a.partials, a.sinks, a.out, a.table,
        ];
        let whole_window = SplitRule::from_shader()?.window_fits_one_span(p.window);
        let spans = if whole_window {
            Count::Tokens
        } else {
            Count::TokenSplits
        };
        // A workgroup per query head for passes of few spans in all, per two heads for more
        // (where a group's heads pair up), per KV head beyond.
        let c = |name| wgsl_const("attention_split.wgsl", name);
        let pairs = (p.n_heads / p.n_kv).is_multiple_of(2);
        let two_max = c("TWO_HEADS_MAX_SPANS")?;
        let one_max = if pairs {
            c("ONE_HEAD_MAX_SPANS")?.min(two_max)
        } else {
            two_max
        };
        let key_groups = key_groups_fit(gpu, p.head_dim);
        // Tokens cut into many spans (long contexts) take the staged tier where it fits, every pass
        // size alike; the tiers above serve the rest.
        let staged_min = c("STAGED_MIN_SPLITS")?.max(1);
        let long =
            (!whole_window && staged_fits(gpu, &p, self.kv_f16)?).then_some(SplitHeads::Staged);
        let short_splits = if long.is_some() {
            1..=staged_min - 1
        } else {
            1..=u32::MAX
        };
        let tiers = [
            (
                SplitHeads::One,
                p.n_heads,
                1..=one_max,
                short_splits.clone(),
            ),
            (
                SplitHeads::Two,
                p.n_heads / 2,
                one_max + 1..=two_max,
                short_splits.clone(),
            ),
            (
                SplitHeads::Group,
                p.n_kv,
                two_max + 1..=u32::MAX,
                short_splits,
            ),
        ];
        let long = long.map(|heads| (heads, p.n_kv, 1..=u32::MAX, staged_min..=u32::MAX));
        for (heads, x, range, splits) in tiers.into_iter().chain(long) {
            if range.is_empty() {
                continue;
            }
            let key = split_key(heads, self.kv_f16, gpu.caps.subgroups, key_groups)
                .define_if("WHOLE_WINDOW", whole_window);
            out.push(
                self.dispatch(&key, &bufs, Grid::new(x, spans, 1))?
                    .only_for(Count::Tokens, 1..=split_max)
                    .only_for(spans, range)
                    .only_for(Count::Splits, splits),
            );
        }
        if !whole_window {
            let key = ShaderKey::new("attention_split.wgsl", "merge").define_if("MERGE", true);
            let bufs = [a.partials, a.sinks, a.out];
            let grid = Grid::new(p.n_heads, Count::Tokens, 1);
            out.push(
                self.dispatch(&key, &bufs, grid)?
                    .only_for(Count::Tokens, 1..=split_max)
                    .only_for(Count::Splits, 2..=u32::MAX),
            );
        }
        Ok(out)
    }

    /// The dispatch for passes above the split path's: query tiles that share each key load where
    /// the shape allows (on the tensor cores where they may be used), else one workgroup per head
    /// and token.
    fn prefill_dispatch(&self, coop: bool) -> Result<Dispatch> {
        let (a, p, kv_f16) = (self.a, self.p, self.kv_f16);
        let bufs = [
            a.tokens, a.qkv, a.k_cache, a.v_cache, a.sinks, a.out, a.table,
        ];
        let group = p.n_heads / p.n_kv;
        let coop_rows = wgsl_const("attention.wgsl", "QR")?;
        let rows = wgsl_const("attention.wgsl", "ROWS")?;
        let (entry, x, per_wg) = if coop
            && kv_f16
            && p.head_dim == wgsl_const("attention.wgsl", "CD")?
            && coop_rows % group == 0
            && coop_fits(self.gpu)?
        {
            ("coop", p.n_kv, coop_rows / group)
        } else if p.head_dim <= wgsl_const("attention.wgsl", "TD")? && rows % group == 0 {
            ("tiled", p.n_kv, rows / group)
        } else {
            ("main", p.n_heads, 1)
        };
        let grid = Grid::new(x, Count::Tokens, per_wg);
        self.dispatch(&prefill_key(entry, kv_f16), &bufs, grid)
    }
}

/// How many query heads a split-attention workgroup takes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SplitHeads {
    One,
    Two,
    /// All G heads of its KV head.
    Group,
    /// All G heads of its KV head, chunks of keys staged in workgroup memory and taken in two
    /// phases: weights (scores, max and exponentials), values (`staged`).
    Staged,
}

/// Whether the staged tier serves this shape on this adapter: head_dim STAGE_D, at most MAX_G
/// heads a group, subgroups of at least MIN_SUBGROUP lanes, and the workgroup memory it takes.
fn staged_fits(gpu: &Gpu, p: &Params, kv_f16: bool) -> Result<bool> {
    let c = |name| wgsl_const("attention_split.wgsl", name);
    let (lanes, d, max_g, min_sub) = (
        c("STAGE_WG")?,
        c("STAGE_D")?,
        c("MAX_G")?,
        c("MIN_SUBGROUP")?,
    );
    // f32 caches take half the keys a chunk, in the same bytes; the queries are in the cache's
    // type.
    let (keys, value_bytes) = if kv_f16 {
        (c("CHUNK")?, 2)
    } else {
        (c("CHUNK")? / 2, 4)
    };
    // The chunk's keys and values (at the end the key sets' f32 sums of every head's dims: a
    // lane's), the queries, the chunk's weights (f32), the subgroups' maxima, each head's
    // correction and max, the token's TokenInfo.
    let stage = (2 * keys * d * value_bytes).max(lanes / (d / 2) * max_g * d * 4);
    let queries = max_g * d * value_bytes;
    let bytes = stage + queries + keys * max_g * 4 + lanes / min_sub * 4 + 2 * max_g * 4 + 64;
    Ok(gpu.caps.subgroups
        && p.head_dim == d
        && p.n_heads / p.n_kv <= max_g
        && gpu.caps.subgroup_min >= min_sub
        && bytes <= gpu.caps.workgroup_bytes)
}

/// Whether the adapter gives the tensor-core prefill tile (`coop` in attention.wgsl) its
/// workgroup memory.
fn coop_fits(gpu: &Gpu) -> Result<bool> {
    Ok(coop_bytes()? <= gpu.caps.workgroup_bytes)
}

/// The `coop` tile's workgroup memory: QR rows of queries, then weights, in f16; a step's CK keys
/// and values in f16; each row's staged scores or half its output in f32; all rows padded by 8
/// values or 2 vec4s; the rescale flag, aligned.
fn coop_bytes() -> Result<u32> {
    let c = |name| wgsl_const("attention.wgsl", name);
    let (rows, keys, d) = (c("QR")?, c("CK")?, c("CD")?);
    Ok((rows + 2 * keys) * (d + 8) * 2 + rows * (d / 2 + 8) * 4 + 16)
}

/// Whether the one- and two-head tiers can give each key a group of head_dim / 8 lanes of one
/// subgroup (`keys` entry, KEY_GROUPS): on adapters with subgroups that are never narrower than
/// such a group.
fn key_groups_fit(gpu: &Gpu, head_dim: u32) -> bool {
    let lanes = head_dim / 8;
    gpu.caps.subgroups
        && head_dim.is_multiple_of(8)
        && lanes.is_power_of_two()
        && lanes <= gpu.caps.subgroup_min
}

/// The split kernel's key for `heads` a workgroup (WHOLE_WINDOW is the caller's to add); one or
/// two heads take the `keys` entry with `key_groups` (which needs `subgroups`), the staged tier
/// (which needs subgroups) `staged`, without naga's runtime checks: its private and workgroup
/// indices have constant bounds, and it divides by the pass's spans only in workgroups a grid of
/// tokens times spans has (H100, 32k keys: the tier 537-540 -> 518 us a step, PERF.md v0.56; the
/// other tiers lost without them, `keys` 292 -> 316 us at batch 1).
pub(crate) fn split_key(
    heads: SplitHeads,
    kv_f16: bool,
    subgroups: bool,
    key_groups: bool,
) -> ShaderKey {
    let staged = matches!(heads, SplitHeads::Staged);
    let few = matches!(heads, SplitHeads::One | SplitHeads::Two);
    let key_groups = key_groups && subgroups && few;
    let entry = match (staged, key_groups) {
        (true, _) => "staged",
        (false, true) => "keys",
        (false, false) => "split",
    };
    ShaderKey::new("attention_split.wgsl", entry)
        .define_if("SPLIT", true)
        .define_if("KEY_GROUPS", key_groups)
        .define_if("STAGED", staged)
        .define_if("FEW_HEADS", few)
        .define_if("TWO_HEADS", matches!(heads, SplitHeads::Two))
        .define_if("KV_F16", kv_f16)
        .define_if("SUBGROUPS", subgroups)
        .without_runtime_checks_if(staged)
}

/// The shader of a prefill entry of attention.wgsl (main, tiled or coop; the validation sweep
/// takes them from here). The tensor-core tiles go without naga's runtime checks: every index
/// into their private and workgroup arrays has constant bounds, their divisors are constants or
/// head counts the config checks are positive (H100, an 8192-token prefill's attention 86 -> 68
/// ms, PERF.md v0.56).
pub(crate) fn prefill_key(entry: &'static str, kv_f16: bool) -> ShaderKey {
    let coop = entry == "coop";
    ShaderKey::new("attention.wgsl", entry)
        .define_if("KV_F16", kv_f16)
        .define_if("COOP", coop)
        .without_runtime_checks_if(coop)
}

#[cfg(test)]
mod tests {
    //! RoPE, the cache write and attention together against a plain reference, over two steps
    //! (a prefill, then decode tokens) and two sequences, with a window smaller than the context.
    use super::*;
    use crate::gpu::dispatch::{StepCounts, step_buffer, submit};
    use crate::kernels::rope::{self, Rope};
    use crate::kernels::testing::*;
    use crate::model::inputs::TokenInfo;
    use crate::model::kv_cache::BlockPool;

    /// coop_fits' count against the workgroup variables naga lays out for the kernel.
    #[test]
    fn coop_bytes_match_the_shader() {
        let src = prefill_key("coop", true).source().unwrap();
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let declared: u32 = module
            .global_variables
            .iter()
            .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
            .map(|(_, g)| layouter[g.ty].size)
            .sum();
        let counted = coop_bytes().unwrap();
        assert!(
            counted >= declared && counted - declared < 16,
            "coop_fits counts {counted} bytes, the shader declares {declared}"
        );
    }

    /// How a case's scores are shaped.
    #[derive(Clone, Copy, PartialEq)]
    enum Scores {
        /// Random q, k, rotation and sinks.
        Random,
        /// Scores that grow along the keys by 0.25 a position, past the tensor-core kernel's
        /// LAG between its steps (so that it rescales its output mid-run), and exact in f16: q
        /// and k in {-1, 0, 1}, k times an integer growing with the position, no rotation, scale
        /// 1/8, sinks -8 (the remaining error is p's rounding, as in the other cases).
        Sharp,
        /// Sharp's q and k without the growth, and a peak every 32 keys (see `peak`).
        Peaks,
    }

    /// Makes a key of `Scores::Peaks` a peak where its position is 5 past a multiple of 32:
    /// its k scores PEAK (natural units) more than the peak before it with every query, all of
    /// which set their first dimension. The staged tier's chunks over an f32 cache are 32 keys,
    /// so each of a span's chunks holds one peak and outgrows the chunk before it by 159 log2
    /// units, past f32's 2^128: a running max that failed to move, or moved later than that,
    /// would overflow 2^(s - m). The top peak outweighs every other key by e^100 or more, so the
    /// output is its v to f32 precision, even where scores of this size carry rounding (the
    /// staged tier's queries carry log2(e)); such scores a few units apart would not give that.
    /// `qk`: a token's q rows then its k rows, in {-1, 0, 1}.
    fn peak(qk: &mut [f32], nh: usize, d: usize, pos: u32) {
        const PEAK: f32 = 110.0;
        for h in 0..nh {
            qk[h * d] = 1.0;
        }
        if pos % 32 == 5 {
            let k0 = 8.0 * PEAK * (1 + pos / 32) as f32;
            for (i, x) in qk[nh * d..].iter_mut().enumerate() {
                *x = if i % d == 0 { k0 } else { 0.0 };
            }
        }
    }

    gpu_test!(attention_matches_reference);
    async fn attention_matches_reference() {
        use Scores::{Peaks, Random, Sharp};
        let mut rng = seeded("attention");
        // The tensor-core path (f16 cache only) where the adapter has it.
        for (gpu, kv_f16, coop) in gpus()
            .await
            .iter()
            .flat_map(|g| [(g, false, false), (g, true, false), (g, true, true)])
            .filter(|(g, f, c)| (!f || g.caps.f16) && (!c || g.caps.coop))
        {
            let kv_bytes = if kv_f16 { 2 } else { 4 };
            // The split path serves the decode steps: one span ending in the output itself
            // (short contexts, or at most one split), or many spans of one or several 64-key
            // chunks merged after, with windows; head dim 100 always takes the per-head kernel.
            // (heads, kv heads, head dim, window, split rule (one span up to, min span, most
            // splits), tokens of seq 0's first pass)
            let shader = SplitRule::from_shader().unwrap();
            let mut staged_ran = false;
            // (at most the shader's MAX_SPLITS spans: its partials' stride)
            let rule = |one_span, min_span, max_splits: u32| SplitRule {
                one_span,
                min_span,
                max_splits: max_splits.min(shader.max_splits),
            };
            for &(nh, nkv, d, window, rule, first, scores) in &[
                (4u32, 2u32, 64u32, 0u32, rule(0, 16, 128), 13usize, Random),
                (16, 2, 64, 0, rule(0, 16, 1), 70, Random),
                (4, 2, 64, 0, shader, 70, Random),
                (4, 2, 64, 0, rule(0, 70, 128), 70, Random),
                (6, 3, 32, 5, rule(0, 16, 3), 13, Random),
                (8, 1, 32, 40, rule(0, 16, 128), 70, Random),
                (8, 2, 64, 40, shader, 70, Random),
                (2, 1, 100, 70, shader, 13, Random),
                // Head dim 48: 6 lanes a key do not tile a subgroup, so the one- and two-head
                // tiers keep a lane a key (`split`) where subgroups would otherwise give `keys`.
                (4, 2, 48, 0, shader, 13, Random),
                (4, 2, 48, 0, rule(0, 16, 128), 70, Random),
                // A window longer than one span (windows up to ONE_SPAN keys take one span
                // whatever the pass's split).
                (8, 2, 64, 150, rule(0, 16, 128), 70, Random),
                (8, 1, 64, 0, shader, 70, Sharp),
                // Over an f32 cache only (its v the output, to f32 precision).
                (8, 1, 64, 0, rule(0, 16, 8), 600, Peaks),
                // Passes of 33 to 64 tokens take the split path too (44 here): one span each,
                // or several merged after.
                (8, 2, 64, 0, shader, 40, Random),
                (8, 2, 64, 0, rule(0, 16, 128), 40, Random),
                // Many spans a token take the staged tier where it fits: spans shorter than a
                // chunk; two chunks a span with G = 8 (75 keys: 64 + 11); G = 6, whose last
                // two runs of lanes score heads past the group (zero queries); a window longer
                // than one span.
                (8, 2, 64, 0, rule(0, 4, 64), 70, Random),
                (16, 2, 64, 0, rule(0, 16, 8), 600, Random),
                (6, 1, 64, 0, rule(0, 4, 64), 70, Random),
                (8, 2, 64, 300, rule(0, 16, 64), 600, Random),
                // Head dim 128: 16 lanes a key, where subgroups are that wide (not lavapipe's 8).
                (4, 2, 128, 0, shader, 70, Random),
                (4, 2, 128, 0, rule(0, 16, 128), 70, Random),
            ] {
                if scores == Peaks && kv_f16 {
                    continue;
                }
                // Step 1: `first` tokens of seq 0 and 4 of seq 1; step 2: one token each; with a
                // window, more passes, so that blocks leave the window and are taken again.
                let mut plans = vec![vec![(0usize, first), (1, 4)], vec![(1, 1), (0, 1)]];
                if window > 0 {
                    for _ in 0..6 {
                        plans.push(vec![(0, 16), (1, 2)]);
                        plans.push(vec![(0, 3), (1, 1)]);
                    }
                }
                let max_pass = plans
                    .iter()
                    .map(|p| p.iter().map(|x| x.1).sum::<usize>())
                    .max();
                let max_pos: usize = plans
                    .iter()
                    .flatten()
                    .filter(|x| x.0 == 0)
                    .map(|x| x.1)
                    .sum();
                // The paged cache with the blocks one pass needs per sequence at most, handed
                // out in a random order.
                let block = crate::model::kv_cache::block_size().unwrap() as usize;
                let entries = max_pos.div_ceil(block);
                let per_seq = if window > 0 {
                    (window as usize + max_pass.unwrap() - 1).div_ceil(block) + 1
                } else {
                    entries
                };
                let seqs = 2usize;
                let mut free: Vec<u32> = (0..(seqs * per_seq) as u32).collect();
                for i in (1..free.len()).rev() {
                    free.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let mut tables =
                    BlockPool::new(seqs as u32, entries as u32, block as u32, window, free);
                let (nh_, nkv_, d_) = (nh as usize, nkv as usize, d as usize);
                let stride = (nh_ + 2 * nkv_) * d_;
                let sharp = scores != Random;
                let table = if sharp {
                    vec![[1.0, 0.0]; max_pos * d_ / 2]
                } else {
                    random_rope_table(&mut rng, max_pos * d_ / 2)
                };
                let sinks = if sharp {
                    vec![-8.0; nh_]
                } else {
                    random(&mut rng, nh_, 1.0)
                };
                let tb = gpu.upload("table", bytemuck::cast_slice(&table)).unwrap();
                let sb = gpu.upload("sinks", f32_bytes(&sinks)).unwrap();
                let pool = (seqs * per_seq * block * nkv_ * d_ * kv_bytes) as u64;
                let kc = gpu.storage("k", pool).unwrap();
                let vc = gpu.storage("v", pool).unwrap();
                // Reference cache: every (seq, pos) -> rotated k, v per kv head.
                let mut ref_k = vec![vec![Vec::<f32>::new(); max_pos]; seqs];
                let mut ref_v = vec![vec![Vec::<f32>::new(); max_pos]; seqs];
                let mut next_pos = [0u32; 2];
                for plan in plans {
                    let mut toks = Vec::new();
                    for &(s, n) in &plan {
                        tables.slide(s as u32, next_pos[s]);
                        for _ in 0..n {
                            let mut tok = TokenInfo::new(0, next_pos[s], s as u32);
                            tok.kv_slot[0] = tables.place(s as u32, tok.pos).unwrap().0;
                            toks.push(tok);
                            next_pos[s] += 1;
                        }
                    }
                    let rows: Vec<u32> = (0..seqs as u32).flat_map(|s| tables.row(s)).collect();
                    let kv_table = gpu.upload("kv_table", bytemuck::cast_slice(&rows)).unwrap();
                    let t = toks.len();
                    let mut qkv = random(&mut rng, t * stride, 1.0);
                    if sharp {
                        for (ti, tok) in toks.iter().enumerate() {
                            let grow = match scores {
                                Sharp => 1.0 + (tok.pos as f32 * 0.25).floor(),
                                _ => 1.0,
                            };
                            let qk = &mut qkv[ti * stride..ti * stride + (nh_ + nkv_) * d_];
                            for (i, x) in qk.iter_mut().enumerate() {
                                *x = (*x * 1.5).round() * if i < nh_ * d_ { 1.0 } else { grow };
                            }
                            if scores == Peaks {
                                peak(qk, nh_, d_, tok.pos);
                            }
                        }
                    }
                    let tokb = gpu.upload("tok", bytemuck::cast_slice(&toks)).unwrap();
                    let qb = gpu.upload("qkv", f32_bytes(&qkv)).unwrap();
                    let ob = gpu.storage("out", (t * nh_ * d_ * 4) as u64).unwrap();
                    let pb = gpu
                        .storage(
                            "partials",
                            partials_bytes(split_max_tokens().unwrap(), nh, d).unwrap(),
                        )
                        .unwrap();
                    let step = step_buffer(gpu);
                    let r = rope::build(
                        gpu,
                        &step,
                        &Rope {
                            tokens: &tokb,
                            table: &tb,
                            qkv: &qb,
                            k_cache: &kc,
                            v_cache: &vc,
                        },
                        rope::Params {
                            n_heads: nh,
                            n_kv: nkv,
                            head_dim: d,
                            kv_kind: 0,
                        },
                        kv_f16,
                    )
                    .unwrap();
                    let scale = 1.0 / (d as f32).sqrt();
                    let a = build(
                        gpu,
                        &step,
                        &Attention {
                            tokens: &tokb,
                            qkv: &qb,
                            k_cache: &kc,
                            v_cache: &vc,
                            table: &kv_table,
                            sinks: &sb,
                            out: &ob,
                            partials: &pb,
                        },
                        Params {
                            n_heads: nh,
                            n_kv: nkv,
                            head_dim: d,
                            entries: entries as u32,
                            window,
                            scale,
                            _pad: [0; 2],
                        },
                        kv_f16,
                        coop,
                    )
                    .unwrap();
                    let keys = toks.iter().map(|k| k.pos + 1).max().unwrap();
                    let (splits, span) = rule.split(keys);
                    let counts = StepCounts {
                        tokens: t as u32,
                        splits,
                        span,
                        ..Default::default()
                    };
                    let staged = a
                        .iter()
                        .any(|d| d.label.contains(".staged.") && d.workgroups(&counts).is_some());
                    staged_ran |= staged;
                    let mut ds = vec![r];
                    ds.extend(a);
                    submit(gpu, &step, &counts, &ds);
                    let got = gpu.read_f32(&ob, t * nh_ * d_).await.unwrap();
                    let pool_len = (pool / kv_bytes as u64) as usize;
                    let (kg, vg) = (
                        read_kv(gpu, &kc, pool_len, kv_f16).await,
                        read_kv(gpu, &vc, pool_len, kv_f16).await,
                    );
                    // What the cache holds for token `tok`, all KV heads.
                    let cached = |cache: &[f32], tok: &TokenInfo| -> Vec<f32> {
                        let slot = tok.kv_slot[0] as usize;
                        (0..nkv_)
                            .flat_map(|h| {
                                let at = (((slot / block) * nkv_ + h) * block + slot % block) * d_;
                                cache[at..at + d_].to_vec()
                            })
                            .collect()
                    };

                    // Reference: rotate, store, then attend.
                    let mut qs = Vec::new();
                    for (ti, tok) in toks.iter().enumerate() {
                        let cs = &table[tok.pos as usize * d_ / 2..(tok.pos as usize + 1) * d_ / 2];
                        let row = &qkv[ti * stride..(ti + 1) * stride];
                        let mut q = row[..nh_ * d_].to_vec();
                        for h in 0..nh_ {
                            rotate_halves(&mut q[h * d_..(h + 1) * d_], cs);
                        }
                        let mut k = row[nh_ * d_..(nh_ + nkv_) * d_].to_vec();
                        for h in 0..nkv_ {
                            rotate_halves(&mut k[h * d_..(h + 1) * d_], cs);
                        }
                        // The cache must hold k and v (rounded when f16); attention is then
                        // checked against what it holds.
                        let (kc_, vc_) = (cached(&kg, tok), cached(&vg, tok));
                        assert_kv_close(&kc_, &k, kv_f16);
                        assert_kv_close(&vc_, &row[(nh_ + nkv_) * d_..], kv_f16);
                        ref_k[tok.seq as usize][tok.pos as usize] = kc_;
                        ref_v[tok.seq as usize][tok.pos as usize] = vc_;
                        qs.push(q);
                    }
                    let mut want = vec![0.0f32; t * nh_ * d_];
                    for (ti, tok) in toks.iter().enumerate() {
                        let (s, p) = (tok.seq as usize, tok.pos as usize);
                        let start = if window > 0 {
                            (p + 1).saturating_sub(window as usize)
                        } else {
                            0
                        };
                        for h in 0..nh_ {
                            let kvh = h / (nh_ / nkv_);
                            let q = &qs[ti][h * d_..(h + 1) * d_];
                            let scores: Vec<f64> = (start..=p)
                                .map(|j| {
                                    let k = &ref_k[s][j][kvh * d_..(kvh + 1) * d_];
                                    q.iter()
                                        .zip(k)
                                        .map(|(a, b)| *a as f64 * *b as f64)
                                        .sum::<f64>()
                                        * scale as f64
                                })
                                .collect();
                            let m = scores.iter().cloned().fold(sinks[h] as f64, f64::max);
                            let denom: f64 = scores.iter().map(|x| (x - m).exp()).sum::<f64>()
                                + (sinks[h] as f64 - m).exp();
                            for i in 0..d_ {
                                let mut o = 0.0;
                                for (jj, j) in (start..=p).enumerate() {
                                    o += (scores[jj] - m).exp() / denom
                                        * ref_v[s][j][kvh * d_ + i] as f64;
                                }
                                want[ti * nh_ * d_ + h * d_ + i] = o as f32;
                            }
                        }
                    }
                    // The tensor cores take q and the probabilities rounded to f16 (relative
                    // 2^-12 each), and the staged tier over an f16 cache q and the score
                    // products (2^-11): errors near 1e-4 of the output, not f32's 1e-7.
                    let e = nmse(&got, &want);
                    let tol = if coop || (staged && kv_f16) {
                        1e-6
                    } else {
                        1e-11
                    };
                    assert!(
                        e < tol,
                        "nh={nh} d={d} window={window} kv_f16={kv_f16} coop={coop}, a pass of \
                         {t} tokens in {splits} spans: nmse {e}"
                    );
                }
            }
            // The staged tier ran wherever it fits gpt-oss's shape.
            let gpt_oss = Params {
                n_heads: 64,
                n_kv: 8,
                head_dim: 64,
                entries: 0,
                window: 0,
                scale: 1.0,
                _pad: [0; 2],
            };
            assert!(staged_ran || !staged_fits(gpu, &gpt_oss, kv_f16).unwrap());
        }
    }
}
