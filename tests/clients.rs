//! What real SDKs and frameworks send, through the real server: their own system message,
//! non-ASCII header variables, request ids, OpenAI's own prompt ids, Azure OpenAI paths and
//! base URLs without `/v1`.

mod common;

use common::{spawn_app, spawn_with, upstream_of, write};
use promptgate::config::Upstream;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn completion() -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})
}

/// One prompt per `client_system` mode, and a plain one with a variable.
fn prompts() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "merged/v1.prompt",
        "You are the agent of {{ company }}.",
    );
    write(
        root,
        "separate/v1.prompt",
        "---\nclient_system: separate\n---\nYou are the agent of {{ company }}.",
    );
    write(
        root,
        "replaced/v1.prompt",
        "---\nclient_system: replace\n---\nYou are the agent of {{ company }}.",
    );
    dir
}

async fn recording_upstream() -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion())
                .insert_header("x-request-id", "req_upstream123"),
        )
        .mount(&mock)
        .await;
    mock
}

fn body_of(req: &Request) -> Value {
    serde_json::from_slice(&req.body).unwrap()
}

fn conversation(prompt: &str) -> Value {
    json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Always answer in French."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Salut"},
            {"role": "user", "content": "Bye"}
        ],
        "prompt": {"id": prompt, "variables": {"company": "Acme"}}
    })
}

#[tokio::test]
async fn the_client_system_message_is_merged_kept_or_replaced_as_the_version_says() {
    let dir = prompts();
    let mock = recording_upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    for name in ["merged", "separate", "replaced"] {
        let resp = app
            .post_json("/v1/chat/completions", &conversation(name))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name}");
    }
    let received = mock.received_requests().await.unwrap();
    let messages: Vec<Value> = received
        .iter()
        .map(|r| body_of(r)["messages"].clone())
        .collect();
    let rest = json!([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Salut"},
        {"role": "user", "content": "Bye"}
    ]);
    // merge (the default): one leading system message.
    let mut expected = vec![json!({"role": "system",
        "content": "You are the agent of Acme.\n\nAlways answer in French."})];
    expected.extend(rest.as_array().unwrap().iter().cloned());
    assert_eq!(messages[0], Value::Array(expected));
    // separate: both, the prompt's first.
    let mut expected = vec![
        json!({"role": "system", "content": "You are the agent of Acme."}),
        json!({"role": "system", "content": "Always answer in French."}),
    ];
    expected.extend(rest.as_array().unwrap().iter().cloned());
    assert_eq!(messages[1], Value::Array(expected));
    // replace: the client's is gone.
    let mut expected = vec![json!({"role": "system", "content": "You are the agent of Acme."})];
    expected.extend(rest.as_array().unwrap().iter().cloned());
    assert_eq!(messages[2], Value::Array(expected));
}

#[tokio::test]
async fn responses_instructions_follow_the_same_rule() {
    let dir = prompts();
    let mock = recording_upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    for name in ["merged", "separate", "replaced"] {
        let body = json!({"model": "gpt-4o", "input": "Hi", "instructions": "Be brief.",
                          "prompt": {"id": name, "variables": {"company": "Acme"}}});
        let resp = app.post_json("/v1/responses", &body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}");
    }
    let received: Vec<Value> = mock
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(body_of)
        .collect();
    assert_eq!(
        received[0]["instructions"],
        "You are the agent of Acme.\n\nBe brief."
    );
    assert_eq!(received[0]["input"], "Hi");
    assert_eq!(received[1]["instructions"], "You are the agent of Acme.");
    assert_eq!(
        received[1]["input"],
        json!([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    );
    assert_eq!(received[2]["instructions"], "You are the agent of Acme.");
    assert_eq!(received[2]["input"], "Hi");
}

#[tokio::test]
async fn a_bad_client_system_value_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p/v1.prompt",
        "---\nmodel: gpt-4o\nclient_system: both\n---\nHi",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_promptgate"))
        .args(["validate", "--prompts"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("p/v1.prompt:3"), "{printed}");
    assert!(
        printed.contains("`client_system` must be `merge`, `separate` or `replace`, not `both`"),
        "{printed}"
    );
}

#[tokio::test]
async fn header_variables_may_be_utf8_or_escaped() {
    let dir = prompts();
    let mock = recording_upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    // Raw UTF-8 bytes in the header value, as Node's JSON.stringify leaves them.
    let raw = reqwest::header::HeaderValue::from_bytes("{\"company\": \"Café Zoë ☕\"}".as_bytes())
        .unwrap();
    for value in [
        raw,
        reqwest::header::HeaderValue::from_static(
            "{\"company\": \"Caf\\u00e9 Zo\\u00eb \\u2615\"}",
        ),
    ] {
        let resp = app
            .post_json(
                "/v1/chat/completions",
                &json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}),
            )
            .header("x-prompt-name", "merged")
            .header("x-prompt-variables", value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    for r in mock.received_requests().await.unwrap().iter().take(2) {
        assert_eq!(
            body_of(r)["messages"][0]["content"],
            "You are the agent of Café Zoë ☕."
        );
    }
    // Bytes that are not UTF-8 are ISO-8859-1, as Node's `fetch` sends `é`.
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": []}),
        )
        .header("x-prompt-name", "merged")
        .header(
            "x-prompt-variables",
            reqwest::header::HeaderValue::from_bytes(b"{\"company\": \"Caf\xe9\"}").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let received = mock.received_requests().await.unwrap();
    assert_eq!(
        body_of(received.last().unwrap())["messages"][0]["content"],
        "You are the agent of Café."
    );
}

#[tokio::test]
async fn the_upstream_request_id_reaches_the_client_and_feedback_takes_either_id() {
    let dir = prompts();
    let mock = recording_upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let resp = app
        .post_json("/v1/chat/completions", &conversation("merged"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req_upstream123");
    let own = resp.headers()["x-promptgate-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(own.len(), 36, "a UUID: {own}");
    for id in ["req_upstream123", own.as_str()] {
        let resp = app
            .post_json(
                "/v1/feedback",
                &json!({"request_id": id, "metrics": {"quality_score": 1.0}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "feedback for {id}");
    }
    // An upstream that sends no id: promptgate's own is `x-request-id` too.
    let echo = spawn_app(dir.path(), Upstream::Echo).await;
    let resp = echo
        .post_json("/v1/chat/completions", &conversation("merged"))
        .header("x-request-id", "client-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-1");
    assert_eq!(resp.headers()["x-promptgate-request-id"], "client-1");
}

#[tokio::test]
async fn openai_prompt_ids_pass_through_on_responses() {
    let dir = prompts();
    let mock = recording_upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let sent = r#"{"model":"gpt-4o","prompt":{"id":"pmpt_68b0c1d2e3","version":"2","variables":{"city":"Paris"}},"input":"Hi"}"#;
    let resp = app
        .client
        .post(app.url("/v1/responses"))
        .header("content-type", "application/json")
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-prompt-name").is_none());
    let received = mock.received_requests().await.unwrap();
    assert_eq!(received[0].body, sent.as_bytes(), "forwarded byte for byte");
    // On chat completions there is no such thing: a 404 as for any unknown prompt.
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": [], "prompt": {"id": "pmpt_68b0c1d2e3"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn an_unknown_prompt_names_at_most_five_close_names() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..30 {
        write(dir.path(), &format!("prompt_{i:02}/v1.prompt"), "Hi");
    }
    write(dir.path(), "customer_support/v1.prompt", "Hi");
    let app = spawn_app(dir.path(), Upstream::Echo).await;
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": [], "prompt": {"id": "customer_suport"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("`customer_support`"), "{message}");
    assert_eq!(
        message.matches('`').count(),
        2 * 6,
        "the name asked + five: {message}"
    );
    assert!(message.contains("31 in all"), "{message}");
}

#[tokio::test]
async fn azure_deployment_paths_inject_and_carry_api_version_and_api_key() {
    let dir = prompts();
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/openai/deployments/gpt4o-prod/chat/completions"))
        .and(query_param("api-version", "2024-10-21"))
        .and(header("api-key", "azure-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/openai/v1/responses"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "resp_1"})))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/openai/deployments/emb/embeddings"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&mock)
        .await;
    // `--upstream` is the Azure resource; its path does not matter for `/openai/…` paths.
    let upstream = Upstream::parse(&format!("{}/openai", mock.uri())).unwrap();
    let app = spawn_app(dir.path(), upstream).await;
    let resp = app
        .post_json(
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            &conversation("merged"),
        )
        .header("api-key", "azure-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-prompt-name"], "merged");
    let resp = app
        .post_json(
            "/openai/v1/responses",
            &json!({"model": "gpt-4o", "input": "Hi", "prompt": {"id": "merged", "variables": {"company": "Acme"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app
        .post_json(
            "/openai/deployments/emb/embeddings?api-version=2024-10-21",
            &json!({"input": "x"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let received = mock.received_requests().await.unwrap();
    assert_eq!(
        body_of(&received[0])["messages"][0]["content"],
        "You are the agent of Acme.\n\nAlways answer in French."
    );
    assert!(body_of(&received[0]).get("prompt").is_none());
    assert_eq!(
        body_of(&received[1])["instructions"],
        "You are the agent of Acme."
    );
}

#[tokio::test]
async fn the_configured_key_replaces_an_azure_api_key() {
    let dir = prompts();
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("api-key", "server-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .mount(&mock)
        .await;
    let app = spawn_with(dir.path(), upstream_of(&mock), |c| {
        c.upstream_api_key = Some("server-key".into());
    })
    .await;
    let resp = app
        .post_json(
            "/openai/deployments/d/chat/completions?api-version=2024-10-21",
            &json!({"model": "m", "messages": []}),
        )
        .header("api-key", "client-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let received = mock.received_requests().await.unwrap();
    assert!(received[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn base_urls_without_v1_work() {
    let dir = prompts();
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/embeddings"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&mock)
        .await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let resp = app
        .post_json("/chat/completions", &conversation("merged"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-prompt-name"], "merged");
    let resp = app
        .post_json("/embeddings", &json!({"input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Not an OpenAI path: still a 404 of promptgate's.
    let resp = app
        .client
        .get(app.url("/nothing/here"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let received = mock.received_requests().await.unwrap();
    assert_eq!(received.len(), 2);
}
