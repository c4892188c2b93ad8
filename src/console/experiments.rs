//! Experiments in the console: start, change and end an A/B test from a form, and read its
//! report — a table, an SVG chart of each variant's quality with its 95% interval, the
//! comparison's p-value and winner (or how many more samples the observed effect needs), and
//! the sample-ratio check.
//!
//! The numbers are [`crate::record::Recorder::experiment_report`]'s; this module only adds the
//! sample-size estimate and draws.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;
use serde_json::{Value, json};
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::pages::experiment_summary;
use super::session::Viewer;
use super::{PageError, find, page, write_block};
use crate::AppState;
use crate::admin::write::{self, WriteError};
use crate::prompts::{Prompt, Split};

/// z for a two-sided α = 0.05 plus z for 80% power.
const Z_SUM: f64 = 1.959_963_984_540_054 + 0.841_621_233_572_914_3;

/// One variant's row of the report.
#[derive(Debug, Serialize)]
pub struct VariantRow {
    pub version: String,
    pub count: u64,
    pub share: Option<f64>,
    pub expected_share: Option<f64>,
    pub quality: Option<f64>,
    pub quality_n: u64,
    pub ci: Option<(f64, f64)>,
    pub error_rate: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub cost: Option<f64>,
}

/// The quality chart: one interval per variant on a shared axis.
#[derive(Debug, Serialize)]
pub struct Chart {
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub right: f64,
    pub ticks: Vec<(f64, String)>,
    pub rows: Vec<ChartRow>,
}

#[derive(Debug, Serialize)]
pub struct ChartRow {
    pub label: String,
    pub y: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub mean: Option<f64>,
    pub text: String,
    pub winner: bool,
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

/// A p-value as people read it: three significant digits, or "< 0.001".
fn p_text(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".to_owned()
    } else {
        format!("{p:.3}")
    }
}

/// The standard deviation behind a 95% interval of a mean of `n` samples.
fn sd_from_ci(lo: f64, hi: f64, n: u64) -> Option<f64> {
    if n < 2 {
        return None;
    }
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .ok()?
        .inverse_cdf(0.975);
    Some((hi - lo) / 2.0 * (n as f64).sqrt() / t)
}

/// Samples per variant that a two-sided test at α = 0.05 with 80% power needs to detect the
/// observed difference between the two best variants, and how many more that is than the
/// smaller of them has. `None` when it cannot be estimated (too little feedback, no difference).
pub fn samples_needed(rows: &[VariantRow]) -> Option<(u64, u64)> {
    let mut ranked: Vec<&VariantRow> = rows.iter().filter(|r| r.quality.is_some()).collect();
    ranked.sort_by(|a, b| {
        b.quality
            .unwrap_or(0.0)
            .total_cmp(&a.quality.unwrap_or(0.0))
    });
    let [a, b, ..] = ranked.as_slice() else {
        return None;
    };
    let sd = |r: &VariantRow| r.ci.and_then(|(lo, hi)| sd_from_ci(lo, hi, r.quality_n));
    let (sa, sb) = (sd(a)?, sd(b)?);
    let d = (a.quality? - b.quality?).abs();
    if d <= f64::EPSILON {
        return None;
    }
    let var = (sa * sa + sb * sb) / 2.0;
    let n = (2.0 * Z_SUM * Z_SUM * var / (d * d)).ceil();
    if !n.is_finite() || n > 1e12 {
        return None;
    }
    let n = n as u64;
    let have = a.quality_n.min(b.quality_n);
    Some((n, n.saturating_sub(have)))
}

fn rows_of(report: &Value, p: &Prompt) -> Vec<VariantRow> {
    let shares: Vec<f64> = report["srm"]["expected_shares"]
        .as_array()
        .map(|a| a.iter().filter_map(num).collect())
        .unwrap_or_default();
    let Some(variants) = report["variants"].as_object() else {
        return Vec::new();
    };
    let order: Vec<String> = match &p.experiment {
        Some(e) => e.versions().iter().map(u32::to_string).collect(),
        None => variants.keys().cloned().collect(),
    };
    let total: u64 = variants.values().filter_map(|v| v["count"].as_u64()).sum();
    order
        .iter()
        .enumerate()
        .filter_map(|(i, version)| {
            let v = variants.get(version)?;
            let count = v["count"].as_u64().unwrap_or(0);
            Some(VariantRow {
                version: version.clone(),
                count,
                share: (total > 0).then(|| count as f64 / total as f64),
                expected_share: shares.get(i).copied(),
                quality: num(&v["avg_quality"]),
                quality_n: v["quality_count"].as_u64().unwrap_or(0),
                ci: v["quality_ci95"]
                    .as_array()
                    .and_then(|a| Some((num(a.first()?)?, num(a.get(1)?)?))),
                error_rate: num(&v["error_rate"]),
                p50: num(&v["latency_p50_ms"]),
                p95: num(&v["latency_p95_ms"]),
                p99: num(&v["latency_p99_ms"]),
                cost: num(&v["avg_cost_usd"]),
            })
        })
        .collect()
}

fn chart(rows: &[VariantRow], winner: Option<&str>) -> Option<Chart> {
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            let (lo, hi) = r.ci.unzip();
            [r.quality, lo, hi]
        })
        .flatten()
        .collect();
    if values.is_empty() {
        return None;
    }
    let (min, max) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let span = (max - min).max(0.05);
    let (lo_axis, hi_axis) = (min - span * 0.1, max + span * 0.1);
    let (width, left, right) = (640.0, 70.0, 600.0);
    let x = |v: f64| left + (v - lo_axis) / (hi_axis - lo_axis) * (right - left);
    let row_h = 34.0;
    let chart_rows: Vec<ChartRow> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| ChartRow {
            label: format!("v{}", r.version),
            y: 24.0 + i as f64 * row_h,
            lo: r.ci.map(|c| x(c.0)),
            hi: r.ci.map(|c| x(c.1)),
            mean: r.quality.map(x),
            text: match (r.quality, r.ci) {
                (Some(m), Some((lo, hi))) => format!("{m:.3} [{lo:.3}, {hi:.3}]"),
                (Some(m), None) => format!("{m:.3} (interval needs 2+ scores)"),
                _ => "no quality feedback yet".to_owned(),
            },
            winner: winner == Some(r.version.as_str()),
        })
        .collect();
    let height = 24.0 + rows.len() as f64 * row_h + 24.0;
    let ticks = (0..=4)
        .map(|i| {
            let v = lo_axis + (hi_axis - lo_axis) * f64::from(i) / 4.0;
            (x(v), format!("{v:.2}"))
        })
        .collect();
    Some(Chart {
        width,
        height,
        left,
        right,
        ticks,
        rows: chart_rows,
    })
}

/// The weights the form starts from: the running experiment's, else 50/50 of the two newest.
fn weights(p: &Prompt) -> Vec<(u32, u32)> {
    let current: HashMap<u32, u32> = match p.experiment.as_ref().map(|e| &e.split) {
        Some(Split::AB {
            version_a,
            version_b,
            traffic_split,
        }) => {
            let b = (traffic_split * 100.0).round() as u32;
            [(*version_a, 100 - b), (*version_b, b)]
                .into_iter()
                .collect()
        }
        Some(Split::Weighted { variants }) => {
            variants.iter().map(|v| (v.version, v.weight)).collect()
        }
        None => p.versions.keys().rev().take(2).map(|v| (*v, 50)).collect(),
    };
    p.versions
        .keys()
        .rev()
        .map(|v| (*v, current.get(v).copied().unwrap_or(0)))
        .collect()
}

/// `GET /console/prompts/{name}/experiment`
pub async fn page_get(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let p = find(&state, &viewer, &name)?;
    Ok(render(&state, &viewer, &p, None))
}

fn render(state: &AppState, viewer: &Viewer, p: &Prompt, error: Option<String>) -> Response {
    let report = state.recorder.experiment_report(p);
    let rows = rows_of(&report, p);
    let comparison = &report["comparison"];
    let winner = comparison["winner"].as_str();
    let needed = if winner.is_none() {
        samples_needed(&rows)
    } else {
        None
    };
    let srm = &report["srm"];
    page(
        "experiment.html",
        viewer,
        ctx! {
            p => p, experiment => p.experiment.as_ref().map(experiment_summary),
            salt => p.experiment.as_ref().and_then(|e| e.salt.clone()).unwrap_or_default(),
            experiment_id => report["experiment_id"].as_str(),
            rows => rows, chart => chart(&rows, winner),
            p_value => num(&comparison["p_value"]).map(p_text), winner => winner,
            needed => needed,
            srm_mismatch => srm["mismatch"].as_bool().unwrap_or(false),
            srm_p => num(&srm["p_value"]).map(p_text), srm_note => srm["note"].as_str(),
            weights => weights(p), error => error,
            write_block => write_block(state, viewer),
            rollout => state.rollouts.status(&p.name),
        },
    )
}

/// `POST /console/prompts/{name}/experiment` `w_N=weight…&salt=`: starts or changes it.
pub async fn start(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
    Form(fields): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let p = find(&state, &viewer, &name)?;
    if let Some(block) = write_block(&state, &viewer) {
        return Err(PageError::new(
            &viewer,
            StatusCode::FORBIDDEN,
            block.message,
        ));
    }
    let mut variants = Vec::new();
    for (key, value) in &fields {
        let Some(version) = key.strip_prefix("w_").and_then(|v| v.parse::<u32>().ok()) else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let Ok(weight) = value.parse::<u32>() else {
            return Ok(render(
                &state,
                &viewer,
                &p,
                Some(format!(
                    "the weight of v{version} must be a whole number, not `{value}`"
                )),
            ));
        };
        if weight > 0 {
            variants.push((version, weight));
        }
    }
    variants.sort_unstable();
    let mut body = json!({
        "variants": variants.iter().map(|(v, w)| json!({"version": v, "weight": w})).collect::<Vec<_>>(),
    });
    if let Some(salt) = fields
        .get("salt")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        body["salt"] = json!(salt);
    }
    let block = write::experiment_block(&body).map_err(|e| PageError::api(&viewer, e.into()))?;
    let prompt = name.clone();
    let refused: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let keep = refused.clone();
    let written = write::commit(&state, viewer.actor(), move |writer| {
        match writer.set_experiment(&prompt, Some(&block)) {
            Ok(()) => Ok(((), write::Change::experiment(&prompt, true))),
            Err(WriteError::Invalid(problems)) => {
                *keep.lock().unwrap_or_else(|e| e.into_inner()) =
                    problems.0.iter().map(|p| p.message.clone()).collect();
                Err(WriteError::Invalid(problems))
            }
            Err(e) => Err(e),
        }
    })
    .await;
    let invalid = std::mem::take(&mut *refused.lock().unwrap_or_else(|e| e.into_inner()));
    match written {
        Ok(((), outcome)) => Ok(experiment_done(&name, &outcome)),
        Err(_) if !invalid.is_empty() => Ok(render(&state, &viewer, &p, Some(invalid.join("; ")))),
        Err(e) => Err(PageError::api(&viewer, e)),
    }
}

/// `POST /console/prompts/{name}/experiment/end`
pub async fn end(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    find(&state, &viewer, &name)?;
    if let Some(block) = write_block(&state, &viewer) {
        return Err(PageError::new(
            &viewer,
            StatusCode::FORBIDDEN,
            block.message,
        ));
    }
    let prompt = name.clone();
    let ((), outcome) = write::commit(&state, viewer.actor(), move |writer| {
        writer.set_experiment(&prompt, None)?;
        Ok(((), write::Change::experiment(&prompt, false)))
    })
    .await
    .map_err(|e| PageError::api(&viewer, e))?;
    Ok(experiment_done(&name, &outcome))
}

/// Back to the experiment page; a change waiting for review goes to the prompt's page, which
/// lists it.
fn experiment_done(name: &str, outcome: &Value) -> Response {
    if outcome.get("review").is_some() {
        return super::change::done(name, "review", None, outcome);
    }
    Redirect::to(&format!("/console/prompts/{name}/experiment")).into_response()
}

#[derive(Serialize)]
struct Running {
    name: String,
    summary: String,
    requests: u64,
    winner: Option<String>,
    p_value: Option<String>,
    srm_mismatch: bool,
}

/// `GET /console/experiments`: every running experiment.
pub async fn overview(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    let prompts = state.prompts.load();
    let running: Vec<Running> = prompts
        .prompts()
        .filter_map(|p| {
            let e = p.experiment.as_ref()?;
            let report = state.recorder.experiment_report(p);
            Some(Running {
                name: p.name.clone(),
                summary: experiment_summary(e),
                requests: report["variants"]
                    .as_object()
                    .map(|v| v.values().filter_map(|v| v["count"].as_u64()).sum())
                    .unwrap_or(0),
                winner: report["comparison"]["winner"].as_str().map(str::to_owned),
                p_value: num(&report["comparison"]["p_value"]).map(p_text),
                srm_mismatch: report["srm"]["mismatch"].as_bool().unwrap_or(false),
            })
        })
        .collect();
    page("experiments.html", &viewer, ctx! { running => running })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: &str, quality: f64, ci: (f64, f64), n: u64) -> VariantRow {
        VariantRow {
            version: version.into(),
            count: n,
            share: None,
            expected_share: None,
            quality: Some(quality),
            quality_n: n,
            ci: Some(ci),
            error_rate: None,
            p50: None,
            p95: None,
            p99: None,
            cost: None,
        }
    }

    #[test]
    fn samples_needed_follows_the_usual_formula() {
        // sd 0.1 each (n = 10: t(9) = 2.2622; half-width = 2.2622 * 0.1 / sqrt(10)),
        // difference 0.05: n = 2 * 2.8016^2 * 0.01 / 0.0025 = 62.8 → 63 per variant.
        let h = 2.262_157_162_740_992 * 0.1 / 10f64.sqrt();
        let rows = [
            row("1", 0.80, (0.80 - h, 0.80 + h), 10),
            row("2", 0.75, (0.75 - h, 0.75 + h), 10),
        ];
        assert_eq!(samples_needed(&rows), Some((63, 53)));
        let same = [row("1", 0.8, (0.7, 0.9), 10), row("2", 0.8, (0.7, 0.9), 10)];
        assert_eq!(samples_needed(&same), None);
    }
}
