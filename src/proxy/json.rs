//! A JSON string writer for the texts of the request path (the rendered system prompt, the
//! events line): the same bytes as `serde_json`, but runs of plain text are skipped sixteen
//! bytes at a time (a loop the compiler turns into vector compares) and copied whole, and a
//! block that holds escapes finds each of them from a bit mask instead of looking at its bytes
//! one at a time.

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

/// True when none of the bytes of `block` is a control character, `"` or `\\`. (A byte of 0x80
/// or above — part of a multi-byte character — never needs escaping.) Branch-free over a fixed
/// size, so it compiles to a few vector instructions. `b ^ 2` maps `"` (0x22) to 0x20 and the
/// control characters onto themselves, so one compare takes both.
#[inline]
fn is_plain(block: &[u8; BLOCK]) -> bool {
    !block
        .iter()
        .fold(false, |found, &b| found | ((b ^ 2) <= 0x20) | (b == b'\\'))
}

/// Which bytes of `block` need escaping, per half: bit 7 of byte `k` (bit `8k + 7`) of each
/// word set for each, exactly (no carry crosses from one byte into the next). Eight bytes at a
/// time in plain integers (SWAR): only a block that holds an escape gets here.
#[inline]
fn escapes(block: &[u8; BLOCK]) -> [u64; 2] {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let word = |w: u64| {
        // Bytes up to 0x20 after `^ 2`: the control characters and `"`. Adding 0x5f to the
        // low seven bits sets bit 7 from 0x21 on; a byte with bit 7 set never qualifies.
        let y = w ^ (ONES * 0x02);
        let low = !(((y & LOW7) + ONES * 0x5f) | y);
        // Bytes equal to `\\`: zero after the `^`.
        let z = w ^ (ONES * u64::from(b'\\'));
        let backslash = !(((z & LOW7) + LOW7) | z);
        (low | backslash) & HIGH
    };
    let (lo, hi) = block.split_at(8);
    let lo = u64::from_le_bytes(lo.try_into().expect("eight bytes"));
    let hi = u64::from_le_bytes(hi.try_into().expect("eight bytes"));
    [word(lo), word(hi)]
}

/// Writes the escapes `masks` (as [`escapes`] marks them) of the block at `base`: the text
/// since `start` before each in one copy, then the escape.
#[inline]
fn write_escapes(out: &mut Vec<u8>, bytes: &[u8], start: &mut usize, base: usize, masks: [u64; 2]) {
    for (half, mut mask) in [(base, masks[0]), (base + 8, masks[1])] {
        while mask != 0 {
            let i = half + (mask.trailing_zeros() / 8) as usize;
            out.extend_from_slice(&bytes[*start..i]);
            let b = bytes[i];
            // Below 0x80: the masks mark nothing else.
            let escape = ESCAPE[usize::from(b & 0x7f)];
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
            *start = i + 1;
            mask &= mask - 1;
        }
    }
}

fn block_at(bytes: &[u8], at: usize) -> &[u8; BLOCK] {
    bytes[at..at + BLOCK].try_into().expect("a block")
}

/// Appends `text` to `out` as a JSON string, quotes included.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // The text up to `start` is written; blocks from `at` are still to be looked at.
    let mut start = 0;
    if bytes.len() < BLOCK {
        // Short text: one block, padded with spaces.
        let mut block = [b' '; BLOCK];
        block[..bytes.len()].copy_from_slice(bytes);
        write_escapes(out, bytes, &mut start, 0, escapes(&block));
    } else {
        let mut at = 0;
        let mut blocks = bytes.chunks_exact(BLOCK);
        for block in blocks.by_ref() {
            let block: &[u8; BLOCK] = block.try_into().expect("a block");
            if !is_plain(block) {
                write_escapes(out, bytes, &mut start, at, escapes(block));
            }
            at += BLOCK;
        }
        if !blocks.remainder().is_empty() {
            // The tail: the last sixteen bytes, less those already looked at.
            let from = bytes.len() - BLOCK;
            let [lo, hi] = escapes(block_at(bytes, from));
            let seen = (at - from) * 8;
            let masks = if seen < 64 {
                [lo & (u64::MAX << seen), hi]
            } else {
                [0, hi & (u64::MAX << (seen - 64))]
            };
            write_escapes(out, bytes, &mut start, from, masks);
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

    /// The bytes a JSON string must escape, by the definition.
    fn needs_escape(b: u8) -> bool {
        b < 0x20 || b == b'"' || b == b'\\'
    }

    #[test]
    fn the_masks_find_every_byte_value_at_every_offset() {
        for filler in [b'a', b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xc3, 0xff] {
            for at in 0..BLOCK {
                for b in 0..=u8::MAX {
                    let mut block = [filler; BLOCK];
                    block[at] = b;
                    let [lo, hi] = escapes(&block);
                    let mask = u128::from(lo) | u128::from(hi) << 64;
                    for (k, &byte) in block.iter().enumerate() {
                        assert_eq!(
                            mask >> (8 * k) & 0xff,
                            if needs_escape(byte) { 0x80 } else { 0 },
                            "byte {byte:#04x} at {k} (filler {filler:#04x})"
                        );
                    }
                    assert_eq!(is_plain(&block), mask == 0, "{b:#04x} at {at}");
                }
            }
        }
    }

    #[test]
    fn every_ascii_byte_at_every_offset_and_length() {
        // Lengths across the short path, one block, the overlapping tail and several blocks.
        for len in [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 47, 48, 63] {
            for at in 0..=len {
                for b in 0..0x80u8 {
                    let mut text = "x".repeat(len);
                    text.insert(at, char::from(b));
                    assert_eq!(
                        written(&text),
                        serde_json::to_string(&text).unwrap(),
                        "{text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn long_texts_with_escapes_in_runs_and_alone() {
        // A prompt-like text: lines, quotes, tabs, control bytes, multi-byte characters, runs
        // of escapes that fill whole blocks, and every length up to a few blocks past it.
        let mut text = String::new();
        for i in 0..200u32 {
            text.push_str("Line ");
            text.push_str(&i.to_string());
            text.push_str(match i % 7 {
                0 => ": \"quoted\" text\n",
                1 => ":\tcafé — 😀 naïve €\n",
                2 => ": back\\slash\r\n",
                3 => ": \u{1}\u{1f}\u{7f}\u{80}\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
                4 => ": a long plain run of text that spans more than one block of sixteen\n",
                5 => ": \"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\n",
                _ => ": \u{8}\u{c}\n",
            });
        }
        assert_eq!(written(&text), serde_json::to_string(&text).unwrap());
        let chars: Vec<char> = text.chars().collect();
        for len in 0..300 {
            let part: String = chars[chars.len() - len..].iter().collect();
            assert_eq!(
                written(&part),
                serde_json::to_string(&part).unwrap(),
                "{part:?}"
            );
        }
    }

    #[test]
    fn appends_to_what_is_there() {
        let mut out = b"{\"a\":".to_vec();
        write_str(&mut out, "x\ny");
        assert_eq!(out, b"{\"a\":\"x\\ny\"");
    }
}
