//! Operators choose whom their router queues frames for (issue 11, item
//! 5): `--recipients any|known` and `--recipients-file`. Real routers on
//! loopback, raw WebSocket clients (`common::Client`) for the wire, and the
//! real binary for what a sending user sees.

mod common;

use std::process::Command;
use std::time::Duration;

use chat_p2p::identity::{Identity, PublicKey};
use chat_p2p::protocol::{ErrorCode, Frame};
use chat_p2p::router::backend::redis::local::{Fsync, LocalRedis};
use common::{Client, Env, Router};
use serde_json::Value;

/// A fresh identity.
fn someone() -> Identity {
    Identity::generate()
}

/// A copy of `id` (identities are not `Clone`).
fn copy(id: &Identity) -> Identity {
    Identity::from_secret_bytes(&id.secret_bytes())
}

/// Sends a text to `to` and returns the router's answer to it: its ack
/// (`Ok(at)`) or its error frame.
async fn answer(
    client: &mut Client,
    to: &PublicKey,
) -> Result<String, chat_p2p::protocol::ErrorFrame> {
    let m = client.send(to, "hello").await;
    match client.next().await {
        Frame::Ack(a) if a.id == m.id => Ok(a.at.unwrap_or_default()),
        Frame::Error(e) => {
            assert_eq!(e.id, Some(m.id), "the refusal names the frame: {e:?}");
            Err(e)
        }
        other => panic!("expected the ack or an error of {}, got {other:?}", m.id),
    }
}

/// Asserts that a frame to `to` is refused as `recipient-not-served`, with
/// a message naming the router at `url`.
async fn refused(client: &mut Client, to: &PublicKey, url: &str) {
    let e = answer(client, to).await.expect_err("refused");
    assert_eq!(e.code, ErrorCode::RecipientNotServed, "{e:?}");
    assert_eq!(e.code.as_str(), "recipient-not-served");
    assert!(
        e.message.contains(&format!(
            "the router at {url} does not accept messages for this recipient"
        )),
        "{}",
        e.message
    );
}

/// Signs `id` in at `addr` once, on its default device, and leaves.
async fn sign_in(addr: &str, id: &Identity) {
    let mut c = Client::connect(addr, copy(id)).await;
    c.until_synced().await;
    c.close().await;
}

/// Polls `check` until it holds; the guard only prevents hanging forever.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_a_stranger_reaches_a_key_the_router_never_saw() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(&dir.path().join("router"), &[]);
    let mut stranger = Client::connect(&router.addr, someone()).await;
    let nobody = someone().public_key();
    answer(&mut stranger, &nobody).await.expect("queued");
    let mut control = Client::control(&router.addr, someone()).await;
    answer(&mut control, &nobody).await.expect("queued");
    assert_eq!(
        router.metric("chat_router_errors_total{code=\"recipient-not-served\"}"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn known_serves_keys_once_they_signed_in_here_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let router = Router::start(&dir.path().join("router"), &["--recipients", "known"]);
    let url = router.url();
    let (bob, carol) = (someone(), someone());
    let mut stranger = Client::connect(&router.addr, someone()).await;
    refused(&mut stranger, &bob.public_key(), &url).await;
    // Asked again, still no (from memory or from the queue alike).
    refused(&mut stranger, &bob.public_key(), &url).await;
    // One's own key is served whoever one is.
    let me = stranger.key();
    answer(&mut stranger, &me).await.expect("to one's own key");
    let mut control = Client::control(&router.addr, someone()).await;
    let own = control.key();
    answer(&mut control, &own)
        .await
        .expect("a control session's own key");
    refused(&mut control, &bob.public_key(), &url).await;

    sign_in(&router.addr, &bob).await;
    answer(&mut stranger, &bob.public_key())
        .await
        .expect("bob signed in here");
    refused(&mut stranger, &carol.public_key(), &url).await;
    assert_eq!(
        router.metric("chat_router_errors_total{code=\"recipient-not-served\"}"),
        Some(4.0)
    );
    stranger.close().await;
    control.close().await;

    // Known from the queue after a restart, where nothing is remembered.
    let router = router.restart_same_port_with(&["--recipients", "known"]);
    let mut stranger = Client::connect(&router.addr, someone()).await;
    answer(&mut stranger, &bob.public_key())
        .await
        .expect("bob is in the queue's devices");
    refused(&mut stranger, &carol.public_key(), &url).await;
    // Bob gets what the stranger sent him.
    let mut bob = Client::connect(&router.addr, copy(&bob)).await;
    let (_, body) = bob.receive().await;
    assert_eq!(body, "hello");
    let (_, body) = bob.receive().await;
    assert_eq!(body, "hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recipients_file_serves_the_listed_keys_and_is_read_again_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (bob, carol) = (someone(), someone());
    let file = dir.path().join("recipients");
    std::fs::write(
        &file,
        format!("# served here\n{}  # bob\n", bob.public_key().to_base64()),
    )
    .unwrap();
    let router = Router::start(
        &dir.path().join("router"),
        &["--recipients-file", file.to_str().unwrap()],
    );
    let url = router.url();
    let mut stranger = Client::connect(&router.addr, someone()).await;
    answer(&mut stranger, &bob.public_key())
        .await
        .expect("bob is listed");
    refused(&mut stranger, &carol.public_key(), &url).await;
    // Signing in is not enough: the list alone says who is served.
    sign_in(&router.addr, &carol).await;
    refused(&mut stranger, &carol.public_key(), &url).await;

    std::fs::write(
        &file,
        format!(
            "{}\nchat-p2p:{}@{}\n",
            bob.public_key().to_base64(),
            carol.public_key().to_base64(),
            url
        ),
    )
    .unwrap();
    router.signal("HUP");
    // Read again in the background: refused until then.
    let mut tries = 0;
    while answer(&mut stranger, &carol.public_key()).await.is_err() {
        tries += 1;
        assert!(tries < 200, "carol is never served after SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A bad file on SIGHUP is reported and the list stays.
    std::fs::write(&file, "not a key\n").unwrap();
    router.signal("HUP");
    eventually("the bad file is logged", || {
        let log = router.log();
        async move { log.contains("keeping the list read before") }
    })
    .await;
    assert!(router.log().contains("line 1"), "{}", router.log());
    answer(&mut stranger, &carol.public_key())
        .await
        .expect("the list read before");
}

#[tokio::test(flavor = "multi_thread")]
async fn known_and_a_file_from_the_environment_serve_both() {
    let dir = tempfile::tempdir().unwrap();
    let (bob, carol, dave) = (someone(), someone(), someone());
    let file = dir.path().join("recipients");
    std::fs::write(&file, bob.public_key().to_base64()).unwrap();
    let router = Router::start_with_env(
        &dir.path().join("router"),
        "127.0.0.1:0",
        &[],
        &[
            ("CHAT_ROUTER_RECIPIENTS", "known"),
            ("CHAT_ROUTER_RECIPIENTS_FILE", file.to_str().unwrap()),
        ],
    );
    sign_in(&router.addr, &carol).await;
    let mut stranger = Client::connect(&router.addr, someone()).await;
    answer(&mut stranger, &bob.public_key())
        .await
        .expect("listed");
    answer(&mut stranger, &carol.public_key())
        .await
        .expect("known");
    refused(&mut stranger, &dave.public_key(), &router.url()).await;
}

/// `router` with `args` (and a queue in `dir`), which must refuse to start:
/// its exit code and stderr.
fn router_refuses(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .args(["router", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("router"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_recipients_file_is_a_usage_error_naming_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("recipients");
    let good = someone().public_key().to_base64();
    std::fs::write(
        &file,
        format!("# ours\n{good}\nAAAA\n\n{good}@http://example.org\n\u{1b}[31mred\n"),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, err) = router_refuses(dir.path(), &["--recipients-file", path]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(path), "{err}");
    assert!(err.contains("3 bad lines"), "{err}");
    assert!(err.contains("line 3: 'AAAA' is not a key"), "{err}");
    assert!(err.contains("line 5:"), "{err}");
    assert!(err.contains("line 6:"), "{err}");
    assert!(!err.contains("line 2:"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "an escape reached the terminal: {err}"
    );
    assert!(err.contains("one public key per line"), "{err}");

    let missing = dir.path().join("missing");
    let (code, err) = router_refuses(
        dir.path(),
        &["--recipients-file", missing.to_str().unwrap()],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot read the recipients file"), "{err}");

    std::fs::write(&file, format!("{good}\n")).unwrap();
    let (code, err) = router_refuses(
        dir.path(),
        &["--recipients", "any", "--recipients-file", path],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("drop one of them"), "{err}");

    let (code, err) = router_refuses(dir.path(), &["--recipients", "friends"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("known"), "{err}");
}

#[test]
fn the_sender_sees_its_message_failed_with_the_routers_reason() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &["--recipients", "known"]);
    let url = router.url();
    env.friends();
    let out = env
        .cmd("alice")
        .args(["send", "--server", &url, "bob", "are you there?", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["status"], "failed", "{m}");
    let reason = m["failure_reason"].as_str().unwrap();
    assert!(reason.contains("recipient-not-served"), "{reason}");
    assert!(
        reason.contains(&format!(
            "the router at {url} does not accept messages for this recipient"
        )),
        "{reason}"
    );
    // Final: not sent again by the next connection.
    let history = env.json("alice", &["history", "bob", "--json"]);
    let failed = history
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["body"] == "are you there?")
        .unwrap_or_else(|| panic!("{history}"));
    assert_eq!(failed["status"], "failed", "{failed}");

    // Once bob has signed in there, the same router takes the next one.
    env.ok("bob", &["sync", "--server", &url]);
    env.ok("alice", &["send", "--server", &url, "bob", "now?"]);
    env.ok("bob", &["sync", "--server", &url]);
    let history = env.json("bob", &["history", "alice", "--json"]);
    let bodies = common::body_strs(&history);
    assert_eq!(bodies, ["now?"], "{history}");
}

/// Two routers on one Redis: a key that signed in at one is known at the
/// other (through the shared queue, not its memory).
#[tokio::test(flavor = "multi_thread")]
async fn known_is_shared_by_the_routers_of_one_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis =
        LocalRedis::start(&dir.path().join("redis"), Fsync::EverySec).expect("start redis-server");
    let known = ["--recipients", "known"];
    let one = Router::start_redis(&dir.path().join("one"), &redis.url(), &known);
    let two = Router::start_redis(&dir.path().join("two"), &redis.url(), &known);
    let (bob, carol) = (someone(), someone());
    sign_in(&one.addr, &bob).await;
    let mut stranger = Client::connect(&two.addr, someone()).await;
    answer(&mut stranger, &bob.public_key())
        .await
        .expect("bob signed in at the other router");
    refused(&mut stranger, &carol.public_key(), &two.url()).await;
}
