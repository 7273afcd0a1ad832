//! `chat`: an interactive conversation in the terminal.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use gpt_oss_wgpu::chat::openai::today;
use gpt_oss_wgpu::chat::{ChatRequest, ChatSession, ReasoningEffort, TurnEvent};

use super::*;

#[derive(Args)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    pub(crate) chat: ChatOptions,
    /// Do not show the model's reasoning.
    #[arg(long)]
    pub(crate) hide_reasoning: bool,
    /// Continue a conversation saved with /save (a chat-completions request file).
    #[arg(long)]
    pub(crate) load: Option<PathBuf>,
}

/// Options shared by `chat` and chat-mode `generate`.
#[derive(Args, Clone)]
pub(crate) struct ChatOptions {
    /// Reasoning effort: low, medium or high.
    #[arg(long, default_value = "medium")]
    pub(crate) reasoning_effort: String,
    /// Developer instructions (a system prompt).
    #[arg(long)]
    pub(crate) system: Option<String>,
    /// Most tokens per answer, reasoning included.
    #[arg(long, default_value_t = 2048, value_parser = positive())]
    pub(crate) max_tokens: u32,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    /// End an answer when it contains this text; may be repeated. The stop text is not shown.
    #[arg(long)]
    pub(crate) stop: Vec<String>,
}

/// Escape codes that dim text, or nothing when stdout is not a terminal.
pub(crate) fn dim_codes() -> (&'static str, &'static str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        ("\x1b[2m", "\x1b[0m")
    } else {
        ("", "")
    }
}

/// Prints a turn as it streams: reasoning dimmed (or hidden), the answer, and output that is not
/// in the chat format (a random-weight model's) as dimmed plain text after a note saying so.
pub(crate) struct TurnPrinter {
    pub(crate) show_reasoning: bool,
    pub(crate) show_answer: bool,
    pub(crate) dim: (&'static str, &'static str),
    pub(crate) in_reasoning: bool,
    pub(crate) raw_noted: bool,
}

impl TurnPrinter {
    pub(crate) fn new(show_reasoning: bool, show_answer: bool) -> TurnPrinter {
        TurnPrinter {
            show_reasoning,
            show_answer,
            dim: dim_codes(),
            in_reasoning: false,
            raw_noted: false,
        }
    }

    pub(crate) fn print(&mut self, out: &mut impl Write, ev: TurnEvent) {
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

pub(crate) const CHAT_HELP: &str = "commands:
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
pub(crate) fn read_message(input: &mut impl std::io::BufRead) -> Result<Option<String>> {
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
pub(crate) fn load_conversation(session: &mut ChatSession, path: &str) -> Result<usize> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let req = ChatRequest::from_json(&text).with_context(|| path.to_string())?;
    session
        .load_openai(&req)
        .with_context(|| path.to_string())?;
    Ok(session.history.len())
}

/// What Ctrl-C does depends on where the chat is: loading or at the prompt it leaves, while an
/// answer is written it stops the answer.
pub(crate) const PHASE_WAITING: u8 = 0;

pub(crate) const PHASE_ANSWERING: u8 = 1;

pub(crate) fn chat(a: &ChatArgs) -> Result<()> {
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
    let max_context = context(&a.model, &ckpt);
    if let Some(path) = &a.load {
        let n = load_conversation(&mut session, &path.display().to_string())?;
        eprintln!("continuing {} ({n} messages)", path.display());
    }
    let mut engine = load(&a.model, ckpt, 1, None)?;
    let interactive = std::io::stdin().is_terminal();
    let mut seed = a.chat.sampling.seed.unwrap_or_else(random_seed);
    if interactive {
        eprintln!(
            "chat with {} — /help for commands, Ctrl-D to leave",
            a.model.model
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
        let sampling = a.chat.sampling.with_seed(seed);
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
        let note = end_note(Some(r.reason), r.generated, a.chat.max_tokens, max_context);
        let note = note.map_or(String::new(), |n| format!(" ({n})"));
        eprintln!(
            "[{} tokens, {:.1} tok/s{note}]",
            r.generated,
            r.generated as f64 / r.seconds.max(1e-9)
        );
    }
    Ok(())
}
