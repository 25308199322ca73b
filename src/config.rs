//! The user's configuration file, `config.toml`: the default router, the
//! default profile, and display and notification preferences.
//!
//! It lives in the platform's configuration directory (on Linux
//! `~/.config/chat-p2p/config.toml`) unless `CHAT_CONFIG` names another
//! file. A missing file is an empty one. Values are checked when the file
//! is read, so a mistake is reported once, naming the file and the key,
//! instead of surfacing later as a confusing error about a flag nobody
//! typed. Writing goes through `toml_edit`, which keeps the user's comments
//! and layout.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use toml_edit::{DocumentMut, Item, Table};

use crate::client::ServerUrl;
use crate::profile::ProfileName;

/// The file's name inside the configuration directory.
pub const FILE_NAME: &str = "config.toml";

/// The environment variable naming another configuration file.
pub const PATH_ENV: &str = "CHAT_CONFIG";

/// Where the configuration file is: `CHAT_CONFIG` if set and not empty,
/// else the platform's configuration directory; `None` when the user has
/// no home directory.
pub fn path_from_env() -> Option<PathBuf> {
    match std::env::var_os(PATH_ENV) {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => directories::ProjectDirs::from("", "", "chat-p2p")
            .map(|dirs| dirs.config_dir().join(FILE_NAME)),
    }
}

/// One setting of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `router`: the default router URL.
    Router,
    /// `profile`: the default profile.
    Profile,
    /// `display.color`: auto, always or never.
    DisplayColor,
    /// `display.utc`: show times in UTC instead of local time.
    DisplayUtc,
    /// `notify.bell`: ring the terminal bell on a new message.
    NotifyBell,
    /// `notify.desktop`: a desktop notification on a new message.
    NotifyDesktop,
}

impl Key {
    /// Every key, in the order `config` shows them.
    pub const ALL: [Key; 6] = [
        Key::Router,
        Key::Profile,
        Key::DisplayColor,
        Key::DisplayUtc,
        Key::NotifyBell,
        Key::NotifyDesktop,
    ];

    /// The dotted name, as in the file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Key::Router => "router",
            Key::Profile => "profile",
            Key::DisplayColor => "display.color",
            Key::DisplayUtc => "display.utc",
            Key::NotifyBell => "notify.bell",
            Key::NotifyDesktop => "notify.desktop",
        }
    }

    /// The key named `name`, or [`ConfigError::UnknownKey`].
    pub fn parse(name: &str) -> Result<Self, ConfigError> {
        Key::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| ConfigError::UnknownKey(name.to_owned()))
    }

    /// The environment variable that overrides the file for this key
    /// (`display.color` has two, `NO_COLOR` and `CLICOLOR_FORCE`).
    pub fn env(self) -> &'static str {
        match self {
            Key::Router => "CHAT_SERVER",
            Key::Profile => "CHAT_PROFILE",
            Key::DisplayColor => "NO_COLOR",
            Key::DisplayUtc => "CHAT_DISPLAY_UTC",
            Key::NotifyBell => "CHAT_NOTIFY_BELL",
            Key::NotifyDesktop => "CHAT_NOTIFY_DESKTOP",
        }
    }

    /// What values the key takes, for error messages.
    pub fn expected(self) -> &'static str {
        match self {
            Key::Router => "a ws:// or wss:// URL, e.g. ws://localhost:8080/ws",
            Key::Profile => "a profile name",
            Key::DisplayColor => "auto, always or never",
            _ => "true or false",
        }
    }

    /// The table and the key inside it (`None` for top-level keys).
    fn path(self) -> (Option<&'static str>, &'static str) {
        match self.name().split_once('.') {
            Some((table, key)) => (Some(table), key),
            None => (None, self.name()),
        }
    }

    fn is_bool(self) -> bool {
        matches!(self, Key::DisplayUtc | Key::NotifyBell | Key::NotifyDesktop)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The names of every key, for "known keys: ..." messages.
pub fn known_keys() -> String {
    Key::ALL.map(Key::name).join(", ")
}

/// When to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour on a terminal whose `TERM` is not `dumb`.
    #[default]
    Auto,
    /// Always colour, even into a pipe.
    Always,
    /// Never colour.
    Never,
}

impl ColorChoice {
    /// The name, as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ColorChoice::Auto => "auto",
            ColorChoice::Always => "always",
            ColorChoice::Never => "never",
        }
    }
}

impl FromStr for ColorChoice {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "auto" => Ok(ColorChoice::Auto),
            "always" => Ok(ColorChoice::Always),
            "never" => Ok(ColorChoice::Never),
            _ => Err(()),
        }
    }
}

/// What went wrong with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key this version does not know.
    #[error("unknown setting '{0}': the settings are {keys}", keys = known_keys())]
    UnknownKey(String),
    /// A value the key does not take.
    #[error("'{value}' is not a valid {key}: expected {}", key.expected())]
    BadValue {
        /// The key.
        key: Key,
        /// What was given.
        value: String,
    },
    /// The file holds a bad value.
    #[error(
        "{path}: {key} = {value} is not valid (expected {}): fix it with \
         'chat-p2p config set {key} VALUE' or 'chat-p2p config unset {key}'",
        key.expected()
    )]
    BadFileValue {
        /// The file.
        path: String,
        /// The key.
        key: Key,
        /// The value as written.
        value: String,
    },
    /// The file is not valid TOML.
    #[error("{path} is not valid TOML: {message}; fix it in an editor or remove it")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's explanation.
        message: String,
    },
    /// The file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// A validated value, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string setting (router, profile, display.color).
    Text(String),
    /// A boolean setting.
    Bool(bool),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(s) => f.write_str(s),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Parses a boolean as people type it: true/false, yes/no, on/off, 1/0.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Checks `text` as a value of `key`; a router URL comes back completed
/// (see [`ServerUrl::parse`]).
pub fn validate(key: Key, text: &str) -> Result<Value, ConfigError> {
    let bad = || ConfigError::BadValue {
        key,
        value: text.to_owned(),
    };
    match key {
        Key::Router => ServerUrl::parse(text)
            .map(|url| Value::Text(url.to_string()))
            .map_err(|_| bad()),
        Key::Profile => ProfileName::parse(text)
            .map(|name| Value::Text(name.to_string()))
            .map_err(|_| bad()),
        Key::DisplayColor => ColorChoice::from_str(text)
            .map(|c| Value::Text(c.as_str().to_owned()))
            .map_err(|()| bad()),
        _ => parse_bool(text).map(Value::Bool).ok_or_else(bad),
    }
}

/// The settings a configuration file holds, each checked.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    /// The file's path.
    pub path: PathBuf,
    /// Whether the file exists.
    pub exists: bool,
    /// `router`.
    pub router: Option<ServerUrl>,
    /// `profile`.
    pub profile: Option<ProfileName>,
    /// `display.color`.
    pub color: Option<ColorChoice>,
    /// `display.utc`.
    pub utc: Option<bool>,
    /// `notify.bell`.
    pub bell: Option<bool>,
    /// `notify.desktop`.
    pub desktop: Option<bool>,
    /// Keys in the file this version does not know (ignored), dotted.
    pub unknown: Vec<String>,
}

impl FileConfig {
    /// Reads and checks the file at `path`; a missing file is empty.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config = FileConfig {
            path: path.to_path_buf(),
            ..FileConfig::default()
        };
        let Some(doc) = read_document(path)? else {
            return Ok(config);
        };
        config.exists = true;
        for key in Key::ALL {
            if let Some(item) = lookup(&doc, key) {
                config.apply(key, item)?;
            }
        }
        config.unknown = unknown_keys(&doc);
        Ok(config)
    }

    fn apply(&mut self, key: Key, item: &Item) -> Result<(), ConfigError> {
        let bad = || ConfigError::BadFileValue {
            path: self.path.display().to_string(),
            key,
            value: item.to_string().trim().to_owned(),
        };
        if key.is_bool() {
            let value = item.as_bool().ok_or_else(bad)?;
            match key {
                Key::DisplayUtc => self.utc = Some(value),
                Key::NotifyBell => self.bell = Some(value),
                _ => self.desktop = Some(value),
            }
            return Ok(());
        }
        let text = item.as_str().ok_or_else(bad)?;
        match key {
            Key::Router => self.router = Some(ServerUrl::parse(text).map_err(|_| bad())?),
            Key::Profile => self.profile = Some(ProfileName::parse(text).map_err(|_| bad())?),
            _ => self.color = Some(ColorChoice::from_str(text).map_err(|()| bad())?),
        }
        Ok(())
    }

    /// The value the file gives `key`, as text, if any.
    pub fn get(&self, key: Key) -> Option<String> {
        match key {
            Key::Router => self.router.as_ref().map(ToString::to_string),
            Key::Profile => self.profile.as_ref().map(ToString::to_string),
            Key::DisplayColor => self.color.map(|c| c.as_str().to_owned()),
            Key::DisplayUtc => self.utc.map(|b| b.to_string()),
            Key::NotifyBell => self.bell.map(|b| b.to_string()),
            Key::NotifyDesktop => self.desktop.map(|b| b.to_string()),
        }
    }
}

/// The parsed file, or `None` when there is none.
fn read_document(path: &Path) -> Result<Option<DocumentMut>, ConfigError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Io {
                action: "read",
                path: path.display().to_string(),
                source,
            })
        }
    };
    // A BOM left by an editor is not a reason to refuse the file.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    text.parse::<DocumentMut>()
        .map(Some)
        .map_err(|e| ConfigError::Syntax {
            path: path.display().to_string(),
            message: e.message().to_owned(),
        })
}

fn lookup(doc: &DocumentMut, key: Key) -> Option<&Item> {
    let item = match key.path() {
        (Some(table), name) => doc.get(table)?.get(name)?,
        (None, name) => doc.get(name)?,
    };
    (!item.is_none()).then_some(item)
}

fn unknown_keys(doc: &DocumentMut) -> Vec<String> {
    let mut unknown = Vec::new();
    for (name, item) in doc.iter() {
        match item.as_table_like() {
            Some(table) if matches!(name, "display" | "notify") => {
                for (sub, _) in table.iter() {
                    let dotted = format!("{name}.{sub}");
                    if Key::parse(&dotted).is_err() {
                        unknown.push(dotted);
                    }
                }
            }
            _ if Key::parse(name).is_ok() && !item.is_table_like() => {}
            _ => unknown.push(name.to_owned()),
        }
    }
    unknown
}

/// Sets `key` to `text` in the file at `path` (created, with its
/// directory, when missing), keeping everything else in it as it was.
/// Returns the value written.
pub fn set(path: &Path, key: Key, text: &str) -> Result<Value, ConfigError> {
    let value = validate(key, text)?;
    let mut doc = read_document(path)?.unwrap_or_default();
    let item = match &value {
        Value::Text(s) => toml_edit::value(s.as_str()),
        Value::Bool(b) => toml_edit::value(*b),
    };
    match key.path() {
        (Some(table), name) => {
            if !doc.get(table).is_some_and(Item::is_table_like) {
                doc.insert(table, Item::Table(Table::new()));
            }
            doc[table][name] = item;
        }
        (None, name) => doc[name] = item,
    }
    write_document(path, &doc)?;
    Ok(value)
}

/// Removes `key` from the file; whether it was there.
pub fn unset(path: &Path, key: Key) -> Result<bool, ConfigError> {
    let Some(mut doc) = read_document(path)? else {
        return Ok(false);
    };
    let removed = match key.path() {
        (Some(table), name) => doc
            .get_mut(table)
            .and_then(Item::as_table_like_mut)
            .and_then(|t| t.remove(name))
            .is_some(),
        (None, name) => doc.remove(name).is_some(),
    };
    if removed {
        write_document(path, &doc)?;
    }
    Ok(removed)
}

/// Writes through a temporary file and a rename, so a crash leaves the
/// old file or the new one, never half of one.
fn write_document(path: &Path, doc: &DocumentMut) -> Result<(), ConfigError> {
    let io_err = |source| ConfigError::Io {
        action: "write",
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err)?;
    }
    let tmp = path.with_extension("toml.tmp");
    let mut file = fs::File::create(&tmp).map_err(io_err)?;
    file.write_all(doc.to_string().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err)?;
    fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key_and_notes_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(
            &path,
            "router = \"ws://r:1/ws\"\nprofile = \"work\"\ncolour = 1\n\
             [display]\ncolor = \"never\"\nutc = true\nfont = \"x\"\n\
             [notify]\nbell = false\ndesktop = true\n",
        )
        .unwrap();
        let c = FileConfig::load(&path).unwrap();
        assert!(c.exists);
        assert_eq!(c.router.unwrap().to_string(), "ws://r:1/ws");
        assert_eq!(c.profile.unwrap().as_str(), "work");
        assert_eq!(c.color, Some(ColorChoice::Never));
        assert_eq!(
            (c.utc, c.bell, c.desktop),
            (Some(true), Some(false), Some(true))
        );
        assert_eq!(c.unknown, ["colour", "display.font"]);
    }

    #[test]
    fn a_missing_file_is_empty_and_a_bad_value_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let c = FileConfig::load(&path).unwrap();
        assert!(!c.exists && c.router.is_none());
        fs::write(&path, "[notify]\nbell = \"loud\"\n").unwrap();
        let e = FileConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("notify.bell") && e.contains(FILE_NAME), "{e}");
        fs::write(&path, "router = [").unwrap();
        let e = FileConfig::load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    }

    #[test]
    fn set_keeps_comments_and_unset_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(FILE_NAME);
        set(&path, Key::Router, "ws://r:1/ws").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("# mine\n{text}")).unwrap();
        assert_eq!(
            set(&path, Key::NotifyBell, "yes").unwrap(),
            Value::Bool(true)
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mine\n"), "{text}");
        assert!(text.contains("[notify]\nbell = true"), "{text}");
        assert!(unset(&path, Key::Router).unwrap());
        assert!(!unset(&path, Key::Router).unwrap());
        assert!(FileConfig::load(&path).unwrap().router.is_none());
    }

    #[test]
    fn validates_values() {
        assert!(matches!(
            validate(Key::DisplayColor, "sometimes"),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(validate(Key::Router, "http://x/ws").is_err());
        assert!(validate(Key::Profile, "a/b").is_err());
        assert!(matches!(
            Key::parse("colour"),
            Err(ConfigError::UnknownKey(_))
        ));
        assert_eq!(
            validate(Key::DisplayUtc, "off").unwrap(),
            Value::Bool(false)
        );
    }
}
