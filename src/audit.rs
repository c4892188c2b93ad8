//! The audit trail: an append-only JSON-lines file in the state folder recording every change
//! to the prompts, whether made through the admin API or seen on disk.
//!
//! The file is also the memory of what was last seen: replaying it gives, per prompt, the
//! versions with their hashes, the active version, labels and experiment. A reload compares the
//! new prompt set against that state, so changes made while promptgate was down are recorded
//! at the next start, versions get a created-at time (first seen), and a version number is
//! never handed out twice.
//!
//! The file is rotated by size (`--audit-max-bytes`) into numbered segments
//! (`audit.jsonl.000001`, …; `--rotated-kept` of them are kept). Before each rotation the
//! replayed state is saved (`audit-state.json`), so what was seen survives the segments
//! deleted later. `GET /admin/audit` pages back through the kept segments. A write that fails
//! (a full disk) is counted and logged at most once a minute and never stops a reload; its
//! changes are recorded by the next write that succeeds.

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
    /// A guarded rollout started, took a step, halted, completed or was ended.
    RolloutStarted,
    RolloutAdvanced,
    RolloutHalted,
    RolloutCompleted,
    RolloutEnded,
}

impl Action {
    /// A rollout's own entries, written by the rollout controller.
    pub fn is_rollout(self) -> bool {
        matches!(
            self,
            Action::RolloutStarted
                | Action::RolloutAdvanced
                | Action::RolloutHalted
                | Action::RolloutCompleted
                | Action::RolloutEnded
        )
    }

    /// The name the file writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::PromptAdded => "prompt_added",
            Action::PromptRemoved => "prompt_removed",
            Action::VersionAdded => "version_added",
            Action::VersionRemoved => "version_removed",
            Action::VersionHashChanged => "version_hash_changed",
            Action::ActiveChanged => "active_changed",
            Action::LabelsChanged => "labels_changed",
            Action::ExperimentChanged => "experiment_changed",
            Action::RolloutStarted => "rollout_started",
            Action::RolloutAdvanced => "rollout_advanced",
            Action::RolloutHalted => "rollout_halted",
            Action::RolloutCompleted => "rollout_completed",
            Action::RolloutEnded => "rollout_ended",
        }
    }
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    options: Rotation,
    inner: Mutex<Inner>,
}

/// How the trail is kept bounded and how failed writes are counted.
#[derive(Clone)]
pub struct Rotation {
    pub max_bytes: u64,
    pub kept: usize,
    pub errors: prometheus_client::metrics::counter::Counter,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: u64::MAX,
            kept: 3,
            errors: Default::default(),
        }
    }
}

struct Inner {
    file: File,
    /// Bytes in the live file.
    written: u64,
    /// The number the live file gets when rotated.
    segment: u64,
    /// A write failed part-way: the next one starts on a fresh line.
    torn: bool,
    last_error_log: Option<std::time::Instant>,
    seen: BTreeMap<String, Seen>,
}

/// The state saved before each rotation.
#[derive(Serialize, Deserialize)]
struct SavedState {
    /// The last rotated segment the state includes.
    segment: u64,
    seen: BTreeMap<String, Seen>,
}

const STATE_FILE: &str = "audit-state.json";

/// A place in the trail for paging: segment and line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub segment: u64,
    pub line: usize,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.segment, self.line)
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not an audit cursor (from the `x-audit-next` header)");
        let (segment, line) = text.split_once('-').ok_or_else(bad)?;
        Ok(Cursor {
            segment: segment.parse().map_err(|_| bad())?,
            line: line.parse().map_err(|_| bad())?,
        })
    }
}

fn replay_into(seen: &mut BTreeMap<String, Seen>, path: &Path) -> std::io::Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<Entry>(&line) {
            Ok(entry) => apply(seen, &entry),
            // A torn last line (a crash mid-write) must not stop the server.
            Err(e) => tracing::warn!(
                file = %path.display(),
                line = i + 1,
                "skipping an unreadable audit line: {e}"
            ),
        }
    }
    Ok(())
}

impl Audit {
    /// Opens (or creates) `state_dir/audit.jsonl` and replays it, never rotating.
    pub fn open(state_dir: &Path) -> anyhow::Result<Audit> {
        Self::open_with(state_dir, Rotation::default())
    }

    /// Opens (or creates) `state_dir/audit.jsonl`, rotated by size, and replays the saved
    /// state and the segments after it.
    pub fn open_with(state_dir: &Path, options: Rotation) -> anyhow::Result<Audit> {
        fs::create_dir_all(state_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the state folder `{}`: {e}",
                state_dir.display()
            )
        })?;
        let path = state_dir.join("audit.jsonl");
        let saved: Option<SavedState> = fs::read(state_dir.join(STATE_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let after = saved.as_ref().map_or(0, |s| s.segment);
        let mut seen = saved.map(|s| s.seen).unwrap_or_default();
        let segments = crate::record::events::rotated_segments(&path);
        for (_, segment) in segments.iter().filter(|(n, _)| *n > after) {
            replay_into(&mut seen, segment)?;
        }
        replay_into(&mut seen, &path)?;
        let segment = segments.last().map_or(1, |(n, _)| n + 1).max(after + 1);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open `{}`: {e}", path.display()))?;
        // After a torn last line, start on a fresh one so the next entry stays readable.
        let written = file.metadata()?.len();
        let torn = written > 0 && !fs::read(&path)?.ends_with(b"\n");
        if torn && let Err(e) = file.write_all(b"\n") {
            tracing::warn!(file = %path.display(), "cannot end the torn audit line: {e}");
        }
        Ok(Audit {
            path,
            options,
            inner: Mutex::new(Inner {
                file,
                written,
                segment,
                torn: false,
                last_error_log: None,
                seen,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data behind (appends are
        // whole lines), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compares `set` with what was last seen, appends an entry per change and returns them.
    /// A write that fails is counted and logged, not returned: the changes are recorded by
    /// the next write that succeeds. Blocking: call it off the reactor.
    pub fn record(&self, set: &PromptSet, actor: &Actor) -> std::io::Result<Vec<Entry>> {
        let mut inner = self.lock();
        let time = now();
        let entries = changes(&inner.seen, set, actor, &time);
        self.append(&mut inner, entries)
    }

    /// Appends an entry that no diff of the files finds (a rollout's step, halt or completion).
    /// Blocking.
    pub fn note(&self, mut entry: Entry) -> std::io::Result<()> {
        let mut inner = self.lock();
        if entry.time.is_empty() {
            entry.time = now();
        }
        self.append(&mut inner, vec![entry]).map(drop)
    }

    fn append(
        &self,
        inner: &mut std::sync::MutexGuard<'_, Inner>,
        entries: Vec<Entry>,
    ) -> std::io::Result<Vec<Entry>> {
        if entries.is_empty() {
            return Ok(entries);
        }
        let mut text = String::new();
        if inner.torn {
            text.push('\n');
        }
        for entry in &entries {
            text.push_str(&serde_json::to_string(entry).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        if inner.written > 0 && inner.written + text.len() as u64 > self.options.max_bytes {
            self.rotate(inner);
        }
        let written = (|| {
            inner.file.write_all(text.as_bytes())?;
            inner.file.flush()?;
            inner.file.sync_data()
        })();
        if let Err(e) = written {
            inner.torn = true;
            inner.written = inner.file.metadata().map_or(inner.written, |m| m.len());
            self.failed(inner, "cannot write the audit trail", &e);
            return Ok(entries);
        }
        inner.written += text.len() as u64;
        inner.torn = false;
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

    fn failed(&self, inner: &mut Inner, what: &str, e: &std::io::Error) {
        self.options.errors.inc();
        if inner
            .last_error_log
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60))
        {
            inner.last_error_log = Some(std::time::Instant::now());
            tracing::error!(
                file = %self.path.display(),
                "{what}: {e}; serving goes on, the changes are recorded by the next write that succeeds (failures counted in promptgate_state_write_errors_total{{file=\"audit\"}})"
            );
        }
    }

    /// Saves the state, renames the live file to the next segment, deletes segments beyond
    /// those kept and starts a new live file.
    fn rotate(&self, inner: &mut Inner) {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let saved = SavedState {
            segment: inner.segment,
            seen: inner.seen.clone(),
        };
        let saved = serde_json::to_string(&saved).map_err(std::io::Error::other);
        if let Err(e) =
            saved.and_then(|text| crate::admin::write::write_atomic(&dir.join(STATE_FILE), &text))
        {
            return self.failed(inner, "cannot save the audit state before rotating", &e);
        }
        let target = crate::record::events::segment_path(&self.path, inner.segment);
        if let Err(e) = fs::rename(&self.path, &target) {
            return self.failed(inner, "cannot rotate the audit trail", &e);
        }
        inner.segment += 1;
        let segments = crate::record::events::rotated_segments(&self.path);
        let excess = segments.len().saturating_sub(self.options.kept);
        for (_, old) in &segments[..excess] {
            let _ = fs::remove_file(old);
        }
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(file) => {
                inner.file = file;
                inner.written = 0;
                inner.torn = false;
            }
            Err(e) => self.failed(inner, "cannot open a new audit file", &e),
        }
    }

    /// Every kept entry, oldest first, optionally for one prompt. Blocking.
    pub fn read(&self, prompt: Option<&str>) -> std::io::Result<Vec<Entry>> {
        Ok(self.page(prompt, None, usize::MAX)?.0)
    }

    /// Up to `limit` entries before `before` (the newest without it), oldest first, and the
    /// cursor of the next older page when this one is full. Blocking.
    pub fn page(
        &self,
        prompt: Option<&str>,
        before: Option<Cursor>,
        limit: usize,
    ) -> std::io::Result<(Vec<Entry>, Option<Cursor>)> {
        let live = self.lock().segment;
        let mut files = crate::record::events::rotated_segments(&self.path);
        files.push((live, self.path.clone()));
        let mut page: Vec<(Cursor, Entry)> = Vec::new();
        for (segment, path) in files.iter().rev() {
            if page.len() >= limit {
                break;
            }
            if before.is_some_and(|b| *segment > b.segment) {
                continue;
            }
            let file = match File::open(path) {
                Ok(f) => f,
                // Rotated away while reading: the entries are in the next segment.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut in_file = Vec::new();
            for (line_no, line) in BufReader::new(file).split(b'\n').enumerate() {
                let line = line?;
                let at = Cursor {
                    segment: *segment,
                    line: line_no,
                };
                if before.is_some_and(|b| at >= b) {
                    break;
                }
                let Ok(entry) = serde_json::from_slice::<Entry>(&line) else {
                    continue;
                };
                if prompt.is_none_or(|p| p == entry.prompt) {
                    in_file.push((at, entry));
                }
            }
            let room = limit - page.len();
            let take = in_file.len().min(room);
            page.extend(in_file.drain(in_file.len() - take..).rev());
        }
        page.reverse();
        let next = (page.len() >= limit)
            .then(|| page.first().map(|(at, _)| *at))
            .flatten();
        Ok((page.into_iter().map(|(_, e)| e).collect(), next))
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
    if entry.action.is_rollout() {
        // A rollout's progress is no state of the files.
        return;
    }
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
        Action::RolloutStarted
        | Action::RolloutAdvanced
        | Action::RolloutHalted
        | Action::RolloutCompleted
        | Action::RolloutEnded => {}
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

    #[test]
    fn action_names_are_the_file_names() {
        for action in [
            Action::PromptAdded,
            Action::PromptRemoved,
            Action::VersionAdded,
            Action::VersionRemoved,
            Action::VersionHashChanged,
            Action::ActiveChanged,
            Action::LabelsChanged,
            Action::ExperimentChanged,
        ] {
            assert_eq!(serde_json::to_value(action).unwrap(), action.as_str());
        }
    }

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
    fn the_trail_rotates_pages_back_and_keeps_its_memory() {
        let prompts = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let rotation = Rotation {
            max_bytes: 600,
            kept: 2,
            errors: Default::default(),
        };
        let audit = Audit::open_with(state.path(), rotation.clone()).unwrap();
        for v in 1..=12 {
            write(
                prompts.path(),
                &format!("p/v{v}.prompt"),
                &format!("text {v}"),
            );
            let set = crate::prompts::load(prompts.path()).unwrap();
            assert!(!audit.record(&set, &Actor::disk()).unwrap().is_empty());
        }
        let segments = crate::record::events::rotated_segments(&state.path().join("audit.jsonl"));
        assert_eq!(
            segments.len(),
            2,
            "only the kept segments remain: {segments:?}"
        );
        for (_, path) in &segments {
            assert!(fs::metadata(path).unwrap().len() <= 600);
        }
        // Paging walks back through the kept segments without gaps or repeats.
        let all = audit.read(Some("p")).unwrap();
        let mut pages = Vec::new();
        let mut before = None;
        loop {
            let (page, next) = audit.page(Some("p"), before, 3).unwrap();
            assert!(page.len() <= 3);
            pages.splice(0..0, page);
            let Some(next) = next else { break };
            before = Some(next);
        }
        assert_eq!(pages, all);
        assert_eq!(all.last().unwrap().to_version, Some(12));
        // The first versions' entries were rotated away, but not forgotten.
        drop(audit);
        let audit = Audit::open_with(state.path(), rotation).unwrap();
        assert_eq!(audit.highest_version("p"), 12);
        assert!(audit.first_seen("p", 1).is_some());
        let set = crate::prompts::load(prompts.path()).unwrap();
        assert!(audit.record(&set, &Actor::disk()).unwrap().is_empty());
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
