//! Traces: every request as an OpenTelemetry SERVER span, and every upstream call as a CLIENT
//! span under it with the prompt that shaped it, exported over OTLP/HTTP (protobuf).
//!
//! Off unless `--otlp-endpoint` or `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` is set; off, the
//! request path carries a `None` and does nothing more. On, the request path only reads the
//! incoming `traceparent`, draws ids, and — when the request is over — hands a finished span to
//! a bounded queue ([`QUEUE`]; a full queue drops it and counts the drop). One background task
//! batches the queue and exports; a collector that is down or slow costs the requests nothing.
//!
//! Attributes follow the OpenTelemetry GenAI semantic conventions as of semantic-conventions
//! v1.41.0 (status: Development), plus `gen_ai.prompt.name` / `gen_ai.prompt.version` from
//! semantic-conventions-genai PR #179; promptgate's own attributes are under `promptgate.`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use tokio::sync::mpsc;

use crate::record::Metrics;

/// Finished spans waiting for export, at most.
pub const QUEUE: usize = 4096;
/// Spans in one export call, at most.
const BATCH: usize = 512;
/// How long a span waits for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Bound on one export call (the exporter's own timeout applies too).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The semantic conventions promptgate's attributes follow.
pub const SEMCONV_VERSION: &str = "1.41.0";

/// Where traces go, from the flag or the standard environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The traces endpoint, `…/v1/traces`; `None`: the exporter reads the environment.
    pub endpoint: Option<String>,
}

impl OtlpConfig {
    /// Tracing is on when `--otlp-endpoint` is given or the standard variables name an
    /// endpoint, and `OTEL_SDK_DISABLED` / `OTEL_TRACES_EXPORTER=none` do not turn it off.
    pub fn from_flag_and_env(flag: Option<&str>) -> Option<OtlpConfig> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        if let Some(base) = flag.filter(|f| !f.trim().is_empty()) {
            return Some(OtlpConfig {
                endpoint: Some(traces_url(base)),
            });
        }
        if env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        {
            return Some(OtlpConfig { endpoint: None });
        }
        None
    }
}

/// `http://collector:4318` → `http://collector:4318/v1/traces`, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is read; a URL that already ends so is kept.
fn traces_url(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The exporter's handle, shared by every request. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    queue: mpsc::Sender<Message>,
    metrics: Arc<Metrics>,
    /// With `--log-content`, message content goes into the spans.
    pub log_content: bool,
}

impl Telemetry {
    /// Builds the exporter and starts the export task. Needs a Tokio runtime.
    pub fn start(
        config: &OtlpConfig,
        metrics: Arc<Metrics>,
        log_content: bool,
    ) -> anyhow::Result<(Telemetry, tokio::task::JoinHandle<()>)> {
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(
                reqwest::Client::builder()
                    .timeout(EXPORT_TIMEOUT)
                    .build()
                    .map_err(|e| anyhow::anyhow!("cannot build the OTLP HTTP client: {e}"))?,
            );
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let mut exporter = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the OTLP exporter: {e}"))?;
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "promptgate".to_owned());
        exporter.set_resource(
            &Resource::builder()
                .with_service_name(service)
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let (queue, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(export_loop(exporter, rx, metrics.clone()));
        Ok((
            Telemetry {
                queue,
                metrics,
                log_content,
            },
            task,
        ))
    }

    fn submit(&self, span: SpanData) {
        if self.queue.try_send(Message::Span(Box::new(span))).is_err() {
            self.metrics.otel_spans_dropped.inc();
        }
    }

    /// Exports what is queued now, waiting at most `limit` (shutdown).
    pub async fn flush(&self, limit: Duration) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(limit, wait).await;
        }
    }

    /// The trace a request joins: the app's, from `traceparent` / `tracestate`, or a new one.
    pub fn begin(&self, headers: &HeaderMap) -> RequestTrace {
        let parent = parent_of(headers);
        let trace_id = parent
            .as_ref()
            .map_or_else(new_trace_id, SpanContext::trace_id);
        RequestTrace {
            trace_id,
            server_span: new_span_id(),
            client_span: new_span_id(),
            sampled: parent.as_ref().is_none_or(SpanContext::is_sampled),
            trace_state: parent
                .as_ref()
                .map(|p| p.trace_state().clone())
                .unwrap_or_default(),
            parent: parent.map(|p| p.span_id()),
            start: SystemTime::now(),
            upstream_start: None,
            upstream_end: None,
        }
    }

    /// Exports the request's spans: the SERVER span, and the CLIENT span when it went
    /// upstream.
    pub fn finish(&self, trace: RequestTrace, done: Finished<'_>) {
        if !trace.sampled {
            return;
        }
        let end = SystemTime::now();
        let context = |span: SpanId| {
            SpanContext::new(
                trace.trace_id,
                span,
                TraceFlags::SAMPLED,
                false,
                trace.trace_state.clone(),
            )
        };
        let error = done.error_type.map(str::to_owned);
        let status = match &error {
            Some(e) => Status::error(e.clone()),
            None => Status::Unset,
        };
        let mut server = vec![
            KeyValue::new("http.request.method", done.method.to_owned()),
            KeyValue::new("url.path", done.path.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(done.status)),
            KeyValue::new("promptgate.request_id", done.request_id.to_owned()),
        ];
        if let Some(e) = &error {
            server.push(KeyValue::new("error.type", e.clone()));
        }
        if let Some(p) = &done.prompt {
            server.push(KeyValue::new("gen_ai.prompt.name", p.name.to_owned()));
            server.push(KeyValue::new(
                "gen_ai.prompt.version",
                p.version.to_string(),
            ));
        }
        self.submit(span_data(
            context(trace.server_span),
            trace.parent,
            SpanKind::Server,
            format!("{} {}", done.method, done.route).into(),
            (trace.start, end),
            server,
            status.clone(),
        ));

        let (Some(upstream_start), Some(operation)) = (trace.upstream_start, done.operation) else {
            return;
        };
        let upstream_end = trace.upstream_end.unwrap_or(end);
        let model = done.response_model.or(done.request_model);
        let name = match model {
            Some(m) => format!("{operation} {m}"),
            None => operation.to_owned(),
        };
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", operation.to_owned()),
            KeyValue::new("gen_ai.provider.name", done.provider.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(done.status)),
        ];
        let mut push = |key: &'static str, value: Option<Value>| {
            if let Some(value) = value {
                attrs.push(KeyValue::new(key, value));
            }
        };
        push(
            "gen_ai.request.model",
            done.request_model.map(|m| m.to_owned().into()),
        );
        push(
            "gen_ai.response.model",
            done.response_model.map(|m| m.to_owned().into()),
        );
        push(
            "gen_ai.response.id",
            done.response_id.map(|m| m.to_owned().into()),
        );
        if !done.finish_reasons.is_empty() {
            push(
                "gen_ai.response.finish_reasons",
                Some(Value::Array(
                    done.finish_reasons
                        .iter()
                        .map(|r| r.clone().into())
                        .collect::<Vec<opentelemetry::StringValue>>()
                        .into(),
                )),
            );
        }
        push(
            "gen_ai.usage.input_tokens",
            done.input_tokens.map(|n| (n as i64).into()),
        );
        push(
            "gen_ai.usage.output_tokens",
            done.output_tokens.map(|n| (n as i64).into()),
        );
        push(
            "gen_ai.usage.cache_read.input_tokens",
            done.cached_tokens.map(|n| (n as i64).into()),
        );
        push(
            "gen_ai.response.time_to_first_chunk",
            done.time_to_first_chunk.map(|d| d.as_secs_f64().into()),
        );
        push(
            "server.address",
            done.server_address.map(|a| a.to_owned().into()),
        );
        push("server.port", done.server_port.map(|p| i64::from(p).into()));
        push("error.type", error.clone().map(Into::into));
        if let Some(p) = &done.prompt {
            push("gen_ai.prompt.name", Some(p.name.to_owned().into()));
            push("gen_ai.prompt.version", Some(p.version.to_string().into()));
            push("promptgate.prompt.hash", Some(p.hash.to_owned().into()));
            push(
                "promptgate.prompt.selection",
                Some(p.selection.to_owned().into()),
            );
            push(
                "promptgate.experiment.id",
                p.experiment.map(|e| e.to_owned().into()),
            );
            push(
                "promptgate.experiment.arm",
                p.arm.map(|a| a.to_owned().into()),
            );
            push(
                "promptgate.fewshot.strategy",
                p.fewshot_strategy.map(|s| s.to_owned().into()),
            );
            if let Some(picked) = p.fewshot_picked {
                push(
                    "promptgate.fewshot.examples",
                    Some(Value::Array(
                        picked
                            .iter()
                            .map(|&i| i as i64)
                            .collect::<Vec<i64>>()
                            .into(),
                    )),
                );
            }
        }
        push(
            "promptgate.overhead_ms",
            done.overhead.map(|d| (d.as_secs_f64() * 1000.0).into()),
        );
        push("promptgate.cost_usd", done.cost_usd.map(Into::into));
        if self.log_content {
            push("gen_ai.input.messages", done.input_messages.map(Into::into));
            push(
                "gen_ai.system_instructions",
                done.system_instructions.map(Into::into),
            );
        }
        self.submit(span_data(
            context(trace.client_span),
            Some(trace.server_span),
            SpanKind::Client,
            name.into(),
            (upstream_start, upstream_end),
            attrs,
            status,
        ));
    }
}

fn span_data(
    context: SpanContext,
    parent: Option<SpanId>,
    kind: SpanKind,
    name: Cow<'static, str>,
    (start, end): (SystemTime, SystemTime),
    attributes: Vec<KeyValue>,
    status: Status,
) -> SpanData {
    SpanData {
        span_context: context,
        parent_span_id: parent.unwrap_or(SpanId::INVALID),
        parent_span_is_remote: kind == SpanKind::Server && parent.is_some(),
        span_kind: kind,
        name,
        start_time: start,
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder("promptgate")
            .with_version(env!("CARGO_PKG_VERSION"))
            .with_schema_url(format!(
                "https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
            ))
            .build(),
    }
}

/// One request's place in its trace.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    pub trace_id: TraceId,
    pub server_span: SpanId,
    pub client_span: SpanId,
    /// The app's span, when the request came with a `traceparent`.
    pub parent: Option<SpanId>,
    pub sampled: bool,
    pub trace_state: TraceState,
    pub start: SystemTime,
    pub upstream_start: Option<SystemTime>,
    pub upstream_end: Option<SystemTime>,
}

impl RequestTrace {
    /// Makes the upstream call a child of promptgate's CLIENT span: `traceparent` (and the
    /// app's `tracestate`) replace whatever the client sent.
    pub fn inject(&mut self, headers: &mut HeaderMap) {
        self.upstream_start = Some(SystemTime::now());
        let flags = if self.sampled { "01" } else { "00" };
        let parent = format!("00-{}-{}-{flags}", self.trace_id, self.client_span);
        if let Ok(value) = HeaderValue::from_str(&parent) {
            headers.insert("traceparent", value);
        }
        headers.remove("tracestate");
        let state = self.trace_state.header();
        if !state.is_empty()
            && let Ok(value) = HeaderValue::from_str(&state)
        {
            headers.insert("tracestate", value);
        }
    }
}

/// What a finished request tells its spans.
#[derive(Debug, Default)]
pub struct Finished<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The route, for the SERVER span's name (`/v1/chat/completions`).
    pub route: &'a str,
    pub request_id: &'a str,
    pub status: u16,
    pub error_type: Option<&'a str>,
    /// `chat`, `embeddings`, …: `None` for a request that never went upstream.
    pub operation: Option<&'a str>,
    pub provider: &'a str,
    pub server_address: Option<&'a str>,
    pub server_port: Option<u16>,
    pub request_model: Option<&'a str>,
    pub response_model: Option<&'a str>,
    pub response_id: Option<&'a str>,
    pub finish_reasons: &'a [String],
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub time_to_first_chunk: Option<Duration>,
    pub overhead: Option<Duration>,
    pub cost_usd: Option<f64>,
    pub prompt: Option<PromptAttrs<'a>>,
    pub input_messages: Option<String>,
    pub system_instructions: Option<String>,
}

/// The prompt that shaped a request.
#[derive(Debug, Default)]
pub struct PromptAttrs<'a> {
    pub name: &'a str,
    pub version: u32,
    pub hash: &'a str,
    pub selection: &'a str,
    pub experiment: Option<&'a str>,
    pub arm: Option<&'a str>,
    pub fewshot_strategy: Option<&'a str>,
    pub fewshot_picked: Option<&'a [usize]>,
}

/// The GenAI operation of an upstream path (after `/v1/`, or an Azure `/openai/…` path).
pub fn operation_of(path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or_default();
    if path.ends_with("chat/completions") || path.ends_with("responses") {
        "chat"
    } else if path.ends_with("embeddings") {
        "embeddings"
    } else if path.ends_with("completions") {
        "text_completion"
    } else {
        "http"
    }
}

/// The app's span context from `traceparent` / `tracestate` (W3C Trace Context).
fn parent_of(headers: &HeaderMap) -> Option<SpanContext> {
    let value = headers.get("traceparent")?.to_str().ok()?.trim();
    let mut parts = value.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may add more, read as 00.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(trace) || !lower_hex(span) || !lower_hex(flags) || !lower_hex(version) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = headers
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        state,
    ))
}

fn new_trace_id() -> TraceId {
    TraceId::from(fastrand::u128(1..))
}

fn new_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}

enum Message {
    Span(Box<SpanData>),
    /// Export everything before this, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Batches finished spans and exports them, until every sender is gone.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Message>,
    metrics: Arc<Metrics>,
) {
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        let mut flushed = None;
        match rx.recv().await {
            None => break,
            Some(Message::Flush(done)) => {
                let _ = done.send(());
                continue;
            }
            Some(Message::Span(span)) => batch.push(*span),
        }
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        while batch.len() < BATCH {
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Message::Span(span)) => batch.push(*span),
                    Some(Message::Flush(done)) => {
                        flushed = Some(done);
                        break;
                    }
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        let n = batch.len() as u64;
        let result = tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await;
        let failure = match result {
            Ok(Ok(())) => {
                metrics.otel_spans_exported.inc_by(n);
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "the collector did not answer within {} s",
                EXPORT_TIMEOUT.as_secs()
            )),
        };
        if let Some(reason) = failure {
            metrics.otel_spans_dropped.inc_by(n);
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                last_warning = Some(std::time::Instant::now());
                tracing::warn!(
                    spans = n,
                    %reason,
                    "OTLP export failed; the spans were dropped (counted in promptgate_otel_spans_dropped_total; logged at most once a minute)"
                );
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
    let _ = exporter.shutdown_with_timeout(Duration::from_secs(2));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn traceparent_is_read_strictly() {
        let ok = parent_of(&headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=abc"),
        ]))
        .unwrap();
        assert_eq!(
            ok.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(ok.span_id().to_string(), "00f067aa0ba902b7");
        assert!(ok.is_sampled());
        assert!(ok.is_remote());
        assert_eq!(ok.trace_state().header(), "vendor=abc");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(
                parent_of(&headers(&[("traceparent", bad)])).is_none(),
                "{bad}"
            );
        }
        let unsampled = parent_of(&headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]))
        .unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn endpoint_gets_the_traces_path() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn operations_by_path() {
        assert_eq!(operation_of("chat/completions"), "chat");
        assert_eq!(operation_of("responses?x=1"), "chat");
        assert_eq!(
            operation_of("/openai/deployments/d/chat/completions"),
            "chat"
        );
        assert_eq!(operation_of("embeddings"), "embeddings");
        assert_eq!(operation_of("completions"), "text_completion");
        assert_eq!(operation_of("models"), "http");
    }
}
