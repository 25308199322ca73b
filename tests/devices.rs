//! `devices`, `init --device-name` and the device every profile has
//! (protocol v2), against real routers.

mod common;

use common::{Env, Router};
use serde_json::Value;

#[test]
fn init_names_the_device_and_whoami_shows_it() {
    let env = Env::new();
    let out = env.json("alice", &["init", "--device-name", "laptop", "--json"]);
    assert_eq!(out["device"]["name"], "laptop");
    let id = out["device"]["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36);
    let who = env.json("alice", &["whoami", "--json"]);
    assert_eq!(who["device"]["id"], id.as_str());
    assert!(env.ok("alice", &["whoami"]).contains("Device:      laptop"));
    // Each identity is its own device.
    let bob = env.json("bob", &["init", "--json"]);
    assert_ne!(bob["device"]["id"], id.as_str());
    assert!(!bob["device"]["name"].as_str().unwrap().is_empty());
}

#[test]
fn bad_device_names_are_usage_errors() {
    let env = Env::new();
    let long = "x".repeat(65);
    for bad in ["", "  ", "evil\u{1b}[2J", long.as_str()] {
        let err = env.fails("alice", &["init", "--device-name", bad], 2);
        assert!(err.contains("--device-name"), "{err}");
    }
    // Nothing was created by the refused attempts.
    env.fails("alice", &["whoami"], 1);
    env.init("alice");
    env.fails("alice", &["devices", "rename", ""], 2);
    let renamed = env.json("alice", &["devices", "rename", "desk", "--json"]);
    assert_eq!(renamed["name"], "desk");
    assert_eq!(
        env.json("alice", &["whoami", "--json"])["device"]["name"],
        "desk"
    );
}
#[test]
fn devices_lists_removes_and_the_removed_device_is_told() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let url = router.url();
    let server = ["--server", url.as_str()];
    env.ok("alice", &["init", "--device-name", "laptop"]);
    env.second_device("alice", "desk");
    env.ok("alice", &["sync", server[0], server[1]]);
    env.ok("desk", &["sync", server[0], server[1]]);

    let list = env.json("alice", &["devices", server[0], server[1], "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let names: Vec<&str> = list.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["laptop", "desk"]);
    assert_eq!(list[0]["this_device"], true);
    assert_eq!(list[1]["this_device"], false);
    let text = env.ok("alice", &["devices", server[0], server[1]]);
    assert!(
        text.contains("(this device)") && text.contains("desk"),
        "{text}"
    );

    // Not this device, not a bad or unknown id.
    let mine = list[0]["id"].as_str().unwrap().replace('-', "");
    let err = env.fails(
        "alice",
        &["devices", "remove", &mine[..8], server[0], server[1]],
        2,
    );
    assert!(err.contains("this device"), "{err}");
    env.fails(
        "alice",
        &["devices", "remove", "xyz", server[0], server[1]],
        2,
    );
    env.fails(
        "alice",
        &["devices", "remove", "0000000", server[0], server[1]],
        1,
    );

    let desk = list[1]["id"].as_str().unwrap().replace('-', "");
    let removed = env.json(
        "alice",
        &[
            "devices",
            "remove",
            &desk[..8],
            server[0],
            server[1],
            "--json",
        ],
    );
    assert_eq!(removed["removed"], true);
    let list = env.json("alice", &["devices", server[0], server[1], "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list:?}");
    // The removed device is refused, and told why.
    let err = env.fails("desk", &["sync", server[0], server[1]], 1);
    assert!(err.contains("removed"), "{err}");
}

#[test]
fn a_message_reaches_both_devices() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let url = router.url();
    let server = ["--server", url.as_str()];
    let (_alice, _bob) = env.friends();
    env.second_device("alice", "desk");
    // Both devices register before bob writes.
    env.ok("alice", &["sync", server[0], server[1]]);
    env.ok("desk", &["sync", server[0], server[1]]);
    env.ok(
        "bob",
        &["send", server[0], server[1], "alice", "to all of you"],
    );
    for device in ["alice", "desk"] {
        let sync: Value = env.json(device, &["sync", server[0], server[1], "--json"]);
        assert_eq!(sync["received"], 1, "{device}: {sync}");
        let history = env.ok(device, &["history", "bob"]);
        assert!(history.contains("to all of you"), "{device}: {history}");
    }
}
