//! `devices`, `init --device-name` and the device every profile has
//! (protocol v2), against real routers.

mod common;

use common::Env;

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
