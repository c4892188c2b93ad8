//! The events file: one JSON line per request and per feedback, written by one background
//! task so a request never waits on the disk.
//!
//! The channel is bounded; when it is full the line is counted (`events_dropped`) and logged,
//! never silently lost. Lines are flushed as soon as the channel runs empty. A file rotated away
//! (renamed or deleted by logrotate) is noticed and reopened at its path.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// Lines waiting for the writer before new ones are dropped (and counted).
pub const CHANNEL_CAPACITY: usize = 65_536;
/// After writing a batch the writer rests this long, so under load events are written in
/// batches instead of each request waking the writer thread.
const COALESCE: Duration = Duration::from_millis(5);

/// One line of the events file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    Request(Box<RequestEvent>),
    Feedback(FeedbackEvent),
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEvent {
    pub time: String,
    pub request_id: String,
    /// The upstream's `x-request-id`, which `/v1/feedback` accepts too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
    pub method: String,
    pub path: String,
    pub prompt: Option<String>,
    pub version: Option<u32>,
    pub hash: Option<String>,
    pub selection: Option<String>,
    /// The id of the experiment that assigned the version, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    pub model: Option<String>,
    pub status: u16,
    pub outcome: String,
    pub stream: bool,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub overhead_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    /// The request sent upstream, only with `--log-content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
}

/// Feedback attached to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackEvent {
    pub time: String,
    pub request_id: String,
    pub prompt: String,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    pub metrics: BTreeMap<String, f64>,
}

enum Message {
    Line(Box<Event>),
    /// Flush everything queued so far, then answer.
    Flush(oneshot::Sender<()>),
}

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Message>,
}

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Full,
    Closed,
}

impl EventSink {
    /// Starts the writer on `path`. Returns the sink and the writer task.
    pub fn start(path: PathBuf) -> std::io::Result<(EventSink, tokio::task::JoinHandle<()>)> {
        let file = open(&path)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let task = tokio::task::spawn_blocking(move || write_loop(path, file, rx));
        Ok((EventSink { tx }, task))
    }

    /// Queues an event without waiting.
    pub fn send(&self, event: Event) -> Result<(), SendError> {
        self.tx
            .try_send(Message::Line(Box::new(event)))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::Closed,
            })
    }

    /// Waits until every event queued before this call is written and flushed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn open(path: &Path) -> std::io::Result<BufWriter<File>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    // After a line torn by a crash, start on a fresh line so the next event stays readable.
    let len = file.metadata()?.len();
    if len > 0 {
        use std::io::{Read, Seek, SeekFrom};
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(BufWriter::with_capacity(256 * 1024, file))
}

/// The identity of the file now at `path`, to notice rotation.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The writer: blocking, on its own thread from the blocking pool.
fn write_loop(path: PathBuf, file: BufWriter<File>, mut rx: mpsc::Receiver<Message>) {
    let mut file = Some(file);
    let mut current = identity(&path);
    let mut last_check = Instant::now();
    let mut line = Vec::with_capacity(1024);
    while let Some(first) = rx.blocking_recv() {
        let mut flush_waiters = Vec::new();
        let mut next = Some(first);
        // Write everything queued, then flush once.
        while let Some(message) = next.take() {
            match message {
                Message::Line(event) => {
                    line.clear();
                    if serde_json::to_writer(&mut line, &event).is_ok() {
                        line.push(b'\n');
                        if let Some(f) = file.as_mut()
                            && let Err(e) = f.write_all(&line)
                        {
                            tracing::error!(file = %path.display(), "cannot write an event: {e}");
                        }
                    }
                }
                Message::Flush(done) => flush_waiters.push(done),
            }
            next = rx.try_recv().ok();
        }
        if let Some(f) = file.as_mut()
            && let Err(e) = f.flush()
        {
            tracing::error!(file = %path.display(), "cannot flush the events file: {e}");
        }
        if last_check.elapsed() >= Duration::from_millis(500) || !flush_waiters.is_empty() {
            last_check = Instant::now();
            let now = identity(&path);
            if now.is_none() || now != current {
                match open(&path) {
                    Ok(f) => {
                        tracing::info!(file = %path.display(), "events file rotated; reopened");
                        file = Some(f);
                        current = identity(&path);
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), "cannot reopen the events file: {e}")
                    }
                }
            }
        }
        let waited = !flush_waiters.is_empty();
        for done in flush_waiters {
            let _ = done.send(());
        }
        if !waited {
            std::thread::sleep(COALESCE);
        }
    }
    if let Some(mut f) = file {
        let _ = f.flush();
    }
}

/// Reads every event of a file, skipping (and counting) lines that do not parse, such as a
/// line torn by a crash. Blocking.
pub fn replay(path: &Path, mut each: impl FnMut(Event)) -> std::io::Result<(u64, u64)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let (mut read, mut skipped) = (0, 0);
    for line in BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Event>(&line) {
            Ok(event) => {
                read += 1;
                each(event);
            }
            Err(_) => skipped += 1,
        }
    }
    Ok((read, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn request(id: &str) -> Event {
        Event::Request(Box::new(RequestEvent {
            time: "2026-11-25T00:00:00Z".into(),
            request_id: id.into(),
            upstream_request_id: None,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            prompt: Some("p".into()),
            version: Some(1),
            hash: Some("abc".into()),
            selection: Some("active".into()),
            experiment: None,
            model: Some("gpt-4o".into()),
            status: 200,
            outcome: "ok".into(),
            stream: false,
            latency_ms: 12.5,
            ttft_ms: None,
            overhead_ms: Some(0.1),
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            cached_tokens: Some(0),
            cost_usd: Some(0.0001),
            content: None,
        }))
    }

    #[tokio::test]
    async fn events_are_written_flushed_and_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (sink, _task) = EventSink::start(path.clone()).unwrap();
        for i in 0..100 {
            sink.send(request(&format!("r{i}"))).unwrap();
        }
        sink.flush().await;
        let mut ids = Vec::new();
        let (read, skipped) = replay(&path, |e| {
            if let Event::Request(r) = e {
                ids.push(r.request_id);
            }
        })
        .unwrap();
        assert_eq!((read, skipped), (100, 0));
        assert_eq!(ids[99], "r99");
    }

    #[tokio::test]
    async fn a_rotated_file_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (sink, _task) = EventSink::start(path.clone()).unwrap();
        sink.send(request("before")).unwrap();
        sink.flush().await;
        std::fs::rename(&path, dir.path().join("events.jsonl.1")).unwrap();
        sink.send(request("during")).unwrap();
        sink.flush().await;
        sink.send(request("after")).unwrap();
        sink.flush().await;
        let mut ids = Vec::new();
        replay(&path, |e| {
            if let Event::Request(r) = e {
                ids.push(r.request_id);
            }
        })
        .unwrap();
        assert_eq!(ids, vec!["after".to_owned()]);
        let mut old = Vec::new();
        replay(&dir.path().join("events.jsonl.1"), |e| {
            if let Event::Request(r) = e {
                old.push(r.request_id);
            }
        })
        .unwrap();
        assert_eq!(
            old,
            vec!["before".to_owned(), "during".to_owned()],
            "nothing lost"
        );
    }

    #[test]
    fn torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let good = serde_json::to_string(&request("a")).unwrap();
        std::fs::write(&path, format!("{good}\n{{\"type\":\"req")).unwrap();
        let (read, skipped) = replay(&path, |_| {}).unwrap();
        assert_eq!((read, skipped), (1, 1));
    }
}
