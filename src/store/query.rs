//! Plain-words search: what people type, turned into index lookups.
//!
//! A query is split at whitespace into pieces. Each piece becomes one term,
//! all terms required:
//!
//! - a piece of ordinary words becomes an FTS5 string for the unicode61
//!   index (`messages_fts`). unicode61 splits `don't` into `don` + `t` and
//!   `e-mail` into `e` + `mail`; quoted as one FTS5 string these are a
//!   phrase, so the piece finds the same spelling (and `e mail`). The last
//!   word is a prefix (`plan` finds `planning`) unless punctuation ends the
//!   piece: `plan?` and `c++` end their word, so `c++` finds `C++` and not
//!   `cat` (a trailing `*`, FTS5's prefix mark, keeps the prefix). Punctuation never is syntax: no piece can break the query.
//! - a piece with a character of a script written without spaces between
//!   words (Chinese, Japanese kana, Thai, Lao, Khmer, Myanmar) is a
//!   substring: three characters or more go to the trigram index
//!   (`messages_trigram`), shorter ones are a `LIKE` test on the body
//!   (the trigram index cannot look up fewer than three characters).
//! - a piece that is only punctuation or symbols (`!!!`, `🎉`) is harmless
//!   next to words (dropped); alone it is a substring too, so `!!!` finds
//!   `wow!!!` (by `LIKE`: the trigram index holds only non-ASCII bodies).
//! - text between a pair of double quotes is one piece, a phrase matched
//!   exactly (no prefix): `"secret plan"`.

use unicode_normalization::UnicodeNormalization;

/// The index lookups of one plain-words query.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// An FTS5 expression for `messages_fts`, when the query has words.
    pub words: Option<String>,
    /// An FTS5 expression for `messages_trigram`, when it has substrings of
    /// three characters or more.
    pub trigrams: Option<String>,
    /// `LIKE` patterns (with `\` as the escape) every hit's body matches.
    pub likes: Vec<String>,
}

impl Plan {
    /// Whether the query asked for nothing at all (empty or blank).
    pub fn is_empty(&self) -> bool {
        self.words.is_none() && self.trigrams.is_none() && self.likes.is_empty()
    }
}

/// Whether unicode61 (with its default categories L*, N*, Co) keeps `c` in
/// a token; combining marks are kept with their letter too (they belong to
/// the word, and unicode61 folds or keeps them itself).
fn is_word_char(c: char) -> bool {
    use unicode_properties::{GeneralCategoryGroup as G, UnicodeGeneralCategory as _};
    // In ASCII the letters and digits are all there is of L*, N* and Co:
    // skip the tables (a test checks all 128).
    if c.is_ascii() {
        return c.is_ascii_alphanumeric();
    }
    matches!(c.general_category_group(), G::Letter | G::Number | G::Mark)
        || c.general_category() == unicode_properties::GeneralCategory::PrivateUse
}

/// Whether `c` belongs to a script usually written without spaces between
/// words, where unicode61 sees a whole sentence as one token.
pub fn is_unspaced(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF      // Thai, Lao
        | 0x1000..=0x109F    // Myanmar
        | 0x1780..=0x17FF    // Khmer
        | 0x3005..=0x3007    // 々 〆 〇
        | 0x3040..=0x30FF    // Hiragana, Katakana
        | 0x31F0..=0x31FF    // Katakana extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0x20000..=0x3FFFF  // CJK extensions B and later
    )
}

/// An FTS5 string: in double quotes, quotes inside doubled.
fn fts_string(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// A `LIKE` pattern matching `text` anywhere, `\` escaping `%`, `_`, `\`.
fn like_anywhere(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// What the user typed, as index lookups. Never fails: any text is a
/// query, though a blank one is an empty [`Plan`].
pub fn plan(query: &str) -> Plan {
    let query: String = query.nfc().collect();
    let mut words = Vec::new();
    let mut substrings = Vec::new();
    let mut plan = Plan::default();
    let mut symbols = Vec::new();
    for (piece, quoted) in pieces(&query) {
        let has_word = piece.chars().any(is_word_char);
        if piece.chars().any(is_unspaced) {
            substrings.push(trim_punctuation(piece.trim()));
        } else if has_word {
            // `secr*` (FTS5 habit) is a prefix too.
            let ends_word =
                piece.ends_with('*') || piece.chars().next_back().is_some_and(is_word_char);
            let star = if ends_word && !quoted { "*" } else { "" };
            words.push(format!("{}{star}", fts_string(piece)));
        } else if !piece.is_ascii() {
            // Emoji and other symbols: unicode61 ignores them.
            substrings.push(piece.trim());
        } else if !piece.trim().is_empty() {
            symbols.push(piece);
        }
    }
    if words.is_empty() && substrings.is_empty() && !symbols.is_empty() {
        // Only ASCII punctuation: look for it as typed. Not through the
        // trigram index, which holds only non-ASCII bodies.
        plan.likes.push(like_anywhere(query.trim()));
    }
    let mut trigrams = Vec::new();
    for s in substrings {
        if s.chars().count() >= 3 {
            trigrams.push(fts_string(s));
        } else {
            plan.likes.push(like_anywhere(s));
        }
    }
    if !words.is_empty() {
        plan.words = Some(words.join(" "));
    }
    if !trigrams.is_empty() {
        plan.trigrams = Some(trigrams.join(" "));
    }
    plan
}

/// The query's pieces: each text between a pair of double quotes (a
/// phrase, `true`), and every whitespace-separated piece outside them. A
/// quote without a partner is just punctuation.
fn pieces(query: &str) -> Vec<(&str, bool)> {
    let mut out = Vec::new();
    let mut rest = query;
    loop {
        let pair = rest.find('"').and_then(|open| {
            let close = rest[open + 1..].find('"')? + open + 1;
            Some((open, close))
        });
        let Some((open, close)) = pair else {
            out.extend(rest.split_whitespace().map(|p| (p, false)));
            return out;
        };
        out.extend(rest[..open].split_whitespace().map(|p| (p, false)));
        out.push((&rest[open + 1..close], true));
        rest = &rest[close + 1..];
    }
}

/// `piece` without the punctuation around it (`「テキスト」。` → `テキスト`),
/// or the piece itself if that would leave nothing.
fn trim_punctuation(piece: &str) -> &str {
    let trimmed = piece.trim_matches(|c: char| !is_word_char(c));
    if trimmed.is_empty() {
        piece
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_shortcut_agrees_with_the_categories() {
        use unicode_properties::{GeneralCategoryGroup as G, UnicodeGeneralCategory as _};
        for c in (0u8..128).map(char::from) {
            let by_category = matches!(c.general_category_group(), G::Letter | G::Number | G::Mark)
                || c.general_category() == unicode_properties::GeneralCategory::PrivateUse;
            assert_eq!(is_word_char(c), by_category, "{c:?}");
        }
    }

    fn words(q: &str) -> Option<String> {
        plan(q).words
    }

    #[test]
    fn words_are_quoted_prefixes() {
        assert_eq!(
            words("secret plan").as_deref(),
            Some("\"secret\"* \"plan\"*")
        );
        assert_eq!(words("don't").as_deref(), Some("\"don't\"*"));
        assert_eq!(words("e-mail").as_deref(), Some("\"e-mail\"*"));
        assert_eq!(
            words("AND OR NOT").as_deref(),
            Some("\"AND\"* \"OR\"* \"NOT\"*")
        );
        assert_eq!(words("a\"b").as_deref(), Some("\"a\"\"b\"*"));
        assert_eq!(
            words("\"secret plan\" now").as_deref(),
            Some("\"secret plan\" \"now\"*")
        );
    }

    #[test]
    fn punctuation_ends_a_word_and_alone_is_harmless() {
        assert_eq!(words("c++").as_deref(), Some("\"c++\""));
        assert_eq!(words("secr*").as_deref(), Some("\"secr*\"*"));
        assert_eq!(
            words("what's the plan?").as_deref(),
            Some("\"what's\"* \"the\"* \"plan?\"")
        );
        let p = plan("wow !!!");
        assert_eq!(p.words.as_deref(), Some("\"wow\"*"));
        assert!(p.trigrams.is_none() && p.likes.is_empty());
    }

    #[test]
    fn only_punctuation_is_a_substring() {
        assert_eq!(plan("!!!").likes, ["%!!!%"]);
        assert_eq!(plan("?").likes, ["%?%"]);
        assert_eq!(plan("100%").words.as_deref(), Some("\"100%\""));
        assert_eq!(plan("%_").likes, ["%\\%\\_%"]);
    }

    #[test]
    fn unspaced_scripts_are_substrings() {
        let p = plan("テキスト");
        assert_eq!(p.trigrams.as_deref(), Some("\"テキスト\""));
        assert!(p.words.is_none());
        assert_eq!(plan("「日本語」。").trigrams.as_deref(), Some("\"日本語\""));
        assert_eq!(plan("ไทย").trigrams.as_deref(), Some("\"ไทย\""));
        assert_eq!(plan("日本").likes, ["%日本%"]);
        let mixed = plan("meeting 会議");
        assert_eq!(mixed.words.as_deref(), Some("\"meeting\"*"));
        assert_eq!(mixed.likes, ["%会議%"]);
        assert_eq!(plan("🎉").likes, ["%🎉%"]);
    }

    #[test]
    fn blank_is_empty() {
        assert!(plan("").is_empty());
        assert!(plan("  \t").is_empty());
    }
}
