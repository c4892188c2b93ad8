//! Few-shot examples through the real server, with the real local embedding model
//! (fetched by `scripts/fetch-model.sh`, which `make test` runs first).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use promptgate::config::Upstream;
use serde_json::{Value, json};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
}

fn runtime_lib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/onnxruntime/libonnxruntime.so")
}

fn require_model() {
    assert!(
        model_dir().join("model.onnx").exists() && runtime_lib().exists(),
        "the embedding model is missing: run scripts/fetch-model.sh (make test does)"
    );
}

const EXAMPLES: &str = r#"{"input": "How do I reset my password?", "output": "Use the Forgot password link on the sign-in page.", "category": "account", "quality_score": 0.9}
{"input": "I can't log in to my account", "output": "Reset your password, then try again.", "category": "account", "quality_score": 0.8}
{"input": "Where is my package?", "output": "Track it from the Orders page.", "category": "shipping", "quality_score": 0.95}
{"input": "My order hasn't arrived yet", "output": "Deliveries take 3-5 days; track them in Orders.", "category": "shipping", "quality_score": 0.7}
{"input": "Can I get a refund for my purchase?", "output": "Refunds are possible within 30 days from Orders.", "category": "billing", "quality_score": 0.85}
{"input": "I was charged twice this month", "output": "We will refund the duplicate charge.", "category": "billing", "quality_score": 0.99}
"#;

fn topic_of(input: &str) -> &'static str {
    match input {
        "How do I reset my password?" | "I can't log in to my account" => "account",
        "Where is my package?" | "My order hasn't arrived yet" => "shipping",
        _ => "billing",
    }
}

fn fewshot_prompts(strategy: &str, format: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "faq/v1.prompt",
        "You answer questions for Acme.",
    );
    write(
        dir.path(),
        "faq/prompt.yaml",
        &format!("examples: {{strategy: {strategy}, count: 2, format: {format}}}\n"),
    );
    write(dir.path(), "faq/examples.jsonl", EXAMPLES);
    write(dir.path(), "plain/v1.prompt", "No examples here.");
    dir
}

async fn spawn_model_app(dir: &Path) -> TestApp {
    require_model();
    spawn_with(dir, Upstream::Echo, |c| {
        c.embedding_model = model_dir();
        c.onnxruntime = runtime_lib();
    })
    .await
}

/// What promptgate would send upstream for `question`, through the echo upstream.
async fn sent(app: &TestApp, prompt: Value, question: &str) -> (u16, Value) {
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": question}], "prompt": prompt}),
        )
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    if status != 200 {
        return (status, body);
    }
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    (status, serde_json::from_str(content).unwrap())
}

/// The example inputs in a system prompt's block, in order.
fn inputs_in(system: &str) -> Vec<String> {
    system
        .lines()
        .filter_map(|l| l.strip_prefix("Input: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn paraphrased_questions_get_their_own_topic_first() {
    let dir = fewshot_prompts("semantic", "system");
    let app = spawn_model_app(dir.path()).await;
    let cases = [
        (
            "I forgot my login credentials and cannot sign in",
            "account",
        ),
        ("When will my delivery show up?", "shipping"),
        ("You billed my card two times", "billing"),
        ("Is it possible to get my money back?", "billing"),
        ("Has my parcel been shipped?", "shipping"),
    ];
    for (question, topic) in cases {
        let (status, body) = sent(&app, json!({"id": "faq"}), question).await;
        assert_eq!(status, 200, "{body}");
        let system = body["messages"][0]["content"].as_str().unwrap();
        assert!(
            system.starts_with("You answer questions for Acme.\n\nHere are examples of correct responses:\nExample 1:\n"),
            "{system}"
        );
        let inputs = inputs_in(system);
        assert_eq!(inputs.len(), 2, "{system}");
        assert_eq!(topic_of(&inputs[0]), topic, "{question:?} got {inputs:?}");
        assert_eq!(topic_of(&inputs[1]), topic, "{question:?} got {inputs:?}");
    }
    // The prompt without examples is untouched.
    let (_, body) = sent(&app, json!({"id": "plain"}), "hello").await;
    assert_eq!(body["messages"][0]["content"], "No examples here.");
}

#[tokio::test]
async fn mmr_prefers_variety_over_near_duplicates() {
    let dir = fewshot_prompts("mmr", "system");
    write(
        dir.path(),
        "faq/prompt.yaml",
        "examples: {strategy: mmr, count: 2, lambda: 0.3}\n",
    );
    let app = spawn_model_app(dir.path()).await;
    let (_, body) = sent(
        &app,
        json!({"id": "faq"}),
        "I forgot my password and can't log in",
    )
    .await;
    let inputs = inputs_in(body["messages"][0]["content"].as_str().unwrap());
    assert_eq!(inputs.len(), 2);
    assert_eq!(topic_of(&inputs[0]), "account", "{inputs:?}");
    assert_ne!(
        topic_of(&inputs[1]),
        "account",
        "the twin is skipped: {inputs:?}"
    );
}

#[tokio::test]
async fn messages_format_inserts_pairs_after_the_system_message() {
    let dir = fewshot_prompts("semantic", "messages");
    let app = spawn_model_app(dir.path()).await;
    let (_, body) = sent(&app, json!({"id": "faq"}), "Where's my parcel?").await;
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 6, "{body}");
    assert_eq!(
        messages[0],
        json!({"role": "system", "content": "You answer questions for Acme."})
    );
    assert_eq!(messages[1]["role"], "user");
    assert_eq!(
        topic_of(messages[1]["content"].as_str().unwrap()),
        "shipping"
    );
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[3]["role"], "user");
    assert_eq!(messages[4]["role"], "assistant");
    assert_eq!(
        messages[5],
        json!({"role": "user", "content": "Where's my parcel?"})
    );
}

#[tokio::test]
async fn requests_override_count_and_strategy() {
    let dir = fewshot_prompts("semantic", "system");
    let app = spawn_model_app(dir.path()).await;
    let (_, body) = sent(
        &app,
        json!({"id": "faq", "examples": {"count": 3, "strategy": "quality"}}),
        "anything",
    )
    .await;
    let inputs = inputs_in(body["messages"][0]["content"].as_str().unwrap());
    assert_eq!(
        inputs,
        [
            "I was charged twice this month",
            "Where is my package?",
            "How do I reset my password?"
        ]
    );
    let (_, body) = sent(
        &app,
        json!({"id": "faq", "examples": {"count": 3, "strategy": "diverse"}}),
        "anything",
    )
    .await;
    let inputs = inputs_in(body["messages"][0]["content"].as_str().unwrap());
    assert_eq!(
        inputs,
        [
            "How do I reset my password?",
            "Where is my package?",
            "I was charged twice this month"
        ]
    );
    let (_, body) = sent(
        &app,
        json!({"id": "faq", "examples": {"strategy": "none"}}),
        "x",
    )
    .await;
    assert_eq!(
        body["messages"][0]["content"],
        "You answer questions for Acme."
    );
    let (status, body) = sent(&app, json!({"id": "faq", "examples": {"count": 500}}), "x").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "prompt.examples.count");
}

#[tokio::test]
async fn templates_can_place_the_examples_themselves() {
    let dir = fewshot_prompts("quality", "system");
    write(
        dir.path(),
        "faq/v1.prompt",
        "Examples first:\n{{ examples }}\nNow answer.",
    );
    let app = spawn_model_app(dir.path()).await;
    let (_, body) = sent(&app, json!({"id": "faq"}), "x").await;
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.starts_with("Examples first:\nHere are examples of correct responses:\nExample 1:"),
        "{system}"
    );
    assert!(
        system.ends_with("\nNow answer."),
        "appended only once: {system}"
    );
}

#[tokio::test]
async fn a_missing_model_takes_out_only_the_prompts_that_need_it() {
    let dir = fewshot_prompts("semantic", "system");
    let app = spawn_with(dir.path(), Upstream::Echo, |c| {
        c.embedding_model = PathBuf::from("/nonexistent/all-MiniLM-L6-v2");
        c.onnxruntime = runtime_lib();
    })
    .await;
    let (status, body) = sent(&app, json!({"id": "faq"}), "hello").await;
    assert_eq!(status, 503);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/nonexistent/all-MiniLM-L6-v2/model.onnx")
            && message.contains("scripts/fetch-model.sh"),
        "{message}"
    );
    let (status, _) = sent(&app, json!({"id": "plain"}), "hello").await;
    assert_eq!(status, 200, "prompts without the model keep serving");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert!(
        body["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("faq/prompt.yaml: "),
        "{body}"
    );

    // `validate` reports it and exits 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_promptgate"))
        .args([
            "validate",
            "--embedding-model",
            "/nonexistent/all-MiniLM-L6-v2",
            "--prompts",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("model.onnx` does not exist"));
}

#[tokio::test]
async fn embeddings_are_reused_across_reloads() {
    let dir = fewshot_prompts("semantic", "system");
    let app = spawn_model_app(dir.path()).await;
    let model = app.server.state().model.clone();
    let after_start = model.get().unwrap().embedded();
    assert_eq!(after_start, 6, "each example embedded once");

    // A change elsewhere reloads the whole set: no example is embedded again.
    write(dir.path(), "plain/v1.prompt", "Still no examples.");
    let reloaded = app
        .server
        .state()
        .reloader
        .reload(promptgate::audit::Actor::disk())
        .await;
    assert!(reloaded.is_ok());
    assert_eq!(model.get().unwrap().embedded(), after_start);

    // One new example: one embedding.
    let mut examples = EXAMPLES.to_owned();
    examples.push_str(r#"{"input": "How do I change my shipping address?", "output": "Edit it under Account.", "category": "shipping"}"#);
    examples.push('\n');
    write(dir.path(), "faq/examples.jsonl", &examples);
    app.server
        .state()
        .reloader
        .reload(promptgate::audit::Actor::disk())
        .await
        .unwrap();
    assert_eq!(model.get().unwrap().embedded(), after_start + 1);

    // A query is embedded once, then served from the cache.
    let before = model.get().unwrap().embedded();
    sent(&app, json!({"id": "faq"}), "Where is my stuff?").await;
    sent(&app, json!({"id": "faq"}), "Where is my stuff?").await;
    assert_eq!(model.get().unwrap().embedded(), before + 1);

    // A restart with the same state folder embeds nothing: the vectors are on disk.
    let state_dir = app.state_dir.path().to_path_buf();
    app.server.shutdown(Duration::from_secs(2)).await.unwrap();
    let again = spawn_with(dir.path(), Upstream::Echo, |c| {
        c.embedding_model = model_dir();
        c.onnxruntime = runtime_lib();
        c.state_dir = state_dir;
    })
    .await;
    assert_eq!(again.server.state().model.get().unwrap().embedded(), 0);
}
