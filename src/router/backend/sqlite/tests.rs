//! The queue's story, told against the SQLite backend: store, dedup,
//! quota, fetch in order, remove on ack, expire, survive a reopen.

use super::*;
use crate::identity::Identity;

fn frame(to: &PublicKey, from: &PublicKey, id: Uuid) -> NewFrame {
    NewFrame {
        recipient: *to.as_bytes(),
        sender: *from.as_bytes(),
        id,
        text: format!("{{\"id\":\"{id}\"}}").into(),
    }
}

#[tokio::test]
async fn queue_story() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        Identity::generate().public_key(),
        Identity::generate().public_key(),
    );
    let db = SqliteBackend::open(dir.path(), 3).unwrap();
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();

    let first = db
        .enqueue(vec![
            frame(&bob, &alice, ids[0]),
            frame(&bob, &alice, ids[0]),
        ])
        .await
        .unwrap();
    assert!(matches!(first[0], Enqueued::Stored(_)));
    assert!(
        matches!(first[1], Enqueued::Duplicate { .. }),
        "same id twice in one batch"
    );

    let more = db
        .enqueue(ids[1..].iter().map(|id| frame(&bob, &alice, *id)).collect())
        .await
        .unwrap();
    assert!(matches!(more[0], Enqueued::Stored(_)));
    assert!(matches!(more[1], Enqueued::Stored(_)));
    assert_eq!(more[2], Enqueued::QuotaExceeded, "quota of 3 per recipient");

    // Nothing queued for alice; bob's three come back in order.
    assert!(db.fetch(alice, 0, 10).await.unwrap().is_empty());
    let got = db.fetch(bob, 0, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|q| q.id).collect::<Vec<_>>(),
        ids[..3].to_vec()
    );
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
    let after_first = db.fetch(bob, got[0].seq, 1).await.unwrap();
    assert_eq!(after_first[0].id, ids[1]);

    // Only the recipient's ack removes, and it frees quota.
    assert_eq!(db.remove(alice, vec![got[0].seq]).await.unwrap(), 0);
    assert_eq!(db.remove(bob, vec![got[0].seq]).await.unwrap(), 1);
    let again = db.enqueue(vec![frame(&bob, &alice, ids[3])]).await.unwrap();
    assert!(matches!(again[0], Enqueued::Stored(_)));
    db.close().await;
    assert!(matches!(
        db.enqueue(vec![frame(&bob, &alice, Uuid::now_v7())]).await,
        Err(BackendError::Closed)
    ));

    // Reopen: everything committed is there, and counts were reloaded.
    let db = SqliteBackend::open(dir.path(), 3).unwrap();
    let got = db.fetch(bob, 0, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|q| q.id).collect::<Vec<_>>(),
        ids[1..].to_vec()
    );
    let full = db
        .enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
        .await
        .unwrap();
    assert_eq!(full[0], Enqueued::QuotaExceeded);

    // Expiry drops what is older than the cutoff.
    assert_eq!(
        db.expire("1970-01-01T00:00:00.000Z".into()).await.unwrap(),
        0
    );
    assert_eq!(
        db.expire("9999-01-01T00:00:00.000Z".into()).await.unwrap(),
        3
    );
    assert!(db.fetch(bob, 0, 10).await.unwrap().is_empty());
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
    let id = Uuid::now_v7();
    let Enqueued::Stored(first) =
        db.enqueue(vec![frame(&bob, &alice, id)]).await.unwrap()[0].clone()
    else {
        panic!("not stored")
    };
    db.remove(bob, vec![first.seq]).await.unwrap();
    let Enqueued::Stored(second) = db
        .enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
        .await
        .unwrap()[0]
        .clone()
    else {
        panic!("not stored")
    };
    assert!(second.seq > first.seq);
    db.close().await;
}

#[test]
fn refuses_a_foreign_database() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
    conn.execute_batch("CREATE TABLE other (x INTEGER)")
        .unwrap();
    drop(conn);
    assert!(matches!(
        SqliteBackend::open(dir.path(), 10),
        Err(BackendError::NotOurs(_))
    ));
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
        2500
    );
    assert_eq!(db.fetch(bob, 0, 10).await.unwrap().len(), 3);
    assert_eq!(
        db.expire("2026-03-01T00:00:00.000Z".into()).await.unwrap(),
        0
    );
    // Counts were reloaded and decremented: 3 queued now.
    let stored = db
        .enqueue(vec![frame(&bob, &alice, Uuid::now_v7())])
        .await
        .unwrap();
    let Enqueued::Stored(q) = &stored[0] else {
        panic!("not stored")
    };
    assert!(q.seq > 2503, "seq continues after the highest stored");
    db.close().await;
}

#[tokio::test]
async fn one_id_from_two_senders_is_two_frames() {
    let dir = tempfile::tempdir().unwrap();
    let [alice, bob, carol] = [(); 3].map(|()| Identity::generate().public_key());
    let db = SqliteBackend::open(dir.path(), 100).unwrap();
    let id = Uuid::now_v7();
    let out = db
        .enqueue(vec![
            frame(&bob, &alice, id),
            frame(&bob, &carol, id),
            frame(&bob, &alice, id),
        ])
        .await
        .unwrap();
    assert!(matches!(out[0], Enqueued::Stored(_)));
    assert!(
        matches!(out[1], Enqueued::Stored(_)),
        "carol's is not alice's"
    );
    assert!(matches!(out[2], Enqueued::Duplicate { .. }));
    let got = db.fetch(bob, 0, 10).await.unwrap();
    assert_eq!(got.len(), 2);
    // Removing one by its seq leaves the other sender's frame queued.
    assert_eq!(db.remove(bob, vec![got[0].seq]).await.unwrap(), 1);
    assert_eq!(db.fetch(bob, 0, 10).await.unwrap(), got[1..].to_vec());
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
    let got = db.fetch(bob, 0, 10).await.unwrap();
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
    let Enqueued::Stored(carols) = &out[0] else {
        panic!("carol's frame with alice's id was not stored: {out:?}")
    };
    assert!(carols.seq > 9);
    assert!(matches!(out[1], Enqueued::Duplicate { .. }));
    db.close().await;
}
