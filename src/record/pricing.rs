//! The pricing table: USD per million tokens by model, built in for common models and
//! extended or overridden by `--pricing FILE`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Prices of one model, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
    /// Cached input tokens; the input price when not given.
    pub cached_input_per_million: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPricing {
    models: BTreeMap<String, Price>,
}

/// OpenAI's published standard prices (USD per million tokens: input, cached input, output)
/// at the time of writing. Override or extend them with `--pricing`.
const BUILT_IN: &[(&str, f64, f64, f64)] = &[
    ("gpt-5", 1.25, 0.125, 10.0),
    ("gpt-5-mini", 0.25, 0.025, 2.0),
    ("gpt-5-nano", 0.05, 0.005, 0.4),
    ("gpt-4.1", 2.0, 0.5, 8.0),
    ("gpt-4.1-mini", 0.4, 0.1, 1.6),
    ("gpt-4.1-nano", 0.1, 0.025, 0.4),
    ("gpt-4o", 2.5, 1.25, 10.0),
    ("gpt-4o-mini", 0.15, 0.075, 0.6),
    ("o1", 15.0, 7.5, 60.0),
    ("o3", 2.0, 0.5, 8.0),
    ("o3-mini", 1.1, 0.55, 4.4),
    ("o4-mini", 1.1, 0.275, 4.4),
    ("gpt-4-turbo", 10.0, 10.0, 30.0),
    ("gpt-3.5-turbo", 0.5, 0.5, 1.5),
];

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The part of `prompt_tokens` served from the upstream's prompt cache.
    pub cached_tokens: u64,
}

/// Model → price.
#[derive(Debug, Clone)]
pub struct Pricing {
    models: BTreeMap<String, Price>,
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing {
            models: BUILT_IN
                .iter()
                .map(|&(name, input, cached, output)| {
                    (
                        name.to_owned(),
                        Price {
                            input_per_million: input,
                            output_per_million: output,
                            cached_input_per_million: Some(cached),
                        },
                    )
                })
                .collect(),
        }
    }
}

impl Pricing {
    /// The built-in table extended by a pricing file's text.
    pub fn with_overrides(text: &str, file: &Path) -> anyhow::Result<Self> {
        let raw: RawPricing = serde_saphyr::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            anyhow::anyhow!(
                "{}:{line}: {}",
                file.display(),
                e.without_snippet()
                    .to_string()
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
            )
        })?;
        let mut pricing = Pricing::default();
        for (model, price) in raw.models {
            let all = [
                price.input_per_million,
                price.output_per_million,
                price.cached_input_per_million.unwrap_or(0.0),
            ];
            if all.iter().any(|p| !p.is_finite() || *p < 0.0) {
                anyhow::bail!(
                    "{}: prices of `{model}` must be non-negative numbers",
                    file.display()
                );
            }
            pricing.models.insert(model, price);
        }
        Ok(pricing)
    }

    /// The price of `model`: an exact entry, else the longest entry that `model` extends with
    /// a dated or tagged suffix (`gpt-4o-2024-08-06` → `gpt-4o`).
    pub fn price(&self, model: &str) -> Option<Price> {
        self.entry(model).map(|(_, p)| *p)
    }

    /// The metric label for `model`: its entry in the table (`gpt-4o-2024-08-06` → `gpt-4o`),
    /// or `other`. Label values come only from the table, so clients cannot mint series.
    pub fn label(&self, model: &str) -> &str {
        self.entry(model).map_or("other", |(name, _)| name.as_str())
    }

    fn entry(&self, model: &str) -> Option<(&String, &Price)> {
        if let Some(entry) = self.models.get_key_value(model) {
            return Some(entry);
        }
        self.models
            .iter()
            .filter(|(name, _)| {
                model
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with('-') && is_snapshot_suffix(&rest[1..]))
            })
            .max_by_key(|(name, _)| name.len())
    }

    /// Cost in USD, or `None` for a model without a price (never a made-up number).
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        let price = self.price(model)?;
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let fresh = usage.prompt_tokens - cached;
        let cached_price = price
            .cached_input_per_million
            .unwrap_or(price.input_per_million);
        Some(
            (fresh as f64 * price.input_per_million
                + cached as f64 * cached_price
                + usage.completion_tokens as f64 * price.output_per_million)
                / 1_000_000.0,
        )
    }
}

/// `2024-08-06`, `0125`, `latest`: the suffixes of a model snapshot, not a different model
/// (`gpt-4o-mini` is not a snapshot of `gpt-4o`).
fn is_snapshot_suffix(rest: &str) -> bool {
    rest == "latest" || (!rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(p: u64, c: u64, cached: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: cached,
        }
    }

    #[test]
    fn cost_arithmetic() {
        let pricing = Pricing::default();
        // gpt-4o: 1,000 input at $2.50/M, 500 output at $10/M.
        let cost = pricing.cost("gpt-4o", &usage(1000, 500, 0)).unwrap();
        assert!((cost - 0.0075).abs() < 1e-12, "{cost}");
        // 400 of the input cached at $1.25/M.
        let cost = pricing.cost("gpt-4o", &usage(1000, 500, 400)).unwrap();
        assert!((cost - (600.0 * 2.5 + 400.0 * 1.25 + 500.0 * 10.0) / 1e6).abs() < 1e-12);
    }

    #[test]
    fn snapshots_use_their_family_price_but_other_models_do_not() {
        let pricing = Pricing::default();
        assert_eq!(pricing.price("gpt-4o-2024-08-06"), pricing.price("gpt-4o"));
        assert_eq!(
            pricing.price("gpt-4o-mini-2024-07-18"),
            pricing.price("gpt-4o-mini")
        );
        assert_ne!(pricing.price("gpt-4o-mini"), pricing.price("gpt-4o"));
        assert_eq!(pricing.price("gpt-4o-audio-preview"), None);
        assert_eq!(pricing.cost("my-local-llama", &usage(10, 10, 0)), None);
    }

    #[test]
    fn labels_come_from_the_table_only() {
        let pricing = Pricing::default();
        assert_eq!(pricing.label("gpt-4o"), "gpt-4o");
        assert_eq!(pricing.label("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(pricing.label("my-local-llama"), "other");
        assert_eq!(pricing.label("gpt-4o-\u{0}evil"), "other");
    }

    #[test]
    fn overrides_extend_and_replace() {
        let text = "models:\n  gpt-4o: {input_per_million: 1, output_per_million: 2}\n  llama-3: {input_per_million: 0.1, output_per_million: 0.2, cached_input_per_million: 0.05}\n";
        let pricing = Pricing::with_overrides(text, Path::new("pricing.yaml")).unwrap();
        assert_eq!(pricing.price("gpt-4o").unwrap().input_per_million, 1.0);
        assert!(pricing.price("llama-3").is_some());
        assert!(pricing.price("gpt-4o-mini").is_some(), "built-ins stay");
        let err = Pricing::with_overrides("models:\n  x: {input: 1}\n", Path::new("p.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p.yaml:2: unknown field `input`"), "{err}");
    }
}
