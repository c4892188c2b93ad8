//! The latency guard through the real server, in a test binary of its own: the other rollout
//! tests' load would lengthen version A's tail, which the guard measures B against.

mod common;
mod rollout_support;

use std::time::{Duration, Instant};

use rollout_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_version_halts_on_the_latency_guard() {
    let prompts = prompt_folder(
        "SLOW: you are version two.",
        "active: 1\nrollout:\n  from: 1\n  to: 2\n  steps: [20, 100]\n  min_requests: 20\n  min_duration: 1s\n  guards:\n    latency_p95: 1.25\n",
    );
    let state = tempfile::tempdir().unwrap();
    let app = start(prompts.path(), mock_upstream().await, state.path()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    let halted = loop {
        let r = rollout(&app).await;
        if r["state"] == "halted" {
            break r;
        }
        assert_eq!(r["step"], 20, "a slow version never advances: {r}");
        assert!(Instant::now() < deadline, "the rollout did not halt: {r}");
        // The latency guard needs about 110 requests on A to bound its p95.
        batch(&app, sent, 80).await;
        sent += 80;
    };
    assert_eq!(halted["halt"]["guard"], "latency_p95", "{halted}");
    // A answers at once, B 3 s late: far beyond 1.25 × A's p95.
    assert!(
        halted["halt"]["observed"].as_f64().unwrap() > 1.25,
        "{halted}"
    );
    for (user, version) in batch(&app, 0, 100).await {
        assert_eq!(version, 1, "user {user} saw version 2 after the halt");
    }
}
