//! What the rollout tests share: a mock upstream whose errors and latency each version's prompt
//! controls, a prompt folder with two versions, a server with an admin token, and requests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use promptgate::config::Upstream;
use serde_json::{Value, json};

use crate::common::*;

/// An upstream that answers by what the system prompt says: `FAIL` → 500, `SLOW` → 3 s
/// late, anything else → a normal completion at once.
pub async fn mock_upstream() -> Upstream {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|body: axum::body::Bytes| async move {
            let body: Value = serde_json::from_slice(&body).unwrap_or_default();
            let system = body["messages"][0]["content"].as_str().unwrap_or("").to_owned();
            if system.contains("SLOW") {
                tokio::time::sleep(Duration::from_millis(3000)).await;
            }
            if system.contains("FAIL") {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"error": {"message": "broken", "type": "server_error", "param": null, "code": null}})),
                )
                    .into_response();
            }
            axum::Json(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
            }))
            .into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Upstream::parse(&format!("http://{addr}/v1")).unwrap()
}

pub fn prompt_folder(v2: &str, manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p/v1.prompt", "You are version one.");
    write(dir.path(), "p/v2.prompt", v2);
    write(dir.path(), "p/prompt.yaml", manifest);
    dir
}

pub const TOKEN: &str = "secret";

pub async fn start(prompts: &Path, upstream: Upstream, state: &Path) -> TestApp {
    let state = state.to_path_buf();
    spawn_with(prompts, upstream, move |c| {
        c.events = Some(state.join("events.jsonl"));
        c.state_dir = state;
        c.admin_token = Some(TOKEN.to_owned());
    })
    .await
}

/// Sends one request as `user`; the version that served it.
pub async fn ask(app: &TestApp, user: &str) -> u32 {
    let response = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "gpt-4o-mini", "user": user, "prompt": {"id": "p"},
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    response.headers()["x-prompt-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A batch of requests from users `from..from + n` (of a pool of 400), at once.
pub async fn batch(app: &TestApp, from: usize, n: usize) -> Vec<(String, u32)> {
    let users: Vec<String> = (from..from + n)
        .map(|i| format!("user-{}", i % 400))
        .collect();
    let versions = futures_util::future::join_all(users.iter().map(|u| ask(app, u))).await;
    users.into_iter().zip(versions).collect()
}

pub async fn rollout(app: &TestApp) -> Value {
    let report: Value = app
        .client
        .get(app.url("/admin/prompts/p/experiment"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    report["rollout"].clone()
}
