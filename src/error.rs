//! The one place where errors become HTTP responses.
//!
//! Every module has its own small error enum that carries context; each converts into
//! [`ApiError`], and [`ApiError::into_response`] picks the status, `type` and `code` and writes
//! OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::prompts::RenderError;
use crate::proxy::ReadError;
use crate::proxy::forward::UpstreamError;
use crate::proxy::inject::InjectError;
use crate::proxy::parse::ParseError;
use crate::select::SelectError;

/// An error that ends a request before anything reached the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong: bad JSON, a bad `prompt` field, missing variables.
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    #[error("{message}")]
    PromptNotFound { message: String },
    #[error("{message}")]
    VersionNotFound { message: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Some other thing the request names does not exist (a request id for feedback).
    #[error("{message}")]
    NotFoundResource { message: String, code: &'static str },
    #[error("no route for `{method} {path}`")]
    NotFound { method: String, path: String },
    #[error("method `{method}` is not allowed on `{path}`")]
    MethodNotAllowed { method: String, path: String },
    #[error("upstream `{url}` is unreachable: {reason}")]
    UpstreamUnreachable { url: String, reason: String },
    #[error("upstream `{url}` did not answer within {seconds} s")]
    UpstreamTimeout { url: String, seconds: f64 },
    #[error("{message}")]
    Unauthorized { message: String },
    /// Something the request needs is not available now (the embedding model).
    #[error("{message}")]
    Unavailable { message: String, code: &'static str },
    #[error("{message}")]
    Forbidden { message: String },
    /// The change collides with one made meanwhile (git write mode).
    #[error("{message}")]
    Conflict { message: String, code: &'static str },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 about one field of the request.
    pub fn bad_request(message: impl Into<String>, param: impl Into<Option<String>>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: param.into(),
            code: "invalid_request",
        }
    }

    /// Status, OpenAI `type` and `code` for this error.
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request_error", code)
            }
            ApiError::PromptNotFound { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "prompt_not_found",
            ),
            ApiError::VersionNotFound { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "version_not_found",
            ),
            ApiError::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
            ),
            ApiError::NotFoundResource { code, .. } => {
                (StatusCode::NOT_FOUND, "invalid_request_error", code)
            }
            ApiError::NotFound { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
            ),
            ApiError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
            ),
            ApiError::UpstreamUnreachable { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_unreachable",
            ),
            ApiError::UpstreamTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "upstream_timeout",
            ),
            ApiError::Unavailable { code, .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error", code)
            }
            ApiError::Unauthorized { .. } => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_admin_token",
            ),
            ApiError::Forbidden { .. } => (
                StatusCode::FORBIDDEN,
                "permission_error",
                "admin_writes_disabled",
            ),
            ApiError::Conflict { code, .. } => {
                (StatusCode::CONFLICT, "invalid_request_error", code)
            }
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
            ),
        }
    }

    /// The OpenAI `code` this error is answered with (`missing_variables`, …).
    pub fn code(&self) -> &'static str {
        self.parts().2
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The OpenAI-shaped JSON body of this error.
    pub fn body(&self) -> serde_json::Value {
        let (_, kind, code) = self.parts();
        let param = match self {
            ApiError::BadRequest { param, .. } => param.clone(),
            ApiError::PromptNotFound { .. } => Some("prompt.id".to_owned()),
            ApiError::VersionNotFound { .. } => Some("prompt.version".to_owned()),
            _ => None,
        };
        json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let ApiError::Unauthorized { .. } = self {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// `axum::Json`, with bad JSON answered in OpenAI's error shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text(), None)),
        }
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl From<SelectError> for ApiError {
    fn from(err: SelectError) -> Self {
        match err {
            SelectError::UnknownPrompt { .. } => ApiError::PromptNotFound {
                message: err.to_string(),
            },
            SelectError::Unavailable { .. } => ApiError::Unavailable {
                message: err.to_string(),
                code: "embedding_model_unavailable",
            },
            SelectError::UnknownVersion { .. } | SelectError::UnknownLabel { .. } => {
                ApiError::VersionNotFound {
                    message: err.to_string(),
                }
            }
        }
    }
}

impl From<crate::fewshot::PickError> for ApiError {
    fn from(err: crate::fewshot::PickError) -> Self {
        match err {
            crate::fewshot::PickError::ModelUnavailable { .. } => ApiError::Unavailable {
                message: err.to_string(),
                code: "embedding_model_unavailable",
            },
            crate::fewshot::PickError::Embed(_) => ApiError::Internal(err.to_string()),
        }
    }
}

impl From<RenderError> for ApiError {
    fn from(err: RenderError) -> Self {
        let code = match &err {
            RenderError::MissingVariables { .. } => "missing_variables",
            RenderError::Template { .. } => "template_error",
            RenderError::InvalidVariables { .. } => "invalid_variables",
        };
        ApiError::BadRequest {
            message: err.to_string(),
            param: Some("prompt.variables".to_owned()),
            code,
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::TooLarge { limit } => ApiError::PayloadTooLarge { limit },
            ReadError::Failed(_) => ApiError::bad_request(err.to_string(), None),
        }
    }
}

impl From<ParseError> for ApiError {
    fn from(err: ParseError) -> Self {
        let param = match &err {
            ParseError::Json { .. } | ParseError::NotAnObject => None,
            ParseError::PromptJson { .. } => Some("prompt".to_owned()),
            ParseError::Field { param, .. } => Some(param.clone()),
            ParseError::Header { header, .. } => Some((*header).to_owned()),
        };
        ApiError::bad_request(err.to_string(), param)
    }
}

impl From<InjectError> for ApiError {
    fn from(err: InjectError) -> Self {
        match err {
            InjectError::MessagesNotArray => {
                ApiError::bad_request(err.to_string(), Some("messages".to_owned()))
            }
        }
    }
}

impl From<UpstreamError> for ApiError {
    fn from(err: UpstreamError) -> Self {
        match err {
            UpstreamError::Unreachable { url, reason } => {
                ApiError::UpstreamUnreachable { url, reason }
            }
            UpstreamError::Timeout { url, seconds } => ApiError::UpstreamTimeout { url, seconds },
            UpstreamError::ClientBody(_) => ApiError::bad_request(err.to_string(), None),
            UpstreamError::BadApiKey => {
                ApiError::Internal("the upstream API key is not a valid header value".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_openai_shape() {
        let err = ApiError::bad_request("`messages` must be an array", Some("messages".into()));
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let body = err.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "messages");
        assert_eq!(body["error"]["message"], "`messages` must be an array");
        assert_eq!(body["error"]["code"], "invalid_request");
    }

    #[test]
    fn upstream_errors_map_to_gateway_statuses() {
        let unreachable = ApiError::UpstreamUnreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(unreachable.status(), StatusCode::BAD_GATEWAY);
        let timeout = ApiError::UpstreamTimeout {
            url: "http://127.0.0.1:1".into(),
            seconds: 1.0,
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timeout.body()["error"]["code"], "upstream_timeout");
    }
}
