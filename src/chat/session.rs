//! A chat conversation over an [`Engine`]: the Harmony prompt for each turn, the streamed answer
//! split into reasoning and final text, and history kept by the Harmony rules (earlier turns keep
//! their final answers; their reasoning is not shown to the model again).

use serde_json::json;

use super::harmony::{
    Content, DeveloperContent, Harmony, Message, ReasoningEffort, Role, SystemContent,
};
use super::openai::ChatRequest;
use super::parser::{ParseEvent, ParsedMessage, StreamParser};
use super::stop::StopText;
use crate::engine::{Engine, Event, FinishReason, Request, Sampling};
use crate::error::{Error, Result};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// What a turn produces as it streams.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnEvent {
    /// Analysis-channel text.
    Reasoning(String),
    /// Final (or commentary) text meant for the user.
    Answer(String),
    /// Output that is not in the Harmony format (a random-weight or confused model), as plain
    /// text. The first such events of a turn carry everything generated so far.
    Raw(String),
}

/// Header tokens after which output that has not formed a Harmony header is shown as plain text
/// (a real header, recipient and constraint included, is about a dozen tokens).
const RAW_AFTER_TOKENS: usize = 32;

/// How a turn ended.
#[derive(Clone, Debug)]
pub struct TurnResult {
    pub messages: Vec<ParsedMessage>,
    pub generated: u32,
    pub seconds: f64,
    pub reason: FinishReason,
    /// Output that was not Harmony (a random or confused model), as text.
    pub unparsed: Option<String>,
}

/// One conversation's settings and history.
#[derive(Clone, Debug)]
pub struct ChatSession {
    pub effort: ReasoningEffort,
    /// Current date for the system message (YYYY-MM-DD).
    pub date: String,
    /// Developer instructions (`/system`).
    pub instructions: Option<String>,
    /// User and assistant messages so far.
    pub history: Vec<Message>,
    /// Answer text ends at the first stop string (reasoning is not cut); see `set_stop`.
    stop: StopText,
}

/// One turn's output as it streams: Harmony parsing, stop strings on the answer, and the plain
/// text fallback for output that is not Harmony. [`ChatSession::turn`] drives one; so does the
/// browser build, one step at a time.
pub struct TurnOutput {
    parser: StreamParser,
    stop: StopText,
    /// Ids not shown as plain text: all of them until the output proves not to be Harmony.
    pending: Vec<u32>,
    /// Once the output is known not to be Harmony (and from then on): its decoder and the text
    /// decoded so far.
    plain: Option<(StreamDecoder, String)>,
    /// The answer as shown (after stop strings): what the history keeps.
    shown: String,
}

impl TurnOutput {
    /// Output of an assistant turn (the prompt ends at `<|start|>assistant`).
    pub fn new(h: &Harmony, stop: StopText) -> TurnOutput {
        TurnOutput {
            parser: StreamParser::new(h.ids, Some(Role::Assistant)),
            stop,
            pending: Vec::new(),
            plain: None,
            shown: String::new(),
        }
    }

    /// Whether a stop string has ended the answer.
    pub fn stopped(&self) -> bool {
        self.stop.stopped()
    }

    /// The messages parsed so far.
    pub fn messages(&self) -> &[ParsedMessage] {
        &self.parser.messages
    }

    /// One generated id; what it shows goes to `on_event`.
    pub fn push(
        &mut self,
        tok: &Tokenizer,
        id: u32,
        on_event: &mut dyn FnMut(TurnEvent),
    ) -> Result<()> {
        let events = self.parser.push(tok, id);
        if self.plain.is_some() {
            return self.show_plain(tok, id, on_event);
        }
        self.pending.push(id);
        for e in events {
            let ParseEvent::Delta(d) = e else { continue };
            let analysis = self
                .parser
                .current()
                .is_some_and(|m| m.channel.as_deref() == Some("analysis"));
            if analysis {
                on_event(TurnEvent::Reasoning(d));
            } else {
                let shown = self.stop.push(&d);
                if !shown.is_empty() {
                    self.shown.push_str(&shown);
                    on_event(TurnEvent::Answer(shown));
                }
            }
        }
        let not_harmony = self.parser.messages.is_empty()
            && self.parser.current().is_none()
            && (self.pending.len() >= RAW_AFTER_TOKENS || self.parser.error.is_some());
        if not_harmony {
            self.start_plain(tok, on_event)?;
        }
        Ok(())
    }

    /// Switches to plain text, showing everything generated so far.
    fn start_plain(&mut self, tok: &Tokenizer, on_event: &mut dyn FnMut(TurnEvent)) -> Result<()> {
        self.plain = Some((StreamDecoder::default(), String::new()));
        for id in std::mem::take(&mut self.pending) {
            self.show_plain(tok, id, on_event)?;
        }
        Ok(())
    }

    /// Shows one more id as plain text (a character split across ids waits for its end).
    fn show_plain(
        &mut self,
        tok: &Tokenizer,
        id: u32,
        on_event: &mut dyn FnMut(TurnEvent),
    ) -> Result<()> {
        let Some((dec, text)) = self.plain.as_mut() else {
            return Ok(());
        };
        if let Some(piece) = dec.push(tok, id)? {
            text.push_str(&piece);
            let piece = self.stop.push(&piece);
            if !piece.is_empty() {
                self.shown.push_str(&piece);
                on_event(TurnEvent::Raw(piece));
            }
        }
        Ok(())
    }

    /// The end of the output: closes an open message and flushes held-back text.
    pub fn finish(&mut self, tok: &Tokenizer, on_event: &mut dyn FnMut(TurnEvent)) -> Result<()> {
        self.parser.finish();
        if self.plain.is_none() && self.parser.messages.is_empty() && !self.pending.is_empty() {
            self.start_plain(tok, on_event)?;
        }
        let rest = self.stop.finish();
        if !rest.is_empty() {
            self.shown.push_str(&rest);
            on_event(if self.plain.is_some() {
                TurnEvent::Raw(rest)
            } else {
                TurnEvent::Answer(rest)
            });
        }
        Ok(())
    }
}

impl ChatSession {
    pub fn new(date: String) -> ChatSession {
        ChatSession {
            effort: ReasoningEffort::Medium,
            date,
            instructions: None,
            history: Vec::new(),
            stop: StopText::default(),
        }
    }

    /// Stop strings for the answers from now on; an empty one is refused.
    pub fn set_stop(&mut self, stops: Vec<String>) -> Result<()> {
        self.stop = StopText::new(stops)?;
        Ok(())
    }

    /// Replaces instructions, history and effort with a saved conversation (a chat-completions
    /// request, as [`ChatSession::to_openai`] writes it). Only plain text turns are accepted.
    pub fn load_openai(&mut self, req: &ChatRequest) -> Result<()> {
        let mut instructions = None;
        let mut history = Vec::new();
        for (i, m) in req.messages.iter().enumerate() {
            let text = m.text(i)?;
            match m.role.as_str() {
                "system" | "developer" if i == 0 => instructions = Some(text),
                "user" => history.push(Message::text(Role::User, text)),
                "assistant" if m.tool_calls.as_ref().is_none_or(|c| c.is_empty()) => {
                    history.push(Message::text(Role::Assistant, text).channel("final"))
                }
                other => {
                    return Err(Error::Request(format!(
                        "message {i}: a `{other}` message cannot be loaded into a chat \
                         (only a leading system message, user and assistant text)"
                    )));
                }
            }
        }
        if let Some(e) = &req.reasoning_effort {
            self.effort = ReasoningEffort::parse(e).ok_or_else(|| {
                Error::Request(format!("reasoning_effort `{e}` is not low, medium or high"))
            })?;
        }
        self.instructions = instructions;
        self.history = history;
        Ok(())
    }

    /// System, developer and history messages.
    pub fn messages(&self) -> Vec<Message> {
        let system = SystemContent {
            reasoning_effort: Some(self.effort),
            conversation_start_date: Some(self.date.clone()),
            valid_channels: vec!["analysis".into(), "final".into()],
            ..Default::default()
        };
        let mut out = vec![Message::new(Role::System, Content::System(system))];
        if let Some(i) = &self.instructions {
            let dev = DeveloperContent {
                instructions: Some(i.clone()),
                ..Default::default()
            };
            out.push(Message::new(Role::Developer, Content::Developer(dev)));
        }
        out.extend(self.history.iter().cloned());
        out
    }

    /// The history as OpenAI chat messages (what `/save` writes).
    pub fn to_openai(&self) -> serde_json::Value {
        let mut msgs = Vec::new();
        if let Some(i) = &self.instructions {
            msgs.push(json!({"role": "system", "content": i}));
        }
        for m in &self.history {
            msgs.push(json!({"role": m.role.as_str(), "content": m.text_content()}));
        }
        json!({"messages": msgs, "reasoning_effort": self.effort.as_str()})
    }

    /// The request a turn with the user message `user` submits: the rendered conversation, ending
    /// at `<|start|>assistant`, stopping at Harmony's stop ids. Callers can check it against the
    /// model before loading any weights.
    pub fn request(
        &self,
        tok: &Tokenizer,
        user: &str,
        sampling: Sampling,
        max_tokens: u32,
    ) -> Result<Request> {
        let h = Harmony::new(tok)?;
        let mut msgs = self.messages();
        msgs.push(Message::text(Role::User, user));
        Ok(Request {
            prompt: h.render_for_completion(&msgs)?,
            max_tokens,
            sampling,
            stop: h.stop_ids().to_vec(),
            ..Default::default()
        })
    }

    /// Runs one user turn: renders the prompt, streams the answer through `on_event`, stops early
    /// when `cancelled()` turns true, and records the answer in the history.
    pub fn turn(
        &mut self,
        engine: &mut Engine,
        user: &str,
        sampling: Sampling,
        max_tokens: u32,
        on_event: &mut dyn FnMut(TurnEvent),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<TurnResult> {
        let tok = engine
            .tokenizer
            .clone()
            .ok_or_else(|| Error::Tokenizer("the model has no tokenizer.json".into()))?;
        let tok = &*tok;
        let h = Harmony::new(tok)?;
        let id = engine.submit(self.request(tok, user, sampling, max_tokens)?)?;
        let t0 = std::time::Instant::now();
        let mut out = TurnOutput::new(&h, self.stop.clone());
        let mut reason = FinishReason::Length;
        let mut generated = 0;
        'outer: while engine.has_work() {
            if cancelled() || out.stopped() {
                let stopped = out.stopped();
                if let Some(Event::Finished {
                    reason: r,
                    generated: g,
                    ..
                }) = engine.cancel(id)
                {
                    reason = if stopped { FinishReason::Stop } else { r };
                    generated = g;
                }
                break;
            }
            let events = match pollster::block_on(engine.step()) {
                Ok(ev) => ev,
                Err(e) => {
                    // Leave the engine ready for the next turn.
                    engine.cancel(id);
                    return Err(e);
                }
            };
            for ev in events {
                match ev {
                    Event::Token { token, .. } => out.push(tok, token, on_event)?,
                    Event::PromptLogprobs { .. } => {}
                    Event::Finished {
                        reason: r,
                        generated: g,
                        ..
                    } => {
                        reason = r;
                        generated = g;
                        break 'outer;
                    }
                }
            }
        }
        out.finish(tok, on_event)?;
        let TurnOutput {
            parser,
            plain,
            shown,
            ..
        } = out;
        let unparsed = plain.map(|(_, text)| text);
        // Earlier reasoning is dropped from history; the answer as shown is kept.
        self.history.push(Message::text(Role::User, user));
        self.history
            .push(Message::text(Role::Assistant, shown).channel("final"));
        Ok(TurnResult {
            messages: parser.messages,
            generated,
            seconds: t0.elapsed().as_secs_f64(),
            reason,
            unparsed,
        })
    }
}
