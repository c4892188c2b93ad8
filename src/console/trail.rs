//! The audit trail in the console: newest first, filtered by prompt and actor, each entry
//! linking to the diff it made.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::session::Viewer;
use super::{PageError, page, short_time};
use crate::AppState;
use crate::admin::git::AuditRow;
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
            format!("labels → {}", labels_text(e.value.as_ref())),
            Some(base),
        ),
        "experiment_changed" => (
            format!("experiment → {}", experiment_text(e.value.as_ref())),
            Some(format!("{base}/experiment")),
        ),
        "prompt_added" => ("prompt added".to_owned(), Some(base)),
        "prompt_removed" => ("prompt removed".to_owned(), None),
        other => (other.replace('_', " "), Some(base)),
    }
}

/// `stable → v2, canary → v3`
fn labels_text(value: Option<&Value>) -> String {
    match value.and_then(Value::as_object) {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k} → v{v}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".to_owned(),
    }
}

/// `v2 50% · v3 50%`, as the manifest's experiment block reads.
fn experiment_text(value: Option<&Value>) -> String {
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return "ended".to_owned();
    };
    let mut parts: Vec<String> = match (v.get("variants"), v.get("version_a")) {
        (Some(Value::Array(variants)), _) => variants
            .iter()
            .map(|x| format!("v{} {}%", x["version"], x["weight"]))
            .collect(),
        (_, Some(a)) => {
            let split = v["traffic_split"].as_f64().unwrap_or(0.0);
            vec![
                format!("v{a} {}%", ((1.0 - split) * 100.0).round()),
                format!("v{} {}%", v["version_b"], (split * 100.0).round()),
            ]
        }
        _ => vec![v.to_string()],
    };
    if let Some(salt) = v.get("salt").and_then(Value::as_str) {
        parts.push(format!("salt {salt}"));
    }
    parts.join(" · ")
}

/// `GET /console/audit?prompt=&actor=`
pub async fn page_get(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, PageError> {
    if state.git.is_some() || state.config.git_audit {
        return git_page(&state, &viewer, &query).await;
    }
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
    let rows: Vec<Row> = matching.into_iter().take(SHOWN).map(entry_row).collect();
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

fn entry_row(e: &Entry) -> Row {
    let (what, link) = describe(e);
    Row {
        time: short_time(&e.time),
        actor: e.actor.clone(),
        source: e.source.clone(),
        action: e.action.as_str().to_owned(),
        prompt: e.prompt.clone(),
        what,
        link,
    }
}

fn actor_of(row: &AuditRow) -> &str {
    match row {
        AuditRow::Commit(c) => &c.actor,
        AuditRow::Rollout(e) => &e.actor,
    }
}

/// The trail in git mode: the history of the prompts folder, one row per commit.
async fn git_page(
    state: &AppState,
    viewer: &Viewer,
    query: &AuditQuery,
) -> Result<Response, PageError> {
    let prompt = Some(query.prompt.as_str()).filter(|p| crate::prompts::valid_prompt_name(p));
    let (commits, older) = crate::admin::git::history(
        &state.config.prompts_dir,
        prompt,
        None,
        SHOWN,
        std::time::Duration::from_secs(30),
    )
    .await
    .map_err(|e| PageError::new(viewer, StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // The rollout's steps and halts are in the local trail only.
    let entries = crate::admin::rollout_entries(state, prompt.map(str::to_owned))
        .await
        .map_err(|e| PageError::new(viewer, StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let merged = crate::admin::git::with_rollout_entries(commits, entries, older.is_none(), None);
    let mut actors: Vec<String> = merged.iter().map(|r| actor_of(r).to_owned()).collect();
    actors.sort();
    actors.dedup();
    let rows: Vec<Row> = merged
        .into_iter()
        .rev()
        .filter(|r| query.actor.is_empty() || actor_of(r) == query.actor)
        .map(|r| match r {
            AuditRow::Rollout(e) => entry_row(&e),
            AuditRow::Commit(c) => Row {
                time: short_time(&c.time),
                actor: c.actor.clone(),
                source: c.source.clone(),
                action: format!("commit {}", c.commit.get(..10).unwrap_or(&c.commit)),
                prompt: c.prompts.join(", "),
                what: if c.note.is_empty() {
                    c.summary.clone()
                } else {
                    format!("{} — {}", c.summary, c.note)
                },
                link: c
                    .prompts
                    .first()
                    .map(|p| format!("/console/prompts/{p}"))
                    .filter(|_| c.prompts.len() == 1),
            },
        })
        .collect();
    let total = rows.len();
    let prompts: Vec<String> = state
        .prompts
        .load()
        .prompts()
        .map(|p| p.name.clone())
        .collect();
    Ok(page(
        "audit.html",
        viewer,
        ctx! {
            rows => rows, total => total, shown => SHOWN, actors => actors, prompts => prompts,
            prompt => query.prompt, actor => query.actor,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(action: &str, value: Option<Value>) -> Entry {
        Entry {
            time: "2026-12-03T08:00:00.000Z".into(),
            actor: "ana".into(),
            source: "console".into(),
            action: serde_json::from_value(json!(action)).unwrap(),
            prompt: "support".into(),
            version: Some(3),
            hash: None,
            previous_hash: None,
            from_version: Some(2),
            to_version: Some(1),
            value,
        }
    }

    #[test]
    fn entries_read_as_sentences_with_their_diff() {
        let (what, link) = describe(&entry("version_added", None));
        assert_eq!(what, "added v3");
        assert_eq!(
            link.as_deref(),
            Some("/console/prompts/support/diff?a=2&b=3")
        );
        let (what, link) = describe(&entry("active_changed", None));
        assert_eq!(what, "active v2 → v1");
        assert_eq!(
            link.as_deref(),
            Some("/console/prompts/support/diff?a=2&b=1")
        );
        let (what, _) = describe(&entry("labels_changed", Some(json!({"stable": 2}))));
        assert_eq!(what, "labels → stable → v2");
        let exp = json!({"variants": [{"version": 1, "weight": 70}, {"version": 2, "weight": 30}], "salt": "s"});
        let (what, _) = describe(&entry("experiment_changed", Some(exp)));
        assert_eq!(what, "experiment → v1 70% · v2 30% · salt s");
        let ab = json!({"version_a": 1, "version_b": 2, "traffic_split": 0.25});
        assert_eq!(experiment_text(Some(&ab)), "v1 75% · v2 25%");
        assert_eq!(experiment_text(Some(&Value::Null)), "ended");
    }
}
