//! Experiment statistics: per prompt, experiment and version, what the requests cost and how
//! their feedback scored; and the comparison of the variants.
//!
//! Built from the same records as the events file, so replaying that file at start rebuilds
//! them exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use statrs::distribution::{ChiSquared, ContinuousCDF, StudentsT};

use crate::prompts::{Experiment, Split};

/// Latencies kept per variant for percentiles; beyond this, a uniform reservoir sample.
const LATENCY_SAMPLES: usize = 20_000;

/// Where a request's numbers go: prompt, experiment id ("" when not assigned by an
/// experiment) and version.
pub type Key = (String, String, u32);

/// Running mean and variance (Welford), exact and stable for any count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    m2: f64,
}

impl Moments {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Sample variance (n − 1).
    pub fn variance(&self) -> Option<f64> {
        (self.n >= 2).then(|| self.m2 / (self.n - 1) as f64)
    }
}

/// The numbers of one variant.
#[derive(Debug, Clone, Default)]
pub struct VariantStats {
    pub count: u64,
    pub errors: u64,
    latency_sum_ms: f64,
    latencies: Vec<f64>,
    latencies_seen: u64,
    cost_sum: f64,
    priced: u64,
    quality: Moments,
    feedback_count: u64,
    /// Other feedback metrics: name → (sum, count).
    other: BTreeMap<String, (f64, u64)>,
}

impl VariantStats {
    fn add_request(&mut self, ok: bool, latency_ms: f64, cost: Option<f64>) {
        self.count += 1;
        if !ok {
            self.errors += 1;
        }
        self.latency_sum_ms += latency_ms;
        self.latencies_seen += 1;
        if self.latencies.len() < LATENCY_SAMPLES {
            self.latencies.push(latency_ms);
        } else {
            // The slot is a function of the count, not of a random draw, so replaying the
            // same events after a restart rebuilds the very same sample.
            let slot = (splitmix64(self.latencies_seen) % self.latencies_seen) as usize;
            if slot < LATENCY_SAMPLES {
                self.latencies[slot] = latency_ms;
            }
        }
        if let Some(cost) = cost {
            self.cost_sum += cost;
            self.priced += 1;
        }
    }

    fn add_feedback(&mut self, metrics: &BTreeMap<String, f64>) {
        self.feedback_count += 1;
        for (name, value) in metrics {
            if name == "quality_score" {
                self.quality.add(*value);
            } else {
                let e = self.other.entry(name.clone()).or_default();
                e.0 += value;
                e.1 += 1;
            }
        }
    }

    fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
        if sorted.is_empty() {
            return None;
        }
        // Nearest rank.
        let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
        Some(sorted[rank.min(sorted.len()) - 1])
    }

    /// The report of one variant (the seed's names first).
    pub fn report(&self) -> Value {
        let avg = |sum: f64, n: u64| (n > 0).then(|| sum / n as f64);
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let ci = confidence_interval(&self.quality);
        let other: BTreeMap<&String, Value> = self
            .other
            .iter()
            .map(|(k, (sum, n))| (k, json!({"avg": sum / *n as f64, "count": n})))
            .collect();
        json!({
            "count": self.count,
            "avg_quality": (self.quality.n > 0).then_some(self.quality.mean),
            "avg_latency_ms": avg(self.latency_sum_ms, self.count),
            "avg_cost_usd": avg(self.cost_sum, self.priced),
            "total_cost_usd": self.cost_sum,
            "feedback_count": self.feedback_count,
            "quality_count": self.quality.n,
            "error_rate": avg(self.errors as f64, self.count),
            "latency_p50_ms": Self::percentile(&sorted, 50.0),
            "latency_p95_ms": Self::percentile(&sorted, 95.0),
            "latency_p99_ms": Self::percentile(&sorted, 99.0),
            "quality_ci95": ci.map(|(lo, hi)| json!([lo, hi])),
            "unpriced_requests": self.count - self.priced,
            "other_metrics": other,
        })
    }
}

/// A well-mixed hash of a counter (SplitMix64's finaliser).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// [`Stats`] as the checkpoint stores it: every float as its bit pattern, so a restart
/// restores the exact sums, means and samples (a decimal round trip may not).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsSnapshot {
    variants: Vec<VariantSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VariantSnapshot {
    prompt: String,
    experiment: String,
    version: u32,
    count: u64,
    errors: u64,
    latency_sum_ms: u64,
    latencies: Vec<u64>,
    latencies_seen: u64,
    cost_sum: u64,
    priced: u64,
    quality: (u64, u64, u64),
    feedback_count: u64,
    other: BTreeMap<String, (u64, u64)>,
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
                count: v.count,
                errors: v.errors,
                latency_sum_ms: v.latency_sum_ms.to_bits(),
                latencies: v.latencies.iter().map(|x| x.to_bits()).collect(),
                latencies_seen: v.latencies_seen,
                cost_sum: v.cost_sum.to_bits(),
                priced: v.priced,
                quality: (
                    v.quality.n,
                    v.quality.mean.to_bits(),
                    v.quality.m2.to_bits(),
                ),
                feedback_count: v.feedback_count,
                other: v
                    .other
                    .iter()
                    .map(|(k, (sum, n))| (k.clone(), (sum.to_bits(), *n)))
                    .collect(),
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
            names.extend(v.other.keys().cloned());
            let variant = VariantStats {
                count: v.count,
                errors: v.errors,
                latency_sum_ms: f64::from_bits(v.latency_sum_ms),
                latencies: v.latencies.into_iter().map(f64::from_bits).collect(),
                latencies_seen: v.latencies_seen,
                cost_sum: f64::from_bits(v.cost_sum),
                priced: v.priced,
                quality: Moments {
                    n: v.quality.0,
                    mean: f64::from_bits(v.quality.1),
                    m2: f64::from_bits(v.quality.2),
                },
                feedback_count: v.feedback_count,
                other: v
                    .other
                    .into_iter()
                    .map(|(k, (sum, n))| (k, (f64::from_bits(sum), n)))
                    .collect(),
            };
            stats
                .variants
                .insert((v.prompt, v.experiment, v.version), variant);
        }
        stats
    }
}

/// Two-sided 95% confidence interval of the mean (Student's t).
pub fn confidence_interval(m: &Moments) -> Option<(f64, f64)> {
    let var = m.variance()?;
    let t = StudentsT::new(0.0, 1.0, (m.n - 1) as f64)
        .ok()?
        .inverse_cdf(0.975);
    let half = t * (var / m.n as f64).sqrt();
    Some((m.mean - half, m.mean + half))
}

/// Welch's t-test (unequal variances): t, degrees of freedom, two-sided p-value.
pub fn welch(a: &Moments, b: &Moments) -> Option<(f64, f64, f64)> {
    let (va, vb) = (a.variance()?, b.variance()?);
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

/// Every variant's numbers.
#[derive(Debug, Default)]
pub struct Stats {
    variants: HashMap<Key, VariantStats>,
    /// Per prompt, the feedback metric names (other than `quality_score`) it has accepted:
    /// what `--feedback-metrics-max` counts.
    metric_names: HashMap<String, BTreeSet<String>>,
}

impl Stats {
    /// The feedback metric names (other than `quality_score`) a prompt has accepted so far.
    pub fn metric_names(&self, prompt: &str) -> &BTreeSet<String> {
        static NONE: BTreeSet<String> = BTreeSet::new();
        self.metric_names.get(prompt).unwrap_or(&NONE)
    }

    pub fn add_request(&mut self, key: Key, ok: bool, latency_ms: f64, cost: Option<f64>) {
        self.variants
            .entry(key)
            .or_default()
            .add_request(ok, latency_ms, cost);
    }

    pub fn add_feedback(&mut self, key: Key, metrics: &BTreeMap<String, f64>) {
        let others = metrics.keys().filter(|n| *n != "quality_score");
        let names = self.metric_names.entry(key.0.clone()).or_default();
        for name in others {
            if !names.contains(name) {
                names.insert(name.clone());
            }
        }
        self.variants.entry(key).or_default().add_feedback(metrics);
    }

    /// The experiment report of a prompt. With an experiment, its variants (by the current
    /// experiment's id) in the configured order; without one, every version seen outside
    /// experiments.
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
        let stats: Vec<(u32, &VariantStats)> = versions
            .iter()
            .map(|v| {
                let key = (prompt.to_owned(), id.to_owned(), *v);
                (*v, self.variants.get(&key).unwrap_or(&empty))
            })
            .collect();
        let variants: serde_json::Map<String, Value> = stats
            .iter()
            .map(|(v, s)| (v.to_string(), s.report()))
            .collect();
        let srm = experiment.map(|(exp, _)| {
            let shares: Vec<f64> = match &exp.split {
                Split::AB { traffic_split, .. } => vec![1.0 - traffic_split, *traffic_split],
                Split::Weighted { variants } => variants
                    .iter()
                    .map(|v| f64::from(v.weight) / 100.0)
                    .collect(),
            };
            let observed: Vec<u64> = stats.iter().map(|(_, s)| s.count).collect();
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
        json!({
            "prompt": prompt,
            "experiment_id": (!id.is_empty()).then_some(id),
            "variants": variants,
            "comparison": compare(&stats),
            "srm": srm,
        })
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Welch's t-test on quality between every pair of variants. The winner is the variant whose
/// mean quality is significantly higher (p < 0.05) than every other's; the headline p-value is
/// the largest of its pairwise p-values (or, with no winner, of the two best).
fn compare(stats: &[(u32, &VariantStats)]) -> Value {
    const ALPHA: f64 = 0.05;
    let mut pairs = Vec::new();
    for (i, (va, a)) in stats.iter().enumerate() {
        for (vb, b) in &stats[i + 1..] {
            let result = welch(&a.quality, &b.quality);
            pairs.push(json!({
                "a": va.to_string(), "b": vb.to_string(),
                "mean_difference": (a.quality.n > 0 && b.quality.n > 0).then_some(a.quality.mean - b.quality.mean),
                "t": result.map(|r| r.0), "df": result.map(|r| r.1), "p_value": result.map(|r| r.2),
                "significant": result.is_some_and(|r| r.2 < ALPHA),
            }));
        }
    }
    let p_between = |x: u32, y: u32| -> Option<f64> {
        let a = stats.iter().find(|(v, _)| *v == x)?.1;
        let b = stats.iter().find(|(v, _)| *v == y)?.1;
        welch(&a.quality, &b.quality).map(|r| r.2)
    };
    // Variants ranked by mean quality, those with feedback only.
    let mut ranked: Vec<&(u32, &VariantStats)> =
        stats.iter().filter(|(_, s)| s.quality.n > 0).collect();
    ranked.sort_by(|a, b| b.1.quality.mean.total_cmp(&a.1.quality.mean));
    let (mut p_value, mut winner) = (None, None);
    if let [best, rest @ ..] = ranked.as_slice()
        && !rest.is_empty()
        && ranked.len() == stats.len()
    {
        let ps: Vec<Option<f64>> = rest.iter().map(|(v, _)| p_between(best.0, *v)).collect();
        if ps.iter().all(Option::is_some) {
            let worst = ps.iter().flatten().copied().fold(0.0, f64::max);
            p_value = Some(worst);
            let better = rest
                .iter()
                .all(|(_, s)| best.1.quality.mean > s.quality.mean);
            if worst < ALPHA && better {
                winner = Some(best.0.to_string());
            }
        }
    }
    json!({
        "metric": "quality_score",
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

    fn moments(xs: &[f64]) -> Moments {
        let mut m = Moments::default();
        for x in xs {
            m.add(*x);
        }
        m
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
    fn a_snapshot_restores_the_exact_figures() {
        let mut stats = Stats::default();
        for i in 0..(LATENCY_SAMPLES as u64 + 500) {
            let key = ("p".to_owned(), String::new(), 1 + (i % 2) as u32);
            stats.add_request(
                key.clone(),
                i % 7 != 0,
                0.1 * i as f64 + 1.0 / 3.0,
                Some(1e-7 * i as f64),
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
            again.add_request(key.clone(), true, i as f64, None);
            twice.add_request(key, true, i as f64, None);
        }
        assert_eq!(again.report("p", None), twice.report("p", None));
    }

    #[test]
    fn welford_is_exact() {
        let m = moments(&A);
        let mean = A.iter().sum::<f64>() / 8.0;
        let var = A.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 7.0;
        assert!((m.mean - mean).abs() < 1e-15);
        assert!((m.variance().unwrap() - var).abs() < 1e-15);
        assert!(
            welch(&moments(&[1.0]), &moments(&B)).is_none(),
            "needs two samples each"
        );
    }

    const WELCH_T: f64 = 3.853035312655668;
    const WELCH_DF: f64 = 11.849142428350893;
    const WELCH_P: f64 = 0.0023497324801996303;
    const CI_LO: f64 = 0.8065524642685894;
    const CI_HI: f64 = 0.9109475357314106;
    const CHI_STAT: f64 = 2.5;
    const CHI_P: f64 = 0.11384629800665763;
}
