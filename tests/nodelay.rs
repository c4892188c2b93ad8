//! Accepted connections set `TCP_NODELAY`: an answer whose head and body reach promptgate in
//! separate TCP segments is relayed at once, not held back until the client's delayed ACK
//! (about 40 ms on Linux).

mod common;

use std::time::{Duration, Instant};

use promptgate::config::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that writes the response head, waits a moment, then writes the body: two
/// segments, as real upstreams often send them.
async fn split_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve_split(socket));
        }
    });
    Upstream::parse(&format!("http://{addr}/v1")).unwrap()
}

async fn serve_split(mut socket: TcpStream) {
    socket.set_nodelay(true).unwrap();
    let body = br#"{"id":"c1","object":"chat.completion","model":"gpt-4o-mini","choices":[]}"#;
    let mut buf = Vec::new();
    loop {
        // Read one whole request: the head, then `content-length` bytes of body.
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + 4 + length {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + 4 + length);
        let response_head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if socket.write_all(response_head.as_bytes()).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        if socket.write_all(body).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_split_in_two_segments_is_not_held_back() {
    let prompts = common::prompts();
    let app = common::spawn_app(prompts.path(), split_upstream().await).await;
    // One keep-alive connection, as an app's client keeps it: Nagle's algorithm bites from the
    // second request on, once the client has left quick-ACK mode.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let mut times = Vec::new();
    for _ in 0..12 {
        let started = Instant::now();
        let response = client
            .post(app.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    // The upstream itself takes about 2 ms; a delayed ACK adds about 40.
    assert!(
        median < Duration::from_millis(30),
        "median request took {median:?} (all: {times:?}): a write is waiting for a delayed ACK"
    );
}
