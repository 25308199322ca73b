//! The new device's side: `chat-p2p link --join CODE`.

use std::path::Path;
use std::time::Duration;

use spake2::{Ed25519Group, Identity as PakeId, Password, Spake2};
use tokio::time::Instant;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::channel::{Channel, Incoming};
use super::code::Code;
use super::snapshot::{self, Receiving};
use super::wire::{self, b64, unb64, Body, Closed, Note, SecretAsStored, Side};
use super::{maybe_pause, LinkError, Observer};
use crate::client::owner::SessionLock;
use crate::client::{connection, ServerUrl};
use crate::identity::{Identity, PublicKey};
use crate::keywrap::{self, KdfParams, WrappedKey};
use crate::store::device::Device;
use crate::store::Store;

/// Chunks between two progress notes.
const PROGRESS_EVERY: u64 = 32;

/// How the new device joins.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The router the existing device uses.
    pub server: ServerUrl,
    /// How long to wait for the router, and for the existing device at
    /// each step.
    pub timeout: Duration,
    /// The profile's name, for messages.
    pub profile: String,
    /// This device's name.
    pub device_name: String,
}

/// A finished join.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The identity now in the profile.
    pub public_key: PublicKey,
    /// This device's new id (canonical UUID text).
    pub device_id: String,
    /// The existing device's name, as it gave it (untrusted text).
    pub from_device: String,
    /// Messages received.
    pub messages: u64,
    /// Size of the profile.
    pub bytes: u64,
    /// Whether an earlier copy of the same identity was replaced.
    pub replaced: bool,
}

/// Receives the identity and the profile into `db` from the device that
/// showed `code`.
pub async fn join(
    db: &Path,
    code: &Code,
    options: &JoinOptions,
    observer: &dyn Observer,
) -> Result<Joined, LinkError> {
    // What an earlier, killed join left is of no use.
    snapshot::remove_partial(db);
    let existing = existing_identity(db)?;
    // A profile about to be replaced must not be in use meanwhile.
    let _lock = match existing {
        Some(_) => Some(lock_profile(db, &options.profile)?),
        None => None,
    };
    let mut ch = Channel::connect(
        &options.server,
        code.nameplate(),
        Side::New,
        options.timeout,
    )
    .await?;
    let (shared, hello, reply) = pake(&mut ch, code, options.timeout).await?;
    let ids = Exchanged { hello, reply };
    let result = receive(&mut ch, db, &shared, ids, existing, options, observer).await;
    if let Err(e) = &result {
        if !matches!(e, LinkError::Aborted(_) | LinkError::Client(_)) {
            let reason = e.to_string();
            let _ = ch.send(&Body::Note(Note::Abort { reason })).await;
            let _ = ch.flush(Instant::now() + options.timeout).await;
        }
    }
    ch.close().await;
    result
}

/// Takes the profile's session lock for the time of the join, so no
/// `chat` or `sync` of it runs while its file is replaced.
fn lock_profile(db: &Path, profile: &str) -> Result<SessionLock, LinkError> {
    let mut lock =
        SessionLock::open(db, "chat-p2p link --join").map_err(|e| LinkError::Client(e.into()))?;
    match lock.try_take().map_err(|e| LinkError::Client(e.into()))? {
        None => Ok(lock),
        Some(holder) => Err(LinkError::InUse {
            profile: profile.to_owned(),
            holder: holder.to_string(),
        }),
    }
}

/// The identity already in the profile at `db`, if any.
fn existing_identity(db: &Path) -> Result<Option<PublicKey>, LinkError> {
    if !db.exists() {
        return Ok(None);
    }
    Ok(Store::open(db)?.public_key()?)
}

/// Reads the existing device's first message, answers it: the shared key,
/// and the hello's id, acknowledged only once the existing device has
/// confirmed (a join killed before that can try the same code again).
async fn pake(
    ch: &mut Channel,
    code: &Code,
    timeout: Duration,
) -> Result<(Zeroizing<Vec<u8>>, Uuid, Uuid), LinkError> {
    let deadline = Instant::now() + timeout;
    let (theirs, hello_id) = loop {
        let Some(incoming) = ch.recv(deadline).await? else {
            return Err(LinkError::NoAnswer {
                secs: timeout.as_secs(),
            });
        };
        match incoming {
            // Left queued for whoever tries next: not acknowledged.
            Incoming::Boxed(Note::Closed { reason, .. }, _) => return Err(closed_before(reason)),
            Incoming::Boxed(Note::Hello { pake, expires_at }, id) => {
                if chrono::DateTime::parse_from_rfc3339(&expires_at)
                    .is_ok_and(|at| at < chrono::Utc::now())
                {
                    // Wait for the existing device's own verdict, queued
                    // after it, if it is there.
                    return Err(closed_after_hello(ch, expires_at).await);
                }
                break (pake, id);
            }
            _ => {}
        }
    };
    // A "closed" note queued behind the hello (the code was used, or
    // someone typed it wrong): no use answering.
    while let Some(incoming) = ch.try_recv() {
        if let Incoming::Boxed(Note::Closed { reason, .. }, _) = incoming {
            return Err(closed_before(reason));
        }
    }
    let (pake, mine) = Spake2::<Ed25519Group>::start_b_with_rng(
        &Password::new(code.password()),
        &PakeId::new(wire::PAKE_OLD),
        &PakeId::new(wire::PAKE_NEW),
        rand::rngs::OsRng,
    );
    let shared = Zeroizing::new(
        pake.finish(&unb64(&theirs)?)
            .map_err(|_| LinkError::Protocol("a malformed SPAKE2 message".into()))?,
    );
    // Keys first: the answer to this reply is sealed under them.
    ch.start_session(&shared, Side::New);
    let reply = ch
        .send_box(Note::Reply {
            pake: b64(&mine),
            confirm: b64(&wire::confirmation(&shared, Side::New)),
        })
        .await?;
    Ok((shared, hello_id, reply))
}

/// The error for an expired hello: the existing device's `closed` note if
/// it follows right away, else "expired".
async fn closed_after_hello(ch: &mut Channel, expires_at: String) -> LinkError {
    let soon = Instant::now() + Duration::from_millis(500);
    while let Ok(Some(incoming)) = ch.recv(soon).await {
        if let Incoming::Boxed(Note::Closed { reason, .. }, _) = incoming {
            if reason != Closed::Expired {
                return closed_before(reason);
            }
        }
    }
    LinkError::Expired { at: expires_at }
}

/// The error for a code found closed before this device answered it.
fn closed_before(reason: Closed) -> LinkError {
    match reason {
        Closed::WrongCode => LinkError::SpentByWrongTry,
        other => closed(other),
    }
}

fn closed(reason: Closed) -> LinkError {
    match reason {
        Closed::Used => LinkError::Used,
        Closed::Expired => LinkError::Expired {
            at: "the time it was given".into(),
        },
        Closed::WrongCode => LinkError::WrongCode,
        Closed::Failed => LinkError::Spent,
    }
}

/// The frames of the exchange this device must recognise later.
struct Exchanged {
    /// The existing device's hello, acknowledged once it confirms.
    hello: Uuid,
    /// Our reply, which a `wrong-code` note names when it refuses it.
    reply: Uuid,
}

/// Everything after the PAKE.
async fn receive(
    ch: &mut Channel,
    db: &Path,
    shared: &[u8],
    ids: Exchanged,
    existing: Option<PublicKey>,
    options: &JoinOptions,
    observer: &dyn Observer,
) -> Result<Joined, LinkError> {
    let (public_key, secret, from_device) = match next_note(ch, options.timeout, ids.reply).await? {
        Note::Welcome {
            confirm,
            public_key,
            secret,
            device_name,
        } => {
            let expected = wire::confirmation(shared, Side::Old);
            if !wire::same_confirmation(&expected, &unb64(&confirm)?) {
                return Err(LinkError::WrongCode);
            }
            ch.ack(ids.hello).await?;
            let key =
                PublicKey::parse(&public_key).map_err(|e| LinkError::Protocol(e.to_string()))?;
            (key, secret, device_name)
        }
        other => return Err(unexpected(&other)),
    };
    if let Some(key) = existing.filter(|k| *k != public_key) {
        return Err(LinkError::OtherIdentity {
            profile: options.profile.clone(),
            key: key.to_base64(),
        });
    }
    let device = Device {
        id: Uuid::new_v4(),
        name: options.device_name.clone(),
        created_at: String::new(),
    };
    let timeout = options.timeout;
    register_device(
        &options.server,
        &public_key,
        &secret,
        &device,
        timeout,
        observer,
    )
    .await?;
    let device_id = device.id.to_string();
    ch.send(&Body::Note(Note::Ready {
        device_id: device_id.clone(),
        device_name: device.name.clone(),
    }))
    .await?;
    let bytes = match next_note(ch, options.timeout, ids.reply).await? {
        Note::Manifest { bytes, .. } => bytes,
        other => return Err(unexpected(&other)),
    };
    observer.transfer(bytes);
    let mut rx = Receiving::start(db)?;
    let sha256 = receive_chunks(ch, &mut rx, ids.reply, options.timeout, observer).await?;
    rx.finish(bytes, &unb64(&sha256)?)?;
    let replaced = db.exists();
    let messages = rx.install(&public_key, device.id, &device.name)?;
    ch.send(&Body::Note(Note::Done { messages })).await?;
    let _ = ch.flush(Instant::now() + options.timeout).await?;
    Ok(Joined {
        public_key,
        device_id,
        from_device,
        messages,
        bytes,
        replaced,
    })
}

/// Writes the chunks into `rx` until `end`: the hash it announces.
async fn receive_chunks(
    ch: &mut Channel,
    rx: &mut Receiving,
    reply: Uuid,
    timeout: Duration,
    observer: &dyn Observer,
) -> Result<String, LinkError> {
    let mut chunks = 0u64;
    loop {
        match next_body(ch, timeout, reply).await? {
            Body::Chunk(data) => {
                rx.write(&data)?;
                chunks += 1;
                observer.progress(rx.raw_bytes());
                if chunks % PROGRESS_EVERY == 0 {
                    ch.send(&Body::Note(Note::Progress { chunks })).await?;
                }
                maybe_pause(chunks, observer).await;
            }
            Body::Note(Note::End {
                chunks: sent,
                sha256,
            }) if sent == chunks => return Ok(sha256),
            Body::Note(Note::End { chunks: sent, .. }) => {
                return Err(LinkError::BadCopy(format!(
                    "{chunks} chunks arrived of {sent}"
                )))
            }
            Body::Note(other) => return Err(unexpected(&other)),
        }
    }
}

/// Makes the router know this device for the identity (a session as
/// `device` of the key, closed at once), so frames for the key are kept
/// for it from now on. A sealed key is opened with the passphrase, asked
/// once through `observer`.
async fn register_device(
    server: &ServerUrl,
    key: &PublicKey,
    secret: &SecretAsStored,
    device: &Device,
    timeout: Duration,
    observer: &dyn Observer,
) -> Result<(), LinkError> {
    let identity = match secret {
        SecretAsStored::Plain { seed } => identity_from_seed(key, &unb64(seed)?)?,
        SecretAsStored::Wrapped {
            memory_kib,
            iterations,
            parallelism,
            salt,
            sealed,
        } => {
            let wrapped = WrappedKey {
                params: KdfParams {
                    memory_kib: *memory_kib,
                    iterations: *iterations,
                    parallelism: *parallelism,
                },
                salt: unb64(salt)?,
                sealed: unb64(sealed)?,
            };
            let passphrase = observer.passphrase().map_err(LinkError::Passphrase)?;
            let seed = keywrap::unwrap(&wrapped, key, passphrase.as_bytes())
                .map_err(|e| LinkError::Passphrase(e.to_string()))?;
            identity_from_seed(key, seed.as_ref())?
        }
    };
    connection::connect(server, &identity, device, timeout)
        .await?
        .close()
        .await;
    Ok(())
}

/// The key pair of `seed`, which must be `key`'s.
fn identity_from_seed(key: &PublicKey, seed: &[u8]) -> Result<Identity, LinkError> {
    let seed: &[u8; 32] = seed
        .try_into()
        .map_err(|_| LinkError::Protocol("a secret key of the wrong length".into()))?;
    let identity = Identity::from_secret_bytes(seed);
    if identity.public_key() != *key {
        return Err(LinkError::Protocol(
            "the secret key does not match the public key".into(),
        ));
    }
    Ok(identity)
}

/// The next session message; `reply` is this device's `reply` frame, to
/// tell a refusal of it from an earlier wrong try.
async fn next_body(ch: &mut Channel, timeout: Duration, reply: Uuid) -> Result<Body, LinkError> {
    loop {
        match ch.recv(Instant::now() + timeout).await? {
            None => {
                return Err(LinkError::Stalled {
                    secs: timeout.as_secs(),
                })
            }
            Some(Incoming::Session(Body::Note(Note::Abort { reason }))) => {
                return Err(LinkError::Aborted(reason))
            }
            Some(Incoming::Session(body)) => return Ok(body),
            Some(Incoming::Boxed(Note::Closed { reason, refused }, _)) => {
                return Err(match reason {
                    Closed::WrongCode if refused == Some(reply) => LinkError::WrongCode,
                    other => closed_before(other),
                })
            }
            Some(Incoming::Boxed(_, id)) => ch.ack(id).await?,
        }
    }
}

async fn next_note(ch: &mut Channel, timeout: Duration, reply: Uuid) -> Result<Note, LinkError> {
    match next_body(ch, timeout, reply).await? {
        Body::Note(note) => Ok(note),
        Body::Chunk(_) => Err(LinkError::Protocol("a chunk out of turn".into())),
    }
}

fn unexpected(note: &Note) -> LinkError {
    LinkError::Protocol(format!("an unexpected '{}' note", note.kind()))
}
