//! What promptgate reads and what it leaves alone: a `prompt` it cannot read is refused with
//! where and why; everything else under `/v1/` goes upstream as the client sent it — text
//! promptgate does not read byte for byte, other methods and paths forwarded, the body's framing
//! kept; promptgate's own errors OpenAI-shaped; 502 and 504 as the README says.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use promptgate::config::Upstream;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: Vec<u8>,
}

/// A raw HTTP/1.1 upstream that records each request's head and body bytes and answers a
/// small JSON 200.
async fn recording_upstream() -> (Upstream, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, log.clone()));
        }
    });
    (Upstream::parse(&format!("http://{addr}/v1")).unwrap(), seen)
}

async fn read_more(socket: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match socket.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn serve(mut socket: TcpStream, log: Arc<Mutex<Vec<Received>>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !read_more(&mut socket, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let lower = head.to_ascii_lowercase();
        let body = if let Some(n) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
        {
            let n: usize = n.trim().parse().unwrap();
            while buf.len() < head_end + n {
                if !read_more(&mut socket, &mut buf).await {
                    return;
                }
            }
            let body = buf[head_end..head_end + n].to_vec();
            buf.drain(..head_end + n);
            body
        } else if lower.contains("transfer-encoding: chunked") {
            // Kept raw: the test only needs to see that it came chunked.
            let end = loop {
                if let Some(i) = buf[head_end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                    break head_end + i + 5;
                }
                if !read_more(&mut socket, &mut buf).await {
                    return;
                }
            };
            let body = buf[head_end..end].to_vec();
            buf.drain(..end);
            body
        } else {
            buf.drain(..head_end);
            Vec::new()
        };
        log.lock().unwrap().push(Received { head, body });
        let answer = br#"{"object":"list","data":[]}"#;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        if socket.write_all(response.as_bytes()).await.is_err()
            || socket.write_all(answer).await.is_err()
        {
            return;
        }
    }
}

async fn post_raw(app: &common::TestApp, path: &str, body: &'static str) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_prompt_that_cannot_be_read_is_refused_with_where_and_why() {
    let prompts = common::prompts();
    let (upstream, seen) = recording_upstream().await;
    let app = common::spawn_app(prompts.path(), upstream).await;
    let deep = format!(
        r#"{{"messages": [], "prompt": {{"id": "support", "variables": {{"company": {}1{}}}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let cases: [(String, &str); 4] = [
        // Half an emoji in a variable: the position is just after it.
        (
            r#"{"messages": [], "prompt": {"id": "support", "variables": {"company": "a\ud800b"}}}"#.to_owned(),
            "column 79",
        ),
        (
            r#"{"messages": [], "prompt": {"id": "support", "version": 1e400}}"#.to_owned(),
            "out of range",
        ),
        (
            r#"{"messages": [], "prompt": {"id": "support"},}"#.to_owned(),
            "trailing comma",
        ),
        (deep, "recursion limit"),
    ];
    for (body, says) in cases {
        let response = app
            .client
            .post(app.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert!(message.contains("line 1 column"), "{message}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    assert!(seen.lock().unwrap().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn text_promptgate_does_not_read_goes_upstream_byte_for_byte() {
    let prompts = common::prompts();
    let (upstream, seen) = recording_upstream().await;
    let app = common::spawn_app(prompts.path(), upstream).await;
    // Half an emoji in a message, and nesting deeper than a full parse allows, in a tool.
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let messages = r#"[{"role": "user", "content": "hi \ud83d there"}]"#;
    let with_prompt = format!(
        r#"{{"model": "m", "messages": {messages}, "tools": {deep}, "prompt": {{"id": "support", "version": 1, "variables": {{"company": "Acme"}}}}}}"#
    );
    let without = format!(r#"{{"model": "m",  "messages": {messages}, "tools": {deep}}}"#);
    for body in [with_prompt.clone(), without.clone()] {
        let response = app
            .client
            .post(app.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{body}");
    }
    let seen = seen.lock().unwrap();
    let injected = String::from_utf8(seen[0].body.clone()).unwrap();
    assert!(
        injected.starts_with(r#"{"model":"m","messages":[{"role":"system","content":"You help customers of Acme."},{"role": "user", "content": "hi \ud83d there"}],"tools":"#),
        "{injected}"
    );
    assert!(injected.contains(&deep), "the deep value is kept");
    assert!(!injected.contains("prompt"), "{injected}");
    assert_eq!(seen[1].body, without.as_bytes(), "no prompt: untouched");
}

#[tokio::test]
async fn prompt_null_and_empty_name_no_prompt_and_are_not_forwarded() {
    let prompts = common::prompts();
    let (upstream, seen) = recording_upstream().await;
    let app = common::spawn_app(prompts.path(), upstream).await;
    for body in [
        r#"{"model": "m", "messages": [], "prompt": null}"#,
        r#"{"model": "m", "prompt": {}, "messages": []}"#,
    ] {
        let response = post_raw(&app, "/v1/chat/completions", body).await;
        assert_eq!(response.status(), 200, "{body}");
        assert!(response.headers().get("x-prompt-name").is_none());
    }
    let seen = seen.lock().unwrap();
    for r in seen.iter() {
        assert_eq!(r.body, br#"{"model":"m","messages":[]}"#);
    }
}

#[tokio::test]
async fn every_method_under_v1_is_forwarded_and_own_errors_are_openai_shaped() {
    let prompts = common::prompts();
    let (upstream, seen) = recording_upstream().await;
    let app = common::spawn_app(prompts.path(), upstream).await;
    // OpenAI's list of stored chat completions, and other methods on the injecting paths.
    let calls = [
        (reqwest::Method::GET, "/v1/chat/completions?limit=2"),
        (reqwest::Method::DELETE, "/v1/chat/completions/c1"),
        (reqwest::Method::GET, "/v1/responses/r1"),
        (reqwest::Method::PUT, "/v1/responses"),
    ];
    for (method, path) in &calls {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method} {path}");
    }
    let heads: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.head.lines().next().unwrap().to_owned())
        .collect();
    assert_eq!(
        heads,
        [
            "GET /v1/chat/completions?limit=2 HTTP/1.1",
            "DELETE /v1/chat/completions/c1 HTTP/1.1",
            "GET /v1/responses/r1 HTTP/1.1",
            "PUT /v1/responses HTTP/1.1",
        ]
    );
    // promptgate's own route: 405 in OpenAI's shape.
    let response = app
        .client
        .get(app.url("/v1/feedback"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "method_not_allowed");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`GET`"),
        "{error}"
    );
}

#[tokio::test]
async fn a_body_sent_with_content_length_goes_upstream_with_it() {
    let prompts = common::prompts();
    let (upstream, seen) = recording_upstream().await;
    let app = common::spawn_app(prompts.path(), upstream).await;
    let body = r#"{"model": "text-embedding-3-small", "input": "hello"}"#;
    let response = post_raw(&app, "/v1/embeddings", body).await;
    assert_eq!(response.status(), 200);
    let seen = seen.lock().unwrap();
    let head = seen[0].head.to_ascii_lowercase();
    assert!(
        head.contains(&format!("content-length: {}\r\n", body.len())),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(seen[0].body, body.as_bytes());
}

#[tokio::test]
async fn a_connect_timeout_is_502_naming_the_limit() {
    // A listener whose accept queue is full: further connections are never answered.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            held.push(stream);
        }
    }
    let prompts = common::prompts();
    let upstream = Upstream::parse(&format!("http://{addr}/v1")).unwrap();
    let app = common::spawn_with(prompts.path(), upstream, |c| {
        c.connect_timeout = Duration::from_millis(300);
        c.upstream_timeout = Duration::from_secs(5);
    })
    .await;
    let started = Instant::now();
    let response = post_raw(&app, "/v1/chat/completions", r#"{"messages": []}"#).await;
    assert_eq!(response.status(), 502);
    assert!(started.elapsed() < Duration::from_secs(4));
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "upstream_unreachable");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("could not connect within 0.3 s"),
        "{message}"
    );
    drop((held, listener));
}

/// An upstream that a proxy from the environment applies to (`HTTP_PROXY`) is reached through
/// that proxy, as it always was: the request goes to the proxy in absolute form, and the
/// upstream's name is never resolved by promptgate.
#[tokio::test]
async fn a_proxy_from_the_environment_is_used_for_the_upstream() {
    let (proxy, seen) = recording_upstream().await;
    let Upstream::Url(proxy) = proxy else {
        unreachable!("the recording upstream has an address")
    };
    let prompts = common::prompts();
    let state = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_promptgate"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--no-watch",
    ])
    .args(["--upstream", "http://upstream.invalid/v1", "--prompts"])
    .arg(prompts.path())
    .env("PROMPTGATE_STATE_DIR", state.path())
    .env("HTTP_PROXY", format!("http://{}", proxy.authority()));
    for name in [
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(name);
    }
    let server = common::spawn_listening(cmd);
    let response = common::http()
        .post(format!("{}/v1/embeddings", server.base))
        .header("content-type", "application/json")
        .body(r#"{"input": "hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = seen.lock().unwrap();
    assert!(
        seen[0]
            .head
            .starts_with("POST http://upstream.invalid/v1/embeddings HTTP/1.1"),
        "{}",
        seen[0].head
    );
}

/// Credentials in the upstream URL go upstream as basic auth, as they always did.
#[tokio::test]
async fn credentials_in_the_upstream_url_are_sent_as_basic_auth() {
    let (upstream, seen) = recording_upstream().await;
    let Upstream::Url(mut url) = upstream else {
        unreachable!("the recording upstream has an address")
    };
    url.set_username("user").unwrap();
    url.set_password(Some("pw")).unwrap();
    let prompts = common::prompts();
    let app = common::spawn_app(prompts.path(), Upstream::Url(url)).await;
    let response = post_raw(&app, "/v1/embeddings", r#"{"input": "hi"}"#).await;
    assert_eq!(response.status(), 200);
    let head = seen.lock().unwrap()[0].head.to_ascii_lowercase();
    assert!(head.contains("authorization: basic dxnlcjpwdw=="), "{head}");
}
