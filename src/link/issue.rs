//! The existing device's side: `chat-p2p link`.

use std::path::Path;
use std::time::Duration;

use spake2::{Ed25519Group, Identity as PakeId, Password, Spake2};
use tokio::time::Instant;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::channel::{Channel, Incoming};
use super::code::Code;
use super::snapshot::Snapshot;
use super::wire::{self, b64, unb64, Body, Closed, Note, SecretAsStored, Side};
use super::{maybe_pause, LinkError, Observer};
use crate::client::ServerUrl;
use crate::store::{Store, StoredSecret};

/// Chunks sent ahead of the new device's last progress note.
const AHEAD: u64 = 128;
/// A pessimistic speed of the new device's checks (`PRAGMA
/// integrity_check` and the rest), to know how long to wait for its "done".
const CHECK_BYTES_PER_SEC: u64 = 20_000_000;
/// Frames sent and not yet acknowledged by the router.
const IN_FLIGHT: usize = 64;

/// How the existing device runs a link.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// The router both devices use.
    pub server: ServerUrl,
    /// How long the code stays usable.
    pub expires: Duration,
    /// How long to wait for the router and for the other device once the
    /// link has started.
    pub timeout: Duration,
    /// This device's name, shown on the new device.
    pub device_name: String,
}

/// A finished link, as the existing device saw it.
#[derive(Debug, Clone)]
pub struct Linked {
    /// The new device's id (canonical UUID text).
    pub device_id: String,
    /// The new device's name, as it gave it (untrusted text).
    pub device_name: String,
    /// Messages handed over.
    pub messages: u64,
    /// Size of the profile, uncompressed.
    pub bytes: u64,
    /// Bytes sent, compressed.
    pub sent_bytes: u64,
    /// Frames of profile sent.
    pub chunks: u64,
}

/// Hands the profile at `db` to a new device: prints a code through
/// `observer`, waits for the device that types it, and streams the profile.
pub async fn issue(
    db: &Path,
    options: &IssueOptions,
    observer: &dyn Observer,
) -> Result<Linked, LinkError> {
    let (public, secret) = {
        let store = Store::open(db)?;
        store.stored_secret()?.ok_or(LinkError::NoIdentity)?
    };
    let code = Code::generate();
    let mut ch = Channel::connect(
        &options.server,
        code.nameplate(),
        Side::Old,
        options.timeout,
    )
    .await?;
    let expires_at = chrono::Utc::now()
        + chrono::Duration::from_std(options.expires).unwrap_or(chrono::Duration::MAX);
    let expires_text = crate::clock::format(expires_at);
    let (pake, first) = Spake2::<Ed25519Group>::start_a_with_rng(
        &Password::new(code.password()),
        &PakeId::new(wire::PAKE_OLD),
        &PakeId::new(wire::PAKE_NEW),
        rand::rngs::OsRng,
    );
    ch.send_box(Note::Hello {
        pake: b64(&first),
        expires_at: expires_text.clone(),
    })
    .await?;
    if !ch.flush(Instant::now() + options.timeout).await? {
        return Err(LinkError::Stalled {
            secs: options.timeout.as_secs(),
        });
    }
    observer.code(&code, &expires_text);
    let deadline = Instant::now() + options.expires;
    let mut refused = None;
    let shared = match wait_reply(&mut ch, pake, deadline, &mut refused).await {
        Ok(shared) => shared,
        Err(e) => {
            let reason = match e {
                LinkError::Expired { .. } => Closed::Expired,
                LinkError::WrongCodeTyped => Closed::WrongCode,
                _ => Closed::Failed,
            };
            close_code(ch, reason, refused, options.timeout).await;
            return Err(match e {
                LinkError::Expired { .. } => LinkError::Expired { at: expires_text },
                other => other,
            });
        }
    };
    ch.start_session(&shared, Side::Old);
    match hand_over(&mut ch, db, &shared, public, secret, options, observer).await {
        Ok(linked) => {
            close_code(ch, Closed::Used, None, options.timeout).await;
            Ok(linked)
        }
        Err(e) => {
            if !matches!(e, LinkError::Aborted(_) | LinkError::Client(_)) {
                let reason = e.to_string();
                let _ = ch.send(&Body::Note(Note::Abort { reason })).await;
            }
            close_code(ch, Closed::Failed, None, options.timeout).await;
            Err(e)
        }
    }
}

/// Leaves a note that the code is closed for whoever tries it next, and
/// ends the session (best effort: the link's outcome is already known).
async fn close_code(mut ch: Channel, reason: Closed, refused: Option<Uuid>, timeout: Duration) {
    if ch.send_box(Note::Closed { reason, refused }).await.is_ok() {
        let _ = ch.flush(Instant::now() + timeout).await;
    }
    ch.close().await;
}

/// Waits for the new device's SPAKE2 message and checks its confirmation:
/// the shared key. A refused reply's id is left in `refused`.
async fn wait_reply(
    ch: &mut Channel,
    pake: Spake2<Ed25519Group>,
    deadline: Instant,
    refused: &mut Option<Uuid>,
) -> Result<Zeroizing<Vec<u8>>, LinkError> {
    loop {
        let Some(incoming) = ch.recv(deadline).await? else {
            return Err(LinkError::Expired { at: String::new() });
        };
        let Incoming::Boxed(
            Note::Reply {
                pake: theirs,
                confirm,
            },
            id,
        ) = incoming
        else {
            continue;
        };
        ch.ack(id).await?;
        *refused = Some(id);
        let shared = Zeroizing::new(
            pake.finish(&unb64(&theirs)?)
                .map_err(|_| LinkError::WrongCodeTyped)?,
        );
        let expected = wire::confirmation(&shared, Side::New);
        if !wire::same_confirmation(&expected, &unb64(&confirm)?) {
            return Err(LinkError::WrongCodeTyped);
        }
        return Ok(shared);
    }
}

/// Everything after the PAKE: identity, the new device's go-ahead, the
/// profile, the new device's "done".
async fn hand_over(
    ch: &mut Channel,
    db: &Path,
    shared: &[u8],
    public: crate::identity::PublicKey,
    secret: StoredSecret,
    options: &IssueOptions,
    observer: &dyn Observer,
) -> Result<Linked, LinkError> {
    let secret = match secret {
        StoredSecret::Plain(seed) => SecretAsStored::Plain { seed: b64(&seed) },
        StoredSecret::Wrapped(w) => SecretAsStored::Wrapped {
            memory_kib: w.params.memory_kib,
            iterations: w.params.iterations,
            parallelism: w.params.parallelism,
            salt: b64(&w.salt),
            sealed: b64(&w.sealed),
        },
    };
    ch.send(&Body::Note(Note::Welcome {
        confirm: b64(&wire::confirmation(shared, Side::Old)),
        public_key: public.to_base64(),
        secret,
        device_name: options.device_name.clone(),
    }))
    .await?;
    // The new device may ask its user for the key's passphrase first.
    let patience = options.timeout.max(options.expires);
    let (device_id, device_name) = match expect_note(ch, patience).await? {
        Note::Ready {
            device_id,
            device_name,
        } => (device_id, device_name),
        other => return Err(unexpected(&other)),
    };
    let snapshot = Snapshot::take(db)?;
    ch.send(&Body::Note(Note::Manifest {
        bytes: snapshot.bytes,
        messages: snapshot.messages,
    }))
    .await?;
    observer.transfer(snapshot.bytes);
    let (chunks, sent_bytes, sha256) = stream(ch, &snapshot, options, observer).await?;
    ch.send(&Body::Note(Note::End {
        chunks,
        sha256: b64(&sha256),
    }))
    .await?;
    // The new device checks the whole file before it answers: allow a
    // second per 20 MB on top of a step's time.
    let checking = options.timeout + Duration::from_secs(snapshot.bytes / CHECK_BYTES_PER_SEC);
    loop {
        match expect_note(ch, checking).await? {
            Note::Done { messages } => {
                return Ok(Linked {
                    device_id,
                    device_name,
                    messages,
                    bytes: snapshot.bytes,
                    sent_bytes,
                    chunks,
                })
            }
            Note::Progress { .. } => {}
            other => return Err(unexpected(&other)),
        }
    }
}

/// Sends the snapshot in chunks, no further ahead of the router's acks
/// and the new device's progress notes than the windows allow. Returns
/// the chunks and compressed bytes sent, and the snapshot's hash.
async fn stream(
    ch: &mut Channel,
    snapshot: &Snapshot,
    options: &IssueOptions,
    observer: &dyn Observer,
) -> Result<(u64, u64, [u8; 32]), LinkError> {
    let capacity = ch.chunk_capacity();
    let mut reader = snapshot.reader()?;
    let (mut sent, mut confirmed, mut bytes) = (0u64, 0u64, 0u64);
    loop {
        let chunk = reader.next_chunk(capacity)?;
        if chunk.is_empty() {
            break;
        }
        // Take in what arrived without waiting, then wait only while a
        // window is full.
        while let Some(incoming) = ch.try_recv() {
            if let Some(chunks) = note_progress(ch, incoming).await? {
                confirmed = confirmed.max(chunks);
            }
        }
        while sent >= confirmed + AHEAD {
            confirmed = confirmed.max(progress(ch, options.timeout).await?);
        }
        let deadline = Instant::now() + options.timeout;
        if !ch.room(IN_FLIGHT, deadline).await? {
            return Err(LinkError::Stalled {
                secs: options.timeout.as_secs(),
            });
        }
        bytes += chunk.len() as u64;
        ch.send(&Body::Chunk(Zeroizing::new(chunk))).await?;
        sent += 1;
        observer.progress(reader.raw_bytes());
        maybe_pause(sent, observer).await;
    }
    Ok((sent, bytes, reader.sha256()))
}

/// The next progress note's count.
async fn progress(ch: &mut Channel, timeout: Duration) -> Result<u64, LinkError> {
    match expect_note(ch, timeout).await? {
        Note::Progress { chunks } => Ok(chunks),
        other => Err(unexpected(&other)),
    }
}

/// A progress note's count from a message taken while streaming (`None`
/// for what needs no answer).
async fn note_progress(ch: &mut Channel, incoming: Incoming) -> Result<Option<u64>, LinkError> {
    match session_note(ch, incoming).await? {
        Some(Note::Progress { chunks }) => Ok(Some(chunks)),
        Some(other) => Err(unexpected(&other)),
        None => Ok(None),
    }
}

/// The next session note from the new device; its `abort` as an error.
async fn expect_note(ch: &mut Channel, timeout: Duration) -> Result<Note, LinkError> {
    loop {
        let Some(incoming) = ch.recv(Instant::now() + timeout).await? else {
            return Err(LinkError::Stalled {
                secs: timeout.as_secs(),
            });
        };
        if let Some(note) = session_note(ch, incoming).await? {
            return Ok(note);
        }
    }
}

/// A session note; `None` for a box note (a second try with the code,
/// which is taken: acknowledged and ignored).
async fn session_note(ch: &mut Channel, incoming: Incoming) -> Result<Option<Note>, LinkError> {
    match incoming {
        Incoming::Session(Body::Note(Note::Abort { reason })) => Err(LinkError::Aborted(reason)),
        Incoming::Session(Body::Note(note)) => Ok(Some(note)),
        Incoming::Session(Body::Chunk(_)) => {
            Err(LinkError::Protocol("a chunk from the new device".into()))
        }
        Incoming::Boxed(_, id) => {
            ch.ack(id).await?;
            Ok(None)
        }
    }
}

fn unexpected(note: &Note) -> LinkError {
    LinkError::Protocol(format!("an unexpected '{}' note", note.kind()))
}
