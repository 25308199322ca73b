//! Search as people type it (issue 12 item 3) and dates as people say them
//! (item 4), through the real binary on an imported profile.

mod common;

use chrono::{Duration, Utc};
use common::*;

/// The messages, oldest first: one row each, imported in this order (so
/// newest first is the reverse).
const BODIES: &[&str] = &[
    "don't forget the milk",
    "I dont know",
    "send me an e-mail",
    "email works too",
    "I write C++ every day",
    "cats and dogs",
    "what's the plan? tell me",
    "the planning meeting",
    "wow!!!",
    "日本語テキスト",
    "テキストエディタを開く",
    "ภาษาไทยง่ายมาก",
    "今日は会議です",
    "Uma Mensagém",
    "100% sure",
];

fn fixture() -> Env {
    let env = Env::new();
    env.ok("me", &["init"]);
    let bob = key();
    let mut records = vec![header(None), contact("bob", &bob)];
    for (i, body) in BODIES.iter().enumerate() {
        let at = format!("2026-01-01T10:{i:02}:00.000Z");
        records.push(incoming(&id(i as u32 + 1), &bob, body, &at));
    }
    let file = env.path("fixture.jsonl");
    write_jsonl(&file, &records);
    env.ok("me", &["import", file.to_str().unwrap()]);
    env
}

#[test]
fn everyday_queries_find_exactly_what_they_should() {
    let env = fixture();
    // (query, the bodies found, newest first)
    let table: &[(&str, &[&str])] = &[
        ("don't", &["don't forget the milk"]),
        ("dont", &["I dont know"]),
        ("e-mail", &["send me an e-mail"]),
        ("E-Mail", &["send me an e-mail"]),
        ("email", &["email works too"]),
        ("c++", &["I write C++ every day"]),
        ("what's the plan?", &["what's the plan? tell me"]),
        (
            "plan",
            &["the planning meeting", "what's the plan? tell me"],
        ),
        ("plan?", &["what's the plan? tell me"]),
        (
            "the plan",
            &["the planning meeting", "what's the plan? tell me"],
        ),
        ("!!!", &["wow!!!"]),
        ("wow!!!", &["wow!!!"]),
        ("100%", &["100% sure"]),
        ("AND", &["cats and dogs"]),
        ("cats AND NOT dogs", &[]),
        (
            "(plan",
            &["the planning meeting", "what's the plan? tell me"],
        ),
        ("\"unbalanced", &[]),
        ("\"the plan\"", &["what's the plan? tell me"]),
        ("\"the plan\" milk", &[]),
        ("meeting:", &["the planning meeting"]),
        (
            "plan*",
            &["the planning meeting", "what's the plan? tell me"],
        ),
        ("mensagem", &["Uma Mensagém"]),
        // Unspaced scripts: any part.
        ("テキスト", &["テキストエディタを開く", "日本語テキスト"]),
        ("語テキ", &["日本語テキスト"]),
        ("エディタ", &["テキストエディタを開く"]),
        (
            "「テキスト」",
            &["テキストエディタを開く", "日本語テキスト"],
        ),
        ("ไทย", &["ภาษาไทยง่ายมาก"]),
        ("会議", &["今日は会議です"]),
        ("語", &["日本語テキスト"]),
        ("テキスト 日本", &["日本語テキスト"]),
        ("nothing-like-this", &[]),
    ];
    let mut wrong = Vec::new();
    for (query, expected) in table {
        let got = bodies(&env.json("me", &["history", "--search", query, "--json"]));
        if got != *expected {
            wrong.push(format!("{query:?}: got {got:?}, expected {expected:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn ranked_search_and_text_output_still_work() {
    let env = fixture();
    let ranked = env.json("me", &["history", "--search", "plan", "--rank", "--json"]);
    assert_eq!(bodies(&ranked).len(), 2);
    let ranked = env.json(
        "me",
        &["history", "--search", "テキスト", "--rank", "--json"],
    );
    assert_eq!(bodies(&ranked).len(), 2);
    let shown = env.ok("me", &["history", "--search", "語テキ"]);
    assert!(shown.contains("bob: 日本語テキスト"), "{shown}");
    let shown = env.ok("me", &["history", "--search", "xyzzy"]);
    assert_eq!(shown.trim(), "No messages match.");
}

#[test]
fn fts_takes_raw_syntax_and_a_malformed_query_is_a_usage_error() {
    let env = fixture();
    let found = env.json("me", &["history", "--fts", "plan*", "--json"]);
    assert_eq!(bodies(&found).len(), 2);
    let found = env.json("me", &["history", "--fts", "cats NOT dogs", "--json"]);
    assert!(bodies(&found).is_empty());
    for q in ["don't", "\"open", "AND", "plan AND", "(a", "a:b", "*"] {
        let err = env.fails("me", &["history", "--fts", q], 2);
        assert!(err.contains("cannot search for"), "{q}: {err}");
    }
    env.fails("me", &["history", "--search", "a", "--fts", "b"], 2);
    env.fails("me", &["history", "--rank"], 2);
    let err = env.fails("me", &["history", "--search", "  "], 2);
    assert!(err.contains("the query is empty"), "{err}");
}

/// Runs `history` in the time zone `tz` and returns its stdout.
fn history_in(env: &Env, tz: &str, args: &[&str]) -> String {
    let out = common::run_ok(env.cmd("me").env("TZ", tz).arg("history").args(args));
    without_short_ids(&String::from_utf8(out.stdout).unwrap())
}

/// `history`'s text with each line's leading short id (`00000015 `) cut,
/// so the times can be read at the start of the line.
fn without_short_ids(text: &str) -> String {
    text.lines()
        .map(|line| match line.split_once(' ') {
            Some((id, rest)) if id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()) => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn relative_dates_count_back_from_now() {
    let env = Env::new();
    env.ok("me", &["init"]);
    let bob = key();
    let ago = |d: Duration| chat_p2p::clock::format(Utc::now() - d);
    let records = vec![
        header(None),
        contact("bob", &bob),
        incoming(&id(1), &bob, "old", &ago(Duration::days(10))),
        incoming(&id(2), &bob, "two days", &ago(Duration::hours(50))),
        incoming(&id(3), &bob, "recent", &ago(Duration::seconds(1))),
    ];
    let file = env.path("dated.jsonl");
    write_jsonl(&file, &records);
    env.ok("me", &["import", file.to_str().unwrap()]);
    let within = |since: &str, until: Option<&str>| {
        let mut args = vec!["history", "--json", "--since", since];
        if let Some(until) = until {
            args.extend(["--until", until]);
        }
        bodies(&env.json("me", &args))
    };
    assert_eq!(within("2h", None), ["recent"]);
    assert_eq!(within("30m", None), ["recent"]);
    assert_eq!(within("3 days ago", None), ["two days", "recent"]);
    assert_eq!(within("2w", Some("1w")), ["old"]);
    assert_eq!(within("7d", Some("1d")), ["two days"]);
    assert_eq!(within("2026-01-01", Some("yesterday")), ["old", "two days"]);
    let err = env.fails("me", &["history", "--since", "last tuesday"], 2);
    assert!(err.contains("'last tuesday'"), "{err}");
    assert!(
        err.contains("3 days ago") && err.contains("2026-11-25"),
        "{err}"
    );
    let help = env.ok("me", &["history", "--help"]);
    assert!(
        help.contains("yesterday") && help.contains("--utc"),
        "{help}"
    );
}

#[test]
fn dates_without_a_zone_are_local_and_utc_shows_utc() {
    let env = fixture();
    // 2026-01-01T10:00Z is 19:00 in Tokyo.
    let shown = history_in(&env, "Asia/Tokyo", &["-n", "1"]);
    assert!(shown.starts_with("[2026-01-01 19:14]"), "{shown}");
    let shown = history_in(&env, "Asia/Tokyo", &["-n", "1", "--utc"]);
    assert!(shown.starts_with("[2026-01-01 10:14]"), "{shown}");
    // In Tokyo the local 2 January starts at 1 January 15:00 UTC...
    let next_day = history_in(&env, "Asia/Tokyo", &["--since", "2026-01-02"]);
    assert_eq!(next_day.trim(), "No messages.");
    // ...and 10:05 UTC is 19:05 there.
    let shown = history_in(
        &env,
        "Asia/Tokyo",
        &[
            "--since",
            "2026-01-01 19:05",
            "--until",
            "2026-01-01T19:06",
            "--utc",
        ],
    );
    assert_eq!(shown.lines().count(), 2, "{shown}");
    assert!(
        shown.starts_with("[2026-01-01 10:05] bob: cats and dogs"),
        "{shown}"
    );
    // In New York 1 January still runs until 05:00 UTC on the 2nd.
    let shown = history_in(
        &env,
        "America/New_York",
        &["--since", "2026-01-01", "-n", "100"],
    );
    assert_eq!(shown.lines().count(), BODIES.len(), "{shown}");
}
