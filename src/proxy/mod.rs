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
pub mod json;
pub mod parse;
pub mod relay;
pub mod request;
pub mod system;

use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
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
    /// The request's place in its trace, with `--otlp-endpoint`.
    pub trace: Option<crate::otel::RequestTrace>,
    /// The GenAI operation of the upstream call (`chat`, `embeddings`), once there is one.
    pub operation: Option<&'static str>,
    /// promptgate's own error code, when it answered with an error.
    pub error_code: Option<&'static str>,
    telemetry: Option<crate::otel::Telemetry>,
    /// The upstream's host and port, for the CLIENT span (with tracing only).
    upstream_host: Option<(String, Option<u16>)>,
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
            trace: state.telemetry.as_ref().map(|t| t.begin(headers)),
            operation: None,
            error_code: None,
            telemetry: state.telemetry.clone(),
            upstream_host: match (&state.telemetry, &state.config.upstream) {
                (Some(_), crate::config::Upstream::Url(url)) => url
                    .host_str()
                    .map(|h| (h.to_owned(), url.port_or_known_default())),
                _ => None,
            },
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
    pub fn fail(mut self, err: ApiError) -> Response {
        let status = err.status().as_u16();
        self.error_code = Some(err.code());
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
        mut self,
        status: u16,
        outcome: Outcome,
        first_byte: Option<Instant>,
        mut observed: Observed,
        stream: bool,
        cause: Option<&str>,
    ) {
        let observed_extra = (
            observed.id.take(),
            std::mem::take(&mut observed.finish_reasons),
        );
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
            match LOG_MODE.load(Ordering::Relaxed) {
                LOG_PLAIN => line.write_plain(),
                LOG_TEXT => {
                    // One preformatted message through the subscriber (it colours it).
                    let mut text = String::with_capacity(320);
                    let _ = fmt::write(&mut text, format_args!("{line}"));
                    tracing::info!(target: "promptgate::request", "{text}");
                }
                _ => line.log_fields(),
            }
        }
        let event = RequestEvent {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            request_id: request_id.to_owned(),
            upstream_request_id: self.upstream_request_id.clone(),
            method: self.method.to_string(),
            path: std::mem::take(&mut self.path),
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
            content: self.content.take(),
        };
        if let (Some(telemetry), Some(trace)) = (&self.telemetry, self.trace.take()) {
            self.trace_spans(telemetry, trace, &event, observed_extra, first_byte);
        }
        self.recorder.record(event);
    }

    /// The request's SERVER span and its upstream call's CLIENT span.
    fn trace_spans(
        &self,
        telemetry: &crate::otel::Telemetry,
        trace: crate::otel::RequestTrace,
        event: &RequestEvent,
        (response_id, finish_reasons): (Option<String>, Vec<String>),
        first_byte: Option<Instant>,
    ) {
        use crate::otel::{Finished, PromptAttrs};
        let served = self.served.as_ref();
        let error_type = match (self.error_code, event.outcome.as_str()) {
            (Some(code), _) => Some(code.to_owned()),
            (None, "ok") if event.status >= 400 => Some(event.status.to_string()),
            (None, "ok") => None,
            (None, outcome) => Some(outcome.to_owned()),
        };
        let azure = event.path.starts_with("/openai/");
        let (address, port) = match &self.upstream_host {
            Some((host, port)) => (Some(host.as_str()), *port),
            None => (None, None),
        };
        let content = event.content.as_ref().filter(|_| telemetry.log_content);
        let picked = served.and_then(|s| s.fewshot.as_ref());
        let strategy = picked.map(|(s, _)| format!("{s:?}").to_ascii_lowercase());
        telemetry.finish(
            trace,
            Finished {
                method: &event.method,
                path: &event.path,
                route: &event.path,
                request_id: &event.request_id,
                status: event.status,
                error_type: error_type.as_deref(),
                operation: self.operation,
                provider: if azure { "azure.ai.openai" } else { "openai" },
                server_address: address,
                server_port: port,
                request_model: self.model.as_deref(),
                response_model: event.model.as_deref(),
                response_id: response_id.as_deref(),
                finish_reasons: &finish_reasons,
                input_tokens: event.prompt_tokens,
                output_tokens: event.completion_tokens,
                cached_tokens: event.cached_tokens,
                time_to_first_chunk: first_byte
                    .zip(self.upstream_started)
                    .map(|(f, u)| f.saturating_duration_since(u)),
                overhead: self
                    .upstream_started
                    .map(|u| u.saturating_duration_since(self.started)),
                cost_usd: event.cost_usd,
                prompt: served.map(|s| PromptAttrs {
                    name: &s.name,
                    version: s.version,
                    hash: &s.hash,
                    selection: s.selection.as_str(),
                    experiment: s.experiment.as_deref(),
                    arm: s.arm.as_deref(),
                    fewshot_strategy: strategy.as_deref(),
                    fewshot_picked: picked.map(|(_, p)| p.as_slice()),
                }),
                input_messages: content
                    .and_then(|c| c.get("messages").or_else(|| c.get("input")))
                    .map(|m| m.to_string()),
                system_instructions: content
                    .and_then(|c| c.get("instructions"))
                    .and_then(|i| i.as_str())
                    .map(str::to_owned),
            },
        );
    }
}

/// How the request line is written: JSON logs keep one field per value through the subscriber;
/// text logs at a terminal go through it as one preformatted message (it colours the level);
/// text logs into a file or a pipe are written directly, in the subscriber's own layout.
static LOG_MODE: AtomicU8 = AtomicU8::new(LOG_JSON);
const LOG_JSON: u8 = 0;
const LOG_TEXT: u8 = 1;
const LOG_PLAIN: u8 = 2;

/// Tells the request path how logs are written: plain text or JSON, with colours or not.
pub fn log_as_text(text: bool, ansi: bool) {
    let mode = match (text, ansi) {
        (false, _) => LOG_JSON,
        (true, true) => LOG_TEXT,
        (true, false) => LOG_PLAIN,
    };
    LOG_MODE.store(mode, Ordering::Relaxed);
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
    /// The line as `tracing-subscriber`'s text format lays it out without colours
    /// (`2026-01-31T12:00:00.123456Z  INFO promptgate::request: request request_id=…`), written
    /// to stderr in one call: no formatter machinery for a line every request writes.
    fn write_plain(&self) {
        let mut buf = String::with_capacity(384);
        timestamp(&mut buf, Utc::now());
        buf.push_str("  INFO promptgate::request: ");
        let _ = fmt::write(&mut buf, format_args!("{self}"));
        buf.push('\n');
        let _ = std::io::stderr().lock().write_all(buf.as_bytes());
    }

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

/// `2026-01-31T12:00:00.123456Z`, as `tracing-subscriber` writes its timestamps.
fn timestamp(buf: &mut String, now: chrono::DateTime<Utc>) {
    use chrono::{Datelike as _, Timelike as _};
    fn digits(buf: &mut String, n: u32, width: u32) {
        let mut div = 10u32.pow(width - 1);
        while div > 0 {
            buf.push(char::from(b'0' + (n / div % 10) as u8));
            div /= 10;
        }
    }
    let year = u32::try_from(now.year()).unwrap_or(0);
    digits(buf, year, 4);
    buf.push('-');
    digits(buf, now.month(), 2);
    buf.push('-');
    digits(buf, now.day(), 2);
    buf.push('T');
    digits(buf, now.hour(), 2);
    buf.push(':');
    digits(buf, now.minute(), 2);
    buf.push(':');
    digits(buf, now.second(), 2);
    buf.push('.');
    // A leap second's nanoseconds run past 10⁹; the subscriber shows them as 59.999999.
    digits(buf, (now.nanosecond() / 1000).min(999_999), 6);
    buf.push('Z');
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
    fn timestamps_are_laid_out_as_the_subscriber_lays_them_out() {
        let mut buf = String::new();
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-09T03:04:05.000678901Z")
            .unwrap()
            .with_timezone(&Utc);
        timestamp(&mut buf, t);
        assert_eq!(buf, "2026-01-09T03:04:05.000678Z");
    }

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
