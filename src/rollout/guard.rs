//! The guards of a rollout, tested with statistics that stay valid however often they are
//! looked at, and the step decision built on them.
//!
//! A rollout looks at its numbers every tick. Repeating a fixed-sample test on a growing stream
//! inflates false alarms (with a check every few requests, a 5% test ends up halting most
//! healthy rollouts), so each guard is tested with a **confidence sequence**: the normal-mixture
//! (mixture SPRT) boundary of Robbins, in the two-sample form used for always-valid A/B tests
//! (Johari, Pekelis and Walsh, "Always valid inference", 2017). For an estimate `d` of B's harm
//! with variance `V`, and a mixing variance `τ²`,
//!
//! ```text
//! d ± sqrt( 2·V·(V + τ²)/τ² · ( ln(1/α) + ½·ln((V + τ²)/V) ) )
//! ```
//!
//! covers the true harm at every look at once with probability at least 1 − α for a `τ²` fixed
//! in advance (asymptotically, as `V` is estimated from the data). A guard is *violated* — the
//! rollout halts — when the whole interval lies beyond its bound. `τ²` is the variance of the
//! estimate at `min_requests` per arm, as estimated once each arm has [`TAU_SAMPLES`] samples
//! (or `min_requests`, if fewer) and then **fixed** for the rest of the rollout, not re-fitted
//! at every look; this makes the
//! boundary tightest where a step is meant to end. Feedback variances are smoothed with two
//! pseudo-scores (see [`smoothed_scores`]) so constant scores cannot collapse the interval.
//! α = 0.05 is split evenly between the guards (Bonferroni), and only the one side is used, so
//! a healthy rollout halts with probability well under 5%: `simulated_healthy_rollouts_rarely_halt`
//! checks it over 1,000 simulated rollouts.
//!
//! Every guard is computed from [`VariantSums`] — the exact sums of the experiment statistics —
//! so the same code decides from this replica's numbers or from the fleet's in Prometheus.

use serde::Serialize;

use crate::record::stats::{COST_SCALE, LATENCY_BUCKETS_S, VariantSums};
use crate::rollout::plan::{Guard, GuardKind, Rollout};

/// The false-halt rate allowed over the whole rollout, all guards together.
pub const ALPHA: f64 = 0.05;
/// Samples per arm before a guard is tested at all: the normal approximation needs a few.
pub const MIN_SAMPLES: u64 = 20;
/// Samples per arm (or `min_requests`, if fewer) at which a guard's mixing variance `τ²` is
/// fixed for the rest of the rollout.
pub const TAU_SAMPLES: u64 = 100;
/// A step advances only when each guard holds at 80% confidence (one-sided): its estimate plus
/// this many standard errors is within the bound. Without it a regression whose estimate
/// happened to dip inside the bound at the end of every step could complete.
pub const HOLD_Z: f64 = 0.841_621_233_572_914_3;
/// The latency guard's quantile.
const P95: f64 = 0.95;

/// What a guard says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Too few samples to test.
    Waiting,
    /// Within the bound at 80% confidence (estimate + 0.84 standard errors).
    Holds,
    /// Not shown to hold, not shown to be violated: the step waits for more.
    Unsure,
    /// Beyond the bound with confidence: the rollout halts.
    Violated,
}

/// One guard's test, as the report and the audit trail show it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub guard: String,
    pub bound: f64,
    pub verdict: Verdict,
    /// What the guard compares, in its own terms: B − A for rates and scores, B ÷ A for
    /// latency and cost.
    pub observed: Option<f64>,
    /// The confidence sequence of B's harm (see `harm`), at this look.
    pub interval: Option<(f64, f64)>,
    /// What the interval is about.
    pub harm: &'static str,
    pub n_a: u64,
    pub n_b: u64,
    pub test: &'static str,
    pub alpha: f64,
}

/// The radius of the normal-mixture confidence sequence for an estimate with variance `v`.
pub fn radius(v: f64, tau2: f64, alpha: f64) -> f64 {
    let v = v.max(1e-18);
    let tau2 = tau2.max(1e-18);
    (2.0 * v * (v + tau2) / tau2 * ((1.0 / alpha).ln() + 0.5 * ((v + tau2) / v).ln())).sqrt()
}

/// Mean and sample variance from n, Σx and Σx².
fn moments(n: u64, sum: f64, squares: f64) -> (f64, f64) {
    let nf = n as f64;
    let mean = sum / nf;
    let var = if n >= 2 {
        ((squares - sum * sum / nf) / (nf - 1.0)).max(0.0)
    } else {
        0.0
    };
    (mean, var)
}

/// A proportion's variance, smoothed so that 0 of n is not certainty.
fn smoothed(k: u64, n: u64) -> f64 {
    let p = (k as f64 + 1.0) / (n as f64 + 2.0);
    p * (1.0 - p)
}

/// A score variance smoothed with two pseudo-scores of variance `prior`, so that a run of
/// equal scores is not read as certainty: `((n − 1)·s² + 2·prior) / (n + 1)`.
pub fn smoothed_scores(n: u64, variance: f64, prior: f64) -> f64 {
    let n = n as f64;
    (((n - 1.0).max(0.0) * variance.max(0.0)) + 2.0 * prior) / (n + 1.0)
}

/// Tests every guard of `plan` on the arms' sums (pooled over the whole rollout). `tau2` holds
/// each guard's mixing variance once fixed (at its first testable look); it is filled here and
/// must be kept for the rollout's later looks.
pub fn evaluate(
    plan: &Rollout,
    a: &VariantSums,
    b: &VariantSums,
    tau2: &mut Vec<Option<f64>>,
) -> Vec<Check> {
    let alpha = ALPHA / plan.guards.len().max(1) as f64;
    let m = plan.min_requests.max(1) as f64;
    tau2.resize(plan.guards.len(), None);
    plan.guards
        .iter()
        .zip(tau2.iter_mut())
        .map(|(g, fixed)| check(g, a, b, m, alpha, fixed))
        .collect()
}

fn check(
    g: &Guard,
    a: &VariantSums,
    b: &VariantSums,
    m: f64,
    alpha: f64,
    fixed: &mut Option<f64>,
) -> Check {
    let mut c = Check {
        guard: g.name().to_owned(),
        bound: g.bound,
        verdict: Verdict::Waiting,
        observed: None,
        interval: None,
        harm: "",
        n_a: 0,
        n_b: 0,
        test: "normal_mixture_confidence_sequence",
        alpha,
    };
    // The harm's estimate, its variance, the mixing variance, and the harm's bound.
    let (d, v, tau2, limit) = match &g.kind {
        GuardKind::ErrorRate => {
            c.harm = "error rate of B minus A";
            (c.n_a, c.n_b) = (a.requests, b.requests);
            if a.requests < MIN_SAMPLES || b.requests < MIN_SAMPLES {
                return c;
            }
            let (pa, pb) = (
                a.errors as f64 / a.requests as f64,
                b.errors as f64 / b.requests as f64,
            );
            let (va, vb) = (
                smoothed(a.errors, a.requests),
                smoothed(b.errors, b.requests),
            );
            c.observed = Some(pb - pa);
            (
                pb - pa,
                va / a.requests as f64 + vb / b.requests as f64,
                (va + vb) / m,
                g.bound,
            )
        }
        GuardKind::Feedback(metric) => {
            c.harm = "mean of A minus B (a fall of B)";
            let (Some(sa), Some(sb)) = (a.scores.get(metric), b.scores.get(metric)) else {
                return c;
            };
            (c.n_a, c.n_b) = (sa.n, sb.n);
            if sa.n < MIN_SAMPLES || sb.n < MIN_SAMPLES {
                return c;
            }
            let (ma, mb) = (sa.moments(), sb.moments());
            // The prior: the arms' pooled variance, at least the bound squared (a spread the
            // guard is meant to see) and 1e-6.
            let (raw_a, raw_b) = (
                ma.variance.unwrap_or(0.0).max(0.0),
                mb.variance.unwrap_or(0.0).max(0.0),
            );
            let pooled =
                ((sa.n - 1) as f64 * raw_a + (sb.n - 1) as f64 * raw_b) / (sa.n + sb.n - 2) as f64;
            let prior = pooled.max(g.bound * g.bound).max(1e-6);
            let (va, vb) = (
                smoothed_scores(sa.n, raw_a, prior),
                smoothed_scores(sb.n, raw_b, prior),
            );
            c.observed = Some(mb.mean - ma.mean);
            (
                ma.mean - mb.mean,
                va / sa.n as f64 + vb / sb.n as f64,
                (va + vb) / m,
                -g.bound,
            )
        }
        GuardKind::CostPerRequest => {
            c.harm = "mean cost of B minus bound × A's (USD)";
            (c.n_a, c.n_b) = (a.priced, b.priced);
            if a.priced < MIN_SAMPLES || b.priced < MIN_SAMPLES {
                return c;
            }
            let cost = |s: &VariantSums| {
                let (mean, var) = moments(
                    s.priced,
                    s.cost.to_f64() / COST_SCALE,
                    s.cost_squares.to_f64() / (COST_SCALE * COST_SCALE),
                );
                // Sums without squares (a fleet whose replicas predate them): a coefficient
                // of variation of 1, wider than a cost per request usually spreads.
                let var = if s.cost_squares.total() == Some(0) && mean > 0.0 {
                    mean * mean
                } else {
                    var
                };
                (mean, var.max(1e-24))
            };
            let ((ma, va), (mb, vb)) = (cost(a), cost(b));
            let r = g.bound;
            c.observed = (ma > 0.0).then(|| mb / ma);
            let spread = vb + r * r * va;
            (
                mb - r * ma,
                vb / b.priced as f64 + r * r * va / a.priced as f64,
                spread / m,
                0.0,
            )
        }
        GuardKind::LatencyP95 => {
            c.harm = "share of B slower than bound × A's p95, minus 5%";
            (c.n_a, c.n_b) = (a.requests, b.requests);
            if a.requests < MIN_SAMPLES || b.requests < MIN_SAMPLES {
                return c;
            }
            let Some(threshold) = latency_threshold(&a.latency_buckets, g.bound) else {
                // Too few requests on A to bound its p95, or it lies past the histogram's
                // last bound: nothing can be said yet.
                return c;
            };
            let slower: u64 = b.latency_buckets[threshold + 1..].iter().sum();
            let n = b.requests as f64;
            let share = slower as f64 / n;
            let var = smoothed(slower, b.requests);
            let pa = crate::record::stats::bucket_percentiles(&a.latency_buckets)[1];
            let pb = crate::record::stats::bucket_percentiles(&b.latency_buckets)[1];
            c.observed = pa
                .zip(pb)
                .filter(|(pa, _)| *pa > 0.0)
                .map(|(pa, pb)| pb / pa);
            (share - (1.0 - P95), var / n, var / m, 0.0)
        }
    };
    // Fixed once each arm has enough samples for a stable estimate; until then it follows it.
    let settle = (m as u64).clamp(MIN_SAMPLES, TAU_SAMPLES);
    let tau2 = match fixed {
        Some(t) => *t,
        None if c.n_a >= settle && c.n_b >= settle => *fixed.insert(tau2),
        None => tau2,
    };
    let r = radius(v, tau2, alpha);
    c.interval = Some((d - r, d + r));
    c.verdict = if d - r > limit {
        Verdict::Violated
    } else if d + HOLD_Z * v.sqrt() > limit {
        Verdict::Unsure
    } else {
        Verdict::Holds
    };
    c
}

/// The latency bucket (index into [`LATENCY_BUCKETS_S`]) whose upper bound is the threshold
/// B is held to: at or above `ratio` × an upper confidence bound of A's p95. A's p95 is read
/// from its histogram as the upper bound of the bucket holding the rank 0.95·n + 2 standard
/// deviations (a 97.7% upper bound), so the threshold overstates what A's p95 allows; and as
/// the bucket bounds are at least 2× apart, a ratio above 1 puts it at least one bound above
/// A's. While that rank is A's slowest request (fewer than about 110 requests on A), A's p95
/// has no upper bound yet and the guard waits.
pub fn latency_threshold(a: &[u64], ratio: f64) -> Option<usize> {
    let n: u64 = a.iter().sum();
    let nf = n as f64;
    let rank = P95 * nf + 2.0 * (nf * P95 * (1.0 - P95)).sqrt();
    if rank > nf - 1.0 {
        return None;
    }
    let mut below = 0u64;
    let mut edge = None;
    for (i, count) in a.iter().enumerate() {
        below += count;
        if below as f64 >= rank {
            edge = LATENCY_BUCKETS_S.get(i).copied();
            break;
        }
    }
    let limit = edge? * ratio;
    // A bound a hair under the limit (float noise) still counts as at the limit.
    LATENCY_BUCKETS_S
        .iter()
        .position(|b| *b >= limit * (1.0 - 1e-9))
}

/// What the rollout does after a look.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Stay at this step.
    Hold(&'static str),
    /// Move to the next step.
    Advance,
    /// The last step held: B becomes active.
    Complete,
    /// A guard is violated with confidence: every user back to A.
    Halt(usize),
}

/// Where a running rollout's current step stands.
#[derive(Debug, Clone, Copy)]
pub struct StepProgress {
    /// The step's index into `steps`.
    pub index: usize,
    /// Requests of each arm (A, B) in this step.
    pub requests: [u64; 2],
    /// Whether the step has been held for `min_duration`.
    pub aged: bool,
}

/// The decision at one look: halt on a violated guard (at any time: the tests are valid at
/// every look); otherwise advance once the step has `min_requests` per arm (B only at 100%,
/// where A gets none), has lasted `min_duration`, and every guard holds.
pub fn decide(plan: &Rollout, step: StepProgress, checks: &[Check]) -> Decision {
    if let Some(i) = checks.iter().position(|c| c.verdict == Verdict::Violated) {
        return Decision::Halt(i);
    }
    let share = plan.steps.get(step.index).copied().unwrap_or(100);
    let [a, b] = step.requests;
    if b < plan.min_requests || (share < 100 && a < plan.min_requests) {
        return Decision::Hold("waiting for min_requests per arm");
    }
    if !step.aged {
        return Decision::Hold("waiting for min_duration");
    }
    if checks.iter().any(|c| c.verdict == Verdict::Unsure) {
        return Decision::Hold("a guard is not yet shown to hold (nor to be violated)");
    }
    if checks.iter().any(|c| c.verdict == Verdict::Waiting) {
        return Decision::Hold("a guard has too few samples to test");
    }
    if step.index + 1 >= plan.steps.len() {
        Decision::Complete
    } else {
        Decision::Advance
    }
}

#[cfg(test)]
mod tests;
