//! Telling the person at the terminal that a message arrived: the
//! terminal's bell and a desktop notification, each only when asked for
//! and never when the output is not a terminal.

use std::process::{Command, Stdio};

use crate::render::untrusted_inline;

/// Which notifications a chat gives on a new message. Both off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notify {
    /// Ring the terminal's bell (BEL), which most terminals and tmux turn
    /// into a sound, a flash or a mark on the window.
    pub bell: bool,
    /// Show a desktop notification (through `notify-send`) where a
    /// session bus exists.
    pub desktop: bool,
}

impl Notify {
    /// Parses `bell`, `desktop`, `all` (both) or `off` (neither); several
    /// may be joined with commas (`bell,desktop`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut notify = Self::default();
        for part in text.split(',').map(str::trim) {
            match part.to_ascii_lowercase().as_str() {
                "bell" => notify.bell = true,
                "desktop" => notify.desktop = true,
                "all" | "on" => {
                    notify.bell = true;
                    notify.desktop = true;
                }
                "off" | "none" | "" => {}
                other => {
                    return Err(format!(
                        "'{other}' is not a kind of notification: use bell, desktop, all or off"
                    ))
                }
            }
        }
        Ok(notify)
    }

    /// What is left when the output is not a terminal: nothing.
    pub fn for_terminal(self, is_terminal: bool) -> Self {
        if is_terminal {
            self
        } else {
            Self::default()
        }
    }
}

/// Shows desktop notifications by running `notify-send` (libnotify's tool,
/// which talks to the session's notification service over D-Bus): no
/// D-Bus library to build, and nothing at all where there is no desktop.
#[derive(Debug)]
pub struct Desktop {
    /// Cleared when no session bus exists or `notify-send` is missing.
    available: bool,
}

impl Desktop {
    /// Desktop notifications if there is a session bus to send them on.
    pub fn detect() -> Self {
        let bus = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|v| !v.is_empty());
        Self { available: bus }
    }

    /// Whether notifications can be shown.
    pub fn available(&self) -> bool {
        self.available
    }

    /// Shows `title` and `body` (peer text: made safe here). Returns an
    /// explanation, once, if notifications turn out to be impossible.
    pub fn show(&mut self, title: &str, body: &str) -> Option<String> {
        if !self.available {
            return None;
        }
        let spawned = Command::new("notify-send")
            .args(["--app-name=chat-p2p", "--"])
            .arg(markup_safe(title))
            .arg(markup_safe(body))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(mut child) => {
                // Reaped on the side: the chat does not wait for it.
                std::thread::spawn(move || child.wait());
                None
            }
            Err(e) => {
                self.available = false;
                Some(format!(
                    "desktop notifications are off: cannot run notify-send ({e}); \
                     install libnotify-bin to have them"
                ))
            }
        }
    }
}

/// Peer text for a notification: control characters made visible, and
/// the few characters notification servers read as markup escaped.
fn markup_safe(text: &str) -> String {
    untrusted_inline(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kinds_of_notification() {
        assert_eq!(Notify::parse("off").unwrap(), Notify::default());
        assert_eq!(
            Notify::parse("bell").unwrap(),
            Notify {
                bell: true,
                desktop: false
            }
        );
        let all = Notify {
            bell: true,
            desktop: true,
        };
        assert_eq!(Notify::parse("all").unwrap(), all);
        assert_eq!(Notify::parse("Bell, desktop").unwrap(), all);
        let bad = Notify::parse("loud").unwrap_err();
        assert!(bad.contains("bell, desktop, all or off"), "{bad}");
    }

    #[test]
    fn nothing_is_notified_when_the_output_is_not_a_terminal() {
        let all = Notify::parse("all").unwrap();
        assert_eq!(all.for_terminal(false), Notify::default());
        assert_eq!(all.for_terminal(true), all);
    }

    #[test]
    fn notification_text_is_made_safe() {
        assert_eq!(
            markup_safe("<b>hi</b> & \u{1b}[2J"),
            "&lt;b&gt;hi&lt;/b&gt; &amp; ^[[2J"
        );
    }
}
