//! The endpoints around generation: `/tokenize`, `/detokenize`, `/v1/models`, `/metrics`,
//! `/version`, `/health`, and the answers for unknown routes and methods.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::request::{Body, encode, located, parse};
use super::{AppState, Ready};
use crate::chat::ChatRequest;
use crate::chat::harmony::Harmony;
use crate::chat::openai::today;

#[derive(Deserialize)]
struct TokenizeBody {
    prompt: Option<String>,
    /// Without `prompt`, a chat request (parsed here, so that its errors name their field).
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl Body for TokenizeBody {}

/// `{"prompt": text}` or a chat request's `messages` (rendered as `render` does, ready for the
/// assistant's answer).
pub async fn tokenize(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let r = st.ready()?;
    let b: TokenizeBody = parse(body)?;
    let tokens = match b.prompt {
        Some(p) => encode(r, &p)?,
        None if b.rest.contains_key("messages") => {
            let chat: ChatRequest = located(&Value::Object(b.rest))?;
            let h = Harmony::new(&r.tokenizer).map_err(|e| ApiError::bad(e.to_string()))?;
            let msgs = chat.to_harmony(&today()).map_err(ApiError::request)?;
            h.render_for_completion(&msgs)
                .map_err(|e| ApiError::bad(e.to_string()))?
        }
        None => return Err(ApiError::bad("give `prompt` or `messages`")),
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

impl Body for DetokenizeBody {}

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
