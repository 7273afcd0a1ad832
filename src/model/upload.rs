//! Weights onto the GPU: every tensor of the checkpoint uploaded once, in the layout the kernels
//! read (q, k and v as one matrix, MXFP4 experts packed and split by whole experts, small vectors
//! widened to f32), split over buffers at the adapter's binding limit. The tensors were checked
//! against the table (`model::tensors`) before anything is uploaded.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Rows, Split};
use crate::kernels::moe::ExpertChunk;
use crate::model::config::ModelConfig;
use crate::model::weights::{DType, WeightSource};

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

/// Uploads every weight; `total` is the checkpoint's size for `progress(done, total)`.
pub fn upload(
    gpu: &Gpu,
    src: &dyn WeightSource,
    c: &ModelConfig,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Weights> {
    let mut up = Uploader {
        gpu,
        pending: 0,
        done: 0,
        total,
        weight_bytes: 0,
        progress,
    };
    let (h, i) = (c.hidden as u64, c.inter as u64);
    let attn_width = c.heads as u64 * c.head_dim as u64;
    let embed_tokens = up.split(
        "embed_tokens",
        &[src.tensor("model.embed_tokens.weight")?.data],
        h * 2,
        1,
    )?;
    let mut layers = Vec::new();
    for l in 0..c.layers as usize {
        let name = |s: &str| format!("model.layers.{l}.{s}");
        let tensor = |s: &str| -> Result<&[u8]> { Ok(src.tensor(&name(s))?.data) };
        let vector = |up: &mut Uploader, label: &str, parts: &[&str]| -> Result<wgpu::Buffer> {
            let parts = parts
                .iter()
                .map(|p| float(src, &name(p)))
                .collect::<Result<Vec<_>>>()?;
            up.vector(&name(label), &parts)
        };
        let bias = |up: &mut Uploader, label: &str, parts: &[&str]| {
            c.attention_bias
                .then(|| vector(up, label, parts))
                .transpose()
        };
        layers.push(LayerWeights {
            input_layernorm: vector(&mut up, "input_layernorm", &["input_layernorm.weight"])?,
            post_attention_layernorm: vector(
                &mut up,
                "post_attention_layernorm",
                &["post_attention_layernorm.weight"],
            )?,
            qkv: up.split(
                &name("self_attn.qkv"),
                &[
                    tensor("self_attn.q_proj.weight")?,
                    tensor("self_attn.k_proj.weight")?,
                    tensor("self_attn.v_proj.weight")?,
                ],
                h * 2,
                // Cut at heads: the fused RoPE epilogue pairs rows within a head.
                c.head_dim as u64,
            )?,
            qkv_bias: bias(
                &mut up,
                "self_attn.qkv.bias",
                &[
                    "self_attn.q_proj.bias",
                    "self_attn.k_proj.bias",
                    "self_attn.v_proj.bias",
                ],
            )?,
            o_proj: up.split(
                &name("self_attn.o_proj"),
                &[tensor("self_attn.o_proj.weight")?],
                attn_width * 2,
                1,
            )?,
            o_proj_bias: bias(&mut up, "self_attn.o_proj.bias", &["self_attn.o_proj.bias"])?,
            sinks: vector(&mut up, "self_attn.sinks", &["self_attn.sinks"])?,
            router: up.split(
                &name("mlp.router"),
                &[tensor("mlp.router.weight")?],
                h * 2,
                1,
            )?,
            router_bias: vector(&mut up, "mlp.router.bias", &["mlp.router.bias"])?,
            gate_up: up.experts(
                &name("mlp.experts.gate_up"),
                tensor("mlp.experts.gate_up_proj_blocks")?,
                tensor("mlp.experts.gate_up_proj_scales")?,
                c.experts,
                2 * i,
                h,
            )?,
            gate_up_bias: vector(
                &mut up,
                "mlp.experts.gate_up_bias",
                &["mlp.experts.gate_up_proj_bias"],
            )?,
            down: up.experts(
                &name("mlp.experts.down"),
                tensor("mlp.experts.down_proj_blocks")?,
                tensor("mlp.experts.down_proj_scales")?,
                c.experts,
                h,
                i,
            )?,
            down_bias: vector(
                &mut up,
                "mlp.experts.down_bias",
                &["mlp.experts.down_proj_bias"],
            )?,
        });
    }
    let norm = up.vector("model.norm", &[float(src, "model.norm.weight")?])?;
    let lm_head = if c.tie_embeddings {
        None
    } else {
        Some(up.split("lm_head", &[src.tensor("lm_head.weight")?.data], h * 2, 1)?)
    };
    gpu.queue.submit([]);
    gpu.wait()?;
    Ok(Weights {
        embed_tokens,
        layers,
        norm,
        lm_head,
        bytes: up.weight_bytes,
    })
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
