//! Writes random-weight checkpoints in the exact released Hugging Face layout (config.json,
//! generation_config.json, model.safetensors.index.json, sharded safetensors with bf16 tensors and
//! u8 MXFP4 blocks and scales, tokenizer.json), so tests and benchmarks have models to load.
//!
//! Every tensor draws from its own generator seeded by (seed, tensor name, part), so a seed gives
//! the same bytes whatever the sharding or the number of threads. `script` writes checkpoints
//! whose weights are chosen instead, so that greedy decoding follows a given token sequence.

mod script;

pub use script::write_scripted;

use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::model::tensors::{Role, checkpoint_tensors};
use crate::rng::Rng;

/// The shape of a synthetic checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthSpec {
    pub hidden: u32,
    pub inter: u32,
    pub layers: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub experts: u32,
    pub top_k: u32,
    pub vocab: u32,
    pub sliding_window: u32,
    pub max_positions: u32,
    /// Start a new shard once one holds this many bytes.
    pub shard_bytes: u64,
}

impl SynthSpec {
    /// `tiny` (a few MB of layers plus the full vocabulary so the real tokenizer works), `20b`, `120b`.
    pub fn preset(name: &str) -> Result<SynthSpec> {
        let big = SynthSpec {
            hidden: 2880,
            inter: 2880,
            layers: 24,
            heads: 64,
            kv_heads: 8,
            head_dim: 64,
            experts: 32,
            top_k: 4,
            vocab: 201088,
            sliding_window: 128,
            max_positions: 131072,
            shard_bytes: 5 << 30,
        };
        match name {
            "tiny" => Ok(SynthSpec {
                hidden: 128,
                inter: 96,
                layers: 3,
                heads: 4,
                kv_heads: 2,
                head_dim: 32,
                experts: 6,
                top_k: 3,
                ..big
            }),
            "20b" => Ok(big),
            "120b" => Ok(SynthSpec {
                layers: 36,
                experts: 128,
                ..big
            }),
            other => Err(Error::Config(format!(
                "unknown preset `{other}` (choose tiny, 20b or 120b)"
            ))),
        }
    }

    /// The model configuration config.json describes.
    pub(crate) fn config(&self) -> Result<ModelConfig> {
        crate::model::HfConfig::from_json(&self.config_json().to_string())?.validate()
    }

    pub(crate) fn config_json(&self) -> serde_json::Value {
        let layer_types: Vec<&str> = (0..self.layers)
            .map(|i| {
                if i % 2 == 0 {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        // Small test vocabularies have no special tokens: leave their ids out.
        let special = |id: u32| {
            if id < self.vocab {
                json!(id)
            } else {
                serde_json::Value::Null
            }
        };
        json!({
            "architectures": ["GptOssForCausalLM"],
            "attention_bias": true,
            "attention_dropout": 0.0,
            "eos_token_id": special(200002),
            "experts_per_token": self.top_k,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "initial_context_length": 4096,
            "initializer_range": 0.02,
            "intermediate_size": self.inter,
            "layer_types": layer_types,
            "max_position_embeddings": self.max_positions,
            "model_type": "gpt_oss",
            "num_attention_heads": self.heads,
            "num_experts_per_tok": self.top_k,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads,
            "num_local_experts": self.experts,
            "output_router_logits": false,
            "pad_token_id": special(199999),
            "quantization_config": {
                "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
                "quant_method": "mxfp4"
            },
            "rms_norm_eps": 1e-05,
            "rope_scaling": {
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "factor": 32.0,
                "original_max_position_embeddings": 4096,
                "rope_type": "yarn",
                "truncate": false
            },
            "rope_theta": 150000,
            "router_aux_loss_coef": 0.9,
            "sliding_window": self.sliding_window,
            "swiglu_limit": 7.0,
            "tie_word_embeddings": false,
            "transformers_version": "4.55.0.dev0",
            "use_cache": true,
            "vocab_size": self.vocab
        })
    }
}

/// How a tensor's values are drawn.
#[derive(Clone, Copy)]
enum Fill {
    /// bf16 uniform in [center - a, center + a).
    Bf16 { center: f32, a: f32 },
    /// MXFP4 codes: any byte.
    Codes,
    /// MXFP4 scales: exponents around `base`.
    Scales { base: u8 },
}

struct Entry {
    name: String,
    shape: Vec<usize>,
    fill: Fill,
}

impl Entry {
    fn bytes(&self) -> u64 {
        let n: usize = self.shape.iter().product();
        match self.fill {
            Fill::Bf16 { .. } => n as u64 * 2,
            _ => n as u64,
        }
    }
    fn dtype(&self) -> &'static str {
        match self.fill {
            Fill::Bf16 { .. } => "BF16",
            _ => "U8",
        }
    }
}

/// The checkpoint's tensors (`model::tensors`) with the value ranges synth draws them from.
fn tensors(cfg: &ModelConfig) -> Vec<Entry> {
    let h = cfg.hidden as f32;
    let bf16 = |center: f32, a: f32| Fill::Bf16 { center, a };
    checkpoint_tensors(cfg)
        .into_iter()
        .map(|t| {
            let fill = match t.role {
                Role::Embedding | Role::Sinks => bf16(0.0, 1.0),
                Role::Norm => bf16(1.0, 0.2),
                Role::Matrix { fan_in } => bf16(0.0, (3.0 / fan_in as f32).sqrt()),
                // Router logits spread of about 2 so expert choices are mostly clear-cut.
                Role::RouterMatrix => bf16(0.0, 2.0 * (3.0 / h).sqrt()),
                Role::RouterBias => bf16(0.0, 0.5),
                Role::Bias => bf16(0.0, 0.1),
                Role::Mxfp4Blocks => Fill::Codes,
                // Scale exponents so dequantized weights have about 1/sqrt(fan_in) spread (the
                // e2m1 values have an RMS of about 2.9).
                Role::Mxfp4Scales { fan_in } => Fill::Scales {
                    base: (127.0 - (2.93 * (fan_in as f32).sqrt()).log2()).round() as u8,
                },
            };
            Entry {
                name: t.name,
                shape: t.shape,
                fill,
            }
        })
        .collect()
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the seed.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const PART: usize = 1 << 22;

fn fill_part(out: &mut [u8], fill: Fill, seed: u64) {
    let mut rng = Rng::new(seed);
    match fill {
        Fill::Bf16 { center, a } => {
            for pair in out.chunks_exact_mut(2) {
                pair.copy_from_slice(
                    &half::bf16::from_f32(center + rng.symmetric(a)).to_le_bytes(),
                );
            }
        }
        Fill::Codes => {
            for chunk in out.chunks_mut(8) {
                let r = rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&r[..chunk.len()]);
            }
        }
        Fill::Scales { base } => {
            for b in out.iter_mut() {
                *b = base - 1 + rng.below(3) as u8;
            }
        }
    }
}

/// Generates one tensor's bytes, in parallel over fixed-size parts.
fn generate(t: &Entry, seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; t.bytes() as usize];
    let base = name_seed(seed, &t.name);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parts: Vec<(usize, &mut [u8])> = buf.chunks_mut(PART).enumerate().collect();
    let per = parts.len().div_ceil(threads).max(1);
    let mut parts = parts;
    std::thread::scope(|s| {
        while !parts.is_empty() {
            let batch: Vec<(usize, &mut [u8])> = parts.drain(..per.min(parts.len())).collect();
            s.spawn(move || {
                for (i, p) in batch {
                    fill_part(
                        p,
                        t.fill,
                        base ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    );
                }
            });
        }
    });
    buf
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Writes the checkpoint into `dir` (created if needed). `progress(done, total)` reports bytes.
pub fn write(
    dir: &Path,
    spec: &SynthSpec,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    write_with(dir, spec, &|t: &Entry| generate(t, seed), progress)
}

/// Writes a checkpoint of `spec` whose tensors' bytes come from `bytes`.
fn write_with(
    dir: &Path,
    spec: &SynthSpec,
    bytes: &dyn Fn(&Entry) -> Vec<u8>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let cfg = spec.config()?;
    // Built first so that a vocabulary it cannot serve fails before gigabytes are written.
    let tokenizer = crate::tokenizer::gpt_oss_tokenizer_json(spec.vocab)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let all = tensors(&cfg);
    let total: u64 = all.iter().map(Entry::bytes).sum();

    // Assign tensors to shards in order.
    let mut shards: Vec<Vec<&Entry>> = vec![Vec::new()];
    let mut size = 0u64;
    for t in &all {
        if size > 0 && size + t.bytes() > spec.shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += t.bytes();
        if let Some(last) = shards.last_mut() {
            last.push(t);
        }
    }
    let last = shards.len() - 1;
    let mut weight_map = serde_json::Map::new();
    let mut done = 0u64;
    for (si, shard) in shards.iter().enumerate() {
        let file = format!("model-{si:05}-of-{last:05}.safetensors");
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut off = 0u64;
        for t in shard {
            header.insert(t.name.clone(), json!({"dtype": t.dtype(), "shape": t.shape, "data_offsets": [off, off + t.bytes()]}));
            off += t.bytes();
            weight_map.insert(t.name.clone(), json!(file));
        }
        let mut h = serde_json::to_vec(&header).map_err(|e| Error::Weights(e.to_string()))?;
        h.resize(h.len().div_ceil(8) * 8, b' ');
        let path = dir.join(&file);
        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
        let mut put = |b: &[u8]| w.write_all(b).map_err(|e| Error::io(&path, e));
        put(&(h.len() as u64).to_le_bytes())?;
        put(&h)?;
        for t in shard {
            put(&bytes(t))?;
            done += t.bytes();
            progress(done, total);
        }
        w.flush().map_err(|e| Error::io(&path, e))?;
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_file(
        &dir.join("model.safetensors.index.json"),
        &serde_json::to_string_pretty(&index).unwrap_or_default(),
    )?;
    write_file(
        &dir.join("config.json"),
        &serde_json::to_string_pretty(&spec.config_json()).unwrap_or_default(),
    )?;
    let eos: Vec<u32> = [200002, 199999, 200012]
        .into_iter()
        .filter(|i| *i < spec.vocab)
        .collect();
    let generation = json!({"bos_token_id": 199998, "do_sample": true, "eos_token_id": eos, "pad_token_id": 199999});
    write_file(
        &dir.join("generation_config.json"),
        &serde_json::to_string_pretty(&generation).unwrap_or_default(),
    )?;
    write_file(&dir.join("tokenizer.json"), &tokenizer)?;
    Ok(())
}
