//! The request's one log line, written when it is over: in text, laid out as the tracing
//! subscriber lays out its own lines but written directly, by hand — it is written once per
//! request, so it skips the formatting machinery; in JSON, one field per value through the
//! subscriber.

use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
use serde_json::ser::{CompactFormatter, Formatter as _};

use super::request::Served;
use crate::record::{Outcome, Usage};

/// How the request line is written: JSON logs keep one field per value through the subscriber;
/// text logs at a terminal go through it as one preformatted message (it colours the level);
/// text logs into a file or a pipe are written directly, in the subscriber's own layout.
static LOG_MODE: AtomicU8 = AtomicU8::new(LOG_JSON);
const LOG_JSON: u8 = 0;
const LOG_TEXT: u8 = 1;
const LOG_PLAIN: u8 = 2;

/// Tells the request path how logs are written: plain text or JSON, with colours or not.
pub fn log_as_text(text: bool, ansi: bool) {
    let mode = match (text, ansi) {
        (false, _) => LOG_JSON,
        (true, true) => LOG_TEXT,
        (true, false) => LOG_PLAIN,
    };
    LOG_MODE.store(mode, Ordering::Relaxed);
}

/// The request's one log line.
pub(super) struct RequestLine<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub outcome: Outcome,
    pub served: Option<&'a Served>,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub overhead: Option<Duration>,
    pub model: Option<&'a str>,
    pub usage: Option<Usage>,
    pub cost: Option<f64>,
    pub cause: Option<&'a str>,
}

impl RequestLine<'_> {
    /// Writes the line the way logs are configured; `now` is its timestamp.
    pub fn log(&self, now: &Civil) {
        match LOG_MODE.load(Ordering::Relaxed) {
            LOG_PLAIN => self.write_plain(now),
            LOG_TEXT => {
                // One preformatted message through the subscriber (it colours it).
                let text = self.to_string();
                tracing::info!(target: "promptgate::request", "{text}");
            }
            _ => self.log_fields(),
        }
    }

    /// The line as `tracing-subscriber`'s text format lays it out without colours
    /// (`2026-01-31T12:00:00.123456Z  INFO promptgate::request: request request_id=…`), written
    /// to stderr in one call.
    fn write_plain(&self, now: &Civil) {
        let mut buf = Vec::with_capacity(384);
        timestamp(&mut buf, now);
        buf.extend_from_slice(b"  INFO promptgate::request: ");
        self.write_to(&mut buf);
        buf.push(b'\n');
        let _ = std::io::stderr().lock().write_all(&buf);
    }

    fn log_fields(&self) {
        let served = self.served;
        let usage = self.usage;
        tracing::info!(
            target: "promptgate::request",
            request_id = self.request_id,
            method = self.method,
            path = self.path,
            status = self.status,
            outcome = self.outcome.as_str(),
            prompt = served.map(|s| s.name.as_str()),
            version = served.map(|s| s.version),
            hash = served.map(|s| s.hash.as_str()),
            selection = served.map(|s| s.selection.as_str()),
            latency_ms = %Millis(self.latency),
            ttft_ms = self.ttft.map(|t| tracing::field::display(Millis(t))),
            overhead_us = self.overhead.map(|o| o.as_micros() as u64),
            model = self.model,
            prompt_tokens = usage.map(|u| u.prompt_tokens),
            completion_tokens = usage.map(|u| u.completion_tokens),
            cost_usd = self.cost,
            error = self.cause,
            "request"
        );
    }

    /// The message: `request request_id=… method=… path=… status=… outcome=…` and the rest.
    /// The request id and the model come from outside: quoted, so they cannot forge fields.
    /// The method, the path (from the request line) and the names promptgate validated hold
    /// no spaces or quotes.
    pub fn write_to(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"request request_id=");
        quoted(buf, self.request_id);
        buf.extend_from_slice(b" method=");
        buf.extend_from_slice(self.method.as_bytes());
        buf.extend_from_slice(b" path=");
        buf.extend_from_slice(self.path.as_bytes());
        buf.extend_from_slice(b" status=");
        push_int(buf, u64::from(self.status));
        buf.extend_from_slice(b" outcome=");
        buf.extend_from_slice(self.outcome.as_str().as_bytes());
        if let Some(s) = self.served {
            buf.extend_from_slice(b" prompt=");
            buf.extend_from_slice(s.name.as_bytes());
            buf.extend_from_slice(b" version=");
            push_int(buf, u64::from(s.version));
            buf.extend_from_slice(b" hash=");
            buf.extend_from_slice(s.hash.as_bytes());
            buf.extend_from_slice(b" selection=");
            buf.extend_from_slice(s.selection.as_str().as_bytes());
        }
        buf.extend_from_slice(b" latency_ms=");
        push_millis(buf, self.latency);
        if let Some(t) = self.ttft {
            buf.extend_from_slice(b" ttft_ms=");
            push_millis(buf, t);
        }
        if let Some(o) = self.overhead {
            buf.extend_from_slice(b" overhead_us=");
            push_micros(buf, o);
        }
        if let Some(m) = self.model {
            buf.extend_from_slice(b" model=");
            quoted(buf, m);
        }
        if let Some(u) = self.usage {
            buf.extend_from_slice(b" prompt_tokens=");
            push_int(buf, u.prompt_tokens);
            buf.extend_from_slice(b" completion_tokens=");
            push_int(buf, u.completion_tokens);
        }
        if let Some(c) = self.cost {
            let _ = write!(buf, " cost_usd={c}");
        }
        if let Some(e) = self.cause {
            let _ = write!(buf, " error={e:?}");
        }
    }
}

impl fmt::Display for RequestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Vec::with_capacity(320);
        self.write_to(&mut buf);
        // Every piece written is UTF-8.
        f.write_str(&String::from_utf8_lossy(&buf))
    }
}

/// Milliseconds with three decimals, for the JSON log line.
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Vec::with_capacity(16);
        push_millis(&mut buf, self.0);
        f.write_str(&String::from_utf8_lossy(&buf))
    }
}

/// `n` in decimal (two digits a step, through serde_json's integer writer).
fn push_int(buf: &mut Vec<u8>, n: u64) {
    let _ = CompactFormatter.write_u64(buf, n);
}

/// `1234.567`: milliseconds with three decimals.
fn push_millis(buf: &mut Vec<u8>, d: Duration) {
    // In 64 bits: whole milliseconds are the seconds' and the sub-second micros'.
    let micros = d.subsec_micros();
    let whole = d
        .as_secs()
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(u64::from(micros / 1000)));
    match whole {
        Some(ms) => push_int(buf, ms),
        None => {
            let _ = write!(buf, "{}", d.as_micros() / 1000);
        }
    }
    let frac = micros % 1000;
    buf.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn push_micros(buf: &mut Vec<u8>, d: Duration) {
    match u64::try_from(d.as_micros()) {
        Ok(us) => push_int(buf, us),
        Err(_) => {
            let _ = write!(buf, "{}", d.as_micros());
        }
    }
}

/// A moment's calendar fields, in UTC: read once, for the log line and the event.
pub(super) struct Civil {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
}

impl Civil {
    pub fn of(now: DateTime<Utc>) -> Self {
        // From the naive time: a `DateTime`'s own accessors add its (zero) offset each call.
        let t = now.naive_utc();
        Civil {
            year: t.year(),
            month: t.month(),
            day: t.day(),
            hour: t.hour(),
            minute: t.minute(),
            second: t.second(),
            nanos: t.nanosecond(),
        }
    }

    /// `2026-01-31T12:00:00.` into the first 20 bytes of `out`, with the last four digits of
    /// `year`.
    fn write_seconds(&self, year: u32, out: &mut [u8]) {
        fn two(out: &mut [u8], n: u32) {
            out[0] = b'0' + (n / 10 % 10) as u8;
            out[1] = b'0' + (n % 10) as u8;
        }
        two(&mut out[0..2], year / 100);
        two(&mut out[2..4], year);
        out[4] = b'-';
        two(&mut out[5..7], self.month);
        out[7] = b'-';
        two(&mut out[8..10], self.day);
        out[10] = b'T';
        two(&mut out[11..13], self.hour);
        out[13] = b':';
        two(&mut out[14..16], self.minute);
        out[16] = b':';
        two(&mut out[17..19], self.second);
        out[19] = b'.';
    }
}

/// `n`'s last `width` digits, zero-padded, into `out`.
fn fraction(out: &mut [u8], mut n: u32) {
    for at in (0..out.len()).rev() {
        out[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `2026-01-31T12:00:00.123456Z`, as `tracing-subscriber` writes its timestamps.
pub(super) fn timestamp(buf: &mut Vec<u8>, civil: &Civil) {
    let mut out = [0u8; 27];
    civil.write_seconds(u32::try_from(civil.year).unwrap_or(0), &mut out);
    // A leap second's nanoseconds run past 10⁹; the subscriber shows them as 59.999999.
    fraction(&mut out[20..26], (civil.nanos / 1000).min(999_999));
    out[26] = b'Z';
    buf.extend_from_slice(&out);
}

/// The length of an events file's time: `2026-01-31T12:00:00.123Z`.
pub(super) const EVENT_TIME_LEN: usize = 24;

/// `2026-01-31T12:00:00.123Z`, as chrono's RFC 3339 with milliseconds writes it, into `out`;
/// `None` for what that layout does not hold (a year past 9999, a leap second), which is then
/// left to chrono.
pub(super) fn event_time<'a>(out: &'a mut [u8; EVENT_TIME_LEN], civil: &Civil) -> Option<&'a str> {
    let year = u32::try_from(civil.year).ok().filter(|y| *y <= 9999)?;
    if civil.nanos >= 1_000_000_000 {
        return None;
    }
    civil.write_seconds(year, out);
    fraction(&mut out[20..23], civil.nanos / 1_000_000);
    out[23] = b'Z';
    std::str::from_utf8(out).ok()
}

/// Writes `text` as it is when it is plainly a token (the common case: a uuid, a model name),
/// else quoted and escaped, so a value from outside cannot forge fields in the log line.
fn quoted(buf: &mut Vec<u8>, text: &str) {
    /// The bytes of a plain token: ASCII letters and digits, `-`, `_`, `.`, `:`, `/`.
    const TOKEN: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/');
            b += 1;
        }
        table
    };
    let plain = !text.is_empty() && text.bytes().all(|b| TOKEN[usize::from(b)]);
    if plain {
        buf.extend_from_slice(text.as_bytes());
    } else {
        let _ = write!(buf, "{text:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_laid_out_as_the_subscriber_lays_them_out() {
        let mut buf = Vec::new();
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-09T03:04:05.000678901Z")
            .unwrap()
            .with_timezone(&Utc);
        timestamp(&mut buf, &Civil::of(t));
        assert_eq!(buf, b"2026-01-09T03:04:05.000678Z");
    }

    #[test]
    fn event_times_are_laid_out_as_chrono_lays_them_out() {
        for text in [
            "2026-01-09T03:04:05.000678901Z",
            "1999-12-31T23:59:59.999999999Z",
            "2026-11-25T00:00:00Z",
            "0001-01-01T00:00:00.1Z",
            "9999-12-31T23:59:59.5Z",
        ] {
            let t = DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc);
            let mut out = [0u8; EVENT_TIME_LEN];
            assert_eq!(
                event_time(&mut out, &Civil::of(t)),
                Some(&*t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            );
        }
        let far = DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::days(1);
        assert_eq!(
            event_time(&mut [0u8; EVENT_TIME_LEN], &Civil::of(far)),
            None
        );
    }

    fn line<'a>(
        request_id: &'a str,
        model: Option<&'a str>,
        cause: Option<&'a str>,
    ) -> RequestLine<'a> {
        RequestLine {
            request_id,
            method: "POST",
            path: "/v1/chat/completions",
            status: 502,
            outcome: Outcome::UpstreamUnreachable,
            served: None,
            latency: Duration::from_micros(1_234_567),
            ttft: None,
            overhead: Some(Duration::from_micros(42)),
            model,
            usage: None,
            cost: None,
            cause,
        }
    }

    #[test]
    fn the_text_log_line_quotes_only_what_needs_it() {
        let line = line(
            "id with \"quotes\"",
            Some("gpt-4o-mini"),
            Some("upstream `x` is unreachable"),
        );
        assert_eq!(
            line.to_string(),
            "request request_id=\"id with \\\"quotes\\\"\" method=POST path=/v1/chat/completions \
             status=502 outcome=upstream_unreachable latency_ms=1234.567 overhead_us=42 \
             model=gpt-4o-mini error=\"upstream `x` is unreachable\""
        );
    }

    /// The line as the formatting machinery wrote it before it was written by hand.
    fn by_format(l: &RequestLine<'_>) -> String {
        fn q(text: &str) -> String {
            let plain = !text.is_empty()
                && text.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/')
                });
            if plain {
                text.to_owned()
            } else {
                format!("{text:?}")
            }
        }
        let ms = |d: Duration| format!("{}.{:03}", d.as_micros() / 1000, d.as_micros() % 1000);
        let mut out = format!(
            "request request_id={} method={} path={} status={} outcome={}",
            q(l.request_id),
            l.method,
            l.path,
            l.status,
            l.outcome
        );
        out += &format!(" latency_ms={}", ms(l.latency));
        if let Some(t) = l.ttft {
            out += &format!(" ttft_ms={}", ms(t));
        }
        if let Some(o) = l.overhead {
            out += &format!(" overhead_us={}", o.as_micros());
        }
        if let Some(m) = l.model {
            out += &format!(" model={}", q(m));
        }
        if let Some(u) = l.usage {
            out += &format!(
                " prompt_tokens={} completion_tokens={}",
                u.prompt_tokens, u.completion_tokens
            );
        }
        if let Some(c) = l.cost {
            out += &format!(" cost_usd={c}");
        }
        if let Some(e) = l.cause {
            out += &format!(" error={e:?}");
        }
        out
    }

    #[test]
    fn the_line_written_by_hand_is_the_line_formatted() {
        let durations = [0, 1, 999, 1000, 1001, 123_456_789, u64::MAX / 3];
        for (i, us) in durations.into_iter().enumerate() {
            let mut l = line("0b8e-4c1d", Some("model with space"), None);
            l.status = [200, 0, 65535, 404][i % 4];
            l.latency = Duration::from_micros(us);
            l.ttft =
                (i % 2 == 0).then(|| Duration::from_nanos(us.saturating_mul(7).saturating_add(3)));
            l.overhead = (i % 3 != 0).then(|| Duration::from_micros(us / 2));
            l.model = [None, Some(""), Some("gpt-4o"), Some("é\n")][i % 4];
            l.usage = (i % 2 == 1).then_some(Usage {
                prompt_tokens: us,
                completion_tokens: u64::MAX - us,
                cached_tokens: 0,
            });
            l.cost = [
                None,
                Some(0.000_153_75),
                Some(1e-7),
                Some(261.830_649_000_000_05),
            ][i % 4];
            l.cause = (i % 2 == 0).then_some("bad \"thing\"\t");
            assert_eq!(l.to_string(), by_format(&l));
        }
    }

    #[test]
    fn millis_and_quoting_are_written_as_before() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(999),
            Duration::from_micros(1_234_567),
            Duration::from_nanos(5_999_999_999),
            Duration::from_secs(u64::MAX / 1000),
            Duration::from_secs(u64::MAX / 1000 + 1),
            Duration::MAX,
        ] {
            let mut buf = Vec::new();
            push_millis(&mut buf, d);
            let us = d.as_micros();
            let expected = format!("{}.{:03}", us / 1000, us % 1000);
            assert_eq!(String::from_utf8(buf).unwrap(), expected, "{d:?}");
        }
        for n in [0, 7, 10, 99, 100, 12_345, u64::MAX] {
            let mut buf = Vec::new();
            push_int(&mut buf, n);
            assert_eq!(String::from_utf8(buf).unwrap(), n.to_string());
        }
        for (text, expected) in [
            ("0b8e-4f:x/y.z_A", "0b8e-4f:x/y.z_A"),
            ("", r#""""#),
            ("a b", r#""a b""#),
            ("a=\"b\"", r#""a=\"b\"""#),
            ("é", r#""é""#),
        ] {
            let mut buf = Vec::new();
            quoted(&mut buf, text);
            assert_eq!(String::from_utf8(buf).unwrap(), expected);
        }
    }
}
