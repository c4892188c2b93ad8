//! The prompt console through the real server: sign-in and sessions, CSRF, the security
//! headers, escaping, every page and endpoint, writes through the admin write path, read-only
//! modes.

mod common;

use common::*;
use promptgate::config::Upstream;
use serde_json::{Value, json};

const TOKEN: &str = "console-test-token";

struct Console {
    app: TestApp,
    client: reqwest::Client,
    cookie: Option<String>,
    origin: String,
}

impl Console {
    async fn start(dir: &std::path::Path, token: bool) -> Console {
        let app = spawn_with(dir, Upstream::Echo, |c| {
            if token {
                c.admin_token = Some(TOKEN.into());
            }
        })
        .await;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let origin = app.base.clone();
        Console {
            app,
            client,
            cookie: None,
            origin,
        }
    }

    async fn signed_in(dir: &std::path::Path) -> Console {
        let mut c = Console::start(dir, true).await;
        let resp = c
            .post("/console/sign-in", &[("token", TOKEN), ("name", "ana")])
            .await;
        assert_eq!(resp.status(), 303);
        let cookie = resp.headers()["set-cookie"].to_str().unwrap();
        c.cookie = Some(cookie.split(';').next().unwrap().to_owned());
        c
    }

    fn with_cookie(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cookie {
            Some(cookie) => req.header("cookie", cookie),
            None => req,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.with_cookie(self.client.get(self.app.url(path)))
            .send()
            .await
            .unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let resp = self.get(path).await;
        assert_eq!(resp.status(), 200, "GET {path}");
        assert_eq!(
            resp.headers()["content-security-policy"],
            promptgate::console::CSP,
            "GET {path}"
        );
        resp.text().await.unwrap()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.with_cookie(self.client.post(self.app.url(path)))
            .header("origin", &self.origin)
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()["location"].to_str().unwrap().to_owned()
}

fn read(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

#[tokio::test]
async fn sign_in_exchanges_the_token_for_a_strict_session_cookie() {
    let dir = prompts();
    let mut c = Console::start(dir.path(), true).await;
    let resp = c.get("/console/prompts/support").await;
    assert_eq!(resp.status(), 303);
    assert_eq!(
        location(&resp),
        "/console/sign-in?next=/console/prompts/support"
    );

    let resp = c
        .post("/console/sign-in", &[("token", "wrong"), ("name", "ana")])
        .await;
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains("wrong admin token"));
    let resp = c
        .post("/console/sign-in", &[("token", TOKEN), ("name", " ")])
        .await;
    assert_eq!(resp.status(), 400);

    let resp = c
        .post(
            "/console/sign-in",
            &[
                ("token", TOKEN),
                ("name", "ana"),
                ("next", "/console/audit"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 303);
    assert_eq!(location(&resp), "/console/audit");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/console"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    c.cookie = Some(cookie.split(';').next().unwrap().to_owned());
    assert!(c.page("/console/").await.contains(">ana<"));

    // Behind a TLS terminator the cookie is Secure.
    let resp = c
        .client
        .post(c.app.url("/console/sign-in"))
        .header("origin", &c.origin)
        .header("x-forwarded-proto", "https")
        .form(&[("token", TOKEN), ("name", "bo")])
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );

    // An open redirect is not possible.
    let resp = c
        .post(
            "/console/sign-in",
            &[
                ("token", TOKEN),
                ("name", "ana"),
                ("next", "https://evil.example/"),
            ],
        )
        .await;
    assert_eq!(location(&resp), "/console/");

    // Signing out ends the session.
    let resp = c.post("/console/sign-out", &[]).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(c.get("/console/").await.status(), 303);
}

#[tokio::test]
async fn every_page_renders_with_the_security_headers() {
    let dir = prompts();
    let c = Console::signed_in(dir.path()).await;
    for (path, expect) in [
        ("/console/", "Support agent"),
        (
            "/console/prompts/support",
            "Prioritize this enterprise customer.",
        ),
        ("/console/prompts/support?v=1", "You help customers of"),
        ("/console/prompts/support/diff?a=1&b=2", "temperature: 0.3"),
        (
            "/console/prompts/support/diff?a=1&b=2&view=unified",
            "@@ -1,",
        ),
        ("/console/prompts/support/new?from=2", "Save v3"),
        (
            "/console/prompts/support/rollback?version=1",
            "active version: v2 → v1",
        ),
        (
            "/console/prompts/support/label?label=stable&version=2",
            "label stable: v1 → v2",
        ),
        ("/console/prompts/support/playground", "var_company"),
        ("/console/prompts/ab/experiment", "Variants"),
        ("/console/experiments", "ab"),
        ("/console/audit", "prompt added"),
        ("/console/sign-in", "Admin token"),
    ] {
        let html = c.page(path).await;
        assert!(html.contains(expect), "GET {path} lacks {expect:?}");
        assert!(
            !html.contains("<script>") && !html.contains(" style="),
            "GET {path}: no inline script or style under the CSP"
        );
    }
    let resp = c.get("/console/static/console.js").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(c.get("/console/static/nope.js").await.status(), 404);
    let resp = c.get("/console/prompts/nope").await;
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("unknown prompt `nope`"));
    assert_eq!(c.get("/console/prompts/support?v=9").await.status(), 404);
}

#[tokio::test]
async fn text_from_prompt_files_is_escaped() {
    let dir = prompts();
    write(
        dir.path(),
        "xss/v1.prompt",
        "---\nnotes: \"<img src=x onerror=alert(2)>\"\n---\nHi <script>alert(1)</script> {{ name }}\n",
    );
    write(
        dir.path(),
        "xss/prompt.yaml",
        "description: \"<b>bold</b>\"\ntags: [\"<i>t</i>\"]\n",
    );
    let c = Console::signed_in(dir.path()).await;
    for path in [
        "/console/",
        "/console/prompts/xss",
        "/console/prompts/xss/new",
        "/console/prompts/xss/diff?a=1&b=1",
    ] {
        let html = c.page(path).await;
        for raw in ["<script>alert", "<b>bold", "<i>t</i>", "<img src=x"] {
            assert!(!html.contains(raw), "GET {path} has raw {raw:?}");
        }
    }
    let html = c.page("/console/prompts/xss").await;
    assert!(html.contains("Hi &lt;script&gt;alert(1)&lt;&#x2f;script&gt;"));
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
    let resp = c
        .post(
            "/console/prompts/xss/playground",
            &[
                ("var_name", "<svg onload=alert(3)>"),
                ("message", "hi"),
                ("action", "preview"),
            ],
        )
        .await;
    let html = resp.text().await.unwrap();
    assert!(!html.contains("<svg onload"), "playground echoes escaped");
    assert!(html.contains("&lt;svg onload=alert(3)&gt;"));
}

#[tokio::test]
async fn writes_from_another_origin_are_refused() {
    let dir = prompts();
    let c = Console::signed_in(dir.path()).await;
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let mut req = c
            .client
            .post(c.app.url("/console/prompts/support/rollback"))
            .header("cookie", c.cookie.as_deref().unwrap())
            .form(&[("version", "1")]);
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "origin {origin:?}");
    }
    assert!(read(dir.path(), "support/prompt.yaml").contains("active: 2"));
    // A sign-in from another origin is refused too (login CSRF).
    let resp = c
        .client
        .post(c.app.url("/console/sign-in"))
        .header("origin", "http://evil.example")
        .form(&[("token", TOKEN), ("name", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Browsers that send no Origin but say same-origin are let through.
    let resp = c
        .client
        .post(c.app.url("/console/prompts/support/rollback"))
        .header("cookie", c.cookie.as_deref().unwrap())
        .header("sec-fetch-site", "same-origin")
        .form(&[("version", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
}

#[tokio::test]
async fn writes_need_a_session() {
    let dir = prompts();
    let c = Console::start(dir.path(), true).await;
    let resp = c
        .post("/console/prompts/support/versions", &[("template", "x")])
        .await;
    assert_eq!(resp.status(), 401);
    assert!(!dir.path().join("support/v3.prompt").exists());
    // The admin token as a bearer works too, as for the admin API.
    let resp = c
        .client
        .post(c.app.url("/console/prompts/support/rollback"))
        .header("origin", &c.origin)
        .bearer_auth(TOKEN)
        .form(&[("version", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
}

#[tokio::test]
async fn validate_places_problems_at_line_and_column() {
    let dir = prompts();
    let c = Console::signed_in(dir.path()).await;
    let check = |form: Vec<(&'static str, &'static str)>| {
        let c = &c;
        async move {
            let resp = c.post("/console/prompts/support/validate", &form).await;
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let v = check(vec![(
        "template",
        "Hello {{ company }}\nline two {{ oops }\n",
    )])
    .await;
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["field"], "template");
    assert_eq!(v["problems"][0]["line"], 2);
    assert_eq!(v["problems"][0]["column"], 18);
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("syntax error")
    );

    let v = check(vec![
        (
            "template",
            "For {{ company }}, tier {{ tier }}; today {{ today }}",
        ),
        ("preview_variables", r#"{"company": "Acme"}"#),
    ])
    .await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["variables"],
        json!(["company", "tier"]),
        "built-ins left out"
    );
    let preview = v["preview"].as_str().unwrap();
    assert!(
        preview.starts_with("For Acme, tier «tier»; today 20"),
        "{preview}"
    );

    let v = check(vec![
        ("template", "Hi"),
        ("temperature", "7"),
        ("params", r#"{"messages": []}"#),
    ])
    .await;
    let fields: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["temperature", "params"], "{v}");

    let v = check(vec![("template", "Hi"), ("max_tokens", "many")]).await;
    assert_eq!(v["problems"][0]["field"], "max_tokens");
    // Validating changes nothing.
    assert!(!dir.path().join("support/v3.prompt").exists());
}

#[tokio::test]
async fn saving_creates_the_next_version_with_the_signed_in_person_as_actor() {
    let dir = prompts();
    let c = Console::signed_in(dir.path()).await;
    let resp = c
        .post(
            "/console/prompts/support/versions",
            &[
                (
                    "template",
                    "You help {{ company }} customers.\r\nBe brief.\r\n",
                ),
                ("model", "gpt-4o-mini"),
                ("temperature", "0.2"),
                ("params", r#"{"top_p": 0.5}"#),
                ("notes", "shorter"),
                ("activate", "on"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 303);
    assert_eq!(
        location(&resp),
        "/console/prompts/support?done=saved_active&n=3&v=3"
    );
    let file = read(dir.path(), "support/v3.prompt");
    assert!(file.contains("model: \"gpt-4o-mini\""), "{file}");
    assert!(file.contains("created_by: \"ana\""), "{file}");
    assert!(
        file.ends_with("---\nYou help {{ company }} customers.\nBe brief.\n"),
        "{file}"
    );
    assert!(read(dir.path(), "support/prompt.yaml").contains("active: 3"));
    let html = c.page(&location(&resp)).await;
    assert!(html.contains("Saved v3; it is now active."));
    assert!(html.contains("top_p 0.5"));

    let audit = std::fs::read_to_string(c.app.state_dir.path().join("audit.jsonl")).unwrap();
    let mine: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["actor"] == "ana")
        .collect();
    assert!(
        mine.iter().any(|e| e["action"] == "version_added"
            && e["version"] == 3
            && e["source"] == "console")
    );
    let html = c.page("/console/audit?actor=ana").await;
    assert!(html.contains("diff?a=2&amp;b=3"), "{html}");
    assert!(html.contains("added v3"));

    // A draft that does not validate is shown again with its problems; nothing is written.
    let resp = c
        .post(
            "/console/prompts/support/versions",
            &[("template", "{% if %}")],
        )
        .await;
    assert_eq!(resp.status(), 422);
    let html = resp.text().await.unwrap();
    assert!(html.contains("Nothing was saved") || html.contains("syntax error"));
    assert!(!dir.path().join("support/v4.prompt").exists());
}

#[tokio::test]
async fn rollback_and_label_moves_change_the_manifest() {
    let dir = prompts();
    let c = Console::signed_in(dir.path()).await;
    let html = c.page("/console/prompts/support/rollback?version=1").await;
    assert!(html.contains("active version: v2 → v1"));
    assert!(html.contains("What requests will get instead"));
    let resp = c
        .post("/console/prompts/support/rollback", &[("version", "1")])
        .await;
    assert_eq!(
        location(&resp),
        "/console/prompts/support?done=rolled_back&n=1&v=1"
    );
    assert!(read(dir.path(), "support/prompt.yaml").contains("active: 1"));
    assert_eq!(
        c.app
            .server
            .state()
            .prompts
            .load()
            .get("support")
            .unwrap()
            .active,
        1
    );

    let resp = c
        .post(
            "/console/prompts/support/label",
            &[("label", "canary"), ("version", "2")],
        )
        .await;
    assert_eq!(resp.status(), 303);
    let labels = c
        .app
        .server
        .state()
        .prompts
        .load()
        .get("support")
        .unwrap()
        .labels
        .clone();
    assert_eq!(labels.get("canary"), Some(&2));
    assert_eq!(labels.get("stable"), Some(&1));
    let resp = c
        .post(
            "/console/prompts/support/label",
            &[("label", "stable"), ("version", "")],
        )
        .await;
    assert_eq!(resp.status(), 303);
    let labels = c
        .app
        .server
        .state()
        .prompts
        .load()
        .get("support")
        .unwrap()
        .labels
        .clone();
    assert_eq!(labels.get("stable"), None);

    let resp = c
        .post("/console/prompts/support/rollback", &[("version", "9")])
        .await;
    assert_eq!(resp.status(), 404);
    let resp = c
        .post(
            "/console/prompts/support/label",
            &[("label", "Bad Label"), ("version", "1")],
        )
        .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn without_a_token_the_console_is_read_only() {
    let dir = prompts();
    let c = Console::start(dir.path(), false).await;
    let html = c.page("/console/prompts/support").await;
    assert!(html.contains("read-only"));
    assert!(html.contains("runs without an admin token"));
    for (path, form) in [
        ("/console/prompts/support/versions", vec![("template", "x")]),
        ("/console/prompts/support/rollback", vec![("version", "1")]),
        (
            "/console/prompts/support/label",
            vec![("label", "x"), ("version", "1")],
        ),
        (
            "/console/prompts/ab/experiment",
            vec![("w_1", "50"), ("w_2", "50")],
        ),
        ("/console/prompts/ab/experiment/end", vec![]),
        ("/console/sign-in", vec![("token", "x"), ("name", "x")]),
    ] {
        let resp = c.post(path, &form).await;
        assert_eq!(resp.status(), 403, "POST {path}");
    }
    let resp = c
        .post(
            "/console/prompts/support/playground/stream",
            &[("message", "hi")],
        )
        .await;
    assert_eq!(resp.status(), 403);
    // Reads that change nothing still work.
    let resp = c
        .post("/console/prompts/support/validate", &[("template", "Hi")])
        .await;
    assert_eq!(resp.status(), 200);
    assert!(!dir.path().join("support/v3.prompt").exists());
    assert!(read(dir.path(), "support/prompt.yaml").contains("active: 2"));
}

#[cfg(unix)]
#[tokio::test]
async fn a_read_only_prompts_folder_says_changes_go_through_git() {
    use std::os::unix::fs::PermissionsExt;
    let dir = prompts();
    let c = Console::signed_in(dir.path()).await;
    let set_mode =
        |mode| std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    set_mode(0o555);
    let html = c.page("/console/prompts/support/new").await;
    let resp = c
        .post(
            "/console/prompts/support/versions",
            &[("template", "new text")],
        )
        .await;
    let status = resp.status();
    let body = resp.text().await.unwrap();
    let rollback = c
        .post("/console/prompts/support/rollback", &[("version", "1")])
        .await
        .status();
    set_mode(0o755);
    assert!(
        html.contains("changes go through git"),
        "the editor says so"
    );
    assert_eq!(status, 403);
    assert!(body.contains("changes go through git"));
    assert_eq!(rollback, 403);
    assert!(!dir.path().join("support/v3.prompt").exists());
    assert!(read(dir.path(), "support/prompt.yaml").contains("active: 2"));
}

#[tokio::test]
async fn playground_shows_the_exact_request_and_streams_the_echo_answer() {
    let dir = prompts();
    let c = Console::signed_in(dir.path()).await;
    let html = c.page("/console/prompts/ab/playground").await;
    assert!(html.contains("experiment assigns by user"));
    let resp = c
        .post(
            "/console/prompts/support/playground",
            &[
                ("version", "label:stable"),
                ("var_company", "Acme"),
                ("message", "where is my order?"),
                ("user", "u-1"),
                ("action", "preview"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("chosen by <strong>label</strong>"), "{html}");
    assert!(html.contains("You help customers of Acme."));
    assert!(html.contains("where is my order?"));

    // JSON values are allowed; a missing variable is named.
    let resp = c
        .post(
            "/console/prompts/support/playground",
            &[
                ("version", "2"),
                ("var_company", "{\"n\": 1}"),
                ("message", "hi"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 422);
    assert!(resp.text().await.unwrap().contains("`tier`"));

    // The A/B arm follows the user, as serving does.
    let resp = c
        .post(
            "/console/prompts/ab/playground",
            &[("message", "hi"), ("user", "user-7"), ("action", "preview")],
        )
        .await;
    let html = resp.text().await.unwrap();
    assert!(html.contains("chosen by <strong>experiment</strong>"));
    let arm = promptgate::select::assign(
        "ab",
        c.app
            .server
            .state()
            .prompts
            .load()
            .get("ab")
            .unwrap()
            .experiment
            .as_ref()
            .unwrap(),
        Some("user-7"),
    );
    assert!(
        html.contains(&format!("<span class=\"ver\">v{arm}</span>")),
        "{html}"
    );

    let resp = c
        .post(
            "/console/prompts/support/playground/stream",
            &[
                ("version", "1"),
                ("var_company", "Acme"),
                ("message", "ping"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let answer: String = lines
        .iter()
        .filter(|l| l["type"] == "delta")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert!(answer.contains("You help customers of Acme."), "{answer}");
    let done = lines.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["status"], 200);
    assert!(done["completion_tokens"].as_u64().unwrap() > 0);
    assert!(done["latency_ms"].as_f64().unwrap() >= 0.0);

    // The whole answer without script.
    let resp = c
        .post(
            "/console/prompts/support/playground",
            &[
                ("version", "1"),
                ("var_company", "Acme"),
                ("message", "ping"),
                ("action", "send"),
            ],
        )
        .await;
    let html = resp.text().await.unwrap();
    assert!(html.contains("id=\"answer\""));
    assert!(html.contains("status 200"));
    // Playground sends are not traffic.
    assert_eq!(c.app.server.state().recorder.last_hour("support"), (0, 0));
}

#[tokio::test]
async fn experiments_start_report_and_end_from_the_form() {
    let dir = prompts();
    let c = Console::signed_in(dir.path()).await;
    let resp = c
        .post(
            "/console/prompts/support/experiment",
            &[("w_1", "30"), ("w_2", "70"), ("salt", "s1")],
        )
        .await;
    assert_eq!(resp.status(), 303, "{:?}", resp.text().await);
    let manifest = read(dir.path(), "support/prompt.yaml");
    assert!(manifest.contains("{version: 1, weight: 30}"), "{manifest}");

    // Weights that do not add up are shown as the manifest check says, nothing written.
    let resp = c
        .post(
            "/console/prompts/support/experiment",
            &[("w_1", "30"), ("w_2", "30")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("id=\"exp-error\""));
    assert_eq!(read(dir.path(), "support/prompt.yaml"), manifest);

    // Traffic and feedback, then the report.
    for i in 0..40 {
        let id = format!("req-{i}");
        let resp = c
            .app
            .post_json(
                "/v1/chat/completions",
                &json!({"model": "echo", "user": format!("user-{i}"),
                        "messages": [{"role": "user", "content": "hi"}],
                        "prompt": {"id": "support", "variables": {"company": "Acme", "tier": "free"}}}),
            )
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let version: u32 = resp.headers()["x-prompt-version"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let score = if version == 2 { 0.9 } else { 0.5 } + f64::from(i % 5) * 0.01;
        let resp = c
            .app
            .post_json(
                "/v1/feedback",
                &json!({"request_id": id, "metrics": {"quality_score": score}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let html = c.page("/console/prompts/support/experiment").await;
    assert!(html.contains("id=\"quality-chart\""));
    assert!(html.contains("<circle class=\"mean win\""), "{html}");
    assert!(html.contains("v2 wins"));
    assert!(html.contains("Latency p50 / p95 / p99"));
    let list = c.page("/console/").await;
    assert!(list.contains("v1 30% · v2 70%"));
    assert!(
        list.contains("<td class=\"num\">40</td>"),
        "last-hour requests"
    );
    let overview = c.page("/console/experiments").await;
    assert!(overview.contains("v2 wins"));

    let resp = c.post("/console/prompts/support/experiment/end", &[]).await;
    assert_eq!(resp.status(), 303);
    assert!(!read(dir.path(), "support/prompt.yaml").contains("experiment"));
}

#[tokio::test]
async fn a_refused_reload_is_a_banner_with_each_problem() {
    let dir = prompts();
    let c = Console::signed_in(dir.path()).await;
    // Break another prompt on disk, then make a change that triggers a reload.
    write(
        dir.path(),
        "ab/v3.prompt",
        "---\nmodel: m\ntemprature: 1\n---\nHi\n",
    );
    let resp = c
        .post("/console/prompts/support/rollback", &[("version", "1")])
        .await;
    assert!(
        location(&resp).contains("done=not_serving"),
        "{}",
        location(&resp)
    );
    let html = c.page("/console/").await;
    assert!(html.contains("The last reload was refused"));
    assert!(
        html.contains("ab&#x2f;v3.prompt:3: unknown key `temprature`"),
        "{html}"
    );
}

#[tokio::test]
async fn the_list_filters_by_search_and_tag() {
    let dir = prompts();
    let c = Console::signed_in(dir.path()).await;
    let html = c.page("/console/?tag=support").await;
    assert!(html.contains("/console/prompts/support\""));
    assert!(!html.contains("/console/prompts/ab\""));
    let html = c.page("/console/?q=agent").await;
    assert!(html.contains("/console/prompts/support\""));
    let html = c.page("/console/?q=nothing-like-this").await;
    assert!(html.contains("No prompts match."));
}

#[tokio::test]
async fn the_playground_lists_the_examples_it_picks() {
    let dir = prompts();
    write(
        dir.path(),
        "faq/v1.prompt",
        "You answer questions for Acme.",
    );
    write(
        dir.path(),
        "faq/prompt.yaml",
        "examples: {strategy: quality, count: 2, format: messages}\n",
    );
    write(
        dir.path(),
        "faq/examples.jsonl",
        "{\"input\": \"How do I reset my password?\", \"output\": \"Use the <reset> link.\", \"quality_score\": 0.9}\n\
         {\"input\": \"Can I pay by invoice?\", \"output\": \"Yes, on the annual plan.\", \"quality_score\": 0.8}\n\
         {\"input\": \"Low quality\", \"output\": \"meh\", \"quality_score\": 0.1}\n",
    );
    let c = Console::signed_in(dir.path()).await;
    let resp = c
        .post(
            "/console/prompts/faq/playground",
            &[("message", "password?"), ("action", "preview")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("Examples it picks"));
    assert!(html.contains("How do I reset my password?"));
    assert!(html.contains("Use the &lt;reset&gt; link."));
    assert!(html.contains("Can I pay by invoice?"));
    assert!(!html.contains("Low quality"));
}

#[tokio::test]
async fn a_sample_ratio_mismatch_is_a_clear_warning() {
    let dir = prompts();
    let c = Console::signed_in(dir.path()).await;
    let experiment = c
        .app
        .server
        .state()
        .prompts
        .load()
        .get("ab")
        .unwrap()
        .experiment
        .clone()
        .unwrap();
    // Only users the 50/50 split sends to v1: a broken split, as the check sees it.
    let users: Vec<String> = (0..2000)
        .map(|i| format!("user-{i}"))
        .filter(|u| promptgate::select::assign("ab", &experiment, Some(u)) == 1)
        .take(60)
        .collect();
    for user in &users {
        let resp = c
            .app
            .post_json(
                "/v1/chat/completions",
                &json!({"model": "echo", "user": user, "messages": [{"role": "user", "content": "hi"}],
                        "prompt": {"id": "ab"}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let html = c.page("/console/prompts/ab/experiment").await;
    assert!(html.contains("id=\"srm\""), "{html}");
    assert!(html.contains("Sample ratio mismatch"));
    assert!(
        c.page("/console/experiments")
            .await
            .contains("sample ratio mismatch")
    );
}

#[tokio::test]
async fn editing_a_chat_version_keeps_the_front_matter_the_editor_has_no_field_for() {
    let dir = prompts();
    write(
        dir.path(),
        "chatty/v1.prompt",
        "---\nmodel: gpt-4o\nchat: true\nclient_system: separate\nresponse_format: {type: json_schema, json_schema: {name: answer, schema: {type: object}}}\n---\nsystem:\nYou help {{ company }}.\nconversation:\n",
    );
    let c = Console::signed_in(dir.path()).await;
    let html = c.page("/console/prompts/chatty/new").await;
    assert!(html.contains("chat: true"), "{html}");
    assert!(html.contains("client_system: separate"), "{html}");
    assert!(!html.contains("model: gpt-4o"), "{html}");

    let resp = c
        .post(
            "/console/prompts/chatty/versions",
            &[
                ("template", "system:\r\nYou help {{ company }} well.\r\nconversation:\r\n"),
                ("model", "gpt-4o"),
                (
                    "front",
                    "chat: true\r\nclient_system: separate\r\nresponse_format: {type: json_schema, json_schema: {name: answer, schema: {type: object}}}",
                ),
                ("activate", "on"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 303, "{}", resp.text().await.unwrap());
    let file = read(dir.path(), "chatty/v2.prompt");
    assert!(
        file.contains("\nchat: true\nclient_system: separate\nresponse_format: {type: json_schema"),
        "{file}"
    );

    // Served as a chat template: the system message, then the client's conversation.
    let resp = c
        .app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hello"}], "prompt": {"id": "chatty", "variables": {"company": "Acme"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-prompt-version"], "2");
    let body: Value = resp.json().await.unwrap();
    let sent = body.to_string();
    assert!(sent.contains("You help Acme well."), "{sent}");
    assert!(sent.contains("json_schema"), "{sent}");
}
