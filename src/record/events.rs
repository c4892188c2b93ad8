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
/// Room reserved for one line: a request's line is about 450 bytes.
pub const LINE_CAPACITY: usize = 640;
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
    pub outcome: super::Outcome,
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

/// A finished request as the request path records it: borrowed, so recording copies nothing
/// but the one line it queues for the file. [`RequestEvent`] is the same read back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRecord<'a> {
    /// `2026-11-25T00:00:00.000Z`
    pub time: &'a str,
    pub request_id: &'a str,
    pub upstream_request_id: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub prompt: Option<&'a str>,
    pub version: Option<u32>,
    pub hash: Option<&'a str>,
    pub selection: Option<&'a str>,
    pub experiment: Option<&'a str>,
    pub model: Option<&'a str>,
    pub status: u16,
    pub outcome: super::Outcome,
    pub stream: bool,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub overhead_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub content: Option<&'a Value>,
}

impl RequestEvent {
    /// The event as the request path records it.
    pub fn record(&self) -> RequestRecord<'_> {
        RequestRecord {
            time: &self.time,
            request_id: &self.request_id,
            upstream_request_id: self.upstream_request_id.as_deref(),
            method: &self.method,
            path: &self.path,
            prompt: self.prompt.as_deref(),
            version: self.version,
            hash: self.hash.as_deref(),
            selection: self.selection.as_deref(),
            experiment: self.experiment.as_deref(),
            model: self.model.as_deref(),
            status: self.status,
            outcome: self.outcome,
            stream: self.stream,
            latency_ms: self.latency_ms,
            ttft_ms: self.ttft_ms,
            overhead_ms: self.overhead_ms,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cached_tokens: self.cached_tokens,
            cost_usd: self.cost_usd,
            content: self.content.as_ref(),
        }
    }
}

impl RequestRecord<'_> {
    /// The request's line in the events file, newline included: byte for byte what
    /// serde_json writes for [`Event::Request`] (numbers and escapes through serde_json's own
    /// formatter), without its machinery — this runs once per request.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"type\":\"request\",\"time\":");
        json::string(out, self.time);
        out.extend_from_slice(b",\"request_id\":");
        json::string(out, self.request_id);
        if let Some(id) = self.upstream_request_id {
            out.extend_from_slice(b",\"upstream_request_id\":");
            json::string(out, id);
        }
        out.extend_from_slice(b",\"method\":");
        json::string(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json::string(out, self.path);
        out.extend_from_slice(b",\"prompt\":");
        json::opt_string(out, self.prompt);
        out.extend_from_slice(b",\"version\":");
        json::opt_int(out, self.version.map(u64::from));
        out.extend_from_slice(b",\"hash\":");
        json::opt_string(out, self.hash);
        out.extend_from_slice(b",\"selection\":");
        json::opt_string(out, self.selection);
        if let Some(experiment) = self.experiment {
            out.extend_from_slice(b",\"experiment\":");
            json::string(out, experiment);
        }
        out.extend_from_slice(b",\"model\":");
        json::opt_string(out, self.model);
        out.extend_from_slice(b",\"status\":");
        json::int(out, u64::from(self.status));
        out.extend_from_slice(b",\"outcome\":\"");
        out.extend_from_slice(self.outcome.as_str().as_bytes());
        out.extend_from_slice(if self.stream {
            b"\",\"stream\":true,\"latency_ms\":"
        } else {
            b"\",\"stream\":false,\"latency_ms\":"
        });
        json::float(out, self.latency_ms);
        out.extend_from_slice(b",\"ttft_ms\":");
        json::opt_float(out, self.ttft_ms);
        out.extend_from_slice(b",\"overhead_ms\":");
        json::opt_float(out, self.overhead_ms);
        out.extend_from_slice(b",\"prompt_tokens\":");
        json::opt_int(out, self.prompt_tokens);
        out.extend_from_slice(b",\"completion_tokens\":");
        json::opt_int(out, self.completion_tokens);
        out.extend_from_slice(b",\"cached_tokens\":");
        json::opt_int(out, self.cached_tokens);
        out.extend_from_slice(b",\"cost_usd\":");
        json::opt_float(out, self.cost_usd);
        if let Some(content) = self.content {
            out.extend_from_slice(b",\"content\":");
            // Writing into a Vec cannot fail, and a `Value` always serialises.
            let _ = serde_json::to_writer(&mut *out, content);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// The pieces of a JSON line, as serde_json's compact output writes them.
mod json {
    use serde_json::ser::{CompactFormatter, Formatter as _};

    /// The request path's JSON string writer: serde_json's bytes (tested against it).
    pub fn string(out: &mut Vec<u8>, text: &str) {
        crate::proxy::json::write_str(out, text);
    }

    pub fn opt_string(out: &mut Vec<u8>, text: Option<&str>) {
        match text {
            Some(text) => string(out, text),
            None => out.extend_from_slice(b"null"),
        }
    }

    pub fn int(out: &mut Vec<u8>, n: u64) {
        let _ = CompactFormatter.write_u64(out, n);
    }

    pub fn opt_int(out: &mut Vec<u8>, n: Option<u64>) {
        match n {
            Some(n) => int(out, n),
            None => out.extend_from_slice(b"null"),
        }
    }

    /// As serde_json: `null` for what is not finite.
    pub fn float(out: &mut Vec<u8>, x: f64) {
        if x.is_finite() {
            let _ = CompactFormatter.write_f64(out, x);
        } else {
            out.extend_from_slice(b"null");
        }
    }

    pub fn opt_float(out: &mut Vec<u8>, x: Option<f64>) {
        match x {
            Some(x) => float(out, x),
            None => out.extend_from_slice(b"null"),
        }
    }
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
    /// One line of the file, newline included.
    Line(Vec<u8>),
    /// Flush everything queued so far, then answer.
    Flush(oneshot::Sender<()>),
    /// Flush, then hand the position reached (every event queued before this one is in the
    /// file) to the checkpoint writer.
    Checkpoint(Box<dyn FnOnce(Position) + Send>),
}

/// A place in the events history: byte `offset` of segment `segment`. The live file is the
/// segment that its next rotation will number; rotated segments are `FILE.NNNNNN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
    /// The file's inode, to notice a file replaced by hand (then it is read whole).
    pub inode: u64,
}

/// How the writer keeps the file bounded and reports failures.
#[derive(Clone)]
pub struct WriterOptions {
    /// Rotate before a line would take the live file past this size.
    pub max_bytes: u64,
    /// Rotated segments kept; older ones are deleted.
    pub kept: usize,
    /// The number the live file gets when it is rotated.
    pub segment: u64,
    /// Counts failed writes (a full disk): serving goes on, the lines are lost.
    pub errors: prometheus_client::metrics::counter::Counter,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_bytes: u64::MAX,
            kept: 3,
            segment: 1,
            errors: Default::default(),
        }
    }
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
    /// Starts the writer on `path`, never rotating. Returns the sink and the writer task.
    pub fn start(path: PathBuf) -> std::io::Result<(EventSink, tokio::task::JoinHandle<()>)> {
        Self::start_with(path, WriterOptions::default())
    }

    /// Starts the writer on `path` with rotation and error counting.
    pub fn start_with(
        path: PathBuf,
        options: WriterOptions,
    ) -> std::io::Result<(EventSink, tokio::task::JoinHandle<()>)> {
        let file = open(&path)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let task = tokio::task::spawn_blocking(move || {
            Writer {
                written: file.get_ref().metadata().map(|m| m.len()).unwrap_or(0),
                file: Some(file),
                current: identity(&path),
                path,
                options,
                torn: false,
                last_error_log: None,
            }
            .run(rx)
        });
        Ok((EventSink { tx }, task))
    }

    /// Queues an event without waiting.
    pub fn send(&self, event: Event) -> Result<(), SendError> {
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        match &event {
            Event::Request(r) => r.record().write_line(&mut line),
            Event::Feedback(_) => {
                // An event always serialises, and writing into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut line, &event);
                line.push(b'\n');
            }
        }
        self.send_line(line)
    }

    /// Queues one line of the file (newline included), as [`RequestRecord::write_line`]
    /// writes it, without waiting.
    pub fn send_line(&self, line: Vec<u8>) -> Result<(), SendError> {
        self.tx.try_send(Message::Line(line)).map_err(send_error)
    }

    /// Queues a checkpoint: `write` runs on the writer's thread with the position that
    /// follows every event queued before it.
    pub fn checkpoint(&self, write: Box<dyn FnOnce(Position) + Send>) -> Result<(), SendError> {
        self.tx
            .try_send(Message::Checkpoint(write))
            .map_err(send_error)
    }

    /// Waits until every event queued before this call is written and flushed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn send_error<T>(e: mpsc::error::TrySendError<T>) -> SendError {
    match e {
        mpsc::error::TrySendError::Full(_) => SendError::Full,
        mpsc::error::TrySendError::Closed(_) => SendError::Closed,
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

/// The path of rotated segment `n` of `path`: `events.jsonl.000007`.
pub fn segment_path(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n:06}"));
    PathBuf::from(name)
}

/// The rotated segments of `path` on disk, oldest first.
pub fn rotated_segments(path: &Path) -> Vec<(u64, PathBuf)> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_owned(),
        None => PathBuf::from("."),
    };
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name();
            let digits = name.to_str()?.strip_prefix(base)?.strip_prefix('.')?;
            if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((digits.parse().ok()?, entry.path()))
        })
        .collect();
    out.sort();
    out
}

/// The writer: blocking, on its own thread from the blocking pool.
struct Writer {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    current: Option<(u64, u64)>,
    /// Bytes in the live file.
    written: u64,
    options: WriterOptions,
    /// A write failed part-way: the next line starts on a fresh one.
    torn: bool,
    last_error_log: Option<Instant>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut last_check = Instant::now();
        while let Some(first) = rx.blocking_recv() {
            let mut flush_waiters = Vec::new();
            let mut next = Some(first);
            // Write everything queued, then flush once.
            while let Some(message) = next.take() {
                match message {
                    Message::Line(line) => {
                        if self.torn {
                            // After a torn write the next line starts on a fresh one.
                            let mut fresh = Vec::with_capacity(line.len() + 1);
                            fresh.push(b'\n');
                            fresh.extend_from_slice(&line);
                            self.write(&fresh);
                        } else {
                            self.write(&line);
                        }
                    }
                    Message::Flush(done) => flush_waiters.push(done),
                    Message::Checkpoint(write) => {
                        if self.flush()
                            && let Some(inode) = self
                                .file
                                .as_ref()
                                .and_then(|f| f.get_ref().metadata().ok().map(|m| m.ino()))
                        {
                            write(Position {
                                segment: self.options.segment,
                                offset: self.written,
                                inode,
                            });
                        }
                    }
                }
                next = rx.try_recv().ok();
            }
            self.flush();
            if last_check.elapsed() >= Duration::from_millis(500) || !flush_waiters.is_empty() {
                last_check = Instant::now();
                let now = identity(&self.path);
                if now.is_none() || now != self.current {
                    match open(&self.path) {
                        Ok(f) => {
                            tracing::info!(file = %self.path.display(), "events file rotated; reopened");
                            self.written = f.get_ref().metadata().map(|m| m.len()).unwrap_or(0);
                            self.file = Some(f);
                            self.current = identity(&self.path);
                        }
                        Err(e) => self.failed("cannot reopen the events file", &e),
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
        self.flush();
    }

    fn write(&mut self, line: &[u8]) {
        if self.written > 0 && self.written + line.len() as u64 > self.options.max_bytes {
            self.rotate();
        }
        let Some(f) = self.file.as_mut() else {
            return;
        };
        match f.write_all(line) {
            Ok(()) => {
                self.written += line.len() as u64;
                self.torn = false;
            }
            Err(e) => {
                self.drop_buffer();
                self.failed("cannot write an event", &e);
            }
        }
    }

    /// Flushes; false (counted and logged) when the disk refused.
    fn flush(&mut self) -> bool {
        let Some(f) = self.file.as_mut() else {
            return false;
        };
        match f.flush() {
            Ok(()) => true,
            Err(e) => {
                self.drop_buffer();
                self.failed("cannot write to the events file", &e);
                false
            }
        }
    }

    /// After a failed write the buffered lines are dropped (they are counted as failed), so
    /// the buffer cannot grow while the disk is full; what reached the file is measured again.
    fn drop_buffer(&mut self) {
        if let Some(f) = self.file.take() {
            let (file, _lost) = f.into_parts();
            self.written = file.metadata().map(|m| m.len()).unwrap_or(self.written);
            self.file = Some(BufWriter::with_capacity(256 * 1024, file));
        }
        self.torn = true;
    }

    fn failed(&mut self, what: &str, e: &std::io::Error) {
        self.options.errors.inc();
        // A full disk fails every write: say so once a minute, not once a line.
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.last_error_log = Some(Instant::now());
            tracing::error!(
                file = %self.path.display(),
                "{what}: {e}; serving goes on, failed writes are counted in promptgate_state_write_errors_total{{file=\"events\"}}"
            );
        }
    }

    /// Renames the live file to the next segment, deletes segments beyond those kept, and
    /// starts a new live file.
    fn rotate(&mut self) {
        if !self.flush() {
            return;
        }
        let target = segment_path(&self.path, self.options.segment);
        if let Err(e) = std::fs::rename(&self.path, &target) {
            self.failed("cannot rotate the events file", &e);
            return;
        }
        self.options.segment += 1;
        let segments = rotated_segments(&self.path);
        let excess = segments.len().saturating_sub(self.options.kept);
        for (_, old) in &segments[..excess] {
            let _ = std::fs::remove_file(old);
        }
        match open(&self.path) {
            Ok(f) => {
                self.file = Some(f);
                self.current = identity(&self.path);
                self.written = 0;
                self.torn = false;
            }
            Err(e) => {
                self.file = None;
                self.failed("cannot open a new events file", &e);
            }
        }
    }
}

/// Reads every event of a file, skipping (and counting) lines that do not parse, such as a
/// line torn by a crash. Blocking.
pub fn replay(path: &Path, each: impl FnMut(Event)) -> std::io::Result<(u64, u64)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    replay_from(BufReader::new(file), each)
}

/// [`replay`] from any reader: the parser of the events file, also fed by the fuzzer.
pub fn replay_from(
    reader: impl BufRead,
    mut each: impl FnMut(Event),
) -> std::io::Result<(u64, u64)> {
    let (mut read, mut skipped) = (0, 0);
    // Lines as bytes: a line that is not UTF-8 (torn inside a character by a crash) is skipped
    // like any unreadable line, not an error that would stop the server from starting.
    for line in reader.split(b'\n') {
        let line = line?;
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<Event>(&line) {
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
            outcome: crate::record::Outcome::Ok,
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
    fn request_lines_are_written_byte_for_byte_as_serde_writes_them() {
        let base = match request("r") {
            Event::Request(r) => *r,
            Event::Feedback(_) => unreachable!(),
        };
        let texts = [
            "plain",
            "",
            "quote \" backslash \\ slash /",
            "tab\tnewline\ncr\rnul\0bell\u{7}del\u{7f}",
            "café ✓ 𝄞 \u{2028}",
        ];
        let floats = [
            0.0,
            -0.0,
            0.1,
            12.5,
            1e-7,
            261.830_649_000_000_05,
            1e21,
            f64::NAN,
            f64::INFINITY,
            f64::MIN_POSITIVE,
        ];
        let mut events = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            for (j, x) in floats.iter().enumerate() {
                let mut e = base.clone();
                let some = (i + j) % 2 == 0;
                e.time = (*text).to_owned();
                e.request_id = format!("{text}-{j}");
                e.upstream_request_id = some.then(|| (*text).to_owned());
                e.method = (*text).to_owned();
                e.path = (*text).to_owned();
                e.prompt = some.then(|| (*text).to_owned());
                e.version = some.then_some(u32::MAX - j as u32);
                e.hash = (!some).then(|| (*text).to_owned());
                e.selection = some.then(|| (*text).to_owned());
                e.experiment = (!some).then(|| (*text).to_owned());
                e.model = some.then(|| (*text).to_owned());
                e.status = [200, 0, 599, u16::MAX][j % 4];
                e.outcome = [
                    crate::record::Outcome::Ok,
                    crate::record::Outcome::ClientClosed,
                ][j % 2];
                e.stream = some;
                e.latency_ms = *x;
                e.ttft_ms = some.then_some(*x);
                e.overhead_ms = (!some).then_some(-*x);
                e.prompt_tokens = some.then_some(u64::MAX);
                e.completion_tokens = some.then_some(0);
                e.cached_tokens = (!some).then_some(7);
                e.cost_usd = some.then_some(*x * 1e-6);
                e.content = some.then(
                    || serde_json::json!({"messages": [{"role": "user", "content": text}], "n": x}),
                );
                events.push(e);
            }
        }
        for e in events {
            let mut line = Vec::new();
            e.record().write_line(&mut line);
            let mut expected = serde_json::to_vec(&Event::Request(Box::new(e))).unwrap();
            expected.push(b'\n');
            assert_eq!(
                String::from_utf8(line).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn lines_that_are_not_utf8_are_skipped() {
        let good = serde_json::to_string(&request("a")).unwrap();
        let mut bytes = good.clone().into_bytes();
        bytes.extend_from_slice(b"\n{\"type\":\"request\",\"request_id\":\"\xe2\x82\n");
        bytes.extend_from_slice(good.as_bytes());
        let (read, skipped) = replay_from(&bytes[..], |_| {}).unwrap();
        assert_eq!((read, skipped), (2, 1));
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
