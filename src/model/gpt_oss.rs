//! The gpt-oss forward pass: weights on the GPU, activations sized for one forward pass, and the
//! fixed list of dispatches that runs it. Layers are named as in the checkpoint.
//!
//! A forward pass takes any mix of tokens from any sequences (a prompt chunk, one decode token per
//! running sequence, or both), writes their K/V into the cache, and produces logits only for the
//! rows the caller asks for, then samples them on the GPU.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::dispatch::{self, StepCounts};
use crate::gpu::{Count, Dispatch, Gpu, Rows, Split};
use crate::kernels::VEC_MAX_TOKENS;
use crate::kernels::attention::{self, Attention};
use crate::kernels::embed;
use crate::kernels::linear::{self, Linear, NormInput};
use crate::kernels::moe::{self, ExpertChunk, MoeBuffers, MoeShape, MoeWeights};
use crate::kernels::rmsnorm::{self, RmsNorm};
use crate::kernels::rope::{self, Rope};
use crate::kernels::router::{self, Router};
use crate::kernels::sample::{self, SampleParams};
use crate::model::config::ModelConfig;
use crate::model::inputs::TokenInfo;
use crate::model::kv_cache::{self, LayerCache};
use crate::model::tensors;
use crate::model::weights::{DType, WeightSource};

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
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            max_tokens: 512,
            max_seqs: 4,
            max_context: 8192,
            kv_f16: true,
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
}

/// The buffers one forward pass works in, sized at load for `max_tokens` tokens and
/// `max_outputs` logits rows. Shapes: T tokens, O outputs, H hidden, E experts, K top-k.
struct Activations {
    /// [T] TokenInfo, and [O] the token row of each output.
    tokens: wgpu::Buffer,
    out_rows: wgpu::Buffer,
    /// [T, H] the residual stream, and h = RMSNorm(x) for the tiled kernels and the experts.
    x: wgpu::Buffer,
    h: wgpu::Buffer,
    /// [T, (NH + 2 NKV) D] q, k, v; [T, NH D] attention output; split attention's scratch.
    qkv: wgpu::Buffer,
    attn: wgpu::Buffer,
    attn_partials: wgpu::Buffer,
    /// [T, E] router logits; [T, K] chosen experts and their weights.
    router_logits: wgpu::Buffer,
    expert_idx: wgpu::Buffer,
    expert_wts: wgpu::Buffer,
    /// [T K, I] SwiGLU outputs, [T K, H] per-slot outputs; [E, T K] slots per expert, [E] counts.
    expert_act: wgpu::Buffer,
    expert_out: wgpu::Buffer,
    expert_lists: wgpu::Buffer,
    expert_counts: wgpu::Buffer,
    /// [O, H] final norm, [O, V] logits, [O] sampling settings, [O] sampled ids.
    final_h: wgpu::Buffer,
    logits: wgpu::Buffer,
    sampling: wgpu::Buffer,
    ids: wgpu::Buffer,
    /// Their total size.
    bytes: u64,
}

impl Activations {
    fn allocate(g: &Gpu, c: &ModelConfig, max_tokens: u32, max_outputs: u32) -> Result<Self> {
        let (t, o) = (max_tokens as u64, max_outputs as u64);
        let (h, v, k) = (c.hidden as u64, c.vocab as u64, c.top_k as u64);
        let (e, i) = (c.experts as u64, c.inter as u64);
        let qkv_n = (c.heads + 2 * c.kv_heads) as u64 * c.head_dim as u64;
        let mut bytes = 0;
        let mut buf = |name: &str, n: u64| {
            bytes += n.div_ceil(4) * 4;
            g.storage(name, n)
        };
        Ok(Activations {
            tokens: buf("tokens", t * 16)?,
            out_rows: buf("out_rows", o * 4)?,
            x: buf("x", t * h * 4)?,
            h: buf("h", t * h * 4)?,
            qkv: buf("qkv", t * qkv_n * 4)?,
            attn: buf("attn", t * (c.heads * c.head_dim) as u64 * 4)?,
            attn_partials: buf(
                "attn_partials",
                attention::partials_bytes(c.heads, c.head_dim)?,
            )?,
            router_logits: buf("router_logits", t * e * 4)?,
            expert_idx: buf("expert_idx", t * k * 4)?,
            expert_wts: buf("expert_wts", t * k * 4)?,
            expert_act: buf("expert_act", t * k * i * 4)?,
            expert_out: buf("expert_out", t * k * h * 4)?,
            expert_lists: buf("expert_lists", e * t * k * 4)?,
            expert_counts: buf("expert_counts", e * 4)?,
            final_h: buf("final_h", o * h * 4)?,
            logits: buf("logits", o * v * 4)?,
            sampling: buf("sampling", o * 32)?,
            ids: buf("ids", o * 4)?,
            bytes,
        })
    }
}

struct Layer {
    _buffers: Vec<wgpu::Buffer>,
    _splits: Vec<Split>,
    _experts: Vec<ExpertChunk>,
}

/// A loaded model, ready to run forward passes.
pub struct Model {
    pub gpu: Arc<Gpu>,
    pub cfg: ModelConfig,
    pub opts: ModelOptions,
    /// Most logits rows per forward pass.
    pub max_outputs: u32,
    /// Most spans split attention cuts a token's keys into.
    max_splits: u32,
    /// Whether the KV cache is stored in f16.
    pub kv_f16: bool,
    /// GPU bytes of weights, KV cache and activations.
    pub weight_bytes: u64,
    pub cache_bytes: u64,
    pub activation_bytes: u64,
    step: wgpu::Buffer,
    acts: Activations,
    ids_staging: wgpu::Buffer,
    dispatches: Vec<Dispatch>,
    _layers: Vec<Layer>,
    _globals: (Split, Split, Vec<wgpu::Buffer>),
    _caches: Vec<LayerCache>,
}

/// Copies host bytes into GPU buffers, letting wgpu's staging memory drain every so often so a
/// 13 GB checkpoint never sits in host memory twice.
struct Uploader<'a> {
    gpu: &'a Gpu,
    pending: u64,
    done: u64,
    total: u64,
    weight_bytes: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

const FLUSH_BYTES: u64 = 256 << 20;

impl Uploader<'_> {
    fn write(&mut self, buf: &wgpu::Buffer, offset: u64, data: &[u8]) -> Result<()> {
        self.gpu.write(buf, offset, data);
        self.pending += data.len() as u64;
        if self.pending >= FLUSH_BYTES {
            self.gpu.queue.submit([]);
            self.gpu.wait()?;
            self.pending = 0;
        }
        Ok(())
    }

    fn tick(&mut self, bytes: u64) {
        self.done += bytes;
        (self.progress)(self.done, self.total);
    }

    fn buffer(&mut self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.weight_bytes += bytes;
        self.gpu.storage(label, bytes)
    }

    /// A row-major matrix given as consecutive row blocks (`parts`, e.g. q, k and v), split over
    /// buffers at multiples of `unit` rows.
    fn split(&mut self, label: &str, parts: &[&[u8]], row_bytes: u64, unit: u64) -> Result<Split> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let rows = total / row_bytes;
        let mut chunks = Vec::new();
        for (start, count) in self.gpu.plan_split(label, rows, row_bytes, unit)? {
            let buf = self.buffer(label, count as u64 * row_bytes)?;
            // Copy the byte range [lo, hi) of the concatenated parts.
            let (lo, hi) = (start as u64 * row_bytes, (start + count) as u64 * row_bytes);
            let mut at = 0u64;
            for p in parts {
                let (a, b) = (at, at + p.len() as u64);
                let (s, e) = (lo.max(a), hi.min(b));
                if s < e {
                    self.write(&buf, s - lo, &p[(s - a) as usize..(e - a) as usize])?;
                }
                at = b;
            }
            chunks.push(Rows {
                buffer: buf,
                start,
                count,
            });
        }
        self.tick(total);
        Ok(Split { chunks })
    }

    /// Small bf16/f32 vectors widened to f32 on the host (norm weights, biases, sinks).
    fn vector(&mut self, label: &str, parts: &[(DType, &[u8])]) -> Result<wgpu::Buffer> {
        let mut v: Vec<f32> = Vec::new();
        for (dt, bytes) in parts {
            match dt {
                DType::BF16 => v.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                DType::F32 => v.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                _ => return Err(Error::Weights(format!("`{label}` must be bf16 or f32"))),
            }
        }
        let buf = self.buffer(label, v.len() as u64 * 4)?;
        self.write(&buf, 0, bytemuck::cast_slice(&v))?;
        self.tick(parts.iter().map(|p| p.1.len() as u64).sum());
        Ok(buf)
    }

    /// MXFP4 expert weights split by whole experts.
    fn experts(
        &mut self,
        label: &str,
        blocks: &[u8],
        scales: &[u8],
        experts: u32,
        rows: u64,
        cols: u64,
    ) -> Result<Vec<ExpertChunk>> {
        let row_bytes = cols / 2;
        let mut out = Vec::new();
        for (start, count) in self
            .gpu
            .plan_split(label, experts as u64 * rows, row_bytes, rows)?
        {
            let (e0, ec) = (start as u64 / rows, count as u64 / rows);
            let (bb, sb) = (rows * cols / 2, rows * cols / 32);
            let b = self.buffer(&format!("{label}.blocks"), ec * bb)?;
            self.write(
                &b,
                0,
                &blocks[(e0 * bb) as usize..((e0 + ec) * bb) as usize],
            )?;
            let s = self.buffer(&format!("{label}.scales"), ec * sb)?;
            self.write(
                &s,
                0,
                &scales[(e0 * sb) as usize..((e0 + ec) * sb) as usize],
            )?;
            out.push(ExpertChunk {
                start: e0 as u32,
                count: ec as u32,
                blocks: b,
                scales: s,
            });
        }
        self.tick((blocks.len() + scales.len()) as u64);
        Ok(out)
    }
}

/// A small bf16 or f32 tensor (norm gains, biases, sinks), already checked against the tensor
/// table.
fn float<'a>(src: &'a dyn WeightSource, name: &str) -> Result<(DType, &'a [u8])> {
    let t = src.tensor(name)?;
    Ok((t.dtype, t.data))
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
        let c = &cfg;
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
        let total = tensors::check(src, c)?;
        let g = &*gpu;
        let mut up = Uploader {
            gpu: g,
            pending: 0,
            done: 0,
            total,
            weight_bytes: 0,
            progress,
        };
        let (h, v) = (c.hidden as u64, c.vocab as u64);
        let (nh, nkv, d) = (c.heads as usize, c.kv_heads as usize, c.head_dim as usize);
        let i = c.inter as usize;
        let qkv_n = (nh + 2 * nkv) * d;

        // Logits rows per pass: as many as the binding limit allows, up to max_tokens.
        let row_bytes = v * 4;
        let max_outputs = (g.caps.max_binding / row_bytes).min(opts.max_tokens as u64) as u32;
        if max_outputs < opts.max_seqs {
            return Err(Error::Limit {
                what: format!("logits for {} sequences", opts.max_seqs),
                needed: opts.max_seqs as u64 * row_bytes,
                max: g.caps.max_binding,
            });
        }

        let acts = Activations::allocate(g, c, opts.max_tokens, max_outputs)?;
        let activation_bytes = acts.bytes;
        let rope_table = g.upload(
            "rope_table",
            bytemuck::cast_slice(&c.rope.table(opts.max_context)),
        )?;
        let kv_f16 = opts.kv_f16 && g.caps.f16;
        let caches = kv_cache::allocate(
            g,
            c,
            opts.max_seqs,
            opts.max_context,
            opts.max_tokens,
            kv_f16,
        )?;
        let step = dispatch::step_buffer(g);

        let mut ds: Vec<Dispatch> = Vec::new();
        let embed = {
            let data = src.tensor("model.embed_tokens.weight")?.data;
            up.split("embed_tokens", &[data], h * 2, 1)?
        };
        ds.extend(embed::build(
            g,
            &step,
            &acts.tokens,
            &embed,
            &acts.x,
            c.hidden,
        )?);

        let mut layers = Vec::new();
        for l in 0..c.layers as usize {
            let p = format!("model.layers.{l}.");
            let name = |s: &str| format!("{p}{s}");
            let tensor = |s: &str| -> Result<&[u8]> { Ok(src.tensor(&name(s))?.data) };
            let mut bufs = Vec::new();
            let ln1 = up.vector(
                &name("input_layernorm"),
                &[float(src, &name("input_layernorm.weight"))?],
            )?;
            let ln2 = up.vector(
                &name("post_attention_layernorm"),
                &[float(src, &name("post_attention_layernorm.weight"))?],
            )?;
            let qkv_w = up.split(
                &name("self_attn.qkv"),
                &[
                    tensor("self_attn.q_proj.weight")?,
                    tensor("self_attn.k_proj.weight")?,
                    tensor("self_attn.v_proj.weight")?,
                ],
                h * 2,
                1,
            )?;
            let qkv_b = if c.attention_bias {
                Some(up.vector(
                    &name("self_attn.qkv.bias"),
                    &[
                        float(src, &name("self_attn.q_proj.bias"))?,
                        float(src, &name("self_attn.k_proj.bias"))?,
                        float(src, &name("self_attn.v_proj.bias"))?,
                    ],
                )?)
            } else {
                None
            };
            let o_w = up.split(
                &name("self_attn.o_proj"),
                &[tensor("self_attn.o_proj.weight")?],
                (nh * d) as u64 * 2,
                1,
            )?;
            let o_b = if c.attention_bias {
                Some(up.vector(
                    &name("self_attn.o_proj.bias"),
                    &[float(src, &name("self_attn.o_proj.bias"))?],
                )?)
            } else {
                None
            };
            let sinks = up.vector(
                &name("self_attn.sinks"),
                &[float(src, &name("self_attn.sinks"))?],
            )?;
            let router_w = up.split(
                &name("mlp.router"),
                &[tensor("mlp.router.weight")?],
                h * 2,
                1,
            )?;
            let router_b = up.vector(
                &name("mlp.router.bias"),
                &[float(src, &name("mlp.router.bias"))?],
            )?;
            let gu = up.experts(
                &name("mlp.experts.gate_up"),
                tensor("mlp.experts.gate_up_proj_blocks")?,
                tensor("mlp.experts.gate_up_proj_scales")?,
                c.experts,
                2 * i as u64,
                h,
            )?;
            let gu_b = up.vector(
                &name("mlp.experts.gate_up_bias"),
                &[float(src, &name("mlp.experts.gate_up_proj_bias"))?],
            )?;
            let dn = up.experts(
                &name("mlp.experts.down"),
                tensor("mlp.experts.down_proj_blocks")?,
                tensor("mlp.experts.down_proj_scales")?,
                c.experts,
                h,
                i as u64,
            )?;
            let dn_b = up.vector(
                &name("mlp.experts.down_bias"),
                &[float(src, &name("mlp.experts.down_proj_bias"))?],
            )?;

            // Attention block: x += o_proj(attn(rope(qkv(norm(x))))). Small passes fuse the norm
            // into the qkv projection; large ones norm into `h` first for the tiled kernels.
            let cache = &caches[l];
            let vec_max = linear::vec_max_tokens(c.hidden);
            ds.push(
                rmsnorm::build(
                    g,
                    &step,
                    &RmsNorm {
                        x: &acts.x,
                        w: &ln1,
                        rows: None,
                        out: &acts.h,
                        n: c.hidden,
                        eps: c.eps,
                        count: Count::Tokens,
                    },
                )?
                .only_for(Count::Tokens, vec_max + 1..=u32::MAX),
            );
            ds.extend(linear::build(
                g,
                &step,
                &Linear {
                    x: &acts.h,
                    w: &qkv_w,
                    bias: qkv_b.as_ref(),
                    y: &acts.qkv,
                    k: c.hidden,
                    n_out: qkv_n as u32,
                    count: Count::Tokens,
                    accumulate: false,
                    norm: Some(NormInput {
                        x: &acts.x,
                        w: &ln1,
                        eps: c.eps,
                    }),
                },
            )?);
            ds.push(rope::build(
                g,
                &step,
                &Rope {
                    tokens: &acts.tokens,
                    table: &rope_table,
                    qkv: &acts.qkv,
                    k_cache: &cache.k,
                    v_cache: &cache.v,
                },
                rope::Params {
                    n_heads: c.heads,
                    n_kv: c.kv_heads,
                    head_dim: c.head_dim,
                    cap: cache.cap,
                },
                kv_f16,
            )?);
            ds.extend(attention::build(
                g,
                &step,
                &Attention {
                    tokens: &acts.tokens,
                    qkv: &acts.qkv,
                    k_cache: &cache.k,
                    v_cache: &cache.v,
                    sinks: &sinks,
                    out: &acts.attn,
                    partials: &acts.attn_partials,
                },
                attention::Params {
                    n_heads: c.heads,
                    n_kv: c.kv_heads,
                    head_dim: c.head_dim,
                    cap: cache.cap,
                    window: if c.sliding[l] { c.sliding_window } else { 0 },
                    scale: 1.0 / (c.head_dim as f32).sqrt(),
                    _pad: [0; 2],
                },
                kv_f16,
            )?);
            ds.extend(linear::build(
                g,
                &step,
                &Linear {
                    x: &acts.attn,
                    w: &o_w,
                    bias: o_b.as_ref(),
                    y: &acts.x,
                    k: (nh * d) as u32,
                    n_out: c.hidden,
                    count: Count::Tokens,
                    accumulate: true,
                    norm: None,
                },
            )?);
            // MoE block: x += sum_k w_k * expert_k(norm(x)); the router kernel writes norm(x)
            // to `h` along with the chosen experts and their weights.
            ds.extend(router::build(
                g,
                &step,
                &Router {
                    x: &acts.x,
                    norm: &ln2,
                    eps: c.eps,
                    w: &router_w,
                    bias: &router_b,
                    logits: &acts.router_logits,
                    h: &acts.h,
                    idx: &acts.expert_idx,
                    wts: &acts.expert_wts,
                    hidden: c.hidden,
                    n_experts: c.experts,
                    top_k: c.top_k,
                },
            )?);
            let shape = MoeShape {
                hidden: c.hidden,
                inter: c.inter,
                experts: c.experts,
                top_k: c.top_k,
                limit: c.swiglu_limit,
                alpha: c.swiglu_alpha,
                max_slots: opts.max_tokens * c.top_k,
                vec_max_tokens: VEC_MAX_TOKENS,
            };
            let buffers = MoeBuffers {
                idx: &acts.expert_idx,
                wts: &acts.expert_wts,
                lists: &acts.expert_lists,
                counts: &acts.expert_counts,
                h: &acts.h,
                act: &acts.expert_act,
                y: &acts.expert_out,
                x: &acts.x,
            };
            let weights = MoeWeights {
                gate_up: &gu,
                gate_up_bias: &gu_b,
                down: &dn,
                down_bias: &dn_b,
            };
            ds.extend(moe::build(g, &step, &shape, &buffers, &weights)?);

            bufs.extend([ln1, ln2, sinks, router_b, gu_b, dn_b]);
            bufs.extend(qkv_b);
            bufs.extend(o_b);
            let mut experts = gu;
            experts.extend(dn);
            layers.push(Layer {
                _buffers: bufs,
                _splits: vec![qkv_w, o_w, router_w],
                _experts: experts,
            });
        }

        let norm = up.vector("model.norm", &[float(src, "model.norm.weight")?])?;
        let lm_head = if c.tie_embeddings {
            Split { chunks: Vec::new() }
        } else {
            up.split("lm_head", &[src.tensor("lm_head.weight")?.data], h * 2, 1)?
        };
        let head = if c.tie_embeddings { &embed } else { &lm_head };
        ds.push(rmsnorm::build(
            g,
            &step,
            &RmsNorm {
                x: &acts.x,
                w: &norm,
                rows: Some(&acts.out_rows),
                out: &acts.final_h,
                n: c.hidden,
                eps: c.eps,
                count: Count::Outputs,
            },
        )?);
        ds.extend(linear::build(
            g,
            &step,
            &Linear {
                x: &acts.final_h,
                w: head,
                bias: None,
                y: &acts.logits,
                k: c.hidden,
                n_out: c.vocab,
                count: Count::Outputs,
                accumulate: false,
                norm: None,
            },
        )?);
        ds.push(sample::build(
            g,
            &step,
            &acts.logits,
            &acts.sampling,
            &acts.ids,
            c.vocab,
        )?);
        g.queue.submit([]);
        g.wait()?;

        let ids_staging = g.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ids read-back"),
            size: (max_outputs as u64 * 4).max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let weight_bytes = up.weight_bytes;
        Ok(Model {
            max_outputs,
            max_splits: attention::max_splits()?,
            kv_f16,
            weight_bytes,
            cache_bytes: kv_cache::bytes(&caches),
            activation_bytes,
            acts,
            ids_staging,
            step,
            dispatches: ds,
            _layers: layers,
            _globals: (embed, lm_head, vec![norm, rope_table]),
            _caches: caches,
            gpu,
            cfg,
            opts,
        })
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
            if t.id >= self.cfg.vocab {
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
        let g = &self.gpu;
        g.write(&self.acts.tokens, 0, bytemuck::cast_slice(b.tokens));
        if !b.outputs.is_empty() {
            g.write(&self.acts.out_rows, 0, bytemuck::cast_slice(b.outputs));
            g.write(&self.acts.sampling, 0, bytemuck::cast_slice(b.sampling));
        }
        let keys = b.tokens.iter().map(|t| t.pos + 1).max().unwrap_or(1);
        let (splits, span) = attention::split_keys(keys, self.max_splits);
        Ok(StepCounts {
            tokens: n as u32,
            outputs: b.outputs.len() as u32,
            slots: n as u32 * self.cfg.top_k,
            splits,
            span,
            _pad: [0; 3],
        })
    }

    /// Runs a forward pass and returns the sampled token id of each output row. Only those ids
    /// come back from the GPU.
    pub async fn sample(&self, b: &Batch<'_>) -> Result<Vec<u32>> {
        let counts = self.write_inputs(b)?;
        let g = &self.gpu;
        let mut enc = g.device.create_command_encoder(&Default::default());
        dispatch::record_all(g, &mut enc, &self.step, &counts, &self.dispatches);
        let n = b.outputs.len() as u64 * 4;
        if n > 0 {
            enc.copy_buffer_to_buffer(&self.acts.ids, 0, &self.ids_staging, 0, n);
        }
        g.queue.submit([enc.finish()]);
        if n == 0 {
            return Ok(Vec::new());
        }
        let bytes = crate::gpu::buffer::map_read(g, &self.ids_staging, n).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Runs a forward pass and returns the logits [outputs, V] (a debugging and parity path).
    pub fn logits(&self, b: &Batch<'_>) -> Result<Vec<f32>> {
        let counts = self.write_inputs(b)?;
        dispatch::submit(&self.gpu, &self.step, &counts, &self.dispatches);
        self.gpu
            .read_f32(&self.acts.logits, b.outputs.len() * self.cfg.vocab as usize)
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
        g.queue
            .write_buffer(&self.step, 0, bytemuck::bytes_of(&counts));
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
        g.queue.submit([enc.finish()]);
        let bytes = crate::gpu::buffer::map_read(g, &staging, 16 * n as u64).await?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let period = g.queue.get_timestamp_period() as f64;
        let mut per: Vec<(String, f64)> = Vec::new();
        for (i, d) in self.dispatches.iter().enumerate() {
            if d.grid(&counts).is_none() {
                continue;
            }
            let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            per.push((d.label.clone(), ns));
        }
        Ok(Some(per))
    }
}
