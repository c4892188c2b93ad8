//! Console sign-in and request safety: the admin token is exchanged for a session cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` behind TLS); every write must come from the
//! console's own origin (CSRF); without a token configured the console is read-only, like the
//! admin API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::{PageError, page, page_with};
use crate::AppState;
use crate::audit::Actor;

const COOKIE: &str = "promptgate_console";
const TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; only holders of the admin token can add one.
const MAX_SESSIONS: usize = 1024;

/// Who is looking at a page, and what they may do.
#[derive(Debug, Clone, Serialize)]
pub struct Viewer {
    /// The name given at sign-in: the actor of every change they make.
    pub name: Option<String>,
    pub signed_in: bool,
    /// A token is configured and this viewer holds it.
    pub can_write: bool,
    pub token_configured: bool,
}

impl Viewer {
    /// The actor recorded in the audit trail for this viewer's changes.
    pub fn actor(&self) -> Actor {
        Actor {
            name: self.name.clone().unwrap_or_else(|| "admin".to_owned()),
            source: "console",
        }
    }
}

struct Session {
    name: String,
    expires: Instant,
}

/// Signed-in sessions: random id → who, bounded in number.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn create(&self, name: &str) -> String {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires > now);
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                name: name.to_owned(),
                expires: now + TTL,
            },
        );
        id
    }

    fn name(&self, id: &str) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.name.clone())
    }

    fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

fn token_matches(token: &str, given: &str) -> bool {
    // Constant time, so the comparison does not reveal how much of a guess was right.
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// True when a write comes from the console's own origin: `Origin` names the host the request
/// was sent to, or (browsers that send no `Origin`) `Sec-Fetch-Site` says same-origin.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) => {
            let Some((_, rest)) = origin.split_once("://") else {
                return false;
            };
            host.is_some_and(|h| h.eq_ignore_ascii_case(rest.trim_end_matches('/')))
        }
        None => headers
            .get("sec-fetch-site")
            .is_some_and(|v| v == "same-origin"),
    }
}

fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// Runs before every console route: CSRF check for writes, then who the viewer is.
pub async fn guard(
    State(state): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    let anonymous = Viewer {
        name: None,
        signed_in: false,
        can_write: false,
        token_configured: state.config.admin_token.is_some(),
    };
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    if write && !same_origin(req.headers()) {
        return PageError::new(
            &anonymous,
            StatusCode::FORBIDDEN,
            "this change did not come from the console's own page (its `Origin` does not match the host), so it was refused",
        )
        .into_response();
    }
    let public =
        path == "/console" || path == "/console/sign-in" || path.starts_with("/console/static/");
    let viewer = match state.config.admin_token.as_deref() {
        None => anonymous,
        Some(token) => {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let name = match bearer {
                Some(given) if token_matches(token, given) => Some(
                    req.headers()
                        .get("x-actor")
                        .and_then(|v| v.to_str().ok())
                        .filter(|s| !s.trim().is_empty())
                        .unwrap_or("admin")
                        .to_owned(),
                ),
                _ => cookie_value(req.headers()).and_then(|id| sessions.name(&id)),
            };
            match name {
                Some(name) => Viewer {
                    name: Some(name),
                    signed_in: true,
                    can_write: true,
                    token_configured: true,
                },
                None if public => anonymous,
                None if !write => {
                    let next = req
                        .uri()
                        .path_and_query()
                        .map_or("/console/", |p| p.as_str())
                        .to_owned();
                    let next = super::url_encode(&next);
                    return Redirect::to(&format!("/console/sign-in?next={next}")).into_response();
                }
                None => {
                    return PageError::new(
                        &anonymous,
                        StatusCode::UNAUTHORIZED,
                        "sign in first: the console needs the admin token",
                    )
                    .into_response();
                }
            }
        }
    };
    req.extensions_mut().insert(viewer);
    next.run(req).await
}

/// Only console paths are followed after sign-in, so the form cannot redirect elsewhere.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/console/") && !n.contains("//") && !n.contains('\\') => {
            n.to_owned()
        }
        _ => "/console/".to_owned(),
    }
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// `GET /console/sign-in`
pub async fn sign_in_page(
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<NextQuery>,
) -> Response {
    page(
        "sign_in.html",
        &viewer,
        ctx! { next => safe_next(q.next.as_deref()), error => None::<String> },
    )
}

#[derive(Debug, Deserialize)]
pub struct SignIn {
    token: String,
    name: String,
    next: Option<String>,
}

/// `POST /console/sign-in`: token and name → session cookie.
pub async fn sign_in(
    State(state): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let fail = |status: StatusCode, error: &str| {
        page_with(
            status,
            "sign_in.html",
            &viewer,
            ctx! { next => next.clone(), error => error },
        )
    };
    let Some(token) = state.config.admin_token.as_deref() else {
        return fail(
            StatusCode::FORBIDDEN,
            "promptgate runs without an admin token, so there is nothing to sign in to: the console is read-only",
        );
    };
    let name = form.name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return fail(
            StatusCode::BAD_REQUEST,
            "give your name (1 to 100 characters): it is recorded in the audit trail with every change you make",
        );
    }
    if !token_matches(token, form.token.trim()) {
        return fail(StatusCode::UNAUTHORIZED, "wrong admin token");
    }
    let id = sessions.create(name);
    let mut cookie = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        TTL.as_secs()
    );
    if over_tls(&headers) {
        cookie.push_str("; Secure");
    }
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /console/sign-out`
pub async fn sign_out(
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
) -> Response {
    if let Some(id) = cookie_value(&headers) {
        sessions.remove(&id);
    }
    let mut response = Redirect::to("/console/sign-in").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "promptgate_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origin_must_match_host() {
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9000"),
            ("origin", "http://127.0.0.1:9000")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9000"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9000"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:9000")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9000"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9000"),
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn sign_in_only_returns_to_console_pages() {
        assert_eq!(safe_next(Some("/console/audit")), "/console/audit");
        assert_eq!(safe_next(Some("https://evil.example/")), "/console/");
        assert_eq!(safe_next(Some("/console//evil.example")), "/console/");
        assert_eq!(safe_next(None), "/console/");
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let first = sessions.create("ana");
        assert_eq!(sessions.name(&first).as_deref(), Some("ana"));
        for _ in 0..MAX_SESSIONS + 10 {
            sessions.create("bo");
        }
        assert!(sessions.map.lock().unwrap().len() <= MAX_SESSIONS);
        sessions.remove("nope");
    }
}
