//! The connection handshake as a pure, symmetric state machine.
//!
//! Both sides run the same code; there is no client or server. Each side:
//!
//! 1. sends `Hello` (versions, features, resource name and size, node name, generation ids,
//!    dirty-bit count, role, disk state, and a fresh random 32-byte nonce: its challenge);
//! 2. on the peer's `Hello`: checks version overlap, resource name, size (the peer's capacity
//!    must hold this node's volume, see below) and that the peer is not itself; on failure sends `Refuse(reason)` and stops; otherwise answers the peer's
//!    challenge with `AuthResponse { mac }`;
//! 3. on the peer's `AuthResponse`: verifies the mac in constant time; on failure sends
//!    `Refuse` and stops with [`HandshakeError::WrongSecret`]; otherwise sends `AuthOk`;
//! 4. on the peer's `AuthOk`: the connection is [`Established`].
//!
//! The mac a node (the prover) sends is HMAC-SHA256 keyed with the shared secret over
//! `"drl auth v1\0" || prover name || verifier name || verifier nonce || prover nonce ||
//! SHA-256(prover Hello) || SHA-256(verifier Hello)` (names length-prefixed). So each side
//! proves it knows the secret; a response recorded in an earlier session fails (the verifier's
//! nonce is new each time); a response reflected back to its sender fails (prover and
//! verifier names are in a fixed order, and a peer with our own name is refused); and an
//! attacker who rewrites a Hello (generation ids, role) in flight breaks both macs.
//!
//! Sizes (DRBD's rule): a Hello announces the node's *capacity* (its configured `size`); the
//! volume's size both sides use is the smaller of the two capacities
//! ([`Established::agreed_bytes`]), and both compute it alike. A peer whose capacity is below
//! this node's current volume size is refused: it could not store what this node holds. A
//! larger peer is accepted, so growing one node after the other never breaks the link.
//!
//! Frames after the handshake (data, barriers) are protected by crc32 only: the shared secret
//! keeps a wrong or hostile node out, it does not encrypt the link (use IPsec/WireGuard).

use drbd_compat::{DiskState, Role};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::repl::frame::{Frame, Hello};
use crate::repl::gen::GenIds;
use crate::repl::state::NodeState;
use crate::repl::wire::{features, WIRE_VERSION};

type HmacSha256 = Hmac<Sha256>;

/// What this node tells its peer about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInfo {
    pub resource: String,
    pub node_name: String,
    /// This node's capacity, what its Hello announces: the configured `size`.
    pub size_bytes: u64,
    /// The volume's size now (the superblock's; never above `size_bytes`): not sent, the
    /// least a peer's capacity must be.
    pub usable_bytes: u64,
    pub gen: GenIds,
    pub dirty_bits: u64,
    pub role: Role,
    pub disk: DiskState,
    /// Features this node is willing to use (a subset of [`features::ALL`]).
    pub features: u64,
    /// A consistency group's volumes 1, 2, ..: their sizes (empty for one volume).
    pub group_sizes: Vec<u64>,
}

/// What the peer told us, after the handshake checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub node_name: String,
    /// The peer's capacity (its configured `size`).
    pub size_bytes: u64,
    pub gen: GenIds,
    pub dirty_bits: u64,
    pub role: Role,
    pub disk: DiskState,
}

/// A successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    pub peer: PeerInfo,
    /// The volume's size from now on: the smaller of the two capacities (both sides compute
    /// the same); above this node's current size when both nodes have grown (`drl resize`).
    pub agreed_bytes: u64,
    /// The wire version both sides speak from now on.
    pub version: u16,
    /// Features both sides support ([`features`] bits).
    pub features: u64,
}

/// Why a handshake failed. Messages name the values involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer {peer} failed authentication: wrong shared secret (or a replayed response)")]
    WrongSecret { peer: String },
    #[error("peer serves resource {theirs:?}, this node {ours:?}")]
    WrongResource { ours: String, theirs: String },
    #[error("volume size mismatch: this node's volume is {ours} bytes, the peer's disk only {theirs} bytes (raise the peer's `size`, then `drl resize` there)")]
    SizeMismatch { ours: u64, theirs: u64 },
    /// The peers hold different volume sets of a consistency group (sizes of volume 0, 1, ..).
    #[error("volume set mismatch: ours {} ({ours:?} bytes), peer's {} ({theirs:?} bytes): every node of a group must hold the same volumes (a volume added at run time: run `drl adjust` on the node that lacks it)", volumes(.ours.len()), volumes(.theirs.len()))]
    VolumeMismatch { ours: Vec<u64>, theirs: Vec<u64> },
    #[error("incompatible wire versions: ours {ours_min}..={ours_max}, peer's {theirs_min}..={theirs_max}")]
    IncompatibleVersion {
        ours_min: u16,
        ours_max: u16,
        theirs_min: u16,
        theirs_max: u16,
    },
    #[error("peer claims our own node name {0:?} (misconfiguration or a reflected connection)")]
    SameNodeName(String),
    #[error("peer refused the connection: {reason}")]
    Refused { reason: String },
    #[error("peer disconnected during the handshake: {reason}")]
    Disconnected { reason: String },
    #[error("unexpected {frame} frame while {state}")]
    Unexpected {
        frame: &'static str,
        state: &'static str,
    },
    #[error("no shared secret configured: refusing to connect unauthenticated")]
    NoSecret,
}

/// What one step of the handshake produced: frames to send now, and perhaps the end result.
#[derive(Debug, Default)]
pub struct Output {
    pub send: Vec<Frame>,
    pub result: Option<Result<Established, HandshakeError>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    AwaitHello,
    AwaitAuthResponse,
    AwaitAuthOk,
    Finished,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::AwaitHello => "waiting for Hello",
            Stage::AwaitAuthResponse => "waiting for AuthResponse",
            Stage::AwaitAuthOk => "waiting for AuthOk",
            Stage::Finished => "finished",
        }
    }
}

/// One side of a handshake.
pub struct Handshake {
    hello: Hello,
    /// [`LocalInfo::usable_bytes`].
    usable_bytes: u64,
    secret: Vec<u8>,
    stage: Stage,
    peer_hello: Option<Hello>,
    /// Our Hello went out (it must precede everything else we send).
    started: bool,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("node", &self.hello.node_name)
            .field("stage", &self.stage)
            .finish_non_exhaustive() // never the secret
    }
}

impl Handshake {
    /// A handshake with a fresh random nonce.
    pub fn new(local: LocalInfo, secret: &[u8]) -> Result<Self, HandshakeError> {
        Self::with_nonce(local, secret, rand::random())
    }

    /// A handshake with the given nonce (tests and deterministic simulation).
    pub fn with_nonce(
        local: LocalInfo,
        secret: &[u8],
        nonce: [u8; 32],
    ) -> Result<Self, HandshakeError> {
        if secret.is_empty() {
            return Err(HandshakeError::NoSecret);
        }
        let hello = Hello {
            version_min: WIRE_VERSION,
            version_max: WIRE_VERSION,
            features: local.features & features::ALL,
            resource: local.resource,
            size_bytes: local.size_bytes,
            node_name: local.node_name,
            gen: local.gen,
            dirty_bits: local.dirty_bits,
            role: local.role,
            disk: local.disk,
            nonce,
            group_sizes: local.group_sizes,
        };
        Ok(Handshake {
            hello,
            usable_bytes: local.usable_bytes.min(local.size_bytes),
            secret: secret.to_vec(),
            stage: Stage::AwaitHello,
            peer_hello: None,
            started: false,
        })
    }

    /// The frames to send first (our Hello); empty if already started.
    pub fn start(&mut self) -> Vec<Frame> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        vec![Frame::Hello(Box::new(self.hello.clone()))]
    }

    /// Feed one received frame. If [`Self::start`] was not called yet, our Hello comes first
    /// in the frames to send.
    pub fn on_frame(&mut self, frame: Frame) -> Output {
        let hello = self.start();
        let mut out = self.step(frame);
        // Nothing to send when the peer already ended it (Refuse/Disconnect).
        if !hello.is_empty() && (!out.send.is_empty() || out.result.is_none()) {
            out.send.splice(0..0, hello);
        }
        out
    }

    fn step(&mut self, frame: Frame) -> Output {
        if self.stage == Stage::Finished {
            return fail(HandshakeError::Unexpected {
                frame: frame.frame_type().name(),
                state: Stage::Finished.name(),
            });
        }
        match (self.stage, frame) {
            (_, Frame::Refuse { reason }) => self.stop(HandshakeError::Refused { reason }, false),
            (_, Frame::Disconnect { reason }) => {
                self.stop(HandshakeError::Disconnected { reason }, false)
            }
            (Stage::AwaitHello, Frame::Hello(peer)) => self.on_hello(*peer),
            (Stage::AwaitAuthResponse, Frame::AuthResponse { mac }) => self.on_auth_response(mac),
            (Stage::AwaitAuthOk, Frame::AuthOk) => self.on_auth_ok(),
            (stage, other) => self.stop(
                HandshakeError::Unexpected {
                    frame: other.frame_type().name(),
                    state: stage.name(),
                },
                true,
            ),
        }
    }

    fn stop(&mut self, err: HandshakeError, tell_peer: bool) -> Output {
        self.stage = Stage::Finished;
        let mut out = fail(err.clone());
        if tell_peer {
            let reason = match &err {
                // Say no more than necessary to a peer that failed authentication.
                HandshakeError::WrongSecret { .. } => "authentication failed".to_string(),
                e => e.to_string(),
            };
            out.send.push(Frame::Refuse {
                reason: truncate(reason),
            });
        }
        out
    }

    fn on_hello(&mut self, peer: Hello) -> Output {
        let ours = &self.hello;
        if peer.version_max < ours.version_min || peer.version_min > ours.version_max {
            let err = HandshakeError::IncompatibleVersion {
                ours_min: ours.version_min,
                ours_max: ours.version_max,
                theirs_min: peer.version_min,
                theirs_max: peer.version_max,
            };
            return self.stop(err, true);
        }
        if peer.resource != ours.resource {
            let err = HandshakeError::WrongResource {
                ours: ours.resource.clone(),
                theirs: peer.resource.clone(),
            };
            return self.stop(err, true);
        }
        if peer.group_sizes != ours.group_sizes {
            let all = |h: &Hello| {
                let mut v = vec![h.size_bytes];
                v.extend_from_slice(&h.group_sizes);
                v
            };
            let err = HandshakeError::VolumeMismatch {
                ours: all(ours),
                theirs: all(&peer),
            };
            return self.stop(err, true);
        }
        if peer.size_bytes < self.usable_bytes {
            let err = HandshakeError::SizeMismatch {
                ours: self.usable_bytes,
                theirs: peer.size_bytes,
            };
            return self.stop(err, true);
        }
        if peer.node_name == ours.node_name {
            return self.stop(HandshakeError::SameNodeName(peer.node_name.clone()), true);
        }
        let mac = auth_mac(&self.secret, &self.hello, &peer);
        self.peer_hello = Some(peer);
        self.stage = Stage::AwaitAuthResponse;
        Output {
            send: vec![Frame::AuthResponse { mac }],
            result: None,
        }
    }

    fn on_auth_response(&mut self, mac: [u8; 32]) -> Output {
        let Some(peer) = self.peer_hello.as_ref() else {
            return self.stop(
                HandshakeError::Unexpected {
                    frame: "AuthResponse",
                    state: "without Hello",
                },
                true,
            );
        };
        if !verify_mac(&self.secret, peer, &self.hello, &mac) {
            let err = HandshakeError::WrongSecret {
                peer: peer.node_name.clone(),
            };
            return self.stop(err, true);
        }
        self.stage = Stage::AwaitAuthOk;
        Output {
            send: vec![Frame::AuthOk],
            result: None,
        }
    }

    fn on_auth_ok(&mut self) -> Output {
        self.stage = Stage::Finished;
        let Some(p) = self.peer_hello.take() else {
            return fail(HandshakeError::Unexpected {
                frame: "AuthOk",
                state: "without Hello",
            });
        };
        let established = Established {
            version: p.version_max.min(self.hello.version_max),
            features: p.features & self.hello.features,
            agreed_bytes: p.size_bytes.min(self.hello.size_bytes),
            peer: PeerInfo {
                node_name: p.node_name,
                size_bytes: p.size_bytes,
                gen: p.gen,
                dirty_bits: p.dirty_bits,
                role: p.role,
                disk: p.disk,
            },
        };
        Output {
            send: Vec::new(),
            result: Some(Ok(established)),
        }
    }
}

impl From<&LocalInfo> for NodeState {
    fn from(l: &LocalInfo) -> Self {
        NodeState {
            role: l.role,
            disk: l.disk,
            gen: l.gen,
            dirty_bits: l.dirty_bits,
        }
    }
}

impl From<&PeerInfo> for NodeState {
    fn from(p: &PeerInfo) -> Self {
        NodeState {
            role: p.role,
            disk: p.disk,
            gen: p.gen,
            dirty_bits: p.dirty_bits,
        }
    }
}

fn fail(err: HandshakeError) -> Output {
    Output {
        send: Vec::new(),
        result: Some(Err(err)),
    }
}

fn truncate(mut s: String) -> String {
    let max = crate::limits::REPL_REASON_BYTES_MAX;
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn volumes(n: usize) -> String {
    format!("{n} volume{}", if n == 1 { "" } else { "s" })
}

fn hello_digest(h: &Hello) -> [u8; 32] {
    // Names were checked on decode and on construction, so encoding cannot fail; an empty
    // digest input on failure would only make the mac fail, never pass.
    let bytes = h.encode_payload().unwrap_or_default();
    Sha256::digest(&bytes).into()
}

fn mac_for(secret: &[u8], prover: &Hello, verifier: &Hello) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(b"drl auth v1\0");
    for name in [&prover.node_name, &verifier.node_name] {
        m.update(&[name.len() as u8]);
        m.update(name.as_bytes());
    }
    m.update(&verifier.nonce);
    m.update(&prover.nonce);
    m.update(&hello_digest(prover));
    m.update(&hello_digest(verifier));
    m
}

/// The mac `prover` sends to answer `verifier`'s challenge.
fn auth_mac(secret: &[u8], prover: &Hello, verifier: &Hello) -> [u8; 32] {
    mac_for(secret, prover, verifier)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of a mac received from `prover`.
fn verify_mac(secret: &[u8], prover: &Hello, verifier: &Hello, mac: &[u8; 32]) -> bool {
    mac_for(secret, prover, verifier).verify_slice(mac).is_ok()
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
