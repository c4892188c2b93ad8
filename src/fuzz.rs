//! Entry points for the fuzz targets in `fuzz/` (`make fuzz`), one per parser that reads
//! outside input. The corpus test (`tests/fuzz_corpus.rs`) feeds every committed corpus file
//! to the same functions as an ordinary test, so CI needs neither nightly nor cargo-fuzz.
//!
//! Each entry point takes raw bytes, must never panic, and checks what must hold whatever the
//! input (a body that names no prompt goes out byte for byte, a replay of any bytes never
//! fails, a tap that strips nothing changes nothing).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;

use crate::fewshot::ModelSlot;
use crate::prompts::{self, PromptSet, manifest, template, version};
use crate::proxy::request::{self, Endpoint};
use crate::record::{self, Pricing};

/// An entry point: raw bytes in, a panic on a finding.
pub type Entry = fn(&[u8]);

/// The fuzz targets, by name: what `make fuzz` runs and the corpus test checks.
pub const TARGETS: &[(&str, Entry)] = &[
    ("version_file", version_file),
    ("manifest_file", manifest_file),
    ("examples_file", examples_file),
    ("pricing_file", pricing_file),
    ("events_replay", events_replay),
    ("checkpoint", checkpoint),
    ("prompt_ref", prompt_ref),
    ("usage_tap", usage_tap),
];

/// `vN.prompt`: front matter and body, then the body compiled as a template.
pub fn version_file(data: &[u8]) {
    // Files are read as UTF-8 text; anything else is refused before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = version::parse(text) else {
        return;
    };
    assert!(raw.body_line >= 1);
    let mut env = template::environment();
    let _ = template::compile(&mut env, "p/v1", &raw.body);
}

/// `prompt.yaml`, parsed and checked against versions 1 to 3.
pub fn manifest_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = manifest::parse(text) else {
        return;
    };
    let mut problems = Vec::new();
    let _ = manifest::check(&raw, &[1, 2, 3], &mut problems);
}

/// `examples.jsonl`.
pub fn examples_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(examples) = prompts::examples::parse(text) {
        for e in examples {
            assert!((0.0..=1.0).contains(&e.quality_score));
        }
    }
}

/// The `--pricing` file, then a cost computed with it.
pub fn pricing_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pricing) = Pricing::with_overrides(text, Path::new("pricing.yaml")) else {
        return;
    };
    let usage = record::Usage {
        prompt_tokens: u64::MAX,
        completion_tokens: u64::MAX,
        cached_tokens: u64::MAX,
    };
    for model in ["gpt-4o", "gpt-4o-2024-08-06", "llama"] {
        if let Some(cost) = pricing.cost(model, &usage) {
            assert!(cost >= 0.0, "a negative cost for `{model}`");
        }
    }
}

/// The events file replayed into statistics and the feedback index at start.
pub fn events_replay(data: &[u8]) {
    let recorder = record::Recorder::new(
        Arc::new(record::Metrics::new()),
        Pricing::default(),
        None,
        64,
    );
    // Whatever the bytes, a replay skips what it cannot read and never fails: a damaged
    // events file must not stop the server from starting.
    if let Err(e) = recorder.replay_from(data) {
        panic!("the replay failed: {e}");
    }
    for prompt in fixture_set().prompts() {
        let _ = recorder.experiment_report(prompt);
    }
}

/// The statistics checkpoint in the state folder, restored into statistics and the feedback
/// index at start.
pub fn checkpoint(data: &[u8]) {
    let events = Path::new("/state/events.jsonl");
    let Ok(Some(saved)) = record::checkpoint::parse(data, events) else {
        return;
    };
    let stats = record::stats::Stats::restore(saved.stats);
    for prompt in fixture_set().prompts() {
        let _ = stats.report(&prompt.name, None);
    }
    let recorder = record::Recorder::new(
        Arc::new(record::Metrics::new()),
        Pricing::default(),
        None,
        16,
    );
    recorder.restore_index(saved.index);
}

/// A request's prompt reference: the `X-Prompt-*` headers and the body, through the same
/// function the proxy, `promptgate render` and the admin preview use. The first byte picks
/// the endpoint and whether a header names the prompt; the first line after it is
/// `X-Prompt-Variables`; the rest is the body.
pub fn prompt_ref(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (variables, body) = match memchr::memchr(b'\n', rest) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let endpoint = if flags & 1 == 0 {
        Endpoint::ChatCompletions
    } else {
        Endpoint::Responses
    };
    let mut headers = HeaderMap::new();
    if flags & 2 != 0 {
        headers.insert("x-prompt-name", HeaderValue::from_static("greeter"));
    }
    if flags & 4 != 0 {
        headers.insert("x-prompt-version", HeaderValue::from_static("1"));
    }
    if !variables.is_empty()
        && let Ok(value) = HeaderValue::from_bytes(variables)
    {
        headers.insert("x-prompt-variables", value);
    }
    let body = Bytes::copy_from_slice(body);
    let prepared = runtime().block_on(request::prepare(
        fixture_set(),
        fixture_model(),
        endpoint,
        &headers,
        body.clone(),
        chrono::DateTime::UNIX_EPOCH,
    ));
    let Ok(prepared) = prepared else {
        return;
    };
    match prepared.served {
        // A request that names no prompt goes upstream as the client sent it.
        None => assert_eq!(prepared.body, body, "an unnamed request was changed"),
        Some(_) => {
            let value: serde_json::Value =
                serde_json::from_slice(&prepared.body).expect("a rendered body is JSON");
            assert!(
                value.get("prompt").is_none(),
                "the `prompt` field went upstream"
            );
        }
    }
}

/// The usage tap on an upstream answer (JSON or server-sent events), fed in chunks. The first
/// byte picks the content type and whether the usage chunk is stripped, the second the chunk
/// size.
pub fn usage_tap(data: &[u8]) {
    let [flags, size, rest @ ..] = data else {
        return;
    };
    let strip = flags & 1 != 0;
    let content_type = match flags >> 1 & 3 {
        0 => "text/event-stream",
        1 => "application/json",
        2 => "text/event-stream; charset=utf-8",
        _ => "text/plain",
    };
    let mut tap = record::usage::UsageTap::new(Some(content_type), strip);
    let size = usize::from(*size).max(1);
    let mut out = Vec::with_capacity(rest.len());
    for chunk in rest.chunks(size) {
        out.extend_from_slice(&tap.pass(Bytes::copy_from_slice(chunk)));
    }
    if let Some(remainder) = tap.remainder() {
        out.extend_from_slice(&remainder);
    }
    if strip {
        assert!(out.len() <= rest.len(), "the tap added bytes");
    } else {
        assert_eq!(out, rest, "a tap that strips nothing changed the answer");
    }
    let observed = tap.finish();
    if let Some(usage) = observed.usage {
        let _ = Pricing::default().cost(observed.model.as_deref().unwrap_or("gpt-4o"), &usage);
    }
}

/// The repository's `prompts/` folder, loaded once.
fn fixture_set() -> &'static PromptSet {
    static SET: OnceLock<PromptSet> = OnceLock::new();
    SET.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
        prompts::load(&dir).unwrap_or_else(|_| PromptSet::empty())
    })
}

fn fixture_model() -> &'static ModelSlot {
    static SLOT: OnceLock<ModelSlot> = OnceLock::new();
    // A folder with no model: prompts that need one answer with an error, quickly.
    SLOT.get_or_init(|| ModelSlot::new("/nonexistent".into(), "/nonexistent".into(), None))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}
