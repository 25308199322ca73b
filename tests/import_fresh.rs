//! An import into a profile with no messages goes through a fresh file
//! renamed over the profile's (src/store/refill.rs): the same content as an
//! import into the profile's own file, a normal WAL profile afterwards, and
//! the profile as it was after a failure or a `kill -9`.

#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn inode(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

/// The import's copy beside the profile's file.
fn temp(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.import-tmp", db.display()))
}

/// Files in the profile's folder other than the database and the files
/// SQLite keeps beside it while connections are open.
fn leftovers(db: &Path) -> Vec<String> {
    fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            !["chat.db", "chat.db-wal", "chat.db-shm", "session.lock"].contains(&name.as_str())
        })
        .collect()
}

/// What a profile should be whatever wrote it: WAL recorded in the header
/// (bytes 18 and 19 are 2), 16 KiB pages, readable by its owner alone.
fn assert_normal_profile(db: &Path) {
    let header = fs::read(db).unwrap();
    assert_eq!(&header[..16], b"SQLite format 3\0");
    assert_eq!((header[18], header[19]), (2, 2), "WAL in the header");
    assert_eq!(u16::from_be_bytes([header[16], header[17]]), 16384);
    assert_eq!(
        fs::metadata(db).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let conn = rusqlite::Connection::open(db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // Both search indexes agree with the messages (they were built on
    // another thread and copied in: src/store/fts_build.rs).
    for table in ["messages_fts", "messages_trigram"] {
        conn.execute_batch(&format!(
            "INSERT INTO {table} ({table}) VALUES ('integrity-check')"
        ))
        .unwrap();
    }
}

/// The schema and the migrations applied, to compare two profiles.
fn schema(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut rows = Vec::new();
    for sql in [
        "SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_schema ORDER BY name",
        "SELECT version || ' ' || name || ' ' || checksum FROM refinery_schema_history ORDER BY version",
        "SELECT 'user_version ' || user_version FROM pragma_user_version",
    ] {
        let mut stmt = conn.prepare(sql).unwrap();
        let mut q = stmt.query([]).unwrap();
        while let Some(r) = q.next().unwrap() {
            rows.push(r.get::<_, String>(0).unwrap());
        }
    }
    rows
}

/// The profile's rows without its identity (two profiles have two).
fn content(env: &Env, profile: &str) -> Vec<String> {
    env.dump(profile)
        .into_iter()
        .filter(|row| !row.starts_with("identity:"))
        .collect()
}

/// A history of `n` messages with two contacts, as JSON Lines.
fn history_file(env: &Env, name: &str, n: u32) -> PathBuf {
    let (bob, carol) = (key(), key());
    let mut records = vec![header(None), contact("bob", &bob), contact("carol", &carol)];
    for i in 0..n {
        let peer = if i % 3 == 0 { &carol } else { &bob };
        let at = format!(
            "2026-01-{:02}T10:{:02}:{:02}.000Z",
            1 + i % 28,
            i % 60,
            (i / 60) % 60
        );
        let body = format!(
            "message {i} about the meeting tomorrow, ça va? 打ち合わせ {}",
            i * 7
        );
        records.push(match i % 4 {
            0 => incoming(&id(i), peer, &body, &at),
            1 => outgoing(&id(i), peer, &body, &at, "read"),
            2 => outgoing(&id(i), peer, &body, &at, "delivered"),
            _ => outgoing(&id(i), peer, &body, &at, "failed"),
        });
    }
    let file = env.path(name);
    write_jsonl(&file, &records);
    file
}

#[test]
fn an_import_into_an_empty_profile_replaces_its_file_with_the_same_content() {
    let env = Env::new();
    let file = history_file(&env, "h.jsonl", 500);

    env.ok("fresh", &["init"]);
    let db = env.db("fresh");
    let before = inode(&db);
    env.ok("fresh", &["import", "--other-identity", p(&file)]);
    assert_ne!(inode(&db), before, "the import went through a new file");
    assert_normal_profile(&db);
    assert!(leftovers(&db).is_empty(), "{:?}", leftovers(&db));

    // The same import while another connection has the profile open: it
    // cannot replace the file, and imports into it as before.
    env.ok("inplace", &["init"]);
    let other = env.db("inplace");
    let before = inode(&other);
    let reader = rusqlite::Connection::open(&other).unwrap();
    let n: i64 = reader
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    env.ok("inplace", &["import", "--other-identity", p(&file)]);
    assert_eq!(inode(&other), before, "in place while the profile is open");
    drop(reader);
    assert_normal_profile(&other);

    assert_eq!(content(&env, "fresh"), content(&env, "inplace"));
    assert_eq!(schema(&db), schema(&other));
    let export = |profile: &str| -> Value {
        let out = env.path(&format!("{profile}.json"));
        env.ok(profile, &["export", "--json", "--output", p(&out)]);
        serde_json::from_str(&fs::read_to_string(out).unwrap()).unwrap()
    };
    let (a, b) = (export("fresh"), export("inplace"));
    assert_eq!(a["messages"], b["messages"]);
    assert_eq!(a["contacts"], b["contacts"]);
    assert_eq!(a["messages"].as_array().unwrap().len(), 500);
    // Search finds the same on both (the indexes were built apart).
    for words in ["meeting", "ça", "打ち合わせ", "ち合", "message 42"] {
        let search = |profile: &str| {
            env.json(
                profile,
                &["history", "--search", words, "--json", "--limit", "1000"],
            )
        };
        let hits = search("fresh");
        assert!(!hits.as_array().unwrap().is_empty(), "{words}");
        assert_eq!(hits, search("inplace"), "{words}");
    }

    // A second import into the filled profile dedupes, in place.
    let filled = inode(&db);
    let report = env.json("fresh", &["import", "--other-identity", p(&file), "--json"]);
    assert_eq!(report["messages_known"], 500);
    assert_eq!(inode(&db), filled);
}

/// Profile "me" with one contact and no messages: its database, its dump
/// and the database's inode, to show an import left it as it was.
fn profile_with_a_contact(env: &Env) -> (PathBuf, Vec<String>, u64) {
    env.ok("me", &["init"]);
    let contacts = env.path("contacts.jsonl");
    write_jsonl(&contacts, &[header(None), contact("dora", &key())]);
    env.ok("me", &["import", "--other-identity", p(&contacts)]);
    let db = env.db("me");
    let node = inode(&db);
    (db, env.dump("me"), node)
}

#[test]
fn a_failed_import_into_an_empty_profile_leaves_it_as_it_was() {
    let env = Env::new();
    let (db, before, node) = profile_with_a_contact(&env);

    let good = history_file(&env, "h.jsonl", 50);
    let text = fs::read_to_string(&good).unwrap();
    let bad = env.path("bad.jsonl");
    fs::write(
        &bad,
        format!("{text}{{\"kind\":\"message\",\"msg_id\":\"x\"}}\n"),
    )
    .unwrap();
    let err = env.fails("me", &["import", "--other-identity", p(&bad)], 1);
    assert!(err.contains("Nothing was imported"), "{err}");
    assert_eq!(env.dump("me"), before);
    assert_eq!(inode(&db), node);
    assert!(leftovers(&db).is_empty(), "{:?}", leftovers(&db));
    assert_normal_profile(&db);

    // A copy left behind by a killed import does not stand in the way.
    fs::write(temp(&db), b"garbage").unwrap();
    fs::write(format!("{}-journal", temp(&db).display()), b"garbage").unwrap();
    env.ok("me", &["import", "--other-identity", p(&good)]);
    assert!(leftovers(&db).is_empty(), "{:?}", leftovers(&db));
    let history = env.json("me", &["history", "--json", "--limit", "1000"]);
    assert_eq!(history.as_array().unwrap().len(), 50);
    assert_normal_profile(&db);
}

#[test]
fn an_import_killed_midway_leaves_the_profile_as_it_was_and_the_next_one_works() {
    let env = Env::new();
    let (db, before, node) = profile_with_a_contact(&env);
    let big = history_file(&env, "big.jsonl", 60_000);

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .env("CHAT_HOME", env.home())
        .env("CHAT_PROFILE", "me")
        .env("CHAT_CONFIG", env.config())
        .args(["import", "--other-identity", p(&big)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once it is filling the copy.
    let start = Instant::now();
    while fs::metadata(temp(&db)).map_or(0, |m| m.len()) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no copy appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended early"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the import ended before the kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(inode(&db), node);
    assert_eq!(env.dump("me"), before);
    let history = env.json("me", &["history", "--json"]);
    assert!(history.as_array().unwrap().is_empty());
    assert_normal_profile(&db);

    let small = history_file(&env, "small.jsonl", 20);
    env.ok("me", &["import", "--other-identity", p(&small)]);
    assert!(leftovers(&db).is_empty(), "{:?}", leftovers(&db));
    let history = env.json("me", &["history", "--json", "--limit", "1000"]);
    assert_eq!(history.as_array().unwrap().len(), 20);
    assert_normal_profile(&db);
}

/// Into an empty profile the import fills a fresh file with its secondary
/// indexes built after the rows: a file that repeats messages gives the
/// same report and rows there as into a profile that already holds
/// messages (imported in place), every index is back afterwards, and they
/// deduplicate the next import.
#[test]
fn a_file_that_repeats_messages_imports_each_once_into_an_empty_profile() {
    let env = Env::new();
    let (bob, carol) = (key(), key());
    let at = "2026-01-02T10:00:00.000Z";
    let mut records = vec![header(None), contact("bob", &bob), contact("carol", &carol)];
    records.extend([
        outgoing(&id(1), &bob, "ours to bob", at, "read"),
        // Ours: one id is one message, whoever it went to.
        outgoing(&id(1), &carol, "ours again, to carol", at, "read"),
        incoming(&id(2), &bob, "from bob", at),
        // Theirs: the same id from another sender is another message.
        incoming(&id(2), &carol, "from carol, same id", at),
        incoming(&id(2), &bob, "from bob again", at),
        outgoing(&id(2), &bob, "ours, same id as theirs", at, "delivered"),
    ]);
    for i in 3..40 {
        records.push(incoming(&id(i), &carol, &format!("filler {i}"), at));
    }
    records.push(incoming(&id(10), &carol, "filler 10 again", at));
    let file = env.path("repeats.jsonl");
    write_jsonl(&file, &records);

    env.ok("fresh", &["init"]);
    let empty_schema = schema(&env.db("fresh"));
    let fresh = env.json("fresh", &["import", "--other-identity", p(&file), "--json"]);
    assert_eq!(fresh["messages_added"], 4 + 37);
    assert_eq!(fresh["messages_known"], 3);
    assert_eq!(schema(&env.db("fresh")), empty_schema, "indexes rebuilt");
    assert_normal_profile(&env.db("fresh"));

    // The same file into a profile that holds a message: no deferral.
    env.ok("filled", &["init"]);
    let seed = env.path("seed.jsonl");
    write_jsonl(
        &seed,
        &[header(None), incoming(&id(99), &key(), "seed", at)],
    );
    env.ok("filled", &["import", "--other-identity", p(&seed)]);
    let filled = env.json(
        "filled",
        &["import", "--other-identity", p(&file), "--json"],
    );
    assert_eq!(filled["messages_added"], fresh["messages_added"]);
    assert_eq!(filled["messages_known"], fresh["messages_known"]);
    let bodies = |profile: &str| -> Vec<String> {
        let conn = rusqlite::Connection::open(env.db(profile)).unwrap();
        let mut stmt = conn
            .prepare("SELECT body FROM messages WHERE body != 'seed' ORDER BY id")
            .unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    };
    assert_eq!(bodies("fresh"), bodies("filled"));
    assert!(!bodies("fresh").iter().any(|b| b.contains("again")));

    // The rebuilt indexes deduplicate the next import.
    let again = env.json("fresh", &["import", "--other-identity", p(&file), "--json"]);
    assert_eq!(again["messages_added"], 0);
    assert_eq!(again["messages_known"], 44);
}
