//! `render` and `parse`: the Harmony chat format without a model.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use gpt_oss_wgpu::chat::harmony::Harmony;
use gpt_oss_wgpu::chat::openai::today;
use gpt_oss_wgpu::chat::{AssistantMessage, ChatRequest, Role, StreamParser};

use super::*;

#[derive(Args)]
pub(crate) struct RenderArgs {
    /// A chat-completions request (JSON with `messages`, optional `tools`, `reasoning_effort`).
    #[arg(long)]
    pub(crate) request: PathBuf,
    /// Current date for the system message (default: today).
    #[arg(long)]
    pub(crate) date: Option<String>,
    #[command(flatten)]
    pub(crate) tokenizer: TokenizerArgs,
}

#[derive(Args)]
pub(crate) struct ParseArgs {
    /// Output token ids, as sampled after the prompt's `<|start|>assistant`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) token_ids: Vec<u32>,
    #[command(flatten)]
    pub(crate) tokenizer: TokenizerArgs,
}

pub(crate) fn render(a: &RenderArgs) -> Result<()> {
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

pub(crate) fn parse(a: &ParseArgs) -> Result<()> {
    let tok = builtin_tokenizer(&a.tokenizer)?;
    tok.check_known(&a.token_ids)?;
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
