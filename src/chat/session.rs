//! A chat conversation over an [`Engine`]: the Harmony prompt for each turn, the streamed answer
//! split into reasoning and final text, and history kept by the Harmony rules (earlier turns keep
//! their final answers; their reasoning is not shown to the model again).

use serde_json::json;

use super::harmony::{
    Content, DeveloperContent, Harmony, Message, ReasoningEffort, Role, SystemContent,
};
use super::parser::{ParseEvent, ParsedMessage, StreamParser};
use crate::engine::{Engine, Event, FinishReason, Request, Sampling};
use crate::error::{Error, Result};

/// What a turn produces as it streams.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnEvent {
    /// Analysis-channel text.
    Reasoning(String),
    /// Final (or commentary) text meant for the user.
    Answer(String),
}

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
}

impl ChatSession {
    pub fn new(date: String) -> ChatSession {
        ChatSession {
            effort: ReasoningEffort::Medium,
            date,
            instructions: None,
            history: Vec::new(),
        }
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
                function_tools: Vec::new(),
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
        let mut msgs = self.messages();
        msgs.push(Message::text(Role::User, user));
        let prompt = h.render_for_completion(&msgs)?;
        let id = engine.submit(Request {
            prompt,
            max_tokens,
            sampling,
            stop: h.stop_ids().to_vec(),
            ignore_eos: false,
        })?;
        let t0 = std::time::Instant::now();
        let mut parser = StreamParser::new(h.ids, Some(Role::Assistant));
        let mut raw = Vec::new();
        let mut reason = FinishReason::Length;
        let mut generated = 0;
        let emit =
            |p: &StreamParser, events: Vec<ParseEvent>, on_event: &mut dyn FnMut(TurnEvent)| {
                for e in events {
                    if let ParseEvent::Delta(d) = e {
                        let analysis = p
                            .current()
                            .is_some_and(|m| m.channel.as_deref() == Some("analysis"));
                        on_event(if analysis {
                            TurnEvent::Reasoning(d)
                        } else {
                            TurnEvent::Answer(d)
                        });
                    }
                }
            };
        'outer: while engine.has_work() {
            if cancelled() {
                if let Some(Event::Finished {
                    reason: r,
                    generated: g,
                    ..
                }) = engine.cancel(id)
                {
                    reason = r;
                    generated = g;
                }
                break;
            }
            for ev in pollster::block_on(engine.step())? {
                match ev {
                    Event::Token { token, .. } => {
                        raw.push(token);
                        let events = parser.push(tok, token);
                        emit(&parser, events, on_event);
                    }
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
        let events = parser.finish();
        emit(&parser, events, on_event);
        let unparsed = (parser.messages.is_empty() && !raw.is_empty())
            .then(|| tok.decode(&raw).unwrap_or_default());
        self.history.push(Message::text(Role::User, user));
        // Earlier reasoning is dropped from history; the final answer (or, failing that, what
        // was said) is kept.
        let answer: String = parser
            .messages
            .iter()
            .filter(|m| m.channel.as_deref() != Some("analysis") && m.recipient.is_none())
            .map(|m| m.content.as_str())
            .collect();
        let answer = if answer.is_empty() {
            unparsed.clone().unwrap_or_default()
        } else {
            answer
        };
        self.history
            .push(Message::text(Role::Assistant, answer).channel("final"));
        Ok(TurnResult {
            messages: parser.messages,
            generated,
            seconds: t0.elapsed().as_secs_f64(),
            reason,
            unparsed,
        })
    }
}
