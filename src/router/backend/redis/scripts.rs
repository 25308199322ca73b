//! The Lua scripts (files beside this one, most prefixed with `lib.lua`)
//! and how they are run: one at a time with [`redis::Script`] (which
//! loads a script Redis does not have), or many in one pipeline of
//! `EVALSHA`s, re-sending those a restarted Redis answered `NOSCRIPT`.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{Cmd, Pipeline, RedisError, Script, Value};

const LIB: &str = include_str!("lib.lua");

/// A script's text as Redis gets it: `lib.lua` and `source`, or `source`
/// alone for the hot ones, which do without helpers (Redis runs a script's
/// whole text per call: every helper is a closure made each time).
fn text(source: &str, with_lib: bool) -> String {
    if with_lib {
        format!("{LIB}\n{source}")
    } else {
        source.to_owned()
    }
}

/// Every script's source, and whether it is prefixed with `lib.lua`.
const SOURCES: [(&str, bool); 10] = [
    (include_str!("enqueue.lua"), false),
    (include_str!("remove.lua"), false),
    (include_str!("fetch.lua"), true),
    (include_str!("register.lua"), true),
    (include_str!("seen.lua"), true),
    (include_str!("devices.lua"), true),
    (include_str!("remove_device.lua"), true),
    (include_str!("expire.lua"), true),
    (include_str!("claim.lua"), true),
    (include_str!("release.lua"), true),
];

fn script(i: usize) -> Script {
    let (source, with_lib) = SOURCES[i];
    Script::new(&text(source, with_lib))
}

/// Every script, compiled once per process.
pub(super) struct Scripts {
    pub enqueue: Script,
    pub remove: Script,
    pub fetch: Script,
    pub register: Script,
    pub seen: Script,
    pub devices: Script,
    pub remove_device: Script,
    pub expire: Script,
    pub claim: Script,
    pub release: Script,
}

/// The scripts.
pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: script(0),
    remove: script(1),
    fetch: script(2),
    register: script(3),
    seen: script(4),
    devices: script(5),
    remove_device: script(6),
    expire: script(7),
    claim: script(8),
    release: script(9),
});

impl Scripts {
    /// Loads every script into Redis' script cache (at start, which also
    /// proves they compile, and after Redis lost its cache in a restart).
    pub(super) async fn load_all(&self, conn: &mut ConnectionManager) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        for (source, with_lib) in SOURCES {
            pipe.cmd("SCRIPT").arg("LOAD").arg(text(source, with_lib));
        }
        pipe.exec_async(conn).await
    }
}

/// An `EVALSHA` of `script` with `keys` and no arguments yet.
pub(super) fn evalsha(script: &Script, keys: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

/// Whether a reply is Redis saying it does not have the script.
fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

/// Sends `cmds` as one pipeline and returns one reply per command (server
/// errors as [`Value::ServerError`]); commands answered `NOSCRIPT` (Redis
/// restarted and lost its script cache; nothing of them ran) are sent
/// again once the scripts are loaded.
pub(super) async fn run(
    conn: &mut ConnectionManager,
    cmds: Vec<Cmd>,
) -> Result<Vec<Value>, RedisError> {
    if cmds.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = Pipeline::with_capacity(cmds.len());
    pipe.ignore_errors();
    for cmd in cmds {
        pipe.add_command(cmd);
    }
    let mut replies: Vec<Value> = pipe.query_async(conn).await?;
    let missing: Vec<usize> = (0..replies.len())
        .filter(|i| is_noscript(&replies[*i]))
        .collect();
    if !missing.is_empty() {
        tracing::info!("Redis lost the router's scripts (restarted?): loading them again");
        SCRIPTS.load_all(conn).await?;
        let sent: Vec<&Cmd> = pipe.cmd_iter().collect();
        let mut again = Pipeline::with_capacity(missing.len());
        again.ignore_errors();
        for i in &missing {
            again.add_command(sent[*i].clone());
        }
        let answers: Vec<Value> = again.query_async(conn).await?;
        for (i, answer) in missing.into_iter().zip(answers) {
            replies[i] = answer;
        }
    }
    Ok(replies)
}
