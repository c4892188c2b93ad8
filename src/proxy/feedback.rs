//! `POST /v1/feedback`: scores for a request, attached to the version that served it.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::{ApiError, Json};
use crate::record::FeedbackError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    request_id: String,
    metrics: Map<String, Value>,
}

impl From<FeedbackError> for ApiError {
    fn from(err: FeedbackError) -> Self {
        match err {
            FeedbackError::UnknownRequest(_) => ApiError::NotFoundResource {
                message: err.to_string(),
                code: "request_not_found",
            },
            FeedbackError::NotNumeric(ref name) | FeedbackError::OutOfRange(ref name) => {
                ApiError::BadRequest {
                    message: err.to_string(),
                    param: Some(format!("metrics.{name}")),
                    code: "invalid_metric",
                }
            }
            FeedbackError::Undeclared { ref metric, .. } => ApiError::BadRequest {
                message: err.to_string(),
                param: Some(format!("metrics.{metric}")),
                code: "unknown_metric",
            },
            FeedbackError::TooManyMetrics { ref metric, .. } => ApiError::BadRequest {
                message: err.to_string(),
                param: Some(format!("metrics.{metric}")),
                code: "too_many_metrics",
            },
            FeedbackError::Empty => ApiError::BadRequest {
                message: err.to_string(),
                param: Some("metrics".to_owned()),
                code: "invalid_metric",
            },
        }
    }
}

pub async fn feedback(
    State(state): State<AppState>,
    Json(req): Json<FeedbackRequest>,
) -> Result<Json<Value>, ApiError> {
    let prompts = state.prompts.load();
    let recorded = state
        .recorder
        .feedback(&req.request_id, &req.metrics, &prompts)?;
    Ok(Json(json!({
        "request_id": recorded.request_id,
        "prompt": recorded.prompt,
        "version": recorded.version,
        "metrics": recorded.metrics,
    })))
}
