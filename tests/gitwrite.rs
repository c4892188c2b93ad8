//! Git write mode with real git: a bare repository on disk is the remote, a console-only
//! promptgate writes through it, and two replicas read the branch through checkouts swapped
//! by symlink exactly as git-sync does.
//!
//! Hermetic: each test runs in a child copy of this test binary whose environment keeps git's
//! global and system configuration out of reach (`GIT_CONFIG_GLOBAL=/dev/null`,
//! `GIT_CONFIG_NOSYSTEM=1`, `HOME` an empty temporary folder), so every git the test runs and
//! every git promptgate runs behaves as on a clean machine or in the container, where no
//! `user.email` is configured anywhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use promptgate::admin::git::GitConfig;
use promptgate::config::Upstream;
use serde_json::{Value, json};
use tempfile::TempDir;

use common::{TestApp, spawn_with};

const TOKEN: &str = "secret-token";

/// Set in the child that runs a test's body.
const HERMETIC: &str = "PROMPTGATE_TEST_GIT_HERMETIC";

/// In the test harness's own process: runs the test `name` in a child copy of this binary with
/// git's configuration out of reach, asserts that it passed, and returns true (the caller
/// returns). In that child: returns false, and the caller runs the test's body.
fn in_hermetic_child(name: &str) -> bool {
    if std::env::var_os(HERMETIC).is_some() {
        return false;
    }
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1"])
        .env(HERMETIC, "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .expect("the test binary runs itself");
    assert!(
        out.status.success(),
        "`{name}` failed in its hermetic child:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Runs git in `dir`; panics with git's words when it fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare remote with `prompts/` from the common fixture on `main`, and a clone of it to push
/// from as "someone else".
struct Repo {
    /// Holds the folders until the test ends.
    _dir: TempDir,
    remote: PathBuf,
    other: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("remote.git");
        std::fs::create_dir_all(&remote).unwrap();
        git(&remote, &["init", "-q", "--bare", "-b", "main"]);
        let other = dir.path().join("other");
        git(
            dir.path(),
            &["clone", "-q", &remote.to_string_lossy(), "other"],
        );
        // No global config on a clean machine: identity per repository.
        git(&other, &["config", "user.name", "Other Person"]);
        git(&other, &["config", "user.email", "other@example.com"]);
        git(&other, &["symbolic-ref", "HEAD", "refs/heads/main"]);
        let fixture = common::prompts();
        copy_dir(fixture.path(), &other.join("prompts"));
        git(&other, &["add", "-A"]);
        git(&other, &["commit", "-q", "-m", "seed the prompts"]);
        git(&other, &["push", "-q", "origin", "main"]);
        Repo {
            _dir: dir,
            remote,
            other,
        }
    }

    fn tip(&self, branch: &str) -> String {
        git(&self.remote, &["rev-parse", branch])
    }

    /// Someone else changes a file and pushes to main.
    fn push_other(&self, file: &str, text: &str, message: &str) -> String {
        git(&self.other, &["pull", "-q", "--ff-only", "origin", "main"]);
        common::write(&self.other.join("prompts"), file, text);
        git(&self.other, &["add", "-A"]);
        git(&self.other, &["commit", "-q", "-m", message]);
        git(&self.other, &["push", "-q", "origin", "main"]);
        git(&self.other, &["rev-parse", "HEAD"])
    }

    fn git_config(&self) -> GitConfig {
        let mut config = GitConfig::new(self.remote.to_string_lossy());
        // Only the writes (and the tests' explicit syncs) move the served commit.
        config.poll = Duration::from_secs(3600);
        config.timeout = Duration::from_secs(20);
        config
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// What git-sync does for one pod: fetch into a cache clone, check the tip out into a new
/// worktree, and swap the `current` symlink onto it in one rename.
struct GitSync {
    root: TempDir,
    remote: PathBuf,
}

impl GitSync {
    fn new(repo: &Repo) -> GitSync {
        let sync = GitSync {
            root: tempfile::tempdir().unwrap(),
            remote: repo.remote.clone(),
        };
        sync.sync();
        sync
    }

    fn prompts(&self) -> PathBuf {
        self.root.path().join("current").join("prompts")
    }

    fn sync(&self) {
        let root = self.root.path();
        let cache = root.join(".cache");
        if !cache.exists() {
            git(
                root,
                &[
                    "clone",
                    "-q",
                    "--no-checkout",
                    &self.remote.to_string_lossy(),
                    ".cache",
                ],
            );
        }
        git(&cache, &["fetch", "-q", "origin", "main"]);
        let tip = git(&cache, &["rev-parse", "FETCH_HEAD"]);
        let name = format!("rev-{tip}");
        if root.join(&name).exists() {
            return;
        }
        git(
            &cache,
            &[
                "worktree",
                "add",
                "-q",
                "--detach",
                &root.join(&name).to_string_lossy(),
                &tip,
            ],
        );
        let tmp = root.join(".current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("current")).unwrap();
    }
}

/// A replica reading through the swapped link, polling it, its audit from the history.
async fn replica(sync: &GitSync) -> TestApp {
    spawn_with(&sync.prompts(), Upstream::Echo, |c| {
        c.watch_poll = Some(Duration::from_millis(100));
        c.git_audit = true;
    })
    .await
}

/// The console-only writer.
async fn console(config: GitConfig) -> TestApp {
    let dummy = tempfile::tempdir().unwrap();
    let app = spawn_with(dummy.path(), Upstream::Echo, |c| {
        c.git = Some(config);
        c.console_only = true;
        c.admin_token = Some(TOKEN.to_owned());
    })
    .await;
    drop(dummy);
    app
}

async fn post(app: &TestApp, path: &str, actor: &str, body: Value) -> (u16, Value) {
    let response = app
        .post_json(path, &body)
        .bearer_auth(TOKEN)
        .header("x-actor", actor)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(app: &TestApp, path: &str) -> Value {
    app.client
        .get(app.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (up to 10 s) until `check` holds for the app's `support` prompt.
async fn wait_for(app: &TestApp, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let detail = get(app, "/admin/prompts/support").await;
        if check(&detail) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never seen in {detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn versions(detail: &Value) -> Vec<u64> {
    detail["versions"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x["version"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_write_on_the_console_reaches_every_replica_and_the_history_is_the_audit() {
    if in_hermetic_child(
        "a_write_on_the_console_reaches_every_replica_and_the_history_is_the_audit",
    ) {
        return;
    }
    let repo = Repo::new();
    let syncs = [GitSync::new(&repo), GitSync::new(&repo)];
    let replicas = [replica(&syncs[0]).await, replica(&syncs[1]).await];
    let console = console(repo.git_config()).await;

    // No proxy on the console-only instance.
    let proxied = console
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": []}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 404);

    // A change that does not validate pushes nothing.
    let before = repo.tip("main");
    let (status, body) = post(
        &console,
        "/admin/prompts/support/versions",
        "ann",
        json!({"template": "Hello {{ broken", "activate": true}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("v3.prompt")
    );
    assert_eq!(repo.tip("main"), before);
    assert_eq!(
        git(&repo.remote, &["for-each-ref", "--format=%(refname)"]),
        "refs/heads/main"
    );

    let (status, body) = post(
        &console,
        "/admin/prompts/support/versions",
        "ann@example.com",
        json!({"template": "Be brief with {{ company }}.", "activate": true, "notes": "shorter answers"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 3);
    assert_eq!(body["serving"], true);
    let commit = body["commit"].as_str().unwrap().to_owned();
    assert_eq!(repo.tip("main"), commit);
    assert_eq!(
        git(
            &repo.remote,
            &["log", "-1", "--format=%an <%ae>|%s|%b", "main"]
        ),
        "ann@example.com <ann@example.com>|support: new version v3 (active)|shorter answers\n\nPromptgate-Actor: ann@example.com\nPromptgate-Source: admin"
    );
    assert_eq!(
        git(
            &repo.remote,
            &["show", "--name-status", "--format=", "main"]
        ),
        "M\tprompts/support/prompt.yaml\nA\tprompts/support/v3.prompt"
    );
    // The console-only instance serves it as it came back from the remote.
    let served = get(&console, "/admin/prompts/support").await;
    assert_eq!(served["active_version"], 3);

    // Each replica sees it once its git-sync swaps the link.
    for (sync, app) in syncs.iter().zip(&replicas) {
        sync.sync();
        wait_for(app, "v3 active on the replica", |d| {
            d["active_version"] == 3
        })
        .await;
    }

    // Every replica tells the same story: the history of the branch.
    let audit = get(&console, "/admin/audit?prompt=support").await;
    let last = audit.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["commit"], commit);
    assert_eq!(last["actor"], "ann@example.com");
    assert_eq!(last["source"], "admin");
    assert_eq!(last["note"], "shorter answers");
    assert_eq!(last["prompts"], json!(["support"]));
    for app in &replicas {
        assert_eq!(get(app, "/admin/audit?prompt=support").await, audit);
    }
    // A rollout's steps and halts no commit records: the local trail's entries are merged in
    // by time, on the console's audit page too.
    let halted: promptgate::audit::Entry = serde_json::from_value(json!({
        "time": "", "actor": "rollout", "source": "rollout", "action": "rollout_halted",
        "prompt": "support", "from_version": 3, "to_version": 1,
    }))
    .unwrap();
    console.server.state().audit.note(halted).unwrap();
    let with_rollout = get(&console, "/admin/audit?prompt=support").await;
    let rows = with_rollout.as_array().unwrap();
    assert_eq!(rows.len(), audit.as_array().unwrap().len() + 1);
    assert_eq!(rows.last().unwrap()["action"], "rollout_halted");
    assert_eq!(rows[rows.len() - 2]["commit"], commit);
    let page = get_text(&console, "/admin/audit?limit=1").await;
    assert_eq!(page.0.as_array().unwrap().len(), 2);
    let older = page.1.expect("a cursor to older commits");
    assert_eq!(page.0[0]["commit"], commit);
    assert_eq!(page.0[1]["action"], "rollout_halted");
    let before = get(&console, &format!("/admin/audit?limit=1&before={older}")).await;
    assert_eq!(before.as_array().unwrap().len(), 1);
    assert_eq!(before[0]["summary"], "seed the prompts");
    assert_eq!(before[0]["source"], "git");
    // The console's trail is the same history.
    let trail = console
        .client
        .get(console.url("/console/audit"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        trail.contains("new version v3 (active) — shorter answers"),
        "{trail}"
    );
    assert!(trail.contains("rollout halted"), "{trail}");
    let status = get(&console, "/admin/status").await;
    assert_eq!(status["git"]["commit"], commit);
    assert_eq!(status["git"]["branch"], "main");
}

async fn get_text(app: &TestApp, path: &str) -> (Value, Option<String>) {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let next = response
        .headers()
        .get("x-audit-next")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.json().await.unwrap(), next)
}

#[tokio::test]
async fn the_binary_writes_through_git_from_its_flags_and_environment() {
    if in_hermetic_child("the_binary_writes_through_git_from_its_flags_and_environment") {
        return;
    }
    let repo = Repo::new();
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_promptgate"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--state-dir")
        .arg(state.path())
        .arg("--git-remote")
        .arg(&repo.remote)
        .env("PROMPTGATE_CONSOLE_ONLY", "true")
        .env("PROMPTGATE_ADMIN_TOKEN", TOKEN)
        .env("PROMPTGATE_GIT_BRANCH", "main");
    let running = common::spawn_listening(cmd);
    let client = common::http();
    let response = client
        .post(format!("{}/admin/prompts/ab/rollback", running.base))
        .bearer_auth(TOKEN)
        .header("x-actor", "dee")
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(repo.tip("main"), body["commit"].as_str().unwrap());
    assert_eq!(
        git(&repo.remote, &["log", "-1", "--format=%an|%s", "main"]),
        "dee|ab: make v1 active"
    );
}

#[test]
fn a_remote_that_fails_is_named_without_its_credentials() {
    if in_hermetic_child("a_remote_that_fails_is_named_without_its_credentials") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_promptgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--console-only"])
        .arg("--state-dir")
        .arg(state.path())
        .env(
            "PROMPTGATE_GIT_REMOTE",
            "http://bot:s3cret@127.0.0.1:9/prompts.git",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fetch branch `main`"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[tokio::test]
async fn a_lost_race_rebases_and_a_conflicting_change_is_409() {
    if in_hermetic_child("a_lost_race_rebases_and_a_conflicting_change_is_409") {
        return;
    }
    let repo = Repo::new();
    let sync = GitSync::new(&repo);
    let replica = replica(&sync).await;
    let console = console(repo.git_config()).await;

    // A git killed midway (timeout, out of memory, the container stopped) left a lock and an
    // unfinished rebase in the clone, which the state folder keeps: they are cleared.
    let clone = console.state_dir.path().join("git/clone/.git");
    std::fs::write(clone.join("index.lock"), "").unwrap();
    std::fs::create_dir_all(clone.join("rebase-merge")).unwrap();

    // Someone pushes first, to another prompt: the write rebases on it.
    let theirs = repo.push_other("ab/v3.prompt", "Variant C", "ab: add v3 by hand");
    let (status, body) = post(
        &console,
        "/admin/prompts/support/rollback",
        "bo",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["serving"], true);
    let ours = body["commit"].as_str().unwrap().to_owned();
    assert_eq!(repo.tip("main"), ours);
    assert_eq!(
        git(&repo.remote, &["rev-parse", &format!("{ours}^")]),
        theirs
    );
    // The rebase kept the actor as the author; promptgate commits, with no git configuration.
    assert_eq!(
        git(
            &repo.remote,
            &["log", "-1", "--format=%an|%cn <%ce>", &ours]
        ),
        "bo|promptgate <promptgate@localhost>"
    );
    // Both changes serve, here and on the replica.
    let served = get(&console, "/admin/prompts/ab").await;
    assert_eq!(versions(&served), [1, 2, 3]);
    sync.sync();
    wait_for(&replica, "rollback on the replica", |d| {
        d["active_version"] == 1
    })
    .await;

    // A git killed while writing the index left it unreadable: the clone is made again.
    std::fs::write(clone.join("index"), "DIRC garbage").unwrap();

    // Someone adds the same version number with other text: the write conflicts, nothing is
    // pushed, and the answer names the file.
    let theirs = repo.push_other("support/v3.prompt", "Their v3.", "support: v3 by hand");
    let (status, body) = post(
        &console,
        "/admin/prompts/support/versions",
        "bo",
        json!({"template": "Our v3."}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "git_conflict");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("prompts/support/v3.prompt"), "{message}");
    assert_eq!(repo.tip("main"), theirs);
}

#[tokio::test]
async fn review_mode_leaves_the_branch_alone_until_the_review_is_merged() {
    if in_hermetic_child("review_mode_leaves_the_branch_alone_until_the_review_is_merged") {
        return;
    }
    let repo = Repo::new();
    let sync = GitSync::new(&repo);
    let replica = replica(&sync).await;
    let mut config = repo.git_config();
    config.review_prefix = Some("promptgate".to_owned());
    config.web_url = Some("https://git.example.com/prompts/compare/{base}...{branch}".to_owned());
    config.poll = Duration::from_millis(300);
    let console = console(config).await;
    let before = repo.tip("main");

    // Saved from the console's editor by a signed-in person, who is the commit's author.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = no_redirects
        .post(console.url("/console/sign-in"))
        .header("origin", &console.base)
        .form(&[("token", TOKEN), ("name", "Ana Reviewer")])
        .send()
        .await
        .unwrap();
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let saved = console
        .client
        .post(console.url("/console/prompts/support/versions"))
        .header("cookie", &cookie)
        .header("origin", &console.base)
        .form(&[
            ("template", "Reviewed text for {{ company }}."),
            ("activate", "on"),
            ("notes", "needs a second pair of eyes"),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        saved.url().as_str().contains("done=review"),
        "{}",
        saved.url()
    );
    assert_eq!(saved.status(), 200);
    let page = saved.text().await.unwrap().replace("&#x2f;", "/");
    assert!(page.contains("waiting for review"), "{page}");
    assert!(
        page.contains("https://git.example.com/prompts/compare/main...promptgate/support-v3"),
        "{page}"
    );
    assert_eq!(repo.tip("main"), before);
    let branch_tip = repo.tip("promptgate/support-v3");
    assert_eq!(
        git(
            &repo.remote,
            &["log", "-1", "--format=%an <%ae>|%s|%b", &branch_tip]
        ),
        "Ana Reviewer <ana.reviewer@promptgate.invalid>|support: new version v3 (active)|needs a second pair of eyes\n\nPromptgate-Actor: Ana Reviewer\nPromptgate-Source: console"
    );
    // Not served anywhere yet.
    assert_eq!(
        versions(&get(&console, "/admin/prompts/support").await),
        [1, 2]
    );
    sync.sync();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        versions(&get(&replica, "/admin/prompts/support").await),
        [1, 2]
    );

    // The admin API's change goes to a branch of its own, with the next number.
    let (status, body) = post(
        &console,
        "/admin/prompts/support/versions",
        "cy",
        json!({"template": "Another."}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["serving"], false);
    assert_eq!(body["review"]["branch"], "promptgate/support-v4");

    // A rollback's branch from an earlier review, merged and left in place, does not block
    // the same rollback now: the new branch carries the time.
    git(
        &repo.other,
        &[
            "push",
            "-q",
            "origin",
            "main:refs/heads/promptgate/support-active-v1",
        ],
    );
    let (status, body) = post(
        &console,
        "/admin/prompts/support/rollback",
        "cy",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let branch = body["review"]["branch"].as_str().unwrap();
    assert!(
        branch.starts_with("promptgate/support-active-v1-"),
        "{branch}"
    );
    assert_eq!(repo.tip(branch), body["commit"].as_str().unwrap());

    // The team merges the first review: it goes live everywhere and stops waiting.
    git(&repo.other, &["fetch", "-q", "origin"]);
    git(
        &repo.other,
        &["merge", "-q", "--ff-only", "origin/promptgate/support-v3"],
    );
    git(&repo.other, &["push", "-q", "origin", "main"]);
    sync.sync();
    wait_for(&replica, "the merged review on the replica", |d| {
        d["active_version"] == 3
    })
    .await;
    wait_for(&console, "the merged review on the console", |d| {
        d["active_version"] == 3
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = console
            .client
            .get(console.url("/console/prompts/support"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .replace("&#x2f;", "/");
        if !page.contains("promptgate/support-v3") {
            assert!(page.contains("promptgate/support-v4"), "{page}");
            break;
        }
        assert!(Instant::now() < deadline, "the merged review still waits");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
