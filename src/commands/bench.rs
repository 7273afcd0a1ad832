//! `bench`: prefill and decode speed, memory and per-kernel GPU time.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::*;

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Prompt lengths to prefill (each timed as the median of three passes after one untimed).
    #[arg(long, value_delimiter = ',', default_value = "512,2048", value_parser = positive())]
    pub(crate) prompt_lens: Vec<u32>,
    /// Decode batch sizes (sequences decoding together).
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = positive())]
    pub(crate) batches: Vec<u32>,
    /// Decode steps to time per batch size.
    #[arg(long, default_value_t = 64, value_parser = positive())]
    pub(crate) decode_steps: u32,
    /// Also time batch-1 decode with this many positions already cached (e.g. 2048,8192,32768;
    /// the cache is not prefilled for these: only the amount of keys read matters for speed).
    #[arg(long, value_delimiter = ',')]
    pub(crate) contexts: Vec<u32>,
    /// The card's memory bandwidth in GB/s, to print each kernel's share of it.
    #[arg(long)]
    pub(crate) peak_gbs: Option<f64>,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

pub(crate) fn bench(a: &BenchArgs) -> Result<()> {
    let mut m = a.model.clone();
    let longest = a.prompt_lens.iter().copied().max().unwrap_or(512);
    // One pass per prompt unless --chunk asks for chunked prefill (its memory, its speed).
    m.chunk.get_or_insert(longest);
    let longest_ctx = a.contexts.iter().copied().max().unwrap_or(0);
    m.max_context = m
        .max_context
        .max(longest + 1)
        .max(longest_ctx + a.decode_steps + 3);
    let max_batch = a.batches.iter().copied().max().unwrap_or(1);
    let ckpt = open(&m)?;
    let engine = load(&m, ckpt, max_batch, None)?;
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
        ("wide decode step", &report.wide_decode_kernels_us),
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
            // Achieved TFLOP/s of the prefill pass's matrix kernels.
            let flops = report
                .prefill_kernel_flops
                .iter()
                .find(|(f, _)| fam.starts_with(f.as_str()));
            if let (Some((_, f)), "prefill pass") = (flops, name) {
                line += &format!("  {:>10.3} GFLOP  {:>6.2} TFLOP/s", f / 1e9, f / (us * 1e6));
            }
            println!("{line}");
        }
    }
    // At long contexts only attention's share grows: its kernels and the step's total.
    for (c, k) in &report.context_kernels_us {
        let total: f64 = k.iter().map(|x| x.1).sum();
        let attn: Vec<String> = k
            .iter()
            .filter(|(f, _)| f.starts_with("attention"))
            .map(|(f, us)| format!("{f} {us:.1} us"))
            .collect();
        println!(
            "GPU time per decode step at context {c}: {total:.0} us ({})",
            attn.join(", ")
        );
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| p.display().to_string())?;
    }
    Ok(())
}
