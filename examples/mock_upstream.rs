//! A tiny, fast mock of an OpenAI-compatible upstream, for load benchmarks (`bench/run.sh`).
//!
//! `cargo run --release --example mock_upstream -- PORT` listens on `127.0.0.1:PORT` (0 picks a
//! free port; the address is printed on stdout) and answers every `POST /chat/completions` with
//! the same small `chat.completion`, usage included. The request body is read and discarded.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;

/// The one answer, built once.
fn completion() -> Bytes {
    let body = serde_json::json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 250, "completion_tokens": 9, "total_tokens": 259}
    });
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value serialises"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        Some(Ok(port)) => port,
        _ => {
            eprintln!("usage: mock_upstream PORT");
            std::process::exit(2);
        }
    };
    let answer = completion();
    let app = Router::new().route(
        "/chat/completions",
        post(move |_body: Bytes| {
            let answer = answer.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], answer).into_response() }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
