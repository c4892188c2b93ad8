//! The request path, one phase a function, carrying one [`RequestCtx`] through:
//!
//! read the body (bounded) → [`parse`] the prompt reference → [`inject::choose`] the version →
//! [`inject::pick`] the examples → [`inject::render`] → [`inject::inject`] (the last five in
//! [`request::prepare`]) → [`forward::send`] upstream (or the built-in [`echo`]) →
//! [`relay::relay`] the answer as it streams → record the request when it is over
//! ([`RequestCtx::finish`]).
//!
//! Each phase has its own error type; `error.rs` turns them into HTTP answers.

mod ctx;
pub mod echo;
pub mod feedback;
pub mod forward;
pub mod inject;
pub mod json;
mod logline;
pub mod parse;
pub mod pool;
pub mod relay;
pub mod request;
pub mod system;

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use http_body_util::BodyExt;

use crate::AppState;
use crate::error::ApiError;
pub use ctx::RequestCtx;
use forward::{OutBody, UpstreamResponse};
pub use logline::log_as_text;
use request::Endpoint;

/// `POST /v1/chat/completions`
pub async fn chat_completions(State(state): State<AppState>, req: Request) -> Response {
    inject(&state, Endpoint::ChatCompletions, req).await
}

/// `POST /v1/responses`
pub async fn responses(State(state): State<AppState>, req: Request) -> Response {
    inject(&state, Endpoint::Responses, req).await
}

/// Every other method and path under `/v1/`: forwarded unchanged, body streamed through
/// with the client's framing.
pub async fn passthrough(State(state): State<AppState>, req: Request) -> Response {
    let mut ctx = RequestCtx::start(&state, req.method(), req.uri().path(), req.headers());
    let (mut parts, body) = req.into_parts();
    let path = upstream_path(&parts.uri);
    ctx.upstream_started = Some(Instant::now());
    ctx.operation = Some(crate::otel::operation_of(&path));
    if let Some(trace) = &mut ctx.trace {
        trace.inject(&mut parts.headers);
    }
    let sent = forward::send(
        &state.http,
        &state.config,
        parts.method,
        &upstream_path(&parts.uri),
        parts.headers,
        OutBody::Stream(body),
    )
    .await;
    match sent {
        Ok(upstream) => relay::relay(upstream, ctx),
        Err(err) => ctx.fail(err.into()),
    }
}

/// An injecting endpoint, whatever body type the request came with: the proxy listener hands
/// hyper's own body straight here (no boxing into axum's), the router axum's.
pub async fn inject<B>(
    state: &AppState,
    endpoint: Endpoint,
    req: axum::http::Request<B>,
) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let mut ctx = RequestCtx::start(state, req.method(), req.uri().path(), req.headers());
    // Boxed: the pipeline's future is large, and held inline it would be copied whole into
    // every future that awaits it (this one, and the listener's).
    match Box::pin(run(state, endpoint, req, &mut ctx)).await {
        Ok(upstream) => relay::relay(upstream, ctx),
        Err(err) => ctx.fail(err),
    }
}

/// The pipeline of an injecting request, up to the upstream's answer.
async fn run<B>(
    state: &AppState,
    endpoint: Endpoint,
    req: axum::http::Request<B>,
    ctx: &mut RequestCtx,
) -> Result<UpstreamResponse, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (mut parts, body) = req.into_parts();
    let bytes = read_body(body, &parts.headers, state.config.max_body_bytes).await?;
    // One snapshot per request: a reload mid-request does not mix two prompt sets.
    let prompts = state.prompts.load_full();
    let prepared = request::prepare(
        &prompts,
        &state.model,
        endpoint,
        &parts.headers,
        bytes,
        Utc::now(),
    )
    .await?;
    ctx.served = prepared.served;
    ctx.model = prepared.model;
    ctx.strip_usage_chunk = prepared.strip_usage_chunk;
    if state.config.log_content {
        ctx.content = serde_json::from_slice(&prepared.body).ok();
    }
    ctx.upstream_started = Some(Instant::now());
    let path = upstream_path(&parts.uri);
    ctx.operation = Some(crate::otel::operation_of(&path));
    if let Some(trace) = &mut ctx.trace {
        trace.inject(&mut parts.headers);
    }
    let upstream = forward::send(
        &state.http,
        &state.config,
        Method::POST,
        &path,
        parts.headers,
        OutBody::Full(prepared.body),
    )
    .await?;
    Ok(upstream)
}

/// The upstream path of a request, with its query.
///
/// `/v1/chat/completions?x=1` → `chat/completions?x=1` (relative to `--upstream`), and the
/// same for a base URL without `/v1` (`/chat/completions`). Azure OpenAI's paths
/// (`/openai/deployments/{d}/chat/completions?api-version=…`, `/openai/v1/…`) keep their whole
/// path from the upstream's origin: `/openai/…`, leading slash and all.
fn upstream_path(uri: &axum::http::Uri) -> std::borrow::Cow<'_, str> {
    let full = uri.path();
    let path = if full.starts_with("/openai/") {
        full
    } else {
        full.strip_prefix("/v1/")
            .or_else(|| full.strip_prefix('/'))
            .unwrap_or(full)
    };
    match uri.query() {
        Some(q) => format!("{path}?{q}").into(),
        None => path.into(),
    }
}

/// The first path segments of OpenAI's API, for clients whose base URL has no `/v1`: these are
/// forwarded as if they had it, everything else unknown is a 404.
pub const OPENAI_ROOTS: [&str; 20] = [
    "assistants",
    "audio",
    "batches",
    "chat",
    "completions",
    "containers",
    "conversations",
    "embeddings",
    "evals",
    "files",
    "fine_tuning",
    "images",
    "models",
    "moderations",
    "organization",
    "realtime",
    "responses",
    "threads",
    "uploads",
    "vector_stores",
];

/// True when `path` (no `/v1`) starts with one of [`OPENAI_ROOTS`].
pub fn is_openai_path(path: &str) -> bool {
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    OPENAI_ROOTS.contains(&first)
}

/// The body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    Failed(String),
}

/// Reads the whole body, refusing more than `limit` bytes. A body that comes in one piece (the
/// usual case) is kept as it came, without a copy.
async fn read_body<B>(mut body: B, headers: &HeaderMap, limit: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    let mut first: Option<Bytes> = None;
    let mut more: Option<bytes::BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.to_string()))?;
        // Trailers are not part of the body.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(ReadError::TooLarge { limit });
        }
        match (first.take(), &mut more) {
            (_, Some(joined)) => joined.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (Some(head), None) => {
                // Room for twice what came so far, at most the declared length: memory grows
                // with what arrives, not with what a client announces.
                let room = total.saturating_mul(2);
                let room = declared.map_or(room, |n| room.min(usize::try_from(n).unwrap_or(room)));
                let mut joined = bytes::BytesMut::with_capacity(room.max(total));
                joined.extend_from_slice(&head);
                joined.extend_from_slice(&data);
                // The first piece is let go: it is in `joined` now.
                more = Some(joined);
            }
        }
    }
    Ok(match (first, more) {
        (_, Some(joined)) => joined.freeze(),
        (one, None) => one.unwrap_or_default(),
    })
}

/// `GET /v1/feedback` and the like: promptgate's own routes answer other methods with
/// OpenAI's error shape.
pub async fn method_not_allowed(req: Request) -> Response {
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::StreamBody;

    type Frames = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    fn frames(parts: &[&'static str]) -> Frames {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn headers(length: Option<usize>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(n) = length {
            headers.insert(axum::http::header::CONTENT_LENGTH, n.into());
        }
        headers
    }

    #[tokio::test]
    async fn a_body_in_one_piece_is_kept_without_a_copy() {
        let text: &'static str = r#"{"model": "m"}"#;
        let read = read_body(frames(&[text]), &headers(None), 100)
            .await
            .unwrap();
        assert_eq!(read, text);
        assert_eq!(read.as_ptr(), text.as_ptr(), "the frame itself, not a copy");
    }

    #[tokio::test]
    async fn pieces_are_joined_in_order_and_trailers_left_out() {
        let mut parts: Vec<Result<Frame<Bytes>, std::io::Error>> = ["{\"a\"", ": 1", "}"]
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        parts.insert(2, Ok(Frame::trailers(HeaderMap::new())));
        let body = StreamBody::new(futures_util::stream::iter(parts));
        let read = read_body(body, &headers(Some(8)), 100).await.unwrap();
        assert_eq!(read, "{\"a\": 1}");
        let empty = read_body(frames(&[]), &headers(None), 100).await.unwrap();
        assert!(empty.is_empty());
    }

    #[tokio::test]
    async fn more_than_the_limit_is_refused_declared_or_not() {
        let declared = read_body(frames(&["x"]), &headers(Some(11)), 10).await;
        assert!(matches!(declared, Err(ReadError::TooLarge { limit: 10 })));
        // Chunked (no length): refused at the piece that crosses the limit.
        let chunked = read_body(frames(&["12345", "67890", "1"]), &headers(None), 10).await;
        assert!(matches!(chunked, Err(ReadError::TooLarge { limit: 10 })));
        let exact = read_body(frames(&["12345", "67890"]), &headers(None), 10).await;
        assert_eq!(exact.unwrap(), "1234567890");
    }

    #[tokio::test]
    async fn a_failing_body_says_why() {
        let parts: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"{"))),
            Err(std::io::Error::other("connection reset")),
        ];
        let body = StreamBody::new(futures_util::stream::iter(parts));
        match read_body(body, &headers(None), 100).await {
            Err(ReadError::Failed(why)) => assert_eq!(why, "connection reset"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upstream_paths_borrow_unless_there_is_a_query() {
        let uri: axum::http::Uri = "/v1/chat/completions".parse().unwrap();
        assert!(matches!(
            upstream_path(&uri),
            std::borrow::Cow::Borrowed("chat/completions")
        ));
        let uri: axum::http::Uri = "/v1/chat/completions?x=1".parse().unwrap();
        assert_eq!(upstream_path(&uri), "chat/completions?x=1");
        let uri: axum::http::Uri = "/openai/deployments/d/chat/completions".parse().unwrap();
        assert_eq!(
            upstream_path(&uri),
            "/openai/deployments/d/chat/completions"
        );
    }
}
