//! A JSON string writer for the long texts of the request path (the rendered system prompt):
//! the same bytes as `serde_json`, but runs of plain text are skipped sixteen bytes at a time
//! (a loop the compiler turns into vector compares) and copied whole, instead of being looked
//! at one byte each.

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

const BLOCK: usize = 16;

/// True when none of the bytes of `block` is a control character, `"` or `\`. (A byte of 0x80
/// or above — part of a multi-byte character — never needs escaping.) Branch-free over a fixed
/// size, so it compiles to a few vector instructions.
#[inline]
fn is_plain(block: &[u8; BLOCK]) -> bool {
    block.iter().fold(0u8, |flags, &b| {
        flags | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\')
    }) == 0
}

/// Appends `text` to `out` as a JSON string, quotes included.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        while let Some(block) = bytes.get(i..i + BLOCK) {
            let block: &[u8; BLOCK] = block.try_into().expect("a block");
            if !is_plain(block) {
                break;
            }
            i += BLOCK;
        }
        // The block that holds an escape (or the short tail), a byte at a time up to the
        // escape; then blocks again from the byte after it.
        let end = bytes.len().min(i + BLOCK);
        while i < end {
            let b = bytes[i];
            i += 1;
            let escape = ESCAPE.get(usize::from(b)).copied().unwrap_or(0);
            if escape == 0 {
                continue;
            }
            out.extend_from_slice(&bytes[start..i - 1]);
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
            start = i;
            break;
        }
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
        // Every position against the sixteen-byte stride, with multi-byte text around.
        for len in 0..50 {
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
