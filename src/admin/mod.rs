//! The admin API under `/admin/`: read the prompts, preview a render, create versions, roll
//! back, start and end experiments, read the audit trail and the status.
//!
//! Handlers are thin: reads look at the serving snapshot; writes go through [`write::Writer`]
//! (files first), then ask the reloader to pick the change up with the caller as the actor, so
//! the audit trail records who did it.

pub mod auth;
pub mod git;
pub mod write;

use std::borrow::Cow;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::audit::Actor;
use crate::error::{ApiError, Json};
use crate::prompts::{Prompt, valid_prompt_name};
use crate::proxy::parse::{self, PromptRef};
use crate::proxy::request::{self, Endpoint};
use crate::record::prometheus::{FleetError, Range};
use crate::reload::ReloadError;
use git::GitError;
use write::{Change, NewVersion, WriteError};

/// The admin routes, behind the auth layer.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/prompts", get(list))
        .route("/admin/prompts/{name}", get(detail))
        .route("/admin/prompts/{name}/versions", post(create_version))
        .route("/admin/prompts/{name}/versions/{version}", get(version))
        .route("/admin/prompts/{name}/render", post(render))
        .route("/admin/prompts/{name}/rollback", post(rollback))
        .route(
            "/admin/prompts/{name}/experiment",
            get(experiment).put(start_experiment).delete(end_experiment),
        )
        .route(
            "/admin/prompts/{name}/rollout",
            axum::routing::put(start_rollout).delete(end_rollout),
        )
        .route("/admin/audit", get(audit))
        .route("/admin/status", get(status))
        .layer(axum::middleware::from_fn_with_state(state, auth::require))
}

impl From<WriteError> for ApiError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::Invalid(_) | WriteError::BadRequest(_) => ApiError::BadRequest {
                message: err.to_string(),
                param: None,
                code: "invalid_change",
            },
            WriteError::NotFound(message) => ApiError::PromptNotFound { message },
            // Temp file and rename: a write that fails leaves the files as they were.
            WriteError::Io(ref e) if e.kind() == std::io::ErrorKind::StorageFull => {
                ApiError::Unavailable {
                    message: format!(
                        "cannot write the prompt files: the disk is full ({e}); nothing was changed"
                    ),
                    code: "disk_full",
                }
            }
            WriteError::Io(_) => ApiError::Internal(err.to_string()),
        }
    }
}

impl From<GitError> for ApiError {
    fn from(err: GitError) -> Self {
        match err {
            GitError::Write(e) => e.into(),
            GitError::Conflict(message) => ApiError::Conflict {
                message,
                code: "git_conflict",
            },
            GitError::Command { .. } => ApiError::Unavailable {
                message: format!("{err}; nothing was changed"),
                code: "git_unavailable",
            },
        }
    }
}

fn checked_name(name: &str) -> Result<&str, ApiError> {
    if valid_prompt_name(name) {
        Ok(name)
    } else {
        Err(ApiError::bad_request(
            format!("`{name}` is not a valid prompt name: use [a-z0-9][a-z0-9_.-]*"),
            None,
        ))
    }
}

fn find(state: &AppState, name: &str) -> Result<std::sync::Arc<Prompt>, ApiError> {
    let prompts = state.prompts.load();
    prompts
        .get(checked_name(name)?)
        .cloned()
        .ok_or_else(|| ApiError::PromptNotFound {
            message: format!("unknown prompt `{name}`"),
        })
}

/// The actor of a write: `X-Actor`, else the given `created_by`, else `admin`.
fn actor(headers: &HeaderMap, created_by: Option<&str>) -> Actor {
    let name = headers
        .get("x-actor")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
        .or_else(|| created_by.map(str::to_owned))
        .unwrap_or_else(|| "admin".to_owned());
    Actor::admin(name)
}

/// Runs blocking file work off the reactor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WriteError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("admin write failed: {e}")))?
        .map_err(ApiError::from)
}

/// Picks a write up now. The files are written either way; if the set as a whole does not
/// validate (another prompt is broken on disk), the answer says the change is not serving yet.
pub(crate) async fn reload_after_write(state: &AppState, actor: Actor) -> Value {
    match state.reloader.reload(actor).await {
        Ok(_) => json!({"serving": true}),
        Err(ReloadError::Invalid(problems)) => json!({
            "serving": false,
            "reload_error": problems.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
        Err(ReloadError::Failed(message)) => json!({"serving": false, "reload_error": [message]}),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    tag: Option<String>,
}

/// `GET /admin/prompts[?tag=T]`
async fn list(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Json<Value> {
    let prompts = state.prompts.load();
    let items: Vec<Value> = prompts
        .prompts()
        .filter(|p| query.tag.as_ref().is_none_or(|t| p.tags.contains(t)))
        .map(|p| {
            json!({"name": p.name, "description": p.description, "active_version": p.active,
                   "total_versions": p.versions.len(), "tags": p.tags})
        })
        .collect();
    Json(Value::Array(items))
}

fn version_json(state: &AppState, prompt: &Prompt, v: &crate::prompts::Version) -> Value {
    let created_at = v
        .created_at
        .clone()
        .or_else(|| state.audit.first_seen(&prompt.name, v.version));
    let mut out = json!({
        "version": v.version, "hash": v.hash, "model": v.model, "temperature": v.temperature,
        "max_tokens": v.max_tokens, "params": v.params, "variables": v.variables,
        "created_at": created_at, "created_by": v.created_by, "notes": v.notes,
    });
    // The newer shapes appear only on versions that use them.
    if let Some(schema) = &v.input_schema {
        out["input_schema"] = schema.schema.clone();
    }
    if let Some(format) = &v.response_format {
        out["response_format"] = format.value.clone();
    }
    if let Some(tools) = &v.tools {
        out["tools"] = tools.value.clone();
    }
    if let Some(chat) = &v.chat {
        out["chat"] = json!(true);
        let mut messages: Vec<Value> = chat
            .messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.text}))
            .collect();
        messages.insert(chat.marker, json!({"role": "conversation"}));
        out["messages"] = Value::Array(messages);
    }
    out
}

/// `GET /admin/prompts/{name}`
async fn detail(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let prompt = find(&state, &name)?;
    let versions: Vec<Value> = prompt
        .versions
        .values()
        .map(|v| version_json(&state, &prompt, v))
        .collect();
    Ok(Json(json!({
        "name": prompt.name, "description": prompt.description, "tags": prompt.tags,
        "active_version": prompt.active, "labels": prompt.labels,
        "experiment": prompt.experiment, "examples": prompt.examples_config,
        "examples_count": prompt.examples.len(), "versions": versions,
        "rollout": prompt.rollout,
    })))
}

/// `GET /admin/prompts/{name}/versions/{n}`
async fn version(
    State(state): State<AppState>,
    Path((name, number)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let prompt = find(&state, &name)?;
    let Some(v) = number
        .parse::<u32>()
        .ok()
        .and_then(|n| prompt.versions.get(&n))
    else {
        return Err(ApiError::VersionNotFound {
            message: format!("prompt `{name}` has no version `{number}`"),
        });
    };
    let mut body = version_json(&state, &prompt, v);
    body["prompt"] = json!(prompt.name);
    body["template"] = json!(v.template);
    Ok(Json(body))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenderRequest {
    pub(crate) version: Option<Value>,
    #[serde(default)]
    pub(crate) variables: Map<String, Value>,
    /// Kept as the client wrote them, as a proxied request's are.
    pub(crate) messages: Option<Box<RawValue>>,
    pub(crate) user: Option<String>,
    pub(crate) model: Option<String>,
}

/// `POST /admin/prompts/{name}/render` → the exact request that would go upstream.
async fn render(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<RenderRequest>,
) -> Result<Response, ApiError> {
    let prepared = preview(&state, &name, req).await?;
    let mut response = (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        prepared.body,
    )
        .into_response();
    if let Some(served) = prepared.served {
        let h = response.headers_mut();
        for (k, v) in [
            ("x-prompt-name", served.name),
            ("x-prompt-version", served.version.to_string()),
            ("x-prompt-hash", served.hash),
            ("x-prompt-selection", served.selection.as_str().to_owned()),
        ] {
            if let Ok(v) = v.parse() {
                h.insert(k, v);
            }
        }
    }
    Ok(response)
}

/// The exact request a render preview would send upstream (the admin render and the console
/// playground).
pub(crate) async fn preview(
    state: &AppState,
    name: &str,
    req: RenderRequest,
) -> Result<request::Prepared, ApiError> {
    checked_name(name)?;
    let reference = PromptRef {
        version: match &req.version {
            Some(v) => parse::version_ref(v)?,
            None => None,
        },
        name: name.to_owned(),
        variables: req.variables.into(),
        examples: None,
    };
    let empty =
        RawValue::from_string("[]".to_owned()).map_err(|e| ApiError::Internal(e.to_string()))?;
    let model = req
        .model
        .as_ref()
        .map(serde_json::value::to_raw_value)
        .transpose()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let user = req
        .user
        .as_ref()
        .map(serde_json::value::to_raw_value)
        .transpose()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut fields = Vec::new();
    if let Some(model) = &model {
        fields.push((Cow::Borrowed("model"), model.as_ref()));
    }
    fields.push((
        Cow::Borrowed("messages"),
        req.messages.as_deref().unwrap_or(&empty),
    ));
    if let Some(user) = &user {
        fields.push((Cow::Borrowed("user"), user.as_ref()));
    }
    let body = parse::Body::from_fields(fields);
    let prompts = state.prompts.load_full();
    request::apply(
        &prompts,
        &state.model,
        Endpoint::ChatCompletions,
        &body,
        &reference,
        req.user.as_deref(),
        chrono::Utc::now(),
    )
    .await
}

/// `POST /admin/prompts/{name}/versions` → 201 `{version, hash}`.
async fn create_version(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Map<String, Value>>,
) -> Result<Response, ApiError> {
    checked_name(&name)?;
    let (new, extra_front) = new_version(body)?;
    let who = actor(&headers, new.created_by.as_deref());
    let audit = state.audit.clone();
    let prompt = name.clone();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ((number, hash), mut body) = write::commit(&state, who, move |writer| {
        let (number, hash) =
            writer.create_version_with(&audit, &prompt, &new, &extra_front, &now)?;
        Ok(((number, hash), Change::new_version(&prompt, number, &new)))
    })
    .await?;
    body["prompt"] = json!(name);
    body["version"] = json!(number);
    body["hash"] = json!(hash);
    body["active_version"] = json!(state.prompts.load().get(&name).map(|p| p.active));
    // A change waiting for review is accepted, not created.
    let status = if body.get("review").is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(body)).into_response())
}

/// A new version's fields: [`NewVersion`], or `messages` (a chat template) in place of
/// `template`, and `input_schema`, `response_format`, `tools` — returned as front-matter lines.
fn new_version(mut body: Map<String, Value>) -> Result<(NewVersion, String), ApiError> {
    let mut extra = String::new();
    if let Some(messages) = body.remove("messages") {
        if body.contains_key("template") {
            return Err(ApiError::bad_request(
                "give `template` (one system prompt) or `messages` (a chat template), not both",
                Some("messages".to_owned()),
            ));
        }
        let Value::Array(messages) = messages else {
            return Err(ApiError::bad_request(
                "`messages` must be a list of `{role, content}`",
                Some("messages".to_owned()),
            ));
        };
        let text = crate::prompts::chat::body_of(&messages)
            .map_err(|e| ApiError::bad_request(e, Some("messages".to_owned())))?;
        body.insert("template".to_owned(), Value::String(text));
        extra.push_str("chat: true\n");
    }
    for key in ["input_schema", "response_format", "tools"] {
        if let Some(value) = body.remove(key) {
            // JSON is YAML: the value is written as it came, on one line.
            if crate::prompts::yaml::json_depth(&value) > crate::prompts::yaml::MAX_DEPTH {
                return Err(ApiError::bad_request(
                    format!(
                        "`{key}` nests deeper than {} levels",
                        crate::prompts::yaml::MAX_DEPTH
                    ),
                    Some(key.to_owned()),
                ));
            }
            let value = crate::prompts::yaml::json_flow(&value);
            extra.push_str(&format!("{key}: {value}\n"));
        }
    }
    let new = serde_json::from_value::<NewVersion>(Value::Object(body))
        .map_err(|e| ApiError::bad_request(format!("invalid version: {e}"), None))?;
    Ok((new, extra))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    version: u32,
}

/// `POST /admin/prompts/{name}/rollback` `{version}`
async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(req): Json<Rollback>,
) -> Result<Json<Value>, ApiError> {
    checked_name(&name)?;
    let prompt = name.clone();
    let ((), mut body) = write::commit(&state, actor(&headers, None), move |writer| {
        writer.set_active(&prompt, req.version)?;
        Ok(((), Change::rollback(&prompt, req.version)))
    })
    .await?;
    body["prompt"] = json!(name);
    body["active_version"] = json!(req.version);
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
struct ExperimentQuery {
    scope: Option<String>,
    range: Option<String>,
}

impl From<FleetError> for ApiError {
    fn from(err: FleetError) -> Self {
        match err {
            FleetError::NoSeries { .. } => ApiError::NotFoundResource {
                message: err.to_string(),
                code: "no_series",
            },
            _ => ApiError::Unavailable {
                message: err.to_string(),
                code: "prometheus_unavailable",
            },
        }
    }
}

/// `GET /admin/prompts/{name}/experiment[?scope=replica|fleet][&range=7d]`: the variants'
/// numbers, their comparison and the sample-ratio check — this replica's, or with
/// `scope=fleet` every replica's from Prometheus.
async fn experiment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<ExperimentQuery>,
) -> Result<Json<Value>, ApiError> {
    let prompt = find(&state, &name)?;
    match query.scope.as_deref().unwrap_or("replica") {
        "replica" => {
            let mut report = state.recorder.experiment_report(&prompt);
            if let Some(rollout) = state.rollouts.status(&name) {
                report["rollout"] = rollout;
            }
            Ok(Json(report))
        }
        "fleet" => {
            let Some(fleet) = &state.fleet else {
                return Err(ApiError::bad_request(
                    "`scope=fleet` needs a Prometheus: start `serve` with `--prometheus URL`",
                    Some("scope".to_owned()),
                ));
            };
            let range: Range = query
                .range
                .as_deref()
                .unwrap_or("7d")
                .parse()
                .map_err(|e: String| ApiError::bad_request(e, Some("range".to_owned())))?;
            let mut report = fleet.report(&prompt, range).await?;
            if let Some(rollout) = state.rollouts.status(&name) {
                report["rollout"] = rollout;
            }
            Ok(Json(report))
        }
        other => Err(ApiError::bad_request(
            format!("unknown scope `{other}`; known: `replica`, `fleet`"),
            Some("scope".to_owned()),
        )),
    }
}

/// `PUT /admin/prompts/{name}/experiment` with the manifest's `experiment` block as JSON.
async fn start_experiment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(experiment): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    checked_name(&name)?;
    let block = write::experiment_block(&experiment)?;
    let prompt = name.clone();
    let ((), mut body) = write::commit(&state, actor(&headers, None), move |writer| {
        writer.set_experiment(&prompt, Some(&block))?;
        Ok(((), Change::experiment(&prompt, true)))
    })
    .await?;
    body["prompt"] = json!(name);
    body["experiment"] = json!(
        state
            .prompts
            .load()
            .get(&name)
            .and_then(|p| p.experiment.clone())
    );
    Ok(Json(body))
}

/// `DELETE /admin/prompts/{name}/experiment`
async fn end_experiment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    checked_name(&name)?;
    let prompt = name.clone();
    let ((), mut body) = write::commit(&state, actor(&headers, None), move |writer| {
        writer.set_experiment(&prompt, None)?;
        Ok(((), Change::experiment(&prompt, false)))
    })
    .await?;
    body["prompt"] = json!(name);
    body["experiment"] = Value::Null;
    Ok(Json(body))
}

/// `PUT /admin/prompts/{name}/rollout` with the manifest's `rollout` block as JSON.
async fn start_rollout(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(rollout): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    checked_name(&name)?;
    if !rollout.is_object() {
        return Err(ApiError::bad_request(
            "the rollout must be a JSON object: the manifest's `rollout` block, like {\"from\": 1, \"to\": 2}",
            None,
        ));
    }
    // JSON is YAML: the block is written as one flow mapping and validated like the file.
    if crate::prompts::yaml::json_depth(&rollout) > crate::prompts::yaml::MAX_DEPTH {
        return Err(ApiError::bad_request(
            format!(
                "the rollout nests deeper than {} levels",
                crate::prompts::yaml::MAX_DEPTH
            ),
            None,
        ));
    }
    let block = crate::prompts::yaml::json_flow(&rollout);
    let prompt = name.clone();
    let ((), mut body) = write::commit(&state, actor(&headers, None), move |writer| {
        writer.set_rollout(&prompt, Some(&block))?;
        Ok(((), Change::rollout(&prompt, true)))
    })
    .await?;
    body["prompt"] = json!(name);
    body["rollout"] = json!(state.rollouts.status(&name));
    Ok(Json(body))
}

/// `DELETE /admin/prompts/{name}/rollout`: ends the rollout; users go back to `active`.
async fn end_rollout(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    checked_name(&name)?;
    let prompt = name.clone();
    let ((), mut body) = write::commit(&state, actor(&headers, None), move |writer| {
        writer.set_rollout(&prompt, None)?;
        Ok(((), Change::rollout(&prompt, false)))
    })
    .await?;
    body["prompt"] = json!(name);
    body["rollout"] = Value::Null;
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    prompt: Option<String>,
    /// Entries per page (default 1,000, at most 10,000).
    limit: Option<usize>,
    /// The `x-audit-next` header of the previous page.
    before: Option<String>,
}

/// `GET /admin/audit[?prompt=NAME][&limit=N][&before=CURSOR]`: the newest `limit` entries
/// (oldest first); when there are older ones, the `x-audit-next` header holds the cursor to
/// pass as `before` for the page before.
async fn audit(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    const MAX_LIMIT: usize = 10_000;
    let limit = query.limit.unwrap_or(1_000);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(
            format!("`limit` must be between 1 and {MAX_LIMIT}, not {limit}"),
            Some("limit".to_owned()),
        ));
    }
    if state.git.is_some() || state.config.git_audit {
        return git_audit(&state, query, limit).await;
    }
    let before = match &query.before {
        None => None,
        Some(text) => Some(
            text.parse::<crate::audit::Cursor>()
                .map_err(|e| ApiError::bad_request(e, Some("before".to_owned())))?,
        ),
    };
    let audit = state.audit.clone();
    let (entries, next) =
        tokio::task::spawn_blocking(move || audit.page(query.prompt.as_deref(), before, limit))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(format!("cannot read the audit trail: {e}")))?;
    let mut response = Json(serde_json::to_value(entries).unwrap_or(Value::Null)).into_response();
    if let Some(next) = next
        && let Ok(value) = axum::http::HeaderValue::from_str(&next.to_string())
    {
        response.headers_mut().insert("x-audit-next", value);
    }
    Ok(response)
}

/// The audit trail in git mode: the history of the prompts folder, one entry per commit,
/// with the rollout's own entries from the local trail (no commit records a step or a halt).
async fn git_audit(
    state: &AppState,
    query: AuditQuery,
    limit: usize,
) -> Result<Response, ApiError> {
    if let Some(prompt) = &query.prompt {
        checked_name(prompt)?;
    }
    let timeout = state
        .git
        .as_ref()
        .map_or(std::time::Duration::from_secs(60), |g| g.config().timeout);
    let dir = &state.config.prompts_dir;
    let cursor_error = |e: GitError| match e {
        GitError::Command { ref detail, .. } if detail.contains("x-audit-next") => {
            ApiError::bad_request(detail.clone(), Some("before".to_owned()))
        }
        GitError::Command { ref what, .. } if what.contains("x-audit-next") => {
            ApiError::bad_request(e.to_string(), Some("before".to_owned()))
        }
        e => ApiError::Internal(e.to_string()),
    };
    let (commits, next) = git::history(
        dir,
        query.prompt.as_deref(),
        query.before.as_deref(),
        limit,
        timeout,
    )
    .await
    .map_err(cursor_error)?;
    let upper = match &query.before {
        Some(commit) => Some(
            git::commit_time(dir, commit, timeout)
                .await
                .map_err(cursor_error)?,
        ),
        None => None,
    };
    let entries = rollout_entries(state, query.prompt.clone()).await?;
    let rows = git::with_rollout_entries(commits, entries, next.is_none(), upper.as_deref());
    let mut response = Json(serde_json::to_value(rows).unwrap_or(Value::Null)).into_response();
    if let Some(next) = next
        && let Ok(value) = axum::http::HeaderValue::from_str(&next)
    {
        response.headers_mut().insert("x-audit-next", value);
    }
    Ok(response)
}

/// The local trail's rollout entries (all of them: the caller picks by time). Blocking read,
/// off the reactor.
pub(crate) async fn rollout_entries(
    state: &AppState,
    prompt: Option<String>,
) -> Result<Vec<crate::audit::Entry>, ApiError> {
    let audit = state.audit.clone();
    let entries = tokio::task::spawn_blocking(move || audit.read(prompt.as_deref()))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("cannot read the audit trail: {e}")))?;
    Ok(entries
        .into_iter()
        .filter(|e| e.action.is_rollout())
        .collect())
}

/// `GET /admin/status`
async fn status(State(state): State<AppState>) -> Json<Value> {
    let prompts = state.prompts.load();
    Json(json!({
        "prompts": prompts.len(),
        "versions": prompts.prompts().map(|p| p.versions.len()).sum::<usize>(),
        "reload": state.reloader.status(),
        "upstream": state.config.upstream.to_string(),
        "embedding_model": state.model.status(),
        "version": env!("CARGO_PKG_VERSION"),
        "git": state.git.as_ref().map(|git| json!({
            "remote": git.remote_shown(), "branch": git.config().branch,
            "commit": git.served_commit(), "review_branch": git.config().review_prefix,
            "pending": git.pending(),
        })),
    }))
}
