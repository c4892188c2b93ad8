//! The request path through the real server, in front of a mock upstream.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use promptgate::config::Upstream;
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn completion() -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})
}

fn received_json(req: &Request) -> Value {
    serde_json::from_slice(&req.body).unwrap()
}

async fn mock_completion(mock: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion())
                .insert_header("x-request-id", "upstream-req-1"),
        )
        .mount(mock)
        .await;
}

#[tokio::test]
async fn prompt_is_injected_stripped_and_overrides_applied() {
    let dir = prompts();
    let mock = MockServer::start().await;
    mock_completion(&mock).await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;

    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({
                "model": "gpt-4o-mini", "temperature": 1.2, "user": "u1",
                "messages": [{"role": "user", "content": "My keys broke"}],
                "prompt": {"id": "support", "variables": {"company": "Acme", "tier": "enterprise"}}
            }),
        )
        .header("x-request-id", "client-req-9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    // The upstream's id stays `x-request-id` (the SDKs' `_request_id`); promptgate's own id,
    // the client's here, is `x-promptgate-request-id`.
    assert_eq!(headers["x-request-id"], "upstream-req-1");
    assert_eq!(headers["x-promptgate-request-id"], "client-req-9");
    assert!(headers.get("x-upstream-request-id").is_none());
    assert_eq!(headers["x-prompt-name"], "support");
    assert_eq!(headers["x-prompt-version"], "2");
    assert_eq!(headers["x-prompt-selection"], "active");
    let expected_hash = {
        use sha2::Digest;
        let body = "You help customers of {{ company }}.\n{% if tier == \"enterprise\" %}Prioritize this enterprise customer.{% endif %}";
        let d = sha2::Sha256::digest(body.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()[..12].to_owned()
    };
    assert_eq!(headers["x-prompt-hash"], expected_hash.as_str());
    assert_eq!(resp.json::<Value>().await.unwrap(), completion());

    let received = mock.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received_json(&received[0]),
        json!({
            "model": "gpt-4o", "temperature": 0.3, "max_tokens": 256, "top_p": 0.9, "user": "u1",
            "messages": [
                {"role": "system", "content": support_v2("Acme", true)},
                {"role": "user", "content": "My keys broke"}
            ]
        })
    );
}

#[tokio::test]
async fn headers_can_name_the_prompt() {
    let dir = prompts();
    let mock = MockServer::start().await;
    mock_completion(&mock).await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .header("X-Prompt-Name", "support")
        .header("X-Prompt-Version", "stable")
        .header("X-Prompt-Variables", r#"{"company": "Initech"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-prompt-selection"], "label");
    assert_eq!(resp.headers()["x-prompt-version"], "1");
    let received = &mock.received_requests().await.unwrap()[0];
    assert!(
        received.headers.get("x-prompt-name").is_none(),
        "our headers stay here"
    );
    assert_eq!(
        received_json(received)["messages"][0]["content"],
        "You help customers of Initech."
    );
}

#[tokio::test]
async fn responses_endpoint_gets_instructions() {
    let dir = prompts();
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/responses"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": "resp_1", "object": "response"})),
        )
        .mount(&mock)
        .await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let resp = app
        .post_json(
            "/v1/responses",
            &json!({"model": "m", "input": "hello",
                    "prompt": {"id": "support", "version": 1, "variables": {"company": "Acme"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-prompt-selection"], "pinned");
    let body = received_json(&mock.received_requests().await.unwrap()[0]);
    assert_eq!(
        body,
        json!({"model": "m", "input": "hello", "instructions": "You help customers of Acme."})
    );
}

#[tokio::test]
async fn experiment_assignment_is_stable_per_user() {
    let dir = prompts();
    let mock = MockServer::start().await;
    mock_completion(&mock).await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    for user in ["alice", "bob", "carol", "dave"] {
        let expected = if promptgate::select::bucket("ab", None, user) < 50 {
            "2"
        } else {
            "1"
        };
        for _ in 0..3 {
            let resp = app
                .post_json(
                    "/v1/chat/completions",
                    &json!({"messages": [], "user": user, "prompt": {"id": "ab"}}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(resp.headers()["x-prompt-selection"], "experiment");
            assert_eq!(resp.headers()["x-prompt-version"], expected, "user {user}");
        }
    }
}

#[tokio::test]
async fn requests_without_a_prompt_pass_byte_for_byte() {
    let dir = prompts();
    let mock = MockServer::start().await;
    mock_completion(&mock).await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let raw = "{\"model\":   \"gpt-4o\",\n \"messages\": [{\"role\": \"user\", \"content\": \"a prompt, literally\"}]}";
    let resp = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-prompt-name").is_none());
    assert!(resp.headers().get("x-request-id").is_some());
    let received = &mock.received_requests().await.unwrap()[0];
    assert_eq!(received.body, raw.as_bytes());
}

#[tokio::test]
async fn other_v1_paths_are_forwarded_unchanged() {
    let dir = prompts();
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(query_param("limit", "2"))
        .and(header("authorization", "Bearer sk-client"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": []})),
        )
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/embeddings"))
        .and(body_json(json!({"model": "e", "input": "x"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list"})))
        .mount(&mock)
        .await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let resp = app
        .client
        .get(app.url("/v1/models?limit=2"))
        .header("authorization", "Bearer sk-client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["object"], "list");
    let resp = app
        .post_json("/v1/embeddings", &json!({"model": "e", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn upstream_api_key_replaces_the_clients() {
    let dir = prompts();
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("authorization", "Bearer sk-server"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list"})))
        .mount(&mock)
        .await;
    let app = spawn_with(dir.path(), upstream_of(&mock), |c| {
        c.upstream_api_key = Some("sk-server".into());
    })
    .await;
    let resp = app
        .client
        .get(app.url("/v1/models"))
        .header("authorization", "Bearer sk-client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the server's key reached upstream");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let dir = prompts();
    let mock = MockServer::start().await;
    mock_completion(&mock).await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    app.post_json("/v1/chat/completions", &json!({"messages": []}))
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("x-keep-me", "1")
        .header("proxy-authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    let received = &mock.received_requests().await.unwrap()[0];
    assert!(received.headers.get("x-drop-me").is_none());
    assert!(received.headers.get("proxy-authorization").is_none());
    assert_eq!(received.headers["x-keep-me"], "1");
}

#[tokio::test]
async fn upstream_errors_pass_through_untouched() {
    let dir = prompts();
    let mock = MockServer::start().await;
    let error = json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}});
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .set_body_json(error.clone())
                .insert_header("retry-after", "7"),
        )
        .mount(&mock)
        .await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [], "prompt": {"id": "support", "version": 1, "variables": {"company": "A"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.headers()["x-prompt-version"], "1");
    assert_eq!(resp.json::<Value>().await.unwrap(), error);
}

#[tokio::test]
async fn upstream_redirects_are_passed_back_not_followed() {
    let dir = prompts();
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{}/elsewhere", mock.uri())),
        )
        .mount(&mock)
        .await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .post(app.url("/v1/chat/completions"))
        .header("authorization", "Bearer sk-client")
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    let received = mock.received_requests().await.unwrap();
    assert_eq!(received.len(), 1, "the redirect was not followed");
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    (status, body["error"].clone())
}

#[tokio::test]
async fn request_errors_are_openai_shaped() {
    let dir = prompts();
    let mock = MockServer::start().await;
    mock_completion(&mock).await;
    let app = spawn_with(dir.path(), upstream_of(&mock), |c| c.max_body_bytes = 4096).await;

    let (status, err) = error_of(
        app.post_json(
            "/v1/chat/completions",
            &json!({"messages": [], "prompt": {"id": "support"}}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["code"], "missing_variables");
    assert_eq!(err["type"], "invalid_request_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("`company`, `tier`"),
        "{err}"
    );

    let (status, err) = error_of(
        app.post_json("/v1/chat/completions", &json!({"prompt": {"id": "nope"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("prompt_not_found"))
    );

    let (status, err) = error_of(
        app.post_json(
            "/v1/chat/completions",
            &json!({"prompt": {"id": "support", "version": 7}}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("version_not_found"))
    );

    let (status, err) = error_of(
        app.client
            .post(app.url("/v1/chat/completions"))
            .header("x-prompt-name", "support")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(err["message"].as_str().unwrap().contains("not valid JSON"));

    let big = "x".repeat(5000);
    let (status, err) = error_of(
        app.post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": big}]}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (413, Some("request_too_large"))
    );

    let (status, _) = error_of(
        app.client
            .get(app.url("/v2/whatever"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        mock.received_requests().await.unwrap().is_empty(),
        "nothing reached upstream"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let dir = prompts();
    let addr = closed_port().await;
    let app = spawn_app(
        dir.path(),
        Upstream::parse(&format!("http://{addr}/v1")).unwrap(),
    )
    .await;
    let (status, err) = error_of(
        app.post_json("/v1/chat/completions", &json!({"messages": []}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(err["code"], "upstream_unreachable");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let dir = prompts();
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&mock)
        .await;
    let app = spawn_with(dir.path(), upstream_of(&mock), |c| {
        c.upstream_timeout = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    let (status, err) = error_of(
        app.post_json("/v1/chat/completions", &json!({"messages": []}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 504);
    assert_eq!(err["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}

fn sse_chunks(n: usize) -> Vec<String> {
    let mut chunks: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "data: {}\n\n",
                json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": format!("part{i} ")}}]})
            )
        })
        .collect();
    chunks.push("data: [DONE]\n\n".to_owned());
    chunks
}

#[tokio::test]
async fn streams_are_relayed_chunk_by_chunk_in_order() {
    let dir = prompts();
    let chunks = sse_chunks(4);
    let gap = Duration::from_millis(200);
    let (upstream, _) = streaming_upstream(chunks.clone(), gap, None).await;
    let app = spawn_app(dir.path(), upstream).await;
    let started = Instant::now();
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"stream": true, "messages": [], "prompt": {"id": "support", "version": 1, "variables": {"company": "A"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-prompt-version"], "1");
    let mut arrivals = Vec::new();
    let mut body = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        arrivals.push(started.elapsed());
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(body, chunks.concat(), "every byte, in order");
    assert!(arrivals.len() >= 3, "arrived in pieces: {arrivals:?}");
    // The first chunk arrives long before the last: nothing was buffered.
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= gap * 3,
        "first {:?}, last {:?}",
        arrivals[0],
        arrivals.last()
    );
}

#[tokio::test]
async fn a_broken_stream_ends_with_an_error_event() {
    let dir = prompts();
    let (upstream, _) = streaming_upstream(sse_chunks(3), Duration::from_millis(20), Some(2)).await;
    let app = spawn_app(dir.path(), upstream).await;
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"stream": true, "messages": []}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("data: {\"object\""), "{text}");
    let last = text.trim_end().lines().last().unwrap();
    let event: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(event["error"]["type"], "upstream_error");
    assert_eq!(event["error"]["code"], "upstream_stream_error");
}

#[tokio::test]
async fn health_and_readiness() {
    let dir = prompts();
    let app = spawn_app(dir.path(), Upstream::Echo).await;
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["prompts"], 2);
}

#[tokio::test]
async fn echo_upstream_answers_with_the_request_it_got() {
    let dir = prompts();
    let app = spawn_app(dir.path(), Upstream::Echo).await;
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                    "prompt": {"id": "support", "version": "stable", "variables": {"company": "Acme"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let sent: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"model": "m", "messages": [
            {"role": "system", "content": "You help customers of Acme."},
            {"role": "user", "content": "hi"}
        ]})
    );
}

#[tokio::test]
async fn shutdown_lets_a_running_stream_finish() {
    let dir = prompts();
    let chunks = sse_chunks(5);
    let (upstream, _) = streaming_upstream(chunks.clone(), Duration::from_millis(100), None).await;
    let app = spawn_app(dir.path(), upstream).await;
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"stream": true, "messages": []}),
        )
        .send()
        .await
        .unwrap();
    let addr = app.server.addr();
    let shutdown = tokio::spawn(app.server.shutdown(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // New connections are refused while the stream goes on.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(resp.text().await.unwrap(), chunks.concat());
    shutdown.await.unwrap().unwrap();
}
