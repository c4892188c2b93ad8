//! Guarded rollouts through the real server, against a mock upstream whose errors and latency
//! each version's prompt controls: a healthy rollout walks every step to completion, a broken
//! version halts and no user sees it after, and a restart resumes at the same step.

mod common;

mod rollout_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rollout_support::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_rollout_walks_every_step_to_completion() {
    let prompts = prompt_folder(
        "You are version two.",
        "active: 1\nrollout:\n  from: 1\n  to: 2\n  steps: [10, 25, 50, 100]\n  min_requests: 20\n  min_duration: 1s\n  guards:\n    error_rate: 0.1\n    latency_p95: 2\n",
    );
    let state = tempfile::tempdir().unwrap();
    let app = start(prompts.path(), mock_upstream().await, state.path()).await;
    let first = rollout(&app).await;
    assert_eq!(first["state"], "running", "{first}");
    assert_eq!(first["step"], 10);
    let mut steps_seen = vec![10];
    let mut on_b: HashMap<String, bool> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut sent = 0;
    loop {
        let r = rollout(&app).await;
        let step = r["step"].as_u64().unwrap() as u32;
        if steps_seen.last() != Some(&step) {
            steps_seen.push(step);
        }
        if r["state"] == "completed" {
            break;
        }
        assert_eq!(r["state"], "running", "{r}");
        assert!(
            Instant::now() < deadline,
            "the rollout did not complete: {r}"
        );
        for (user, version) in batch(&app, sent, 40).await {
            // Users move one way: once on B, never back to A while the share grows.
            let was_b = on_b.get(&user).copied().unwrap_or(false);
            assert!(!was_b || version == 2, "user {user} went back to version 1");
            on_b.insert(user, version == 2);
        }
        sent += 40;
    }
    assert_eq!(steps_seen, [10, 25, 50, 100], "every step was taken");
    // B became active in the files and the block is gone; everyone is on 2.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let manifest = std::fs::read_to_string(prompts.path().join("p/prompt.yaml")).unwrap();
        if manifest.contains("active: 2") && !manifest.contains("rollout") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "active was not written: {manifest}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = rollout(&app).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["active_written"], true, "{done}");
    for (_, version) in batch(&app, 0, 20).await {
        assert_eq!(version, 2);
    }
    let audit: Value = app
        .client
        .get(app.url("/admin/audit?prompt=p"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("rollout"))
        .collect();
    assert_eq!(
        actions,
        [
            "rollout_started",
            "rollout_advanced",
            "rollout_advanced",
            "rollout_advanced",
            "rollout_completed"
        ]
    );
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
        metrics.contains("promptgate_rollout_state{prompt=\"p\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_version_halts_and_no_user_sees_it_after() {
    let prompts = prompt_folder(
        "FAIL: you are version two.",
        "active: 1\nrollout:\n  from: 1\n  to: 2\n  steps: [20, 50, 100]\n  min_requests: 20\n  min_duration: 1s\n  guards:\n    error_rate: 0.02\n",
    );
    let state = tempfile::tempdir().unwrap();
    let upstream = mock_upstream().await;
    let app = start(prompts.path(), upstream.clone(), state.path()).await;
    let started = Instant::now();
    let mut sent = 0;
    let halted = loop {
        let r = rollout(&app).await;
        if r["state"] == "halted" {
            break r;
        }
        assert_eq!(r["step"], 20, "a broken version never advances: {r}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rollout did not halt: {r}"
        );
        batch(&app, sent, 40).await;
        sent += 40;
    };
    assert_eq!(halted["step"], 0, "{halted}");
    assert_eq!(halted["halt"]["guard"], "error_rate", "{halted}");
    assert_eq!(halted["halt"]["verdict"], "violated", "{halted}");
    assert!(
        halted["reason"].as_str().unwrap().contains("error_rate"),
        "{halted}"
    );
    // After the halt, every user — those who had B included — is on A.
    for (user, version) in batch(&app, 0, 400).await {
        assert_eq!(version, 1, "user {user} saw version 2 after the halt");
    }
    // It stays halted: more traffic does not restart it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rollout(&app).await["state"], "halted");
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
        metrics.contains("promptgate_rollout_state{prompt=\"p\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("promptgate_rollout_halts_total{prompt=\"p\"} 1"),
        "{metrics}"
    );
    let audit: Value = app
        .client
        .get(app.url("/admin/audit?prompt=p"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let halt = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "rollout_halted")
        .expect("the halt is in the audit trail");
    assert_eq!(halt["value"]["guard"]["guard"], "error_rate", "{halt}");
    assert!(halt["value"]["guard"]["interval"].is_array(), "{halt}");
    // The console's experiment page shows the halt and its guard.
    let page = app
        .client
        .get(app.url("/console/prompts/p/experiment"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"rollout-state\">halted<"), "{page}");
    assert!(page.contains("<code>error_rate</code>"), "{page}");
    // The manifest still names the rollout, nothing was activated, and the halt is written
    // into the block so no replica, restart or new pod serves B again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let manifest = loop {
        let manifest = std::fs::read_to_string(prompts.path().join("p/prompt.yaml")).unwrap();
        if manifest.contains("halted: true") {
            break manifest;
        }
        assert!(
            Instant::now() < deadline,
            "halted was not written: {manifest}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(manifest.contains("active: 1"), "{manifest}");
    assert!(
        manifest.contains("rollout:\n  halted: true\n  from: 1"),
        "{manifest}"
    );
    app.server.shutdown(Duration::from_secs(5)).await.unwrap();

    // A restart on the same state folder: still halted, nobody on B.
    let app = start(prompts.path(), upstream.clone(), state.path()).await;
    let r = rollout(&app).await;
    assert_eq!(
        (&r["state"], &r["step"]),
        (&json!("halted"), &json!(0)),
        "{r}"
    );
    for (user, version) in batch(&app, 0, 200).await {
        assert_eq!(version, 1, "user {user} saw version 2 after a restart");
    }
    app.server.shutdown(Duration::from_secs(5)).await.unwrap();

    // A new pod: an empty state folder. The files say halted: nobody on B, with no statistics.
    let fresh = tempfile::tempdir().unwrap();
    let app = start(prompts.path(), upstream, fresh.path()).await;
    let r = rollout(&app).await;
    assert_eq!(
        (&r["state"], &r["step"]),
        (&json!("halted"), &json!(0)),
        "{r}"
    );
    for (user, version) in batch(&app, 0, 200).await {
        assert_eq!(
            version, 1,
            "user {user} saw version 2 on a fresh state folder"
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rollout(&app).await["state"], "halted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_at_the_same_step_and_delete_ends_it() {
    let prompts = prompt_folder("You are version two.", "active: 1\n");
    let state = tempfile::tempdir().unwrap();
    let upstream = mock_upstream().await;
    let app = start(prompts.path(), upstream.clone(), state.path()).await;
    // Started through the admin API.
    let put = app
        .client
        .put(app.url("/admin/prompts/p/rollout"))
        .bearer_auth(TOKEN)
        .json(
            &json!({"from": 1, "to": 2, "steps": [10, 50, 100], "min_requests": 40,
                      "min_duration": "1s", "guards": {"error_rate": 0.1}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let body: Value = put.json().await.unwrap();
    assert_eq!(body["rollout"]["state"], "running", "{body}");
    let bad = app
        .client
        .put(app.url("/admin/prompts/p/rollout"))
        .bearer_auth(TOKEN)
        .json(&json!({"from": 1, "to": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let text = bad.text().await.unwrap();
    assert!(text.contains("version 7"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    let before = loop {
        let r = rollout(&app).await;
        if r["step"] == 50 {
            break r;
        }
        assert!(Instant::now() < deadline, "no second step: {r}");
        // Small batches: the step at 50% gets at most 20 requests before the restart, so it
        // cannot end (40 are needed) while the test looks.
        batch(&app, sent, 20).await;
        sent += 20;
    };
    app.server.shutdown(Duration::from_secs(5)).await.unwrap();

    let app = start(prompts.path(), upstream, state.path()).await;
    let after = rollout(&app).await;
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["step"], 50, "{after}");
    assert_eq!(after["step_started_at"], before["step_started_at"]);
    assert_eq!(after["id"], before["id"]);
    // Users are where the step puts them: B below bucket 50.
    for (user, version) in batch(&app, 0, 10).await {
        let b = promptgate::select::bucket("p", None, &user) < 50;
        assert_eq!(version, if b { 2 } else { 1 }, "user {user}");
    }
    // Tuning a guard mid-rollout starts fresh statistics (a new id) but keeps the share: the
    // users on B stay there.
    let put = app
        .client
        .put(app.url("/admin/prompts/p/rollout"))
        .bearer_auth(TOKEN)
        .json(
            &json!({"from": 1, "to": 2, "steps": [10, 50, 100], "min_requests": 40,
                      "min_duration": "1s", "guards": {"error_rate": 0.2}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let tuned = rollout(&app).await;
    assert_ne!(tuned["id"], before["id"], "{tuned}");
    assert_eq!(
        (&tuned["state"], &tuned["step"]),
        (&json!("running"), &json!(50)),
        "{tuned}"
    );
    for (user, version) in batch(&app, 0, 10).await {
        let b = promptgate::select::bucket("p", None, &user) < 50;
        assert_eq!(version, if b { 2 } else { 1 }, "user {user} after the edit");
    }
    let delete = app
        .client
        .delete(app.url("/admin/prompts/p/rollout"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 200);
    assert!(rollout(&app).await.is_null());
    for (_, version) in batch(&app, 0, 100).await {
        assert_eq!(version, 1, "after DELETE, users are back on active");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_read_only_folder_completion_is_held_in_state() {
    use std::os::unix::fs::PermissionsExt;
    let manifest = "active: 1\nrollout:\n  from: 1\n  to: 2\n  steps: [50, 100]\n  min_requests: 20\n  min_duration: 1s\n  guards:\n    error_rate: 0.1\n";
    let prompts = prompt_folder("You are version two.", manifest);
    let folder = prompts.path().join("p");
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let upstream = mock_upstream().await;
    let app = start(prompts.path(), upstream.clone(), state.path()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    let done = loop {
        let r = rollout(&app).await;
        if r["state"] == "completed" && !r["active_written"].is_null() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not complete: {r}"
        );
        batch(&app, sent, 40).await;
        sent += 40;
    };
    assert_eq!(done["active_written"], false, "{done}");
    assert!(done["reason"].as_str().unwrap().contains("git"), "{done}");
    let on_disk = std::fs::read_to_string(folder.join("prompt.yaml")).unwrap();
    assert_eq!(on_disk, manifest, "nothing was written");
    for (_, version) in batch(&app, 0, 40).await {
        assert_eq!(version, 2, "B serves every user from the state folder");
    }
    // And it still does after a restart.
    app.server.shutdown(Duration::from_secs(5)).await.unwrap();
    let app = start(prompts.path(), upstream, state.path()).await;
    assert_eq!(rollout(&app).await["state"], "completed");
    for (_, version) in batch(&app, 0, 40).await {
        assert_eq!(version, 2);
    }
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Two replicas on one prompts folder, each deciding from its own traffic: only the first sees
/// the broken version's errors, yet once it halts and writes `halted: true`, the second
/// (reloading the files) moves every user back to A within a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_on_one_replica_reaches_the_other_through_the_files() {
    let prompts = prompt_folder(
        "FAIL: you are version two.",
        "active: 1\nrollout:\n  from: 1\n  to: 2\n  steps: [20, 50, 100]\n  min_requests: 20\n  min_duration: 1s\n  guards:\n    error_rate: 0.02\n",
    );
    let upstream = mock_upstream().await;
    let (state_1, state_2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let busy = start(prompts.path(), upstream.clone(), state_1.path()).await;
    let quiet = start(prompts.path(), upstream, state_2.path()).await;
    assert_eq!(rollout(&quiet).await["step"], 20);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    while rollout(&busy).await["state"] != "halted" {
        assert!(Instant::now() < deadline, "the busy replica did not halt");
        batch(&busy, sent, 40).await;
        sent += 40;
    }
    let halted_at = Instant::now();
    let r = loop {
        let r = rollout(&quiet).await;
        if r["state"] == "halted" {
            break r;
        }
        assert!(
            halted_at.elapsed() < Duration::from_secs(10),
            "the quiet replica did not see the halt: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r["step"], 0, "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("halted: true"),
        "{r}"
    );
    for (user, version) in batch(&quiet, 0, 200).await {
        assert_eq!(version, 1, "user {user} saw version 2 on the other replica");
    }
}
