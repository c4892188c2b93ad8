//! The fleet report against a real Prometheus (Debian's package, installed by
//! scripts/prometheus.sh): three replicas with uneven traffic and feedback, one restarted from
//! nothing half way; the fleet report must equal the report of all their events pooled.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use promptgate::config::Upstream;
use promptgate::record::{Metrics, Pricing, Recorder};
use serde_json::{Value, json};

/// A Prometheus server on loopback, scraping `targets` every second, its data in a temporary
/// folder; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(port: u16, targets: &[SocketAddr]) -> Prometheus {
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!("`prometheus` is not installed: run scripts/prometheus.sh (make test does)")
        });
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
             scrape_configs:\n  - job_name: promptgate\n    static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client
                .get(format!("{}/-/ready", self.url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "prometheus did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a scrape of `target` has failed (its series are then stale).
    async fn wait_down(&self, client: &reqwest::Client, target: SocketAddr) {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.url)).unwrap();
        url.query_pairs_mut()
            .append_pair("query", &format!("up{{instance=\"{target}\"}} == 0"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer: Value = client
                .get(url.clone())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                return;
            }
            assert!(Instant::now() < deadline, "{target} still up: {answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until Prometheus has scraped `target` successfully after `after` (Unix seconds):
    /// that scrape holds everything recorded before.
    async fn wait_scraped(&self, client: &reqwest::Client, target: SocketAddr, after: f64) {
        // timestamp() of the selector itself: of an expression it would be the query's time.
        let up = format!("up{{instance=\"{target}\"}}");
        let query = format!("timestamp({up}) and {up} == 1");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.url)).unwrap();
            url.query_pairs_mut().append_pair("query", &query);
            let answer: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            let at = answer["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            if at.is_some_and(|at| at > after) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{target} was not scraped: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn replica(
    prompts: &Path,
    events: PathBuf,
    listen: Option<SocketAddr>,
    prometheus: &str,
) -> TestApp {
    let prometheus = prometheus.to_owned();
    spawn_with(prompts, Upstream::Echo, move |c| {
        c.events = Some(events);
        c.watch = false;
        c.prometheus = Some(prometheus);
        if let Some(addr) = listen {
            c.listen = addr;
        }
    })
    .await
}

/// Sends `n` requests as users `{tag}-0..n` and feedback for most of them; returns how many
/// requests each version got. Scores depend on the version (version 2 does better), have six
/// decimals and may be negative.
async fn traffic(app: &TestApp, tag: &str, n: usize) {
    for i in 0..n {
        let resp = app
            .post_json(
                "/v1/chat/completions",
                &json!({"model": "gpt-4o-mini", "user": format!("{tag}-{i}"),
                        "messages": [{"role": "user", "content": "x".repeat(i % 7 * 40)}],
                        "prompt": {"id": "checkout"}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let version: u32 = resp.headers()["x-prompt-version"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if i % 5 == 4 {
            continue; // no feedback for every fifth
        }
        let score = ((i * 7919) % 1000) as f64 / 1000.0 - 0.25
            + if version == 2 { 0.15 } else { 0.0 }
            + 0.000_123;
        let resp = app
            .post_json(
                "/v1/feedback",
                &json!({"request_id": id, "metrics": {"quality_score": score}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
}

async fn report(app: &TestApp, query: &str) -> Value {
    let resp = app
        .client
        .get(app.url(&format!("/admin/prompts/checkout/experiment{query}")))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the replica's own report counts `n` requests (recording ends after the
/// response), then returns the time.
async fn recorded(app: &TestApp, n: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = report(app, "").await;
        let count: u64 = r["variants"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v["count"].as_u64().unwrap())
            .sum();
        if count == n {
            return now();
        }
        assert!(Instant::now() < deadline, "{count} of {n} recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The two reports agree: counts and sums exactly, p-values to 1e-9. Latency percentiles
/// differ by design (samples locally, histogram estimates across the fleet).
fn assert_same(fleet: &Value, expected: &Value) {
    assert_eq!(fleet["scope"], "fleet");
    let (f, e) = (
        fleet["variants"].as_object().unwrap(),
        expected["variants"].as_object().unwrap(),
    );
    assert_eq!(f.keys().collect::<Vec<_>>(), e.keys().collect::<Vec<_>>());
    for (version, want) in e {
        let got = &f[version];
        for (field, value) in want.as_object().unwrap() {
            if field.starts_with("latency_p") {
                assert!(got[field].is_number() == value.is_number(), "{field}");
                continue;
            }
            assert_eq!(&got[field], value, "version {version}, `{field}`");
        }
    }
    let (fc, ec) = (&fleet["comparison"], &expected["comparison"]);
    assert_eq!(fc["winner"], ec["winner"]);
    let p = |v: &Value| v["p_value"].as_f64().unwrap();
    assert!((p(fc) - p(ec)).abs() < 1e-9, "{fc} vs {ec}");
    for (a, b) in fc["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(ec["pairs"].as_array().unwrap())
    {
        for k in ["t", "df", "p_value"] {
            assert!(
                (a[k].as_f64().unwrap() - b[k].as_f64().unwrap()).abs() < 1e-9,
                "{k}"
            );
        }
    }
    assert_eq!(fleet["srm"]["observed"], expected["srm"]["observed"]);
    assert!((p(&fleet["srm"]) - p(&expected["srm"])).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_report_equals_the_pooled_events_report() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    write(
        &prompts,
        "checkout/v1.prompt",
        "Checkout helper, version one.",
    );
    write(
        &prompts,
        "checkout/v2.prompt",
        "Checkout helper, version two.",
    );
    write(
        &prompts,
        "checkout/prompt.yaml",
        "experiment: {version_a: 1, version_b: 2, traffic_split: 0.4}\n",
    );
    write(
        &prompts,
        "quiet/v1.prompt",
        "Never called, in no experiment.",
    );
    let events = |name: &str| dir.path().join(format!("events-{name}.jsonl"));
    let prom_port = free_port();
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    let a = replica(&prompts, events("a"), None, &prom_url).await;
    let b = replica(&prompts, events("b"), None, &prom_url).await;
    let c = replica(&prompts, events("c1"), None, &prom_url).await;
    let addrs = [a.server.addr(), b.server.addr(), c.server.addr()];
    let prometheus = Prometheus::start(prom_port, &addrs);
    let client = reqwest::Client::new();
    prometheus.wait_ready(&client).await;

    // One replica: its own report and the fleet's agree exactly.
    traffic(&a, "a", 40).await;
    let t = recorded(&a, 40).await;
    for addr in addrs {
        prometheus.wait_scraped(&client, addr, t).await;
    }
    let local = report(&a, "").await;
    let fleet = report(&a, "?scope=fleet&range=1h").await;
    assert_eq!(
        fleet["fleet"]["replicas"], 3,
        "every replica exports the variants"
    );
    assert_same(&fleet, &local);

    // Uneven traffic on the others; c restarts from nothing (a new events file) half way.
    traffic(&b, "b", 70).await;
    traffic(&c, "c", 25).await;
    let t = recorded(&c, 25).await;
    prometheus.wait_scraped(&client, addrs[2], t).await;
    c.server.shutdown(Duration::from_secs(5)).await.unwrap();
    let c = replica(&prompts, events("c2"), Some(addrs[2]), &prom_url).await;
    prometheus.wait_scraped(&client, addrs[2], now()).await;
    traffic(&c, "c2", 12).await;
    traffic(&a, "a2", 9).await;
    let t = recorded(&c, 12).await.max(recorded(&a, 49).await);
    recorded(&b, 70).await;
    for addr in addrs {
        prometheus.wait_scraped(&client, addr, t).await;
    }

    // Every replica's events, pooled into one set of statistics.
    let pooled = Recorder::new(Arc::new(Metrics::new()), Pricing::default(), None, 1000);
    for app in [&a, &b, &c] {
        app.server.state().recorder.flush().await;
    }
    for name in ["a", "b", "c1", "c2"] {
        pooled.replay(&events(name)).unwrap();
    }
    let set = promptgate::prompts::load(&prompts).unwrap();
    let expected = pooled.experiment_report(set.get("checkout").unwrap());
    assert_eq!(
        expected["variants"]["1"]["count"].as_u64().unwrap()
            + expected["variants"]["2"]["count"].as_u64().unwrap(),
        40 + 70 + 25 + 12 + 9
    );
    // b goes away: its series are stale now, but its numbers are in the window.
    b.server.shutdown(Duration::from_secs(5)).await.unwrap();
    prometheus.wait_down(&client, addrs[1]).await;
    let fleet = report(&a, "?scope=fleet&range=1h").await;
    assert_eq!(fleet["fleet"]["replicas"], 3);
    assert_same(&fleet, &expected);

    // The CLI prints the same JSON.
    let bin = env!("CARGO_BIN_EXE_promptgate");
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(["report", "--prompts", prompts.to_str().unwrap()])
            .args(["--prometheus", &prom_url, "--timeout", "5"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["checkout", "--range", "1h", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_same(&cli, &expected);
    let out = run(&["checkout", "--range", "1h"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 replica(s)") && text.contains("Welch"),
        "{text}"
    );

    // A window after the last request holds no increase: each series' value at the window's
    // start is taken off.
    let idle = t + 5.5 - now();
    if idle > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(idle)).await;
    }
    let quiet = report(&a, "?scope=fleet&range=4s").await;
    for v in ["1", "2"] {
        assert_eq!(quiet["variants"][v]["count"], 0, "{quiet}");
        assert_eq!(quiet["variants"][v]["feedback_count"], 0, "{quiet}");
    }

    // A query that matches nothing says which.
    let out = run(&["quiet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no series match `promptgate_experiment_requests_total{prompt=\"quiet\""),
        "{err}"
    );

    // Prometheus down: a clear error naming it, quickly.
    drop(prometheus);
    let asked = Instant::now();
    let out = run(&["checkout"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&prom_url) && err.contains("unreachable"),
        "{err}"
    );
    let resp = a
        .client
        .get(a.url("/admin/prompts/checkout/experiment?scope=fleet"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "prometheus_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&prom_url)
    );
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn fleet_scope_needs_a_prometheus() {
    let dir = prompts();
    let app = spawn_app(dir.path(), Upstream::Echo).await;
    for (query, needle) in [
        ("?scope=fleet", "--prometheus"),
        ("?scope=galaxy", "unknown scope"),
    ] {
        let resp = app
            .client
            .get(app.url(&format!("/admin/prompts/ab/experiment{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
    let local = app
        .client
        .get(app.url("/admin/prompts/ab/experiment"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(local["scope"], "replica");

    // Scores beyond ±1e9 are refused: their squares would not stay exact.
    let resp = app
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [], "user": "u1", "prompt": {"id": "ab"}}),
        )
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let resp = app
        .post_json(
            "/v1/feedback",
            &json!({"request_id": id, "metrics": {"quality_score": -2e9}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["param"], "metrics.quality_score", "{body}");
}

/// A rollout on two replicas deciding from the fleet's numbers: only the first gets traffic,
/// yet the second takes the same steps, from the same evidence in Prometheus. A third replica
/// started afterwards with an empty state folder (and read-only files, so the completion lives
/// only in the replicas' state) adopts the fleet's state instead of starting at the first step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_takes_the_rollouts_steps_from_the_fleets_numbers() {
    let prompts = tempfile::tempdir().unwrap();
    write(prompts.path(), "checkout/v1.prompt", "Version one.");
    write(prompts.path(), "checkout/v2.prompt", "Version two.");
    write(
        prompts.path(),
        "checkout/prompt.yaml",
        "active: 1\nrollout:\n  from: 1\n  to: 2\n  steps: [50, 100]\n  min_requests: 10\n  min_duration: 1s\n  guards:\n    error_rate: 0.1\n",
    );
    let folder = prompts.path().join("checkout");
    read_only(&folder, true);
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let prometheus = Prometheus::start(free_port(), &addrs);
    let client = http();
    prometheus.wait_ready(&client).await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for (addr, dir) in addrs.iter().zip(&dirs).take(2) {
        replicas.push(
            replica(
                prompts.path(),
                dir.path().join("events.jsonl"),
                Some(*addr),
                &prometheus.url,
            )
            .await,
        );
    }
    let rollout = |app: &TestApp| {
        let url = app.url("/admin/prompts/checkout/experiment");
        let client = app.client.clone();
        async move {
            let r: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            r["rollout"].clone()
        }
    };
    let quiet = &replicas[1];
    assert_eq!(rollout(quiet).await["decided_from"], "fleet");
    // Both start with no saved progress: they read the fleet (nobody runs it yet) first.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rollout(quiet).await["adopting"] == true {
        assert!(
            Instant::now() < deadline,
            "the fleet's state was never read"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut steps_seen = vec![50];
    let mut sent = 0;
    loop {
        let r = rollout(quiet).await;
        let step = r["step"].as_u64().unwrap() as u32;
        if steps_seen.last() != Some(&step) {
            steps_seen.push(step);
        }
        if r["state"] == "completed" {
            break;
        }
        assert_eq!(r["state"], "running", "{r}");
        assert!(
            Instant::now() < deadline,
            "the quiet replica did not complete: {r}"
        );
        // Traffic to the first replica only.
        for i in sent..sent + 10 {
            let resp = replicas[0]
                .post_json(
                    "/v1/chat/completions",
                    &json!({"model": "gpt-4o-mini", "user": format!("u{i}"),
                            "messages": [{"role": "user", "content": "hi"}],
                            "prompt": {"id": "checkout"}}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        sent += 10;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(steps_seen, [50, 100], "the quiet replica took every step");
    let quiet_report = rollout(quiet).await;
    let busy_report = rollout(&replicas[0]).await;
    assert_eq!(busy_report["state"], "completed", "{busy_report}");
    assert_eq!(quiet_report["id"], busy_report["id"]);

    // A new pod: no saved progress. It reads the fleet's state and serves B to everyone; it
    // does not start again at 50%.
    let late = replica(
        prompts.path(),
        dirs[2].path().join("events.jsonl"),
        Some(addrs[2]),
        &prometheus.url,
    )
    .await;
    // Until it has read the fleet, everyone is on A; then it is where the fleet is: at 100%
    // (completed, or running its last step if Prometheus had not yet scraped the completion).
    let deadline = Instant::now() + Duration::from_secs(20);
    let adopted = loop {
        let r = rollout(&late).await;
        if r["adopting"] != true {
            break r;
        }
        assert_eq!(
            r["step"], 0,
            "nobody on B before the fleet's state is read: {r}"
        );
        assert!(
            Instant::now() < deadline,
            "the late replica did not adopt: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(adopted["step"], 100, "{adopted}");
    // It reads the fleet's numbers from the fleet's start, not its own.
    let ms = |r: &Value| {
        chrono::DateTime::parse_from_rfc3339(r["started_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let earliest = ms(&quiet_report).min(ms(&busy_report));
    assert!(
        (ms(&adopted) - earliest).abs() <= 2,
        "{adopted} {busy_report}"
    );
    assert!(
        adopted["state"] == "completed" || adopted["state"] == "running",
        "{adopted}"
    );
    for i in 0..40 {
        let resp = late
            .post_json(
                "/v1/chat/completions",
                &json!({"model": "gpt-4o-mini", "user": format!("u{i}"),
                        "messages": [{"role": "user", "content": "hi"}],
                        "prompt": {"id": "checkout"}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-prompt-version"], "2", "user u{i}");
    }
    read_only(&folder, false);
}

fn read_only(folder: &std::path::Path, on: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if on { 0o555 } else { 0o755 };
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode)).unwrap();
}
