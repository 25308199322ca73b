//! Files and streams the user hands over: exports kept private and never
//! written over something that is not a file, standard output that is full
//! or closed, someone else's export, and the failures of a profile's
//! database reported as what they are.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::Value;

/// The binary for `profile` as a plain `std` command, so its standard
/// streams can go anywhere.
fn raw(env: &Env, profile: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-p2p"));
    cmd.env_clear()
        .env("CHAT_HOME", env.home())
        .env("CHAT_PROFILE", profile);
    cmd
}

/// A profile "me" with `n` messages from one contact.
fn with_messages(env: &Env, n: u32) -> String {
    env.ok("me", &["init"]);
    let bob = key();
    let mut records = vec![header(None), contact("bob", &bob)];
    for i in 1..=n {
        let at = format!("2026-01-01T10:{:02}:{:02}.000Z", (i / 60) % 60, i % 60);
        records.push(incoming(&id(i), &bob, &format!("message {i}"), &at));
    }
    let file = env.path("seed.jsonl");
    write_jsonl(&file, &records);
    env.ok("me", &["import", p(&file)]);
    bob
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---- item 8: exports are private, and never replace what is not a file

#[cfg(unix)]
#[test]
fn export_files_are_readable_by_the_user_alone() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    with_messages(&env, 2);
    let file = env.path("backup.json");
    env.ok(
        "me",
        &[
            "export",
            "--include-secret",
            "--plaintext-secret",
            "-o",
            p(&file),
        ],
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    // A world-readable file that was there is replaced by a private one.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    env.ok("me", &["export", "-o", p(&file)]);
    assert_eq!(mode(&file), 0o600);
}

/// Asserts `export -o target` is refused, naming the path and `kind`, and
/// that nothing new appeared beside it.
fn assert_refused(env: &Env, target: &Path, kind: &str) {
    let dir = target.parent().unwrap();
    let before: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let err = env.fails("me", &["export", "-o", p(target)], 1);
    assert!(err.contains(p(target)), "{err}");
    assert!(err.contains(kind), "{err}");
    assert!(err.contains("-o -"), "{err}");
    let after: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before, after);
}

#[cfg(unix)]
#[test]
fn export_never_replaces_a_link_fifo_directory_or_device() {
    use std::os::unix::fs::FileTypeExt;
    let env = Env::new();
    with_messages(&env, 1);
    let dir = env.path("out");
    fs::create_dir(&dir).unwrap();

    let target = dir.join("real.json");
    fs::write(&target, "keep me").unwrap();
    let link = dir.join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_refused(&env, &link, "symbolic link");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_to_string(&target).unwrap(), "keep me");

    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    assert_refused(&env, &fifo, "FIFO");
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

    let sub = dir.join("sub");
    fs::create_dir(&sub).unwrap();
    assert_refused(&env, &sub, "directory");
    assert!(sub.is_dir());

    // A device: a private copy of /dev/full when we may make one (root),
    // else /dev/null itself, which the refusal leaves alone.
    let full = dir.join("full");
    let device = match Command::new("mknod")
        .arg(&full)
        .args(["c", "1", "7"])
        .status()
    {
        Ok(s) if s.success() => full,
        _ => Path::new("/dev/null").to_path_buf(),
    };
    if device.starts_with(&dir) {
        assert_refused(&env, &device, "device");
    } else {
        let err = env.fails("me", &["export", "-o", p(&device)], 1);
        assert!(err.contains("device"), "{err}");
    }
    assert!(fs::symlink_metadata(&device)
        .unwrap()
        .file_type()
        .is_char_device());
}

#[test]
fn export_dash_o_dash_writes_to_standard_output() {
    let env = Env::new();
    with_messages(&env, 3);
    let out = env
        .cmd("me")
        .current_dir(env.dir.path())
        .args(["export", "-o", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["messages"].as_array().unwrap().len(), 3);
    assert!(!env.path("-").exists());
}

#[test]
fn import_dash_reads_standard_input() {
    let env = Env::new();
    with_messages(&env, 3);
    let text = env.ok("me", &["export", "--jsonl"]);
    let me = env.key("me");
    // The same identity's export, restored into a copy of the profile.
    let out = env
        .cmd("me")
        .args(["import", "-", "--json"])
        .write_stdin(text.clone())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages_known"], 3);
    // Into another profile, from standard input too.
    let out = env
        .cmd("copy")
        .args(["import", "-", "--other-identity"])
        .write_stdin(text)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let history = env.json("copy", &["history", "--json"]);
    assert_eq!(history.as_array().unwrap().len(), 3);
    assert_ne!(me, "");
}

#[test]
fn export_errors_name_the_users_path_not_a_temporary_file() {
    let env = Env::new();
    with_messages(&env, 1);
    let target = env.path("no/such/dir/e.json");
    let err = env.fails("me", &["export", "-o", p(&target)], 1);
    assert!(err.contains(p(&target)), "{err}");
    assert!(!err.contains(".e.json.tmp"), "{err}");
}

// ---- item 9: writing output never panics

/// Runs with stdout on /dev/full: exit 1 with the cause, no panic.
fn assert_full_disk(mut cmd: Command, already: Option<&str>) {
    let full = fs::File::options().write(true).open("/dev/full").unwrap();
    let out = cmd.stdout(Stdio::from(full)).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("cannot write to standard output: No space left on device"),
        "{cmd:?}: {err}"
    );
    if let Some(what) = already {
        assert!(err.contains(what), "{cmd:?}: {err}");
    }
}

#[test]
fn a_full_stdout_is_an_error_with_its_cause() {
    let env = Env::new();
    let bob = with_messages(&env, 3);
    let run = |args: &[&str]| {
        let mut cmd = raw(&env, "me");
        cmd.args(args);
        cmd
    };
    assert_full_disk(run(&["whoami"]), None);
    assert_full_disk(run(&["whoami", "--key"]), None);
    assert_full_disk(run(&["contacts"]), None);
    assert_full_disk(run(&["history"]), None);
    assert_full_disk(run(&["history", "--json"]), None);
    assert_full_disk(run(&["export"]), None);
    assert_full_disk(
        run(&["add-contact", "carol", &key(), "--json"]),
        Some("saved"),
    );
    assert_full_disk(run(&["add-contact", "dave", &key()]), Some("saved"));
    let file = env.path("e.jsonl");
    fs::write(&file, env.ok("me", &["export", "--jsonl"])).unwrap();
    assert_full_disk(run(&["import", p(&file)]), Some("committed"));
    let mut init = raw(&env, "new");
    init.arg("init");
    assert_full_disk(init, Some("created"));
    assert_ne!(bob, "");
}

#[test]
fn a_full_stdout_after_send_or_sync_says_the_message_went() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let server = router.url();
    env.init("alice");
    let bob = env.init("bob");
    env.ok("alice", &["add-contact", "bob", &bob]);
    let run = |args: &[&str]| {
        let mut cmd = raw(&env, "alice");
        cmd.env("CHAT_SERVER", &server).args(args);
        cmd
    };
    assert_full_disk(
        run(&["send", "bob", "hello", "--json"]),
        Some("stored and sent"),
    );
    assert_full_disk(run(&["send", "bob", "again"]), Some("stored and sent"));
    assert_full_disk(run(&["sync"]), Some("sync"));
    assert_full_disk(run(&["sync", "--json"]), Some("sync"));
    // Both messages really went.
    let mut sync = raw(&env, "bob");
    sync.env("CHAT_SERVER", &server).args(["sync", "--json"]);
    let out = sync.output().unwrap();
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["received"], 2, "{}", stderr(&out));
    router.kill();
}

/// Spawns `args`, reads one line of its output and closes the pipe.
fn read_one_line_then_close(env: &Env, args: &[&str]) -> Output {
    let mut child = raw(env, "me")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    // The BufReader (and the pipe) is gone here.
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let env = Env::new();
    // Far more output than a pipe holds.
    with_messages(&env, 3000);
    for args in [
        &["history", "-n", "5000", "--json"][..],
        &["history", "-n", "5000"],
        &["export"],
        &["export", "--jsonl"],
    ] {
        let out = read_one_line_then_close(&env, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}");
    }
}

#[test]
fn a_closed_or_full_stderr_does_not_panic() {
    let env = Env::new();
    with_messages(&env, 1);
    let full = fs::File::options().write(true).open("/dev/full").unwrap();
    let out = raw(&env, "me")
        .args(["contacts", "--bogus"])
        .stderr(Stdio::from(full))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A runtime error whose message cannot be written still exits 1.
    let full = fs::File::options().write(true).open("/dev/full").unwrap();
    let out = raw(&env, "me")
        .args(["history", "nobody"])
        .stderr(Stdio::from(full))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // A warning on a full stderr: the export still completes.
    let full = fs::File::options().write(true).open("/dev/full").unwrap();
    let file = env.path("secret.json");
    let out = raw(&env, "me")
        .args([
            "export",
            "--include-secret",
            "--plaintext-secret",
            "-o",
            p(&file),
        ])
        .stderr(Stdio::from(full))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(file.exists());
}

// ---- item 11: someone else's export

#[test]
fn another_identitys_export_is_refused_without_the_flag() {
    let env = Env::new();
    with_messages(&env, 2);
    let me = env.key("me");
    let file = env.path("mine.json");
    env.ok("me", &["export", "-o", p(&file)]);
    let other = env.init("other");

    let err = env.fails("other", &["import", p(&file)], 1);
    assert!(err.contains(&me), "{err}");
    assert!(err.contains("--other-identity"), "{err}");
    assert!(err.contains("Nothing was imported"), "{err}");
    assert_eq!(
        env.json("other", &["history", "--json"]),
        serde_json::json!([])
    );

    let out = env
        .cmd("other")
        .args(["import", "--other-identity", p(&file)])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(stderr(&out).contains("another identity"));
    assert_eq!(
        env.json("other", &["history", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(env.key("other"), other);
}

#[test]
fn an_identityless_profile_does_not_adopt_another_persons_messages() {
    let env = Env::new();
    with_messages(&env, 1);
    let me = env.key("me");
    let bob = key();
    let file = env.path("mine.jsonl");
    write_jsonl(
        &file,
        &[
            header(Some(&me)),
            outgoing(
                &id(9),
                &bob,
                "I wrote this",
                "2026-01-01T00:00:00.000Z",
                "sent",
            ),
        ],
    );
    // A new profile, no identity: refused, and nothing is left behind.
    let err = env.fails("fresh", &["import", p(&file)], 1);
    assert!(err.contains("no identity"), "{err}");
    assert!(err.contains("--other-identity"), "{err}");
    assert!(!env.db("fresh").exists());
    // With the flag the user has said so; init then is no surprise.
    env.ok("fresh", &["import", "--other-identity", p(&file)]);
    env.ok("fresh", &["init"]);
    // An export with the key pair restores the identity itself.
    let secret = env.path("secret.json");
    env.ok(
        "me",
        &[
            "export",
            "--include-secret",
            "--plaintext-secret",
            "-o",
            p(&secret),
        ],
    );
    env.ok("restored", &["import", p(&secret)]);
    assert_eq!(env.key("restored"), me);
}

// ---- item 16: import of a missing file, and history --json streaming

#[test]
fn importing_a_missing_file_creates_no_profile() {
    let env = Env::new();
    let err = env.fails("new", &["import", p(&env.path("missing.json"))], 1);
    assert!(err.contains("missing.json"), "{err}");
    assert!(!env.db("new").exists());
    assert!(!env.home().join("new").exists());
    env.fails("new", &["import", "--legacy", p(&env.path("nope"))], 1);
    assert!(!env.db("new").exists());
    // An empty or malformed file into a new profile leaves nothing either.
    let empty = env.path("empty.json");
    fs::write(&empty, "").unwrap();
    env.fails("new", &["import", p(&empty)], 1);
    assert!(!env.db("new").exists());
}

#[test]
fn history_json_is_one_pretty_array_as_before() {
    let env = Env::new();
    env.ok("empty", &["init"]);
    let out = env.ok("empty", &["history", "--json"]);
    assert_eq!(out, "[]\n");
    with_messages(&env, 30);
    for args in [
        &["history", "--json"][..],
        &["history", "--json", "-n", "7"],
        &["history", "bob", "--json", "--direction", "in"],
    ] {
        let out = env.ok("me", args);
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out, serde_json::to_string_pretty(&value).unwrap() + "\n");
    }
    let all = env.json("me", &["history", "--json", "-n", "7"]);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all[6]["body"], "message 30");
    assert_eq!(all[0]["body"], "message 24");
}

// ---- item 10: the right diagnosis

#[test]
fn a_locked_profile_is_reported_as_locked() {
    let env = Env::new();
    env.init("me");
    // Another program holds the file: exclusive locking, a transaction open.
    let holder = rusqlite::Connection::open(env.db("me")).unwrap();
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .unwrap();
    let _: i64 = holder
        .query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))
        .unwrap();
    let err = env.fails("me", &["whoami"], 1);
    assert!(err.contains("is locked by another program"), "{err}");
    assert!(err.contains("close it and try again"), "{err}");
    assert!(!err.contains("not a chat-p2p database"), "{err}");
    drop(holder);
    env.ok("me", &["whoami"]);
}

/// A small tmpfs mounted for one test (root only), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, how: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Fills the disk to the last byte.
    fn fill(&self) {
        let mut f = fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

fn on_disk(disk: &SmallDisk, profile: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .env("CHAT_HOME", disk.path().join("home"))
        .env("CHAT_PROFILE", profile)
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), stderr(&out))
}

#[test]
fn a_full_or_read_only_disk_is_reported_as_such() {
    // Needs root (here, the test machine runs as root): a 4 MB tmpfs, room
    // for two fresh profiles (16 KiB pages: about 640 KB each) and no more.
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("not run: mounting a tmpfs needs root");
        return;
    };
    let (code, err) = on_disk(&disk, "me", &["init"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = on_disk(&disk, "bob", &["init"]);
    assert_eq!(code, 0, "{err}");

    disk.fill();
    for (profile, args) in [
        ("me", &["whoami"][..]),
        ("me", &["add-contact", "carol", &key()]),
        ("new", &["init"]),
    ] {
        let (code, err) = on_disk(&disk, profile, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("no space left"), "{args:?}: {err}");
        assert!(err.contains("free some space"), "{args:?}: {err}");
        assert!(!err.contains("not a chat-p2p database"), "{args:?}: {err}");
    }
    fs::remove_file(disk.path().join("filler")).unwrap();

    disk.remount("ro");
    for (profile, args) in [
        ("bob", &["add-contact", "carol", &key()][..]),
        ("new", &["init"]),
    ] {
        let (code, err) = on_disk(&disk, profile, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("read-only"), "{args:?}: {err}");
        assert!(!err.contains("not a chat-p2p database"), "{args:?}: {err}");
    }
    disk.remount("rw");

    // A file made immutable (root ignores permission bits, not this).
    let db = disk.path().join("home/me/chat.db");
    let immutable = Command::new("chattr")
        .arg("+i")
        .arg(&db)
        .status()
        .is_ok_and(|s| s.success());
    if immutable {
        let (code, err) = on_disk(&disk, "me", &["add-contact", "carol", &key()]);
        let _ = Command::new("chattr").arg("-i").arg(&db).status();
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("read-only"), "{err}");
    }
}
