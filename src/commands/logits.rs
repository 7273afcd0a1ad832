//! `logits`: every position's logits to a safetensors file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use gpt_oss_wgpu::model::{Batch, TokenInfo};

use super::*;

#[derive(Args)]
pub(crate) struct LogitsArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// The token ids whose logits to write, comma-separated (e.g. 200006,17360,200008), in
    /// passes of at most --chunk tokens.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) token_ids: Vec<u32>,
    /// Output safetensors file (tensor `logits`, f32, [n, vocab]).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

pub(crate) fn logits(a: &LogitsArgs) -> Result<()> {
    let mut m = a.model.clone();
    m.precision.get_or_insert(Precision::Exact);
    // Every token of a pass keeps its logits row (0.8 MB for gpt-oss): smaller passes.
    m.chunk.get_or_insert(512);
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
    let engine = load(&m, ckpt, 1, Some(m.tokens_per_pass()))?;
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
        all.extend(pollster::block_on(model.logits(&Batch {
            tokens: &toks,
            outputs: &outputs,
            sampling: &sampling,
            bias: &[],
        }))?);
    }
    write_logits(&a.out, &all, n, vocab)?;
    eprintln!("wrote logits [{n}, {vocab}] to {}", a.out.display());
    Ok(())
}

/// Writes the logits as safetensors with the usual file permissions (the umask's).
pub(crate) fn write_logits(path: &Path, v: &[f32], n: usize, vocab: usize) -> Result<()> {
    let bytes: &[u8] = bytemuck::cast_slice(v);
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, vocab], bytes)?;
    let data = safetensors::serialize([("logits", view)], None)?;
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
