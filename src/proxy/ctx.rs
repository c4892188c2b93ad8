//! The one [`RequestCtx`] a request carries through the phases: its id, what served it, its
//! timings — stamped on the response's headers, and recorded when the request is over (the log
//! line, metrics, statistics, the feedback index, the events file, the trace).

use std::cell::RefCell;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::logline::{self, RequestLine};
use super::request::Served;
use crate::AppState;
use crate::error::ApiError;
use crate::record::usage::Observed;
use crate::record::{Outcome, Recorder, RequestRecord};

/// The response headers promptgate adds, built at compile time: a name parsed per request
/// costs more than the insert.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_PROMPTGATE_REQUEST_ID: HeaderName = HeaderName::from_static("x-promptgate-request-id");
const X_PROMPT_NAME: HeaderName = HeaderName::from_static("x-prompt-name");
const X_PROMPT_VERSION: HeaderName = HeaderName::from_static("x-prompt-version");
const X_PROMPT_HASH: HeaderName = HeaderName::from_static("x-prompt-hash");
const X_PROMPT_SELECTION: HeaderName = HeaderName::from_static("x-prompt-selection");

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
            .get(X_REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= 200 && v.to_str().is_ok())
            .cloned()
            .unwrap_or_else(new_request_id);
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
        // Room for them all at once, rather than growing the map insert by insert.
        headers.reserve(6);
        headers.insert(X_PROMPTGATE_REQUEST_ID, self.request_id.clone());
        match headers.get(X_REQUEST_ID) {
            Some(upstream) => {
                self.upstream_request_id = upstream
                    .to_str()
                    .ok()
                    .filter(|id| !id.is_empty() && id.len() <= 200)
                    .map(str::to_owned);
            }
            None => {
                headers.insert(X_REQUEST_ID, self.request_id.clone());
            }
        }
        let Some(served) = &self.served else {
            return;
        };
        let [name, version, hash] = served.headers.clone();
        headers.insert(X_PROMPT_NAME, name);
        headers.insert(X_PROMPT_VERSION, version);
        headers.insert(X_PROMPT_HASH, hash);
        headers.insert(
            X_PROMPT_SELECTION,
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
        observed: Observed,
        stream: bool,
        cause: Option<&str>,
    ) {
        let now = Utc::now();
        let civil = logline::Civil::of(now);
        let latency = self.started.elapsed();
        let overhead = self
            .upstream_started
            .map(|u| u.duration_since(self.started));
        let ttft = first_byte.map(|t| t.duration_since(self.started));
        let trace = self.trace.take();
        let model = observed.model.as_deref().or(self.model.as_deref());
        let usage = observed.usage;
        let cost = usage
            .zip(model)
            .and_then(|(u, m)| self.recorder.pricing().cost(m, &u));
        let served = self.served.as_ref();
        let request_id = self.request_id.to_str().unwrap_or_default();
        if tracing::enabled!(target: "promptgate::request", tracing::Level::INFO) {
            RequestLine {
                request_id,
                method: self.method.as_str(),
                path: &self.path,
                status,
                outcome,
                served,
                latency,
                ttft,
                overhead,
                model,
                usage,
                cost,
                cause,
            }
            .log(&civil);
        }
        let mut time = [0u8; logline::EVENT_TIME_LEN];
        let chrono_time;
        let time = match logline::event_time(&mut time, &civil) {
            Some(time) => time,
            None => {
                chrono_time = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                &chrono_time
            }
        };
        let record = RequestRecord {
            time,
            request_id,
            upstream_request_id: self.upstream_request_id.as_deref(),
            method: self.method.as_str(),
            path: &self.path,
            prompt: served.map(|s| s.name.as_str()),
            version: served.map(|s| s.version),
            hash: served.map(|s| s.hash.as_str()),
            selection: served.map(|s| s.selection.as_str()),
            experiment: served.and_then(|s| s.experiment.as_deref()),
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
            content: self.content.as_ref(),
        };
        if let (Some(telemetry), Some(trace)) = (&self.telemetry, trace) {
            let ending = (observed.id.as_deref(), observed.finish_reasons.as_slice());
            self.trace_spans(telemetry, trace, &record, ending, first_byte);
        }
        self.recorder.record(&record);
    }

    /// The request's SERVER span and its upstream call's CLIENT span.
    fn trace_spans(
        &self,
        telemetry: &crate::otel::Telemetry,
        trace: crate::otel::RequestTrace,
        event: &RequestRecord<'_>,
        (response_id, finish_reasons): (Option<&str>, &[String]),
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
        let content = event.content.filter(|_| telemetry.log_content);
        let picked = served.and_then(|s| s.fewshot.as_ref());
        let strategy = picked.map(|(s, _)| format!("{s:?}").to_ascii_lowercase());
        telemetry.finish(
            trace,
            Finished {
                method: event.method,
                path: event.path,
                route: event.path,
                request_id: event.request_id,
                status: event.status,
                error_type: error_type.as_deref(),
                operation: self.operation,
                provider: if azure { "azure.ai.openai" } else { "openai" },
                server_address: address,
                server_port: port,
                request_model: self.model.as_deref(),
                response_model: event.model,
                response_id,
                finish_reasons,
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

/// Random bytes read from the kernel in blocks, per thread: a request id costs a copy, not a
/// system call.
struct RandomPool {
    bytes: [u8; 1024],
    used: usize,
}

thread_local! {
    static RANDOM: RefCell<RandomPool> = const {
        RefCell::new(RandomPool { bytes: [0; 1024], used: 1024 })
    };
}

/// 16 random bytes, from the operating system's generator (`getrandom`, as `uuid`'s own v4
/// takes them), drawn 1 KiB at a time.
fn random_16() -> [u8; 16] {
    let pooled = RANDOM.with(|pool| {
        let pool = &mut *pool.borrow_mut();
        if pool.used + 16 > pool.bytes.len() {
            getrandom::fill(&mut pool.bytes).ok()?;
            pool.used = 0;
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&pool.bytes[pool.used..pool.used + 16]);
        // Never handed out twice.
        pool.bytes[pool.used..pool.used + 16].fill(0);
        pool.used += 16;
        Some(out)
    });
    pooled.unwrap_or_else(|| uuid::Uuid::new_v4().into_bytes())
}

/// A new request id: a random (version 4) UUID.
fn new_request_id() -> HeaderValue {
    let uuid = uuid::Builder::from_random_bytes(random_16()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut text))
        .expect("a uuid is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_version_4_uuids() {
        let ids: std::collections::HashSet<String> = (0..500)
            .map(|_| new_request_id().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 500);
        for id in ids {
            let uuid = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(uuid.get_version_num(), 4, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id, uuid.hyphenated().to_string(), "lower case, hyphenated");
        }
    }
}
