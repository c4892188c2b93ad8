//! Reloading the prompt set: build a new one on the side (fallible, off the reactor), record
//! what changed in the audit trail, then swap it in with one store (infallible). A request sees
//! the old set or the new one, never a mix; a set that does not validate is refused whole and
//! the last good set keeps serving.
//!
//! One task does every reload, in order, so the file watcher and admin writes never race. While
//! an admin write is in flight ([`Reloader::hold_disk`]), the watcher's reloads wait for it: the
//! write's own reload records its change under its actor, not as seen on disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::audit::{Actor, Audit, Entry};
use crate::fewshot::{self, ModelSlot};
use crate::prompts::{self, Problem, Problems, PromptSet};
use crate::record::Metrics;
use crate::record::metrics::ResultLabel;

/// What `/admin/status` shows of reloading.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// When the last reload finished (RFC 3339).
    pub last_reload_at: Option<String>,
    /// `ok` or `error`.
    pub last_result: Option<&'static str>,
    /// Every problem of the last reload, `file:line: message`; empty when it succeeded.
    pub last_error: Vec<String>,
    /// When the serving set was loaded.
    pub serving_since: Option<String>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_duration_ms: f64,
    /// Prompts left out of the serving set because the embedding model they need is missing
    /// or broken (`file: message`); the others serve.
    pub degraded: Vec<String>,
}

/// The result of one reload.
#[derive(Debug)]
pub struct Reloaded {
    pub prompts: usize,
    pub changes: Vec<Entry>,
    pub degraded: Vec<Problem>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    #[error("the prompt files do not validate; the last good set keeps serving:\n{0}")]
    Invalid(Problems),
    #[error("{0}")]
    Failed(String),
}

struct Job {
    actor: Actor,
    reply: Option<oneshot::Sender<Result<Reloaded, ReloadError>>>,
}

/// A handle to the reload task.
#[derive(Clone)]
pub struct Reloader {
    jobs: mpsc::Sender<Job>,
    status: Arc<Mutex<ReloadStatus>>,
    held: Arc<Held>,
}

/// Admin writes in flight, and whether a watcher's reload was put off for them.
#[derive(Default)]
struct Held {
    writes: AtomicUsize,
    skipped: AtomicBool,
}

/// Puts off the watcher's reloads until dropped (then one runs if any was put off).
#[must_use = "the hold ends when dropped"]
pub struct DiskHold {
    reloader: Reloader,
}

impl Drop for DiskHold {
    fn drop(&mut self) {
        let held = &self.reloader.held;
        if held.writes.fetch_sub(1, SeqCst) == 1 && held.skipped.swap(false, SeqCst) {
            self.reloader.trigger();
        }
    }
}

/// What the reload task works on.
pub struct Target {
    pub dir: PathBuf,
    pub prompts: Arc<ArcSwap<PromptSet>>,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
    pub model: Arc<ModelSlot>,
    /// Rollouts keep their live share across reloads.
    pub rollouts: Option<Arc<crate::rollout::Rollouts>>,
}

impl Reloader {
    /// Starts the reload task. `initial` is the set already serving (loaded at start).
    pub fn start(target: Target, degraded: Vec<Problem>) -> Reloader {
        let status = Arc::new(Mutex::new(ReloadStatus {
            serving_since: Some(now()),
            degraded: degraded.iter().map(ToString::to_string).collect(),
            ..ReloadStatus::default()
        }));
        let (jobs, rx) = mpsc::channel(64);
        let held = Arc::new(Held::default());
        tokio::spawn(run(rx, target, status.clone(), held.clone()));
        Reloader { jobs, status, held }
    }

    /// Holds the watcher's reloads while an admin write changes files and reloads: without it,
    /// the watcher can see the new file first and record the change as made on disk, leaving
    /// the write's own reload nothing to attribute to its actor.
    pub fn hold_disk(&self) -> DiskHold {
        self.held.writes.fetch_add(1, SeqCst);
        DiskHold {
            reloader: self.clone(),
        }
    }

    /// Reloads now and waits for the outcome.
    pub async fn reload(&self, actor: Actor) -> Result<Reloaded, ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job {
                actor,
                reply: Some(tx),
            })
            .await
            .map_err(|_| ReloadError::Failed("the reload task has stopped".to_owned()))?;
        rx.await
            .map_err(|_| ReloadError::Failed("the reload task has stopped".to_owned()))?
    }

    /// Asks for a reload without waiting (the file watcher). Coalesces with a queued one.
    pub fn trigger(&self) {
        let _ = self.jobs.try_send(Job {
            actor: Actor::disk(),
            reply: None,
        });
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    target: Target,
    status: Arc<Mutex<ReloadStatus>>,
    held: Arc<Held>,
) {
    let target = Arc::new(target);
    while let Some(job) = rx.recv().await {
        let mut replies = Vec::new();
        replies.extend(job.reply);
        let mut actor = job.actor;
        // Triggers queued behind this one are satisfied by the same reload; a waiting admin
        // call keeps its actor.
        while let Ok(next) = rx.try_recv() {
            if next.reply.is_some() {
                actor = next.actor;
            }
            replies.extend(next.reply);
        }
        // Only the watcher asks, and an admin write is in flight: its own reload follows and
        // sees these files too. Put off (the hold's end asks again); but if the last hold
        // ended meanwhile and did not see the mark, reload now.
        if replies.is_empty() && held.writes.load(SeqCst) > 0 {
            held.skipped.store(true, SeqCst);
            if held.writes.load(SeqCst) > 0 || !held.skipped.swap(false, SeqCst) {
                continue;
            }
        }
        let started = Instant::now();
        let work = target.clone();
        let outcome = tokio::task::spawn_blocking(move || reload_once(&work, &actor))
            .await
            .unwrap_or_else(|e| Err(ReloadError::Failed(format!("reload panicked: {e}"))));
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        {
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            s.last_reload_at = Some(now());
            s.last_duration_ms = elapsed_ms;
            match &outcome {
                Ok(done) => {
                    s.last_result = Some("ok");
                    s.last_error.clear();
                    s.degraded = done.degraded.iter().map(ToString::to_string).collect();
                    s.serving_since = s.last_reload_at.clone();
                    s.reloads_ok += 1;
                }
                Err(e) => {
                    s.last_result = Some("error");
                    s.last_error = match e {
                        ReloadError::Invalid(problems) => {
                            problems.0.iter().map(ToString::to_string).collect()
                        }
                        ReloadError::Failed(message) => vec![message.clone()],
                    };
                    s.reloads_failed += 1;
                }
            }
        }
        let label = ResultLabel {
            result: if outcome.is_ok() { "ok" } else { "error" },
        };
        target.metrics.reloads.get_or_create(&label).inc();
        target.metrics.reload_error.set(i64::from(outcome.is_err()));
        match &outcome {
            Ok(done) => tracing::info!(
                prompts = done.prompts,
                changes = done.changes.len(),
                ms = elapsed_ms,
                "prompts reloaded"
            ),
            Err(e) => tracing::error!("reload refused: {e}"),
        }
        for reply in replies {
            let _ = reply.send(match &outcome {
                Ok(done) => Ok(Reloaded {
                    prompts: done.prompts,
                    changes: done.changes.clone(),
                    degraded: done.degraded.clone(),
                }),
                Err(e) => Err(e.clone()),
            });
        }
    }
}

/// Load → record → swap. Blocking.
fn reload_once(target: &Target, actor: &Actor) -> Result<Reloaded, ReloadError> {
    let mut set = prompts::load(&target.dir).map_err(ReloadError::Invalid)?;
    // Example vectors are part of the set, so examples and versions swap together.
    let degraded = fewshot::attach_vectors(&mut set, &target.model);
    for problem in &degraded {
        tracing::error!("{problem}");
    }
    let changes = target
        .audit
        .record(&set, actor)
        .map_err(|e| ReloadError::Failed(format!("cannot write the audit trail: {e}")))?;
    if let Some(rollouts) = &target.rollouts {
        rollouts.link(&mut set, actor);
    }
    let count = set.len();
    target.prompts.store(Arc::new(set));
    target.metrics.prompts_loaded.set(count as i64);
    Ok(Reloaded {
        prompts: count,
        changes,
        degraded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_watchers_reload_waits_for_an_admin_write_in_flight() {
        let prompts_dir = tempfile::tempdir().unwrap();
        let state_dir = tempfile::tempdir().unwrap();
        let dir = prompts_dir.path().to_path_buf();
        std::fs::create_dir(dir.join("greet")).unwrap();
        std::fs::write(dir.join("greet/v1.prompt"), "Hello").unwrap();
        let set = prompts::load(&dir).unwrap();
        let audit = Arc::new(Audit::open(state_dir.path()).unwrap());
        audit.record(&set, &Actor::disk()).unwrap();
        let reloader = Reloader::start(
            Target {
                dir: dir.clone(),
                prompts: Arc::new(ArcSwap::from_pointee(set)),
                audit,
                metrics: Arc::new(Metrics::new()),
                model: Arc::new(ModelSlot::new(
                    "/nonexistent".into(),
                    "/nonexistent".into(),
                    None,
                )),
                rollouts: None,
            },
            Vec::new(),
        );

        // An admin write: its file lands, the watcher sees it first, then the write reloads.
        let hold = reloader.hold_disk();
        std::fs::write(dir.join("greet/v2.prompt"), "Hi").unwrap();
        reloader.trigger();
        for _ in 0..500 {
            if reloader.held.skipped.load(SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            reloader.held.skipped.load(SeqCst),
            "the watcher's reload was put off"
        );
        assert_eq!(reloader.status().reloads_ok, 0);
        let ana = Actor {
            name: "ana".to_owned(),
            source: "admin",
        };
        let done = reloader.reload(ana).await.unwrap();
        // v2 added (and, with no manifest, made active): all of it the admin's.
        assert_eq!(done.changes[0].version, Some(2), "{:?}", done.changes);
        assert!(
            done.changes.iter().all(|e| e.actor == "ana"),
            "{:?}",
            done.changes
        );

        // The hold's end runs the put-off reload, which finds nothing new.
        drop(hold);
        for _ in 0..500 {
            if reloader.status().reloads_ok == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(reloader.status().reloads_ok, 2);
        assert!(!reloader.held.skipped.load(SeqCst));
    }
}
