//! Hardening, through the real binary: what clients send cannot mint metric series, the
//! server's own limits close stuck and oversized clients, the health listener serves only the
//! probes, history is rotated and restored from a checkpoint, and a full disk never stops
//! serving.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http, prompts, write};
use serde_json::{Value, json};

/// A `promptgate serve` process: its addresses and every log line it printed.
struct Served {
    child: Child,
    base: String,
    health: Option<String>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn logs_containing(&self, text: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "stopped within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn promptgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_promptgate"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PROMPTGATE_") || key == "OPENAI_API_KEY" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Starts `cmd` (a `serve` logging JSON) and waits for the listeners it names in `wait_for`.
fn start(mut cmd: Command, health: bool) -> Served {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    let mut served = Served {
        child,
        base: String::new(),
        health: None,
        logs,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while served.base.is_empty() || (health && served.health.is_none()) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!(
                    "the server did not start: {:?}",
                    served.logs.lock().unwrap()
                )
            });
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let addr = event["addr"].as_str().map(|a| format!("http://{a}"));
        match event["message"].as_str() {
            Some("listening") => served.base = addr.unwrap(),
            Some("health probes listening") => served.health = addr,
            _ => {}
        }
    }
    served
}

fn serve(prompts: &std::path::Path, state: &std::path::Path, args: &[&str]) -> Served {
    let mut cmd = promptgate();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--upstream", "echo"])
        .args(["--log-format", "json", "--no-watch"])
        .arg("--prompts")
        .arg(prompts)
        .arg("--state-dir")
        .arg(state)
        .args(args);
    start(cmd, args.contains(&"--health-listen"))
}

async fn metrics(base: &str) -> String {
    http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Sends a request naming `prompt` (version 1 of it unless `prompt` runs an experiment) and
/// returns its request id.
async fn served_request(base: &str, prompt: &str) -> String {
    let mut reference = json!({"id": prompt, "variables": {"company": "Acme"}});
    if prompt != "ab" {
        reference["version"] = json!(1);
    }
    let resp = http()
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                      "prompt": reference}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()["x-request-id"].to_str().unwrap().to_owned()
}

async fn feedback(base: &str, id: &str, metrics: Value) -> (u16, Value) {
    let resp = http()
        .post(format!("{base}/v1/feedback"))
        .json(&json!({"request_id": id, "metrics": metrics}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn client_input_cannot_mint_metric_series() {
    let dir = prompts();
    write(
        dir.path(),
        "declared/v1.prompt",
        "You help customers of {{ company }}.",
    );
    write(
        dir.path(),
        "declared/prompt.yaml",
        "feedback_metrics: [helpful]\n",
    );
    let state = tempfile::tempdir().unwrap();
    let app = serve(dir.path(), state.path(), &[]);

    // Models the pricing table does not know count under one `other` series.
    for i in 0..30 {
        let resp = http()
            .post(format!("{}/v1/chat/completions", app.base))
            .json(&json!({"model": format!("random-model-{i}"), "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let text = metrics(&app.base).await;
    let unpriced: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("promptgate_unpriced_requests_total{"))
        .collect();
    assert_eq!(
        unpriced,
        ["promptgate_unpriced_requests_total{model=\"other\"} 30"]
    );
    let named = app.logs_containing("has no price");
    assert!(
        (1..=8).contains(&named),
        "the first few names are logged once each: {named}"
    );

    // Without a declared list, the first 10 metric names of a prompt are accepted.
    let id = served_request(&app.base, "support").await;
    for i in 0..10 {
        let (status, body) = feedback(&app.base, &id, json!({format!("m{i}"): 1})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = feedback(&app.base, &id, json!({"m10": 1, "m1": 2})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_many_metrics");
    assert_eq!(body["error"]["param"], "metrics.m10");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("limit of 10 feedback metrics"),
        "{message}"
    );
    assert!(message.contains("--feedback-metrics-max"), "{message}");
    let (status, _) = feedback(&app.base, &id, json!({"m3": 0.5, "quality_score": 0.9})).await;
    assert_eq!(status, 200, "accepted names and quality_score still are");

    // A declared list is the bound.
    let declared = served_request(&app.base, "declared").await;
    let (status, body) = feedback(&app.base, &declared, json!({"helpful": 1, "nope": 1})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "unknown_metric");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("declared: `helpful`"),
        "{body}"
    );
    let (status, _) = feedback(
        &app.base,
        &declared,
        json!({"helpful": 1, "quality_score": 1}),
    )
    .await;
    assert_eq!(status, 200);
    let text = metrics(&app.base).await;
    assert!(!text.contains("metric=\"m10\"") && !text.contains("metric=\"nope\""));

    // The bound survives a restart (restored from the checkpoint).
    app.stop();
    let app = serve(dir.path(), state.path(), &[]);
    let (status, body) = feedback(&app.base, &id, json!({"another": 1})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_many_metrics");
    let (status, body) = feedback(&app.base, &id, json!({"m9": 1})).await;
    assert_eq!(status, 200, "the request id was restored too: {body}");
}

/// Reads until the peer closes; how long that took.
fn time_to_close(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed());
            }
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn stuck_and_oversized_clients_cannot_starve_the_others() {
    let dir = prompts();
    let state = tempfile::tempdir().unwrap();
    let app = serve(
        dir.path(),
        state.path(),
        &[
            "--header-read-timeout",
            "1",
            "--max-connections",
            "4",
            "--max-header-bytes",
            "8192",
        ],
    );
    let addr: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();

    // A head larger than the limit: 431.
    let mut big = TcpStream::connect(addr).unwrap();
    write!(
        big,
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(10_000)
    )
    .unwrap();
    let mut answer = String::new();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Every connection slot taken by clients that never finish their headers.
    let mut stuck: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // Another client is served once the stuck ones are closed by the header timeout.
    let started = Instant::now();
    let resp = http()
        .get(format!("{}/healthz", app.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "served after {waited:?}");
    for s in &mut stuck {
        let closed = time_to_close(s, Duration::from_secs(5));
        assert!(
            closed.is_some(),
            "a stuck client is closed by the header timeout"
        );
    }
}

#[tokio::test]
async fn the_health_listener_serves_only_the_probes() {
    let dir = prompts();
    let state = tempfile::tempdir().unwrap();
    let app = serve(
        dir.path(),
        state.path(),
        &["--health-listen", "127.0.0.1:0"],
    );
    let health = app.health.clone().unwrap();
    for path in ["/healthz", "/readyz"] {
        let resp = http().get(format!("{health}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    for path in ["/v1/models", "/metrics", "/admin/status"] {
        let resp = http().get(format!("{health}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path} is not on the health listener");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"]["message"].is_string(),
            "OpenAI-shaped: {body}"
        );
    }
    let resp = http()
        .post(format!("{health}/v1/chat/completions"))
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "the proxy is not on the health listener"
    );
    // The proxy listens on loopback unless told otherwise.
    let help = promptgate().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[default: 127.0.0.1:8080]"), "{help}");
}

#[tokio::test]
async fn history_is_rotated_and_a_restart_reads_only_the_tail() {
    let dir = prompts();
    let state = tempfile::tempdir().unwrap();
    let args = ["--events-max-bytes", "8192", "--rotated-kept", "2"];
    let app = serve(dir.path(), state.path(), &args);
    for _ in 0..60 {
        served_request(&app.base, "ab").await;
    }
    let id = served_request(&app.base, "ab").await;
    let (status, _) = feedback(&app.base, &id, json!({"quality_score": 0.75})).await;
    assert_eq!(status, 200);
    let report = |base: String| async move {
        http()
            .get(format!("{base}/admin/prompts/ab/experiment"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let before = report(app.base.clone()).await;
    app.stop();
    let events = state.path().join("events.jsonl");
    let segments = promptgate::record::events::rotated_segments(&events);
    assert_eq!(
        segments.len(),
        2,
        "older segments are deleted: {segments:?}"
    );
    for (_, path) in &segments {
        assert!(std::fs::metadata(path).unwrap().len() <= 8192);
    }
    assert!(state.path().join("stats-checkpoint.json").exists());

    let app = serve(dir.path(), state.path(), &args);
    let after = report(app.base.clone()).await;
    assert_eq!(
        after["variants"], before["variants"],
        "identical statistics"
    );
    assert_eq!(
        after["variants"]["1"]["count"].as_u64().unwrap()
            + after["variants"]["2"]["count"].as_u64().unwrap(),
        61,
        "every request counted, though most events were rotated away"
    );
    assert_eq!(
        app.logs_containing("\"events\":0"),
        1,
        "a clean stop leaves nothing to replay: {:?}",
        app.logs.lock().unwrap()
    );
    let (status, _) = feedback(&app.base, &id, json!({"quality_score": 0.5})).await;
    assert_eq!(status, 200, "the feedback index was restored");
    app.stop();

    // A checkpoint of the first format (request ids as SHA-256 hashes, no key) is still read:
    // its ids are found.
    let path = state.path().join("stats-checkpoint.json");
    let mut saved: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(saved["format"], 2);
    let sha = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(id.as_bytes());
        u64::from_le_bytes(digest[..8].try_into().unwrap())
    };
    saved["format"] = json!(1);
    saved["index"]["entries"] = json!([[sha, 0]]);
    saved["index"].as_object_mut().unwrap().remove("key");
    std::fs::write(&path, serde_json::to_vec(&saved).unwrap()).unwrap();
    let app = serve(dir.path(), state.path(), &args);
    let (status, _) = feedback(&app.base, &id, json!({"quality_score": 0.25})).await;
    assert_eq!(status, 200, "an id of a first-format checkpoint is found");
    let (status, _) = feedback(&app.base, "not-an-id", json!({"quality_score": 0.25})).await;
    assert_eq!(status, 404);
}

/// Runs the binary in its own mount namespace on a tiny tmpfs (`unshare`: the mount goes away
/// with the process), with `--log-content` so a few large requests fill the disk.
#[tokio::test]
async fn a_full_disk_never_stops_serving() {
    let ok = Command::new("unshare")
        .args(["-rm", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs `unshare -rm` (util-linux, user namespaces) to mount a small tmpfs"
    );
    let dir = prompts();
    let mount = tempfile::tempdir().unwrap();
    let script = r#"mount -t tmpfs -o size=256k none "$1" && cp -r "$2" "$1/prompts" && mkdir "$1/state" && exec "$3" serve --listen 127.0.0.1:0 --upstream echo --log-format json --no-watch --log-content --admin-token t --prompts "$1/prompts" --state-dir "$1/state""#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-rm", "sh", "-c", script, "sh"])
        .arg(mount.path())
        .arg(dir.path())
        .arg(env!("CARGO_BIN_EXE_promptgate"));
    let app = start(cmd, false);
    let big = "x".repeat(60_000);
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let resp = http()
            .post(format!("{}/v1/chat/completions", app.base))
            .json(&json!({"messages": [{"role": "user", "content": big}],
                          "prompt": {"id": "support", "version": 1, "variables": {"company": "A"}}}))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = metrics(&app.base).await;
    let failures: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("promptgate_state_write_errors_total{file=\"events\"} "))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    assert!(failures >= 1.0, "{text}");
    assert_eq!(
        app.logs_containing("cannot write"),
        1,
        "logged once a minute, not once a line"
    );

    // An admin write on the full disk: a clear error, and no file left behind.
    let resp = http()
        .post(format!("{}/admin/prompts/support/versions", app.base))
        .bearer_auth("t")
        .json(&json!({"template": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "disk_full", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was changed"),
        "{body}"
    );
    let folder = format!(
        "/proc/{}/root{}/prompts/support",
        app.child.id(),
        mount.path().display()
    );
    let mut files: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["prompt.yaml", "v1.prompt", "v2.prompt"]);
    // And serving goes on.
    let resp = http()
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
