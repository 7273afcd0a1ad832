//! The commands of the `gpt-oss-wgpu` binary, one module each, and what they share: device
//! and model arguments, opening and loading checkpoints, progress bars.

pub(crate) mod bench;
pub(crate) mod bench_serve;
pub(crate) mod chat;
pub(crate) mod devices;
pub(crate) mod generate;
pub(crate) mod harmony;
pub(crate) mod kernel_stats;
pub(crate) mod logits;
pub(crate) mod serve;
pub(crate) mod synth;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use gpt_oss_wgpu::chat::ReasoningEffort;
use gpt_oss_wgpu::model::hub;
use gpt_oss_wgpu::model::weights::Checkpoint;
use gpt_oss_wgpu::{Engine, Gpu, GpuOptions, ModelOptions, Sampling, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Clone)]
pub(crate) struct DeviceArgs {
    /// Graphics API: primary (Vulkan, Metal, DX12), vulkan, metal, dx12, gl, or all.
    #[arg(long, default_value = "primary")]
    pub(crate) backend: String,
    /// Adapter to use: its index in `devices` or part of its name.
    #[arg(long)]
    pub(crate) adapter: Option<String>,
    /// Use only the portable kernels (no subgroups, no f16), as the browser does.
    #[arg(long)]
    pub(crate) portable: bool,
}

#[derive(Args, Clone)]
pub(crate) struct ModelArgs {
    /// Checkpoint folder (config.json, *.safetensors, tokenizer.json), or a Hugging Face model
    /// id such as openai/gpt-oss-20b (optionally @revision), fetched into the Hugging Face
    /// cache (HF_HUB_CACHE or HF_HOME; HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE apply).
    #[arg(long)]
    pub(crate) model: String,
    /// Most positions per sequence (prompt plus output).
    #[arg(long, alias = "max-model-len", default_value_t = 4096)]
    pub(crate) max_context: u32,
    /// Most tokens per forward pass; longer prompts are prefilled in chunks. Activation memory
    /// grows with it. [default: 512; bench: the longest --prompt-lens, one pass per prompt]
    #[arg(long)]
    pub(crate) chunk: Option<u32>,
    /// Keep the KV cache in f32 (default: f16 where the adapter supports it, half the memory).
    #[arg(long)]
    pub(crate) kv_f32: bool,
    /// `exact`: f32 throughout, KV cache included; `fast`: f16 KV cache and, where the adapter
    /// has cooperative matrices, tensor cores (f16 inputs, f32 sums) for prompts, and on GPUs
    /// with f16 arithmetic (subnormals kept; not CPU adapters), decode's expert products in f16
    /// pairs (summed in f32 every 16 or 32). Default: fast, except for `logits`.
    #[arg(long, value_enum)]
    pub(crate) precision: Option<Precision>,
    /// GPU memory for the KV cache, e.g. 8GiB, 512M or bytes (default: a whole context for
    /// every sequence). Sequences take blocks of it as they grow; when it runs out the newest
    /// waits, and blocks of ended requests stay cached for prompts that start the same way.
    #[arg(long, alias = "kv-cache-memory-bytes", value_parser = parse_size)]
    pub(crate) kv_cache_memory: Option<u64>,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

/// How to pick tokens (`generate` and `chat`).
#[derive(Args, Clone)]
pub(crate) struct SamplingArgs {
    #[arg(long, default_value_t = 1.0)]
    pub(crate) temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f32,
    /// Keep only the k most likely tokens (0 keeps all).
    #[arg(long, default_value_t = 0)]
    pub(crate) top_k: u32,
    /// Sampling seed (random when omitted).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
}

impl SamplingArgs {
    /// These settings with this seed.
    pub(crate) fn with_seed(&self, seed: u64) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Precision {
    Exact,
    Fast,
}

/// A size in bytes: a number with an optional unit, K/M/G/T or KiB/MiB/GiB/TiB (powers of
/// 1024), or KB/MB/GB/TB (powers of 1000).
pub(crate) fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 8GiB, 512M, 1000000)"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let pow = |base: f64, unit: &str| match unit {
        "K" => Some(base),
        "M" => Some(base.powi(2)),
        "G" => Some(base.powi(3)),
        "T" => Some(base.powi(4)),
        _ => None,
    };
    let scale = match unit.as_str() {
        "" | "B" => Some(1.0),
        u if u.ends_with("IB") => pow(1024.0, &u[..u.len() - 2]),
        u if u.ends_with('B') => pow(1000.0, &u[..u.len() - 1]),
        u => pow(1024.0, u),
    }
    .ok_or_else(|| {
        format!("unknown unit in `{s}` (K, M, G, T, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")
    })?;
    let bytes = num * scale;
    if !(bytes >= 1.0 && bytes < 2f64.powi(63)) {
        return Err(format!("`{s}` is not a usable size"));
    }
    Ok(bytes as u64)
}

#[derive(Args)]
pub(crate) struct TokenizerArgs {
    /// Take tokenizer.json from this model directory (default: the built-in gpt-oss tokenizer).
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
}

pub(crate) fn gpu_options(d: &DeviceArgs) -> Result<GpuOptions> {
    let backends = match d.backend.to_lowercase().as_str() {
        "primary" => None,
        "all" => Some(wgpu::Backends::all()),
        "vulkan" => Some(wgpu::Backends::VULKAN),
        "metal" => Some(wgpu::Backends::METAL),
        "dx12" => Some(wgpu::Backends::DX12),
        "gl" => Some(wgpu::Backends::GL),
        other => bail!("unknown backend `{other}` (primary, vulkan, metal, dx12, gl, all)"),
    };
    let mut o = GpuOptions::from_env();
    o.backends = backends;
    o.adapter = d.adapter.clone();
    o.portable |= d.portable;
    Ok(o)
}

pub(crate) fn bar(len: u64, msg: &str) -> ProgressBar {
    styled_bar(
        len,
        msg,
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    )
}

/// A progress bar over a count of things.
pub(crate) fn count_bar(len: u64, msg: &str) -> ProgressBar {
    styled_bar(len, msg, "{msg} [{bar:30}] {pos}/{len} ({elapsed}, {eta})")
}

fn styled_bar(len: u64, msg: &str, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Opens a checkpoint without loading its weights: config.json, shard headers and the tokenizer,
/// enough to check a request before minutes of uploading.
pub(crate) fn open(m: &ModelArgs) -> Result<Checkpoint> {
    let ckpt = gpt_oss_wgpu::model::weights::load_dir(&model_dir(&m.model)?)?;
    if ckpt.builtin_tokenizer {
        eprintln!(
            "note: {} has no tokenizer.json; using the built-in gpt-oss tokenizer (o200k_base \
             with the Harmony tokens)",
            m.model
        );
    }
    Ok(ckpt)
}

/// The checkpoint folder of `--model`: as given, or a Hub id's snapshot, downloaded with a
/// progress bar per file where the cache lacks it.
fn model_dir(model: &str) -> Result<PathBuf> {
    let mut current: Option<(String, ProgressBar)> = None;
    let dir = hub::resolve(model, &mut |file, done, total| {
        if current.as_ref().is_none_or(|(f, _)| f != file) {
            if let Some((_, pb)) = current.take() {
                pb.finish_and_clear();
            }
            current = Some((file.to_string(), bar(total, file)));
        }
        if let Some((_, pb)) = &current {
            pb.set_length(total);
            pb.set_position(done);
        }
    });
    if let Some((_, pb)) = current {
        pb.finish_and_clear();
    }
    Ok(dir?)
}

/// Positions per sequence: --max-context, capped by the model's own limit.
pub(crate) fn context(m: &ModelArgs, ckpt: &Checkpoint) -> u32 {
    m.max_context.min(ckpt.config.max_positions)
}

/// The checkpoint's tokenizer, or an error saying how to do without one.
pub(crate) fn tokenizer_of<'a>(m: &ModelArgs, ckpt: &'a Checkpoint) -> Result<&'a Tokenizer> {
    ckpt.tokenizer.as_ref().with_context(|| {
        format!(
            "{} has no tokenizer.json and its vocabulary is too small for the built-in one; \
             pass --token-ids",
            m.model
        )
    })
}

impl ModelArgs {
    /// Tokens per forward pass: --chunk, else 512.
    pub(crate) fn tokens_per_pass(&self) -> u32 {
        self.chunk.unwrap_or(512)
    }
}

/// Opens the GPU and uploads an opened checkpoint for `max_seqs` sequences and, per pass, at most
/// `max_outputs` logits rows (None: one per sequence).
pub(crate) fn load(
    m: &ModelArgs,
    ckpt: Checkpoint,
    max_seqs: u32,
    max_outputs: Option<u32>,
) -> Result<Engine> {
    let gpu = pollster::block_on(Gpu::new(&gpu_options(&m.device)?))?;
    eprintln!("using {} ({:?})", gpu.info.name, gpu.info.backend);
    if gpu.info.device_type == wgpu::DeviceType::Cpu {
        eprintln!(
            "note: {} is a software adapter (the CPU emulating a GPU): expect it to be slow; \
             `gpt-oss-wgpu devices` lists the others",
            gpu.info.name
        );
    }
    let fast = m.precision != Some(Precision::Exact);
    let opts = ModelOptions {
        max_tokens: m.tokens_per_pass(),
        max_seqs,
        max_context: context(m, &ckpt),
        kv_f16: fast && !m.kv_f32,
        coop: fast,
        kv_cache_bytes: m.kv_cache_memory,
        max_outputs,
    };
    let pb = bar(0, "loading");
    let t0 = Instant::now();
    let engine = Engine::from_checkpoint(Arc::new(gpu), ckpt, opts, &mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })?;
    pb.finish_and_clear();
    eprintln!(
        "loaded {} in {:.1}s: {:.2} GiB weights, {:.2} GiB KV cache ({})",
        m.model,
        t0.elapsed().as_secs_f64(),
        engine.model.weight_bytes() as f64 / (1u64 << 30) as f64,
        engine.model.cache_bytes() as f64 / (1u64 << 30) as f64,
        if engine.model.kv_f16 { "f16" } else { "f32" }
    );
    let model = &engine.model;
    let fast: Vec<&str> = [
        (model.kv_f16, "f16 KV cache"),
        (model.tensor_cores, "prompts on the tensor cores"),
        (model.f16_products, "decode's expert products in f16 pairs"),
    ]
    .into_iter()
    .filter_map(|(on, what)| on.then_some(what))
    .collect();
    if fast.is_empty() {
        eprintln!("precision: f32 throughout");
    } else {
        eprintln!("precision: {}, f32 elsewhere", fast.join(", "));
    }
    let sizes = engine.model.cache().sizes;
    eprintln!(
        "KV cache: {} blocks of {} positions for full-attention layers ({:.1} contexts of {}), \
         {} for sliding-window layers",
        sizes.blocks[0],
        engine.model.cache().block(),
        sizes.blocks[0] as f64 / sizes.entries as f64,
        engine.model.opts.max_context,
        sizes.blocks[1]
    );
    Ok(engine)
}

pub(crate) fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(crate) fn effort(s: &str) -> Result<ReasoningEffort> {
    ReasoningEffort::parse(s)
        .with_context(|| format!("reasoning effort `{s}` is not low, medium or high"))
}

pub(crate) fn builtin_tokenizer(t: &TokenizerArgs) -> Result<Tokenizer> {
    Ok(match &t.model {
        Some(dir) => Tokenizer::from_file(&dir.join("tokenizer.json"))?,
        None => Tokenizer::from_bytes(
            gpt_oss_wgpu::tokenizer::gpt_oss_tokenizer_json(201088)?.as_bytes(),
        )?,
    })
}
