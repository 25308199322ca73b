//! The one-time code a person types on the new device: a nameplate and a
//! password, both Crockford base32.
//!
//! `K7M2Q-9XH4T-WB3NE` is three groups of five symbols: the first group is
//! the **nameplate** (25 bits), the other two the **password** (50 bits).
//! The nameplate only chooses where the two devices meet at the router (the
//! rendezvous keys are derived from it alone); the whole code is the SPAKE2
//! password, so the router, which may learn the nameplate, still gets one
//! guess at the rest, and a wrong guess ends the link.
//!
//! Crockford's alphabet has no I, L, O or U; reading is forgiving: lower
//! case, `O` for `0`, `I`/`L` for `1`, and any spaces or hyphens are
//! accepted.

use std::fmt;

use rand::RngCore;

/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Symbols in a group as printed.
const GROUP: usize = 5;
/// Symbols of nameplate.
const NAMEPLATE_LEN: usize = GROUP;
/// Symbols of password.
const PASSWORD_LEN: usize = 2 * GROUP;

/// Why a typed code was refused before any network use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodeError {
    /// Not the right number of symbols.
    #[error(
        "a link code has {len} letters and digits (like K7M2Q-9XH4T-WB3NE), this one has {0}",
        len = NAMEPLATE_LEN + PASSWORD_LEN
    )]
    Length(usize),
    /// A character outside the alphabet.
    #[error("'{0}' cannot be in a link code (it uses digits and letters other than I, L, O, U)")]
    Symbol(char),
}

/// A link code: nameplate and password, as canonical symbols.
#[derive(Clone, PartialEq, Eq)]
pub struct Code {
    symbols: String,
}

impl Code {
    /// A fresh random code from the operating system's generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; NAMEPLATE_LEN + PASSWORD_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let symbols = bytes
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
            .collect();
        Self { symbols }
    }

    /// Reads a code as typed.
    pub fn parse(text: &str) -> Result<Self, CodeError> {
        let mut symbols = String::with_capacity(NAMEPLATE_LEN + PASSWORD_LEN);
        for c in text.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let upper = c.to_ascii_uppercase();
            let canonical = match upper {
                'O' => '0',
                'I' | 'L' => '1',
                _ if upper.is_ascii() && ALPHABET.contains(&(upper as u8)) => upper,
                _ => return Err(CodeError::Symbol(c)),
            };
            symbols.push(canonical);
        }
        let n = symbols.chars().count();
        if n != NAMEPLATE_LEN + PASSWORD_LEN {
            return Err(CodeError::Length(n));
        }
        Ok(Self { symbols })
    }

    /// The nameplate: where the devices meet.
    pub fn nameplate(&self) -> &str {
        &self.symbols[..NAMEPLATE_LEN]
    }

    /// The whole code, the PAKE password.
    pub fn password(&self) -> &[u8] {
        self.symbols.as_bytes()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.symbols.as_bytes().chunks(GROUP).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Code {
    /// Never shows the password part.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({}-…)", self.nameplate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_three_groups_and_reads_back() {
        let code = Code::generate();
        let text = code.to_string();
        assert_eq!(text.len(), 17);
        assert_eq!(text.matches('-').count(), 2);
        assert_eq!(Code::parse(&text).unwrap(), code);
        assert_eq!(code.nameplate(), &text[..5]);
    }

    #[test]
    fn reading_forgives_case_spacing_and_look_alikes() {
        let code = Code::parse("k7m2q 9xh4t wb3ne").unwrap();
        assert_eq!(code.to_string(), "K7M2Q-9XH4T-WB3NE");
        let alike = Code::parse("OIL00-11111-00000").unwrap();
        assert_eq!(alike.to_string(), "01100-11111-00000");
    }

    #[test]
    fn refuses_wrong_lengths_and_symbols() {
        assert_eq!(Code::parse("K7M2Q-9XH4T"), Err(CodeError::Length(10)));
        assert_eq!(Code::parse(""), Err(CodeError::Length(0)));
        assert_eq!(
            Code::parse("K7M2Q-9XH4T-WB3NU"),
            Err(CodeError::Symbol('U'))
        );
        assert_eq!(
            Code::parse("K7M2Q-9XH4T-WB3N\u{e9}"),
            Err(CodeError::Symbol('\u{e9}'))
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let code = Code::parse("K7M2Q-9XH4T-WB3NE").unwrap();
        assert_eq!(format!("{code:?}"), "Code(K7M2Q-…)");
    }

    #[test]
    fn every_symbol_is_drawn() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.extend(Code::generate().symbols.chars());
        }
        assert_eq!(seen.len(), 32);
    }
}
