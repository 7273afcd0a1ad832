//! `serve`: an OpenAI-compatible HTTP server (axum on tokio) in front of one [`Engine`]. The
//! port opens at once (`/health` answers 503 while the model loads, 200 after); the engine runs on
//! its own thread ([`driver`]) and requests join its running batch at step boundaries.
//!
//! Endpoints: `GET /health`, `/version`, `/v1/models`; `POST /v1/chat/completions`,
//! `/v1/completions`, `/v1/responses` (JSON or server-sent events), `/tokenize`, `/detokenize`;
//! `GET /metrics`
//! (Prometheus text). With an API key,
//! every route but `/health` wants `Authorization: Bearer KEY`. Any origin may call it from a
//! browser (CORS, as vLLM allows by default; the API key still applies).

mod answer;
mod chat;
mod completions;
pub mod driver;
mod error;
mod logprobs;
pub mod metrics;
mod request;
mod responses;
pub mod stream;
mod utility;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use driver::Driver;
use error::ApiError;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// The name clients use for the model (`model` in requests, `/v1/models`).
    pub model_name: String,
    pub api_key: Option<String>,
    /// Requests that may wait for a sequence slot before new ones get 503.
    pub max_queue: usize,
    /// Largest request body in bytes (413 above).
    pub max_body: usize,
}

/// What the handlers need once the model is loaded.
pub(crate) struct Ready {
    driver: Driver,
    tokenizer: Arc<Tokenizer>,
    model_name: String,
    max_model_len: u32,
    created: u64,
}

pub(crate) struct AppState {
    ready: OnceLock<Ready>,
    api_key: Option<String>,
}

impl AppState {
    fn ready(&self) -> std::result::Result<&Ready, ApiError> {
        self.ready.get().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model is still loading",
            )
        })
    }
}

fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/health", get(utility::health))
        .route("/version", get(utility::version))
        .route("/metrics", get(utility::metrics))
        .route("/v1/models", get(utility::models))
        .route("/v1/models/{*id}", get(utility::model))
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/responses", post(responses::responses))
        .route("/tokenize", post(utility::tokenize))
        .route("/detokenize", post(utility::detokenize))
        .fallback(utility::not_found)
        .method_not_allowed_fallback(utility::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

/// Cross-origin calls from web pages: a preflight (OPTIONS) is answered here, before the API
/// key is asked for (browsers send it without one), and every answer allows any origin.
async fn cors(req: Request, next: Next) -> Response {
    use axum::http::{HeaderValue, Method, header};
    let mut res = if req.method() == Method::OPTIONS {
        let asked = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned();
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            asked.unwrap_or(HeaderValue::from_static("authorization, content-type")),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        res
    } else {
        next.run(req).await
    };
    res.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

/// With an API key set, every route but /health wants `Authorization: Bearer KEY`.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if req.uri().path() != "/health" && given != Some(key.as_str()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key")
                .into_response();
        }
    }
    next.run(req).await
}

/// Serves until Ctrl-C or SIGTERM. The port opens first; `load` then runs on its own thread and
/// the server takes requests once it returns. `on_ready` hears the address.
pub fn run(
    cfg: ServeConfig,
    load: impl FnOnce() -> Result<Engine> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Io {
            path: "async runtime".into(),
            err,
        })?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|err| Error::Io {
                path: format!("{}:{}", cfg.host, cfg.port),
                err,
            })?;
        let addr = listener.local_addr().map_err(|err| Error::Io {
            path: "listener".into(),
            err,
        })?;
        let state = Arc::new(AppState {
            ready: OnceLock::new(),
            api_key: cfg.api_key.clone(),
        });
        let app = router(state.clone(), cfg.max_body);
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<Error>();
        let loader = state.clone();
        let cfg2 = cfg.clone();
        // The engine thread, joined at shutdown so that the GPU is released before the process
        // exits (a Vulkan driver torn down under a running thread can crash the exit).
        let engine_thread = Arc::new(std::sync::Mutex::new(None));
        let engine_slot = engine_thread.clone();
        std::thread::spawn(move || match load() {
            Ok(engine) => {
                let Some(tokenizer) = engine.tokenizer.clone() else {
                    let _ = failed_tx.send(Error::Request(
                        "serving needs the checkpoint's tokenizer".into(),
                    ));
                    return;
                };
                let max_model_len = engine.model.opts.max_context;
                let (driver, handle) = Driver::spawn(engine, cfg2.max_queue);
                if let Ok(mut slot) = engine_slot.lock() {
                    *slot = Some(handle);
                }
                let created = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let _ = loader.ready.set(Ready {
                    driver,
                    tokenizer,
                    model_name: cfg2.model_name,
                    max_model_len,
                    created,
                });
                on_ready(addr);
            }
            Err(e) => {
                let _ = failed_tx.send(e);
            }
        });
        // Serve until a signal, or until loading fails.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Option<Error>>();
        tokio::spawn(async move {
            // A loader that succeeded drops its sender: that is not a reason to stop.
            let failed = async {
                match failed_rx.await {
                    Ok(e) => e,
                    Err(_) => std::future::pending().await,
                }
            };
            let err = tokio::select! {
                _ = shutdown_signal() => None,
                e = failed => Some(e),
            };
            let _ = stop_tx.send(err);
        });
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Option<Error>>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let err = stop_rx.await.ok().flatten();
            let _ = done_tx.send(err);
        });
        server.await.map_err(|err| Error::Io {
            path: format!("http://{addr}"),
            err,
        })?;
        // The last handle on the engine goes: its loop ends, the thread drops the model.
        drop(state);
        let handle = engine_thread.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle {
            // A pass in flight finishes first; give up after a while rather than hang the exit.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !h.is_finished() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        match done_rx.await.ok().flatten() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
