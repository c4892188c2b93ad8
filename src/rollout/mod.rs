//! Guarded rollouts: move users from version A to version B step by step, and move them all
//! back the moment B is shown to hurt.
//!
//! Off the request path. A background task looks at each running rollout every tick
//! ([`TICK`]): it reads the arms' sums (this replica's statistics, or with `--prometheus` the
//! fleet's, so every replica takes the same decision from the same numbers), tests the guards
//! ([`guard`]) and advances, holds, halts or completes. The request path only reads the share
//! of users on B: one atomic per prompt ([`Live`]), linked into every new prompt set so a
//! reload keeps it. A halt stores 0 there before anything else, so the next request goes to A.
//!
//! Progress is saved in the state folder (`rollouts.json`) at every change, so a restart resumes
//! at the same step; every start, step, halt, completion and end is in the audit trail.

pub mod guard;
pub mod plan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::audit::{Action, Actor, Audit, Entry};
use crate::prompts::PromptSet;
use crate::record::Recorder;
use crate::record::stats::VariantSums;
use guard::{Check, Decision, StepProgress};
use plan::Rollout;

/// How often running rollouts are looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// With `--prometheus`, the fleet's numbers are read every this many ticks.
const FLEET_EVERY: u64 = 2;
/// Why a new replica's rollout holds every user on A.
const ADOPTING: &str = "reading the fleet's state of this rollout before moving any user to B";
/// The state file in the state folder.
const STATE_FILE: &str = "rollouts.json";

/// A rollout as the request path sees it: its plan and the share of users on `to`.
#[derive(Debug)]
pub struct Live {
    pub id: Arc<str>,
    pub plan: Rollout,
    share: AtomicU32,
}

impl Live {
    /// A rollout not yet linked: every user on `from` until the controller sets the share.
    pub fn new(plan: &Rollout) -> Self {
        Live {
            id: Arc::from(plan.id()),
            plan: plan.clone(),
            share: AtomicU32::new(0),
        }
    }

    /// Percent of users on `to` (their md5 bucket is below it).
    pub fn share(&self) -> u32 {
        self.share.load(Ordering::Relaxed)
    }

    pub fn set_share(&self, share: u32) {
        self.share.store(share.min(100), Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PromptLabel {
    pub prompt: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub prompt: String,
    pub rollout: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabel {
    pub prompt: String,
    pub rollout: String,
}

/// `promptgate_rollout_state{prompt}` (1 running, 2 halted, 3 completed, 0 ended),
/// `promptgate_rollout_share{prompt}`, `promptgate_rollout_halts_total{prompt}`, and
/// `promptgate_rollout_step{prompt,rollout,state}` (the share, one series per prompt: what a new
/// replica reads from the fleet to adopt the rollout's state).
#[derive(Clone, Debug, Default)]
pub struct RolloutMetrics {
    pub state: Family<PromptLabel, Gauge>,
    pub share: Family<PromptLabel, Gauge>,
    pub halts: Family<PromptLabel, Counter>,
    pub step: Family<StepLabel, Gauge>,
    pub started: Family<StartLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The step series shown per prompt, removed when it changes.
    shown: Arc<Mutex<BTreeMap<String, StepLabel>>>,
}

impl RolloutMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = RolloutMetrics::default();
        registry.register(
            "rollout_state",
            "Guarded rollout state: 1 running, 2 halted, 3 completed, 0 ended",
            m.state.clone(),
        );
        registry.register(
            "rollout_share",
            "Percent of users a guarded rollout has moved to the new version",
            m.share.clone(),
        );
        registry.register(
            "rollout_step",
            "Percent of users on the new version, by rollout id and state (running, halted, completed)",
            m.step.clone(),
        );
        registry.register(
            "rollout_started_timestamp_seconds",
            "When the guarded rollout started, by rollout id: a new replica takes the earliest over the fleet",
            m.started.clone(),
        );
        registry.register(
            "rollout_halts",
            "Guarded rollouts halted because a guard was violated",
            m.halts.clone(),
        );
        m
    }

    fn show(&self, prompt: &str, progress: Option<&Progress>) {
        let label = PromptLabel {
            prompt: prompt.to_owned(),
        };
        let (state, share) = progress.map_or((0, 0), |p| (p.status.gauge(), p.share));
        self.state.get_or_create(&label).set(state);
        self.share.get_or_create(&label).set(i64::from(share));
        let mut shown = lock(&self.shown);
        if let Some(old) = shown.remove(prompt) {
            self.step.remove(&old);
            self.started.remove(&StartLabel {
                prompt: old.prompt,
                rollout: old.rollout,
            });
        }
        if let Some(p) = progress {
            let label = StepLabel {
                prompt: prompt.to_owned(),
                rollout: p.id.clone(),
                state: serde_json::to_value(p.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            };
            self.step.get_or_create(&label).set(i64::from(p.share));
            self.started
                .get_or_create(&StartLabel {
                    prompt: prompt.to_owned(),
                    rollout: p.id.clone(),
                })
                .set(started_ms(p) as f64 / 1000.0);
            shown.insert(prompt.to_owned(), label);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Halted,
    Completed,
}

impl Status {
    fn gauge(self) -> i64 {
        match self {
            Status::Running => 1,
            Status::Halted => 2,
            Status::Completed => 3,
        }
    }
}

/// A rollout's progress, as saved in the state folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub id: String,
    pub from: u32,
    pub to: u32,
    pub status: Status,
    /// Index into `steps`.
    pub step_index: usize,
    /// Percent of users on `to` now (0 after a halt).
    pub share: u32,
    pub started_at: String,
    /// When the current step started (Unix milliseconds).
    pub step_started_ms: i64,
    /// Each arm's requests (A, B) when the current step started.
    pub step_base: [u64; 2],
    #[serde(default)]
    pub reason: Option<String>,
    /// The violated guard's test, when halted.
    #[serde(default)]
    pub halt: Option<Value>,
    /// When completed: whether `active` was written to the files.
    #[serde(default)]
    pub active_written: Option<bool>,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Each guard's mixing variance, fixed at its first testable look (see [`guard`]).
    #[serde(default)]
    pub tau2: Vec<Option<f64>>,
}

impl Progress {
    /// A rollout at its first step.
    fn new(live: &Live, step_base: [u64; 2]) -> Self {
        Progress {
            id: live.id.to_string(),
            from: live.plan.from,
            to: live.plan.to,
            status: Status::Running,
            step_index: 0,
            share: live.plan.steps.first().copied().unwrap_or(100),
            started_at: now_text(),
            step_started_ms: now_ms(),
            step_base,
            reason: None,
            halt: None,
            active_written: None,
            finished_at: None,
            tau2: Vec::new(),
        }
    }
}

/// `halted: true` in the files: every user on `from`, whatever the state folder says. Whether
/// this changed the progress.
fn halt_from_files(p: &mut Progress) -> bool {
    if p.status == Status::Halted {
        return false;
    }
    p.status = Status::Halted;
    p.share = 0;
    p.finished_at = Some(now_text());
    p.reason = Some("the `rollout` block says `halted: true`: every user is on `from`".to_owned());
    true
}

fn halted_note(actor: &Actor, name: &str, p: &Progress) -> Entry {
    tracing::warn!(prompt = %name, "rollout halted by `halted: true` in the files: every user back on version {}", p.from);
    entry(
        actor,
        Action::RolloutHalted,
        name,
        p,
        json!({"reason": p.reason, "from_files": true}),
    )
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    #[serde(default)]
    rollouts: BTreeMap<String, Progress>,
    /// Completed rollouts whose block is gone, still reported.
    #[serde(default)]
    finished: BTreeMap<String, Progress>,
}

/// A rollout being run.
struct Tracked {
    live: Arc<Live>,
    progress: Progress,
    checks: Vec<Check>,
    /// Why the step is held, at the last look.
    holding: Option<String>,
    /// With `--prometheus` and no saved progress: the fleet's state is not read yet, so every
    /// user stays on `from` (the safe side) until it is.
    adopting: bool,
}

/// The rollout controller.
pub struct Rollouts {
    inner: Mutex<Inner>,
    path: PathBuf,
    /// Held while the state file is written: the number of the snapshot last written.
    written: Arc<Mutex<u64>>,
    audit: Arc<Audit>,
    metrics: crate::rollout::RolloutMetrics,
    recorder: Recorder,
    /// `replica` or `fleet`: whose numbers decide.
    scope: &'static str,
}

struct Inner {
    tracked: BTreeMap<String, Tracked>,
    finished: BTreeMap<String, Progress>,
    /// Progress read at start, until its prompt's rollout is linked.
    saved: BTreeMap<String, Progress>,
    /// The state file's text as last written (or read), so unchanged progress is not rewritten
    /// at every reload.
    last_saved: String,
    /// The number of the last snapshot taken of the state file.
    seq: u64,
}

/// The state file's text to write, numbered: written after the lock is released (off the
/// runtime threads), and never over a newer one.
struct Snapshot {
    seq: u64,
    text: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Rollouts {
    /// Reads the saved progress from the state folder. A file that cannot be read is logged
    /// and ignored: rollouts then start from their first step.
    pub fn open(
        state_dir: &Path,
        audit: Arc<Audit>,
        metrics: crate::rollout::RolloutMetrics,
        recorder: Recorder,
        fleet: bool,
    ) -> Self {
        let path = state_dir.join(STATE_FILE);
        let saved: Saved = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::error!(file = %path.display(), "cannot read the rollouts' progress: {e}; running rollouts start again from their first step");
                Saved::default()
            }),
            Err(_) => Saved::default(),
        };
        let last_saved = serde_json::to_string_pretty(&saved).unwrap_or_default();
        Rollouts {
            inner: Mutex::new(Inner {
                tracked: BTreeMap::new(),
                finished: saved.finished,
                saved: saved.rollouts,
                last_saved,
                seq: 0,
            }),
            written: Arc::new(Mutex::new(0)),
            path,
            audit,
            metrics,
            recorder,
            scope: if fleet { "fleet" } else { "replica" },
        }
    }

    /// Links a newly loaded set to the running rollouts (before it is swapped in): a rollout
    /// already running keeps its live share; a new one starts (or resumes from the state
    /// folder); one whose block is gone ends. Blocking (audit, state file).
    pub fn link(&self, set: &mut PromptSet, actor: &Actor) {
        let mut inner = lock(&self.inner);
        let mut notes = Vec::new();
        let names: Vec<String> = set
            .prompts()
            .filter(|p| p.rollout_live.is_some())
            .map(|p| p.name.clone())
            .collect();
        for name in &names {
            let Some(prompt) = set.get_mut(name) else {
                continue;
            };
            let Some(fresh) = prompt.rollout_live.clone() else {
                continue;
            };
            let mut carried = None;
            if let Some(t) = inner.tracked.get(name) {
                if t.live.id == fresh.id {
                    prompt.rollout_live = Some(t.live.clone());
                    if fresh.plan.halted
                        && let Some(t) = inner.tracked.get_mut(name)
                        && halt_from_files(&mut t.progress)
                    {
                        t.live.set_share(0);
                        self.metrics.show(name, Some(&t.progress));
                        notes.push(halted_note(actor, name, &t.progress));
                    }
                    continue;
                }
                // The block changed: the old rollout ends, the new one starts with fresh
                // statistics. A running one whose users stay in the same buckets (same from,
                // to and salt: a guard or step tuned) keeps its share: nobody flips B → A.
                notes.push(entry(actor, Action::RolloutEnded, name, &t.progress, json!({"state": t.progress.status, "step": t.progress.share, "replaced_by": *fresh.id})));
                let (old, new) = (&t.live.plan, &fresh.plan);
                if t.progress.status == Status::Running
                    && !t.adopting
                    && (old.from, old.to, &old.salt) == (new.from, new.to, &new.salt)
                {
                    carried = Some(t.progress.share);
                }
            }
            let plan = &fresh.plan;
            let progress = match inner.saved.remove(name).filter(|p| *p.id == *fresh.id) {
                Some(mut resumed) => {
                    tracing::info!(prompt = %name, step = resumed.share, state = ?resumed.status, "rollout resumed from the state folder");
                    if plan.halted && halt_from_files(&mut resumed) {
                        notes.push(halted_note(actor, name, &resumed));
                    }
                    resumed
                }
                None if plan.halted => {
                    // A fresh state folder (a new pod): the files say it halted, so it stays so.
                    let mut progress = Progress::new(&fresh, [0, 0]);
                    halt_from_files(&mut progress);
                    tracing::info!(prompt = %name, "rollout halted in the files: every user on version {}", plan.from);
                    progress
                }
                None => {
                    let base = if self.scope == "fleet" {
                        [0, 0]
                    } else {
                        self.local_sums(name, &fresh).map(|s| s.requests)
                    };
                    let mut progress = Progress::new(&fresh, base);
                    if let Some(share) = carried {
                        // The largest step at or below the share the users had.
                        progress.step_index =
                            plan.steps.iter().rposition(|s| *s <= share).unwrap_or(0);
                        progress.share =
                            plan.steps.get(progress.step_index).copied().unwrap_or(100);
                    }
                    tracing::info!(prompt = %name, from = plan.from, to = plan.to, step = progress.share, "rollout started");
                    notes.push(entry(
                        actor,
                        Action::RolloutStarted,
                        name,
                        &progress,
                        json!({"plan": plan, "step": progress.share, "kept_share_of_the_edited_block": carried.is_some()}),
                    ));
                    progress
                }
            };
            // A replica with no saved progress first adopts the fleet's state (another replica
            // may have advanced, halted or completed this rollout); until then, everyone on A.
            let adopting = self.scope == "fleet"
                && carried.is_none()
                && progress.status == Status::Running
                && progress.step_index == 0
                && matches!(notes.last(), Some(e) if e.action == Action::RolloutStarted && e.prompt == *name);
            if adopting {
                fresh.set_share(0);
            } else {
                fresh.set_share(progress.share);
                self.metrics.show(name, Some(&progress));
            }
            inner.finished.remove(name);
            inner.tracked.insert(
                name.clone(),
                Tracked {
                    live: fresh,
                    progress,
                    checks: Vec::new(),
                    holding: adopting.then(|| ADOPTING.to_owned()),
                    adopting,
                },
            );
        }
        let gone: Vec<String> = inner
            .tracked
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in gone {
            let Some(t) = inner.tracked.remove(&name) else {
                continue;
            };
            if t.progress.status == Status::Completed {
                let mut progress = t.progress;
                // The block is gone from the files: the completion was written there.
                progress.active_written.get_or_insert(true);
                self.metrics.show(&name, Some(&progress));
                inner.finished.insert(name, progress);
                continue;
            }
            tracing::info!(prompt = %name, state = ?t.progress.status, "rollout ended: its block was removed");
            notes.push(entry(
                actor,
                Action::RolloutEnded,
                &name,
                &t.progress,
                json!({"state": t.progress.status, "step": t.progress.share}),
            ));
            self.metrics.show(&name, None);
        }
        let snapshot = self.save(&mut inner);
        drop(inner);
        write_state(&self.path, &self.written, snapshot);
        for note in notes {
            self.note(note);
        }
    }

    fn note(&self, entry: Entry) {
        if let Err(e) = self.audit.note(entry) {
            tracing::error!("cannot write a rollout's entry to the audit trail: {e}");
        }
    }

    /// The state file's new text, if it changed (taken under the lock; written after it).
    fn save(&self, inner: &mut Inner) -> Option<Snapshot> {
        let saved = Saved {
            rollouts: inner
                .tracked
                .iter()
                // Not yet adopted from the fleet: a restart must read the fleet again.
                .filter(|(_, t)| !t.adopting)
                .map(|(n, t)| (n.clone(), t.progress.clone()))
                .chain(inner.saved.iter().map(|(n, p)| (n.clone(), p.clone())))
                .collect(),
            finished: inner.finished.clone(),
        };
        let text = serde_json::to_string_pretty(&saved).unwrap_or_default();
        if text == inner.last_saved {
            return None;
        }
        inner.last_saved.clone_from(&text);
        inner.seq += 1;
        Some(Snapshot {
            seq: inner.seq,
            text,
        })
    }

    /// Writes a snapshot off the runtime threads.
    async fn persist(&self, snapshot: Option<Snapshot>) {
        if snapshot.is_none() {
            return;
        }
        let (path, written) = (self.path.clone(), self.written.clone());
        let _ = tokio::task::spawn_blocking(move || write_state(&path, &written, snapshot)).await;
    }

    /// The arms' (A, B) sums in this replica's statistics.
    fn local_sums(&self, name: &str, live: &Live) -> [VariantSums; 2] {
        self.recorder.with_stats(|stats| {
            [live.plan.from, live.plan.to].map(|v| {
                stats
                    .variant(&(name.to_owned(), live.id.to_string(), v))
                    .cloned()
                    .unwrap_or_default()
            })
        })
    }

    /// The rollout of a prompt as the experiment report shows it, if it has (or had) one.
    pub fn status(&self, name: &str) -> Option<Value> {
        let inner = lock(&self.inner);
        if let Some(t) = inner.tracked.get(name) {
            let mut v = progress_json(&t.progress, Some(&t.live.plan));
            v["decided_from"] = json!(self.scope);
            v["holding"] = json!(t.holding);
            v["adopting"] = json!(t.adopting);
            if t.adopting {
                v["step"] = json!(0);
            }
            v["guards"] = json!(t.checks);
            return Some(v);
        }
        inner.finished.get(name).map(|p| progress_json(p, None))
    }

    /// Looks at every running rollout once. `fleet`: read the fleet's numbers this time.
    async fn tick(&self, state: &AppState, fleet: bool) {
        let running: Vec<(String, Arc<Live>, Progress, bool)> = {
            let inner = lock(&self.inner);
            inner
                .tracked
                .iter()
                .filter(|(_, t)| t.progress.status == Status::Running)
                .map(|(n, t)| (n.clone(), t.live.clone(), t.progress.clone(), t.adopting))
                .collect()
        };
        for (name, live, progress, adopting) in running {
            if adopting {
                if let (Some(prometheus), true) = (&state.fleet, fleet) {
                    match prometheus.rollout_states(&name, &live.id).await {
                        Ok((states, started)) => {
                            let snapshot = self.adopt(&name, &live, &states, started);
                            self.persist(snapshot).await;
                        }
                        Err(e) => self.hold(
                            &name,
                            &live,
                            format!("{ADOPTING}: the fleet's state is unavailable ({e})"),
                        ),
                    }
                }
                continue;
            }
            let sums = match (&state.fleet, self.scope) {
                (Some(prometheus), "fleet") => {
                    if !fleet {
                        continue;
                    }
                    let age = (now_ms() - started_ms(&progress)).max(0) as u64 / 1000;
                    match prometheus
                        .variant_sums(&name, &live.id, age + 60, "the rollout")
                        .await
                    {
                        Ok((mut by_version, _)) => [live.plan.from, live.plan.to]
                            .map(|v| by_version.remove(&v).unwrap_or_default()),
                        Err(crate::record::prometheus::FleetError::NoSeries { .. }) => {
                            Default::default()
                        }
                        Err(e) => {
                            self.hold(
                                &name,
                                &live,
                                format!("the fleet's numbers are unavailable: {e}"),
                            );
                            continue;
                        }
                    }
                }
                _ => self.local_sums(&name, &live),
            };
            self.look(state, &name, &live, &sums).await;
        }
    }

    /// Takes the fleet's state of a rollout this replica has no progress of: halted if any
    /// replica halted it, completed if any completed it, else the largest step any replica
    /// is at (the first step when none runs it yet).
    fn adopt(
        &self,
        name: &str,
        live: &Live,
        states: &[(String, u32)],
        started: Option<f64>,
    ) -> Option<Snapshot> {
        let mut inner = lock(&self.inner);
        let t = inner
            .tracked
            .get_mut(name)
            .filter(|t| t.live.id == live.id && t.adopting)?;
        let any = |state: &str| states.iter().any(|(s, _)| s == state);
        let p = &mut t.progress;
        // The fleet's start: this replica reads the same window of the fleet's numbers.
        if let Some(at) = started
            .filter(|s| s.is_finite())
            .and_then(|s| chrono::DateTime::from_timestamp_millis((s * 1000.0) as i64))
            .filter(|at| at.timestamp_millis() < started_ms(p))
        {
            p.started_at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        }
        let steps = &live.plan.steps;
        if any("halted") {
            p.status = Status::Halted;
            p.share = 0;
            p.finished_at = Some(now_text());
            p.reason = Some("halted on another replica (read from the fleet)".to_owned());
        } else if any("completed") {
            p.status = Status::Completed;
            p.share = 100;
            p.step_index = steps.len().saturating_sub(1);
            p.finished_at = Some(now_text());
            p.reason = Some("completed on another replica (read from the fleet)".to_owned());
        } else if let Some(share) = states
            .iter()
            .filter(|(s, _)| s == "running")
            .map(|(_, share)| *share)
            .max()
        {
            // The largest step at or below the fleet's share.
            p.step_index = steps.iter().rposition(|s| *s <= share).unwrap_or(0);
            p.share = steps.get(p.step_index).copied().unwrap_or(100);
        }
        tracing::info!(prompt = %name, state = ?p.status, step = p.share, "rollout state adopted from the fleet");
        live.set_share(p.share);
        t.adopting = false;
        t.holding = None;
        let progress = t.progress.clone();
        self.metrics.show(name, Some(&progress));
        self.save(&mut inner)
    }

    fn hold(&self, name: &str, live: &Live, why: String) {
        let mut inner = lock(&self.inner);
        if let Some(t) = inner.tracked.get_mut(name)
            && t.live.id == live.id
        {
            if t.holding.as_deref() != Some(why.as_str()) {
                tracing::warn!(prompt = %name, "rollout held: {why}");
            }
            t.holding = Some(why);
        }
    }

    /// One look at one rollout: test, decide, act.
    async fn look(&self, state: &AppState, name: &str, live: &Arc<Live>, sums: &[VariantSums; 2]) {
        let (note, outcome, snapshot) = self.decide(name, live, sums);
        self.persist(snapshot).await;
        if let Some(note) = note {
            let audit = self.audit.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = audit.note(note) {
                    tracing::error!("cannot write a rollout's entry to the audit trail: {e}");
                }
            })
            .await;
        }
        match outcome {
            Some(Status::Completed) => self.make_active(state, name, live).await,
            Some(Status::Halted) => self.write_halt(state, name, live).await,
            _ => {}
        }
    }

    /// Tests the guards and applies the decision: the audit entry to write, and the state the
    /// rollout just reached (halted or completed), if it did.
    fn decide(
        &self,
        name: &str,
        live: &Arc<Live>,
        sums: &[VariantSums; 2],
    ) -> (Option<Entry>, Option<Status>, Option<Snapshot>) {
        let plan = &live.plan;
        let mut inner = lock(&self.inner);
        let Some(t) = inner.tracked.get_mut(name).filter(|t| t.live.id == live.id) else {
            return (None, None, None);
        };
        if t.progress.status != Status::Running {
            return (None, None, None);
        }
        let fixed = t.progress.tau2.iter().flatten().count();
        let checks = guard::evaluate(plan, &sums[0], &sums[1], &mut t.progress.tau2);
        // A mixing variance just fixed is saved with the progress, so a restart keeps it.
        let newly_fixed = t.progress.tau2.iter().flatten().count() > fixed;
        let p = &mut t.progress;
        let step = StepProgress {
            index: p.step_index,
            requests: [
                sums[0].requests.saturating_sub(p.step_base[0]),
                sums[1].requests.saturating_sub(p.step_base[1]),
            ],
            aged: now_ms() - p.step_started_ms >= plan.min_duration_value.as_millis() as i64,
        };
        let decision = guard::decide(plan, step, &checks);
        t.checks = checks;
        t.holding = None;
        let mut reached = None;
        let note = match decision {
            Decision::Hold(why) => {
                t.holding = Some(why.to_owned());
                None
            }
            Decision::Halt(i) => {
                // Everyone back to A first: the next request sees it.
                live.set_share(0);
                let check = &t.checks[i];
                let p = &mut t.progress;
                p.status = Status::Halted;
                p.share = 0;
                p.finished_at = Some(now_text());
                let reason = format!(
                    "guard `{}` violated: {} is beyond the bound {} with confidence ({}: [{}, {}], {} at α = {:.4}; A n = {}, B n = {})",
                    check.guard,
                    check
                        .observed
                        .map_or("n/a".to_owned(), |o| format!("{o:.4}")),
                    check.bound,
                    check.harm,
                    check.interval.map_or(f64::NAN, |(lo, _)| round4(lo)),
                    check.interval.map_or(f64::NAN, |(_, hi)| round4(hi)),
                    check.test,
                    check.alpha,
                    check.n_a,
                    check.n_b,
                );
                tracing::error!(prompt = %name, guard = %check.guard, observed = check.observed, bound = check.bound, n_a = check.n_a, n_b = check.n_b, "rollout halted, every user back on version {}: {reason}", plan.from);
                p.reason = Some(reason);
                p.halt = serde_json::to_value(check).ok();
                reached = Some(Status::Halted);
                self.metrics
                    .halts
                    .get_or_create(&PromptLabel {
                        prompt: name.to_owned(),
                    })
                    .inc();
                Some(entry(
                    &rollout_actor(),
                    Action::RolloutHalted,
                    name,
                    p,
                    json!({"guard": check, "reason": p.reason}),
                ))
            }
            Decision::Advance => {
                let p = &mut t.progress;
                p.step_index += 1;
                p.share = plan.steps.get(p.step_index).copied().unwrap_or(100);
                p.step_started_ms = now_ms();
                p.step_base = [sums[0].requests, sums[1].requests];
                live.set_share(p.share);
                tracing::info!(prompt = %name, step = p.share, "rollout advanced");
                Some(entry(
                    &rollout_actor(),
                    Action::RolloutAdvanced,
                    name,
                    p,
                    json!({"step": p.share, "guards": t.checks}),
                ))
            }
            Decision::Complete => {
                let p = &mut t.progress;
                p.status = Status::Completed;
                p.share = 100;
                p.finished_at = Some(now_text());
                live.set_share(100);
                reached = Some(Status::Completed);
                tracing::info!(prompt = %name, version = plan.to, "rollout completed: version {} serves every user", plan.to);
                Some(entry(
                    &rollout_actor(),
                    Action::RolloutCompleted,
                    name,
                    p,
                    json!({"guards": t.checks}),
                ))
            }
        };
        let progress = t.progress.clone();
        let mut snapshot = None;
        if note.is_some() {
            self.metrics.show(name, Some(&progress));
        }
        if note.is_some() || newly_fixed {
            snapshot = self.save(&mut inner);
        }
        (note, reached, snapshot)
    }

    /// Whether `live` is still the tracked rollout of `name`, in state `status`.
    fn still(&self, name: &str, live: &Live, status: Status) -> bool {
        lock(&self.inner)
            .tracked
            .get(name)
            .is_some_and(|t| t.live.id == live.id && t.progress.status == status)
    }

    /// Whether the prompt's files can be written (a commit in git mode).
    async fn writable(&self, state: &AppState, name: &str) -> bool {
        let folder = state.config.prompts_dir.join(name);
        state.git.is_some()
            || crate::admin::blocking(move || Ok(crate::console::folder_writable(&folder)))
                .await
                .unwrap_or(false)
    }

    /// A halted rollout: `halted: true` goes into the files when they are writable (a commit
    /// in git mode), so a new replica or a lost state folder keeps every user on A.
    async fn write_halt(&self, state: &AppState, name: &str, live: &Live) {
        if !self.still(name, live, Status::Halted) {
            return;
        }
        if !self.writable(state, name).await {
            tracing::warn!(prompt = %name, "rollout halted, but `halted: true` cannot be written (the prompt's folder is read-only): this replica's state folder holds the halt; write `halted: true` in the `rollout` block through git");
            return;
        }
        let prompt = name.to_owned();
        let written = crate::admin::write::commit(state, rollout_actor(), move |writer| {
            writer.halt_rollout(&prompt)?;
            Ok(((), crate::admin::write::Change::rollout_halted(&prompt)))
        })
        .await;
        match written {
            Ok(((), outcome)) if outcome.get("review").is_some() => {
                tracing::warn!(prompt = %name, "rollout halted; `halted: true` waits for review on {}", outcome["review"]["branch"]);
            }
            Ok(_) => {
                tracing::info!(prompt = %name, "rollout halted: `halted: true` written to the files")
            }
            Err(e) => {
                tracing::warn!(prompt = %name, "rollout halted, but `halted: true` cannot be written ({e}): this replica's state folder holds the halt")
            }
        }
    }

    /// A completed rollout: `to` becomes `active` in the files when they are writable;
    /// otherwise the state folder holds it (B keeps every user) and the report says to change
    /// the files through git.
    async fn make_active(&self, state: &AppState, name: &str, live: &Live) {
        let to = live.plan.to;
        // A DELETE that landed since the decision ended it: nothing to make active.
        if !self.still(name, live, Status::Completed) {
            return;
        }
        let prompt = name.to_owned();
        // In git mode the change is a commit (pushed, or waiting for review); otherwise the
        // files are written in place when they can be.
        let written = if self.writable(state, name).await {
            crate::admin::write::commit(state, rollout_actor(), move |writer| {
                writer.finish_rollout(&prompt, to)?;
                Ok((
                    (),
                    crate::admin::write::Change::rollout_completed(&prompt, to),
                ))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|((), outcome)| match outcome.get("review") {
                Some(review) => Err(format!(
                    "the change waits for review on {}",
                    review["branch"].as_str().unwrap_or("a review branch")
                )),
                None => Ok(()),
            })
        } else {
            Err("the prompt's folder is read-only".to_owned())
        };
        match written {
            Ok(()) => {
                let snapshot = self.mark_written(name);
                self.persist(snapshot).await;
            }
            Err(e) => {
                tracing::warn!(prompt = %name, "rollout completed, but `active: {to}` cannot be written ({e}): version {to} keeps every user through the state folder; set `active: {to}` and remove the `rollout` block through git");
                let snapshot = {
                    let mut inner = lock(&self.inner);
                    if let Some(t) = inner.tracked.get_mut(name) {
                        t.progress.active_written = Some(false);
                        t.progress.reason = Some(format!(
                            "completed; the files could not be written ({e}): version {to} serves every user from the state folder — set `active: {to}` and remove the `rollout` block through git"
                        ));
                    }
                    self.save(&mut inner)
                };
                self.persist(snapshot).await;
            }
        }
    }
}

impl Rollouts {
    fn mark_written(&self, name: &str) -> Option<Snapshot> {
        let mut inner = lock(&self.inner);
        if let Some(t) = inner.tracked.get_mut(name) {
            t.progress.active_written = Some(true);
        }
        self.save(&mut inner)
    }
}

/// Writes a snapshot of the state file unless a newer one was written already. Blocking.
fn write_state(path: &Path, written: &Mutex<u64>, snapshot: Option<Snapshot>) {
    let Some(Snapshot { seq, text }) = snapshot else {
        return;
    };
    let mut last = lock(written);
    if seq <= *last {
        return;
    }
    match crate::admin::write::write_atomic(path, &text) {
        Ok(()) => *last = seq,
        Err(e) => {
            tracing::error!(file = %path.display(), "cannot save the rollouts' progress: {e}; a restart resumes from the last saved step")
        }
    }
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn started_ms(p: &Progress) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&p.started_at)
        .map(|t| t.timestamp_millis())
        .unwrap_or(p.step_started_ms)
}

fn rollout_actor() -> Actor {
    Actor {
        name: "rollout".to_owned(),
        source: "rollout",
    }
}

fn entry(actor: &Actor, action: Action, prompt: &str, p: &Progress, value: Value) -> Entry {
    Entry {
        time: String::new(),
        actor: actor.name.clone(),
        source: actor.source.to_owned(),
        action,
        prompt: prompt.to_owned(),
        version: None,
        hash: None,
        previous_hash: None,
        from_version: Some(p.from),
        to_version: Some(p.to),
        value: Some(value),
    }
}

fn progress_json(p: &Progress, plan: Option<&Rollout>) -> Value {
    json!({
        "id": p.id,
        "state": p.status,
        "step": p.share,
        "step_index": p.step_index,
        "from": p.from,
        "to": p.to,
        "steps": plan.map(|r| &r.steps),
        "plan": plan,
        "started_at": p.started_at,
        "step_started_at": chrono::DateTime::from_timestamp_millis(p.step_started_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "finished_at": p.finished_at,
        "reason": p.reason,
        "halt": p.halt,
        "active_written": p.active_written,
    })
}

/// Runs the rollouts until `stop` turns true.
pub async fn run(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        state
            .rollouts
            .tick(&state, n.is_multiple_of(FLEET_EVERY))
            .await;
        n += 1;
    }
}
