//! promptgate: an OpenAI-compatible proxy that injects managed, versioned prompts.
//!
//! A request's path through the code:
//! [`proxy`] reads it → [`proxy::parse`] reads the prompt reference, [`select`] chooses the
//! version, [`fewshot`] picks the examples, [`prompts`] renders it and [`proxy::inject`]
//! rewrites the body (the phases in [`proxy::request`]) →
//! [`proxy::forward`] sends it upstream → [`proxy::relay`] streams the answer back →
//! [`record`] records the request.
//! Beside the request path: [`reload`] swaps in a new prompt set when [`prompts::watch`] sees
//! the files change, recording each change in the [`audit`] trail; [`admin`] is the admin API
//! and [`console`] the web console beside it; [`record`] holds the metrics and statistics, and
//! reads the fleet's back from Prometheus. [`otel`] exports traces. [`server`] runs the
//! listeners and shutdown; [`cli`] is the command line.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod console;
pub mod error;
pub mod fewshot;
#[doc(hidden)]
pub mod fuzz;
pub mod import;
pub mod listener;
pub mod otel;
pub mod prompts;
pub mod proxy;
pub mod record;
pub mod reload;
pub mod rollout;
pub mod select;
pub mod server;

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, get, post};
use serde_json::json;

use config::Config;
use error::ApiError;
use prompts::PromptSet;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The current prompt set, replaced whole on reload.
    pub prompts: Arc<ArcSwap<PromptSet>>,
    pub config: Arc<Config>,
    /// One pooled upstream client.
    pub http: proxy::forward::Client,
    pub metrics: Arc<record::Metrics>,
    pub audit: Arc<audit::Audit>,
    pub reloader: reload::Reloader,
    pub writer: Arc<admin::write::Writer>,
    /// Git write mode (`--git-remote`): writes become commits pushed to the branch.
    pub git: Option<Arc<admin::git::GitStore>>,
    pub recorder: record::Recorder,
    /// The embedding model, loaded when a prompt needs it.
    pub model: Arc<fewshot::ModelSlot>,
    /// Trace export, with `--otlp-endpoint`.
    pub telemetry: Option<otel::Telemetry>,
    /// The Prometheus for fleet-wide experiment reports (`--prometheus`).
    pub fleet: Option<record::prometheus::Fleet>,
    /// Guarded rollouts: their progress and the share each one serves.
    pub rollouts: Arc<rollout::Rollouts>,
    /// The events writer, joined at shutdown.
    pub events_task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl AppState {
    /// Opens the state folder, records what is on disk in the audit trail and starts the
    /// reload task. Needs a Tokio runtime.
    pub fn new(
        config: Config,
        prompts: PromptSet,
        model: Arc<fewshot::ModelSlot>,
        degraded: Vec<prompts::Problem>,
    ) -> anyhow::Result<Self> {
        let http = proxy::forward::client(&config)?;
        let metrics = Arc::new(record::Metrics::new());
        let audit = Arc::new(audit::Audit::open_with(
            &config.state_dir,
            audit::Rotation {
                max_bytes: config.audit_max_bytes,
                kept: config.rotated_kept,
                errors: metrics
                    .write_errors
                    .get_or_create(&record::metrics::FileLabel { file: "audit" })
                    .clone(),
            },
        )?);
        // Changes made while promptgate was not running are recorded now.
        audit
            .record(&prompts, &audit::Actor::disk())
            .map_err(|e| anyhow::anyhow!("cannot write the audit trail: {e}"))?;
        metrics.prompts_loaded.set(prompts.len() as i64);
        let pricing = match &config.pricing {
            None => record::Pricing::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read the pricing file `{}`: {e}", path.display())
                })?;
                record::Pricing::with_overrides(&text, path)?
            }
        };
        // Statistics and the feedback index survive a restart: from the checkpoint and the
        // events after it.
        let (recorder, events_task) = record::Recorder::start(metrics.clone(), pricing, &config)?;
        let telemetry = match &config.otlp {
            Some(otlp) => {
                let (telemetry, _task) =
                    otel::Telemetry::start(otlp, metrics.clone(), config.log_content)?;
                tracing::info!(endpoint = ?otlp.endpoint, "exporting traces over OTLP/HTTP");
                Some(telemetry)
            }
            None => None,
        };
        let fleet = match &config.prometheus {
            Some(url) => Some(record::prometheus::Fleet::new(
                url,
                record::prometheus::DEFAULT_TIMEOUT,
            )?),
            None => None,
        };
        let rollouts = Arc::new(rollout::Rollouts::open(
            &config.state_dir,
            audit.clone(),
            metrics.rollout.clone(),
            recorder.clone(),
            fleet.is_some(),
        ));
        let mut prompts = prompts;
        rollouts.link(&mut prompts, &audit::Actor::disk());
        let prompts = Arc::new(ArcSwap::from_pointee(prompts));
        let reloader = reload::Reloader::start(
            reload::Target {
                dir: config.prompts_dir.clone(),
                prompts: prompts.clone(),
                audit: audit.clone(),
                metrics: metrics.clone(),
                model: model.clone(),
                rollouts: Some(rollouts.clone()),
            },
            degraded,
        );
        Ok(AppState {
            prompts,
            writer: Arc::new(admin::write::Writer::new(&config.prompts_dir)),
            git: None,
            config: Arc::new(config),
            http,
            metrics,
            audit,
            reloader,
            recorder,
            model,
            telemetry,
            fleet,
            rollouts,
            events_task: Arc::new(std::sync::Mutex::new(events_task)),
        })
    }
}

/// The HTTP surface: the proxy, health, and — unless they have a listener of their own —
/// the admin API and metrics.
pub fn app(state: AppState) -> Router {
    let router = Router::new()
        // Other methods on the injecting paths (`GET /v1/chat/completions` lists stored
        // completions) are forwarded like every other `/v1/` call.
        .route(
            "/v1/chat/completions",
            post(proxy::chat_completions).fallback(proxy::passthrough),
        )
        .route(
            "/v1/responses",
            post(proxy::responses).fallback(proxy::passthrough),
        )
        .route("/v1/feedback", post(proxy::feedback::feedback))
        .route("/v1/{*rest}", any(proxy::passthrough))
        // Base URLs without `/v1` (the rest of OpenAI's paths: see `fallback`).
        .route(
            "/chat/completions",
            post(proxy::chat_completions).fallback(proxy::passthrough),
        )
        .route(
            "/responses",
            post(proxy::responses).fallback(proxy::passthrough),
        )
        // Azure OpenAI clients: deployment paths and the `/openai/v1/` API.
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(proxy::chat_completions).fallback(proxy::passthrough),
        )
        .route(
            "/openai/v1/chat/completions",
            post(proxy::chat_completions).fallback(proxy::passthrough),
        )
        .route(
            "/openai/v1/responses",
            post(proxy::responses).fallback(proxy::passthrough),
        )
        .route(
            "/openai/responses",
            post(proxy::responses).fallback(proxy::passthrough),
        )
        .route("/openai/{*rest}", any(proxy::passthrough))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let router = if state.config.admin_listen.is_none() {
        router.merge(admin_app(state.clone()))
    } else {
        router
    };
    router
        .fallback(fallback)
        .method_not_allowed_fallback(proxy::method_not_allowed)
        .with_state(state)
}

/// What a listener serves: its router and, on the proxy listener, a direct way to the two
/// endpoints that inject a prompt — nearly all of a sidecar's traffic. `POST
/// /v1/chat/completions` and `POST /v1/responses` go straight to the handlers the router has
/// for them, without the router's matching and its layers of boxed futures; every other
/// request goes through the router.
#[derive(Clone)]
pub struct Routes {
    router: Router,
    /// Shared, so that a request counts one reference rather than cloning every field.
    direct: Option<Arc<AppState>>,
}

impl Routes {
    /// Everything through `router`.
    pub fn new(router: Router) -> Self {
        Routes {
            router,
            direct: None,
        }
    }

    /// The proxy listener: [`app`], with the injecting endpoints dispatched directly.
    pub fn proxy(state: AppState) -> Self {
        Routes {
            router: app(state.clone()),
            direct: Some(Arc::new(state)),
        }
    }
}

type RouteFuture = futures_util::future::Either<
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>,
    axum::routing::future::RouteFuture<Infallible>,
>;

impl hyper::service::Service<Request<hyper::body::Incoming>> for Routes {
    type Response = Response;
    type Error = Infallible;
    type Future = RouteFuture;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        use futures_util::future::Either;
        use tower::Service as _;
        if let Some(state) = &self.direct
            && req.method() == axum::http::Method::POST
        {
            let state = state.clone();
            let endpoint = match req.uri().path() {
                "/v1/chat/completions" => Some(proxy::request::Endpoint::ChatCompletions),
                "/v1/responses" => Some(proxy::request::Endpoint::Responses),
                _ => None,
            };
            if let Some(endpoint) = endpoint {
                return Either::Left(Box::pin(async move {
                    Ok(proxy::inject(&state, endpoint, req).await)
                }));
            }
        }
        Either::Right(self.router.clone().call(req))
    }
}

/// Only `/healthz` and `/readyz`, for `--health-listen`: the probes reach these from outside
/// the pod while the proxy itself listens on 127.0.0.1.
pub fn health_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

/// The admin API and `/metrics`, for `--admin-listen`.
pub fn admin_app(state: AppState) -> Router<AppState> {
    admin::routes(state.clone())
        .merge(console::routes(state))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(proxy::method_not_allowed)
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = state.metrics.encode();
    state
        .recorder
        .with_stats(|stats| record::fleet::append(&mut body, stats, &state.prompts.load()));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the prompts are loaded and every prompt that needs the embedding model has it.
async fn readyz(State(state): State<AppState>) -> Response {
    let prompts = state.prompts.load();
    let degraded = state.reloader.status().degraded;
    let body = json!({
        "status": if degraded.is_empty() { "ready" } else { "not_ready" },
        "prompts": prompts.len(),
        "embedding_model": state.model.status(),
        "problems": degraded,
    });
    let status = if degraded.is_empty() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// OpenAI's paths from a base URL without `/v1` are forwarded; anything else is a 404.
async fn fallback(State(state): State<AppState>, req: Request) -> Response {
    if proxy::is_openai_path(req.uri().path()) {
        return proxy::passthrough(State(state), req).await;
    }
    not_found(req).await
}

async fn not_found(req: Request) -> Response {
    ApiError::NotFound {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
    .into_response()
}
