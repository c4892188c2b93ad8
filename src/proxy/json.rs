//! A JSON string writer for the long texts of the request path (the rendered system prompt):
//! the same bytes as `serde_json`, but runs of plain text are skipped eight bytes at a time and
//! copied whole, instead of being looked at one byte each.

/// The escape of each ASCII byte: 0 for none, `u` for `\u00XX`, else the letter after `\`.
const ESCAPE: [u8; 128] = {
    let mut table = [0u8; 128];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// True when one of the eight bytes of `w` is a control character, `"` or `\`. (A byte of 0x80
/// or above — part of a multi-byte character — never needs escaping, and is never flagged.)
#[inline]
fn needs_escape(w: u64) -> bool {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))) != 0
}

/// Appends `text` to `out` as a JSON string, quotes included.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        while let Some(chunk) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            if needs_escape(word) {
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else {
            break;
        };
        let escape = ESCAPE.get(usize::from(b)).copied().unwrap_or(0);
        if escape == 0 {
            i += 1;
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if escape == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(text: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_character_is_written_as_serde_json_writes_it() {
        let mut all = String::new();
        for c in (0u32..0x800)
            .chain([0xfffd, 0x1f600])
            .filter_map(char::from_u32)
        {
            all.push(c);
            let one = c.to_string();
            assert_eq!(written(&one), serde_json::to_string(&one).unwrap(), "{c:?}");
        }
        assert_eq!(written(&all), serde_json::to_string(&all).unwrap());
    }

    #[test]
    fn escapes_land_anywhere_in_a_word() {
        // Every position against the eight-byte stride, with multi-byte text around.
        for len in 0..40 {
            for at in 0..=len {
                for special in [
                    "\"", "\\", "\n", "\u{1}", "\u{1f}", "é", "€", "😀", "\u{7f}",
                ] {
                    let mut text = "a".repeat(len);
                    text.insert_str(at, special);
                    assert_eq!(
                        written(&text),
                        serde_json::to_string(&text).unwrap(),
                        "{text:?}"
                    );
                }
            }
        }
    }
}
