//! What recording a request costs on the request path (metrics, statistics, feedback index,
//! queueing the event), and how many lines a second the events writer sustains.
//!
//! `cargo bench --bench record`; figures are recorded in docs/benchmarks.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use promptgate::record::{Event, EventSink, Metrics, Pricing, Recorder, RequestEvent};

fn event(i: u64) -> RequestEvent {
    RequestEvent {
        time: "2026-11-25T00:00:00.000Z".into(),
        request_id: format!("req-{i}"),
        upstream_request_id: None,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        prompt: Some("customer_support".into()),
        version: Some(1 + (i % 2) as u32),
        hash: Some("3d839b8288d3".into()),
        selection: Some("experiment".into()),
        experiment: Some("a1b2c3d4".into()),
        model: Some("gpt-4o-2024-08-06".into()),
        status: 200,
        outcome: promptgate::record::Outcome::Ok,
        stream: false,
        latency_ms: 420.0 + (i % 100) as f64,
        ttft_ms: None,
        overhead_ms: Some(0.05),
        prompt_tokens: Some(1200),
        completion_tokens: Some(250),
        cached_tokens: Some(0),
        cost_usd: Some(0.0055),
        content: None,
    }
}

fn bench_record(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _task) = runtime
        .block_on(async { EventSink::start(dir.path().join("events.jsonl")) })
        .unwrap();
    let recorder = Recorder::new(
        Arc::new(Metrics::new()),
        Pricing::default(),
        Some(sink),
        100_000,
    );
    let mut i = 0;
    c.bench_function("record_request", |b| {
        b.iter(|| {
            i += 1;
            let event = event(i);
            recorder.record(black_box(&event.record()));
        })
    });
    runtime.block_on(recorder.flush());
}

fn bench_events(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _task) = runtime
        .block_on(async { EventSink::start(dir.path().join("events.jsonl")) })
        .unwrap();
    let mut group = c.benchmark_group("events_writer");
    group.throughput(Throughput::Elements(10_000));
    group.sample_size(20);
    group.bench_function("write_10000_lines", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for round in 0..iters {
                let started = Instant::now();
                for i in 0..10_000 {
                    // The channel holds 65,536 lines; wait when it is full rather than drop.
                    while sink
                        .send(Event::Request(Box::new(event(round * 10_000 + i))))
                        .is_err()
                    {
                        std::thread::yield_now();
                    }
                }
                runtime.block_on(sink.flush());
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench_record, bench_events);
criterion_main!(benches);
