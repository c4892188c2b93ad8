//! The command line: `serve`, `validate`, `render`. Every `serve` flag is also an environment
//! variable `PROMPTGATE_<FLAG>`.

use std::borrow::Cow;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use crate::config::{Config, Upstream};
use crate::prompts;
use crate::proxy::parse::{self, PromptRef};
use crate::proxy::request::{self, Endpoint};

#[derive(Debug, Parser)]
#[command(
    name = "promptgate",
    version,
    about = "A prompt-management sidecar for OpenAI-compatible APIs"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the proxy.
    Serve(Box<ServeArgs>),
    /// Check every prompt file; print every problem and exit 1 if there are any.
    Validate(ValidateArgs),
    /// Print the request that would go upstream for a prompt.
    Render(RenderArgs),
    /// Print a prompt's experiment report over every replica, from Prometheus.
    Report(ReportArgs),
    /// Turn Prompty files or a Langfuse prompt export into prompt folders.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The tool the files come from.
    #[arg(long, value_enum)]
    from: ImportFrom,
    /// The files: `.prompty` files, or Langfuse prompt JSON (one version, or a list).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The prompts folder to write into (one sub-folder per prompt; nothing is overwritten).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ImportFrom {
    Prompty,
    Langfuse,
}

#[derive(Debug, Args)]
struct PromptsDir {
    /// The prompts folder: one sub-folder per prompt.
    #[arg(
        long = "prompts",
        env = "PROMPTGATE_PROMPTS",
        default_value = "prompts",
        value_name = "DIR"
    )]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct ModelArgs {
    /// The embedding model folder (model.onnx and tokenizer files), for `semantic` and `mmr`
    /// examples; fetched by scripts/fetch-model.sh.
    #[arg(
        long,
        env = "PROMPTGATE_EMBEDDING_MODEL",
        default_value = "models/all-MiniLM-L6-v2",
        value_name = "DIR"
    )]
    embedding_model: PathBuf,
    /// The ONNX Runtime shared library (1.24 or newer).
    #[arg(
        long,
        env = "PROMPTGATE_ONNXRUNTIME",
        default_value = "models/onnxruntime/libonnxruntime.so",
        value_name = "FILE"
    )]
    onnxruntime: PathBuf,
}

impl ModelArgs {
    fn slot(&self, cache: Option<PathBuf>) -> crate::fewshot::ModelSlot {
        crate::fewshot::ModelSlot::new(
            self.embedding_model.clone(),
            self.onnxruntime.clone(),
            cache,
        )
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "PROMPTGATE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    prompts: PromptsDir,
    /// Upstream base URL (`/v1/X` goes to `URL/X`), or `echo` for the built-in local echo.
    #[arg(
        long,
        env = "PROMPTGATE_UPSTREAM",
        default_value = "https://api.openai.com/v1"
    )]
    upstream: String,
    /// API key sent upstream instead of the client's `Authorization` (falls back to `OPENAI_API_KEY`).
    #[arg(long, env = "PROMPTGATE_UPSTREAM_API_KEY", hide_env_values = true)]
    upstream_api_key: Option<String>,
    /// Seconds to wait for a connection to the upstream.
    #[arg(long, env = "PROMPTGATE_CONNECT_TIMEOUT", default_value = "10", value_name = "SECONDS", value_parser = seconds)]
    connect_timeout: Duration,
    /// Seconds an upstream exchange may take in all, streamed body included.
    #[arg(long, env = "PROMPTGATE_UPSTREAM_TIMEOUT", default_value = "600", value_name = "SECONDS", value_parser = seconds)]
    upstream_timeout: Duration,
    /// Largest request body read, in bytes; larger ones get 413.
    #[arg(
        long,
        env = "PROMPTGATE_MAX_BODY_BYTES",
        default_value = "10485760",
        value_name = "BYTES"
    )]
    max_body_bytes: usize,
    /// Seconds in-flight requests may run on after SIGTERM/SIGINT.
    #[arg(long, env = "PROMPTGATE_SHUTDOWN_GRACE", default_value = "30", value_name = "SECONDS", value_parser = seconds)]
    shutdown_grace: Duration,
    /// Log format.
    #[arg(long, env = "PROMPTGATE_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Folder for the audit trail and other state.
    #[arg(
        long,
        env = "PROMPTGATE_STATE_DIR",
        default_value = ".promptgate",
        value_name = "DIR"
    )]
    state_dir: PathBuf,
    /// Bearer token for the admin API; without one only admin reads are allowed.
    #[arg(long, env = "PROMPTGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Serve the admin API and /metrics on this address instead of the main one.
    #[arg(long, env = "PROMPTGATE_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Poll the prompts folder every N milliseconds instead of using file events (for
    /// filesystems where inotify says nothing).
    #[arg(long, env = "PROMPTGATE_WATCH_POLL_MS", value_name = "MS", value_parser = clap::value_parser!(u64).range(10..))]
    watch_poll_ms: Option<u64>,
    /// Do not watch the prompts folder (changes need a restart or an admin write).
    #[arg(long, env = "PROMPTGATE_NO_WATCH")]
    no_watch: bool,
    /// The events file, one JSON line per request and feedback (default: STATE_DIR/events.jsonl).
    /// Experiment statistics are rebuilt from it at start.
    #[arg(long, env = "PROMPTGATE_EVENTS", value_name = "FILE")]
    events: Option<PathBuf>,
    /// Keep no events file (statistics then start empty at every start).
    #[arg(long, env = "PROMPTGATE_NO_EVENTS", conflicts_with = "events")]
    no_events: bool,
    /// Put the upstream request (prompt and message text) into each event.
    #[arg(long, env = "PROMPTGATE_LOG_CONTENT")]
    log_content: bool,
    /// A YAML pricing file extending the built-in prices:
    /// `models: {gpt-4o: {input_per_million: 2.5, output_per_million: 10.0, cached_input_per_million: 1.25}}`.
    #[arg(long, env = "PROMPTGATE_PRICING", value_name = "FILE")]
    pricing: Option<PathBuf>,
    /// How many recent request ids are remembered for feedback.
    #[arg(
        long,
        env = "PROMPTGATE_FEEDBACK_WINDOW",
        default_value = "100000",
        value_name = "N"
    )]
    feedback_window: usize,
    /// Export a trace span per request and per upstream call over OTLP/HTTP (protobuf) to this
    /// collector (`http://collector:4318`; `/v1/traces` is added). Without it, the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` turn tracing on;
    /// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` and `OTEL_SERVICE_NAME` are
    /// honoured. Off by default.
    #[arg(long, env = "PROMPTGATE_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Distinct feedback metric names accepted per prompt whose prompt.yaml declares no
    /// `feedback_metrics`; further names are refused with 400.
    #[arg(
        long,
        env = "PROMPTGATE_FEEDBACK_METRICS_MAX",
        default_value = "10",
        value_name = "N"
    )]
    feedback_metrics_max: usize,
    /// Seconds a client connection may take to send a request's headers before it is closed.
    #[arg(long, env = "PROMPTGATE_HEADER_READ_TIMEOUT", default_value = "10", value_name = "SECONDS", value_parser = seconds)]
    header_read_timeout: Duration,
    /// Client connections served at once per listener; further ones wait to be accepted.
    #[arg(long, env = "PROMPTGATE_MAX_CONNECTIONS", default_value = "1024", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Threads that serve requests: 0 (the default) for one per CPU the process may use, N for
    /// that many; 1 for a single-threaded server, the least CPU per request (no work handed
    /// between threads), for a sidecar limited to one CPU or less.
    #[arg(long, env = "PROMPTGATE_THREADS", default_value = "0", value_name = "N", value_parser = clap::value_parser!(u64).range(0..=1024))]
    threads: u64,
    /// Largest request head (request line and headers) in bytes; larger ones get 431.
    #[arg(long, env = "PROMPTGATE_MAX_HEADER_BYTES", default_value = "65536", value_name = "BYTES", value_parser = clap::value_parser!(u64).range(8192..=16_777_216))]
    max_header_bytes: u64,
    /// Serve only /healthz and /readyz on this address too, for probes from outside the
    /// pod while --listen stays on 127.0.0.1.
    #[arg(long, env = "PROMPTGATE_HEALTH_LISTEN", value_name = "ADDR")]
    health_listen: Option<SocketAddr>,
    /// Rotate the events file when it passes this size in bytes; statistics are checkpointed
    /// to the state folder, so a restart reads only the checkpoint and what came after it.
    #[arg(
        long,
        env = "PROMPTGATE_EVENTS_MAX_BYTES",
        default_value = "67108864",
        value_name = "BYTES",
        value_parser = clap::value_parser!(u64).range(4096..)
    )]
    events_max_bytes: u64,
    /// Rotate the audit trail when it passes this size in bytes.
    #[arg(
        long,
        env = "PROMPTGATE_AUDIT_MAX_BYTES",
        default_value = "16777216",
        value_name = "BYTES",
        value_parser = clap::value_parser!(u64).range(4096..)
    )]
    audit_max_bytes: u64,
    /// Rotated files kept of the events file and of the audit trail each; older ones are
    /// deleted.
    #[arg(
        long,
        env = "PROMPTGATE_ROTATED_KEPT",
        default_value = "3",
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=1000)
    )]
    rotated_kept: u64,
    /// The Prometheus scraping every replica, for `GET /admin/prompts/{name}/experiment?scope=fleet`.
    #[arg(long, env = "PROMPTGATE_PROMETHEUS", value_name = "URL")]
    prometheus: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    git: GitArgs,
}

/// Git write mode: the admin API and the console write through git.
#[derive(Debug, Args)]
struct GitArgs {
    /// Write through git: every admin or console change is one commit pushed to this
    /// repository's --git-branch, and the prompts served are that branch's (cloned into
    /// STATE_DIR/git; --prompts is not used).
    #[arg(long, env = "PROMPTGATE_GIT_REMOTE", value_name = "URL")]
    git_remote: Option<String>,
    /// The branch every replica serves.
    #[arg(
        long,
        env = "PROMPTGATE_GIT_BRANCH",
        default_value = "main",
        value_name = "BRANCH"
    )]
    git_branch: String,
    /// The prompts folder inside the repository.
    #[arg(
        long,
        env = "PROMPTGATE_GIT_PATH",
        default_value = "prompts",
        value_name = "DIR"
    )]
    git_path: PathBuf,
    /// Push each change to a branch of its own, PREFIX/<prompt>-v<N>, for review, instead of
    /// to --git-branch; it is live once merged.
    #[arg(long, env = "PROMPTGATE_GIT_REVIEW_BRANCH", value_name = "PREFIX")]
    git_review_branch: Option<String>,
    /// A link to a change waiting for review, `{branch}`, `{commit}` and `{base}` filled in:
    /// `https://github.com/org/prompts/compare/{base}...{branch}`.
    #[arg(long, env = "PROMPTGATE_GIT_WEB_URL", value_name = "TEMPLATE")]
    git_web_url: Option<String>,
    /// A private SSH key for the remote (a mounted Secret); otherwise the standard git
    /// environment (GIT_SSH_COMMAND, credential helpers) applies.
    #[arg(long, env = "PROMPTGATE_GIT_SSH_KEY", value_name = "FILE")]
    git_ssh_key: Option<PathBuf>,
    /// known_hosts for --git-ssh-key; without it the host key is accepted on first use.
    #[arg(long, env = "PROMPTGATE_GIT_KNOWN_HOSTS", value_name = "FILE")]
    git_known_hosts: Option<PathBuf>,
    /// A file holding an HTTPS access token (a mounted Secret), read at each push or fetch.
    #[arg(long, env = "PROMPTGATE_GIT_TOKEN_FILE", value_name = "FILE")]
    git_token_file: Option<PathBuf>,
    /// The user name sent with --git-token-file.
    #[arg(
        long,
        env = "PROMPTGATE_GIT_USERNAME",
        default_value = "x-access-token"
    )]
    git_username: String,
    /// Seconds between fetches of the branch (changes pushed by others, merged reviews).
    #[arg(long, env = "PROMPTGATE_GIT_POLL", default_value = "30", value_name = "SECONDS", value_parser = seconds)]
    git_poll: Duration,
    /// Without --git-remote: `GET /admin/audit` reads the git history of the checkout the
    /// prompts folder is in (a git-sync worktree cloned with --depth=0), so every replica
    /// tells the same story as the repository.
    #[arg(long, env = "PROMPTGATE_GIT_AUDIT")]
    git_audit: bool,
    /// Serve no proxy: the console, the admin API, /metrics and the probes only, on --listen
    /// (one place to edit prompts for a fleet, beside sidecars that read through git-sync).
    #[arg(long, env = "PROMPTGATE_CONSOLE_ONLY")]
    console_only: bool,
}

impl GitArgs {
    fn config(&self) -> Option<crate::admin::git::GitConfig> {
        let remote = self.git_remote.as_ref().filter(|r| !r.is_empty())?;
        let mut config = crate::admin::git::GitConfig::new(remote.clone());
        config.branch.clone_from(&self.git_branch);
        config.path.clone_from(&self.git_path);
        config.review_prefix = self
            .git_review_branch
            .as_ref()
            .map(|p| p.trim_end_matches('/').to_owned())
            .filter(|p| !p.is_empty());
        config.web_url = self.git_web_url.clone().filter(|u| !u.is_empty());
        config.ssh_key.clone_from(&self.git_ssh_key);
        config.known_hosts.clone_from(&self.git_known_hosts);
        config.token_file.clone_from(&self.git_token_file);
        config.username.clone_from(&self.git_username);
        config.poll = self.git_poll;
        Some(config)
    }
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// The prompt's name.
    name: String,
    #[command(flatten)]
    prompts: PromptsDir,
    /// The Prometheus (or Thanos, Mimir) that scrapes every replica's /metrics.
    #[arg(long, env = "PROMPTGATE_PROMETHEUS", value_name = "URL")]
    prometheus: String,
    /// How far back to look: a whole number and s, m, h, d or w.
    #[arg(long, default_value = "7d")]
    range: crate::record::prometheus::Range,
    /// Print the JSON of `GET /admin/prompts/{name}/experiment?scope=fleet` instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds each query to Prometheus may take.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = seconds)]
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct ValidateArgs {
    #[command(flatten)]
    prompts: PromptsDir,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Debug, Args)]
struct RenderArgs {
    /// The prompt's name.
    name: String,
    #[command(flatten)]
    prompts: PromptsDir,
    /// A version number or label (default: as a request without one would get).
    #[arg(long)]
    version: Option<String>,
    /// A variable: `name=text`, or `name:=JSON` for numbers, booleans, lists and objects.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// The assignment key, as a request's `user`.
    #[arg(long)]
    user: Option<String>,
    /// The user message to send after the system prompt.
    #[arg(long)]
    message: Option<String>,
    /// The request's model, if the version does not set one.
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    #[command(flatten)]
    embedding: ModelArgs,
}

fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("`{text}` must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Validate(args) => validate(&args),
        Command::Render(args) => render(&args),
        Command::Report(args) => report(&args),
        Command::Import(args) => import(&args),
    }
}

fn import(args: &ImportArgs) -> ExitCode {
    let mut files = Vec::new();
    for path in &args.files {
        match crate::import::read_input(path) {
            Ok(text) => files.push((path.display().to_string(), text)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let converted = match args.from {
        ImportFrom::Langfuse => crate::import::langfuse::convert(&files),
        ImportFrom::Prompty => files
            .iter()
            .zip(&args.files)
            .map(|((shown, text), path)| {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                crate::import::prompty::convert(shown, &stem, text)
            })
            .collect(),
    };
    let prompts = match converted {
        Ok(prompts) => prompts,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for prompt in &prompts {
        match crate::import::write(&args.out, prompt) {
            Ok(written) => print!("{}", crate::import::report(&written, &prompt.notes)),
            Err(e) => {
                failed = true;
                eprintln!("error: `{}`: {e}", prompt.name);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(args.log_format);
    let upstream = match Upstream::parse(&args.upstream) {
        Ok(upstream) => upstream,
        Err(e) => {
            eprintln!("error: --upstream: {e}");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        listen: args.listen,
        prompts_dir: args.prompts.dir,
        upstream,
        upstream_api_key: args
            .upstream_api_key
            .or_else(|| std::env::var("OPENAI_API_KEY").ok())
            .filter(|k| !k.is_empty()),
        connect_timeout: args.connect_timeout,
        upstream_timeout: args.upstream_timeout,
        max_body_bytes: args.max_body_bytes,
        shutdown_grace: args.shutdown_grace,
        admin_token: args.admin_token.filter(|t| !t.is_empty()),
        admin_listen: args.admin_listen,
        watch_poll: args.watch_poll_ms.map(Duration::from_millis),
        watch: !args.no_watch,
        events: match (args.no_events, args.events) {
            (true, _) => None,
            (false, Some(path)) => Some(path),
            (false, None) => Some(args.state_dir.join("events.jsonl")),
        },
        log_content: args.log_content,
        pricing: args.pricing,
        feedback_window: args.feedback_window,
        state_dir: args.state_dir,
        embedding_model: args.model.embedding_model,
        onnxruntime: args.model.onnxruntime,
        otlp: crate::otel::OtlpConfig::from_flag_and_env(args.otlp_endpoint.as_deref()),
        feedback_metrics_max: args.feedback_metrics_max,
        limits: crate::config::Limits {
            header_read_timeout: args.header_read_timeout,
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            max_header_bytes: usize::try_from(args.max_header_bytes).unwrap_or(usize::MAX),
        },
        health_listen: args.health_listen,
        events_max_bytes: args.events_max_bytes,
        audit_max_bytes: args.audit_max_bytes,
        rotated_kept: usize::try_from(args.rotated_kept).unwrap_or(1000),
        prometheus: args.prometheus.filter(|url| !url.is_empty()),
        git: args.git.config(),
        git_audit: args.git.git_audit,
        console_only: args.git.console_only,
    };
    let runtime = match runtime(args.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, not into a log file.
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    crate::proxy::log_as_text(matches!(format, LogFormat::Text), ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn validate(args: &ValidateArgs) -> ExitCode {
    let loaded = prompts::load(&args.prompts.dir).and_then(|mut set| {
        // Prompts whose examples need the embedding model are checked against it too.
        let missing = crate::fewshot::attach_vectors(&mut set, &args.model.slot(None));
        if missing.is_empty() {
            Ok(set)
        } else {
            Err(prompts::Problems(missing))
        }
    });
    match loaded {
        Ok(set) => {
            let versions: usize = set.prompts().map(|p| p.versions.len()).sum();
            println!(
                "ok: {} prompts, {} versions in `{}`",
                set.len(),
                versions,
                args.prompts.dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for problem in &problems.0 {
                println!("{problem}");
            }
            eprintln!(
                "{} problem{} in `{}`",
                problems.0.len(),
                if problems.0.len() == 1 { "" } else { "s" },
                args.prompts.dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Parses `--var` values: `name=text` or `name:=JSON`.
fn parse_vars(vars: &[String]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for var in vars {
        let Some((name, value)) = var.split_once('=') else {
            return Err(format!("--var `{var}`: expected NAME=VALUE or NAME:=JSON"));
        };
        let value = match name.strip_suffix(':') {
            Some(name) => {
                let json = serde_json::from_str(value)
                    .map_err(|e| format!("--var `{name}`: `{value}` is not valid JSON: {e}"))?;
                out.insert(name.to_owned(), json);
                continue;
            }
            None => Value::String(value.to_owned()),
        };
        if name.is_empty() {
            return Err(format!("--var `{var}`: the name is empty"));
        }
        out.insert(name.to_owned(), value);
    }
    Ok(out)
}

fn render(args: &RenderArgs) -> ExitCode {
    let slot = args.embedding.slot(None);
    let set = match prompts::load(&args.prompts.dir) {
        Ok(mut set) => {
            for problem in crate::fewshot::attach_vectors(&mut set, &slot) {
                eprintln!("{problem}");
            }
            set
        }
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::FAILURE;
        }
    };
    let variables = match parse_vars(&args.vars) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let version = match args
        .version
        .as_deref()
        .map(|v| parse::version_ref(&json!(v)))
    {
        None => None,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let reference = PromptRef {
        name: args.name.clone(),
        version,
        variables: variables.into(),
        examples: None,
    };
    let messages = match &args.message {
        Some(message) => json!([{"role": "user", "content": message}]),
        None => json!([]),
    };
    let raw = |v: &Value| serde_json::value::to_raw_value(v).expect("a JSON value serialises");
    let (model, messages, user) = (
        raw(&json!(args.model)),
        raw(&messages),
        args.user.as_ref().map(|u| raw(&json!(u))),
    );
    let mut fields = vec![
        (Cow::Borrowed("model"), model.as_ref()),
        (Cow::Borrowed("messages"), messages.as_ref()),
    ];
    if let Some(user) = &user {
        fields.push((Cow::Borrowed("user"), user.as_ref()));
    }
    let body = parse::Body::from_fields(fields);
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let prepared = runtime.block_on(request::apply(
        &set,
        &slot,
        Endpoint::ChatCompletions,
        &body,
        &reference,
        args.user.as_deref(),
        chrono::Utc::now(),
    ));
    match prepared {
        Ok(prepared) => {
            if let Some(served) = &prepared.served {
                eprintln!(
                    "# prompt `{}` version {} ({}), hash {}",
                    served.name,
                    served.version,
                    served.selection.as_str(),
                    served.hash
                );
            }
            let value: Value = serde_json::from_slice(&prepared.body).unwrap_or(Value::Null);
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(args: &ReportArgs) -> ExitCode {
    use crate::record::prometheus::{Fleet, render_text};
    let set = match prompts::load(&args.prompts.dir) {
        Ok(set) => set,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::FAILURE;
        }
    };
    let Some(prompt) = set.get(&args.name) else {
        eprintln!(
            "error: unknown prompt `{}` in `{}`",
            args.name,
            args.prompts.dir.display()
        );
        return ExitCode::FAILURE;
    };
    let fleet = match Fleet::new(&args.prometheus, args.timeout) {
        Ok(fleet) => fleet,
        Err(e) => {
            eprintln!("error: --prometheus: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fleet.report(prompt, args.range.clone())) {
        Ok(report) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", render_text(&report));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The server's runtime: `threads` workers (0: one per CPU the process may use), or with 1
/// Tokio's single-threaded scheduler, which hands no work between threads. Blocking work
/// (reading prompt files, the embedding model) runs on the blocking pool either way.
fn runtime(threads: u64) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        0 => tokio::runtime::Runtime::new(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::try_from(n).unwrap_or(usize::MAX))
            .enable_all()
            .build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn vars_parse_as_text_or_json() {
        let vars = parse_vars(&["a=x=y".into(), "n:=3".into(), "l:=[1]".into()]).unwrap();
        assert_eq!(vars["a"], "x=y");
        assert_eq!(vars["n"], 3);
        assert_eq!(vars["l"], json!([1]));
        assert!(parse_vars(&["novalue".into()]).is_err());
        assert!(parse_vars(&["n:={".into()]).is_err());
    }

    #[test]
    fn seconds_must_be_positive() {
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(seconds("0").is_err());
        assert!(seconds("abc").is_err());
    }
}
