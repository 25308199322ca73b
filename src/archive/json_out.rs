//! JSON strings written straight into a byte buffer, for the export's hot
//! loop: byte for byte what `serde_json` writes for a `str` (the tests
//! check it against `serde_json` on arbitrary strings), without going
//! through a `Serializer` or allocating.

/// What each byte becomes: 0 = itself, `u` = `\u00XX`, anything else =
/// a backslash and that byte. serde_json's table: the C0 controls (with
/// short forms for \b \t \n \f \r), the quote and the backslash; DEL and
/// every non-ASCII byte are written as they are.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0A] = b'n';
    table[0x0C] = b'f';
    table[0x0D] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string (quotes included).
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let e = ESCAPE[b as usize];
        if e == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if e == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xF) as usize]);
        } else {
            out.push(b'\\');
            out.push(e);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(s: &str) -> Vec<u8> {
        let mut out = b"prefix".to_vec();
        string(&mut out, s);
        out.split_off(6)
    }

    #[test]
    fn every_single_character_of_the_first_plane_matches_serde_json() {
        for c in (0u32..0x1_0000).filter_map(char::from_u32) {
            let s = c.to_string();
            assert_eq!(ours(&s), serde_json::to_vec(&s).unwrap(), "{c:?}");
        }
    }

    #[test]
    fn controls_quotes_and_backslashes_in_context() {
        let s = "a\"b\\c\u{0}d\u{1f}e\u{7f}f\u{8}\t\n\u{b}\u{c}\r\u{2028}é日本🎉";
        assert_eq!(ours(s), serde_json::to_vec(s).unwrap());
        assert_eq!(ours(""), b"\"\"");
    }

    proptest! {
        #[test]
        fn matches_serde_json_on_any_string(s in any::<String>()) {
            prop_assert_eq!(ours(&s), serde_json::to_vec(&s).unwrap());
        }

        #[test]
        fn matches_serde_json_on_control_heavy_strings(s in "[\\x00-\\x7f\"\\\\é日🎉]{0,64}") {
            prop_assert_eq!(ours(&s), serde_json::to_vec(&s).unwrap());
        }
    }
}
