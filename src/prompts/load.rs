//! Loading a prompts folder: read every file, check everything, collect every problem.
//!
//! Hidden entries (names starting with `.`) are skipped, which covers editor swap files and
//! the `..data` machinery of Kubernetes ConfigMap volumes; symlinks are followed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::manifest::{self, RawManifest};
use super::{Problem, Problems, Prompt, PromptSet, Version, examples, template, version};

/// A prompt's name: the folder's name, `[a-z0-9][a-z0-9_.-]*`.
pub fn valid_prompt_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
        && name.len() <= 128
}

/// Loads and validates every prompt under `dir`. Either the whole set is good, or every
/// problem found is returned.
pub fn load(dir: &Path) -> Result<PromptSet, Problems> {
    let mut problems = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            return Err(Problems(vec![Problem::new(
                dir,
                None,
                format!("cannot read the prompts folder: {e}"),
            )]));
        }
    };
    let mut names = BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // `metadata` follows symlinks, as a ConfigMap volume needs.
        if !fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        names.insert(name);
    }

    let mut env = template::environment();
    let no_overlay = Overlay::new();
    let mut prompts = BTreeMap::new();
    for name in names {
        if !valid_prompt_name(&name) {
            problems.push(Problem::new(
                &name,
                None,
                "not a valid prompt name: use lowercase letters, digits, `_`, `.` and `-`, starting with a letter or digit",
            ));
            continue;
        }
        let folder = Folder {
            dir: dir.join(&name),
            name: &name,
            overlay: &no_overlay,
        };
        if let Some(prompt) = load_prompt(&folder, &mut env, &mut problems) {
            prompts.insert(name, Arc::new(prompt));
        }
    }
    if problems.is_empty() {
        Ok(PromptSet {
            prompts,
            unavailable: BTreeMap::new(),
            env,
        })
    } else {
        Err(Problems(problems))
    }
}

/// Files written by an admin call but not yet on disk: file name → new text.
pub type Overlay = BTreeMap<String, String>;

/// One prompt's folder as the loader sees it: the files on disk, with an optional overlay of
/// pending writes, so an admin write can be validated before it touches the disk.
struct Folder<'a> {
    dir: PathBuf,
    name: &'a str,
    overlay: &'a Overlay,
}

impl Folder<'_> {
    fn shown(&self, file: &str) -> PathBuf {
        PathBuf::from(self.name).join(file)
    }

    /// File names in the folder (not hidden), on disk and pending.
    fn list(&self) -> std::io::Result<BTreeSet<String>> {
        let mut names: BTreeSet<String> = self.overlay.keys().cloned().collect();
        match fs::read_dir(&self.dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let file = entry.file_name().to_string_lossy().into_owned();
                    if !file.starts_with('.') {
                        names.insert(file);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.overlay.is_empty() => {}
            Err(e) => return Err(e),
        }
        Ok(names)
    }

    fn exists(&self, file: &str) -> bool {
        self.overlay.contains_key(file) || self.dir.join(file).exists()
    }

    fn read(&self, file: &str, problems: &mut Vec<Problem>) -> Option<String> {
        if let Some(text) = self.overlay.get(file) {
            return Some(text.clone());
        }
        let shown = self.shown(file);
        match fs::read(self.dir.join(file)) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Some(text),
                Err(_) => {
                    problems.push(Problem::new(shown, None, "not valid UTF-8"));
                    None
                }
            },
            Err(e) => {
                problems.push(Problem::new(shown, None, format!("cannot read: {e}")));
                None
            }
        }
    }
}

/// Validates one prompt as it would be with `overlay` written into its folder.
pub fn check_prompt(root: &Path, name: &str, overlay: &Overlay) -> Result<(), Problems> {
    let mut problems = Vec::new();
    if !valid_prompt_name(name) {
        problems.push(Problem::new(name, None, "not a valid prompt name"));
        return Err(Problems(problems));
    }
    let mut env = template::environment();
    let folder = Folder {
        dir: root.join(name),
        name,
        overlay,
    };
    match load_prompt(&folder, &mut env, &mut problems) {
        Some(_) if problems.is_empty() => Ok(()),
        _ => Err(Problems(problems)),
    }
}

fn load_prompt(
    folder: &Folder<'_>,
    env: &mut minijinja::Environment<'static>,
    problems: &mut Vec<Problem>,
) -> Option<Prompt> {
    let name = folder.name;
    let shown = |file: &str| folder.shown(file);
    let before = problems.len();

    let mut version_files = BTreeMap::new();
    let files = match folder.list() {
        Ok(files) => files,
        Err(e) => {
            problems.push(Problem::new(
                name,
                None,
                format!("cannot read the folder: {e}"),
            ));
            return None;
        }
    };
    for file in files {
        if !file.ends_with(".prompt") {
            continue;
        }
        match version::number_from_file_name(&file) {
            Some(n) => {
                version_files.insert(n, file);
            }
            None => problems.push(Problem::new(
                shown(&file),
                None,
                "version files are named `vN.prompt` with N a positive number without leading zeros",
            )),
        }
    }

    let mut versions = BTreeMap::new();
    for (&number, file) in &version_files {
        let path = shown(file);
        let Some(text) = folder.read(file, problems) else {
            continue;
        };
        let raw = match version::parse(&text) {
            Ok(raw) => raw,
            Err(list) => {
                for (line, message) in list {
                    problems.push(Problem::new(&path, line, message));
                }
                continue;
            }
        };
        let key = format!("{name}/{file}");
        let compiled = match template::compile(env, &key, &raw.body) {
            Ok(compiled) => compiled,
            Err((line, message)) => {
                let line = line.map(|l| l + raw.body_line - 1);
                problems.push(Problem::new(&path, line, message));
                continue;
            }
        };
        let declared = raw.front.variables.clone();
        let variables = match &declared {
            Some(declared) => declared.clone(),
            None => compiled
                .uses
                .iter()
                .filter(|v| !template::BUILTINS.contains(&v.as_str()))
                .cloned()
                .collect(),
        };
        let hash = version::hash(&raw.body);
        // A valid prompt name and a hex hash are valid header values.
        let header = |text: &str| {
            axum::http::HeaderValue::from_str(text)
                .unwrap_or_else(|_| axum::http::HeaderValue::from_static(""))
        };
        let headers = [header(name), header(&number.to_string()), header(&hash)];
        versions.insert(
            number,
            Version {
                version: number,
                hash,
                headers,
                model: raw.front.model,
                temperature: raw.front.temperature,
                max_tokens: raw.front.max_tokens,
                params: raw.front.params.unwrap_or_default(),
                variables,
                created_by: raw.front.created_by,
                created_at: raw.front.created_at,
                notes: raw.front.notes,
                client_system: raw.front.client_system.unwrap_or_default(),
                template: raw.body,
                declared,
                uses: compiled.uses,
                key,
            },
        );
    }
    if version_files.is_empty() {
        problems.push(Problem::new(
            name,
            None,
            "no version files: add `v1.prompt` (a folder under the prompts folder is a prompt)",
        ));
    }

    let raw_manifest = if folder.exists("prompt.yaml") {
        let shown_manifest = shown("prompt.yaml");
        folder.read("prompt.yaml", problems).and_then(|text| {
            manifest::parse(&text)
                .map_err(|(line, message)| {
                    problems.push(Problem::new(&shown_manifest, line, message));
                })
                .ok()
        })
    } else {
        Some(RawManifest::default())
    };
    let raw_manifest = raw_manifest?;

    let numbers: Vec<u32> = version_files.keys().copied().collect();
    let mut manifest_problems = Vec::new();
    let experiment = manifest::check(&raw_manifest, &numbers, &mut manifest_problems);
    let rollout = manifest::check_rollout(&raw_manifest, &numbers, &mut manifest_problems);
    for (line, message) in manifest_problems {
        problems.push(Problem::new(shown("prompt.yaml"), line, message));
    }

    let mut examples = Vec::new();
    if folder.exists("examples.jsonl") {
        let shown_examples = shown("examples.jsonl");
        if let Some(text) = folder.read("examples.jsonl", problems) {
            match examples::parse(&text) {
                Ok(list) => examples = list,
                Err(list) => {
                    for (line, message) in list {
                        problems.push(Problem::new(&shown_examples, Some(line), message));
                    }
                }
            }
        }
    }

    if problems.len() > before {
        return None;
    }
    let active = raw_manifest
        .active
        .map(|a| a.value)
        .or_else(|| numbers.last().copied())?;
    let rollout_live = rollout
        .as_ref()
        .map(|r| Arc::new(crate::rollout::Live::new(r)));
    let experiment_id = experiment
        .as_ref()
        .map(|e| Arc::from(crate::record::experiment_id(e)))
        .or_else(|| rollout_live.as_ref().map(|l| l.id.clone()));
    Some(Prompt {
        experiment_id,
        rollout,
        rollout_live,
        name: name.to_owned(),
        description: raw_manifest.description.unwrap_or_default(),
        tags: raw_manifest.tags,
        active,
        labels: raw_manifest
            .labels
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect(),
        experiment,
        examples_config: raw_manifest.examples,
        feedback_metrics: raw_manifest
            .feedback_metrics
            .map(|names| names.into_iter().map(|n| n.value).collect()),
        examples,
        example_vectors: Vec::new(),
        versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn loads_a_folder_of_prompts() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "support/v1.prompt", "Hello {{ name }}");
        write(
            dir.path(),
            "support/v2.prompt",
            "---\nmodel: gpt-4o\n---\nHi {{ name }}\n",
        );
        write(
            dir.path(),
            "support/prompt.yaml",
            "description: d\ntags: [a]\nactive: 1\n",
        );
        write(dir.path(), "bare/v3.prompt", "plain");
        write(dir.path(), "README.md", "not a prompt");
        write(dir.path(), ".hidden/v1.prompt", "{{ broken");
        let set = load(dir.path()).unwrap();
        assert_eq!(set.len(), 2);
        let support = set.get("support").unwrap();
        assert_eq!(support.active, 1);
        assert_eq!(support.versions[&2].model.as_deref(), Some("gpt-4o"));
        assert_eq!(support.versions[&1].variables, vec!["name".to_owned()]);
        assert_eq!(
            set.get("bare").unwrap().active,
            3,
            "highest version by default"
        );
    }

    #[test]
    fn every_problem_is_collected_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a/v1.prompt", "ok");
        write(dir.path(), "a/prompt.yaml", "description: x\nactive: 4\n");
        write(
            dir.path(),
            "b/v1.prompt",
            "---\nmodel: m\n---\nline\n{% if x %}\n",
        );
        write(dir.path(), "c/v01.prompt", "x");
        write(dir.path(), "Bad Name/v1.prompt", "x");
        write(dir.path(), "d/notes.txt", "no versions");
        write(dir.path(), "e/v1.prompt", "ok");
        write(dir.path(), "e/examples.jsonl", "{\"input\": 1}\n");
        let problems = load(dir.path()).unwrap_err().0;
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |prefix: &str| shown.iter().any(|s| s.starts_with(prefix));
        assert!(has("Bad Name: not a valid prompt name"), "{shown:#?}");
        assert!(
            has("a/prompt.yaml:2: `active` refers to version 4"),
            "{shown:#?}"
        );
        assert!(has("b/v1.prompt:5: template syntax error"), "{shown:#?}");
        assert!(has("c/v01.prompt: version files are named"), "{shown:#?}");
        assert!(has("c: no version files"), "{shown:#?}");
        assert!(has("d: no version files"), "{shown:#?}");
        assert!(has("e/examples.jsonl:1: not a valid example"), "{shown:#?}");
        assert_eq!(problems.len(), 7, "{shown:#?}");
    }

    #[test]
    fn missing_folder_is_a_problem() {
        let problems = load(Path::new("/nonexistent/prompts")).unwrap_err();
        assert!(
            problems
                .to_string()
                .contains("cannot read the prompts folder")
        );
    }

    #[test]
    fn prompt_names_follow_the_spec() {
        assert!(valid_prompt_name("customer_support"));
        assert!(valid_prompt_name("v2.support-bot"));
        assert!(!valid_prompt_name("Support"));
        assert!(!valid_prompt_name("_x"));
        assert!(!valid_prompt_name("../etc"));
        assert!(!valid_prompt_name(""));
    }
}
