//! Changing a prompt from the console: the editor for a new version (validated as you type),
//! saving it, rollback and label moves behind a confirmation that shows what changes.
//!
//! Every write goes through the admin write path ([`crate::admin::write::commit`]: validated
//! whole, atomic files, then a reload recorded in the audit trail with the signed-in person as
//! the actor — or, in git write mode, one commit by that person pushed to the branch or to a
//! review branch). When writing is not possible the page says why before anything is tried.

use std::collections::BTreeSet;

use axum::Extension;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Redirect, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::pages::version_row;
use super::session::Viewer;
use super::{PageError, diff, find, page, page_with, write_block};
use crate::AppState;
use crate::admin::write::{self, Change, NewVersion, WriteError, version_text};
use crate::error::ApiError;
use crate::prompts::{self, Builtins, Overlay, Prompt, template, version};

/// The editor's fields, as the form sends them (all text).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct Draft {
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub temperature: String,
    #[serde(default)]
    pub max_tokens: String,
    /// A JSON object.
    #[serde(default)]
    pub params: String,
    /// Comma-separated; empty = inferred from the template.
    #[serde(default)]
    pub variables: String,
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub activate: Option<String>,
    /// A JSON object of values for the preview (validate only).
    #[serde(default)]
    pub preview_variables: String,
    /// The front matter the editor has no field for (`chat`, `client_system`, `input_schema`,
    /// `response_format`, `tools`, …) as YAML lines, carried into the new version as written.
    #[serde(default)]
    pub front: String,
    pub from: Option<u32>,
}

/// Front-matter keys the editor has a field for (or that the write sets itself).
const EDITED_KEYS: &[&str] = &[
    "model",
    "temperature",
    "max_tokens",
    "params",
    "variables",
    "created_by",
    "created_at",
    "notes",
];

/// The top-level front-matter entries of a version file that the editor has no field for,
/// each with its indented continuation lines, as written (comments between them kept).
pub fn carried_front(file: &str) -> String {
    let file = file.replace("\r\n", "\n");
    let Some(rest) = file.strip_prefix("---\n") else {
        return String::new();
    };
    let front = match rest.find("\n---") {
        Some(end) => &rest[..end + 1],
        None => return String::new(),
    };
    let mut out = String::new();
    let mut keep = false;
    for line in front.lines() {
        let top = !line.starts_with([' ', '\t', '#']) && !line.trim().is_empty();
        if top {
            keep = top_key(line).is_none_or(|key| !EDITED_KEYS.contains(&key));
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The key of a top-level `key: value` line.
fn top_key(line: &str) -> Option<&str> {
    let key = line.split_once(':')?.0.trim();
    Some(key.trim_matches(['"', '\'']))
}

/// One problem with the draft, placed where it is.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DraftProblem {
    /// `template`, `front matter`, a field name, or `folder` (another file of the prompt).
    pub field: String,
    /// Line within the template (for `template`), else within the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

fn problem(field: &str, message: impl Into<String>) -> DraftProblem {
    DraftProblem {
        field: field.to_owned(),
        line: None,
        column: None,
        message: message.into(),
    }
}

impl Draft {
    /// The editor's fields for a new version starting from `v`, whose file's front matter
    /// the editor has no field for is `front`.
    fn from_version(v: &prompts::Version, front: String) -> Draft {
        Draft {
            front,
            template: v.template.clone(),
            model: v.model.clone().unwrap_or_default(),
            temperature: v.temperature.map(|t| t.to_string()).unwrap_or_default(),
            max_tokens: v.max_tokens.map(|t| t.to_string()).unwrap_or_default(),
            params: if v.params.is_empty() {
                String::new()
            } else {
                Value::Object(v.params.clone()).to_string()
            },
            variables: v.declared.clone().unwrap_or_default().join(", "),
            notes: String::new(),
            activate: None,
            preview_variables: String::new(),
            from: Some(v.version),
        }
    }

    /// The admin write path's request, or every field problem.
    fn to_new_version(&self, created_by: Option<String>) -> Result<NewVersion, Vec<DraftProblem>> {
        let mut problems = Vec::new();
        let text = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        let temperature = text(&self.temperature).and_then(|t| {
            t.parse::<f64>()
                .map_err(|_| {
                    problems.push(problem("temperature", format!("`{t}` is not a number")))
                })
                .ok()
        });
        let max_tokens = text(&self.max_tokens).and_then(|t| {
            t.parse::<u64>()
                .map_err(|_| {
                    problems.push(problem(
                        "max_tokens",
                        format!("`{t}` is not a whole number"),
                    ))
                })
                .ok()
        });
        let params = match text(&self.params) {
            None => None,
            Some(t) => match serde_json::from_str::<Value>(&t) {
                Ok(Value::Object(map)) => Some(map),
                Ok(_) => {
                    problems.push(problem(
                        "params",
                        "must be a JSON object, like {\"top_p\": 0.9}",
                    ));
                    None
                }
                Err(e) => {
                    problems.push(DraftProblem {
                        field: "params".to_owned(),
                        line: Some(e.line()),
                        column: Some(e.column()),
                        message: format!("not valid JSON: {e}"),
                    });
                    None
                }
            },
        };
        let variables = text(&self.variables).map(|t| {
            t.split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>()
        });
        if self.template.trim().is_empty() {
            problems.push(problem("template", "the template is empty"));
        }
        for (n, line) in self.front.lines().enumerate() {
            if line.starts_with([' ', '\t', '#']) {
                continue;
            }
            if let Some(key) = top_key(line).filter(|k| EDITED_KEYS.contains(k)) {
                problems.push(DraftProblem {
                    field: "front".to_owned(),
                    line: Some(n + 1),
                    column: None,
                    message: format!("`{key}` has its own field above; set it there"),
                });
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(NewVersion {
            template: self.template.replace("\r\n", "\n"),
            model: text(&self.model),
            temperature,
            max_tokens,
            params,
            variables,
            created_by,
            notes: text(&self.notes),
            description: None,
            tags: None,
            activate: self.activate.is_some(),
        })
    }
}

/// What the editor learns about a draft.
#[derive(Debug, Serialize)]
pub struct Checked {
    pub ok: bool,
    pub problems: Vec<DraftProblem>,
    /// Variables the template needs from the request (built-ins left out).
    pub variables: Vec<String>,
    pub preview: Option<String>,
    pub preview_error: Option<String>,
}

fn column_of(text: &str, line: usize, range: Option<std::ops::Range<usize>>) -> Option<usize> {
    let start = range?.start;
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    text.get(line_start..start.max(line_start))
        .map(|s| s.chars().count() + 1)
}

/// Validates a draft exactly as a save would (the prompt's folder with the new file laid over
/// it), and previews its render.
pub fn check(state: &AppState, p: &Prompt, draft: &Draft) -> Checked {
    let mut problems = Vec::new();
    let new = match draft.to_new_version(None) {
        Ok(new) => Some(new),
        Err(list) => {
            problems.extend(list);
            None
        }
    };
    let body = draft.template.replace("\r\n", "\n");
    let body = body.trim_end_matches('\n');
    let mut env = template::environment();
    let mut uses = BTreeSet::new();
    match env.add_template_owned("draft".to_owned(), body.to_owned()) {
        Err(e) => {
            let line = e.line();
            problems.push(DraftProblem {
                field: "template".to_owned(),
                line,
                column: line.and_then(|l| column_of(body, l, e.range())),
                message: format!(
                    "{}: {}",
                    e.kind(),
                    e.detail()
                        .map_or_else(|| e.kind().to_string(), str::to_owned)
                ),
            });
        }
        Ok(()) => {
            if let Ok(t) = env.get_template("draft") {
                uses = t.undeclared_variables(false).into_iter().collect();
            }
        }
    }
    let next = p.versions.keys().next_back().copied().unwrap_or(0) + 1;
    // The whole prompt as it would be: only when the draft itself parses, so a template error
    // is not reported twice.
    if let Some(new) = &new
        && problems.is_empty()
    {
        let file = format!("v{next}.prompt");
        let text = version_text(new, "2000-01-01T00:00:00.000Z");
        let body_line = version::parse(&text).map_or(1, |raw| raw.body_line);
        let mut overlay = Overlay::new();
        overlay.insert(file.clone(), text);
        if let Err(found) = prompts::check_prompt(&state.config.prompts_dir, &p.name, &overlay) {
            let ours = std::path::Path::new(&p.name).join(&file);
            for pr in found.0 {
                if pr.file == ours {
                    match pr.line {
                        Some(l) if l >= body_line => problems.push(DraftProblem {
                            field: "template".to_owned(),
                            line: Some(l - body_line + 1),
                            column: None,
                            message: pr.message,
                        }),
                        _ => {
                            // Settings problems name their key first: place them at the field.
                            let field =
                                ["temperature", "max_tokens", "model", "params", "variables"]
                                    .into_iter()
                                    .find(|k| {
                                        pr.message.starts_with(&format!("`{k}`"))
                                            || pr.message.starts_with(&format!("`{k}."))
                                    })
                                    .unwrap_or("front matter");
                            problems.push(problem(field, pr.message));
                        }
                    }
                } else {
                    problems.push(problem("folder", pr.to_string()));
                }
            }
        }
    }
    let declared: Option<Vec<String>> = new.as_ref().and_then(|n| n.variables.clone());
    let variables: Vec<String> = match &declared {
        Some(d) => d.clone(),
        None => uses
            .iter()
            .filter(|v| !template::BUILTINS.contains(&v.as_str()))
            .cloned()
            .collect(),
    };
    let (preview, preview_error) = if problems.iter().any(|p| p.field == "template") {
        (
            None,
            Some("Fix the template's problems to see the preview.".to_owned()),
        )
    } else {
        preview(
            p,
            next,
            &env,
            &uses,
            declared.as_deref(),
            &variables,
            &draft.preview_variables,
        )
    };
    Checked {
        ok: problems.is_empty(),
        problems,
        variables,
        preview,
        preview_error,
    }
}

/// Renders the draft the way serving does, with the given values and `«name»` for the rest.
fn preview(
    p: &Prompt,
    number: u32,
    env: &minijinja::Environment<'static>,
    uses: &BTreeSet<String>,
    declared: Option<&[String]>,
    needed: &[String],
    given: &str,
) -> (Option<String>, Option<String>) {
    let mut values: Map<String, Value> = if given.trim().is_empty() {
        Map::new()
    } else {
        match serde_json::from_str::<Value>(given) {
            Ok(Value::Object(m)) => m,
            _ => {
                return (
                    None,
                    Some(
                        "the preview values must be a JSON object, like {\"company\": \"Acme\"}"
                            .to_owned(),
                    ),
                );
            }
        }
    };
    for name in needed {
        values
            .entry(name.clone())
            .or_insert_with(|| Value::from(format!("«{name}»")));
    }
    let now = chrono::Utc::now();
    let today = now.format("%Y-%m-%d").to_string();
    let now_text = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let input = template::RenderInput {
        prompt: &p.name,
        version: number,
        key: "draft",
        declared,
        uses,
        variables: &values,
        builtins: Builtins {
            today: &today,
            now: &now_text,
            user_message: "«the user's message»",
            examples: "«examples»",
        },
    };
    match template::render(env, &input) {
        Ok(text) => (Some(text), None),
        Err(e) => (None, Some(e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
pub struct EditorQuery {
    from: Option<u32>,
}

fn editor_page(
    state: &AppState,
    viewer: &Viewer,
    p: &Prompt,
    draft: &Draft,
    status: StatusCode,
    problems: &[DraftProblem],
) -> Response {
    let checked = check(state, p, draft);
    let lines = draft.template.lines().count().max(1);
    page_with(
        status,
        "editor.html",
        viewer,
        ctx! {
            p => p, draft => draft, checked => checked, saved_problems => problems,
            line_numbers => (1..=lines).collect::<Vec<_>>(),
            next => p.versions.keys().next_back().copied().unwrap_or(0) + 1,
            write_block => write_block(state, viewer),
        },
    )
}

/// `GET /console/prompts/{name}/new?from=N`: the editor, filled from version N (or active).
pub async fn editor(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Query(query): Query<EditorQuery>,
) -> Result<Response, PageError> {
    let p = find(&state, &viewer, &name)?;
    let from = query.from.unwrap_or(p.active);
    let Some(v) = p.versions.get(&from) else {
        return Err(PageError::new(
            &viewer,
            StatusCode::NOT_FOUND,
            format!("prompt `{name}` has no version {from}"),
        ));
    };
    // What the editor has no field for is carried over from the file as written.
    let file = state
        .config
        .prompts_dir
        .join(&name)
        .join(format!("v{from}.prompt"));
    let front = tokio::fs::read_to_string(&file)
        .await
        .map(|text| carried_front(&text))
        .unwrap_or_default();
    Ok(editor_page(
        &state,
        &viewer,
        &p,
        &Draft::from_version(v, front),
        StatusCode::OK,
        &[],
    ))
}

/// `POST /console/prompts/{name}/validate` (the editor's fields) → problems with line and
/// column, the variables the template needs, and the preview. Changes nothing.
pub async fn validate(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Form(draft): Form<Draft>,
) -> Result<Json<Checked>, PageError> {
    let p = find(&state, &viewer, &name)?;
    let checked = tokio::task::spawn_blocking(move || check(&state, &p, &draft))
        .await
        .map_err(|e| PageError::new(&viewer, StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(checked))
}

fn refuse_write(state: &AppState, viewer: &Viewer) -> Result<(), PageError> {
    match write_block(state, viewer) {
        None => Ok(()),
        Some(block) => Err(PageError::new(viewer, StatusCode::FORBIDDEN, block.message)),
    }
}

/// Back to the prompt's page, saying what became of the change: live, not serving (the set
/// does not reload), or waiting for review on a branch.
pub(super) fn done(name: &str, code: &str, n: Option<u32>, outcome: &Value) -> Response {
    let serving = outcome["serving"].as_bool().unwrap_or(false);
    let review = outcome["review"]["branch"].as_str();
    let code = match (review, serving) {
        (Some(_), _) => "review",
        (None, true) => code,
        (None, false) => "not_serving",
    };
    // A version waiting for review is not served yet: nothing to show of it.
    let n = n
        .filter(|_| review.is_none())
        .map_or(String::new(), |n| format!("&n={n}&v={n}"));
    Redirect::to(&format!("/console/prompts/{name}?done={code}{n}")).into_response()
}

/// `POST /console/prompts/{name}/versions`: saves the draft as the next `vN.prompt`.
pub async fn save(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Form(draft): Form<Draft>,
) -> Result<Response, PageError> {
    let p = find(&state, &viewer, &name)?;
    refuse_write(&state, &viewer)?;
    let new = match draft.to_new_version(viewer.name.clone()) {
        Ok(new) => new,
        Err(problems) => {
            return Ok(editor_page(
                &state,
                &viewer,
                &p,
                &draft,
                StatusCode::UNPROCESSABLE_ENTITY,
                &problems,
            ));
        }
    };
    let activate = new.activate;
    let mut front = draft.front.replace("\r\n", "\n");
    if !front.is_empty() && !front.ends_with('\n') {
        front.push('\n');
    }
    let audit = state.audit.clone();
    let prompt = name.clone();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // Refused changes come back as the editor with their problems, not an error page.
    let refused: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let keep = refused.clone();
    let written = write::commit(&state, viewer.actor(), move |writer| {
        match writer.create_version_with(&audit, &prompt, &new, &front, &now) {
            Ok((number, hash)) => Ok(((number, hash), Change::new_version(&prompt, number, &new))),
            Err(WriteError::Invalid(found)) => {
                *keep.lock().unwrap_or_else(|e| e.into_inner()) =
                    found.0.iter().map(ToString::to_string).collect();
                Err(WriteError::Invalid(found))
            }
            Err(e) => Err(e),
        }
    })
    .await;
    let invalid = std::mem::take(&mut *refused.lock().unwrap_or_else(|e| e.into_inner()));
    let ((number, _), outcome) = match written {
        Ok(done) => done,
        Err(_) if !invalid.is_empty() => {
            let problems: Vec<DraftProblem> = invalid
                .into_iter()
                .map(|pr| problem("folder", pr))
                .collect();
            return Ok(editor_page(
                &state,
                &viewer,
                &p,
                &draft,
                StatusCode::UNPROCESSABLE_ENTITY,
                &problems,
            ));
        }
        Err(e) => return Err(PageError::api(&viewer, e)),
    };
    let code = if activate { "saved_active" } else { "saved" };
    Ok(done(&name, code, Some(number), &outcome))
}

#[derive(Debug, Deserialize)]
pub struct RollbackForm {
    version: u32,
}

/// `GET /console/prompts/{name}/rollback?version=N`: what making N active changes.
pub async fn confirm_rollback(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Query(form): Query<RollbackForm>,
) -> Result<Response, PageError> {
    let p = find(&state, &viewer, &name)?;
    let (Some(from), Some(to)) = (p.versions.get(&p.active), p.versions.get(&form.version)) else {
        return Err(PageError::new(
            &viewer,
            StatusCode::NOT_FOUND,
            format!("prompt `{name}` has no version {}", form.version),
        ));
    };
    let mut notes = Vec::new();
    if p.experiment.is_some() {
        notes.push("An experiment is running on this prompt: requests it assigns keep getting their variant; only requests outside the experiment get the active version.".to_owned());
    }
    Ok(page(
        "confirm.html",
        &viewer,
        ctx! {
            p => &*p, kind => "rollback", title => format!("Make v{} active", form.version),
            change => format!("active version: v{} → v{}", p.active, form.version),
            action => format!("/console/prompts/{name}/rollback"),
            fields => vec![("version", form.version.to_string())],
            from => version_row(&state, &p, from), to => version_row(&state, &p, to),
            d => diff::versions(from, to), notes => notes,
            write_block => write_block(&state, &viewer),
        },
    ))
}

/// `POST /console/prompts/{name}/rollback` `version=N`
pub async fn rollback(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Form(form): Form<RollbackForm>,
) -> Result<Response, PageError> {
    find(&state, &viewer, &name)?;
    refuse_write(&state, &viewer)?;
    let prompt = name.clone();
    let ((), outcome) = write::commit(&state, viewer.actor(), move |writer| {
        writer.set_active(&prompt, form.version)?;
        Ok(((), Change::rollback(&prompt, form.version)))
    })
    .await
    .map_err(|e: ApiError| PageError::api(&viewer, e))?;
    Ok(done(&name, "rolled_back", Some(form.version), &outcome))
}

#[derive(Debug, Deserialize)]
pub struct LabelForm {
    label: String,
    /// Empty removes the label.
    #[serde(default)]
    version: String,
}

impl LabelForm {
    fn target(&self, viewer: &Viewer) -> Result<Option<u32>, PageError> {
        if !prompts::manifest::valid_label(&self.label) {
            return Err(PageError::new(
                viewer,
                StatusCode::BAD_REQUEST,
                format!(
                    "`{}` is not a valid label: use letters, digits, `_`, `-` and `.` (up to 64, not only digits)",
                    self.label
                ),
            ));
        }
        let v = self.version.trim();
        if v.is_empty() {
            return Ok(None);
        }
        v.trim_start_matches('v').parse().map(Some).map_err(|_| {
            PageError::new(
                viewer,
                StatusCode::BAD_REQUEST,
                format!("`{v}` is not a version number"),
            )
        })
    }
}

/// `GET /console/prompts/{name}/label?label=L&version=N`: what moving (or removing) L changes.
pub async fn confirm_label(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Query(form): Query<LabelForm>,
) -> Result<Response, PageError> {
    let p = find(&state, &viewer, &name)?;
    let target = form.target(&viewer)?;
    let current = p.labels.get(&form.label).copied();
    if let Some(t) = target
        && !p.versions.contains_key(&t)
    {
        return Err(PageError::new(
            &viewer,
            StatusCode::NOT_FOUND,
            format!("prompt `{name}` has no version {t}"),
        ));
    }
    let show = |n: Option<u32>| n.map_or("(none)".to_owned(), |n| format!("v{n}"));
    let from = current.and_then(|n| p.versions.get(&n));
    let to = target.and_then(|n| p.versions.get(&n));
    let d = from.zip(to).map(|(a, b)| diff::versions(a, b));
    let mut notes = Vec::new();
    if target.is_none() {
        notes.push(format!(
            "Requests that ask for label `{}` will be refused once it is removed.",
            form.label
        ));
    }
    Ok(page(
        "confirm.html",
        &viewer,
        ctx! {
            p => &*p, kind => "label",
            title => match target { Some(t) => format!("Point label {} at v{t}", form.label), None => format!("Remove label {}", form.label) },
            change => format!("label {}: {} → {}", form.label, show(current), target.map_or("removed".to_owned(), |t| format!("v{t}"))),
            action => format!("/console/prompts/{name}/label"),
            fields => vec![("label", form.label.clone()), ("version", form.version.clone())],
            from => from.map(|v| version_row(&state, &p, v)), to => to.map(|v| version_row(&state, &p, v)),
            d => d, notes => notes, write_block => write_block(&state, &viewer),
        },
    ))
}

/// `POST /console/prompts/{name}/label` `label=L&version=N` (empty version removes it)
pub async fn label(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Form(form): Form<LabelForm>,
) -> Result<Response, PageError> {
    find(&state, &viewer, &name)?;
    refuse_write(&state, &viewer)?;
    let target = form.target(&viewer)?;
    let prompt = name.clone();
    let label = form.label.clone();
    let ((), outcome) = write::commit(&state, viewer.actor(), move |writer| {
        writer.set_label(&prompt, &label, target)?;
        Ok(((), Change::label(&prompt, &label, target)))
    })
    .await
    .map_err(|e: ApiError| PageError::api(&viewer, e))?;
    Ok(done(&name, "label", None, &outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_matter_the_editor_has_no_field_for_is_carried_as_written() {
        let file = "---\nmodel: gpt-4o\nchat: true\nclient_system: separate\n# the reply's shape\nresponse_format:\n  type: json_schema\n  name: answer\ntemperature: 0.2\nparams: {top_p: 0.9}\ncreated_at: \"2026-01-01\"\ntools: tools.yaml\n---\nsystem:\nHi\n";
        assert_eq!(
            carried_front(file),
            "chat: true\nclient_system: separate\n# the reply's shape\nresponse_format:\n  type: json_schema\n  name: answer\ntools: tools.yaml\n"
        );
        assert_eq!(carried_front("no front matter"), "");
        assert_eq!(carried_front("---\nmodel: m\n---\nbody"), "");
        assert_eq!(
            carried_front("---\r\nchat: true\r\n---\r\nuser:\r\nHi"),
            "chat: true\n"
        );
    }

    #[test]
    fn a_key_with_its_own_field_is_refused_in_the_other_front_matter() {
        let draft = Draft {
            template: "Hi".into(),
            front: "chat: true\nmodel: gpt-4o\n".into(),
            ..Draft::default()
        };
        let problems = draft.to_new_version(None).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "front");
        assert_eq!(problems[0].line, Some(2));
        assert!(problems[0].message.contains("`model` has its own field"));
    }

    #[test]
    fn columns_count_characters_on_the_line() {
        let text = "line one\nab {{ x }\n";
        assert_eq!(column_of(text, 2, Some(12..13)), Some(4));
        assert_eq!(column_of(text, 1, Some(0..1)), Some(1));
        assert_eq!(column_of(text, 1, None), None);
    }

    #[test]
    fn bad_fields_are_all_named() {
        let draft = Draft {
            template: "Hi".into(),
            temperature: "warm".into(),
            max_tokens: "-1".into(),
            params: "{".into(),
            ..Draft::default()
        };
        let problems = draft.to_new_version(None).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["temperature", "max_tokens", "params"]);
    }
}
