//! `synth`: a random-weight checkpoint in the released layout.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use gpt_oss_wgpu::synth::{self, SynthSpec};

use super::*;

#[derive(Args)]
pub(crate) struct SynthArgs {
    /// Shape to start from: tiny, 20b or 120b.
    #[arg(long, default_value = "tiny")]
    pub(crate) preset: String,
    /// Output directory.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Seed of the random weights (the same seed and shape give the same checkpoint).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Decoder layers (sliding-window and full attention in turn, as released).
    #[arg(long)]
    pub(crate) layers: Option<u32>,
    /// Hidden size (a multiple of 32: the MXFP4 blocks run along it).
    #[arg(long)]
    pub(crate) hidden: Option<u32>,
    /// Each expert's intermediate size (a multiple of 32).
    #[arg(long)]
    pub(crate) intermediate: Option<u32>,
    /// Query heads.
    #[arg(long)]
    pub(crate) heads: Option<u32>,
    /// Key/value heads (dividing --heads).
    #[arg(long)]
    pub(crate) kv_heads: Option<u32>,
    /// Dims of each head.
    #[arg(long)]
    pub(crate) head_dim: Option<u32>,
    /// Experts of each MoE layer.
    #[arg(long)]
    pub(crate) experts: Option<u32>,
    /// Experts each token is routed to.
    #[arg(long)]
    pub(crate) top_k: Option<u32>,
    /// Vocabulary size: gpt-oss's 201088, or fewer for small test models (the tokenizer then
    /// leaves out the ids above it, special tokens included).
    #[arg(long)]
    pub(crate) vocab: Option<u32>,
    /// Keys a sliding-window layer attends to.
    #[arg(long)]
    pub(crate) sliding_window: Option<u32>,
    /// Start a new shard after this many MiB (default: 5 GiB shards).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) shard_mib: Option<u64>,
    /// Write into --out even if it already holds files (they may be overwritten).
    #[arg(long)]
    pub(crate) force: bool,
    /// Instead of random weights, a one-layer model whose greedy continuation of a prompt ending
    /// in the script's first token is the rest of it (Harmony special tokens allowed), e.g.
    /// `assistant<|channel|>final<|message|>Hi<|return|>`: for end-to-end tests of chat output.
    /// The shape options do not apply.
    #[arg(long)]
    pub(crate) script: Option<String>,
    /// With --script: a one-token word after whose appearance a token may have a second
    /// successor (Harmony repeats `<|channel|>` in every message).
    #[arg(long, requires = "script")]
    pub(crate) marker: Option<String>,
}

/// Refuses to write into a folder that holds files, unless --force.
fn refuse_occupied(a: &SynthArgs) -> Result<()> {
    let occupied = std::fs::read_dir(&a.out).is_ok_and(|mut d| d.next().is_some());
    if occupied && !a.force {
        bail!(
            "{} already exists and is not empty; choose another --out or add --force to write \
             over it",
            a.out.display()
        );
    }
    Ok(())
}

pub(crate) fn synth_cmd(a: &SynthArgs) -> Result<()> {
    if let Some(script) = &a.script {
        refuse_occupied(a)?;
        synth::write_scripted(&a.out, script, a.marker.as_deref())?;
        eprintln!("wrote {} (scripted one-layer model)", a.out.display());
        return Ok(());
    }
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
        s.shard_bytes = m.saturating_mul(1 << 20);
    }
    refuse_occupied(a)?;
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
