//! Handshake tests: both sides run the same code, frames go through the real codec.

use bytes::BytesMut;

use super::*;
use crate::repl::wire::{resource_id, Decoder, Encoder};

fn local(name: &str) -> LocalInfo {
    LocalInfo {
        resource: "r0".into(),
        node_name: name.into(),
        size_bytes: 1 << 30,
        usable_bytes: 1 << 30,
        gen: GenIds {
            current: 0x1111,
            bitmap: 0,
            history: [0, 0],
        },
        dirty_bits: 0,
        role: if name == "a" {
            Role::Primary
        } else {
            Role::Secondary
        },
        disk: DiskState::UpToDate,
        features: features::ALL,
        group_sizes: Vec::new(),
    }
}

/// One side plus its codec: frames are really encoded and decoded.
struct Side {
    hs: Handshake,
    enc: Encoder,
    dec: Decoder,
    inbox: BytesMut,
    result: Option<Result<Established, HandshakeError>>,
}

impl Side {
    fn new(info: LocalInfo, secret: &[u8]) -> Side {
        let id = resource_id(&info.resource);
        Side {
            hs: Handshake::new(info, secret).unwrap(),
            enc: Encoder::new(id),
            dec: Decoder::new(id),
            inbox: BytesMut::new(),
            result: None,
        }
    }
}

fn send(enc: &Encoder, frames: Vec<Frame>, to: &mut BytesMut) {
    for f in frames {
        enc.encode(&f, to).unwrap();
    }
}

/// Run both sides until both have a result or nothing moves.
fn run(a: &mut Side, b: &mut Side) {
    send(&a.enc, a.hs.start(), &mut b.inbox);
    send(&b.enc, b.hs.start(), &mut a.inbox);
    for _ in 0..20 {
        let moved = step(a, b) | step(b, a);
        if !moved {
            break;
        }
    }
}

/// Let `me` handle everything in its inbox; true if a frame was handled.
fn step(me: &mut Side, other: &mut Side) -> bool {
    let mut moved = false;
    if me.result.is_some() {
        me.inbox.clear();
        return false;
    }
    while let Ok(Some(f)) = me.dec.decode(&mut me.inbox) {
        moved = true;
        let out = me.hs.on_frame(f);
        send(&me.enc, out.send, &mut other.inbox);
        if let Some(r) = out.result {
            me.result = Some(r);
            break;
        }
    }
    moved
}

#[test]
fn right_secret_connects_both_ways() {
    let mut a = Side::new(local("a"), b"s3cret");
    let mut b = Side::new(local("b"), b"s3cret");
    run(&mut a, &mut b);
    let ea = a.result.unwrap().unwrap();
    let eb = b.result.unwrap().unwrap();
    assert_eq!(ea.peer.node_name, "b");
    assert_eq!(ea.peer.role, Role::Secondary);
    assert_eq!(eb.peer.node_name, "a");
    assert_eq!(eb.peer.role, Role::Primary);
    assert_eq!(ea.version, WIRE_VERSION);
    assert_eq!(ea.features, features::ALL);
    assert_eq!(eb.peer.gen, local("a").gen);
}

#[test]
fn features_are_the_intersection() {
    let mut la = local("a");
    la.features = 0;
    let mut a = Side::new(la, b"k");
    let mut b = Side::new(local("b"), b"k");
    run(&mut a, &mut b);
    assert_eq!(a.result.unwrap().unwrap().features, 0);
    assert_eq!(b.result.unwrap().unwrap().features, 0);
}

/// A peer from before online verify offers only ZSTD: neither side may send verify frames.
#[test]
fn a_peer_without_verify_negotiates_it_away() {
    let mut la = local("a");
    la.features = features::ZSTD;
    let mut a = Side::new(la, b"k");
    let mut b = Side::new(local("b"), b"k");
    run(&mut a, &mut b);
    assert_eq!(a.result.unwrap().unwrap().features, features::ZSTD);
    assert_eq!(b.result.unwrap().unwrap().features, features::ZSTD);
}

#[test]
fn wrong_secret_is_refused_on_both_sides() {
    let mut a = Side::new(local("a"), b"right");
    let mut b = Side::new(local("b"), b"wrong");
    run(&mut a, &mut b);
    assert_eq!(
        a.result.unwrap(),
        Err(HandshakeError::WrongSecret { peer: "b".into() })
    );
    assert_eq!(
        b.result.unwrap(),
        Err(HandshakeError::WrongSecret { peer: "a".into() })
    );
}

#[test]
fn other_resource_is_refused_with_both_names() {
    let mut lb = local("b");
    lb.resource = "r1".into();
    let mut a = Side::new(local("a"), b"k");
    let mut b = Side::new(lb, b"k");
    run(&mut a, &mut b);
    assert_eq!(
        a.result.unwrap(),
        Err(HandshakeError::WrongResource {
            ours: "r0".into(),
            theirs: "r1".into()
        })
    );
    assert_eq!(
        b.result.unwrap(),
        Err(HandshakeError::WrongResource {
            ours: "r1".into(),
            theirs: "r0".into()
        })
    );
}

/// DRBD's rule: a peer whose disk cannot hold this node's volume is refused (by this node;
/// the peer learns why from the Refuse).
#[test]
fn a_peer_smaller_than_the_volume_is_refused() {
    let mut lb = local("b");
    lb.size_bytes = 1 << 29;
    lb.usable_bytes = 1 << 29;
    let mut a = Side::new(local("a"), b"k");
    let mut b = Side::new(lb, b"k");
    run(&mut a, &mut b);
    assert_eq!(
        a.result.unwrap(),
        Err(HandshakeError::SizeMismatch {
            ours: 1 << 30,
            theirs: 1 << 29
        })
    );
    assert!(
        matches!(b.result.unwrap(), Err(HandshakeError::Refused { reason }) if reason.contains("volume size mismatch"))
    );
}

/// Online grow (`drl resize`): one node grown (a larger capacity) still connects at the old
/// size; once both have grown, both agree on the new size, the smaller of the two.
#[test]
fn capacities_agree_on_the_smaller() {
    let mut lb = local("b");
    lb.size_bytes = 2 << 30;
    let mut a = Side::new(local("a"), b"k");
    let mut b = Side::new(lb.clone(), b"k");
    run(&mut a, &mut b);
    assert_eq!(a.result.unwrap().unwrap().agreed_bytes, 1 << 30);
    assert_eq!(b.result.unwrap().unwrap().agreed_bytes, 1 << 30);
    let mut la = local("a");
    la.size_bytes = 3 << 30;
    let mut a = Side::new(la, b"k");
    let mut b = Side::new(lb, b"k");
    run(&mut a, &mut b);
    let (ea, eb) = (a.result.unwrap().unwrap(), b.result.unwrap().unwrap());
    assert_eq!((ea.agreed_bytes, eb.agreed_bytes), (2 << 30, 2 << 30));
    assert_eq!(ea.peer.size_bytes, 2 << 30);
}

/// Consistency groups (issue 15): the peers must hold the same volume set. A group against a
/// one-volume peer, or two groups whose volume 1 differs, are refused on both sides, naming
/// both sets; equal groups connect.
#[test]
fn a_volume_set_mismatch_is_refused_on_both_sides_naming_both_sets() {
    let group = |name: &str, sizes: &[u64]| {
        let mut l = local(name);
        l.group_sizes = sizes.to_vec();
        l
    };
    let mut a = Side::new(group("a", &[256 << 20]), b"k");
    let mut b = Side::new(local("b"), b"k");
    run(&mut a, &mut b);
    let e = a.result.unwrap().unwrap_err();
    assert_eq!(
        e,
        HandshakeError::VolumeMismatch {
            ours: vec![1 << 30, 256 << 20],
            theirs: vec![1 << 30]
        }
    );
    assert_eq!(
        e.to_string(),
        "volume set mismatch: ours 2 volumes ([1073741824, 268435456] bytes), peer's 1 volume \
         ([1073741824] bytes): every node of a group must hold the same volumes (a volume added \
         at run time: run `drl adjust` on the node that lacks it)"
    );
    assert!(matches!(
        b.result.unwrap(),
        Err(HandshakeError::VolumeMismatch { .. })
    ));

    let mut a = Side::new(group("a", &[256 << 20]), b"k");
    let mut b = Side::new(group("b", &[128 << 20]), b"k");
    run(&mut a, &mut b);
    assert!(matches!(
        a.result.unwrap(),
        Err(HandshakeError::VolumeMismatch { .. })
    ));

    let mut a = Side::new(group("a", &[256 << 20, 4096]), b"k");
    let mut b = Side::new(group("b", &[256 << 20, 4096]), b"k");
    run(&mut a, &mut b);
    assert!(a.result.unwrap().is_ok() && b.result.unwrap().is_ok());
}

/// A one-volume Hello is byte-identical to one from before groups (old peers keep working);
/// a group's sizes follow the names and round-trip.
#[test]
fn a_hello_carries_a_groups_sizes_after_the_names() {
    let mut h = Handshake::new(local("a"), b"k").unwrap();
    let Frame::Hello(one) = h.start().remove(0) else {
        panic!("Hello first")
    };
    let bytes = one.encode_payload().unwrap();
    assert_eq!(bytes.len(), super::super::frame::HELLO_FIXED_BYTES + 2 + 1);
    let mut g = (*one).clone();
    g.group_sizes = vec![4096, 8192];
    let gb = g.encode_payload().unwrap();
    assert_eq!(gb.len(), bytes.len() + 1 + 16);
    assert_eq!(Hello::decode_payload(&gb).unwrap(), g);
    // A count that disagrees with the length, or a count of zero, is refused.
    let mut bad = gb.clone();
    bad[bytes.len()] = 3;
    assert!(Hello::decode_payload(&bad).is_err());
    let mut zero = bytes.clone();
    zero.push(0);
    assert!(Hello::decode_payload(&zero).is_err());
}

#[test]
fn incompatible_version_is_refused_and_the_peer_told() {
    let mut a = Handshake::new(local("a"), b"k").unwrap();
    let mut b = Handshake::new(local("b"), b"k").unwrap();
    let Frame::Hello(mut hello) = b.start().remove(0) else {
        panic!("Hello first")
    };
    hello.version_min = 7;
    hello.version_max = 9;
    let _ = a.start();
    let out = a.on_frame(Frame::Hello(hello));
    assert!(matches!(
        out.result,
        Some(Err(HandshakeError::IncompatibleVersion {
            theirs_min: 7,
            theirs_max: 9,
            ..
        }))
    ));
    assert!(matches!(&out.send[..], [Frame::Refuse { reason }] if reason.contains("incompatible")));
}

#[test]
fn replayed_auth_response_from_an_earlier_session_is_refused() {
    // Session 1: a genuine exchange; the attacker records b's Hello and AuthResponse.
    let mut a1 = Handshake::new(local("a"), b"k").unwrap();
    let mut b1 = Handshake::new(local("b"), b"k").unwrap();
    let b_hello = b1.start().remove(0);
    let a_hello = a1.start().remove(0);
    let b_resp = b1.on_frame(a_hello).send.remove(0);
    assert!(matches!(b_resp, Frame::AuthResponse { .. }));
    // Session 2: the attacker, without the secret, replays them to a new a.
    let mut a2 = Handshake::new(local("a"), b"k").unwrap();
    let _ = a2.start();
    let out = a2.on_frame(b_hello);
    assert!(out.result.is_none());
    let out = a2.on_frame(b_resp);
    assert_eq!(
        out.result,
        Some(Err(HandshakeError::WrongSecret { peer: "b".into() }))
    );
    assert!(
        matches!(&out.send[..], [Frame::Refuse { reason }] if reason == "authentication failed")
    );
}

#[test]
fn reflected_hello_with_our_own_name_is_refused() {
    let mut a = Handshake::new(local("a"), b"k").unwrap();
    let own = a.start().remove(0);
    let out = a.on_frame(own);
    assert_eq!(
        out.result,
        Some(Err(HandshakeError::SameNodeName("a".into())))
    );
}

#[test]
fn garbage_frames_are_refused() {
    // A frame that has no place in a handshake.
    let mut a = Handshake::new(local("a"), b"k").unwrap();
    let _ = a.start();
    let out = a.on_frame(Frame::BarrierAck { epoch: 1 });
    assert_eq!(
        out.result,
        Some(Err(HandshakeError::Unexpected {
            frame: "BarrierAck",
            state: "waiting for Hello"
        }))
    );
    assert_eq!(out.send.len(), 1);
    // AuthOk before any authentication.
    let mut a = Handshake::new(local("a"), b"k").unwrap();
    assert!(matches!(
        a.on_frame(Frame::AuthOk).result,
        Some(Err(HandshakeError::Unexpected { .. }))
    ));
    // Anything after the end.
    assert!(matches!(
        a.on_frame(Frame::AuthOk).result,
        Some(Err(HandshakeError::Unexpected { .. }))
    ));
    // Garbage bytes never reach the handshake: the decoder refuses them.
    let mut dec = Decoder::new(resource_id("r0"));
    let mut junk =
        BytesMut::from(&b"GET / HTTP/1.1\r\nHost: example\r\n\r\n........................"[..]);
    assert!(dec.decode(&mut junk).is_err());
}

#[test]
fn peer_refusal_and_disconnect_end_the_handshake() {
    let mut a = Handshake::new(local("a"), b"k").unwrap();
    let out = a.on_frame(Frame::Refuse {
        reason: "nope".into(),
    });
    assert_eq!(
        out.result,
        Some(Err(HandshakeError::Refused {
            reason: "nope".into()
        }))
    );
    assert!(out.send.is_empty());
    let mut a = Handshake::new(local("a"), b"k").unwrap();
    let out = a.on_frame(Frame::Disconnect {
        reason: "shutdown".into(),
    });
    assert!(matches!(
        out.result,
        Some(Err(HandshakeError::Disconnected { .. }))
    ));
}

#[test]
fn our_hello_always_goes_out_first() {
    // A driver that feeds the peer's Hello before calling start() still sends Hello first.
    let mut a = Handshake::new(local("a"), b"k").unwrap();
    let mut b = Handshake::new(local("b"), b"k").unwrap();
    let out = a.on_frame(b.start().remove(0));
    assert!(matches!(
        &out.send[..],
        [Frame::Hello(_), Frame::AuthResponse { .. }]
    ));
    assert!(a.start().is_empty(), "Hello is sent once");
}

#[test]
fn established_peers_reach_mirrored_sync_decisions() {
    use crate::repl::state::{decide, NodeState, SplitBrainPolicy, SyncDecision};
    let mut la = local("a");
    la.gen = GenIds {
        current: 0x2222,
        bitmap: 0x1111,
        history: [0, 0],
    };
    la.dirty_bits = 12;
    let mut a = Side::new(la.clone(), b"k");
    let mut b = Side::new(local("b"), b"k");
    run(&mut a, &mut b);
    let (ea, eb) = (a.result.unwrap().unwrap(), b.result.unwrap().unwrap());
    let policy = SplitBrainPolicy::default();
    let da = decide(&NodeState::from(&la), &NodeState::from(&ea.peer), &policy);
    let db = decide(
        &NodeState::from(&local("b")),
        &NodeState::from(&eb.peer),
        &policy,
    );
    assert_eq!(da.decision, SyncDecision::BitmapSyncSource);
    assert_eq!(db.decision, SyncDecision::BitmapSyncTarget);
}

#[test]
fn empty_secret_is_refused_up_front() {
    assert_eq!(
        Handshake::new(local("a"), b"").unwrap_err(),
        HandshakeError::NoSecret
    );
}

#[test]
fn tampered_hello_breaks_authentication() {
    // A man in the middle rewrites a's generation ids on their way to b.
    let mut a = Handshake::new(local("a"), b"k").unwrap();
    let mut b = Handshake::new(local("b"), b"k").unwrap();
    let Frame::Hello(mut ha) = a.start().remove(0) else {
        panic!()
    };
    let hb = b.start().remove(0);
    ha.gen.current = 0xBAD;
    let b_resp = b.on_frame(Frame::Hello(ha)).send;
    assert!(matches!(&b_resp[..], [Frame::AuthResponse { .. }]));
    let a_resp = a.on_frame(hb).send.remove(0);
    let out = b.on_frame(a_resp);
    assert_eq!(
        out.result,
        Some(Err(HandshakeError::WrongSecret { peer: "a".into() }))
    );
}

#[test]
fn debug_never_prints_the_secret() {
    let a = Handshake::new(local("a"), b"topsecret").unwrap();
    assert!(!format!("{a:?}").contains("topsecret"));
}
