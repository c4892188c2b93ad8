//! The fleet report: every replica's experiment counters ([`super::fleet`]), read back from
//! Prometheus's HTTP API and added up into the same sums a replica's own report is computed
//! from, then through the same function ([`super::stats::report`]).
//!
//! Why not `increase()`: it extrapolates to the window's edges and returns fractions, and it
//! never counts a series' first sample (a variant born in the window would lose its first
//! requests). Instead, per series (one replica's counter), the increase over the window
//! `(t − R, t]` is taken exactly from stored samples: its last value in the window minus its
//! value at `t − R` (zero when the series did not exist yet). A series whose counter went down
//! (a replica restarted from nothing) has its raw samples fetched and each reset's pre-reset
//! value added back, like `increase()`'s reset handling but without extrapolation. The series'
//! increases are then added as integers here, not in PromQL, so nothing is rounded. Latency
//! percentiles are estimates: the duration histogram's buckets, added up the same way, then
//! interpolated as `histogram_quantile` does ([`stats::bucket_percentiles`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures_util::future::try_join_all;
use serde::Deserialize;
use serde_json::{Value, json};

use super::fleet::names;
use super::stats::{
    self, LATENCY_BUCKETS_S, LIMBS, Percentiles, ScoreSums, TOKEN_KINDS, VariantSums,
};
use crate::prompts::Prompt;

/// Why a fleet report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("`{url}` is not a Prometheus URL ({reason}); use e.g. `http://prometheus:9090`")]
    BadUrl { url: String, reason: String },
    #[error("Prometheus at `{url}` is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Prometheus at `{url}` did not answer within {seconds} s")]
    Timeout { url: String, seconds: f64 },
    #[error("Prometheus at `{url}` refused the query `{query}`: {message}")]
    Query {
        url: String,
        query: String,
        message: String,
    },
    #[error(
        "no series match `{query}` at Prometheus `{url}` in the last {range}: is it scraping promptgate's /metrics, and did the prompt serve requests in that time?"
    )]
    NoSeries {
        url: String,
        query: String,
        range: String,
    },
}

/// A Prometheus (or Thanos, Mimir: anything that speaks its HTTP API) to read the fleet's
/// counters from.
#[derive(Debug, Clone)]
pub struct Fleet {
    http: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
}

/// The counter families read back.
const FAMILIES: [&str; 10] = [
    names::REQUESTS,
    names::PRICED,
    names::COST,
    names::LATENCY,
    names::TOKENS,
    names::FEEDBACK,
    names::SCORES,
    names::SCORE_SUM,
    names::SCORE_SQUARES,
    names::BUCKETS,
];

/// The bound on one query to Prometheus unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How far back Prometheus looks for a series' value at an instant (its default lookback).
const LOOKBACK_S: u64 = 300;

impl Fleet {
    /// A client for the Prometheus at `url`; every query is bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, FleetError> {
        let bad = |reason: String| FleetError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let mut parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("it must be http or https".to_owned()));
        }
        if !parsed.path().ends_with('/') {
            let path = format!("{}/", parsed.path());
            parsed.set_path(&path);
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Fleet {
            http,
            url: parsed,
            timeout,
        })
    }

    /// The URL as given, for messages.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The experiment report of `prompt` over the fleet, for the last `range`.
    pub async fn report(&self, prompt: &Prompt, range: Range) -> Result<Value, FleetError> {
        // An experiment's id, or a rollout's (its arms are recorded like an experiment's).
        let id = prompt.experiment_id.as_deref().unwrap_or("");
        let (by_version, replicas) = self
            .variant_sums(&prompt.name, id, range.seconds, &range.text)
            .await?;
        let versions: Vec<u32> = match (&prompt.experiment, &prompt.rollout) {
            (Some(exp), _) => exp.versions(),
            (None, Some(r)) => vec![r.from, r.to],
            (None, None) => by_version.keys().copied().collect(),
        };
        let empty = VariantSums::default();
        let variants: Vec<(u32, &VariantSums, Percentiles)> = versions
            .iter()
            .map(|v| {
                let sums = by_version.get(v).unwrap_or(&empty);
                (*v, sums, stats::bucket_percentiles(&sums.latency_buckets))
            })
            .collect();
        let exp = prompt.experiment.as_ref().zip(Some(id));
        let mut report = stats::report(&prompt.name, exp, &variants);
        if prompt.experiment.is_none() && !id.is_empty() {
            report["experiment_id"] = json!(id);
        }
        report["experiment"] = serde_json::to_value(&prompt.experiment).unwrap_or(Value::Null);
        report["scope"] = json!("fleet");
        report["fleet"] = json!({
            "prometheus": self.url(),
            "range": range.text,
            "replicas": replicas,
            "latency_percentiles": "estimates: interpolated in the request duration histogram's buckets, as histogram_quantile does",
        });
        Ok(report)
    }

    /// Each version's sums over the fleet for one prompt and experiment (or rollout) id, over
    /// the last `seconds`, and how many replicas reported: what the report and a rollout's
    /// fleet-wide decisions are computed from.
    pub async fn variant_sums(
        &self,
        prompt: &str,
        experiment: &str,
        seconds: u64,
        range_text: &str,
    ) -> Result<(BTreeMap<u32, VariantSums>, usize), FleetError> {
        let selector = format!(
            "prompt=\"{}\",experiment=\"{}\"",
            promql_string(prompt),
            promql_string(experiment)
        );
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        let window = Window { end: now, seconds };
        let series = self.increases(&selector, window).await?;
        let requests = series.iter().filter(|s| s.family == names::REQUESTS);
        if requests.clone().next().is_none() {
            return Err(FleetError::NoSeries {
                url: self.url().to_owned(),
                query: format!("{}{{{selector}}}", names::REQUESTS),
                range: range_text.to_owned(),
            });
        }
        let replicas: BTreeSet<&str> = requests
            .filter_map(|s| s.labels.get("instance").map(String::as_str))
            .collect();
        let replicas = replicas.len();
        let mut by_version: BTreeMap<u32, VariantSums> = BTreeMap::new();
        let mut cumulative: BTreeMap<u32, [u64; LATENCY_BUCKETS_S.len() + 1]> = BTreeMap::new();
        for s in &series {
            let Some(version) = s.labels.get("version").and_then(|v| v.parse().ok()) else {
                continue;
            };
            if s.family == names::BUCKETS {
                let le = s.labels.get("le").map(String::as_str).unwrap_or("");
                let bucket = match le {
                    "+Inf" => Some(LATENCY_BUCKETS_S.len()),
                    le => le
                        .parse::<f64>()
                        .ok()
                        .and_then(|le| LATENCY_BUCKETS_S.iter().position(|b| *b == le)),
                };
                if let Some(i) = bucket {
                    cumulative.entry(version).or_default()[i] += s.value;
                }
                continue;
            }
            add(by_version.entry(version).or_default(), s);
        }
        for (version, cumulative) in cumulative {
            let sums = by_version.entry(version).or_default();
            let mut below = 0;
            for (bucket, at_most) in sums.latency_buckets.iter_mut().zip(cumulative) {
                *bucket = at_most.saturating_sub(below);
                below = at_most.max(below);
            }
        }
        Ok((by_version, replicas))
    }

    /// What the fleet's replicas show of one rollout now (`promptgate_rollout_step`): each
    /// replica's state (`running`, `halted`, `completed`) and share, and the earliest start
    /// (`promptgate_rollout_started_timestamp_seconds`), for a replica that has no saved
    /// progress to adopt before it moves anyone to B.
    pub async fn rollout_states(
        &self,
        prompt: &str,
        rollout: &str,
    ) -> Result<(Vec<(String, u32)>, Option<f64>), FleetError> {
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        let selector = format!(
            "{{prompt=\"{}\",rollout=\"{}\"}}",
            promql_string(prompt),
            promql_string(rollout)
        );
        let (series, started) = tokio::try_join!(
            self.query(format!("promptgate_rollout_step{selector}"), now),
            self.query(
                format!("min(promptgate_rollout_started_timestamp_seconds{selector})"),
                now
            ),
        )?;
        let started = started
            .into_iter()
            .find_map(|s| s.value?.1.parse::<f64>().ok());
        let states = series
            .into_iter()
            .filter_map(|s| {
                let state = s.metric.get("state")?.clone();
                let share = s.value?.1.parse::<f64>().ok()?;
                Some((state, share.clamp(0.0, 100.0) as u32))
            })
            .collect();
        Ok((states, started))
    }

    /// Every counter series' exact increase over the window.
    ///
    /// Most series need two cheap instant queries: their value now and at the window's start.
    /// Only the requests family is scanned over the whole window, to find the replicas that
    /// restarted from nothing (`resets`) or are gone (samples in the window, none now); for
    /// those replicas alone every sample is fetched and walked.
    async fn increases(&self, selector: &str, w: Window) -> Result<Vec<Series>, FleetError> {
        let (r, span) = (w.seconds, w.seconds + LOOKBACK_S);
        let all = format!("{{__name__=~\"{}\",{selector}}}", FAMILIES.join("|"));
        let requests = format!("{}{{{selector}}}", names::REQUESTS);
        let (ends, starts, gone, resets) = tokio::try_join!(
            self.query(all.clone(), w.end),
            self.query(format!("{all} offset {r}s"), w.end),
            self.query(
                format!("last_over_time({requests}[{r}s]) unless {requests}"),
                w.end
            ),
            // Over the lookback before the window too, so a reset between the starting value
            // and the first sample in the window is seen.
            self.query(format!("resets({requests}[{span}s]) > 0"), w.end),
        )?;
        // The replicas' variants to walk, as label sets (a series belongs if it has them all).
        let walk_sets: BTreeSet<Labels> = gone
            .into_iter()
            .chain(resets)
            .map(|s| {
                let mut labels = s.metric;
                labels.remove("__name__");
                labels.remove("outcome");
                labels
            })
            .collect();
        let covered = |labels: &Labels| {
            walk_sets
                .iter()
                .any(|set| set.iter().all(|(k, v)| labels.get(k) == Some(v)))
        };
        let mut start_of: HashMap<(String, Labels), u64> = HashMap::new();
        for s in starts {
            let (family, labels) = split_name(s.metric);
            if let Some(v) = s.value.and_then(|(_, v)| counter_value(&v)) {
                start_of.insert((family, labels), v);
            }
        }
        let start = |family: &str, labels: &Labels| {
            start_of
                .get(&(family.to_owned(), labels.clone()))
                .copied()
                .unwrap_or(0)
        };
        let mut out = Vec::new();
        for s in ends {
            let (family, labels) = split_name(s.metric);
            let Some(family) = FAMILIES.iter().find(|f| **f == family) else {
                continue;
            };
            let Some(end) = s.value.and_then(|(_, v)| counter_value(&v)) else {
                continue;
            };
            if covered(&labels) {
                continue;
            }
            let start = start(family, &labels);
            // Went down between the start value and now: a reset the scan did not see.
            let value = if end < start { end } else { end - start };
            out.push(Series {
                family,
                labels,
                value,
            });
        }
        let raws = try_join_all(walk_sets.iter().map(|set| {
            let matchers: String = set
                .iter()
                .map(|(k, v)| format!(",{k}=\"{}\"", promql_string(v)))
                .collect();
            let query = format!(
                "{{__name__=~\"{}\",{selector}{matchers}}}[{span}s]",
                FAMILIES.join("|")
            );
            self.query(query, w.end)
        }))
        .await?;
        let mut walked = BTreeSet::new();
        for s in raws.into_iter().flatten() {
            let (family, labels) = split_name(s.metric);
            let Some(family) = FAMILIES.iter().find(|f| **f == family) else {
                continue;
            };
            // Two walk sets may cover one series: count it once.
            if !walked.insert((family, labels.clone())) {
                continue;
            }
            let samples: Vec<(f64, u64)> = s
                .values
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(t, v)| Some((t, counter_value(&v)?)))
                .collect();
            let value = walk(&samples, start(family, &labels), w.end - r as f64);
            out.push(Series {
                family,
                labels,
                value,
            });
        }
        Ok(out)
    }

    /// One instant query (`/api/v1/query`) at `time`.
    async fn query(&self, query: String, time: f64) -> Result<Vec<RawSeries>, FleetError> {
        let mut url = self
            .url
            .join("api/v1/query")
            .map_err(|e| FleetError::BadUrl {
                url: self.url().to_owned(),
                reason: e.to_string(),
            })?;
        url.query_pairs_mut()
            .append_pair("query", &query)
            .append_pair("time", &format!("{time:.3}"));
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                FleetError::Timeout {
                    url: self.url().to_owned(),
                    seconds: self.timeout.as_secs_f64(),
                }
            } else {
                FleetError::Unreachable {
                    url: self.url().to_owned(),
                    reason: error_chain(&e),
                }
            }
        };
        let response = self.http.get(url).send().await.map_err(failed)?;
        let status = response.status();
        let body = response.bytes().await.map_err(failed)?;
        let refused = |message: String| FleetError::Query {
            url: self.url().to_owned(),
            query: query.clone(),
            message,
        };
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            refused(format!(
                "HTTP {status}, not the Prometheus API's JSON ({e}): {text}"
            ))
        })?;
        match (answer.status.as_str(), answer.data) {
            ("success", Some(data)) => Ok(data.result),
            _ => Err(refused(format!(
                "HTTP {status}: {} {}",
                answer.error_type.unwrap_or_default(),
                answer.error.unwrap_or_default()
            ))),
        }
    }
}

/// A report window: `seconds` up to `end` (Unix seconds).
#[derive(Debug, Clone, Copy)]
struct Window {
    end: f64,
    seconds: u64,
}

/// A report's range, as given (`7d`) and in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub text: String,
    pub seconds: u64,
}

impl std::str::FromStr for Range {
    type Err = String;

    /// `90s`, `30m`, `12h`, `7d`, `2w`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{text}` is not a range: use a whole number and s, m, h, d or w, e.g. `7d`")
        };
        let split = text.len().checked_sub(1).ok_or_else(bad)?;
        let (number, unit) = text.split_at(split);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let unit = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return Err(bad()),
        };
        let seconds = n.checked_mul(unit).filter(|s| *s > 0).ok_or_else(bad)?;
        Ok(Range {
            text: text.to_owned(),
            seconds,
        })
    }
}

type Labels = BTreeMap<String, String>;

/// One counter series' increase over the window.
#[derive(Debug)]
struct Series {
    family: &'static str,
    labels: Labels,
    value: u64,
}

/// The Prometheus HTTP API's answer.
#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    data: Option<Data>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Data {
    result: Vec<RawSeries>,
}

/// A vector (`value`) or matrix (`values`) element.
#[derive(Debug, Deserialize)]
struct RawSeries {
    metric: Labels,
    value: Option<(f64, String)>,
    values: Option<Vec<(f64, String)>>,
}

/// The series' family (its name) and its other labels.
fn split_name(mut labels: Labels) -> (String, Labels) {
    let name = labels.remove("__name__").unwrap_or_default();
    (name, labels)
}

/// A label value inside a PromQL string.
fn promql_string(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A counter's value: a whole number (exact in float64 below 2^53).
fn counter_value(text: &str) -> Option<u64> {
    let v: f64 = text.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| v.round() as u64)
}

/// The increase of a counter from `start` (its value at `from`) through `samples`, a reset
/// (a value lower than the one before) counting the new value from zero.
fn walk(samples: &[(f64, u64)], start: u64, from: f64) -> u64 {
    let mut last = start;
    let mut total = 0;
    for &(_, v) in samples.iter().filter(|(t, _)| *t > from) {
        total += if v >= last { v - last } else { v };
        last = v;
    }
    total
}

/// Adds one series' increase to its variant's sums.
fn add(sums: &mut VariantSums, s: &Series) {
    let label = |name: &str| s.labels.get(name).map(String::as_str).unwrap_or("");
    let limb = || label("limb").parse::<usize>().ok().filter(|l| *l < LIMBS);
    let v = s.value;
    match s.family {
        names::REQUESTS => {
            sums.requests += v;
            if label("outcome") == "error" {
                sums.errors += v;
            }
        }
        names::PRICED => sums.priced += v,
        names::COST => {
            if let Some(l) = limb() {
                sums.cost.limbs[l] += v;
            }
        }
        names::LATENCY => {
            if let Some(l) = limb() {
                sums.latency_us.limbs[l] += v;
            }
        }
        names::TOKENS => {
            if let Some(i) = TOKEN_KINDS.iter().position(|k| *k == label("kind")) {
                sums.tokens[i] += v;
            }
        }
        names::FEEDBACK => sums.feedback += v,
        names::SCORES => score(sums, label("metric")).n += v,
        names::SCORE_SUM => {
            if let Some(l) = limb() {
                let m = score(sums, label("metric"));
                match label("sign") {
                    "negative" => m.negative.limbs[l] += v,
                    _ => m.positive.limbs[l] += v,
                }
            }
        }
        names::SCORE_SQUARES => {
            if let Some(l) = limb() {
                score(sums, label("metric")).squares.limbs[l] += v;
            }
        }
        _ => {}
    }
}

fn score<'a>(sums: &'a mut VariantSums, metric: &str) -> &'a mut ScoreSums {
    sums.scores.entry(metric.to_owned()).or_default()
}

/// The error and its causes, for "connection refused" rather than "error sending request".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The report as a table for a terminal (`promptgate report` without `--json`).
pub fn render_text(report: &Value) -> String {
    use std::fmt::Write as _;
    let num = |v: &Value, digits: usize| match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "-".to_owned(),
    };
    let mut out = String::new();
    let fleet = &report["fleet"];
    let _ = writeln!(
        out,
        "prompt `{}`, experiment {}: {} replica(s), last {}, from {}",
        report["prompt"].as_str().unwrap_or(""),
        report["experiment_id"]
            .as_str()
            .map_or("none".to_owned(), |id| format!("`{id}`")),
        fleet["replicas"],
        fleet["range"].as_str().unwrap_or(""),
        fleet["prometheus"].as_str().unwrap_or(""),
    );
    let _ = writeln!(
        out,
        "{:>8} {:>9} {:>7} {:>9} {:>19} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "version",
        "count",
        "errors",
        "quality",
        "quality 95% CI",
        "feedback",
        "avg ms",
        "~p50 ms",
        "~p95 ms",
        "~p99 ms",
        "avg USD",
        "total USD"
    );
    if let Some(variants) = report["variants"].as_object() {
        for (version, v) in variants {
            let ci = match v["quality_ci95"].as_array() {
                Some(ci) => format!("[{}, {}]", num(&ci[0], 3), num(&ci[1], 3)),
                None => "-".to_owned(),
            };
            let error_rate = match v["error_rate"].as_f64() {
                Some(x) => format!("{:.1}%", 100.0 * x),
                None => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "{:>8} {:>9} {:>7} {:>9} {:>19} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}",
                version,
                v["count"].to_string(),
                error_rate,
                num(&v["avg_quality"], 4),
                ci,
                v["feedback_count"].to_string(),
                num(&v["avg_latency_ms"], 1),
                num(&v["latency_p50_ms"], 0),
                num(&v["latency_p95_ms"], 0),
                num(&v["latency_p99_ms"], 0),
                num(&v["avg_cost_usd"], 6),
                num(&v["total_cost_usd"], 4),
            );
        }
    }
    let c = &report["comparison"];
    let verdict = match c["winner"].as_str() {
        Some(w) => format!("version {w} wins (significant at {})", c["alpha"]),
        None => "no significant winner".to_owned(),
    };
    let _ = writeln!(
        out,
        "comparison: Welch's t-test on quality_score, p = {}: {verdict}",
        num(&c["p_value"], 6)
    );
    let srm = &report["srm"];
    if !srm.is_null() {
        let state = if srm["mismatch"].as_bool() == Some(true) {
            "MISMATCH: the observed split is not the configured one; do not trust the comparison"
        } else {
            "ok"
        };
        let _ = writeln!(
            out,
            "sample ratio: observed {} vs shares {}, chi-square p = {}: {state}",
            srm["observed"],
            srm["expected_shares"],
            num(&srm["p_value"], 6)
        );
    }
    let _ = writeln!(
        out,
        "~ latency percentiles are estimates, interpolated in the duration histogram's buckets as histogram_quantile does"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!("7d".parse::<Range>().unwrap().seconds, 604_800);
        assert_eq!("90s".parse::<Range>().unwrap().seconds, 90);
        for bad in ["", "7", "d", "0h", "1.5h", "-1d", "3y"] {
            assert!(bad.parse::<Range>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_walk_adds_back_what_a_reset_lost() {
        let samples = [(1.0, 5), (2.0, 7), (3.0, 9), (4.0, 2), (5.0, 4), (6.0, 1)];
        // From 5 at t=1: +2 +2, reset to 2 (+2), +2, reset to 1 (+1).
        assert_eq!(walk(&samples, 5, 1.0), 9);
        assert_eq!(walk(&samples, 0, 0.0), 5 + 9);
        assert_eq!(walk(&[], 3, 0.0), 0);
    }

    #[test]
    fn series_add_up_into_the_sums() {
        let series = |family, labels: &[(&str, &str)], value| Series {
            family,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        };
        let mut s = VariantSums::default();
        for x in [
            series(names::REQUESTS, &[("outcome", "ok")], 7),
            series(names::REQUESTS, &[("outcome", "error")], 1),
            series(
                names::SCORE_SUM,
                &[
                    ("metric", "quality_score"),
                    ("sign", "negative"),
                    ("limb", "1"),
                ],
                2,
            ),
            series(
                names::SCORE_SUM,
                &[
                    ("metric", "quality_score"),
                    ("sign", "positive"),
                    ("limb", "0"),
                ],
                3,
            ),
            series(names::SCORES, &[("metric", "quality_score")], 4),
            series(names::COST, &[("limb", "9")], 4),
        ] {
            add(&mut s, &x);
        }
        assert_eq!((s.requests, s.errors), (8, 1));
        let q = &s.scores["quality_score"];
        assert_eq!(q.n, 4);
        assert_eq!(q.negative.total(), Some(2 << 20));
        assert_eq!(q.positive.total(), Some(3));
        assert_eq!(s.cost.total(), Some(0), "a limb out of range is ignored");
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_named() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let fleet = Fleet::new(&url, Duration::from_secs(2)).unwrap();
        let err = fleet.query("up".to_owned(), 0.0).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&url) && text.contains("unreachable"),
            "{text}"
        );
        assert!(Fleet::new("ftp://x", Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn a_prometheus_that_never_answers_times_out() {
        // Accepts connections and says nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let fleet = Fleet::new(&url, Duration::from_millis(300)).unwrap();
        let started = std::time::Instant::now();
        let err = fleet.query("up".to_owned(), 0.0).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        let text = err.to_string();
        assert!(
            text.contains(&url) && text.contains("did not answer within 0.3 s"),
            "{text}"
        );
        hold.abort();
    }
}
