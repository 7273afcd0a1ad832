//! Turning a request's generated tokens into what the API returns, one token at a time, so that
//! a streamed answer and a whole one are the same text by construction.
//! Chat: the Harmony parser splits the output into reasoning (analysis channel), content (final)
//! and tool calls (messages to `functions.NAME`); stop strings apply to the content.
//! Completions: the decoded text, with stop strings.

use crate::chat::harmony::Specials;
use crate::chat::parser::ParseEvent;
use crate::chat::{Role, StopText, StreamParser};
use crate::tokenizer::{StreamDecoder, Tokenizer};

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
    ToolArgs { index: usize, args: String },
}

/// Where the current message's text goes.
#[derive(Clone, Copy, PartialEq)]
enum Sink {
    Reasoning,
    Content,
    Tool(usize),
    Nowhere,
}

pub struct ChatStream {
    parser: StreamParser,
    stop: StopText,
    sink: Sink,
    calls: usize,
    call_id: Box<dyn FnMut() -> String + Send>,
}

impl ChatStream {
    pub fn new(specials: Specials, stop: StopText, call_id: Box<dyn FnMut() -> String + Send>) -> ChatStream {
        ChatStream {
            parser: StreamParser::new(specials, Some(Role::Assistant)),
            stop,
            sink: Sink::Nowhere,
            calls: 0,
            call_id,
        }
    }

    /// Whether a stop string ended the content.
    pub fn stopped(&self) -> bool {
        self.stop.stopped()
    }

    /// How many tool calls the answer made.
    pub fn tool_calls(&self) -> usize {
        self.calls
    }

    /// Feeds one generated token.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Vec<ChatDelta> {
        let events = self.parser.push(tok, id);
        self.apply(events)
    }

    /// The output ended: a message still open is closed with what it has.
    pub fn finish(&mut self) -> Vec<ChatDelta> {
        let events = self.parser.finish();
        let mut out = self.apply(events);
        // Content held back as a possible stop-string start is released at the end.
        let rest = self.stop.finish();
        if !rest.is_empty() {
            out.push(ChatDelta::Content(rest));
        }
        out
    }

    fn apply(&mut self, events: Vec<ParseEvent>) -> Vec<ChatDelta> {
        let mut out = Vec::new();
        for ev in events {
            match ev {
                ParseEvent::Start(m) => {
                    self.sink = if let Some(name) = m
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
                        Sink::Tool(index)
                    } else if m.channel.as_deref() == Some("analysis") {
                        Sink::Reasoning
                    } else if m.recipient.is_none() {
                        Sink::Content
                    } else {
                        Sink::Nowhere
                    };
                }
                ParseEvent::Delta(d) => match self.sink {
                    Sink::Reasoning => out.push(ChatDelta::Reasoning(d)),
                    Sink::Content => {
                        let shown = self.stop.push(&d);
                        if !shown.is_empty() {
                            out.push(ChatDelta::Content(shown));
                        }
                    }
                    Sink::Tool(index) => out.push(ChatDelta::ToolArgs { index, args: d }),
                    Sink::Nowhere => {}
                },
                ParseEvent::End(_) => {}
            }
        }
        out
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

    pub fn stopped(&self) -> bool {
        self.stop.stopped()
    }

    /// Feeds one generated token; returns the text that can be shown now.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        match self.decoder.push(tok, id) {
            Ok(Some(piece)) => self.stop.push(&piece),
            _ => String::new(),
        }
    }

    /// The output ended: text held back is released.
    pub fn finish(&mut self) -> String {
        self.stop.finish()
    }
}
