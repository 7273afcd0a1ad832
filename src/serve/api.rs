//! The endpoints, shaped as vLLM answers them for gpt-oss: request bodies, validation, and the
//! JSON or server-sent events that come back.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::driver::{Refused, Update};
use super::error::ApiError;
use super::logprobs::{self, Scored};
use super::stream::{ChatDelta, ChatStream, Sink, TextStream};
use super::{AppState, Ready};
use crate::chat::harmony::{Harmony, Specials};
use crate::chat::openai::today;
use crate::chat::{ChatRequest, StopText};
use crate::engine::{Event, FinishReason, MAX_TOP_LOGPROBS, Request, Sampling};

pub(super) type ApiResult = Result<Response, ApiError>;

/// `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
pub(super) struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Most choices one request may ask for.
const MAX_N: i64 = 16;

/// The sampling and length fields chat, completions and responses share.
#[derive(Deserialize, Default)]
pub(super) struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<StopSpec>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Chat: true or false (with `top_logprobs`); completions: how many alternatives.
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    /// vLLM's extension: keep generating past end-of-sequence (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Token id (as a string) -> a bias from -100 to 100 added to its logit.
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// From -2 to 2 (OpenAI's range; the engine applies them).
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(flatten)]
    common: Common,
    #[serde(flatten)]
    chat: ChatRequest,
    tool_choice: Option<Value>,
}

/// `prompt`: a text, token ids, or a list of either (one answer each).
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// Most prompts one completions request may list.
const MAX_PROMPTS: usize = 64;

#[derive(Deserialize)]
struct CompletionBody {
    #[serde(flatten)]
    common: Common,
    prompt: PromptSpec,
    #[serde(default)]
    echo: bool,
}

/// The body as JSON of type T, with 400/413 for what is not.
pub(super) fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("the body must be a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("invalid request: {e}")))
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A short random-looking id, e.g. for `chatcmpl-...` and tool calls.
pub(super) fn new_id(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = n ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    format!("{prefix}{x:016x}")
}

impl Common {
    /// The engine request for `prompt` (from the request's field `source`: `messages` or
    /// `prompt`), checked against the model.
    fn request(
        &self,
        r: &Ready,
        source: &'static str,
        prompt: Vec<u32>,
        stop_ids: Vec<u32>,
    ) -> Result<Request, ApiError> {
        if let Some(m) = &self.model
            && *m != r.model_name
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("The model `{m}` does not exist."),
            ));
        }
        if self.n.is_some_and(|n| !(1..=MAX_N).contains(&n)) {
            return Err(ApiError::param(
                "n",
                format!("n must be between 1 and {MAX_N}"),
            ));
        }
        let logprobs = self.logprobs_asked()?;
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(ApiError::param(
                "temperature",
                "temperature must be a number >= 0",
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
                return Err(ApiError::param(
                    name,
                    format!("{name} must be a number from -2 to 2"),
                ));
            }
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::param("top_p", "top_p must be in (0, 1]"));
        }
        let top_k = match self.top_k.unwrap_or(0) {
            -1 | 0 => 0,
            k if k >= 1 && k <= u32::MAX as i64 => k as u32,
            _ => return Err(ApiError::param("top_k", "top_k must be -1, 0 or positive")),
        };
        let ctx = r.max_model_len as usize;
        if prompt.len() >= ctx {
            return Err(ApiError::param(
                source,
                format!(
                    "This model's maximum context length is {ctx} tokens; the prompt has {} tokens.",
                    prompt.len()
                ),
            ));
        }
        let room = (ctx - prompt.len()) as i64;
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => room,
            Some(m) if m < 1 => {
                return Err(ApiError::param(
                    "max_tokens",
                    "max_tokens must be at least 1",
                ));
            }
            Some(m) if m > room => {
                return Err(ApiError::param(
                    "max_tokens",
                    format!(
                        "This model's maximum context length is {ctx} tokens; the prompt has {} \
                         tokens and max_tokens asks for {m} more.",
                        prompt.len()
                    ),
                ));
            }
            Some(m) => m,
        };
        Ok(Request {
            prompt,
            max_tokens: max_tokens as u32,
            sampling: Sampling {
                temperature,
                top_p,
                top_k,
                seed: self.seed.unwrap_or_else(|| now() ^ 0x5eed),
                presence_penalty: self.presence_penalty.unwrap_or(0.0),
                frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            },
            stop: stop_ids,
            ignore_eos: self.ignore_eos,
            logprobs,
            logit_bias: self.logit_bias()?,
        })
    }

    /// logit_bias as (token, bias) pairs, keys read as token ids and values as numbers; the
    /// engine checks them (`check_request`: the vocabulary, -100 to 100, at most 300, distinct).
    fn logit_bias(&self) -> Result<Vec<(u32, f32)>, ApiError> {
        let Some(map) = &self.logit_bias else {
            return Ok(Vec::new());
        };
        map.iter()
            .map(|(k, v)| match (k.parse::<u32>(), v.as_f64()) {
                (Ok(t), Some(b)) => Ok((t, b as f32)),
                _ => Err(ApiError::param(
                    "logit_bias",
                    format!("logit_bias maps token ids to numbers; `{k}`: {v} is not that"),
                )),
            })
            .collect()
    }

    /// How many alternatives each token's log-probability comes with, when asked: chat's
    /// `logprobs: true` with `top_logprobs: N`, or completions' `logprobs: N`.
    fn logprobs_asked(&self) -> Result<Option<u32>, ApiError> {
        let count = |name: &'static str, v: &Value| match v.as_u64() {
            Some(n) if n <= MAX_TOP_LOGPROBS as u64 => Ok(n as u32),
            _ => Err(ApiError::param(
                name,
                format!("{name} must be an integer from 0 to {MAX_TOP_LOGPROBS}"),
            )),
        };
        let top = match &self.top_logprobs {
            None | Some(Value::Null) => None,
            Some(v) => Some(count("top_logprobs", v)?),
        };
        match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => match top {
                Some(n) if n > 0 => Err(ApiError::param(
                    "top_logprobs",
                    "top_logprobs needs logprobs set to true",
                )),
                _ => Ok(None),
            },
            Some(Value::Bool(true)) => Ok(Some(top.unwrap_or(0))),
            Some(v) if top.is_none() => count("logprobs", v).map(Some),
            Some(_) => Err(ApiError::param(
                "logprobs",
                "logprobs must be true or false when top_logprobs is given",
            )),
        }
    }

    fn stop_text(&self) -> Result<StopText, ApiError> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(StopSpec::One(s)) => vec![s.clone()],
            Some(StopSpec::Many(v)) => v.clone(),
        };
        StopText::new(stops).map_err(|e| ApiError::param("stop", e.to_string()))
    }

    /// The request for each of the `n` choices: seeds seed, seed + 1, ... so that choices differ
    /// when sampling and a seed replays all of them.
    fn choices(&self, req: Request) -> Vec<Request> {
        let n = self.n.unwrap_or(1).max(1) as u64;
        (0..n)
            .map(|i| {
                let mut r = req.clone();
                r.sampling.seed = r.sampling.seed.wrapping_add(i);
                r
            })
            .collect()
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

async fn submit(r: &Ready, req: Request) -> Result<mpsc::UnboundedReceiver<Update>, ApiError> {
    match r.driver.submit(req).await {
        Ok((_, rx)) => Ok(rx),
        Err(Refused::Invalid(m)) => Err(ApiError::bad(m)),
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

fn usage(prompt: u32, f: &Finish) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": f.generated,
        "total_tokens": prompt + f.generated,
        "prompt_tokens_details": {"cached_tokens": f.cached},
    })
}

/// Applies `tool_choice` to the tools: auto leaves the choice to the model, none drops the
/// tools; required and a named function return the header the answer is made to start with
/// (a message to `functions` or `functions.NAME`), so that a call is certain. A forced call
/// skips the reasoning that would come before it.
pub(super) fn apply_tool_choice(
    chat: &mut ChatRequest,
    choice: Option<&Value>,
) -> Result<Option<String>, ApiError> {
    let has_tools = chat.tools.as_ref().is_some_and(|t| !t.is_empty());
    match choice {
        None => Ok(None),
        Some(Value::String(s)) if s == "auto" => Ok(None),
        Some(Value::String(s)) if s == "none" => {
            chat.tools = None;
            Ok(None)
        }
        Some(Value::String(s)) if s == "required" => {
            if !has_tools {
                return Err(ApiError::param(
                    "tool_choice",
                    "tool_choice `required` needs at least one tool",
                ));
            }
            // Up to `functions`: the dot starts the name's first token (`.get`, ...) as the
            // model saw it in training.
            Ok(Some("<|channel|>commentary to=functions".into()))
        }
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::param("tool_choice", "tool_choice names no function"))?;
            let known = chat.tools.iter().flatten().any(|t| t.function.name == name);
            if !known {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("tool_choice names `{name}`, which is not among the tools"),
                ));
            }
            Ok(Some(format!(
                "<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
            )))
        }
        Some(_) => Err(ApiError::param(
            "tool_choice",
            "tool_choice must be auto, none, required or a named function",
        )),
    }
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
    let msgs = chat
        .to_harmony(&today())
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let mut prompt = h
        .render_for_completion(&msgs)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let forced = match forced {
        Some(text) => tok.encode(&text).map_err(|e| failed(e.to_string()))?,
        None => Vec::new(),
    };
    prompt.extend(&forced);
    let req = common.request(r, "messages", prompt, h.stop_ids().to_vec())?;
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
    fn none() -> Finish {
        Finish {
            reason: "length",
            ..Default::default()
        }
    }

    /// Several choices' answers counted together.
    fn add(&mut self, other: &Finish) {
        self.generated += other.generated;
        self.cached = self.cached.max(other.cached);
    }
}

/// Feeds a request's tokens through its sink until it ends, handing each piece of the answer to
/// `emit` (which returns false when nobody listens any more: then None) with the scored tokens
/// not yet reported, for it to take. Leaving drops the updates, which cancels a generation that
/// a stop string ended early.
pub(super) async fn drive<S: Sink>(
    mut rx: mpsc::UnboundedReceiver<Update>,
    mut out: S,
    tok: &crate::tokenizer::Tokenizer,
    mut emit: impl FnMut(S::Piece, &mut Vec<Scored>) -> bool,
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
    if out.stopped() {
        finish.reason = "stop";
    } else if out.tool_calls() > 0 {
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
    drive(run.rx, out, tok, emit).await
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
    // usage chunk when asked, then [DONE].
    let include_usage = b.common.include_usage();
    let tok = r.tokenizer.clone();
    // Every chunk, the usage chunk too, carries the stream's id, object, time and model.
    let head =
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model});
    let usage_head = head.clone();
    Ok(sse(move |tx| async move {
        let chunk = move |index: usize, delta: Value, finish: Option<&str>, lp: Option<Value>| {
            let mut c = head.clone();
            c["choices"] =
                json!([{"index": index, "delta": delta, "finish_reason": finish, "logprobs": lp}]);
            Ok(Sse::default().data(c.to_string()))
        };
        let tasks: Vec<_> = runs
            .into_iter()
            .enumerate()
            .map(|(index, run)| {
                let (tx, tok, chunk) = (tx.clone(), tok.clone(), chunk.clone());
                tokio::spawn(async move {
                    let send = |e| tx.send(e).is_ok();
                    if !send(chunk(
                        index,
                        json!({"role": "assistant", "content": ""}),
                        None,
                        None,
                    )) {
                        return Ok(None);
                    }
                    let finish = drive_chat(run, &tok, |d, scored| {
                        // A content delta carries the log-probabilities of its tokens.
                        let lp = (with_logprobs && matches!(d, ChatDelta::Content(_)))
                            .then(|| logprobs::chat(&tok, &std::mem::take(scored)));
                        send(chunk(index, chat_delta(d), None, lp))
                    })
                    .await;
                    if let Ok(Some(f)) = &finish {
                        send(chunk(index, json!({}), Some(f.reason), None));
                    }
                    finish
                })
            })
            .collect();
        end_stream(
            &tx,
            tasks,
            include_usage.then_some((usage_head, prompt_tokens)),
        )
        .await;
    }))
}

/// A choice's stream task: its finish, None when the client left, or the failed pass's message.
type ChoiceTask = tokio::task::JoinHandle<Result<Option<Finish>, String>>;

/// Waits for every choice's stream, then sends the usage chunk when asked (`usage_chunk`: the
/// chunks' head, which it carries with no choices, and the prompt's tokens) and `[DONE]`; a
/// failed pass ends the stream with an error event instead, a client that left with nothing.
async fn end_stream(
    tx: &mpsc::UnboundedSender<Result<Sse, Infallible>>,
    tasks: Vec<ChoiceTask>,
    usage_chunk: Option<(Value, u32)>,
) {
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
    if let Some((mut chunk, prompt_tokens)) = usage_chunk {
        chunk["choices"] = json!([]);
        chunk["usage"] = usage(prompt_tokens, &total);
        let _ = tx.send(Ok(Sse::default().data(chunk.to_string())));
    }
    let _ = tx.send(Ok(Sse::default().data("[DONE]")));
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

pub async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let r = st.ready()?;
    let b: CompletionBody = parse(body)?;
    let tok = r.tokenizer.as_ref();
    let decode = |ids: Vec<u32>| {
        let text = tok
            .decode(&ids)
            .map_err(|e| ApiError::param("prompt", e.to_string()))?;
        Ok::<_, ApiError>((ids, text))
    };
    let prompts: Vec<(Vec<u32>, String)> = match b.prompt {
        PromptSpec::Text(t) => vec![(encode(r, &t)?, t)],
        PromptSpec::Texts(v) => v
            .into_iter()
            .map(|t| Ok((encode(r, &t)?, t)))
            .collect::<Result<_, ApiError>>()?,
        PromptSpec::Ids(ids) => vec![decode(ids)?],
        PromptSpec::IdLists(v) => v.into_iter().map(decode).collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(ApiError::param(
            "prompt",
            format!("give from 1 to {MAX_PROMPTS} prompts"),
        ));
    }
    // Every prompt checked before any is queued; then one request per prompt and choice (`n`),
    // each choice with its own seed, all in the same batch. Choice i * n + j is prompt i's
    // j-th answer.
    let mut reqs = Vec::new();
    let mut prompt_tokens = 0;
    for (ids, text) in prompts {
        if ids.is_empty() {
            return Err(ApiError::param("prompt", "the prompt is empty"));
        }
        let req = b.common.request(r, "prompt", ids, Vec::new())?;
        prompt_tokens += req.prompt.len() as u32;
        let echo = if b.echo { text } else { String::new() };
        reqs.extend(b.common.choices(req).into_iter().map(|q| (q, echo.clone())));
    }
    let with_logprobs = reqs[0].0.logprobs.is_some();
    if with_logprobs && b.echo {
        return Err(ApiError::param(
            "echo",
            "log-probabilities of an echoed prompt are not supported; drop echo or logprobs",
        ));
    }
    let stop = b.common.stop_text()?;
    let mut runs = Vec::new();
    for (req, echo) in reqs {
        runs.push((submit(r, req).await?, TextStream::new(stop.clone()), echo));
    }
    let (id, created, model) = (new_id("cmpl-"), now(), r.model_name.clone());
    if !b.common.stream {
        let tasks: Vec<_> = runs
            .into_iter()
            .map(|(rx, out, mut text)| {
                let tok = r.tokenizer.clone();
                tokio::spawn(async move {
                    let mut all = Vec::new();
                    let finish = drive(rx, out, &tok, |t, scored| {
                        text.push_str(&t);
                        all.append(scored);
                        true
                    })
                    .await
                    .map_err(failed)?
                    .unwrap_or_else(Finish::none);
                    let lp = with_logprobs.then(|| logprobs::text_completion(&tok, &all, &mut 0));
                    Ok::<_, ApiError>((text, finish, lp))
                })
            })
            .collect();
        let (mut choices, mut total) = (Vec::new(), Finish::default());
        for (index, t) in tasks.into_iter().enumerate() {
            let (text, finish, lp) = t.await.map_err(|e| failed(e.to_string()))??;
            total.add(&finish);
            choices.push(
                json!({"index": index, "text": text, "finish_reason": finish.reason,
                                "logprobs": lp}),
            );
        }
        return Ok(Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage(prompt_tokens, &total),
        }))
        .into_response());
    }
    // Streaming: per choice its pieces (the echo first) and its finish chunk, tagged with its
    // index; the usage chunk when asked, then [DONE].
    let include_usage = b.common.include_usage();
    let tok = r.tokenizer.clone();
    let head = json!({"id": id, "object": "text_completion", "created": created, "model": model});
    let usage_head = head.clone();
    Ok(sse(move |tx| async move {
        let chunk = move |index: usize, text: String, finish: Option<&str>, lp: Option<Value>| {
            let mut c = head.clone();
            c["choices"] =
                json!([{"index": index, "text": text, "finish_reason": finish, "logprobs": lp}]);
            Ok(Sse::default().data(c.to_string()))
        };
        let tasks: Vec<_> = runs
            .into_iter()
            .enumerate()
            .map(|(index, (rx, out, echo))| {
                let (tx, tok, chunk) = (tx.clone(), tok.clone(), chunk.clone());
                tokio::spawn(async move {
                    let send = |e| tx.send(e).is_ok();
                    if !echo.is_empty() && !send(chunk(index, echo, None, None)) {
                        return Ok(None);
                    }
                    let mut offset = 0;
                    let finish = drive(rx, out, &tok, |t, scored| {
                        let lp = with_logprobs.then(|| {
                            logprobs::text_completion(&tok, &std::mem::take(scored), &mut offset)
                        });
                        send(chunk(index, t, None, lp))
                    })
                    .await;
                    if let Ok(Some(f)) = &finish {
                        send(chunk(index, String::new(), Some(f.reason), None));
                    }
                    finish
                })
            })
            .collect();
        end_stream(
            &tx,
            tasks,
            include_usage.then_some((usage_head, prompt_tokens)),
        )
        .await;
    }))
}

/// Plain text as the model reads it (special-token text stays text).
fn encode(r: &Ready, text: &str) -> Result<Vec<u32>, ApiError> {
    r.tokenizer
        .encode_ordinary(text)
        .map_err(|e| ApiError::param("prompt", e.to_string()))
}

#[derive(Deserialize)]
struct TokenizeBody {
    prompt: Option<String>,
    #[serde(flatten)]
    chat: Option<ChatRequest>,
}

/// `{"prompt": text}` or a chat request's `messages` (rendered as `render` does, ready for the
/// assistant's answer).
pub async fn tokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let r = st.ready()?;
    let b: TokenizeBody = parse(body)?;
    let tokens = match (b.prompt, b.chat) {
        (Some(p), _) => encode(r, &p)?,
        (None, Some(chat)) => {
            let h = Harmony::new(&r.tokenizer).map_err(|e| ApiError::bad(e.to_string()))?;
            let msgs = chat
                .to_harmony(&today())
                .map_err(|e| ApiError::bad(e.to_string()))?;
            h.render_for_completion(&msgs)
                .map_err(|e| ApiError::bad(e.to_string()))?
        }
        (None, None) => return Err(ApiError::bad("give `prompt` or `messages`")),
    };
    Ok(
        Json(json!({"count": tokens.len(), "max_model_len": r.max_model_len, "tokens": tokens}))
            .into_response(),
    )
}

#[derive(Deserialize)]
struct DetokenizeBody {
    tokens: Vec<u32>,
}

pub async fn detokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let r = st.ready()?;
    let b: DetokenizeBody = parse(body)?;
    r.tokenizer
        .check_known(&b.tokens)
        .map_err(|e| ApiError::param("tokens", e.to_string()))?;
    let text = r
        .tokenizer
        .decode(&b.tokens)
        .map_err(|e| ApiError::param("tokens", e.to_string()))?;
    Ok(Json(json!({"prompt": text})).into_response())
}

pub async fn models(State(st): State<Arc<AppState>>) -> ApiResult {
    let r = st.ready()?;
    Ok(Json(json!({"object": "list", "data": [model_object(r)]})).into_response())
}

/// GET /v1/models/{id} (OpenAI's retrieve; an id may hold slashes, e.g. openai/gpt-oss-20b).
pub async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let r = st.ready()?;
    if id != r.model_name {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("The model `{id}` does not exist."),
        ));
    }
    Ok(Json(model_object(r)).into_response())
}

fn model_object(r: &Ready) -> Value {
    json!({
        "id": r.model_name, "object": "model", "created": r.created,
        "owned_by": "gpt-oss-wgpu", "root": r.model_name, "max_model_len": r.max_model_len,
    })
}

/// Prometheus text: the batch, the KV cache and prefix cache, token and request counters,
/// latency histograms.
pub async fn metrics(State(st): State<Arc<AppState>>) -> ApiResult {
    let r = st.ready()?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        r.driver.stats.render(),
    )
        .into_response())
}

pub async fn version() -> Response {
    Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}

/// 200 once the model is loaded, 503 before.
pub async fn health(State(st): State<Arc<AppState>>) -> Response {
    match st.ready() {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}
