//! The floor under promptgate's request path: hyper's HTTP/1 server and hyper-util's pooled
//! client (the two promptgate is built on, with the same settings that matter — no-delay
//! sockets, keep-alive, a pool) forwarding each request to the upstream and its answer back,
//! and doing nothing else: no parsing, no prompt, no log line, no record.
//!
//! `bench/cost.sh` measures it beside nginx and promptgate (case `floor`): what promptgate
//! costs above it is promptgate's own work; what it costs above nginx is the HTTP stack's.
//!
//! `floor_proxy LISTEN_PORT UPSTREAM_PORT`: listens on `127.0.0.1:LISTEN_PORT`, forwards
//! `/v1/PATH` to `http://127.0.0.1:UPSTREAM_PORT/PATH`.

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Upstream = Client<HttpConnector, Incoming>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = |i: usize| -> u16 {
        match std::env::args().nth(i).map(|p| p.parse()) {
            Some(Ok(port)) => port,
            _ => {
                eprintln!("usage: floor_proxy LISTEN_PORT UPSTREAM_PORT");
                std::process::exit(2);
            }
        }
    };
    let (listen, upstream) = (port(1), port(2));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await?;
    let client: Upstream = Client::builder(TokioExecutor::new()).build_http();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), upstream, req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: Upstream,
    upstream: u16,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().strip_prefix("/v1").unwrap_or("/");
    parts.uri = format!("http://127.0.0.1:{upstream}{path}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("http://127.0.0.1/"));
    client.request(Request::from_parts(parts, body)).await
}
