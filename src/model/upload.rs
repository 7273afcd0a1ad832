//! Weights onto the GPU, in two steps: `plan` creates every buffer in the layout the kernels
//! read (q, k and v as one matrix, MXFP4 experts packed and split by whole experts, small vectors
//! widened to f32, matrices split over buffers at the adapter's binding limit) and returns a
//! `WeightWriter` that places any byte range of any checkpoint tensor where it belongs. Natively
//! `upload` feeds it from memory-mapped shards; the browser feeds it pieces fetched with HTTP
//! range requests, so no shard is ever whole in memory. Tensors were checked against the table
//! (`model::tensors`) before anything is planned.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::Range;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Rows, Split};
use crate::kernels::moe::{self, ExpertChunk};
use crate::model::config::ModelConfig;
use crate::model::weights::{DType, ShardIndex, WeightSource};

/// One layer's weights, named as in the checkpoint.
pub struct LayerWeights {
    pub input_layernorm: wgpu::Buffer,
    pub post_attention_layernorm: wgpu::Buffer,
    /// q_proj, k_proj and v_proj stacked by rows, and their biases.
    pub qkv: Split,
    pub qkv_bias: Option<wgpu::Buffer>,
    pub o_proj: Split,
    pub o_proj_bias: Option<wgpu::Buffer>,
    pub sinks: wgpu::Buffer,
    pub router: Split,
    pub router_bias: wgpu::Buffer,
    pub gate_up: Vec<ExpertChunk>,
    pub gate_up_bias: wgpu::Buffer,
    pub down: Vec<ExpertChunk>,
    pub down_bias: wgpu::Buffer,
}

/// The whole model's weights.
pub struct Weights {
    pub embed_tokens: Split,
    pub layers: Vec<LayerWeights>,
    pub norm: wgpu::Buffer,
    /// None when the embedding is tied.
    pub lm_head: Option<Split>,
    /// GPU bytes.
    pub bytes: u64,
}

impl Weights {
    /// The output projection: lm_head, or the embedding when tied.
    pub fn head(&self) -> &Split {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
}

/// Creates every weight buffer for `c` (the index was checked against the table) and the writer
/// that fills them.
pub fn plan(gpu: &Gpu, index: &ShardIndex, c: &ModelConfig) -> Result<(Weights, WeightWriter)> {
    let mut p = Planner {
        gpu,
        index,
        writer: WeightWriter::default(),
        weight_bytes: 0,
    };
    let (h, i) = (c.hidden as u64, c.inter as u64);
    let attn_width = c.heads as u64 * c.head_dim as u64;
    let embed_tokens = p.split(
        "embed_tokens",
        &["model.embed_tokens.weight".into()],
        h * 2,
        1,
    )?;
    let mut layers = Vec::new();
    for l in 0..c.layers as usize {
        let name = |s: &str| format!("model.layers.{l}.{s}");
        let names = |parts: &[&str]| parts.iter().map(|s| name(s)).collect::<Vec<_>>();
        let bias = |p: &mut Planner, label: &str, parts: &[&str]| {
            c.attention_bias
                .then(|| p.vector(&name(label), &names(parts)))
                .transpose()
        };
        layers.push(LayerWeights {
            input_layernorm: p.vector(
                &name("input_layernorm"),
                &names(&["input_layernorm.weight"]),
            )?,
            post_attention_layernorm: p.vector(
                &name("post_attention_layernorm"),
                &names(&["post_attention_layernorm.weight"]),
            )?,
            qkv: p.split(
                &name("self_attn.qkv"),
                &names(&[
                    "self_attn.q_proj.weight",
                    "self_attn.k_proj.weight",
                    "self_attn.v_proj.weight",
                ]),
                h * 2,
                // Cut at heads: the fused RoPE epilogue pairs rows within a head.
                c.head_dim as u64,
            )?,
            qkv_bias: bias(
                &mut p,
                "self_attn.qkv.bias",
                &[
                    "self_attn.q_proj.bias",
                    "self_attn.k_proj.bias",
                    "self_attn.v_proj.bias",
                ],
            )?,
            o_proj: p.split(
                &name("self_attn.o_proj"),
                &names(&["self_attn.o_proj.weight"]),
                attn_width * 2,
                1,
            )?,
            o_proj_bias: bias(&mut p, "self_attn.o_proj.bias", &["self_attn.o_proj.bias"])?,
            sinks: p.vector(&name("self_attn.sinks"), &names(&["self_attn.sinks"]))?,
            router: p.split(
                &name("mlp.router"),
                &names(&["mlp.router.weight"]),
                h * 2,
                1,
            )?,
            router_bias: p.vector(&name("mlp.router.bias"), &names(&["mlp.router.bias"]))?,
            gate_up: p.experts(
                &name("mlp.experts.gate_up"),
                &name("mlp.experts.gate_up_proj"),
                c.experts,
                2 * i,
                h,
            )?,
            gate_up_bias: p.vector(
                &name("mlp.experts.gate_up_bias"),
                &names(&["mlp.experts.gate_up_proj_bias"]),
            )?,
            down: p.experts(
                &name("mlp.experts.down"),
                &name("mlp.experts.down_proj"),
                c.experts,
                h,
                i,
            )?,
            down_bias: p.vector(
                &name("mlp.experts.down_bias"),
                &names(&["mlp.experts.down_proj_bias"]),
            )?,
        });
    }
    let norm = p.vector("model.norm", &["model.norm.weight".into()])?;
    let lm_head = if c.tie_embeddings {
        None
    } else {
        Some(p.split("lm_head", &["lm_head.weight".into()], h * 2, 1)?)
    };
    let weights = Weights {
        embed_tokens,
        layers,
        norm,
        lm_head,
        bytes: p.weight_bytes,
    };
    Ok((weights, p.writer))
}

/// Uploads every weight from host memory (memory-mapped shards), `progress(done, total)` in
/// checkpoint bytes.
pub fn upload(
    gpu: &Gpu,
    src: &dyn WeightSource,
    c: &ModelConfig,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Weights> {
    let index = src.index();
    let (weights, mut writer) = plan(gpu, index, c)?;
    let total = writer.total();
    for name in writer.tensors() {
        let data = src.data(index.info(&name)?);
        for (k, piece) in data.chunks(PIECE_BYTES).enumerate() {
            writer.write(gpu, &name, (k * PIECE_BYTES) as u64, piece)?;
            progress(writer.received(), total);
        }
    }
    writer.finish(gpu)?;
    Ok(weights)
}

/// Host bytes handed to the writer at a time natively (a multiple of 4, as writes need).
const PIECE_BYTES: usize = 64 << 20;

/// Bytes queued for the GPU after which the writer waits for them to drain, so a 13 GB
/// checkpoint never sits in host memory twice.
const FLUSH_BYTES: u64 = 256 << 20;

/// Where a byte range of one checkpoint tensor goes.
struct Placement {
    buffer: wgpu::Buffer,
    /// Offset in the buffer of the range's first element (as stored: f32 when widened).
    dst: u64,
    /// Bytes of the tensor.
    src: Range<u64>,
    /// bf16 values widened to f32 on the way.
    widen_bf16: bool,
}

/// Places tensor bytes into the planned buffers, in any order and any pieces whose offsets and
/// lengths are multiples of 4 (the last piece of a tensor excepted).
#[derive(Default)]
pub struct WeightWriter {
    /// Each tensor's placements and progress, and the tensors in the table's order.
    slots: HashMap<String, Slot>,
    order: Vec<String>,
    received: u64,
    pending: u64,
    /// Expert-block buffers to move to the kernels' MXFP4 layout once whole.
    mxfp4: Vec<wgpu::Buffer>,
}

/// One checkpoint tensor: its size, where its bytes go, how many have arrived.
struct Slot {
    size: u64,
    places: Vec<Placement>,
    got: u64,
}

impl WeightWriter {
    /// The tensors to write, in the checkpoint table's order.
    pub fn tensors(&self) -> Vec<String> {
        self.order.clone()
    }

    /// Checkpoint bytes in all.
    pub fn total(&self) -> u64 {
        self.slots.values().map(|t| t.size).sum()
    }

    /// Checkpoint bytes written so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Writes `bytes`, the tensor's bytes from `offset` on.
    pub fn write(&mut self, gpu: &Gpu, tensor: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let slot = self.slots.get_mut(tensor).ok_or_else(|| {
            Error::Weights(format!("tensor `{tensor}` is not one the model loads"))
        })?;
        let end = offset + bytes.len() as u64;
        if !offset.is_multiple_of(4) || end > slot.size {
            return Err(Error::Weights(format!(
                "tensor `{tensor}`: bytes {offset}..{end} are not a 4-aligned range of its {}",
                slot.size
            )));
        }
        for p in &slot.places {
            let (s, e) = (offset.max(p.src.start), end.min(p.src.end));
            if s >= e {
                continue;
            }
            let part = &bytes[(s - offset) as usize..(e - offset) as usize];
            if p.widen_bf16 {
                let wide: Vec<f32> = part
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect();
                gpu.write(
                    &p.buffer,
                    p.dst + (s - p.src.start) * 2,
                    bytemuck::cast_slice(&wide),
                );
            } else {
                gpu.write(&p.buffer, p.dst + (s - p.src.start), part);
            }
        }
        slot.got += bytes.len() as u64;
        self.received += bytes.len() as u64;
        self.pending += bytes.len() as u64;
        if self.pending >= FLUSH_BYTES {
            self.pending = 0;
            gpu.queue.submit([]);
            gpu.wait()?;
        }
        Ok(())
    }

    /// Checks that every tensor arrived whole, moves the expert blocks to the kernels' layout
    /// and lets it all reach the GPU.
    pub fn finish(&self, gpu: &Gpu) -> Result<()> {
        for name in &self.order {
            let t = &self.slots[name];
            if t.got != t.size {
                return Err(Error::Weights(format!(
                    "tensor `{name}`: {} of its {} bytes were written",
                    t.got, t.size
                )));
            }
        }
        for buffer in &self.mxfp4 {
            moe::relayout(gpu, buffer)?;
        }
        gpu.queue.submit([]);
        gpu.wait()
    }
}

/// Creates the buffers and records where each tensor's bytes go.
struct Planner<'a> {
    gpu: &'a Gpu,
    index: &'a ShardIndex,
    writer: WeightWriter,
    weight_bytes: u64,
}

impl Planner<'_> {
    fn buffer(&mut self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.weight_bytes += bytes;
        self.gpu.storage(label, bytes)
    }

    fn place(&mut self, tensor: &str, p: Placement) -> Result<()> {
        if !p.dst.is_multiple_of(4) || !p.src.start.is_multiple_of(4) {
            return Err(Error::Weights(format!(
                "tensor `{tensor}` would be placed at an unaligned offset (its shape is unusual)"
            )));
        }
        let w = &mut self.writer;
        let slot = match w.slots.entry(tensor.to_string()) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                w.order.push(tensor.to_string());
                v.insert(Slot {
                    size: self.index.info(tensor)?.bytes(),
                    places: Vec::new(),
                    got: 0,
                })
            }
        };
        slot.places.push(p);
        Ok(())
    }

    /// A row-major matrix given as consecutive row blocks (`parts`, e.g. q, k and v), split over
    /// buffers at multiples of `unit` rows.
    fn split(&mut self, label: &str, parts: &[String], row_bytes: u64, unit: u64) -> Result<Split> {
        let sizes = parts
            .iter()
            .map(|p| Ok(self.index.info(p)?.bytes()))
            .collect::<Result<Vec<u64>>>()?;
        let rows = sizes.iter().sum::<u64>() / row_bytes;
        let mut chunks = Vec::new();
        for (start, count) in self.gpu.plan_split(label, rows, row_bytes, unit)? {
            let buffer = self.buffer(label, count as u64 * row_bytes)?;
            // The byte range [lo, hi) of the concatenated parts lands in this buffer.
            let (lo, hi) = (start as u64 * row_bytes, (start + count) as u64 * row_bytes);
            let mut at = 0u64;
            for (p, size) in parts.iter().zip(&sizes) {
                let (a, b) = (at, at + size);
                let (s, e) = (lo.max(a), hi.min(b));
                if s < e {
                    let place = Placement {
                        buffer: buffer.clone(),
                        dst: s - lo,
                        src: s - a..e - a,
                        widen_bf16: false,
                    };
                    self.place(p, place)?;
                }
                at = b;
            }
            chunks.push(Rows {
                buffer,
                start,
                count,
            });
        }
        Ok(Split { chunks })
    }

    /// Small bf16/f32 vectors stored as f32 (norm weights, biases, sinks), `parts` one after
    /// another.
    fn vector(&mut self, label: &str, parts: &[String]) -> Result<wgpu::Buffer> {
        let infos = parts
            .iter()
            .map(|p| self.index.info(p).cloned())
            .collect::<Result<Vec<_>>>()?;
        let elems = |t: &crate::model::weights::TensorInfo| -> Result<u64> {
            match t.dtype {
                DType::BF16 => Ok(t.bytes() / 2),
                DType::F32 => Ok(t.bytes() / 4),
                _ => Err(Error::Weights(format!("`{label}` must be bf16 or f32"))),
            }
        };
        let total = infos.iter().map(elems).sum::<Result<u64>>()?;
        let buffer = self.buffer(label, total * 4)?;
        let mut at = 0;
        for (p, t) in parts.iter().zip(&infos) {
            let place = Placement {
                buffer: buffer.clone(),
                dst: at * 4,
                src: 0..t.bytes(),
                widen_bf16: t.dtype == DType::BF16,
            };
            self.place(p, place)?;
            at += elems(t)?;
        }
        Ok(buffer)
    }

    /// MXFP4 expert weights (`{prefix}_blocks`, `{prefix}_scales`) split by whole experts.
    fn experts(
        &mut self,
        label: &str,
        prefix: &str,
        experts: u32,
        rows: u64,
        cols: u64,
    ) -> Result<Vec<ExpertChunk>> {
        let row_bytes = cols / 2;
        let (blocks, scales) = (format!("{prefix}_blocks"), format!("{prefix}_scales"));
        let mut out = Vec::new();
        for (start, count) in self
            .gpu
            .plan_split(label, experts as u64 * rows, row_bytes, rows)?
        {
            let (e0, ec) = (start as u64 / rows, count as u64 / rows);
            let part = |this: &mut Self, what: &str, tensor: &str, per_expert: u64| {
                let buffer = this.buffer(&format!("{label}.{what}"), ec * per_expert)?;
                let place = Placement {
                    buffer: buffer.clone(),
                    dst: 0,
                    src: e0 * per_expert..(e0 + ec) * per_expert,
                    widen_bf16: false,
                };
                this.place(tensor, place)?;
                Ok::<_, Error>(buffer)
            };
            let chunk = ExpertChunk {
                start: e0 as u32,
                count: ec as u32,
                blocks: part(self, "blocks", &blocks, rows * cols / 2)?,
                scales: part(self, "scales", &scales, rows * cols / 32)?,
            };
            self.writer.mxfp4.push(chunk.blocks.clone());
            out.push(chunk);
        }
        Ok(out)
    }
}
