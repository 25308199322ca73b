//! Profiles: where a profile's one database file lives, and which names are
//! allowed.
//!
//! A profile named `alice` under the home `H` is the single file
//! `H/alice/chat.db`. Its directory is private to the user (0700) and the
//! file is readable by the user alone (0600).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The longest profile name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// The file name of a profile's database inside its directory.
pub const DB_FILE_NAME: &str = "chat.db";

/// Why a profile name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileNameError {
    /// The empty string.
    #[error("a profile name cannot be empty")]
    Empty,
    /// `.` or `..`, which would escape the home directory.
    #[error("'{0}' cannot be a profile name: it means a directory")]
    Dot(String),
    /// Contains `/` or `\`.
    #[error("a profile name cannot contain '/' or '\\'")]
    Separator,
    /// Contains a control character (newline, tab, NUL...).
    #[error("a profile name cannot contain control characters")]
    Control,
    /// Leading or trailing white space, almost certainly a typo.
    #[error("a profile name cannot start or end with white space")]
    Whitespace,
    /// Longer than [`MAX_NAME_CHARS`].
    #[error("a profile name can be at most {MAX_NAME_CHARS} characters long")]
    TooLong,
}

/// A validated profile name: safe to use as one path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileName(String);

impl ProfileName {
    /// Validates a profile name.
    pub fn parse(name: &str) -> Result<Self, ProfileNameError> {
        if name.is_empty() {
            return Err(ProfileNameError::Empty);
        }
        if name == "." || name == ".." {
            return Err(ProfileNameError::Dot(name.to_owned()));
        }
        if name.contains(['/', '\\']) {
            return Err(ProfileNameError::Separator);
        }
        if name.chars().any(char::is_control) {
            return Err(ProfileNameError::Control);
        }
        if name.trim() != name {
            return Err(ProfileNameError::Whitespace);
        }
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(ProfileNameError::TooLong);
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ProfileName {
    type Err = ProfileNameError;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::parse(name)
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The platform's data directory for chat-p2p (on Linux
/// `~/.local/share/chat-p2p`), or `None` where there is no home directory.
pub fn default_home() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "chat-p2p").map(|dirs| dirs.data_dir().to_path_buf())
}

/// A profile resolved to its place on disk.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The profile's name.
    pub name: ProfileName,
    /// The profile's directory, `<home>/<name>`.
    pub dir: PathBuf,
}

impl Profile {
    /// The profile `name` under `home`.
    pub fn new(home: &Path, name: ProfileName) -> Self {
        let dir = home.join(name.as_str());
        Self { name, dir }
    }

    /// The path of the profile's database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join(DB_FILE_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["default", "alice", "work-2", "Zoë", "a.b", "with space"] {
            assert_eq!(ProfileName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_names_that_are_not_one_safe_path_component() {
        use ProfileNameError::*;
        assert_eq!(ProfileName::parse(""), Err(Empty));
        assert_eq!(ProfileName::parse("."), Err(Dot(".".into())));
        assert_eq!(ProfileName::parse(".."), Err(Dot("..".into())));
        assert_eq!(ProfileName::parse("a/b"), Err(Separator));
        assert_eq!(ProfileName::parse("../etc"), Err(Separator));
        assert_eq!(ProfileName::parse("a\\b"), Err(Separator));
        assert_eq!(ProfileName::parse("a\nb"), Err(Control));
        assert_eq!(ProfileName::parse("a\0b"), Err(Control));
        assert_eq!(ProfileName::parse(" alice"), Err(Whitespace));
        assert_eq!(ProfileName::parse(&"x".repeat(65)), Err(TooLong));
        assert!(ProfileName::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn database_lives_in_its_own_directory() {
        let p = Profile::new(Path::new("/h"), ProfileName::parse("bob").unwrap());
        assert_eq!(p.db_path(), Path::new("/h/bob/chat.db"));
    }
}
