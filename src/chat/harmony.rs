//! Harmony messages and their rendering to token ids, as openai-harmony renders them: each header
//! piece and each content is tokenized on its own as ordinary text (a special token spelled in
//! content stays text), and the formatting tokens are inserted as special ids.

use serde::{Deserialize, Serialize};

use super::schema;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    #[default]
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::System,
            Role::Developer,
            Role::User,
            Role::Assistant,
            Role::Tool,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    Low,
    Medium,
    High,
}

impl ReasoningEffort {
    pub fn parse(s: &str) -> Option<ReasoningEffort> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Some(ReasoningEffort::Low),
            "medium" => Some(ReasoningEffort::Medium),
            "high" => Some(ReasoningEffort::High),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }
}

/// The system message: identity, dates, reasoning effort and channels.
#[derive(Clone, Debug, PartialEq)]
pub struct SystemContent {
    pub model_identity: Option<String>,
    pub reasoning_effort: Option<ReasoningEffort>,
    pub knowledge_cutoff: Option<String>,
    pub conversation_start_date: Option<String>,
    pub valid_channels: Vec<String>,
    pub channel_required: bool,
}

impl Default for SystemContent {
    /// openai-harmony's defaults.
    fn default() -> Self {
        SystemContent {
            model_identity: Some(
                "You are ChatGPT, a large language model trained by OpenAI.".into(),
            ),
            reasoning_effort: Some(ReasoningEffort::Medium),
            knowledge_cutoff: Some("2024-06".into()),
            conversation_start_date: None,
            valid_channels: vec!["analysis".into(), "commentary".into(), "final".into()],
            channel_required: true,
        }
    }
}

/// A function the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolDescription {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
}

/// A format the answer should take: Harmony's response formats, which the developer message
/// lists after its tools. The model is asked for it, not held to it (sampling has no grammar).
#[derive(Clone, Debug, PartialEq)]
pub struct ResponseFormat {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema.
    pub schema: serde_json::Value,
}

/// The developer message: instructions, function tools and response formats.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeveloperContent {
    pub instructions: Option<String>,
    pub function_tools: Vec<ToolDescription>,
    pub response_formats: Vec<ResponseFormat>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    Text(String),
    /// Text given in pieces (an OpenAI content-part list), each tokenized on its own as
    /// openai-harmony tokenizes each text content of a message.
    Parts(Vec<String>),
    System(SystemContent),
    Developer(DeveloperContent),
}

/// One Harmony message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    /// The author's name: for tool results the tool (`functions.NAME`).
    pub name: Option<String>,
    pub recipient: Option<String>,
    pub channel: Option<String>,
    /// e.g. `json` or `<|constrain|>json`.
    pub content_type: Option<String>,
    pub content: Content,
}

impl Message {
    pub fn new(role: Role, content: Content) -> Message {
        Message {
            role,
            name: None,
            recipient: None,
            channel: None,
            content_type: None,
            content,
        }
    }

    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message::new(role, Content::Text(text.into()))
    }

    pub fn channel(mut self, c: &str) -> Message {
        self.channel = Some(c.into());
        self
    }

    pub fn recipient(mut self, r: impl Into<String>) -> Message {
        self.recipient = Some(r.into());
        self
    }

    /// The text of a text message (empty for system/developer content).
    pub fn text_content(&self) -> String {
        match &self.content {
            Content::Text(t) => t.clone(),
            Content::Parts(p) => p.concat(),
            _ => String::new(),
        }
    }
}

/// Special ids of the formatting tokens.
#[derive(Clone, Copy, Debug)]
pub struct Specials {
    pub start: u32,
    pub message: u32,
    pub end: u32,
    pub ret: u32,
    pub call: u32,
    pub channel: u32,
    pub constrain: u32,
}

impl Specials {
    pub fn of(tok: &Tokenizer) -> Result<Specials> {
        Ok(Specials {
            start: tok.special_id("<|start|>")?,
            message: tok.special_id("<|message|>")?,
            end: tok.special_id("<|end|>")?,
            ret: tok.special_id("<|return|>")?,
            call: tok.special_id("<|call|>")?,
            channel: tok.special_id("<|channel|>")?,
            constrain: tok.special_id("<|constrain|>")?,
        })
    }
}

/// Renders Harmony conversations with a tokenizer.
pub struct Harmony<'a> {
    pub tok: &'a Tokenizer,
    pub ids: Specials,
}

const CONSTRAIN: &str = "<|constrain|>";

impl<'a> Harmony<'a> {
    pub fn new(tok: &'a Tokenizer) -> Result<Harmony<'a>> {
        Ok(Harmony {
            tok,
            ids: Specials::of(tok)?,
        })
    }

    /// Ids that end an assistant turn: `<|return|>` and `<|call|>`.
    pub fn stop_ids(&self) -> [u32; 2] {
        [self.ids.ret, self.ids.call]
    }

    fn text(&self, s: &str, out: &mut Vec<u32>) -> Result<()> {
        out.extend(self.tok.encode_ordinary(s)?);
        Ok(())
    }

    /// The conversation's tokens. When the last assistant message is a final answer, analysis
    /// messages before the first final answer are dropped (earlier reasoning is not shown to the
    /// model again).
    pub fn render_conversation(&self, msgs: &[Message]) -> Result<Vec<u32>> {
        let has_tools = msgs
            .iter()
            .any(|m| matches!(&m.content, Content::Developer(d) if !d.function_tools.is_empty()));
        let last_assistant_final = msgs
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .is_some_and(|m| m.channel.as_deref() == Some("final"));
        let first_final = msgs
            .iter()
            .position(|m| m.channel.as_deref() == Some("final"));
        let mut out = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let dropped = last_assistant_final
                && first_final.is_some_and(|f| i < f)
                && m.channel.as_deref() == Some("analysis");
            if !dropped {
                self.render_message(m, has_tools, &mut out)?;
            }
        }
        Ok(out)
    }

    /// The conversation followed by `<|start|>assistant`, ready for sampling.
    pub fn render_for_completion(&self, msgs: &[Message]) -> Result<Vec<u32>> {
        let mut out = self.render_conversation(msgs)?;
        out.push(self.ids.start);
        self.text(Role::Assistant.as_str(), &mut out)?;
        Ok(out)
    }

    fn render_message(&self, m: &Message, has_tools: bool, out: &mut Vec<u32>) -> Result<()> {
        out.push(self.ids.start);
        if m.role == Role::Tool {
            let name = m
                .name
                .as_deref()
                .ok_or_else(|| Error::Request("a tool message needs the tool's name".into()))?;
            self.text(name, out)?;
        } else {
            self.text(m.role.as_str(), out)?;
            if let Some(n) = &m.name {
                self.text(&format!(":{n}"), out)?;
            }
        }
        if let Some(r) = m.recipient.as_deref().filter(|r| *r != "all") {
            self.text(&format!(" to={r}"), out)?;
        }
        if let Some(c) = &m.channel {
            out.push(self.ids.channel);
            self.text(c, out)?;
        }
        if let Some(ct) = &m.content_type {
            match ct.strip_prefix(CONSTRAIN) {
                Some(rest) => {
                    self.text(" ", out)?;
                    out.push(self.ids.constrain);
                    if !rest.is_empty() {
                        self.text(rest, out)?;
                    }
                }
                None => self.text(&format!(" {ct}"), out)?,
            }
        }
        out.push(self.ids.message);
        match &m.content {
            Content::Text(t) => self.text(t, out)?,
            Content::Parts(parts) => {
                for t in parts {
                    self.text(t, out)?;
                }
            }
            Content::System(s) => {
                if m.role != Role::System {
                    return Err(Error::Request(
                        "system content outside a system message".into(),
                    ));
                }
                self.text(&system_text(s, has_tools), out)?
            }
            Content::Developer(d) => {
                if m.role != Role::Developer {
                    return Err(Error::Request(
                        "developer content outside a developer message".into(),
                    ));
                }
                self.text(&developer_text(d), out)?
            }
        }
        out.push(if m.role == Role::Assistant && m.recipient.is_some() {
            self.ids.call
        } else {
            self.ids.end
        });
        Ok(())
    }
}

/// The system message's text: identity and dates, reasoning effort, channels.
pub fn system_text(s: &SystemContent, has_function_tools: bool) -> String {
    let mut sections = Vec::new();
    let mut top = Vec::new();
    if let Some(id) = &s.model_identity {
        top.push(id.clone());
    }
    if let Some(k) = &s.knowledge_cutoff {
        top.push(format!("Knowledge cutoff: {k}"));
    }
    if let Some(d) = &s.conversation_start_date {
        top.push(format!("Current date: {d}"));
    }
    if !top.is_empty() {
        sections.push(top.join("\n"));
    }
    if let Some(e) = s.reasoning_effort {
        sections.push(format!("Reasoning: {}", e.as_str()));
    }
    if !s.valid_channels.is_empty() {
        let mut ch = format!("# Valid channels: {}.", s.valid_channels.join(", "));
        if s.channel_required {
            ch.push_str(" Channel must be included for every message.");
        }
        if has_function_tools {
            ch.push_str("\nCalls to these tools must go to the commentary channel: 'functions'.");
        }
        sections.push(ch);
    }
    sections.join("\n\n")
}

/// The developer message's text: instructions, the `functions` namespace, then the response
/// formats (each its name, its description as comments, and its schema as compact JSON).
pub fn developer_text(d: &DeveloperContent) -> String {
    let mut sections = Vec::new();
    if let Some(i) = &d.instructions {
        sections.push("# Instructions".to_string());
        sections.push(i.clone());
    }
    if !d.function_tools.is_empty() {
        let mut ns = vec![
            "## functions\n".to_string(),
            "namespace functions {\n".to_string(),
        ];
        for t in &d.function_tools {
            ns.extend(t.description.lines().map(|l| format!("// {l}")));
            match &t.parameters {
                Some(p) => ns.push(format!(
                    "type {} = (_: {}) => any;\n",
                    t.name,
                    schema::typescript(p, "")
                )),
                None => ns.push(format!("type {} = () => any;\n", t.name)),
            }
        }
        ns.push("} // namespace functions".to_string());
        sections.push(format!("# Tools\n\n{}", ns.join("\n")));
    }
    if !d.response_formats.is_empty() {
        sections.push("# Response Formats".to_string());
        for f in &d.response_formats {
            sections.push(format!("## {}", f.name));
            let mut body: Vec<String> = f
                .description
                .iter()
                .flat_map(|d| d.lines())
                .map(|l| format!("// {l}"))
                .collect();
            body.push(f.schema.to_string());
            sections.push(body.join("\n"));
        }
    }
    sections.join("\n\n")
}
