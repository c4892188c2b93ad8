//! The request's one log line, written when it is over: in text, laid out as the tracing
//! subscriber lays out its own lines but written directly, by hand — it is written once per
//! request, so it skips the formatting machinery; in JSON, one field per value through the
//! subscriber.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use chrono::{DateTime, Datelike as _, Timelike as _, Utc};

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
    pub fn log(&self, now: DateTime<Utc>) {
        match LOG_MODE.load(Ordering::Relaxed) {
            LOG_PLAIN => self.write_plain(now),
            LOG_TEXT => {
                // One preformatted message through the subscriber (it colours it).
                let mut text = String::with_capacity(320);
                self.write_to(&mut text);
                tracing::info!(target: "promptgate::request", "{text}");
            }
            _ => self.log_fields(),
        }
    }

    /// The line as `tracing-subscriber`'s text format lays it out without colours
    /// (`2026-01-31T12:00:00.123456Z  INFO promptgate::request: request request_id=…`), written
    /// to stderr in one call.
    fn write_plain(&self, now: DateTime<Utc>) {
        let mut buf = String::with_capacity(384);
        timestamp(&mut buf, now);
        buf.push_str("  INFO promptgate::request: ");
        self.write_to(&mut buf);
        buf.push('\n');
        let _ = std::io::stderr().lock().write_all(buf.as_bytes());
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
    pub fn write_to(&self, buf: &mut String) {
        buf.push_str("request request_id=");
        quoted(buf, self.request_id);
        buf.push_str(" method=");
        buf.push_str(self.method);
        buf.push_str(" path=");
        buf.push_str(self.path);
        buf.push_str(" status=");
        push_int(buf, u64::from(self.status));
        buf.push_str(" outcome=");
        buf.push_str(self.outcome.as_str());
        if let Some(s) = self.served {
            buf.push_str(" prompt=");
            buf.push_str(&s.name);
            buf.push_str(" version=");
            push_int(buf, u64::from(s.version));
            buf.push_str(" hash=");
            buf.push_str(&s.hash);
            buf.push_str(" selection=");
            buf.push_str(s.selection.as_str());
        }
        buf.push_str(" latency_ms=");
        push_millis(buf, self.latency);
        if let Some(t) = self.ttft {
            buf.push_str(" ttft_ms=");
            push_millis(buf, t);
        }
        if let Some(o) = self.overhead {
            buf.push_str(" overhead_us=");
            push_micros(buf, o);
        }
        if let Some(m) = self.model {
            buf.push_str(" model=");
            quoted(buf, m);
        }
        if let Some(u) = self.usage {
            buf.push_str(" prompt_tokens=");
            push_int(buf, u.prompt_tokens);
            buf.push_str(" completion_tokens=");
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
        let mut buf = String::with_capacity(320);
        self.write_to(&mut buf);
        f.write_str(&buf)
    }
}

/// Milliseconds with three decimals, for the JSON log line.
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = String::with_capacity(16);
        push_millis(&mut buf, self.0);
        f.write_str(&buf)
    }
}

/// `n` in decimal.
fn push_int(buf: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        buf.push(char::from(d));
    }
}

/// `1234.567`: milliseconds with three decimals.
fn push_millis(buf: &mut String, d: Duration) {
    let us = d.as_micros();
    match u64::try_from(us / 1000) {
        Ok(ms) => push_int(buf, ms),
        Err(_) => {
            let _ = write!(buf, "{}", us / 1000);
        }
    }
    buf.push('.');
    digits(buf, (us % 1000) as u32, 3);
}

fn push_micros(buf: &mut String, d: Duration) {
    match u64::try_from(d.as_micros()) {
        Ok(us) => push_int(buf, us),
        Err(_) => {
            let _ = write!(buf, "{}", d.as_micros());
        }
    }
}

/// `n`'s last `width` digits, zero-padded.
fn digits(buf: &mut String, n: u32, width: u32) {
    let mut div = 10u32.pow(width - 1);
    while div > 0 {
        buf.push(char::from(b'0' + (n / div % 10) as u8));
        div /= 10;
    }
}

/// `2026-01-31T12:00:00.123456Z`, as `tracing-subscriber` writes its timestamps.
pub(super) fn timestamp(buf: &mut String, now: DateTime<Utc>) {
    let year = u32::try_from(now.year()).unwrap_or(0);
    digits(buf, year, 4);
    buf.push('-');
    digits(buf, now.month(), 2);
    buf.push('-');
    digits(buf, now.day(), 2);
    buf.push('T');
    digits(buf, now.hour(), 2);
    buf.push(':');
    digits(buf, now.minute(), 2);
    buf.push(':');
    digits(buf, now.second(), 2);
    buf.push('.');
    // A leap second's nanoseconds run past 10⁹; the subscriber shows them as 59.999999.
    digits(buf, (now.nanosecond() / 1000).min(999_999), 6);
    buf.push('Z');
}

/// The length of an events file's time: `2026-01-31T12:00:00.123Z`.
pub(super) const EVENT_TIME_LEN: usize = 24;

/// `2026-01-31T12:00:00.123Z`, as chrono's RFC 3339 with milliseconds writes it, into `out`;
/// `None` for what that layout does not hold (a year past 9999, a leap second), which is then
/// left to chrono.
pub(super) fn event_time(out: &mut [u8; EVENT_TIME_LEN], now: DateTime<Utc>) -> Option<&str> {
    let year = u32::try_from(now.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = now.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut text = String::with_capacity(EVENT_TIME_LEN);
    digits(&mut text, year, 4);
    text.push('-');
    digits(&mut text, now.month(), 2);
    text.push('-');
    digits(&mut text, now.day(), 2);
    text.push('T');
    digits(&mut text, now.hour(), 2);
    text.push(':');
    digits(&mut text, now.minute(), 2);
    text.push(':');
    digits(&mut text, now.second(), 2);
    text.push('.');
    digits(&mut text, nanos / 1_000_000, 3);
    text.push('Z');
    out.copy_from_slice(text.as_bytes());
    std::str::from_utf8(out).ok()
}

/// Writes `text` as it is when it is plainly a token (the common case: a uuid, a model name),
/// else quoted and escaped, so a value from outside cannot forge fields in the log line.
fn quoted(buf: &mut String, text: &str) {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'));
    if plain {
        buf.push_str(text);
    } else {
        let _ = write!(buf, "{text:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_laid_out_as_the_subscriber_lays_them_out() {
        let mut buf = String::new();
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-09T03:04:05.000678901Z")
            .unwrap()
            .with_timezone(&Utc);
        timestamp(&mut buf, t);
        assert_eq!(buf, "2026-01-09T03:04:05.000678Z");
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
                event_time(&mut out, t),
                Some(&*t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            );
        }
        let far = DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::days(1);
        assert_eq!(event_time(&mut [0u8; EVENT_TIME_LEN], far), None);
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
}
