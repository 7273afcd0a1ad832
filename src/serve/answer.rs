//! Running a generating request: queuing it (one per choice), feeding its tokens through the
//! stream that turns them into answer pieces, and ending a server-sent-event stream (usage
//! chunk, `[DONE]`, or the error event of a failed pass).

use std::convert::Infallible;

use axum::http::StatusCode;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::Ready;
use super::driver::{Refused, Update};
use super::error::ApiError;
use super::logprobs::Scored;
use super::request::{Common, new_id};
use super::stream::{ChatDelta, ChatStream, Sink};
use crate::chat::ChatRequest;
use crate::chat::harmony::{Harmony, Specials};
use crate::chat::openai::today;
use crate::engine::{Event, FinishReason, Request, TokenLogprobs};

pub(super) async fn submit(
    r: &Ready,
    req: Request,
) -> Result<mpsc::UnboundedReceiver<Update>, ApiError> {
    match r.driver.submit(req).await {
        Ok((_, rx)) => Ok(rx),
        Err(Refused::Invalid(e)) => Err(ApiError::request(e)),
        Err(Refused::Busy) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy: too many requests are waiting",
        )),
        Err(Refused::Stopped) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine has stopped",
        )),
    }
}

pub(super) fn usage(prompt: u32, f: &Finish) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": f.generated,
        "total_tokens": prompt + f.generated,
        "prompt_tokens_details": {"cached_tokens": f.cached},
    })
}

/// A chat request queued: its updates, the stream that turns tokens into answer pieces, and the
/// prompt's length.
pub(super) struct ChatRun {
    pub rx: mpsc::UnboundedReceiver<Update>,
    pub out: ChatStream,
    pub prompt_tokens: u32,
    /// The forced start of the answer (see `apply_tool_choice`), read as if generated.
    pub forced: Vec<u32>,
}

/// Renders `chat` as the Harmony prompt, followed by the `forced` start of the answer, and
/// queues one request per choice (`n`).
pub(super) async fn start_chat(
    r: &Ready,
    chat: &ChatRequest,
    common: &Common,
    forced: Option<String>,
) -> Result<Vec<ChatRun>, ApiError> {
    if chat.messages.is_empty() {
        return Err(ApiError::param("messages", "messages must not be empty"));
    }
    let tok = r.tokenizer.as_ref();
    let h = Harmony::new(tok).map_err(|e| ApiError::bad(e.to_string()))?;
    let msgs = chat.to_harmony(&today()).map_err(ApiError::request)?;
    let mut prompt = h
        .render_for_completion(&msgs)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let forced = match forced {
        Some(text) => tok.encode(&text).map_err(|e| failed(e.to_string()))?,
        None => Vec::new(),
    };
    prompt.extend(&forced);
    let req = common.request(r, "messages", prompt, h.stop_ids().to_vec(), false)?;
    let prompt_tokens = req.prompt.len() as u32;
    let specials = Specials::of(tok).map_err(|e| ApiError::bad(e.to_string()))?;
    let stop = common.stop_text()?;
    let mut runs = Vec::new();
    for req in common.choices(req) {
        let out = ChatStream::new(specials, stop.clone(), Box::new(|| new_id("call_")));
        runs.push(ChatRun {
            rx: submit(r, req).await?,
            out,
            prompt_tokens,
            forced: forced.clone(),
        });
    }
    Ok(runs)
}

/// How an answer ended: OpenAI's finish reason, the tokens generated, and the prompt tokens
/// found in the prefix cache.
#[derive(Default)]
pub(super) struct Finish {
    pub reason: &'static str,
    pub generated: u32,
    pub cached: u32,
}

impl Finish {
    /// The answer that ended before it began.
    pub(super) fn none() -> Finish {
        Finish {
            reason: "length",
            ..Default::default()
        }
    }

    /// Several choices' answers counted together.
    pub(super) fn add(&mut self, other: &Finish) {
        self.generated += other.generated;
        self.cached = self.cached.max(other.cached);
    }
}

/// Feeds a request's tokens through its sink until it ends, handing each piece of the answer to
/// `emit` (which returns false when nobody listens any more: then None) with the scored tokens
/// not yet reported, for it to take, and the prompt's log-probabilities, when the request asked
/// for them, to `prompt` (before any piece; false: nobody listens). Leaving drops the updates,
/// which cancels a generation that a stop string ended early.
pub(super) async fn drive<S: Sink>(
    mut rx: mpsc::UnboundedReceiver<Update>,
    mut out: S,
    tok: &crate::tokenizer::Tokenizer,
    mut emit: impl FnMut(S::Piece, &mut Vec<Scored>) -> bool,
    mut prompt: impl FnMut(Vec<TokenLogprobs>) -> bool,
) -> Result<Option<Finish>, String> {
    let mut finish = Finish::none();
    let mut scored = Vec::new();
    while let Some(u) = rx.recv().await {
        match u {
            Update::Event(Event::Token {
                token, logprobs, ..
            }) => {
                finish.generated += 1;
                let pieces = out.push(tok, token);
                if let Some(lp) = logprobs
                    && out.scored()
                {
                    scored.push((token, lp));
                }
                if !pieces.into_iter().all(|p| emit(p, &mut scored)) {
                    return Ok(None);
                }
                if out.stopped() {
                    break;
                }
            }
            Update::Event(Event::PromptLogprobs { logprobs, .. }) => {
                if !prompt(logprobs) {
                    return Ok(None);
                }
            }
            Update::Event(Event::Finished {
                reason,
                generated,
                cached_tokens,
                ..
            }) => {
                finish = Finish {
                    reason: reason_name(reason),
                    generated,
                    cached: cached_tokens,
                };
                break;
            }
            Update::Failed(m) => return Err(m),
        }
    }
    drop(rx);
    if !out.finish().into_iter().all(|p| emit(p, &mut scored)) {
        return Ok(None);
    }
    // A call cut off by max_tokens stays `length`: its arguments are unfinished, and the client
    // must not run it (OpenAI's rule; vLLM reported `tool_calls` there, vllm#58228).
    if out.stopped() {
        finish.reason = "stop";
    } else if out.tool_calls() > 0 && finish.reason == "stop" {
        finish.reason = "tool_calls";
    }
    Ok(Some(finish))
}

/// A chat request's tokens through its Harmony stream.
pub(super) async fn drive_chat(
    run: ChatRun,
    tok: &crate::tokenizer::Tokenizer,
    mut emit: impl FnMut(ChatDelta, &mut Vec<Scored>) -> bool,
) -> Result<Option<Finish>, String> {
    let mut out = run.out;
    for &id in &run.forced {
        if !out
            .push(tok, id)
            .into_iter()
            .all(|d| emit(d, &mut Vec::new()))
        {
            return Ok(None);
        }
    }
    drive(run.rx, out, tok, emit, |_| true).await
}

/// A chat request run to its end and folded into one answer.
pub(super) async fn whole_answer(
    run: ChatRun,
    tok: &crate::tokenizer::Tokenizer,
) -> Result<(Answer, Finish), ApiError> {
    let mut answer = Answer::default();
    let finish = drive_chat(run, tok, |d, scored| answer.add(d, scored))
        .await
        .map_err(failed)?
        .unwrap_or_else(Finish::none);
    Ok((answer, finish))
}

/// A whole answer folded from its pieces.
#[derive(Default)]
pub(super) struct Answer {
    pub reasoning: String,
    pub content: String,
    /// (id, name, arguments)
    pub calls: Vec<(String, String, String)>,
    /// The content's tokens, when log-probabilities were asked for.
    pub scored: Vec<Scored>,
}

impl Answer {
    /// Adds a piece; content takes the scored tokens it came from.
    pub fn add(&mut self, d: ChatDelta, scored: &mut Vec<Scored>) -> bool {
        match d {
            ChatDelta::Reasoning(t) => self.reasoning.push_str(&t),
            ChatDelta::Content(t) => {
                self.content.push_str(&t);
                self.scored.append(scored);
            }
            ChatDelta::ToolStart { id, name, .. } => self.calls.push((id, name, String::new())),
            ChatDelta::ToolArgs { index, args } => self.calls[index].2.push_str(&args),
        }
        true
    }
}

/// Streams server-sent events produced by `task` (which sends them into the given channel).
pub(super) fn sse<F>(
    task: impl FnOnce(mpsc::UnboundedSender<Result<Sse, Infallible>>) -> F,
) -> Response
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, events) = mpsc::unbounded_channel::<Result<Sse, Infallible>>();
    tokio::spawn(task(tx));
    axum::response::Sse::new(UnboundedReceiverStream::new(events))
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub(super) fn failed(m: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m)
}

/// Where one choice of a chat or completions stream sends its chunks: the stream's head (id,
/// object, created, model) with that one choice.
#[derive(Clone)]
pub(super) struct Chunks {
    tx: mpsc::UnboundedSender<Result<Sse, Infallible>>,
    head: Value,
    index: usize,
}

impl Chunks {
    /// Sends a chunk whose choice has `body`'s fields (its `delta`, or its `text`) beside its
    /// index, finish reason and log-probabilities; false once the client has left.
    pub fn send(&self, body: Value, finish: Option<&str>, lp: Option<Value>) -> bool {
        let mut choice = json!({"index": self.index, "finish_reason": finish, "logprobs": lp});
        if let (Some(c), Value::Object(fields)) = (choice.as_object_mut(), body) {
            c.extend(fields);
        }
        let mut chunk = self.head.clone();
        chunk["choices"] = json!([choice]);
        self.tx
            .send(Ok(Sse::default().data(chunk.to_string())))
            .is_ok()
    }
}

/// Streams every choice at once: `choice` sends a run's pieces through its `Chunks` and returns
/// how it ended (None when the client left, or the failed pass's message); then its finish
/// chunk (`finish_body` with the reason). Once all are done, the usage chunk when asked
/// (`usage_of`: the prompt's tokens; it carries the head with no choices) and `[DONE]`; a
/// failed pass ends the stream with an error event instead, a client that left with nothing.
pub(super) fn stream_choices<R, F, Fut>(
    runs: Vec<R>,
    head: Value,
    finish_body: Value,
    usage_of: Option<u32>,
    choice: F,
) -> Response
where
    R: Send + 'static,
    F: Fn(R, Chunks) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<Finish>, String>> + Send + 'static,
{
    sse(move |tx| async move {
        let tasks: Vec<_> = runs
            .into_iter()
            .enumerate()
            .map(|(index, run)| {
                let out = Chunks {
                    tx: tx.clone(),
                    head: head.clone(),
                    index,
                };
                let (body, task) = (finish_body.clone(), choice(run, out.clone()));
                tokio::spawn(async move {
                    let finish = task.await;
                    if let Ok(Some(f)) = &finish {
                        out.send(body, Some(f.reason), None);
                    }
                    finish
                })
            })
            .collect();
        let mut total = Finish::default();
        for t in tasks {
            let error = match t.await {
                Ok(Ok(Some(f))) => {
                    total.add(&f);
                    continue;
                }
                Ok(Ok(None)) => return,
                Ok(Err(m)) => m,
                Err(e) => e.to_string(),
            };
            let _ = tx.send(Ok(Sse::default().data(error_event(error))));
            return;
        }
        if let Some(prompt_tokens) = usage_of {
            let mut chunk = head;
            chunk["choices"] = json!([]);
            chunk["usage"] = usage(prompt_tokens, &total);
            let _ = tx.send(Ok(Sse::default().data(chunk.to_string())));
        }
        let _ = tx.send(Ok(Sse::default().data("[DONE]")));
    })
}

/// The event a stream ends with when the forward pass failed.
pub(super) fn error_event(m: String) -> String {
    json!({"error": {"message": m, "type": "server_error", "param": null, "code": 500}}).to_string()
}

fn reason_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}
