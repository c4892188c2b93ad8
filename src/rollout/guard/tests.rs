//! The guards' statistics, proven by simulation: healthy rollouts rarely halt however often
//! they are looked at, and real regressions halt within a stated number of requests.

use super::*;
use crate::record::stats::{QUALITY, RequestFigures, ScoreSums};
use crate::rollout::plan::{Guard, GuardKind};

fn plan(guards: Vec<Guard>, min_requests: u64) -> Rollout {
    Rollout {
        from: 1,
        to: 2,
        steps: vec![10, 25, 50, 100],
        min_requests,
        min_duration: "0s".to_owned(),
        min_duration_value: std::time::Duration::ZERO,
        guards,
        salt: None,
        halted: false,
    }
}

fn guard(kind: GuardKind, bound: f64) -> Guard {
    Guard { kind, bound }
}

/// One arm's behaviour in a simulation.
#[derive(Clone, Copy)]
struct Arm {
    error_rate: f64,
    quality: f64,
}

fn normal(rng: &mut fastrand::Rng) -> f64 {
    // Box–Muller.
    let u1 = rng.f64().max(1e-300);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Halted { requests: u64, guard: String },
    Completed { requests: u64 },
    Capped,
}

/// Requests between two looks, as a tick sees them.
const LOOK_EVERY: u64 = 20;
/// A rollout still undecided after this many requests counts as not halted.
const CAP: u64 = 60_000;
/// The cap for healthy rollouts at the very edge of their bounds, which stall for long.
const EDGE_CAP: u64 = 20_000;

/// Runs one rollout: each request is a new user, on B when their bucket is below the share;
/// half the requests get a quality score (normal, sd 0.2); the rollout looks every
/// [`LOOK_EVERY`] requests.
fn simulate(rng: &mut fastrand::Rng, plan: &Rollout, a: Arm, b: Arm, cap: u64) -> Outcome {
    let mut sums = [VariantSums::default(), VariantSums::default()];
    let mut index = 0;
    let mut base = [0u64; 2];
    let mut tau2 = Vec::new();
    for n in 1..=cap {
        let arm = usize::from(rng.u32(0..100) < plan.steps[index]);
        let behaviour = [a, b][arm];
        let s = &mut sums[arm];
        s.add_request(&RequestFigures {
            ok: rng.f64() >= behaviour.error_rate,
            latency_ms: 40.0 + 20.0 * rng.f64(),
            cost_usd: Some(0.001),
            tokens: [None; 3],
        });
        if rng.bool() {
            let score = behaviour.quality + 0.2 * normal(rng);
            match s.scores.get_mut(QUALITY) {
                Some(q) => q.add(score),
                None => {
                    let mut q = ScoreSums::default();
                    q.add(score);
                    s.scores.insert(QUALITY.to_owned(), q);
                }
            }
        }
        if n % LOOK_EVERY != 0 {
            continue;
        }
        let checks = evaluate(plan, &sums[0], &sums[1], &mut tau2);
        let step = StepProgress {
            index,
            requests: [sums[0].requests - base[0], sums[1].requests - base[1]],
            aged: true,
        };
        match decide(plan, step, &checks) {
            Decision::Hold(_) => {}
            Decision::Advance => {
                index += 1;
                base = [sums[0].requests, sums[1].requests];
            }
            Decision::Complete => return Outcome::Completed { requests: n },
            Decision::Halt(i) => {
                return Outcome::Halted {
                    requests: n,
                    guard: checks[i].guard.clone(),
                };
            }
        }
    }
    Outcome::Capped
}

const HEALTHY: Arm = Arm {
    error_rate: 0.05,
    quality: 0.7,
};

fn guards(error_bound: f64, quality_bound: f64) -> Vec<Guard> {
    vec![
        guard(GuardKind::ErrorRate, error_bound),
        guard(GuardKind::LatencyP95, 1.25),
        guard(GuardKind::CostPerRequest, 1.5),
        guard(GuardKind::Feedback(QUALITY.to_owned()), quality_bound),
    ]
}

fn halts(plan: &Rollout, seed: u64, runs: usize, a: Arm, b: Arm, cap: u64) -> (usize, Vec<u64>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut halted = 0;
    let mut at = Vec::new();
    for _ in 0..runs {
        if let Outcome::Halted { requests, .. } = simulate(&mut rng, plan, a, b, cap) {
            halted += 1;
            at.push(requests);
        }
    }
    at.sort_unstable();
    (halted, at)
}

#[test]
fn simulated_healthy_rollouts_rarely_halt() {
    // 1,000 A/A rollouts (both versions: 5% errors, quality 0.7), looked at every 20 requests,
    // with the README's bounds.
    let usual = plan(guards(0.02, -0.05), 200);
    let (halted, _) = halts(&usual, 18, 1000, HEALTHY, HEALTHY, CAP);
    assert!(halted <= 50, "{halted} of 1,000 healthy rollouts halted");
    // At the very edge: no rise in errors and no fall in quality allowed at all, so the
    // truth sits on the bound. Still at most 5%.
    let strict = plan(guards(0.0, 0.0), 200);
    let (halted, _) = halts(&strict, 17, 200, HEALTHY, HEALTHY, EDGE_CAP);
    assert!(
        halted <= 10,
        "{halted} of 200 healthy rollouts at the edge halted"
    );
}

#[test]
fn simulated_regressions_halt_within_a_bounded_number_of_requests() {
    let usual = plan(guards(0.02, -0.05), 200);
    // Error rate 5% → 10% (+5 points; the bound is 2): every one of 200 rollouts halts, on
    // the error-rate guard, within 50,000 requests of all users (B, held at its first step of
    // 10%, sees a tenth of them; the median halt comes after about 11,600).
    let broken = Arm {
        error_rate: 0.10,
        ..HEALTHY
    };
    let (halted, at) = halts(&usual, 19, 200, HEALTHY, broken, CAP);
    assert_eq!(halted, 200, "every regression halts");
    let worst = *at.last().unwrap();
    assert!(worst <= 50_000, "the slowest halt took {worst} requests");
    let median = at[at.len() / 2];
    assert!(median <= 20_000, "the median halt took {median} requests");
    // Quality 0.7 → 0.6 (−0.1; the bound is −0.05; half the requests get a score, sd 0.2):
    // every one halts within 20,000 requests (the median after about 5,000).
    let worse = Arm {
        quality: 0.6,
        ..HEALTHY
    };
    let (halted, at) = halts(&usual, 20, 200, HEALTHY, worse, CAP);
    assert_eq!(halted, 200, "every regression halts");
    let worst = *at.last().unwrap();
    assert!(worst <= 20_000, "the slowest halt took {worst} requests");
}

#[test]
fn a_healthy_rollout_completes_through_every_step() {
    let usual = plan(guards(0.02, -0.05), 200);
    let mut rng = fastrand::Rng::with_seed(3);
    let outcome = simulate(&mut rng, &usual, HEALTHY, HEALTHY, CAP);
    assert!(matches!(outcome, Outcome::Completed { .. }), "{outcome:?}");
}

#[test]
fn the_radius_shrinks_with_samples_and_is_wider_than_a_fixed_sample_interval() {
    let tau2 = 0.25 / 200.0;
    let at = |n: f64| radius(0.25 / n, tau2, 0.05);
    assert!(at(100.0) > at(1000.0) && at(1000.0) > at(10_000.0));
    // At the design size it is wider than 1.96 standard errors: the price of looking always.
    let se = (0.25f64 / 200.0).sqrt();
    assert!(
        at(200.0) > 1.96 * se && at(200.0) < 4.0 * se,
        "{}",
        at(200.0) / se
    );
}

#[test]
fn the_latency_guard_reads_the_histogram() {
    let mut a = VariantSums::default();
    let mut b = VariantSums::default();
    for i in 0..400 {
        let ms = 30.0 + (i % 10) as f64;
        a.add_request(&RequestFigures {
            ok: true,
            latency_ms: ms,
            ..RequestFigures::default()
        });
        // B: the same, then three times slower for one request in four.
        let slow = if i % 4 == 0 { 3.0 * ms } else { ms };
        b.add_request(&RequestFigures {
            ok: true,
            latency_ms: slow,
            ..RequestFigures::default()
        });
    }
    // A's p95 lies in the (25, 50] ms bucket: B is held to 1.25 × 50 ms → the 100 ms bound.
    assert_eq!(latency_threshold(&a.latency_buckets, 1.25), Some(2));
    let mut few = [0u64; 13];
    few[1] = 100;
    assert_eq!(
        latency_threshold(&few, 1.25),
        None,
        "100 requests cannot bound a p95 from above"
    );
    let p = plan(vec![guard(GuardKind::LatencyP95, 1.25)], 100);
    let checks = evaluate(&p, &a, &a, &mut Vec::new());
    assert_eq!(checks[0].verdict, Verdict::Holds, "{checks:?}");
    let checks = evaluate(&p, &a, &b, &mut Vec::new());
    assert_eq!(checks[0].verdict, Verdict::Violated, "{checks:?}");
    assert!(checks[0].observed.unwrap() > 1.25, "{checks:?}");
}

#[test]
fn a_step_waits_for_requests_time_and_every_guard() {
    let p = plan(vec![guard(GuardKind::ErrorRate, 0.02)], 50);
    let mut a = VariantSums::default();
    for _ in 0..100 {
        a.add_request(&RequestFigures {
            ok: true,
            ..RequestFigures::default()
        });
    }
    let checks = evaluate(&p, &a, &a, &mut Vec::new());
    let step = |index, requests, aged| StepProgress {
        index,
        requests,
        aged,
    };
    assert_eq!(
        decide(&p, step(0, [100, 10], true), &checks),
        Decision::Hold("waiting for min_requests per arm")
    );
    assert_eq!(
        decide(&p, step(0, [100, 100], false), &checks),
        Decision::Hold("waiting for min_duration")
    );
    assert_eq!(
        decide(&p, step(0, [100, 100], true), &checks),
        Decision::Advance
    );
    // At 100% A gets nothing: B's requests are enough.
    assert_eq!(
        decide(&p, step(3, [0, 100], true), &checks),
        Decision::Complete
    );
    let none = evaluate(&p, &VariantSums::default(), &a, &mut Vec::new());
    assert_eq!(none[0].verdict, Verdict::Waiting);
}

#[test]
fn the_mixing_variance_is_fixed_once_and_kept() {
    let p = plan(vec![guard(GuardKind::ErrorRate, 0.02)], 200);
    let arm = |requests: u64, errors: u64| VariantSums {
        requests,
        errors,
        ..VariantSums::default()
    };
    let mut tau2 = Vec::new();
    // Too few samples to settle: not fixed yet.
    evaluate(&p, &arm(50, 2), &arm(50, 2), &mut tau2);
    assert_eq!(tau2, [None]);
    evaluate(&p, &arm(100, 5), &arm(100, 5), &mut tau2);
    let fixed = tau2[0].expect("fixed at 100 per arm");
    // Later looks with another spread keep it.
    let checks = evaluate(&p, &arm(5000, 1000), &arm(5000, 1000), &mut tau2);
    assert_eq!(tau2, [Some(fixed)]);
    let (lo, hi) = checks[0].interval.unwrap();
    let v = 2.0 * smoothed(1000, 5000) / 5000.0;
    let expected = radius(v, fixed, ALPHA);
    assert!(((hi - lo) / 2.0 - expected).abs() < 1e-12, "{checks:?}");
}

#[test]
fn constant_scores_do_not_collapse_the_interval() {
    let p = plan(
        vec![guard(GuardKind::Feedback(QUALITY.to_owned()), -0.05)],
        20,
    );
    let scored = |score: f64| {
        let mut q = ScoreSums::default();
        for _ in 0..20 {
            q.add(score);
        }
        let mut s = VariantSums {
            requests: 20,
            ..VariantSums::default()
        };
        s.scores.insert(QUALITY.to_owned(), q);
        s
    };
    let checks = evaluate(&p, &scored(1.0), &scored(1.0), &mut Vec::new());
    let (lo, hi) = checks[0].interval.unwrap();
    // Two pseudo-scores of variance 0.05² per arm: the interval keeps a width of the order of
    // the bound, not 1e-6.
    assert!(hi - lo > 0.02, "{checks:?}");
    assert_eq!(smoothed_scores(20, 0.0, 0.0025), 2.0 * 0.0025 / 21.0);
    assert_eq!(smoothed_scores(1, 0.0, 1.0), 1.0);
}
