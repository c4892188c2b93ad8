//! The request path, one phase a module, carrying one [`RequestCtx`] through:
//!
//! 1. read the body (bounded) — here;
//! 2. parse the prompt reference, choose the version, render, inject — [`request`];
//! 3. send upstream — [`forward`] (or the built-in [`echo`]);
//! 4. relay the answer back as it streams, and record the request once it is over — [`relay`].

pub mod echo;
pub mod feedback;
pub mod forward;
pub mod relay;
pub mod request;
pub mod system;

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::AppState;
use crate::error::ApiError;
use crate::record::usage::Observed;
use crate::record::{Recorder, RequestEvent};
use forward::{OutBody, UpstreamResponse};
use request::{Endpoint, Served};

/// `POST /v1/chat/completions`
pub async fn chat_completions(State(state): State<AppState>, req: Request) -> Response {
    inject(state, Endpoint::ChatCompletions, req).await
}

/// `POST /v1/responses`
pub async fn responses(State(state): State<AppState>, req: Request) -> Response {
    inject(state, Endpoint::Responses, req).await
}

/// Every other `/v1/*` call: forwarded unchanged, body streamed through.
pub async fn passthrough(State(state): State<AppState>, req: Request) -> Response {
    let mut ctx = RequestCtx::start(&state, req.method(), req.uri().path(), req.headers());
    let (parts, body) = req.into_parts();
    let path = upstream_path(&parts.uri);
    ctx.upstream_started = Some(Instant::now());
    let sent = forward::send(
        &state.http,
        &state.config,
        parts.method,
        &path,
        &parts.headers,
        OutBody::Stream(body),
    )
    .await;
    match sent {
        Ok(upstream) => relay::relay(upstream, ctx),
        Err(err) => ctx.fail(err),
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
    let (parts, body) = req.into_parts();
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
    forward::send(
        &state.http,
        &state.config,
        Method::POST,
        &upstream_path(&parts.uri),
        &parts.headers,
        OutBody::Full(prepared.body),
    )
    .await
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

/// Reads the whole body, refusing more than `limit` bytes with a 413.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::bad_request(
            format!("could not read the request body: {e}"),
            None,
        )),
    }
}

/// What one request carries through the phases, and records when it is over.
pub struct RequestCtx {
    /// promptgate's id for the request: the client's `X-Request-Id`, or a new UUID.
    pub request_id: HeaderValue,
    /// The upstream's `x-request-id`, when it sent one.
    pub upstream_request_id: Option<String>,
    pub method: Method,
    pub path: String,
    pub started: Instant,
    pub upstream_started: Option<Instant>,
    pub served: Option<Served>,
    /// The model sent upstream, when promptgate read the body.
    pub model: Option<String>,
    pub strip_usage_chunk: bool,
    /// The upstream request, with `--log-content`.
    pub content: Option<serde_json::Value>,
    recorder: Recorder,
}

impl RequestCtx {
    pub fn start(state: &AppState, method: &Method, path: &str, headers: &HeaderMap) -> Self {
        // The client's id is kept when it is a sensible header value; otherwise one is made.
        let request_id = headers
            .get("x-request-id")
            .filter(|v| !v.is_empty() && v.len() <= 200 && v.to_str().is_ok())
            .cloned()
            .unwrap_or_else(|| {
                HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                    .expect("a uuid is a valid header value")
            });
        RequestCtx {
            request_id,
            upstream_request_id: None,
            method: method.clone(),
            path: path.to_owned(),
            started: Instant::now(),
            upstream_started: None,
            served: None,
            model: None,
            strip_usage_chunk: false,
            content: None,
            recorder: state.recorder.clone(),
        }
    }

    /// Adds promptgate's response headers. `x-request-id` stays the upstream's when it sent
    /// one (the id the SDKs show and the provider knows); promptgate's own id is always in
    /// `x-promptgate-request-id`. `/v1/feedback` accepts either.
    pub fn stamp(&mut self, headers: &mut HeaderMap) {
        headers.insert(
            HeaderName::from_static("x-promptgate-request-id"),
            self.request_id.clone(),
        );
        match headers.get("x-request-id") {
            Some(upstream) => {
                self.upstream_request_id = upstream
                    .to_str()
                    .ok()
                    .filter(|id| !id.is_empty() && id.len() <= 200)
                    .map(str::to_owned);
            }
            None => {
                headers.insert(
                    HeaderName::from_static("x-request-id"),
                    self.request_id.clone(),
                );
            }
        }
        let Some(served) = &self.served else {
            return;
        };
        let pairs = [
            ("x-prompt-name", served.name.clone()),
            ("x-prompt-version", served.version.to_string()),
            ("x-prompt-hash", served.hash.clone()),
            ("x-prompt-selection", served.selection.as_str().to_owned()),
        ];
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }

    /// Answers with an error before anything was relayed, and records the request.
    pub fn fail(mut self, err: ApiError) -> Response {
        let status = err.status().as_u16();
        let mut response = err.into_response();
        self.stamp(response.headers_mut());
        let outcome = match status {
            502 => "upstream_unreachable",
            504 => "upstream_timeout",
            500..=599 => "error",
            _ => "rejected",
        };
        self.finish(status, outcome, None, Observed::default(), false);
        response
    }

    /// The request is over: its one log line, and its record.
    pub fn finish(
        self,
        status: u16,
        outcome: &str,
        first_byte: Option<Instant>,
        observed: Observed,
        stream: bool,
    ) {
        let latency = self.started.elapsed();
        let overhead_us = self
            .upstream_started
            .map(|u| u.duration_since(self.started).as_micros() as u64);
        let ttft_ms = first_byte.map(|t| t.duration_since(self.started).as_secs_f64() * 1000.0);
        let model = observed.model.or_else(|| self.model.clone());
        let usage = observed.usage;
        let cost = usage
            .zip(model.as_deref())
            .and_then(|(u, m)| self.recorder.pricing().cost(m, &u));
        let served = self.served.as_ref();
        tracing::info!(
            target: "promptgate::request",
            request_id = self.request_id.to_str().unwrap_or_default(),
            method = %self.method,
            path = %self.path,
            status,
            outcome,
            prompt = served.map(|s| s.name.as_str()),
            version = served.map(|s| s.version),
            hash = served.map(|s| s.hash.as_str()),
            selection = served.map(|s| s.selection.as_str()),
            latency_ms = latency.as_secs_f64() * 1000.0,
            ttft_ms,
            overhead_us,
            model = model.as_deref(),
            prompt_tokens = usage.map(|u| u.prompt_tokens),
            completion_tokens = usage.map(|u| u.completion_tokens),
            cost_usd = cost,
            "request"
        );
        let event = RequestEvent {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: self.request_id.to_str().unwrap_or_default().to_owned(),
            upstream_request_id: self.upstream_request_id.clone(),
            method: self.method.to_string(),
            path: self.path.clone(),
            prompt: served.map(|s| s.name.clone()),
            version: served.map(|s| s.version),
            hash: served.map(|s| s.hash.clone()),
            selection: served.map(|s| s.selection.as_str().to_owned()),
            experiment: served.and_then(|s| s.experiment.clone()),
            model,
            status,
            outcome: outcome.to_owned(),
            stream,
            latency_ms: latency.as_secs_f64() * 1000.0,
            ttft_ms,
            overhead_ms: overhead_us.map(|us| us as f64 / 1000.0),
            prompt_tokens: usage.map(|u| u.prompt_tokens),
            completion_tokens: usage.map(|u| u.completion_tokens),
            cached_tokens: usage.map(|u| u.cached_tokens),
            cost_usd: cost,
            content: self.content,
        };
        self.recorder.record(event);
    }
}
