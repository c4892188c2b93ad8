//! Chat templates, typed variables, structured outputs and tools, through the real server in
//! front of a mock upstream that records what it receives.

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A prompts folder with:
/// - `agent`: a chat template (system, a user message before the conversation, the
///   conversation, a user reminder after it), an `input_schema` with a default, few-shot
///   examples as messages, `response_format` from a file and inline `tools`;
/// - `plain`: a one-template version with the same `tools`, to show they work without chat.
fn chat_prompts() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "agent/v1.prompt",
        "---\n\
         chat: true\n\
         input_schema:\n  \
           type: object\n  \
           required: [company, tier]\n  \
           properties:\n    \
             company: {type: string}\n    \
             tier: {enum: [free, pro, enterprise]}\n    \
             language: {type: string, default: English}\n\
         response_format: {name: ticket, schema: ticket.schema.json}\n\
         tools:\n  \
           - name: lookup_order\n    \
             description: Find an order by id\n    \
             parameters: {type: object, properties: {id: {type: string}}, required: [id]}\n\
         ---\n\
         system:\n\
         You are the support agent of {{ company }} ({{ tier }}).\n\
         \n\
         user:\n\
         Context: answer in {{ language }}.\n\
         \n\
         conversation:\n\
         \n\
         user:\n\
         Remember: be brief.\n",
    );
    write(
        root,
        "agent/ticket.schema.json",
        r#"{"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"], "additionalProperties": false}"#,
    );
    write(
        root,
        "agent/examples.jsonl",
        "{\"input\": \"Where is my order?\", \"output\": \"Let me look it up.\"}\n",
    );
    write(
        root,
        "agent/prompt.yaml",
        "examples: {strategy: quality, count: 1, format: messages}\n",
    );
    write(
        root,
        "plain/v1.prompt",
        "---\ntools: tools.yaml\n---\nYou help.\n",
    );
    write(
        root,
        "plain/tools.yaml",
        "- type: function\n  function:\n    name: ping\n    parameters: {type: object, properties: {}}\n",
    );
    dir
}

fn completion() -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})
}

async fn upstream() -> MockServer {
    let mock = MockServer::start().await;
    for p in ["/v1/chat/completions", "/v1/responses"] {
        Mock::given(method("POST"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
            .mount(&mock)
            .await;
    }
    mock
}

async fn last_received(mock: &MockServer) -> Value {
    let received = mock.received_requests().await.unwrap();
    serde_json::from_slice(&received.last().unwrap().body).unwrap()
}

const SCHEMA: &str = r#"{"type":"object","properties":{"summary":{"type":"string"}},"required":["summary"],"additionalProperties":false}"#;

fn tools_chat() -> Value {
    json!([{"type": "function", "function": {"name": "lookup_order", "description": "Find an order by id",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}}])
}

#[tokio::test]
async fn chat_template_on_chat_completions() {
    let dir = chat_prompts();
    let mock = upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "Answer in French."},
                    {"role": "user", "content": "My order is late"}
                ],
                "prompt": {"id": "agent", "variables": {"company": "Acme", "tier": "pro"}}
            }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let sent = last_received(&mock).await;
    assert_eq!(
        sent["messages"],
        json!([
            // The template's system message, the client's merged in (`client_system: merge`).
            {"role": "system", "content": "You are the support agent of Acme (pro).\n\nAnswer in French."},
            // The template's messages before the marker; `language` took the schema's default.
            {"role": "user", "content": "Context: answer in English."},
            // The few-shot pair, where the marker is.
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": "Let me look it up."},
            // The client's conversation, then the template's message after the marker.
            {"role": "user", "content": "My order is late"},
            {"role": "user", "content": "Remember: be brief."}
        ])
    );
    // Structured output and tools, as chat completions takes them, byte for byte.
    let raw = String::from_utf8(
        mock.received_requests()
            .await
            .unwrap()
            .last()
            .unwrap()
            .body
            .clone(),
    )
    .unwrap();
    assert!(
        raw.contains(&format!(
            r#""response_format":{{"type":"json_schema","json_schema":{{"name":"ticket","schema":{SCHEMA},"strict":true}}}}"#
        )),
        "{raw}"
    );
    assert_eq!(sent["tools"], tools_chat());
    assert!(sent.get("prompt").is_none());
}

#[tokio::test]
async fn chat_template_on_responses() {
    let dir = chat_prompts();
    let mock = upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let resp = app
        .post_json(
            "/v1/responses",
            &json!({
                "model": "gpt-4o",
                "instructions": "Answer in French.",
                "input": "My order is late",
                "text": {"verbosity": "low"},
                "prompt": {"id": "agent", "variables": {"company": "Acme", "tier": "pro", "language": "German"}}
            }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let sent = last_received(&mock).await;
    assert_eq!(
        sent["instructions"],
        "You are the support agent of Acme (pro).\n\nAnswer in French."
    );
    assert_eq!(
        sent["input"],
        json!([
            {"role": "user", "content": "Context: answer in German."},
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": "Let me look it up."},
            {"role": "user", "content": "My order is late"},
            {"role": "user", "content": "Remember: be brief."}
        ])
    );
    // `text.format` in the Responses shape, the client's `verbosity` kept.
    assert_eq!(
        sent["text"],
        json!({"verbosity": "low", "format": {"type": "json_schema", "name": "ticket",
               "schema": serde_json::from_str::<Value>(SCHEMA).unwrap(), "strict": true}})
    );
    // Tools in the Responses flat shape.
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "name": "lookup_order", "description": "Find an order by id",
                "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
                "strict": false}])
    );
}

#[tokio::test]
async fn the_clients_own_tools_and_response_format_win() {
    let dir = chat_prompts();
    let mock = upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let own_tools = json!([{"type": "function", "function": {"name": "mine"}}]);
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({
                "messages": [{"role": "user", "content": "Hi"}],
                "tools": own_tools,
                "response_format": {"type": "json_object"},
                "prompt": {"id": "agent", "variables": {"company": "Acme", "tier": "pro"}}
            }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = last_received(&mock).await;
    assert_eq!(sent["tools"], own_tools);
    assert_eq!(sent["response_format"], json!({"type": "json_object"}));

    let resp = app
        .post_json(
            "/v1/responses",
            &json!({
                "input": "Hi",
                "text": {"format": {"type": "text"}},
                "prompt": {"id": "agent", "variables": {"company": "Acme", "tier": "pro"}}
            }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = last_received(&mock).await;
    assert_eq!(sent["text"], json!({"format": {"type": "text"}}));

    // A plain (one-template) version's tools, read from a YAML file beside it.
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Hi"}], "prompt": {"id": "plain"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = last_received(&mock).await;
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "You help."}, {"role": "user", "content": "Hi"}])
    );
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}])
    );
}

#[tokio::test]
async fn variables_that_break_the_schema_are_a_400_naming_each_path() {
    let dir = chat_prompts();
    let mock = upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({
                "messages": [{"role": "user", "content": "Hi"}],
                "prompt": {"id": "agent", "variables": {"tier": "gold", "language": 3}}
            }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], "invalid_variables");
    assert_eq!(error["param"], "prompt.variables");
    let message = error["message"].as_str().unwrap();
    for part in [
        "variables.tier: must be one of free, pro, enterprise",
        "variables.company: is required",
        "variables.language: must be of type \"string\"",
    ] {
        assert!(message.contains(part), "{message}");
    }
    assert!(mock.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_chat_template_without_a_system_message_keeps_the_clients() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ask/v1.prompt",
        "---\nchat: true\n---\nconversation:\nuser:\nCustomer message: {{ message }}\n",
    );
    write(
        dir.path(),
        "strict/v1.prompt",
        "---\nchat: true\nclient_system: replace\n---\nuser:\nQ: {{ q }}\n",
    );
    let mock = upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "system", "content": "Be kind."}],
                    "prompt": {"id": "ask", "variables": {"message": "{{ not a template }}"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        last_received(&mock).await["messages"],
        json!([{"role": "system", "content": "Be kind."},
               {"role": "user", "content": "Customer message: {{ not a template }}"}])
    );
    let resp = app
        .post_json(
            "/v1/responses",
            &json!({"instructions": "Be kind.", "input": [{"role": "user", "content": "Hi"}],
                    "prompt": {"id": "strict", "variables": {"q": "why?"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = last_received(&mock).await;
    assert!(sent.get("instructions").is_none(), "{sent}");
    assert_eq!(
        sent["input"],
        json!([{"role": "user", "content": "Q: why?"}, {"role": "user", "content": "Hi"}])
    );
}

fn promptgate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_promptgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_names_file_line_and_message() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad/v1.prompt",
        "---\nchat: true\n---\nsystem:\nHi {{ name }}\n\nuser:\nline one\n{% if x %}\n",
    );
    write(
        dir.path(),
        "bad/v2.prompt",
        "---\nmodel: m\ntools: [{name: \"a b\"}]\nresponse_format: {schema: {type: array}}\ninput_schema: missing.json\n---\nHi",
    );
    write(
        dir.path(),
        "bad/v3.prompt",
        "---\nchat: true\n---\nHello\nuser:\n\n",
    );
    let (ok, stdout, _) = promptgate(&["validate", "--prompts", dir.path().to_str().unwrap()]);
    assert!(!ok);
    for line in [
        "bad/v1.prompt:9: message 2 (`user`): template syntax error",
        "bad/v2.prompt:3: `tools[0]`: the name must be",
        "bad/v2.prompt:4: `response_format.schema` must describe an object",
        "bad/v2.prompt:5: `input_schema` names `missing.json`, which is not in the prompt's folder",
        "bad/v3.prompt:4: text before the first role line",
        "bad/v3.prompt:5: message 1 (`user`) is empty",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
}

#[test]
fn render_prints_the_messages_of_a_chat_template() {
    let dir = chat_prompts();
    let (ok, stdout, stderr) = promptgate(&[
        "render",
        "agent",
        "--prompts",
        dir.path().to_str().unwrap(),
        "--var",
        "company=Acme",
        "--var",
        "tier=free",
        "--message",
        "Hello",
    ]);
    assert!(ok, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        printed["messages"][0]["content"],
        "You are the support agent of Acme (free)."
    );
    assert_eq!(
        printed["messages"].as_array().unwrap().len(),
        6,
        "{printed}"
    );
    assert_eq!(printed["tools"], tools_chat());
    let (ok, _, stderr) = promptgate(&[
        "render",
        "agent",
        "--prompts",
        dir.path().to_str().unwrap(),
        "--var",
        "company=Acme",
        "--var",
        "tier=gold",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("variables.tier: must be one of free, pro, enterprise"),
        "{stderr}"
    );
}

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/import/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Renders `name` in `dir` through the binary and returns the upstream body it prints.
fn render_json(dir: &std::path::Path, name: &str, args: &[&str]) -> Value {
    let mut all = vec!["render", name, "--prompts", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = promptgate(&all);
    assert!(ok, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn prompty_files_import_and_render() {
    let out = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = promptgate(&[
        "import",
        "--from",
        "prompty",
        &fixture("basic.prompty"),
        &fixture("chat.prompty"),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    for line in [
        "imported `basic_prompt` (v1)",
        "note: `model.configuration` (azure_endpoint, api_version)",
        "note: `sample`",
        "imported `contoso_chat_prompt` (v1)",
        "chat-history loop became the `conversation:` marker",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    let (ok, stdout, _) = promptgate(&["validate", "--prompts", out.path().to_str().unwrap()]);
    assert!(ok, "{stdout}");

    let sent = render_json(
        out.path(),
        "basic_prompt",
        &[
            "--var",
            "firstName=Jane",
            "--var",
            "lastName=Doe",
            "--var",
            "question=What is a tent?",
            "--message",
            "Hello",
        ],
    );
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["max_tokens"], 3000);
    assert_eq!(sent["top_p"], 0.9);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "You are an AI assistant who helps people find information.\n\
              As the assistant, you answer questions briefly, succinctly,\n\
              and in a personable manner using markdown and even add some personal flair with appropriate emojis.\n\n\
              # Customer\nYou are helping Jane Doe to find answers to their questions.\n\
              Use their name to address them in your responses."},
            {"role": "user", "content": "What is a tent?"},
            {"role": "user", "content": "Hello"}
        ])
    );

    // The history loop is the marker: the client's messages go between system and question;
    // `tier` took its default from `inputs`; `outputs` became the response format.
    let sent = render_json(
        out.path(),
        "contoso_chat_prompt",
        &[
            "--var",
            "customer=Jane",
            "--var",
            "question=Which tent?",
            "--message",
            "Hi",
        ],
    );
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{sent}");
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .contains("The customer is Jane, a Silver member.")
    );
    assert_eq!(messages[1], json!({"role": "user", "content": "Hi"}));
    assert_eq!(
        messages[2],
        json!({"role": "user", "content": "Which tent?"})
    );
    assert_eq!(sent["stop"], json!(["\n\n"]));
    assert_eq!(
        sent["response_format"]["json_schema"]["schema"]["properties"]["answer"]["type"],
        "string"
    );
    // Typed inputs are checked.
    let (ok, _, stderr) = promptgate(&[
        "render",
        "contoso_chat_prompt",
        "--prompts",
        out.path().to_str().unwrap(),
        "--var",
        "customer:=5",
        "--var",
        "question=q",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("variables.customer: must be of type \"string\""),
        "{stderr}"
    );
}

/// Imports that used to validate and then fail every request: an environment reference as the
/// model, a list input typed as an object, strict outputs strict mode refuses, a `{% set %}`
/// shared across messages.
#[test]
fn prompty_imports_that_would_fail_every_request_are_fixed_or_refused() {
    let out = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = promptgate(&[
        "import",
        "--from",
        "prompty",
        &fixture("research.prompty"),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    for line in [
        "note: `model.configuration.azure_deployment: ${env:AZURE_OPENAI_DEPLOYMENT:gpt-4o-mini}`: the model comes from the environment",
        "note: outputs `sources`: not typed completely",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    let sent = render_json(
        out.path(),
        "research_brief",
        &["--var", r#"topics:=["tents","stoves"]"#],
    );
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["messages"][1]["content"], "Topics: tents, stoves");
    assert_eq!(
        sent["messages"][0]["content"],
        "You write research briefs, 2 paragraphs deep."
    );
    assert_eq!(
        sent["response_format"]["json_schema"]["strict"], false,
        "{sent}"
    );
    // The carried schema checks: `topics` is required, `depth` at most 3.
    let prompts = out.path().to_str().unwrap();
    for (vars, problem) in [
        (&["depth:=2"][..], "variables.topics: is required"),
        (
            &[r#"topics:=["a"]"#, "depth:=5"][..],
            "variables.depth: is greater than the maximum of 3",
        ),
    ] {
        let mut args = vec!["render", "research_brief", "--prompts", prompts];
        for var in vars {
            args.extend(["--var", var]);
        }
        let (ok, _, stderr) = promptgate(&args);
        assert!(!ok, "{vars:?} rendered");
        assert!(stderr.contains(problem), "{stderr}");
    }

    let src = out.path().join("shared.prompty");
    std::fs::write(
        &src,
        "---\nname: shared\n---\nsystem:\n{% set who = 'Jane' %}Hi\n\nuser:\n{{ who }}\n",
    )
    .unwrap();
    let (ok, _, stderr) = promptgate(&[
        "import",
        "--from",
        "prompty",
        src.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr
            .contains("`who` is defined in message 1 (`system:`) and used in message 2 (`user:`)"),
        "{stderr}"
    );
    assert!(!out.path().join("shared").exists());
}

#[test]
fn langfuse_exports_import_and_render() {
    let out = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = promptgate(&[
        "import",
        "--from",
        "langfuse",
        &fixture("langfuse-support.json"),
        &fixture("langfuse-greeting.json"),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    for line in [
        "imported `greeting` (v3)",
        "a `@@@langfusePrompt:…@@@` reference to another prompt is kept as text",
        "imported `support.triage` (v1, v2)",
        "the name `Support/Triage` became the folder name `support.triage`",
        "v1: config key `supported_languages` is not an OpenAI request field",
        "v1 message 3: Mustache `{{#urgent}}` has no Jinja equivalent",
        "the placeholder `history` became the `conversation:` marker",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    let manifest = std::fs::read_to_string(out.path().join("support.triage/prompt.yaml")).unwrap();
    assert_eq!(
        manifest,
        "tags: [\"support\",\"json\"]\nactive: 2\nlabels: {\"staging\":1}\n"
    );

    let vars = [
        "--var",
        "company=Acme",
        "--var",
        "language=French",
        "--var",
        "ticket=Refund please",
    ];
    let mut args = vars.to_vec();
    args.extend(["--message", "My bill is wrong"]);
    let sent = render_json(out.path(), "support.triage", &args);
    assert_eq!(sent["model"], "gpt-4o");
    assert_eq!(sent["temperature"], 0.0);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "You triage tickets for Acme. Reply in French. Answer as JSON."},
            {"role": "user", "content": "My bill is wrong"},
            {"role": "user", "content": "Ticket: Refund please"}
        ])
    );
    assert_eq!(
        sent["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "triage", "schema": {"type": "object",
               "properties": {"queue": {"type": "string", "enum": ["billing", "tech", "other"]}},
               "required": ["queue"], "additionalProperties": false}, "strict": true}})
    );
    // The `staging` label is v1; its Mustache section stays literal text.
    let mut args = vars.to_vec();
    args.extend(["--version", "staging"]);
    let sent = render_json(out.path(), "support.triage", &args);
    assert_eq!(
        sent["messages"][1]["content"],
        "Ticket: Refund please\n{{#urgent}}This is urgent.{{/urgent}}"
    );
    let sent = render_json(out.path(), "greeting", &["--var", "name=Al"]);
    assert_eq!(
        sent["messages"][0]["content"],
        "Greet Al warmly. Mention 100% of {% raw %} literally. @@@langfusePrompt:name=signature|label=production@@@"
    );

    // Nothing is overwritten.
    let (ok, _, stderr) = promptgate(&[
        "import",
        "--from",
        "langfuse",
        &fixture("langfuse-greeting.json"),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("exists already"), "{stderr}");
}

#[tokio::test]
async fn the_admin_api_writes_and_reads_chat_versions() {
    let dir = chat_prompts();
    let mock = upstream().await;
    let app = spawn_with(dir.path(), upstream_of(&mock), |c| {
        c.admin_token = Some("t".into())
    })
    .await;
    let post = |body: Value| {
        app.client
            .post(app.url("/admin/prompts/helpdesk/versions"))
            .bearer_auth("t")
            .json(&body)
            .send()
    };
    let resp = post(json!({
        "messages": [
            {"role": "system", "content": "You help {{ who }}."},
            {"role": "conversation"},
            {"role": "user", "content": "Be brief."}
        ],
        "input_schema": {"type": "object", "properties": {"who": {"type": "string", "default": "everyone"}}},
        "tools": [{"name": "ping"}],
        "response_format": "json_object",
        "activate": true
    }))
    .await
    .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let file = std::fs::read_to_string(dir.path().join("helpdesk/v1.prompt")).unwrap();
    assert!(
        file.ends_with("---\nsystem:\nYou help {{ who }}.\n\nconversation:\n\nuser:\nBe brief.\n"),
        "{file}"
    );
    assert!(file.contains("chat: true\n"), "{file}");

    let got: Value = app
        .client
        .get(app.url("/admin/prompts/helpdesk/versions/1"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        got["messages"],
        json!([{"role": "system", "content": "You help {{ who }}."}, {"role": "conversation"},
               {"role": "user", "content": "Be brief."}])
    );
    assert_eq!(
        got["tools"],
        json!([{"type": "function", "function": {"name": "ping"}}])
    );
    assert_eq!(got["response_format"], json!({"type": "json_object"}));
    assert_eq!(
        got["input_schema"]["properties"]["who"]["default"],
        "everyone"
    );

    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Hi"}], "prompt": {"id": "helpdesk"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        last_received(&mock).await["messages"],
        json!([{"role": "system", "content": "You help everyone."}, {"role": "user", "content": "Hi"},
               {"role": "user", "content": "Be brief."}])
    );

    // Bad shapes are refused whole, naming the message or the file line.
    let resp = post(json!({"messages": [{"role": "robot", "content": "x"}]}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`messages[0].role` must be"),
        "{err}"
    );
    let resp = post(json!({"template": "Hi", "tools": [{"name": "a b"}]}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("helpdesk/v2.prompt:2: `tools[0]`"),
        "{err}"
    );
    assert!(!dir.path().join("helpdesk/v2.prompt").exists());
}

#[tokio::test]
async fn system_format_examples_join_the_chat_templates_system_message() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "fs/v1.prompt",
        "---\nchat: true\n---\nsystem:\nClassify.\nuser:\nText follows.\n",
    );
    write(
        dir.path(),
        "fs/examples.jsonl",
        "{\"input\": \"great\", \"output\": \"positive\"}\n",
    );
    write(
        dir.path(),
        "fs/prompt.yaml",
        "examples: {strategy: quality, count: 1, format: system}\n",
    );
    let mock = upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "meh"}], "prompt": {"id": "fs"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let messages = last_received(&mock).await["messages"].clone();
    let system = messages[0]["content"].as_str().unwrap();
    assert!(
        system.starts_with("Classify.\n\nHere are examples"),
        "{system}"
    );
    assert!(
        system.contains("Input: great\nOutput: positive"),
        "{system}"
    );
    assert_eq!(
        messages[1],
        json!({"role": "user", "content": "Text follows."})
    );
    assert_eq!(messages[2], json!({"role": "user", "content": "meh"}));
}

#[tokio::test]
async fn a_constant_chat_template_still_requires_its_declared_variables() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "fixed/v1.prompt",
        "---\nchat: true\nvariables: [ticket]\n---\nsystem:\nYou are the help desk.\n",
    );
    let mock = upstream().await;
    let app = spawn_app(dir.path(), upstream_of(&mock)).await;
    let send = |variables: Value| {
        app.post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Hi"}],
                    "prompt": {"id": "fixed", "variables": variables}}),
        )
        .send()
    };
    let resp = send(json!({})).await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ticket"),
        "{body}"
    );
    assert!(mock.received_requests().await.unwrap().is_empty());
    assert_eq!(send(json!({"ticket": "T-1"})).await.unwrap().status(), 200);
}

#[tokio::test]
async fn admin_values_with_characters_yaml_refuses_raw_round_trip() {
    let dir = chat_prompts();
    let mock = upstream().await;
    let app = spawn_with(dir.path(), upstream_of(&mock), |c| {
        c.admin_token = Some("t".into())
    })
    .await;
    let schema = json!({"type": "object", "description": "a\u{7f}b\u{9f}c\u{ffff} # x: y"});
    let resp = app
        .client
        .post(app.url("/admin/prompts/odd/versions"))
        .bearer_auth("t")
        .json(&json!({"template": "Hi", "input_schema": schema, "activate": true, "notes": "why\u{7f}\u{85}"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let got: Value = app
        .client
        .get(app.url("/admin/prompts/odd/versions/1"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["input_schema"], schema);
    let file = std::fs::read_to_string(dir.path().join("odd/v1.prompt")).unwrap();
    assert!(file.contains(r#"notes: "why\u007f\u0085""#), "{file}");

    let mut deep = json!("leaf");
    for _ in 0..70 {
        deep = json!([deep]);
    }
    let resp = app
        .client
        .post(app.url("/admin/prompts/odd/versions"))
        .bearer_auth("t")
        .json(&json!({"template": "Hi", "tools": deep}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`tools` nests deeper"),
        "{body}"
    );
}
