//! Step 7 of the request path, off the hot path: what happened is recorded — Prometheus
//! metrics now; events and experiment statistics build on the same place.

pub mod metrics;

pub use metrics::Metrics;
