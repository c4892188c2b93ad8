//! The playground: pick a version or label, fill the variables, and see the exact request that
//! would go upstream — the examples that would be picked and the A/B arm the user gets — then
//! optionally send it through the configured upstream and watch the answer stream in.
//!
//! The request is built by [`crate::admin::preview`] (the admin render's own function), in
//! one place: [`upstream_request`]. Playground sends are tries, not traffic: they are not
//! recorded in the metrics or the experiment statistics.

use std::collections::HashMap;
use std::time::Instant;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::session::Viewer;
use super::{PageError, find, page_with};
use crate::AppState;
use crate::admin::RenderRequest;
use crate::error::ApiError;
use crate::fewshot;
use crate::prompts::{Example, Prompt};
use crate::proxy::forward::{self, OutBody};
use crate::record::usage::read_answer;

/// Answer text kept for the page without script; the streamed answer is not kept at all.
const MAX_ANSWER: usize = 1024 * 1024;

/// The form: `version` (`""` as served, `3`, or `label:stable`), `var_NAME` per variable,
/// `message`, `user`, `action` (`preview` or `send`).
type Fields = HashMap<String, String>;

/// A variable's text: JSON when it reads as JSON (a number, object, list, quoted string, true,
/// false, null), else the text itself.
fn value_of(text: &str) -> Value {
    let t = text.trim();
    let looks_json = t.starts_with(['{', '[', '"'])
        || matches!(t, "true" | "false" | "null")
        || t.parse::<f64>().is_ok();
    if looks_json && let Ok(v) = serde_json::from_str::<Value>(t) {
        return v;
    }
    Value::from(text)
}

/// What the playground shows of a request.
#[derive(Debug, Serialize)]
pub struct Preview {
    pub body: Value,
    pub body_text: String,
    pub version: u32,
    pub hash: String,
    pub selection: String,
    pub experiment: Option<String>,
    pub examples: Vec<Example>,
}

/// The exact upstream request for the form, built by the admin render's function.
pub async fn upstream_request(
    state: &AppState,
    p: &Prompt,
    fields: &Fields,
) -> Result<Preview, ApiError> {
    let mut variables = Map::new();
    for (key, text) in fields {
        if let Some(name) = key.strip_prefix("var_")
            && !text.trim().is_empty()
        {
            variables.insert(name.to_owned(), value_of(text));
        }
    }
    let message = fields.get("message").cloned().unwrap_or_default();
    let version = match fields.get("version").map(|v| v.trim()).unwrap_or("") {
        "" => None,
        v => Some(match v.strip_prefix("label:") {
            Some(label) => Value::from(label),
            None => v
                .parse::<u32>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(v)),
        }),
    };
    let user = fields
        .get("user")
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty());
    let messages = serde_json::value::to_raw_value(&json!([{"role": "user", "content": message}]))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let request = RenderRequest {
        version,
        variables,
        messages: Some(messages),
        user,
        model: None,
    };
    let prepared = crate::admin::preview(state, &p.name, request).await?;
    let body: Value = serde_json::from_slice(&prepared.body)
        .map_err(|e| ApiError::Internal(format!("the prepared request is not JSON: {e}")))?;
    let served = prepared
        .served
        .ok_or_else(|| ApiError::Internal("the prepared request names no prompt".to_owned()))?;
    // The same plan and pick as the request path, to list the examples on their own.
    let examples = match fewshot::plan(p, None) {
        Some(plan) => fewshot::pick(p, &plan, &message, &state.model)
            .await
            .map(|picked| picked.iter().map(|&i| p.examples[i].clone()).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(Preview {
        body_text: serde_json::to_string_pretty(&body).unwrap_or_default(),
        body,
        version: served.version,
        hash: served.hash,
        selection: served.selection.as_str().to_owned(),
        experiment: served.experiment.map(|e| e.to_string()),
        examples,
    })
}

/// One thing the upstream said, as the browser reads it (one JSON line each).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Said {
    Delta {
        text: String,
    },
    Done {
        status: u16,
        latency_ms: f64,
        ttft_ms: Option<f64>,
        model: Option<String>,
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
        cost_usd: Option<f64>,
    },
    Error {
        message: String,
    },
}

/// Sends `body` upstream as a stream and reports what comes back on `tx`.
async fn send(state: AppState, mut body: Value, tx: mpsc::Sender<Said>) {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let requested_model = body["model"].as_str().map(str::to_owned);
    let started = Instant::now();
    let sent = forward::send(
        &state.http,
        &state.config,
        Method::POST,
        "chat/completions",
        HeaderMap::new(),
        OutBody::Full(body.to_string().into()),
    )
    .await;
    let upstream = match sent {
        Ok(u) => u,
        Err(e) => {
            let _ = tx
                .send(Said::Error {
                    message: e.to_string(),
                })
                .await;
            return;
        }
    };
    let status = upstream.status;
    let mut stream = upstream.body;
    let mut pending = Vec::new();
    let mut ttft = None;
    let mut usage = None;
    let mut model = None;
    let mut raw_error = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Said::Error { message: e.message }).await;
                return;
            }
        };
        if !status.is_success() {
            if raw_error.len() < 64 * 1024 {
                raw_error.extend_from_slice(&chunk);
            }
            continue;
        }
        ttft.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            if let Some(u) = read_answer(data.trim().as_bytes()).and_then(|o| o.usage) {
                usage = Some(u);
            }
            if let Some(m) = event["model"].as_str() {
                model = Some(m.to_owned());
            }
            if let Some(message) = event["error"]["message"].as_str() {
                let _ = tx
                    .send(Said::Error {
                        message: message.to_owned(),
                    })
                    .await;
            }
            if let Some(text) = event["choices"][0]["delta"]["content"].as_str()
                && !text.is_empty()
                && tx
                    .send(Said::Delta {
                        text: text.to_owned(),
                    })
                    .await
                    .is_err()
            {
                return;
            }
        }
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&raw_error).into_owned();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        let _ = tx
            .send(Said::Error {
                message: format!("upstream answered {status}: {message}"),
            })
            .await;
    }
    let model = model.or(requested_model);
    let cost = usage
        .zip(model.as_deref())
        .and_then(|(u, m)| state.recorder.pricing().cost(m, &u));
    let _ = tx
        .send(Said::Done {
            status: status.as_u16(),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            ttft_ms: ttft,
            model,
            prompt_tokens: usage.map(|u| u.prompt_tokens),
            completion_tokens: usage.map(|u| u.completion_tokens),
            cost_usd: cost,
        })
        .await;
}

/// The choices of version: as served, each version, each label.
fn choices(p: &Prompt) -> Vec<(String, String)> {
    let mut out = vec![(
        String::new(),
        if p.experiment.is_some() {
            "as served (experiment assigns by user)".to_owned()
        } else {
            format!("as served (active v{})", p.active)
        },
    )];
    for n in p.versions.keys().rev() {
        out.push((n.to_string(), format!("v{n}")));
    }
    for (label, n) in &p.labels {
        out.push((format!("label:{label}"), format!("label {label} (v{n})")));
    }
    out
}

/// The variables of the version the form picks (the active one when it is left to serving).
fn variables_for(p: &Prompt, version: &str) -> Vec<String> {
    let n = match version.strip_prefix("label:") {
        Some(label) => p.labels.get(label).copied(),
        None => version.parse().ok(),
    }
    .unwrap_or(p.active);
    let mut names: Vec<String> = p
        .versions
        .get(&n)
        .map(|v| v.variables.clone())
        .unwrap_or_default();
    // An experiment may serve a version with other variables: offer theirs too.
    if version.is_empty()
        && let Some(e) = &p.experiment
    {
        for v in e.versions() {
            for name in p
                .versions
                .get(&v)
                .map(|v| v.variables.clone())
                .unwrap_or_default()
            {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

fn render(
    status: StatusCode,
    viewer: &Viewer,
    p: &Prompt,
    fields: &Fields,
    preview: Option<Result<Preview, String>>,
    answer: Option<(String, Vec<Said>)>,
) -> Response {
    let version = fields.get("version").cloned().unwrap_or_default();
    let variables: Vec<(String, String)> = variables_for(p, &version)
        .into_iter()
        .map(|name| {
            let value = fields
                .get(&format!("var_{name}"))
                .cloned()
                .unwrap_or_default();
            (name, value)
        })
        .collect();
    let (preview, error) = match preview {
        Some(Ok(p)) => (Some(p), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    page_with(
        status,
        "playground.html",
        viewer,
        ctx! {
            p => p, choices => choices(p), version => version, variables => variables,
            message => fields.get("message").cloned().unwrap_or_default(),
            user => fields.get("user").cloned().unwrap_or_default(),
            preview => preview, error => error,
            answer => answer.as_ref().map(|a| &a.0), said => answer.as_ref().map(|a| &a.1),
            can_send => viewer.can_write,
        },
    )
}

/// `GET /console/prompts/{name}/playground?version=`
pub async fn page(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Query(fields): Query<Fields>,
) -> Result<Response, PageError> {
    let p = find(&state, &viewer, &name)?;
    Ok(render(StatusCode::OK, &viewer, &p, &fields, None, None))
}

/// `POST /console/prompts/{name}/playground`: the page with the request (and, for
/// `action=send`, the whole answer) — the playground without script.
pub async fn submit(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Form(fields): Form<Fields>,
) -> Result<Response, PageError> {
    let p = find(&state, &viewer, &name)?;
    let preview = upstream_request(&state, &p, &fields).await;
    let preview = match preview {
        Ok(preview) => preview,
        Err(e) => {
            let message = e.body()["error"]["message"]
                .as_str()
                .unwrap_or("error")
                .to_owned();
            return Ok(render(
                StatusCode::UNPROCESSABLE_ENTITY,
                &viewer,
                &p,
                &fields,
                Some(Err(message)),
                None,
            ));
        }
    };
    let mut answer = None;
    if fields.get("action").map(String::as_str) == Some("send") {
        if !viewer.can_write {
            return Err(PageError::new(
                &viewer,
                StatusCode::FORBIDDEN,
                "sending needs the admin token: promptgate runs without one, so the console is read-only",
            ));
        }
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(send(state.clone(), preview.body.clone(), tx));
        let mut text = String::new();
        let mut said = Vec::new();
        while let Some(s) = rx.recv().await {
            match s {
                Said::Delta { text: t } => {
                    if text.len() < MAX_ANSWER {
                        text.push_str(&t);
                    }
                }
                other => said.push(other),
            }
        }
        answer = Some((text, said));
    }
    Ok(render(
        StatusCode::OK,
        &viewer,
        &p,
        &fields,
        Some(Ok(preview)),
        answer,
    ))
}

/// `POST /console/prompts/{name}/playground/stream`: sends the request and streams what comes
/// back as JSON lines (`delta`, then `done`, or `error`).
pub async fn stream(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    let error = |status: StatusCode, message: String| {
        let line = serde_json::to_string(&Said::Error { message }).unwrap_or_default() + "\n";
        (
            status,
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            line,
        )
            .into_response()
    };
    if !viewer.can_write {
        return error(
            StatusCode::FORBIDDEN,
            "sending needs the admin token: promptgate runs without one, so the console is read-only".to_owned(),
        );
    }
    let p = match find(&state, &viewer, &name) {
        Ok(p) => p,
        Err(e) => return error(e.status, e.message),
    };
    let preview = match upstream_request(&state, &p, &fields).await {
        Ok(preview) => preview,
        Err(e) => {
            let message = e.body()["error"]["message"]
                .as_str()
                .unwrap_or("error")
                .to_owned();
            return error(e.status(), message);
        }
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(send(state, preview.body, tx));
    let lines = tokio_stream_of(rx).map(|said| {
        Ok::<_, std::convert::Infallible>(serde_json::to_string(&said).unwrap_or_default() + "\n")
    });
    let mut response = Body::from_stream(lines).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_values_may_be_json() {
        assert_eq!(value_of("Acme"), json!("Acme"));
        assert_eq!(value_of("42"), json!(42));
        assert_eq!(value_of("{\"a\": [1]}"), json!({"a": [1]}));
        assert_eq!(value_of("true"), json!(true));
        assert_eq!(value_of("\"quoted\""), json!("quoted"));
        assert_eq!(value_of("{not json"), json!("{not json"));
    }
}
