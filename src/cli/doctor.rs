//! `doctor`: checks a profile and its router, and says how to fix what is
//! wrong. The file checks read only (the full-text index check is an
//! `INSERT` command to SQLite that changes nothing); then the profile is
//! opened as every command opens it, which upgrades an old schema.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::Args;
use rusqlite::{Connection, OpenFlags};
use serde_json::json;

use super::{print_json, runtime, shell_quote, Context, ServerArgs};
use crate::render::untrusted_inline;
use crate::store::{self, Store};

/// Clock differences up to this many seconds pass (the router's `Date`
/// has a resolution of one second, plus the round trip).
const MAX_SKEW_SECS: u64 = 10;

/// Arguments of `doctor`.
#[derive(Debug, Args)]
#[command(after_help = "\
Checks: configuration file, database file and permissions (directory 0700, \
files 0600), schema version, database integrity, full-text index, identity, \
outbox (pending and failed messages), files an interrupted import left, the \
router (reachable and accepting this key), clock skew against the router, and \
other chat-p2p processes using this profile. Exits 1 when a check fails; warnings alone exit 0.")]
pub struct DoctorArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Skip the router and clock checks.
    #[arg(long)]
    offline: bool,
    /// Seconds to wait for the router.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    timeout: u64,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One check's outcome.
struct Check {
    name: &'static str,
    level: Level,
    detail: String,
    fix: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        level: Level::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn bad(
    name: &'static str,
    level: Level,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs `doctor`.
pub fn doctor(ctx: &Context, args: DoctorArgs) -> Result<()> {
    let mut checks = vec![check_config(ctx)];
    let db = ctx.profile.db_path();
    if !db.exists() {
        checks.push(bad(
            "database",
            Level::Fail,
            format!("no database at {}", db.display()),
            format!("create this profile with '{} init'", ctx.cli_prefix()),
        ));
    } else {
        checks.push(ok("database", db.display().to_string()));
        checks.extend(check_permissions(&ctx.profile.dir, &db));
        checks.extend(check_database(ctx, &db, &args));
        checks.extend(check_leftovers(&db));
    }
    checks.push(check_processes(&db));
    report(&checks, args.json)
}

fn check_config(ctx: &Context) -> Check {
    let c = &ctx.config;
    let path = c
        .path
        .as_ref()
        .map_or_else(|| "none".to_owned(), |p| p.display().to_string());
    if let Some(problem) = &c.problem {
        return bad(
            "config",
            Level::Fail,
            problem.clone(),
            "correct or remove the file",
        );
    }
    if !c.unknown_keys.is_empty() {
        return bad(
            "config",
            Level::Warn,
            format!(
                "{path}: unknown keys ignored: {}",
                c.unknown_keys.join(", ")
            ),
            format!(
                "remove them; the settings are {}",
                crate::config::known_keys()
            ),
        );
    }
    let state = if c.file_exists {
        ""
    } else {
        " (not created; defaults apply)"
    };
    ok("config", format!("{path}{state}"))
}

/// The directory must be 0700 and each file 0600: the database holds the
/// secret key and every message.
#[cfg(unix)]
fn check_permissions(dir: &Path, db: &Path) -> Vec<Check> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    let mut wrong = Vec::new();
    let mut fixes = Vec::new();
    if let Ok(m) = mode(dir) {
        if m & 0o077 != 0 {
            wrong.push(format!("{} is {m:04o} (should be 0700)", dir.display()));
            fixes.push(format!(
                "chmod 700 {}",
                shell_quote(&dir.display().to_string())
            ));
        }
    }
    let mut files: Vec<PathBuf> = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        files.push(PathBuf::from(p));
    }
    for file in files.iter().filter(|f| f.exists()) {
        if let Ok(m) = mode(file) {
            if m & 0o077 != 0 {
                wrong.push(format!("{} is {m:04o} (should be 0600)", file.display()));
                fixes.push(format!(
                    "chmod 600 {}",
                    shell_quote(&file.display().to_string())
                ));
            }
        }
    }
    if wrong.is_empty() {
        vec![ok("permissions", "directory 0700, files 0600")]
    } else {
        vec![bad(
            "permissions",
            Level::Fail,
            format!("others can read this profile: {}", wrong.join("; ")),
            fixes.join(" && "),
        )]
    }
}

#[cfg(not(unix))]
fn check_permissions(_dir: &Path, _db: &Path) -> Vec<Check> {
    vec![ok("permissions", "not checked on this platform")]
}

/// The copy an import into an empty profile fills, when it is there: an
/// import is running, or one was killed and left it (up to the size of the
/// whole import) until the next import deletes it.
fn check_leftovers(db: &Path) -> Option<Check> {
    let files = store::refill::leftovers(db);
    if files.is_empty() {
        return None;
    }
    let bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let quoted: Vec<String> = names.iter().map(|n| shell_quote(n)).collect();
    Some(bad(
        "leftovers",
        Level::Warn,
        format!(
            "an import into this profile is running, or was interrupted and left {} file(s), {:.1} MB: {}",
            files.len(),
            bytes as f64 / 1e6,
            untrusted_inline(&names.join(", "))
        ),
        format!(
            "the next import deletes them; if no import is running, delete them now: rm -f {}",
            quoted.join(" ")
        ),
    ))
}

/// Schema, integrity, index, identity, outbox, then the router.
fn check_database(ctx: &Context, db: &Path, args: &DoctorArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let backup = format!(
        "copy the file aside first; then recover what is readable with \
         sqlite3 {} .recover | sqlite3 recovered.db, or restore a backup (chat-p2p import FILE)",
        shell_quote(&db.display().to_string())
    );
    let ro = match open(db, OpenFlags::SQLITE_OPEN_READ_ONLY) {
        Ok(conn) => conn,
        Err(e) => {
            checks.push(bad(
                "integrity",
                Level::Fail,
                format!("cannot open it: {e}"),
                backup,
            ));
            return checks;
        }
    };
    checks.push(check_schema(db, &ro));
    match integrity(&ro) {
        Ok(problems) if problems.is_empty() => {
            checks.push(ok("integrity", "PRAGMA integrity_check: ok"))
        }
        Ok(problems) => {
            checks.push(bad("integrity", Level::Fail, problems.join("; "), backup));
            return checks;
        }
        Err(e) => {
            checks.push(bad("integrity", Level::Fail, e.to_string(), backup));
            return checks;
        }
    }
    checks.extend(check_fts(db, &ro));
    drop(ro);
    let store = match Store::open(db) {
        Ok(store) => store,
        Err(e) => {
            checks.push(bad(
                "identity",
                Level::Fail,
                e.to_string(),
                "see the error above",
            ));
            return checks;
        }
    };
    let (identity, check) = check_identity(ctx, &store);
    checks.push(check);
    checks.push(check_outbox(&store));
    match (identity, args.offline) {
        (_, true) => checks.push(ok("router", "not checked (--offline)")),
        (None, false) => {}
        (Some(id), false) => {
            let server = match (&args.server.server, store.home_router()) {
                (Some(given), _) => given.clone(),
                (None, Ok(Some(home))) => home,
                (None, _) => crate::client::ServerUrl::default_router(),
            };
            checks.extend(check_router(&server, &id, args.timeout));
        }
    }
    checks
}

/// The profile's identity, loaded (it signs the router's challenge).
fn check_identity(ctx: &Context, store: &Store) -> (Option<crate::identity::Identity>, Check) {
    match store.identity() {
        Ok(Some(id)) => {
            let fingerprint = id.public_key().fingerprint();
            (
                Some(id),
                ok("identity", format!("public key fingerprint {fingerprint}")),
            )
        }
        Ok(None) => (
            None,
            bad(
                "identity",
                Level::Fail,
                "this profile has no identity",
                format!("create one with '{} init'", ctx.cli_prefix()),
            ),
        ),
        // A passphrase guards the key: the router check needs it, so it is
        // asked for (or read from CHAT_PASSPHRASE_FILE) as by `sync`.
        Err(crate::store::Error::KeyProtected) => match super::passphrase::unlock(ctx, store) {
            Ok(id) => {
                let fingerprint = id.public_key().fingerprint();
                let detail = format!("public key fingerprint {fingerprint}, passphrase-protected");
                (Some(id), ok("identity", detail))
            }
            Err(e) => (
                None,
                bad(
                    "identity",
                    Level::Warn,
                    format!("the secret key has a passphrase and was not unlocked: {e:#}"),
                    "set CHAT_PASSPHRASE_FILE (or run on a terminal) to check the router too",
                ),
            ),
        },
        Err(e) => (
            None,
            bad(
                "identity",
                Level::Fail,
                e.to_string(),
                "restore a backup with 'chat-p2p import' of an export made with --include-secret",
            ),
        ),
    }
}

fn open(db: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(db, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

fn check_schema(db: &Path, conn: &Connection) -> Check {
    if let Err(e) = store::inspect_schema(db) {
        return bad(
            "schema",
            Level::Fail,
            e.to_string(),
            "use the chat-p2p that wrote this file, or restore a backup",
        );
    }
    let latest = store::latest_schema_version();
    let current: rusqlite::Result<Option<i64>> = conn.query_row(
        "SELECT max(version) FROM refinery_schema_history",
        [],
        |r| r.get(0),
    );
    match current {
        Ok(Some(v)) if v == latest => ok("schema", format!("version {v}")),
        Ok(v) => bad(
            "schema",
            Level::Warn,
            format!("version {} of {latest}", v.unwrap_or(0)),
            "it is upgraded the next time a command opens it (e.g. chat-p2p whoami)",
        ),
        Err(e) => bad("schema", Level::Fail, e.to_string(), "restore a backup"),
    }
}

/// What `PRAGMA integrity_check` found (empty when all is well).
fn integrity(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA integrity_check(20)")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let rows: Vec<String> = rows.collect::<rusqlite::Result<_>>()?;
    Ok(rows.into_iter().filter(|r| r != "ok").collect())
}

/// Every FTS5 index, checked against the messages it indexes.
fn check_fts(db: &Path, ro: &Connection) -> Vec<Check> {
    let tables: Vec<String> = ro
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' \
             AND sql LIKE 'CREATE VIRTUAL TABLE%USING fts5%' ORDER BY name",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_default();
    let rw = match open(db, OpenFlags::SQLITE_OPEN_READ_WRITE) {
        Ok(conn) => conn,
        Err(e) => {
            return vec![bad(
                "search index",
                Level::Warn,
                format!("not checked: {e}"),
                "make the file writable",
            )]
        }
    };
    let mut broken = Vec::new();
    for table in &tables {
        // 'integrity-check' with rank 1 also compares the index with the
        // external content table (messages).
        let sql =
            format!("INSERT INTO \"{table}\" (\"{table}\", rank) VALUES ('integrity-check', 1)");
        if let Err(e) = rw.execute(&sql, []) {
            broken.push((table.clone(), e.to_string()));
        }
    }
    if broken.is_empty() {
        return vec![ok(
            "search index",
            format!("{} consistent", tables.join(", ")),
        )];
    }
    let detail = broken
        .iter()
        .map(|(t, e)| format!("{t}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    let fix = broken
        .iter()
        .map(|(t, _)| {
            format!(
                "sqlite3 {} \"INSERT INTO {t}({t}) VALUES('rebuild')\"",
                shell_quote(&db.display().to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(" && ");
    vec![bad(
        "search index",
        Level::Fail,
        detail,
        format!("rebuild it: {fix}"),
    )]
}

fn check_outbox(store: &Store) -> Check {
    let count = |status: &str| -> rusqlite::Result<i64> {
        store.conn().query_row(
            "SELECT count(*) FROM messages WHERE direction = 'out' AND status = ?1",
            [status],
            |r| r.get(0),
        )
    };
    match (count("pending"), count("failed")) {
        (Ok(0), Ok(0)) => ok("outbox", "nothing pending or failed"),
        (Ok(pending), Ok(0)) => bad(
            "outbox",
            Level::Warn,
            format!("{pending} message(s) waiting to be sent"),
            "send them with 'chat-p2p sync'",
        ),
        (Ok(pending), Ok(failed)) => bad(
            "outbox",
            Level::Warn,
            format!("{failed} message(s) failed, {pending} pending"),
            "see why with 'chat-p2p history --direction out --status failed'",
        ),
        (Err(e), _) | (_, Err(e)) => bad(
            "outbox",
            Level::Fail,
            e.to_string(),
            "check the integrity above",
        ),
    }
}

/// Connects and authenticates for real, then compares clocks.
fn check_router(
    server: &crate::client::ServerUrl,
    id: &crate::identity::Identity,
    timeout: u64,
) -> Vec<Check> {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return vec![bad("router", Level::Fail, e.to_string(), "try again")],
    };
    let connected = rt.block_on(async {
        // A control session: doctor must not take over a running chat's.
        let device = crate::store::device::Device::control();
        let conn =
            crate::client::connection::connect(server, id, &device, Duration::from_secs(timeout))
                .await?;
        let date = conn.router_date();
        conn.close().await;
        Ok::<_, crate::client::ClientError>(date)
    });
    let date = match connected {
        Ok(date) => date,
        Err(e) => {
            return vec![bad(
                "router",
                Level::Fail,
                untrusted_inline(&e.to_string()),
                format!(
                    "start a router ('chat-p2p router') or name the right one with --server, \
                     CHAT_SERVER or 'chat-p2p config set router URL' (now {server})"
                ),
            )]
        }
    };
    let router = ok("router", format!("{server} accepted this key"));
    let clock = match date {
        None => ok("clock", "not checked: the router sends no Date header"),
        Some(date) => {
            let now = SystemTime::now();
            let (skew, ahead) = match now.duration_since(date) {
                Ok(d) => (d.as_secs(), "ahead of"),
                Err(e) => (e.duration().as_secs(), "behind"),
            };
            if skew <= MAX_SKEW_SECS {
                ok("clock", format!("within {MAX_SKEW_SECS}s of the router's"))
            } else {
                bad(
                    "clock",
                    Level::Warn,
                    format!("this machine's clock is {skew}s {ahead} the router's: message times will be off"),
                    "synchronise the clock (e.g. 'timedatectl set-ntp true')",
                )
            }
        }
    };
    vec![router, clock]
}

/// Other chat-p2p processes holding this profile's database open (Linux:
/// read from /proc; best effort).
fn check_processes(db: &Path) -> Check {
    if !Path::new("/proc/self/fd").exists() {
        return ok("processes", "not checked on this platform");
    }
    let db = db.canonicalize().unwrap_or_else(|_| db.to_path_buf());
    let me = std::process::id().to_string();
    let mut others = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with("chat-p2p") {
            continue;
        }
        let holds = std::fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| target == db);
        if holds {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            others.push(format!("pid {pid} ({})", untrusted_inline(cmdline.trim())));
        }
    }
    if others.is_empty() {
        return ok(
            "processes",
            "no other chat-p2p process has this profile open",
        );
    }
    let holder = crate::client::owner::SessionLock::open(&db, "chat-p2p doctor")
        .ok()
        .and_then(|mut lock| lock.try_take().ok().flatten());
    let owner = match holder {
        Some(holder) => format!("; {holder} holds its router session"),
        None => String::new(),
    };
    bad(
        "processes",
        Level::Warn,
        format!("also open in {}{owner}", others.join(", ")),
        "fine if you meant it: only the process holding the profile's session lock talks to \
         the router, the others hand their messages to it",
    )
}

/// Prints the checks; fails (exit 1) when one failed.
fn report(checks: &[Check], as_json: bool) -> Result<()> {
    let failed = checks.iter().filter(|c| c.level == Level::Fail).count();
    if as_json {
        let list: Vec<_> = checks
            .iter()
            .map(|c| json!({"name": c.name, "status": c.level.as_str(), "detail": c.detail, "fix": c.fix}))
            .collect();
        print_json(&json!({"ok": failed == 0, "checks": list}))?;
    } else {
        let colour = super::shell::colour_stdout();
        let mut out = super::out::stdout();
        for c in checks {
            let (label, code) = match c.level {
                Level::Ok => ("ok  ", "32"),
                Level::Warn => ("warn", "33"),
                Level::Fail => ("FAIL", "1;31"),
            };
            let label = if colour {
                format!("\x1b[{code}m{label}\x1b[0m")
            } else {
                label.to_owned()
            };
            writeln!(
                out,
                "{label}  {:<13} {}",
                c.name,
                untrusted_inline(&c.detail)
            )?;
            if let Some(fix) = &c.fix {
                writeln!(out, "      {:<13} fix: {}", "", untrusted_inline(fix))?;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}
