//! The backup `init --force` keeps of the identity it replaces: the key
//! pair as a one-line export (a header with `secret_key`), so
//! `import --force FILE` restores it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde_json::json;

use crate::archive::{FORMAT, VERSION};
use crate::identity::Identity;

/// Writes `old` to a new file `identity-backup-<UTC time>.jsonl` in `dir`,
/// readable by its owner alone, and returns its path. Never replaces a
/// file: a second backup in the same second gets a suffix.
pub fn write(dir: &Path, old: &Identity) -> Result<PathBuf> {
    let now = chrono::Utc::now();
    let stamp = now.format("%Y%m%dT%H%M%SZ");
    let line = json!({
        "kind": "header",
        "format": FORMAT,
        "version": VERSION,
        "exported_at": crate::clock::format(now),
        "public_key": old.public_key().to_base64(),
        "secret_key": STANDARD.encode(*old.secret_bytes()),
    });
    let text = zeroize::Zeroizing::new(format!("{line}\n"));
    for attempt in 0..100 {
        let name = match attempt {
            0 => format!("identity-backup-{stamp}.jsonl"),
            n => format!("identity-backup-{stamp}-{n}.jsonl"),
        };
        let path = dir.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = match options.open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            other => other.with_context(|| cannot(&path))?,
        };
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| cannot(&path))?;
        return Ok(path);
    }
    anyhow::bail!(
        "cannot write a backup of the identity in '{}': too many backups made this second; \
         try again, or pass --no-backup",
        dir.display()
    )
}

fn cannot(path: &Path) -> String {
    format!(
        "cannot write the backup of the identity to '{}' (nothing was changed; \
         pass --no-backup to replace the identity without one)",
        path.display()
    )
}
