//! A private tmux server for the tests that drive the interactive chat in a
//! real terminal, typed into as a person would.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{Env, Router};

/// How long a wait on the screen may last. Only a guard against hanging;
/// nothing is asserted about timing.
const GUARD: Duration = Duration::from_secs(30);

/// The session the methods without a session name act on.
pub const SESSION: &str = "chat";

/// A private tmux server, with one session per program, killed when dropped.
/// The methods without a session name act on the session [`SESSION`]; their
/// `_in` twins take the name.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn new() -> Self {
        // One server per test: tests run in parallel, and dropping one
        // kills its server.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("chat-p2p-test-{}-{n}", std::process::id());
        Self { socket }
    }

    /// Runs `tmux ARGS` on this server, asserting success; its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts `command` (a shell line, or a program and its arguments) in
    /// the detached session `name`, `width` columns by `height` rows.
    pub fn open(&self, name: &str, (width, height): (u16, u16), command: &[&str]) {
        let (width, height) = (width.to_string(), height.to_string());
        let mut args = vec!["new-session", "-d", "-s", name, "-x", &width, "-y", &height];
        args.extend_from_slice(command);
        self.run(&args);
    }

    /// Opens `PROFILE chat ARGS` against `router` in the session `name`,
    /// `size` columns by rows, without waiting for anything.
    pub fn open_chat(
        &self,
        name: &str,
        size: (u16, u16),
        env: &Env,
        router: &Router,
        profile: &str,
        args: &str,
    ) {
        let url = router.url();
        let command = clean_command(
            env,
            profile,
            &[("CHAT_SERVER", &url)],
            &format!("chat {args}"),
        );
        self.open(name, size, &[&command]);
    }

    /// Waits until the session `name` shows the chat's empty prompt.
    pub fn wait_prompt_in(&self, name: &str) -> String {
        self.wait_until_in(name, "the prompt", |s| {
            s.lines().any(|l| l.trim_end() == ">")
        })
    }

    pub fn wait_prompt(&self) -> String {
        self.wait_prompt_in(SESSION)
    }

    pub fn screen_in(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", name])
    }

    pub fn screen(&self) -> String {
        self.screen_in(SESSION)
    }

    /// Waits until the session `name` shows `text`.
    pub fn wait_for_in(&self, name: &str, text: &str) -> String {
        self.wait_until_in(name, text, |screen| screen.contains(text))
    }

    pub fn wait_for(&self, text: &str) -> String {
        self.wait_for_in(SESSION, text)
    }

    /// Waits until the screen of the session `name` passes `check`; the
    /// guard only prevents hanging.
    pub fn wait_until_in(&self, name: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + GUARD;
        while Instant::now() < deadline {
            let screen = self.screen_in(name);
            if check(&screen) {
                return screen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{name} never showed {what:?}:\n{}", self.screen_in(name));
    }

    pub fn wait_until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        self.wait_until_in(SESSION, what, check)
    }

    /// Types `text` into the session `name`, then Enter.
    pub fn type_line_in(&self, name: &str, text: &str) {
        self.run(&["send-keys", "-t", name, "-l", text]);
        self.run(&["send-keys", "-t", name, "Enter"]);
    }

    pub fn type_line(&self, text: &str) {
        self.type_line_in(SESSION, text)
    }

    /// Whether the session `name` (its program) still runs.
    pub fn alive_in(&self, name: &str) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", name])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub fn alive(&self) -> bool {
        self.alive_in(SESSION)
    }

    /// Waits (with the guard) until the session `name` has ended; whether
    /// it has.
    pub fn ended_in(&self, name: &str) -> bool {
        let deadline = Instant::now() + GUARD;
        while self.alive_in(name) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        !self.alive_in(name)
    }

    pub fn ended(&self) -> bool {
        self.ended_in(SESSION)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// `s` as one word for `sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The shell line running `chat-p2p ARGS` as `profile` of `env` with
/// nothing else from the caller's environment: `env -i HOME=/nonexistent
/// TERM=xterm CHAT_HOME=.. CHAT_PROFILE=.. VARS.. BIN ARGS`. `ARGS` is
/// pasted as it is; the rest is quoted.
pub fn clean_command(env: &Env, profile: &str, vars: &[(&str, &str)], args: &str) -> String {
    let mut line = format!(
        "env -i HOME=/nonexistent TERM=xterm CHAT_HOME={} CHAT_PROFILE={profile}",
        shell_quote(env.home().to_str().unwrap()),
    );
    for (name, value) in vars {
        line.push_str(&format!(" {name}={}", shell_quote(value)));
    }
    line.push_str(&format!(
        " {} {args}",
        shell_quote(env!("CARGO_BIN_EXE_chat-p2p"))
    ));
    line
}
