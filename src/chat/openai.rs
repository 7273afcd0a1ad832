//! OpenAI chat-completions requests to Harmony messages, the way vLLM maps them for gpt-oss, and
//! parsed Harmony output back to an OpenAI assistant message.
//!
//! Input: a leading system or developer message becomes the developer instructions; function
//! tools go to the developer message (and keep the commentary channel valid); `reasoning` or
//! `reasoning_content` becomes an analysis message; assistant `tool_calls` become commentary
//! messages to `functions.NAME` with content type `json`; `tool` messages become results from
//! `functions.NAME` to the assistant. Analysis before the last final answer is dropped.
//! `response_format` becomes the developer message's response format (asked for, not enforced).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::harmony::{
    Content, DeveloperContent, Message, ReasoningEffort, ResponseFormat, Role, SystemContent,
    ToolDescription,
};
use super::parser::ParsedMessage;
use crate::error::{Error, Result};

/// Message content: a string or a list of parts of which the text parts count.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
#[serde(expecting = "expected a string or a list of content parts")]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ContentPart {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text.
    #[serde(default)]
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct ToolCall {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
    #[serde(default)]
    pub reasoning: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ToolSpec {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

/// The parts of a chat-completions request that shape the prompt (other fields are ignored here).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub tools: Option<Vec<ToolSpec>>,
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema":
    /// {"name", "description", "schema", "strict"}}`: see `response_format`.
    #[serde(default)]
    pub response_format: Option<Value>,
}

/// The response format a request's `response_format` asks for: none for `text`; for
/// `json_schema` its schema under its name; for `json_object` an object under that name. It goes
/// to the developer message (Harmony's response formats), which asks the model for it; sampling
/// does not enforce it (`strict` is accepted and means no more).
fn response_format(v: &Value) -> Result<Option<ResponseFormat>> {
    let err = |message: String| Error::field("response_format", message);
    let kind = v.get("type").and_then(Value::as_str).ok_or_else(|| {
        err("response_format needs a `type`: text, json_object or json_schema".into())
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(ResponseFormat {
            name: "json_object".into(),
            description: None,
            schema: serde_json::json!({"type": "object"}),
        })),
        "json_schema" => {
            let s = v
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    err("a json_schema response_format needs a `json_schema` object".into())
                })?;
            let bad = |what: &str| -> Result<Option<ResponseFormat>> {
                Err(err(format!("a json_schema format's {what}")))
            };
            let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
            let name_ok = (1..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !name_ok {
                return bad("`name` must be 1 to 64 letters, digits, `_` or `-`");
            }
            let description = match s.get("description") {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) => Some(d.clone()),
                Some(_) => return bad("`description` must be a string"),
            };
            let schema = match s.get("schema") {
                Some(o @ Value::Object(_)) => o.clone(),
                _ => return bad("`schema` must be a JSON Schema object"),
            };
            if !matches!(s.get("strict"), None | Some(Value::Null | Value::Bool(_))) {
                return bad("`strict` must be true or false");
            }
            Ok(Some(ResponseFormat {
                name: name.into(),
                description,
                schema,
            }))
        }
        other => Err(err(format!(
            "response_format type `{other}` is not text, json_object or json_schema"
        ))),
    }
}

/// The text parts of a message's content. Parts other than text are refused: gpt-oss reads text
/// only, and dropping an image silently would answer a question the user did not ask.
fn parts_of(i: usize, c: &Option<MessageContent>) -> Result<Vec<String>> {
    match c {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(t)) => Ok(vec![t.clone()]),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .map(|p| match (p.kind.as_str(), &p.text) {
                ("text" | "input_text" | "output_text", Some(t)) => Ok(t.clone()),
                ("text" | "input_text" | "output_text", None) => Err(Error::field(
                    "messages",
                    format!("message {i}: a `{}` content part has no `text`", p.kind),
                )),
                (kind, _) => Err(Error::field(
                    "messages",
                    format!(
                        "message {i}: content parts of type `{kind}` are not supported \
                     (gpt-oss reads text only)"
                    ),
                )),
            })
            .collect(),
    }
}

/// The whole text of a message's content (instructions and tool results take it joined).
fn text_of(i: usize, c: &Option<MessageContent>) -> Result<String> {
    Ok(parts_of(i, c)?.concat())
}

/// User and assistant text keeps its parts: vLLM hands each to openai-harmony as its own text
/// content, so each is tokenized on its own.
fn content_of(parts: Vec<String>) -> Content {
    match <[String; 1]>::try_from(parts) {
        Ok([one]) => Content::Text(one),
        Err(parts) => Content::Parts(parts),
    }
}

/// Today's date (UTC) as YYYY-MM-DD, for the system message.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86400) as i64;
    // Civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

/// Checks that `date` is a calendar date written YYYY-MM-DD.
pub fn check_date(date: &str) -> Result<()> {
    let bad = || Error::Request(format!("date `{date}` is not a calendar date (YYYY-MM-DD)"));
    let b = date.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32> {
        let s = &date[r];
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if d == 0 || d > days {
        return Err(bad());
    }
    Ok(())
}

impl ChatMessage {
    /// The message's text; `i` is its index, for errors.
    pub fn text(&self, i: usize) -> Result<String> {
        text_of(i, &self.content)
    }
}

impl ChatRequest {
    pub fn from_json(text: &str) -> Result<ChatRequest> {
        serde_json::from_str(text)
            .map_err(|e| Error::Request(format!("not a chat-completions request: {e}")))
    }

    /// The Harmony conversation for this request, dated `date` (YYYY-MM-DD).
    pub fn to_harmony(&self, date: &str) -> Result<Vec<Message>> {
        check_date(date)?;
        if self.messages.is_empty() {
            return Err(Error::field("messages", "`messages` is empty"));
        }
        let (mut out, first) = self.header(date)?;
        let rest = &self.messages[first..];
        let call_names: Vec<(String, String)> = rest
            .iter()
            .flat_map(|m| m.tool_calls.iter().flatten())
            .filter_map(|c| c.id.clone().map(|id| (id, c.function.name.clone())))
            .collect();
        for (i, m) in rest.iter().enumerate() {
            turn_messages(i + first, m, &call_names, &mut out)?;
        }
        drop_answered_reasoning(&mut out);
        Ok(out)
    }

    /// The system message (date, reasoning effort, channels) and, where there are instructions
    /// (a leading system or developer message), function tools or a response format, the
    /// developer message; with how many of the request's messages they took.
    fn header(&self, date: &str) -> Result<(Vec<Message>, usize)> {
        let effort = match &self.reasoning_effort {
            None => None,
            Some(e) => Some(ReasoningEffort::parse(e).ok_or_else(|| {
                Error::field(
                    "reasoning_effort",
                    format!("reasoning_effort `{e}` is not low, medium or high"),
                )
            })?),
        };
        let mut tools = Vec::new();
        for t in self.tools.iter().flatten() {
            if t.kind != "function" {
                return Err(Error::field(
                    "tools",
                    format!("tool type `{}` is not supported (only function)", t.kind),
                ));
            }
            tools.push(ToolDescription {
                name: t.function.name.clone(),
                description: t.function.description.clone().unwrap_or_default(),
                parameters: t.function.parameters.clone(),
            });
        }
        let mut system = SystemContent {
            conversation_start_date: Some(date.into()),
            ..Default::default()
        };
        if let Some(e) = effort {
            system.reasoning_effort = Some(e);
        }
        if tools.is_empty() {
            // Without function tools there is nothing for the commentary channel.
            system.valid_channels.retain(|c| c != "commentary");
        }
        let mut taken = 0;
        let mut instructions = None;
        if let Some(first) = self
            .messages
            .first()
            .filter(|m| m.role == "system" || m.role == "developer")
        {
            instructions = Some(text_of(0, &first.content)?);
            taken = 1;
        }
        let formats: Vec<ResponseFormat> = match &self.response_format {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => response_format(v)?.into_iter().collect(),
        };
        let mut out = vec![Message::new(Role::System, Content::System(system))];
        if instructions.is_some() || !tools.is_empty() || !formats.is_empty() {
            let dev = DeveloperContent {
                instructions,
                function_tools: tools,
                response_formats: formats,
            };
            out.push(Message::new(Role::Developer, Content::Developer(dev)));
        }
        Ok((out, taken))
    }
}

/// The Harmony messages of the request's message `i`, `m`: an assistant turn's preamble,
/// reasoning and calls (or reasoning and final answer), a tool result addressed from the called
/// function (named by its call's id in `call_names`, else by `name`), or a user, system or
/// developer message as it is.
fn turn_messages(
    i: usize,
    m: &ChatMessage,
    call_names: &[(String, String)],
    out: &mut Vec<Message>,
) -> Result<()> {
    let text = text_of(i, &m.content)?;
    let reasoning = m
        .reasoning
        .as_ref()
        .or(m.reasoning_content.as_ref())
        .filter(|r| !r.is_empty());
    match m.role.as_str() {
        "assistant" => {
            let calls = m.tool_calls.as_deref().unwrap_or(&[]);
            if !calls.is_empty() {
                if !text.is_empty() {
                    out.push(Message::text(Role::Assistant, text).channel("commentary"));
                }
                if let Some(r) = reasoning {
                    out.push(Message::text(Role::Assistant, r.clone()).channel("analysis"));
                }
                for c in calls {
                    let mut msg = Message::text(Role::Assistant, c.function.arguments.clone())
                        .channel("commentary")
                        .recipient(format!("functions.{}", c.function.name));
                    msg.content_type = Some("json".into());
                    out.push(msg);
                }
            } else {
                if let Some(r) = reasoning {
                    out.push(Message::text(Role::Assistant, r.clone()).channel("analysis"));
                }
                if !text.is_empty() {
                    let parts = content_of(parts_of(i, &m.content)?);
                    out.push(Message::new(Role::Assistant, parts).channel("final"));
                }
            }
        }
        "tool" => {
            let by_id = m.tool_call_id.as_ref().and_then(|id| {
                call_names
                    .iter()
                    .find(|(i, _)| i == id)
                    .map(|(_, n)| n.clone())
            });
            let name = by_id.or_else(|| m.name.clone()).ok_or_else(|| {
                Error::field(
                    "messages",
                    format!(
                        "message {i}: a tool result needs a `tool_call_id` of an earlier call or a \
                     `name`"
                    ),
                )
            })?;
            let mut msg = Message::text(Role::Tool, text)
                .channel("commentary")
                .recipient("assistant");
            msg.name = Some(format!("functions.{name}"));
            out.push(msg);
        }
        role => {
            let role = Role::parse(role)
                .filter(|r| *r != Role::Tool)
                .ok_or_else(|| {
                    Error::field(
                        "messages",
                        format!("message {i}: unknown role `{}`", m.role),
                    )
                })?;
            out.push(Message::new(role, content_of(parts_of(i, &m.content)?)));
        }
    }
    Ok(())
}

/// Reasoning from turns that already have a final answer is not shown again.
fn drop_answered_reasoning(out: &mut Vec<Message>) {
    if let Some(last_final) = out
        .iter()
        .rposition(|m| m.role == Role::Assistant && m.channel.as_deref() == Some("final"))
    {
        let mut i = 0;
        out.retain(|m| {
            let keep = !(i < last_final && m.channel.as_deref() == Some("analysis"));
            i += 1;
            keep
        });
    }
}

/// An assistant reply in OpenAI's shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: Option<String>,
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tool_calls: Vec<ToolCall>,
}

impl AssistantMessage {
    /// Final-channel text becomes content, analysis becomes reasoning, and messages addressed to
    /// `functions.NAME` become tool calls (ids from `new_id`).
    pub fn from_parsed(
        msgs: &[ParsedMessage],
        mut new_id: impl FnMut() -> String,
    ) -> AssistantMessage {
        let mut content: Option<String> = None;
        let mut reasoning: Option<String> = None;
        let mut calls = Vec::new();
        // Several messages of a kind join: analysis with a newline between (as vLLM writes
        // reasoning_content), final text as it came.
        let append = |slot: &mut Option<String>, t: &str, sep: &str| match slot {
            Some(s) => {
                s.push_str(sep);
                s.push_str(t);
            }
            None => *slot = Some(t.to_string()),
        };
        for m in msgs.iter().filter(|m| m.role == Role::Assistant) {
            if let Some(name) = m
                .recipient
                .as_deref()
                .and_then(|r| r.strip_prefix("functions."))
            {
                calls.push(ToolCall {
                    id: Some(new_id()),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.to_string(),
                        arguments: m.content.clone(),
                    },
                });
            } else if m.channel.as_deref() == Some("analysis") {
                append(&mut reasoning, &m.content, "\n");
            } else if m.recipient.is_none() {
                append(&mut content, &m.content, "");
            }
        }
        AssistantMessage {
            role: "assistant".into(),
            content,
            reasoning_content: reasoning,
            tool_calls: calls,
        }
    }
}
