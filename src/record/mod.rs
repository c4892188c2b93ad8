//! Step 7 of the request path, off the hot path: when a request is over, record it — metrics,
//! experiment statistics, the feedback index and one line in the events file.
//!
//! Recording never waits: metrics are atomics, statistics take a short lock, and the event goes
//! through a bounded channel to one writer task. At start the events file is replayed, so the
//! statistics and the feedback index survive a restart.

mod answer;
pub mod checkpoint;
pub mod events;
pub mod fleet;
mod index;
pub mod metrics;
pub mod outcome;
pub mod pricing;
pub mod prometheus;
pub mod recent;
pub mod stats;
pub mod usage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use events::{Event, EventSink, FeedbackEvent, RequestEvent, RequestRecord};
pub use index::ServedBy;
pub use metrics::Metrics;
pub use outcome::Outcome;
pub use pricing::{Pricing, Usage};

use crate::prompts::{Prompt, PromptSet};
use index::FeedbackIndex;
use metrics::{FeedbackLabels, ModelLabel};
use stats::Stats;

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
    #[error(
        "metric `{metric}` is not declared for prompt `{prompt}`; declared: {}; add it to `feedback_metrics` in its prompt.yaml",
        quoted(.declared)
    )]
    Undeclared {
        metric: String,
        prompt: String,
        declared: Vec<String>,
    },
    #[error(
        "prompt `{prompt}` already has the limit of {limit} feedback metrics ({}), so `{metric}` is refused; declare the metrics in `feedback_metrics` in its prompt.yaml or raise --feedback-metrics-max",
        quoted(.accepted)
    )]
    TooManyMetrics {
        metric: String,
        prompt: String,
        limit: usize,
        accepted: Vec<String>,
    },
}

fn quoted(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The feedback metric every prompt accepts, uncounted: the experiment comparison's metric.
pub const QUALITY_METRIC: &str = "quality_score";

/// Default of `--feedback-metrics-max`: distinct feedback metric names a prompt without a
/// declared list accepts.
pub const DEFAULT_FEEDBACK_METRICS_MAX: usize = 10;

/// Unknown model names logged (once each) before promptgate stops naming them.
const UNKNOWN_MODELS_LOGGED: usize = 8;

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
    /// Distinct feedback metric names accepted per prompt without a declared list.
    feedback_metrics_max: AtomicUsize,
    /// The first few unpriced model names, each logged once.
    unknown_models: Mutex<Vec<String>>,
    /// Where the statistics are checkpointed, with an events file.
    history: Option<History>,
    /// Requests and errors per prompt in the last hour (the console's list).
    recent: recent::Recent,
}

struct History {
    state_dir: PathBuf,
    events: PathBuf,
    /// Events recorded since the last checkpoint was queued.
    since: AtomicU64,
    errors: prometheus_client::metrics::counter::Counter,
    last_error_log: Arc<Mutex<Option<Instant>>>,
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
        Self::build(metrics, pricing, events, feedback_window, None)
    }

    /// The recorder of a server: opens the events file (rotated by size), restores the
    /// statistics and the feedback index from the checkpoint in the state folder and replays
    /// the events after it. Blocking; at start. Returns the events writer's task too.
    pub fn start(
        metrics: Arc<Metrics>,
        pricing: Pricing,
        config: &crate::config::Config,
    ) -> anyhow::Result<(Self, Option<tokio::task::JoinHandle<()>>)> {
        let Some(path) = &config.events else {
            let recorder = Self::new(metrics, pricing, None, config.feedback_window);
            recorder.set_feedback_metrics_max(config.feedback_metrics_max);
            return Ok((recorder, None));
        };
        let started = Instant::now();
        let saved = checkpoint::load(&config.state_dir, path);
        let (segment, files) = checkpoint::plan(path, saved.as_ref().map(|c| &c.position));
        let errors = |file| {
            metrics
                .write_errors
                .get_or_create(&metrics::FileLabel { file })
                .clone()
        };
        let options = events::WriterOptions {
            max_bytes: config.events_max_bytes,
            kept: config.rotated_kept,
            segment,
            errors: errors("events"),
        };
        let (sink, task) = EventSink::start_with(path.clone(), options).map_err(|e| {
            anyhow::anyhow!("cannot open the events file `{}`: {e}", path.display())
        })?;
        let history = History {
            state_dir: config.state_dir.clone(),
            events: path.clone(),
            since: AtomicU64::new(0),
            errors: errors("checkpoint"),
            last_error_log: Arc::new(Mutex::new(None)),
        };
        let recorder = Self::build(
            metrics,
            pricing,
            Some(sink),
            config.feedback_window,
            Some(history),
        );
        recorder.set_feedback_metrics_max(config.feedback_metrics_max);
        let from_checkpoint = saved.is_some();
        if let Some(saved) = saved {
            *lock(&recorder.inner.stats) = Stats::restore(saved.stats);
            lock(&recorder.inner.index).restore(saved.index);
        }
        let (mut read, mut skipped) = (0, 0);
        for (file, offset) in &files {
            let (r, s) = recorder.replay_file(file, *offset).map_err(|e| {
                anyhow::anyhow!("cannot read the events file `{}`: {e}", file.display())
            })?;
            read += r;
            skipped += s;
        }
        tracing::info!(
            checkpoint = from_checkpoint,
            events = read,
            skipped,
            files = files.len(),
            ms = started.elapsed().as_millis() as u64,
            file = %path.display(),
            "statistics restored"
        );
        if read + skipped > 0 {
            // The next start need not read these again.
            recorder.checkpoint();
        }
        Ok((recorder, Some(task)))
    }

    /// Restores the feedback index from a checkpoint's (the fuzzer's entry point).
    pub fn restore_index(&self, snapshot: checkpoint::IndexSnapshot) {
        lock(&self.inner.index).restore(snapshot);
    }

    fn replay_file(&self, path: &Path, offset: u64) -> std::io::Result<(u64, u64)> {
        use std::io::{Seek, SeekFrom};
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(offset))?;
        self.replay_from(std::io::BufReader::with_capacity(256 * 1024, file))
    }

    fn build(
        metrics: Arc<Metrics>,
        pricing: Pricing,
        events: Option<EventSink>,
        feedback_window: usize,
        history: Option<History>,
    ) -> Self {
        Recorder {
            inner: Arc::new(Inner {
                metrics,
                pricing,
                stats: Mutex::new(Stats::default()),
                index: Mutex::new(FeedbackIndex::new(feedback_window)),
                events,
                last_drop_warning: Mutex::new(None),
                feedback_metrics_max: AtomicUsize::new(DEFAULT_FEEDBACK_METRICS_MAX),
                unknown_models: Mutex::new(Vec::new()),
                history,
                recent: recent::Recent::default(),
            }),
        }
    }

    /// Sets `--feedback-metrics-max`.
    pub fn set_feedback_metrics_max(&self, max: usize) {
        self.inner
            .feedback_metrics_max
            .store(max, Ordering::Relaxed);
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

    /// [`Recorder::replay`] from any reader (the fuzzer's entry point into the events replay).
    pub fn replay_from(&self, reader: impl std::io::BufRead) -> std::io::Result<(u64, u64)> {
        events::replay_from(reader, |event| {
            let mut stats = lock(&self.inner.stats);
            self.apply(&mut stats, &event);
        })
    }

    /// Queues a checkpoint every [`checkpoint::EVERY`] events. Called with the statistics
    /// locked, right after an event was queued: the checkpoint follows it in the queue.
    fn maybe_checkpoint(&self, stats: &Stats) {
        let Some(history) = &self.inner.history else {
            return;
        };
        if history.since.fetch_add(1, Ordering::Relaxed) + 1 >= checkpoint::EVERY {
            self.queue_checkpoint(stats);
        }
    }

    /// Queues a checkpoint of the statistics and the index now (at shutdown and after the
    /// replay at start).
    pub fn checkpoint(&self) {
        let stats = lock(&self.inner.stats);
        self.queue_checkpoint(&stats);
    }

    fn queue_checkpoint(&self, stats: &Stats) {
        let (Some(history), Some(sink)) = (&self.inner.history, &self.inner.events) else {
            return;
        };
        let stats = stats.snapshot();
        let index = lock(&self.inner.index).snapshot();
        let state_dir = history.state_dir.clone();
        let events = history.events.clone();
        let errors = history.errors.clone();
        let last_error_log = history.last_error_log.clone();
        let write = Box::new(move |position| {
            let saved = checkpoint::Checkpoint::new(&events, position, stats, index);
            if let Err(e) = checkpoint::save(&state_dir, &saved) {
                errors.inc();
                let mut last = lock(&last_error_log);
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    *last = Some(Instant::now());
                    tracing::error!(
                        dir = %state_dir.display(),
                        "cannot write the statistics checkpoint: {e}; serving goes on (a restart replays more events)"
                    );
                }
            }
        });
        if sink.checkpoint(write).is_ok() {
            history.since.store(0, Ordering::Relaxed);
        }
    }

    /// Statistics and index (not metrics, not the file) from one event.
    fn apply(&self, stats: &mut Stats, event: &Event) {
        match event {
            Event::Request(r) => self.apply_request(stats, &r.record()),
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

    fn apply_request(&self, stats: &mut Stats, r: &RequestRecord<'_>) {
        let (Some(prompt), Some(version)) = (r.prompt, r.version) else {
            return;
        };
        let figures = stats::RequestFigures {
            ok: r.status < 400 && r.outcome == Outcome::Ok,
            latency_ms: r.latency_ms,
            cost_usd: r.cost_usd,
            tokens: [r.prompt_tokens, r.completion_tokens, r.cached_tokens],
        };
        stats.add_request_of(prompt, r.experiment.unwrap_or_default(), version, &figures);
        let mut index = lock(&self.inner.index);
        index.insert(r.request_id, prompt, version, r.experiment);
        // Feedback may name the id the client saw as `x-request-id`: the upstream's.
        if let Some(upstream) = r.upstream_request_id {
            index.insert(upstream, prompt, version, r.experiment);
        }
    }

    /// Records a finished request: metrics, statistics, index, events file.
    pub fn record(&self, r: &RequestRecord<'_>) {
        let m = &self.inner.metrics;
        let series = m.series(r.prompt, r.version);
        m.record(
            &series,
            &metrics::RequestFigures {
                status: r.status,
                latency_s: r.latency_ms / 1000.0,
                ttft_s: r.ttft_ms.filter(|_| r.stream).map(|t| t / 1000.0),
                overhead_s: r.overhead_ms.map(|o| o / 1000.0),
                tokens: [r.prompt_tokens, r.completion_tokens, r.cached_tokens],
                cost_usd: r.cost_usd,
            },
        );
        // Tokens were counted but the model has no price: say so, never guess. The label
        // takes only names from the pricing table, so a client cannot mint series.
        if let (None, Some(model), Some(_)) = (r.cost_usd, r.model, r.prompt_tokens) {
            self.note_unknown_model(model);
            m.unpriced
                .get_or_create(&ModelLabel {
                    model: self.inner.pricing.label(model).to_owned(),
                })
                .inc();
        }
        if let Some(prompt) = r.prompt {
            let ok = r.status < 400 && r.outcome == Outcome::Ok;
            self.inner.recent.add(prompt, !ok);
        }
        // The line is written before the lock is taken, and queued under it with the
        // statistics' update: the file holds events in the order the statistics saw them, so a
        // replay adds the same floating-point numbers in the same order — identical figures
        // after a restart.
        let line = self.inner.events.as_ref().map(|_| {
            let mut line = Vec::with_capacity(events::LINE_CAPACITY);
            r.write_line(&mut line);
            line
        });
        let mut stats = lock(&self.inner.stats);
        self.apply_request(&mut stats, r);
        if let (Some(sink), Some(line)) = (&self.inner.events, line) {
            self.queued(sink.send_line(line));
        }
        self.maybe_checkpoint(&stats);
    }

    fn write(&self, event: Event) {
        if let Some(sink) = &self.inner.events {
            self.queued(sink.send(event));
        }
    }

    /// Counts and logs (at most every ten seconds) an event the writer could not take.
    fn queued(&self, sent: Result<(), events::SendError>) {
        if let Err(e) = sent {
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

    /// Logs the first few model names without a price, once each.
    fn note_unknown_model(&self, model: &str) {
        let mut seen = lock(&self.inner.unknown_models);
        if seen.len() >= UNKNOWN_MODELS_LOGGED || seen.iter().any(|m| m == model) {
            return;
        }
        seen.push(model.to_owned());
        let more = if seen.len() == UNKNOWN_MODELS_LOGGED {
            "; further unpriced models are not named"
        } else {
            ""
        };
        tracing::warn!(
            model,
            "model `{model}` has no price: its requests count under model=\"other\" in promptgate_unpriced_requests_total (add it with --pricing){more}"
        );
    }

    /// Attaches feedback scores to the version that served `request_id`. Metric names are
    /// bounded: those the prompt declares (`feedback_metrics`), or else the first
    /// `--feedback-metrics-max` names it was sent; `quality_score` is always accepted.
    pub fn feedback(
        &self,
        request_id: &str,
        metrics: &serde_json::Map<String, Value>,
        prompts: &PromptSet,
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
            .get(request_id)
            .cloned()
            .ok_or_else(|| FeedbackError::UnknownRequest(request_id.to_owned()))?;
        let declared = prompts
            .get(&served.prompt)
            .and_then(|p| p.feedback_metrics.as_deref());
        // Checked and applied under one lock, so two posts cannot both take the last slot.
        let mut stats = lock(&self.inner.stats);
        if let Some(declared) = declared {
            if let Some(name) = scores
                .keys()
                .find(|n| *n != QUALITY_METRIC && !declared.contains(n))
            {
                return Err(FeedbackError::Undeclared {
                    metric: name.clone(),
                    prompt: served.prompt.to_string(),
                    declared: declared.to_vec(),
                });
            }
        } else {
            let max = self.inner.feedback_metrics_max.load(Ordering::Relaxed);
            let accepted = stats.metric_names(&served.prompt);
            let new: Vec<&String> = scores
                .keys()
                .filter(|n| *n != QUALITY_METRIC && !accepted.contains(*n))
                .collect();
            if let Some(refused) = new.get(max.saturating_sub(accepted.len())) {
                return Err(FeedbackError::TooManyMetrics {
                    metric: (*refused).clone(),
                    prompt: served.prompt.to_string(),
                    limit: max,
                    accepted: accepted.iter().cloned().collect(),
                });
            }
        }
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
        self.apply(&mut stats, &line);
        self.write(line);
        self.maybe_checkpoint(&stats);
        Ok(event)
    }

    /// The experiment report of a prompt (see [`stats::Stats::report`]).
    pub fn experiment_report(&self, prompt: &Prompt) -> Value {
        if let (None, Some(rollout), Some(id)) = (
            &prompt.experiment,
            &prompt.rollout,
            prompt.experiment_id.as_deref(),
        ) {
            // A rollout's arms, under its id, over the whole rollout.
            let mut report = lock(&self.inner.stats).report_versions(
                &prompt.name,
                id,
                &[rollout.from, rollout.to],
            );
            report["experiment"] = Value::Null;
            report["scope"] = Value::from("replica");
            return report;
        }
        let id = prompt.experiment.as_ref().map(experiment_id);
        let exp = prompt.experiment.as_ref().zip(id.as_deref());
        let mut report = lock(&self.inner.stats).report(&prompt.name, exp);
        report["experiment"] = serde_json::to_value(&prompt.experiment).unwrap_or(Value::Null);
        report["scope"] = Value::from("replica");
        report
    }

    /// Requests and errors of a prompt in the last hour.
    pub fn last_hour(&self, prompt: &str) -> (u64, u64) {
        self.inner.recent.last_hour(prompt)
    }

    /// Reads the statistics under their lock (for the exported experiment counters).
    pub fn with_stats<R>(&self, f: impl FnOnce(&Stats) -> R) -> R {
        f(&lock(&self.inner.stats))
    }

    /// Waits until every queued event is written, with a checkpoint after them when events
    /// came since the last one.
    pub async fn flush(&self) {
        if let Some(history) = &self.inner.history
            && history.since.load(Ordering::Relaxed) > 0
        {
            self.checkpoint();
        }
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
