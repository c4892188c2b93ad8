//! Flags and environment → [`Config`], the checked settings of a running server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The built-in echo upstream (`--upstream echo`).
    Echo,
    /// A real OpenAI-compatible API; `/v1/X` maps to `URL/X`.
    Url(reqwest::Url),
}

impl Upstream {
    /// Parses `--upstream`: `echo` or an http(s) URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "echo" {
            return Ok(Upstream::Echo);
        }
        let url = reqwest::Url::parse(text).map_err(|e| {
            format!("`{text}` is not a URL ({e}); use `echo` or e.g. `https://api.openai.com/v1`")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{text}` must be an http or https URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("`{text}` must not have a query or fragment"));
        }
        Ok(Upstream::Url(url))
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Echo => f.write_str("echo"),
            Upstream::Url(url) => f.write_str(url.as_str()),
        }
    }
}

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub prompts_dir: PathBuf,
    pub upstream: Upstream,
    /// Replaces the client's `Authorization` when set.
    pub upstream_api_key: Option<String>,
    pub connect_timeout: Duration,
    /// Bound on a whole upstream exchange, streamed body included.
    pub upstream_timeout: Duration,
    pub max_body_bytes: usize,
    /// How long in-flight requests may run on after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Where the audit trail (and other state) lives.
    pub state_dir: PathBuf,
    /// Bearer token for the admin API; without one, admin reads only.
    pub admin_token: Option<String>,
    /// A separate listener for the admin API and `/metrics`.
    pub admin_listen: Option<SocketAddr>,
    /// Poll the prompts folder at this interval instead of using inotify.
    pub watch_poll: Option<Duration>,
    /// Watch the prompts folder at all.
    pub watch: bool,
    /// The events file (one JSON line per request and feedback); `None` keeps no file, and
    /// statistics then do not survive a restart.
    pub events: Option<PathBuf>,
    /// Put the upstream request (prompt and messages) into each event.
    pub log_content: bool,
    /// A pricing file extending the built-in table.
    pub pricing: Option<PathBuf>,
    /// Request ids remembered for feedback.
    pub feedback_window: usize,
    /// The embedding model's folder (ONNX model and tokenizer files).
    pub embedding_model: PathBuf,
    /// The ONNX Runtime shared library.
    pub onnxruntime: PathBuf,
    /// OTLP trace export; `None`: no tracing at all.
    pub otlp: Option<crate::otel::OtlpConfig>,
    /// Distinct feedback metric names a prompt without `feedback_metrics` accepts.
    pub feedback_metrics_max: usize,
    /// The server's own limits on client connections.
    pub limits: Limits,
    /// A listener serving only `/healthz` and `/readyz`, for probes from outside the pod.
    pub health_listen: Option<SocketAddr>,
    /// The events file and the audit trail are rotated past these sizes.
    pub events_max_bytes: u64,
    pub audit_max_bytes: u64,
    /// Rotated files kept of each.
    pub rotated_kept: usize,
    /// The Prometheus that scrapes every replica, for fleet-wide experiment reports.
    pub prometheus: Option<String>,
    /// Git write mode: admin and console writes are commits pushed to this repository.
    pub git: Option<crate::admin::git::GitConfig>,
    /// `GET /admin/audit` reads the git history of the checkout the prompts folder is in.
    pub git_audit: bool,
    /// Serve only the console, the admin API, `/metrics` and the probes: no proxy.
    pub console_only: bool,
}

/// Limits on what clients of the listeners may hold, so one stuck or runaway client cannot
/// starve the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A connection that has not sent a whole request head within this time is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once per listener; more wait in the accept queue.
    pub max_connections: usize,
    /// Largest request head (request line and headers); larger ones get 431.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_header_bytes: 64 * 1024,
        }
    }
}

impl Config {
    /// Defaults as the CLI has them, for a prompts folder and an upstream.
    pub fn new(prompts_dir: impl Into<PathBuf>, upstream: Upstream) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            prompts_dir: prompts_dir.into(),
            upstream,
            upstream_api_key: None,
            connect_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(600),
            max_body_bytes: 10 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            state_dir: PathBuf::from(".promptgate"),
            admin_token: None,
            admin_listen: None,
            watch_poll: None,
            watch: true,
            events: None,
            log_content: false,
            pricing: None,
            feedback_window: 100_000,
            embedding_model: PathBuf::from("models/all-MiniLM-L6-v2"),
            onnxruntime: PathBuf::from("models/onnxruntime/libonnxruntime.so"),
            otlp: None,
            feedback_metrics_max: crate::record::DEFAULT_FEEDBACK_METRICS_MAX,
            limits: Limits::default(),
            health_listen: None,
            events_max_bytes: 64 * 1024 * 1024,
            audit_max_bytes: 16 * 1024 * 1024,
            rotated_kept: 3,
            prometheus: None,
            git: None,
            git_audit: false,
            console_only: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_parses_echo_and_urls() {
        assert_eq!(Upstream::parse("echo"), Ok(Upstream::Echo));
        assert!(matches!(
            Upstream::parse("http://127.0.0.1:9/v1"),
            Ok(Upstream::Url(_))
        ));
        assert!(Upstream::parse("ftp://x").unwrap_err().contains("http"));
        assert!(
            Upstream::parse("not a url")
                .unwrap_err()
                .contains("not a URL")
        );
    }
}
