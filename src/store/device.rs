//! The `device` table: which device of its identity this profile is
//! (protocol v2). One row at most, created on first use.

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::{Error, Result, Store};
use crate::clock;
use crate::protocol::MAX_DEVICE_NAME_BYTES;

/// This profile's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Random, chosen when the row was created; signed in every `auth`.
    pub id: Uuid,
    /// What `devices` lists.
    pub name: String,
    /// When the row was created, RFC 3339 UTC.
    pub created_at: String,
}

impl Device {
    /// The device of a control session ([`crate::protocol::CONTROL_DEVICE`]):
    /// it receives nothing and replaces no session, so a command that only
    /// asks the router something (`doctor`, `devices`) never disturbs a
    /// running chat.
    pub fn control() -> Self {
        Self {
            id: crate::protocol::CONTROL_DEVICE,
            name: "control".to_owned(),
            created_at: String::new(),
        }
    }
}

impl Store {
    /// This profile's device, created (with a fresh id and the host name)
    /// the first time it is asked for.
    pub fn device(&self) -> Result<Device> {
        if let Some(device) = read(&self.conn)? {
            return Ok(device);
        }
        // Two processes may get here at once: the first insert wins and
        // both read the row it wrote, so a profile never has two ids.
        self.conn.execute(
            "INSERT INTO device (only, id, name, created_at)
             VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (only) DO NOTHING",
            params![Uuid::new_v4().as_bytes(), default_name(), clock::now()],
        )?;
        read(&self.conn)?.ok_or_else(|| Error::Corrupt {
            what: "device row",
            detail: "it vanished right after it was written".to_owned(),
        })
    }

    /// The device row if there is one, without creating it (for readers
    /// that must not write).
    pub fn device_if_any(&self) -> Result<Option<Device>> {
        read(&self.conn)
    }

    /// Gives this profile the device `id` named `name` (replacing any
    /// earlier row): a fresh profile (`init --device-name`) or a linked
    /// copy of another device's profile. The name is checked with
    /// [`check_name`].
    pub fn set_device(&self, id: Uuid, name: &str) -> Result<Device> {
        let name = check_name(name)?;
        let device = Device {
            id,
            name: name.to_owned(),
            created_at: clock::now(),
        };
        self.conn.execute(
            "INSERT INTO device (only, id, name, created_at)
             VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (only) DO UPDATE
             SET id = excluded.id, name = excluded.name, created_at = excluded.created_at",
            params![device.id.as_bytes(), device.name, device.created_at],
        )?;
        Ok(device)
    }

    /// Renames this device (the router learns the name at the next
    /// connection).
    pub fn rename_device(&self, name: &str) -> Result<Device> {
        let current = self.device()?;
        let name = check_name(name)?;
        self.conn
            .execute("UPDATE device SET name = ?1 WHERE only = 1", [name])?;
        Ok(Device {
            name: name.to_owned(),
            ..current
        })
    }
}

/// `name` trimmed, if it is a usable device name: not empty, at most
/// [`MAX_DEVICE_NAME_BYTES`] bytes, no control characters (the router
/// refuses those, and they would reach terminals).
pub fn check_name(name: &str) -> Result<&str> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::BadDeviceName("it is empty".to_owned()));
    }
    if name.len() > MAX_DEVICE_NAME_BYTES {
        return Err(Error::BadDeviceName(format!(
            "it is {} bytes long; the limit is {MAX_DEVICE_NAME_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::BadDeviceName(
            "it contains control characters".to_owned(),
        ));
    }
    Ok(name)
}

/// The host name, as the default device name; "device" when it cannot be
/// read or is not a usable name.
pub fn default_name() -> String {
    let from_os = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok());
    from_os
        .as_deref()
        .and_then(|n| check_name(n).ok())
        .map_or_else(|| "device".to_owned(), str::to_owned)
}

fn read(conn: &Connection) -> Result<Option<Device>> {
    let row = conn
        .query_row(
            "SELECT id, name, created_at FROM device WHERE only = 1",
            [],
            |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?;
    let Some((id, name, created_at)) = row else {
        return Ok(None);
    };
    let id = Uuid::from_slice(&id).map_err(|_| Error::Corrupt {
        what: "device row",
        detail: "its id is not 16 bytes".to_owned(),
    })?;
    Ok(Some(Device {
        id,
        name,
        created_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_created_once_and_kept() {
        let (_dir, store) = crate::store::test_util::temp_store();
        assert_eq!(store.device_if_any().unwrap(), None);
        let first = store.device().unwrap();
        assert_eq!(store.device().unwrap(), first);
        assert!(!first.name.is_empty());
        let renamed = store.rename_device("  laptop ").unwrap();
        assert_eq!((renamed.id, renamed.name.as_str()), (first.id, "laptop"));
        let other = store.set_device(Uuid::new_v4(), "desk").unwrap();
        assert_ne!(other.id, first.id);
        assert_eq!(store.device().unwrap(), other);
    }

    #[test]
    fn bad_names_are_refused() {
        let (_dir, store) = crate::store::test_util::temp_store();
        for bad in ["", "   ", "a\u{1b}[31m", &"x".repeat(65)] {
            assert!(store.set_device(Uuid::new_v4(), bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"é".repeat(32)).is_ok());
    }

    /// A profile written before devices existed opens with everything in
    /// it, and gets its device the first time one is asked for.
    #[test]
    fn a_v7_profile_gets_a_device_on_first_use() {
        let (_dir, path, conn) = crate::store::schema::profile_at_version(7);
        let peer = crate::identity::Identity::generate().public_key();
        conn.execute_batch(&format!(
            "INSERT INTO contacts (name, name_key, public_key, added_at)
                 VALUES ('bob', 'bob', '{peer}', '2026-01-01T00:00:00.000Z');
             INSERT INTO messages (msg_id, peer_key, direction, body, status, created_at)
                 VALUES ('00000000-0000-7000-8000-000000000001', '{peer}', 'out',
                         'kept across the upgrade', 'sent', '2026-01-01T00:00:00.000Z');"
        ))
        .unwrap();
        drop(conn);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.device_if_any().unwrap(), None);
        let device = store.device().unwrap();
        assert_eq!(store.device_if_any().unwrap(), Some(device));
        let body: String = store
            .conn()
            .query_row("SELECT body FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(body, "kept across the upgrade");
    }
}
