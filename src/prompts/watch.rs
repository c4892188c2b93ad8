//! Watching the prompts folder and asking for a reload when anything under it changes.
//!
//! Two ways: inotify (through `notify`, recursive) with a short debounce, which sees editors
//! that save by rename and a Kubernetes ConfigMap's `..data` symlink swap (a rename in the
//! watched root); or, with `--watch-poll-ms`, a poller that fingerprints every file for
//! filesystems where inotify says nothing.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long the folder must be quiet before a reload: editors and `kubectl` write several
/// files in a burst.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// How often a prompts path behind a symlink is polled.
pub const LINK_POLL: Duration = Duration::from_secs(1);
/// A burst never delays a reload longer than this.
pub const MAX_DELAY: Duration = Duration::from_millis(250);

/// Keeps the watch alive; dropping it stops watching.
pub struct WatchGuard {
    _watcher: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `dir`; `on_change` is called once the watch is in place (to catch anything
/// that changed since the caller loaded the files), then after each burst of changes.
pub fn watch(
    dir: &Path,
    poll: Option<Duration>,
    on_change: impl Fn() + Send + 'static,
) -> anyhow::Result<WatchGuard> {
    // A prompts path that goes through a symlink (git-sync's worktree link) is replaced by
    // swapping the link: inotify keeps watching the old target, so poll instead.
    let through_link = std::path::absolute(dir)
        .ok()
        .zip(dir.canonicalize().ok())
        .is_some_and(|(absolute, real)| absolute != real);
    let poll = match poll {
        None if through_link => {
            tracing::info!(
                dir = %dir.display(),
                "the prompts path goes through a symlink, which file events do not follow when it is swapped; polling every second instead"
            );
            Some(LINK_POLL)
        }
        other => other,
    };
    if let Some(interval) = poll {
        let dir = dir.to_path_buf();
        let task = tokio::spawn(poll_loop(dir, interval, on_change));
        return Ok(WatchGuard {
            _watcher: None,
            task,
        });
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) if is_change(&event.kind) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            // An overflowed queue means changes were missed: reload to be sure.
            Err(e) => {
                tracing::warn!("file watch error: {e}");
                let _ = tx.send(());
            }
        }
    })?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .map_err(|e| anyhow::anyhow!("cannot watch `{}`: {e}", dir.display()))?;
    // A change between the initial load and this point would otherwise go unseen.
    on_change();
    let task = tokio::spawn(debounce(rx, on_change));
    Ok(WatchGuard {
        _watcher: Some(watcher),
        task,
    })
}

/// Reading files (ours included, on every reload) is not a change; writing one is.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

async fn debounce(mut rx: mpsc::UnboundedReceiver<()>, on_change: impl Fn()) {
    while rx.recv().await.is_some() {
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            let quiet = tokio::time::sleep(DEBOUNCE);
            tokio::select! {
                more = rx.recv() => {
                    if more.is_none() {
                        return;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
                () = quiet => break,
            }
        }
        on_change();
    }
}

async fn poll_loop(dir: PathBuf, interval: Duration, on_change: impl Fn()) {
    let fingerprint_of = |dir: PathBuf| async move {
        tokio::task::spawn_blocking(move || fingerprint(&dir))
            .await
            .unwrap_or_default()
    };
    let mut last = fingerprint_of(dir.clone()).await;
    // A change between the initial load and the first fingerprint would otherwise go unseen.
    on_change();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = fingerprint_of(dir.clone()).await;
        if now != last {
            last = now;
            on_change();
        }
    }
}

/// A hash of every file's path, size and modification time under `dir`, following symlinks
/// (a ConfigMap swap changes where they point). Hidden entries at the top are skipped: the
/// visible names already lead into them.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let full = entry.path();
            let Ok(meta) = std::fs::metadata(&full) else {
                continue;
            };
            full.hash(&mut hasher);
            if meta.is_dir() {
                // Bounded depth and count: prompts are two levels deep.
                seen += 1;
                if seen < 100_000 && full.components().count() <= dir.components().count() + 2 {
                    stack.push(full);
                }
                continue;
            }
            meta.len().hash(&mut hasher);
            meta.modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .hash(&mut hasher);
        }
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn reads_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            notify::event::AccessMode::Any
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Create(
            notify::event::CreateKind::File
        )));
    }

    #[test]
    fn fingerprint_sees_content_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("p")).unwrap();
        std::fs::write(dir.path().join("p/v1.prompt"), "a").unwrap();
        let before = fingerprint(dir.path());
        assert_eq!(before, fingerprint(dir.path()));
        std::fs::write(dir.path().join("p/v1.prompt"), "ab").unwrap();
        assert_ne!(before, fingerprint(dir.path()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_events_is_one_reload() {
        let (tx, rx) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(debounce(rx, move || {
            seen.fetch_add(1, Ordering::SeqCst);
        }));
        for _ in 0..5 {
            tx.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(DEBOUNCE * 2).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // A change that never stops still reloads within MAX_DELAY.
        for _ in 0..40 {
            tx.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(count.load(Ordering::SeqCst) >= 2);
    }
}
