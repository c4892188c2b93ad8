//! Admin writes change the files, so the files stay the one source of truth.
//!
//! Every write is validated first against the prompt as it would be (the pending files laid
//! over the folder), refused whole if it does not validate, then written atomically (temp
//! file, fsync, rename, fsync of the folder). Writes are serialised by one lock, taken only in
//! blocking code, so two concurrent writes both land and never share a version number. The
//! order of the files written keeps every state in between valid, in case the watcher reloads
//! halfway.
//!
//! [`commit`] is the one way a handler makes a change: it runs a [`Writer`] operation on the
//! prompts folder and reloads, or — in git write mode — runs it on the working clone and
//! commits and pushes whatever files it changed ([`super::git`]). An operation says what it
//! did as a [`Change`], so new kinds of change need nothing from the git side.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::AppState;
use crate::audit::{Actor, Audit};
use crate::error::ApiError;
use crate::prompts::{self, Overlay, Problems, valid_prompt_name, version};

/// What a write did, for the commit message and the review branch in git mode.
#[derive(Debug, Clone)]
pub struct Change {
    /// The prompt it changes.
    pub prompt: String,
    /// One line: what changed (`new version v3 (active)`).
    pub summary: String,
    /// Why (the change note): the commit message's body.
    pub note: Option<String>,
    /// The review branch's name after the prefix (`support-v3`).
    pub branch: String,
    /// Whether `branch` names a new version, which no other change can have: other branches
    /// get a time added, since the same change may be made again after an earlier one was
    /// merged (its branch often left in place).
    pub new_version: bool,
}

impl Change {
    /// A new version, `number`, of `prompt`.
    pub fn new_version(prompt: &str, number: u32, new: &NewVersion) -> Change {
        Change {
            prompt: prompt.to_owned(),
            summary: format!(
                "new version v{number}{}",
                if new.activate { " (active)" } else { "" }
            ),
            note: new.notes.clone(),
            branch: format!("{prompt}-v{number}"),
            new_version: true,
        }
    }

    /// `version` made active.
    pub fn rollback(prompt: &str, version: u32) -> Change {
        Change {
            prompt: prompt.to_owned(),
            summary: format!("make v{version} active"),
            note: None,
            branch: format!("{prompt}-active-v{version}"),
            new_version: false,
        }
    }

    /// `label` pointed at `version`, or removed.
    pub fn label(prompt: &str, label: &str, version: Option<u32>) -> Change {
        let (summary, tail) = match version {
            Some(v) => (format!("point label {label} at v{v}"), format!("v{v}")),
            None => (format!("remove label {label}"), "removed".to_owned()),
        };
        Change {
            prompt: prompt.to_owned(),
            summary,
            note: None,
            branch: format!("{prompt}-label-{label}-{tail}"),
            new_version: false,
        }
    }

    /// The experiment started (`true`) or ended.
    pub fn experiment(prompt: &str, started: bool) -> Change {
        Change {
            prompt: prompt.to_owned(),
            summary: if started {
                "start an experiment".to_owned()
            } else {
                "end the experiment".to_owned()
            },
            note: None,
            branch: format!("{prompt}-experiment{}", if started { "" } else { "-end" }),
            new_version: false,
        }
    }

    /// A guarded rollout started (`true`) or aborted.
    pub fn rollout(prompt: &str, started: bool) -> Change {
        Change {
            prompt: prompt.to_owned(),
            summary: if started {
                "start a guarded rollout".to_owned()
            } else {
                "abort the guarded rollout".to_owned()
            },
            note: None,
            branch: format!("{prompt}-rollout{}", if started { "" } else { "-end" }),
            new_version: false,
        }
    }

    /// A guarded rollout that reached 100% with every guard holding: `to` made active.
    pub fn rollout_completed(prompt: &str, to: u32) -> Change {
        Change {
            prompt: prompt.to_owned(),
            summary: format!("complete the guarded rollout: make v{to} active"),
            note: None,
            branch: format!("{prompt}-rollout-completed-v{to}"),
            new_version: false,
        }
    }

    /// A guard halted the rollout: `halted: true` written into its block.
    pub fn rollout_halted(prompt: &str) -> Change {
        Change {
            prompt: prompt.to_owned(),
            summary: "halt the guarded rollout: a guard was violated".to_owned(),
            note: None,
            branch: format!("{prompt}-rollout-halted"),
            new_version: false,
        }
    }
}

/// Makes one change and answers what became of it: `serving` (and `reload_error`) as
/// [`super::reload_after_write`] says, plus in git mode `commit` and, for review, `review`
/// (`branch`, `url`) with `serving: false` until the change is merged.
pub async fn commit<T: Send + 'static>(
    state: &AppState,
    actor: Actor,
    op: impl FnOnce(&Writer) -> Result<(T, Change), WriteError> + Send + 'static,
) -> Result<(T, serde_json::Value), ApiError> {
    let Some(git) = &state.git else {
        let writer = state.writer.clone();
        // The change is recorded by this write's reload, under its actor (see `hold_disk`).
        let _hold = state.reloader.hold_disk();
        let (value, _) = super::blocking(move || op(&writer)).await?;
        let outcome = super::reload_after_write(state, actor).await;
        return Ok((value, outcome));
    };
    // Its own task: a client that goes away mid-push does not cut the push short.
    let store = git.clone();
    let who = actor.clone();
    let (value, landed) = tokio::spawn(async move { store.write(&who, op).await })
        .await
        .map_err(|e| ApiError::Internal(format!("the git write failed: {e}")))??;
    let mut outcome = if landed.review.is_some() {
        serde_json::json!({"serving": false})
    } else if let Some(why) = &landed.not_served {
        serde_json::json!({"serving": false, "reload_error": [why]})
    } else {
        super::reload_after_write(state, actor).await
    };
    outcome["commit"] = serde_json::json!(landed.commit);
    if let Some(review) = &landed.review {
        outcome["review"] = serde_json::json!(review);
    }
    Ok((value, outcome))
}

/// `POST /admin/prompts/{name}/versions`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    pub template: String,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    pub params: Option<Map<String, Value>>,
    pub variables: Option<Vec<String>>,
    pub created_by: Option<String>,
    pub notes: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub activate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the change does not validate, nothing was written:\n{0}")]
    Invalid(Problems),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("cannot write the prompt files: {0}")]
    Io(#[from] std::io::Error),
}

/// Serialised writer of prompt files.
pub struct Writer {
    root: PathBuf,
    /// Highest version number handed out per prompt in this process.
    allocated: Mutex<HashMap<String, u32>>,
    /// Why this folder must not be written (the served checkout in git write mode).
    refuse: Option<String>,
}

impl Writer {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Writer {
            root: root.into(),
            allocated: Mutex::new(HashMap::new()),
            refuse: None,
        }
    }

    /// A writer that refuses every change: in git write mode the served folder is a checkout
    /// of the remote, and a change written there would be half written — served here, pushed
    /// nowhere. Changes go through [`commit`].
    pub fn refusing(root: impl Into<PathBuf>) -> Self {
        Writer {
            refuse: Some(
                "in git write mode changes are commits: this change did not go through the git write path (a bug), nothing was written".to_owned(),
            ),
            ..Writer::new(root)
        }
    }

    /// Version numbers up to `number` of `name` are taken (a change waiting for review holds
    /// them).
    pub fn reserve(&self, name: &str, number: u32) {
        let mut allocated = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        let at = allocated.entry(name.to_owned()).or_insert(0);
        *at = (*at).max(number);
    }

    fn folder(&self, name: &str) -> Result<PathBuf, WriteError> {
        if let Some(why) = &self.refuse {
            return Err(WriteError::Io(std::io::Error::new(
                std::io::ErrorKind::ReadOnlyFilesystem,
                why.clone(),
            )));
        }
        if !valid_prompt_name(name) {
            return Err(WriteError::BadRequest(format!(
                "`{name}` is not a valid prompt name: use [a-z0-9][a-z0-9_.-]*"
            )));
        }
        Ok(self.root.join(name))
    }

    /// Writes a new version (creating the prompt if new) and returns its number and hash.
    pub fn create_version(
        &self,
        audit: &Audit,
        name: &str,
        new: &NewVersion,
        now: &str,
    ) -> Result<(u32, String), WriteError> {
        self.create_version_with(audit, name, new, "", now)
    }

    /// [`Writer::create_version`] with further front-matter lines (`chat: true`, `tools: …`).
    pub fn create_version_with(
        &self,
        audit: &Audit,
        name: &str,
        new: &NewVersion,
        extra_front: &str,
        now: &str,
    ) -> Result<(u32, String), WriteError> {
        let dir = self.folder(name)?;
        let mut allocated = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        let on_disk = highest_on_disk(&dir);
        // Never reuse a number: not one on disk, not one ever seen, not one handed out.
        let number = on_disk
            .max(audit.highest_version(name))
            .max(allocated.get(name).copied().unwrap_or(0))
            + 1;
        let file = format!("v{number}.prompt");
        let text = version_text_with(new, extra_front, now);
        let body_hash = version::parse(&text)
            .map(|raw| version::hash(&raw.body))
            .map_err(|problems| {
                WriteError::Invalid(Problems(
                    problems
                        .into_iter()
                        .map(|(line, message)| {
                            prompts::Problem::new(PathBuf::from(name).join(&file), line, message)
                        })
                        .collect(),
                ))
            })?;

        let old_manifest = read_optional(&dir.join("prompt.yaml"))?;
        let mut manifest = old_manifest.clone().unwrap_or_default();
        if let Some(description) = &new.description {
            manifest = set_key(&manifest, "description", Some(&json_scalar(description)));
        }
        if let Some(tags) = &new.tags {
            manifest = set_key(
                &manifest,
                "tags",
                Some(&Value::from(tags.clone()).to_string()),
            );
        }
        let existing = on_disk > 0;
        if new.activate {
            manifest = set_key(&manifest, "active", Some(&number.to_string()));
        } else if existing && !has_key(&manifest, "active") {
            // Without `active` the highest version serves; keep serving the current one.
            manifest = set_key(&manifest, "active", Some(&on_disk.to_string()));
        }
        let manifest_changed = old_manifest.as_deref() != Some(manifest.as_str())
            && !(old_manifest.is_none() && manifest.is_empty());

        let mut overlay = Overlay::new();
        overlay.insert(file.clone(), text.clone());
        if manifest_changed {
            overlay.insert("prompt.yaml".to_owned(), manifest.clone());
        }
        prompts::check_prompt(&self.root, name, &overlay).map_err(WriteError::Invalid)?;

        fs::create_dir_all(&dir)?;
        if new.activate || !manifest_changed {
            write_atomic(&dir.join(&file), &text)?;
            if manifest_changed {
                write_atomic(&dir.join("prompt.yaml"), &manifest)?;
            }
        } else {
            write_atomic(&dir.join("prompt.yaml"), &manifest)?;
            write_atomic(&dir.join(&file), &text)?;
        }
        allocated.insert(name.to_owned(), number);
        Ok((number, body_hash))
    }

    /// Makes `version` the active one.
    pub fn set_active(&self, name: &str, version: u32) -> Result<(), WriteError> {
        let dir = self.folder(name)?;
        let _guard = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        if !dir.join(format!("v{version}.prompt")).exists() {
            return Err(WriteError::NotFound(format!(
                "prompt `{name}` has no version {version}"
            )));
        }
        let old = read_optional(&dir.join("prompt.yaml"))?.unwrap_or_default();
        let manifest = set_key(&old, "active", Some(&version.to_string()));
        self.commit_manifest(name, &dir, &manifest)
    }

    /// Points `label` at `version`, or removes it (`None`).
    pub fn set_label(
        &self,
        name: &str,
        label: &str,
        version: Option<u32>,
    ) -> Result<(), WriteError> {
        let dir = self.folder(name)?;
        let _guard = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        let old = read_optional(&dir.join("prompt.yaml"))?.unwrap_or_default();
        let mut labels: std::collections::BTreeMap<String, u32> = prompts::manifest::parse(&old)
            .map_err(|(_, message)| WriteError::BadRequest(format!("prompt.yaml: {message}")))?
            .labels
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect();
        match version {
            Some(v) => labels.insert(label.to_owned(), v),
            None => labels.remove(label),
        };
        let block =
            (!labels.is_empty()).then(|| serde_json::to_string(&labels).unwrap_or_default());
        let manifest = set_key(&old, "labels", block.as_deref());
        self.commit_manifest(name, &dir, &manifest)
    }

    /// Starts (`Some`, a YAML block body) or ends (`None`) the prompt's experiment.
    pub fn set_experiment(&self, name: &str, block: Option<&str>) -> Result<(), WriteError> {
        let dir = self.folder(name)?;
        let _guard = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        if highest_on_disk(&dir) == 0 {
            return Err(WriteError::NotFound(format!("unknown prompt `{name}`")));
        }
        let old = read_optional(&dir.join("prompt.yaml"))?.unwrap_or_default();
        let manifest = set_key(&old, "experiment", block);
        self.commit_manifest(name, &dir, &manifest)
    }

    /// Starts (`Some`, the block as YAML) or ends (`None`) the prompt's guarded rollout.
    pub fn set_rollout(&self, name: &str, block: Option<&str>) -> Result<(), WriteError> {
        let dir = self.folder(name)?;
        let _guard = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        if highest_on_disk(&dir) == 0 {
            return Err(WriteError::NotFound(format!("unknown prompt `{name}`")));
        }
        let old = read_optional(&dir.join("prompt.yaml"))?.unwrap_or_default();
        let manifest = set_key(&old, "rollout", block);
        self.commit_manifest(name, &dir, &manifest)
    }

    /// A completed rollout: `to` becomes active and the `rollout` block goes, in one write.
    /// Refused when the block is gone (ended while the rollout completed).
    pub fn finish_rollout(&self, name: &str, to: u32) -> Result<(), WriteError> {
        let dir = self.folder(name)?;
        let _guard = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        let old = read_optional(&dir.join("prompt.yaml"))?.unwrap_or_default();
        if !old.lines().any(|line| is_key_line(line, "rollout")) {
            return Err(WriteError::NotFound(format!(
                "prompt `{name}` has no `rollout` block any more"
            )));
        }
        let manifest = set_key(&old, "active", Some(&to.to_string()));
        let manifest = set_key(&manifest, "rollout", None);
        self.commit_manifest(name, &dir, &manifest)
    }

    /// A halted rollout: `halted: true` written into the `rollout` block, so every replica and
    /// every restart serves `from` without the state folder.
    pub fn halt_rollout(&self, name: &str) -> Result<(), WriteError> {
        let dir = self.folder(name)?;
        let _guard = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        let old = read_optional(&dir.join("prompt.yaml"))?.unwrap_or_default();
        let manifest = crate::rollout::plan::mark_halted(&old).map_err(WriteError::NotFound)?;
        self.commit_manifest(name, &dir, &manifest)
    }

    fn commit_manifest(&self, name: &str, dir: &Path, manifest: &str) -> Result<(), WriteError> {
        let mut overlay = Overlay::new();
        overlay.insert("prompt.yaml".to_owned(), manifest.to_owned());
        prompts::check_prompt(&self.root, name, &overlay).map_err(WriteError::Invalid)?;
        write_atomic(&dir.join("prompt.yaml"), manifest)?;
        Ok(())
    }
}

fn highest_on_disk(dir: &Path) -> u32 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| version::number_from_file_name(&e.file_name().to_string_lossy()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

fn read_optional(path: &Path) -> std::io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A string as a YAML scalar: JSON's double-quoted form is valid YAML and escapes everything.
fn json_scalar(text: &str) -> String {
    crate::prompts::yaml::json_flow(&Value::from(text))
}

/// The text of a version file: front matter from the request, then the template.
pub(crate) fn version_text(new: &NewVersion, now: &str) -> String {
    version_text_with(new, "", now)
}

/// [`version_text`] with further front-matter lines, written after `variables`.
pub(crate) fn version_text_with(new: &NewVersion, extra_front: &str, now: &str) -> String {
    let mut front = String::new();
    if let Some(model) = &new.model {
        front.push_str(&format!("model: {}\n", json_scalar(model)));
    }
    if let Some(t) = new.temperature {
        front.push_str(&format!("temperature: {t}\n"));
    }
    if let Some(m) = new.max_tokens {
        front.push_str(&format!("max_tokens: {m}\n"));
    }
    if let Some(params) = &new.params {
        front.push_str(&format!("params: {}\n", Value::Object(params.clone())));
    }
    if let Some(vars) = &new.variables {
        front.push_str(&format!("variables: {}\n", Value::from(vars.clone())));
    }
    front.push_str(extra_front);
    if let Some(by) = &new.created_by {
        front.push_str(&format!("created_by: {}\n", json_scalar(by)));
    }
    front.push_str(&format!("created_at: {}\n", json_scalar(now)));
    if let Some(notes) = &new.notes {
        front.push_str(&format!("notes: {}\n", json_scalar(notes)));
    }
    let body = new.template.trim_end_matches(['\n', '\r']);
    format!("---\n{front}---\n{body}\n")
}

/// Whether the manifest has a top-level `key`.
fn has_key(text: &str, key: &str) -> bool {
    text.lines().any(|line| is_key_line(line, key))
}

fn is_key_line(line: &str, key: &str) -> bool {
    line.strip_prefix(key)
        .is_some_and(|rest| rest.starts_with(':'))
}

/// Sets (or with `None` removes) a top-level key of a YAML manifest, keeping every other line —
/// comments included — as it was. `value` is the YAML after `key:`: a scalar, a flow
/// collection, or a block starting with a newline.
pub fn set_key(text: &str, key: &str, value: Option<&str>) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|line| is_key_line(line, key));
    let new_block = value.map(|v| {
        if v.starts_with('\n') {
            format!("{key}:{v}")
        } else {
            format!("{key}: {v}")
        }
    });
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 4);
    match start {
        Some(start) => {
            // The key's block: its line and what follows that is indented, a `- ` item at
            // column 0 (a block sequence), or blank lines inside it.
            let mut end = start + 1;
            let mut last_content = start + 1;
            while end < lines.len() {
                let line = lines[end];
                if line.trim().is_empty() {
                    end += 1;
                    continue;
                }
                if line.starts_with(' ') || line.starts_with('\t') || line.starts_with("- ") {
                    end += 1;
                    last_content = end;
                    continue;
                }
                break;
            }
            out.extend(lines[..start].iter().map(|l| (*l).to_owned()));
            if let Some(block) = &new_block {
                out.extend(block.lines().map(str::to_owned));
            }
            out.extend(lines[last_content..].iter().map(|l| (*l).to_owned()));
        }
        None => {
            out.extend(lines.iter().map(|l| (*l).to_owned()));
            if let Some(block) = &new_block {
                out.extend(block.lines().map(str::to_owned));
            }
        }
    }
    let mut text = out.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

/// Writes `text` to `path` atomically: a temp file in the same folder, fsync, rename, fsync of
/// the folder. A reader sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden, so the loader and the watcher's fingerprint ignore it.
    let tmp = dir.join(format!(
        ".{file_name}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The manifest's `experiment` block for a PUT body.
pub fn experiment_block(body: &Value) -> Result<String, WriteError> {
    let Value::Object(map) = body else {
        return Err(WriteError::BadRequest(
            "the experiment must be a JSON object".to_owned(),
        ));
    };
    let mut block = String::from("\n");
    for (key, value) in map {
        match (key.as_str(), value) {
            ("version_a" | "version_b" | "traffic_split", Value::Number(n)) => {
                block.push_str(&format!("  {key}: {n}\n"));
            }
            ("salt", Value::String(s)) => block.push_str(&format!("  salt: {}\n", json_scalar(s))),
            ("variants", Value::Array(items)) => {
                block.push_str("  variants:\n");
                for item in items {
                    let (Some(version), Some(weight)) = (
                        item.get("version").and_then(Value::as_u64),
                        item.get("weight").and_then(Value::as_u64),
                    ) else {
                        return Err(WriteError::BadRequest(
                            "each variant is {\"version\": N, \"weight\": W} with integers"
                                .to_owned(),
                        ));
                    };
                    block.push_str(&format!("    - {{version: {version}, weight: {weight}}}\n"));
                }
            }
            (other, _) => {
                return Err(WriteError::BadRequest(format!(
                    "unknown or mistyped experiment field `{other}`; known: `version_a`, `version_b`, `traffic_split` (numbers), `variants` (a list), `salt` (a string)"
                )));
            }
        }
    }
    Ok(block.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_key_keeps_everything_else() {
        let text = "# the support prompt\ndescription: d\nactive: 1\n# labels below\nlabels:\n  stable: 1\ntags:\n- a\n- b\n";
        assert_eq!(
            set_key(text, "active", Some("2")),
            "# the support prompt\ndescription: d\nactive: 2\n# labels below\nlabels:\n  stable: 1\ntags:\n- a\n- b\n"
        );
        assert_eq!(
            set_key(text, "labels", None),
            "# the support prompt\ndescription: d\nactive: 1\n# labels below\ntags:\n- a\n- b\n"
        );
        assert_eq!(
            set_key(text, "tags", Some("[x]")),
            "# the support prompt\ndescription: d\nactive: 1\n# labels below\nlabels:\n  stable: 1\ntags: [x]\n"
        );
        assert_eq!(
            set_key("", "experiment", Some("\n  version_a: 1\n  version_b: 2")),
            "experiment:\n  version_a: 1\n  version_b: 2\n"
        );
        assert!(!has_key("activex: 1\n", "active"));
        assert!(has_key("active: 1\n", "active"));
    }

    #[test]
    fn experiment_blocks_are_yaml() {
        let block = experiment_block(&serde_json::json!({"version_a": 1, "version_b": 2, "traffic_split": 0.2, "salt": "x\"y"})).unwrap();
        let yaml = set_key("", "experiment", Some(&block));
        let raw = crate::prompts::manifest::parse(&yaml).unwrap();
        let exp = raw.experiment.unwrap();
        assert_eq!(exp.salt.as_deref(), Some("x\"y"));
        let block = experiment_block(&serde_json::json!({"variants": [{"version": 1, "weight": 60}, {"version": 2, "weight": 40}]})).unwrap();
        let raw =
            crate::prompts::manifest::parse(&set_key("", "experiment", Some(&block))).unwrap();
        assert_eq!(raw.experiment.unwrap().variants.unwrap().len(), 2);
        assert!(experiment_block(&serde_json::json!({"versionA": 1})).is_err());
    }

    #[test]
    fn version_text_round_trips() {
        let new = NewVersion {
            template: "Hi {{ name }}\n".into(),
            model: Some("gpt-4o".into()),
            temperature: Some(0.2),
            max_tokens: None,
            params: None,
            variables: Some(vec!["name".into()]),
            created_by: Some("ann: \"the\" editor".into()),
            notes: None,
            description: None,
            tags: None,
            activate: false,
        };
        let raw = version::parse(&version_text(&new, "2026-11-25T00:00:00Z")).unwrap();
        assert_eq!(raw.body, "Hi {{ name }}");
        assert_eq!(raw.front.created_by.as_deref(), Some("ann: \"the\" editor"));
        assert_eq!(
            raw.front.created_at.as_deref(),
            Some("2026-11-25T00:00:00Z")
        );
        assert_eq!(raw.front.model.as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompt.yaml");
        write_atomic(&path, "active: 1\n").unwrap();
        write_atomic(&path, "active: 2\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "active: 2\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
