//! The experiment counters every replica exports, so Prometheus can add the replicas up: the
//! sufficient statistics of each variant (per prompt, experiment id and version) as counters
//! that only grow. [`super::prometheus`] reads them back into the same sums the local report is
//! computed from ([`super::stats::VariantSums`]).
//!
//! The counters are written at scrape time from the statistics themselves, so they are exactly
//! the numbers the replica's own report uses, and they come back at their old values when the
//! statistics are rebuilt from the events file after a restart; a replica that starts from
//! nothing resets them to zero like any counter. Every variant of a running experiment is
//! exported from the start, at zero, with a fixed set of limbs: the first scrape after such a
//! restart then shows every series going down, so the reset is always seen.
//!
//! Exact sums of fractional or signed quantities cannot be float64 counters directly: they are
//! fixed-point integers, split into 20-bit limbs ([`Exact`]) that each stay an exact integer in
//! float64 for 2^33 additions, with positive and negative scores summed apart.
//!
//! Label values come only from the prompt files: prompts in the serving set, their versions,
//! experiment ids, and the feedback metrics a prompt is known to report
//! ([`known_metrics`]) — never from what a client sends.

use std::fmt::Write as _;

use std::collections::BTreeMap;

use super::stats::{Exact, LATENCY_BUCKETS_S, LIMBS, Stats, TOKEN_KINDS, VariantSums};
use crate::prompts::{Prompt, PromptSet};

/// The counter families, as Prometheus stores them (with `_total`).
pub mod names {
    pub const REQUESTS: &str = "promptgate_experiment_requests_total";
    pub const PRICED: &str = "promptgate_experiment_priced_requests_total";
    pub const COST: &str = "promptgate_experiment_cost_picodollars_total";
    pub const LATENCY: &str = "promptgate_experiment_latency_microseconds_total";
    pub const DURATION: &str = "promptgate_experiment_request_duration_seconds";
    pub const BUCKETS: &str = "promptgate_experiment_request_duration_seconds_bucket";
    pub const TOKENS: &str = "promptgate_experiment_tokens_total";
    pub const FEEDBACK: &str = "promptgate_experiment_feedback_total";
    pub const SCORES: &str = "promptgate_experiment_scores_total";
    pub const SCORE_SUM: &str = "promptgate_experiment_score_millionths_total";
    pub const SCORE_SQUARES: &str = "promptgate_experiment_score_squares_total";
}

/// Limbs exported even at zero: latency below 2^40 µs (12 days), cost below 2^60 pico-dollars
/// (a million dollars a request), |scores| below 2^60 millionths, squares below 2^100.
const LATENCY_LIMBS: usize = 2;
const COST_LIMBS: usize = 3;
const SCORE_LIMBS: usize = 3;

/// The feedback metrics exported for a prompt: `quality_score`, the one the comparison tests,
/// and those its `prompt.yaml` declares in `feedback_metrics`. Names a client invents are never
/// labels.
pub fn known_metrics(prompt: &Prompt) -> impl Iterator<Item = &str> {
    std::iter::once(super::stats::QUALITY).chain(
        prompt
            .feedback_metrics
            .iter()
            .flatten()
            .map(String::as_str)
            .filter(|m| *m != super::stats::QUALITY),
    )
}

/// Appends the experiment counters to an OpenMetrics exposition (before its `# EOF`).
pub fn append(exposition: &mut String, stats: &Stats, prompts: &PromptSet) {
    let had_eof = exposition.ends_with("# EOF\n");
    if had_eof {
        exposition.truncate(exposition.len() - "# EOF\n".len());
    }
    let zero = VariantSums::default();
    // Sorted: a stable order makes the exposition easy to read and to diff.
    let mut variants: BTreeMap<String, (&VariantSums, &Prompt)> = BTreeMap::new();
    let label = |prompt: &str, experiment: &str, version: u32| {
        format!(
            "prompt=\"{}\",experiment=\"{}\",version=\"{version}\"",
            escape(prompt),
            escape(experiment)
        )
    };
    for p in prompts.prompts() {
        if let Some(exp) = &p.experiment {
            let id = super::experiment_id(exp);
            for v in exp.versions() {
                variants.insert(label(&p.name, &id, v), (&zero, p));
            }
        }
    }
    for ((prompt, experiment, version), sums) in stats.sums() {
        if let Some(p) = prompts.get(prompt) {
            variants.insert(label(prompt, experiment, *version), (sums, p));
        }
    }
    let variants: Vec<(String, &VariantSums, &Prompt)> = variants
        .into_iter()
        .map(|(labels, (sums, p))| (labels, sums, p))
        .collect();
    write_families(exposition, &variants);
    if had_eof {
        exposition.push_str("# EOF\n");
    }
}

fn write_families(out: &mut String, variants: &[(String, &VariantSums, &Prompt)]) {
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let base = name.strip_suffix("_total").unwrap_or(name);
        let _ = writeln!(out, "# HELP {base} {help}");
        let _ = writeln!(out, "# TYPE {base} {kind}");
    };
    let counter = |out: &mut String, name: &str, labels: &str, value: u64| {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    };
    // The limbs a quantity's values can reach (zeros included, so that a reset shows), and any
    // higher one that is not zero.
    let limbs = |out: &mut String, name: &str, labels: &str, sum: &Exact, reach: usize| {
        let used = sum.limbs.iter().rposition(|l| *l > 0).map_or(0, |i| i + 1);
        for (i, limb) in sum.limbs.iter().enumerate().take(used.max(reach)) {
            let _ = writeln!(out, "{name}{{{labels},limb=\"{i}\"}} {limb}");
        }
    };
    use names::*;
    family(
        out,
        REQUESTS,
        "counter",
        "Experiment requests by outcome (ok, error)",
    );
    for (labels, s, _) in variants {
        counter(
            out,
            REQUESTS,
            &format!("{labels},outcome=\"ok\""),
            s.requests - s.errors,
        );
        counter(
            out,
            REQUESTS,
            &format!("{labels},outcome=\"error\""),
            s.errors,
        );
    }
    family(
        out,
        PRICED,
        "counter",
        "Experiment requests with a known cost",
    );
    for (labels, s, _) in variants {
        counter(out, PRICED, labels, s.priced);
    }
    family(
        out,
        COST,
        "counter",
        "Cost in pico-dollars, in 20-bit limbs: total = sum of value * 2^(20*limb)",
    );
    for (labels, s, _) in variants {
        limbs(out, COST, labels, &s.cost, COST_LIMBS);
    }
    family(
        out,
        LATENCY,
        "counter",
        "Request duration in microseconds, in 20-bit limbs: total = sum of value * 2^(20*limb)",
    );
    for (labels, s, _) in variants {
        limbs(out, LATENCY, labels, &s.latency_us, LATENCY_LIMBS);
    }
    family(
        out,
        DURATION,
        "histogram",
        "Experiment request duration until the last byte",
    );
    for (labels, s, _) in variants {
        let mut cumulative = 0;
        for (i, n) in s.latency_buckets.iter().enumerate() {
            cumulative += n;
            let le = LATENCY_BUCKETS_S
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |le| format!("{le:?}"));
            let _ = writeln!(
                out,
                "{DURATION}_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{DURATION}_count{{{labels}}} {}", s.requests);
        let seconds = s.latency_us.to_f64() / 1e6;
        let _ = writeln!(out, "{DURATION}_sum{{{labels}}} {seconds:?}");
    }
    family(
        out,
        TOKENS,
        "counter",
        "Experiment tokens by kind (prompt, completion, cached)",
    );
    for (labels, s, _) in variants {
        for (kind, n) in TOKEN_KINDS.iter().zip(s.tokens) {
            counter(out, TOKENS, &format!("{labels},kind=\"{kind}\""), n);
        }
    }
    family(out, FEEDBACK, "counter", "Experiment feedback events");
    for (labels, s, _) in variants {
        counter(out, FEEDBACK, labels, s.feedback);
    }
    family(
        out,
        SCORES,
        "counter",
        "Experiment feedback scores by metric",
    );
    for (labels, s, prompt) in variants {
        for metric in known_metrics(prompt) {
            let n = s.scores.get(metric).map_or(0, |m| m.n);
            counter(out, SCORES, &format!("{labels},metric=\"{metric}\""), n);
        }
    }
    family(
        out,
        SCORE_SUM,
        "counter",
        "Sum of |score| in millionths by sign, in 20-bit limbs: total = sum of value * 2^(20*limb)",
    );
    for (labels, s, prompt) in variants {
        for metric in known_metrics(prompt) {
            let m = s.scores.get(metric).copied().unwrap_or_default();
            let positive = format!("{labels},metric=\"{metric}\",sign=\"positive\"");
            limbs(out, SCORE_SUM, &positive, &m.positive, SCORE_LIMBS);
            let negative = format!("{labels},metric=\"{metric}\",sign=\"negative\"");
            limbs(out, SCORE_SUM, &negative, &m.negative, SCORE_LIMBS);
        }
    }
    family(
        out,
        SCORE_SQUARES,
        "counter",
        "Sum of squared scores in millionths squared (1e-12), in 20-bit limbs",
    );
    for (labels, s, prompt) in variants {
        for metric in known_metrics(prompt) {
            let m = s.scores.get(metric).copied().unwrap_or_default();
            let labels = format!("{labels},metric=\"{metric}\"");
            limbs(out, SCORE_SQUARES, &labels, &m.squares, LIMBS);
        }
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::stats::RequestFigures;
    use std::collections::BTreeMap;

    fn set() -> PromptSet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("support")).unwrap();
        std::fs::write(dir.path().join("support/v1.prompt"), "One.").unwrap();
        std::fs::write(
            dir.path().join("support/prompt.yaml"),
            "feedback_metrics: [helpful]\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("ab")).unwrap();
        std::fs::write(dir.path().join("ab/v1.prompt"), "A").unwrap();
        std::fs::write(dir.path().join("ab/v2.prompt"), "B").unwrap();
        std::fs::write(
            dir.path().join("ab/prompt.yaml"),
            "experiment: {version_a: 1, version_b: 2, traffic_split: 0.5}\n",
        )
        .unwrap();
        crate::prompts::load(dir.path()).unwrap()
    }

    #[test]
    fn counters_hold_the_sums_and_only_known_labels() {
        let mut stats = Stats::default();
        let key = |p: &str| (p.to_owned(), "ab12cd34".to_owned(), 1);
        let request = RequestFigures {
            ok: true,
            latency_ms: 120.5,
            cost_usd: Some(0.25),
            tokens: [Some(10), Some(5), None],
        };
        stats.add_request(key("support"), &request);
        stats.add_request(key("gone"), &request);
        let scores = BTreeMap::from([
            ("quality_score".to_owned(), -0.5),
            ("made_up_by_a_client".to_owned(), 3.0),
            ("helpful".to_owned(), 2.0),
        ]);
        stats.add_feedback(key("support"), &scores);
        let mut text = "# EOF\n".to_owned();
        append(&mut text, &stats, &set());
        assert!(text.ends_with("# EOF\n"), "{text}");
        let l = "prompt=\"support\",experiment=\"ab12cd34\",version=\"1\"";
        for line in [
            format!("promptgate_experiment_requests_total{{{l},outcome=\"ok\"}} 1"),
            format!("promptgate_experiment_latency_microseconds_total{{{l},limb=\"0\"}} 120500"),
            // 0.25 USD = 250,000,000,000 pico-dollars = 238,418 · 2^20 + 607,232.
            format!("promptgate_experiment_cost_picodollars_total{{{l},limb=\"0\"}} 607232"),
            format!("promptgate_experiment_cost_picodollars_total{{{l},limb=\"1\"}} 238418"),
            format!("promptgate_experiment_request_duration_seconds_bucket{{{l},le=\"0.1\"}} 0"),
            format!("promptgate_experiment_request_duration_seconds_bucket{{{l},le=\"0.25\"}} 1"),
            format!("promptgate_experiment_tokens_total{{{l},kind=\"completion\"}} 5"),
            format!(
                "promptgate_experiment_score_millionths_total{{{l},metric=\"quality_score\",sign=\"negative\",limb=\"0\"}} 500000"
            ),
            // A metric the prompt declares is exported too: 2.0 = 2,000,000 millionths
            // = 1 · 2^20 + 951,424.
            format!(
                "promptgate_experiment_score_millionths_total{{{l},metric=\"helpful\",sign=\"positive\",limb=\"1\"}} 1"
            ),
            format!(
                "promptgate_experiment_score_millionths_total{{{l},metric=\"helpful\",sign=\"positive\",limb=\"0\"}} 951424"
            ),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains("gone"),
            "prompts not in the set are not exported"
        );
        assert!(
            !text.contains("made_up"),
            "client metric names are not labels"
        );
        // A running experiment's variants start at zero, so a reset to nothing always shows.
        let set = set();
        let ab = set.get("ab").unwrap();
        let id = crate::record::experiment_id(ab.experiment.as_ref().unwrap());
        let l = format!("prompt=\"ab\",experiment=\"{id}\",version=\"2\"");
        for line in [
            format!("promptgate_experiment_requests_total{{{l},outcome=\"ok\"}} 0"),
            format!(
                "promptgate_experiment_score_squares_total{{{l},metric=\"quality_score\",limb=\"4\"}} 0"
            ),
            format!("promptgate_experiment_cost_picodollars_total{{{l},limb=\"2\"}} 0"),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }
}
