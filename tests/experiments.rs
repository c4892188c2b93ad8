//! A/B assignment, usage and cost, events, feedback and experiment statistics.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use md5::{Digest, Md5};
use promptgate::prompts::{Experiment, Split, Variant};
use promptgate::select;
use serde_json::{Value, json};

/// The assignments the seed lesson's Python computes (tests/fixtures/seed_assignment.txt).
fn seed_fixture() -> Vec<(f64, Vec<u32>)> {
    include_str!("fixtures/seed_assignment.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (split, digits) = l.split_once(' ').unwrap();
            (
                split.parse().unwrap(),
                digits.chars().map(|c| c.to_digit(10).unwrap()).collect(),
            )
        })
        .collect()
}

fn ab(split: f64) -> Experiment {
    Experiment {
        split: Split::AB {
            version_a: 1,
            version_b: 2,
            traffic_split: split,
        },
        salt: None,
    }
}

#[test]
fn assignment_matches_the_seed_for_thousands_of_users() {
    let fixture = seed_fixture();
    assert_eq!(fixture.len(), 4);
    for (split, expected) in fixture {
        assert_eq!(expected.len(), 5000);
        for (i, want) in expected.iter().enumerate() {
            let user = format!("user_{i}");
            let got = select::assign("customer_support", &ab(split), Some(&user));
            assert_eq!(got, *want, "user {user} at split {split}");
        }
    }
}

#[test]
fn anonymous_assignment_follows_the_split() {
    // 20,000 draws at 20%: the count of B lies within 4.5 standard deviations of 4,000.
    let n = 20_000;
    let b = (0..n)
        .filter(|_| select::assign("p", &ab(0.2), None) == 2)
        .count() as f64;
    let sd = (n as f64 * 0.2 * 0.8).sqrt();
    assert!((b - 4000.0).abs() < 4.5 * sd, "{b} of {n}");
    let weighted = Experiment {
        split: Split::Weighted {
            variants: vec![
                Variant {
                    version: 1,
                    weight: 70,
                },
                Variant {
                    version: 2,
                    weight: 20,
                },
                Variant {
                    version: 3,
                    weight: 10,
                },
            ],
        },
        salt: None,
    };
    let threes = (0..n)
        .filter(|_| select::assign("p", &weighted, None) == 3)
        .count() as f64;
    let sd = (n as f64 * 0.1 * 0.9).sqrt();
    assert!((threes - 2000.0).abs() < 4.5 * sd, "{threes} of {n}");
}

fn experiment_prompts() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "customer_support/v1.prompt", "Version one.");
    write(dir.path(), "customer_support/v2.prompt", "Version two.");
    write(
        dir.path(),
        "customer_support/prompt.yaml",
        "experiment: {version_a: 1, version_b: 2, traffic_split: 0.2}\n",
    );
    write(dir.path(), "weighted/v1.prompt", "W1");
    write(dir.path(), "weighted/v2.prompt", "W2");
    write(dir.path(), "weighted/v3.prompt", "W3");
    write(
        dir.path(),
        "weighted/prompt.yaml",
        "experiment:\n  salt: \"2026-11\"\n  variants:\n    - {version: 1, weight: 70}\n    - {version: 2, weight: 20}\n    - {version: 3, weight: 10}\n",
    );
    dir
}

async fn version_for(app: &TestApp, prompt: &str, user: &str) -> (String, String) {
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [], "user": user, "prompt": {"id": prompt}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    (
        h["x-prompt-version"].to_str().unwrap().to_owned(),
        h["x-prompt-selection"].to_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_server_assigns_like_the_seed_and_walks_weights() {
    let dir = experiment_prompts();
    let app = spawn_app(dir.path(), promptgate::config::Upstream::Echo).await;
    let seed = &seed_fixture()[1];
    assert_eq!(seed.0, 0.2);
    for i in 0..200 {
        let (version, selection) =
            version_for(&app, "customer_support", &format!("user_{i}")).await;
        assert_eq!(selection, "experiment");
        assert_eq!(version, seed.1[i].to_string(), "user_{i}");
    }
    for i in 0..200 {
        let user = format!("u{i}");
        // Independently of promptgate: int(md5("weighted:2026-11:u{i}")) % 100.
        let digest = Md5::digest(format!("weighted:2026-11:{user}").as_bytes());
        let bucket = u128::from_be_bytes(digest.into()) % 100;
        let expected = match bucket {
            0..70 => "1",
            70..90 => "2",
            _ => "3",
        };
        assert_eq!(
            version_for(&app, "weighted", &user).await.0,
            expected,
            "{user}"
        );
    }
    // A pin bypasses the experiment.
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [], "user": "user_0", "prompt": {"id": "weighted", "version": 3}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-prompt-selection"], "pinned");
}

async fn spawn_recording(dir: &std::path::Path, upstream: &UsageUpstream) -> TestApp {
    spawn_with(dir, upstream.upstream.clone(), |c| {
        c.events = Some(c.state_dir.join("events.jsonl"));
    })
    .await
}

#[tokio::test]
async fn stream_usage_is_captured_without_changing_what_the_client_gets() {
    let dir = prompts();
    let upstream = usage_upstream(1000, 500).await;
    let app = spawn_recording(dir.path(), &upstream).await;
    let body = json!({"model": "gpt-4o", "stream": true, "messages": [],
                      "prompt": {"id": "support", "version": 1, "variables": {"company": "A"}}});
    let text = app
        .post_json("/v1/chat/completions", &body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("\"usage\":{"),
        "no usage chunk for a client that did not ask: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        text.matches("data: ").count(),
        3,
        "two content chunks and [DONE]: {text}"
    );
    let sent = upstream.received.lock().unwrap()[0].clone();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "asked upstream"
    );

    // A client that asks gets the chunk, untouched.
    let mut asking = body.clone();
    asking["stream_options"] = json!({"include_usage": true});
    let text = app
        .post_json("/v1/chat/completions", &asking)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"usage\":{\"prompt_tokens\":1000"), "{text}");

    app.server.state().recorder.flush().await;
    let events = read_events(&app.state_dir.path().join("events.jsonl"));
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e["type"], "request");
        assert_eq!(e["stream"], true);
        assert_eq!(e["prompt_tokens"], 1000);
        assert_eq!(e["completion_tokens"], 500);
        assert_eq!(e["model"], USAGE_MODEL);
        // gpt-4o: 1,000 × $2.50/M + 500 × $10/M.
        assert!(
            (e["cost_usd"].as_f64().unwrap() - 0.0075).abs() < 1e-12,
            "{e}"
        );
        assert!(e["ttft_ms"].as_f64().is_some());
        assert!(
            e.get("content").is_none(),
            "no content without --log-content"
        );
    }
}

#[tokio::test]
async fn unknown_models_have_no_cost_and_are_counted() {
    let dir = prompts();
    let upstream = usage_upstream(10, 5).await;
    let app = spawn_recording(dir.path(), &upstream).await;
    app.post_json(
        "/v1/chat/completions",
        &json!({"model": "my-local-llama", "messages": []}),
    )
    .send()
    .await
    .unwrap();
    app.server.state().recorder.flush().await;
    let events = read_events(&app.state_dir.path().join("events.jsonl"));
    assert_eq!(events[0]["prompt_tokens"], 10);
    assert_eq!(events[0]["cost_usd"], Value::Null);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("promptgate_unpriced_requests_total{model=\"other\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("promptgate_tokens_total{prompt=\"\",version=\"\",kind=\"prompt\"} 10"),
        "{metrics}"
    );
}

#[tokio::test]
async fn log_content_puts_the_upstream_request_in_events() {
    let dir = prompts();
    let upstream = usage_upstream(1, 1).await;
    let app = spawn_with(dir.path(), upstream.upstream.clone(), |c| {
        c.events = Some(c.state_dir.join("events.jsonl"));
        c.log_content = true;
    })
    .await;
    app.post_json(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "secret question"}],
                "prompt": {"id": "support", "version": 1, "variables": {"company": "A"}}}),
    )
    .send()
    .await
    .unwrap();
    app.server.state().recorder.flush().await;
    let events = read_events(&app.state_dir.path().join("events.jsonl"));
    assert_eq!(
        events[0]["content"]["messages"][1]["content"],
        "secret question"
    );
}

#[tokio::test]
async fn feedback_attaches_to_the_serving_version() {
    let dir = prompts();
    let upstream = usage_upstream(100, 10).await;
    let app = spawn_recording(dir.path(), &upstream).await;
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [], "prompt": {"id": "support", "version": 1, "variables": {"company": "A"}}}),
        )
        .header("x-request-id", "req-fb-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app
        .post_json("/v1/feedback", &json!({"request_id": "req-fb-1", "metrics": {"quality_score": 0.85, "user_satisfaction": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["prompt"].as_str(), body["version"].as_u64()),
        (Some("support"), Some(1))
    );

    let resp = app
        .post_json(
            "/v1/feedback",
            &json!({"request_id": "nope", "metrics": {"quality_score": 1}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = app
        .post_json(
            "/v1/feedback",
            &json!({"request_id": "req-fb-1", "metrics": {"quality_score": "great"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["param"], "metrics.quality_score");

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("promptgate_feedback_score_sum{prompt=\"support\",version=\"1\",metric=\"quality_score\"} 0.85"), "{metrics}");
    assert!(metrics.contains("promptgate_feedback_total{prompt=\"support\",version=\"1\",metric=\"user_satisfaction\"} 1"), "{metrics}");
    app.server.state().recorder.flush().await;
    let events = read_events(&app.state_dir.path().join("events.jsonl"));
    assert_eq!(events.last().unwrap()["type"], "feedback");
}

/// The real binary, with its default events file, serving `dir`.
fn start_binary(dir: &std::path::Path, state: &std::path::Path, upstream: &str) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_promptgate"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--upstream",
        upstream,
    ])
    .arg("--prompts")
    .arg(dir)
    .arg("--state-dir")
    .arg(state)
    .env_remove("PROMPTGATE_EVENTS");
    spawn_listening(cmd)
}

fn stop(mut binary: Running) {
    let pid = binary.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while binary.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "stops on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn experiment_stats_through_the_binary_survive_a_restart() {
    let dir = experiment_prompts();
    let state = tempfile::tempdir().unwrap();
    let upstream = usage_upstream(1000, 200).await;
    let binary = start_binary(dir.path(), state.path(), &upstream.upstream.to_string());
    let client = http();
    let mut served = Vec::new();
    for i in 0..60 {
        let resp = client
            .post(format!("{}/v1/chat/completions", binary.base))
            .json(
                &json!({"model": "gpt-4o", "messages": [], "user": format!("user_{i}"),
                          "prompt": {"id": "customer_support"}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let version = resp.headers()["x-prompt-version"]
            .to_str()
            .unwrap()
            .to_owned();
        served.push((id, version));
    }
    // Version 2 scores better.
    for (i, (id, version)) in served.iter().enumerate() {
        let quality = if version == "2" { 0.9 } else { 0.6 } + (i % 5) as f64 * 0.01;
        let resp = client
            .post(format!("{}/v1/feedback", binary.base))
            .json(&json!({"request_id": id, "metrics": {"quality_score": quality}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let report = |base: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("{base}/admin/prompts/customer_support/experiment"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let before = report(binary.base.clone()).await;
    let fixture = &seed_fixture()[1].1;
    let expected_b = (0..60).filter(|i| fixture[*i] == 2).count() as u64;
    assert_eq!(before["variants"]["2"]["count"], expected_b, "{before}");
    assert_eq!(before["variants"]["1"]["count"], 60 - expected_b);
    assert_eq!(before["variants"]["2"]["feedback_count"], expected_b);
    let v1 = &before["variants"]["1"];
    for key in [
        "avg_quality",
        "avg_latency_ms",
        "avg_cost_usd",
        "total_cost_usd",
        "error_rate",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "quality_ci95",
    ] {
        assert!(!v1[key].is_null(), "{key} in {v1}");
    }
    // gpt-4o-2024-08-06 at 1,000 + 200 tokens.
    let per_request = (1000.0 * 2.5 + 200.0 * 10.0) / 1e6;
    assert!((v1["avg_cost_usd"].as_f64().unwrap() - per_request).abs() < 1e-12);
    assert_eq!(before["comparison"]["test"], "welch_t_test");
    assert_eq!(
        before["comparison"]["winner"], "2",
        "{}",
        before["comparison"]
    );
    assert_eq!(before["comparison"]["significant"], true);
    assert!(before["srm"]["p_value"].as_f64().unwrap() > 0.001);
    assert_eq!(before["srm"]["mismatch"], false);
    assert_eq!(before["experiment"]["traffic_split"], 0.2);

    stop(binary);
    let binary = start_binary(dir.path(), state.path(), &upstream.upstream.to_string());
    let after = report(binary.base.clone()).await;
    assert_eq!(after, before, "a restart loses nothing");
    stop(binary);
}
