//! Step 6 of the request path: relay the upstream response to the client as it arrives, chunk
//! by chunk, and record the request once it is over (finished, failed or abandoned).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use serde_json::json;

use super::RequestCtx;
use super::forward::{BodyError, UpstreamBody, UpstreamResponse};
use crate::record::Outcome;
use crate::record::usage::UsageTap;

/// Turns the upstream response into the client's response, with promptgate's headers.
pub fn relay(upstream: UpstreamResponse, mut ctx: RequestCtx) -> Response {
    let content_type = upstream
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let sse = content_type.is_some_and(|v| v.starts_with("text/event-stream"));
    let status = upstream.status;
    // With a known length the server stops polling after the last byte, so "done" is
    // recognised by the count rather than by the end of the stream.
    let remaining = upstream
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let strip = sse && ctx.strip_usage_chunk;
    let tap = UsageTap::new(content_type, strip);
    // The answer's id and finish reasons go to traces only.
    let tap = if ctx.trace.is_some() {
        tap
    } else {
        tap.without_ending()
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    *response.headers_mut() = upstream.headers;
    if strip {
        // The body may come out shorter than upstream sent it.
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    ctx.stamp(response.headers_mut());
    if sse {
        // Tell buffering reverse proxies in front of us not to hold the stream back.
        response
            .headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    let body = Relayed {
        inner: upstream.body,
        sse,
        finished: false,
        first_byte: None,
        ctx: Some(ctx),
        status: status.as_u16(),
        remaining,
        tap: Some(tap),
    };
    *response.body_mut() = Body::new(body);
    response
}

/// The relayed body. Records the request when the stream ends, fails or is dropped (the
/// client went away), exactly once.
struct Relayed {
    inner: UpstreamBody,
    sse: bool,
    finished: bool,
    first_byte: Option<Instant>,
    ctx: Option<RequestCtx>,
    status: u16,
    remaining: Option<u64>,
    tap: Option<UsageTap>,
}

impl Relayed {
    fn finish(&mut self, outcome: Outcome, cause: Option<&str>) {
        if let Some(ctx) = self.ctx.take() {
            let observed = self.tap.take().map(UsageTap::finish).unwrap_or_default();
            ctx.finish(
                self.status,
                outcome,
                self.first_byte,
                observed,
                self.sse,
                cause,
            );
        }
    }
}

/// A body of its own rather than a stream made into one: one layer less on every chunk.
impl http_body::Body for Relayed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        self.poll_chunk(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(http_body::Frame::data)))
    }
}

impl Relayed {
    fn poll_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BodyError>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        loop {
            return match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if self.first_byte.is_none() && !chunk.is_empty() {
                        self.first_byte = Some(Instant::now());
                    }
                    let upstream_len = chunk.len() as u64;
                    let out = match self.tap.as_mut() {
                        Some(tap) => tap.pass(chunk),
                        None => chunk,
                    };
                    if let Some(remaining) = self.remaining.as_mut() {
                        *remaining = remaining.saturating_sub(upstream_len);
                        if *remaining == 0 {
                            self.finish(Outcome::Ok, None);
                        }
                    }
                    if out.is_empty() {
                        // All of it was held back (part of an event) or left out (usage chunk).
                        continue;
                    }
                    Poll::Ready(Some(Ok(out)))
                }
                Poll::Ready(Some(Err(err))) => {
                    self.finished = true;
                    let outcome = if err.timeout {
                        Outcome::UpstreamTimeout
                    } else {
                        Outcome::UpstreamError
                    };
                    self.finish(outcome, Some(&err.message));
                    if self.sse {
                        // The status is already sent: end the stream with one error event.
                        let code = if err.timeout {
                            "upstream_timeout"
                        } else {
                            "upstream_stream_error"
                        };
                        let event = json!({"error": {"message": err.message, "type": "upstream_error",
                                                 "param": null, "code": code}});
                        Poll::Ready(Some(Ok(Bytes::from(format!("data: {event}\n\n")))))
                    } else {
                        Poll::Ready(Some(Err(err)))
                    }
                }
                Poll::Ready(None) => {
                    self.finished = true;
                    let rest = self.tap.as_mut().and_then(UsageTap::remainder);
                    self.finish(Outcome::Ok, None);
                    match rest {
                        Some(rest) => Poll::Ready(Some(Ok(rest))),
                        None => Poll::Ready(None),
                    }
                }
            };
        }
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        self.finish(Outcome::ClientClosed, None);
    }
}
