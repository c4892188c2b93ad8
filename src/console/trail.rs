//! The audit trail in the console: newest first, filtered by prompt and actor, each entry
//! linking to the diff it made.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::session::Viewer;
use super::{PageError, page, short_time};
use crate::AppState;
use crate::audit::Entry;

/// Entries shown at once; the filters narrow it down.
const SHOWN: usize = 500;

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    actor: String,
}

#[derive(Serialize)]
struct Row {
    time: String,
    actor: String,
    source: String,
    action: String,
    prompt: String,
    what: String,
    /// The diff (or page) this change made, when there is one to show.
    link: Option<String>,
}

fn describe(e: &Entry) -> (String, Option<String>) {
    let base = format!("/console/prompts/{}", e.prompt);
    let v = |n: Option<u32>| n.map_or("?".to_owned(), |n| format!("v{n}"));
    match e.action.as_str() {
        "version_added" => (
            format!("added {}", v(e.version)),
            e.version.map(|n| match n {
                1 => format!("{base}?v=1"),
                n => format!("{base}/diff?a={}&b={n}", n - 1),
            }),
        ),
        "version_removed" => (format!("removed {}", v(e.version)), None),
        "version_hash_changed" => (
            format!(
                "{} changed in place (versions are meant to be immutable)",
                v(e.version)
            ),
            e.version.map(|n| format!("{base}?v={n}")),
        ),
        "active_changed" => (
            format!("active {} → {}", v(e.from_version), v(e.to_version)),
            match (e.from_version, e.to_version) {
                (Some(a), Some(b)) => Some(format!("{base}/diff?a={a}&b={b}")),
                (None, Some(b)) => Some(format!("{base}?v={b}")),
                _ => None,
            },
        ),
        "labels_changed" => (
            format!(
                "labels → {}",
                e.value
                    .as_ref()
                    .map_or("none".to_owned(), ToString::to_string)
            ),
            Some(base),
        ),
        "experiment_changed" => (
            format!(
                "experiment → {}",
                e.value
                    .as_ref()
                    .filter(|v| !v.is_null())
                    .map_or("ended".to_owned(), ToString::to_string)
            ),
            Some(format!("{base}/experiment")),
        ),
        "prompt_added" => ("prompt added".to_owned(), Some(base)),
        "prompt_removed" => ("prompt removed".to_owned(), None),
        other => (other.replace('_', " "), Some(base)),
    }
}

/// `GET /console/audit?prompt=&actor=`
pub async fn page_get(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, PageError> {
    let audit = state.audit.clone();
    let prompt = (!query.prompt.is_empty()).then(|| query.prompt.clone());
    let entries = tokio::task::spawn_blocking(move || audit.read(prompt.as_deref()))
        .await
        .map_err(|e| PageError::new(&viewer, StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            PageError::new(
                &viewer,
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the audit trail: {e}"),
            )
        })?;
    let mut actors: Vec<String> = entries.iter().map(|e| e.actor.clone()).collect();
    actors.sort();
    actors.dedup();
    let matching: Vec<&Entry> = entries
        .iter()
        .rev()
        .filter(|e| query.actor.is_empty() || e.actor == query.actor)
        .collect();
    let total = matching.len();
    let rows: Vec<Row> = matching
        .into_iter()
        .take(SHOWN)
        .map(|e| {
            let (what, link) = describe(e);
            Row {
                time: short_time(&e.time),
                actor: e.actor.clone(),
                source: e.source.clone(),
                action: e.action.clone(),
                prompt: e.prompt.clone(),
                what,
                link,
            }
        })
        .collect();
    let prompts: Vec<String> = state
        .prompts
        .load()
        .prompts()
        .map(|p| p.name.clone())
        .collect();
    Ok(page(
        "audit.html",
        &viewer,
        ctx! {
            rows => rows, total => total, shown => SHOWN, actors => actors, prompts => prompts,
            prompt => query.prompt, actor => query.actor,
        },
    ))
}
