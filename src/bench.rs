//! `gpt-oss-wgpu bench`: prefill and decode throughput, time to first token, GPU memory and
//! per-kernel GPU time, measured on the model's own forward pass.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::kernels::sample::SampleParams;
use crate::model::{Batch, Model, ModelConfig, TokenInfo};
use crate::rng::Rng;

#[derive(Debug, Serialize)]
pub struct PrefillResult {
    pub tokens: u32,
    /// Time to first token: the whole prompt in, the first sampled id back.
    pub ttft_ms: f64,
    pub tok_s: f64,
}

#[derive(Debug, Serialize)]
pub struct DecodeResult {
    pub batch: u32,
    /// Positions already in each sequence's cache when the timed steps start.
    pub context: u32,
    pub steps: u32,
    pub ms_per_step: f64,
    /// Tokens per second over all sequences.
    pub tok_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub adapter: String,
    pub prefill: Vec<PrefillResult>,
    pub decode: Vec<DecodeResult>,
    pub weight_gib: f64,
    pub kv_cache_gib: f64,
    pub activations_gib: f64,
    /// GPU microseconds per kernel family for one decode step, one batched decode step (the
    /// largest batch of --batches that takes the decode kernels), one wide decode step (the
    /// largest batch beyond them, which takes the tiled kernels) and one prefill pass.
    pub decode_kernels_us: Vec<(String, f64)>,
    pub batch_decode_kernels_us: Vec<(String, f64)>,
    pub wide_decode_kernels_us: Vec<(String, f64)>,
    /// The same for one decode step of every batch size of --batches above 1.
    pub batch_kernels_us: Vec<(u32, Vec<(String, f64)>)>,
    /// The same for one batch-1 decode step at each context of --contexts.
    pub context_kernels_us: Vec<(u32, Vec<(String, f64)>)>,
    pub prefill_kernels_us: Vec<(String, f64)>,
    /// Every dispatch of one batch-1 decode step, in order (label, microseconds).
    pub decode_dispatches_us: Vec<(String, f64)>,
    /// The same for one step of the largest batch on the decode kernels (empty when --batches
    /// has none).
    pub batch_dispatches_us: Vec<(String, f64)>,
    /// The same for one step of the largest batch beyond them (the tiled kernels; empty when
    /// --batches has none).
    pub wide_dispatches_us: Vec<(String, f64)>,
    /// Bytes the main decode kernel families must read in that step (weights, and the KV cache
    /// for attention), for achieved bandwidth.
    pub decode_kernel_bytes: Vec<(String, u64)>,
    /// Multiply-add work (2 FLOP each) of the prefill pass's matrix kernels, by family prefix
    /// ("linear." for the dense layers), for achieved TFLOP/s.
    pub prefill_kernel_flops: Vec<(String, f64)>,
}

/// What one batch-1 decode step at context `ctx` must read, per kernel family.
fn decode_bytes(model: &Model, ctx: u32) -> Vec<(String, u64)> {
    let c = &model.cfg;
    let (h, layers, k) = (c.hidden as u64, c.layers as u64, c.top_k as u64);
    let (i, e, v) = (c.inter as u64, c.experts as u64, c.vocab as u64);
    let (nh, nkv, d) = (c.heads as u64, c.kv_heads as u64, c.head_dim as u64);
    let dense = layers * (((nh + 2 * nkv) * d * h + h * nh * d + e * h) * 2) + v * h * 2;
    // MXFP4: half a byte per weight plus a scale byte per 32.
    let mx = |rows: u64, cols: u64| rows * (cols / 2 + cols / 32);
    let kv_elem = if model.kv_f16 { 2 } else { 4 };
    let keys: u64 = c
        .sliding
        .iter()
        .map(|&sl| (ctx + 1).min(if sl { c.sliding_window } else { u32::MAX }) as u64)
        .sum();
    let cache = keys * nkv * d * 2 * kv_elem;
    // The cache is read by whichever entry the step's spans take: `keys` with subgroups, `split`
    // without (one of them a step at the bench's short context).
    vec![
        ("linear_vec.main".into(), dense),
        ("moe_vec.gate_up".into(), layers * k * mx(2 * i, h)),
        ("moe_vec.down".into(), layers * k * mx(h, i)),
        ("attention_split.keys".into(), cache),
        ("attention_split.split".into(), cache),
    ]
}

/// FLOPs of a prefill pass of `n` tokens at positions 0.. of one sequence, per family of the
/// tiled kernels that such passes take (more than VEC_MAX_TOKENS tokens): the dense layers (q/k/v
/// and o), the experts' two projections (K slots a token) and attention (QK^T and PV over the
/// keys each query sees).
pub fn prefill_flops(c: &ModelConfig, n: u32) -> Vec<(String, f64)> {
    let (h, layers, k, i) = (
        c.hidden as f64,
        c.layers as f64,
        c.top_k as f64,
        c.inter as f64,
    );
    let (nh, nkv, d) = (c.heads as f64, c.kv_heads as f64, c.head_dim as f64);
    let t = n as f64;
    let dense = 2.0 * t * layers * ((nh + 2.0 * nkv) * d * h + nh * d * h);
    let keys: f64 = c
        .sliding
        .iter()
        .map(|&sl| {
            let window = if sl { c.sliding_window } else { u32::MAX };
            (0..n).map(|p| (p + 1).min(window) as f64).sum::<f64>()
        })
        .sum();
    vec![
        ("linear.".into(), dense),
        ("moe.gate_up".into(), 2.0 * t * k * layers * 2.0 * i * h),
        ("moe.down".into(), 2.0 * t * k * layers * h * i),
        ("attention.".into(), 4.0 * nh * d * keys),
    ]
}

fn greedy(n: usize) -> Vec<SampleParams> {
    vec![
        SampleParams {
            temperature: 0.0,
            top_p: 1.0,
            ..Default::default()
        };
        n
    ]
}

/// Prefills `len` random tokens into slot `seq` in passes of at most max_tokens; returns the
/// seconds until the first sampled id is back.
fn prefill(model: &Model, rng: &mut Rng, seq: u32, len: u32) -> Result<(f64, u32)> {
    model.release(seq);
    let vocab = model.cfg.vocab.min(199_998) as u64;
    let toks: Vec<TokenInfo> = (0..len)
        .map(|p| TokenInfo::new(rng.below(vocab) as u32, p, seq))
        .collect();
    let t0 = Instant::now();
    let mut last = 0;
    for chunk in toks.chunks(model.opts.max_tokens as usize) {
        let out = [chunk.len() as u32 - 1];
        last = pollster::block_on(model.sample(&Batch {
            tokens: chunk,
            outputs: &out,
            sampling: &greedy(1),
            bias: &[],
        }))?[0];
    }
    Ok((t0.elapsed().as_secs_f64(), last))
}

/// Decodes `steps` tokens for `batch` sequences whose prompts of `ctx` tokens are cached, as the
/// engine does while its KV blocks come from free ones: each step queued before the previous
/// one's ids come back, its tokens fed from them on the GPU.
fn decode(model: &Model, first: &[u32], ctx: u32, steps: u32) -> Result<f64> {
    let batch = first.len() as u32;
    let sampling = greedy(batch as usize);
    let outputs: Vec<u32> = (0..batch).collect();
    let step = |s: u32| {
        let tokens: Vec<TokenInfo> = (0..batch)
            .map(|b| match s {
                0 => TokenInfo::new(first[b as usize], ctx, b),
                _ => TokenInfo::fed(b, ctx + s, b),
            })
            .collect();
        model.submit(
            &Batch {
                tokens: &tokens,
                outputs: &outputs,
                sampling: &sampling,
                bias: &[],
            },
            &[],
        )
    };
    let t0 = Instant::now();
    let mut queued = step(0)?;
    for s in 1..steps {
        let next = step(s)?;
        pollster::block_on(model.collect(queued))?;
        queued = next;
    }
    pollster::block_on(model.collect(queued))?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Microseconds per kernel family (the label's first two parts), in order of first appearance.
fn per_family(v: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for (label, ns) in v {
        let family = label.split('.').take(2).collect::<Vec<_>>().join(".");
        match out.iter_mut().find(|(f, _)| *f == family) {
            Some((_, t)) => *t += ns / 1e3,
            None => out.push((family, ns / 1e3)),
        }
    }
    out
}

/// A profile's dispatches in microseconds.
fn us(v: Vec<(String, f64)>) -> Vec<(String, f64)> {
    v.into_iter().map(|(l, ns)| (l, ns / 1e3)).collect()
}

/// Runs the benchmark; `log` receives a line per measurement as it completes.
pub fn run(
    model: &Model,
    prompt_lens: &[u32],
    batches: &[u32],
    contexts: &[u32],
    decode_steps: u32,
    log: &mut dyn FnMut(String),
) -> Result<Report> {
    let mut rng = Rng::new(1);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    // Warm-up: compile pipelines and touch every buffer once, on both kernel paths (the
    // vector kernels' passes and the tiled ones above them).
    let tiled = (crate::kernels::VEC_MAX_TOKENS + 16).min(model.opts.max_tokens);
    prefill(model, &mut rng, 0, tiled.min(model.opts.max_context - 1))?;
    prefill(model, &mut rng, 0, 16.min(model.opts.max_context - 1))?;
    let mut report = Report {
        adapter: format!("{} ({:?})", model.gpu.info.name, model.gpu.info.backend),
        prefill: Vec::new(),
        decode: Vec::new(),
        weight_gib: gib(model.weight_bytes()),
        kv_cache_gib: gib(model.cache_bytes()),
        activations_gib: gib(model.activation_bytes()),
        decode_kernels_us: Vec::new(),
        batch_decode_kernels_us: Vec::new(),
        wide_decode_kernels_us: Vec::new(),
        batch_kernels_us: Vec::new(),
        context_kernels_us: Vec::new(),
        prefill_kernels_us: Vec::new(),
        decode_dispatches_us: Vec::new(),
        batch_dispatches_us: Vec::new(),
        wide_dispatches_us: Vec::new(),
        decode_kernel_bytes: Vec::new(),
        prefill_kernel_flops: Vec::new(),
    };
    for &len in prompt_lens {
        report
            .prefill
            .push(time_prefill(model, &mut rng, len, log)?);
    }
    let ctx = 128.min(model.opts.max_context / 2);
    for &b in batches {
        let b = b.min(model.opts.max_seqs).min(model.max_outputs);
        report
            .decode
            .push(time_batch(model, &mut rng, b, ctx, decode_steps, log)?);
    }
    // Decode at long contexts: what each step reads grows with the keys before it, not with their
    // values, so the cache is left as it is instead of prefilling thousands of tokens first.
    for &c in contexts {
        if c + decode_steps + 1 > model.opts.max_context {
            log(format!(
                "decode at context {c}: skipped (beyond --max-context)"
            ));
            continue;
        }
        report
            .decode
            .push(time_context(model, c, decode_steps, log)?);
        let profile = profile(model, &[TokenInfo::new(1, c, 0)], &[0])?;
        report.context_kernels_us.push((c, per_family(&profile)));
    }
    let decode = profile(model, &[TokenInfo::new(1, ctx, 0)], &[0])?;
    report.decode_kernels_us = per_family(&decode);
    report.decode_kernel_bytes = decode_bytes(model, ctx);
    report.decode_dispatches_us = us(decode);
    profile_batches(model, batches, ctx, &mut report)?;
    let n = prompt_lens
        .iter()
        .copied()
        .max()
        .unwrap_or(128)
        .min(model.opts.max_tokens);
    let toks: Vec<TokenInfo> = (0..n).map(|p| TokenInfo::new(1, p, 0)).collect();
    report.prefill_kernel_flops = prefill_flops(&model.cfg, n);
    report.prefill_kernels_us = per_family(&profile(model, &toks, &[n - 1])?);
    Ok(report)
}

/// A prompt of `len` tokens: a first pass untimed (on the H200 the first 2048-token pass after
/// the warm-up took 279 ms against its 210 ms of GPU time), then the median of three.
fn time_prefill(
    model: &Model,
    rng: &mut Rng,
    len: u32,
    log: &mut dyn FnMut(String),
) -> Result<PrefillResult> {
    prefill(model, rng, 0, len)?;
    let mut times = [0.0; 3];
    for t in &mut times {
        *t = prefill(model, rng, 0, len)?.0;
    }
    times.sort_by(f64::total_cmp);
    let t = times[1];
    let r = PrefillResult {
        tokens: len,
        ttft_ms: t * 1e3,
        tok_s: len as f64 / t,
    };
    log(format!(
        "prefill {len:>5} tokens: {:>9.1} tok/s, time to first token {:.1} ms",
        r.tok_s, r.ttft_ms
    ));
    Ok(r)
}

/// `b` sequences prefilled to `ctx` tokens, then decoded together `steps` steps (after two
/// untimed ones).
fn time_batch(
    model: &Model,
    rng: &mut Rng,
    b: u32,
    ctx: u32,
    steps: u32,
    log: &mut dyn FnMut(String),
) -> Result<DecodeResult> {
    let mut first = Vec::new();
    for s in 0..b {
        first.push(prefill(model, rng, s, ctx)?.1);
    }
    let steps = steps.min(model.opts.max_context - ctx - 1);
    decode(model, &first, ctx, 2.min(steps))?;
    let t = decode(model, &first, ctx, steps)?;
    let r = DecodeResult {
        batch: b,
        context: ctx,
        steps,
        ms_per_step: t * 1e3 / steps as f64,
        tok_s: (b * steps) as f64 / t,
    };
    log(format!(
        "decode batch {b:>3}: {:>9.1} tok/s, {:.2} ms per step",
        r.tok_s, r.ms_per_step
    ));
    Ok(r)
}

/// One sequence decoded `steps` steps from position `c` (after two untimed ones).
fn time_context(
    model: &Model,
    c: u32,
    steps: u32,
    log: &mut dyn FnMut(String),
) -> Result<DecodeResult> {
    decode(model, &[1], c, 2)?;
    let t = decode(model, &[1], c, steps)?;
    let r = DecodeResult {
        batch: 1,
        context: c,
        steps,
        ms_per_step: t * 1e3 / steps as f64,
        tok_s: steps as f64 / t,
    };
    log(format!(
        "decode batch   1 at context {c:>6}: {:>9.1} tok/s, {:.2} ms per step",
        r.tok_s, r.ms_per_step
    ));
    Ok(r)
}

/// The GPU time of every dispatch of one pass over `tokens`, sampling at `outputs` (empty where
/// the adapter has no timestamps).
fn profile(model: &Model, tokens: &[TokenInfo], outputs: &[u32]) -> Result<Vec<(String, f64)>> {
    Ok(pollster::block_on(model.profile(&Batch {
        tokens,
        outputs,
        sampling: &greedy(outputs.len()),
        bias: &[],
    }))?
    .unwrap_or_default())
}

/// Per-kernel profiles of a decode step at each batch size the timed runs ran (a batch beyond
/// what one pass takes runs as the largest that fits); the largest that takes the decode
/// kernels and the largest beyond them are kept apart too.
fn profile_batches(model: &Model, batches: &[u32], ctx: u32, report: &mut Report) -> Result<()> {
    let mut sizes: Vec<u32> = batches
        .iter()
        .map(|&b| b.min(model.opts.max_seqs).min(model.max_outputs))
        .filter(|&b| b > 1)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let vec_max = crate::kernels::VEC_MAX_TOKENS;
    let narrow = sizes.iter().copied().rfind(|&b| b <= vec_max);
    let wide = sizes.last().copied().filter(|&b| b > vec_max);
    for b in sizes {
        let toks: Vec<TokenInfo> = (0..b).map(|s| TokenInfo::new(1, ctx, s)).collect();
        let outputs: Vec<u32> = (0..b).collect();
        let profile = profile(model, &toks, &outputs)?;
        let families = per_family(&profile);
        if Some(b) == narrow {
            report.batch_decode_kernels_us = families.clone();
            report.batch_dispatches_us = us(profile.clone());
        }
        if Some(b) == wide {
            report.wide_decode_kernels_us = families.clone();
            report.wide_dispatches_us = us(profile);
        }
        report.batch_kernels_us.push((b, families));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::SynthSpec;

    fn flops(preset: &str, n: u32) -> Vec<(String, f64)> {
        prefill_flops(&SynthSpec::preset(preset).unwrap().config().unwrap(), n)
    }

    #[test]
    fn prefill_flops_count_each_projection_and_the_keys_each_query_sees() {
        // tiny: 3 layers, hidden 128, inter 96, 4 heads and 2 KV heads of 32, top-3; 3 tokens
        // see 1 + 2 + 3 keys in every layer (the window is 128).
        let f = flops("tiny", 3);
        assert_eq!(
            f[0].1,
            2.0 * 3.0 * 3.0 * ((4.0 + 4.0) * 32.0 * 128.0 + 128.0 * 128.0)
        );
        assert_eq!(f[1].1, 2.0 * 3.0 * 3.0 * 3.0 * 192.0 * 128.0);
        assert_eq!(f[2].1, 2.0 * 3.0 * 3.0 * 3.0 * 128.0 * 96.0);
        assert_eq!(f[3].1, 4.0 * 4.0 * 32.0 * 18.0);
        // 20b, 200 tokens: a sliding layer's queries see 1..=128 keys then 128 each (8256 +
        // 72 * 128), a full layer's 1..=200 (20100); 12 layers of each.
        let f = flops("20b", 200);
        assert_eq!(
            f[3].1,
            4.0 * 64.0 * 64.0 * 12.0 * (8256.0 + 9216.0 + 20100.0)
        );
    }
}
