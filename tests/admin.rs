//! The admin API through the real server: reads, writes that change the files, auth, audit.

mod common;

use std::net::SocketAddr;

use common::*;
use promptgate::config::Upstream;
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token";

async fn admin_app(dir: &std::path::Path) -> TestApp {
    spawn_with(dir, Upstream::Echo, |c| c.admin_token = Some(TOKEN.into())).await
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let resp = app
        .client
        .get(app.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn send(app: &TestApp, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let resp = app
        .client
        .request(method, app.url(path))
        .bearer_auth(TOKEN)
        .header("x-actor", "carol@example.com")
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    send(app, reqwest::Method::POST, path, body).await
}

#[tokio::test]
async fn reads_list_detail_version_and_render() {
    let dir = prompts();
    let app = admin_app(dir.path()).await;
    let (status, list) = get(&app, "/admin/prompts").await;
    assert_eq!(status, 200);
    assert_eq!(
        list,
        json!([
            {"name": "ab", "description": "", "active_version": 2, "total_versions": 2, "tags": []},
            {"name": "support", "description": "Support agent", "active_version": 2, "total_versions": 2, "tags": ["support"]}
        ])
    );
    let (_, tagged) = get(&app, "/admin/prompts?tag=support").await;
    assert_eq!(tagged.as_array().unwrap().len(), 1);

    let (status, detail) = get(&app, "/admin/prompts/support").await;
    assert_eq!(status, 200);
    assert_eq!(detail["active_version"], 2);
    assert_eq!(detail["labels"], json!({"stable": 1}));
    let v2 = &detail["versions"][1];
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["model"], "gpt-4o");
    assert_eq!(v2["variables"], json!(["company", "tier"]));
    assert!(v2["created_at"].as_str().is_some(), "first seen time: {v2}");
    assert_eq!(v2["hash"].as_str().unwrap().len(), 12);

    let (status, version) = get(&app, "/admin/prompts/support/versions/1").await;
    assert_eq!(status, 200);
    assert_eq!(version["template"], "You help customers of {{ company }}.");
    assert_eq!(get(&app, "/admin/prompts/support/versions/9").await.0, 404);
    assert_eq!(get(&app, "/admin/prompts/nope").await.0, 404);

    let (status, rendered) = post(
        &app,
        "/admin/prompts/support/render",
        json!({"variables": {"company": "Acme", "tier": "free"},
               "messages": [{"role": "user", "content": "hi"}], "user": "u1"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        rendered,
        json!({"messages": [{"role": "system", "content": support_v2("Acme", false)},
                            {"role": "user", "content": "hi"}],
               "user": "u1", "model": "gpt-4o", "temperature": 0.3, "max_tokens": 256, "top_p": 0.9})
    );
    let (status, err) = post(
        &app,
        "/admin/prompts/support/render",
        json!({"variables": {}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`company`, `tier`")
    );
}

#[tokio::test]
async fn created_versions_are_files_and_serve_at_once() {
    let dir = prompts();
    let app = admin_app(dir.path()).await;
    let (status, created) = post(
        &app,
        "/admin/prompts/support/versions",
        json!({"template": "New support for {{ company }}.", "model": "gpt-4o-mini",
               "created_by": "dave@example.com", "notes": "shorter", "activate": true}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["version"], 3);
    assert_eq!(created["serving"], true);
    assert_eq!(created["active_version"], 3);
    let text = std::fs::read_to_string(dir.path().join("support/v3.prompt")).unwrap();
    assert!(
        text.contains("model: \"gpt-4o-mini\"")
            && text.ends_with("New support for {{ company }}.\n"),
        "{text}"
    );
    let manifest = std::fs::read_to_string(dir.path().join("support/prompt.yaml")).unwrap();
    assert_eq!(
        manifest, "description: Support agent\ntags: [support]\nactive: 3\nlabels: {stable: 1}\n",
        "other fields kept"
    );
    // Served by the next request, hash as announced.
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [], "prompt": {"id": "support", "variables": {"company": "Acme"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-prompt-version"], "3");
    assert_eq!(
        resp.headers()["x-prompt-hash"],
        created["hash"].as_str().unwrap()
    );

    // Without `activate`, the active version stays.
    let (status, created) = post(
        &app,
        "/admin/prompts/support/versions",
        json!({"template": "Draft {{ company }}"}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(created["version"], 4);
    assert_eq!(created["active_version"], 3);

    // The audit names the actor of each change.
    let (_, audit) = get(&app, "/admin/audit?prompt=support").await;
    let added: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "version_added" && e["version"].as_u64() >= Some(3))
        .collect();
    assert_eq!(added.len(), 2);
    assert!(
        added
            .iter()
            .all(|e| e["actor"] == "carol@example.com" && e["source"] == "admin")
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "active_changed"
                && e["from_version"] == 2
                && e["to_version"] == 3)
    );
}

#[tokio::test]
async fn a_new_prompt_can_be_created() {
    let dir = prompts();
    let app = admin_app(dir.path()).await;
    let (status, created) = post(
        &app,
        "/admin/prompts/faq/versions",
        json!({"template": "Answer questions about {{ product }}.", "description": "FAQ bot", "tags": ["faq"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["version"], 1);
    let (_, detail) = get(&app, "/admin/prompts/faq").await;
    assert_eq!(detail["description"], "FAQ bot");
    assert_eq!(detail["tags"], json!(["faq"]));
    assert_eq!(detail["versions"][0]["created_by"], Value::Null);
}

#[tokio::test]
async fn invalid_writes_are_refused_and_leave_files_untouched() {
    let dir = prompts();
    let app = admin_app(dir.path()).await;
    let listing = |d: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(d.join("support"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing(dir.path());
    let manifest = std::fs::read_to_string(dir.path().join("support/prompt.yaml")).unwrap();
    let (status, err) = post(
        &app,
        "/admin/prompts/support/versions",
        json!({"template": "Broken {{ company ", "activate": true}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("support/v3.prompt"),
        "{err}"
    );
    let (status, _) = post(
        &app,
        "/admin/prompts/support/versions",
        json!({"template": "x", "temperature": 9}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(
        &app,
        "/admin/prompts/support/versions",
        json!({"templat": "x"}),
    )
    .await;
    assert_eq!(status, 400, "unknown field");
    let (status, _) = post(
        &app,
        "/admin/prompts/support/rollback",
        json!({"version": 9}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, err) = send(
        &app,
        reqwest::Method::PUT,
        "/admin/prompts/support/experiment",
        json!({"variants": [{"version": 1, "weight": 50}, {"version": 2, "weight": 40}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sum to 90"),
        "{err}"
    );
    assert_eq!(listing(dir.path()), before);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("support/prompt.yaml")).unwrap(),
        manifest
    );
}

#[tokio::test]
async fn rollback_and_experiments_edit_the_manifest() {
    let dir = prompts();
    write(
        dir.path(),
        "support/prompt.yaml",
        "# owned by the support team\ndescription: Support agent\ntags: [support]\nactive: 2\nlabels: {stable: 1}\n",
    );
    let app = admin_app(dir.path()).await;
    let (status, body) = post(
        &app,
        "/admin/prompts/support/rollback",
        json!({"version": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, detail) = get(&app, "/admin/prompts/support").await;
    assert_eq!(detail["active_version"], 1);

    let (status, body) = send(
        &app,
        reqwest::Method::PUT,
        "/admin/prompts/support/experiment",
        json!({"version_a": 1, "version_b": 2, "traffic_split": 0.2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["experiment"]["traffic_split"], 0.2);
    let manifest = std::fs::read_to_string(dir.path().join("support/prompt.yaml")).unwrap();
    assert!(
        manifest.starts_with("# owned by the support team\n"),
        "{manifest}"
    );
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [], "user": "u7", "prompt": {"id": "support", "variables": {"company": "A", "tier": "x"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-prompt-selection"], "experiment");

    let (status, _) = send(
        &app,
        reqwest::Method::DELETE,
        "/admin/prompts/support/experiment",
        json!(null),
    )
    .await;
    assert_eq!(status, 200);
    let (_, detail) = get(&app, "/admin/prompts/support").await;
    assert_eq!(detail["experiment"], Value::Null);
    let (_, audit) = get(&app, "/admin/audit?prompt=support").await;
    let experiment_changes = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "experiment_changed" && e["actor"] == "carol@example.com")
        .count();
    assert_eq!(experiment_changes, 2);
}

#[tokio::test]
async fn concurrent_writes_all_land_with_distinct_numbers() {
    let dir = prompts();
    let app = std::sync::Arc::new(admin_app(dir.path()).await);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            post(
                &app,
                "/admin/prompts/support/versions",
                json!({"template": format!("Version by writer {i}")}),
            )
            .await
        }));
    }
    let mut numbers = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 201, "{body}");
        numbers.push(body["version"].as_u64().unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (3..=12).collect::<Vec<u64>>());
    for n in 3..=12 {
        assert!(dir.path().join(format!("support/v{n}.prompt")).exists());
    }
    let (_, detail) = get(&app, "/admin/prompts/support").await;
    assert_eq!(detail["versions"].as_array().unwrap().len(), 12);
}

#[tokio::test]
async fn version_numbers_are_never_reused() {
    let dir = prompts();
    let app = admin_app(dir.path()).await;
    let (_, created) = post(
        &app,
        "/admin/prompts/support/versions",
        json!({"template": "three"}),
    )
    .await;
    assert_eq!(created["version"], 3);
    std::fs::remove_file(dir.path().join("support/v3.prompt")).unwrap();
    // Restart: the audit trail remembers v3.
    let state_dir = app.state_dir.path().to_path_buf();
    app.server
        .shutdown(std::time::Duration::from_secs(2))
        .await
        .unwrap();
    let app = spawn_with(dir.path(), Upstream::Echo, |c| {
        c.admin_token = Some(TOKEN.into());
        c.state_dir = state_dir;
    })
    .await;
    let (_, created) = post(
        &app,
        "/admin/prompts/support/versions",
        json!({"template": "four"}),
    )
    .await;
    assert_eq!(created["version"], 4);
}

#[tokio::test]
async fn auth_matrix() {
    let dir = prompts();
    // No token: reads only.
    let open = spawn_app(dir.path(), Upstream::Echo).await;
    let resp = open
        .client
        .get(open.url("/admin/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = open
        .client
        .post(open.url("/admin/prompts/support/rollback"))
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--admin-token")
    );

    // A token: every call needs it.
    let app = admin_app(dir.path()).await;
    let cases = [
        (reqwest::Method::GET, None, 401),
        (reqwest::Method::GET, Some("wrong"), 401),
        (reqwest::Method::GET, Some(TOKEN), 200),
        (reqwest::Method::POST, None, 401),
        (reqwest::Method::POST, Some("wrong"), 401),
        (reqwest::Method::POST, Some(TOKEN), 200),
    ];
    for (method, token, expected) in cases {
        let path = if method == reqwest::Method::GET {
            "/admin/prompts"
        } else {
            "/admin/prompts/support/rollback"
        };
        let mut req = app.client.request(method.clone(), app.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.json(&json!({"version": 2})).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), expected, "{method} with {token:?}");
    }
}

#[tokio::test]
async fn prompt_names_from_urls_are_checked() {
    let dir = prompts();
    let app = admin_app(dir.path()).await;
    assert_eq!(get(&app, "/admin/prompts/..%2F..%2Fetc").await.0, 400);
    let (status, _) = post(
        &app,
        "/admin/prompts/..%2Fescape/versions",
        json!({"template": "x"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(
        &app,
        "/admin/prompts/Upper/versions",
        json!({"template": "x"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(!dir.path().parent().unwrap().join("escape").exists());
}

#[tokio::test]
async fn admin_listen_moves_admin_and_metrics_off_the_data_port() {
    let dir = prompts();
    let app = spawn_with(dir.path(), Upstream::Echo, |c| {
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let admin = format!("http://{}", app.server.admin_addr().unwrap());
    assert_eq!(
        app.client
            .get(app.url("/admin/status"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let resp = app
        .client
        .get(format!("{admin}/admin/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app
        .client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("promptgate_prompts_loaded 2")
    );
    // The data port still proxies.
    let resp = app
        .post_json("/v1/chat/completions", &json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
