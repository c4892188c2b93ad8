//! The request path, one phase a function, carrying one [`RequestCtx`] through:
//!
//! read the body (bounded) → [`parse`] the prompt reference → [`inject::choose`] the version →
//! [`inject::pick`] the examples → [`inject::render`] → [`inject::inject`] (the last five in
//! [`request::prepare`]) → [`forward::send`] upstream (or the built-in [`echo`]) →
//! [`relay::relay`] the answer as it streams → record the request when it is over
//! ([`RequestCtx::finish`]).
//!
//! Each phase has its own error type; `error.rs` turns them into HTTP answers.

pub mod echo;
pub mod feedback;
pub mod forward;
pub mod inject;
pub mod parse;
pub mod relay;
pub mod request;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
use crate::record::{Outcome, Recorder, RequestEvent};
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

/// Every other method and path under `/v1/`: forwarded unchanged, body streamed through
/// with the client's framing.
pub async fn passthrough(State(state): State<AppState>, req: Request) -> Response {
    let mut ctx = RequestCtx::start(&state, req.method(), req.uri().path(), req.headers());
    let (parts, body) = req.into_parts();
    ctx.upstream_started = Some(Instant::now());
    let sent = forward::send(
        &state.http,
        &state.config,
        parts.method,
        &upstream_path(&parts.uri),
        &parts.headers,
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
    let upstream = forward::send(
        &state.http,
        &state.config,
        Method::POST,
        &upstream_path(&parts.uri),
        &parts.headers,
        OutBody::Full(prepared.body),
    )
    .await?;
    Ok(upstream)
}

/// `/v1/chat/completions?x=1` → `chat/completions?x=1`.
fn upstream_path(uri: &axum::http::Uri) -> String {
    let path = uri.path().strip_prefix("/v1/").unwrap_or(uri.path());
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
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

/// Milliseconds with three decimals, for the log line.
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        write!(f, "{}.{:03}", us / 1000, us % 1000)
    }
}

/// What one request carries through the phases, and records when it is over.
pub struct RequestCtx {
    pub request_id: HeaderValue,
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

    /// Adds promptgate's response headers.
    pub fn stamp(&self, headers: &mut HeaderMap) {
        headers.insert(
            HeaderName::from_static("x-request-id"),
            self.request_id.clone(),
        );
        let Some(served) = &self.served else {
            return;
        };
        let [name, version, hash] = served.headers.clone();
        headers.insert(HeaderName::from_static("x-prompt-name"), name);
        headers.insert(HeaderName::from_static("x-prompt-version"), version);
        headers.insert(HeaderName::from_static("x-prompt-hash"), hash);
        headers.insert(
            HeaderName::from_static("x-prompt-selection"),
            HeaderValue::from_static(served.selection.as_str()),
        );
    }

    /// Answers with an error before anything was relayed, and records the request; the log
    /// line carries the error.
    pub fn fail(self, err: ApiError) -> Response {
        let status = err.status().as_u16();
        let outcome = Outcome::of_status(status);
        let cause = err.to_string();
        let mut response = err.into_response();
        self.stamp(response.headers_mut());
        self.finish(
            status,
            outcome,
            None,
            Observed::default(),
            false,
            Some(&cause),
        );
        response
    }

    /// The request is over: its one log line, and its record. `cause`: what went wrong.
    pub fn finish(
        self,
        status: u16,
        outcome: Outcome,
        first_byte: Option<Instant>,
        observed: Observed,
        stream: bool,
        cause: Option<&str>,
    ) {
        let latency = self.started.elapsed();
        let overhead = self
            .upstream_started
            .map(|u| u.duration_since(self.started));
        let ttft = first_byte.map(|t| t.duration_since(self.started));
        let model = observed.model.or_else(|| self.model.clone());
        let usage = observed.usage;
        let cost = usage
            .zip(model.as_deref())
            .and_then(|(u, m)| self.recorder.pricing().cost(m, &u));
        let served = self.served.as_ref();
        let request_id = self.request_id.to_str().unwrap_or_default();
        if tracing::enabled!(target: "promptgate::request", tracing::Level::INFO) {
            let line = RequestLine {
                request_id,
                method: self.method.as_str(),
                path: &self.path,
                status,
                outcome,
                served,
                latency,
                ttft,
                overhead,
                model: model.as_deref(),
                usage,
                cost,
                cause,
            };
            if TEXT_LOG.load(Ordering::Relaxed) {
                // One preformatted message: the same `key=value` text, at a fraction of the
                // cost of formatting each field through the subscriber.
                let mut text = String::with_capacity(320);
                let _ = fmt::write(&mut text, format_args!("{line}"));
                tracing::info!(target: "promptgate::request", "{text}");
            } else {
                line.log_fields();
            }
        }
        let event = RequestEvent {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: request_id.to_owned(),
            method: self.method.to_string(),
            path: self.path,
            prompt: served.map(|s| s.name.clone()),
            version: served.map(|s| s.version),
            hash: served.map(|s| s.hash.clone()),
            selection: served.map(|s| s.selection.as_str().to_owned()),
            experiment: served.and_then(|s| s.experiment.as_deref().map(str::to_owned)),
            model,
            status,
            outcome,
            stream,
            latency_ms: latency.as_secs_f64() * 1000.0,
            ttft_ms: ttft.map(|t| t.as_secs_f64() * 1000.0),
            overhead_ms: overhead.map(|o| o.as_micros() as f64 / 1000.0),
            prompt_tokens: usage.map(|u| u.prompt_tokens),
            completion_tokens: usage.map(|u| u.completion_tokens),
            cached_tokens: usage.map(|u| u.cached_tokens),
            cost_usd: cost,
            content: self.content,
        };
        self.recorder.record(event);
    }
}

/// True when logs are plain text (`--log-format text`): the request line is then written as one
/// preformatted message; JSON logs keep one field per value.
static TEXT_LOG: AtomicBool = AtomicBool::new(false);

/// Tells the request path that logs are plain text.
pub fn log_as_text(text: bool) {
    TEXT_LOG.store(text, Ordering::Relaxed);
}

/// The request's one log line.
struct RequestLine<'a> {
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    outcome: Outcome,
    served: Option<&'a Served>,
    latency: Duration,
    ttft: Option<Duration>,
    overhead: Option<Duration>,
    model: Option<&'a str>,
    usage: Option<crate::record::Usage>,
    cost: Option<f64>,
    cause: Option<&'a str>,
}

impl RequestLine<'_> {
    fn log_fields(&self) {
        let served = self.served;
        let usage = self.usage;
        tracing::info!(
            target: "promptgate::request",
            request_id = self.request_id,
            method = self.method,
            path = self.path,
            status = self.status,
            outcome = self.outcome.as_str(),
            prompt = served.map(|s| s.name.as_str()),
            version = served.map(|s| s.version),
            hash = served.map(|s| s.hash.as_str()),
            selection = served.map(|s| s.selection.as_str()),
            latency_ms = %Millis(self.latency),
            ttft_ms = self.ttft.map(|t| tracing::field::display(Millis(t))),
            overhead_us = self.overhead.map(|o| o.as_micros() as u64),
            model = self.model,
            prompt_tokens = usage.map(|u| u.prompt_tokens),
            completion_tokens = usage.map(|u| u.completion_tokens),
            cost_usd = self.cost,
            error = self.cause,
            "request"
        );
    }
}

impl fmt::Display for RequestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The request id and the model come from outside: quoted, so they cannot forge fields.
        // The method, the path (from the request line) and the names promptgate validated
        // hold no spaces or quotes.
        f.write_str("request request_id=")?;
        quoted(f, self.request_id)?;
        write!(
            f,
            " method={} path={} status={} outcome={}",
            self.method, self.path, self.status, self.outcome
        )?;
        if let Some(s) = self.served {
            write!(
                f,
                " prompt={} version={} hash={} selection={}",
                s.name,
                s.version,
                s.hash,
                s.selection.as_str()
            )?;
        }
        write!(f, " latency_ms={}", Millis(self.latency))?;
        if let Some(t) = self.ttft {
            write!(f, " ttft_ms={}", Millis(t))?;
        }
        if let Some(o) = self.overhead {
            write!(f, " overhead_us={}", o.as_micros())?;
        }
        if let Some(m) = self.model {
            f.write_str(" model=")?;
            quoted(f, m)?;
        }
        if let Some(u) = self.usage {
            write!(
                f,
                " prompt_tokens={} completion_tokens={}",
                u.prompt_tokens, u.completion_tokens
            )?;
        }
        if let Some(c) = self.cost {
            write!(f, " cost_usd={c}")?;
        }
        if let Some(e) = self.cause {
            write!(f, " error={e:?}")?;
        }
        Ok(())
    }
}

/// Writes `text` as it is when it is plainly a token (the common case: a uuid, a model name),
/// else quoted and escaped, so a value from outside cannot forge fields in the log line.
fn quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'));
    if plain {
        f.write_str(text)
    } else {
        write!(f, "{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_log_line_quotes_only_what_needs_it() {
        let line = RequestLine {
            request_id: "id with \"quotes\"",
            method: "POST",
            path: "/v1/chat/completions",
            status: 502,
            outcome: Outcome::UpstreamUnreachable,
            served: None,
            latency: Duration::from_micros(1_234_567),
            ttft: None,
            overhead: Some(Duration::from_micros(42)),
            model: Some("gpt-4o-mini"),
            usage: None,
            cost: None,
            cause: Some("upstream `x` is unreachable"),
        };
        assert_eq!(
            line.to_string(),
            "request request_id=\"id with \\\"quotes\\\"\" method=POST path=/v1/chat/completions \
             status=502 outcome=upstream_unreachable latency_ms=1234.567 overhead_us=42 \
             model=gpt-4o-mini error=\"upstream `x` is unreachable\""
        );
    }
}
