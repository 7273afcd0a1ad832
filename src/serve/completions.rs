//! `POST /v1/completions`: plain text (or token ids) continued, one or more prompts, with the
//! prompt echoed when asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::answer::{Finish, drive, failed, stream_choices, submit, usage};
use super::error::{ApiError, ApiResult};
use super::logprobs;
use super::request::{Body, Common, encode, new_id, now, parse, part_error};
use super::stream::TextStream;
use super::{AppState, Ready};
use crate::engine::TokenLogprobs;
use crate::tokenizer::Tokenizer;

/// `prompt`: a text, token ids, or a list of either (one answer each).
#[derive(Deserialize)]
#[serde(untagged)]
#[serde(
    expecting = "expected a string, a list of strings, a list of token ids or a list of such lists"
)]
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
    /// Refused unless empty (no fill-in-the-middle).
    suffix: Option<String>,
    /// Refused unless it equals `n` (no ranking of extra samples).
    best_of: Option<i64>,
}

impl Body for CompletionBody {
    fn locate(v: &Value) -> Option<ApiError> {
        part_error::<Common>(v)
    }
}

pub async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let r = st.ready()?;
    let b: CompletionBody = parse(body)?;
    if b.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::param("suffix", "suffix is not supported"));
    }
    if b.best_of.is_some_and(|k| k != b.common.n.unwrap_or(1)) {
        return Err(ApiError::param(
            "best_of",
            "best_of other than n is not supported (choices are not ranked)",
        ));
    }
    let prompts = prompts(r, b.prompt)?;
    // Every prompt checked before any is queued; then one request per prompt and choice (`n`),
    // each choice with its own seed, all in the same batch. Choice i * n + j is prompt i's
    // j-th answer.
    let mut reqs = Vec::new();
    let mut prompt_tokens = 0;
    for (ids, text) in prompts {
        if ids.is_empty() {
            return Err(ApiError::param("prompt", "the prompt is empty"));
        }
        let req = b.common.request(r, "prompt", ids, Vec::new(), b.echo)?;
        prompt_tokens += req.prompt.len() as u32;
        let echo = b.echo.then(|| (text, req.prompt.clone()));
        reqs.extend(b.common.choices(req).into_iter().map(|q| (q, echo.clone())));
    }
    let with_logprobs = reqs[0].0.logprobs.is_some();
    let stop = b.common.stop_text()?;
    let mut runs = Vec::new();
    for (req, echo) in reqs {
        runs.push((submit(r, req).await?, TextStream::new(stop.clone()), echo));
    }
    let head = json!({"id": new_id("cmpl-"), "object": "text_completion", "created": now(),
                      "model": r.model_name.clone()});
    if b.common.stream {
        let usage_of = b.common.include_usage().then_some(prompt_tokens);
        Ok(streamed(r, runs, head, usage_of, with_logprobs))
    } else {
        whole(r, runs, head, prompt_tokens, with_logprobs).await
    }
}

/// A choice's run: its engine updates, its text stream, and the prompt (text and ids) to echo.
type Run = (
    tokio::sync::mpsc::UnboundedReceiver<super::driver::Update>,
    TextStream,
    Option<(String, Vec<u32>)>,
);

/// The prompts of the request as (ids, text): texts are encoded, ids decoded (for the echo).
fn prompts(r: &Ready, prompt: PromptSpec) -> Result<Vec<(Vec<u32>, String)>, ApiError> {
    let tok = r.tokenizer.as_ref();
    let decode = |ids: Vec<u32>| {
        let text = tok
            .decode(&ids)
            .map_err(|e| ApiError::param("prompt", e.to_string()))?;
        Ok::<_, ApiError>((ids, text))
    };
    let prompts: Vec<(Vec<u32>, String)> = match prompt {
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
    Ok(prompts)
}

/// The whole answer once every choice has finished (`head` gives id, object, created, model).
async fn whole(
    r: &Ready,
    runs: Vec<Run>,
    head: Value,
    prompt_tokens: u32,
    with_logprobs: bool,
) -> ApiResult {
    let tasks: Vec<_> = runs
        .into_iter()
        .map(|(rx, out, echo)| {
            let tok = r.tokenizer.clone();
            tokio::spawn(async move {
                let (mut text, ids) = echo.unwrap_or_default();
                let (mut all, mut scores) = (Vec::new(), Vec::new());
                let finish = drive(
                    rx,
                    out,
                    &tok,
                    |t, scored| {
                        text.push_str(&t);
                        all.append(scored);
                        true
                    },
                    |s| {
                        scores = s;
                        true
                    },
                )
                .await
                .map_err(failed)?
                .unwrap_or_else(Finish::none);
                // An echoed prompt's entries come first (`ids` is empty without echo).
                let lp = with_logprobs.then(|| {
                    let entries = logprobs::prompt(&ids, &scores);
                    logprobs::text_completion(
                        &tok,
                        entries.chain(logprobs::generated(&all)),
                        &mut 0,
                    )
                });
                Ok::<_, ApiError>((text, finish, lp))
            })
        })
        .collect();
    let (mut choices, mut total) = (Vec::new(), Finish::default());
    for (index, t) in tasks.into_iter().enumerate() {
        let (text, finish, lp) = t.await.map_err(|e| failed(e.to_string()))??;
        total.add(&finish);
        choices.push(
            json!({"index": index, "text": text, "finish_reason": finish.reason, "logprobs": lp}),
        );
    }
    let mut body = head;
    body["choices"] = Value::Array(choices);
    body["usage"] = usage(prompt_tokens, &total);
    Ok(Json(body).into_response())
}

/// The answer as server-sent events: per choice its pieces (the echo first, with the prompt's
/// log-probabilities when asked, so once the engine has them) and its finish chunk, tagged with
/// its index; the usage chunk when asked, then [DONE].
fn streamed(
    r: &Ready,
    runs: Vec<Run>,
    head: Value,
    usage_of: Option<u32>,
    with_logprobs: bool,
) -> axum::response::Response {
    let tok = r.tokenizer.clone();
    stream_choices(
        runs,
        head,
        json!({"text": ""}),
        usage_of,
        move |(rx, out, echo), chunks| {
            let tok = tok.clone();
            async move {
                let mut echo = echo;
                if !with_logprobs
                    && let Some((text, _)) = echo.take()
                    && !chunks.send(json!({ "text": text }), None, None)
                {
                    return Ok(None);
                }
                // Characters before the next entry (both callbacks advance it; Send, unlike a
                // Cell).
                let offset = AtomicUsize::new(0);
                drive(
                    rx,
                    out,
                    &tok,
                    |t, scored| {
                        let lp = with_logprobs.then(|| {
                            let scored = std::mem::take(scored);
                            logprobs_at(&tok, &offset, logprobs::generated(&scored))
                        });
                        chunks.send(json!({ "text": t }), None, lp)
                    },
                    |scores| match echo.take() {
                        Some((text, ids)) => {
                            let lp = logprobs_at(&tok, &offset, logprobs::prompt(&ids, &scores));
                            chunks.send(json!({ "text": text }), None, Some(lp))
                        }
                        None => true,
                    },
                )
                .await
            }
        },
    )
}

/// `logprobs::text_completion` at a shared character offset, advanced past the entries.
fn logprobs_at<'a>(
    tok: &Tokenizer,
    offset: &AtomicUsize,
    entries: impl IntoIterator<Item = (u32, Option<&'a TokenLogprobs>)>,
) -> Value {
    let mut at = offset.load(Ordering::Relaxed);
    let lp = logprobs::text_completion(tok, entries, &mut at);
    offset.store(at, Ordering::Relaxed);
    lp
}
