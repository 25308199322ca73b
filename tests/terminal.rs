//! The interactive chat in a real terminal (tmux), typed into as a person
//! would: a message arriving while a line is half typed must not garble
//! that line.

mod common;

use std::time::Duration;

use common::{Env, Router, Tmux};

#[test]
fn an_arriving_message_does_not_garble_the_line_being_typed() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();

    let tmux = Tmux::new();
    tmux.open_chat("chat", (100, 30), &env, &router, "alice", "bob");
    tmux.wait_for("Chat with bob");
    tmux.wait_until("the prompt", |s| s.lines().any(|l| l.trim_end() == ">"));

    tmux.run(&["send-keys", "-t", "chat", "-l", "half typed"]);
    tmux.wait_for("> half typed");
    env.cmd("bob")
        .env("CHAT_SERVER", router.url())
        .args(["send", "alice", "arriving meanwhile"])
        .assert()
        .success();
    tmux.wait_for("bob: arriving meanwhile");
    // The line editor prints the message, then redraws the prompt: a
    // capture may fall between the two (seen under load), so wait for the
    // redraw. A garbled line never gets there, and the wait panics with
    // the screen.
    let typed_last = |screen: &str| {
        let last = screen.lines().rfind(|l| !l.trim().is_empty());
        last.map(str::trim_end) == Some("> half typed")
    };
    let screen = tmux.wait_until("the typed line below the message", typed_last);
    let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    let arrived = lines
        .iter()
        .position(|l| l.contains("bob: arriving meanwhile"))
        .unwrap();
    assert_eq!(
        arrived,
        lines.len() - 2,
        "the message prints above the prompt"
    );

    tmux.run(&["send-keys", "-t", "chat", "Enter"]);
    tmux.wait_for("sent to bob: half typed");
    tmux.run(&["send-keys", "-t", "chat", "-l", "/search half"]);
    tmux.run(&["send-keys", "-t", "chat", "Enter"]);
    tmux.wait_until("a search hit", |s| {
        s.lines()
            .any(|l| l.starts_with("bob  [") && l.ends_with("you ✓: half typed"))
    });
    tmux.run(&["send-keys", "-t", "chat", "-l", "exit"]);
    tmux.run(&["send-keys", "-t", "chat", "Enter"]);

    let sent = env.json("alice", &["history", "bob", "--json", "--direction", "out"]);
    assert_eq!(sent[0]["body"], "half typed");
}

#[test]
fn a_hostile_message_arriving_in_the_chat_is_shown_escaped() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();

    let tmux = Tmux::new();
    tmux.open_chat("chat", (200, 30), &env, &router, "alice", "bob");
    tmux.wait_for("Chat with bob");
    tmux.wait_until("the prompt", |s| s.lines().any(|l| l.trim_end() == ">"));
    let title = || tmux.run(&["display-message", "-p", "-t", "chat", "#{pane_title}"]);
    let title_before = title();

    // The sequence: retitle, clear, home, then a forged line.
    let injection = "\u{1b}]0;TITLE\u{7}\u{1b}[2J\u{1b}[H[2026-11-26 02:41] bob: please send the code to mallory";
    // Spaces up to the pane's edge, 200 columns after the 24 of
    // `[2026-11-26 04:10] bob: `: where the terminal would wrap, a forged
    // line would start a screen line.
    let wrapped = format!("hi{}[2026-11-26 02:41] bob: wrapped", " ".repeat(174));
    for body in [injection, &wrapped, "hi\n[2026-11-26 02:41] bob: forged"] {
        env.cmd("bob")
            .env("CHAT_SERVER", router.url())
            .args(["send", "alice", body])
            .assert()
            .success();
    }
    let screen = tmux.wait_for("bob: forged");
    assert!(
        screen.contains("\n  │ [2026-11-26 02:41] bob: wrapped"),
        "the wrapped part is not marked:\n{screen}"
    );
    assert!(
        screen.contains(
            "bob: ^[]0;TITLE^G^[[2J^[[H[2026-11-26 02:41] bob: please send the code to mallory"
        ),
        "the sequence is not shown escaped:\n{screen}"
    );
    assert!(
        screen.contains("Chat with bob"),
        "the screen was cleared:\n{screen}"
    );
    assert!(
        screen.contains("bob: hi\n  │ [2026-11-26 02:41] bob: forged"),
        "the second line is not marked:\n{screen}"
    );
    assert!(
        !screen
            .lines()
            .any(|l| l.starts_with("[2026-11-26 02:41] bob:")),
        "a forged line passes for a message:\n{screen}"
    );
    assert_eq!(title(), title_before, "the window title changed");
    assert!(!title().contains("TITLE"));

    tmux.run(&["send-keys", "-t", "chat", "-l", "exit"]);
    tmux.run(&["send-keys", "-t", "chat", "Enter"]);
}

#[test]
fn lines_typed_ahead_are_all_sent_in_order() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.init("alice");
    let bob = env.init("bob");
    env.ok("alice", &["add-contact", "bob", &bob]);

    let tmux = Tmux::new();
    tmux.open_chat("chat", (100, 30), &env, &router, "alice", "bob");
    tmux.wait_until("the prompt", |s| s.lines().any(|l| l.trim_end() == ">"));
    // Typed faster than a line is handed over, without bracketed paste.
    tmux.run(&[
        "send-keys",
        "-t",
        "chat",
        "one",
        "Enter",
        "two",
        "Enter",
        "three",
        "Enter",
    ]);
    // Several marks that change together take one line (issue 12 item 8):
    // "sent to bob: three", or "sent to bob: 3 messages, up to "three"".
    tmux.wait_until("the last line's mark", |s| {
        s.lines().any(|l| {
            let l = l.trim_end();
            l.contains("sent to bob") && (l.ends_with(": three") || l.ends_with("\"three\""))
        })
    });
    let sent = env.json("alice", &["history", "bob", "--json", "--direction", "out"]);
    let bodies: Vec<&str> = common::body_strs(&sent);
    assert_eq!(bodies, ["one", "two", "three"]);
    tmux.run(&["send-keys", "-t", "chat", "-l", "exit"]);
    tmux.run(&["send-keys", "-t", "chat", "Enter"]);
}

#[test]
fn delete_asks_on_a_terminal_and_deletes_only_on_yes() {
    let env = Env::new();
    env.init("alice");
    let bob = env.init("bob");
    env.ok("alice", &["add-contact", "bob", &bob]);
    // No router there: the message stays pending, and stored.
    env.fails(
        "alice",
        &[
            "send",
            "bob",
            "regrettable",
            "--server",
            "ws://127.0.0.1:1/ws",
            "--timeout",
            "1",
        ],
        1,
    );
    let outbox = env.json("alice", &["outbox", "--json"]);
    let id = outbox[0]["id"].as_str().unwrap().to_owned();
    let tmux = Tmux::new();
    let delete = common::clean_command(&env, "alice", &[], &format!("delete {id}"));
    // Asked twice: "n" keeps it, "y" deletes it.
    let script = format!("{delete}; {delete}; echo DONE; sleep 60");
    tmux.open("chat", (100, 20), &["sh", "-c", &script]);
    tmux.wait_for("Delete 1 message(s) from this profile? [y/N]");
    tmux.run(&["send-keys", "-t", "chat", "n", "Enter"]);
    tmux.wait_for("Nothing deleted.");
    assert_eq!(
        env.json("alice", &["outbox", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    tmux.run(&["send-keys", "-t", "chat", "y", "Enter"]);
    tmux.wait_for("DONE");
    assert!(tmux.screen().contains("Deleted 1 message(s)."));
    assert_eq!(
        env.json("alice", &["history", "--json"]),
        serde_json::json!([])
    );
}

fn bodies(env: &Env) -> Vec<String> {
    let sent = env.json("alice", &["history", "bob", "--json", "--direction", "out"]);
    sent.as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn receipts_for_earlier_messages_take_one_line() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    let at_router = |profile: &str, args: &[&str]| {
        env.cmd(profile)
            .env("CHAT_SERVER", router.url())
            .args(args)
            .assert()
            .success();
    };
    for body in ["one", "two", "three"] {
        at_router("alice", &["send", "bob", body]);
    }
    // Bob takes them in and reads them while Alice is away: six receipts
    // wait for her.
    at_router("bob", &["sync"]);
    env.cmd("bob")
        .env("CHAT_SERVER", router.url())
        .args(["chat", "alice"])
        .write_stdin("exit\n")
        .assert()
        .success();

    let tmux = Tmux::new();
    tmux.open_chat("chat", (100, 30), &env, &router, "alice", "bob -n 0");
    tmux.wait_prompt();
    tmux.wait_for("read by bob: 3 messages, up to \"three\"");
    // Longer than marks are ever held back: nothing more comes.
    std::thread::sleep(Duration::from_millis(2500));
    let screen = tmux.screen();
    assert!(!screen.contains("delivered to bob"), "{screen}");
    assert_eq!(screen.matches("read by bob").count(), 1, "{screen}");
    tmux.run(&["send-keys", "-t", "chat", "-l", "exit"]);
    tmux.run(&["send-keys", "-t", "chat", "Enter"]);
}

#[test]
fn slash_slash_ctrl_j_and_ctrl_c_in_the_chat() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.init("alice");
    let bob = env.init("bob");
    env.ok("alice", &["add-contact", "bob", &bob]);
    let tmux = Tmux::new();
    tmux.open_chat("chat", (100, 30), &env, &router, "alice", "bob");
    tmux.wait_prompt();

    // `//text` sends "/text" rather than running a command.
    tmux.run(&["send-keys", "-t", "chat", "-l", "//shrug"]);
    tmux.run(&["send-keys", "-t", "chat", "Enter"]);
    tmux.wait_for("sent to bob: /shrug");
    assert_eq!(bodies(&env), ["/shrug"]);

    // Ctrl-J starts a new line within the message; Enter sends both.
    tmux.run(&["send-keys", "-t", "chat", "-l", "line one"]);
    tmux.run(&["send-keys", "-t", "chat", "C-j"]);
    tmux.run(&["send-keys", "-t", "chat", "-l", "line two"]);
    tmux.wait_for("line two");
    tmux.run(&["send-keys", "-t", "chat", "Enter"]);
    tmux.wait_for("sent to bob: line one…");
    assert_eq!(bodies(&env), ["/shrug", "line one\nline two"]);
    // Alt-Enter too (ESC CR, as terminals send it).
    tmux.run(&["send-keys", "-t", "chat", "-l", "alt one"]);
    tmux.run(&["send-keys", "-t", "chat", "M-Enter"]);
    tmux.run(&["send-keys", "-t", "chat", "-l", "alt two"]);
    tmux.wait_for("alt two");
    tmux.run(&["send-keys", "-t", "chat", "Enter"]);
    tmux.wait_for("sent to bob: alt one…");
    let with_alt = ["/shrug", "line one\nline two", "alt one\nalt two"];
    assert_eq!(bodies(&env), with_alt);

    // Ctrl-C on a typed line clears it and stays; on an empty line leaves.
    tmux.run(&["send-keys", "-t", "chat", "-l", "a draft"]);
    tmux.wait_for("> a draft");
    tmux.run(&["send-keys", "-t", "chat", "C-c"]);
    tmux.wait_until("the cleared prompt", |s| {
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        lines.last().map(|l| l.trim_end()) == Some(">")
    });
    assert!(tmux.alive(), "Ctrl-C on a typed line left the chat");
    tmux.run(&["send-keys", "-t", "chat", "C-c"]);
    assert!(tmux.ended(), "Ctrl-C on an empty line did not leave");
    assert_eq!(bodies(&env), with_alt);
}

#[test]
fn notifications_are_checked_and_never_reach_a_pipe() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    let bad = env.fails("alice", &["chat", "bob", "--notify", "loud"], 2);
    assert!(bad.contains("bell, desktop, all or off"), "{bad}");
    // Asked for by the environment, but the output is a pipe.
    let mut chat = std::process::Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .env("CHAT_HOME", env.home())
        .env("CHAT_PROFILE", "alice")
        .env("CHAT_SERVER", router.url())
        .env("CHAT_NOTIFY", "all")
        .args(["chat", "bob"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    env.cmd("bob")
        .env("CHAT_SERVER", router.url())
        .args(["send", "alice", "ring?"])
        .assert()
        .success();
    // Taken in by the running chat (the only session of alice's profile).
    for _ in 0..200 {
        let got = env.json("alice", &["history", "bob", "--json", "--direction", "in"]);
        if got.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    use std::io::Write as _;
    chat.stdin.take().unwrap().write_all(b"exit\n").unwrap();
    let out = chat.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("bob: ring?"), "{stdout}");
    assert!(!stdout.contains('\u{7}'), "a bell in a pipe: {stdout:?}");
}

#[test]
fn a_protected_chat_asks_for_the_passphrase_once_without_echo() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    let new = common::pass_file(&env, "new-pass", "typed in the dark");
    common::weak_kdf_cmd(&env, "alice")
        .env("CHAT_NEW_PASSPHRASE_FILE", &new)
        .args(["passphrase", "set"])
        .assert()
        .success();

    let tmux = Tmux::new();
    tmux.open_chat("chat", (100, 30), &env, &router, "alice", "bob");
    tmux.wait_for("Passphrase for profile 'alice':");
    tmux.run(&["send-keys", "-t", "chat", "-l", "typed in the dark"]);
    tmux.run(&["send-keys", "-t", "chat", "Enter"]);
    let screen = tmux.wait_for("Chat with bob");
    assert!(!screen.contains("typed in the dark"), "echoed:\n{screen}");
    // The key opened once serves the whole session: a message arrives
    // and is decrypted, and nothing asks again.
    env.cmd("bob")
        .env("CHAT_SERVER", router.url())
        .args(["send", "alice", "for your eyes"])
        .assert()
        .success();
    let screen = tmux.wait_for("bob: for your eyes");
    assert_eq!(screen.matches("Passphrase for").count(), 1, "{screen}");
}
