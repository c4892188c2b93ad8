//! The request path, one phase a function, carrying one [`RequestCtx`] through:
//!
//! read the body (bounded) → [`parse`] the prompt reference → [`inject::choose`] the version →
//! [`inject::pick`] the examples → [`inject::render`] → [`inject::inject`] (the last five in
//! [`request::prepare`]) → [`forward::send`] upstream (or the built-in [`echo`]) →
//! [`relay::relay`] the answer as it streams → record the request when it is over
//! ([`RequestCtx::finish`]).
//!
//! Each phase has its own error type; `error.rs` turns them into HTTP answers.

mod ctx;
pub mod echo;
pub mod feedback;
pub mod forward;
pub mod inject;
pub mod json;
mod logline;
pub mod parse;
pub mod pool;
pub mod relay;
pub mod request;
pub mod system;

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::AppState;
use crate::error::ApiError;
pub use ctx::RequestCtx;
use forward::{OutBody, UpstreamResponse};
pub use logline::log_as_text;
use request::Endpoint;

/// `POST /v1/chat/completions`
pub async fn chat_completions(State(state): State<AppState>, req: Request) -> Response {
    inject(state, Endpoint::ChatCompletions, req).await
}

/// `POST /v1/responses`
pub async fn responses(State(state): State<AppState>, req: Request) -> Response {
    inject(state, Endpoint::Responses, req).await
}

/// Every other method and path under `/v1/`: forwarded unchanged, body streamed through
/// with the client's framing.
pub async fn passthrough(State(state): State<AppState>, req: Request) -> Response {
    let mut ctx = RequestCtx::start(&state, req.method(), req.uri().path(), req.headers());
    let (mut parts, body) = req.into_parts();
    let path = upstream_path(&parts.uri);
    ctx.upstream_started = Some(Instant::now());
    ctx.operation = Some(crate::otel::operation_of(&path));
    if let Some(trace) = &mut ctx.trace {
        trace.inject(&mut parts.headers);
    }
    let sent = forward::send(
        &state.http,
        &state.config,
        parts.method,
        &upstream_path(&parts.uri),
        parts.headers,
        OutBody::Stream(body),
    )
    .await;
    match sent {
        Ok(upstream) => relay::relay(upstream, ctx),
        Err(err) => ctx.fail(err.into()),
    }
}

async fn inject(state: AppState, endpoint: Endpoint, req: Request) -> Response {
    let mut ctx = RequestCtx::start(&state, req.method(), req.uri().path(), req.headers());
    match run(&state, endpoint, req, &mut ctx).await {
        Ok(upstream) => relay::relay(upstream, ctx),
        Err(err) => ctx.fail(err),
    }
}

/// The pipeline of an injecting request, up to the upstream's answer.
async fn run(
    state: &AppState,
    endpoint: Endpoint,
    req: Request,
    ctx: &mut RequestCtx,
) -> Result<UpstreamResponse, ApiError> {
    let (mut parts, body) = req.into_parts();
    let bytes = read_body(body, &parts.headers, state.config.max_body_bytes).await?;
    // One snapshot per request: a reload mid-request does not mix two prompt sets.
    let prompts = state.prompts.load_full();
    let prepared = request::prepare(
        &prompts,
        &state.model,
        endpoint,
        &parts.headers,
        bytes,
        Utc::now(),
    )
    .await?;
    ctx.served = prepared.served;
    ctx.model = prepared.model;
    ctx.strip_usage_chunk = prepared.strip_usage_chunk;
    if state.config.log_content {
        ctx.content = serde_json::from_slice(&prepared.body).ok();
    }
    ctx.upstream_started = Some(Instant::now());
    let path = upstream_path(&parts.uri);
    ctx.operation = Some(crate::otel::operation_of(&path));
    if let Some(trace) = &mut ctx.trace {
        trace.inject(&mut parts.headers);
    }
    let upstream = forward::send(
        &state.http,
        &state.config,
        Method::POST,
        &path,
        parts.headers,
        OutBody::Full(prepared.body),
    )
    .await?;
    Ok(upstream)
}

/// The upstream path of a request, with its query.
///
/// `/v1/chat/completions?x=1` → `chat/completions?x=1` (relative to `--upstream`), and the
/// same for a base URL without `/v1` (`/chat/completions`). Azure OpenAI's paths
/// (`/openai/deployments/{d}/chat/completions?api-version=…`, `/openai/v1/…`) keep their whole
/// path from the upstream's origin: `/openai/…`, leading slash and all.
fn upstream_path(uri: &axum::http::Uri) -> String {
    let full = uri.path();
    let path = if full.starts_with("/openai/") {
        full
    } else {
        full.strip_prefix("/v1/")
            .or_else(|| full.strip_prefix('/'))
            .unwrap_or(full)
    };
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}

/// The first path segments of OpenAI's API, for clients whose base URL has no `/v1`: these are
/// forwarded as if they had it, everything else unknown is a 404.
pub const OPENAI_ROOTS: [&str; 20] = [
    "assistants",
    "audio",
    "batches",
    "chat",
    "completions",
    "containers",
    "conversations",
    "embeddings",
    "evals",
    "files",
    "fine_tuning",
    "images",
    "models",
    "moderations",
    "organization",
    "realtime",
    "responses",
    "threads",
    "uploads",
    "vector_stores",
];

/// True when `path` (no `/v1`) starts with one of [`OPENAI_ROOTS`].
pub fn is_openai_path(path: &str) -> bool {
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    OPENAI_ROOTS.contains(&first)
}

/// The body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    Failed(String),
}

/// Reads the whole body, refusing more than `limit` bytes.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ReadError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ReadError::TooLarge { limit })
        }
        Err(e) => Err(ReadError::Failed(e.to_string())),
    }
}

/// `GET /v1/feedback` and the like: promptgate's own routes answer other methods with
/// OpenAI's error shape.
pub async fn method_not_allowed(req: Request) -> Response {
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
    .into_response()
}
