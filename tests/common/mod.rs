//! Shared test helpers: prompt fixtures, the real server on port 0, and upstreams.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use promptgate::config::{Config, Upstream};
use promptgate::server::Server;
use tempfile::TempDir;

pub fn write(root: &Path, file: &str, text: &str) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Writes `file` the way an editor that saves by rename does: a reader sees the old text or
/// the new, never a truncated file in between.
pub fn write_atomic(root: &Path, file: &str, text: &str) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // A hidden name: promptgate passes over dot files.
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// A prompts folder with a `support` prompt (v1, v2 active with overrides, label `stable`) and
/// an `ab` prompt running a 50/50 experiment.
pub fn prompts() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "support/v1.prompt",
        "You help customers of {{ company }}.\n",
    );
    write(
        root,
        "support/v2.prompt",
        "---\nmodel: gpt-4o\ntemperature: 0.3\nmax_tokens: 256\nparams: {top_p: 0.9}\nvariables: [company, tier]\n---\n\
         You help customers of {{ company }}.\n{% if tier == \"enterprise\" %}Prioritize this enterprise customer.{% endif %}\n",
    );
    write(
        root,
        "support/prompt.yaml",
        "description: Support agent\ntags: [support]\nactive: 2\nlabels: {stable: 1}\n",
    );
    write(root, "ab/v1.prompt", "Variant A");
    write(root, "ab/v2.prompt", "Variant B");
    write(
        root,
        "ab/prompt.yaml",
        "experiment: {version_a: 1, version_b: 2, traffic_split: 0.5}\n",
    );
    dir
}

/// The rendered text of `support` v2 for `company`/`tier`.
pub fn support_v2(company: &str, enterprise: bool) -> String {
    let extra = if enterprise {
        "Prioritize this enterprise customer."
    } else {
        ""
    };
    format!("You help customers of {company}.\n{extra}")
}

/// The real server, serving `prompts` on 127.0.0.1 port 0.
pub struct TestApp {
    pub server: Server,
    pub base: String,
    pub client: reqwest::Client,
    pub state_dir: TempDir,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).json(body)
    }
}

pub async fn spawn_app(prompts: &Path, upstream: Upstream) -> TestApp {
    spawn_with(prompts, upstream, |_| {}).await
}

pub async fn spawn_with(
    prompts: &Path,
    upstream: Upstream,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    let state_dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(prompts, upstream);
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.state_dir = state_dir.path().to_path_buf();
    config.upstream_timeout = Duration::from_secs(10);
    adjust(&mut config);
    let server = Server::start(config).await.expect("server starts");
    let base = format!("http://{}", server.addr());
    TestApp {
        server,
        base,
        client: http(),
        state_dir,
    }
}

/// The upstream URL of a wiremock server, as `--upstream` takes it.
pub fn upstream_of(mock: &wiremock::MockServer) -> Upstream {
    Upstream::parse(&format!("{}/v1", mock.uri())).unwrap()
}

/// An upstream that streams `chunks` as server-sent events with `gap` between them, to check
/// that promptgate relays each chunk as it comes. With `fail_after`, the connection is cut
/// after that many chunks.
pub async fn streaming_upstream(
    chunks: Vec<String>,
    gap: Duration,
    fail_after: Option<usize>,
) -> (Upstream, SocketAddr) {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let chunks = chunks.clone();
            async move {
                let stream = async_stream(chunks, gap, fail_after);
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(stream))
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (Upstream::parse(&format!("http://{addr}/v1")).unwrap(), addr)
}

fn async_stream(
    chunks: Vec<String>,
    gap: Duration,
    fail_after: Option<usize>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(0usize, move |i| {
        let chunks = chunks.clone();
        async move {
            if fail_after == Some(i) {
                return Some((
                    Err(std::io::Error::other("upstream broke")) as Result<Bytes, std::io::Error>,
                    usize::MAX,
                ));
            }
            if i >= chunks.len() {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            Some((Ok(Bytes::from(chunks[i].clone())), i + 1))
        }
    })
}

/// An HTTP client for tests (reqwest is built without a default TLS provider).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A listener address with nothing listening on it.
pub async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// An upstream that answers chat completions with token usage, as OpenAI does: a JSON body
/// with `usage`, or for a stream, content chunks and — only when the request asked with
/// `stream_options.include_usage` — a final usage-only chunk. Records every request body.
pub struct UsageUpstream {
    pub upstream: Upstream,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

pub const USAGE_MODEL: &str = "gpt-4o-2024-08-06";

pub async fn usage_upstream(prompt_tokens: u64, completion_tokens: u64) -> UsageUpstream {
    use serde_json::{Value, json};
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen = received.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |axum::Json(body): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(body.clone());
                // Like OpenAI, answer `gpt-4o` with the snapshot that served it.
                let model = match body["model"].as_str() {
                    Some("gpt-4o") | None => USAGE_MODEL.to_owned(),
                    Some(other) => other.to_owned(),
                };
                let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens,
                                   "prompt_tokens_details": {"cached_tokens": 0}});
                if body["stream"] != json!(true) {
                    return Response::builder()
                        .header("content-type", "application/json")
                        .body(Body::from(json!({"id": "c1", "object": "chat.completion", "model": model,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                            "usage": usage}).to_string()))
                        .unwrap();
                }
                let with_usage = body["stream_options"]["include_usage"] == json!(true);
                let mut events = Vec::new();
                for piece in ["Hel", "lo"] {
                    let mut chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
                        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
                    if with_usage {
                        chunk["usage"] = Value::Null;
                    }
                    events.push(format!("data: {chunk}\n\n"));
                }
                if with_usage {
                    let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
                                       "choices": [], "usage": usage});
                    events.push(format!("data: {chunk}\n\n"));
                }
                events.push("data: [DONE]\n\n".to_owned());
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from(events.concat()))
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    UsageUpstream {
        upstream: Upstream::parse(&format!("http://{addr}/v1")).unwrap(),
        received,
    }
}

/// Reads the events file's JSON lines.
pub fn read_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A `promptgate serve` process and the address it printed; killed and reaped when dropped.
pub struct Running {
    pub child: std::process::Child,
    pub base: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` (a `serve` with `--log-format json` or `PROMPTGATE_LOG_FORMAT=json`) and waits
/// for its "listening" line.
pub fn spawn_listening(mut cmd: std::process::Command) -> Running {
    use std::io::{BufRead, BufReader};
    use std::time::Instant;
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // Owned by `Running` at once, so the process is killed and reaped on every path.
    let mut running = Running {
        child: cmd.spawn().unwrap(),
        base: String::new(),
    };
    let stderr = running.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server prints its address");
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["message"] == "listening" {
            running.base = format!("http://{}", event["addr"].as_str().unwrap());
            return running;
        }
    }
}
