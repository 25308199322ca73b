use super::*;
use base64::Engine as _;

fn alice() -> Identity {
    Identity::from_secret_bytes(&[0x01; 32])
}

fn bob() -> Identity {
    Identity::from_secret_bytes(&[0x02; 32])
}

const ID: &str = "0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b";
const TS: &str = "2026-11-25T20:00:00.000Z";

fn vector_frame() -> MessageFrame {
    let nonce: [u8; 24] = std::array::from_fn(|i| i as u8);
    seal_with_nonce(
        &alice(),
        &bob().public_key(),
        Uuid::parse_str(ID).unwrap(),
        TS,
        &Content::text("hello, bob"),
        &nonce,
    )
    .unwrap()
}

// The test vector published in docs/PROTOCOL.md. An independent check with
// Python's `cryptography` (X25519 secret = SHA-512(seed)[..32], HKDF-SHA256)
// gave the same X25519 key and message key.
const ALICE: &str = "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=";
const BOB: &str = "gTl3Dqh9F19Wo1Rmw0x+zMuNipG07jeiXfYPW4/Js5Q=";
const ALICE_X25519: &str = "GxtY3VDqFLYNoXt5DNAnVNlwybq4ZOuzwPMBb+UdP1c=";
const BOB_X25519: &str = "YDRufJEaX2uhVBKRdMr+dbKUrDu9VUljL0jOxiZvhBA=";
const KEY_HEX: &str = "d79b8b7fd70b55cabfae0e687ae770a9a29752d2431a4059bde7b061eaff1abc";
const CIPHERTEXT: &str = "tXv6xozs4V0Iu1lV0jfP0UCuPJ1crtxXvQ3jzopCU4AvsfxKdXv/JkNFeSdh2w/1FglK";
const SIG: &str =
    "9z76k9XHHRhz/bgORe/KxDtlssAjw4bnntLUYepAiz9DGUXEEZUPRTcm1kRIHx2IvbTCavFnSiPkuAh/2MIwBg==";
const AUTH_SIG: &str =
    "i0UaKy1Snm6nBpTRd515Itn8Ch3EgpBLIIn83/a34NhekDNiHVC5Q66Ifnqpx1X2ZNEgW50Fi4yyi8rYhneRBA==";
const AUTH_BYTES_HEX: &str = "00000010636861742d7032702f76322f617574680000000400000002000000208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c00000020aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa0000001011111111111111111111111111111111000000066c6170746f700000001677733a2f2f3132372e302e302e313a383038302f7773";

#[test]
fn test_vector_keys_and_map() {
    assert_eq!(alice().public_key().to_base64(), ALICE);
    assert_eq!(bob().public_key().to_base64(), BOB);
    let ax = STANDARD.encode(crypto::x25519_public(&alice().public_key()));
    let bx = STANDARD.encode(crypto::x25519_public(&bob().public_key()));
    assert_eq!((ax.as_str(), bx.as_str()), (ALICE_X25519, BOB_X25519));
    let f = vector_frame();
    let key = crypto::message_key(&alice(), &bob().public_key(), &f.from, &f.to).unwrap();
    assert_eq!(hex(key.as_bytes()), KEY_HEX);
}

#[test]
fn test_vector_ciphertext_and_signature() {
    let f = vector_frame();
    assert_eq!(STANDARD.encode(&f.payload.ciphertext), CIPHERTEXT);
    assert_eq!(STANDARD.encode(f.sig), SIG);
    assert_eq!(open(&bob(), &f).unwrap(), Content::text("hello, bob"));
}

/// The device and router of the auth test vector.
fn vector_who() -> AuthFor<'static> {
    static DEVICE: Uuid = Uuid::from_bytes([0x11; 16]);
    AuthFor {
        device: &DEVICE,
        name: "laptop",
        router: "ws://127.0.0.1:8080/ws",
    }
}

#[test]
fn test_vector_auth() {
    let nonce = [0xAA; 32];
    let auth = sign_challenge(&alice(), 2, &nonce, vector_who());
    assert_eq!(STANDARD.encode(auth.sig), AUTH_SIG);
    assert_eq!(
        hex(&auth_signed_bytes(
            2,
            &alice().public_key(),
            &nonce,
            vector_who()
        )),
        AUTH_BYTES_HEX
    );
    assert!(verify_auth(&alice().public_key(), &nonce, &auth));
    assert!(!verify_auth(&bob().public_key(), &nonce, &auth));
    assert!(!verify_auth(&alice().public_key(), &[0xAB; 32], &auth));
    let other_version = Auth {
        version: 3,
        ..auth.clone()
    };
    assert!(!verify_auth(&alice().public_key(), &nonce, &other_version));
    // Each field is under the signature: another router, device or name
    // makes it invalid.
    let relayed = Auth {
        router: "ws://evil.example:80/ws".to_owned(),
        ..auth.clone()
    };
    assert!(!verify_auth(&alice().public_key(), &nonce, &relayed));
    let other_device = Auth {
        device: Uuid::from_bytes([0x22; 16]),
        ..auth.clone()
    };
    assert!(!verify_auth(&alice().public_key(), &nonce, &other_device));
    let renamed = Auth {
        name: "desk".to_owned(),
        ..auth
    };
    assert!(!verify_auth(&alice().public_key(), &nonce, &renamed));
}

#[test]
fn frames_round_trip_through_text() {
    let frames = vec![
        Frame::Challenge(Challenge {
            versions: vec![1],
            nonce: [7; 32],
        }),
        Frame::Auth(sign_challenge(&alice(), 2, &[7; 32], vector_who())),
        Frame::Ready(Ready {
            version: 1,
            key: alice().public_key(),
            max_frame_bytes: Some(MAX_FRAME_BYTES),
        }),
        Frame::Message(vector_frame()),
        Frame::Ack(Ack {
            id: Uuid::now_v7(),
            at: Some(TS.to_owned()),
        }),
        Frame::Ack(Ack {
            id: Uuid::now_v7(),
            at: None,
        }),
        Frame::Error(ErrorFrame {
            id: None,
            code: ErrorCode::RateLimited,
            message: "slow down".to_owned(),
        }),
    ];
    for frame in frames {
        let text = to_text(&frame);
        assert_eq!(parse(&text).unwrap(), frame, "{text}");
    }
}

#[test]
fn error_codes_serialize_as_documented() {
    for code in ErrorCode::ALL {
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(json, format!("\"{}\"", code.as_str()));
    }
    let future: ErrorCode = serde_json::from_str("\"from-the-future\"").unwrap();
    assert_eq!(future, ErrorCode::Unknown);
}

#[test]
fn unknown_types_are_told_from_bad_frames() {
    assert_eq!(
        parse(r#"{"type":"presence","x":1}"#),
        Err(ProtocolError::UnknownType("presence".to_owned()))
    );
    assert!(matches!(
        parse("{not json"),
        Err(ProtocolError::BadFrame(_))
    ));
    assert!(matches!(
        parse(r#"{"no":"type"}"#),
        Err(ProtocolError::BadFrame(_))
    ));
    assert!(matches!(
        parse(r#"{"type":"ack","id":"not-a-uuid"}"#),
        Err(ProtocolError::BadFrame(_))
    ));
    assert_eq!(
        parse(r#"{"type":"presence"}"#).unwrap_err().code(),
        ErrorCode::UnknownType
    );
}

#[test]
fn size_limit_is_enforced_before_parsing() {
    let big = format!(r#"{{"type":"ack","id":"{}"}}"#, "x".repeat(100));
    assert!(matches!(
        parse_with_limit(&big, 50),
        Err(ProtocolError::TooLarge { limit: 50, .. })
    ));
    assert_eq!(
        parse_with_limit(&big, 50).unwrap_err().code(),
        ErrorCode::TooLarge
    );
}

#[test]
fn message_fields_are_validated() {
    let good = to_text(&Frame::Message(vector_frame()));
    let bad_ts = good.replace(TS, "yesterday");
    assert_eq!(parse(&bad_ts), Err(ProtocolError::BadTimestamp));
    let bad_key = good.replace(BOB, "AAAA");
    assert!(matches!(parse(&bad_key), Err(ProtocolError::BadFrame(_))));
    let short_nonce = good.replace("AAECAwQFBgcICQoLDA0ODxAREhMUFRYX", "AAEC");
    assert!(matches!(
        parse(&short_nonce),
        Err(ProtocolError::BadFrame(_))
    ));
}

#[test]
fn receipts_seal_and_open() {
    let ids = vec![Uuid::now_v7(), Uuid::now_v7()];
    for content in [
        Content::Delivered { ids: ids.clone() },
        Content::Read { ids },
    ] {
        let f = seal(&bob(), &alice().public_key(), Uuid::now_v7(), TS, &content).unwrap();
        assert_eq!(open(&alice(), &f).unwrap(), content);
    }
}

#[test]
fn fresh_nonces_per_seal() {
    let content = Content::text("x");
    let a = seal(&alice(), &bob().public_key(), Uuid::now_v7(), TS, &content).unwrap();
    let b = seal(&alice(), &bob().public_key(), Uuid::now_v7(), TS, &content).unwrap();
    assert_ne!(a.payload.nonce, b.payload.nonce);
}

#[test]
fn open_refuses_tampering_and_misaddressing() {
    let f = vector_frame();
    assert_eq!(open(&alice(), &f), Err(ProtocolError::NotForMe));
    let mut later = f.clone();
    later.ts = "2026-11-25T20:00:01.000Z".to_owned();
    assert_eq!(open(&bob(), &later), Err(ProtocolError::BadSignature));
    let mut flipped = f.clone();
    flipped.payload.ciphertext[0] ^= 1;
    assert_eq!(open(&bob(), &flipped), Err(ProtocolError::BadSignature));
    // A third party re-signing alice's ciphertext as its own cannot make bob
    // decrypt it: the key and the associated data name the real sender.
    let mallory = Identity::from_secret_bytes(&[0x03; 32]);
    let mut forged = f.clone();
    forged.from = mallory.public_key();
    let signed = message_signed_bytes(
        &forged.id,
        &forged.from,
        &forged.to,
        &forged.ts,
        &forged.payload,
    );
    forged.sig = mallory.signing_key().sign(&signed).to_bytes();
    assert_eq!(
        open(&bob(), &forged),
        Err(ProtocolError::Crypto(CryptoError::Decrypt))
    );
}

#[test]
fn binary_input_is_checked_as_utf8() {
    assert!(matches!(
        from_slice(&[0xff, 0xfe], 100),
        Err(ProtocolError::BadFrame(_))
    ));
    assert!(matches!(
        from_slice(&[b'{'; 200], 100),
        Err(ProtocolError::TooLarge { .. })
    ));
}

#[test]
fn router_parse_agrees_with_the_full_parse() {
    let m = vector_frame();
    let text = to_text(&Frame::Message(m.clone()));
    assert_eq!(
        parse_inbound(&text, MAX_FRAME_BYTES),
        Ok(Inbound::Message(Envelope {
            id: m.id,
            from: *m.from.as_bytes(),
            to: *m.to.as_bytes(),
        }))
    );
    let ack = Ack { id: m.id, at: None };
    assert_eq!(
        parse_inbound(&to_text(&Frame::Ack(ack.clone())), MAX_FRAME_BYTES),
        Ok(Inbound::Ack(ack))
    );
    let auth = sign_challenge(&alice(), 2, &[1; 32], vector_who());
    assert_eq!(
        parse_inbound(&to_text(&Frame::Auth(auth.clone())), MAX_FRAME_BYTES),
        Ok(Inbound::Auth(auth))
    );
    let ready = to_text(&Frame::Ready(Ready {
        version: 1,
        key: alice().public_key(),
        max_frame_bytes: None,
    }));
    assert!(matches!(
        parse_inbound(&ready, MAX_FRAME_BYTES),
        Err(ProtocolError::BadFrame(_))
    ));
    assert_eq!(
        parse_inbound(r#"{"type":"presence"}"#, MAX_FRAME_BYTES),
        Err(ProtocolError::UnknownType("presence".to_owned()))
    );
    assert_eq!(
        parse_inbound(&text.replace(TS, "soon"), MAX_FRAME_BYTES),
        Err(ProtocolError::BadTimestamp)
    );
    assert!(matches!(
        parse_inbound(&text.replace(BOB, "AAAA"), MAX_FRAME_BYTES),
        Err(ProtocolError::BadFrame(_))
    ));
    assert!(matches!(
        parse_inbound(&text, 10),
        Err(ProtocolError::TooLarge { .. })
    ));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = from_slice(&bytes, MAX_FRAME_BYTES);
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = parse_inbound(text, MAX_FRAME_BYTES);
            }
        }

        #[test]
        fn parser_never_panics_on_frame_like_text(
            kind in "(message|ack|auth|error|[a-z]{0,8})",
            body in "[ -~]{0,200}",
        ) {
            let text = format!(r#"{{"type":"{kind}",{body}}}"#);
            let _ = parse(&text);
            let _ = parse_inbound(&text, MAX_FRAME_BYTES);
        }

        #[test]
        fn mutated_messages_never_panic(pos in 0usize..600, byte in any::<u8>()) {
            let mut bytes = to_text(&Frame::Message(vector_frame())).into_bytes();
            let i = pos % bytes.len();
            bytes[i] = byte;
            if let Ok(Frame::Message(m)) = from_slice(&bytes, MAX_FRAME_BYTES) {
                let _ = open(&bob(), &m);
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn ready_announces_the_frame_limit_and_v1_peers_still_parse_it() {
    let key = alice().public_key();
    let old = format!(
        r#"{{"type":"ready","version":1,"key":"{}"}}"#,
        key.to_base64()
    );
    let Ok(Frame::Ready(ready)) = parse(&old) else {
        panic!("a ready without max_frame_bytes must parse");
    };
    assert_eq!(ready.max_frame_bytes, None);
    assert_eq!(to_text(&Frame::Ready(ready)), old, "None is not written");
    let new = to_text(&Frame::Ready(Ready {
        version: 1,
        key,
        max_frame_bytes: Some(4096),
    }));
    assert!(new.ends_with(r#","max_frame_bytes":4096}"#), "{new}");
}

#[test]
fn a_long_multibyte_type_is_cut_on_a_char_boundary() {
    // Issue 8: `{"type":"a` + 32 x 'é' + `"}` panicked the session.
    let text = format!(r#"{{"type":"a{}"}}"#, "é".repeat(32));
    let Err(ProtocolError::UnknownType(kind)) = parse(&text) else {
        panic!("not unknown-type: {:?}", parse(&text))
    };
    assert_eq!(
        kind,
        format!("a{}", "é".repeat(31)),
        "63 bytes, whole chars"
    );
    assert!(matches!(
        parse_inbound(&text, MAX_FRAME_BYTES),
        Err(ProtocolError::UnknownType(_))
    ));
    assert_eq!(truncate_on_char("héllo", 2), "h");
    assert_eq!(truncate_on_char("héllo", 3), "hé");
    assert_eq!(truncate_on_char("é", 0), "");
    assert_eq!(truncate_on_char("short", 64), "short");
}

#[test]
fn only_canonical_ids_are_accepted() {
    let id = Uuid::now_v7();
    let lower = format!(r#"{{"type":"ack","id":"{id}"}}"#);
    assert!(parse(&lower).is_ok());
    assert!(parse_inbound(&lower, MAX_FRAME_BYTES).is_ok());
    for other in [
        id.to_string().to_uppercase(),
        id.simple().to_string(),
        id.urn().to_string(),
        format!("{{{id}}}"),
    ] {
        let text = format!(r#"{{"type":"ack","id":"{other}"}}"#);
        let err = parse_inbound(&text, MAX_FRAME_BYTES).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadFrame, "{other}");
        assert!(err.to_string().contains("lower-case hyphenated"), "{err}");
        assert_eq!(frame_id(&text), None, "a non-canonical id is not read");
    }
    let message = to_text(&Frame::Message(vector_frame()));
    let upper = message.replace(ID, &ID.to_uppercase());
    let err = parse_inbound(&upper, MAX_FRAME_BYTES).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadFrame);
    // A client still reads one an older router queued, and its ack (and
    // anything it sends) uses the canonical form.
    let Ok(Frame::Message(m)) = parse(&upper) else {
        panic!("a client must read a queued frame with an upper-case id")
    };
    assert!(to_text(&Frame::Ack(Ack { id: m.id, at: None })).contains(ID));
}

#[test]
fn frame_id_reads_ids_of_refused_frames_cheaply() {
    let id = Uuid::now_v7();
    assert_eq!(
        frame_id(&format!(r#"{{"type":"ack", "id" : "{id}"}}"#)),
        Some(id)
    );
    let oversize = format!(
        r#"{{"type":"message","id":"{id}","x":"{}"}}"#,
        "y".repeat(200_000)
    );
    assert_eq!(frame_id(&oversize), Some(id));
    for junk in [
        "",
        r#""id""#,
        r#""id":"#,
        r#"{"id":"é"}"#,
        r#"{"id":"0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2"}"#,
        r#"{"id":12}"#,
    ] {
        assert_eq!(frame_id(junk), None, "{junk}");
    }
    let tail = format!(r#"{{"id":"{}"#, &id.to_string()[..35]);
    assert_eq!(frame_id(&tail), None);
}

#[test]
fn a_ciphertext_shorter_than_the_tag_is_a_bad_frame() {
    let mut frame = vector_frame();
    frame.payload.ciphertext = vec![1; TAG_LEN - 1];
    let text = to_text(&Frame::Message(frame.clone()));
    let err = parse(&text).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadFrame);
    assert!(err.to_string().contains("16-byte tag"), "{err}");
    let err = parse_inbound(&text, MAX_FRAME_BYTES).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadFrame);
    frame.payload.ciphertext = vec![1; TAG_LEN];
    assert!(parse_inbound(&to_text(&Frame::Message(frame)), MAX_FRAME_BYTES).is_ok());
}

#[test]
fn router_names_are_canonical() {
    let same = [
        "ws://127.0.0.1:8080/ws",
        "WS://127.0.0.1:8080/ws?pub=abc",
        "ws://127.0.0.1:8080",
        "ws://127.0.0.1:8080/",
    ];
    for url in same {
        assert_eq!(router_name(url).unwrap(), "ws://127.0.0.1:8080/ws", "{url}");
    }
    assert_eq!(
        router_name("wss://Chat.Example.org/ws").unwrap(),
        "wss://chat.example.org:443/ws"
    );
    assert_eq!(
        router_name("ws://example.org/chat/ws").unwrap(),
        "ws://example.org:80/chat/ws"
    );
    assert_eq!(router_name("ws://[::1]:9/ws").unwrap(), "ws://[::1]:9/ws");
    for bad in [
        "http://example.org/ws",
        "example.org",
        "ws://user:pw@example.org/ws",
        "",
        "ws://",
    ] {
        assert!(router_name(bad).is_err(), "{bad}");
    }
}

// The sent-copy vector of docs/PROTOCOL.md §7: alice's copy of the
// vector message, sealed to herself for her other devices. The message key
// was reproduced with Python's `cryptography` (X25519 of alice with
// herself, HKDF-SHA256).
const COPY_ID: &str = "0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2c";
const COPY_TS: &str = "2026-11-25T20:00:00.300Z";
const COPY_SENT: &str = "2026-11-25T20:00:00.250Z";
const COPY_PLAINTEXT: &str = r#"{"kind":"sent","id":"0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b","peer":"gTl3Dqh9F19Wo1Rmw0x+zMuNipG07jeiXfYPW4/Js5Q=","body":"hello, bob","created":"2026-11-25T20:00:00.000Z","sent":"2026-11-25T20:00:00.250Z"}"#;
const COPY_KEY_HEX: &str = "649102f2b5e263382a9a464e2135459a2bac8ce95fa458d713abf1cdaabebb7f";
const COPY_CIPHERTEXT: &str = "wGlspykewJnfT0rktLVAMatPzrGTpE1VtXelce5nJwVZ3dLP73jlSZKmVaXZVSxBqPEhJ4+MN15YtQc/vhj1ehdc/6lpp58VAXj6Bq9xSkAN1XJE6yAf0rW4KSix5V1uOrdlqBgE6jf0i7eUAtMIjhS3fjNufrHjrP/b/KDO+KZOd2W5+5BnthVDDyrLYQ1AJXGgik01Xl2SwJhX8A5whAPDkWBw5l7icb0F14qs2frD/6orwqHEg1SX8/FLC6WKAW0Xf0RVkLl+IcAF0VP+Q2zxxxIWKmqNBDlKEA==";
const COPY_SIG: &str =
    "PrJI38vKzjdhYiHK4BFPE5VRvNnf5HDcCSFLa3DQboyLZJDj3ZUoanU/9gmEXKyGvO4BPfpj8h95kVIi0o3NDA==";

fn copy_content() -> Content {
    Content::Sent {
        id: Uuid::parse_str(ID).unwrap(),
        peer: bob().public_key(),
        body: "hello, bob".to_owned(),
        created: TS.to_owned(),
        sent: Some(COPY_SENT.to_owned()),
    }
}

fn copy_frame() -> MessageFrame {
    let nonce: [u8; 24] = std::array::from_fn(|i| (i + 24) as u8);
    seal_with_nonce(
        &alice(),
        &alice().public_key(),
        Uuid::parse_str(COPY_ID).unwrap(),
        COPY_TS,
        &copy_content(),
        &nonce,
    )
    .unwrap()
}

#[test]
fn test_vector_sent_copy() {
    let f = copy_frame();
    assert_eq!(f.from, f.to);
    assert_eq!(
        serde_json::to_string(&copy_content()).unwrap(),
        COPY_PLAINTEXT
    );
    let key = crypto::message_key(&alice(), &alice().public_key(), &f.from, &f.to).unwrap();
    assert_eq!(hex(key.as_bytes()), COPY_KEY_HEX);
    assert_eq!(STANDARD.encode(&f.payload.ciphertext), COPY_CIPHERTEXT);
    assert_eq!(STANDARD.encode(f.sig), COPY_SIG);
    assert_eq!(open(&alice(), &f).unwrap(), copy_content());
    // Only alice can open it: bob is not its recipient.
    assert_eq!(open(&bob(), &f), Err(ProtocolError::NotForMe));
    // The document carries the vector as this code makes it.
    let doc = include_str!("../../docs/PROTOCOL.md");
    for published in [
        COPY_PLAINTEXT,
        COPY_KEY_HEX,
        COPY_CIPHERTEXT,
        COPY_SIG,
        &to_text(&Frame::Message(f)),
    ] {
        assert!(doc.contains(published), "not in PROTOCOL.md: {published}");
    }
}

#[test]
fn self_sync_kinds_round_trip_with_their_documented_names() {
    let bob = bob().public_key();
    let id = Uuid::parse_str(ID).unwrap();
    let cases = [
        (copy_content(), "sent"),
        (
            Content::ReadSync {
                peer: bob,
                ids: vec![id],
            },
            "read-sync",
        ),
        (
            Content::Contact {
                op: ContactOp::Rename,
                key: bob,
                name: Some("robert".into()),
                router: None,
            },
            "contact",
        ),
    ];
    for (content, kind) in cases {
        assert!(content.is_self_sync());
        let json: serde_json::Value = serde_json::to_value(&content).unwrap();
        assert_eq!(json["kind"], kind);
        let back: Content = serde_json::from_value(json).unwrap();
        assert_eq!(back, content);
    }
    let remove: Content = serde_json::from_str(&format!(
        r#"{{"kind":"contact","op":"remove","key":"{}"}}"#,
        bob.to_base64()
    ))
    .unwrap();
    assert!(matches!(
        remove,
        Content::Contact {
            op: ContactOp::Remove,
            name: None,
            ..
        }
    ));
    // A copy whose router time is not known yet leaves `sent` out.
    let unsent = Content::Sent {
        id,
        peer: bob,
        body: "x".into(),
        created: TS.into(),
        sent: None,
    };
    assert!(!serde_json::to_string(&unsent)
        .unwrap()
        .contains("\"sent\":"));
    assert!(!Content::text("x").is_self_sync());
}

#[test]
fn kinds_and_contact_ops_from_a_newer_version_are_unknown_not_errors() {
    let later: Content =
        serde_json::from_str(r#"{"kind":"reaction","id":"x","emoji":"+1"}"#).unwrap();
    assert_eq!(later, Content::Unknown);
    let op: Content = serde_json::from_str(&format!(
        r#"{{"kind":"contact","op":"block","key":"{}"}}"#,
        bob().public_key().to_base64()
    ))
    .unwrap();
    assert!(matches!(
        op,
        Content::Contact {
            op: ContactOp::Unknown,
            ..
        }
    ));
    // A known kind with a missing field is still malformed.
    assert!(serde_json::from_str::<Content>(r#"{"kind":"read-sync"}"#).is_err());
    assert!(serde_json::from_str::<Content>(r#"{"body":"no kind"}"#).is_err());
}

#[test]
fn home_router_content_is_as_protocol_md_shows_it() {
    // §3 "Plaintext" and §10: a text announcing its author's home, and the
    // `home` notice, exactly as the document prints them.
    let text = r#"{"kind":"text","body":"hello, bob","home":"wss://chat.example.org/ws"}"#;
    let notice = r#"{"kind":"home","router":"wss://other.example.net/ws"}"#;
    let doc = include_str!("../../docs/PROTOCOL.md");
    for published in [text, notice] {
        assert!(doc.contains(published), "not in PROTOCOL.md: {published}");
    }
    let announced = Content::Text {
        body: "hello, bob".into(),
        home: Some("wss://chat.example.org/ws".into()),
    };
    assert_eq!(serde_json::from_str::<Content>(text).unwrap(), announced);
    assert_eq!(serde_json::to_string(&announced).unwrap(), text);
    let moved = Content::Home {
        router: "wss://other.example.net/ws".into(),
    };
    assert_eq!(serde_json::from_str::<Content>(notice).unwrap(), moved);
    assert_eq!(serde_json::to_string(&moved).unwrap(), notice);
    // Without `home` a text is what clients before home routers send.
    assert_eq!(
        serde_json::to_string(&Content::text("hello, bob")).unwrap(),
        r#"{"kind":"text","body":"hello, bob"}"#
    );
    // The announced router is the canonical spelling clients send.
    assert_eq!(
        crate::client::ServerUrl::parse("WSS://Chat.Example.org")
            .unwrap()
            .as_str(),
        "wss://chat.example.org/ws"
    );
}
