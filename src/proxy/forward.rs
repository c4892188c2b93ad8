//! Step 5 of the request path: send the request upstream over the pooled client, or to the
//! built-in echo upstream.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper_util::client::legacy::connect::HttpConnector;

use super::echo;
use super::pool::{self, Pool, PooledBody};
use crate::config::{Config, Upstream};

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
    pub body: UpstreamBody,
}

/// The upstream's answer body, chunk by chunk.
pub enum UpstreamBody {
    /// From promptgate's pool, under the request's deadline: held inline, not boxed.
    Pooled(TimedBody),
    /// From reqwest (through a proxy) or the built-in echo.
    Other(BoxStream<'static, Result<Bytes, BodyError>>),
}

impl Stream for UpstreamBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            UpstreamBody::Pooled(body) => Pin::new(body).poll_next(cx),
            UpstreamBody::Other(body) => body.as_mut().poll_next(cx),
        }
    }
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

/// One of [`HOP_BY_HOP`]: a `match` compares the length first, so most names are turned
/// away by one comparison rather than eight.
fn is_hop_by_hop(name: &str) -> bool {
    let found = matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    );
    debug_assert_eq!(found, HOP_BY_HOP.contains(&name));
    found
}

/// Why a request did not get an answer from upstream.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    /// No connection (refused, no route, or not within `--connect-timeout`), or the
    /// connection failed before an answer: 502.
    #[error("upstream `{url}` is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// Connected, but no answer within `--upstream-timeout`: 504.
    #[error("upstream `{url}` did not answer within {seconds} s")]
    Timeout { url: String, seconds: f64 },
    #[error("the upstream API key is not a valid header value")]
    BadApiKey,
    /// The client's body could not be read while it was being sent.
    #[error("could not read the request body: {0}")]
    ClientBody(String),
}

/// Headers of ours, or recomputed for the upstream hop, that are never forwarded.
const NOT_FORWARDED: [&str; 5] = [
    "host",
    // Responses must stay readable for usage and stream handling; compression is for the
    // upstream hop's own negotiation, not the client's.
    "accept-encoding",
    "x-prompt-name",
    "x-prompt-version",
    "x-prompt-variables",
];

/// `headers` without hop-by-hop headers (and those the `Connection` header names), with room
/// for promptgate's own response headers.
pub fn end_to_end_headers(mut headers: HeaderMap) -> HeaderMap {
    strip_headers(&mut headers, &[]);
    headers.reserve(6);
    headers
}

/// Removes from `headers` the hop-by-hop headers, those the `Connection` header names and
/// `skip`, in place: a request has one or two of them (`host`), and removing those costs less
/// than building a new map.
fn strip_headers(headers: &mut HeaderMap, skip: &[&str]) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let dropped = |n: &str| is_hop_by_hop(n) || skip.contains(&n) || named.iter().any(|c| c == n);
    while let Some(name) = headers.keys().find(|name| dropped(name.as_str())).cloned() {
        headers.remove(&name);
    }
}

/// The one pooled upstream client: promptgate's [`Pool`] of connections to the upstream's
/// origin, with the origin and path parsed once at start; or reqwest when a proxy from the environment (`HTTPS_PROXY`,
/// `HTTP_PROXY`, `ALL_PROXY`, minus `NO_PROXY`) applies to the upstream, as it always has, or
/// when the upstream URL carries credentials.
#[derive(Clone)]
pub struct Client(Kind);

#[derive(Clone)]
enum Kind {
    Direct(Arc<Direct>),
    /// Through a proxy, or with credentials in the URL.
    Proxied(reqwest::Client),
    /// `--upstream echo`: nothing to connect to.
    None,
}

struct Direct {
    pool: Arc<Pool>,
    scheme: Scheme,
    authority: Authority,
    paths: UpstreamPaths,
}

/// Upstream paths from the upstream URL's own path.
struct UpstreamPaths {
    /// The upstream's path without its trailing `/` (`""` for none, `/v1` for `…/v1/`).
    base: String,
    /// The injecting endpoints' paths, parsed once: (the path after `/v1/`, its upstream path).
    known: [(&'static str, PathAndQuery); 2],
}

impl UpstreamPaths {
    fn new(base: &str) -> Self {
        let base = base.trim_end_matches('/').to_owned();
        let known = ["chat/completions", "responses"].map(|path| {
            let parsed = PathAndQuery::from_maybe_shared(Bytes::from(format!("{base}/{path}")))
                .expect("a URL's path and a fixed suffix make a valid path");
            // Cloned once here so that each request's clone only counts a reference.
            (path, parsed.clone())
        });
        UpstreamPaths { base, known }
    }

    /// The upstream path and query for `path_and_query` (the part after `/v1/`, or an Azure
    /// path from the origin).
    fn get(&self, path_and_query: &str) -> Result<PathAndQuery, axum::http::uri::InvalidUri> {
        if let Some((_, known)) = self.known.iter().find(|(p, _)| *p == path_and_query) {
            return Ok(known.clone());
        }
        let mut path = String::with_capacity(self.base.len() + path_and_query.len() + 1);
        if !path_and_query.starts_with('/') {
            path.push_str(&self.base);
            path.push('/');
        }
        // Azure OpenAI's `/openai/…` paths go from the upstream's origin.
        path.push_str(path_and_query);
        PathAndQuery::try_from(path)
    }
}

/// Sends `method path_and_query` (the part after `/v1/`) upstream.
pub async fn send(
    http: &Client,
    config: &Config,
    method: Method,
    path_and_query: &str,
    headers: HeaderMap,
    body: OutBody,
) -> Result<UpstreamResponse, UpstreamError> {
    let base = match &config.upstream {
        Upstream::Echo => return echo::answer(&method, path_and_query, body).await,
        Upstream::Url(base) => base,
    };
    match &http.0 {
        Kind::Direct(direct) => {
            send_direct(direct, config, method, path_and_query, headers, body).await
        }
        Kind::Proxied(client) => {
            send_reqwest(client, base, config, method, path_and_query, headers, body).await
        }
        Kind::None => Err(UpstreamError::Unreachable {
            url: base.to_string(),
            reason: "no upstream client was built".to_owned(),
        }),
    }
}

/// The headers that go upstream: the client's end-to-end headers, promptgate's own removed,
/// the upstream key when promptgate holds one.
fn upstream_headers(mut out: HeaderMap, config: &Config) -> Result<HeaderMap, UpstreamError> {
    strip_headers(&mut out, &NOT_FORWARDED);
    if let Some(key) = &config.upstream_api_key {
        if out.contains_key("api-key") {
            // An Azure OpenAI client authenticates with `api-key`; replace that one.
            out.insert(
                "api-key",
                HeaderValue::from_str(key).map_err(|_| UpstreamError::BadApiKey)?,
            );
        } else {
            let value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| UpstreamError::BadApiKey)?;
            out.insert(header::AUTHORIZATION, value);
        }
    }
    Ok(out)
}

async fn send_direct(
    direct: &Direct,
    config: &Config,
    method: Method,
    path_and_query: &str,
    headers: HeaderMap,
    body: OutBody,
) -> Result<UpstreamResponse, UpstreamError> {
    // The URI from the parts parsed at start; only the path is checked per request.
    let path = direct
        .paths
        .get(path_and_query)
        .map_err(|e| UpstreamError::Unreachable {
            url: format!("{}://{}{}", direct.scheme, direct.authority, path_and_query),
            reason: format!("not a valid upstream path: {e}"),
        })?;
    // The URL errors name: the upstream's, path and all.
    let url = || format!("{}://{}{}", direct.scheme, direct.authority, path);
    let mut out = upstream_headers(headers, config)?;
    // As reqwest sent it.
    out.entry(header::ACCEPT)
        .or_insert(HeaderValue::from_static("*/*"));
    let body = match body {
        OutBody::Full(bytes) => {
            // The length of the body promptgate wrote, not the client's.
            out.remove(header::CONTENT_LENGTH);
            Either::Left(Full::new(bytes))
        }
        // A streamed body keeps the client's framing: with its `content-length` when it
        // came with one (hyper then sends it as is), chunked otherwise.
        OutBody::Stream(body) => Either::Right(body),
    };
    let mut request = axum::http::Request::new(body);
    *request.method_mut() = method;
    *request.headers_mut() = out;
    // One deadline for the answer and its whole body, as `--upstream-timeout` says: one
    // timer, first raced against the answer, then handed to the body.
    let timeout = config.upstream_timeout;
    let mut deadline = Box::pin(tokio::time::sleep(timeout));
    // Boxed: the pool's future holds the request and a connection's handshake, and would
    // otherwise be moved whole with every future that awaits it.
    let answer = Box::pin(direct.pool.send(request, path.clone()));
    let response = tokio::select! {
        biased;
        answer = answer => match answer {
            Ok(response) => response,
            Err(e) => return Err(classify_direct(&e, url(), config)),
        },
        () = deadline.as_mut() => {
            return Err(UpstreamError::Timeout {
                url: url(),
                seconds: timeout.as_secs_f64(),
            });
        }
    };
    let (parts, body) = response.into_parts();
    Ok(UpstreamResponse {
        status: parts.status,
        // The upstream's `x-request-id` (OpenAI's `req_…`) passes through untouched: the SDKs
        // show it as `_request_id`, and it is the id the provider's support asks for (SPEC §2).
        headers: end_to_end_headers(parts.headers),
        body: UpstreamBody::Pooled(TimedBody {
            body,
            deadline,
            timeout,
        }),
    })
}

/// The upstream's body as it arrives, ended with a timeout error at the request's deadline.
pub struct TimedBody {
    body: PooledBody,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl Stream for TimedBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    // Trailers: not relayed.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError {
                    timeout: false,
                    message: format!("upstream stream failed: {}", error_chain(&e)),
                }))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => match self.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError {
                        timeout: true,
                        message: format!(
                            "upstream did not finish within {} s",
                            self.timeout.as_secs_f64()
                        ),
                    }))),
                    Poll::Pending => Poll::Pending,
                },
            };
        }
    }
}

/// 502 for anything short of an answer: a refused connection, a connect timeout, a reset.
fn classify_direct(err: &pool::Error, url: String, config: &Config) -> UpstreamError {
    let timed_out = {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        let mut found = false;
        while let Some(e) = source {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                found = true;
            }
            source = e.source();
        }
        found
    };
    let reason = if err.is_connect() && timed_out {
        format!(
            "could not connect within {} s (`--connect-timeout`)",
            config.connect_timeout.as_secs_f64()
        )
    } else {
        error_chain(err)
    };
    UpstreamError::Unreachable { url, reason }
}

async fn send_reqwest(
    http: &reqwest::Client,
    base: &reqwest::Url,
    config: &Config,
    method: Method,
    path_and_query: &str,
    headers: HeaderMap,
    body: OutBody,
) -> Result<UpstreamResponse, UpstreamError> {
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
        let mut full_path = String::with_capacity(base.path().len() + path.len() + 1);
        full_path.push_str(base.path().trim_end_matches('/'));
        full_path.push('/');
        full_path.push_str(path);
        url.set_path(&full_path);
    }
    url.set_query(query);
    let mut out = upstream_headers(headers, config)?;
    let body = match body {
        OutBody::Full(bytes) => {
            // The length of the body promptgate wrote, not the client's.
            out.remove(header::CONTENT_LENGTH);
            reqwest::Body::from(bytes)
        }
        // A streamed body keeps the client's framing: with its `content-length` when it
        // came with one (hyper then sends it as is), chunked otherwise.
        OutBody::Stream(body) => reqwest::Body::wrap_stream(body.into_data_stream()),
    };
    let sent = http
        .request(method, url)
        .headers(out)
        .timeout(config.upstream_timeout)
        .body(body)
        .send()
        .await;
    let response = sent.map_err(|e| classify(&e, base, config))?;
    let status = response.status();
    // The upstream's `x-request-id` (OpenAI's `req_…`) passes through untouched: the SDKs show
    // it as `_request_id`, and it is the id the provider's support asks for (SPEC §2).
    let headers = end_to_end_headers(response.headers().clone());
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
        body: UpstreamBody::Other(body),
    })
}

/// 502 for anything short of an answer — a refused connection, a connect timeout, a reset —
/// and 504 only for an upstream that connected and did not answer in time.
fn classify(err: &reqwest::Error, base: &reqwest::Url, config: &Config) -> UpstreamError {
    let url = err
        .url()
        .map_or_else(|| base.to_string(), ToString::to_string);
    if err.is_connect() {
        let reason = if err.is_timeout() {
            format!(
                "could not connect within {} s (`--connect-timeout`)",
                config.connect_timeout.as_secs_f64()
            )
        } else {
            error_chain(err)
        };
        UpstreamError::Unreachable { url, reason }
    } else if err.is_timeout() {
        UpstreamError::Timeout {
            url,
            seconds: config.upstream_timeout.as_secs_f64(),
        }
    } else {
        UpstreamError::Unreachable {
            url,
            reason: error_chain(err),
        }
    }
}

/// The error and its causes, for a message that says what actually went wrong.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
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
pub fn client(config: &Config) -> anyhow::Result<Client> {
    // Built without a default TLS provider; ring builds fast and needs no C toolchain beyond
    // cc. Installing twice (tests) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Upstream::Url(base) = &config.upstream else {
        return Ok(Client(Kind::None));
    };
    let uri: Uri = base
        .as_str()
        .parse()
        .map_err(|e| anyhow::anyhow!("the upstream `{base}` is not a valid URI: {e}"))?;
    let proxies = hyper_util::client::proxy::matcher::Matcher::from_system();
    // reqwest also turns credentials in the URL (`https://user:key@host/`) into basic auth.
    let credentials = !base.username().is_empty() || base.password().is_some();
    if proxies.intercept(&uri).is_some() || credentials {
        return Ok(Client(Kind::Proxied(reqwest_client(config)?)));
    }
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        anyhow::bail!("the upstream `{base}` has no scheme or host");
    };
    // The connection settings reqwest used: TCP keep-alive, no Nagle, the connect timeout.
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    #[cfg(target_os = "linux")]
    http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
    // TLS as reqwest set it up: the installed provider, every protocol version, the platform's
    // certificate verifier; HTTP/2 when the server offers it.
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client(Kind::Direct(Arc::new(Direct {
        pool: Pool::new(connector, scheme.clone(), authority.clone()),
        scheme,
        authority,
        paths: UpstreamPaths::new(uri.path()),
    }))))
}

/// reqwest, for an upstream reached through a proxy.
fn reqwest_client(config: &Config) -> anyhow::Result<reqwest::Client> {
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
        let out = end_to_end_headers(h);
        assert_eq!(out.len(), 3);
        assert!(out.get("x-secret").is_none());
        assert_eq!(out.get_all("x-multi").iter().count(), 2);
    }

    #[test]
    fn upstream_paths_join_the_base_path() {
        for (base, prefix) in [("", ""), ("/", ""), ("/v1", "/v1"), ("/v1/", "/v1")] {
            let paths = UpstreamPaths::new(base);
            for path in [
                "chat/completions",
                "responses",
                "embeddings",
                "chat/completions?x=1",
            ] {
                assert_eq!(
                    paths.get(path).unwrap(),
                    format!("{prefix}/{path}").as_str()
                );
            }
            // Azure's paths go from the origin.
            let azure = "/openai/deployments/d/chat/completions?api-version=1";
            assert_eq!(paths.get(azure).unwrap(), azure);
            assert!(paths.get("chat/completions with space").is_err());
        }
    }
}
