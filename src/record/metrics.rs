//! Prometheus metrics, in the text format, through `prometheus-client`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Prompt and version ("" for requests that named no prompt).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub prompt: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub prompt: String,
    pub version: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub prompt: String,
    pub version: String,
    /// `prompt`, `completion` or `cached`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedbackLabels {
    pub prompt: String,
    pub version: String,
    pub metric: String,
}

/// Which state file a write failed on: `events`, `audit` or `checkpoint`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabel {
    pub file: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

type HistogramFamily = Family<VersionLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
    ])
}

fn overhead_histogram() -> Histogram {
    Histogram::new([
        0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
    ])
}

/// One prompt version's series (or the requests that named no prompt), resolved in their
/// families once, on first use, and kept: recording a request then increments these handles
/// instead of hashing a freshly built label set in every family. Each series is still created
/// only when a request first records into it, exactly as before.
pub struct VersionSeries {
    labels: VersionLabels,
    /// `requests{status="200"}`, the common case; other statuses go through the family.
    ok: OnceLock<Counter>,
    latency: OnceLock<Histogram>,
    ttft: OnceLock<Histogram>,
    overhead: OnceLock<Histogram>,
    /// `prompt`, `completion`, `cached`.
    tokens: [OnceLock<Counter>; 3],
    cost: OnceLock<Counter<f64, AtomicU64>>,
}

/// Each prompt's versions and their series.
type SeriesByVersion = hashbrown::HashMap<String, Vec<(Option<u32>, Arc<VersionSeries>)>>;

/// The token kinds, in the order of [`RequestFigures::tokens`].
const TOKEN_KINDS: [&str; 3] = ["prompt", "completion", "cached"];

/// What one finished request adds to the metrics of its version.
pub struct RequestFigures {
    pub status: u16,
    pub latency_s: f64,
    /// Time to the first byte, for a stream.
    pub ttft_s: Option<f64>,
    pub overhead_s: Option<f64>,
    /// Prompt, completion and cached tokens.
    pub tokens: [Option<u64>; 3],
    pub cost_usd: Option<f64>,
}

/// Every metric promptgate exports.
pub struct Metrics {
    /// Each version's resolved series, by prompt name ("" for none) and version: bounded by the
    /// versions that served requests, as the series themselves are.
    series: RwLock<SeriesByVersion>,
    registry: Registry,
    /// Requests by prompt, version and HTTP status.
    pub requests: Family<RequestLabels, Counter>,
    /// Whole request duration, streams until their end.
    pub latency: HistogramFamily,
    /// Time to the first byte of a stream.
    pub ttft: HistogramFamily,
    /// Time spent in promptgate before the request went upstream.
    pub overhead: HistogramFamily,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost: Family<VersionLabels, Counter<f64, AtomicU64>>,
    pub unpriced: Family<ModelLabel, Counter>,
    pub feedback_sum: Family<FeedbackLabels, Gauge<f64, AtomicU64>>,
    pub feedback_count: Family<FeedbackLabels, Counter>,
    pub events_dropped: Counter,
    /// Trace spans not exported: the queue was full or the collector failed.
    pub otel_spans_dropped: Counter,
    pub otel_spans_exported: Counter,
    /// Failed writes of state files (a full disk); serving goes on.
    pub write_errors: Family<FileLabel, Counter>,
    /// Prompt-set reloads by result (`ok`, `error`).
    pub reloads: Family<ResultLabel, Counter>,
    /// 1 while the files on disk do not validate (the last good set is serving).
    pub reload_error: Gauge,
    /// Prompts in the serving set.
    pub prompts_loaded: Gauge,
    /// Guarded rollouts: state and halts per prompt.
    pub rollout: crate::rollout::RolloutMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("promptgate");
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register("reloads", "Prompt-set reloads by result", reloads.clone());
        let reload_error = Gauge::default();
        registry.register(
            "reload_error",
            "1 while the prompt files do not validate and the last good set is serving",
            reload_error.clone(),
        );
        let prompts_loaded = Gauge::default();
        registry.register(
            "prompts_loaded",
            "Prompts in the serving set",
            prompts_loaded.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by prompt, version and HTTP status",
            requests.clone(),
        );
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Request duration until the last byte",
            Unit::Seconds,
            latency.clone(),
        );
        let ttft: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "time_to_first_token",
            "Time to the first byte of a streamed answer",
            Unit::Seconds,
            ttft.clone(),
        );
        let overhead: HistogramFamily = Family::new_with_constructor(overhead_histogram);
        registry.register_with_unit(
            "proxy_overhead",
            "Time spent in promptgate before the request went upstream",
            Unit::Seconds,
            overhead.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens by kind (prompt, completion, cached)",
            tokens.clone(),
        );
        let cost = Family::<VersionLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "cost_usd",
            "Cost in USD from the pricing table",
            cost.clone(),
        );
        let unpriced = Family::<ModelLabel, Counter>::default();
        registry.register(
            "unpriced_requests",
            "Requests with token usage whose model has no price (cost unknown)",
            unpriced.clone(),
        );
        let feedback_sum = Family::<FeedbackLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "feedback_score_sum",
            "Sum of feedback scores by metric",
            feedback_sum.clone(),
        );
        let feedback_count = Family::<FeedbackLabels, Counter>::default();
        registry.register(
            "feedback",
            "Feedback scores received by metric",
            feedback_count.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Events not written because the writer fell behind",
            events_dropped.clone(),
        );
        let otel_spans_dropped = Counter::default();
        registry.register(
            "otel_spans_dropped",
            "Trace spans dropped: the export queue was full or the collector failed",
            otel_spans_dropped.clone(),
        );
        let otel_spans_exported = Counter::default();
        registry.register(
            "otel_spans_exported",
            "Trace spans the collector accepted",
            otel_spans_exported.clone(),
        );
        let write_errors = Family::<FileLabel, Counter>::default();
        registry.register(
            "state_write_errors",
            "Failed writes of the events file, the audit trail or the statistics checkpoint (a full disk and the like); serving goes on",
            write_errors.clone(),
        );
        let rollout = crate::rollout::RolloutMetrics::register(&mut registry);
        Metrics {
            series: RwLock::default(),
            rollout,
            registry,
            write_errors,
            requests,
            latency,
            ttft,
            overhead,
            tokens,
            cost,
            unpriced,
            feedback_sum,
            feedback_count,
            events_dropped,
            otel_spans_dropped,
            otel_spans_exported,
            reloads,
            reload_error,
            prompts_loaded,
        }
    }

    /// The series of `prompt`'s `version` (`None`, `None`: requests that named no prompt),
    /// found by one lookup of the name.
    pub fn series(&self, prompt: Option<&str>, version: Option<u32>) -> Arc<VersionSeries> {
        let name = prompt.unwrap_or_default();
        let found = |map: &SeriesByVersion| {
            map.get(name)
                .and_then(|versions| versions.iter().find(|(v, _)| *v == version))
                .map(|(_, series)| series.clone())
        };
        if let Some(series) = found(&self.series.read().unwrap_or_else(|e| e.into_inner())) {
            return series;
        }
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        if let Some(series) = found(&map) {
            return series;
        }
        let series = Arc::new(VersionSeries {
            labels: VersionLabels {
                prompt: name.to_owned(),
                version: version.map(|v| v.to_string()).unwrap_or_default(),
            },
            ok: OnceLock::new(),
            latency: OnceLock::new(),
            ttft: OnceLock::new(),
            overhead: OnceLock::new(),
            tokens: Default::default(),
            cost: OnceLock::new(),
        });
        map.entry(name.to_owned())
            .or_default()
            .push((version, series.clone()));
        series
    }

    /// Adds one finished request to its version's series.
    pub fn record(&self, series: &VersionSeries, figures: &RequestFigures) {
        let labels = &series.labels;
        let requests = |status| {
            self.requests
                .get_or_create(&RequestLabels {
                    prompt: labels.prompt.clone(),
                    version: labels.version.clone(),
                    status,
                })
                .clone()
        };
        if figures.status == 200 {
            series.ok.get_or_init(|| requests(200)).inc();
        } else {
            requests(figures.status).inc();
        }
        series
            .latency
            .get_or_init(|| self.latency.get_or_create(labels).clone())
            .observe(figures.latency_s);
        if let Some(ttft) = figures.ttft_s {
            series
                .ttft
                .get_or_init(|| self.ttft.get_or_create(labels).clone())
                .observe(ttft);
        }
        if let Some(overhead) = figures.overhead_s {
            series
                .overhead
                .get_or_init(|| self.overhead.get_or_create(labels).clone())
                .observe(overhead);
        }
        for ((slot, kind), n) in series.tokens.iter().zip(TOKEN_KINDS).zip(figures.tokens) {
            if let Some(n) = n {
                slot.get_or_init(|| {
                    self.tokens
                        .get_or_create(&TokenLabels {
                            prompt: labels.prompt.clone(),
                            version: labels.version.clone(),
                            kind,
                        })
                        .clone()
                })
                .inc_by(n);
            }
        }
        if let Some(cost) = figures.cost_usd {
            series
                .cost
                .get_or_init(|| self.cost.get_or_create(labels).clone())
                .inc_by(cost);
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_metrics_are_exported() {
        let m = Metrics::new();
        m.reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
        m.prompts_loaded.set(3);
        let text = m.encode();
        assert!(
            text.contains("promptgate_reloads_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("promptgate_prompts_loaded 3"), "{text}");
        assert!(text.contains("promptgate_reload_error 0"), "{text}");
    }

    #[test]
    fn version_series_are_created_on_first_use_and_shared() {
        let m = Metrics::new();
        let a = m.series(Some("support"), Some(2));
        assert!(Arc::ptr_eq(&a, &m.series(Some("support"), Some(2))));
        assert!(!Arc::ptr_eq(&a, &m.series(Some("support"), Some(3))));
        let none = m.series(None, None);
        let figures = |status, ttft_s, tokens, cost_usd| RequestFigures {
            status,
            latency_s: 0.5,
            ttft_s,
            overhead_s: Some(0.000_1),
            tokens,
            cost_usd,
        };
        m.record(
            &a,
            &figures(200, None, [Some(10), Some(5), None], Some(0.25)),
        );
        m.record(
            &a,
            &figures(200, Some(0.1), [Some(1), Some(1), Some(1)], None),
        );
        m.record(&a, &figures(502, None, [None; 3], None));
        m.record(&none, &figures(200, None, [None; 3], None));
        let text = m.encode();
        for line in [
            "promptgate_requests_total{prompt=\"support\",version=\"2\",status=\"200\"} 2",
            "promptgate_requests_total{prompt=\"support\",version=\"2\",status=\"502\"} 1",
            "promptgate_requests_total{prompt=\"\",version=\"\",status=\"200\"} 1",
            "promptgate_request_duration_seconds_count{prompt=\"support\",version=\"2\"} 3",
            "promptgate_time_to_first_token_seconds_count{prompt=\"support\",version=\"2\"} 1",
            "promptgate_tokens_total{prompt=\"support\",version=\"2\",kind=\"prompt\"} 11",
            "promptgate_tokens_total{prompt=\"support\",version=\"2\",kind=\"cached\"} 1",
            "promptgate_cost_usd_total{prompt=\"support\",version=\"2\"} 0.25",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        // Nothing recorded, no series: version 3 was only looked up.
        assert!(!text.contains("version=\"3\""), "{text}");
        assert!(
            !text.contains("time_to_first_token_seconds_count{prompt=\"\""),
            "{text}"
        );
        assert!(!text.contains("cost_usd_total{prompt=\"\""), "{text}");
    }
}
