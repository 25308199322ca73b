//! `link`: a new device gets the identity and the whole history from an
//! existing one, through a real router, with real binaries on both sides.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A guard against hanging forever, not a timing assertion.
const GUARD: Duration = Duration::from_secs(60);

/// A profile `name` with `n` messages (both directions, every status)
/// with two contacts, imported as a user would.
fn profile_with(env: &Env, name: &str, n: u32) -> String {
    let me = env.init(name);
    let (bob, carol) = (key(), key());
    let mut records = vec![
        header(Some(&me)),
        contact("bob", &bob),
        contact("carol", &carol),
    ];
    for i in 0..n {
        let peer = if i % 3 == 0 { &carol } else { &bob };
        let at = format!(
            "2026-01-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            1 + i / 86_400 % 28,
            i / 3600 % 24,
            i / 60 % 60,
            i % 60,
            i % 1000
        );
        let body = format!("message {i}: the quick brown fox jumps over the lazy dog");
        let status = ["sent", "delivered", "read"][(i % 3) as usize];
        records.push(if i % 2 == 0 {
            incoming(&id(i), peer, &body, &at)
        } else {
            outgoing(&id(i), peer, &body, &at, status)
        });
    }
    let file = env.path(&format!("{name}.jsonl"));
    write_jsonl(&file, &records);
    env.ok(name, &["import", p(&file)]);
    me
}

/// A running `link` on the existing device.
struct Issuer {
    child: Child,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
    code: String,
}

impl Issuer {
    /// Starts `link --json` for `profile` and reads its code.
    fn start(
        env: &Env,
        profile: &str,
        router: &Router,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let mut cmd = spawnable(env, profile);
        cmd.args(["link", "--json", "--server", &router.url()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let errors = lines_of(child.stderr.take().unwrap());
        let first: Value = serde_json::from_str(&lines.recv_timeout(GUARD).unwrap()).unwrap();
        assert_eq!(first["kind"], "code", "{first}");
        let code = first["code"].as_str().unwrap().to_owned();
        assert!(
            first["command"]
                .as_str()
                .unwrap()
                .contains(&format!("link --join {code}")),
            "{first}"
        );
        assert_eq!(first["server"], router.url());
        Issuer {
            child,
            lines,
            errors,
            code,
        }
    }

    /// Waits for the exit: its status, last stdout line and all stderr.
    fn finish(mut self) -> (bool, Option<Value>, String) {
        let status = self.child.wait().unwrap();
        // The pipes' readers end with the process: read to their end.
        let rest = |rx: &mpsc::Receiver<String>| -> Vec<String> {
            std::iter::from_fn(|| rx.recv_timeout(GUARD).ok()).collect()
        };
        let last = rest(&self.lines)
            .last()
            .map(|l| serde_json::from_str(l).unwrap());
        let errors = rest(&self.errors);
        (status.success(), last, errors.join("\n"))
    }

    /// Waits for the stderr line saying the test pause was reached.
    fn wait_paused(&self) {
        wait_for_pause(&self.errors);
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary for `profile`, as a std command (to spawn with pipes).
fn spawnable(env: &Env, profile: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-p2p"));
    cmd.env_clear()
        .env("CHAT_HOME", env.home())
        .env("CHAT_CONFIG", env.config())
        .env("CHAT_PROFILE", profile);
    cmd
}

fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for_pause(errors: &mpsc::Receiver<String>) {
    loop {
        let line = errors.recv_timeout(GUARD).expect("the pause line");
        if line.starts_with("link: paused at chunk") {
            return;
        }
    }
}

/// `link --join CODE` for `profile`, run to the end.
fn join(env: &Env, profile: &str, router: &Router, code: &str, extra: &[&str]) -> Output {
    env.cmd(profile)
        .args(["link", "--join", code, "--server", &router.url()])
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The device row's id and name.
fn device(env: &Env, profile: &str) -> (Vec<u8>, String) {
    let conn = rusqlite::Connection::open(env.db(profile)).unwrap();
    conn.query_row("SELECT id, name FROM device", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

/// Files beside the profile left by a link (snapshots, partial copies).
fn leftovers(env: &Env, profile: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(env.home().join(profile)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".link-"))
        .collect()
}

#[test]
fn a_linked_device_gets_the_identity_and_an_identical_history() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let me = profile_with(&env, "desk", 10_000);
    // The existing device has a device row of its own already.
    env.ok("desk", &["sync", "--server", &router.url()]);
    let issuer = Issuer::start(&env, "desk", &router, &[], &[]);
    let out = join(
        &env,
        "laptop",
        &router,
        &issuer.code,
        &["--device-name", "my laptop", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let joined: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (ok, linked, errors) = issuer.finish();
    assert!(ok, "{errors}");
    let linked = linked.unwrap();
    assert_eq!(linked["kind"], "linked");
    assert_eq!(linked["messages"], 10_000);
    assert_eq!(linked["device_name"], "my laptop");
    assert_eq!(linked["device_id"], joined["device_id"]);
    assert_eq!(joined["public_key"], me.as_str());
    assert_eq!(joined["messages"], 10_000);
    assert_eq!(joined["replaced"], false);

    // Same identity, same rows: messages (ids, bodies, statuses, times),
    // their events, contacts.
    assert_eq!(env.key("laptop"), me);
    assert_eq!(env.dump("laptop"), env.dump("desk"));
    // The search index came along.
    let search = ["history", "--search", "fox", "--json", "--limit", "20000"];
    let hits = |profile| env.json(profile, &search).as_array().map(Vec::len);
    assert_eq!(hits("laptop"), Some(10_000));
    // Its own device id, under the name it was given.
    let (desk_id, _) = device(&env, "desk");
    let (laptop_id, laptop_name) = device(&env, "laptop");
    assert_ne!(desk_id, laptop_id);
    assert_eq!(laptop_name, "my laptop");
    assert_eq!(
        uuid::Uuid::from_slice(&laptop_id).unwrap().to_string(),
        joined["device_id"].as_str().unwrap()
    );
    assert!(leftovers(&env, "desk").is_empty());
    assert!(leftovers(&env, "laptop").is_empty());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.db("laptop"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn a_code_works_once() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    profile_with(&env, "desk", 10);
    let issuer = Issuer::start(&env, "desk", &router, &[], &[]);
    let code = issuer.code.clone();
    assert!(join(&env, "laptop", &router, &code, &[]).status.success());
    assert!(issuer.finish().0);
    let again = join(&env, "other", &router, &code, &["--timeout", "5"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already used"),
        "{}",
        stderr(&again)
    );
    assert!(!env.db("other").exists());
}

#[test]
fn a_wrong_code_fails_on_both_sides_and_imports_nothing() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    profile_with(&env, "desk", 10);
    let issuer = Issuer::start(&env, "desk", &router, &[], &[]);
    let code = issuer.code.clone();
    // The right nameplate, a wrong password.
    let mut wrong = issuer.code.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let out = join(&env, "laptop", &router, &wrong, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the code is wrong"),
        "{}",
        stderr(&out)
    );
    let (ok, _, errors) = issuer.finish();
    assert!(!ok);
    assert!(errors.contains("wrong code"), "{errors}");
    assert!(!env.db("laptop").exists());
    assert!(leftovers(&env, "laptop").is_empty());
    // The code is spent: the right one now fails too.
    let right = join(&env, "laptop", &router, &code, &[]);
    assert_eq!(right.status.code(), Some(1));
    assert!(
        stderr(&right).contains("wrong password"),
        "{}",
        stderr(&right)
    );
    assert!(!env.db("laptop").exists());
}

#[test]
fn a_mistyped_nameplate_finds_nobody() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let out = join(
        &env,
        "laptop",
        &router,
        "00000-00000-00000",
        &["--timeout", "1"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no device answered"),
        "{}",
        stderr(&out)
    );
    assert!(!env.db("laptop").exists());
    // Not a code at all: a usage error, before any connection.
    let out = join(&env, "laptop", &router, "K7M2Q-9XH4T", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("15 letters and digits"),
        "{}",
        stderr(&out)
    );
    let out = join(&env, "laptop", &router, "K7M2Q-9XH4T-WB3NU", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("'U' cannot be in a link code"),
        "{}",
        stderr(&out)
    );
    // A device name the router would refuse, and options of the other side.
    let code = "K7M2Q-9XH4T-WB3NE";
    let bad_name = ["link", "--join", code, "--device-name", "a\u{1b}[31m"];
    env.fails("laptop", &bad_name, 2);
    env.fails("laptop", &["link", "--device-name", "x"], 2);
    env.fails("laptop", &["link", "--join", code, "--expires", "5"], 2);
    // Nothing to hand over.
    let none = env.fails("nobody", &["link", "--server", &router.url()], 1);
    assert!(none.contains("no identity"), "{none}");
    assert!(!env.db("laptop").exists());
}

#[test]
fn an_expired_code_fails_with_a_clear_message() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    profile_with(&env, "desk", 10);
    let issuer = Issuer::start(&env, "desk", &router, &["--expires", "1"], &[]);
    let code = issuer.code.clone();
    let (ok, _, errors) = issuer.finish();
    assert!(!ok);
    assert!(errors.contains("expired"), "{errors}");
    let out = join(&env, "laptop", &router, &code, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    assert!(!env.db("laptop").exists());
}

#[test]
fn a_profile_with_another_identity_is_refused() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    profile_with(&env, "desk", 10);
    let other = env.init("laptop");
    let before = env.dump("laptop");
    let issuer = Issuer::start(&env, "desk", &router, &[], &[]);
    let out = join(&env, "laptop", &router, &issuer.code, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already holds another identity"),
        "{}",
        stderr(&out)
    );
    let (ok, _, errors) = issuer.finish();
    assert!(!ok);
    assert!(errors.contains("gave up"), "{errors}");
    assert_eq!(env.key("laptop"), other);
    assert_eq!(env.dump("laptop"), before);
}

/// Kills one side after `PAUSE` chunks, lets the other give up, and
/// links again: one copy of everything, no file left behind.
fn kill_mid_transfer(kill_old: bool) {
    let env = Env::new();
    // Small frames: many chunks even for a small profile.
    let router = Router::start(&env.path("router"), &["--max-frame-bytes", "4096"]);
    profile_with(&env, "desk", 1_000);
    let pause = [("CHAT_TEST_LINK_PAUSE_AT", "3")];
    let (old_env, new_env): (&[_], &[_]) = if kill_old {
        (&pause, &[])
    } else {
        (&[], &pause)
    };
    let issuer = Issuer::start(&env, "desk", &router, &["--timeout", "2"], old_env);
    let mut joiner = spawnable(&env, "laptop")
        .args(["link", "--join", &issuer.code, "--server", &router.url()])
        .args(["--timeout", "2"])
        .envs(new_env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let joiner_errors = lines_of(joiner.stderr.take().unwrap());
    if kill_old {
        issuer.wait_paused();
        issuer.kill();
        // The new device gives up by itself.
        assert!(!joiner.wait().unwrap().success());
    } else {
        wait_for_pause(&joiner_errors);
        let _ = joiner.kill();
        let _ = joiner.wait();
        let (ok, _, errors) = issuer.finish();
        assert!(!ok);
        assert!(errors.contains("stopped answering"), "{errors}");
    }
    assert!(!env.db("laptop").exists(), "no half profile");

    let issuer = Issuer::start(&env, "desk", &router, &[], &[]);
    let out = join(&env, "laptop", &router, &issuer.code, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(issuer.finish().0);
    assert_eq!(env.dump("laptop"), env.dump("desk"));
    let count: i64 = rusqlite::Connection::open(env.db("laptop"))
        .unwrap()
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1_000);
    assert!(leftovers(&env, "desk").is_empty());
    assert!(leftovers(&env, "laptop").is_empty());
}

#[test]
fn killing_the_existing_device_mid_transfer_then_linking_again_gives_one_copy() {
    kill_mid_transfer(true);
}

#[test]
fn killing_the_new_device_mid_transfer_then_linking_again_gives_one_copy() {
    kill_mid_transfer(false);
}

#[test]
fn an_interrupted_copy_of_the_same_identity_is_replaced() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    profile_with(&env, "desk", 10);
    for _ in 0..2 {
        let issuer = Issuer::start(&env, "desk", &router, &[], &[]);
        let out = join(&env, "laptop", &router, &issuer.code, &["--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(issuer.finish().0);
    }
    assert_eq!(env.dump("laptop"), env.dump("desk"));
}

#[test]
fn a_sealed_secret_key_travels_sealed() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    profile_with(&env, "desk", 10);
    let pass = pass_file(&env, "pass", "correct horse");
    let set = weak_kdf_cmd(&env, "desk")
        .args(["passphrase", "set"])
        .env("CHAT_NEW_PASSPHRASE_FILE", &pass)
        .output()
        .unwrap();
    assert!(set.status.success(), "{}", stderr(&set));
    let issuer = Issuer::start(&env, "desk", &router, &[], &[]);
    // The new device needs the passphrase once, to register with the
    // router as a device of the identity.
    let out = env
        .cmd("laptop")
        .args(["link", "--join", &issuer.code, "--server", &router.url()])
        .env("CHAT_PASSPHRASE_FILE", &pass)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(issuer.finish().0);
    let conn = rusqlite::Connection::open(env.db("laptop")).unwrap();
    let (clear, sealed): (Option<Vec<u8>>, Option<Vec<u8>>) = conn
        .query_row("SELECT secret_key, secret_wrapped FROM identity", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(clear.is_none());
    assert!(sealed.is_some());
}

#[test]
fn after_linking_both_devices_receive_what_is_new() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let url = router.url();
    env.friends();
    env.ok(
        "alice",
        &["send", "--server", &url, "bob", "before the link"],
    );
    let issuer = Issuer::start(&env, "alice", &router, &[], &[]);
    let out = join(&env, "laptop", &router, &issuer.code, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(issuer.finish().0);

    env.ok(
        "bob",
        &["send", "--server", &url, "alice", "hello, both of you"],
    );
    for device in ["alice", "laptop"] {
        env.ok(device, &["sync", "--server", &url]);
        let history = env.json(device, &["history", "bob", "--json"]);
        let bodies: Vec<&str> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap())
            .collect();
        assert_eq!(
            bodies,
            ["before the link", "hello, both of you"],
            "{device}"
        );
    }
    let devices = env.json("laptop", &["devices", "--server", &url, "--json"]);
    assert_eq!(devices.as_array().map(Vec::len), Some(2), "{devices}");
}

#[test]
fn a_link_slowed_by_the_routers_rate_limit_still_arrives_whole() {
    let env = Env::new();
    // Small frames and 10 frames a second: the existing device is refused
    // (`rate-limited`) again and again, sends those frames again, and the
    // new device puts them back in order.
    let router = Router::start(
        &env.path("router"),
        &["--max-frame-bytes", "4096", "--max-rate", "10"],
    );
    profile_with(&env, "desk", 1_500);
    let issuer = Issuer::start(&env, "desk", &router, &[], &[]);
    let out = join(&env, "laptop", &router, &issuer.code, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (ok, linked, errors) = issuer.finish();
    assert!(ok, "{errors}");
    let chunks = linked.unwrap()["chunks"].as_u64().unwrap();
    assert!(
        chunks > 10,
        "only {chunks} chunks: the limit was never reached"
    );
    assert_eq!(env.dump("laptop"), env.dump("desk"));
}

#[test]
fn a_copy_in_use_is_not_replaced_under_its_process() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    profile_with(&env, "desk", 10);
    let issuer = Issuer::start(&env, "desk", &router, &[], &[]);
    assert!(join(&env, "laptop", &router, &issuer.code, &[])
        .status
        .success());
    assert!(issuer.finish().0);
    // The laptop's own session owner: a watch, connected.
    let mut watch = spawnable(&env, "laptop")
        .args(["sync", "--watch", "--json", "--server", &router.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(watch.stdout.take().unwrap());
    loop {
        let line: Value = serde_json::from_str(&lines.recv_timeout(GUARD).unwrap()).unwrap();
        if line["kind"] == "connected" {
            break;
        }
    }
    let issuer = Issuer::start(&env, "desk", &router, &[], &[]);
    let out = join(&env, "laptop", &router, &issuer.code, &[]);
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is in use by process"),
        "{}",
        stderr(&out)
    );
    issuer.kill();
}
