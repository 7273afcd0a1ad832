//! `generate`: one prompt, answered to stdout.

use std::io::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use gpt_oss_wgpu::chat::openai::today;
use gpt_oss_wgpu::chat::{AssistantMessage, ChatSession, StopText};
use gpt_oss_wgpu::engine::check_request;
use gpt_oss_wgpu::{Event, Request, Sampling, StreamDecoder};

use super::chat::TurnPrinter;
use super::*;

#[derive(Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Prompt text: a user message in the Harmony chat format (with --raw: text to continue).
    #[arg(long, conflicts_with = "token_ids")]
    pub(crate) prompt: Option<String>,
    /// Prompt as comma-separated token ids, continued as they are (no chat format).
    #[arg(long, value_delimiter = ',')]
    pub(crate) token_ids: Option<Vec<u32>>,
    /// Most tokens to generate (default: 2048 in chat mode, reasoning included; 128 with --raw).
    #[arg(long, value_parser = positive())]
    pub(crate) max_tokens: Option<u32>,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    /// Always take the most likely token.
    #[arg(long)]
    pub(crate) greedy: bool,
    /// Print JSON with the generated ids, text and timings instead of streaming text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Continue raw text instead of chatting (the prompt is not wrapped in the chat format).
    #[arg(long)]
    pub(crate) raw: bool,
    /// In chat mode, also print the model's reasoning.
    #[arg(long)]
    pub(crate) show_reasoning: bool,
    /// In chat mode: reasoning effort (low, medium, high).
    #[arg(long, default_value = "medium")]
    pub(crate) reasoning_effort: String,
    /// Stop when the output (the answer, in chat mode) contains this text; may be repeated.
    /// The stop text itself is not printed.
    #[arg(long)]
    pub(crate) stop: Vec<String>,
}

impl GenerateArgs {
    /// The sampling settings and the seed they use (random unless given).
    fn sampling(&self) -> (Sampling, u64) {
        let seed = self.sampling.seed.unwrap_or_else(random_seed);
        let mut s = self.sampling.with_seed(seed);
        if self.greedy {
            s.temperature = 0.0;
        }
        (s, seed)
    }
}

pub(crate) fn generate(a: &GenerateArgs) -> Result<()> {
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
        ..Default::default()
    };
    let (max_tokens, max_context) = (req.max_tokens, context(&a.model, &ckpt));
    check_request(&ckpt.config, max_context, &req)?;
    let mut stop = StopText::new(a.stop.clone())?;
    let mut engine = load(&a.model, ckpt, 1, None)?;
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
                Event::PromptLogprobs { .. } => {}
                Event::Finished { reason: r, .. } => reason = Some(r),
            }
        }
        if stop.stopped() && reason.is_none() {
            engine.cancel(id);
            reason = Some(FinishReason::Stop);
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
            "{} prompt token{}, {} generated; first token after {:.0} ms, {:.1} tok/s{}",
            prompt.len(),
            if prompt.len() == 1 { "" } else { "s" },
            out.len(),
            ttft * 1e3,
            decode_tok_s,
            end_note(reason, out.len() as u32, max_tokens, max_context)
                .map_or(String::new(), |n| format!("; {n}"))
        );
    }
    Ok(())
}

/// `generate` in chat mode: the prompt is a user message and the final answer is printed.
pub(crate) fn generate_chat(a: &GenerateArgs, text: &str) -> Result<()> {
    let ckpt = open(&a.model)?;
    let mut session = ChatSession::new(today());
    session.effort = effort(&a.reasoning_effort)?;
    session.set_stop(a.stop.clone())?;
    let (sampling, seed) = a.sampling();
    let max_tokens = a.max_tokens.unwrap_or(2048);
    let req = session.request(tokenizer_of(&a.model, &ckpt)?, text, sampling, max_tokens)?;
    let max_context = context(&a.model, &ckpt);
    check_request(&ckpt.config, max_context, &req)?;
    let mut engine = load(&a.model, ckpt, 1, None)?;
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
            "{} tokens in {:.1}s, {:.1} tok/s{}",
            r.generated,
            r.seconds,
            r.generated as f64 / r.seconds.max(1e-9),
            end_note(Some(r.reason), r.generated, max_tokens, max_context)
                .map_or(String::new(), |n| format!("; {n}"))
        );
    }
    Ok(())
}
