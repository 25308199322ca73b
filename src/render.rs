//! Showing text that someone else controls on a terminal.
//!
//! A message body, a contact name from an import, a router's error message:
//! anything a peer, a file or a server wrote could hold escape sequences
//! that retitle the window, clear the screen or move the cursor, bidi
//! controls that reorder what is shown, invisible characters, or a line
//! break followed by a forged `[time] bob: ...` line. Every such string
//! goes through [`untrusted`] (or [`untrusted_inline`]) on its way to the
//! terminal; `--json` and `export` keep the exact text, which JSON escapes.
//!
//! The notation, chosen to be readable and unambiguous per class:
//!
//! - C0 controls and DEL in caret notation, as `cat -v` and terminals
//!   echo them: ESC is `^[`, BEL `^G`, backspace `^H`, a lone CR `^M`,
//!   DEL `^?`. A tab becomes four spaces.
//! - Everything else that is invisible or steers the display, as
//!   `<U+XXXX>`: C1 controls (U+0080–U+009F, CSI is `<U+009B>`), bidi
//!   embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069),
//!   every other format character (Unicode category Cf: U+200B–U+200F,
//!   U+2060–U+2064, U+FEFF, U+061C, U+00AD, tag characters, ...), the line
//!   and paragraph separators U+2028 and U+2029, and the Hangul fillers
//!   that render as blank letters.
//! - Zero-width joiner and non-joiner (U+200D, U+200C) are kept only
//!   between two visible non-ASCII characters, where emoji sequences
//!   (👩‍👩‍👧) and scripts such as Persian or Devanagari need them; next to
//!   ASCII, white space or the text's ends they are shown like the rest.
//! - A line break (LF, or CR LF) in [`untrusted`] starts a continuation
//!   line that begins with [`CONTINUATION`], so no line of a body can pass
//!   for a message header; [`untrusted_inline`] shows it as `^J`.
//!
//! On a terminal, a long line also wraps where the terminal decides, and
//! what follows a run of spaces would start a screen line of its own:
//! [`wrap`] breaks rendered text to the terminal's width first, each piece
//! continuing after [`CONTINUATION`].

use std::fmt::Write as _;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

/// What begins every continuation line of a multi-line text.
pub const CONTINUATION: &str = "  │ ";

/// What a tab is shown as.
const TAB: &str = "    ";

/// `text` made safe for a terminal, line breaks kept as continuation lines
/// marked with [`CONTINUATION`]. For message bodies and any other text that
/// may span lines.
pub fn untrusted(text: &str) -> String {
    render(text, true)
}

/// `text` made safe for a terminal on one line: a line break is shown as
/// `^J`. For names, labels and anything shown inside a line.
pub fn untrusted_inline(text: &str) -> String {
    render(text, false)
}

/// Breaks `rendered` (what [`untrusted`] returned) so that no screen line
/// is wider than `width` columns, when it follows a prefix (a message
/// header) `used` columns wide: each break starts a continuation line, so
/// the terminal never wraps the text itself and no screen line starts with
/// the body's own text. Cuts fall between grapheme clusters; colour
/// sequences (`ESC [ ... m`) the caller added take no room. A terminal too
/// narrow to hold the marker and some text gets `rendered` unchanged.
pub fn wrap(rendered: &str, used: usize, width: usize) -> String {
    let marker = CONTINUATION.width();
    if width < marker + 8 {
        return rendered.to_owned();
    }
    let mut out = String::with_capacity(rendered.len() + rendered.len() / width * 8);
    let mut column = used;
    if used >= width {
        // The prefix filled its screen line: start the text on a marked one.
        out.push('\n');
        out.push_str(CONTINUATION);
        column = marker;
    }
    for (i, line) in rendered.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
            column = 0;
        }
        let mut in_colour = false;
        for grapheme in line.graphemes(true) {
            // Rendered text holds no ESC of its own: this is a colour.
            if grapheme == "\u{1b}" || in_colour {
                in_colour = grapheme != "m";
                out.push_str(grapheme);
                continue;
            }
            let w = columns(grapheme);
            if column + w > width {
                out.push('\n');
                out.push_str(CONTINUATION);
                column = marker;
            }
            out.push_str(grapheme);
            column += w;
        }
    }
    out
}

/// The most columns a terminal may give a grapheme cluster: one that does
/// not join an emoji sequence shows each emoji, so counting each character
/// too errs on the side of breaking early, never of letting it wrap.
fn columns(grapheme: &str) -> usize {
    let each: usize = grapheme
        .chars()
        .map(|c| unicode_width::UnicodeWidthChar::width(c).unwrap_or(0))
        .sum();
    each.max(grapheme.width())
}

/// Whether `c` never reaches the terminal as itself: it is shown escaped
/// wherever it appears (but see [`untrusted`] on joiners and line breaks).
pub fn is_hidden(c: char) -> bool {
    // Most text is ASCII, where only controls are hidden: skip the
    // category tables' binary search (a test checks all 128).
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    c.is_control()
        || matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
        || is_blank_letter(c)
}

/// Letters that render as nothing at all: the Hangul fillers, a favourite
/// for names that look empty or like another.
fn is_blank_letter(c: char) -> bool {
    matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}')
}

fn is_joiner(c: char) -> bool {
    matches!(c, '\u{200C}' | '\u{200D}')
}

/// A character a joiner may sit next to and be kept.
fn joinable(c: Option<char>) -> bool {
    c.is_some_and(|c| !c.is_ascii() && !c.is_whitespace() && !is_hidden(c))
}

fn render(text: &str, multi_line: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let next = chars.peek().copied();
        match c {
            '\r' if next == Some('\n') => {} // CR LF is one line break
            '\n' if multi_line => {
                out.push('\n');
                out.push_str(CONTINUATION);
            }
            '\t' => out.push_str(TAB),
            c if is_joiner(c) && joinable(prev) && joinable(next) => out.push(c),
            c if is_hidden(c) => escape(&mut out, c),
            c => out.push(c),
        }
        prev = Some(c);
    }
    out
}

/// Writes the visible form of a hidden character.
fn escape(out: &mut String, c: char) {
    let code = u32::from(c);
    if code < 0x20 {
        out.push('^');
        out.push(char::from(b'@' + code as u8));
    } else if code == 0x7F {
        out.push_str("^?");
    } else {
        let _ = write!(out, "<U+{code:04X}>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_ascii_shortcut_agrees_with_the_categories() {
        for c in (0u8..128).map(char::from) {
            let by_category = c.is_control()
                || matches!(
                    c.general_category(),
                    GeneralCategory::Format
                        | GeneralCategory::LineSeparator
                        | GeneralCategory::ParagraphSeparator
                );
            assert_eq!(is_hidden(c), by_category, "{c:?}");
        }
    }

    #[test]
    fn c0_controls_and_del_use_caret_notation() {
        assert_eq!(
            untrusted("\u{1b}]0;TITLE\u{7}\u{1b}[2J\u{8}\u{7f}\0"),
            "^[]0;TITLE^G^[[2J^H^?^@"
        );
        assert_eq!(untrusted("over\rwrite"), "over^Mwrite");
        assert_eq!(untrusted("a\u{b}b\u{c}c"), "a^Kb^Lc");
    }

    #[test]
    fn c1_controls_are_code_points() {
        assert_eq!(
            untrusted("\u{9b}2J\u{9d}0;x\u{9c}"),
            "<U+009B>2J<U+009D>0;x<U+009C>"
        );
        assert_eq!(untrusted("\u{80}\u{85}\u{9f}"), "<U+0080><U+0085><U+009F>");
    }

    #[test]
    fn bidi_controls_are_shown() {
        for c in ('\u{202A}'..='\u{202E}').chain('\u{2066}'..='\u{2069}') {
            assert_eq!(
                untrusted(&format!("a{c}b")),
                format!("a<U+{:04X}>b", u32::from(c))
            );
        }
        assert_eq!(untrusted("\u{202E}gpj.exe"), "<U+202E>gpj.exe");
    }

    #[test]
    fn invisible_format_characters_are_shown() {
        for c in [
            '\u{200B}',
            '\u{200E}',
            '\u{200F}',
            '\u{2060}',
            '\u{2064}',
            '\u{FEFF}',
            '\u{061C}',
            '\u{00AD}',
            '\u{E0041}',
            '\u{2028}',
            '\u{2029}',
            '\u{3164}',
        ] {
            assert_eq!(
                untrusted(&format!("bob{c}")),
                format!("bob<U+{:04X}>", u32::from(c))
            );
        }
    }

    #[test]
    fn joiners_stay_only_inside_emoji_and_scripts() {
        let family = "👩\u{200D}👩\u{200D}👧\u{200D}👦";
        assert_eq!(untrusted(family), family);
        let persian = "می\u{200C}خواهم";
        assert_eq!(untrusted(persian), persian);
        assert_eq!(untrusted("b\u{200D}ob"), "b<U+200D>ob");
        assert_eq!(untrusted("\u{200C}ab"), "<U+200C>ab");
        assert_eq!(untrusted("👩\u{200D}"), "👩<U+200D>");
        assert_eq!(untrusted("👩\u{200D}\u{200D}👩"), "👩<U+200D><U+200D>👩");
    }

    #[test]
    fn continuation_lines_are_marked() {
        assert_eq!(
            untrusted("hi\n[2026-11-26 02:41] bob: forged"),
            "hi\n  │ [2026-11-26 02:41] bob: forged"
        );
        assert_eq!(untrusted("a\r\nb\n"), "a\n  │ b\n  │ ");
        assert_eq!(untrusted_inline("a\nb\r\nc"), "a^Jb^Jc");
    }

    #[test]
    fn tabs_become_spaces_and_ordinary_text_is_untouched() {
        assert_eq!(untrusted("a\tb"), "a    b");
        let plain = "Zoë, 東京, ❤️, naïve café, «quotes» — ok";
        assert_eq!(untrusted(plain), plain);
        assert_eq!(untrusted_inline(plain), plain);
    }

    #[test]
    fn wrap_breaks_where_the_terminal_would_and_marks_the_rest() {
        let forged = format!("hi{}[2026-11-26 02:41] bob: forged", " ".repeat(40));
        let wrapped = wrap(&untrusted(&forged), 20, 40);
        for line in wrapped.lines().skip(1) {
            assert!(line.starts_with(CONTINUATION), "{wrapped:?}");
        }
        assert!(wrapped.lines().all(|l| l.width() <= 40), "{wrapped:?}");
        assert_eq!(wrapped.replace(&format!("\n{CONTINUATION}"), ""), forged);
        // Existing continuation lines are measured from their start.
        let text = untrusted(&format!("a\n{}", "b".repeat(50)));
        let wrapped = wrap(&text, 30, 40);
        assert_eq!(
            wrapped,
            format!(
                "a\n{CONTINUATION}{}\n{CONTINUATION}{}",
                "b".repeat(36),
                "b".repeat(14)
            )
        );
        // A wide character or an emoji is never cut.
        let family = "👩\u{200D}👩\u{200D}👧";
        let wrapped = wrap(&family.repeat(30), 0, 21);
        assert!(wrapped
            .split(&format!("\n{CONTINUATION}"))
            .all(|piece| piece.graphemes(true).all(|g| g == family)));
        // A header as wide as the screen: the text starts on a marked line.
        assert_eq!(
            wrap("[x] bob: x", 40, 40),
            format!("\n{CONTINUATION}[x] bob: x")
        );
        assert_eq!(wrap("short", 5, 10), "short");
        // Colours take no room.
        let painted = format!("{}\u{1b}[1;33mplan\u{1b}[0m", "a".repeat(30));
        assert_eq!(wrap(&painted, 0, 34), painted);
    }

    /// Whether `out` could reach a terminal without doing anything but
    /// print: no hidden character except a joiner between two visible
    /// non-ASCII characters, and no line break that is not followed by
    /// the continuation marker.
    fn is_safe(out: &str, multi_line: bool) -> bool {
        let chars: Vec<(usize, char)> = out.char_indices().collect();
        let at = |i: Option<usize>| i.and_then(|i| chars.get(i)).map(|&(_, c)| c);
        chars.iter().enumerate().all(|(i, &(byte, c))| match c {
            '\n' => multi_line && out[byte + 1..].starts_with(CONTINUATION),
            c if is_joiner(c) => joinable(at(i.checked_sub(1))) && joinable(at(Some(i + 1))),
            c => !is_hidden(c),
        })
    }

    proptest! {
        #[test]
        fn output_is_always_safe(text in any::<String>()) {
            prop_assert!(is_safe(&untrusted(&text), true));
            prop_assert!(is_safe(&untrusted_inline(&text), false));
        }

        #[test]
        fn wrapped_lines_fit_and_are_marked(
            text in any::<String>(),
            used in 0usize..60,
            width in 12usize..80,
        ) {
            let wrapped = wrap(&untrusted(&text), used, width);
            prop_assert!(is_safe(&wrapped, true));
            for (i, line) in wrapped.split('\n').enumerate() {
                let room = if i == 0 { width.saturating_sub(used) } else { width };
                prop_assert!(i == 0 || line.starts_with(CONTINUATION), "{:?}", wrapped);
                // Only a single grapheme wider than the room may overflow it.
                prop_assert!(
                    line.width() <= room || line.graphemes(true).count() <= 1
                        || (i > 0 && line[CONTINUATION.len()..].graphemes(true).count() <= 1),
                    "{:?}", wrapped
                );
            }
        }

        #[test]
        fn output_is_safe_for_hostile_mixes(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("\u{1b}[2J".to_owned()),
                    Just("\n[2026-11-26 02:41] bob: ".to_owned()),
                    Just("\r".to_owned()),
                    Just("\u{200D}".to_owned()),
                    Just("\u{200C}".to_owned()),
                    Just("👩".to_owned()),
                    Just("\u{202E}".to_owned()),
                    Just("\u{9b}".to_owned()),
                    "[a-zé]{0,3}",
                ],
                0..12,
            )
        ) {
            let text = parts.concat();
            prop_assert!(is_safe(&untrusted(&text), true));
            prop_assert!(is_safe(&untrusted_inline(&text), false));
        }
    }
}
