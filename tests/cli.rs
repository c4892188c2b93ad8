//! The `promptgate` binary: validate, render, serve (flags from the environment, refusing bad
//! prompts, stopping gracefully on SIGTERM).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn promptgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_promptgate"));
    // Flags come from the environment in some tests; start each from a clean slate.
    for (key, _) in std::env::vars() {
        if key.starts_with("PROMPTGATE_") || key == "OPENAI_API_KEY" {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn validate_accepts_the_shipped_prompts() {
    let out = promptgate()
        .args(["validate", "--prompts"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: 4 prompts"));
}

#[test]
fn validate_prints_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a/v1.prompt",
        "---\nmodel: m\ntemprature: 1\n---\nHi",
    );
    write(dir.path(), "a/prompt.yaml", "active: 3\n");
    write(dir.path(), "b/v1.prompt", "Hello {{ name ");
    write(dir.path(), "c/v1.prompt", "ok");
    write(
        dir.path(),
        "c/prompt.yaml",
        "experiment:\n  variants:\n    - {version: 1, weight: 60}\n",
    );
    let out = promptgate()
        .args(["validate", "--prompts"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines.iter().any(|l| l
            .starts_with("a/v1.prompt:3: unknown key `temprature` (did you mean `temperature`?)")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("a/prompt.yaml:1: `active` refers to version 3")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("b/v1.prompt:1: template syntax error")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("c/prompt.yaml:3: `experiment.variants` weights sum to 60")),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 problems"));
}

#[test]
fn render_prints_the_upstream_request() {
    let dir = prompts();
    let out = promptgate()
        .args([
            "render",
            "support",
            "--var",
            "company=Acme",
            "--var",
            "tier=enterprise",
        ])
        .args(["--message", "help me", "--user", "u1", "--prompts"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        body,
        json!({
            "model": "gpt-4o", "temperature": 0.3, "max_tokens": 256, "top_p": 0.9, "user": "u1",
            "messages": [
                {"role": "system", "content": support_v2("Acme", true)},
                {"role": "user", "content": "help me"}
            ]
        })
    );
}

#[test]
fn render_names_missing_variables() {
    let dir = prompts();
    let out = promptgate()
        .args(["render", "support", "--version", "2", "--prompts"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing variables for prompt `support` version 2: `company`, `tier`"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_to_start_on_bad_prompts() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a/v1.prompt", "{% if %}");
    let out = promptgate()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "echo",
            "--prompts",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a/v1.prompt:1: template syntax error"));
}

/// Starts `serve` with settings from the environment and waits for its "listening" line.
fn serve_from_env(
    prompts: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> (Running, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let mut cmd = promptgate();
    cmd.arg("serve")
        .env("PROMPTGATE_STATE_DIR", state.path())
        .env("PROMPTGATE_LISTEN", "127.0.0.1:0")
        .env("PROMPTGATE_PROMPTS", prompts)
        .env("PROMPTGATE_UPSTREAM", "echo")
        .env("PROMPTGATE_LOG_FORMAT", "json");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    (spawn_listening(cmd), state)
}

#[tokio::test]
async fn serve_takes_every_flag_from_the_environment() {
    let dir = prompts();
    let (running, _state) = serve_from_env(
        dir.path(),
        &[
            ("PROMPTGATE_MAX_BODY_BYTES", "100"),
            ("PROMPTGATE_UPSTREAM_TIMEOUT", "5"),
        ],
    );
    let client = http();
    let resp = client
        .post(format!("{}/v1/chat/completions", running.base))
        .json(&json!({"messages": [], "prompt": {"id": "support", "version": 1, "variables": {"company": "Acme"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "echo upstream from PROMPTGATE_UPSTREAM");
    let resp = client
        .post(format!("{}/v1/chat/completions", running.base))
        .json(&json!({"messages": [{"role": "user", "content": "x".repeat(200)}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "limit from PROMPTGATE_MAX_BODY_BYTES");
}

/// `--threads 1`: the single-threaded server injects, relays streams, and serves requests
/// side by side.
#[tokio::test]
async fn a_single_threaded_server_serves_concurrent_requests() {
    let dir = prompts();
    let chunks: Vec<String> = (0..4)
        .map(|i| format!("data: {{\"n\": {i}}}\n\n"))
        .collect();
    let (upstream, _) = streaming_upstream(chunks.clone(), Duration::from_millis(100), None).await;
    let (running, _state) = serve_from_env(
        dir.path(),
        &[
            ("PROMPTGATE_THREADS", "1"),
            ("PROMPTGATE_UPSTREAM", &upstream.to_string()),
        ],
    );
    let client = http();
    let url = format!("{}/v1/chat/completions", running.base);
    // Eight streams at once: each takes ≈ 300 ms, so one at a time would take ≈ 2.4 s.
    let started = Instant::now();
    let streams = (0..8).map(|_| {
        let request = client
            .post(&url)
            .json(&json!({"stream": true, "messages": [], "prompt": {"id": "support", "version": 1, "variables": {"company": "Acme"}}}));
        async move {
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-prompt-name"], "support");
            resp.text().await.unwrap()
        }
    });
    for text in futures_util::future::join_all(streams).await {
        assert_eq!(text, chunks.concat());
    }
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "the streams were served side by side: {:?}",
        started.elapsed()
    );
    let bad = client
        .post(&url)
        .json(&json!({"prompt": {"id": "no_such_prompt"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 404);
}

#[test]
fn threads_must_be_a_count() {
    let out = promptgate()
        .args(["serve", "--threads", "many", "--upstream", "echo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}

#[tokio::test]
async fn sigterm_lets_in_flight_streams_finish() {
    let dir = prompts();
    let chunks: Vec<String> = (0..6)
        .map(|i| format!("data: {{\"n\": {i}}}\n\n"))
        .collect();
    let (upstream, _) = streaming_upstream(chunks.clone(), Duration::from_millis(150), None).await;
    let (mut running, _state) = serve_from_env(
        dir.path(),
        &[
            ("PROMPTGATE_UPSTREAM", &upstream.to_string()),
            ("PROMPTGATE_SHUTDOWN_GRACE", "10"),
        ],
    );
    let client = http();
    let resp = client
        .post(format!("{}/v1/chat/completions", running.base))
        .json(&json!({"stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let pid = running.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    assert_eq!(
        resp.text().await.unwrap(),
        chunks.concat(),
        "the stream finished"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "exited after the stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
}
