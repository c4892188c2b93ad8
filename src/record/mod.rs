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
pub mod metrics;
pub mod outcome;
pub mod pricing;
pub mod prometheus;
pub mod recent;
pub mod stats;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use events::{Event, EventSink, FeedbackEvent, RequestEvent};
pub use metrics::Metrics;
pub use outcome::Outcome;
pub use pricing::{Pricing, Usage};

use crate::prompts::{Prompt, PromptSet};
use metrics::{FeedbackLabels, ModelLabel};
use stats::Stats;

/// Which version served a request, as feedback needs to find it. Names are shared, not
/// copied: the index holds many entries for few prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedBy {
    pub prompt: Arc<str>,
    pub version: u32,
    pub experiment: Option<Arc<str>>,
}

/// Request id → what served it, bounded: the oldest ids are forgotten first. Compact, since it
/// holds `--feedback-window` entries in memory and in the checkpoint: an id is kept as a 64-bit
/// hash (two ids of a window of 100,000 share one with odds of about 1 in 10^9), what served it
/// as an index into the few distinct versions seen, both in a ring of the window's size, with a
/// hash table of ring positions to find them — about 19 bytes an entry.
struct FeedbackIndex {
    hashes: Vec<u64>,
    slots: Vec<u32>,
    /// The oldest entry, once the ring is full.
    head: usize,
    /// Ring positions, by id hash.
    table: hashbrown::HashTable<u32>,
    served: Vec<ServedBy>,
    by_served: HashMap<ServedKey, u32>,
    capacity: usize,
}

/// Prompt, version and experiment: what the index's slots tell apart.
type ServedKey = (Arc<str>, u32, Option<Arc<str>>);

/// Distinct versions the index tells apart; past this, requests are not indexed.
const MAX_SERVED: usize = 65_536;

/// The index's hash of a request id: stable across builds, as the checkpoint keeps it.
fn id_hash(id: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

impl FeedbackIndex {
    fn new(capacity: usize) -> Self {
        FeedbackIndex {
            hashes: Vec::new(),
            slots: Vec::new(),
            head: 0,
            table: hashbrown::HashTable::new(),
            served: Vec::new(),
            by_served: HashMap::new(),
            capacity,
        }
    }

    fn slot(&mut self, prompt: &str, version: u32, experiment: Option<&str>) -> Option<u32> {
        let key = (Arc::from(prompt), version, experiment.map(Arc::from));
        if let Some(slot) = self.by_served.get(&key) {
            return Some(*slot);
        }
        if self.served.len() >= MAX_SERVED {
            return None;
        }
        let slot = u32::try_from(self.served.len()).ok()?;
        self.served.push(ServedBy {
            prompt: key.0.clone(),
            version,
            experiment: key.2.clone(),
        });
        self.by_served.insert(key, slot);
        Some(slot)
    }

    fn insert(&mut self, id: &str, prompt: &str, version: u32, experiment: Option<&str>) {
        if self.capacity == 0 {
            return;
        }
        let Some(slot) = self.slot(prompt, version, experiment) else {
            return;
        };
        self.insert_hashed(id_hash(id), slot);
    }

    fn position(&self, hash: u64) -> Option<usize> {
        let hashes = &self.hashes;
        self.table
            .find(hash, |&p| hashes[p as usize] == hash)
            .map(|&p| p as usize)
    }

    fn insert_hashed(&mut self, hash: u64, slot: u32) {
        if let Some(p) = self.position(hash) {
            self.slots[p] = slot;
            return;
        }
        let position = if self.hashes.len() < self.capacity {
            self.hashes.push(hash);
            self.slots.push(slot);
            if self.hashes.len() == self.capacity {
                // Full for good: no room to spare from the growth by doubling.
                self.hashes.shrink_to_fit();
                self.slots.shrink_to_fit();
            }
            self.hashes.len() - 1
        } else {
            // Forget the oldest, then reuse its place.
            let oldest = self.head;
            let old_hash = self.hashes[oldest];
            if let Ok(entry) = self.table.find_entry(old_hash, |&p| p as usize == oldest) {
                entry.remove();
            }
            self.hashes[oldest] = hash;
            self.slots[oldest] = slot;
            self.head = (oldest + 1) % self.capacity;
            oldest
        };
        let hashes = &self.hashes;
        self.table
            .insert_unique(hash, position as u32, |&p| hashes[p as usize]);
    }

    /// Entries oldest first.
    fn entries(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let n = self.hashes.len();
        (0..n).map(move |i| {
            let p = (self.head + i) % n;
            (self.hashes[p], self.slots[p])
        })
    }

    fn get(&self, id: &str) -> Option<&ServedBy> {
        let p = self.position(id_hash(id))?;
        self.served.get(self.slots[p] as usize)
    }

    fn snapshot(&self) -> checkpoint::IndexSnapshot {
        checkpoint::IndexSnapshot {
            served: self
                .served
                .iter()
                .map(|s| {
                    (
                        s.prompt.to_string(),
                        s.version,
                        s.experiment.as_deref().map(str::to_owned),
                    )
                })
                .collect(),
            entries: self.entries().collect(),
        }
    }

    fn restore(&mut self, snapshot: checkpoint::IndexSnapshot) {
        let slots: Vec<Option<u32>> = snapshot
            .served
            .iter()
            .map(|(prompt, version, experiment)| self.slot(prompt, *version, experiment.as_deref()))
            .collect();
        let keep = snapshot.entries.len().min(self.capacity);
        self.hashes.reserve_exact(keep);
        self.slots.reserve_exact(keep);
        self.table.reserve(keep, |_| 0);
        for (hash, slot) in snapshot.entries {
            if let Some(Some(slot)) = slots.get(slot as usize) {
                self.insert_hashed(hash, *slot);
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

    /// Applies an event to the statistics and queues it for the file under one lock, so the
    /// file holds events in the order the statistics saw them and a replay adds the same
    /// floating-point numbers in the same order: identical figures after a restart.
    fn apply_and_write(&self, event: Event) {
        let mut stats = lock(&self.inner.stats);
        self.apply(&mut stats, &event);
        self.write(event);
        self.maybe_checkpoint(&stats);
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
                    ok: r.status < 400 && r.outcome == Outcome::Ok,
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
        let series = m.series(event.prompt.as_deref(), event.version);
        m.record(
            &series,
            &metrics::RequestFigures {
                status: event.status,
                latency_s: event.latency_ms / 1000.0,
                ttft_s: event.ttft_ms.filter(|_| event.stream).map(|t| t / 1000.0),
                overhead_s: event.overhead_ms.map(|o| o / 1000.0),
                tokens: [
                    event.prompt_tokens,
                    event.completion_tokens,
                    event.cached_tokens,
                ],
                cost_usd: event.cost_usd,
            },
        );
        // Tokens were counted but the model has no price: say so, never guess. The label
        // takes only names from the pricing table, so a client cannot mint series.
        if let (None, Some(model), Some(_)) = (event.cost_usd, &event.model, event.prompt_tokens) {
            self.note_unknown_model(model);
            m.unpriced
                .get_or_create(&ModelLabel {
                    model: self.inner.pricing.label(model).to_owned(),
                })
                .inc();
        }
        if let Some(prompt) = &event.prompt {
            let ok = event.status < 400 && event.outcome == Outcome::Ok;
            self.inner.recent.add(prompt, !ok);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feedback_index_forgets_the_oldest_ids() {
        let mut index = FeedbackIndex::new(2);
        index.insert("a", "support", 1, None);
        index.insert("b", "support", 2, Some("exp1"));
        index.insert("c", "support", 1, None);
        assert!(index.get("a").is_none());
        assert_eq!(index.get("b").unwrap().experiment.as_deref(), Some("exp1"));
        assert_eq!(index.get("c").unwrap().version, 1);
        assert_eq!(index.served.len(), 2, "versions are shared, not copied");
        assert_eq!(index.hashes.len(), 2);
        for i in 0..1000 {
            index.insert(&format!("x{i}"), "support", 1, None);
        }
        assert!(index.get("x998").is_some() && index.get("x999").is_some());
        assert!(index.get("x997").is_none() && index.get("c").is_none());
        assert_eq!(index.table.len(), 2);
        index.insert("b", "support", 2, Some("exp1"));
        index.insert("c", "support", 1, None);

        let mut restored = FeedbackIndex::new(2);
        restored.restore(index.snapshot());
        assert_eq!(restored.get("b"), index.get("b"));
        assert_eq!(restored.get("c"), index.get("c"));
        assert!(restored.get("a").is_none());
        // A smaller window after a restart keeps the newest.
        let mut smaller = FeedbackIndex::new(1);
        smaller.restore(index.snapshot());
        assert!(smaller.get("b").is_none() && smaller.get("c").is_some());
    }
}
