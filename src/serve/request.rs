//! What the generating endpoints (chat, completions, responses) share in their bodies: the
//! sampling and length fields and their checks, the engine request they make, `stop`,
//! `tool_choice`; and the body parsing every endpoint uses.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::Ready;
use super::error::ApiError;
use crate::chat::{ChatRequest, StopText};
use crate::engine::{MAX_TOP_LOGPROBS, Request, Sampling};
use crate::error::{json_fault, missing_field};

/// `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
#[serde(expecting = "expected a string or a list of strings")]
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
    /// Any 64-bit integer, as OpenAI and vLLM take it (negative ones too).
    pub seed: Option<i64>,
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

/// A request body. serde loses track of where it is inside a `#[serde(flatten)]` part, so a
/// body with such parts names them here, and a field of theirs that fails to parse is found by
/// parsing each part alone.
pub(super) trait Body: serde::de::DeserializeOwned {
    /// The first flattened part of `v` that fails to parse at a known field, as its error.
    fn locate(_v: &Value) -> Option<ApiError> {
        None
    }
}

/// The error of the flattened part P of `v`, where it fails at a known field.
pub(super) fn part_error<P: serde::de::DeserializeOwned>(v: &Value) -> Option<ApiError> {
    located::<P>(v).err().filter(|e| e.param.is_some())
}

/// T from v; a field of the wrong type or missing is named in `param` and the message
/// (`max_tokens`, `messages[0].content`, `messages[1].role`).
pub(super) fn located<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let (path, message) = json_fault(e);
        match path.or_else(|| missing_at_top::<T>(v, &message)) {
            Some(path) => {
                ApiError::param(path.clone(), format!("invalid request: {path}: {message}"))
            }
            None => ApiError::bad(format!("invalid request: {message}")),
        }
    })
}

/// The field that `message` says is missing, where it is one of v's own: a path lost in a
/// flattened part looks the same as the top level, so the field is put in and v parsed again;
/// a nested field stays missing then.
fn missing_at_top<T: serde::de::DeserializeOwned>(v: &Value, message: &str) -> Option<String> {
    let name = missing_field(message)?;
    let mut with = v.as_object()?.clone();
    if with.contains_key(name) {
        return None;
    }
    with.insert(name.to_string(), Value::Null);
    match serde_json::from_value::<T>(Value::Object(with)) {
        Err(e) if missing_field(&e.to_string()) == Some(name) => None,
        _ => Some(name.to_string()),
    }
}

/// The body as JSON of type T, with 400/413 for what is not.
pub(super) fn parse<T: Body>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("the body must be a JSON object"));
    }
    located(&v).map_err(|e| match e.param {
        Some(_) => e,
        None => T::locate(&v).unwrap_or(e),
    })
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

/// Plain text as the model reads it (special-token text stays text).
pub(super) fn encode(r: &Ready, text: &str) -> Result<Vec<u32>, ApiError> {
    r.tokenizer
        .encode_ordinary(text)
        .map_err(|e| ApiError::param("prompt", e.to_string()))
}

/// "1 token", "2 tokens".
fn tokens(n: usize) -> String {
    format!("{n} token{}", if n == 1 { "" } else { "s" })
}

impl Common {
    /// The engine request for `prompt` (from the request's field `source`: `messages` or
    /// `prompt`), checked against the model. With `echo` (completions), log-probabilities cover
    /// the prompt too, and max_tokens may be 0 (the prompt alone comes back).
    pub(super) fn request(
        &self,
        r: &Ready,
        source: &'static str,
        prompt: Vec<u32>,
        stop_ids: Vec<u32>,
        echo: bool,
    ) -> Result<Request, ApiError> {
        if let Some(m) = &self.model
            && *m != r.model_name
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("The model `{m}` does not exist."),
            ));
        }
        // As OpenAI's API: the options describe a stream, so without one they are a mistake.
        if self.stream_options.is_some() && !self.stream {
            return Err(ApiError::param(
                "stream_options",
                "stream_options is only allowed when stream is true",
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
                    "This model's maximum context length is {ctx} tokens; the prompt has {}.",
                    tokens(prompt.len())
                ),
            ));
        }
        let room = (ctx - prompt.len()) as i64;
        // Refusals name the field the client sent (chat's newer name wins where both are).
        let (field, asked) = match self.max_completion_tokens {
            Some(m) => ("max_completion_tokens", Some(m)),
            None => ("max_tokens", self.max_tokens),
        };
        let max_tokens = match asked {
            None => room,
            Some(0) if echo => 0,
            Some(m) if m < 1 => {
                // Only the completions endpoint (a `prompt`) takes echo.
                let echo_hint = if source == "prompt" {
                    " (or 0 with echo)"
                } else {
                    ""
                };
                return Err(ApiError::param(
                    field,
                    format!("{field} must be at least 1{echo_hint}"),
                ));
            }
            Some(m) if m > room => {
                return Err(ApiError::param(
                    field,
                    format!(
                        "This model's maximum context length is {ctx} tokens; the prompt has {} \
                         and {field} asks for {m} more.",
                        tokens(prompt.len())
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
                seed: self.seed.map_or_else(|| now() ^ 0x5eed, |s| s as u64),
                presence_penalty: self.presence_penalty.unwrap_or(0.0),
                frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            },
            stop: stop_ids,
            ignore_eos: self.ignore_eos,
            logprobs,
            logit_bias: self.logit_bias()?,
            // With echo and max_tokens 0 the engine scores the prompt to have something to do.
            prompt_logprobs: (echo && (logprobs.is_some() || max_tokens == 0))
                .then(|| logprobs.unwrap_or(0)),
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
    pub(super) fn logprobs_asked(&self) -> Result<Option<u32>, ApiError> {
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

    pub(super) fn stop_text(&self) -> Result<StopText, ApiError> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(StopSpec::One(s)) => vec![s.clone()],
            Some(StopSpec::Many(v)) => v.clone(),
        };
        StopText::new(stops).map_err(|e| ApiError::param("stop", e.to_string()))
    }

    /// The request for each of the `n` choices: seeds seed, seed + 1, ... so that choices differ
    /// when sampling and a seed replays all of them.
    pub(super) fn choices(&self, req: Request) -> Vec<Request> {
        let n = self.n.unwrap_or(1).max(1) as u64;
        (0..n)
            .map(|i| {
                let mut r = req.clone();
                r.sampling.seed = r.sampling.seed.wrapping_add(i);
                r
            })
            .collect()
    }

    pub(super) fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
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
