//! Experiment statistics: per prompt, experiment and version, what the requests cost and how
//! their feedback scored; and the comparison of the variants.
//!
//! Everything the report says is computed from sums — counts, Σx and Σx² — by one function,
//! [`report`]: the local report passes this replica's sums, the fleet report
//! ([`super::fleet`]) passes sums added up from every replica's counters in Prometheus. The
//! sums are integers in fixed point (scores in millionths, cost in pico-dollars, latency in
//! microseconds), so adding them in any order gives the same bits: a fleet report equals the
//! report of all its replicas' events pooled.
//!
//! Built from the same records as the events file, so replaying that file at start rebuilds
//! them exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use statrs::distribution::{ChiSquared, ContinuousCDF, StudentsT};

use crate::prompts::{Experiment, Split};

/// Latencies kept per variant for percentiles; beyond this, a uniform reservoir sample.
const LATENCY_SAMPLES: usize = 100_000;

/// Scores are kept in millionths: a score is rounded to 6 decimal places.
pub const SCORE_SCALE: f64 = 1e6;
/// Scores beyond ±this are refused, so a square stays below 2^100 in millionths squared.
pub const MAX_SCORE: f64 = 1e9;
/// Cost is kept in pico-dollars (10⁻¹² USD).
pub const COST_SCALE: f64 = 1e12;
/// Latency is kept in microseconds.
pub const LATENCY_SCALE_MS: f64 = 1e3;
/// Upper bounds (seconds) of the latency histogram buckets; `+Inf` follows.
pub const LATENCY_BUCKETS_S: [f64; 12] = [
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
];

/// Bits per limb of an [`Exact`] sum.
pub const LIMB_BITS: u32 = 20;
/// Limbs of an [`Exact`] sum: 5 × 20 bits, enough for any single value below 2^100.
pub const LIMBS: usize = 5;
const LIMB_MASK: u128 = (1 << LIMB_BITS) - 1;

/// An exact sum of non-negative integers below 2^100, kept as limbs that each only grow: every
/// value added is cut into 20-bit digits and digit `i` is added to limb `i` (no carry). The
/// total is Σ limbᵢ · 2^(20·i). Each limb grows by less than 2^20 a value, so as a Prometheus
/// counter (a float64) it stays an exact integer for 2^33 values — which is why the fleet
/// exports limbs, not the total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exact {
    pub limbs: [u64; LIMBS],
}

impl Exact {
    pub fn add(&mut self, value: u128) {
        for (i, limb) in self.limbs.iter_mut().enumerate() {
            *limb += ((value >> (LIMB_BITS * i as u32)) & LIMB_MASK) as u64;
        }
    }

    /// Adds another sum limb by limb.
    pub fn merge(&mut self, other: &Exact) {
        for (a, b) in self.limbs.iter_mut().zip(other.limbs) {
            *a += b;
        }
    }

    /// The total, when it fits in 128 bits.
    pub fn total(&self) -> Option<u128> {
        self.limbs
            .iter()
            .enumerate()
            .try_fold(0u128, |acc, (i, &limb)| {
                (limb as u128)
                    .checked_mul(1u128 << (LIMB_BITS * i as u32))
                    .and_then(|x| acc.checked_add(x))
            })
    }

    /// The total as a float (rounded once when it does not fit 128 bits).
    pub fn to_f64(&self) -> f64 {
        match self.total() {
            Some(t) => t as f64,
            None => self
                .limbs
                .iter()
                .enumerate()
                .map(|(i, &l)| l as f64 * 2f64.powi((LIMB_BITS * i as u32) as i32))
                .sum(),
        }
    }
}

/// Rounds a non-negative quantity to an integer count of `scale` units.
fn units(x: f64, scale: f64) -> u128 {
    (x.abs() * scale).round() as u128
}

/// The sufficient statistics of one feedback metric: count, Σx (positive and negative parts
/// apart, so both only grow) and Σx², in millionths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreSums {
    pub n: u64,
    pub positive: Exact,
    pub negative: Exact,
    pub squares: Exact,
}

impl ScoreSums {
    /// Adds one score (|x| ≤ [`MAX_SCORE`], checked by the caller).
    pub fn add(&mut self, x: f64) {
        let u = units(x, SCORE_SCALE);
        self.n += 1;
        if x < 0.0 {
            self.negative.add(u);
        } else {
            self.positive.add(u);
        }
        self.squares.add(u * u);
    }

    pub fn merge(&mut self, other: &ScoreSums) {
        self.n += other.n;
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.squares.merge(&other.squares);
    }

    /// Count, mean and sample variance.
    pub fn moments(&self) -> Moments {
        if self.n == 0 {
            return Moments::default();
        }
        let n = self.n as f64;
        let exact = self
            .positive
            .total()
            .zip(self.negative.total())
            .and_then(|(p, q)| Some(i128::try_from(p).ok()? - i128::try_from(q).ok()?));
        let (sum, variance) = match (exact, self.squares.total()) {
            (Some(sum), Some(squares)) => {
                // n·Σx² − (Σx)², exactly, when it fits: no cancellation at all.
                let spread = i128::try_from(squares)
                    .ok()
                    .and_then(|q| q.checked_mul(self.n as i128))
                    .zip(sum.checked_mul(sum))
                    .map(|(a, b)| a - b);
                let variance = match spread {
                    Some(s) if self.n >= 2 => {
                        Some(s as f64 / (n * (n - 1.0)) / (SCORE_SCALE * SCORE_SCALE))
                    }
                    _ => None,
                };
                let variance = variance.or_else(|| self.float_variance(sum as f64));
                (sum as f64, variance)
            }
            _ => {
                let sum = self.positive.to_f64() - self.negative.to_f64();
                (sum, self.float_variance(sum))
            }
        };
        Moments {
            n: self.n,
            mean: sum / n / SCORE_SCALE,
            variance,
        }
    }

    fn float_variance(&self, sum: f64) -> Option<f64> {
        (self.n >= 2).then(|| {
            let n = self.n as f64;
            ((self.squares.to_f64() - sum * sum / n) / (n - 1.0)).max(0.0)
                / (SCORE_SCALE * SCORE_SCALE)
        })
    }
}

/// Count, mean and sample variance (n − 1) of one metric, as the tests need them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    pub variance: Option<f64>,
}

/// One finished request, as the statistics see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFigures {
    pub ok: bool,
    pub latency_ms: f64,
    pub cost_usd: Option<f64>,
    /// Prompt, completion and cached tokens.
    pub tokens: [Option<u64>; 3],
}

/// The names of the token kinds, in [`VariantSums::tokens`]' order.
pub const TOKEN_KINDS: [&str; 3] = ["prompt", "completion", "cached"];

/// Every sum one variant's report is computed from. Local statistics keep one per variant;
/// the fleet report adds up one per replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VariantSums {
    pub requests: u64,
    pub errors: u64,
    /// Σ latency in microseconds.
    pub latency_us: Exact,
    /// Requests per latency bucket ([`LATENCY_BUCKETS_S`], then `+Inf`), not cumulative.
    pub latency_buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
    pub priced: u64,
    /// Σ cost in pico-dollars.
    pub cost: Exact,
    /// Σ cost² in pico-dollars² (a rollout's cost guard needs the spread). Local only: the
    /// fleet does not export it, and older checkpoints lack it.
    #[serde(default)]
    pub cost_squares: Exact,
    pub tokens: [u64; 3],
    /// Feedback events (one may carry several metrics).
    pub feedback: u64,
    /// Per feedback metric.
    pub scores: BTreeMap<String, ScoreSums>,
}

impl VariantSums {
    pub fn add_request(&mut self, r: &RequestFigures) {
        self.requests += 1;
        if !r.ok {
            self.errors += 1;
        }
        let latency_ms = r.latency_ms.max(0.0);
        self.latency_us.add(units(latency_ms, LATENCY_SCALE_MS));
        let seconds = latency_ms / 1000.0;
        let bucket = LATENCY_BUCKETS_S
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.latency_buckets[bucket] += 1;
        if let Some(cost) = r.cost_usd.filter(|c| c.is_finite()) {
            self.priced += 1;
            let u = units(cost, COST_SCALE);
            self.cost.add(u);
            // Below 2^100 for any cost under $1,000 a request; beyond, capped.
            self.cost_squares.add(u.min(1 << 50).pow(2));
        }
        for (sum, n) in self.tokens.iter_mut().zip(r.tokens) {
            *sum += n.unwrap_or(0);
        }
    }

    pub fn add_feedback(&mut self, metrics: &BTreeMap<String, f64>) {
        self.feedback += 1;
        for (name, value) in metrics {
            if let Some(sums) = self.scores.get_mut(name) {
                sums.add(*value);
            } else {
                let mut sums = ScoreSums::default();
                sums.add(*value);
                self.scores.insert(name.clone(), sums);
            }
        }
    }

    pub fn merge(&mut self, other: &VariantSums) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency_us.merge(&other.latency_us);
        for (a, b) in self.latency_buckets.iter_mut().zip(other.latency_buckets) {
            *a += b;
        }
        self.priced += other.priced;
        self.cost.merge(&other.cost);
        self.cost_squares.merge(&other.cost_squares);
        for (a, b) in self.tokens.iter_mut().zip(other.tokens) {
            *a += b;
        }
        self.feedback += other.feedback;
        for (name, sums) in &other.scores {
            self.scores.entry(name.clone()).or_default().merge(sums);
        }
    }

    fn quality(&self) -> Moments {
        self.scores
            .get(QUALITY)
            .map(ScoreSums::moments)
            .unwrap_or_default()
    }
}

/// The metric the comparison tests.
pub const QUALITY: &str = "quality_score";

/// Latency percentiles (ms) of a variant: p50, p95, p99.
pub type Percentiles = [Option<f64>; 3];

/// The numbers of one variant: its sums, and a sample of latencies for exact percentiles.
#[derive(Debug, Clone, Default)]
pub struct VariantStats {
    pub sums: VariantSums,
    latencies: Vec<f64>,
    latencies_seen: u64,
}

impl VariantStats {
    fn add_request(&mut self, r: &RequestFigures) {
        self.sums.add_request(r);
        self.latencies_seen += 1;
        if self.latencies.len() < LATENCY_SAMPLES {
            self.latencies.push(r.latency_ms);
        } else {
            // The slot is a function of the count, not of a random draw, so replaying the
            // same events after a restart rebuilds the very same sample.
            let slot = (splitmix64(self.latencies_seen) % self.latencies_seen) as usize;
            if slot < LATENCY_SAMPLES {
                self.latencies[slot] = r.latency_ms;
            }
        }
    }

    /// Nearest-rank percentiles of the latency sample.
    fn percentiles(&self) -> Percentiles {
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        [50.0, 95.0, 99.0].map(|p| {
            if sorted.is_empty() {
                return None;
            }
            let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
            Some(sorted[rank.min(sorted.len()) - 1])
        })
    }
}

/// Latency percentiles (ms) estimated from histogram buckets (non-cumulative, as
/// [`VariantSums::latency_buckets`]) the way Prometheus's `histogram_quantile` does: linear
/// interpolation inside the bucket holding the rank; in the `+Inf` bucket, the highest finite
/// bound.
pub fn bucket_percentiles(buckets: &[u64]) -> Percentiles {
    let total: u64 = buckets.iter().sum();
    [0.5, 0.95, 0.99].map(|q| {
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &n) in buckets.iter().enumerate() {
            if (below + n) as f64 >= rank && n > 0 {
                let Some(&end) = LATENCY_BUCKETS_S.get(i) else {
                    return LATENCY_BUCKETS_S.last().map(|s| s * 1000.0);
                };
                let start = if i == 0 {
                    0.0
                } else {
                    LATENCY_BUCKETS_S[i - 1]
                };
                let s = start + (end - start) * (rank - below as f64) / n as f64;
                return Some(s * 1000.0);
            }
            below += n;
        }
        None
    })
}

/// The report of one variant from its sums (the seed's names first).
pub fn variant_report(s: &VariantSums, latency: Percentiles) -> Value {
    let avg = |sum: f64, n: u64| (n > 0).then(|| sum / n as f64);
    let quality = s.quality();
    let ci = confidence_interval(&quality);
    let other: BTreeMap<&String, Value> = s
        .scores
        .iter()
        .filter(|(name, _)| *name != QUALITY)
        .map(|(k, sums)| {
            let m = sums.moments();
            (k, json!({"avg": m.mean, "count": m.n}))
        })
        .collect();
    let latency_ms = s.latency_us.to_f64() / LATENCY_SCALE_MS;
    let cost = s.cost.to_f64() / COST_SCALE;
    json!({
        "count": s.requests,
        "avg_quality": (quality.n > 0).then_some(quality.mean),
        "avg_latency_ms": avg(latency_ms, s.requests),
        "avg_cost_usd": avg(cost, s.priced),
        "total_cost_usd": cost,
        "feedback_count": s.feedback,
        "quality_count": quality.n,
        "error_rate": avg(s.errors as f64, s.requests),
        "latency_p50_ms": latency[0],
        "latency_p95_ms": latency[1],
        "latency_p99_ms": latency[2],
        "quality_ci95": ci.map(|(lo, hi)| json!([lo, hi])),
        "unpriced_requests": s.requests - s.priced,
        "tokens": {"prompt": s.tokens[0], "completion": s.tokens[1], "cached": s.tokens[2]},
        "other_metrics": other,
    })
}

/// Two-sided 95% confidence interval of the mean (Student's t).
pub fn confidence_interval(m: &Moments) -> Option<(f64, f64)> {
    let var = m.variance?;
    let t = StudentsT::new(0.0, 1.0, (m.n - 1) as f64)
        .ok()?
        .inverse_cdf(0.975);
    let half = t * (var / m.n as f64).sqrt();
    Some((m.mean - half, m.mean + half))
}

/// Welch's t-test (unequal variances): t, degrees of freedom, two-sided p-value.
pub fn welch(a: &Moments, b: &Moments) -> Option<(f64, f64, f64)> {
    let (va, vb) = (a.variance?, b.variance?);
    let (sa, sb) = (va / a.n as f64, vb / b.n as f64);
    let se2 = sa + sb;
    if se2 <= 0.0 {
        return None;
    }
    let t = (a.mean - b.mean) / se2.sqrt();
    let df = se2 * se2 / (sa * sa / (a.n - 1) as f64 + sb * sb / (b.n - 1) as f64);
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    let p = 2.0 * (1.0 - dist.cdf(t.abs()));
    Some((t, df, p.clamp(0.0, 1.0)))
}

/// Pearson's chi-square goodness of fit of `observed` counts to `shares` (summing to 1):
/// statistic and p-value. Categories expected to get nothing are left out unless they got
/// something, which is a mismatch by itself (p = 0).
pub fn chi_square(observed: &[u64], shares: &[f64]) -> Option<(f64, f64)> {
    let total: u64 = observed.iter().sum();
    if total == 0 {
        return None;
    }
    let mut stat = 0.0;
    let mut categories = 0;
    for (&o, &share) in observed.iter().zip(shares) {
        let expected = share * total as f64;
        if expected <= 0.0 {
            if o > 0 {
                return Some((f64::INFINITY, 0.0));
            }
            continue;
        }
        stat += (o as f64 - expected).powi(2) / expected;
        categories += 1;
    }
    if categories < 2 {
        return None;
    }
    let dist = ChiSquared::new((categories - 1) as f64).ok()?;
    Some((stat, (1.0 - dist.cdf(stat)).clamp(0.0, 1.0)))
}

/// Where a request's numbers go: prompt, experiment id ("" when not assigned by an
/// experiment) and version.
pub type Key = (String, String, u32);

/// A [`Key`] borrowed, to look one up without copying its names; it hashes as the key does
/// (a tuple hashes its fields in order, a `String` as its `str`).
#[derive(Hash)]
struct KeyRef<'a>(&'a str, &'a str, u32);

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.2 == key.2 && self.0 == key.0 && self.1 == key.1
    }
}

/// Every variant's numbers.
#[derive(Debug, Default)]
pub struct Stats {
    variants: hashbrown::HashMap<Key, VariantStats>,
    /// Per prompt, the feedback metric names (other than `quality_score`) it has accepted:
    /// what `--feedback-metrics-max` counts.
    metric_names: HashMap<String, BTreeSet<String>>,
}

/// A well-mixed hash of a counter (SplitMix64's finaliser).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// [`Stats`] as the checkpoint stores it: the exact integer sums, and the latency sample with
/// every float as its bit pattern, so a restart restores the very same figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsSnapshot {
    variants: Vec<VariantSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VariantSnapshot {
    prompt: String,
    experiment: String,
    version: u32,
    sums: VariantSums,
    latencies: Vec<u64>,
    latencies_seen: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut variants: Vec<VariantSnapshot> = self
            .variants
            .iter()
            .map(|((prompt, experiment, version), v)| VariantSnapshot {
                prompt: prompt.clone(),
                experiment: experiment.clone(),
                version: *version,
                sums: v.sums.clone(),
                latencies: v.latencies.iter().map(|x| x.to_bits()).collect(),
                latencies_seen: v.latencies_seen,
            })
            .collect();
        variants.sort_by(|a, b| {
            (&a.prompt, &a.experiment, a.version).cmp(&(&b.prompt, &b.experiment, b.version))
        });
        StatsSnapshot { variants }
    }

    pub fn restore(snapshot: StatsSnapshot) -> Stats {
        let mut stats = Stats::default();
        for v in snapshot.variants {
            let names = stats.metric_names.entry(v.prompt.clone()).or_default();
            names.extend(v.sums.scores.keys().filter(|n| *n != QUALITY).cloned());
            stats.variants.insert(
                (v.prompt, v.experiment, v.version),
                VariantStats {
                    sums: v.sums,
                    latencies: v.latencies.into_iter().map(f64::from_bits).collect(),
                    latencies_seen: v.latencies_seen,
                },
            );
        }
        stats
    }

    /// The feedback metric names (other than `quality_score`) a prompt has accepted so far.
    pub fn metric_names(&self, prompt: &str) -> &BTreeSet<String> {
        static NONE: BTreeSet<String> = BTreeSet::new();
        self.metric_names.get(prompt).unwrap_or(&NONE)
    }

    pub fn add_request(&mut self, key: Key, request: &RequestFigures) {
        self.variants.entry(key).or_default().add_request(request);
    }

    /// [`Stats::add_request`] by borrowed names: the key is copied only for a new variant.
    pub fn add_request_of(
        &mut self,
        prompt: &str,
        experiment: &str,
        version: u32,
        request: &RequestFigures,
    ) {
        let variant = match self.variants.get_mut(&KeyRef(prompt, experiment, version)) {
            Some(variant) => variant,
            None => self
                .variants
                .entry((prompt.to_owned(), experiment.to_owned(), version))
                .or_default(),
        };
        variant.add_request(request);
    }

    pub fn add_feedback(&mut self, key: Key, metrics: &BTreeMap<String, f64>) {
        let names = self.metric_names.entry(key.0.clone()).or_default();
        for name in metrics.keys().filter(|n| *n != QUALITY) {
            if !names.contains(name) {
                names.insert(name.clone());
            }
        }
        self.variants
            .entry(key)
            .or_default()
            .sums
            .add_feedback(metrics);
    }

    /// One variant's sums, if it has any.
    pub fn variant(&self, key: &Key) -> Option<&VariantSums> {
        self.variants.get(key).map(|v| &v.sums)
    }

    /// Every variant's sums, for the exported counters.
    pub fn sums(&self) -> impl Iterator<Item = (&Key, &VariantSums)> {
        self.variants.iter().map(|(k, v)| (k, &v.sums))
    }

    /// The experiment report of a prompt from this replica's numbers. With an experiment, its
    /// variants (by the current experiment's id) in the configured order; without one, every
    /// version seen outside experiments.
    pub fn report(&self, prompt: &str, experiment: Option<(&Experiment, &str)>) -> Value {
        let empty = VariantStats::default();
        let (versions, id): (Vec<u32>, &str) = match experiment {
            Some((exp, id)) => (exp.versions(), id),
            None => {
                let mut v: Vec<u32> = self
                    .variants
                    .keys()
                    .filter(|(p, e, _)| p == prompt && e.is_empty())
                    .map(|(_, _, v)| *v)
                    .collect();
                v.sort_unstable();
                (v, "")
            }
        };
        let variants: Vec<(u32, &VariantSums, Percentiles)> = versions
            .iter()
            .map(|v| {
                let key = (prompt.to_owned(), id.to_owned(), *v);
                let s = self.variants.get(&key).unwrap_or(&empty);
                (*v, &s.sums, s.percentiles())
            })
            .collect();
        report(prompt, experiment, &variants)
    }
}

impl Stats {
    /// The report of some versions recorded under one id, without an experiment's split (a
    /// rollout's arms, whose split changes step by step).
    pub fn report_versions(&self, prompt: &str, id: &str, versions: &[u32]) -> Value {
        let empty = VariantStats::default();
        let variants: Vec<(u32, &VariantSums, Percentiles)> = versions
            .iter()
            .map(|v| {
                let key = (prompt.to_owned(), id.to_owned(), *v);
                let s = self.variants.get(&key).unwrap_or(&empty);
                (*v, &s.sums, s.percentiles())
            })
            .collect();
        let mut out = report(prompt, None, &variants);
        out["experiment_id"] = Value::from(id);
        out
    }
}

/// The experiment report from each variant's sums and latency percentiles, in the order given:
/// the one computation behind both the local and the fleet report.
pub fn report(
    prompt: &str,
    experiment: Option<(&Experiment, &str)>,
    variants: &[(u32, &VariantSums, Percentiles)],
) -> Value {
    let id = experiment.map_or("", |(_, id)| id);
    let reports: serde_json::Map<String, Value> = variants
        .iter()
        .map(|(v, s, latency)| (v.to_string(), variant_report(s, *latency)))
        .collect();
    let srm = experiment.map(|(exp, _)| {
        let shares: Vec<f64> = match &exp.split {
            Split::AB { traffic_split, .. } => vec![1.0 - traffic_split, *traffic_split],
            Split::Weighted { variants } => variants
                .iter()
                .map(|v| f64::from(v.weight) / 100.0)
                .collect(),
        };
        let observed: Vec<u64> = variants.iter().map(|(_, s, _)| s.requests).collect();
        match chi_square(&observed, &shares) {
            Some((stat, p)) => json!({
                "test": "chi_square_goodness_of_fit", "statistic": finite(stat),
                "p_value": p, "mismatch": p < 0.001,
                "observed": observed, "expected_shares": shares,
            }),
            None => json!({
                "test": "chi_square_goodness_of_fit", "statistic": null, "p_value": null,
                "mismatch": false, "observed": observed, "expected_shares": shares,
                "note": "not enough requests yet",
            }),
        }
    });
    let qualities: Vec<(u32, Moments)> =
        variants.iter().map(|(v, s, _)| (*v, s.quality())).collect();
    json!({
        "prompt": prompt,
        "experiment_id": (!id.is_empty()).then_some(id),
        "variants": reports,
        "comparison": compare(&qualities),
        "srm": srm,
    })
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Welch's t-test on quality between every pair of variants. The winner is the variant whose
/// mean quality is significantly higher (p < 0.05) than every other's; the headline p-value is
/// the largest of its pairwise p-values (or, with no winner, of the two best).
fn compare(stats: &[(u32, Moments)]) -> Value {
    const ALPHA: f64 = 0.05;
    let mut pairs = Vec::new();
    for (i, (va, a)) in stats.iter().enumerate() {
        for (vb, b) in &stats[i + 1..] {
            let result = welch(a, b);
            pairs.push(json!({
                "a": va.to_string(), "b": vb.to_string(),
                "mean_difference": (a.n > 0 && b.n > 0).then_some(a.mean - b.mean),
                "t": result.map(|r| r.0), "df": result.map(|r| r.1), "p_value": result.map(|r| r.2),
                "significant": result.is_some_and(|r| r.2 < ALPHA),
            }));
        }
    }
    // Variants ranked by mean quality, those with feedback only.
    let mut ranked: Vec<&(u32, Moments)> = stats.iter().filter(|(_, m)| m.n > 0).collect();
    ranked.sort_by(|a, b| b.1.mean.total_cmp(&a.1.mean));
    let (mut p_value, mut winner) = (None, None);
    if let [best, rest @ ..] = ranked.as_slice()
        && !rest.is_empty()
        && ranked.len() == stats.len()
    {
        let ps: Vec<Option<f64>> = rest
            .iter()
            .map(|(_, m)| welch(&best.1, m).map(|r| r.2))
            .collect();
        if ps.iter().all(Option::is_some) {
            let worst = ps.iter().flatten().copied().fold(0.0, f64::max);
            p_value = Some(worst);
            let better = rest.iter().all(|(_, m)| best.1.mean > m.mean);
            if worst < ALPHA && better {
                winner = Some(best.0.to_string());
            }
        }
    }
    json!({
        "metric": QUALITY,
        "test": "welch_t_test",
        "alpha": ALPHA,
        "p_value": p_value,
        "significant": winner.is_some(),
        "winner": winner,
        "pairs": pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_added_by_borrowed_names_land_in_the_same_variant() {
        let figures = RequestFigures {
            ok: true,
            latency_ms: 10.0,
            cost_usd: None,
            tokens: [Some(1), None, None],
        };
        let mut stats = Stats::default();
        stats.add_request(("support".into(), "".into(), 2), &figures);
        stats.add_request_of("support", "", 2, &figures);
        stats.add_request_of("support", "e1", 2, &figures);
        stats.add_request_of("support", "", 3, &figures);
        let key = |e: &str, v| ("support".to_owned(), e.to_owned(), v);
        assert_eq!(stats.variant(&key("", 2)).unwrap().requests, 2);
        assert_eq!(stats.variant(&key("e1", 2)).unwrap().requests, 1);
        assert_eq!(stats.variant(&key("", 3)).unwrap().requests, 1);
        assert_eq!(stats.sums().count(), 3);
    }

    fn sums(xs: &[f64]) -> ScoreSums {
        let mut s = ScoreSums::default();
        for x in xs {
            s.add(*x);
        }
        s
    }

    fn moments(xs: &[f64]) -> Moments {
        sums(xs).moments()
    }

    // Expected values computed with scipy 1.17.1:
    //   scipy.stats.ttest_ind(a, b, equal_var=False)
    //   scipy.stats.t.interval(0.95, len(a)-1, loc=mean(a), scale=sem(a))
    //   scipy.stats.chisquare(observed, f_exp=expected)
    const A: [f64; 8] = [0.82, 0.91, 0.77, 0.88, 0.95, 0.79, 0.85, 0.9];
    const B: [f64; 6] = [0.7, 0.75, 0.81, 0.68, 0.72, 0.79];

    #[test]
    fn welch_matches_scipy() {
        let (t, df, p) = welch(&moments(&A), &moments(&B)).unwrap();
        assert!((t - WELCH_T).abs() < 1e-9, "t = {t}");
        assert!((df - WELCH_DF).abs() < 1e-9, "df = {df}");
        assert!((p - WELCH_P).abs() < 1e-9, "p = {p}");
    }

    #[test]
    fn confidence_interval_matches_scipy() {
        let (lo, hi) = confidence_interval(&moments(&A)).unwrap();
        assert!(
            (lo - CI_LO).abs() < 1e-9 && (hi - CI_HI).abs() < 1e-9,
            "{lo} {hi}"
        );
    }

    #[test]
    fn chi_square_matches_scipy() {
        let (stat, p) = chi_square(&[820, 180], &[0.8, 0.2]).unwrap();
        assert!(
            (stat - CHI_STAT).abs() < 1e-9 && (p - CHI_P).abs() < 1e-9,
            "{stat} {p}"
        );
        let (_, p) = chi_square(&[500, 500], &[0.8, 0.2]).unwrap();
        assert!(p < 0.001, "a broken split is flagged");
        assert_eq!(chi_square(&[10, 1], &[1.0, 0.0]).unwrap().1, 0.0);
        assert!(chi_square(&[0, 0], &[0.5, 0.5]).is_none());
    }

    #[test]
    fn moments_from_sums_are_exact() {
        let m = moments(&A);
        let mean = A.iter().sum::<f64>() / 8.0;
        let var = A.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 7.0;
        assert!((m.mean - mean).abs() < 1e-15);
        assert!((m.variance.unwrap() - var).abs() < 1e-15);
        assert!(
            welch(&moments(&[1.0]), &moments(&B)).is_none(),
            "needs two samples each"
        );
    }

    /// Deterministic samples with negative scores (three decimals, so rounding to millionths
    /// keeps them as they are).
    fn fleet_samples() -> (Vec<f64>, Vec<f64>) {
        let a = (0..5000)
            .map(|i: i64| ((i * 7919) % 2001 - 600) as f64 / 1000.0)
            .collect();
        let b = (0..3000)
            .map(|i: i64| ((i * 104_729) % 1999 - 700) as f64 / 1000.0 + 0.05)
            .collect();
        (a, b)
    }

    // scipy 1.17.1 on fleet_samples():
    //   ttest_ind(a, b, equal_var=False); t.interval(0.95, len(b)-1, loc=mean(b), scale=sem(b));
    //   ttest_ind_from_stats from the integer sums below; chisquare([7030, 1985, 985], f_exp=[7000, 2000, 1000]).
    const FLEET_T: f64 = 3.8438116850474437;
    const FLEET_P: f64 = 0.00012232655612844703;
    const FLEET_DF: f64 = 6320.005072702049;
    const FLEET_CI_B: (f64, f64) = (0.3288514657769336, 0.37017720088973305);
    const FLEET_MEAN_B: f64 = 0.3495143333333333;
    /// n, Σx and Σx² in millionths, as Python's integers computed them.
    const SUMS_A: (u64, i128, u128) = (5000, 2_003_879_000, 2_472_711_861_000_000);
    const SUMS_B: (u64, i128, u128) = (3000, 1_048_543_000, 1_365_634_047_000_000);
    const CHI3_STAT: f64 = 0.4660714285714286;
    const CHI3_P: f64 = 0.7921252828304535;

    #[test]
    fn statistics_with_negative_scores_match_scipy() {
        let (a, b) = fleet_samples();
        let (sa, sb) = (sums(&a), sums(&b));
        assert!(
            sa.negative.total().unwrap() > 0,
            "the sample has negative scores"
        );
        let (t, df, p) = welch(&sa.moments(), &sb.moments()).unwrap();
        assert!((t - FLEET_T).abs() < 1e-9, "t = {t}");
        assert!((df - FLEET_DF).abs() < 1e-6, "df = {df}");
        assert!((p - FLEET_P).abs() < 1e-9, "p = {p}");
        let mb = sb.moments();
        assert!((mb.mean - FLEET_MEAN_B).abs() < 1e-12);
        let (lo, hi) = confidence_interval(&mb).unwrap();
        assert!((lo - FLEET_CI_B.0).abs() < 1e-9 && (hi - FLEET_CI_B.1).abs() < 1e-9);
    }

    #[test]
    fn statistics_from_given_sums_match_scipy() {
        // The fleet report only has the sums: n, Σx, Σx² (as Prometheus counters give them).
        let from = |(n, sum, squares): (u64, i128, u128)| {
            let mut s = ScoreSums {
                n,
                ..ScoreSums::default()
            };
            s.positive.add(sum as u128);
            s.squares.add(squares);
            s.moments()
        };
        let (a, _) = fleet_samples();
        assert_eq!(from(SUMS_A), sums(&a).moments(), "same sums, same numbers");
        let (t, _, p) = welch(&from(SUMS_A), &from(SUMS_B)).unwrap();
        assert!(
            (t - FLEET_T).abs() < 1e-9 && (p - FLEET_P).abs() < 1e-9,
            "{t} {p}"
        );
        let (stat, p) = chi_square(&[7030, 1985, 985], &[0.7, 0.2, 0.1]).unwrap();
        assert!((stat - CHI3_STAT).abs() < 1e-9 && (p - CHI3_P).abs() < 1e-9);
    }

    #[test]
    fn sums_added_in_any_order_are_identical() {
        let (a, _) = fleet_samples();
        let whole = sums(&a);
        let mut parts = [ScoreSums::default(); 3];
        for (i, x) in a.iter().rev().enumerate() {
            parts[(i * 7) % 3].add(*x);
        }
        let mut merged = ScoreSums::default();
        for p in parts.iter().rev() {
            merged.merge(p);
        }
        assert_eq!(merged, whole);
        assert_eq!(merged.moments(), whole.moments());
    }

    #[test]
    fn limbs_only_grow_and_add_up_exactly() {
        let mut e = Exact::default();
        let big = units(MAX_SCORE, SCORE_SCALE).pow(2);
        assert!(big < 1u128 << 100, "the largest square fits five limbs");
        let mut before = e;
        for value in [big, 1, 0, (1 << 20) - 1, 1 << 20, 123_456_789_012_345] {
            e.add(value);
            assert!(e.limbs.iter().zip(before.limbs).all(|(a, b)| *a >= b));
            before = e;
        }
        let want = big + 1 + (1 << 20) - 1 + (1 << 20) + 123_456_789_012_345;
        assert_eq!(e.total(), Some(want));
        assert!(
            e.limbs.iter().all(|l| *l < 1 << 22),
            "each limb stays small"
        );
        let mut s = ScoreSums::default();
        s.add(-MAX_SCORE);
        s.add(MAX_SCORE);
        let m = s.moments();
        assert_eq!(m.mean, 0.0);
        assert!((m.variance.unwrap() - 2e18).abs() < 1.0);
    }

    #[test]
    fn a_variant_report_is_computed_from_its_sums() {
        let mut v = VariantSums::default();
        for (i, ms) in [10.0, 30.0, 3000.0].iter().enumerate() {
            v.add_request(&RequestFigures {
                ok: i != 1,
                latency_ms: *ms,
                cost_usd: (i != 2).then_some(0.001_5),
                tokens: [Some(100), Some(20), None],
            });
        }
        v.add_feedback(&BTreeMap::from([
            (QUALITY.to_owned(), 0.5),
            ("stars".to_owned(), -2.0),
        ]));
        v.add_feedback(&BTreeMap::from([(QUALITY.to_owned(), 1.0)]));
        let r = variant_report(&v, [None; 3]);
        assert_eq!(r["count"], 3);
        assert_eq!(r["error_rate"], 1.0 / 3.0);
        assert_eq!(r["avg_latency_ms"], 3040.0 / 3.0);
        assert_eq!(r["total_cost_usd"], 0.003);
        assert_eq!(r["avg_cost_usd"], 0.0015);
        assert_eq!(r["unpriced_requests"], 1);
        assert_eq!(r["avg_quality"], 0.75);
        assert_eq!(r["feedback_count"], 2);
        assert_eq!(r["other_metrics"]["stars"]["avg"], -2.0);
        assert_eq!(r["tokens"]["prompt"], 300);
        assert_eq!(v.latency_buckets[0], 1, "10 ms ≤ 25 ms");
        assert_eq!(v.latency_buckets[1], 1, "30 ms ≤ 50 ms");
        assert_eq!(v.latency_buckets[7], 1, "3 s ≤ 5 s");
        // As histogram_quantile: rank 1.5 of 3 lies half way through the (25, 50] ms bucket.
        let p = bucket_percentiles(&v.latency_buckets);
        assert!((p[0].unwrap() - 37.5).abs() < 1e-9, "{p:?}");
        assert!((p[2].unwrap() - 4925.0).abs() < 1e-9, "{p:?}");
        let mut over = [0; LATENCY_BUCKETS_S.len() + 1];
        over[LATENCY_BUCKETS_S.len()] = 2;
        assert_eq!(bucket_percentiles(&over)[0], Some(80_000.0));
        assert_eq!(bucket_percentiles(&[0; 13]), [None; 3]);
    }

    const WELCH_T: f64 = 3.853035312655668;
    const WELCH_DF: f64 = 11.849142428350893;
    const WELCH_P: f64 = 0.0023497324801996303;
    const CI_LO: f64 = 0.8065524642685894;
    const CI_HI: f64 = 0.9109475357314106;
    const CHI_STAT: f64 = 2.5;
    const CHI_P: f64 = 0.11384629800665763;

    #[test]
    fn a_snapshot_restores_the_exact_figures() {
        let mut stats = Stats::default();
        for i in 0..(LATENCY_SAMPLES as u64 + 500) {
            let key = ("p".to_owned(), String::new(), 1 + (i % 2) as u32);
            stats.add_request(
                key.clone(),
                &RequestFigures {
                    ok: i % 7 != 0,
                    latency_ms: 0.1 * i as f64 + 1.0 / 3.0,
                    cost_usd: Some(1e-7 * i as f64),
                    tokens: [Some(i), Some(1), None],
                },
            );
            if i % 3 == 0 {
                let metrics = BTreeMap::from([
                    ("quality_score".to_owned(), (i % 10) as f64 / 9.0),
                    ("helpful".to_owned(), 1.0 / (1 + i) as f64),
                ]);
                stats.add_feedback(key, &metrics);
            }
        }
        let json = serde_json::to_string(&stats.snapshot()).unwrap();
        let restored = Stats::restore(serde_json::from_str(&json).unwrap());
        assert_eq!(restored.report("p", None), stats.report("p", None));
        assert_eq!(restored.metric_names("p"), stats.metric_names("p"));
        // Past the sample size the reservoir is a function of the events alone.
        let mut again = Stats::default();
        let mut twice = Stats::default();
        for i in 0..(LATENCY_SAMPLES as u64 * 2) {
            let key = ("p".to_owned(), String::new(), 1);
            let r = RequestFigures {
                ok: true,
                latency_ms: i as f64,
                ..RequestFigures::default()
            };
            again.add_request(key.clone(), &r);
            twice.add_request(key, &r);
        }
        assert_eq!(again.report("p", None), twice.report("p", None));
    }
}
