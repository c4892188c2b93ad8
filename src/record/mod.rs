//! Step 7 of the request path, off the hot path: when a request is over, record it — metrics,
//! experiment statistics, the feedback index and one line in the events file.
//!
//! Recording never waits: metrics are atomics, statistics take a short lock, and the event goes
//! through a bounded channel to one writer task. At start the events file is replayed, so the
//! statistics and the feedback index survive a restart.

pub mod events;
pub mod fleet;
pub mod metrics;
pub mod pricing;
pub mod prometheus;
pub mod stats;
pub mod usage;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use events::{Event, EventSink, FeedbackEvent, RequestEvent};
pub use metrics::Metrics;
pub use pricing::{Pricing, Usage};

use crate::prompts::Prompt;
use metrics::{FeedbackLabels, ModelLabel, RequestLabels, VersionLabels};
use stats::Stats;

/// Which version served a request, as feedback needs to find it. Names are shared, not
/// copied: the index holds many entries for few prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedBy {
    pub prompt: Arc<str>,
    pub version: u32,
    pub experiment: Option<Arc<str>>,
}

/// Request id → what served it, bounded: the oldest ids are forgotten first.
struct FeedbackIndex {
    map: HashMap<Arc<str>, ServedBy>,
    order: VecDeque<Arc<str>>,
    /// The last names seen, reused so entries share them.
    names: HashMap<String, Arc<str>>,
    capacity: usize,
}

impl FeedbackIndex {
    fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        // Prompt names and experiment ids are few; keep the table from growing without bound.
        if self.names.len() < 10_000 {
            self.names.insert(name.to_owned(), shared.clone());
        }
        shared
    }

    fn insert(&mut self, id: &str, prompt: &str, version: u32, experiment: Option<&str>) {
        if self.capacity == 0 {
            return;
        }
        let by = ServedBy {
            prompt: self.name(prompt),
            version,
            experiment: experiment.map(|e| self.name(e)),
        };
        let id: Arc<str> = Arc::from(id);
        if self.map.insert(id.clone(), by).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// Why feedback was refused.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error(
        "unknown request id `{0}`: it was not served by a prompt, or is older than the feedback window"
    )]
    UnknownRequest(String),
    #[error("metric `{0}` must be a number")]
    NotNumeric(String),
    #[error("metric `{0}` is out of range: scores must lie within ±1e9")]
    OutOfRange(String),
    #[error("`metrics` holds no scores")]
    Empty,
}

/// Cheap to clone; shared by every request.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Arc<Metrics>,
    pricing: Pricing,
    stats: Mutex<Stats>,
    index: Mutex<FeedbackIndex>,
    events: Option<EventSink>,
    /// Rate limit for the "events dropped" warning.
    last_drop_warning: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update leaves the data consistent, so a lock poisoned by a panic is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Recorder {
    pub fn new(
        metrics: Arc<Metrics>,
        pricing: Pricing,
        events: Option<EventSink>,
        feedback_window: usize,
    ) -> Self {
        Recorder {
            inner: Arc::new(Inner {
                metrics,
                pricing,
                stats: Mutex::new(Stats::default()),
                index: Mutex::new(FeedbackIndex {
                    map: HashMap::new(),
                    order: VecDeque::new(),
                    names: HashMap::new(),
                    capacity: feedback_window,
                }),
                events,
                last_drop_warning: Mutex::new(None),
            }),
        }
    }

    pub fn pricing(&self) -> &Pricing {
        &self.inner.pricing
    }

    /// Rebuilds statistics and the feedback index from an events file. Blocking; at start.
    pub fn replay(&self, path: &Path) -> std::io::Result<(u64, u64)> {
        events::replay(path, |event| {
            let mut stats = lock(&self.inner.stats);
            self.apply(&mut stats, &event);
        })
    }

    /// Applies an event to the statistics and queues it for the file under one lock, so the
    /// file holds events in the order the statistics saw them and a replay adds the same
    /// floating-point numbers in the same order: identical figures after a restart.
    fn apply_and_write(&self, event: Event) {
        let mut stats = lock(&self.inner.stats);
        self.apply(&mut stats, &event);
        self.write(event);
    }

    /// Statistics and index (not metrics, not the file) from one event.
    fn apply(&self, stats: &mut Stats, event: &Event) {
        match event {
            Event::Request(r) => {
                let (Some(prompt), Some(version)) = (&r.prompt, r.version) else {
                    return;
                };
                let key = (
                    prompt.clone(),
                    r.experiment.clone().unwrap_or_default(),
                    version,
                );
                let figures = stats::RequestFigures {
                    ok: r.status < 400 && r.outcome == "ok",
                    latency_ms: r.latency_ms,
                    cost_usd: r.cost_usd,
                    tokens: [r.prompt_tokens, r.completion_tokens, r.cached_tokens],
                };
                stats.add_request(key, &figures);
                let mut index = lock(&self.inner.index);
                index.insert(&r.request_id, prompt, version, r.experiment.as_deref());
                // Feedback may name the id the client saw as `x-request-id`: the upstream's.
                if let Some(upstream) = &r.upstream_request_id {
                    index.insert(upstream, prompt, version, r.experiment.as_deref());
                }
            }
            Event::Feedback(f) => {
                let key = (
                    f.prompt.clone(),
                    f.experiment.clone().unwrap_or_default(),
                    f.version,
                );
                stats.add_feedback(key, &f.metrics);
            }
        }
    }

    /// Records a finished request: metrics, statistics, index, events file.
    pub fn record(&self, event: RequestEvent) {
        let m = &self.inner.metrics;
        let labels = VersionLabels {
            prompt: event.prompt.clone().unwrap_or_default(),
            version: event.version.map(|v| v.to_string()).unwrap_or_default(),
        };
        m.requests
            .get_or_create(&RequestLabels {
                prompt: labels.prompt.clone(),
                version: labels.version.clone(),
                status: event.status,
            })
            .inc();
        m.latency
            .get_or_create(&labels)
            .observe(event.latency_ms / 1000.0);
        if let Some(ttft) = event.ttft_ms.filter(|_| event.stream) {
            m.ttft.get_or_create(&labels).observe(ttft / 1000.0);
        }
        if let Some(overhead) = event.overhead_ms {
            m.overhead.get_or_create(&labels).observe(overhead / 1000.0);
        }
        for (kind, n) in [
            ("prompt", event.prompt_tokens),
            ("completion", event.completion_tokens),
            ("cached", event.cached_tokens),
        ] {
            if let Some(n) = n {
                m.tokens
                    .get_or_create(&metrics::TokenLabels {
                        prompt: labels.prompt.clone(),
                        version: labels.version.clone(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
        match (event.cost_usd, &event.model, event.prompt_tokens) {
            (Some(cost), _, _) => {
                m.cost.get_or_create(&labels).inc_by(cost);
            }
            // Tokens were counted but the model has no price: say so, never guess.
            (None, Some(model), Some(_)) => {
                m.unpriced
                    .get_or_create(&ModelLabel {
                        model: model.clone(),
                    })
                    .inc();
            }
            _ => {}
        }
        let event = Event::Request(Box::new(event));
        self.apply_and_write(event);
    }

    fn write(&self, event: Event) {
        let Some(sink) = &self.inner.events else {
            return;
        };
        if let Err(e) = sink.send(event) {
            self.inner.metrics.events_dropped.inc();
            let mut last = lock(&self.inner.last_drop_warning);
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                *last = Some(Instant::now());
                tracing::warn!(
                    reason = ?e,
                    "an event could not be queued for the events file and was dropped (counted in promptgate_events_dropped_total)"
                );
            }
        }
    }

    /// Attaches feedback scores to the version that served `request_id`.
    pub fn feedback(
        &self,
        request_id: &str,
        metrics: &serde_json::Map<String, Value>,
    ) -> Result<FeedbackEvent, FeedbackError> {
        let mut scores = BTreeMap::new();
        for (name, value) in metrics {
            let Some(x) = value.as_f64().filter(|x| x.is_finite()) else {
                return Err(FeedbackError::NotNumeric(name.clone()));
            };
            if x.abs() > stats::MAX_SCORE {
                return Err(FeedbackError::OutOfRange(name.clone()));
            }
            scores.insert(name.clone(), x);
        }
        if scores.is_empty() {
            return Err(FeedbackError::Empty);
        }
        let served = lock(&self.inner.index)
            .map
            .get(request_id)
            .cloned()
            .ok_or_else(|| FeedbackError::UnknownRequest(request_id.to_owned()))?;
        let m = &self.inner.metrics;
        for (name, x) in &scores {
            let labels = FeedbackLabels {
                prompt: served.prompt.to_string(),
                version: served.version.to_string(),
                metric: name.clone(),
            };
            m.feedback_sum.get_or_create(&labels).inc_by(*x);
            m.feedback_count.get_or_create(&labels).inc();
        }
        let event = FeedbackEvent {
            time: now(),
            request_id: request_id.to_owned(),
            prompt: served.prompt.to_string(),
            version: served.version,
            experiment: served.experiment.as_deref().map(str::to_owned),
            metrics: scores,
        };
        let line = Event::Feedback(event.clone());
        self.apply_and_write(line);
        Ok(event)
    }

    /// The experiment report of a prompt (see [`stats::Stats::report`]).
    pub fn experiment_report(&self, prompt: &Prompt) -> Value {
        let id = prompt.experiment.as_ref().map(experiment_id);
        let exp = prompt.experiment.as_ref().zip(id.as_deref());
        let mut report = lock(&self.inner.stats).report(&prompt.name, exp);
        report["experiment"] = serde_json::to_value(&prompt.experiment).unwrap_or(Value::Null);
        report["scope"] = Value::from("replica");
        report
    }

    /// Reads the statistics under their lock (for the exported experiment counters).
    pub fn with_stats<R>(&self, f: impl FnOnce(&Stats) -> R) -> R {
        f(&lock(&self.inner.stats))
    }

    /// Waits until every queued event is written.
    pub async fn flush(&self) {
        if let Some(sink) = &self.inner.events {
            sink.flush().await;
        }
    }
}

/// A short, stable id of an experiment's configuration: statistics are kept per id, so
/// changing the split or the salt starts a fresh comparison.
pub fn experiment_id(experiment: &crate::prompts::Experiment) -> String {
    use sha2::Digest;
    let text = serde_json::to_string(experiment).unwrap_or_default();
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feedback_index_forgets_the_oldest_ids() {
        let mut index = FeedbackIndex {
            map: HashMap::new(),
            order: VecDeque::new(),
            names: HashMap::new(),
            capacity: 2,
        };
        index.insert("a", "support", 1, None);
        index.insert("b", "support", 2, Some("exp1"));
        index.insert("c", "support", 1, None);
        assert!(!index.map.contains_key("a"));
        assert_eq!(index.map["b"].experiment.as_deref(), Some("exp1"));
        assert!(
            Arc::ptr_eq(&index.map["b"].prompt, &index.map["c"].prompt),
            "names are shared"
        );
        assert_eq!(index.order.len(), 2);
    }
}
