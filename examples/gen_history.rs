//! Deterministic generator of a large chat-p2p export (JSON Lines), for the
//! history benchmark (`bench/history.sh`).
//!
//! Usage: `gen_history MESSAGES CONTACTS [CJK_PERCENT] > export.jsonl`
//!
//! The same arguments always give the same bytes. Bodies are drawn from a
//! Zipf-like vocabulary; `meeting` appears in about 8% of the messages (a
//! common word) and `zanzibar` in about 0.01% (a rare one).
//!
//! With CJK_PERCENT > 0, that share of the messages is Japanese-like text
//! without spaces (kana and kanji pseudo-words run together), in which
//! `打ち合わせ` appears in about 8% (a common substring) and `ザンジバル`
//! in about 0.1% (a rare one). With 0 (the default) the output is exactly
//! what it was before the option existed.

use std::io::{self, BufWriter, Write};

use chat_p2p::identity::Identity;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const START_MS: u64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args.next().unwrap_or_else(|| "1000000".into()).parse()?;
    let contacts: u64 = args.next().unwrap_or_else(|| "100".into()).parse()?;
    let cjk_percent: f64 = args.next().unwrap_or_else(|| "0".into()).parse()?;
    let mut rng = StdRng::seed_from_u64(42);
    let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());

    let me = Identity::from_secret_bytes(&rng.gen());
    let header = json!({"kind": "header", "format": "chat-p2p-export", "version": 1,
        "exported_at": "2026-01-01T00:00:00.000Z", "public_key": me.public_key().to_base64()});
    writeln!(out, "{header}")?;
    let keys: Vec<String> = (0..contacts)
        .map(|i| {
            let key = Identity::from_secret_bytes(&rng.gen())
                .public_key()
                .to_base64();
            let line = json!({"kind": "contact", "name": format!("contact{i:03}"),
                "public_key": key, "added_at": "2025-01-01T00:00:00.000Z"});
            (line, key)
        })
        .map(|(line, key)| writeln!(out, "{line}").map(|()| key))
        .collect::<Result<_, _>>()?;

    let vocabulary: Vec<String> = (0..5000).map(word).collect();
    let cjk_vocabulary: Vec<String> = (0..5000).map(cjk_word).collect();
    for n in 0..messages {
        let ms = START_MS + n * 30_000 + rng.gen_range(0..1000);
        let peer = &keys[rng.gen_range(0..keys.len())];
        // No extra draw at 0%: the default output stays byte for byte.
        let cjk = cjk_percent > 0.0 && rng.gen_bool((cjk_percent / 100.0).min(1.0));
        let line = if cjk {
            message(&mut rng, ms, peer, &cjk_vocabulary, cjk_body)
        } else {
            message(&mut rng, ms, peer, &vocabulary, ascii_body)
        };
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

/// A pronounceable pseudo-word for vocabulary index `i`.
fn word(mut i: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "va", "zu", "be", "co", "fi", "gu",
        "ha",
    ];
    let mut w = String::new();
    loop {
        w.push_str(SYLLABLES[i % 16]);
        i /= 16;
        if i == 0 {
            return w;
        }
    }
}

/// A Japanese-looking pseudo-word for vocabulary index `i`: kana and
/// kanji that never spell the benchmark's search terms by accident.
fn cjk_word(mut i: usize) -> String {
    const PARTS: [&str; 16] = [
        "か", "の", "み", "ね", "す", "た", "り", "ぽ", "日", "本", "語", "社", "電", "車", "東",
        "京",
    ];
    let mut w = String::new();
    loop {
        w.push_str(PARTS[i % 16]);
        i /= 16;
        if i == 0 {
            return w;
        }
    }
}

fn at(ms: u64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default();
    chat_p2p::clock::format(t)
}

/// Words from `vocabulary`, `meeting` in 8% and `zanzibar` in 0.01%.
fn ascii_body(rng: &mut StdRng, vocabulary: &[String]) -> String {
    let mut words = zipf_words(rng, vocabulary);
    if rng.gen_bool(0.08) {
        words.insert(rng.gen_range(0..words.len()), "meeting");
    }
    if rng.gen_bool(0.0001) {
        words.insert(rng.gen_range(0..words.len()), "zanzibar");
    }
    words.join(" ")
}

/// Unspaced pseudo-Japanese, `打ち合わせ` in 8% and `ザンジバル` in 0.1%.
fn cjk_body(rng: &mut StdRng, vocabulary: &[String]) -> String {
    let mut words = zipf_words(rng, vocabulary);
    if rng.gen_bool(0.08) {
        words.insert(rng.gen_range(0..words.len()), "打ち合わせ");
    }
    if rng.gen_bool(0.001) {
        words.insert(rng.gen_range(0..words.len()), "ザンジバル");
    }
    words.concat() + "。"
}

fn zipf_words<'a>(rng: &mut StdRng, vocabulary: &'a [String]) -> Vec<&'a str> {
    let len = rng.gen_range(3..20);
    (0..len)
        .map(|_| {
            // Zipf-like: small indices far more often.
            let r: f64 = rng.gen();
            &*vocabulary[((vocabulary.len() as f64).powf(r) as usize).min(vocabulary.len() - 1)]
        })
        .collect()
}

fn message(
    rng: &mut StdRng,
    ms: u64,
    peer: &str,
    vocabulary: &[String],
    body: fn(&mut StdRng, &[String]) -> String,
) -> serde_json::Value {
    let body = body(rng, vocabulary);
    let bytes: [u8; 10] = rng.gen();
    let id = uuid::Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid();
    let outgoing = rng.gen_bool(0.5);
    let (t0, t1, t2, t3) = (at(ms), at(ms + 150), at(ms + 900), at(ms + 60_000));
    let roll: f64 = rng.gen();
    if outgoing {
        let (status, steps): (&str, &[(&str, &String)]) = if roll < 0.70 {
            (
                "read",
                &[
                    ("pending", &t0),
                    ("sent", &t1),
                    ("delivered", &t2),
                    ("read", &t3),
                ],
            )
        } else if roll < 0.95 {
            (
                "delivered",
                &[("pending", &t0), ("sent", &t1), ("delivered", &t2)],
            )
        } else if roll < 0.99 {
            ("sent", &[("pending", &t0), ("sent", &t1)])
        } else {
            ("failed", &[("pending", &t0), ("failed", &t1)])
        };
        let has = |s: &str| steps.iter().any(|(k, _)| *k == s);
        json!({"kind": "message", "msg_id": id.to_string(), "peer_key": peer,
            "direction": "out", "body": body, "status": status, "created_at": t0,
            "sent_at": has("sent").then_some(&t1),
            "delivered_at": has("delivered").then_some(&t2),
            "read_at": has("read").then_some(&t3),
            "received_at": null,
            "failed_at": has("failed").then_some(&t1),
            "failure_reason": has("failed").then_some("router unreachable"),
            "events": steps.iter().map(|(s, t)| json!({"status": s, "at": t, "detail": null}))
                .collect::<Vec<_>>()})
    } else {
        let read = roll < 0.9;
        let mut events = vec![json!({"status": "received", "at": t1, "detail": null})];
        if read {
            events.push(json!({"status": "read", "at": t3, "detail": null}));
        }
        json!({"kind": "message", "msg_id": id.to_string(), "peer_key": peer,
            "direction": "in", "body": body, "status": if read { "read" } else { "received" },
            "created_at": t0, "sent_at": null, "delivered_at": null,
            "read_at": read.then_some(&t3), "received_at": t1, "failed_at": null,
            "failure_reason": null, "events": events})
    }
}
