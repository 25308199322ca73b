//! The SQLite queue: the backend contract (run through
//! [`crate::backend_contract!`]), and what is its own: surviving a reopen
//! with its state reloaded, seq never reused, the expiry scan, and upgrades
//! of queues older routers left, with their frames.

use std::sync::atomic::AtomicUsize;

use super::*;
use crate::identity::Identity;
use crate::protocol::CONTROL_DEVICE;
use rusqlite::params;

fn frame(to: &PublicKey, from: &PublicKey, id: Uuid) -> NewFrame {
    super::super::contract::frame(to, from, CONTROL_DEVICE, id)
}

/// Opens SQLite queues in fresh directories under one temporary directory
/// that lives as long as the test.
struct Fresh {
    dir: tempfile::TempDir,
    n: AtomicUsize,
}

impl Fresh {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            n: AtomicUsize::new(0),
        }
    }

    fn open(&self, quota: u64) -> SqliteBackend {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        SqliteBackend::open(&self.dir.path().join(format!("q{n}")), quota).unwrap()
    }
}

mod contract {
    use super::*;

    crate::backend_contract!(Fresh::new(), |fresh: &Fresh, quota| fresh.open(quota));
}

/// The contract again with the writer staging frames (a router took the
/// hand-over), except the cases that read the devices a frame waits for
/// from `enqueue`'s answer: a staged frame's devices come with its
/// hand-over instead, which `staging`'s own tests check.
mod contract_staged {
    use super::*;

    fn staging(fresh: &Fresh, quota: u64) -> SqliteBackend {
        let db = fresh.open(quota);
        // Nobody listens: the hand-overs go nowhere, as in a router whose
        // recipients are all offline.
        drop(db.events());
        db
    }

    crate::backend_contract!(
        Fresh::new(), staging;
        dedup_is_per_sender,
        quota_is_per_device,
        an_ack_by_one_device_keeps_the_frame_for_the_other,
        the_first_device_gets_the_backlog,
        retention_forgets_devices_not_seen,
        devices_are_listed_oldest_first,
        keys_are_known_while_they_have_a_live_device,
    );
}

fn stored(outcome: &Enqueued) -> Queued {
    match outcome {
        Enqueued::Stored { frame, .. } => frame.clone(),
        other => panic!("not stored: {other:?}"),
    }
}

#[tokio::test]
async fn a_reopened_queue_has_every_frame_device_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        Identity::generate().public_key(),
        Identity::generate().public_key(),
    );
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    let db = SqliteBackend::open(dir.path(), 2).unwrap();
    db.register(bob, laptop, "laptop".into()).await.unwrap();
    db.register(bob, phone, "phone".into()).await.unwrap();
    let a = stored(
        &db.enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
            .await
            .unwrap()[0],
    );
    let b = stored(
        &db.enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
            .await
            .unwrap()[0],
    );
    db.remove(bob, phone, vec![a.seq, b.seq]).await.unwrap();
    db.close().await;
    assert!(matches!(
        db.enqueue(vec![frame(&bob, &alice, Uuid::now_v7())]).await,
        Err(BackendError::Closed)
    ));

    let db = SqliteBackend::open(dir.path(), 2).unwrap();
    let seqs = |rows: Vec<Queued>| rows.iter().map(|q| q.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(db.fetch(bob, laptop, 0, 10).await.unwrap()),
        [a.seq, b.seq]
    );
    assert!(db.fetch(bob, phone, 0, 10).await.unwrap().is_empty());
    // The laptop's count was reloaded: full.
    let out = db
        .enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
        .await
        .unwrap();
    assert_eq!(out[0], Enqueued::QuotaExceeded);
    assert_eq!(db.remove(bob, laptop, vec![a.seq]).await.unwrap(), 1);
    let out = db
        .enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
        .await
        .unwrap();
    let Enqueued::Stored { devices, .. } = &out[0] else {
        panic!("not stored: {out:?}")
    };
    assert_eq!(devices.len(), 2, "the slots were reloaded");
    db.close().await;
}

#[tokio::test]
async fn seq_never_reuses_a_deleted_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        Identity::generate().public_key(),
        Identity::generate().public_key(),
    );
    let db = SqliteBackend::open(dir.path(), 100).unwrap();
    let laptop = Uuid::new_v4();
    db.register(bob, laptop, "laptop".into()).await.unwrap();
    let id = Uuid::now_v7();
    let first = stored(&db.enqueue(vec![frame(&bob, &alice, id)]).await.unwrap()[0]);
    assert_eq!(db.remove(bob, laptop, vec![first.seq]).await.unwrap(), 1);
    assert_eq!(db.depth().await.unwrap(), 0);
    let second = stored(
        &db.enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
            .await
            .unwrap()[0],
    );
    assert!(second.seq > first.seq);
    db.close().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_queue_files_are_readable_by_their_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("router");
    let db = SqliteBackend::open(&data, 10).unwrap();
    let (alice, bob) = (
        Identity::generate().public_key(),
        Identity::generate().public_key(),
    );
    db.enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
        .await
        .unwrap();
    assert_eq!(mode(&data), 0o700);
    for name in [FILE_NAME, "queue.sqlite3-wal", "queue.sqlite3-shm"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    db.close().await;
    // A queue an older release left readable by others is tightened.
    std::fs::set_permissions(data.join(FILE_NAME), std::fs::Permissions::from_mode(0o644)).unwrap();
    let db = SqliteBackend::open(&data, 10).unwrap();
    assert_eq!(mode(&data.join(FILE_NAME)), 0o600);
    db.close().await;
}

#[test]
fn refuses_a_foreign_database() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
    conn.execute_batch("CREATE TABLE other (x INTEGER)")
        .unwrap();
    drop(conn);
    let before = std::fs::metadata(dir.path().join(FILE_NAME))
        .unwrap()
        .permissions();
    assert!(matches!(
        SqliteBackend::open(dir.path(), 10),
        Err(BackendError::NotOurs(_))
    ));
    let after = std::fs::metadata(dir.path().join(FILE_NAME))
        .unwrap()
        .permissions();
    assert_eq!(before, after, "a foreign file's mode is left as it was");
}

#[tokio::test]
async fn expiry_drops_exactly_the_old_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        Identity::generate().public_key(),
        Identity::generate().public_key(),
    );
    SqliteBackend::open(dir.path(), 10_000)
        .unwrap()
        .close()
        .await;
    // 2500 old rows then 3 fresh ones, written directly with chosen times:
    // the scan crosses several steps before it finds the first fresh row.
    {
        let mut conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        let tx = conn.transaction().unwrap();
        let mut insert = tx
            .prepare(
                "INSERT INTO queue (seq, recipient, id, sender, received_at, frame)
                 VALUES (?1, ?2, ?3, ?4, ?5, '{}')",
            )
            .unwrap();
        for seq in 1..=2503i64 {
            let at = if seq <= 2500 {
                "2026-01-01T00:00:00.000Z"
            } else {
                "2026-06-01T00:00:00.000Z"
            };
            let id = Uuid::now_v7();
            insert
                .execute(params![
                    seq,
                    bob.as_bytes(),
                    id.as_bytes(),
                    alice.as_bytes(),
                    at
                ])
                .unwrap();
        }
        drop(insert);
        tx.commit().unwrap();
    }
    let db = SqliteBackend::open(dir.path(), 10_000).unwrap();
    assert_eq!(
        db.expire("2026-03-01T00:00:00.000Z".into()).await.unwrap(),
        Expired {
            frames: 2500,
            devices: 0
        }
    );
    let laptop = Uuid::new_v4();
    db.register(bob, laptop, "laptop".into()).await.unwrap();
    assert_eq!(db.fetch(bob, laptop, 0, 10).await.unwrap().len(), 3);
    assert_eq!(
        db.expire("2026-03-01T00:00:00.000Z".into()).await.unwrap(),
        Expired::default()
    );
    // Counts were reloaded and decremented: 3 queued now.
    let stored = db
        .enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
        .await
        .unwrap();
    let Enqueued::Stored { frame: q, .. } = &stored[0] else {
        panic!("not stored")
    };
    assert!(q.seq > 2503, "seq continues after the highest stored");
    db.close().await;
}

#[tokio::test]
async fn a_v1_queue_is_upgraded_and_keeps_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let [alice, bob, carol] = [(); 3].map(|()| Identity::generate().public_key());
    let ids = [Uuid::now_v7(), Uuid::now_v7()];
    {
        // A queue as a router of the first schema left it.
        let mut conn = connect(&dir.path().join(FILE_NAME), false).unwrap();
        embedded::migrations::runner()
            .set_target(refinery::Target::Version(1))
            .run(&mut conn)
            .unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        for (seq, id) in [(7i64, ids[0]), (9, ids[1])] {
            conn.execute(
                "INSERT INTO queue (seq, recipient, id, sender, received_at, frame)
                 VALUES (?1, ?2, ?3, ?4, '2026-11-25T20:00:00.000Z', ?5)",
                params![seq, bob.as_bytes(), id.as_bytes(), alice.as_bytes(), "{}"],
            )
            .unwrap();
        }
    }
    let db = SqliteBackend::open(dir.path(), 100).unwrap();
    let laptop = Uuid::new_v4();
    db.register(bob, laptop, "laptop".into()).await.unwrap();
    let got = db.fetch(bob, laptop, 0, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|q| (q.seq, q.id)).collect::<Vec<_>>(),
        [(7, ids[0]), (9, ids[1])]
    );
    // The upgraded queue deduplicates per sender, and seq keeps growing.
    let out = db
        .enqueue(vec![
            frame(&bob, &carol, ids[0]),
            frame(&bob, &alice, ids[0]),
        ])
        .await
        .unwrap();
    let Enqueued::Stored { frame: carols, .. } = &out[0] else {
        panic!("carol's frame with alice's id was not stored: {out:?}")
    };
    assert!(carols.seq > 9);
    assert!(matches!(out[1], Enqueued::Duplicate { .. }));
    db.close().await;
}

#[tokio::test]
async fn a_v2_queue_is_upgraded_and_its_frames_wait_for_the_first_device() {
    let dir = tempfile::tempdir().unwrap();
    let [alice, bob, carol] = [(); 3].map(|()| Identity::generate().public_key());
    let rows: Vec<NewFrame> = [(bob, alice), (bob, carol), (carol, alice)]
        .iter()
        .map(|(to, from)| frame(to, from, Uuid::now_v7()))
        .collect();
    write_queue_at(dir.path(), 2, &rows).unwrap();
    let db = SqliteBackend::open(dir.path(), 2).unwrap();
    assert_eq!(db.depth().await.unwrap(), 3);
    // Bob's two frames count against his quota before he has a device.
    let out = db
        .enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
        .await
        .unwrap();
    assert_eq!(out[0], Enqueued::QuotaExceeded);
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        db.register(bob, laptop, "laptop".into()).await.unwrap(),
        Registered::First
    );
    assert_eq!(
        db.register(bob, phone, "phone".into()).await.unwrap(),
        Registered::Added
    );
    let got = db.fetch(bob, laptop, 0, 10).await.unwrap();
    let ids: Vec<Uuid> = got.iter().map(|q| q.id).collect();
    assert_eq!(ids, [rows[0].id, rows[1].id]);
    assert_eq!(&*got[0].text, &*rows[0].text);
    assert!(db.fetch(bob, phone, 0, 10).await.unwrap().is_empty());
    let seqs = got.iter().map(|q| q.seq).collect();
    assert_eq!(db.remove(bob, laptop, seqs).await.unwrap(), 2);
    // Carol's waits for her first device, as it did.
    let desk = Uuid::new_v4();
    db.register(carol, desk, "desk".into()).await.unwrap();
    assert_eq!(
        db.fetch(carol, desk, 0, 10).await.unwrap()[0].id,
        rows[2].id
    );
    assert_eq!(db.depth().await.unwrap(), 1);
    db.close().await;
}

#[tokio::test]
async fn a_detached_removal_is_committed_in_order_with_later_submissions() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        Identity::generate().public_key(),
        Identity::generate().public_key(),
    );
    let db = SqliteBackend::open(dir.path(), 100).unwrap();
    let laptop = Uuid::new_v4();
    db.register(bob, laptop, "laptop".into()).await.unwrap();
    let first = stored(
        &db.enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
            .await
            .unwrap()[0],
    );
    assert!(
        db.remove_detached(bob, laptop, vec![first.seq]).is_none(),
        "handed over at once: nothing to await"
    );
    // A submission made after it is answered after its commit.
    db.enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
        .await
        .unwrap();
    assert_eq!(db.depth().await.unwrap(), 1);
    db.close().await;
}
