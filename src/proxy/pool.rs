//! The upstream's connections: idle HTTP/1.1 connections kept for the next request (90 s idle
//! at most, 64 of them), or one shared HTTP/2 connection when the upstream chooses h2 by ALPN.
//!
//! promptgate talks to one origin, so the pool is a list, not hyper-util's map of pools keyed
//! by origin (which hashed the origin three times per request, behind boxed futures). What
//! that client did is kept: the `Host` header and origin-form targets for HTTP/1.1, absolute
//! URIs for HTTP/2, a request that a reused connection refused before sending is sent again
//! once on a new connection, and a connection goes back to the pool only when its answer's body
//! has been read to the end.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderValue, Request, Response, Uri, header};
use bytes::Bytes;
use futures_util::FutureExt as _;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service as _;

/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept at most.
const MAX_IDLE: usize = 64;

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
pub type SendBody = http_body_util::Either<http_body_util::Full<Bytes>, axum::body::Body>;

/// The pool of connections to the upstream's origin.
pub struct Pool {
    connector: Connector,
    /// `scheme://authority`, what the connector connects to.
    origin: Uri,
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header of HTTP/1.1 requests: the authority without a default port.
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection, when the upstream speaks it: one, shared by every request.
    h2: Mutex<Option<http2::SendRequest<SendBody>>>,
    /// The upstream chose HTTP/2 before: requests that find no live connection wait for one
    /// of them to make it, instead of each making its own.
    speaks_h2: AtomicBool,
    connecting: tokio::sync::Mutex<()>,
}

struct Idle {
    sender: http1::SendRequest<SendBody>,
    since: Instant,
}

enum Sender {
    H1(http1::SendRequest<SendBody>),
    H2(http2::SendRequest<SendBody>),
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Error {
    /// No connection: refused, unresolvable, the TLS handshake failed, or not within the
    /// connect timeout.
    Connect(Box<dyn StdError + Send + Sync>),
    /// Connected, but the request failed or the connection closed before an answer.
    Request(hyper::Error),
}

impl Error {
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As hyper-util's client said it, so logs read the same.
        match self {
            Error::Connect(_) => f.write_str("client error (Connect)"),
            Error::Request(_) => f.write_str("client error (SendRequest)"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Connect(e) => Some(e.as_ref()),
            Error::Request(e) => Some(e),
        }
    }
}

impl Pool {
    /// A pool for `scheme://authority`. Idle connections past their time are closed by a task
    /// that lives as long as the pool.
    pub fn new(connector: Connector, scheme: Scheme, authority: Authority) -> Arc<Self> {
        let secure = scheme == Scheme::HTTPS;
        let host = match authority.port_u16() {
            Some(443) if secure => authority.host().to_owned(),
            Some(80) if !secure => authority.host().to_owned(),
            _ => authority.as_str().to_owned(),
        };
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .expect("a scheme and an authority make a URI");
        let pool = Arc::new(Pool {
            connector,
            origin,
            scheme,
            authority,
            host: HeaderValue::from_str(&host).expect("an authority is a valid header value"),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            speaks_h2: AtomicBool::new(false),
            connecting: tokio::sync::Mutex::new(()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reap(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Sends `request` (its URI: the path and query) and answers with the response head; the
    /// body streams, and its connection returns to the pool when it has been read whole.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<SendBody>,
        path: PathAndQuery,
    ) -> Result<Response<PooledBody>, Error> {
        let mut retried = false;
        loop {
            let (sender, reused) = self.checkout(retried).await?;
            match sender {
                Sender::H2(mut sender) => {
                    let mut parts = axum::http::uri::Parts::default();
                    parts.scheme = Some(self.scheme.clone());
                    parts.authority = Some(self.authority.clone());
                    parts.path_and_query = Some(path.clone());
                    *request.uri_mut() = Uri::from_parts(parts).expect("absolute URI parts");
                    request.headers_mut().remove(header::HOST);
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            return Ok(response.map(|body| PooledBody { body, back: None }));
                        }
                        Err(mut e) => match e.take_message() {
                            // The shared connection was going away: once more, on a new one.
                            Some(unsent) if reused && !retried => {
                                request = unsent;
                                retried = true;
                            }
                            _ => return Err(Error::Request(e.into_error())),
                        },
                    }
                }
                Sender::H1(mut sender) => {
                    *request.uri_mut() = Uri::from(path.clone());
                    request
                        .headers_mut()
                        .insert(header::HOST, self.host.clone());
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            // An empty body goes back when it is dropped.
                            let back = Some((sender, Arc::clone(self)));
                            return Ok(response.map(|body| PooledBody { body, back }));
                        }
                        Err(mut e) => match e.take_message() {
                            // A reused connection closed before the request went out: once
                            // more, on a connection of its own.
                            Some(unsent) if reused && !retried => {
                                request = unsent;
                                retried = true;
                            }
                            _ => return Err(Error::Request(e.into_error())),
                        },
                    }
                }
            }
        }
    }

    /// A connection ready for a request, and whether it was reused; with `fresh`, a new one
    /// (a retry: the reused one refused the request).
    async fn checkout(self: &Arc<Self>, fresh: bool) -> Result<(Sender, bool), Error> {
        if fresh {
            return Ok((self.connect().await?, false));
        }
        if let Some(sender) = self.shared_h2() {
            return Ok((Sender::H2(sender), true));
        }
        if self.speaks_h2.load(Ordering::Relaxed) {
            let _one_at_a_time = self.connecting.lock().await;
            if let Some(sender) = self.shared_h2() {
                return Ok((Sender::H2(sender), true));
            }
            return Ok((self.connect().await?, false));
        }
        loop {
            // The most recently used first: it is the least likely to have been closed.
            let idle = self.idle.lock().expect("the pool's lock").pop();
            let Some(Idle { mut sender, since }) = idle else {
                break;
            };
            if since.elapsed() > IDLE_TIMEOUT || sender.is_closed() {
                continue;
            }
            match sender.ready().now_or_never() {
                Some(Ok(())) => return Ok((Sender::H1(sender), true)),
                Some(Err(_)) => continue,
                // Still busy (its request body still going out, or its end not yet seen):
                // never waited on here; it comes back when it is free.
                None => self.put_when_ready(sender),
            }
        }
        Ok((self.connect().await?, false))
    }

    /// The live shared HTTP/2 connection, if there is one.
    fn shared_h2(&self) -> Option<http2::SendRequest<SendBody>> {
        self.h2
            .lock()
            .expect("the pool's lock")
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    async fn connect(&self) -> Result<Sender, Error> {
        let io = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(Error::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(Error::Request)?;
            tokio::spawn(async move {
                // Its end (the upstream closing it) shows as `is_closed` on the sender.
                let _ = connection.await;
            });
            *self.h2.lock().expect("the pool's lock") = Some(sender.clone());
            self.speaks_h2.store(true, Ordering::Relaxed);
            Ok(Sender::H2(sender))
        } else {
            // An upstream that chose HTTP/2 before and HTTP/1.1 now (another server behind
            // the same name): its idle list is used again.
            self.speaks_h2.store(false, Ordering::Relaxed);
            let (sender, connection) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(Error::Request)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Sender::H1(sender))
        }
    }

    /// An HTTP/1.1 connection whose answer has been read: kept for the next request once it is
    /// free, which is at once unless its request body is still going out.
    fn give_back(self: Arc<Self>, mut sender: http1::SendRequest<SendBody>) {
        match sender.ready().now_or_never() {
            Some(Ok(())) => self.put(sender),
            Some(Err(_)) => {}
            None => self.put_when_ready(sender),
        }
    }

    /// Waits, off the request, for a busy connection to be free, then keeps it.
    fn put_when_ready(self: &Arc<Self>, mut sender: http1::SendRequest<SendBody>) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.put(sender);
            }
        });
    }

    fn put(&self, sender: http1::SendRequest<SendBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("the pool's lock");
        if idle.len() >= MAX_IDLE {
            // The oldest goes.
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Drops the connections idle for longer than they may be.
    fn reap_idle(&self) {
        self.idle
            .lock()
            .expect("the pool's lock")
            .retain(|idle| idle.since.elapsed() <= IDLE_TIMEOUT && !idle.sender.is_closed());
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().expect("the pool's lock").len()
    }
}

/// Closes idle connections past their time, every few seconds, while the pool lives.
async fn reap(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(IDLE_TIMEOUT / 6);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.reap_idle(),
            None => return,
        }
    }
}

/// An answer's body; its HTTP/1.1 connection returns to the pool once the body has ended.
pub struct PooledBody {
    body: Incoming,
    back: Option<(http1::SendRequest<SendBody>, Arc<Pool>)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            pool.give_back(sender);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Read to its end but not polled once more: the connection is free all the same.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        // A body of known length ends with its last byte: readers stop there, without the
        // poll that would answer `None`.
        if matches!(polled, Poll::Ready(None)) || this.body.is_end_stream() {
            this.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A listener on 127.0.0.1, its port, and a count for the connections accepted on it.
    async fn counted_listener() -> (tokio::net::TcpListener, u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port, Arc::new(AtomicUsize::new(0)))
    }

    /// An upstream that answers every request on a connection with `hello`, and counts the
    /// connections it accepted; with `close_after`, it closes each connection after that many
    /// answers without saying so.
    async fn upstream(close_after: Option<usize>) -> (u16, Arc<AtomicUsize>) {
        let (listener, port, accepted) = counted_listener().await;
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut answered = 0;
                    loop {
                        let mut read = 0;
                        while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf[read..]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => read += n,
                            }
                        }
                        let head = String::from_utf8_lossy(&buf[..read]).to_string();
                        assert!(head.contains(" /v1/x HTTP/1.1\r\n"), "{head}");
                        assert!(head.to_ascii_lowercase().contains("\r\nhost: 127.0.0.1:"));
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        answered += 1;
                        if close_after == Some(answered) {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    /// The test CA, its certificate for 127.0.0.1 and that certificate's key
    /// (tests/fixtures/tls, made with openssl, valid for a century).
    const CA: &str = include_str!("../../tests/fixtures/tls/ca.pem");
    const CERT: &str = include_str!("../../tests/fixtures/tls/cert.pem");
    const KEY: &str = include_str!("../../tests/fixtures/tls/key.pem");

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A pool for `scheme://127.0.0.1:port`, trusting the test CA, offering h2 and HTTP/1.1
    /// as promptgate's client does.
    fn pool_for(scheme: Scheme, port: u16) -> Arc<Pool> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(CA.as_bytes()).unwrap())
            .unwrap();
        pool_trusting(roots, scheme, port)
    }

    /// A pool for `scheme://127.0.0.1:port` that trusts `roots` only.
    fn pool_trusting(roots: rustls::RootCertStore, scheme: Scheme, port: u16) -> Arc<Pool> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Pool::new(
            connector,
            scheme,
            format!("127.0.0.1:{port}").parse().unwrap(),
        )
    }

    fn pool(port: u16) -> Arc<Pool> {
        pool_for(Scheme::HTTP, port)
    }

    /// An HTTPS upstream that speaks only HTTP/2 (ALPN `h2`) and answers each request with its
    /// path and `:authority`; counts its connections.
    async fn h2_upstream() -> (u16, Arc<AtomicUsize>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(KEY.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (listener, port, accepted) = counted_listener().await;
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let text = format!(
                            "{:?} {} {}",
                            req.version(),
                            req.uri().path(),
                            req.uri().authority().map_or("-", |a| a.as_str())
                        );
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from(text),
                        )))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn an_https_upstream_that_chooses_h2_shares_one_connection() {
        let (port, accepted) = h2_upstream().await;
        let pool = pool_for(Scheme::HTTPS, port);
        let sends = (0..4).map(|_| get(&pool));
        for answer in futures_util::future::join_all(sends).await {
            assert_eq!(
                answer.unwrap(),
                format!("HTTP/2.0 /v1/x 127.0.0.1:{port}").as_str()
            );
        }
        assert!(
            accepted.load(Ordering::SeqCst) <= 4,
            "h2 connections are shared"
        );
        // Sequential requests after the first: the one shared connection.
        let before = accepted.load(Ordering::SeqCst);
        for _ in 0..3 {
            get(&pool).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_connect_error() {
        let (port, _) = h2_upstream().await;
        let pool = pool_trusting(rustls::RootCertStore::empty(), Scheme::HTTPS, port);
        let err = get(&pool).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert!(
            super::super::forward::error_chain(&err).contains("certificate"),
            "{}",
            super::super::forward::error_chain(&err)
        );
    }

    async fn get(pool: &Arc<Pool>) -> Result<Bytes, Error> {
        let request = Request::new(SendBody::Left(http_body_util::Full::new(Bytes::new())));
        let response = pool
            .send(request, PathAndQuery::from_static("/v1/x"))
            .await?;
        Ok(response.into_body().collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_is_read() {
        let (port, accepted) = upstream(None).await;
        let pool = pool(port);
        for _ in 0..5 {
            assert_eq!(get(&pool).await.unwrap(), "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_body_read_to_its_length_gives_its_connection_back() {
        let (port, accepted) = upstream(None).await;
        let pool = pool(port);
        for _ in 0..3 {
            let request = Request::new(SendBody::Left(http_body_util::Full::new(Bytes::new())));
            let response = pool
                .send(request, PathAndQuery::from_static("/v1/x"))
                .await
                .unwrap();
            // The one frame, and no poll after it, as a relay that knows the length reads.
            let mut body = response.into_body();
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "hello");
            drop(body);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_still_sending_its_request_is_not_waited_on() {
        let (port, accepted) = upstream(None).await;
        let pool = pool(port);
        // A request whose body never ends; the upstream answers it at once.
        let endless = axum::body::Body::from_stream(futures_util::stream::pending::<
            Result<Bytes, std::io::Error>,
        >());
        let mut upload = Request::new(SendBody::Right(endless));
        *upload.method_mut() = axum::http::Method::POST;
        let response = pool
            .send(upload, PathAndQuery::from_static("/v1/x"))
            .await
            .unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "hello"
        );
        // Its connection is still sending: the next request takes a new one.
        let next = tokio::time::timeout(Duration::from_secs(5), get(&pool)).await;
        assert_eq!(
            next.expect("not waiting on the busy connection").unwrap(),
            "hello"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unread_answer_does_not_put_its_connection_back() {
        let (port, accepted) = upstream(None).await;
        let pool = pool(port);
        let request = Request::new(SendBody::Left(http_body_util::Full::new(Bytes::new())));
        let response = pool
            .send(request, PathAndQuery::from_static("/v1/x"))
            .await
            .unwrap();
        drop(response);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(get(&pool).await.unwrap(), "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        let (port, accepted) = upstream(Some(1)).await;
        let pool = pool(port);
        for _ in 0..3 {
            assert_eq!(get(&pool).await.unwrap(), "hello");
            // The upstream closes after each answer; give the close time to arrive, as it
            // does between requests in a pod.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = get(&pool(port)).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert_eq!(err.to_string(), "client error (Connect)");
    }
}
