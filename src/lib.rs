//! promptgate: an OpenAI-compatible proxy that injects managed, versioned prompts.
//!
//! A request's path through the code:
//! [`proxy`] reads it → [`proxy::request`] parses the prompt reference, [`select`] chooses the
//! version, [`prompts`] renders it and the body is rewritten → [`proxy::forward`] sends it
//! upstream → [`proxy::relay`] streams the answer back and records the request.
//! [`server`] runs the listener and shutdown; [`cli`] is the command line.

pub mod cli;
pub mod config;
pub mod error;
pub mod prompts;
pub mod proxy;
pub mod select;
pub mod server;

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
    pub http: reqwest::Client,
}

impl AppState {
    pub fn new(config: Config, prompts: PromptSet) -> anyhow::Result<Self> {
        let http = proxy::forward::client(&config)?;
        Ok(AppState {
            prompts: Arc::new(ArcSwap::from_pointee(prompts)),
            config: Arc::new(config),
            http,
        })
    }
}

/// The HTTP surface.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/responses", post(proxy::responses))
        .route("/v1/{*rest}", any(proxy::passthrough))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let prompts = state.prompts.load();
    Json(json!({"status": "ready", "prompts": prompts.len()}))
}

async fn not_found(req: Request) -> Response {
    ApiError::NotFound {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
    .into_response()
}
