//! `POST /v1/chat/completions`: a chat rendered in the Harmony format, its answer as one message
//! (reasoning, content, tool calls) or as streamed deltas.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::answer::{
    Answer, Finish, drive_chat, failed, start_chat, stream_choices, usage, whole_answer,
};
use super::error::{ApiError, ApiResult};
use super::logprobs;
use super::request::{Body, Common, apply_tool_choice, new_id, now, parse, part_error};
use super::stream::ChatDelta;
use crate::chat::ChatRequest;

#[derive(Deserialize)]
struct ChatBody {
    #[serde(flatten)]
    common: Common,
    #[serde(flatten)]
    chat: ChatRequest,
    tool_choice: Option<Value>,
}

impl Body for ChatBody {
    fn locate(v: &Value) -> Option<ApiError> {
        part_error::<Common>(v).or_else(|| part_error::<ChatRequest>(v))
    }
}

/// The message of a whole chat answer.
fn chat_message(answer: Answer) -> Value {
    let tool_calls: Vec<Value> = answer
        .calls
        .iter()
        .map(|(id, name, args)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
        })
        .collect();
    let Answer {
        reasoning, content, ..
    } = answer;
    let mut message = json!({
        "role": "assistant",
        "content": (!content.is_empty() || tool_calls.is_empty()).then_some(content),
        "reasoning_content": (!reasoning.is_empty()).then_some(reasoning),
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    message
}

/// A chat stream's delta for one answer piece.
fn chat_delta(d: ChatDelta) -> Value {
    match d {
        ChatDelta::Reasoning(t) => json!({"reasoning_content": t}),
        ChatDelta::Content(t) => json!({"content": t}),
        ChatDelta::ToolStart { index, id, name } => json!({"tool_calls": [{
            "index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""}}]}),
        ChatDelta::ToolArgs { index, args } => {
            json!({"tool_calls": [{"index": index, "function": {"arguments": args}}]})
        }
    }
}

pub async fn chat(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let r = st.ready()?;
    let b: ChatBody = parse(body)?;
    let mut chat = b.chat;
    let forced = apply_tool_choice(&mut chat, b.tool_choice.as_ref())?;
    let runs = start_chat(r, &chat, &b.common, forced).await?;
    let prompt_tokens = runs[0].prompt_tokens;
    let (id, created, model) = (new_id("chatcmpl-"), now(), r.model_name.clone());
    let with_logprobs = b.common.logprobs_asked()?.is_some();
    if !b.common.stream {
        let mut choices = Vec::new();
        let mut total = Finish::default();
        // Every choice runs in the same batch; their answers are read in order.
        let tasks: Vec<_> = runs
            .into_iter()
            .map(|run| {
                let tok = r.tokenizer.clone();
                tokio::spawn(async move { whole_answer(run, &tok).await })
            })
            .collect();
        for (index, t) in tasks.into_iter().enumerate() {
            let (answer, finish) = t.await.map_err(|e| failed(e.to_string()))??;
            total.add(&finish);
            let lp = with_logprobs.then(|| logprobs::chat(&r.tokenizer, &answer.scored));
            choices.push(json!({"index": index, "message": chat_message(answer),
                                "finish_reason": finish.reason, "logprobs": lp}));
        }
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage(prompt_tokens, &total),
        }))
        .into_response());
    }
    // Streaming: per choice a role delta, then pieces as tokens come and its finish chunk; the
    // usage chunk when asked, then [DONE]. Every chunk, the usage chunk too, carries the
    // stream's id, object, time and model.
    let tok = r.tokenizer.clone();
    let head =
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model});
    let usage_of = b.common.include_usage().then_some(prompt_tokens);
    Ok(stream_choices(
        runs,
        head,
        json!({"delta": {}}),
        usage_of,
        move |run, out| {
            let tok = tok.clone();
            async move {
                if !out.send(
                    json!({"delta": {"role": "assistant", "content": ""}}),
                    None,
                    None,
                ) {
                    return Ok(None);
                }
                drive_chat(run, &tok, |d, scored| {
                    // A content delta carries the log-probabilities of its tokens.
                    let lp = (with_logprobs && matches!(d, ChatDelta::Content(_)))
                        .then(|| logprobs::chat(&tok, &std::mem::take(scored)));
                    out.send(json!({ "delta": chat_delta(d) }), None, lp)
                })
                .await
            }
        },
    ))
}
