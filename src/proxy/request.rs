//! Steps 1–5 of the request path, as the phases they are: [`parse`](super::parse) the prompt
//! reference → [`choose`](super::inject::choose) the version → [`pick`](super::inject::pick)
//! the examples → [`render`](super::inject::render) the prompt → [`inject`](super::inject::inject)
//! it into the body that goes upstream.
//!
//! Pure: no I/O, no HTTP plumbing. The proxy handlers go through [`prepare`] (bytes and
//! headers); `promptgate render` and the admin preview, which already hold a typed prompt
//! reference, go through [`apply`] — the same phases.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::inject::{self, Chosen};
use super::parse::{self, Body, Parsed, PromptRef};
use crate::error::ApiError;
use crate::fewshot::{self, ModelSlot};
use crate::prompts::PromptSet;
use crate::select::Selection;

/// The endpoints that inject a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`: the prompt becomes the first (system) message.
    ChatCompletions,
    /// `POST /v1/responses`: the prompt becomes `instructions`.
    Responses,
}

/// How OpenAI's own prompt ids begin (`pmpt_68b0…`).
pub const OPENAI_PROMPT_PREFIX: &str = "pmpt_";

/// Which prompt version served a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub name: String,
    pub version: u32,
    pub hash: String,
    pub selection: Selection,
    /// The id of the experiment that assigned the version, when one did.
    pub experiment: Option<Arc<str>>,
    /// The experiment's arm that version is: `a` / `b` in the seed's form, else the variant's
    /// position (`0`, `1`, …).
    pub arm: Option<String>,
    /// The few-shot strategy and the examples it picked (by line index), when it ran.
    pub fewshot: Option<(crate::prompts::Strategy, Vec<usize>)>,
    /// The version's prebuilt `x-prompt-name`, `x-prompt-version`, `x-prompt-hash` values.
    pub headers: [HeaderValue; 3],
}

/// The body to send upstream, and the prompt that shaped it (none: forwarded unchanged).
#[derive(Debug)]
pub struct Prepared {
    pub body: Bytes,
    pub served: Option<Served>,
    /// The model the request names, after the version's override.
    pub model: Option<String>,
    /// promptgate asked for `stream_options.include_usage` on behalf of a client that did
    /// not, so the usage-only chunk must not reach the client.
    pub strip_usage_chunk: bool,
}

impl Prepared {
    fn unchanged(body: Bytes) -> Self {
        Prepared {
            body,
            served: None,
            model: None,
            strip_usage_chunk: false,
        }
    }
}

/// Builds the upstream body of a request from its bytes and headers. A body that names no
/// prompt is returned unchanged, byte for byte.
pub async fn prepare(
    set: &PromptSet,
    model: &ModelSlot,
    endpoint: Endpoint,
    headers: &HeaderMap,
    bytes: Bytes,
    now: DateTime<Utc>,
) -> Result<Prepared, ApiError> {
    let (body, reference) = match parse::parse(&bytes, headers)? {
        Parsed::Untouched => return Ok(Prepared::unchanged(bytes.clone())),
        Parsed::WithoutPrompt(body) => {
            return Ok(Prepared::unchanged(Bytes::from(inject::write(&body, &[]))));
        }
        Parsed::Prompt(body, reference) => (body, reference),
    };
    // OpenAI's own reusable prompts (`prompt: {id: "pmpt_…"}` on the Responses API) are not
    // ours: unless a local prompt has that name, the request goes upstream as it came.
    if endpoint == Endpoint::Responses
        && reference.name.starts_with(OPENAI_PROMPT_PREFIX)
        && set.get(&reference.name).is_none()
    {
        return Ok(Prepared::unchanged(bytes.clone()));
    }
    let key = parse::assignment_key(Some(headers), &body);
    apply(set, model, endpoint, &body, &reference, key.as_deref(), now).await
}

/// The phases after parsing, for a request already read: choose → pick → render → inject.
pub async fn apply(
    set: &PromptSet,
    model: &ModelSlot,
    endpoint: Endpoint,
    body: &Body<'_>,
    reference: &PromptRef,
    key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Prepared, ApiError> {
    let chosen = inject::choose(set, reference, key)?;
    let plan = fewshot::plan(chosen.prompt, reference.examples.as_ref());
    let messages = inject::Messages::of(endpoint, body);
    let user_message =
        inject::user_message_if_read(endpoint, body, &messages, &chosen, plan.as_ref());
    let shots = inject::pick(model, &chosen, plan.as_ref(), &user_message).await?;
    let rendered = inject::render(set, &chosen, reference, &shots, &user_message, now)?;
    let injected = inject::inject(endpoint, body, &messages, &chosen, &rendered, &shots)?;
    Ok(Prepared {
        body: Bytes::from(injected.body),
        served: Some(served(&chosen, shots.picked)),
        model: injected.model,
        strip_usage_chunk: injected.strip_usage_chunk,
    })
}

fn served(chosen: &Chosen<'_>, fewshot: Option<(crate::prompts::Strategy, Vec<usize>)>) -> Served {
    Served {
        name: chosen.prompt.name.clone(),
        version: chosen.version.version,
        hash: chosen.version.hash.clone(),
        selection: chosen.selection,
        headers: chosen.version.headers.clone(),
        experiment: match chosen.selection {
            Selection::Experiment => chosen.prompt.experiment_id(),
            _ => None,
        },
        arm: match (chosen.selection, &chosen.prompt.experiment) {
            (Selection::Experiment, Some(exp)) => arm_of(exp, chosen.version.version),
            _ => None,
        },
        fewshot,
    }
}

/// The arm of an experiment that `version` is.
fn arm_of(experiment: &crate::prompts::Experiment, version: u32) -> Option<String> {
    match &experiment.split {
        crate::prompts::Split::AB {
            version_a,
            version_b,
            ..
        } => {
            if version == *version_b {
                Some("b".to_owned())
            } else if version == *version_a {
                Some("a".to_owned())
            } else {
                None
            }
        }
        crate::prompts::Split::Weighted { variants } => variants
            .iter()
            .position(|v| v.version == version)
            .map(|i| i.to_string()),
    }
}

#[cfg(test)]
mod tests;
