//! The Lua scripts (files beside this one, each prefixed with `lib.lua`)
//! and how they are run: one at a time with [`redis::Script`] (which
//! loads a script Redis does not have), or many in one pipeline of
//! `EVALSHA`s, re-sending those a restarted Redis answered `NOSCRIPT`.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{Cmd, Pipeline, RedisError, Script, Value};

const LIB: &str = include_str!("lib.lua");

fn script(source: &str) -> Script {
    Script::new(&format!("{LIB}\n{source}"))
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
    enqueue: script(include_str!("enqueue.lua")),
    remove: script(include_str!("remove.lua")),
    fetch: script(include_str!("fetch.lua")),
    register: script(include_str!("register.lua")),
    seen: script(include_str!("seen.lua")),
    devices: script(include_str!("devices.lua")),
    remove_device: script(include_str!("remove_device.lua")),
    expire: script(include_str!("expire.lua")),
    claim: script(include_str!("claim.lua")),
    release: script(include_str!("release.lua")),
});

impl Scripts {
    /// Loads every script into Redis' script cache (at start, which also
    /// proves they compile, and after Redis lost its cache in a restart).
    pub(super) async fn load_all(&self, conn: &mut ConnectionManager) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        for src in SOURCES {
            pipe.cmd("SCRIPT").arg("LOAD").arg(format!("{LIB}\n{src}"));
        }
        pipe.exec_async(conn).await
    }
}

/// Every script's source (without `lib.lua`).
const SOURCES: [&str; 10] = [
    include_str!("enqueue.lua"),
    include_str!("remove.lua"),
    include_str!("fetch.lua"),
    include_str!("register.lua"),
    include_str!("seen.lua"),
    include_str!("devices.lua"),
    include_str!("remove_device.lua"),
    include_str!("expire.lua"),
    include_str!("claim.lua"),
    include_str!("release.lua"),
];

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
