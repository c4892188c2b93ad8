//! The `rollout:` block of `prompt.yaml`: from version A to version B in steps of user share,
//! each step held for a number of requests and a time, with guards bounding B against A.
//! Parsed raw with the manifest, then checked here with file lines.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::prompts::manifest::{ManifestProblem, valid_metric_name};

/// The steps when none are given: percent of users on `to`.
pub const DEFAULT_STEPS: [u32; 4] = [10, 25, 50, 100];
/// Requests per arm per step when not given.
pub const DEFAULT_MIN_REQUESTS: u64 = 500;
/// Time per step when not given.
pub const DEFAULT_MIN_DURATION: Duration = Duration::from_secs(600);

/// The block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub from: Option<Spanned<u32>>,
    pub to: Option<Spanned<u32>>,
    pub steps: Option<Vec<Spanned<u32>>>,
    pub min_requests: Option<Spanned<u64>>,
    pub min_duration: Option<Spanned<String>>,
    #[serde(default)]
    pub guards: BTreeMap<String, Spanned<f64>>,
    /// Changes every user's bucket (and starts fresh statistics), as an experiment's salt.
    pub salt: Option<String>,
    /// Written by the controller when a guard halts the rollout (or by hand to stop it):
    /// every user on `from`, on every replica and after any restart, with no statistics needed.
    pub halted: Option<Spanned<bool>>,
}

/// A checked rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rollout {
    pub from: u32,
    pub to: u32,
    pub steps: Vec<u32>,
    pub min_requests: u64,
    /// As written (`10m`), for the report.
    pub min_duration: String,
    #[serde(skip)]
    pub min_duration_value: Duration,
    pub guards: Vec<Guard>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// `halted: true`: the rollout was stopped; every user is on `from`. Not part of the id.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub halted: bool,
}

/// One bound on B relative to A.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guard {
    pub kind: GuardKind,
    pub bound: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardKind {
    /// B's error rate − A's ≤ bound (points as a fraction: 0.02 = 2 points).
    ErrorRate,
    /// B's p95 latency ≤ bound × A's.
    LatencyP95,
    /// B's mean cost per priced request ≤ bound × A's.
    CostPerRequest,
    /// B's mean of a feedback metric − A's ≥ bound (a fall of at most −bound).
    Feedback(String),
}

impl Guard {
    /// The guard's name as the manifest writes it.
    pub fn name(&self) -> &str {
        match &self.kind {
            GuardKind::ErrorRate => "error_rate",
            GuardKind::LatencyP95 => "latency_p95",
            GuardKind::CostPerRequest => "cost_per_request",
            GuardKind::Feedback(metric) => metric,
        }
    }
}

impl Rollout {
    /// A stable id of the rollout's configuration: its statistics are kept under it, like an
    /// experiment's, so a changed block starts fresh numbers.
    pub fn id(&self) -> String {
        use sha2::Digest;
        // `halted` is not part of the id: writing it stops this rollout, not starts another.
        let plan = Rollout {
            halted: false,
            ..self.clone()
        };
        let text = format!(
            "rollout:{}",
            serde_json::to_string(&plan).unwrap_or_default()
        );
        let digest = sha2::Sha256::digest(text.as_bytes());
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The manifest with `halted: true` in its `rollout` block (block or flow style), every other
/// line kept. An error when there is no block or the result does not read as halted.
pub fn mark_halted(text: &str) -> Result<String, String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let start = lines
        .iter()
        .position(|l| {
            l.strip_prefix("rollout")
                .is_some_and(|r| r.starts_with(':'))
        })
        .ok_or("the manifest has no `rollout` block any more")?;
    let rest = lines[start]["rollout:".len()..].trim_start().to_owned();
    if let Some(inner) = rest.strip_prefix('{') {
        lines[start] = format!("rollout: {{halted: true, {}", inner.trim_start());
    } else {
        // The block's indent is its first key's.
        let mut indent: Option<&str> = None;
        let mut at = None;
        for (i, line) in lines.iter().enumerate().skip(start + 1) {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            if !line.starts_with([' ', '\t']) {
                break;
            }
            let (lead, key) = line.split_at(line.len() - line.trim_start().len());
            let indent = *indent.get_or_insert(lead);
            if lead == indent && key.starts_with("halted:") {
                at = Some(i);
            }
        }
        let halted = format!("{}halted: true", indent.unwrap_or("  "));
        match at {
            Some(i) => lines[i] = halted,
            None => lines.insert(start + 1, halted),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    let raw = crate::prompts::manifest::parse(&out)
        .map_err(|e| format!("`halted: true` cannot be written into the block: {}", e.1))?;
    match raw.rollout.and_then(|r| r.halted) {
        Some(h) if h.value => Ok(out),
        _ => Err("`halted: true` cannot be written into the `rollout` block".to_owned()),
    }
}

/// Parses a duration like `30s`, `10m`, `1h`, `2d` (or `500ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!("`{text}` is not a duration: write a number and a unit, like `30s`, `10m` or `1h`")
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(bad()),
    };
    if !seconds.is_finite() || seconds > 365.0 * 86_400.0 {
        return Err(format!("`{text}` is too long: at most a year"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn line_of<T>(s: &Spanned<T>) -> Option<usize> {
    let line = s.referenced.line() as usize;
    (line > 0).then_some(line)
}

/// Checks the block against the versions that exist and the declared feedback metrics.
pub fn check(
    raw: &RawRollout,
    versions: &[u32],
    declared_metrics: Option<&[String]>,
    problems: &mut Vec<ManifestProblem>,
) -> Option<Rollout> {
    let before = problems.len();
    let known = versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut version = |what: &str, v: &Option<Spanned<u32>>| -> u32 {
        let Some(v) = v else {
            problems.push((
                None,
                format!(
                    "`rollout` needs `{what}`: the version to move {}",
                    if what == "from" {
                        "users from"
                    } else {
                        "users to"
                    }
                ),
            ));
            return 0;
        };
        if !versions.contains(&v.value) {
            problems.push((
                line_of(v),
                format!(
                    "`rollout.{what}` refers to version {}, which does not exist (versions: {known})",
                    v.value
                ),
            ));
        }
        v.value
    };
    let from = version("from", &raw.from);
    let to = version("to", &raw.to);
    if from != 0 && from == to {
        problems.push((
            raw.to.as_ref().and_then(line_of),
            format!("`rollout.from` and `rollout.to` are both version {from}; a rollout moves users to another version"),
        ));
    }
    let steps: Vec<u32> = match &raw.steps {
        None => DEFAULT_STEPS.to_vec(),
        Some(steps) => {
            let mut last = 0;
            for s in steps {
                if s.value == 0 || s.value > 100 {
                    problems.push((
                        line_of(s),
                        format!("`rollout.steps` holds {}: each step is a percent of users from 1 to 100", s.value),
                    ));
                } else if s.value <= last {
                    problems.push((
                        line_of(s),
                        format!("`rollout.steps` must grow: {} follows {last}", s.value),
                    ));
                }
                last = last.max(s.value);
            }
            match steps.last() {
                None => problems.push((
                    None,
                    "`rollout.steps` is empty; the default is [10, 25, 50, 100]".to_owned(),
                )),
                Some(s) if s.value != 100 => problems.push((
                    line_of(s),
                    format!(
                        "`rollout.steps` must end at 100, not {}: the last step moves every user",
                        s.value
                    ),
                )),
                Some(_) => {}
            }
            steps.iter().map(|s| s.value).collect()
        }
    };
    let min_requests = raw.min_requests.as_ref().map_or(DEFAULT_MIN_REQUESTS, |m| {
        if m.value == 0 {
            problems.push((
                line_of(m),
                "`rollout.min_requests` must be at least 1".to_owned(),
            ));
        }
        m.value
    });
    let (min_duration, min_duration_value) = match &raw.min_duration {
        None => ("10m".to_owned(), DEFAULT_MIN_DURATION),
        Some(d) => match parse_duration(&d.value) {
            Ok(value) => (d.value.trim().to_owned(), value),
            Err(message) => {
                problems.push((line_of(d), format!("`rollout.min_duration`: {message}")));
                (d.value.clone(), Duration::ZERO)
            }
        },
    };
    let mut guards = Vec::new();
    for (name, bound) in &raw.guards {
        let line = line_of(bound);
        let b = bound.value;
        if !b.is_finite() {
            problems.push((line, format!("`rollout.guards.{name}` must be a number")));
            continue;
        }
        let kind = match name.as_str() {
            "error_rate" => {
                if !(0.0..1.0).contains(&b) {
                    problems.push((line, format!("`rollout.guards.error_rate` is the increase of B's error rate over A's that is allowed, from 0 to 1 (0.02 = 2 points), not {b}")));
                }
                GuardKind::ErrorRate
            }
            "latency_p95" | "cost_per_request" => {
                if b < 1.0 {
                    problems.push((line, format!("`rollout.guards.{name}` is the ratio of B's to A's that is allowed, at least 1 (1.25 = 25% more), not {b}")));
                }
                if name == "latency_p95" {
                    GuardKind::LatencyP95
                } else {
                    GuardKind::CostPerRequest
                }
            }
            metric => {
                if !valid_metric_name(metric) {
                    problems.push((line, format!("`rollout.guards` holds `{metric}`, which is neither `error_rate`, `latency_p95`, `cost_per_request` nor a feedback metric name")));
                } else if let Some(declared) = declared_metrics
                    && metric != crate::record::QUALITY_METRIC
                    && !declared.iter().any(|d| d == metric)
                {
                    problems.push((line, format!("`rollout.guards.{metric}` names a feedback metric this prompt does not declare; declared: `quality_score`{}", declared.iter().map(|d| format!(", `{d}`")).collect::<String>())));
                }
                if b > 0.0 {
                    problems.push((line, format!("`rollout.guards.{metric}` is the fall of B's mean from A's that is allowed, 0 or below (-0.05 = may fall by 0.05), not {b}")));
                }
                GuardKind::Feedback(metric.to_owned())
            }
        };
        guards.push(Guard { kind, bound: b });
    }
    (problems.len() == before).then(|| Rollout {
        from,
        to,
        steps,
        min_requests,
        min_duration,
        min_duration_value,
        guards,
        salt: raw.salt.clone(),
        halted: raw.halted.as_ref().is_some_and(|h| h.value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompts::manifest;

    fn problems_of(text: &str) -> Vec<ManifestProblem> {
        let raw = manifest::parse(text).unwrap();
        let mut problems = Vec::new();
        manifest::check(&raw, &[1, 2, 3], &mut problems);
        manifest::check_rollout(&raw, &[1, 2, 3], &mut problems);
        problems
    }

    #[test]
    fn a_full_block_parses_with_defaults() {
        let raw = manifest::parse(
            "rollout:\n  from: 1\n  to: 2\n  guards:\n    error_rate: 0.02\n    latency_p95: 1.25\n    cost_per_request: 1.5\n    quality_score: -0.05\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        let r = check(raw.rollout.as_ref().unwrap(), &[1, 2], None, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(r.steps, DEFAULT_STEPS);
        assert_eq!(r.min_requests, 500);
        assert_eq!(r.min_duration_value, Duration::from_secs(600));
        let names: Vec<&str> = r.guards.iter().map(Guard::name).collect();
        assert_eq!(
            names,
            [
                "cost_per_request",
                "error_rate",
                "latency_p95",
                "quality_score"
            ]
        );
        assert_eq!(r.id().len(), 8);
    }

    #[test]
    fn every_problem_is_named_with_its_line() {
        let problems = problems_of(
            "rollout:\n  from: 1\n  to: 9\n  steps: [10, 5, 120]\n  min_duration: 10 minutes\n  guards:\n    error_rate: 2\n    quality_score: 0.1\n",
        );
        let lines: Vec<Option<usize>> = problems.iter().map(|p| p.0).collect();
        assert_eq!(
            lines,
            [
                Some(3),
                Some(4),
                Some(4),
                Some(4),
                Some(5),
                Some(7),
                Some(8)
            ],
            "{problems:#?}"
        );
        assert!(problems[0].1.contains("version 9"), "{problems:?}");
        assert!(problems[3].1.contains("end at 100"), "{problems:?}");
        assert!(problems[4].1.contains("not a duration"), "{problems:?}");
    }

    #[test]
    fn an_experiment_and_a_rollout_are_not_both_allowed() {
        let problems = problems_of(
            "experiment:\n  version_a: 1\n  version_b: 2\nrollout:\n  from: 1\n  to: 2\n",
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, Some(5));
        assert!(problems[0].1.contains("not both"), "{problems:?}");
    }

    #[test]
    fn unknown_keys_and_undeclared_metrics_are_refused() {
        let err =
            manifest::parse("rollout:\n  from: 1\n  to: 2\n  stepz: [50, 100]\n").unwrap_err();
        assert_eq!(err.0, Some(4));
        assert!(err.1.contains("steps"), "{err:?}");
        let problems = problems_of(
            "feedback_metrics: [helpful]\nrollout:\n  from: 1\n  to: 2\n  guards:\n    thumbs: -0.1\n    helpful: -0.1\n",
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, Some(6));
    }

    #[test]
    fn halted_is_written_into_the_block_and_keeps_the_id() {
        let block = "# keep\nactive: 1\nrollout:\n    from: 1\n    to: 2\n    steps: [50, 100]\nlabels: {}\n";
        let halted = mark_halted(block).unwrap();
        assert_eq!(
            halted,
            "# keep\nactive: 1\nrollout:\n    halted: true\n    from: 1\n    to: 2\n    steps: [50, 100]\nlabels: {}\n"
        );
        assert_eq!(mark_halted(&halted).unwrap(), halted, "idempotent");
        let off = block.replace("rollout:\n", "rollout:\n    halted: false\n");
        assert!(
            mark_halted(&off)
                .unwrap()
                .contains("    halted: true\n    from")
        );
        assert_eq!(
            mark_halted("rollout: {from: 1, to: 2}\n").unwrap(),
            "rollout: {halted: true, from: 1, to: 2}\n"
        );
        assert!(mark_halted("active: 1\n").is_err());
        let plan = |text: &str| {
            let raw = manifest::parse(text).unwrap();
            check(
                raw.rollout.as_ref().unwrap(),
                &[1, 2],
                None,
                &mut Vec::new(),
            )
            .unwrap()
        };
        let (a, b) = (plan(block), plan(&halted));
        assert!(!a.halted && b.halted);
        assert_eq!(a.id(), b.id(), "halting does not start another rollout");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("m").is_err());
    }
}
