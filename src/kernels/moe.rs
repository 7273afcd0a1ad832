//! MoE expert projections with MXFP4 weights and the clamped SwiGLU: `shaders/moe_vec.wgsl`
//! (matrix-vector: one workgroup row per slot for the fewest tokens, per expert for more) for
//! passes of up to `vec_max_tokens` tokens, `shaders/moe.wgsl` (tiled products of slots grouped
//! by expert) above.

use crate::error::{Error, Result};
use crate::gpu::mirror::wgsl_mirror;
use crate::gpu::shader::wgsl_const;
use crate::gpu::{Count, Dispatch, Gpu, Grid, ShaderKey};

wgsl_mirror! {
    "common/moe_params.wgsl", Params:
    /// `Params` of shaders/common/moe_params.wgsl (moe.wgsl and moe_vec.wgsl).
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub(crate) struct Params {
        hidden: u32,
        inter: u32,
        top_k: u32,
        e_start: u32,
        e_count: u32,
        limit: f32,
        alpha: f32,
        list_stride: u32,
        n_experts: u32,
        slices: u32,
        eps: f32,
        _pad: u32,
    }
}

/// The packed weights of experts [start, start + count) of one projection.
pub struct ExpertChunk {
    pub start: u32,
    pub count: u32,
    /// [count, rows, cols/32, 16] u8.
    pub blocks: wgpu::Buffer,
    /// [count, rows, cols/32] u8.
    pub scales: wgpu::Buffer,
}

/// Shapes and constants of one MoE layer.
#[derive(Clone, Copy)]
pub struct MoeShape {
    pub hidden: u32,
    pub inter: u32,
    pub experts: u32,
    pub top_k: u32,
    pub limit: f32,
    pub alpha: f32,
    /// Most token-expert slots in a forward pass (the row stride of the slot lists).
    pub max_slots: u32,
    /// Passes of up to this many tokens run the matrix-vector kernels (normally `vec_max_tokens`).
    pub vec_max_tokens: u32,
    /// Passes of up to this many tokens route from the router's partial logits (normally
    /// `router::partial_max_tokens`; at least `vec_max_tokens`, whose kernels need them).
    pub partial_max_tokens: u32,
    /// Slices of the router's partial logits that the matrix-vector path adds up.
    pub router_slices: u32,
    /// The tiled products on cooperative matrices (`Caps::coop` must hold).
    pub coop: bool,
    /// The matrix-vector products in f16 pairs, summed in f32 every block (the grouped kernels)
    /// or unit (one token's down): the `fast` precision; `Caps::f16_subnormals` must hold.
    pub f16: bool,
    /// The post-attention norm's epsilon (one token's gate_up norms its input with the router
    /// folded, `MoeBuffers::fold`).
    pub eps: f32,
}

/// The largest pass that the expert tiles leave to the matrix-vector kernels (moe_vec.wgsl's
/// COOP_VEC_MAX_TOKENS on the tensor cores; the portable tiles only beyond VEC_MAX_TOKENS).
pub fn vec_max_tokens(coop: bool) -> Result<u32> {
    if coop {
        wgsl_const("moe_vec.wgsl", "COOP_VEC_MAX_TOKENS")
    } else {
        Ok(super::VEC_MAX_TOKENS)
    }
}

/// The buffers one MoE layer works on.
pub struct MoeBuffers<'a> {
    /// [partial_max_tokens, slices, E] the router's partial logits (the matrix-vector path routes
    /// itself).
    pub router_part: &'a wgpu::Buffer,
    /// idx: \[T*K] chosen experts, wts: \[T*K] their weights (written by router.wgsl for the tiled
    /// path, by the matrix-vector path's own routing for the other).
    pub idx: &'a wgpu::Buffer,
    pub wts: &'a wgpu::Buffer,
    /// lists: [E, max_slots] slots per expert, counts: \[E].
    pub lists: &'a wgpu::Buffer,
    pub counts: &'a wgpu::Buffer,
    /// h: [T, H] normed input, act: [T*K, I], y: [T*K, H] per-slot outputs, x: [T, H] residual.
    pub h: &'a wgpu::Buffer,
    /// [T, H] h in f16 for the tensor-core tiles of large passes (`coop`; else not bound).
    pub h16: &'a wgpu::Buffer,
    pub act: &'a wgpu::Buffer,
    pub y: &'a wgpu::Buffer,
    pub x: &'a wgpu::Buffer,
    /// The router folded into the attention block (`router_fold`) for the passes of up to its
    /// `max_tokens`: the per-slot gate_up routes from these and norms x itself (`h` is not
    /// written), route_slots for grouped passes also writes `h`; larger passes route as
    /// without.
    pub fold: Option<FoldBuffers<'a>>,
}

/// What the FOLDED kernels read besides x, for passes of up to `max_tokens` tokens (at least
/// one): the two terms of the router logits [T, E], the post-attention norm's gain \[H] and the
/// router's bias \[E].
pub struct FoldBuffers<'a> {
    pub max_tokens: u32,
    pub z_x: &'a wgpu::Buffer,
    pub z_a: &'a wgpu::Buffer,
    pub norm: &'a wgpu::Buffer,
    pub router_bias: &'a wgpu::Buffer,
}

/// Moves the MXFP4 codes of the expert blocks in `blocks` (as the checkpoint stores them) to the
/// GPU layout the kernels decode (shaders/mxfp4_layout.wgsl), in place: the whole buffer, whose
/// padding words are zero and stay zero. Submitted, not waited for: later submissions see it
/// done.
pub fn relayout(gpu: &Gpu, blocks: &wgpu::Buffer) -> Result<()> {
    let words = u32::try_from(blocks.size() / 4).map_err(|_| Error::Limit {
        what: "expert blocks in one buffer".into(),
        needed: blocks.size(),
        max: u32::MAX as u64 * 4,
    })?;
    let per_wg = wgsl_const("mxfp4_layout.wgsl", "WG")?;
    let wgs = words.div_ceil(per_wg).max(1);
    let x = wgs.min(gpu.caps.max_workgroups_per_dim);
    let count = gpu.uniform("mxfp4 layout count", bytemuck::bytes_of(&[words, 0, 0, 0]));
    let key = ShaderKey::new("mxfp4_layout.wgsl", "main");
    gpu.dispatch_once(&key, &[blocks, &count], [x, wgs.div_ceil(x), 1])
}

/// The packed weights and biases of one MoE layer.
pub struct MoeWeights<'a> {
    pub gate_up: &'a [ExpertChunk],
    /// [E, 2I] f32.
    pub gate_up_bias: &'a wgpu::Buffer,
    pub down: &'a [ExpertChunk],
    /// [E, H] f32.
    pub down_bias: &'a wgpu::Buffer,
}

fn params(s: &MoeShape, start: u32, count: u32) -> Params {
    Params {
        hidden: s.hidden,
        inter: s.inter,
        top_k: s.top_k,
        e_start: start,
        e_count: count,
        limit: s.limit,
        alpha: s.alpha,
        list_stride: s.max_slots,
        n_experts: s.experts,
        slices: s.router_slices,
        eps: s.eps,
        _pad: 0,
    }
}

/// The shader of a tiled projection of moe.wgsl (`define` GATE_UP or DOWN; on the tensor cores
/// with `coop`, there with `sparse` for passes whose tiles are mostly dead slots, else with
/// their inputs in f16 (X16); the validation sweep takes them from here). The tensor-core tiles
/// go without naga's runtime checks: every index into their private and workgroup arrays has
/// constant bounds, and their divisors are constants or the config's positive top_k (H100, an
/// 8192-token prefill's gate_up 211 -> 198 ms, down 103 -> 99, PERF.md v0.56). (The dense
/// layers' tiles on the same common/coop_tile.wgsl lost without them: 128 -> 147 ms.)
pub(crate) fn tiled_key(
    entry: &'static str,
    define: &'static str,
    coop: bool,
    sparse: bool,
) -> ShaderKey {
    let x16 = x16(coop, sparse);
    ShaderKey::new("moe.wgsl", entry)
        .define_if(define, true)
        .define_if("COOP", coop)
        .define_if("SPARSE_TILES", coop && sparse)
        .define_if("X16", x16)
        .define_if("DRAIN_QUADS", x16 && define == "GATE_UP")
        .without_runtime_checks_if(coop)
}

/// Whether the tiles take their inputs in f16 (PACK's h16, act in f16): the full tensor-core
/// tiles of prefill, whose f32 inputs' loads were a fifth of their time (PERF.md v0.51). The
/// sparse tiles of decode batches read few inputs and keep f32 (no PACK dispatch a layer).
fn x16(coop: bool, sparse: bool) -> bool {
    coop && !sparse
}

/// The largest passes that take the sparse tiles: from experts * TS / top_k tokens on, the
/// tiles hold a tile of slots on average.
fn sparse_max_tokens(s: &MoeShape) -> Result<u32> {
    if !s.coop {
        return Ok(s.vec_max_tokens);
    }
    let tile_slots = wgsl_const("moe.wgsl", "COOP_TS")?;
    Ok((s.experts * tile_slots / s.top_k.max(1)).max(s.vec_max_tokens))
}

/// The shader of moe.wgsl's PACK (h to f16 for the X16 tiles).
pub(crate) fn pack_key() -> ShaderKey {
    ShaderKey::new("moe.wgsl", "pack").define_if("PACK", true)
}

/// One dispatch per expert chunk for the passes above `vec_max_tokens`: a workgroup per tile of
/// TR of the `rows` output rows by TS of an expert's slots (at most one per token), for each expert
/// of the chunk. On the tensor cores, passes whose experts hold less than a tile of slots on
/// average (decode batches) take the SPARSE_TILES variant, whose dead subgroups skip their
/// products (batch 64 +6%), larger ones (prefill) the plain one.
fn per_chunk<'a>(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    s: &MoeShape,
    (entry, define): (&'static str, &'static str),
    chunks: &'a [ExpertChunk],
    rows: u32,
    buffers: impl Fn(&'a ExpertChunk, bool) -> Vec<&'a wgpu::Buffer>,
) -> Result<Vec<Dispatch>> {
    let variant = if s.coop { "COOP" } else { "SIMT" };
    let tile_rows = wgsl_const("moe.wgsl", &format!("{variant}_TR"))?;
    let tile_slots = wgsl_const("moe.wgsl", &format!("{variant}_TS"))?;
    let sparse_max = sparse_max_tokens(s)?;
    let variants = [
        (true, s.vec_max_tokens + 1..=sparse_max),
        (false, sparse_max + 1..=u32::MAX),
    ];
    let mut out = Vec::new();
    for (sparse, tokens) in variants {
        if tokens.is_empty() {
            continue;
        }
        let key = tiled_key(entry, define, s.coop, sparse);
        for c in chunks {
            let p = params(s, c.start, c.count);
            let (bufs, x) = (buffers(c, x16(s.coop, sparse)), rows.div_ceil(tile_rows));
            let grid = Grid::new(x, Count::Tokens, tile_slots).depth(c.count);
            let d = Dispatch::new(gpu, &key, step, bytemuck::bytes_of(&p), &bufs, grid)?;
            out.push(d.only_for(Count::Tokens, tokens.clone()));
        }
    }
    Ok(out)
}

/// The whole MoE block: x += sum_k w_k * (down_k(SwiGLU(gate_up_k(h) + b)) + b). Passes of up to
/// `vec_max_tokens` tokens take the matrix-vector kernels (`vec_dispatches`), larger ones the
/// tiled ones: route, then gate_up and down per expert chunk; both end in combine except the
/// per-slot passes, whose down adds to the residual itself.
pub fn build(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    s: &MoeShape,
    b: &MoeBuffers,
    w: &MoeWeights,
) -> Result<Vec<Dispatch>> {
    if !s.hidden.is_multiple_of(32) || !s.inter.is_multiple_of(32) {
        return Err(Error::Unsupported(format!(
            "MXFP4 experts need hidden ({}) and intermediate ({}) sizes that are multiples of 32",
            s.hidden, s.inter
        )));
    }
    // Routing and combining span every expert: one dispatch each, for the passes of `tokens`.
    let all = params(s, 0, s.experts);
    let whole = |key: ShaderKey, bufs: &[&wgpu::Buffer], grid, tokens| -> Result<Dispatch> {
        let d = Dispatch::new(gpu, &key, step, bytemuck::bytes_of(&all), bufs, grid)?;
        Ok(d.only_for(Count::Tokens, tokens))
    };
    // The picks from the router's partial logits, for the passes that route from them but whose
    // kernels do not route themselves (all but the per-slot matrix-vector passes).
    let slots = slot_max_tokens(s, b)?;
    let first = slots.gate_up + 1;
    let key = super::row_group_key(gpu, "moe_vec.wgsl", "route_slots").define_if("ROUTE", true);
    let grid = Grid::new(1, Count::Tokens, 1);
    let mut out = Vec::new();
    let mut plain_first = first;
    if let Some(f) = &b.fold {
        let bufs = [f.z_x, b.idx, b.wts, b.x, f.z_a, f.norm, f.router_bias, b.h];
        let folded = key.clone().define_if("FOLDED", true);
        out.push(whole(folded, &bufs, grid, first..=f.max_tokens)?);
        plain_first = first.max(f.max_tokens + 1);
    }
    let picks = [b.router_part, b.idx, b.wts];
    out.push(whole(
        key,
        &picks,
        grid,
        plain_first..=s.partial_max_tokens,
    )?);
    out.extend(vec_dispatches(gpu, step, s, b, w, &slots)?);
    let tiled = (s.vec_max_tokens + 1)..=u32::MAX;
    let key = ShaderKey::new("moe.wgsl", "route").define_if("ROUTE", true);
    let lists = [b.idx, b.lists, b.counts];
    out.push(whole(
        key,
        &lists,
        Grid::new(s.experts, Count::One, 1),
        tiled,
    )?);
    // h in f16 for the full tiles (not the sparse ones), where they take it.
    if x16(s.coop, false) {
        let key = pack_key();
        let grid = Grid::new((s.hidden / 8).div_ceil(64), Count::Tokens, 1);
        let tokens = sparse_max_tokens(s)? + 1..=u32::MAX;
        out.push(whole(key, &[b.h, b.h16], grid, tokens)?);
    }
    out.extend(per_chunk(
        gpu,
        step,
        s,
        ("gate_up", "GATE_UP"),
        w.gate_up,
        2 * s.inter,
        |c, x16| {
            vec![
                if x16 { b.h16 } else { b.h },
                b.lists,
                b.counts,
                &c.blocks,
                &c.scales,
                w.gate_up_bias,
                b.act,
            ]
        },
    )?);
    out.extend(per_chunk(
        gpu,
        step,
        s,
        ("down", "DOWN"),
        w.down,
        s.hidden,
        |c, _| {
            vec![
                b.act,
                b.lists,
                b.counts,
                b.wts,
                &c.blocks,
                &c.scales,
                w.down_bias,
                b.y,
            ]
        },
    )?);
    // Each token's slot outputs added to x in slot order (the per-slot down of the
    // matrix-vector path does it itself).
    let key = ShaderKey::new("moe.wgsl", "combine").define_if("COMBINE", true);
    let grid = Grid::new(s.hidden.div_ceil(64), Count::Tokens, 1);
    let tokens = slots.down + 1..=u32::MAX;
    out.push(whole(key, &[b.y, b.x], grid, tokens)?);
    Ok(out)
}

/// The largest passes that take the per-slot matrix-vector kernels, of each projection (0: none).
struct SlotMax {
    gate_up: u32,
    down: u32,
}

/// SLOT_MAX_TOKENS for gate_up (within the matrix-vector passes and the router fold's), and
/// DOWN_SLOT_MAX_TOKENS for down (at least gate_up's, whose slots it reads from the per-slot
/// routing).
fn slot_max_tokens(s: &MoeShape, b: &MoeBuffers) -> Result<SlotMax> {
    let fold_max = b.fold.as_ref().map_or(u32::MAX, |f| f.max_tokens);
    let gate_up = wgsl_const("moe_vec.wgsl", "SLOT_MAX_TOKENS")?
        .min(s.vec_max_tokens)
        .min(fold_max);
    let down = wgsl_const("moe_vec.wgsl", "DOWN_SLOT_MAX_TOKENS")?.min(s.vec_max_tokens);
    Ok(SlotMax {
        gate_up,
        down: down.max(gate_up),
    })
}

/// One shader variant of a matrix-vector projection and the passes it serves.
struct Variant {
    /// GROUPED's FEW (a few slots at once).
    few: bool,
    /// The per-slot gate_up's one-token shape (ONE_TOKEN).
    one_token: bool,
    /// Workgroups across the projection's rows.
    grid_x: u32,
    tokens: std::ops::RangeInclusive<u32>,
}

/// The matrix-vector path, one dispatch of each projection per expert buffer. Passes of up to
/// SLOT_MAX_TOKENS tokens: gate_up (routing and SwiGLU included) per slot; larger ones: routing
/// on its own, then gate_up per expert, so that each routed expert's weights are read once for
/// all its tokens. Down likewise per token (adding to the residual) up to DOWN_SLOT_MAX_TOKENS,
/// per expert above (`build`'s COMBINE adds the slots' outputs).
fn vec_dispatches(
    gpu: &Gpu,
    step: &wgpu::Buffer,
    s: &MoeShape,
    b: &MoeBuffers,
    w: &MoeWeights,
    slot_max: &SlotMax,
) -> Result<Vec<Dispatch>> {
    let mut out = Vec::new();
    if s.vec_max_tokens == 0 {
        return Ok(out);
    }
    let gate_up_rows = wgsl_const("moe_vec.wgsl", "GATE_UP_ROWS")?;
    let down_groups =
        wgsl_const("moe_vec.wgsl", "VEC_WG")? / wgsl_const("moe_vec.wgsl", "DOWN_GL")?;
    let down_rows = wgsl_const("moe_vec.wgsl", "DOWN_ROWS")? / down_groups;
    let gate_up_grouped_rows = wgsl_const("moe_vec.wgsl", "GATE_UP_GROUPED_ROWS")?;
    let down_grouped_rows = wgsl_const("moe_vec.wgsl", "DOWN_GROUPED_ROWS")?;
    let max_k = wgsl_const("moe_vec.wgsl", "MAX_K")?;
    let max_e = wgsl_const("moe_vec.wgsl", "MAX_E")?;
    if s.top_k > max_k || s.experts > max_e {
        return Err(Error::Unsupported(format!(
            "top-{} of {} experts (the matrix-vector kernels take at most {max_k} of {max_e})",
            s.top_k, s.experts
        )));
    }
    // Each projection binds its inputs, then one buffer's blocks and scales, then its outputs.
    // Per slot: gate_up's workgroups take GATE_UP_ROWS rows of one slot; down's the R =
    // DOWN_ROWS / groups rows of every slot of a token, added to the residual stream. Grouped:
    // GROUPED_ROWS rows of one expert for all its slots.
    struct Projection<'a> {
        entry: &'static str,
        define: &'static str,
        chunks: &'a [ExpertChunk],
        grid_x: u32,
        /// Grid rows; None: GROUPED, a workgroup row per expert of the buffer.
        count: Option<Count>,
        /// The largest pass on the per-slot kernel of this projection.
        slot_max: u32,
        before: Vec<&'a wgpu::Buffer>,
        after: Vec<&'a wgpu::Buffer>,
    }
    let (one_gate_up_before, one_gate_up_after) = match &b.fold {
        Some(f) => (
            vec![b.x, f.z_x, b.idx, b.wts],
            vec![w.gate_up_bias, b.act, f.z_a, f.norm, f.router_bias],
        ),
        None => (
            vec![b.h, b.router_part, b.idx, b.wts],
            vec![w.gate_up_bias, b.act],
        ),
    };
    // Both gate_up kernels before either down (a pass may take the grouped gate_up and the
    // per-slot down).
    let projections = [
        Projection {
            entry: "gate_up",
            define: "GATE_UP",
            chunks: w.gate_up,
            grid_x: (2 * s.inter).div_ceil(gate_up_rows),
            count: Some(Count::Slots),
            slot_max: slot_max.gate_up,
            before: one_gate_up_before,
            after: one_gate_up_after,
        },
        Projection {
            entry: "gate_up",
            define: "GATE_UP",
            chunks: w.gate_up,
            grid_x: (2 * s.inter).div_ceil(gate_up_grouped_rows),
            count: None,
            slot_max: slot_max.gate_up,
            before: vec![b.h, b.idx],
            after: vec![w.gate_up_bias, b.act],
        },
        Projection {
            entry: "down",
            define: "DOWN",
            chunks: w.down,
            grid_x: s.hidden.div_ceil(down_rows),
            count: Some(Count::Tokens),
            slot_max: slot_max.down,
            before: vec![b.act, b.idx, b.wts],
            after: vec![w.down_bias, b.x],
        },
        Projection {
            entry: "down",
            define: "DOWN",
            chunks: w.down,
            grid_x: s.hidden.div_ceil(down_grouped_rows),
            count: None,
            slot_max: slot_max.down,
            before: vec![b.act, b.idx, b.wts],
            after: vec![w.down_bias, b.y],
        },
    ];
    // The grouped passes of up to FEW_MAX_TOKENS tokens take the FEW variant; all of them with
    // f16 products.
    let few_max = if s.f16 {
        s.vec_max_tokens
    } else {
        wgsl_const("moe_vec.wgsl", "FEW_MAX_TOKENS")?
    };
    let one_token_rows = wgsl_const("moe_vec.wgsl", "ONE_TOKEN_GATE_UP_ROWS")?;
    for pr in projections {
        let grouped = pr.count.is_none();
        let folded = b.fold.is_some() && !grouped && pr.define == "GATE_UP";
        let plain = |tokens| Variant {
            few: false,
            one_token: false,
            grid_x: pr.grid_x,
            tokens,
        };
        let variants = if grouped {
            vec![
                Variant {
                    few: true,
                    ..plain(pr.slot_max + 1..=few_max.min(s.vec_max_tokens))
                },
                plain((few_max + 1).max(pr.slot_max + 1)..=s.vec_max_tokens),
            ]
        } else if folded {
            // One token's folded gate_up takes larger workgroups of its own.
            vec![
                Variant {
                    one_token: true,
                    grid_x: (2 * s.inter).div_ceil(one_token_rows),
                    ..plain(1..=pr.slot_max.min(1))
                },
                plain(2..=pr.slot_max),
            ]
        } else {
            vec![plain(1..=pr.slot_max)]
        };
        let base = super::row_group_key(gpu, "moe_vec.wgsl", pr.entry);
        for v in variants.into_iter().filter(|v| !v.tokens.is_empty()) {
            let key = vec_key(base.clone(), pr.define, grouped, v.few, s.f16)
                .define_if("FOLDED", folded)
                .define_if("ONE_TOKEN", v.one_token);
            for c in pr.chunks {
                let p = params(s, c.start, c.count);
                let bufs = [&pr.before[..], &[&c.blocks, &c.scales], &pr.after[..]].concat();
                let count = pr.count.unwrap_or(Count::Fixed(c.count));
                let d = Dispatch::new(
                    gpu,
                    &key,
                    step,
                    bytemuck::bytes_of(&p),
                    &bufs,
                    Grid::new(v.grid_x, count, 1),
                )?;
                out.push(d.only_for(Count::Tokens, v.tokens.clone()));
            }
        }
    }
    Ok(out)
}

/// A moe_vec.wgsl projection's shader (`define` GATE_UP or DOWN) from `base` (its file, entry
/// and SUBGROUPS): grouped (FEW or not) or per slot, with f16 products where `f16` asks for
/// them and they pay (every grouped kernel, the per-slot down; the per-slot gate_up was slower
/// in f16 on the H200, PERF.md v0.31, and 0.5-1.5% faster on an H100 in v0.47: not worth
/// rounding its products). The validation sweep takes them from here.
pub(crate) fn vec_key(
    base: ShaderKey,
    define: &'static str,
    grouped: bool,
    few: bool,
    f16: bool,
) -> ShaderKey {
    base.define_if(define, true)
        .define_if("GROUPED", grouped)
        .define_if("FEW", few)
        .define_if("F16_PRODUCTS", f16 && (grouped || define == "DOWN"))
}

/// MXFP4 dequantization on the host (the tests' reference): one row of `cols` values from its
/// blocks and scales.
#[cfg(test)]
fn dequant_row(blocks: &[u8], scales: &[u8]) -> Vec<f32> {
    const LUT: [f32; 16] = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];
    let mut out = Vec::with_capacity(scales.len() * 32);
    for (b, &s) in scales.iter().enumerate() {
        let scale = 2f32.powi(s as i32 - 127);
        for &byte in &blocks[b * 16..(b + 1) * 16] {
            out.push(LUT[(byte & 15) as usize] * scale);
            out.push(LUT[(byte >> 4) as usize] * scale);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::dispatch::{StepCounts, step_buffer, submit};
    use crate::kernels::testing::*;
    use crate::rng::Rng;

    fn random_mxfp4(rng: &mut Rng, rows: usize, cols: usize) -> (Vec<u8>, Vec<u8>) {
        let blocks = (0..rows * cols / 2).map(|_| rng.below(256) as u8).collect();
        let scales = (0..rows * cols / 32)
            .map(|_| 120 + rng.below(6) as u8)
            .collect();
        (blocks, scales)
    }

    // The f16 probe (Gpu::probe_f16) against what the devices the tests run on are known to do:
    // lavapipe and NVIDIA keep f16 subnormals, so a "no" there means the probe is broken (its code
    // word out of step with the decode, say) and the f16 products would silently go unused.
    gpu_test!(f16_probe_finds_subnormals_kept);
    async fn f16_probe_finds_subnormals_kept() {
        for gpu in gpus().await {
            if gpu.caps.f16 {
                assert!(gpu.caps.f16_subnormals, "{}: probe says no", gpu.info.name);
            }
        }
    }

    gpu_test!(moe_matches_reference);
    async fn moe_matches_reference() {
        let mut rng = seeded("moe");
        for gpu in gpus().await {
            // (tokens, hidden, inter, experts, top_k, experts per buffer)
            for &(t, hd, it, e, k, per) in &[
                (23, 64, 64, 3, 2, 2),
                (1usize, 64usize, 32usize, 4usize, 2usize, 4usize),
                (7, 96, 64, 6, 3, 4),
                (3, 32, 96, 5, 1, 2),
                // More experts per token than a workgroup has row groups, alone (the per-slot
                // path) and with another token (experts shared by two tokens' slots).
                (1, 64, 32, 8, 6, 3),
                (2, 64, 32, 8, 6, 3),
                // Input widths over several chunks of the grouped kernel (the last one short);
                // experts with more slots than it runs at once.
                (20, 320, 608, 3, 2, 2),
                // One token's rows over several trips of a row group's lanes (the last one
                // partial); the grouped kernel's chunks too.
                (1, 1120, 1056, 4, 2, 4),
                (2, 1120, 1056, 4, 2, 4),
                // Experts with several tiles of slots, rows not a multiple of the tile's (on the
                // tensor cores, more than experts * 64 / top_k tokens: the tiles with f16 inputs).
                (70, 96, 32, 2, 2, 1),
                (300, 64, 64, 4, 2, 2),
                // The most experts a token ranks from (MAX_E).
                (1, 64, 32, 256, 4, 256),
                (3, 64, 32, 256, 4, 128),
            ] {
                let s = MoeShape {
                    hidden: hd as u32,
                    inter: it as u32,
                    top_k: k as u32,
                    limit: 7.0,
                    alpha: 1.702,
                    experts: e as u32,
                    max_slots: (t * k) as u32,
                    vec_max_tokens: 0,
                    partial_max_tokens: 0,
                    router_slices: 1,
                    coop: false,
                    f16: false,
                    eps: 1e-5,
                };
                let (gu_b, gu_s) = random_mxfp4(&mut rng, e * 2 * it, hd);
                let (dn_b, dn_s) = random_mxfp4(&mut rng, e * hd, it);
                let gu_bias = random(&mut rng, e * 2 * it, 0.5);
                let dn_bias = random(&mut rng, e * hd, 0.5);
                let h = random(&mut rng, t * hd, 1.0);
                let x0 = random(&mut rng, t * hd, 1.0);
                // Router logits per token, given to the matrix-vector path as partial sums over
                // `slices` slices (as router.wgsl writes them) and to the tiled path as the
                // picks and softmax weights they imply (the router's own job there).
                let slices = 3usize;
                let mut part = vec![0.0f32; t * slices * e];
                let mut idx: Vec<u32> = Vec::new();
                let mut wts = Vec::new();
                for ti in 0..t {
                    let logits = random(&mut rng, e, 3.0);
                    for (ex, &v) in logits.iter().enumerate() {
                        let cut = random(&mut rng, slices - 1, 1.0);
                        let rest = v - cut.iter().sum::<f32>();
                        for (c, pv) in cut.iter().chain([&rest]).enumerate() {
                            part[(ti * slices + c) * e + ex] = *pv;
                        }
                    }
                    // The sums the kernel sees, in its order, decide the picks.
                    let sums: Vec<f32> = (0..e)
                        .map(|ex| (0..slices).map(|c| part[(ti * slices + c) * e + ex]).sum())
                        .collect();
                    let (i, w) = crate::kernels::router::reference(&sums, k);
                    idx.extend(i);
                    wts.extend(w);
                }
                let chunk = |b: &[u8], sc: &[u8], rows: usize, cols: usize| -> Vec<ExpertChunk> {
                    (0..e)
                        .step_by(per)
                        .map(|st| {
                            let c = per.min(e - st);
                            let (bb, sb) = (rows * cols / 2, rows * cols / 32);
                            ExpertChunk {
                                start: st as u32,
                                count: c as u32,
                                blocks: {
                                    let buf = gpu.upload("b", &b[st * bb..(st + c) * bb]).unwrap();
                                    relayout(gpu, &buf).unwrap();
                                    buf
                                },
                                scales: gpu.upload("s", &sc[st * sb..(st + c) * sb]).unwrap(),
                            }
                        })
                        .collect()
                };
                let gu = chunk(&gu_b, &gu_s, 2 * it, hd);
                let dn = chunk(&dn_b, &dn_s, hd, it);
                let hb = gpu.upload("h", f32_bytes(&h)).unwrap();
                let pb = gpu.upload("part", f32_bytes(&part)).unwrap();
                let gbb = gpu.upload("gub", f32_bytes(&gu_bias)).unwrap();
                let dbb = gpu.upload("dnb", f32_bytes(&dn_bias)).unwrap();
                let ab = gpu.storage("act", (t * k * it * 4) as u64).unwrap();
                let h16b = gpu.storage("h16", (t * hd * 2) as u64).unwrap();
                let yb = gpu.storage("y", (t * k * hd * 4) as u64).unwrap();
                let lb = gpu.storage("lists", (e * t * k * 4) as u64).unwrap();
                let cb = gpu.storage("counts", (e * 4) as u64).unwrap();
                let step = step_buffer(gpu);
                let ws = MoeWeights {
                    gate_up: &gu,
                    gate_up_bias: &gbb,
                    down: &dn,
                    down_bias: &dbb,
                };
                // Every path on the same inputs: tiled (on the tensor cores too where the
                // adapter has them; routed by the router or from the partial logits), and
                // matrix-vector (per slot for the fewest tokens, per expert for more).
                // Each run gives the picks and weights it stored and the residual it left.
                let run = async |vec_max_tokens: u32,
                                 partial_max_tokens: u32,
                                 coop: bool,
                                 f16: bool,
                                 fold: Option<FoldBuffers<'_>>| {
                    let xb = gpu.upload("x", f32_bytes(&x0)).unwrap();
                    // No path may read activations that an earlier path left.
                    gpu.queue.write_buffer(&ab, 0, &vec![0u8; t * k * it * 4]);
                    // The router's picks, or written from the partial logits.
                    let (ib, wb) = if partial_max_tokens == 0 {
                        let i = gpu.upload("idx", bytemuck::cast_slice(&idx)).unwrap();
                        (i, gpu.upload("wts", f32_bytes(&wts)).unwrap())
                    } else {
                        let bytes = (t * k * 4) as u64;
                        (
                            gpu.storage("idx", bytes).unwrap(),
                            gpu.storage("wts", bytes).unwrap(),
                        )
                    };
                    let bufs = MoeBuffers {
                        router_part: &pb,
                        idx: &ib,
                        wts: &wb,
                        lists: &lb,
                        counts: &cb,
                        h: &hb,
                        h16: &h16b,
                        act: &ab,
                        y: &yb,
                        x: &xb,
                        fold,
                    };
                    let shape = MoeShape {
                        vec_max_tokens,
                        partial_max_tokens,
                        router_slices: slices as u32,
                        coop,
                        f16,
                        ..s
                    };
                    let d = build(gpu, &step, &shape, &bufs, &ws).unwrap();
                    let c = StepCounts {
                        tokens: t as u32,
                        slots: (t * k) as u32,
                        ..Default::default()
                    };
                    submit(gpu, &step, &c, &d);
                    (
                        gpu.read_u32(&ib, t * k).await.unwrap(),
                        gpu.read_f32(&wb, t * k).await.unwrap(),
                        gpu.read_f32(&xb, t * hd).await.unwrap(),
                    )
                };
                let check_picks = |path: &str, got: &(Vec<u32>, Vec<f32>, Vec<f32>)| {
                    assert_eq!(got.0, idx, "t={t} {path}: experts");
                    let (w, want) = (&got.1, &wts);
                    assert!(max_abs(w, want) < 1e-6, "{path}: weights {w:?} {want:?}");
                    got.2.clone()
                };
                // The residual after the experts, computed in f64 from their input h and the
                // picks and weights.
                let expected = |h: &[f32], idx: &[u32], wts: &[f32]| -> Vec<f32> {
                    let mut want = x0.clone();
                    for ti in 0..t {
                        for j in 0..k {
                            let ex = idx[ti * k + j] as usize;
                            let mut act = vec![0.0f64; it];
                            for i in 0..it {
                                let mut g = [0.0f64; 2];
                                for (q, gq) in g.iter_mut().enumerate() {
                                    let row = ex * 2 * it + 2 * i + q;
                                    let w = dequant_row(
                                        &gu_b[row * hd / 2..(row + 1) * hd / 2],
                                        &gu_s[row * hd / 32..(row + 1) * hd / 32],
                                    );
                                    *gq = (0..hd)
                                        .map(|c| w[c] as f64 * h[ti * hd + c] as f64)
                                        .sum::<f64>()
                                        + gu_bias[ex * 2 * it + 2 * i + q] as f64;
                                }
                                let gate = g[0].min(7.0);
                                let up = g[1].clamp(-7.0, 7.0);
                                act[i] = gate / (1.0 + (-1.702 * gate).exp()) * (up + 1.0);
                            }
                            for n in 0..hd {
                                let row = ex * hd + n;
                                let w = dequant_row(
                                    &dn_b[row * it / 2..(row + 1) * it / 2],
                                    &dn_s[row * it / 32..(row + 1) * it / 32],
                                );
                                let y = (0..it).map(|c| w[c] as f64 * act[c]).sum::<f64>()
                                    + dn_bias[row] as f64;
                                want[ti * hd + n] += (wts[ti * k + j] as f64 * y) as f32;
                            }
                        }
                    }
                    want
                };
                let t32 = t as u32;
                let mut paths = Vec::new();
                for (path, vec_max, partial_max, coop, f16) in [
                    ("tiles", 0, 0, false, false),
                    ("tiles routed from partials", 0, t32, false, false),
                    ("matrix-vector", t32, t32, false, false),
                    ("tensor-core tiles", 0, 0, true, false),
                    ("matrix-vector, f16 products", t32, t32, false, true),
                ] {
                    if (coop && !gpu.caps.coop) || (f16 && !gpu.caps.f16_subnormals) {
                        continue;
                    }
                    let got = run(vec_max, partial_max, coop, f16, None).await;
                    paths.push((path, coop || f16, check_picks(path, &got)));
                }
                let want = expected(&h, &idx, &wts);
                for (path, f16_inputs, got) in &paths {
                    // f32 throughout, or f16 weights (exact here) and inputs (unit roundoff
                    // 2^-11): on the tensor cores with f32 sums; in f16 pairs with f16 sums of up
                    // to 16 products, f32 beyond (lavapipe: nmse 2e-7 to 2e-6 over two such
                    // projections and the SwiGLU between them).
                    let tol = if *f16_inputs { 1e-5 } else { 1e-11 };
                    let e2 = nmse(got, &want);
                    assert!(e2 < tol, "t={t} h={hd} i={it} {path}: nmse {e2}");
                }
                // The router folded into the attention block (where the adapter has the
                // bindings): each token's residual in x0, normed with a gain, is the experts'
                // input, its logits s (z_x + z_a) + b_r; the per-slot gate_up or route_slots
                // (for the matrix-vector path and the tiles) take the norm and rank them.
                if crate::kernels::router_fold::fits(gpu, e as u32).unwrap() {
                    let g = random(&mut rng, hd, 2.0);
                    let z_x = random(&mut rng, t * e, 3.0);
                    let z_a = random(&mut rng, t * e, 3.0);
                    let b_r = random(&mut rng, e, 1.0);
                    let (mut f_idx, mut f_wts, mut h_fold) = (Vec::new(), Vec::new(), Vec::new());
                    for ti in 0..t {
                        let row = &x0[ti * hd..(ti + 1) * hd];
                        let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / hd as f64;
                        let scale = (1.0 / (ms + s.eps as f64).sqrt()) as f32;
                        let logits: Vec<f32> = (0..e)
                            .map(|i| scale * (z_x[ti * e + i] + z_a[ti * e + i]) + b_r[i])
                            .collect();
                        let (i, w) = crate::kernels::router::reference(&logits, k);
                        f_idx.extend(i);
                        f_wts.extend(w);
                        h_fold.extend(row.iter().zip(&g).map(|(v, gi)| v * scale * gi));
                    }
                    let up = |name, v: &[f32]| gpu.upload(name, f32_bytes(v)).unwrap();
                    let (zxb, zab, gb, rbb) = (
                        up("z_x", &z_x),
                        up("z_a", &z_a),
                        up("g", &g),
                        up("b_r", &b_r),
                    );
                    // Passes above the fold's tokens route as without it (first: the folded
                    // runs below overwrite h).
                    let fold = |max_tokens| FoldBuffers {
                        max_tokens,
                        z_x: &zxb,
                        z_a: &zab,
                        norm: &gb,
                        router_bias: &rbb,
                    };
                    if t > 1 {
                        let got = run(t32, t32, false, false, Some(fold(1))).await;
                        let e2 = nmse(
                            &check_picks("above the fold", &got),
                            &expected(&h, &idx, &wts),
                        );
                        assert!(e2 < 1e-11, "t={t} above the fold: nmse {e2}");
                    }
                    let want = expected(&h_fold, &f_idx, &f_wts);
                    for (path, vec_max) in [("matrix-vector", t32), ("tiles", 0)] {
                        let got = run(vec_max, t32, false, false, Some(fold(t32))).await;
                        assert_eq!(got.0, f_idx, "t={t} folded {path}: experts");
                        let w = max_abs(&got.1, &f_wts);
                        assert!(w < 1e-6, "t={t} folded {path}: weights off by {w}");
                        let e2 = nmse(&got.2, &want);
                        assert!(e2 < 1e-11, "t={t} h={hd} i={it} folded {path}: nmse {e2}");
                    }
                }
            }
        }
    }
}
