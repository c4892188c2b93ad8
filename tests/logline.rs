//! The request's log line in text mode, through the real binary: written by promptgate itself
//! (not the subscriber's formatter), laid out exactly as the subscriber lays out its own lines,
//! and left out at `RUST_LOG=warn`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

mod common;

/// Kills the server when the test ends, however it ends; its state folder goes with it.
struct Server {
    child: Child,
    _state: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` with text logs on a pipe; its stderr lines, and its address.
fn serve(rust_log: &str, prompts: &std::path::Path) -> (Server, Receiver<String>, String) {
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_promptgate"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--upstream", "echo"])
        .args(["--log-format", "text", "--no-watch", "--prompts"])
        .arg(prompts)
        .env("PROMPTGATE_STATE_DIR", state.path())
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut server = Server {
        child: cmd.spawn().unwrap(),
        _state: state,
    };
    let stderr = server.child.stderr.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a listening line");
        if let Some(rest) = line.split(" listening addr=").nth(1) {
            break rest.split(' ').next().unwrap().to_owned();
        }
    };
    (server, rx, addr)
}

async fn one_request(addr: &str) {
    let response = common::http()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("x-request-id", "req-logline-1")
        .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// `2026-01-31T12:00:00.123456Z  INFO promptgate::server: ` → `("2026-…Z", "  INFO promptgate::server: ")`.
fn layout(line: &str) -> (&str, String) {
    let (time, rest) = line.split_at(27);
    let head: String = rest.split_inclusive(": ").next().unwrap().to_owned();
    (time, head)
}

fn is_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 27
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            26 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[tokio::test]
async fn the_request_line_is_laid_out_as_the_subscriber_lays_out_its_own() {
    let prompts = common::prompts();
    let (_server, lines, addr) = serve("info", prompts.path());
    one_request(&addr).await;
    let line = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a request line");
        if line.contains("promptgate::request:") {
            break line;
        }
    };
    let (time, head) = layout(&line);
    assert!(is_timestamp(time), "{line}");
    assert_eq!(head, "  INFO promptgate::request: ", "{line}");
    assert!(
        line.ends_with("request request_id=req-logline-1 method=POST path=/v1/chat/completions status=200 outcome=ok")
            || line.contains(" request request_id=req-logline-1 method=POST path=/v1/chat/completions status=200 outcome=ok "),
        "{line}"
    );
    assert!(line.contains(" latency_ms="), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "no colour codes into a pipe: {line}"
    );
}

#[tokio::test]
async fn no_request_line_at_warn() {
    let prompts = common::prompts();
    let (_server, lines, addr) = serve("info,promptgate::request=warn", prompts.path());
    one_request(&addr).await;
    one_request(&addr).await;
    // The request is recorded after its answer; give the line time to arrive if it were written.
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(line) = lines.try_recv() {
        assert!(!line.contains("promptgate::request"), "{line}");
    }
}
