//! Micro-benchmarks of the work promptgate does itself: loading a large prompt folder (what a
//! reload costs), and preparing one request (parse → select → render → inject).
//!
//! `cargo bench --bench prompts`; figures are recorded in docs/benchmarks.md.

use std::hint::black_box;
use std::path::Path;

use axum::http::HeaderMap;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use promptgate::fewshot::ModelSlot;
use promptgate::prompts;
use promptgate::proxy::request::{Endpoint, prepare};

fn write(root: &Path, file: &str, text: &str) {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `n` prompts of five versions each, with manifests, like a large real folder.
fn folder(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for p in 0..n {
        let name = format!("prompt_{p:04}");
        for v in 1..=5 {
            write(
                dir.path(),
                &format!("{name}/v{v}.prompt"),
                &format!(
                    "---\nmodel: gpt-4o\ntemperature: 0.3\nvariables: [company, tier]\n---\n\
                     You are support agent number {p} (version {v}) for {{{{ company }}}}.\n\
                     {{% if tier == \"enterprise\" %}}Prioritize this customer.{{% endif %}}\n\
                     Be brief, be kind, and never share internal details.\n"
                ),
            );
        }
        write(
            dir.path(),
            &format!("{name}/prompt.yaml"),
            "description: a prompt\ntags: [bench]\nactive: 4\nlabels: {stable: 3}\n\
             experiment: {version_a: 4, version_b: 5, traffic_split: 0.1}\n",
        );
    }
    dir
}

fn bench_load(c: &mut Criterion) {
    let dir = folder(1000);
    let mut group = c.benchmark_group("reload");
    group.sample_size(10);
    group.bench_function("load_1000_prompts_x5_versions", |b| {
        b.iter(|| black_box(prompts::load(dir.path()).unwrap()))
    });
    group.finish();
}

fn bench_prepare(c: &mut Criterion) {
    let dir = folder(10);
    let set = prompts::load(dir.path()).unwrap();
    let body = Bytes::from(
        serde_json::json!({
            "model": "gpt-4o-mini", "user": "user_123",
            "messages": [{"role": "user", "content": "My API keys stopped working after the migration"}],
            "prompt": {"id": "prompt_0003", "variables": {"company": "Acme Corp", "tier": "enterprise"}}
        })
        .to_string(),
    );
    let headers = HeaderMap::new();
    let now = chrono::Utc::now();
    let model = ModelSlot::new("/nonexistent".into(), "/nonexistent".into(), None);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    c.bench_function("prepare_chat_request_with_prompt", |b| {
        b.iter(|| {
            black_box(
                runtime
                    .block_on(prepare(
                        &set,
                        &model,
                        Endpoint::ChatCompletions,
                        &headers,
                        body.clone(),
                        now,
                    ))
                    .unwrap(),
            )
        })
    });
    let plain = Bytes::from_static(
        b"{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"hello\"}]}",
    );
    c.bench_function("prepare_chat_request_without_prompt", |b| {
        b.iter(|| {
            black_box(
                runtime
                    .block_on(prepare(
                        &set,
                        &model,
                        Endpoint::ChatCompletions,
                        &headers,
                        plain.clone(),
                        now,
                    ))
                    .unwrap(),
            )
        })
    });
}

/// A chat template (system, conversation, a user reminder) with an `input_schema` that fills a
/// default, a `response_format` and `tools`: what those add to preparing a request.
fn bench_prepare_chat_template(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "agent/v1.prompt",
        "---\nchat: true\n\
         input_schema: {type: object, required: [company, tier], properties: {company: {type: string}, \
         tier: {enum: [free, pro, enterprise]}, language: {type: string, default: English}}}\n\
         response_format: {name: ticket, schema: {type: object, properties: {summary: {type: string}}, required: [summary], additionalProperties: false}}\n\
         tools: [{name: lookup_order, parameters: {type: object, properties: {id: {type: string}}}}]\n\
         ---\nsystem:\nYou are the support agent of {{ company }} ({{ tier }}). Answer in {{ language }}.\n\n\
         conversation:\n\nuser:\nRemember: be brief.\n",
    );
    let set = prompts::load(dir.path()).unwrap();
    let body = Bytes::from(
        serde_json::json!({
            "model": "gpt-4o-mini", "user": "user_123",
            "messages": [{"role": "user", "content": "My API keys stopped working after the migration"}],
            "prompt": {"id": "agent", "variables": {"company": "Acme Corp", "tier": "enterprise"}}
        })
        .to_string(),
    );
    let headers = HeaderMap::new();
    let now = chrono::Utc::now();
    let model = ModelSlot::new("/nonexistent".into(), "/nonexistent".into(), None);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    c.bench_function("prepare_chat_template_with_schema_and_tools", |b| {
        b.iter(|| {
            black_box(
                runtime
                    .block_on(prepare(
                        &set,
                        &model,
                        Endpoint::ChatCompletions,
                        &headers,
                        body.clone(),
                        now,
                    ))
                    .unwrap(),
            )
        })
    });
}

criterion_group!(
    benches,
    bench_load,
    bench_prepare,
    bench_prepare_chat_template
);
criterion_main!(benches);
