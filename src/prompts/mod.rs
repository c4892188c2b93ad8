//! The prompt files: loaded from a folder, validated as a whole and compiled into a
//! [`PromptSet`] that requests read from a snapshot.
//!
//! Two stages: the `Raw*` types are what the files say (`manifest`, `version`, `examples`);
//! [`load`] checks them against each other and compiles every template once, so the request
//! path only looks things up and renders.

pub mod chat;
pub mod examples;
mod load;
pub mod manifest;
pub mod outputs;
mod problem;
pub mod schema;
pub mod template;
pub mod variables;
pub mod version;
pub mod watch;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use minijinja::Environment;
use serde::Serialize;

pub use examples::Example;
pub use load::{Overlay, check_prompt, load, valid_prompt_name};
pub use manifest::{ExamplesConfig, ExamplesFormat, Experiment, Split, Strategy, Variant};
pub use problem::{Problem, Problems};
pub use template::{Builtins, RenderError};
pub use variables::Variables;
pub use version::ClientSystem;

/// Every prompt of a folder, validated and compiled. Immutable: a reload builds a new one.
pub struct PromptSet {
    prompts: BTreeMap<String, Arc<Prompt>>,
    /// Prompts left out because something they need is missing: name → why.
    unavailable: BTreeMap<String, String>,
    env: Environment<'static>,
}

/// One prompt: its manifest and versions.
#[derive(Debug, Clone, Serialize)]
pub struct Prompt {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// The version served by default.
    pub active: u32,
    pub labels: BTreeMap<String, u32>,
    pub experiment: Option<Experiment>,
    pub examples_config: Option<ExamplesConfig>,
    /// The feedback metrics declared in the manifest (`None`: any, up to the cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback_metrics: Option<Vec<String>>,
    #[serde(skip)]
    pub examples: Vec<Example>,
    /// Unit vectors of the examples' inputs, for `semantic` and `mmr` (empty otherwise).
    #[serde(skip)]
    pub example_vectors: Vec<Arc<[f32]>>,
    #[serde(skip)]
    pub versions: BTreeMap<u32, Version>,
    /// The experiment's id ([`crate::record::experiment_id`]), computed once at load; a
    /// rollout's id ([`crate::rollout::plan::Rollout::id`]) when the prompt has a rollout, whose
    /// arms are recorded like an experiment's.
    #[serde(skip)]
    pub experiment_id: Option<Arc<str>>,
    /// A guarded rollout from one version to another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::plan::Rollout>,
    /// The rollout's live share of users on `to`, swapped in by the rollout controller.
    #[serde(skip)]
    pub rollout_live: Option<Arc<crate::rollout::Live>>,
}

impl Prompt {
    /// The id of the running experiment, shared.
    pub fn experiment_id(&self) -> Option<Arc<str>> {
        self.experiment_id.clone()
    }
}

/// One version of a prompt.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub version: u32,
    pub hash: String,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Required variables: as declared in front matter, else inferred from the template.
    pub variables: Vec<String>,
    pub created_by: Option<String>,
    pub created_at: Option<String>,
    pub notes: Option<String>,
    /// How the rendered prompt meets the client's own system message (SPEC §1).
    pub client_system: ClientSystem,
    #[serde(skip)]
    pub template: String,
    #[serde(skip)]
    pub(crate) declared: Option<Vec<String>>,
    #[serde(skip)]
    pub(crate) uses: BTreeSet<String>,
    #[serde(skip)]
    pub(crate) key: String,
    /// The messages of a chat template (`chat: true`), compiled.
    #[serde(skip)]
    pub chat: Option<Arc<chat::ChatTemplate>>,
    /// The JSON Schema of the variables (`input_schema`), compiled.
    #[serde(skip)]
    pub input_schema: Option<Arc<schema::InputSchema>>,
    /// `response_format`, serialised for each endpoint.
    #[serde(skip)]
    pub response_format: Option<Arc<outputs::ResponseFormat>>,
    /// `tools`, serialised for each endpoint.
    #[serde(skip)]
    pub tools: Option<Arc<outputs::Tools>>,
    /// `x-prompt-name`, `x-prompt-version`, `x-prompt-hash` of this version, built once at
    /// load and shared by every response it serves.
    #[serde(skip)]
    pub headers: [axum::http::HeaderValue; 3],
}

impl Version {
    /// True when the template places `{{ examples }}` itself.
    pub fn places_examples(&self) -> bool {
        self.uses.contains("examples")
    }

    /// True when the template reads the variable `name` (a built-in like `today` included).
    pub fn reads(&self, name: &str) -> bool {
        self.uses.contains(name)
    }
}

impl PromptSet {
    /// An empty set, for tests and for a server with no prompts yet.
    pub fn empty() -> Self {
        PromptSet {
            prompts: BTreeMap::new(),
            unavailable: BTreeMap::new(),
            env: template::environment(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Prompt>> {
        self.prompts.get(name)
    }

    /// A prompt to complete while the set is being built (before it is shared).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Prompt> {
        self.prompts.get_mut(name).and_then(Arc::get_mut)
    }

    /// Takes a prompt out while the set is being built, remembering why, so requests for it
    /// are told the reason rather than "unknown prompt".
    pub fn set_unavailable(&mut self, name: &str, reason: String) {
        self.prompts.remove(name);
        self.unavailable.insert(name.to_owned(), reason);
    }

    /// Why a prompt on disk is not served, if it is not.
    pub fn unavailable(&self, name: &str) -> Option<&str> {
        self.unavailable.get(name).map(String::as_str)
    }

    pub fn prompts(&self) -> impl Iterator<Item = &Arc<Prompt>> {
        self.prompts.values()
    }

    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// Renders one template of `version` (its body, or one message of a chat template) in a
    /// request's context.
    pub fn render(
        &self,
        version: &Version,
        key: &str,
        context: &template::Context,
    ) -> Result<String, RenderError> {
        template::render_in(&self.env, key, &version.uses, context)
    }
}

impl std::fmt::Debug for PromptSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptSet")
            .field("prompts", &self.prompts.keys().collect::<Vec<_>>())
            .finish()
    }
}
