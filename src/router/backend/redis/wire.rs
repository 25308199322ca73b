//! What the scripts answer and publish, read back in Rust: stored frame
//! records, and the messages routers send each other over pub/sub:
//! frames in a compact form of their records (see [`decode`]), the rarer
//! events as JSON (written by the scripts with Redis' `cjson`).

use std::sync::Arc;

use redis::Value;
use serde::Deserialize;
use uuid::Uuid;

use super::keys::unhex32;
use crate::identity::PublicKey;
use crate::router::backend::{ClusterEvent, Queued};

/// A frame as stored in the `f` hash: `<at>\n<sender 32 bytes><id 16
/// bytes><text>` (see the module documentation). Built here, so the
/// enqueue script stores (and publishes) it as it comes.
pub(super) fn record(at: &str, sender: &[u8; 32], id: &Uuid, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(at.len() + 49 + text.len());
    out.extend_from_slice(at.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&dedup_key(sender, id));
    out.extend_from_slice(text.as_bytes());
    out
}

/// The dedup index's field of a frame: sender and id bytes.
pub(super) fn dedup_key(sender: &[u8; 32], id: &Uuid) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..32].copy_from_slice(sender);
    key[32..].copy_from_slice(id.as_bytes());
    key
}

/// Reads a stored record back as the frame `seq` of `recipient`.
pub(super) fn parse_record(seq: i64, recipient: [u8; 32], rec: &[u8]) -> Option<Queued> {
    let nl = rec.iter().position(|b| *b == b'\n')?;
    let at = std::str::from_utf8(&rec[..nl]).ok()?;
    let rest = rec.get(nl + 1..)?;
    if rest.len() < 48 {
        return None;
    }
    let id = Uuid::from_slice(&rest[32..48]).ok()?;
    let text = std::str::from_utf8(&rest[48..]).ok()?;
    Some(Queued {
        seq,
        id,
        recipient,
        at: at.to_owned(),
        text: Arc::from(text),
    })
}

/// An integer reply (Lua numbers come back as integers, seqs as text).
pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A string reply.
pub(super) fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A binary string reply.
pub(super) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// An array reply (an empty Lua table may come back as nil).
pub(super) fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Nil => Some(&[]),
        _ => None,
    }
}

/// A device id (written by Rust as hyphenated text).
pub(super) fn uuid(v: &Value) -> Option<Uuid> {
    text(v)?.parse().ok()
}

/// One pub/sub message.
#[derive(Debug, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Message {
    /// Frames committed for devices whose sessions the receiver holds.
    Frames { k: String, f: Vec<WireFrame> },
    /// A newer claim of a device the receiver held.
    Replaced { k: String, d: Uuid, c: u64 },
    /// A device the receiver held was removed.
    Removed { k: String, d: Uuid },
}

#[derive(Debug, Deserialize)]
struct WireFrame {
    s: i64,
    i: Uuid,
    a: String,
    x: String,
    #[serde(default, deserialize_with = "devices")]
    d: Vec<Uuid>,
}

/// A list of devices; `cjson` writes an empty list as `{}`.
fn devices<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Uuid>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Some(Vec<Uuid>),
        Empty {},
    }
    Ok(match List::deserialize(d)? {
        List::Some(list) => list,
        List::Empty {} => Vec::new(),
    })
}

/// The events of one pub/sub message, or why it is not one.
pub(super) fn decode(payload: &[u8]) -> Result<Vec<ClusterEvent>, String> {
    if let Some(rest) = payload.strip_prefix(b"F") {
        return decode_frames(rest);
    }
    let message: Message = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let key = |k: &str| unhex32(k).ok_or_else(|| format!("not a key: {k:?}"));
    let public = |k: &str| {
        let bytes = key(k)?;
        PublicKey::from_bytes(&bytes).map_err(|e| format!("not a key: {e}"))
    };
    Ok(match message {
        Message::Frames { k, f } => {
            let recipient = key(&k)?;
            f.into_iter()
                .map(|w| ClusterEvent::Frame {
                    frame: Queued {
                        seq: w.s,
                        id: w.i,
                        recipient,
                        at: w.a,
                        text: Arc::from(w.x),
                    },
                    devices: w.d,
                })
                .collect()
        }
        Message::Replaced { k, d, c } => vec![ClusterEvent::Replaced {
            key: public(&k)?,
            device: d,
            claim: c,
        }],
        Message::Removed { k, d } => vec![ClusterEvent::DeviceRemoved {
            key: public(&k)?,
            device: d,
        }],
    })
}

/// Frames as enqueue.lua publishes them (after the leading `F`): the
/// recipient's hex and a newline, then per frame `<seq> <device>,<device>
/// <record length>\n<record>`. No JSON: encoding it cost Redis more than
/// the rest of the script.
fn decode_frames(mut rest: &[u8]) -> Result<Vec<ClusterEvent>, String> {
    let nl = |b: &[u8]| b.iter().position(|c| *c == b'\n');
    let end = nl(rest).ok_or("no recipient")?;
    let hex = std::str::from_utf8(&rest[..end]).map_err(|_| "not a key")?;
    let recipient = unhex32(hex).ok_or_else(|| format!("not a key: {hex:?}"))?;
    rest = &rest[end + 1..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let end = nl(rest).ok_or("no frame header")?;
        let header = std::str::from_utf8(&rest[..end]).map_err(|_| "bad frame header")?;
        let mut fields = header.split(' ');
        let (Some(seq), Some(devices), Some(len), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("bad frame header {header:?}"));
        };
        let seq: i64 = seq.parse().map_err(|_| format!("bad seq {seq:?}"))?;
        let len: usize = len.parse().map_err(|_| format!("bad length {len:?}"))?;
        let devices = devices
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.parse::<Uuid>().map_err(|_| format!("bad device {d:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        rest = &rest[end + 1..];
        let rec = rest.get(..len).ok_or("a record cut short")?;
        rest = &rest[len..];
        let frame = parse_record(seq, recipient, rec).ok_or("an unreadable record")?;
        out.push(ClusterEvent::Frame { frame, devices });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_any_text() {
        let id = Uuid::new_v4();
        for text in [
            "",
            "plain",
            "a\nb\"c\\d",
            "émoji 🎉 \u{0}",
            &"x".repeat(100_000),
        ] {
            let rec = record("2026-11-26T08:00:00.000Z", &[7; 32], &id, text);
            let q = parse_record(5, [1; 32], &rec).unwrap();
            assert_eq!((q.seq, q.id, &*q.text), (5, id, text));
            assert_eq!(q.at, "2026-11-26T08:00:00.000Z");
        }
        assert!(parse_record(1, [0; 32], b"no newline").is_none());
        assert!(parse_record(1, [0; 32], b"at\nshort").is_none());
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &b"not json"[..],
            br#"{"t":"frames"}"#,
            br#"{"t":"nope","k":"00"}"#,
            br#"{"t":"removed","k":"zz","d":"00000000-0000-0000-0000-000000000000"}"#,
            br#"{"t":"replaced","k":"ab","d":"x","c":1}"#,
            b"\xff\xfe",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn compact_frames_decode_and_malformed_ones_are_errors() {
        let (id, dev) = (Uuid::new_v4(), Uuid::new_v4());
        let k = "ab".repeat(32);
        let mut msg = format!("F{k}\n").into_bytes();
        for (seq, text) in [(7, "one\ntwo"), (8, "")] {
            let rec = record("2026-11-26T08:00:00.000Z", &[7; 32], &id, text);
            msg.extend_from_slice(format!("{seq} {dev},{dev} {}\n", rec.len()).as_bytes());
            msg.extend_from_slice(&rec);
        }
        let events = decode(&msg).unwrap();
        assert_eq!(events.len(), 2);
        match &events[0] {
            ClusterEvent::Frame { frame, devices } => {
                assert_eq!((frame.seq, frame.id, &*frame.text), (7, id, "one\ntwo"));
                assert_eq!(frame.recipient, [0xab; 32]);
                assert_eq!(devices, &vec![dev, dev]);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"F"[..],
            b"Fzz\n",
            &msg[..msg.len() - 1],
            format!("F{k}\n1 x 3\nabc").as_bytes(),
            format!("F{k}\nnope\n").as_bytes(),
            format!("F{k}\n1  99999999999999999999\n").as_bytes(),
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_device_list_from_cjson_decodes() {
        let k = "ab".repeat(32);
        let msg = format!(
            r#"{{"t":"frames","k":"{k}","f":[{{"s":3,"i":"{}","a":"t","x":"hi","d":{{}}}}]}}"#,
            Uuid::nil()
        );
        let events = decode(msg.as_bytes()).unwrap();
        assert!(matches!(&events[..], [ClusterEvent::Frame { devices, .. }] if devices.is_empty()));
    }
}
