use std::path::Path;

use axum::http::HeaderValue;
use chrono::TimeZone;
use serde_json::{Value, json};

use super::*;
use crate::fewshot::ModelSlot;
use crate::select;

fn write(root: &Path, file: &str, text: &str) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn fixture() -> PromptSet {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "support/v1.prompt", "Support for {{company}}.");
    write(
        dir.path(),
        "support/v2.prompt",
        "---\nmodel: gpt-4o\ntemperature: 0.3\nmax_tokens: 100\nparams: {top_p: 0.9}\n---\nAgent for {{company}} on {{ today }}: {{ user_message }}",
    );
    write(dir.path(), "support/v3.prompt", "Staging {{company}}");
    write(
        dir.path(),
        "support/prompt.yaml",
        "active: 2\nlabels: {staging: 3}\n",
    );
    write(dir.path(), "ab/v1.prompt", "A");
    write(dir.path(), "ab/v2.prompt", "B");
    write(
        dir.path(),
        "ab/prompt.yaml",
        "experiment: {version_a: 1, version_b: 2, traffic_split: 0.5}\n",
    );
    crate::prompts::load(dir.path()).unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 8, 30, 0).unwrap()
}

fn no_model() -> ModelSlot {
    ModelSlot::new("/nonexistent".into(), "/nonexistent".into(), None)
}

async fn run(
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Value,
) -> Result<(Value, Option<Served>), ApiError> {
    let set = fixture();
    let prepared = prepare(
        &set,
        &no_model(),
        endpoint,
        headers,
        Bytes::from(body.to_string()),
        now(),
    )
    .await?;
    Ok((
        serde_json::from_slice(&prepared.body).unwrap(),
        prepared.served,
    ))
}

#[tokio::test]
async fn chat_gets_system_message_first_and_overrides() {
    let (body, served) = run(
        Endpoint::ChatCompletions,
        &HeaderMap::new(),
        json!({
            "model": "gpt-4o-mini", "temperature": 1.0,
            "messages": [{"role": "user", "content": "hi there"}],
            "prompt": {"id": "support", "variables": {"company": "Acme"}}
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        body,
        json!({
            "model": "gpt-4o", "temperature": 0.3, "max_tokens": 100, "top_p": 0.9,
            "messages": [
                {"role": "system", "content": "Agent for Acme on 2026-11-25: hi there"},
                {"role": "user", "content": "hi there"}
            ]
        })
    );
    let served = served.unwrap();
    assert_eq!((served.version, served.selection), (2, Selection::Active));
}

#[tokio::test]
async fn body_without_prompt_is_untouched_bytes() {
    let set = fixture();
    let raw = Bytes::from_static(b"{\"model\":  \"x\", \"messages\": []}");
    let prepared = prepare(
        &set,
        &no_model(),
        Endpoint::ChatCompletions,
        &HeaderMap::new(),
        raw.clone(),
        now(),
    )
    .await
    .unwrap();
    assert_eq!(prepared.body, raw);
    assert!(prepared.served.is_none());
    // Even a body that mentions the word, and even one that is not JSON.
    let raw = Bytes::from_static(b"{\"messages\": [{\"role\":\"user\",\"content\":\"prompt\"}]}");
    let prepared = prepare(
        &set,
        &no_model(),
        Endpoint::ChatCompletions,
        &HeaderMap::new(),
        raw.clone(),
        now(),
    )
    .await
    .unwrap();
    assert_eq!(prepared.body, raw);
    let raw = Bytes::from_static(b"not json prompt");
    let prepared = prepare(
        &set,
        &no_model(),
        Endpoint::ChatCompletions,
        &HeaderMap::new(),
        raw.clone(),
        now(),
    )
    .await
    .unwrap();
    assert_eq!(prepared.body, raw);
}

#[tokio::test]
async fn responses_get_instructions() {
    let (body, _) = run(
        Endpoint::Responses,
        &HeaderMap::new(),
        json!({"model": "m", "input": "hello", "instructions": "Be terse.",
               "prompt": {"id": "support", "version": 1, "variables": {"company": "Acme"}}}),
    )
    .await
    .unwrap();
    assert_eq!(body["instructions"], "Support for Acme.\n\nBe terse.");
    assert!(body.get("prompt").is_none());
}

#[tokio::test]
async fn max_tokens_goes_where_the_endpoint_expects() {
    let (body, _) = run(
        Endpoint::Responses,
        &HeaderMap::new(),
        json!({"input": "x", "prompt": {"id": "support", "variables": {"company": "A"}}}),
    )
    .await
    .unwrap();
    assert_eq!(body["max_output_tokens"], 100);
    assert!(body.get("max_tokens").is_none());
    let (body, _) = run(
        Endpoint::ChatCompletions,
        &HeaderMap::new(),
        json!({"messages": [], "max_completion_tokens": 5, "prompt": {"id": "support", "variables": {"company": "A"}}}),
    )
    .await
    .unwrap();
    assert_eq!(body["max_completion_tokens"], 100);
    assert!(body.get("max_tokens").is_none());
}

#[tokio::test]
async fn headers_name_the_prompt_and_body_wins() {
    let mut headers = HeaderMap::new();
    headers.insert("x-prompt-name", HeaderValue::from_static("support"));
    headers.insert("x-prompt-version", HeaderValue::from_static("staging"));
    headers.insert(
        "x-prompt-variables",
        HeaderValue::from_static("{\"company\": \"FromHeader\"}"),
    );
    let (body, served) = run(Endpoint::ChatCompletions, &headers, json!({"messages": []}))
        .await
        .unwrap();
    assert_eq!(body["messages"][0]["content"], "Staging FromHeader");
    assert_eq!(served.unwrap().selection, Selection::Label);

    let (body, served) = run(
        Endpoint::ChatCompletions,
        &headers,
        json!({"messages": [], "prompt": {"id": "support", "version": 1, "variables": {"company": "FromBody"}}}),
    )
    .await
    .unwrap();
    assert_eq!(body["messages"][0]["content"], "Support for FromBody.");
    assert_eq!(served.unwrap().selection, Selection::Pinned);
}

#[tokio::test]
async fn version_as_numeric_string_pins() {
    let (_, served) = run(
        Endpoint::ChatCompletions,
        &HeaderMap::new(),
        json!({"messages": [], "prompt": {"name": "support", "version": "3", "variables": {"company": "A"}}}),
    )
    .await
    .unwrap();
    let served = served.unwrap();
    assert_eq!((served.version, served.selection), (3, Selection::Pinned));
}

#[tokio::test]
async fn experiment_assigns_by_user_key_order() {
    let user_version = |user: &str| {
        let b = select::bucket("ab", None, user);
        if f64::from(b) < 50.0 { 2 } else { 1 }
    };
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        let (_, served) = run(
            Endpoint::ChatCompletions,
            &HeaderMap::new(),
            json!({"messages": [], "user": user, "prompt": {"id": "ab"}}),
        )
        .await
        .unwrap();
        let served = served.unwrap();
        assert_eq!(served.selection, Selection::Experiment);
        assert_eq!(served.version, user_version(user), "user {user}");
        // The header wins over the body's `user`.
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", HeaderValue::from_str(user).unwrap());
        let (_, served) = run(
            Endpoint::ChatCompletions,
            &headers,
            json!({"messages": [], "user": "someone-else", "safety_identifier": "x", "prompt": {"id": "ab"}}),
        )
        .await
        .unwrap();
        assert_eq!(served.unwrap().version, user_version(user));
        let (_, served) = run(
            Endpoint::ChatCompletions,
            &HeaderMap::new(),
            json!({"messages": [], "safety_identifier": user, "prompt": {"id": "ab"}}),
        )
        .await
        .unwrap();
        assert_eq!(served.unwrap().version, user_version(user));
    }
}

#[tokio::test]
async fn bad_prompt_fields_are_400_naming_the_field() {
    let cases = [
        (json!({"messages": [], "prompt": "support"}), "prompt"),
        (
            json!({"messages": [], "prompt": {"variables": {}}}),
            "prompt.id",
        ),
        (
            json!({"messages": [], "prompt": {"id": "support", "version": -1}}),
            "prompt.version",
        ),
        (
            json!({"messages": [], "prompt": {"id": "support", "variables": [1]}}),
            "prompt.variables",
        ),
        (
            json!({"messages": [], "prompt": {"id": "support", "vars": {}}}),
            "prompt.vars",
        ),
        (
            json!({"messages": "hi", "prompt": {"id": "support", "variables": {"company": "A"}}}),
            "messages",
        ),
    ];
    for (body, param) in cases {
        let err = run(Endpoint::ChatCompletions, &HeaderMap::new(), body.clone())
            .await
            .unwrap_err();
        assert_eq!(err.status(), 400, "{body}");
        assert_eq!(err.body()["error"]["param"], param, "{body}");
    }
}

#[tokio::test]
async fn unknown_prompt_version_and_label_are_404() {
    let err = run(
        Endpoint::ChatCompletions,
        &HeaderMap::new(),
        json!({"prompt": {"id": "nope"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.body()["error"]["code"], "prompt_not_found");
    assert!(
        err.to_string().contains("known prompts: `ab`, `support`"),
        "{err}"
    );
    let err = run(
        Endpoint::ChatCompletions,
        &HeaderMap::new(),
        json!({"prompt": {"id": "support", "version": 9}}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.body()["error"]["code"], "version_not_found");
    let err = run(
        Endpoint::ChatCompletions,
        &HeaderMap::new(),
        json!({"prompt": {"id": "support", "version": "prod"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown label `prod` for prompt `support`; known labels: `staging`"
    );
}

#[tokio::test]
async fn missing_variables_are_400() {
    let err = run(
        Endpoint::ChatCompletions,
        &HeaderMap::new(),
        json!({"messages": [], "prompt": {"id": "support"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.status(), 400);
    assert_eq!(err.body()["error"]["code"], "missing_variables");
    assert!(err.to_string().contains("`company`"));
}

#[tokio::test]
async fn bad_variables_header_is_400() {
    let mut headers = HeaderMap::new();
    headers.insert("x-prompt-name", HeaderValue::from_static("support"));
    headers.insert("x-prompt-variables", HeaderValue::from_static("{nope"));
    let err = run(Endpoint::ChatCompletions, &headers, json!({"messages": []}))
        .await
        .unwrap_err();
    assert_eq!(err.body()["error"]["param"], "X-Prompt-Variables");
}
