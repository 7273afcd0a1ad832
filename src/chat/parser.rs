//! Streaming parser for Harmony output: token ids in, message headers, content deltas and whole
//! messages out. It never fails: malformed output ends the message being read and is reported in
//! `error`, and truncated output keeps whatever was parsed (`finish` closes an open message).
//! Content is decoded byte-exactly, so a delta never ends inside a UTF-8 character.

use serde::{Deserialize, Serialize};

use super::harmony::{Role, Specials};
use crate::tokenizer::Tokenizer;

/// A complete (or, at the end of truncated output, partial) message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParsedMessage {
    pub role: Role,
    /// Author name (the tool, for tool messages).
    pub name: Option<String>,
    pub recipient: Option<String>,
    pub channel: Option<String>,
    pub content_type: Option<String>,
    pub content: String,
}

/// What one token changed.
#[derive(Clone, Debug, PartialEq)]
pub enum ParseEvent {
    /// A header was read: the message's role, channel and recipient are known.
    Start(ParsedMessage),
    /// More content of the current message.
    Delta(String),
    /// The current message ended.
    End(ParsedMessage),
}

enum State {
    ExpectStart,
    Header(Vec<u32>),
    Content(ParsedMessage, Vec<u8>),
}

pub struct StreamParser {
    ids: Specials,
    next_role: Option<Role>,
    state: State,
    /// Every message completed so far.
    pub messages: Vec<ParsedMessage>,
    /// The first problem met, if any (parsing went on after it).
    pub error: Option<String>,
}

const CHANNEL: &str = "<|channel|>";
const CONSTRAIN: &str = "<|constrain|>";

impl StreamParser {
    /// A parser for output that starts after `<|start|>{role}` (the prompt's last tokens), or
    /// at a `<|start|>` when `role` is None.
    pub fn new(ids: Specials, role: Option<Role>) -> StreamParser {
        let state = if role.is_some() {
            State::Header(Vec::new())
        } else {
            State::ExpectStart
        };
        StreamParser {
            ids,
            next_role: role,
            state,
            messages: Vec::new(),
            error: None,
        }
    }

    fn fail(&mut self, msg: String) {
        self.error.get_or_insert(msg);
    }

    fn is_stop(&self, id: u32) -> bool {
        id == self.ids.end || id == self.ids.ret || id == self.ids.call
    }

    /// The message being read, if its header is complete.
    pub fn current(&self) -> Option<&ParsedMessage> {
        match &self.state {
            State::Content(m, _) => Some(m),
            _ => None,
        }
    }

    /// Feeds one token.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Vec<ParseEvent> {
        let mut events = Vec::new();
        match std::mem::replace(&mut self.state, State::ExpectStart) {
            State::ExpectStart => {
                if id == self.ids.start {
                    self.state = State::Header(Vec::new());
                } else if !self.is_stop(id) {
                    self.fail(format!("expected <|start|>, got token {id}"));
                }
            }
            State::Header(mut header) => {
                if id == self.ids.message {
                    let text = String::from_utf8_lossy(&tok.token_bytes_of(&header)).into_owned();
                    match parse_header(&text, self.next_role.take()) {
                        Ok(m) => {
                            events.push(ParseEvent::Start(m.clone()));
                            self.state = State::Content(m, Vec::new());
                        }
                        Err(e) => self.fail(e),
                    }
                } else if self.is_stop(id) {
                    self.fail("message ended inside its header".into());
                    self.next_role = None;
                } else {
                    header.push(id);
                    self.state = State::Header(header);
                }
            }
            State::Content(mut m, mut pending) => {
                if self.is_stop(id) {
                    m.content.push_str(&String::from_utf8_lossy(&pending));
                    self.messages.push(m.clone());
                    events.push(ParseEvent::End(m));
                } else {
                    pending.extend(tok.token_bytes(id));
                    let delta = take_utf8(&mut pending);
                    if !delta.is_empty() {
                        m.content.push_str(&delta);
                        events.push(ParseEvent::Delta(delta));
                    }
                    self.state = State::Content(m, pending);
                }
            }
        }
        events
    }

    /// Ends the stream: a message still open is closed with what it has.
    pub fn finish(&mut self) -> Vec<ParseEvent> {
        match std::mem::replace(&mut self.state, State::ExpectStart) {
            State::Content(mut m, pending) => {
                m.content.push_str(&String::from_utf8_lossy(&pending));
                self.messages.push(m.clone());
                vec![ParseEvent::End(m)]
            }
            State::Header(h) if !h.is_empty() => {
                self.fail("output ended inside a message header".into());
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Parses a whole completion.
    pub fn parse_all(
        tok: &Tokenizer,
        ids: Specials,
        role: Option<Role>,
        tokens: &[u32],
    ) -> StreamParser {
        let mut p = StreamParser::new(ids, role);
        for &t in tokens {
            p.push(tok, t);
        }
        p.finish();
        p
    }
}

/// Removes and returns the longest valid UTF-8 prefix; an invalid byte becomes U+FFFD, an
/// incomplete character at the end stays pending.
fn take_utf8(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(pending) {
            Ok(s) => {
                out.push_str(s);
                pending.clear();
                return out;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&pending[..valid]).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push('\u{fffd}');
                        pending.drain(..valid + bad);
                    }
                    None => {
                        pending.drain(..valid);
                        return out;
                    }
                }
            }
        }
    }
}

/// Reads a header such as `assistant<|channel|>commentary to=functions.f <|constrain|>json`.
/// `role` is the role already given by the prompt, if any.
fn parse_header(text: &str, role: Option<Role>) -> Result<ParsedMessage, String> {
    let mut s = text.to_string();
    let mut channel = None;
    if let Some(i) = s.find(CHANNEL) {
        let after = &s[i + CHANNEL.len()..];
        let end = after
            .find(|c: char| c.is_whitespace() || c == '<')
            .unwrap_or(after.len());
        if end == 0 {
            return Err(format!(
                "header `{text}` has a channel marker without a channel"
            ));
        }
        channel = Some(after[..end].to_string());
        s = format!("{}{}", &s[..i], &after[end..]);
    }
    let mut s = s.trim().to_string();
    if s.contains(CONSTRAIN) {
        s = s
            .replace(CONSTRAIN, &format!(" {CONSTRAIN}"))
            .trim()
            .to_string();
    }
    let mut parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let mut name = None;
    let role = match role {
        Some(r) => r,
        None => {
            let first = *parts
                .first()
                .ok_or_else(|| format!("header `{text}` has no role"))?;
            match Role::parse(first) {
                Some(r) => r,
                // An unknown author with more header is a tool speaking (e.g. `functions.f`).
                None if parts.len() > 1 || first.starts_with("to=") => {
                    parts.remove(0);
                    name = Some(first.to_string());
                    Role::Tool
                }
                None => return Err(format!("header `{text}` has an unknown role")),
            }
        }
    };
    if parts.first() == Some(&role.as_str()) {
        parts.remove(0);
    }
    let mut recipient = None;
    let mut content_type = None;
    if let Some(last) = parts.pop() {
        if let Some(r) = last.strip_prefix("to=") {
            recipient = Some(r.to_string());
        } else if parts.is_empty() && !last.starts_with(CONSTRAIN) {
            recipient = Some(last.to_string());
        } else {
            content_type = Some(last.to_string());
            if let Some(r) = parts.pop() {
                recipient = Some(r.strip_prefix("to=").unwrap_or(r).to_string());
            }
        }
    }
    if !parts.is_empty() {
        return Err(format!("header `{text}` has unexpected parts {parts:?}"));
    }
    Ok(ParsedMessage {
        role,
        name,
        recipient,
        channel,
        content_type,
        content: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let h = parse_header(
            "<|channel|>commentary to=functions.get_weather <|constrain|>json",
            Some(Role::Assistant),
        )
        .unwrap();
        assert_eq!(h.channel.as_deref(), Some("commentary"));
        assert_eq!(h.recipient.as_deref(), Some("functions.get_weather"));
        assert_eq!(h.content_type.as_deref(), Some("<|constrain|>json"));
        let h = parse_header("assistant to=functions.f<|channel|>commentary json", None).unwrap();
        assert_eq!(
            (h.role, h.recipient.as_deref(), h.content_type.as_deref()),
            (Role::Assistant, Some("functions.f"), Some("json"))
        );
        let h = parse_header("functions.f to=assistant<|channel|>commentary", None).unwrap();
        assert_eq!(
            (h.role, h.name.as_deref(), h.recipient.as_deref()),
            (Role::Tool, Some("functions.f"), Some("assistant"))
        );
        assert!(parse_header("<|channel|>", Some(Role::Assistant)).is_err());
    }

    #[test]
    fn utf8_is_held_until_complete() {
        let mut p = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_utf8(&mut p), "");
        p.push("é".as_bytes()[1]);
        assert_eq!(take_utf8(&mut p), "é");
        let mut bad = vec![b'a', 0xff, b'b'];
        assert_eq!(take_utf8(&mut bad), "a\u{fffd}b");
    }
}
