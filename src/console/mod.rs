//! The prompt console under `/console/` on the admin listener: server-rendered pages to read,
//! change, try and compare prompts.
//!
//! Beside the request path, like [`crate::admin`], whose internals it calls: reads look at the
//! serving snapshot, writes go through [`crate::admin::write::Writer`] and the reloader, the
//! playground builds its request with [`crate::admin::preview`], the experiment report comes
//! from [`crate::record::Recorder::experiment_report`].
//!
//! Pages are MiniJinja templates embedded in the binary (HTML-escaped), assets too. Script only
//! enhances (live validation, the streamed playground answer); every page's content is in its
//! HTML, and a strict Content-Security-Policy allows no inline script or style. Sign-in and the
//! CSRF check are in [`session`].

/// `minijinja::context!` for values that are only `Serialize`.
macro_rules! ctx {
    ($($key:ident => $value:expr),* $(,)?) => {
        minijinja::context! { $($key => minijinja::Value::from(minijinja::value::Serde(&$value))),* }
    };
}

mod change;
mod diff;
mod experiments;
mod pages;
mod playground;
mod session;
mod trail;

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::Environment;
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;
pub use session::Sessions;
use session::Viewer;

/// The console's routes, behind the session guard.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(pages::list))
        .route(
            "/console/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/console/sign-out", post(session::sign_out))
        .route("/console/static/{file}", get(asset))
        .route("/console/prompts/{name}", get(pages::prompt))
        .route("/console/prompts/{name}/diff", get(pages::diff))
        .route("/console/prompts/{name}/new", get(change::editor))
        .route("/console/prompts/{name}/validate", post(change::validate))
        .route("/console/prompts/{name}/versions", post(change::save))
        .route(
            "/console/prompts/{name}/rollback",
            get(change::confirm_rollback).post(change::rollback),
        )
        .route(
            "/console/prompts/{name}/label",
            get(change::confirm_label).post(change::label),
        )
        .route(
            "/console/prompts/{name}/playground",
            get(playground::page).post(playground::submit),
        )
        .route(
            "/console/prompts/{name}/playground/stream",
            post(playground::stream),
        )
        .route(
            "/console/prompts/{name}/experiment",
            get(experiments::page_get).post(experiments::start),
        )
        .route(
            "/console/prompts/{name}/experiment/end",
            post(experiments::end),
        )
        .route("/console/experiments", get(experiments::overview))
        .route("/console/audit", get(trail::page_get))
        .layer(axum::middleware::from_fn_with_state(state, session::guard))
        .layer(axum::Extension(std::sync::Arc::new(Sessions::default())))
}

/// The templates, compiled once. `.html` names turn on HTML escaping of every value.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, text) in [
        ("base.html", include_str!("templates/base.html")),
        ("sign_in.html", include_str!("templates/sign_in.html")),
        ("list.html", include_str!("templates/list.html")),
        ("prompt.html", include_str!("templates/prompt.html")),
        ("diff.html", include_str!("templates/diff.html")),
        ("diff_table.html", include_str!("templates/diff_table.html")),
        ("editor.html", include_str!("templates/editor.html")),
        ("confirm.html", include_str!("templates/confirm.html")),
        ("playground.html", include_str!("templates/playground.html")),
        ("experiment.html", include_str!("templates/experiment.html")),
        (
            "experiments.html",
            include_str!("templates/experiments.html"),
        ),
        ("audit.html", include_str!("templates/audit.html")),
        ("error.html", include_str!("templates/error.html")),
    ] {
        env.add_template(name, text)
            .unwrap_or_else(|e| panic!("console template `{name}` does not compile: {e:#}"));
    }
    env
});

/// The page's security headers: no inline script or style, no framing, no sniffing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Renders `template` with `ctx` plus the viewer, as a page with the security headers.
fn page(template: &str, viewer: &Viewer, ctx: minijinja::Value) -> Response {
    page_with(StatusCode::OK, template, viewer, ctx)
}

fn page_with(
    status: StatusCode,
    template: &str,
    viewer: &Viewer,
    ctx: minijinja::Value,
) -> Response {
    let nav = match template {
        "experiments.html" | "experiment.html" => "experiments",
        "audit.html" => "audit",
        "sign_in.html" | "error.html" => "",
        _ => "prompts",
    };
    let ctx = minijinja::context! { viewer => minijinja::Value::from(minijinja::value::Serde(viewer)), nav => nav, ..ctx };
    let rendered = TEMPLATES.get_template(template).and_then(|t| t.render(ctx));
    match rendered {
        Ok(html) => secure((status, Html(html)).into_response()),
        Err(e) => {
            tracing::error!("console template `{template}` failed: {e:#}");
            secure(
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the console page could not be rendered; see the server log",
                )
                    .into_response(),
            )
        }
    }
}

/// Something a console page cannot do, shown as an error page.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
    pub viewer: Viewer,
}

impl PageError {
    fn new(viewer: &Viewer, status: StatusCode, message: impl Into<String>) -> Self {
        PageError {
            status,
            message: message.into(),
            viewer: viewer.clone(),
        }
    }

    fn api(viewer: &Viewer, err: ApiError) -> Self {
        let message = err.body()["error"]["message"]
            .as_str()
            .unwrap_or("error")
            .to_owned();
        PageError::new(viewer, err.status(), message)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        page_with(
            self.status,
            "error.html",
            &self.viewer,
            ctx! { status => self.status.as_u16(), message => self.message },
        )
    }
}

/// The snapshot's prompt, or a 404 page.
fn find(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
) -> Result<std::sync::Arc<crate::prompts::Prompt>, PageError> {
    let prompts = state.prompts.load();
    match prompts.get(name) {
        Some(p) => Ok(p.clone()),
        None => Err(PageError::new(
            viewer,
            StatusCode::NOT_FOUND,
            match prompts.unavailable(name) {
                Some(why) => format!("prompt `{name}` is not served: {why}"),
                None => format!("unknown prompt `{name}`"),
            },
        )),
    }
}

/// Whether the prompts folder can be written. A folder without write permission bits (a
/// ConfigMap or git-sync mount, or one made read-only on purpose) counts as read-only even for
/// root, and so does one on a read-only filesystem. Nothing is written to find out: a probe file
/// would wake the watcher and reload the whole set.
pub(crate) fn folder_writable(dir: &std::path::Path) -> bool {
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    if meta.permissions().readonly() {
        return false;
    }
    #[cfg(unix)]
    {
        rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok()
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// Why this viewer cannot change prompts, if they cannot.
#[derive(Debug, Clone, Serialize)]
pub struct WriteBlock {
    pub reason: &'static str,
    pub message: String,
}

/// Whether changes are possible now: a token is configured (and so the viewer signed in), and
/// the prompts folder is writable.
fn write_block(state: &AppState, viewer: &Viewer) -> Option<WriteBlock> {
    if !viewer.can_write {
        return Some(WriteBlock {
            reason: "no_token",
            message: "The console is read-only: promptgate runs without an admin token. Start it with --admin-token (or PROMPTGATE_ADMIN_TOKEN) to change prompts here.".to_owned(),
        });
    }
    // In git write mode changes are commits in the working clone, not files in this folder.
    if state.git.is_none() && !folder_writable(&state.config.prompts_dir) {
        return Some(WriteBlock {
            reason: "read_only_folder",
            message: "The prompts folder is read-only (for example a ConfigMap or git-sync mount), so changes go through git: commit the new version file or manifest change to the repository the folder is synced from, and promptgate reloads it when it lands.".to_owned(),
        });
    }
    None
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind): (&'static str, &'static str) = match file.as_str() {
        "console.css" => (
            include_str!("static/console.css"),
            "text/css; charset=utf-8",
        ),
        "console.js" => (
            include_str!("static/console.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return secure((StatusCode::NOT_FOUND, "no such asset").into_response()),
    };
    let mut response = ([(header::CONTENT_TYPE, kind)], body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    secure(response)
}

/// RFC 3339 time shortened for tables: `2026-12-03 07:31`.
fn short_time(time: &str) -> String {
    let t = time.replacen('T', " ", 1);
    t.get(..16).map_or(t.clone(), str::to_owned)
}

/// Percent-encodes `text` for a query value.
pub(crate) fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
