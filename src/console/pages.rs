//! The read pages: every prompt, one prompt with its versions, and the diff of two versions.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::session::Viewer;
use super::{PageError, diff, find, page, short_time, write_block};
use crate::AppState;
use crate::prompts::{Experiment, Prompt, Split, Version};

/// `v1 50% · v2 50%`
pub fn experiment_summary(e: &Experiment) -> String {
    let parts: Vec<String> = match &e.split {
        Split::AB {
            version_a,
            version_b,
            traffic_split,
        } => vec![
            format!("v{version_a} {}%", round_share(1.0 - traffic_split)),
            format!("v{version_b} {}%", round_share(*traffic_split)),
        ],
        Split::Weighted { variants } => variants
            .iter()
            .map(|v| format!("v{} {}%", v.version, v.weight))
            .collect(),
    };
    parts.join(" · ")
}

fn round_share(share: f64) -> String {
    let pct = share * 100.0;
    if (pct - pct.round()).abs() < 1e-9 {
        format!("{}", pct.round() as i64)
    } else {
        format!("{pct:.1}")
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    tag: String,
}

#[derive(Serialize)]
struct Row<'a> {
    name: &'a str,
    description: &'a str,
    tags: &'a [String],
    active: u32,
    versions: usize,
    labels: Vec<(String, u32)>,
    experiment: Option<String>,
    requests: u64,
    errors: u64,
    /// Lowercased text the live filter searches.
    search: String,
}

fn matches(p: &Prompt, q: &str, tag: &str) -> bool {
    let q = q.trim().to_lowercase();
    (tag.is_empty() || p.tags.iter().any(|t| t == tag))
        && (q.is_empty()
            || p.name.to_lowercase().contains(&q)
            || p.description.to_lowercase().contains(&q)
            || p.tags.iter().any(|t| t.to_lowercase().contains(&q)))
}

/// `GET /console/?q=&tag=`: every prompt.
pub async fn list(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(query): Query<ListQuery>,
) -> Response {
    let prompts = state.prompts.load();
    let mut tags: Vec<&String> = prompts.prompts().flat_map(|p| p.tags.iter()).collect();
    tags.sort();
    tags.dedup();
    let rows: Vec<Row<'_>> = prompts
        .prompts()
        .filter(|p| matches(p, &query.q, &query.tag))
        .map(|p| {
            let (requests, errors) = state.recorder.last_hour(&p.name);
            Row {
                name: &p.name,
                description: &p.description,
                tags: &p.tags,
                active: p.active,
                versions: p.versions.len(),
                labels: p.labels.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                experiment: p.experiment.as_ref().map(experiment_summary),
                requests,
                errors,
                search: format!("{} {} {}", p.name, p.description, p.tags.join(" ")).to_lowercase(),
            }
        })
        .collect();
    let reload = state.reloader.status();
    let refused = (reload.last_result == Some("error")).then_some(&reload.last_error);
    page(
        "list.html",
        &viewer,
        ctx! {
            rows => rows, total => prompts.len(), tags => tags, q => query.q, tag => query.tag,
            refused => refused, refused_at => reload.last_reload_at.as_deref().map(short_time),
            degraded => reload.degraded,
        },
    )
}

/// A version as the pages show it.
#[derive(Serialize)]
pub struct VersionRow {
    pub number: u32,
    pub hash: String,
    pub model: Option<String>,
    pub settings: Vec<String>,
    pub variables: Vec<String>,
    pub created_at: Option<String>,
    pub created_by: Option<String>,
    pub notes: Option<String>,
    pub active: bool,
    pub labels: Vec<String>,
    pub in_experiment: bool,
}

pub fn version_row(state: &AppState, p: &Prompt, v: &Version) -> VersionRow {
    let mut settings = Vec::new();
    if let Some(t) = v.temperature {
        settings.push(format!("temperature {t}"));
    }
    if let Some(m) = v.max_tokens {
        settings.push(format!("max_tokens {m}"));
    }
    for (k, value) in &v.params {
        settings.push(format!("{k} {value}"));
    }
    VersionRow {
        number: v.version,
        hash: v.hash.clone(),
        model: v.model.clone(),
        settings,
        variables: v.variables.clone(),
        created_at: v
            .created_at
            .clone()
            .or_else(|| state.audit.first_seen(&p.name, v.version))
            .map(|t| short_time(&t)),
        created_by: v.created_by.clone(),
        notes: v.notes.clone(),
        active: p.active == v.version,
        labels: p
            .labels
            .iter()
            .filter(|(_, n)| **n == v.version)
            .map(|(l, _)| l.clone())
            .collect(),
        in_experiment: p
            .experiment
            .as_ref()
            .is_some_and(|e| e.versions().contains(&v.version)),
    }
}

#[derive(Debug, Deserialize)]
pub struct PromptQuery {
    v: Option<u32>,
    done: Option<String>,
    n: Option<u32>,
}

/// What a finished change says at the top of the prompt page. Codes, not text, so a link
/// cannot put words on the page.
fn flash(code: &str, n: Option<u32>) -> Option<(&'static str, String)> {
    let n = n.map_or(String::new(), |n| format!("v{n}"));
    Some(match code {
        "saved" => ("ok", format!("Saved {n}.")),
        "saved_active" => ("ok", format!("Saved {n}; it is now active.")),
        "rolled_back" => ("ok", format!("{n} is now active.")),
        "label" => ("ok", "Label moved.".to_owned()),
        "review" => (
            "info",
            "Pushed for review: the change is waiting for review on its own branch (listed below) and goes live once it is merged into the served branch.".to_owned(),
        ),
        "not_serving" => (
            "warn",
            "The files were written, but the prompt folder does not validate as a whole, so the change is not serving yet: see the banner on the prompts page.".to_owned(),
        ),
        _ => return None,
    })
}

/// `GET /console/prompts/{name}?v=N`
pub async fn prompt(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Query(query): Query<PromptQuery>,
) -> Result<Response, PageError> {
    let p = find(&state, &viewer, &name)?;
    let shown_number = query.v.unwrap_or(p.active);
    let Some(shown) = p.versions.get(&shown_number) else {
        return Err(PageError::new(
            &viewer,
            StatusCode::NOT_FOUND,
            format!("prompt `{name}` has no version {shown_number}"),
        ));
    };
    let versions: Vec<VersionRow> = p
        .versions
        .values()
        .rev()
        .map(|v| version_row(&state, &p, v))
        .collect();
    let lines: Vec<(usize, &str)> = shown
        .template
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect();
    let previous = p
        .versions
        .range(..shown_number)
        .next_back()
        .map(|(n, _)| *n);
    let (requests, errors) = state.recorder.last_hour(&p.name);
    let flash = query.done.as_deref().and_then(|c| flash(c, query.n));
    let pending: Vec<_> = state.git.as_ref().map_or_else(Vec::new, |git| {
        git.pending()
            .into_iter()
            .filter(|c| c.prompt == p.name)
            .collect()
    });
    Ok(page(
        "prompt.html",
        &viewer,
        ctx! {
            p => &*p, versions => versions,
            tags => p.tags.iter().map(|t| (t.clone(), super::url_encode(t))).collect::<Vec<_>>(), shown => version_row(&state, &p, shown),
            lines => lines, labels => p.labels.iter().collect::<Vec<_>>(),
            experiment => p.experiment.as_ref().map(experiment_summary),
            diff_a => previous.unwrap_or(shown_number), diff_b => shown_number,
            numbers => p.versions.keys().rev().collect::<Vec<_>>(),
            requests => requests, errors => errors,
            write_block => write_block(&state, &viewer), flash => flash, pending => pending,
        },
    ))
}

#[derive(Debug, Deserialize)]
pub struct DiffQuery {
    a: Option<u32>,
    b: Option<u32>,
    #[serde(default)]
    view: String,
}

/// `GET /console/prompts/{name}/diff?a=N&b=M&view=split|unified`
pub async fn diff(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Query(query): Query<DiffQuery>,
) -> Result<Response, PageError> {
    let p = find(&state, &viewer, &name)?;
    let b_number = query.b.unwrap_or(p.active);
    let a_number = query.a.unwrap_or_else(|| {
        p.versions
            .range(..b_number)
            .next_back()
            .map_or(b_number, |(n, _)| *n)
    });
    let get = |n: u32| {
        p.versions.get(&n).ok_or_else(|| {
            PageError::new(
                &viewer,
                StatusCode::NOT_FOUND,
                format!("prompt `{name}` has no version {n}"),
            )
        })
    };
    let (a, b) = (get(a_number)?, get(b_number)?);
    let view = if query.view == "unified" {
        "unified"
    } else {
        "split"
    };
    Ok(page(
        "diff.html",
        &viewer,
        ctx! {
            p => &*p, a => version_row(&state, &p, a), b => version_row(&state, &p, b),
            d => diff::versions(a, b), view => view,
            numbers => p.versions.keys().rev().collect::<Vec<_>>(),
        },
    ))
}
