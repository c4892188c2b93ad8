//! Hot reload through the real server: edits are live fast, bad edits never break serving.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use promptgate::config::Upstream;
use serde_json::{Value, json};

/// Asks for `prompt` (v1 pinned when `pinned`) through the echo upstream and returns the
/// status and the system prompt that would have gone upstream.
async fn system_prompt(app: &TestApp, prompt: &str, vars: Value) -> (u16, String) {
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [], "prompt": {"id": prompt, "variables": vars}}),
        )
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    if status != 200 {
        return (
            status,
            body["error"]["message"].as_str().unwrap_or("").to_owned(),
        );
    }
    let sent: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    (
        status,
        sent["messages"][0]["content"].as_str().unwrap().to_owned(),
    )
}

/// Polls until `check` holds, returning how long it took; fails after 10 s (a reload takes
/// well under a second; the margin is for a machine busy with other builds).
async fn eventually<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 10 s");
}

fn simple_prompts() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "greet/v1.prompt", "Hello {{ name }}.");
    dir
}

#[tokio::test]
async fn an_edit_is_live_within_a_second() {
    let dir = simple_prompts();
    let app = spawn_app(dir.path(), Upstream::Echo).await;
    let vars = json!({"name": "Ann"});
    assert_eq!(
        system_prompt(&app, "greet", vars.clone()).await.1,
        "Hello Ann."
    );
    write(dir.path(), "greet/v1.prompt", "Hi there, {{ name }}!");
    let took = eventually("edit seen", || async {
        system_prompt(&app, "greet", vars.clone()).await.1 == "Hi there, Ann!"
    })
    .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test]
async fn an_editor_save_by_rename_is_seen() {
    let dir = simple_prompts();
    let app = spawn_app(dir.path(), Upstream::Echo).await;
    let vars = json!({"name": "Ann"});
    let tmp = dir.path().join("greet/.v1.prompt.swp");
    std::fs::write(&tmp, "Saved by rename, {{ name }}.").unwrap();
    std::fs::rename(&tmp, dir.path().join("greet/v1.prompt")).unwrap();
    eventually("rename seen", || async {
        system_prompt(&app, "greet", vars.clone()).await.1 == "Saved by rename, Ann."
    })
    .await;
}

#[tokio::test]
async fn prompt_folders_can_be_created_renamed_and_deleted() {
    let dir = simple_prompts();
    let app = spawn_app(dir.path(), Upstream::Echo).await;
    write(dir.path(), "fresh/v1.prompt", "Fresh {{ x }}");
    eventually("new folder served", || async {
        system_prompt(&app, "fresh", json!({"x": 1})).await == (200, "Fresh 1".to_owned())
    })
    .await;
    std::fs::rename(dir.path().join("fresh"), dir.path().join("renamed")).unwrap();
    eventually("renamed folder served, old name gone", || async {
        system_prompt(&app, "renamed", json!({"x": 2})).await.0 == 200
            && system_prompt(&app, "fresh", json!({"x": 2})).await.0 == 404
    })
    .await;
    std::fs::remove_dir_all(dir.path().join("renamed")).unwrap();
    eventually("deleted folder gone", || async {
        system_prompt(&app, "renamed", json!({"x": 3})).await.0 == 404
    })
    .await;
}

async fn status(app: &TestApp) -> Value {
    app.client
        .get(app.url("/admin/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn bad_reload_keeps_last_good_set() {
    let dir = simple_prompts();
    let app = spawn_app(dir.path(), Upstream::Echo).await;
    let vars = json!({"name": "Ann"});
    write(dir.path(), "greet/v1.prompt", "Broken {{ name ");
    eventually("error reported", || async {
        status(&app).await["reload"]["last_result"] == "error"
    })
    .await;
    let s = status(&app).await;
    let errors = s["reload"]["last_error"].as_array().unwrap();
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .starts_with("greet/v1.prompt:1: template syntax error"),
        "{s}"
    );
    assert!(metrics(&app).await.contains("promptgate_reload_error 1"));
    // The last good set keeps serving.
    assert_eq!(
        system_prompt(&app, "greet", vars.clone()).await,
        (200, "Hello Ann.".to_owned())
    );

    write(dir.path(), "greet/v1.prompt", "Fixed, {{ name }}.");
    eventually("fix served", || async {
        system_prompt(&app, "greet", vars.clone()).await.1 == "Fixed, Ann."
    })
    .await;
    let s = status(&app).await;
    assert_eq!(s["reload"]["last_result"], "ok");
    assert!(s["reload"]["last_error"].as_array().unwrap().is_empty());
    let m = metrics(&app).await;
    assert!(m.contains("promptgate_reload_error 0"), "{m}");
    assert!(
        m.contains("promptgate_reloads_total{result=\"error\"}"),
        "{m}"
    );
}

/// The layout Kubernetes gives a ConfigMap volume: the visible names are symlinks into
/// `..data`, itself a symlink to a timestamped folder, swapped by one rename. The files behind
/// the visible names never change; only `..data` moves.
fn configmap_version(root: &Path, stamp: &str, body: &str) {
    write(root, &format!("{stamp}/greet/v1.prompt"), body);
}

fn swap_data(root: &Path, stamp: &str) {
    let tmp = root.join("..data_tmp");
    std::os::unix::fs::symlink(stamp, &tmp).unwrap();
    std::fs::rename(&tmp, root.join("..data")).unwrap();
}

#[tokio::test]
async fn configmap_symlink_swap_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    configmap_version(root, "..2026_11_25_01", "ConfigMap one, {{ name }}.");
    std::os::unix::fs::symlink("..2026_11_25_01", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/greet", root.join("greet")).unwrap();
    let app = spawn_app(root, Upstream::Echo).await;
    let vars = json!({"name": "Ann"});
    assert_eq!(
        system_prompt(&app, "greet", vars.clone()).await.1,
        "ConfigMap one, Ann."
    );

    configmap_version(root, "..2026_11_25_02", "ConfigMap two, {{ name }}.");
    swap_data(root, "..2026_11_25_02");
    std::fs::remove_dir_all(root.join("..2026_11_25_01")).unwrap();
    let took = eventually("swap seen", || async {
        system_prompt(&app, "greet", vars.clone()).await.1 == "ConfigMap two, Ann."
    })
    .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[tokio::test]
async fn polling_sees_changes_without_file_events() {
    let dir = simple_prompts();
    let app = spawn_with(dir.path(), Upstream::Echo, |c| {
        c.watch_poll = Some(Duration::from_millis(100));
    })
    .await;
    let vars = json!({"name": "Ann"});
    // Past the start-up reload, so only the poller can see the change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Same length as before, so only the modification time tells.
    write(dir.path(), "greet/v1.prompt", "Howdy {{ name }}.");
    eventually("poll saw it", || async {
        system_prompt(&app, "greet", vars.clone()).await.1 == "Howdy Ann."
    })
    .await;
}

#[tokio::test]
async fn requests_never_fail_during_repeated_reloads() {
    let dir = simple_prompts();
    let app = Arc::new(spawn_app(dir.path(), Upstream::Echo).await);
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (app, failures, done) = (app.clone(), failures.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..60 {
                let (status, text) = system_prompt(&app, "greet", json!({"name": "Ann"})).await;
                let whole = text == "Hello Ann." || text.starts_with("Edit ");
                if status != 200 || !whole {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for i in 0..25 {
        // Saved by rename: a plain write truncates first, and a reload that reads the empty
        // file in between would serve it (correctly) — not what this test is about.
        write_atomic(
            dir.path(),
            "greet/v1.prompt.tmp",
            &format!("Edit {i} for {{{{ name }}}}."),
        );
        std::fs::rename(
            dir.path().join("greet/v1.prompt.tmp"),
            dir.path().join("greet/v1.prompt"),
        )
        .unwrap();
        write(dir.path(), &format!("extra{i}/v1.prompt"), "extra");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 480);
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let s = status(&app).await;
    assert!(s["reload"]["reloads_ok"].as_u64().unwrap() >= 1, "{s}");
}

/// git-sync's layout: the prompts path itself is a symlink to a worktree, swapped by one rename
/// on every sync; the old worktree is deleted.
#[tokio::test]
async fn a_swapped_symlinked_prompts_path_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "worktrees/a/greet/v1.prompt", "Sync one, {{ name }}.");
    std::os::unix::fs::symlink("worktrees/a", root.join("link")).unwrap();
    let app = spawn_app(&root.join("link"), Upstream::Echo).await;
    let vars = json!({"name": "Ann"});
    assert_eq!(
        system_prompt(&app, "greet", vars.clone()).await.1,
        "Sync one, Ann."
    );
    for (i, name) in ["b", "c", "d"].iter().enumerate() {
        let text = format!("Sync {}, {{{{ name }}}}.", i + 2);
        write(root, &format!("worktrees/{name}/greet/v1.prompt"), &text);
        let tmp = root.join("link.tmp");
        std::os::unix::fs::symlink(format!("worktrees/{name}"), &tmp).unwrap();
        std::fs::rename(&tmp, root.join("link")).unwrap();
        let expected = format!("Sync {}, Ann.", i + 2);
        eventually("swap seen", || async {
            system_prompt(&app, "greet", vars.clone()).await.1 == expected
        })
        .await;
    }
}
