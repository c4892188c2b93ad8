//! Prometheus metrics, in the text format, through `prometheus-client`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Every metric promptgate exports.
pub struct Metrics {
    registry: Registry,
    /// Prompt-set reloads by result (`ok`, `error`).
    pub reloads: Family<ResultLabel, Counter>,
    /// 1 while the files on disk do not validate (the last good set is serving).
    pub reload_error: Gauge,
    /// Prompts in the serving set.
    pub prompts_loaded: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("promptgate");
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register("reloads", "Prompt-set reloads by result", reloads.clone());
        let reload_error = Gauge::default();
        registry.register(
            "reload_error",
            "1 while the prompt files do not validate and the last good set is serving",
            reload_error.clone(),
        );
        let prompts_loaded = Gauge::default();
        registry.register(
            "prompts_loaded",
            "Prompts in the serving set",
            prompts_loaded.clone(),
        );
        Metrics {
            registry,
            reloads,
            reload_error,
            prompts_loaded,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_metrics_are_exported() {
        let m = Metrics::new();
        m.reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
        m.prompts_loaded.set(3);
        let text = m.encode();
        assert!(
            text.contains("promptgate_reloads_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("promptgate_prompts_loaded 3"), "{text}");
        assert!(text.contains("promptgate_reload_error 0"), "{text}");
    }
}
