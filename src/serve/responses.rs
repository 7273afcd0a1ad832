//! `POST /v1/responses`, the API OpenAI recommends for gpt-oss: the request is mapped onto a chat
//! request (input items to messages, function tools, reasoning effort) and answered with output
//! items (reasoning, message, function_call), whole or as typed server-sent events. Stateless:
//! `previous_response_id` is refused.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::IntoResponse;
use axum::response::sse::Event as Sse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::answer::{
    Answer, ChatRun, Finish, drive_chat, error_event, sse, start_chat, whole_answer,
};
use super::error::{ApiError, ApiResult};
use super::request::{Body, Common, apply_tool_choice, new_id, now, parse};
use super::stream::ChatDelta;
use super::{AppState, Ready};
use crate::chat::ChatRequest;

#[derive(Deserialize)]
struct Reasoning {
    effort: Option<String>,
}

#[derive(Deserialize)]
struct ResponsesBody {
    model: Option<String>,
    input: Value,
    instructions: Option<String>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    reasoning: Option<Reasoning>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", ...}}`.
    text: Option<Value>,
    max_output_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    #[serde(default)]
    stream: bool,
    previous_response_id: Option<String>,
}

impl Body for ResponsesBody {}

/// The chat request a responses request means.
fn to_chat(b: &ResponsesBody) -> Result<ChatRequest, ApiError> {
    let mut messages = Vec::new();
    if let Some(i) = &b.instructions {
        messages.push(json!({"role": "developer", "content": i}));
    }
    match &b.input {
        Value::String(s) => messages.push(json!({"role": "user", "content": s})),
        Value::Array(items) => {
            for (n, item) in items.iter().enumerate() {
                messages.push(input_item(n, item)?);
            }
        }
        _ => {
            return Err(ApiError::param(
                "input",
                "input must be a string or a list of items",
            ));
        }
    }
    let tools = b
        .tools
        .iter()
        .flatten()
        .map(|t| {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::param(
                    "tools",
                    "only function tools are supported",
                ));
            }
            let mut f = t.clone();
            if let Some(o) = f.as_object_mut() {
                o.remove("type");
                o.remove("strict");
            }
            Ok(json!({"type": "function", "function": f}))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut chat = json!({"messages": messages});
    if !tools.is_empty() {
        chat["tools"] = Value::Array(tools);
    }
    if let Some(e) = b.reasoning.as_ref().and_then(|r| r.effort.as_ref()) {
        chat["reasoning_effort"] = json!(e);
    }
    // The Responses API states a JSON schema's fields beside its type; chat completions nests
    // them under `json_schema`.
    if let Some(f) = b.text.as_ref().and_then(|t| t.get("format")) {
        let mut f = f.clone();
        if f["type"] == "json_schema" {
            if let Some(o) = f.as_object_mut() {
                o.remove("type");
            }
            f = json!({"type": "json_schema", "json_schema": f});
        }
        chat["response_format"] = f;
    }
    serde_json::from_value(chat)
        .map_err(|e| ApiError::param("input", format!("invalid input: {e}")))
}

/// One input item as a chat message.
fn input_item(n: usize, item: &Value) -> Result<Value, ApiError> {
    let field = |k: &str| item.get(k).cloned().unwrap_or(Value::Null);
    let bad = |what: &str| ApiError::param("input", format!("input item {n}: {what}"));
    match item.get("type").and_then(Value::as_str) {
        Some("function_call") => Ok(json!({"role": "assistant", "tool_calls": [{
            "id": field("call_id"), "type": "function",
            "function": {"name": field("name"), "arguments": field("arguments")}}]})),
        Some("function_call_output") => {
            let output = match field("output") {
                Value::String(s) => s,
                other => other.to_string(),
            };
            Ok(json!({"role": "tool", "tool_call_id": field("call_id"), "content": output}))
        }
        Some("reasoning") => {
            let text: String = item
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("text").and_then(Value::as_str))
                .collect();
            Ok(json!({"role": "assistant", "reasoning_content": text}))
        }
        Some("message") | None => {
            let role = item
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("a message needs a role"))?;
            Ok(json!({"role": role, "content": field("content")}))
        }
        Some(other) => Err(bad(&format!("items of type `{other}` are not supported"))),
    }
}

/// The output items of a whole answer; with `cut` (max_output_tokens ended it) its last message
/// or call is `incomplete`, as OpenAI marks it.
fn output_items(a: &Answer, ids: &ItemIds, cut: bool) -> Vec<Value> {
    let mut out = Vec::new();
    if !a.reasoning.is_empty() {
        out.push(reasoning_item(&ids.reasoning, &a.reasoning));
    }
    let calls = a.calls.len();
    if !a.content.is_empty() || calls == 0 {
        out.push(message_item(
            &ids.message,
            &a.content,
            status(cut && calls == 0),
        ));
    }
    for (i, (id, name, args)) in a.calls.iter().enumerate() {
        out.push(call_item(id, name, args, status(cut && i + 1 == calls)));
    }
    out
}

/// An output item's status: `incomplete` for the one max_output_tokens cut off.
fn status(cut: bool) -> &'static str {
    if cut { "incomplete" } else { "completed" }
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [],
           "content": [{"type": "reasoning_text", "text": text}]})
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "role": "assistant", "status": status,
           "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn call_item(call_id: &str, name: &str, args: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
           "name": name, "arguments": args, "status": status})
}

struct ItemIds {
    reasoning: String,
    message: String,
}

/// What names a response: its id, creation time and model.
struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    /// The response object around `output`; `fin`: how the answer ended and its prompt's tokens.
    fn response(&self, output: Vec<Value>, fin: Option<(&Finish, u32)>) -> Value {
        let (status, incomplete, usage) = match fin {
            None => ("in_progress", Value::Null, Value::Null),
            Some((f, prompt)) => (
                if f.reason == "length" {
                    "incomplete"
                } else {
                    "completed"
                },
                if f.reason == "length" {
                    json!({"reason": "max_output_tokens"})
                } else {
                    Value::Null
                },
                json!({"input_tokens": prompt, "output_tokens": f.generated,
                       "total_tokens": prompt + f.generated,
                       "input_tokens_details": {"cached_tokens": f.cached},
                       "output_tokens_details": {"reasoning_tokens": 0}}),
            ),
        };
        json!({"id": self.id, "object": "response", "created_at": self.created,
               "model": self.model, "status": status, "incomplete_details": incomplete,
               "output": output, "usage": usage})
    }
}

pub async fn responses(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let r = st.ready()?;
    let b: ResponsesBody = parse(body)?;
    if b.previous_response_id.is_some() {
        return Err(ApiError::param(
            "previous_response_id",
            "responses are not stored: send the whole conversation as input",
        ));
    }
    let mut chat = to_chat(&b)?;
    let forced = apply_tool_choice(&mut chat, b.tool_choice.as_ref())?;
    let common = Common {
        model: b.model.clone(),
        max_tokens: b.max_output_tokens,
        temperature: b.temperature,
        top_p: b.top_p,
        stream: b.stream,
        ..Default::default()
    };
    let runs = start_chat(r, &chat, &common, forced)
        .await
        .map_err(|mut e| {
            // The chat fields' names as this endpoint's body spells them, in the message too.
            const NAMES: [(&str, &str); 4] = [
                ("messages", "input"),
                ("reasoning_effort", "reasoning.effort"),
                ("response_format", "text.format"),
                ("max_tokens", "max_output_tokens"),
            ];
            if let Some(&(chat, own)) = NAMES
                .iter()
                .find(|(chat, _)| e.param.as_deref() == Some(*chat))
            {
                e.param = Some(own.into());
                e.message = e.message.replace(chat, own);
            }
            e
        })?;
    let Some(run) = runs.into_iter().next_back() else {
        return Err(ApiError::bad("nothing to answer"));
    };
    let head = Head {
        id: new_id("resp_"),
        created: now(),
        model: r.model_name.clone(),
    };
    let ids = ItemIds {
        reasoning: new_id("rs_"),
        message: new_id("msg_"),
    };
    if !b.stream {
        let prompt = run.prompt_tokens;
        let (answer, finish) = whole_answer(run, &r.tokenizer).await?;
        let output = output_items(&answer, &ids, finish.reason == "length");
        return Ok(Json(head.response(output, Some((&finish, prompt)))).into_response());
    }
    Ok(streamed(r, run, head, ids))
}

/// The answer as typed server-sent events: `response.created` and `.in_progress`, each output
/// item's added / delta / done events as the deltas arrive, then `response.completed` (or
/// `.incomplete` at max_output_tokens) with the whole response.
fn streamed(r: &Ready, run: ChatRun, head: Head, ids: ItemIds) -> axum::response::Response {
    let tok = r.tokenizer.clone();
    let prompt = run.prompt_tokens;
    sse(move |tx| async move {
        let mut seq = 0u64;
        let mut send = |kind: &str, mut data: Value| {
            data["type"] = json!(kind);
            data["sequence_number"] = json!(seq);
            seq += 1;
            tx.send(Ok(Sse::default().event(kind).data(data.to_string())))
                .is_ok()
        };
        let started = json!({"response": head.response(vec![], None)});
        if !send("response.created", started.clone()) || !send("response.in_progress", started) {
            return;
        }
        let mut answer = Answer::default();
        let mut items = ItemStream::default();
        let mut events = Vec::new();
        let ended = drive_chat(run, &tok, |d, scored| {
            items.events(&d, &answer, &ids, &mut events);
            answer.add(d, scored);
            events.drain(..).all(|(k, v)| send(&k, v))
        })
        .await;
        match ended {
            Ok(Some(finish)) => {
                let cut = finish.reason == "length";
                if !items
                    .finish(&answer, &ids, cut)
                    .into_iter()
                    .all(|(k, v)| send(&k, v))
                {
                    return;
                }
                let output = output_items(&answer, &ids, cut);
                let done = head.response(output, Some((&finish, prompt)));
                let kind = if cut {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                send(kind, json!({"response": done}));
            }
            Ok(None) => {}
            Err(m) => {
                let _ = tx.send(Ok(Sse::default().event("error").data(error_event(m))));
            }
        }
    })
}

/// The output items of a streamed answer as its deltas arrive: the item being written (its
/// output index and kind), how many have been added, and whether the message has been.
#[derive(Default)]
struct ItemStream {
    open: Option<(usize, &'static str)>,
    added: usize,
    message_streamed: bool,
}

impl ItemStream {
    /// The events for delta `d` onto `events`, given the answer so far (before `d`): when `d`
    /// starts another item, the open one's closing events and the new one's added events; then
    /// `d`'s delta.
    fn events(
        &mut self,
        d: &ChatDelta,
        answer: &Answer,
        ids: &ItemIds,
        events: &mut Vec<(String, Value)>,
    ) {
        let kind = match d {
            ChatDelta::Reasoning(_) => "reasoning",
            ChatDelta::Content(_) => "message",
            ChatDelta::ToolStart { .. } | ChatDelta::ToolArgs { .. } => "function_call",
        };
        let starts =
            matches!(d, ChatDelta::ToolStart { .. }) || self.open.map(|o| o.1) != Some(kind);
        if starts {
            if let Some((index, k)) = self.open {
                events.extend(close_item(index, k, answer, ids, false));
            }
            let added = |item: Value| {
                (
                    "response.output_item.added".to_string(),
                    json!({"output_index": self.added, "item": item}),
                )
            };
            match d {
                ChatDelta::Reasoning(_) => events.push(added(json!({"type": "reasoning",
                    "id": ids.reasoning, "summary": [], "content": []}))),
                ChatDelta::Content(_) => {
                    self.message_streamed = true;
                    events.extend(open_message(self.added, ids));
                }
                ChatDelta::ToolStart { id, name, .. } => {
                    events.push(added(call_item(id, name, "", "in_progress")))
                }
                ChatDelta::ToolArgs { .. } => {}
            }
            self.open = Some((self.added, kind));
            self.added += 1;
        }
        let index = self.open.map_or(0, |o| o.0);
        let delta = |item_id: &str, text: &str| {
            json!({"item_id": item_id, "output_index": index, "content_index": 0,
                   "delta": text})
        };
        match d {
            ChatDelta::Reasoning(t) => events.push((
                "response.reasoning_text.delta".into(),
                delta(&ids.reasoning, t),
            )),
            ChatDelta::Content(t) => {
                events.push(("response.output_text.delta".into(), delta(&ids.message, t)))
            }
            ChatDelta::ToolArgs { index: c, args } => {
                let item_id = format!("fc_{}", answer.calls[*c].0);
                events.push((
                    "response.function_call_arguments.delta".into(),
                    json!({"item_id": item_id, "output_index": index, "delta": args}),
                ));
            }
            ChatDelta::ToolStart { .. } => {}
        }
    }

    /// The events that end the items once the whole answer is in: the open item's closing
    /// events, and an answer with neither text nor calls still has its (empty) message, as the
    /// response lists it. `cut`: the answer stopped at max_output_tokens.
    fn finish(&self, answer: &Answer, ids: &ItemIds, cut: bool) -> Vec<(String, Value)> {
        let mut events = Vec::new();
        if let Some((index, k)) = self.open {
            events.extend(close_item(index, k, answer, ids, cut));
        }
        if !self.message_streamed && answer.calls.is_empty() {
            events.extend(open_message(self.added, ids));
            events.extend(close_item(self.added, "message", answer, ids, cut));
        }
        events
    }
}

/// The events that open the message item at output `index`: the item, then its text part.
fn open_message(index: usize, ids: &ItemIds) -> [(String, Value); 2] {
    let item = json!({"type": "message", "id": ids.message, "role": "assistant",
                      "status": "in_progress", "content": []});
    [
        (
            "response.output_item.added".into(),
            json!({"output_index": index, "item": item}),
        ),
        (
            "response.content_part.added".into(),
            json!({"item_id": ids.message, "output_index": index, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ]
}

/// The events that close the item at `index` (reasoning, message or function call): its text's
/// or arguments' `done` (and the message's part's), then the item's; `cut`: the answer ended in
/// it at max_output_tokens.
fn close_item(
    index: usize,
    kind: &str,
    a: &Answer,
    ids: &ItemIds,
    cut: bool,
) -> Vec<(String, Value)> {
    let at = |id: &str| json!({"item_id": id, "output_index": index});
    let mut events = Vec::new();
    let item = match kind {
        "reasoning" => {
            let mut e = at(&ids.reasoning);
            e["content_index"] = json!(0);
            e["text"] = json!(a.reasoning);
            events.push(("response.reasoning_text.done".to_string(), e));
            reasoning_item(&ids.reasoning, &a.reasoning)
        }
        "message" => {
            let mut e = at(&ids.message);
            e["content_index"] = json!(0);
            let mut part = e.clone();
            e["text"] = json!(a.content);
            part["part"] = json!({"type": "output_text", "text": a.content, "annotations": []});
            events.push(("response.output_text.done".to_string(), e));
            events.push(("response.content_part.done".to_string(), part));
            message_item(&ids.message, &a.content, status(cut))
        }
        _ => match a.calls.last() {
            Some((id, name, args)) => {
                let mut e = at(&format!("fc_{id}"));
                e["arguments"] = json!(args);
                events.push(("response.function_call_arguments.done".to_string(), e));
                call_item(id, name, args, status(cut))
            }
            None => json!({}),
        },
    };
    events.push((
        "response.output_item.done".into(),
        json!({"output_index": index, "item": item}),
    ));
    events
}
