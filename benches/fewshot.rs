//! Semantic selection over 1,000 examples with the real local model: an unseen query (embed
//! it, then rank) and a cached one (rank only). Needs `scripts/fetch-model.sh` first.
//!
//! `cargo bench --bench fewshot`; figures are recorded in docs/benchmarks.md.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use promptgate::fewshot::embed::Embedder;
use promptgate::fewshot::strategy;

fn bench_semantic(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let cache = tempfile::tempdir().unwrap();
    let embedder = Arc::new(
        Embedder::load(
            &root.join("all-MiniLM-L6-v2"),
            &root.join("onnxruntime/libonnxruntime.so"),
            Some(cache.path()),
        )
        .expect("the model is in models/: run scripts/fetch-model.sh"),
    );
    let topics = [
        "password", "refund", "delivery", "invoice", "login", "upgrade", "address", "cancel",
    ];
    // `cargo test` runs each benchmark once as a smoke test; the full pool only under `cargo bench`.
    let pool = if std::env::args().any(|a| a == "--bench") {
        1000
    } else {
        40
    };
    let texts: Vec<String> = (0..pool)
        .map(|i| {
            format!(
                "Question {i} about my {} and the {} on my account",
                topics[i % 8],
                topics[(i / 8) % 8]
            )
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vectors: Vec<Vec<f32>> = embedder
        .examples(&refs)
        .unwrap()
        .iter()
        .map(|v| v.to_vec())
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let mut n = 0u64;
    c.bench_function("semantic_1000_examples_unseen_query", |b| {
        b.iter(|| {
            n += 1;
            let query = format!("How do I get a refund for order number {n}?");
            let q = runtime.block_on(embedder.query(&query)).unwrap();
            black_box(strategy::semantic(&q, &vectors, 3))
        })
    });
    runtime
        .block_on(embedder.query("Where is my parcel?"))
        .unwrap();
    c.bench_function("semantic_1000_examples_cached_query", |b| {
        b.iter(|| {
            let q = runtime
                .block_on(embedder.query("Where is my parcel?"))
                .unwrap();
            black_box(strategy::semantic(&q, &vectors, 3))
        })
    });
    c.bench_function("mmr_1000_examples_cached_query", |b| {
        b.iter(|| {
            let q = runtime
                .block_on(embedder.query("Where is my parcel?"))
                .unwrap();
            black_box(strategy::mmr(&q, &vectors, 3, 0.5))
        })
    });
    // A reload of unchanged examples: every vector comes from the cache.
    let before = embedder.embedded();
    c.bench_function("reload_1000_unchanged_examples", |b| {
        b.iter(|| black_box(embedder.examples(&refs).unwrap()))
    });
    assert_eq!(embedder.embedded(), before, "no embedding work on a reload");
}

criterion_group!(benches, bench_semantic);
criterion_main!(benches);
