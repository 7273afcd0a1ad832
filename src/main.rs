//! `gpt-oss-wgpu`: run gpt-oss checkpoints on the local GPU. A thin shell over the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use gpt_oss_wgpu::chat::harmony::Harmony;
use gpt_oss_wgpu::chat::openai::today;
use gpt_oss_wgpu::chat::{
    AssistantMessage, ChatRequest, ChatSession, ReasoningEffort, Role, StopText, StreamParser,
    TurnEvent,
};
use gpt_oss_wgpu::engine::check_request;
use gpt_oss_wgpu::model::weights::Checkpoint;
use gpt_oss_wgpu::model::{Batch, TokenInfo};
use gpt_oss_wgpu::serve::ServeConfig;
use gpt_oss_wgpu::synth::{self, SynthSpec};
use gpt_oss_wgpu::{
    Engine, Event, Gpu, GpuOptions, ModelOptions, Request, Sampling, StreamDecoder, Tokenizer,
};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "gpt-oss-wgpu",
    version,
    about = "Run OpenAI's gpt-oss models on any GPU through WGSL compute shaders"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the GPU adapters wgpu can see, with their features and limits.
    Devices(DeviceArgs),
    /// Write a random-weight checkpoint in the released Hugging Face layout.
    Synth(SynthArgs),
    /// Answer a prompt (a user message in the chat format; --raw continues plain text), streaming
    /// to stdout.
    Generate(GenerateArgs),
    /// Write the logits of every position of a token sequence to a safetensors file.
    Logits(LogitsArgs),
    /// Chat with the model in the terminal (or over a pipe: one message per line).
    Chat(ChatArgs),
    /// Print the Harmony prompt of a chat-completions request as token ids and text.
    Render(RenderArgs),
    /// Parse Harmony output token ids into an OpenAI assistant message.
    Parse(ParseArgs),
    /// Measure prefill and decode speed, time to first token, GPU memory and per-kernel time.
    Bench(BenchArgs),
    /// Serve an OpenAI-compatible API over HTTP: /v1/chat/completions, /v1/completions,
    /// /v1/models, /tokenize, /detokenize, /health (many clients share the GPU: requests join
    /// the running batch between forward passes).
    Serve(ServeArgs),
}

#[derive(Args, Clone)]
struct DeviceArgs {
    /// Graphics API: primary (Vulkan, Metal, DX12), vulkan, metal, dx12, gl, or all.
    #[arg(long, default_value = "primary")]
    backend: String,
    /// Adapter to use: its index in `devices` or part of its name.
    #[arg(long)]
    adapter: Option<String>,
    /// Use only the portable kernels (no subgroups, no f16), as the browser does.
    #[arg(long)]
    portable: bool,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Most positions per sequence (prompt plus output).
    #[arg(long, alias = "max-model-len", default_value_t = 4096)]
    max_context: u32,
    /// Most tokens per forward pass; longer prompts are prefilled in chunks.
    #[arg(long, default_value_t = 512)]
    chunk: u32,
    /// Keep the KV cache in f32 (default: f16 where the adapter supports it, half the memory).
    #[arg(long)]
    kv_f32: bool,
    /// `exact`: f32 throughout, KV cache included; `fast`: f16 KV cache and, where the adapter
    /// has cooperative matrices, tensor cores (f16 inputs, f32 sums) for prompts. Default: fast,
    /// except for `logits`.
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// GPU memory for the KV cache, e.g. 8GiB, 512M or bytes (default: a whole context for
    /// every sequence). Sequences take blocks of it as they grow; when it runs out the newest
    /// waits, and blocks of ended requests stay cached for prompts that start the same way.
    #[arg(long, alias = "kv-cache-memory-bytes", value_parser = parse_size)]
    kv_cache_memory: Option<u64>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Precision {
    Exact,
    Fast,
}

/// A size in bytes: a number with an optional unit, K/M/G/T or KiB/MiB/GiB/TiB (powers of
/// 1024), or KB/MB/GB/TB (powers of 1000).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
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
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the address is printed once the model is ready).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "GPT_OSS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model name clients send and /v1/models lists (default: --model as given).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Most sequences decoding together (each holds a KV-cache slot).
    #[arg(long, default_value_t = 8)]
    max_num_seqs: u32,
    /// Requests that may wait for a free sequence; more get 503.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
}

#[derive(Args)]
struct SynthArgs {
    /// Shape to start from: tiny, 20b or 120b.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    layers: Option<u32>,
    #[arg(long)]
    hidden: Option<u32>,
    #[arg(long)]
    intermediate: Option<u32>,
    #[arg(long)]
    heads: Option<u32>,
    #[arg(long)]
    kv_heads: Option<u32>,
    #[arg(long)]
    head_dim: Option<u32>,
    #[arg(long)]
    experts: Option<u32>,
    #[arg(long)]
    top_k: Option<u32>,
    #[arg(long)]
    vocab: Option<u32>,
    #[arg(long)]
    sliding_window: Option<u32>,
    /// Start a new shard after this many MiB.
    #[arg(long)]
    shard_mib: Option<u64>,
    /// Write into --out even if it already holds files (they may be overwritten).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text: a user message in the Harmony chat format (with --raw: text to continue).
    #[arg(long, conflicts_with = "token_ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, continued as they are (no chat format).
    #[arg(long, value_delimiter = ',')]
    token_ids: Option<Vec<u32>>,
    /// Most tokens to generate (default: 2048 in chat mode, reasoning included; 128 with --raw).
    #[arg(long)]
    max_tokens: Option<u32>,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 keeps all).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Sampling seed (random when omitted).
    #[arg(long)]
    seed: Option<u64>,
    /// Always take the most likely token.
    #[arg(long)]
    greedy: bool,
    /// Print JSON with the generated ids, text and timings instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Continue raw text instead of chatting (the prompt is not wrapped in the chat format).
    #[arg(long)]
    raw: bool,
    /// In chat mode, also print the model's reasoning.
    #[arg(long)]
    show_reasoning: bool,
    /// In chat mode: reasoning effort (low, medium, high).
    #[arg(long, default_value = "medium")]
    reasoning_effort: String,
    /// Stop when the output (the answer, in chat mode) contains this text; may be repeated.
    /// The stop text itself is not printed.
    #[arg(long)]
    stop: Vec<String>,
}

#[derive(Args)]
struct TokenizerArgs {
    /// Take tokenizer.json from this model directory (default: the built-in gpt-oss tokenizer).
    #[arg(long)]
    model: Option<PathBuf>,
}

#[derive(Args)]
struct RenderArgs {
    /// A chat-completions request (JSON with `messages`, optional `tools`, `reasoning_effort`).
    #[arg(long)]
    request: PathBuf,
    /// Current date for the system message (default: today).
    #[arg(long)]
    date: Option<String>,
    #[command(flatten)]
    tokenizer: TokenizerArgs,
}

#[derive(Args)]
struct ParseArgs {
    /// Output token ids, as sampled after the prompt's `<|start|>assistant`.
    #[arg(long, value_delimiter = ',', required = true)]
    token_ids: Vec<u32>,
    #[command(flatten)]
    tokenizer: TokenizerArgs,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    chat: ChatOptions,
    /// Do not show the model's reasoning.
    #[arg(long)]
    hide_reasoning: bool,
    /// Continue a conversation saved with /save (a chat-completions request file).
    #[arg(long)]
    load: Option<PathBuf>,
}

/// Options shared by `chat` and chat-mode `generate`.
#[derive(Args, Clone)]
struct ChatOptions {
    /// Reasoning effort: low, medium or high.
    #[arg(long, default_value = "medium")]
    reasoning_effort: String,
    /// Developer instructions (a system prompt).
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per answer, reasoning included.
    #[arg(long, default_value_t = 2048)]
    max_tokens: u32,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 keeps all).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Sampling seed (random when omitted).
    #[arg(long)]
    seed: Option<u64>,
    /// End an answer when it contains this text; may be repeated. The stop text is not shown.
    #[arg(long)]
    stop: Vec<String>,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, value_delimiter = ',', required = true)]
    token_ids: Vec<u32>,
    /// Output safetensors file (tensor `logits`, f32, [n, vocab]).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt lengths to prefill.
    #[arg(long, value_delimiter = ',', default_value = "512,2048")]
    prompt_lens: Vec<u32>,
    /// Decode batch sizes (sequences decoding together).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batches: Vec<u32>,
    /// Decode steps to time per batch size.
    #[arg(long, default_value_t = 64)]
    decode_steps: u32,
    /// Also time batch-1 decode with this many positions already cached (e.g. 2048,8192,32768;
    /// the cache is not prefilled for these: only the amount of keys read matters for speed).
    #[arg(long, value_delimiter = ',')]
    contexts: Vec<u32>,
    /// The card's memory bandwidth in GB/s, to print each kernel's share of it.
    #[arg(long)]
    peak_gbs: Option<f64>,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl GenerateArgs {
    /// The sampling settings and the seed they use (random unless given).
    fn sampling(&self) -> (Sampling, u64) {
        let seed = self.seed.unwrap_or_else(random_seed);
        let s = if self.greedy {
            Sampling {
                seed,
                ..Sampling::greedy()
            }
        } else {
            Sampling {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                seed,
            }
        };
        (s, seed)
    }
}

fn gpu_options(d: &DeviceArgs) -> Result<GpuOptions> {
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

fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Opens a checkpoint without loading its weights: config.json, shard headers and the tokenizer,
/// enough to check a request before minutes of uploading.
fn open(m: &ModelArgs) -> Result<Checkpoint> {
    let ckpt = gpt_oss_wgpu::model::weights::load_dir(&m.model)?;
    if ckpt.builtin_tokenizer {
        eprintln!(
            "note: {} has no tokenizer.json; using the built-in gpt-oss tokenizer (o200k_base \
             with the Harmony tokens)",
            m.model.display()
        );
    }
    Ok(ckpt)
}

/// Positions per sequence: --max-context, capped by the model's own limit.
fn context(m: &ModelArgs, ckpt: &Checkpoint) -> u32 {
    m.max_context.min(ckpt.config.max_positions)
}

/// The checkpoint's tokenizer, or an error saying how to do without one.
fn tokenizer_of<'a>(m: &ModelArgs, ckpt: &'a Checkpoint) -> Result<&'a Tokenizer> {
    ckpt.tokenizer.as_ref().with_context(|| {
        format!(
            "{} has no tokenizer.json and its vocabulary is too small for the built-in one; \
             pass --token-ids",
            m.model.display()
        )
    })
}

/// Opens the GPU and uploads an opened checkpoint.
fn load(m: &ModelArgs, ckpt: Checkpoint, max_seqs: u32) -> Result<Engine> {
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
        max_tokens: m.chunk,
        max_seqs,
        max_context: context(m, &ckpt),
        kv_f16: fast && !m.kv_f32,
        coop: fast,
        kv_cache_bytes: m.kv_cache_memory,
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
        m.model.display(),
        t0.elapsed().as_secs_f64(),
        engine.model.weight_bytes() as f64 / (1u64 << 30) as f64,
        engine.model.cache_bytes() as f64 / (1u64 << 30) as f64,
        if engine.model.kv_f16 { "f16" } else { "f32" }
    );
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

fn devices(d: &DeviceArgs) -> Result<()> {
    let o = gpu_options(d)?;
    let list = pollster::block_on(gpt_oss_wgpu::gpu::context::adapters(o.backends));
    if list.is_empty() {
        bail!(
            "no GPU adapters found (on Linux, install a Vulkan driver such as mesa-vulkan-drivers)"
        );
    }
    for (i, a) in list.iter().enumerate() {
        println!("[{i}] {}", gpt_oss_wgpu::gpu::context::describe_adapter(a));
    }
    Ok(())
}

fn synth_cmd(a: &SynthArgs) -> Result<()> {
    let mut s = SynthSpec::preset(&a.preset)?;
    let set = |v: &mut u32, o: Option<u32>| {
        if let Some(x) = o {
            *v = x;
        }
    };
    set(&mut s.layers, a.layers);
    set(&mut s.hidden, a.hidden);
    set(&mut s.inter, a.intermediate);
    set(&mut s.heads, a.heads);
    set(&mut s.kv_heads, a.kv_heads);
    set(&mut s.head_dim, a.head_dim);
    set(&mut s.experts, a.experts);
    set(&mut s.top_k, a.top_k);
    set(&mut s.vocab, a.vocab);
    set(&mut s.sliding_window, a.sliding_window);
    if let Some(m) = a.shard_mib {
        s.shard_bytes = m.max(1) << 20;
    }
    let occupied = std::fs::read_dir(&a.out).is_ok_and(|mut d| d.next().is_some());
    if occupied && !a.force {
        bail!(
            "{} already exists and is not empty; choose another --out or add --force to write \
             over it",
            a.out.display()
        );
    }
    let pb = bar(0, "writing");
    synth::write(&a.out, &s, a.seed, &mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })?;
    pb.finish_and_clear();
    eprintln!(
        "wrote {} ({} layers, hidden {}, {} experts, top-{}, vocab {})",
        a.out.display(),
        s.layers,
        s.hidden,
        s.experts,
        s.top_k,
        s.vocab
    );
    Ok(())
}

fn generate(a: &GenerateArgs) -> Result<()> {
    if let (Some(text), false) = (&a.prompt, a.raw) {
        return generate_chat(a, text);
    }
    let ckpt = open(&a.model)?;
    let prompt = match (&a.prompt, &a.token_ids) {
        (Some(text), _) => tokenizer_of(&a.model, &ckpt)?.encode(text)?,
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("give --prompt TEXT or --token-ids 1,2,3"),
    };
    let (sampling, seed) = a.sampling();
    let req = Request {
        prompt: prompt.clone(),
        max_tokens: a.max_tokens.unwrap_or(128),
        sampling,
        stop: vec![],
        ignore_eos: false,
    };
    check_request(&ckpt.config, context(&a.model, &ckpt), &req)?;
    let mut stop = StopText::new(a.stop.clone())?;
    let mut engine = load(&a.model, ckpt, 1)?;
    let t0 = Instant::now();
    let id = engine.submit(req)?;
    let mut out = Vec::new();
    let mut text = String::new();
    let mut first_token = None;
    let mut reason = None;
    let mut dec = StreamDecoder::default();
    let mut stdout = std::io::stdout().lock();
    while engine.has_work() {
        for ev in pollster::block_on(engine.step())? {
            match ev {
                Event::Token { token, .. } => {
                    first_token.get_or_insert_with(|| t0.elapsed());
                    out.push(token);
                    if engine.eos.contains(&token) {
                        continue;
                    }
                    let piece = match &engine.tokenizer {
                        Some(t) => dec.push(t, token)?.map(|p| stop.push(&p)),
                        None => Some(format!("{token} ")),
                    };
                    if let Some(piece) = piece {
                        text.push_str(&piece);
                        if !a.json {
                            stdout.write_all(piece.as_bytes())?;
                            stdout.flush()?;
                        }
                    }
                }
                Event::Finished { reason: r, .. } => reason = Some(r),
            }
        }
        if stop.stopped() && reason.is_none() {
            engine.cancel(id);
            reason = Some(gpt_oss_wgpu::FinishReason::Stop);
        }
    }
    let rest = stop.finish();
    text.push_str(&rest);
    let total = t0.elapsed().as_secs_f64();
    let ttft = first_token.map_or(0.0, |d| d.as_secs_f64());
    let decode_tok_s = if out.len() > 1 {
        (out.len() - 1) as f64 / (total - ttft).max(1e-9)
    } else {
        0.0
    };
    if a.json {
        let v = serde_json::json!({
            "prompt_tokens": prompt.len(),
            "token_ids": out,
            "text": engine.tokenizer.is_some().then_some(text),
            "finish_reason": reason.map(|r| r.as_str()),
            "seed": seed,
            "timings": {"time_to_first_token_s": ttft, "total_s": total, "prefill_tok_s": prompt.len() as f64 / ttft.max(1e-9), "decode_tok_s": decode_tok_s},
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        writeln!(stdout, "{rest}")?;
        eprintln!(
            "{} prompt tokens, {} generated; first token after {:.0} ms, {:.1} tok/s",
            prompt.len(),
            out.len(),
            ttft * 1e3,
            decode_tok_s
        );
    }
    Ok(())
}

fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn effort(s: &str) -> Result<ReasoningEffort> {
    ReasoningEffort::parse(s)
        .with_context(|| format!("reasoning effort `{s}` is not low, medium or high"))
}

/// Escape codes that dim text, or nothing when stdout is not a terminal.
fn dim_codes() -> (&'static str, &'static str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        ("\x1b[2m", "\x1b[0m")
    } else {
        ("", "")
    }
}

/// Prints a turn as it streams: reasoning dimmed (or hidden), the answer, and output that is not
/// in the chat format (a random-weight model's) as dimmed plain text after a note saying so.
struct TurnPrinter {
    show_reasoning: bool,
    show_answer: bool,
    dim: (&'static str, &'static str),
    in_reasoning: bool,
    raw_noted: bool,
}

impl TurnPrinter {
    fn new(show_reasoning: bool, show_answer: bool) -> TurnPrinter {
        TurnPrinter {
            show_reasoning,
            show_answer,
            dim: dim_codes(),
            in_reasoning: false,
            raw_noted: false,
        }
    }

    fn print(&mut self, out: &mut impl Write, ev: TurnEvent) {
        let (dim, reset) = self.dim;
        let _ = match ev {
            TurnEvent::Reasoning(t) if self.show_reasoning => {
                self.in_reasoning = true;
                write!(out, "{dim}{t}{reset}")
            }
            TurnEvent::Answer(t) if self.show_answer => {
                if std::mem::take(&mut self.in_reasoning) {
                    let _ = writeln!(out, "\n");
                }
                write!(out, "{t}")
            }
            TurnEvent::Raw(t) if self.show_answer => {
                if !std::mem::replace(&mut self.raw_noted, true) {
                    eprintln!(
                        "note: the model's output is not in the Harmony chat format (a \
                         random-weight model writes such text); showing it as plain text"
                    );
                }
                write!(out, "{dim}{t}{reset}")
            }
            _ => Ok(()),
        };
        let _ = out.flush();
    }
}

/// Sampling settings for one chat answer.
fn chat_sampling(o: &ChatOptions, seed: u64) -> Sampling {
    Sampling {
        temperature: o.temperature,
        top_p: o.top_p,
        top_k: o.top_k,
        seed,
    }
}

/// `generate` in chat mode: the prompt is a user message and the final answer is printed.
fn generate_chat(a: &GenerateArgs, text: &str) -> Result<()> {
    let ckpt = open(&a.model)?;
    let mut session = ChatSession::new(today());
    session.effort = effort(&a.reasoning_effort)?;
    session.set_stop(a.stop.clone())?;
    let (sampling, seed) = a.sampling();
    let max_tokens = a.max_tokens.unwrap_or(2048);
    let req = session.request(tokenizer_of(&a.model, &ckpt)?, text, sampling, max_tokens)?;
    check_request(&ckpt.config, context(&a.model, &ckpt), &req)?;
    let mut engine = load(&a.model, ckpt, 1)?;
    let mut stdout = std::io::stdout().lock();
    let mut printer = TurnPrinter::new(a.show_reasoning && !a.json, !a.json);
    let r = session.turn(
        &mut engine,
        text,
        sampling,
        max_tokens,
        &mut |ev| printer.print(&mut stdout, ev),
        &|| false,
    )?;
    let msg = AssistantMessage::from_parsed(&r.messages, || format!("call_{:016x}", random_seed()));
    if a.json {
        let v = serde_json::json!({
            "content": msg.content,
            "reasoning_content": msg.reasoning_content,
            "tool_calls": msg.tool_calls,
            "unparsed": r.unparsed,
            "finish_reason": r.reason.as_str(),
            "generated_tokens": r.generated,
            "seed": seed,
            "timings": {"total_s": r.seconds, "tok_s": r.generated as f64 / r.seconds.max(1e-9)},
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        writeln!(stdout)?;
        eprintln!(
            "{} tokens in {:.1}s, {:.1} tok/s",
            r.generated,
            r.seconds,
            r.generated as f64 / r.seconds.max(1e-9)
        );
    }
    Ok(())
}

const CHAT_HELP: &str = "commands:
  /effort low|medium|high   reasoning effort for the next answers
  /system TEXT              developer instructions (empty clears them)
  /reset                    forget the conversation
  /save FILE                write the conversation as a chat-completions request (JSON)
  /load FILE                continue a conversation written by /save
  /help                     this list
  /quit                     leave (or Ctrl-D)
Ctrl-C stops the answer being written (at the prompt, it leaves). A line ending in \\
continues on the next line; a line holding only \"\"\" starts and ends a multi-line message.";
/// Reads one message: continued lines (`\` at the end) or a `"""` block. None at end of input.
fn read_message(input: &mut impl std::io::BufRead) -> Result<Option<String>> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut msg = line.trim_end_matches(['\n', '\r']).to_string();
    if msg.trim() == "\"\"\"" {
        let mut block = Vec::new();
        loop {
            let mut l = String::new();
            if input.read_line(&mut l)? == 0 || l.trim() == "\"\"\"" {
                break;
            }
            block.push(l.trim_end_matches(['\n', '\r']).to_string());
        }
        return Ok(Some(block.join("\n")));
    }
    while msg.ends_with('\\') {
        msg.pop();
        msg.push('\n');
        let mut l = String::new();
        if input.read_line(&mut l)? == 0 {
            break;
        }
        msg.push_str(l.trim_end_matches(['\n', '\r']));
    }
    Ok(Some(msg))
}

/// Replaces the session's conversation with the one saved in `path`; returns its message count.
fn load_conversation(session: &mut ChatSession, path: &str) -> Result<usize> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let req = ChatRequest::from_json(&text).with_context(|| path.to_string())?;
    session
        .load_openai(&req)
        .with_context(|| path.to_string())?;
    Ok(session.history.len())
}

/// What Ctrl-C does depends on where the chat is: loading or at the prompt it leaves, while an
/// answer is written it stops the answer.
const PHASE_WAITING: u8 = 0;
const PHASE_ANSWERING: u8 = 1;

fn chat(a: &ChatArgs) -> Result<()> {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicU8::new(PHASE_WAITING));
    let (flag, at) = (stop.clone(), phase.clone());
    ctrlc::set_handler(move || {
        if at.load(Ordering::SeqCst) == PHASE_ANSWERING {
            flag.store(true, Ordering::SeqCst);
        } else {
            eprintln!();
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;

    // Everything that can be wrong with the options is reported before the weights load.
    let ckpt = open(&a.model)?;
    let mut session = ChatSession::new(today());
    session.effort = effort(&a.chat.reasoning_effort)?;
    session.instructions = a.chat.system.clone();
    session.set_stop(a.chat.stop.clone())?;
    tokenizer_of(&a.model, &ckpt)?;
    if let Some(path) = &a.load {
        let n = load_conversation(&mut session, &path.display().to_string())?;
        eprintln!("continuing {} ({n} messages)", path.display());
    }
    let mut engine = load(&a.model, ckpt, 1)?;
    let interactive = std::io::stdin().is_terminal();
    let mut seed = a.chat.seed.unwrap_or_else(random_seed);
    if interactive {
        eprintln!(
            "chat with {} — /help for commands, Ctrl-D to leave",
            a.model.model.display()
        );
    }
    let mut input = std::io::stdin().lock();
    let mut stdout = std::io::stdout();
    loop {
        if interactive {
            eprint!("\x1b[1m>\x1b[0m ");
        }
        let Some(msg) = read_message(&mut input)? else {
            break;
        };
        let text = msg.trim();
        if text.is_empty() {
            continue;
        }
        if let Some(cmd) = text.strip_prefix('/') {
            let (name, arg) = cmd
                .split_once(char::is_whitespace)
                .map_or((cmd, ""), |(n, r)| (n, r.trim()));
            match name {
                "help" => eprintln!("{CHAT_HELP}"),
                "quit" | "exit" => break,
                "reset" => {
                    session.history.clear();
                    eprintln!("conversation cleared");
                }
                "effort" => match ReasoningEffort::parse(arg) {
                    Some(e) => {
                        session.effort = e;
                        eprintln!("reasoning effort: {}", e.as_str());
                    }
                    None => eprintln!("usage: /effort low|medium|high"),
                },
                "system" => {
                    session.instructions = (!arg.is_empty()).then(|| arg.to_string());
                    eprintln!(
                        "{}",
                        if arg.is_empty() {
                            "instructions cleared"
                        } else {
                            "instructions set"
                        }
                    );
                }
                "save" if !arg.is_empty() => {
                    match std::fs::write(arg, serde_json::to_string_pretty(&session.to_openai())?) {
                        Ok(()) => eprintln!("saved to {arg}"),
                        Err(e) => eprintln!("error: cannot save to {arg}: {e}"),
                    }
                }
                "load" if !arg.is_empty() => match load_conversation(&mut session, arg) {
                    Ok(n) => eprintln!("loaded {arg} ({n} messages)"),
                    Err(e) => eprintln!("error: {e:#}"),
                },
                "save" | "load" => eprintln!("usage: /{name} FILE"),
                other => eprintln!("unknown command /{other} (/help lists them)"),
            }
            continue;
        }
        let sampling = chat_sampling(&a.chat, seed);
        seed = seed.wrapping_add(1);
        let mut printer = TurnPrinter::new(!a.hide_reasoning, true);
        stop.store(false, Ordering::SeqCst);
        phase.store(PHASE_ANSWERING, Ordering::SeqCst);
        let r = session.turn(
            &mut engine,
            text,
            sampling,
            a.chat.max_tokens,
            &mut |ev| printer.print(&mut stdout, ev),
            &|| stop.load(Ordering::SeqCst),
        );
        phase.store(PHASE_WAITING, Ordering::SeqCst);
        // A turn that cannot run (too long for the context, say) is reported; the conversation
        // and the rest of the input go on.
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        writeln!(stdout)?;
        let note = if r.reason == gpt_oss_wgpu::FinishReason::Cancelled {
            " (stopped)"
        } else {
            ""
        };
        eprintln!(
            "[{} tokens, {:.1} tok/s{note}]",
            r.generated,
            r.generated as f64 / r.seconds.max(1e-9)
        );
    }
    Ok(())
}

fn builtin_tokenizer(t: &TokenizerArgs) -> Result<Tokenizer> {
    Ok(match &t.model {
        Some(dir) => Tokenizer::from_file(&dir.join("tokenizer.json"))?,
        None => Tokenizer::from_bytes(
            gpt_oss_wgpu::tokenizer::gpt_oss_tokenizer_json(201088)?.as_bytes(),
        )?,
    })
}

fn render(a: &RenderArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.request)
        .with_context(|| format!("cannot read {}", a.request.display()))?;
    let req = ChatRequest::from_json(&text).with_context(|| a.request.display().to_string())?;
    let msgs = req
        .to_harmony(&a.date.clone().unwrap_or_else(today))
        .with_context(|| a.request.display().to_string())?;
    let tok = builtin_tokenizer(&a.tokenizer)?;
    let ids = Harmony::new(&tok)?.render_for_completion(&msgs)?;
    let v = serde_json::json!({"token_ids": ids, "text": tok.decode(&ids)?});
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn parse(a: &ParseArgs) -> Result<()> {
    let tok = builtin_tokenizer(&a.tokenizer)?;
    if let Some(bad) = a.token_ids.iter().find(|&&t| !tok.contains(t)) {
        bail!(
            "token id {bad} is outside the vocabulary of {}",
            tok.vocab_size()
        );
    }
    let ids = gpt_oss_wgpu::chat::harmony::Specials::of(&tok)?;
    let p = StreamParser::parse_all(&tok, ids, Some(Role::Assistant), &a.token_ids);
    let mut n = 0;
    let msg = AssistantMessage::from_parsed(&p.messages, || {
        n += 1;
        format!("call_{:08x}{n}", random_seed() as u32)
    });
    let mut v = serde_json::to_value(&msg)?;
    if let Some(e) = &p.error {
        v["parse_error"] = e.clone().into();
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    if let Some(e) = &p.error {
        bail!("the tokens are not valid Harmony output: {e} (what parsed is printed above)");
    }
    Ok(())
}

fn logits(a: &LogitsArgs) -> Result<()> {
    let mut m = a.model.clone();
    m.precision.get_or_insert(Precision::Exact);
    let ckpt = open(&m)?;
    let n = a.token_ids.len();
    let ctx = context(&m, &ckpt);
    if n == 0 || n > ctx as usize {
        bail!("{n} tokens do not fit a context of {ctx} (raise --max-context)");
    }
    let vocab = ckpt.config.vocab;
    if let Some(bad) = a.token_ids.iter().find(|&&t| t >= vocab) {
        bail!("token id {bad} is outside the vocabulary of {vocab}");
    }
    let engine = load(&m, ckpt, 1)?;
    let model = &engine.model;
    let vocab = vocab as usize;
    let mut all = Vec::with_capacity(n * vocab);
    let step = (model.max_outputs as usize).min(model.opts.max_tokens as usize);
    for start in (0..n).step_by(step) {
        let end = (start + step).min(n);
        let toks: Vec<TokenInfo> = (start..end)
            .map(|p| TokenInfo::new(a.token_ids[p], p as u32, 0))
            .collect();
        let outputs: Vec<u32> = (0..toks.len() as u32).collect();
        let sampling = vec![Default::default(); toks.len()];
        all.extend(model.logits(&Batch {
            tokens: &toks,
            outputs: &outputs,
            sampling: &sampling,
        })?);
    }
    write_logits(&a.out, &all, n, vocab)?;
    eprintln!("wrote logits [{n}, {vocab}] to {}", a.out.display());
    Ok(())
}

/// Writes the logits as safetensors with the usual file permissions (the umask's).
fn write_logits(path: &Path, v: &[f32], n: usize, vocab: usize) -> Result<()> {
    let bytes: &[u8] = bytemuck::cast_slice(v);
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, vocab], bytes)?;
    let data = safetensors::serialize([("logits", view)], None)?;
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn bench(a: &BenchArgs) -> Result<()> {
    let mut m = a.model.clone();
    let longest = a.prompt_lens.iter().copied().max().unwrap_or(512);
    m.chunk = m.chunk.max(longest);
    let longest_ctx = a.contexts.iter().copied().max().unwrap_or(0);
    m.max_context = m
        .max_context
        .max(longest + 1)
        .max(longest_ctx + a.decode_steps + 3);
    let max_batch = a.batches.iter().copied().max().unwrap_or(1);
    let ckpt = open(&m)?;
    let engine = load(&m, ckpt, max_batch)?;
    // Results go to stdout as they are measured; progress and notes stay on stderr.
    let report = gpt_oss_wgpu::bench::run(
        &engine.model,
        &a.prompt_lens,
        &a.batches,
        &a.contexts,
        a.decode_steps,
        &mut |l| println!("{l}"),
    )?;
    println!("adapter: {}", report.adapter);
    println!(
        "GPU memory: {:.2} GiB weights + {:.2} GiB KV cache + {:.2} GiB activations",
        report.weight_gib, report.kv_cache_gib, report.activations_gib
    );
    for (name, k) in [
        ("decode step", &report.decode_kernels_us),
        ("batched decode step", &report.batch_decode_kernels_us),
        ("prefill pass", &report.prefill_kernels_us),
    ] {
        if k.is_empty() {
            continue;
        }
        let total: f64 = k.iter().map(|x| x.1).sum();
        println!("GPU time per {name}: {total:.0} us");
        for (fam, us) in k {
            let mut line = format!(
                "  {fam:<24} {us:>10.1} us  {:>5.1}%",
                100.0 * us / total.max(1e-9)
            );
            // Achieved bandwidth where the bytes a decode kernel must read are known.
            let bytes = report.decode_kernel_bytes.iter().find(|(f, _)| f == fam);
            if let (Some((_, b)), "decode step") = (bytes, name) {
                let gbs = *b as f64 / (us * 1e3);
                line += &format!("  {:>8.1} MB  {gbs:>7.0} GB/s", *b as f64 / 1e6);
                if let Some(peak) = a.peak_gbs {
                    line += &format!("  {:>4.0}% of peak", 100.0 * gbs / peak);
                }
            }
            println!("{line}");
        }
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| p.display().to_string())?;
    }
    Ok(())
}

/// Mesa's Vulkan drivers probe Wayland, and libwayland prints "error: XDG_RUNTIME_DIR is invalid
/// or not set" when that variable is missing (containers, CI, ssh sessions), which reads like an
/// error of ours. Without XDG_RUNTIME_DIR no Wayland display is reachable anyway, so point the
/// probe at an absolute socket path that does not exist: it then fails quietly.
fn serve(a: &ServeArgs) -> Result<()> {
    if a.max_num_seqs == 0 {
        bail!("--max-num-seqs must be at least 1");
    }
    let ckpt = open(&a.model)?;
    let cfg = ServeConfig {
        host: a.host.clone(),
        port: a.port,
        model_name: a
            .served_model_name
            .clone()
            .unwrap_or_else(|| a.model.model.display().to_string()),
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        max_queue: a.max_queue,
        max_body: 32 << 20,
    };
    let name = cfg.model_name.clone();
    let (m, seqs) = (a.model.clone(), a.max_num_seqs);
    eprintln!(
        "opening {}:{} (503 on /health until the model is loaded)",
        a.host, a.port
    );
    gpt_oss_wgpu::serve::run(
        cfg,
        move || load(&m, ckpt, seqs).map_err(|e| gpt_oss_wgpu::Error::Load(format!("{e:#}"))),
        move |addr| {
            println!("serving {name} at http://{addr}/v1 (Ctrl-C to stop)");
            let _ = std::io::stdout().flush();
        },
    )?;
    eprintln!("stopped");
    Ok(())
}

fn quiet_wayland_probe() {
    let relative = std::env::var("WAYLAND_DISPLAY").map_or(true, |d| !d.starts_with('/'));
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() && relative {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("WAYLAND_DISPLAY", "/nonexistent/wayland-0") };
    }
}

fn main() -> ExitCode {
    quiet_wayland_probe();
    let cli = Cli::parse();
    let r = match &cli.command {
        Command::Devices(d) => devices(d),
        Command::Synth(a) => synth_cmd(a),
        Command::Generate(a) => generate(a),
        Command::Logits(a) => logits(a),
        Command::Bench(a) => bench(a),
        Command::Chat(a) => chat(a),
        Command::Render(a) => render(a),
        Command::Parse(a) => parse(a),
        Command::Serve(a) => serve(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
