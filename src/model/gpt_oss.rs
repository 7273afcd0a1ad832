//! The gpt-oss forward pass: weights on the GPU, activations sized for one forward pass, and the
//! fixed list of dispatches that runs it. Layers are named as in the checkpoint.
//!
//! A forward pass takes any mix of tokens from any sequences (a prompt chunk, one decode token per
//! running sequence, or both), writes their K/V into the cache, and produces logits only for the
//! rows the caller asks for, then samples them on the GPU.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::buffer::{ReadBack, Upload};
use crate::gpu::dispatch::{self, StepCounts};
use crate::gpu::{Count, Dispatch, Gpu};
use crate::kernels::attention::{self, Attention};
use crate::kernels::embed;
use crate::kernels::linear::{self, CoopInputs, Linear, NormInput, RopeOutput};
use crate::kernels::moe::{self, FoldBuffers, MoeBuffers, MoeShape, MoeWeights};
use crate::kernels::rmsnorm::{self, RmsNorm};
use crate::kernels::router::{self, Router};
use crate::kernels::router_fold::{self, FoldInputs, Term};
use crate::kernels::sample::{self, GENERATED, LogitBias, SampleParams, row_bias_entries};
use crate::model::config::ModelConfig;
use crate::model::inputs::TokenInfo;
use crate::model::kv_cache::{KvCache, LayerCache};
use crate::model::tensors;
use crate::model::upload::{self, LayerWeights, Weights};
use crate::model::weights::WeightSource;

/// Sizes fixed at load time.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Most tokens in one forward pass (longer prompts are prefilled in chunks).
    pub max_tokens: u32,
    /// Most sequences held in the KV cache at once.
    pub max_seqs: u32,
    /// Most positions per sequence.
    pub max_context: u32,
    /// Store the KV cache in f16 where the adapter has SHADER_F16 (half the memory and attention
    /// bandwidth; keys and values rounded to f16). False keeps it in f32.
    pub kv_f16: bool,
    /// Run the many-token passes' matrix products (experts and dense layers) on the tensor cores
    /// (f16 inputs, f32 accumulation) where the adapter has cooperative matrices, and decode's
    /// expert products in f16 pairs (summed in f32 every 16 or 32) where `Caps::f16_products`
    /// holds: the `fast` precision.
    pub coop: bool,
    /// GPU bytes for the KV cache; None gives every sequence slot a whole context. Less makes
    /// sequences share the pool as they grow (see `kv_cache::PoolSizes`).
    pub kv_cache_bytes: Option<u64>,
    /// Most logits rows per pass (each a vocabulary of f32: 0.8 MB for gpt-oss). None gives one
    /// per sequence, which is what sampling needs; every position's logits (the `logits`
    /// command) want max_tokens.
    pub max_outputs: Option<u32>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            max_tokens: 512,
            max_seqs: 4,
            max_context: 8192,
            kv_f16: true,
            coop: true,
            kv_cache_bytes: None,
            max_outputs: None,
        }
    }
}

/// One forward pass: its tokens, which of them want logits, and how to sample each of those.
pub struct Batch<'a> {
    pub tokens: &'a [TokenInfo],
    /// Indices into `tokens` whose logits are wanted.
    pub outputs: &'a [u32],
    /// One per output.
    pub sampling: &'a [SampleParams],
    /// The outputs' logit_bias entries, each output's at the range its sampling settings give.
    pub bias: &'a [LogitBias],
}

/// The buffers one forward pass works in, sized at load for `max_tokens` tokens and
/// `max_outputs` logits rows. Shapes: T tokens, O outputs, H hidden, E experts, K top-k.
struct Activations {
    /// [T] TokenInfo, and [O] the token row of each output.
    tokens: Upload,
    out_rows: Upload,
    /// [T, H] the residual stream, and h = RMSNorm(x) for the tiled kernels and the experts.
    x: wgpu::Buffer,
    h: wgpu::Buffer,
    /// [T, H] h in f16 for the tensor-core expert tiles (a word where there are none).
    h16: wgpu::Buffer,
    /// [T, (NH + 2 NKV) D] q, k, v; [T, NH D] attention output; split attention's scratch.
    qkv: wgpu::Buffer,
    attn: wgpu::Buffer,
    attn_partials: wgpu::Buffer,
    /// [partial_max_tokens, slices, E] a decode pass's partial router logits; [T, K] chosen experts
    /// and their weights.
    router_part: wgpu::Buffer,
    /// The passes of up to this many tokens route from router_part (`router::partial_max_tokens`):
    /// its rows, and the graph's range for them.
    partial_max_tokens: u32,
    expert_idx: wgpu::Buffer,
    expert_wts: wgpu::Buffer,
    /// [T K, I] SwiGLU outputs, [T K, H] per-slot outputs; [E, T K] slots per expert, [E] counts.
    expert_act: wgpu::Buffer,
    expert_out: wgpu::Buffer,
    expert_lists: wgpu::Buffer,
    expert_counts: wgpu::Buffer,
    /// The dense layers' k ranges' sums in decode batches (`linear::split_sums_bytes`).
    split_sums: wgpu::Buffer,
    /// [O, H] final norm, [O, V] logits, [O] sampling settings, [O * row_bias_entries]
    /// logit_bias entries, sampling's per-chunk scratch, [O] sampled ids.
    final_h: wgpu::Buffer,
    logits: wgpu::Buffer,
    sampling: Upload,
    logit_bias: Upload,
    sample_parts: wgpu::Buffer,
    ids: wgpu::Buffer,
    /// Their total size.
    bytes: u64,
}

impl Activations {
    fn allocate(
        g: &Gpu,
        c: &ModelConfig,
        max_tokens: u32,
        max_outputs: u32,
        max_context: u32,
        coop: bool,
    ) -> Result<Self> {
        let (t, o) = (max_tokens as u64, max_outputs as u64);
        let (h, v, k) = (c.hidden as u64, c.vocab as u64, c.top_k as u64);
        let (e, i) = (c.experts as u64, c.inter as u64);
        let qkv_n = (c.heads + 2 * c.kv_heads) as u64 * c.head_dim as u64;
        // The dense layers: q/k/v, o_proj, lm_head (k, n_out, passes).
        let dense = [
            (c.hidden, qkv_n as u32, max_tokens),
            (c.heads * c.head_dim, c.hidden, max_tokens),
            (c.hidden, c.vocab, max_outputs),
        ];
        let mut split_sums = 0;
        for (k, n, passes) in dense {
            split_sums = split_sums.max(linear::split_sums_bytes(k, n, coop, passes)?);
        }
        let partial_max_tokens = router::partial_max_tokens(moe::vec_max_tokens(coop)?)?;
        let mut bytes = 0;
        let mut buf = |name: &str, n: u64| {
            bytes += n.div_ceil(4) * 4;
            g.storage(name, n)
        };
        Ok(Activations {
            tokens: Upload::new(buf("tokens", t * size_of::<TokenInfo>() as u64)?),
            out_rows: Upload::new(buf("out_rows", o * 4)?),
            x: buf("x", t * h * 4)?,
            h: buf("h", t * h * 4)?,
            h16: buf("h16", if coop { t * h * 2 } else { 4 })?,
            qkv: buf("qkv", t * qkv_n * 4)?,
            attn: buf("attn", t * (c.heads * c.head_dim) as u64 * 4)?,
            attn_partials: buf(
                "attn_partials",
                attention::partials_bytes(max_tokens, c.heads, c.head_dim)?,
            )?,
            router_part: buf(
                "router_part",
                partial_max_tokens as u64 * router::slices(c.hidden)? as u64 * e * 4,
            )?,
            expert_idx: buf("expert_idx", t * k * 4)?,
            expert_wts: buf("expert_wts", t * k * 4)?,
            expert_act: buf("expert_act", t * k * i * 4)?,
            expert_out: buf("expert_out", t * k * h * 4)?,
            expert_lists: buf("expert_lists", e * t * k * 4)?,
            expert_counts: buf("expert_counts", e * 4)?,
            split_sums: buf("split_sums", split_sums.max(4))?,
            final_h: buf("final_h", o * h * 4)?,
            logits: buf("logits", o * v * 4)?,
            sampling: Upload::new(buf("sampling", o * size_of::<SampleParams>() as u64)?),
            logit_bias: Upload::new(buf(
                "logit_bias",
                o * row_bias_entries(max_context, c.vocab) * size_of::<LogitBias>() as u64,
            )?),
            sample_parts: buf("sample_parts", sample::parts_bytes(o as u32, c.vocab)?)?,
            ids: buf("ids", o * 4)?,
            partial_max_tokens,
            bytes,
        })
    }
}

/// One layer's router folded into its attention block for decode passes (`router_fold`): the
/// fold's weights and the two terms of the logits, each written by one dispatch a pass.
struct LayerFold {
    fold: wgpu::Buffer,
    z_x: wgpu::Buffer,
    z_a: wgpu::Buffer,
}

impl LayerFold {
    /// For passes of up to `max_tokens` tokens.
    fn new(g: &Gpu, c: &ModelConfig, lw: &LayerWeights, max_tokens: u32) -> Result<LayerFold> {
        let fold = router_fold::prepare(g, &fold_inputs(c, lw))?;
        let z = |name| g.storage(name, max_tokens as u64 * c.experts as u64 * 4);
        Ok(LayerFold {
            fold,
            z_x: z("router z_x")?,
            z_a: z("router z_a")?,
        })
    }
}

fn fold_inputs<'a>(c: &ModelConfig, lw: &'a LayerWeights) -> FoldInputs<'a> {
    FoldInputs {
        router: &lw.router,
        norm: &lw.post_attention_layernorm,
        o_proj: &lw.o_proj,
        hidden: c.hidden,
        width: c.heads * c.head_dim,
        n_experts: c.experts,
    }
}

/// A forward pass queued by `Model::submit`, to be collected: the read-back buffers (and byte
/// counts) of its sampled ids and kept logits.
#[must_use = "a queued pass's ids come back through Model::collect"]
pub struct Pass {
    ids: Option<(wgpu::Buffer, u64)>,
    kept: Option<(wgpu::Buffer, u64)>,
    /// Its submission: collecting waits for it, not for a pass queued after it.
    submitted: wgpu::SubmissionIndex,
}

/// A loaded model, ready to run forward passes.
pub struct Model {
    pub gpu: Arc<Gpu>,
    pub cfg: ModelConfig,
    pub opts: ModelOptions,
    /// Most logits rows per forward pass.
    pub max_outputs: u32,
    /// How split attention cuts a token's keys into spans.
    split_rule: attention::SplitRule,
    /// Whether the KV cache is stored in f16.
    pub kv_f16: bool,
    /// Whether many-token passes run on the tensor cores (`ModelOptions::coop` and `Caps::coop`).
    pub tensor_cores: bool,
    /// Whether decode's expert products run in f16 pairs (`ModelOptions::coop` and
    /// `Caps::f16_products`).
    pub f16_products: bool,
    step: Upload,
    acts: Activations,
    /// Read-back of sampled ids, and of kept logits rows (log-probabilities: 800 KB a row, so
    /// made as needed rather than for every output up front), one buffer per queued pass.
    ids_back: ReadBack,
    logits_back: ReadBack,
    dispatches: Vec<Dispatch>,
    // Kept alive for the dispatches' bind groups.
    weights: Weights,
    folds: Vec<LayerFold>,
    _rope_table: wgpu::Buffer,
    cache: KvCache,
}

/// Builds the forward pass: the dispatch list of DESIGN.md section 2, layer by layer.
struct Graph<'a> {
    g: &'a Gpu,
    step: &'a wgpu::Buffer,
    c: &'a ModelConfig,
    acts: &'a Activations,
    max_tokens: u32,
    kv_f16: bool,
    coop: bool,
    f16_products: bool,
    /// One per layer where the router is folded (`router_fold::fits`), else none, for passes of
    /// up to `fold_max_tokens` (0 when none).
    folds: &'a [LayerFold],
    fold_max_tokens: u32,
}

impl Graph<'_> {
    fn build(
        &self,
        w: &Weights,
        cache: &KvCache,
        rope_table: &wgpu::Buffer,
    ) -> Result<Vec<Dispatch>> {
        let (g, step, c, a) = (self.g, self.step, self.c, self.acts);
        let mut ds = embed::build(
            g,
            step,
            &a.tokens.buffer,
            &w.embed_tokens,
            &a.x,
            &a.ids,
            c.hidden,
        )?;
        for (l, lw) in w.layers.iter().enumerate() {
            ds.extend(self.attention_block(l, lw, cache, rope_table)?);
            ds.extend(self.moe_block(l, lw)?);
        }
        // Final norm of the rows whose logits are wanted, lm_head, sampling.
        ds.push(rmsnorm::build(
            g,
            step,
            &RmsNorm {
                x: &a.x,
                w: &w.norm,
                rows: Some(&a.out_rows.buffer),
                out: &a.final_h,
                n: c.hidden,
                eps: c.eps,
                count: Count::Outputs,
            },
        )?);
        ds.extend(linear::build(
            g,
            step,
            &Linear {
                x: &a.final_h,
                w: w.head(),
                bias: None,
                y: &a.logits,
                k: c.hidden,
                n_out: c.vocab,
                count: Count::Outputs,
                accumulate: false,
                norm: None,
                rope: None,
                coop: self.coop.then_some(CoopInputs::F16),
                split_sums: Some(&a.split_sums),
            },
        )?);
        ds.extend(sample::build(
            g,
            step,
            &sample::Sample {
                logits: &a.logits,
                params: &a.sampling.buffer,
                bias: &a.logit_bias.buffer,
                parts: &a.sample_parts,
                ids: &a.ids,
            },
            c.vocab,
        )?);
        Ok(ds)
    }

    /// x += o_proj(attention(rope(qkv(RMSNorm(x))))). Small passes fuse the norm into the qkv
    /// projection; large ones norm into `h` first for the tiled kernels.
    fn attention_block(
        &self,
        l: usize,
        lw: &LayerWeights,
        kv: &KvCache,
        rope_table: &wgpu::Buffer,
    ) -> Result<Vec<Dispatch>> {
        let (g, step, c, a) = (self.g, self.step, self.c, self.acts);
        let cache: &LayerCache = &kv.layers[l];
        let kind = cache.kind as u32;
        let qkv_n = (c.heads + 2 * c.kv_heads) * c.head_dim;
        let norm = RmsNorm {
            x: &a.x,
            w: &lw.input_layernorm,
            rows: None,
            out: &a.h,
            n: c.hidden,
            eps: c.eps,
            count: Count::Tokens,
        };
        // The projection rotates q, k and stores k, v: in its epilogue at decode (the vector
        // kernel's, or the k ranges' sums of decode batches), by rope.wgsl after prefill's tiles.
        let qkv = Linear {
            x: &a.h,
            w: &lw.qkv,
            bias: lw.qkv_bias.as_ref(),
            y: &a.qkv,
            k: c.hidden,
            n_out: qkv_n,
            count: Count::Tokens,
            accumulate: false,
            norm: Some(NormInput {
                x: &a.x,
                w: &lw.input_layernorm,
                eps: c.eps,
            }),
            rope: Some(RopeOutput {
                tokens: &a.tokens.buffer,
                table: rope_table,
                k_cache: &cache.k,
                v_cache: &cache.v,
                n_heads: c.heads,
                n_kv: c.kv_heads,
                head_dim: c.head_dim,
                kv_kind: kind,
                kv_f16: self.kv_f16,
            }),
            // The attention scores amplify q's and k's rounding: with f16 inputs here the parity
            // checkpoint's logits move by 1.7e-2 relative L2, with o_proj's and the lm_head's
            // by 4e-4 (PERF.md v0.52).
            coop: self.coop.then_some(CoopInputs::Split),
            split_sums: Some(&a.split_sums),
        };
        let mut ds = Vec::new();
        for passes in linear::norm_passes(g, &qkv)? {
            ds.push(rmsnorm::build(g, step, &norm)?.only_for(Count::Tokens, passes));
        }
        ds.extend(linear::build(g, step, &qkv)?);
        // The folded router's terms run beside the projections: nothing they write is in use.
        let bias = lw.o_proj_bias.as_ref();
        ds.extend(self.fold_term(l, lw, Term::Residual { x: &a.x, bias })?);
        ds.extend(attention::build(
            g,
            step,
            &Attention {
                tokens: &a.tokens.buffer,
                qkv: &a.qkv,
                k_cache: &cache.k,
                v_cache: &cache.v,
                table: &kv.tables[kind as usize],
                sinks: &lw.sinks,
                out: &a.attn,
                partials: &a.attn_partials,
            },
            attention::Params {
                n_heads: c.heads,
                n_kv: c.kv_heads,
                head_dim: c.head_dim,
                entries: kv.sizes.entries,
                window: if c.sliding[l] { c.sliding_window } else { 0 },
                scale: 1.0 / (c.head_dim as f32).sqrt(),
                _pad: [0; 2],
            },
            self.kv_f16,
            self.coop,
        )?);
        ds.extend(linear::build(
            g,
            step,
            &Linear {
                x: &a.attn,
                w: &lw.o_proj,
                bias: lw.o_proj_bias.as_ref(),
                y: &a.x,
                k: c.heads * c.head_dim,
                n_out: c.hidden,
                count: Count::Tokens,
                accumulate: true,
                norm: None,
                rope: None,
                coop: self.coop.then_some(CoopInputs::F16),
                split_sums: Some(&a.split_sums),
            },
        )?);
        ds.extend(self.fold_term(l, lw, Term::Attention { a: &a.attn })?);
        Ok(ds)
    }

    /// The dispatch of one term of layer l's router logits, where the router is folded.
    fn fold_term(&self, l: usize, lw: &LayerWeights, term: Term) -> Result<Option<Dispatch>> {
        let Some(f) = self.folds.get(l) else {
            return Ok(None);
        };
        let z = match term {
            Term::Residual { .. } => &f.z_x,
            Term::Attention { .. } => &f.z_a,
        };
        let (inputs, max) = (fold_inputs(self.c, lw), self.fold_max_tokens);
        router_fold::project(self.g, self.step, &inputs, &f.fold, term, z, max).map(Some)
    }

    /// x += sum_k w_k * expert_k(RMSNorm(x)); the router writes RMSNorm(x) to `h` along with the
    /// chosen experts and their weights.
    fn moe_block(&self, l: usize, lw: &LayerWeights) -> Result<Vec<Dispatch>> {
        let (g, step, c, a) = (self.g, self.step, self.c, self.acts);
        let vec_max_tokens = moe::vec_max_tokens(self.coop)?;
        let partial_max_tokens = a.partial_max_tokens;
        let mut ds = router::build(
            g,
            step,
            &Router {
                x: &a.x,
                norm: &lw.post_attention_layernorm,
                eps: c.eps,
                w: &lw.router,
                bias: &lw.router_bias,
                h: &a.h,
                part: &a.router_part,
                idx: &a.expert_idx,
                wts: &a.expert_wts,
                hidden: c.hidden,
                n_experts: c.experts,
                top_k: c.top_k,
                partial_max_tokens,
                folded_max_tokens: self.fold_max_tokens,
            },
        )?;
        let shape = MoeShape {
            hidden: c.hidden,
            inter: c.inter,
            experts: c.experts,
            top_k: c.top_k,
            limit: c.swiglu_limit,
            alpha: c.swiglu_alpha,
            max_slots: self.max_tokens * c.top_k,
            vec_max_tokens,
            partial_max_tokens,
            router_slices: router::slices(c.hidden)?,
            coop: self.coop,
            f16: self.f16_products,
            eps: c.eps,
        };
        let buffers = MoeBuffers {
            router_part: &a.router_part,
            idx: &a.expert_idx,
            wts: &a.expert_wts,
            lists: &a.expert_lists,
            counts: &a.expert_counts,
            h: &a.h,
            h16: &a.h16,
            act: &a.expert_act,
            y: &a.expert_out,
            x: &a.x,
            fold: self.folds.get(l).map(|f| FoldBuffers {
                max_tokens: self.fold_max_tokens,
                z_x: &f.z_x,
                z_a: &f.z_a,
                norm: &lw.post_attention_layernorm,
                router_bias: &lw.router_bias,
            }),
        };
        let weights = MoeWeights {
            gate_up: &lw.gate_up,
            gate_up_bias: &lw.gate_up_bias,
            down: &lw.down,
            down_bias: &lw.down_bias,
        };
        ds.extend(moe::build(g, step, &shape, &buffers, &weights)?);
        Ok(ds)
    }
}

/// Logits rows per pass (as many as the binding limit allows, up to max_tokens), or why the
/// options cannot work.
fn max_outputs(g: &Gpu, c: &ModelConfig, opts: &ModelOptions) -> Result<u32> {
    if opts.max_tokens == 0 || opts.max_seqs == 0 || opts.max_context == 0 {
        return Err(Error::Request(
            "max_tokens, max_seqs and max_context must be positive".into(),
        ));
    }
    if opts.max_context > c.max_positions {
        return Err(Error::Request(format!(
            "context {} exceeds the model's max_position_embeddings {}",
            opts.max_context, c.max_positions
        )));
    }
    let row_bytes = c.vocab as u64 * 4;
    let fit = g.caps.max_binding / row_bytes;
    let needed = opts.max_seqs.min(opts.max_tokens);
    if fit < needed as u64 {
        return Err(Error::Limit {
            what: format!("logits for {} sequences", opts.max_seqs),
            needed: needed as u64 * row_bytes,
            max: g.caps.max_binding,
        });
    }
    let wanted = opts.max_outputs.unwrap_or(opts.max_seqs).max(needed);
    Ok((wanted.min(opts.max_tokens) as u64).min(fit) as u32)
}

impl Model {
    /// Validates every tensor against the config, uploads the weights, allocates the cache and
    /// activations, and builds the forward pass. `progress(done, total)` reports uploaded bytes.
    pub fn load(
        gpu: Arc<Gpu>,
        src: &dyn WeightSource,
        cfg: ModelConfig,
        opts: ModelOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Model> {
        // Settings that cannot work are refused before gigabytes are uploaded.
        max_outputs(&gpu, &cfg, &opts)?;
        tensors::check(src.index(), &cfg)?;
        let weights = upload::upload(&gpu, src, &cfg, progress)?;
        Model::new(gpu, weights, cfg, opts)
    }

    /// Allocates the cache and activations for uploaded weights (see [`upload::plan`]) and builds
    /// the forward pass. In the browser, await [`Gpu::settle`] afterwards for shader errors.
    pub fn new(
        gpu: Arc<Gpu>,
        weights: Weights,
        cfg: ModelConfig,
        opts: ModelOptions,
    ) -> Result<Model> {
        let c = &cfg;
        let g = &*gpu;
        let max_outputs = max_outputs(g, c, &opts)?;
        let coop = opts.coop && g.caps.coop;
        let acts =
            Activations::allocate(g, c, opts.max_tokens, max_outputs, opts.max_context, coop)?;
        let rope_table = g.upload(
            "rope_table",
            bytemuck::cast_slice(&c.rope.table(opts.max_context)),
        )?;
        let kv_f16 = opts.kv_f16 && g.caps.f16;
        let cache = KvCache::allocate(
            g,
            c,
            opts.max_seqs,
            opts.max_context,
            opts.max_tokens,
            kv_f16,
            opts.kv_cache_bytes,
        )?;
        let step = Upload::new(dispatch::step_buffer(g));
        let fold_max_tokens = if router_fold::fits(g, c.experts)? {
            router_fold::max_tokens(acts.partial_max_tokens)?
        } else {
            0
        };
        let folds = if fold_max_tokens > 0 {
            let layers = weights.layers.iter();
            layers
                .map(|lw| LayerFold::new(g, c, lw, fold_max_tokens))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let graph = Graph {
            g,
            step: &step.buffer,
            c,
            acts: &acts,
            max_tokens: opts.max_tokens,
            kv_f16,
            coop,
            f16_products: opts.coop && g.caps.f16_products,
            folds: &folds,
            fold_max_tokens,
        };
        let dispatches = graph.build(&weights, &cache, &rope_table)?;
        let f16_products = graph.f16_products;
        Ok(Model {
            max_outputs,
            split_rule: attention::SplitRule::from_shader()?,
            kv_f16,
            tensor_cores: coop,
            f16_products,
            acts,
            ids_back: ReadBack::new("ids read-back"),
            logits_back: ReadBack::new("logits read-back"),
            step,
            dispatches,
            weights,
            folds,
            _rope_table: rope_table,
            cache,
            gpu,
            cfg,
            opts,
        })
    }

    /// GPU bytes of the weights (with the folded router's matrices, made from them at load).
    pub fn weight_bytes(&self) -> u64 {
        let folds: u64 = self.folds.iter().map(|f| f.fold.size()).sum();
        self.weights.bytes + folds
    }

    /// The paged KV cache: its pools, block tables and prefix cache.
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Gives an empty sequence slot the cached KV blocks of the longest block-aligned prefix of
    /// `tokens` and returns how many positions they hold ([`KvCache::reuse_prefix`]).
    pub fn reuse_prefix(&self, slot: u32, tokens: &[u32]) -> Result<u32> {
        self.cache.reuse_prefix(&self.gpu, slot, tokens)
    }

    /// Gives the KV-cache blocks of a sequence slot back: its sequence ended.
    pub fn release(&self, seq: u32) {
        self.cache.release(seq);
    }

    /// GPU bytes of the KV cache.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// GPU bytes of one forward pass's activations.
    pub fn activation_bytes(&self) -> u64 {
        self.acts.bytes
    }

    /// Checks a batch against the sizes fixed at load and writes its inputs.
    fn write_inputs(&self, b: &Batch) -> Result<StepCounts> {
        let n = b.tokens.len();
        if n == 0 || n > self.opts.max_tokens as usize {
            return Err(Error::Request(format!(
                "a forward pass takes 1..={} tokens, got {n}",
                self.opts.max_tokens
            )));
        }
        if b.outputs.len() > self.max_outputs as usize || b.sampling.len() != b.outputs.len() {
            return Err(Error::Request(format!(
                "{} outputs with {} sampling settings (at most {})",
                b.outputs.len(),
                b.sampling.len(),
                self.max_outputs
            )));
        }
        for t in b.tokens {
            if t.fed > self.max_outputs {
                return Err(Error::Request(format!(
                    "a token fed from output row {} of the previous pass (at most {})",
                    t.fed - 1,
                    self.max_outputs
                )));
            }
            if t.fed == 0 && t.id >= self.cfg.vocab {
                return Err(Error::Request(format!(
                    "token id {} is outside the vocabulary of {}",
                    t.id, self.cfg.vocab
                )));
            }
            if t.pos >= self.opts.max_context {
                return Err(Error::Request(format!(
                    "position {} exceeds the context of {} tokens",
                    t.pos, self.opts.max_context
                )));
            }
            if t.seq >= self.opts.max_seqs {
                return Err(Error::Request(format!(
                    "sequence slot {} exceeds {}",
                    t.seq, self.opts.max_seqs
                )));
            }
        }
        if let Some(o) = b.outputs.iter().find(|o| **o as usize >= n) {
            return Err(Error::Request(format!(
                "output row {o} is not a token of the pass"
            )));
        }
        let row_bias = row_bias_entries(self.opts.max_context, self.cfg.vocab) as usize;
        for s in b.sampling {
            let (start, count) = (s.bias_start as usize, s.bias_count as usize);
            if count > row_bias || start + count > b.bias.len() {
                return Err(Error::Request(format!(
                    "logit_bias entries {start}..{} of {} (at most {row_bias} a row)",
                    start + count,
                    b.bias.len()
                )));
            }
        }
        if b.bias.len() > self.max_outputs as usize * row_bias {
            return Err(Error::Request(format!(
                "{} logit_bias entries (at most {row_bias} for each of {} outputs)",
                b.bias.len(),
                self.max_outputs
            )));
        }
        if let Some(e) = b
            .bias
            .iter()
            .find(|e| e.token & !GENERATED >= self.cfg.vocab)
        {
            return Err(Error::Request(format!(
                "logit_bias names token {}, outside the vocabulary of {}",
                e.token & !GENERATED,
                self.cfg.vocab
            )));
        }
        // A penalized row whose token the previous pass drew (still on the GPU) has BIAS
        // penalize that token there too.
        let mut sampling = b.sampling.to_vec();
        for (s, &o) in sampling.iter_mut().zip(b.outputs) {
            let penalized = s.presence != 0.0 || s.frequency != 0.0;
            s.pending = if penalized {
                b.tokens[o as usize].fed
            } else {
                0
            };
        }
        let g = &self.gpu;
        let mut tokens = b.tokens.to_vec();
        self.cache.place(g, &mut tokens)?;
        let a = &self.acts;
        a.tokens.write(g, bytemuck::cast_slice(&tokens));
        a.out_rows.write(g, bytemuck::cast_slice(b.outputs));
        a.sampling.write(g, bytemuck::cast_slice(&sampling));
        a.logit_bias.write(g, bytemuck::cast_slice(b.bias));
        let keys = b.tokens.iter().map(|t| t.pos + 1).max().unwrap_or(1);
        let (splits, span) = self.split_rule.split(keys);
        let counts = StepCounts {
            tokens: n as u32,
            outputs: b.outputs.len() as u32,
            slots: n as u32 * self.cfg.top_k,
            splits,
            span,
            biased: (b.bias.len() + sampling.iter().filter(|s| s.pending != 0).count()) as u32,
            _pad: [0; 2],
        };
        self.step.write(g, bytemuck::bytes_of(&counts));
        Ok(counts)
    }

    /// Runs a forward pass and returns the sampled token id of each output row. Only those ids
    /// come back from the GPU.
    pub async fn sample(&self, b: &Batch<'_>) -> Result<Vec<u32>> {
        Ok(self.sample_keeping(b, &[]).await?.0)
    }

    /// `sample`, and besides the ids the logits of the output rows `keep` (indices into
    /// `b.outputs`), concatenated [keep.len(), V]: what log-probabilities are computed from.
    pub async fn sample_keeping(
        &self,
        b: &Batch<'_>,
        keep: &[u32],
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let pass = self.submit(b, keep)?;
        self.collect(pass).await
    }

    /// Queues a forward pass and returns at once; `collect` waits for its sampled ids (and the
    /// logits of `keep`). A decode step can be queued before the previous one is collected, its
    /// tokens fed from that pass's ids on the GPU (`TokenInfo::fed`), so the host's work
    /// between steps overlaps the GPU's. Each pass reads back through buffers of its own.
    pub fn submit(&self, b: &Batch<'_>, keep: &[u32]) -> Result<Pass> {
        if let Some(k) = keep.iter().find(|k| **k as usize >= b.outputs.len()) {
            return Err(Error::Request(format!(
                "output {k} is not sampled in this pass"
            )));
        }
        let counts = self.write_inputs(b)?;
        let g = &self.gpu;
        let mut enc = g.device.create_command_encoder(&Default::default());
        dispatch::record_all(&mut enc, &counts, &self.dispatches);
        let ids_bytes = b.outputs.len() as u64 * 4;
        let ids = (ids_bytes > 0).then(|| {
            // Sized for the most outputs, so that the same two serve every pass.
            let back = self.ids_back.take(g, self.max_outputs as u64 * 4);
            enc.copy_buffer_to_buffer(&self.acts.ids, 0, &back, 0, ids_bytes);
            (back, ids_bytes)
        });
        let row = self.cfg.vocab as u64 * 4;
        let kept_bytes = keep.len() as u64 * row;
        let kept = (!keep.is_empty()).then(|| {
            let back = self.logits_back.take(g, kept_bytes);
            for (i, &k) in keep.iter().enumerate() {
                enc.copy_buffer_to_buffer(
                    &self.acts.logits,
                    k as u64 * row,
                    &back,
                    i as u64 * row,
                    row,
                );
            }
            (back, kept_bytes)
        });
        let submitted = g.queue.submit([enc.finish()]);
        Ok(Pass {
            ids,
            kept,
            submitted,
        })
    }

    /// Waits for a queued pass and returns its sampled ids and kept logits.
    pub async fn collect(&self, pass: Pass) -> Result<(Vec<u32>, Vec<f32>)> {
        let g = &self.gpu;
        let Some((back, n)) = pass.ids else {
            return Ok((Vec::new(), Vec::new()));
        };
        let ids = self
            .ids_back
            .read(g, back, n, pass.submitted.clone())
            .await?;
        let logits = match pass.kept {
            Some((back, n)) => bytemuck::pod_collect_to_vec(
                &self.logits_back.read(g, back, n, pass.submitted).await?,
            ),
            None => Vec::new(),
        };
        Ok((bytemuck::pod_collect_to_vec(&ids), logits))
    }

    /// Runs a forward pass and returns the logits [outputs, V] (a debugging and parity path).
    pub async fn logits(&self, b: &Batch<'_>) -> Result<Vec<f32>> {
        let counts = self.write_inputs(b)?;
        dispatch::run(&self.gpu, &counts, &self.dispatches);
        self.gpu
            .read_f32(&self.acts.logits, b.outputs.len() * self.cfg.vocab as usize)
            .await
    }

    /// GPU time of each dispatch that runs in one forward pass, in order, from timestamp queries
    /// (None when the adapter has none).
    pub async fn profile(&self, b: &Batch<'_>) -> Result<Option<Vec<(String, f64)>>> {
        let g = &self.gpu;
        if !g.caps.timestamps {
            return Ok(None);
        }
        let counts = self.write_inputs(b)?;
        let n = self.dispatches.len() as u32;
        let set = g.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * n,
        });
        let resolve = g.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: 16 * n as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = g.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile read-back"),
            size: 16 * n as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = g.device.create_command_encoder(&Default::default());
        for (i, d) in self.dispatches.iter().enumerate() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&d.label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            d.record(&mut pass, &counts);
        }
        enc.resolve_query_set(&set, 0..2 * n, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, 16 * n as u64);
        let profiled = g.queue.submit([enc.finish()]);
        let bytes = crate::gpu::buffer::map_read(g, &staging, 16 * n as u64, profiled).await?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let period = g.queue.get_timestamp_period() as f64;
        let mut per: Vec<(String, f64)> = Vec::new();
        for (i, d) in self.dispatches.iter().enumerate() {
            if d.workgroups(&counts).is_none() {
                continue;
            }
            let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            per.push((d.label.clone(), ns));
        }
        Ok(Some(per))
    }
}
