//! Dense layers with bf16 weights: q/k/v, o_proj, lm_head. Each pass size goes to one kernel
//! (`plan`): `shaders/linear_vec.wgsl` (the preceding RMSNorm fused) for one token and a few,
//! the staged tiles of `shaders/linear.wgsl` for decode batches (the norm fused where k is cut),
//! its token tiles for larger passes.

use crate::error::{Error, Result};
use crate::gpu::mirror::wgsl_mirror;
use crate::gpu::shader::wgsl_const;
use crate::gpu::{Count, Dispatch, Gpu, Grid, ShaderKey, Split};
use crate::kernels::rope::{self, Rope};

/// The RMSNorm a projection's input goes through first: in = RMSNorm(x) * w.
pub struct NormInput<'a> {
    /// The un-normed input [count, k] (the residual stream).
    pub x: &'a wgpu::Buffer,
    /// \[k] f32 gain.
    pub w: &'a wgpu::Buffer,
    pub eps: f32,
}

wgsl_mirror! {
    "common/linear_params.wgsl", Params:
    /// `Params` of shaders/common/linear_params.wgsl.
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub(crate) struct Params {
        k: u32,
        rows: u32,
        row_start: u32,
        n_out: u32,
        count_which: u32,
        has_bias: u32,
        accumulate: u32,
        eps: f32,
        n_heads: u32,
        n_kv: u32,
        head_dim: u32,
        kv_kind: u32,
        splits: u32,
        split_units: u32,
    }
}

impl Params {
    /// The parameters of `l` for its weight buffer `c` (k not cut).
    fn new(l: &Linear, c: &crate::gpu::Rows) -> Params {
        Params {
            k: l.k,
            rows: c.count,
            row_start: c.start,
            n_out: l.n_out,
            count_which: super::count_index(l.count),
            has_bias: l.bias.is_some() as u32,
            accumulate: l.accumulate as u32,
            eps: l.norm.as_ref().map_or(0.0, |n| n.eps),
            n_heads: l.rope.as_ref().map_or(0, |r| r.n_heads),
            n_kv: l.rope.as_ref().map_or(0, |r| r.n_kv),
            head_dim: l.rope.as_ref().map_or(0, |r| r.head_dim),
            kv_kind: l.rope.as_ref().map_or(0, |r| r.kv_kind),
            splits: 1,
            split_units: l.k / 8,
        }
    }

    /// The same with k cut into `s`'s ranges.
    fn cut(self, s: KSplit) -> Params {
        Params {
            splits: s.splits,
            split_units: s.units,
            ..self
        }
    }
}

/// Rows and tokens per workgroup (R, TT in the shader).
const R: u32 = 4;
const TT: u32 = 4;

/// y: [count, n_out] = x: [count, k] · Wᵀ + bias, with W: [n_out, k] bf16 split by rows.
pub struct Linear<'a> {
    pub x: &'a wgpu::Buffer,
    pub w: &'a Split,
    pub bias: Option<&'a wgpu::Buffer>,
    pub y: &'a wgpu::Buffer,
    pub k: u32,
    pub n_out: u32,
    /// Which step count gives the number of input rows.
    pub count: Count,
    /// Add into y (the residual stream) instead of overwriting it.
    pub accumulate: bool,
    /// When set, `x` holds RMSNorm(norm.x) * norm.w for the tiled path (written by a separate
    /// rmsnorm dispatch that the caller runs only for the passes `norm_passes` gives), and the
    /// kernels of the other passes read norm.x and normalize it themselves.
    pub norm: Option<NormInput<'a>>,
    /// The q/k/v projection (y holds q, k, v of each token's heads): rotate q and k and write k,
    /// v into the cache, in the vector kernel's epilogue and the k ranges' sums where they can,
    /// else by a rope.wgsl dispatch after the projection (prefill's whole tiles).
    pub rope: Option<RopeOutput<'a>>,
    /// Passes above the vector kernel's on the tensor cores where k is a multiple of 32
    /// (`Caps::coop` must hold), with inputs as this gives, f32 sums; None: never.
    pub coop: Option<CoopInputs>,
    /// Scratch for the tiles' k ranges (`split_sums_bytes`); without it k is never cut.
    pub split_sums: Option<&'a wgpu::Buffer>,
}

/// How the tensor-core tiles take a layer's f32 inputs (its bf16 weights are exact in f16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoopInputs {
    /// Rounded to f16: 11 significant bits, one product a tile step.
    F16,
    /// As two f16 parts, the high 11 bits and the rest: about 22 bits, twice the products.
    Split,
}

/// Where the fused q/k/v epilogue finds positions and rotations and puts k and v.
pub struct RopeOutput<'a> {
    pub tokens: &'a wgpu::Buffer,
    /// [max_pos, D/2] (cos, sin).
    pub table: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub n_heads: u32,
    pub n_kv: u32,
    pub head_dim: u32,
    /// Which of a token's KV slots this layer writes (`kv_cache::Kind`).
    pub kv_kind: u32,
    pub kv_f16: bool,
}

/// Whether the vector kernel can rotate and store k, v itself (`RopeOutput`) for `l`: its rows
/// pair up within a workgroup (head dim a multiple of its rows, weight buffers cut at heads),
/// it normalizes its input, and the device binds its nine storage buffers.
fn vec_fuses_rope(gpu: &Gpu, l: &Linear, r: &RopeOutput) -> Result<bool> {
    let rows =
        wgsl_const("linear_vec.wgsl", "ROWS")?.max(wgsl_const("linear_vec.wgsl", "MULTI_ROWS")?);
    let d = r.head_dim;
    let aligned =
        l.w.chunks
            .iter()
            .all(|c| c.start % d == 0 && c.count % d == 0);
    Ok(d.is_multiple_of(rows) && aligned && l.norm.is_some() && gpu.caps.storage_buffers >= 9)
}

/// The rotation and cache write by rope.wgsl after the projection, for the passes of `counts`.
fn rope_after(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    l: &Linear,
    r: &RopeOutput,
    counts: std::ops::RangeInclusive<u32>,
) -> Result<Dispatch> {
    let a = Rope {
        tokens: r.tokens,
        table: r.table,
        qkv: l.y,
        k_cache: r.k_cache,
        v_cache: r.v_cache,
    };
    Ok(rope::build(gpu, step, &a, r.params(), r.kv_f16)?.only_for(l.count, counts))
}

impl RopeOutput<'_> {
    fn params(&self) -> rope::Params {
        rope::Params {
            n_heads: self.n_heads,
            n_kv: self.n_kv,
            head_dim: self.head_dim,
            kv_kind: self.kv_kind,
        }
    }
}

/// Whether l's rows take linear_vec's lane-a-row entry: short rows without a norm or a rotation
/// (`rope`: one done in the kernel) needing the row groups' epilogue. The tiles have nothing to
/// share between such rows, so they stay with linear_vec up to SHORT_VEC_MAX_TOKENS.
fn short_rows(l: &Linear, rope: bool) -> Result<bool> {
    Ok(l.norm.is_none() && !rope && l.k / 8 <= wgsl_const("linear_vec.wgsl", "SHORT_UNITS")?)
}

/// Which kernels take which passes of a layer: linear_vec the passes in `vec`, the staged tiles
/// those in `staged` (if any), the other tiles those from `tiles` on.
struct Plan {
    vec: Vec<std::ops::RangeInclusive<u32>>,
    staged: Option<std::ops::RangeInclusive<u32>>,
    tiles: u32,
}

/// linear.wgsl's plan for l: linear_vec up to COOP_VEC_MAX_TOKENS (tensor-core adapters) or
/// SIMT_VEC_MAX_TOKENS (the others) except for the passes that the staged tiles take (from
/// COOP_STAGED_FROM or SIMT_STAGED_FROM to STAGED_TS), the other tiles above both. linear_vec
/// reads 8 weights per load, so k must be a multiple of 8 for it and the staged tiles (else
/// every pass is tiled); short rows stay with linear_vec up to SHORT_VEC_MAX_TOKENS.
fn plan(l: &Linear) -> Result<Plan> {
    let c = |name| wgsl_const("linear.wgsl", name);
    let (coop, _) = tile_kind(l.k, l.coop);
    let (vec_max, staged) = if !l.k.is_multiple_of(8) {
        (0, None)
    } else if short_rows(l, l.rope.is_some())? {
        (c("SHORT_VEC_MAX_TOKENS")?, None)
    } else if coop.is_some() {
        let from = c("COOP_STAGED_FROM")?;
        (c("COOP_VEC_MAX_TOKENS")?, Some(from..=c("STAGED_TS")?))
    } else {
        let from = c("SIMT_STAGED_FROM")?;
        (c("SIMT_VEC_MAX_TOKENS")?, Some(from..=c("STAGED_TS")?))
    };
    let vec = match &staged {
        None => vec![1..=vec_max],
        Some(s) => vec![1..=vec_max.min(s.start() - 1), s.end() + 1..=vec_max],
    };
    Ok(Plan {
        vec: vec.into_iter().filter(|r| !r.is_empty()).collect(),
        tiles: vec_max.max(staged.as_ref().map_or(0, |s| *s.end())) + 1,
        staged,
    })
}

/// Every pass on the tiles: the staged ones up to STAGED_TS tokens (tests).
#[cfg(test)]
fn tiles_only() -> Result<Plan> {
    let last = wgsl_const("linear.wgsl", "STAGED_TS")?;
    Ok(Plan {
        vec: Vec::new(),
        staged: Some(1..=last),
        tiles: last + 1,
    })
}

/// How the tiles cut k for a pass of one token tile: `splits` ranges of `units` 8-input units.
#[derive(Clone, Copy, Debug, PartialEq)]
struct KSplit {
    splits: u32,
    units: u32,
}

/// The tile shape of one tile entry: rows and tokens per tile, 8-input units per step, and about
/// how many workgroups a pass of one token tile should have (k is cut to reach them).
struct TileShape {
    rows: u32,
    tokens: u32,
    step_units: u32,
    workgroups: u32,
}

/// The tile shape of the portable tiles, or of the tensor-core ones (`narrow`: for passes of up
/// to NARROW_TS tokens).
fn tile_shape(coop: bool, narrow: bool) -> Result<TileShape> {
    let workgroups = wgsl_const("linear.wgsl", "SPLIT_WORKGROUPS")?;
    Ok(if coop {
        TileShape {
            rows: wgsl_const("linear.wgsl", "COOP_TR")?,
            tokens: wgsl_const("linear.wgsl", if narrow { "NARROW_TS" } else { "COOP_TS" })?,
            step_units: 4 * wgsl_const("linear.wgsl", "COOP_KB")?,
            workgroups,
        }
    } else {
        TileShape {
            rows: wgsl_const("linear.wgsl", "SIMT_TR")?,
            tokens: wgsl_const("linear.wgsl", "SIMT_TS")?,
            step_units: wgsl_const("common/simt_tile.wgsl", "KS")? / 8,
            workgroups,
        }
    })
}

/// The staged tiles' shape (`few`: the tiles of STAGED_FEW_TS tokens): a lane's trip covers 2 x
/// COLS units of a row.
fn staged_shape(few: bool) -> Result<TileShape> {
    Ok(TileShape {
        rows: wgsl_const("linear.wgsl", "STAGED_TR")?,
        tokens: wgsl_const(
            "linear.wgsl",
            if few { "STAGED_FEW_TS" } else { "STAGED_TS" },
        )?,
        step_units: 2 * wgsl_const("linear.wgsl", "COLS")?,
        workgroups: wgsl_const("linear.wgsl", "STAGED_WORKGROUPS")?,
    })
}

/// One tile entry of a layer: its shader, shape and the largest pass it takes; `staged` for the
/// staged tiles (which can take the layer's norm).
struct TileEntry {
    key: ShaderKey,
    shape: TileShape,
    last: u32,
    staged: bool,
}

/// The tile entries of a layer: the staged tiles of STAGED_FEW_TS tokens, then of STAGED_TS, then
/// on the tensor cores narrow tiles up to NARROW_TS tokens and the wide ones; else the portable
/// ones. `subgroups`: the staged tiles' row sums by shuffles.
fn tile_entries(coop: Option<CoopInputs>, subgroups: bool) -> Result<Vec<TileEntry>> {
    let tiles = |key, shape: TileShape, last| TileEntry {
        key,
        shape,
        last,
        staged: false,
    };
    let mut out = Vec::new();
    for few in [true, false] {
        let shape = staged_shape(few)?;
        out.push(TileEntry {
            last: shape.tokens,
            key: staged_key(subgroups, few),
            shape,
            staged: true,
        });
    }
    if let Some(inputs) = coop {
        let narrow = tile_shape(true, true)?;
        let narrow_max = narrow.tokens;
        out.push(tiles(coop_key(true, inputs), narrow, narrow_max));
        out.push(tiles(
            coop_key(false, inputs),
            tile_shape(true, false)?,
            u32::MAX,
        ));
    } else {
        out.push(tiles(simt_key(), tile_shape(false, false)?, u32::MAX));
    }
    Ok(out)
}

/// The passes whose kernels do not normalize l's input themselves (`Linear::norm`): those above
/// linear_vec's, except the staged tiles' where they take the norm. The caller's rmsnorm
/// dispatch must run for these.
pub fn norm_passes(gpu: &Gpu, l: &Linear) -> Result<Vec<std::ops::RangeInclusive<u32>>> {
    let p = plan(l)?;
    let above = p.tiles..=u32::MAX;
    Ok(match p.staged {
        Some(s) if !staged_fuses_norm(gpu, l)? => vec![s, above],
        _ => vec![above],
    })
}

/// Whether the staged tiles take l's norm: only with k cut (the scratch given, more than one
/// range: sum_splits applies each token's scale), and with sum_splits' extra binding within the
/// adapter's storage buffers (eight with RoPE).
fn staged_fuses_norm(gpu: &Gpu, l: &Linear) -> Result<bool> {
    let (coop, simt) = tile_kind(l.k, l.coop);
    let buffers = if l.rope.is_some() { 8 } else { 4 };
    Ok(l.norm.is_some()
        && (coop.is_some() || simt)
        && l.split_sums.is_some()
        && gpu.caps.storage_buffers >= buffers
        && k_split(&staged_shape(false)?, l.k, l.n_out)?.splits > 1)
}

/// The k ranges for n_out rows of k inputs: enough to give a pass of one token tile about the
/// shape's workgroups, each range at least SPLIT_MIN_STEPS steps, none empty.
fn k_split(shape: &TileShape, k: u32, n_out: u32) -> Result<KSplit> {
    let steps = (k / 8).div_ceil(shape.step_units);
    let want = shape.workgroups.div_ceil(n_out.div_ceil(shape.rows));
    let most = steps / wgsl_const("linear.wgsl", "SPLIT_MIN_STEPS")?;
    let per = steps.div_ceil(want.min(most).max(1));
    Ok(KSplit {
        splits: steps.div_ceil(per),
        units: per * shape.step_units,
    })
}

/// Whether a layer of input width k takes the tensor-core tiles, and whether the portable ones
/// (else `main`).
fn tile_kind(k: u32, coop: Option<CoopInputs>) -> (Option<CoopInputs>, bool) {
    let coop = coop.filter(|_| k.is_multiple_of(32));
    (coop, coop.is_none() && k.is_multiple_of(8))
}

/// The scratch a layer of n_out rows and k inputs needs for its k ranges (`Linear::split_sums`)
/// in passes of up to max_tokens: 0 when k is not cut.
pub fn split_sums_bytes(k: u32, n_out: u32, coop: bool, max_tokens: u32) -> Result<u64> {
    // The tiles' shapes do not depend on how they take their inputs.
    let (coop, simt) = tile_kind(k, coop.then_some(CoopInputs::F16));
    if coop.is_none() && !simt {
        return Ok(0);
    }
    let mut bytes = 0;
    for TileEntry { shape, .. } in tile_entries(coop, false)? {
        let s = k_split(&shape, k, n_out)?;
        if s.splits > 1 {
            // Whole blocks of 16 tokens: the tensor-core tiles' DIRECT_DRAIN stores them so.
            let tokens = shape.tokens.min(max_tokens.next_multiple_of(16));
            let b = s.splits as u64 * tokens as u64 * n_out as u64 * 4;
            bytes = bytes.max(b);
        }
    }
    Ok(bytes)
}

/// The portable tiles' shader (one variant; the validation sweep takes it from here).
pub(crate) fn simt_key() -> ShaderKey {
    ShaderKey::new("linear.wgsl", "tiled")
        .define_if("TILES", true)
        .define_if("SIMT", true)
}

/// The staged tiles' shader, with or without subgroup shuffles for the row sums, of STAGED_TS or
/// (`few`) STAGED_FEW_TS tokens (the validation sweep takes them from here). Without naga's
/// runtime checks: its inner loop's two workgroup-memory reads a token were clamped, and every
/// index is in range by its constant bounds (H100 batch 8: 1896-1900 -> 1774-1779 us a step,
/// +1.9% tok/s, PERF.md v0.55).
pub(crate) fn staged_key(subgroups: bool, few: bool) -> ShaderKey {
    ShaderKey::new("linear.wgsl", "staged")
        .define_if("TILES", true)
        .define_if("STAGED", true)
        .define_if("SUBGROUPS", subgroups)
        .define_if("FEW", few)
        .without_runtime_checks_if(true)
}

/// The tensor-core tiles' shader, wide or narrow (the validation sweep takes them from here).
pub(crate) fn coop_key(narrow: bool, inputs: CoopInputs) -> ShaderKey {
    ShaderKey::new("linear.wgsl", "coop")
        .define_if("TILES", true)
        .define_if("COOP", true)
        .define_if("NARROW", narrow)
        .define_if("SPLIT_INPUTS", inputs == CoopInputs::Split)
}

/// Adds the k ranges' sums; with `rope` (Some(kv_f16)) rotates q, k and stores k, v too (the
/// validation sweep takes the variants from here).
pub(crate) fn sum_splits_key(rope: Option<bool>) -> ShaderKey {
    ShaderKey::new("linear.wgsl", "sum_splits")
        .define_if("SPLIT_SUM", true)
        .define_if("ROPE", rope.is_some())
        .define_if("KV_F16", rope == Some(true))
}

/// One dispatch per weight buffer and kernel (and with `rope`, the rotation's where a kernel
/// does not do it itself).
pub fn build(gpu: &Gpu, step: &wgpu::Buffer, l: &Linear) -> Result<Vec<Dispatch>> {
    build_plan(gpu, step, l, &plan(l)?)
}

/// The dispatches of `p`'s kernels for l.
fn build_plan(gpu: &Gpu, step: &wgpu::Buffer, l: &Linear, p: &Plan) -> Result<Vec<Dispatch>> {
    let mut out = Vec::new();
    for r in &p.vec {
        out.extend(build_vec(gpu, step, l, r.clone())?);
    }
    out.extend(build_tiled(gpu, step, l, p)?);
    Ok(out)
}

/// The weight buffers must cover the n_out rows; the tiled kernel reads inputs in pairs; a
/// rotated projection's rows are its heads'.
fn check(l: &Linear) -> Result<()> {
    if !l.k.is_multiple_of(2) {
        return Err(Error::Unsupported(format!(
            "linear input width {} must be even",
            l.k
        )));
    }
    if let Some(r) = &l.rope
        && (!r.head_dim.is_multiple_of(2) || (r.n_heads + 2 * r.n_kv) * r.head_dim != l.n_out)
    {
        return Err(Error::Unsupported(format!(
            "RoPE over {} outputs of {} + 2 x {} heads of {} dims (an even head dim)",
            l.n_out, r.n_heads, r.n_kv, r.head_dim
        )));
    }
    let covered: u32 = l.w.chunks.iter().map(|c| c.count).sum();
    if covered != l.n_out {
        return Err(Error::Shape {
            tensor: "weight".into(),
            file: "linear".into(),
            expected: vec![l.n_out as usize, l.k as usize],
            got: vec![covered as usize, l.k as usize],
        });
    }
    Ok(())
}

/// The tiled kernels of `p`: the staged tiles for its staged passes, the others from p.tiles on.
fn build_tiled(gpu: &Gpu, step: &wgpu::Buffer, l: &Linear, p: &Plan) -> Result<Vec<Dispatch>> {
    check(l)?;
    let (coop, simt) = tile_kind(l.k, l.coop);
    if coop.is_none() && !simt {
        return build_main(gpu, step, l, p.tiles - 1);
    }
    let mut out = Vec::new();
    // Each entry takes the passes from the end of the last one's of its kind (staged or not) to
    // its own largest: the staged ones within p.staged, the others from p.tiles on.
    let mut first = p.tiles;
    let mut staged_first = p.staged.as_ref().map_or(1, |s| *s.start());
    // Shuffles over a row's neighbouring lanes need subgroups of at least that many.
    let subgroups =
        gpu.caps.subgroups && gpu.caps.subgroup_min >= wgsl_const("linear.wgsl", "COLS")?;
    let fuse = staged_fuses_norm(gpu, l)?;
    for e in tile_entries(coop, subgroups)? {
        let passes = match (&p.staged, e.staged) {
            (Some(s), true) => staged_first..=e.last.min(*s.end()),
            (None, true) => continue,
            (_, false) => first..=e.last,
        };
        if !passes.is_empty() {
            let norm = (e.staged && fuse).then_some(l.norm.as_ref()).flatten();
            out.extend(build_entry(gpu, step, l, &e.key, &e.shape, norm, passes)?);
        }
        let next = e.last.saturating_add(1);
        if e.staged {
            staged_first = staged_first.max(next);
        } else {
            first = first.max(next);
        }
    }
    Ok(out)
}

/// One tile entry's dispatches for the passes of `passes`: those of one token tile with k cut
/// where that fills the GPU (and the scratch is there), the rest whole. With `norm` (the staged
/// tiles where they take it: always with k cut) the norm is fused.
fn build_entry(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    l: &Linear,
    tile_key: &ShaderKey,
    shape: &TileShape,
    norm: Option<&NormInput>,
    passes: std::ops::RangeInclusive<u32>,
) -> Result<Vec<Dispatch>> {
    let mut out = Vec::new();
    let mut whole = passes.clone();
    let split = k_split(shape, l.k, l.n_out)?;
    let counts = *passes.start()..=shape.tokens.min(*passes.end());
    if let Some(part) = l.split_sums
        && split.splits > 1
        && !counts.is_empty()
    {
        out.extend(build_split(
            gpu, step, l, tile_key, shape, split, part, norm, counts,
        )?);
        whole = shape.tokens + 1..=*passes.end();
    }
    if whole.is_empty() {
        return Ok(out);
    }
    for c in &l.w.chunks {
        let p = Params::new(l, c);
        // Without a bias the binding still needs a buffer; x is read-only too.
        let bufs = [l.x, &c.buffer, l.bias.unwrap_or(l.x), l.y];
        let grid = Grid::new(c.count.div_ceil(shape.rows), l.count, shape.tokens);
        out.push(
            Dispatch::new(gpu, tile_key, step, bytemuck::bytes_of(&p), &bufs, grid)?
                .only_for(l.count, whole.clone()),
        );
    }
    if let Some(r) = &l.rope {
        out.push(rope_after(gpu, step, l, r, whole)?);
    }
    Ok(out)
}

/// The largest pass in which the tensor-core tiles of key store their k ranges' sums straight to
/// part (DIRECT_DRAIN): DIRECT_DRAIN_MAX_TOKENS where every weight buffer's rows are whole blocks
/// of 16 (part's tokens are, split_sums_bytes), else 0.
fn direct_drain_max(key: &ShaderKey, l: &Linear) -> Result<u32> {
    let whole_blocks = l.w.chunks.iter().all(|c| c.count.is_multiple_of(16));
    Ok(if key.defines.contains("COOP") && whole_blocks {
        wgsl_const("linear.wgsl", "DIRECT_DRAIN_MAX_TOKENS")?
    } else {
        0
    })
}

/// The tiles with k cut as `split` says for the passes of `counts`, one dispatch per weight
/// buffer writing the ranges' sums into `part` (a second where some of the passes store them
/// directly), then one that adds them up into y; with `norm`, from the un-normed input, the sums
/// scaled by the norm.
#[allow(clippy::too_many_arguments)]
fn build_split(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    l: &Linear,
    tile_key: &ShaderKey,
    shape: &TileShape,
    split: KSplit,
    part: &wgpu::Buffer,
    norm: Option<&NormInput>,
    counts: std::ops::RangeInclusive<u32>,
) -> Result<Vec<Dispatch>> {
    let key = tile_key
        .clone()
        .define_if("SPLIT_K", true)
        .define_if("NORM", norm.is_some());
    let most = direct_drain_max(&key, l)?;
    let (first, last) = (*counts.start(), *counts.end());
    let variants = [
        (
            key.clone().define_if("DIRECT_DRAIN", true),
            first..=most.min(last),
        ),
        (key, first.max(most + 1)..=last),
    ];
    let mut out = Vec::new();
    for (key, passes) in variants.into_iter().filter(|(_, r)| !r.is_empty()) {
        for c in &l.w.chunks {
            let p = Params::new(l, c).cut(split);
            let grid =
                Grid::new(c.count.div_ceil(shape.rows), l.count, shape.tokens).depth(split.splits);
            let bufs = match norm {
                Some(n) => vec![n.x, &c.buffer, part, n.w],
                None => vec![l.x, &c.buffer, part],
            };
            out.push(
                Dispatch::new(gpu, &key, step, bytemuck::bytes_of(&p), &bufs, grid)?
                    .only_for(l.count, passes.clone()),
            );
        }
    }
    // One sum over all the buffers' rows (a missing bias binds part, unread); a thread a column,
    // or with RoPE a rotation pair (seven storage buffers: WebGPU promises eight).
    let p = Params::new(l, &l.w.chunks[0]).cut(split);
    let mut bufs = vec![part, l.bias.unwrap_or(part), l.y];
    let mut threads = l.n_out;
    let rope = l.rope.as_ref().filter(|_| gpu.caps.storage_buffers >= 7);
    if let Some(r) = rope {
        bufs.extend([r.tokens, r.table, r.k_cache, r.v_cache]);
        threads = l.n_out / 2;
    }
    if let Some(n) = norm {
        bufs.push(n.x);
    }
    let grid = Grid::new(
        threads.div_ceil(wgsl_const("linear.wgsl", "SUM_WG")?),
        l.count,
        1,
    );
    out.push(
        Dispatch::new(
            gpu,
            &sum_splits_key(rope.map(|r| r.kv_f16)).define_if("NORM", norm.is_some()),
            step,
            bytemuck::bytes_of(&p),
            &bufs,
            grid,
        )?
        .only_for(l.count, counts.clone()),
    );
    if let Some(r) = l.rope.as_ref().filter(|_| rope.is_none()) {
        out.push(rope_after(gpu, step, l, r, counts)?);
    }
    Ok(out)
}

/// `main`, for input widths the tiles cannot take.
fn build_main(gpu: &Gpu, step: &wgpu::Buffer, l: &Linear, vec_max: u32) -> Result<Vec<Dispatch>> {
    let key = super::key(gpu, "linear.wgsl", "main");
    let one = key.clone().define_if("ONE_TOKEN", true);
    let mut out = Vec::new();
    for c in &l.w.chunks {
        let p = Params::new(l, c);
        let bufs = [l.x, &c.buffer, l.bias.unwrap_or(l.x), l.y];
        let params = bytemuck::bytes_of(&p);
        let x = c.count.div_ceil(R);
        if vec_max == 0 {
            out.push(
                Dispatch::new(gpu, &one, step, params, &bufs, Grid::new(x, l.count, 1))?
                    .only_for(l.count, 1..=1),
            );
        }
        out.push(
            Dispatch::new(gpu, &key, step, params, &bufs, Grid::new(x, l.count, TT))?
                .only_for(l.count, (vec_max + 1).max(2)..=u32::MAX),
        );
    }
    if let Some(r) = &l.rope {
        out.push(rope_after(gpu, step, l, r, vec_max + 1..=u32::MAX)?);
    }
    Ok(out)
}

/// The matrix-vector kernel alone, for passes whose count is in `counts` (k a multiple of 8).
pub fn build_vec(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    l: &Linear,
    counts: std::ops::RangeInclusive<u32>,
) -> Result<Vec<Dispatch>> {
    check(l)?;
    if !l.k.is_multiple_of(8) {
        return Err(Error::Unsupported(format!(
            "the vector kernel needs an input width that is a multiple of 8, not {}",
            l.k
        )));
    }
    // The rotation in the epilogue where it can be, else after (`rope` then only for that).
    let rope = match &l.rope {
        Some(r) if vec_fuses_rope(gpu, l, r)? => Some(r),
        _ => None,
    };
    // Short rows (a small model's lm_head) take a lane a row.
    let short = short_rows(l, rope.is_some())?;
    let (entry, rows_per_wg, multi_rows) = if short {
        let lanes = wgsl_const("linear_vec.wgsl", "SHORT_WG")?;
        ("short", lanes, lanes)
    } else {
        let rows = wgsl_const("linear_vec.wgsl", "ROWS")?;
        ("main", rows, wgsl_const("linear_vec.wgsl", "MULTI_ROWS")?)
    };
    let key = super::row_group_key(gpu, "linear_vec.wgsl", entry)
        .define_if("NORM", l.norm.is_some())
        .define_if("ROPE", rope.is_some())
        .define_if("KV_F16", rope.is_some_and(|r| r.kv_f16));
    // Each MULTI workgroup serves this many tokens.
    let max_t = wgsl_const("linear_vec.wgsl", "MAX_T")?;
    let multi = key.clone().define_if("MULTI", true);
    let mut out = Vec::new();
    for c in &l.w.chunks {
        let p = Params::new(l, c);
        let bias = l.bias.unwrap_or(l.x);
        // The gain binding exists only in the NORM variant, the cache ones in ROPE.
        let mut bufs = match &l.norm {
            Some(n) => vec![n.x, &c.buffer, bias, l.y, n.w],
            None => vec![l.x, &c.buffer, bias, l.y],
        };
        if let Some(r) = rope {
            bufs.extend([r.tokens, r.table, r.k_cache, r.v_cache]);
        }
        // Workgroups stride over row blocks beyond the grid limit (lm_head has 10^5).
        let grid = |rows: u32, tokens: u32| {
            let x = c.count.div_ceil(rows).min(gpu.caps.max_workgroups_per_dim);
            Grid::new(x, l.count, tokens)
        };
        let params = bytemuck::bytes_of(&p);
        // One token alone takes the plain variant, more the MULTI one.
        let (one, many) = (*counts.start()..=1, 2.max(*counts.start())..=*counts.end());
        if !one.is_empty() {
            out.push(
                Dispatch::new(gpu, &key, step, params, &bufs, grid(rows_per_wg, 1))?
                    .only_for(l.count, one),
            );
        }
        if !many.is_empty() {
            out.push(
                Dispatch::new(gpu, &multi, step, params, &bufs, grid(multi_rows, max_t))?
                    .only_for(l.count, many),
            );
        }
    }
    if let Some(r) = l.rope.as_ref().filter(|_| rope.is_none()) {
        out.push(rope_after(gpu, step, l, r, counts)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::dispatch::{StepCounts, step_buffer, submit};
    use crate::kernels::testing::*;
    use crate::model::inputs::TokenInfo;

    /// y = x W^T + b (+ y0 with `acc`) for x [t, k], W [n, k], b [n].
    fn reference(x: &[f32], w: &[f32], b: &[f32], y0: &[f32], k: usize, acc: bool) -> Vec<f32> {
        let (t, n) = (x.len() / k, b.len());
        let mut y = vec![0.0; t * n];
        for ti in 0..t {
            for r in 0..n {
                let mut s = 0.0f64;
                for i in 0..k {
                    s += x[ti * k + i] as f64 * w[r * k + i] as f64;
                }
                let v = s as f32 + b[r];
                y[ti * n + r] = if acc { y0[ti * n + r] + v } else { v };
            }
        }
        y
    }

    /// Every k range has work, together they cover k in whole steps, and a layer of few rows
    /// gets enough workgroups (the q/k/v projection of gpt-oss: 40 row tiles).
    #[test]
    fn k_ranges_cover_k_and_none_is_empty() {
        let shapes = [(false, false), (true, false), (true, true)]
            .map(|(coop, narrow)| tile_shape(coop, narrow).unwrap());
        let staged = [true, false].map(|few| staged_shape(few).unwrap());
        for shape in shapes.into_iter().chain(staged) {
            for k in (8..=6000).step_by(56) {
                for n_out in [9, 150, 2880, 5120, 201088] {
                    let s = k_split(&shape, k, n_out).unwrap();
                    let units = k / 8;
                    assert!(s.splits >= 1 && s.units.is_multiple_of(shape.step_units));
                    assert!((s.splits - 1) * s.units < units, "k {k}: an empty range");
                    assert!(s.splits * s.units >= units, "k {k}: ranges short of k");
                }
            }
        }
        let qkv = k_split(&tile_shape(true, false).unwrap(), 2880, 5120).unwrap();
        assert!(qkv.splits * 40 >= 256, "{qkv:?}");
    }

    /// A layer of n outputs from k inputs x, weights w into y, for the tests to fill in the rest
    /// (no bias, norm or rotation, nothing accumulated).
    fn layer<'a>(
        x: &'a wgpu::Buffer,
        w: &'a Split,
        y: &'a wgpu::Buffer,
        k: usize,
        n: usize,
        coop: Option<CoopInputs>,
    ) -> Linear<'a> {
        Linear {
            x,
            w,
            bias: None,
            y,
            k: k as u32,
            n_out: n as u32,
            count: Count::Tokens,
            accumulate: false,
            norm: None,
            rope: None,
            coop,
            split_sums: None,
        }
    }

    // The plan gives every pass size exactly one kernel, for each kind of layer on both kinds of
    // adapter: linear_vec's ranges, the staged tiles' and the other tiles' do not overlap and
    // leave no gap.
    gpu_test!(plan_gives_each_pass_one_kernel);
    async fn plan_gives_each_pass_one_kernel() {
        let gpu = &gpus().await[0];
        let buf = gpu.storage("any", 4).unwrap();
        let w = split_rows(gpu, &[0; 8 * 2], 8, 1, 8);
        let norm = || NormInput {
            x: &buf,
            w: &buf,
            eps: 1e-5,
        };
        // (k, with a norm): a q/k/v-like layer, o_proj-like, short rows, k not a multiple of 8.
        for (k, with_norm) in [(2880, true), (4096, false), (128, false), (98, true)] {
            for coop in [None, Some(CoopInputs::F16)] {
                let l = Linear {
                    norm: with_norm.then(norm),
                    ..layer(&buf, &w, &buf, k, 8, coop)
                };
                let p = plan(&l).unwrap();
                for n in 1..=80u32 {
                    let takers = p.vec.iter().filter(|r| r.contains(&n)).count()
                        + p.staged.iter().filter(|r| r.contains(&n)).count()
                        + (n >= p.tiles) as usize;
                    assert_eq!(
                        takers, 1,
                        "k {k} coop {coop:?}: pass {n} has {takers} kernels"
                    );
                }
            }
        }
    }

    gpu_test!(linear_matches_reference);
    async fn linear_matches_reference() {
        let mut rng = seeded("linear_matches_reference");
        // The tensor-core paths too where the adapter has them: inputs in two f16 parts (~22
        // bits) against the f32 reference, inputs in f16 against the reference on the inputs
        // rounded to f16.
        let paths = gpus()
            .await
            .iter()
            .flat_map(|g| [None, Some(CoopInputs::Split), Some(CoopInputs::F16)].map(|c| (g, c)))
            .filter(|(g, coop)| coop.is_none() || g.caps.coop);
        for (gpu, coop) in paths {
            // (tokens, k, n, rows per buffer, accumulate)
            for &(t, k, n, split, acc) in &[
                // Rows of up to 32 units on the vector kernel take a lane a row (`short`).
                (1, 64, 8, 8, false),
                (3, 128, 300, 130, true),
                (1, 512, 40, 24, true),
                // One token's rows over several trips of a lane's units, the last partial.
                (1, 2064, 40, 24, false),
                (1, 98, 13, 5, true),
                (7, 98, 13, 5, true),
                (5, 256, 37, 37, false),
                // The narrow tensor-core tiles: one whole tile of tokens, and k cut into 3.
                (16, 512, 150, 150, false),
                (12, 1024, 200, 120, true),
                (9, 130, 20, 7, true),
                (70, 96, 150, 140, true),
                (40, 104, 300, 170, false),
                (300, 64, 40, 40, false),
                // k cut into ranges (SPLIT_K): 4 on the tensor cores, 16 on the portable tiles;
                // 3 ranges, the last of 5 blocks (a partial step); 13 portable ranges of 10
                // units, the last of 5 (k not a multiple of 32: portable on every adapter).
                (33, 1024, 200, 120, true),
                (20, 800, 72, 72, false),
                (40, 1000, 130, 130, true),
                // Tensor-core ranges stored straight to part (DIRECT_DRAIN: every buffer's rows
                // whole blocks of 16): a narrow tile of 12 tokens in two buffers; 37 tokens (a
                // block in part, one absent) and a second row tile of one block; 48 tokens, the
                // most that do; 52, past them (through workgroup memory).
                (12, 1024, 208, 112, true),
                (37, 1024, 160, 160, false),
                (48, 1024, 144, 144, true),
                (52, 1024, 160, 80, true),
            ] {
                let e = case_nmse(gpu, &mut rng, (t, k, n, split, acc), coop, false, true).await;
                let tol = if coop.is_some() { 1e-9 } else { 1e-10 };
                assert!(
                    e < tol,
                    "{} coop={coop:?} t={t} k={k} n={n}: nmse {e}",
                    gpu.caps.subgroups
                );
            }
        }
    }

    gpu_test!(staged_tiles_match_reference);
    async fn staged_tiles_match_reference() {
        let mut rng = seeded("staged_tiles_match_reference");
        for gpu in gpus().await {
            // Every pass on the tiles (none on linear_vec), so that the staged tiles take passes
            // of up to STAGED_TS tokens: (tokens, k, n, rows per buffer, accumulate, k cut where
            // it pays). k cut into 4 ranges of 32 units, the last of 29 (a partial trip); k whole
            // (no scratch for the ranges), 150 units in three chunks of inputs; 12 units, a trip
            // cut short; three buffers.
            for &(t, k, n, split, acc, cut) in &[
                (1, 1000, 70, 70, false, true),
                (8, 1000, 70, 40, true, true),
                (5, 1200, 130, 130, false, false),
                (3, 96, 9, 9, true, true),
                (8, 520, 200, 70, false, true),
            ] {
                let case = (t, k, n, split, acc);
                let e = case_nmse(gpu, &mut rng, case, None, true, cut).await;
                assert!(
                    e < 1e-10,
                    "{} t={t} k={k} n={n}: nmse {e}",
                    gpu.caps.subgroups
                );
            }
        }
    }

    /// One dense layer of random weights on `gpu` against the reference: (tokens, k, n, rows per
    /// buffer, accumulate), built by `build`, or with `tiles` every pass on the tiles, with the k
    /// ranges' scratch where `cut`; the nmse of y.
    async fn case_nmse(
        gpu: &Gpu,
        rng: &mut crate::rng::Rng,
        (t, k, n, split, acc): (usize, usize, usize, usize, bool),
        coop: Option<CoopInputs>,
        tiles: bool,
        cut: bool,
    ) -> f64 {
        let x = random(rng, t * k, 1.0);
        let (w, wb) = random_bf16(rng, n * k, 0.5);
        let b = random(rng, n, 0.5);
        let y0 = random(rng, t * n, 1.0);
        let w_split = split_rows(gpu, &wb, n, k, split);
        let xb = gpu.upload("x", f32_bytes(&x)).unwrap();
        let bb = gpu.upload("b", f32_bytes(&b)).unwrap();
        let yb = gpu.upload("y", f32_bytes(&y0)).unwrap();
        let part_bytes = split_sums_bytes(k as u32, n as u32, coop.is_some(), t as u32).unwrap();
        let part = gpu.storage("part", part_bytes.max(4)).unwrap();
        let l = Linear {
            bias: Some(&bb),
            accumulate: acc,
            split_sums: cut.then_some(&part),
            ..layer(&xb, &w_split, &yb, k, n, coop)
        };
        let got = run_pass(gpu, &l, tiles, t).await;
        // Only the tensor-core tiles round the inputs: the vector kernel's and the staged tiles'
        // passes keep them in f32.
        let first_tiled = if tiles { tiles_only() } else { plan(&l) }.unwrap().tiles;
        let on_coop = t as u32 >= first_tiled && tile_kind(l.k, coop).0.is_some();
        let x = if on_coop && coop == Some(CoopInputs::F16) {
            x.iter().map(|&v| f16_round(v)).collect()
        } else {
            x
        };
        nmse(&got, &reference(&x, &w, &b, &y0, k, acc))
    }

    /// Builds l's kernels (with `tiles` every pass on the tiles), runs a pass of t tokens and
    /// reads y.
    async fn run_pass(gpu: &Gpu, l: &Linear<'_>, tiles: bool, t: usize) -> Vec<f32> {
        let step = step_buffer(gpu);
        let d = if tiles {
            build_plan(gpu, &step, l, &tiles_only().unwrap())
        } else {
            build(gpu, &step, l)
        }
        .unwrap();
        let counts = StepCounts {
            tokens: t as u32,
            ..Default::default()
        };
        submit(gpu, &step, &counts, &d);
        gpu.read_f32(l.y, t * l.n_out as usize).await.unwrap()
    }

    gpu_test!(fused_norm_matches_rmsnorm_then_linear);
    async fn fused_norm_matches_rmsnorm_then_linear() {
        let mut rng = seeded("linear_norm");
        for gpu in gpus().await {
            // (tokens, k, n, rows per buffer, tiles only): the vector path with the norm fused,
            // and above the vector kernel's passes the tiled path on the separately normed
            // input; the staged tiles with k cut, which fuse it (given a zero normed input, so
            // that only the fused norm gives the right sums).
            for &(t, k, n, split, tiles) in &[
                (1, 64, 24, 24, false),
                (3, 256, 37, 16, false),
                (12, 64, 9, 9, false),
                (40, 64, 9, 9, false),
                (1, 1024, 70, 70, true),
                (8, 1024, 150, 100, true),
            ] {
                let x = random(&mut rng, t * k, 2.0);
                let g = random(&mut rng, k, 1.0);
                let (w, wb) = random_bf16(&mut rng, n * k, 0.5);
                let h: Vec<f32> = x.chunks(k).flat_map(|r| rmsnorm_ref(r, &g, 1e-5)).collect();
                let w_split = split_rows(gpu, &wb, n, k, split);
                let xb = gpu.upload("x", f32_bytes(&x)).unwrap();
                let gb = gpu.upload("g", f32_bytes(&g)).unwrap();
                // The tiled path reads the normed input, as the model's rmsnorm dispatch writes it.
                let h_given = if tiles { vec![0.0; h.len()] } else { h.clone() };
                let hb = gpu.upload("h", f32_bytes(&h_given)).unwrap();
                let yb = gpu.storage("y", (t * n * 4) as u64).unwrap();
                let part_bytes = split_sums_bytes(k as u32, n as u32, false, t as u32).unwrap();
                let part = gpu.storage("part", part_bytes.max(4)).unwrap();
                let l = Linear {
                    norm: Some(NormInput {
                        x: &xb,
                        w: &gb,
                        eps: 1e-5,
                    }),
                    split_sums: tiles.then_some(&part),
                    ..layer(&hb, &w_split, &yb, k, n, None)
                };
                assert!(!tiles || staged_fuses_norm(gpu, &l).unwrap());
                let got = run_pass(gpu, &l, tiles, t).await;
                let want = reference(&h, &w, &vec![0.0; n], &[], k, false);
                let e = nmse(&got, &want);
                assert!(e < 1e-10, "t={t} k={k} n={n}: nmse {e}");
            }
        }
    }

    /// Which of a layer's kernels a test builds: the vector kernel for every pass, `build`'s
    /// choice, or the tiles for every pass.
    #[derive(Clone, Copy, PartialEq)]
    enum Kernels {
        Vec,
        All,
        Tiles,
    }

    // The q/k/v projection with `rope`, on every path that rotates: the vector kernel's
    // epilogue (`Kernels::Vec`: for all its passes), the k ranges' sums of the tiles (decode
    // batches; the staged tiles' with the norm fused), rope.wgsl after whole tiles.
    gpu_test!(projection_rotates_q_and_writes_the_cache);
    async fn projection_rotates_q_and_writes_the_cache() {
        let mut rng = seeded("linear_rope");
        let paths = gpus().await.iter().flat_map(|g| {
            [(false, false), (true, false), (false, true), (true, true)]
                .map(|(f16, coop)| (g, f16, coop))
        });
        for (gpu, kv_f16, coop) in
            paths.filter(|(g, f, c)| (!f || g.caps.f16) && (!c || g.caps.coop))
        {
            // Inputs in two parts: the tolerances below are f32's.
            let inputs = coop.then_some(CoopInputs::Split);
            // (heads, kv heads, head dim, k, heads per weight buffer, tokens, which kernels)
            for &(nh, nkv, d, k, heads_split, t, path) in &[
                (
                    4usize,
                    2usize,
                    16usize,
                    64usize,
                    3usize,
                    1usize,
                    Kernels::Vec,
                ),
                (8, 2, 64, 96, 12, 5, Kernels::Vec),
                (2, 1, 32, 32, 1, 8, Kernels::Vec),
                // Several workgroup rows of tokens.
                (2, 1, 32, 32, 1, 20, Kernels::Vec),
                // Tiles: k cut into ranges (narrow and wide tensor-core tiles, the portable
                // ones) and whole (a pass above one token tile; short k).
                (4, 2, 16, 1024, 2, 6, Kernels::All),
                (4, 2, 16, 1024, 3, 40, Kernels::All),
                (4, 2, 16, 1024, 2, 70, Kernels::All),
                (8, 2, 64, 96, 12, 5, Kernels::All),
                // The staged tiles with k cut (the norm fused) on every adapter.
                (4, 2, 16, 1024, 2, 6, Kernels::Tiles),
            ] {
                if path == Kernels::Vec && coop {
                    continue;
                }
                let n = (nh + 2 * nkv) * d;
                // Two sequences from positions below 12, in a paged cache whose blocks are
                // taken in a shuffled order.
                let block = crate::model::kv_cache::block_size().unwrap() as usize;
                let seqs = 2usize;
                let per_seq = (12 + t.div_ceil(seqs)).div_ceil(block);
                let max_pos = per_seq * block;
                let mut free: Vec<u32> = (0..(seqs * per_seq) as u32).collect();
                free.rotate_left(1);
                free.reverse();
                let mut tables = crate::model::kv_cache::BlockPool::new(
                    seqs as u32,
                    per_seq as u32,
                    block as u32,
                    0,
                    free,
                );
                let x = random(&mut rng, t * k, 2.0);
                let g = random(&mut rng, k, 1.0);
                let (w, wb) = random_bf16(&mut rng, n * k, 0.5);
                let b = random(&mut rng, n, 0.5);
                let table = random_rope_table(&mut rng, max_pos * d / 2);
                // Each sequence's tokens at consecutive positions from a random start.
                let starts = [rng.below(12) as u32, rng.below(12) as u32];
                let toks: Vec<TokenInfo> = (0..t)
                    .map(|i| {
                        let s = (i % seqs) as u32;
                        let mut tok = TokenInfo::new(0, starts[s as usize] + (i / seqs) as u32, s);
                        tok.kv_slot[1] = tables.place(s, tok.pos).unwrap().0;
                        tok
                    })
                    .collect();
                let w_split = split_rows(gpu, &wb, n, k, heads_split * d);
                let xb = gpu.upload("x", f32_bytes(&x)).unwrap();
                // The tiles' input: RMSNorm(x) * g, written by the caller's rmsnorm dispatch.
                let h: Vec<f32> = x.chunks(k).flat_map(|r| rmsnorm_ref(r, &g, 1e-5)).collect();
                let hb = gpu.upload("h", f32_bytes(&h)).unwrap();
                let part_bytes = split_sums_bytes(k as u32, n as u32, coop, t as u32).unwrap();
                let part = gpu.storage("part", part_bytes.max(4)).unwrap();
                let gb = gpu.upload("g", f32_bytes(&g)).unwrap();
                let bb = gpu.upload("b", f32_bytes(&b)).unwrap();
                let tb = gpu.upload("table", bytemuck::cast_slice(&table)).unwrap();
                let tokb = gpu.upload("tokens", bytemuck::cast_slice(&toks)).unwrap();
                let yb = gpu.storage("y", (t * n * 4) as u64).unwrap();
                let pool = seqs * per_seq * block * nkv * d;
                let kv_bytes = (pool * if kv_f16 { 2 } else { 4 }) as u64;
                let kc = gpu.storage("k", kv_bytes).unwrap();
                let vc = gpu.storage("v", kv_bytes).unwrap();
                let step = step_buffer(gpu);
                let l = Linear {
                    bias: Some(&bb),
                    norm: Some(NormInput {
                        x: &xb,
                        w: &gb,
                        eps: 1e-5,
                    }),
                    rope: Some(RopeOutput {
                        tokens: &tokb,
                        table: &tb,
                        k_cache: &kc,
                        v_cache: &vc,
                        n_heads: nh as u32,
                        n_kv: nkv as u32,
                        head_dim: d as u32,
                        kv_kind: 1,
                        kv_f16,
                    }),
                    split_sums: Some(&part),
                    ..layer(&hb, &w_split, &yb, k, n, inputs)
                };
                let ds = match path {
                    Kernels::Vec => build_vec(gpu, &step, &l, 1..=crate::kernels::VEC_MAX_TOKENS),
                    Kernels::All => build(gpu, &step, &l),
                    Kernels::Tiles => build_plan(gpu, &step, &l, &tiles_only().unwrap()),
                }
                .unwrap();
                let counts = StepCounts {
                    tokens: t as u32,
                    ..Default::default()
                };
                submit(gpu, &step, &counts, &ds);
                let y = gpu.read_f32(&yb, t * n).await.unwrap();
                let (kg, vg) = (
                    read_kv(gpu, &kc, pool, kv_f16).await,
                    read_kv(gpu, &vc, pool, kv_f16).await,
                );

                let proj = reference(&h, &w, &b, &[], k, false);
                let (mut got, mut want) = (Vec::new(), Vec::new());
                let (mut got_kv, mut want_kv) = (Vec::new(), Vec::new());
                for (ti, tok) in toks.iter().enumerate() {
                    let p = tok.pos as usize;
                    let cs = &table[p * d / 2..(p + 1) * d / 2];
                    let mut row = proj[ti * n..(ti + 1) * n].to_vec();
                    for head in row[..(nh + nkv) * d].chunks_mut(d) {
                        rotate_halves(head, cs);
                    }
                    got.extend_from_slice(&y[ti * n..ti * n + nh * d]);
                    want.extend_from_slice(&row[..nh * d]);
                    // Head h of a slot: block [NKV, KV_BLOCK, D], then the slot's row in it.
                    let slot = tok.kv_slot[1] as usize;
                    for cache in [&kg, &vg] {
                        for h in 0..nkv {
                            let at = (((slot / block) * nkv + h) * block + slot % block) * d;
                            got_kv.extend_from_slice(&cache[at..at + d]);
                        }
                    }
                    want_kv.extend_from_slice(&row[nh * d..]);
                }
                let e = nmse(&got, &want);
                assert!(e < 1e-10, "nh={nh} d={d} t={t} coop {coop}: q nmse {e}");
                // The sums' f32 rounding differs from the reference's by an ulp or so, which
                // can tip an f16 rounding: k and v are checked value by value.
                if kv_f16 {
                    assert_kv_close(&got_kv, &want_kv, true);
                } else {
                    let e = nmse(&got_kv, &want_kv);
                    assert!(e < 1e-10, "nh={nh} d={d} t={t} coop {coop}: cache nmse {e}");
                }
            }
        }
    }
}
