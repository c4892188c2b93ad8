//! Loading a prompts folder: read every file, check everything, collect every problem.
//!
//! Hidden entries (names starting with `.`) are skipped, which covers editor swap files and
//! the `..data` machinery of Kubernetes ConfigMap volumes; symlinks are followed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::manifest::{self, RawManifest};
use super::{
    Problem, Problems, Prompt, PromptSet, Version, chat, examples, outputs, schema, template,
    version,
};

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
        let before_version = problems.len();
        let (compiled, chat) = if raw.front.chat == Some(true) {
            match compile_chat(env, &key, &raw, &path, problems) {
                Some((compiled, chat)) => (compiled, Some(Arc::new(chat))),
                None => (template::Compiled::default(), None),
            }
        } else {
            match template::compile(env, &key, &raw.body) {
                Ok(compiled) => (compiled, None),
                Err((line, message)) => {
                    let line = line.map(|l| l + raw.body_line - 1);
                    problems.push(Problem::new(&path, line, message));
                    (template::Compiled::default(), None)
                }
            }
        };
        let extras = compile_extras(folder, name, &raw, &path, problems);
        if problems.len() > before_version {
            continue;
        }
        let (input_schema, response_format, tools) = extras;
        let declared = raw.front.variables.clone();
        let schema_names = input_schema.as_ref().and_then(|s| {
            s.schema
                .get("properties")
                .and_then(serde_json::Value::as_object)
                .map(|p| p.keys().cloned().collect::<Vec<_>>())
        });
        let variables = match (&declared, schema_names) {
            (Some(declared), _) => declared.clone(),
            (None, Some(names)) => names,
            (None, None) => compiled
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
                chat,
                input_schema,
                response_format,
                tools,
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

/// Compiles each message of a chat template. Problems name the file line and the message.
fn compile_chat(
    env: &mut minijinja::Environment<'static>,
    key: &str,
    raw: &version::RawVersion,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<(template::Compiled, chat::ChatTemplate)> {
    let file_line = |body_line: usize| body_line + raw.body_line - 1;
    let sections = match chat::split(&raw.body) {
        Ok(sections) => sections,
        Err(list) => {
            for (line, message) in list {
                problems.push(Problem::new(path, Some(file_line(line)), message));
            }
            return None;
        }
    };
    let mut uses = BTreeSet::new();
    let mut messages = Vec::new();
    let mut ok = true;
    for (i, section) in sections.messages.into_iter().enumerate() {
        let message_key = format!("{key}#{}", i + 1);
        match template::compile(env, &message_key, &section.text) {
            Ok(compiled) => uses.extend(compiled.uses),
            Err((line, message)) => {
                let line = file_line(section.line + line.unwrap_or(1) - 1);
                problems.push(Problem::new(
                    path,
                    Some(line),
                    format!("message {} (`{}`): {message}", i + 1, section.role),
                ));
                ok = false;
                continue;
            }
        }
        let constant = chat::is_constant(&section.text)
            .then(|| chat::message_json(section.role, &section.text).into_boxed_slice());
        messages.push(chat::ChatMessage {
            role: section.role,
            text: section.text,
            key: message_key,
            constant,
        });
    }
    ok.then_some((
        template::Compiled { uses },
        chat::ChatTemplate {
            messages,
            marker: sections.marker,
        },
    ))
}

type Extras = (
    Option<Arc<schema::InputSchema>>,
    Option<Arc<outputs::ResponseFormat>>,
    Option<Arc<outputs::Tools>>,
);

/// Compiles `input_schema`, `response_format` and `tools`, reading the files they name.
fn compile_extras(
    folder: &Folder<'_>,
    name: &str,
    raw: &version::RawVersion,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Extras {
    let mut side = Vec::new();
    let mut resolve = |file: &str| side_file(folder, file, &mut side);
    let mut report = |key: &str, message: String| {
        // A file problem says "names `x.json`, …": say whose.
        let message = if message.starts_with("names `") {
            format!("`{key}` {message}")
        } else {
            message
        };
        problems.push(Problem::new(path, raw.line_of(key), message));
    };
    let input_schema = raw.front.input_schema.as_ref().and_then(|value| {
        let schema = match value {
            serde_json::Value::String(file) => resolve(file),
            other => Ok(other.clone()),
        };
        match schema.and_then(schema::InputSchema::new) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                let e = if e.starts_with("names `") {
                    e
                } else {
                    format!("`input_schema` {e}")
                };
                report("input_schema", e);
                None
            }
        }
    });
    let response_format = raw.front.response_format.as_ref().and_then(|value| {
        match outputs::response_format(value, name, &mut resolve) {
            Ok(rf) => Some(Arc::new(rf)),
            Err(e) => {
                report("response_format", e);
                None
            }
        }
    });
    let tools =
        raw.front
            .tools
            .as_ref()
            .and_then(|value| match outputs::tools(value, &mut resolve) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    report("tools", e);
                    None
                }
            });
    problems.extend(side);
    (input_schema, response_format, tools)
}

/// Reads a JSON or YAML file beside a version (`tools.json`, `ticket.schema.yaml`). Problems
/// in the file itself are reported against it; the caller is told the file is unusable.
fn side_file(
    folder: &Folder<'_>,
    file: &str,
    problems: &mut Vec<Problem>,
) -> Result<serde_json::Value, String> {
    let plain = !file.is_empty()
        && !file.starts_with('.')
        && !file.contains(['/', '\\'])
        && (file.ends_with(".json") || file.ends_with(".yaml") || file.ends_with(".yml"));
    if !plain {
        return Err(format!(
            "names `{file}`: give the name of a `.json`, `.yaml` or `.yml` file in the prompt's folder"
        ));
    }
    if !folder.exists(file) {
        return Err(format!(
            "names `{file}`, which is not in the prompt's folder"
        ));
    }
    let text = folder
        .read(file, problems)
        .ok_or_else(|| format!("names `{file}`, which cannot be read"))?;
    let parsed = if file.ends_with(".json") {
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| (Some(e.line()), e.to_string()))
    } else {
        super::yaml::parse::<serde_json::Value>(&text).map_err(|e| (e.line, e.message))
    };
    parsed.map_err(|(line, message)| {
        problems.push(Problem::new(folder.shown(file), line, message));
        format!("names `{file}`, which is not valid (see that file)")
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
    fn chat_templates_and_side_files_load_and_their_problems_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "chat/v1.prompt",
            "---\nchat: true\ntools: tools.yaml\n---\nsystem:\nHi {{ a }}\nconversation:\nuser:\nConstant\n",
        );
        write(dir.path(), "chat/tools.yaml", "- name: ping\n");
        let set = load(dir.path()).unwrap();
        let v = &set.get("chat").unwrap().versions[&1];
        let chat = v.chat.as_ref().unwrap();
        assert_eq!((chat.messages.len(), chat.marker), (2, 1));
        assert!(chat.system_first());
        assert!(chat.messages[0].constant.is_none());
        assert_eq!(
            chat.messages[1].constant.as_deref(),
            Some(&br#"{"role":"user","content":"Constant"}"#[..])
        );
        assert_eq!(v.variables, vec!["a".to_owned()]);
        assert!(v.tools.is_some());

        write(
            dir.path(),
            "chat/tools.yaml",
            "- name: ping\n  parameters: [\n",
        );
        write(
            dir.path(),
            "chat/v2.prompt",
            "---\nresponse_format: {schema: ../etc/passwd.json}\n---\nHi",
        );
        let shown: Vec<String> = load(dir.path())
            .unwrap_err()
            .0
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(
            shown.iter().any(|s| s.starts_with("chat/tools.yaml:2: ")),
            "{shown:#?}"
        );
        assert!(
            shown.iter().any(|s| s
                .starts_with("chat/v1.prompt:3: `tools` names `tools.yaml`, which is not valid")),
            "{shown:#?}"
        );
        assert!(
            shown.iter().any(|s| s.starts_with(
                "chat/v2.prompt:2: `response_format` names `../etc/passwd.json`: give"
            )),
            "{shown:#?}"
        );
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
