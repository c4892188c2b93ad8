//! Admin auth: with a token configured every admin call needs `Authorization: Bearer TOKEN`;
//! without one, reads are allowed and writes are refused.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

pub async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check(state.config.admin_token.as_deref(), &req) {
        Ok(()) => next.run(req).await,
        Err(err) => err.into_response(),
    }
}

fn check(token: Option<&str>, req: &Request) -> Result<(), ApiError> {
    let Some(token) = token else {
        return if matches!(*req.method(), Method::GET | Method::HEAD) {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                message: "admin writes are disabled: start promptgate with --admin-token (or PROMPTGATE_ADMIN_TOKEN) and send `Authorization: Bearer TOKEN`".to_owned(),
            })
        };
    };
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        return Err(ApiError::Unauthorized {
            message: "the admin API needs `Authorization: Bearer TOKEN`".to_owned(),
        });
    };
    // Constant time, so the comparison does not reveal how much of a guess was right.
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized {
            message: "wrong admin token".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(method: Method, auth: Option<&str>) -> Request {
        let mut builder = Request::builder().method(method).uri("/admin/status");
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn auth_matrix() {
        let status = |token: Option<&str>, method: Method, auth: Option<&str>| {
            check(token, &req(method, auth)).map_err(|e| e.status().as_u16())
        };
        assert_eq!(status(None, Method::GET, None), Ok(()));
        assert_eq!(status(None, Method::POST, None), Err(403));
        assert_eq!(status(None, Method::POST, Some("Bearer x")), Err(403));
        assert_eq!(status(Some("s3cret"), Method::GET, None), Err(401));
        assert_eq!(
            status(Some("s3cret"), Method::GET, Some("Bearer nope")),
            Err(401)
        );
        assert_eq!(
            status(Some("s3cret"), Method::GET, Some("Basic s3cret")),
            Err(401)
        );
        assert_eq!(
            status(Some("s3cret"), Method::GET, Some("Bearer s3cret")),
            Ok(())
        );
        assert_eq!(
            status(Some("s3cret"), Method::POST, Some("Bearer s3cret")),
            Ok(())
        );
        assert_eq!(
            status(Some("s3cret"), Method::DELETE, Some("Bearer s3cre")),
            Err(401)
        );
    }
}
