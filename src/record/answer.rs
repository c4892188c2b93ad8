//! The few parts of an upstream answer that recording needs — its id, model, usage, choices'
//! finish reasons and status — read from a JSON body or one event's data without building the
//! rest of it.
//!
//! Every answer passes through here, so the common case takes a small hand-written scanner: one
//! pass over the bytes, strings skipped eight bytes at a time, no allocation. The scanner is
//! strict — it accepts only text serde_json accepts — and gives up on anything it is not sure
//! of (an escape in a field it reads, a field given twice, a number it cannot hold, an odd
//! shape); then the typed serde read below has the last word. So every answer reads exactly as
//! serde reads it, valid or not.

use std::borrow::Cow;

use serde::Deserialize;

/// The parts of an answer (a JSON body, or one event's data) recording reads; everything else
/// is skipped without being built.
#[derive(Debug, Default, Deserialize)]
pub struct Answer<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub usage: Option<UsageFields>,
    /// Whether it is empty (a usage-only chunk), and each choice's finish reason.
    #[serde(borrow, default)]
    pub choices: Option<Vec<Choice<'a>>>,
    /// Responses API events carry the response, usage included, in `response`.
    #[serde(borrow, default)]
    pub response: Option<Inner<'a>>,
    /// A Responses API answer's status (`completed`, `incomplete`).
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
}

/// The `response` of a Responses API event.
#[derive(Debug, Default, Deserialize)]
pub struct Inner<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub usage: Option<UsageFields>,
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Choice<'a> {
    #[serde(borrow, default)]
    pub finish_reason: Option<Cow<'a, str>>,
}

/// An OpenAI `usage` object, chat (`prompt_tokens`) or responses (`input_tokens`).
#[derive(Debug, Default, Deserialize)]
pub struct UsageFields {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub prompt_tokens_details: Option<Details>,
    pub input_tokens_details: Option<Details>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Details {
    pub cached_tokens: Option<u64>,
}

/// Reads an answer: `None` when the text is not such an object (not JSON, or a field of
/// another type — a `usage` that is a string makes the whole answer unreadable, as before).
pub fn parse(text: &[u8]) -> Option<Answer<'_>> {
    match scan(text) {
        Ok(answer) => Some(answer),
        Err(Unsure) => serde_json::from_slice(text).ok(),
    }
}

/// The scanner met something it leaves to serde_json.
#[derive(Debug)]
struct Unsure;

type Scan<T> = Result<T, Unsure>;

/// Nesting the scanner follows before it leaves the text to serde (which allows 128).
const MAX_DEPTH: u32 = 64;

fn scan(text: &[u8]) -> Scan<Answer<'_>> {
    let mut s = Scanner { text, at: 0 };
    let mut answer = Answer::default();
    let mut seen = Seen::default();
    s.object(|s, key| {
        match key {
            b"id" => answer.id = seen.once(0).and_then(|()| s.text_or_null())?,
            b"model" => answer.model = seen.once(1).and_then(|()| s.text_or_null())?,
            b"usage" => answer.usage = seen.once(2).and_then(|()| s.usage())?,
            b"choices" => answer.choices = seen.once(3).and_then(|()| s.choices())?,
            b"response" => answer.response = seen.once(4).and_then(|()| s.inner())?,
            b"status" => answer.status = seen.once(5).and_then(|()| s.text_or_null())?,
            _ => s.skip_value(1)?,
        }
        Ok(())
    })?;
    s.skip_whitespace();
    if s.at != text.len() {
        return Err(Unsure);
    }
    Ok(answer)
}

/// The fields of one object seen so far: serde refuses a field given twice.
#[derive(Default)]
struct Seen(u8);

impl Seen {
    fn once(&mut self, field: u8) -> Scan<()> {
        let bit = 1 << field;
        if self.0 & bit != 0 {
            return Err(Unsure);
        }
        self.0 |= bit;
        Ok(())
    }
}

struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.text.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not whitespace, not consumed.
    #[inline(always)]
    fn peek(&mut self) -> Scan<u8> {
        self.skip_whitespace();
        self.text.get(self.at).copied().ok_or(Unsure)
    }

    fn expect(&mut self, byte: u8) -> Scan<()> {
        if self.peek()? != byte {
            return Err(Unsure);
        }
        self.at += 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        if !self.text[self.at..].starts_with(word) {
            return Err(Unsure);
        }
        self.at += word.len();
        Ok(())
    }

    /// `null`, consumed, or false (nothing consumed).
    fn null(&mut self) -> Scan<bool> {
        if self.peek()? != b'n' {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    /// Walks the members of a struct's object, handing each key to `member`, which consumes
    /// the value. Keys are matched as written: one with an escape is left to serde.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Scan<()>) -> Scan<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.expect(b'"')?;
            let (key, escaped) = self.string()?;
            // serde reads a struct's keys as text: they must be UTF-8.
            if escaped || (!key.is_ascii() && std::str::from_utf8(key).is_err()) {
                return Err(Unsure);
            }
            self.expect(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Unsure),
            }
        }
    }

    /// A string or `null`; a string with escapes is left to serde.
    fn text_or_null(&mut self) -> Scan<Option<Cow<'a, str>>> {
        if self.null()? {
            return Ok(None);
        }
        self.expect(b'"')?;
        let (raw, escaped) = self.string()?;
        if escaped {
            return Err(Unsure);
        }
        let text = std::str::from_utf8(raw).map_err(|_| Unsure)?;
        Ok(Some(Cow::Borrowed(text)))
    }

    /// A count of tokens or `null`: a plain integer that fits in 64 bits.
    fn count_or_null(&mut self) -> Scan<Option<u64>> {
        if self.null()? {
            return Ok(None);
        }
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(&d @ b'0'..=b'9') = self.text.get(self.at) {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or(Unsure)?;
            self.at += 1;
        }
        let digits = self.at - start;
        // No digits (a sign, a letter), a leading zero, or a fraction or exponent (a float).
        if digits == 0
            || (digits > 1 && self.text[start] == b'0')
            || matches!(self.text.get(self.at), Some(b'.' | b'e' | b'E'))
        {
            return Err(Unsure);
        }
        Ok(Some(n))
    }

    fn usage(&mut self) -> Scan<Option<UsageFields>> {
        if self.null()? {
            return Ok(None);
        }
        let mut usage = UsageFields::default();
        let mut seen = Seen::default();
        self.object(|s, key| {
            match key {
                b"prompt_tokens" => {
                    usage.prompt_tokens = seen.once(0).and_then(|()| s.count_or_null())?;
                }
                b"completion_tokens" => {
                    usage.completion_tokens = seen.once(1).and_then(|()| s.count_or_null())?;
                }
                b"input_tokens" => {
                    usage.input_tokens = seen.once(2).and_then(|()| s.count_or_null())?;
                }
                b"output_tokens" => {
                    usage.output_tokens = seen.once(3).and_then(|()| s.count_or_null())?;
                }
                b"prompt_tokens_details" => {
                    usage.prompt_tokens_details = seen.once(4).and_then(|()| s.details())?;
                }
                b"input_tokens_details" => {
                    usage.input_tokens_details = seen.once(5).and_then(|()| s.details())?;
                }
                _ => s.skip_value(3)?,
            }
            Ok(())
        })?;
        Ok(Some(usage))
    }

    fn details(&mut self) -> Scan<Option<Details>> {
        if self.null()? {
            return Ok(None);
        }
        let mut details = Details::default();
        let mut seen = Seen::default();
        self.object(|s, key| {
            match key {
                b"cached_tokens" => {
                    details.cached_tokens = seen.once(0).and_then(|()| s.count_or_null())?;
                }
                _ => s.skip_value(4)?,
            }
            Ok(())
        })?;
        Ok(Some(details))
    }

    fn choices(&mut self) -> Scan<Option<Vec<Choice<'a>>>> {
        if self.null()? {
            return Ok(None);
        }
        self.expect(b'[')?;
        let mut choices = Vec::new();
        if self.peek()? == b']' {
            self.at += 1;
            return Ok(Some(choices));
        }
        loop {
            let mut choice = Choice::default();
            let mut seen = Seen::default();
            self.object(|s, key| {
                match key {
                    b"finish_reason" => {
                        choice.finish_reason = seen.once(0).and_then(|()| s.text_or_null())?;
                    }
                    _ => s.skip_value(3)?,
                }
                Ok(())
            })?;
            choices.push(choice);
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Ok(Some(choices));
                }
                _ => return Err(Unsure),
            }
        }
    }

    fn inner(&mut self) -> Scan<Option<Inner<'a>>> {
        if self.null()? {
            return Ok(None);
        }
        let mut inner = Inner::default();
        let mut seen = Seen::default();
        self.object(|s, key| {
            match key {
                b"id" => inner.id = seen.once(0).and_then(|()| s.text_or_null())?,
                b"model" => inner.model = seen.once(1).and_then(|()| s.text_or_null())?,
                b"usage" => inner.usage = seen.once(2).and_then(|()| s.usage())?,
                b"status" => inner.status = seen.once(3).and_then(|()| s.text_or_null())?,
                _ => s.skip_value(2)?,
            }
            Ok(())
        })?;
        Ok(Some(inner))
    }

    /// Skips any JSON value, checking it as serde_json does when it ignores one.
    fn skip_value(&mut self, depth: u32) -> Scan<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.string().map(drop)
            }
            b'{' | b'[' if depth >= MAX_DEPTH => Err(Unsure),
            b'{' => {
                self.at += 1;
                if self.peek()? == b'}' {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.expect(b'"')?;
                    self.string()?;
                    self.expect(b':')?;
                    self.skip_value(depth + 1)?;
                    match self.peek()? {
                        b',' => self.at += 1,
                        b'}' => {
                            self.at += 1;
                            return Ok(());
                        }
                        _ => return Err(Unsure),
                    }
                }
            }
            b'[' => {
                self.at += 1;
                if self.peek()? == b']' {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    match self.peek()? {
                        b',' => self.at += 1,
                        b']' => {
                            self.at += 1;
                            return Ok(());
                        }
                        _ => return Err(Unsure),
                    }
                }
            }
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => Err(Unsure),
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn skip_number(&mut self) -> Scan<()> {
        if self.text.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.text.get(self.at) {
            Some(b'0') => {
                self.at += 1;
                if self.text.get(self.at).is_some_and(u8::is_ascii_digit) {
                    return Err(Unsure);
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Unsure),
        }
        if self.text.get(self.at) == Some(&b'.') {
            self.at += 1;
            if self.digits_at_least_one().is_err() {
                return Err(Unsure);
            }
        }
        if let Some(b'e' | b'E') = self.text.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.text.get(self.at) {
                self.at += 1;
            }
            self.digits_at_least_one()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }

    fn digits_at_least_one(&mut self) -> Scan<()> {
        let start = self.at;
        self.digits();
        if self.at == start {
            return Err(Unsure);
        }
        Ok(())
    }

    /// Moves past a string whose opening quote was consumed: its raw bytes, and whether it
    /// holds escapes. Raw control characters and bad escapes are refused, as serde refuses
    /// them.
    #[inline(always)]
    fn string(&mut self) -> Scan<(&'a [u8], bool)> {
        let start = self.at;
        let mut escaped = false;
        loop {
            self.at = special_byte(self.text, self.at);
            match self.text.get(self.at) {
                Some(b'"') => {
                    let raw = &self.text[start..self.at];
                    self.at += 1;
                    return Ok((raw, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    let len = match self.text.get(self.at + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
                        Some(b'u') => {
                            let hex = self.text.get(self.at + 2..self.at + 6).ok_or(Unsure)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Unsure);
                            }
                            6
                        }
                        _ => return Err(Unsure),
                    };
                    self.at += len;
                }
                // A control character, or the end of the text.
                _ => return Err(Unsure),
            }
        }
    }
}

/// The position of the first quote, backslash or control character at or after `at` (the
/// length of `text` when there is none). Eight bytes at a time: a byte's high bit survives
/// `(x - 1) & !x` when the byte was zero, so XOR-ing with the byte sought and subtracting
/// marks its places; a borrow can only mark bytes after a true mark, so the lowest mark is
/// true.
#[inline(always)]
fn special_byte(text: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    while let Some(word) = text.get(at..at + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let control = w.wrapping_sub(ONES * 0x20) & !w;
        let marks = (control
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash))
            & HIGH;
        if marks != 0 {
            return at + (marks.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&b) = text.get(at) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde reads, in a form to compare.
    fn by_serde(text: &[u8]) -> Option<String> {
        serde_json::from_slice::<Answer<'_>>(text)
            .ok()
            .map(|a| format!("{a:?}"))
    }

    /// The scanner agrees with serde whenever it answers (it may leave a text to serde).
    fn agrees(text: &[u8]) -> bool {
        match scan(text) {
            Ok(answer) => by_serde(text) == Some(format!("{answer:?}")),
            Err(Unsure) => true,
        }
    }

    const CHAT: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! \"Quoted\" and a tab\t… end"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":250,"completion_tokens":9,"total_tokens":259,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0}},"system_fingerprint":null}"#;

    #[test]
    fn the_scanner_reads_common_answers_itself_and_as_serde_does() {
        let responses = r#"{"type":"response.completed","response":{"id":"resp_1","status":"completed","model":"gpt-4.1","output":[{"x":[1,2.5e-3,-0,true,false,null,{}]}],"usage":{"input_tokens":9,"output_tokens":2,"input_tokens_details":{"cached_tokens":1}}}}"#;
        let usage_chunk = r#"{"object":"chat.completion.chunk","model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5}}"#;
        for text in [
            CHAT,
            responses,
            usage_chunk,
            "{}",
            " { \"model\" : null } \n",
        ] {
            let answer = scan(text.as_bytes()).unwrap_or_else(|_| panic!("unsure of {text}"));
            assert_eq!(
                Some(format!("{answer:?}")),
                by_serde(text.as_bytes()),
                "{text}"
            );
        }
    }

    #[test]
    fn what_serde_refuses_is_never_read_by_the_scanner() {
        for text in [
            r#"{"model":"m","usage":"odd"}"#,
            r#"{"model":"m","model":"n"}"#,
            r#"{"usage":{"prompt_tokens":1.0,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":-1,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":18446744073709551616,"completion_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":01,"completion_tokens":1}}"#,
            r#"{"choices":[null]}"#,
            r#"{"x":01}"#,
            r#"{"x":1.}"#,
            r#"{"x":1e}"#,
            r#"{"x":"a\qb"}"#,
            "{\"x\":\"a\u{1}b\"}",
            r#"{"x":[1,]}"#,
            r#"{"x":1,}"#,
            r#"{"x":1} x"#,
            r#"{"x":tru}"#,
            r#"{"model":"gpt"#,
            "",
            "[]",
        ] {
            assert!(scan(text.as_bytes()).is_err(), "{text}");
            assert_eq!(
                parse(text.as_bytes()).map(|a| format!("{a:?}")),
                by_serde(text.as_bytes()),
                "{text}"
            );
        }
        // Not UTF-8 in a skipped string: serde skips it too.
        assert!(agrees(b"{\"x\":\"\xff\",\"model\":\"m\"}"));
    }

    #[test]
    fn escapes_in_fields_read_are_left_to_serde() {
        let text = r#"{"model":"gpt\u002d4o","mod\u0065l":"x"}"#;
        assert!(scan(text.as_bytes()).is_err());
        assert_eq!(parse(text.as_bytes()).map(|a| format!("{a:?}")), None);
        let answer = parse(br#"{"model":"gpt\u002d4o"}"#).unwrap();
        assert_eq!(answer.model.as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn the_scanner_agrees_with_serde_on_every_cut_and_every_changed_byte() {
        let text = CHAT.as_bytes();
        for end in 0..text.len() {
            assert!(
                agrees(&text[..end]),
                "{}",
                String::from_utf8_lossy(&text[..end])
            );
        }
        for at in 0..text.len() {
            for byte in [
                b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'x', b' ', 0,
            ] {
                let mut changed = text.to_vec();
                changed[at] = byte;
                assert!(agrees(&changed), "{}", String::from_utf8_lossy(&changed));
            }
        }
    }

    #[test]
    fn special_bytes_are_found_in_any_lane() {
        for len in 0..20 {
            for at in 0..len {
                for special in [b'"', b'\\', b'\n', 0x1f] {
                    let mut text = vec![b'a'; len];
                    text[at] = special;
                    assert_eq!(special_byte(&text, 0), at);
                }
            }
            assert_eq!(special_byte(&vec![0xe2; len], 0), len);
        }
    }
}
