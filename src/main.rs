//! `gpt-oss-wgpu`: run gpt-oss checkpoints on the local GPU. A thin shell over the library; each
//! command lives in its own module under `commands/`.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::DeviceArgs;
use commands::bench::{BenchArgs, bench};
use commands::bench_serve::{BenchServeArgs, bench_serve};
use commands::chat::{ChatArgs, chat};
use commands::devices::devices;
use commands::generate::{GenerateArgs, generate};
use commands::harmony::{ParseArgs, RenderArgs, parse, render};
use commands::kernel_stats::{KernelStatsArgs, kernel_stats};
use commands::logits::{LogitsArgs, logits};
use commands::serve::{ServeArgs, serve};
use commands::synth::{SynthArgs, synth_cmd};

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
    /// /v1/responses, /v1/models, /tokenize, /detokenize, /health, /metrics (many clients share
    /// the GPU: requests join the running batch between forward passes).
    Serve(ServeArgs),
    /// Load-test an OpenAI-compatible server (this one or any): concurrent streaming requests
    /// of random prompts; requests/s, tokens/s, time to first token, inter-token latency.
    BenchServe(BenchServeArgs),
    /// Compile every kernel variant for a Vulkan device and print what its driver reports about
    /// each (registers a thread, code size, spills): the occupancy facts behind kernel timings.
    KernelStats(KernelStatsArgs),
}

/// Mesa's Vulkan drivers probe Wayland, and libwayland prints "error: XDG_RUNTIME_DIR is invalid
/// or not set" when that variable is missing (containers, CI, ssh sessions), which reads like an
/// error of ours. Without XDG_RUNTIME_DIR no Wayland display is reachable anyway, so point the
/// probe at an absolute socket path that does not exist: it then fails quietly.
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
        Command::BenchServe(a) => bench_serve(a),
        Command::KernelStats(a) => kernel_stats(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
