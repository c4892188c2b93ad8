//! `prompt.yaml`: the manifest of one prompt (description, tags, active version, labels,
//! experiment, few-shot settings), parsed raw and then checked against the versions on disk.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::yaml;

/// The manifest as written. Version numbers keep their location so a reference to a missing
/// version can name its line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub active: Option<Spanned<u32>>,
    #[serde(default)]
    pub labels: BTreeMap<String, Spanned<u32>>,
    pub experiment: Option<RawExperiment>,
    pub examples: Option<ExamplesConfig>,
    /// The feedback metrics this prompt accepts (besides `quality_score`); without the key,
    /// the first `--feedback-metrics-max` names sent are accepted.
    pub feedback_metrics: Option<Vec<Spanned<String>>>,
    /// A guarded rollout from one version to another (see [`crate::rollout`]).
    pub rollout: Option<crate::rollout::plan::RawRollout>,
}

/// The `experiment` block, either the seed form (`version_a`, `version_b`, `traffic_split`) or
/// the weighted form (`variants`). Both forms share one struct so that a mix of the two is
/// reported as such rather than as a confusing "unknown key".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExperiment {
    pub version_a: Option<Spanned<u32>>,
    pub version_b: Option<Spanned<u32>>,
    pub traffic_split: Option<Spanned<f64>>,
    pub variants: Option<Vec<RawVariant>>,
    pub salt: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    pub version: Spanned<u32>,
    pub weight: Spanned<u32>,
}

/// A checked experiment: which versions share the traffic and how.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    #[serde(flatten)]
    pub split: Split,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Split {
    /// The seed's form: `traffic_split` is the share of traffic that gets `version_b`.
    AB {
        version_a: u32,
        version_b: u32,
        traffic_split: f64,
    },
    /// Integer weights summing to 100, walked in order.
    Weighted { variants: Vec<Variant> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Variant {
    pub version: u32,
    pub weight: u32,
}

impl Experiment {
    /// The versions taking part, in the manifest's order.
    pub fn versions(&self) -> Vec<u32> {
        match &self.split {
            Split::AB {
                version_a,
                version_b,
                ..
            } => vec![*version_a, *version_b],
            Split::Weighted { variants } => variants.iter().map(|v| v.version).collect(),
        }
    }
}

/// How few-shot examples are chosen for a prompt (the manifest's `examples` block).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExamplesConfig {
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default = "default_count")]
    pub count: usize,
    #[serde(default)]
    pub format: ExamplesFormat,
    /// MMR's trade-off between relevance and novelty, 0..1.
    #[serde(default = "default_lambda")]
    pub lambda: f64,
}

impl Default for ExamplesConfig {
    fn default() -> Self {
        ExamplesConfig {
            strategy: Strategy::default(),
            count: default_count(),
            format: ExamplesFormat::default(),
            lambda: default_lambda(),
        }
    }
}

fn default_count() -> usize {
    3
}

fn default_lambda() -> f64 {
    0.5
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Quality,
    Diverse,
    Semantic,
    Mmr,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExamplesFormat {
    #[default]
    System,
    Messages,
}

/// A problem inside the manifest, with the line when known.
pub type ManifestProblem = (Option<usize>, String);

/// Parses `prompt.yaml`.
pub fn parse(text: &str) -> Result<RawManifest, ManifestProblem> {
    yaml::parse::<Option<RawManifest>>(text)
        .map(Option::unwrap_or_default)
        .map_err(|e| (e.line, e.message))
}

fn line_of<T>(s: &Spanned<T>) -> Option<usize> {
    let line = s.referenced.line() as usize;
    (line > 0).then_some(line)
}

/// Checks the manifest against the versions that exist, returning the checked experiment and
/// every problem found.
pub fn check(
    raw: &RawManifest,
    versions: &[u32],
    problems: &mut Vec<ManifestProblem>,
) -> Option<Experiment> {
    let known = || {
        versions
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let need = |what: &str, v: &Spanned<u32>, problems: &mut Vec<ManifestProblem>| {
        if !versions.contains(&v.value) {
            problems.push((
                line_of(v),
                format!(
                    "{what} refers to version {}, which does not exist (versions: {})",
                    v.value,
                    known()
                ),
            ));
        }
    };
    if let Some(active) = &raw.active {
        need("`active`", active, problems);
    }
    for (label, v) in &raw.labels {
        if !valid_label(label) {
            problems.push((
                line_of(v),
                format!("label `{label}` is not a valid name: use letters, digits, `_`, `-` and `.`, not only digits"),
            ));
        }
        need(&format!("label `{label}`"), v, problems);
    }
    for tag in &raw.tags {
        if tag.trim().is_empty() {
            problems.push((None, "`tags` holds an empty tag".to_owned()));
        }
    }
    if let Some(examples) = &raw.examples
        && !(0.0..=1.0).contains(&examples.lambda)
    {
        problems.push((
            None,
            format!(
                "`examples.lambda` must be between 0 and 1, not {}",
                examples.lambda
            ),
        ));
    }
    let mut declared: Vec<&str> = Vec::new();
    for name in raw.feedback_metrics.iter().flatten() {
        if !valid_metric_name(&name.value) {
            problems.push((
                line_of(name),
                format!(
                    "`feedback_metrics` holds `{}`, which is not a valid metric name: use 1 to 64 letters, digits, `_`, `-` and `.`",
                    name.value
                ),
            ));
        } else if declared.contains(&name.value.as_str()) {
            problems.push((
                line_of(name),
                format!("`feedback_metrics` names `{}` twice", name.value),
            ));
        }
        declared.push(&name.value);
    }
    let exp = raw.experiment.as_ref()?;
    let before = problems.len();
    let split = match (&exp.version_a, &exp.version_b, &exp.variants) {
        (Some(a), Some(b), None) => {
            need("`experiment.version_a`", a, problems);
            need("`experiment.version_b`", b, problems);
            let split = exp.traffic_split.as_ref().map_or(0.5, |s| s.value);
            if !(0.0..=1.0).contains(&split) || split.is_nan() {
                problems.push((
                    exp.traffic_split.as_ref().and_then(line_of),
                    format!("`experiment.traffic_split` must be between 0 and 1, not {split}"),
                ));
            }
            Split::AB {
                version_a: a.value,
                version_b: b.value,
                traffic_split: split,
            }
        }
        (None, None, Some(variants)) => {
            if exp.traffic_split.is_some() {
                problems.push((
                    exp.traffic_split.as_ref().and_then(line_of),
                    "`experiment.traffic_split` belongs to the `version_a`/`version_b` form; with `variants`, use weights".to_owned(),
                ));
            }
            if variants.is_empty() {
                problems.push((None, "`experiment.variants` is empty".to_owned()));
            }
            let mut seen = Vec::new();
            for v in variants {
                need("`experiment.variants`", &v.version, problems);
                if seen.contains(&v.version.value) {
                    problems.push((
                        line_of(&v.version),
                        format!(
                            "version {} appears twice in `experiment.variants`",
                            v.version.value
                        ),
                    ));
                }
                seen.push(v.version.value);
            }
            let total: u64 = variants.iter().map(|v| u64::from(v.weight.value)).sum();
            if !variants.is_empty() && total != 100 {
                problems.push((
                    variants.first().and_then(|v| line_of(&v.weight)),
                    format!("`experiment.variants` weights sum to {total}; they must sum to 100"),
                ));
            }
            Split::Weighted {
                variants: variants
                    .iter()
                    .map(|v| Variant {
                        version: v.version.value,
                        weight: v.weight.value,
                    })
                    .collect(),
            }
        }
        _ => {
            problems.push((
                None,
                "`experiment` needs either `version_a` and `version_b` (with `traffic_split`) or `variants`, not both and not neither".to_owned(),
            ));
            return None;
        }
    };
    (problems.len() == before).then(|| Experiment {
        split,
        salt: exp.salt.clone(),
    })
}

/// Checks the manifest's `rollout` block: against the versions, the declared feedback metrics,
/// and the experiment (a prompt has one or the other).
pub fn check_rollout(
    raw: &RawManifest,
    versions: &[u32],
    problems: &mut Vec<ManifestProblem>,
) -> Option<crate::rollout::plan::Rollout> {
    let rollout = raw.rollout.as_ref()?;
    if raw.experiment.is_some() {
        problems.push((
            rollout.from.as_ref().and_then(line_of),
            "a prompt has an `experiment` or a `rollout`, not both: end the experiment first"
                .to_owned(),
        ));
        return None;
    }
    let declared: Option<Vec<String>> = raw
        .feedback_metrics
        .as_ref()
        .map(|names| names.iter().map(|n| n.value.clone()).collect());
    crate::rollout::plan::check(rollout, versions, declared.as_deref(), problems)
}

/// A feedback metric name: short, and safe as a Prometheus label value and a JSON key.
pub fn valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A label may be any short name that cannot be mistaken for a version number.
pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && !label.chars().all(|c| c.is_ascii_digit())
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str, versions: &[u32]) -> Vec<ManifestProblem> {
        let raw = parse(text).unwrap();
        let mut problems = Vec::new();
        check(&raw, versions, &mut problems);
        check_rollout(&raw, versions, &mut problems);
        problems
    }

    #[test]
    fn full_manifest_parses() {
        let raw = parse(
            "description: Support\ntags: [support, production]\nactive: 2\nlabels: {staging: 1}\n\
             experiment:\n  version_a: 1\n  version_b: 2\n  traffic_split: 0.2\n\
             examples:\n  strategy: diverse\n  count: 2\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        let exp = check(&raw, &[1, 2], &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            exp.split,
            Split::AB {
                version_a: 1,
                version_b: 2,
                traffic_split: 0.2
            }
        );
        assert_eq!(raw.examples.unwrap().strategy, Strategy::Diverse);
    }

    #[test]
    fn empty_manifest_is_valid() {
        assert!(problems_of("", &[1]).is_empty());
        assert!(problems_of("# just a comment\n", &[1]).is_empty());
    }

    #[test]
    fn missing_versions_are_named_with_lines() {
        let problems = problems_of(
            "description: x\nactive: 9\nlabels:\n  staging: 7\n",
            &[1, 2],
        );
        assert_eq!(
            problems,
            vec![
                (
                    Some(2),
                    "`active` refers to version 9, which does not exist (versions: 1, 2)".into()
                ),
                (
                    Some(4),
                    "label `staging` refers to version 7, which does not exist (versions: 1, 2)"
                        .into()
                ),
            ]
        );
    }

    #[test]
    fn weights_must_sum_to_100() {
        let problems = problems_of(
            "experiment:\n  variants:\n    - {version: 1, weight: 70}\n    - {version: 2, weight: 20}\n",
            &[1, 2],
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, Some(3));
        assert!(problems[0].1.contains("sum to 90"), "{:?}", problems);
    }

    #[test]
    fn fractional_weight_is_refused() {
        let err =
            parse("experiment:\n  variants:\n    - {version: 1, weight: 70.5}\n").unwrap_err();
        assert_eq!(err.0, Some(3));
    }

    #[test]
    fn traffic_split_out_of_range_is_refused() {
        let problems = problems_of(
            "experiment:\n  version_a: 1\n  version_b: 2\n  traffic_split: 1.5\n",
            &[1, 2],
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, Some(4));
    }

    #[test]
    fn mixed_experiment_forms_are_refused() {
        let problems = problems_of(
            "experiment:\n  version_a: 1\n  variants: [{version: 1, weight: 100}]\n",
            &[1],
        );
        assert!(problems[0].1.contains("either"), "{problems:?}");
    }

    #[test]
    fn unknown_strategy_is_refused() {
        let err = parse("examples:\n  strategy: semntic\n").unwrap_err();
        assert_eq!(err.0, Some(2));
    }

    #[test]
    fn feedback_metrics_are_checked_with_lines() {
        let raw = parse("feedback_metrics: [helpful, thumbs_up]\n").unwrap();
        let names: Vec<&str> = raw
            .feedback_metrics
            .iter()
            .flatten()
            .map(|n| n.value.as_str())
            .collect();
        assert_eq!(names, ["helpful", "thumbs_up"]);
        let problems = problems_of(
            "description: x\nfeedback_metrics:\n  - helpful\n  - \"not ok\"\n  - helpful\n",
            &[1],
        );
        assert_eq!(
            problems,
            vec![
                (
                    Some(4),
                    "`feedback_metrics` holds `not ok`, which is not a valid metric name: use 1 to 64 letters, digits, `_`, `-` and `.`".into()
                ),
                (Some(5), "`feedback_metrics` names `helpful` twice".into()),
            ]
        );
        let err = parse("feedback_metrics: helpful\n").unwrap_err();
        assert_eq!(err.0, Some(1), "a list is required: {err:?}");
    }

    #[test]
    fn labels_cannot_look_like_numbers() {
        assert!(valid_label("staging"));
        assert!(valid_label("canary-2"));
        assert!(!valid_label("2"));
        assert!(!valid_label("a b"));
    }
}
