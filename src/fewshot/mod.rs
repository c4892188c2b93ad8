//! Step 3 of the request path: pick the few-shot examples for the chosen prompt.
//!
//! The manifest's `examples` block says how (strategy, count, format); a request may override
//! count and strategy. `quality` and `diverse` need nothing else; `semantic` and `mmr` compare
//! the last user message with each example's input using the local embedding model. Example
//! vectors are computed when a prompt set is built (off the request path) and live inside the
//! set, so examples and versions swap together; the query vector is embedded on the blocking
//! pool and cached.

pub mod embed;
pub mod strategy;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::prompts::{Example, ExamplesFormat, Problem, Prompt, PromptSet, Strategy};
use embed::{EmbedError, Embedder};

/// The most examples a request may ask for.
pub const MAX_COUNT: usize = 50;

/// A request's `prompt.examples`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Override {
    pub count: Option<usize>,
    pub strategy: Option<Strategy>,
}

impl Override {
    /// Parses `prompt.examples`; errors name the field.
    pub fn parse(value: &Value) -> Result<Self, (String, &'static str)> {
        let Value::Object(map) = value else {
            return Err((
                "`prompt.examples` must be an object like {\"count\": 3, \"strategy\": \"semantic\"}".to_owned(),
                "prompt.examples",
            ));
        };
        let mut out = Override::default();
        for (key, v) in map {
            match key.as_str() {
                "count" => {
                    let n = v.as_u64().filter(|n| *n as usize <= MAX_COUNT).ok_or_else(|| {
                        (
                            format!("`prompt.examples.count` must be an integer from 0 to {MAX_COUNT}"),
                            "prompt.examples.count",
                        )
                    })?;
                    out.count = Some(n as usize);
                }
                "strategy" => {
                    let s = serde_json::from_value::<Strategy>(v.clone()).map_err(|_| {
                        (
                            "`prompt.examples.strategy` must be one of `quality`, `diverse`, `semantic`, `mmr`, `none`".to_owned(),
                            "prompt.examples.strategy",
                        )
                    })?;
                    out.strategy = Some(s);
                }
                other => {
                    return Err((
                        format!(
                            "unknown field `prompt.examples.{other}`; known fields: `count`, `strategy`"
                        ),
                        "prompt.examples",
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// How this request's examples are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub strategy: Strategy,
    pub count: usize,
    pub format: ExamplesFormat,
    pub lambda: f32,
}

/// The plan for a prompt and request; `None` when there is nothing to pick.
pub fn plan(prompt: &Prompt, request: Option<&Override>) -> Option<Plan> {
    if prompt.examples.is_empty() {
        return None;
    }
    let config = prompt.examples_config.clone().unwrap_or_default();
    let plan = Plan {
        strategy: request.and_then(|r| r.strategy).unwrap_or(config.strategy),
        count: request.and_then(|r| r.count).unwrap_or(config.count),
        format: config.format,
        lambda: config.lambda as f32,
    };
    (plan.strategy != Strategy::None && plan.count > 0).then_some(plan)
}

/// Does this prompt need the embedding model by its manifest?
pub fn needs_model(prompt: &Prompt) -> bool {
    !prompt.examples.is_empty()
        && prompt
            .examples_config
            .as_ref()
            .is_some_and(|c| matches!(c.strategy, Strategy::Semantic | Strategy::Mmr))
}

#[derive(Debug, thiserror::Error)]
pub enum PickError {
    #[error("strategy `{strategy}` for prompt `{prompt}` needs the embedding model: {reason}")]
    ModelUnavailable {
        prompt: String,
        strategy: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Embed(#[from] EmbedError),
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Quality => "quality",
        Strategy::Diverse => "diverse",
        Strategy::Semantic => "semantic",
        Strategy::Mmr => "mmr",
        Strategy::None => "none",
    }
}

/// Picks the examples for a request: indices into `prompt.examples`, in display order.
pub async fn pick(
    prompt: &Prompt,
    plan: &Plan,
    user_message: &str,
    model: &ModelSlot,
) -> Result<Vec<usize>, PickError> {
    let pool = &prompt.examples;
    match plan.strategy {
        Strategy::None => Ok(Vec::new()),
        Strategy::Quality => Ok(strategy::quality(pool, plan.count)),
        Strategy::Diverse => Ok(strategy::diverse(pool, plan.count)),
        // Without a query there is nothing to be similar to: the seed then takes the first
        // examples in file order.
        Strategy::Semantic | Strategy::Mmr if user_message.trim().is_empty() => {
            Ok((0..pool.len().min(plan.count)).collect())
        }
        Strategy::Semantic | Strategy::Mmr => {
            let Some(embedder) = model.get() else {
                return Err(PickError::ModelUnavailable {
                    prompt: prompt.name.clone(),
                    strategy: strategy_name(plan.strategy),
                    reason: model.unavailable_reason(),
                });
            };
            // Shared, not copied: the set's vectors are used in place.
            let computed;
            let vectors: &[Arc<[f32]>] = if prompt.example_vectors.len() == pool.len() {
                &prompt.example_vectors
            } else {
                // A request chose a strategy the manifest did not: embed (and cache) now.
                let texts: Vec<String> = pool.iter().map(|e| e.input.clone()).collect();
                let e = embedder.clone();
                computed = tokio::task::spawn_blocking(move || {
                    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                    e.examples(&refs)
                })
                .await
                .map_err(|e| EmbedError::Failed(e.to_string()))??;
                &computed
            };
            let query = embedder.query(user_message).await?;
            Ok(match plan.strategy {
                Strategy::Mmr => strategy::mmr(&query, vectors, plan.count, plan.lambda),
                _ => strategy::semantic(&query, vectors, plan.count),
            })
        }
    }
}

/// The examples' text for the system prompt (`format: system`), as the seed formats it.
pub fn block(prompt: &Prompt, picked: &[usize]) -> String {
    let examples: Vec<&Example> = picked.iter().map(|&i| &prompt.examples[i]).collect();
    if examples.is_empty() {
        String::new()
    } else {
        strategy::format_block(&examples)
    }
}

/// The examples as user/assistant message pairs (`format: messages`).
pub fn messages(prompt: &Prompt, picked: &[usize]) -> Vec<Value> {
    picked
        .iter()
        .flat_map(|&i| {
            let ex = &prompt.examples[i];
            [
                json!({"role": "user", "content": ex.input}),
                json!({"role": "assistant", "content": ex.output}),
            ]
        })
        .collect()
}

/// The embedding model, loaded the first time a prompt needs it.
pub struct ModelSlot {
    dir: PathBuf,
    runtime: PathBuf,
    cache_dir: Option<PathBuf>,
    state: Mutex<SlotState>,
}

enum SlotState {
    NotNeeded,
    Loaded(Arc<Embedder>),
    Failed(EmbedError),
}

impl ModelSlot {
    pub fn new(dir: PathBuf, runtime: PathBuf, cache_dir: Option<PathBuf>) -> Self {
        ModelSlot {
            dir,
            runtime,
            cache_dir,
            state: Mutex::new(SlotState::NotNeeded),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The model, if loaded.
    pub fn get(&self) -> Option<Arc<Embedder>> {
        match &*self.lock() {
            SlotState::Loaded(e) => Some(e.clone()),
            _ => None,
        }
    }

    fn unavailable_reason(&self) -> String {
        match &*self.lock() {
            SlotState::Failed(e) => e.to_string(),
            _ => "no prompt's manifest uses `semantic` or `mmr`, so the model was not loaded; set the strategy in the manifest".to_owned(),
        }
    }

    /// Loads the model if it is not loaded yet (retrying after a failure: the files may have
    /// been fetched since). Blocking.
    pub fn ensure(&self) -> Result<Arc<Embedder>, EmbedError> {
        if let Some(e) = self.get() {
            return Ok(e);
        }
        let started = std::time::Instant::now();
        let loaded = Embedder::load(&self.dir, &self.runtime, self.cache_dir.as_deref());
        let mut state = self.lock();
        match loaded {
            Ok(embedder) => {
                tracing::info!(
                    model = %self.dir.display(),
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "embedding model loaded"
                );
                let embedder = Arc::new(embedder);
                *state = SlotState::Loaded(embedder.clone());
                Ok(embedder)
            }
            Err(e) => {
                *state = SlotState::Failed(e.clone());
                Err(e)
            }
        }
    }

    /// For `/admin/status` and `/readyz`.
    pub fn status(&self) -> Value {
        match &*self.lock() {
            SlotState::NotNeeded => json!({"state": "not_needed"}),
            SlotState::Loaded(e) => {
                json!({"state": "loaded", "model": self.dir, "model_id": e.model_id, "texts_embedded": e.embedded()})
            }
            SlotState::Failed(e) => {
                json!({"state": "failed", "model": self.dir, "error": e.to_string()})
            }
        }
    }
}

/// Gives every prompt that needs the model its example vectors. A prompt whose vectors cannot
/// be had (model missing or broken) is taken out of the set and reported; the others serve.
/// Blocking: called where prompt sets are built.
pub fn attach_vectors(set: &mut PromptSet, model: &ModelSlot) -> Vec<Problem> {
    let mut problems = Vec::new();
    let needing: Vec<String> = set
        .prompts()
        .filter(|p| needs_model(p))
        .map(|p| p.name.clone())
        .collect();
    for name in needing {
        let result = model.ensure().and_then(|embedder| {
            let prompt = set.get(&name).expect("listed above");
            let texts: Vec<&str> = prompt.examples.iter().map(|e| e.input.as_str()).collect();
            embedder.examples(&texts)
        });
        match result {
            Ok(vectors) => {
                if let Some(prompt) = set.get_mut(&name) {
                    prompt.example_vectors = vectors;
                }
            }
            Err(e) => {
                problems.push(Problem::new(
                    PathBuf::from(&name).join("prompt.yaml"),
                    None,
                    format!("examples strategy needs the embedding model, so prompt `{name}` is not served: {e}"),
                ));
                set.set_unavailable(&name, e.to_string());
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_name_bad_fields() {
        let o = Override::parse(&json!({"count": 2, "strategy": "mmr"})).unwrap();
        assert_eq!(
            o,
            Override {
                count: Some(2),
                strategy: Some(Strategy::Mmr)
            }
        );
        assert_eq!(
            Override::parse(&json!({"count": 99})).unwrap_err().1,
            "prompt.examples.count"
        );
        assert_eq!(
            Override::parse(&json!({"strategy": "best"})).unwrap_err().1,
            "prompt.examples.strategy"
        );
        assert_eq!(
            Override::parse(&json!({"n": 1})).unwrap_err().1,
            "prompt.examples"
        );
        assert_eq!(Override::parse(&json!(3)).unwrap_err().1, "prompt.examples");
    }

    #[test]
    fn a_missing_model_is_named_with_how_to_fetch_it() {
        let slot = ModelSlot::new(
            "/nonexistent/model".into(),
            "/nonexistent/libonnxruntime.so".into(),
            None,
        );
        let err = slot.ensure().err().unwrap().to_string();
        assert!(
            err.contains("/nonexistent/libonnxruntime.so")
                && err.contains("scripts/fetch-model.sh"),
            "{err}"
        );
        assert_eq!(slot.status()["state"], "failed");
    }
}
