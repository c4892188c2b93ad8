//! Step 5 of the request path: send the request upstream over the pooled client, or to the
//! built-in echo upstream.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::echo;
use crate::config::{Config, Upstream};
use crate::error::ApiError;

/// A failure while the response body was streaming.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BodyError {
    pub message: String,
    pub timeout: bool,
}

/// What came back from upstream: the status and headers at once, the body as it arrives.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BoxStream<'static, Result<Bytes, BodyError>>,
}

/// The body to send: already read (injecting endpoints) or streamed through (everything else).
pub enum OutBody {
    Full(Bytes),
    Stream(axum::body::Body),
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers of ours, or recomputed for the upstream hop, that are never forwarded.
const NOT_FORWARDED: [&str; 6] = [
    "host",
    "content-length",
    // Responses must stay readable for usage and stream handling; compression is for the
    // upstream hop's own negotiation, not the client's.
    "accept-encoding",
    "x-prompt-name",
    "x-prompt-version",
    "x-prompt-variables",
];

/// Copies `src` without hop-by-hop headers (and those the `Connection` header names).
pub fn end_to_end_headers(src: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = src
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(src.len());
    for (name, value) in src {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || named.iter().any(|c| c == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Sends `method path_and_query` (the part after `/v1/`) upstream.
pub async fn send(
    http: &reqwest::Client,
    config: &Config,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: OutBody,
) -> Result<UpstreamResponse, ApiError> {
    let base = match &config.upstream {
        Upstream::Echo => return echo::answer(&method, path_and_query, body).await,
        Upstream::Url(base) => base,
    };
    // Built from the parsed base rather than parsed again from text on every request.
    let mut url = base.clone();
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    if path.starts_with('/') {
        // Azure OpenAI's `/openai/…` paths: from the upstream's origin.
        url.set_path(path);
    } else {
        url.set_path(&format!("{}/{path}", base.path().trim_end_matches('/')));
    }
    url.set_query(query);
    let mut out = end_to_end_headers(headers);
    for name in NOT_FORWARDED {
        out.remove(name);
    }
    if let Some(key) = &config.upstream_api_key {
        let invalid =
            |_| ApiError::Internal("the upstream API key is not a valid header value".into());
        if out.contains_key("api-key") {
            // An Azure OpenAI client authenticates with `api-key`; replace that one.
            out.insert("api-key", HeaderValue::from_str(key).map_err(invalid)?);
        } else {
            let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(invalid)?;
            out.insert(header::AUTHORIZATION, value);
        }
    }
    let body = match body {
        OutBody::Full(bytes) => reqwest::Body::from(bytes),
        OutBody::Stream(body) => reqwest::Body::wrap_stream(body.into_data_stream()),
    };
    let sent = http
        .request(method, url.clone())
        .headers(out)
        .timeout(config.upstream_timeout)
        .body(body)
        .send()
        .await;
    let response = sent.map_err(|e| classify(&e, url.as_str(), config.upstream_timeout))?;
    let status = response.status();
    // The upstream's `x-request-id` (OpenAI's `req_…`) passes through untouched: the SDKs show
    // it as `_request_id`, and it is the id the provider's support asks for (SPEC §2).
    let headers = end_to_end_headers(response.headers());
    let timeout = config.upstream_timeout;
    let body = response
        .bytes_stream()
        .map(move |chunk| {
            chunk.map_err(|e| BodyError {
                timeout: e.is_timeout(),
                message: if e.is_timeout() {
                    format!("upstream did not finish within {} s", timeout.as_secs_f64())
                } else {
                    format!("upstream stream failed: {}", error_chain(&e))
                },
            })
        })
        .boxed();
    Ok(UpstreamResponse {
        status,
        headers,
        body,
    })
}

fn classify(err: &reqwest::Error, url: &str, timeout: Duration) -> ApiError {
    if err.is_timeout() {
        ApiError::UpstreamTimeout {
            url: url.to_owned(),
            seconds: timeout.as_secs_f64(),
        }
    } else {
        ApiError::UpstreamUnreachable {
            url: url.to_owned(),
            reason: error_chain(err),
        }
    }
}

/// The error and its causes, for a message that says what actually went wrong.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Builds the one pooled upstream client.
pub fn client(config: &Config) -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a default TLS provider; ring builds fast and needs no C toolchain
    // beyond cc. Installing twice (tests) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        // A redirect from upstream is the client's to follow: following it here would re-send
        // the body and the credentials to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        let out = end_to_end_headers(&h);
        assert_eq!(out.len(), 3);
        assert!(out.get("x-secret").is_none());
        assert_eq!(out.get_all("x-multi").iter().count(), 2);
    }
}
