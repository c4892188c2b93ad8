//! The audit trail: an append-only JSON-lines file in the state folder recording every change
//! to the prompts, whether made through the admin API or seen on disk.
//!
//! The file is also the memory of what was last seen: replaying it gives, per prompt, the
//! versions with their hashes, the active version, labels and experiment. A reload compares the
//! new prompt set against that state, so changes made while promptgate was down are recorded
//! at the next start, versions get a created-at time (first seen), and a version number is
//! never handed out twice.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::prompts::PromptSet;

/// Who made a change and through what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// `disk` (seen by the watcher or at start) or `admin`.
    pub source: &'static str,
}

impl Actor {
    pub fn disk() -> Self {
        Actor {
            name: "disk".to_owned(),
            source: "disk",
        }
    }

    pub fn admin(name: impl Into<String>) -> Self {
        Actor {
            name: name.into(),
            source: "admin",
        }
    }
}

/// What changed, written in the file as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    PromptAdded,
    PromptRemoved,
    VersionAdded,
    VersionRemoved,
    /// A warning: versions are meant to be immutable.
    VersionHashChanged,
    ActiveChanged,
    LabelsChanged,
    ExperimentChanged,
}

/// One line of the audit file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub time: String,
    pub actor: String,
    pub source: String,
    pub action: Action,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<u32>,
    /// The new labels or experiment, for those actions (null when removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// What the audit trail last saw of one prompt.
#[derive(Debug, Clone, Default, PartialEq)]
struct Seen {
    present: bool,
    /// version → (hash, first seen).
    versions: BTreeMap<u32, (String, String)>,
    active: Option<u32>,
    labels: Value,
    experiment: Value,
    highest: u32,
}

/// The audit file and the state replayed from it.
pub struct Audit {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    seen: BTreeMap<String, Seen>,
}

impl Audit {
    /// Opens (or creates) `state_dir/audit.jsonl` and replays it.
    pub fn open(state_dir: &Path) -> anyhow::Result<Audit> {
        fs::create_dir_all(state_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the state folder `{}`: {e}",
                state_dir.display()
            )
        })?;
        let path = state_dir.join("audit.jsonl");
        let mut seen = BTreeMap::new();
        if path.exists() {
            let reader = BufReader::new(File::open(&path)?);
            for (i, line) in reader.lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Entry>(&line) {
                    Ok(entry) => apply(&mut seen, &entry),
                    // A torn last line (a crash mid-write) must not stop the server.
                    Err(e) => tracing::warn!(
                        file = %path.display(),
                        line = i + 1,
                        "skipping an unreadable audit line: {e}"
                    ),
                }
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open `{}`: {e}", path.display()))?;
        // After a torn last line, start on a fresh one so the next entry stays readable.
        let text_len = file.metadata()?.len();
        if text_len > 0 && !fs::read(&path)?.ends_with(b"\n") {
            file.write_all(b"\n")?;
        }
        Ok(Audit {
            path,
            inner: Mutex::new(Inner { file, seen }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data behind (appends are
        // whole lines), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compares `set` with what was last seen, appends an entry per change and returns them.
    /// Blocking: call it off the reactor.
    pub fn record(&self, set: &PromptSet, actor: &Actor) -> std::io::Result<Vec<Entry>> {
        let mut inner = self.lock();
        let time = now();
        let entries = changes(&inner.seen, set, actor, &time);
        if entries.is_empty() {
            return Ok(entries);
        }
        let mut text = String::new();
        for entry in &entries {
            text.push_str(&serde_json::to_string(entry).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        inner.file.write_all(text.as_bytes())?;
        inner.file.flush()?;
        inner.file.sync_data()?;
        for entry in &entries {
            apply(&mut inner.seen, entry);
        }
        for entry in &entries {
            if entry.action == Action::VersionHashChanged {
                tracing::warn!(
                    prompt = %entry.prompt,
                    version = entry.version,
                    previous_hash = entry.previous_hash.as_deref(),
                    hash = entry.hash.as_deref(),
                    "a served version changed on disk; versions are meant to be immutable: add a new version instead"
                );
            }
        }
        Ok(entries)
    }

    /// Every entry, oldest first, optionally for one prompt. Blocking.
    pub fn read(&self, prompt: Option<&str>) -> std::io::Result<Vec<Entry>> {
        let reader = BufReader::new(File::open(&self.path)?);
        let mut out = Vec::new();
        for line in reader.lines() {
            let line = line?;
            let Ok(entry) = serde_json::from_str::<Entry>(&line) else {
                continue;
            };
            if prompt.is_none_or(|p| p == entry.prompt) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// When a version was first seen.
    pub fn first_seen(&self, prompt: &str, version: u32) -> Option<String> {
        let inner = self.lock();
        let seen = inner.seen.get(prompt)?;
        seen.versions.get(&version).map(|(_, at)| at.clone())
    }

    /// The highest version number ever seen for a prompt, removed ones included.
    pub fn highest_version(&self, prompt: &str) -> u32 {
        self.lock().seen.get(prompt).map_or(0, |s| s.highest)
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Updates the replayed state with one entry.
fn apply(seen: &mut BTreeMap<String, Seen>, entry: &Entry) {
    let s = seen.entry(entry.prompt.clone()).or_default();
    match entry.action {
        Action::PromptAdded => s.present = true,
        Action::PromptRemoved => {
            s.present = false;
            s.versions.clear();
            s.active = None;
            s.labels = Value::Null;
            s.experiment = Value::Null;
        }
        Action::VersionAdded | Action::VersionHashChanged => {
            if let (Some(v), Some(hash)) = (entry.version, &entry.hash) {
                let first = s
                    .versions
                    .get(&v)
                    .filter(|_| entry.action == Action::VersionHashChanged)
                    .map_or_else(|| entry.time.clone(), |(_, at)| at.clone());
                s.versions.insert(v, (hash.clone(), first));
                s.highest = s.highest.max(v);
            }
        }
        Action::VersionRemoved => {
            if let Some(v) = entry.version {
                s.versions.remove(&v);
            }
        }
        Action::ActiveChanged => s.active = entry.to_version,
        Action::LabelsChanged => s.labels = entry.value.clone().unwrap_or(Value::Null),
        Action::ExperimentChanged => s.experiment = entry.value.clone().unwrap_or(Value::Null),
    }
}

/// The entries that take the replayed state to `set`.
fn changes(
    seen: &BTreeMap<String, Seen>,
    set: &PromptSet,
    actor: &Actor,
    time: &str,
) -> Vec<Entry> {
    let entry = |action: Action, prompt: &str| Entry {
        time: time.to_owned(),
        actor: actor.name.clone(),
        source: actor.source.to_owned(),
        action,
        prompt: prompt.to_owned(),
        version: None,
        hash: None,
        previous_hash: None,
        from_version: None,
        to_version: None,
        value: None,
    };
    let empty = Seen::default();
    let mut out = Vec::new();
    for prompt in set.prompts() {
        let old = seen
            .get(&prompt.name)
            .filter(|s| s.present)
            .unwrap_or(&empty);
        if !old.present {
            out.push(entry(Action::PromptAdded, &prompt.name));
        }
        for (v, version) in &prompt.versions {
            match old.versions.get(v) {
                None => out.push(Entry {
                    version: Some(*v),
                    hash: Some(version.hash.clone()),
                    // A version written with `created_by` names its author.
                    actor: match (&version.created_by, actor.source) {
                        (Some(by), "disk") => by.clone(),
                        _ => actor.name.clone(),
                    },
                    ..entry(Action::VersionAdded, &prompt.name)
                }),
                Some((hash, _)) if *hash != version.hash => out.push(Entry {
                    version: Some(*v),
                    hash: Some(version.hash.clone()),
                    previous_hash: Some(hash.clone()),
                    ..entry(Action::VersionHashChanged, &prompt.name)
                }),
                Some(_) => {}
            }
        }
        for (v, (hash, _)) in &old.versions {
            if !prompt.versions.contains_key(v) {
                out.push(Entry {
                    version: Some(*v),
                    hash: Some(hash.clone()),
                    ..entry(Action::VersionRemoved, &prompt.name)
                });
            }
        }
        if old.active != Some(prompt.active) {
            out.push(Entry {
                from_version: old.active,
                to_version: Some(prompt.active),
                hash: prompt.versions.get(&prompt.active).map(|v| v.hash.clone()),
                ..entry(Action::ActiveChanged, &prompt.name)
            });
        }
        let labels = serde_json::to_value(&prompt.labels).unwrap_or(Value::Null);
        let labels = if prompt.labels.is_empty() {
            Value::Null
        } else {
            labels
        };
        if old.labels != labels {
            out.push(Entry {
                value: Some(labels),
                ..entry(Action::LabelsChanged, &prompt.name)
            });
        }
        let experiment = serde_json::to_value(&prompt.experiment).unwrap_or(Value::Null);
        if old.experiment != experiment {
            out.push(Entry {
                value: Some(experiment),
                ..entry(Action::ExperimentChanged, &prompt.name)
            });
        }
    }
    for (name, old) in seen {
        if old.present && set.get(name).is_none() {
            out.push(entry(Action::PromptRemoved, name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn actions(entries: &[Entry]) -> Vec<(String, Option<u32>)> {
        entries
            .iter()
            .map(|e| {
                let action = serde_json::to_value(e.action).unwrap();
                (action.as_str().unwrap().to_owned(), e.version)
            })
            .collect()
    }

    #[test]
    fn changes_are_recorded_once_and_survive_a_restart() {
        let prompts = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        write(
            prompts.path(),
            "p/v1.prompt",
            "---\ncreated_by: ann\n---\none",
        );
        let audit = Audit::open(state.path()).unwrap();
        let set = crate::prompts::load(prompts.path()).unwrap();
        let first = audit.record(&set, &Actor::disk()).unwrap();
        assert_eq!(
            actions(&first),
            vec![
                ("prompt_added".into(), None),
                ("version_added".into(), Some(1)),
                ("active_changed".into(), None)
            ]
        );
        assert_eq!(first[1].actor, "ann", "created_by names the author");
        assert!(audit.record(&set, &Actor::disk()).unwrap().is_empty());

        // A restart replays the file: nothing new to record.
        drop(audit);
        let audit = Audit::open(state.path()).unwrap();
        assert!(audit.record(&set, &Actor::disk()).unwrap().is_empty());
        assert!(audit.first_seen("p", 1).is_some());

        // Add v2, make it active, edit v1 in place, and remove nothing.
        write(prompts.path(), "p/v1.prompt", "one, edited");
        write(prompts.path(), "p/v2.prompt", "two");
        let set = crate::prompts::load(prompts.path()).unwrap();
        let entries = audit.record(&set, &Actor::admin("bob")).unwrap();
        assert_eq!(
            actions(&entries),
            vec![
                ("version_hash_changed".into(), Some(1)),
                ("version_added".into(), Some(2)),
                ("active_changed".into(), None)
            ]
        );
        assert_eq!(entries[2].from_version, Some(1));
        assert_eq!(entries[2].to_version, Some(2));
        assert!(
            entries
                .iter()
                .all(|e| e.actor == "bob" && e.source == "admin")
        );

        // Remove v2: the number is still taken.
        fs::remove_file(prompts.path().join("p/v2.prompt")).unwrap();
        let set = crate::prompts::load(prompts.path()).unwrap();
        let entries = audit.record(&set, &Actor::disk()).unwrap();
        assert_eq!(
            actions(&entries),
            vec![
                ("version_removed".into(), Some(2)),
                ("active_changed".into(), None)
            ]
        );
        assert_eq!(audit.highest_version("p"), 2);
        assert_eq!(audit.read(Some("p")).unwrap().len(), 8);
        assert!(audit.read(Some("other")).unwrap().is_empty());
    }

    #[test]
    fn a_torn_line_is_skipped() {
        let state = tempfile::tempdir().unwrap();
        fs::write(
            state.path().join("audit.jsonl"),
            "{\"time\":\"t\",\"actor\":\"a\",\"source\":\"disk\",\"action\":\"version_added\",\"prompt\":\"p\",\"version\":3,\"hash\":\"h\"}\n{\"time\":",
        )
        .unwrap();
        let audit = Audit::open(state.path()).unwrap();
        assert_eq!(audit.highest_version("p"), 3);
        let prompts = tempfile::tempdir().unwrap();
        write(prompts.path(), "q/v1.prompt", "x");
        let set = crate::prompts::load(prompts.path()).unwrap();
        audit.record(&set, &Actor::disk()).unwrap();
        drop(audit);
        let audit = Audit::open(state.path()).unwrap();
        assert!(
            audit.first_seen("q", 1).is_some(),
            "entries after a torn line are kept"
        );
    }
}
