//! Turning a request's generated tokens into what the API returns, one token at a time, so that
//! a streamed answer and a whole one are the same text by construction.
//! Chat: the Harmony parser splits the output into reasoning (analysis channel), content (final)
//! and tool calls (messages to `functions.NAME`); stop strings apply to the content.
//! Completions: the decoded text, with stop strings.

use crate::chat::harmony::Specials;
use crate::chat::parser::ParseEvent;
use crate::chat::{Role, StopText, StreamParser};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Tokens in, pieces of the answer out: what `serve` feeds each request's tokens through.
pub trait Sink {
    type Piece;
    /// Feeds one generated token.
    fn push(&mut self, tok: &Tokenizer, id: u32) -> Vec<Self::Piece>;
    /// The output ended: what was held back.
    fn finish(&mut self) -> Vec<Self::Piece>;
    /// Whether a stop string ended the answer.
    fn stopped(&self) -> bool;
    /// How many tool calls the answer made.
    fn tool_calls(&self) -> usize {
        0
    }
    /// Whether the token pushed last is part of the text that log-probabilities describe
    /// (chat: the content; completions: all of it).
    fn scored(&self) -> bool {
        true
    }
}

/// One piece of a chat answer.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatDelta {
    Reasoning(String),
    Content(String),
    /// A tool call starts: its index among the answer's calls, id and function name.
    ToolStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of the call's arguments (a JSON text).
    ToolArgs {
        index: usize,
        args: String,
    },
}

/// Where the current message's text goes.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Reasoning,
    Content,
    Tool(usize),
    Nowhere,
}

pub struct ChatStream {
    parser: StreamParser,
    stop: StopText,
    target: Target,
    calls: usize,
    call_id: Box<dyn FnMut() -> String + Send>,
    scored: bool,
}

impl ChatStream {
    pub fn new(
        specials: Specials,
        stop: StopText,
        call_id: Box<dyn FnMut() -> String + Send>,
    ) -> ChatStream {
        ChatStream {
            parser: StreamParser::new(specials, Some(Role::Assistant)),
            stop,
            target: Target::Nowhere,
            calls: 0,
            call_id,
            scored: false,
        }
    }

    fn apply(&mut self, events: Vec<ParseEvent>) -> Vec<ChatDelta> {
        let mut out = Vec::new();
        for ev in events {
            match ev {
                ParseEvent::Start(m) => {
                    self.target = if let Some(name) = m
                        .recipient
                        .as_deref()
                        .and_then(|r| r.strip_prefix("functions."))
                    {
                        let index = self.calls;
                        self.calls += 1;
                        out.push(ChatDelta::ToolStart {
                            index,
                            id: (self.call_id)(),
                            name: name.to_string(),
                        });
                        Target::Tool(index)
                    } else if m.channel.as_deref() == Some("analysis") {
                        Target::Reasoning
                    } else if m.recipient.is_none() {
                        Target::Content
                    } else {
                        Target::Nowhere
                    };
                }
                ParseEvent::Delta(d) => match self.target {
                    Target::Reasoning => out.push(ChatDelta::Reasoning(d)),
                    Target::Content => {
                        let shown = self.stop.push(&d);
                        if !shown.is_empty() {
                            out.push(ChatDelta::Content(shown));
                        }
                    }
                    Target::Tool(index) => out.push(ChatDelta::ToolArgs { index, args: d }),
                    Target::Nowhere => {}
                },
                ParseEvent::End(_) => self.target = Target::Nowhere,
            }
        }
        out
    }
}

impl Sink for ChatStream {
    type Piece = ChatDelta;

    fn push(&mut self, tok: &Tokenizer, id: u32) -> Vec<ChatDelta> {
        let before = self.target;
        let events = self.parser.push(tok, id);
        // Inside a content message's text: neither its header nor the token that ends it.
        self.scored =
            before == Target::Content && events.iter().all(|e| matches!(e, ParseEvent::Delta(_)));
        self.apply(events)
    }

    fn finish(&mut self) -> Vec<ChatDelta> {
        let events = self.parser.finish();
        let mut out = self.apply(events);
        // Content held back as a possible stop-string start is released at the end.
        let rest = self.stop.finish();
        if !rest.is_empty() {
            out.push(ChatDelta::Content(rest));
        }
        out
    }

    fn stopped(&self) -> bool {
        self.stop.stopped()
    }

    fn tool_calls(&self) -> usize {
        self.calls
    }

    fn scored(&self) -> bool {
        self.scored
    }
}

/// Plain text continuation with stop strings.
pub struct TextStream {
    decoder: StreamDecoder,
    stop: StopText,
}

impl TextStream {
    pub fn new(stop: StopText) -> TextStream {
        TextStream {
            decoder: StreamDecoder::default(),
            stop,
        }
    }
}

impl Sink for TextStream {
    type Piece = String;

    fn push(&mut self, tok: &Tokenizer, id: u32) -> Vec<String> {
        match self.decoder.push(tok, id) {
            Ok(Some(piece)) => Some(self.stop.push(&piece))
                .filter(|p| !p.is_empty())
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    fn finish(&mut self) -> Vec<String> {
        Some(self.stop.finish())
            .filter(|p| !p.is_empty())
            .into_iter()
            .collect()
    }

    fn stopped(&self) -> bool {
        self.stop.stopped()
    }
}
