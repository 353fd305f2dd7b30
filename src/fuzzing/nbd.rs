//! NBD harnesses: option haggling, and request sequences against a real transmission loop.
//!
//! `handshake`: an arbitrary client (flags, then options built from arbitrary fields: known
//! and unknown codes, GO/INFO data that is well formed or not, lengths that lie, trailing
//! bytes) against [`negotiate`]. Checked: no panic; what the server sent is a greeting
//! followed by well-formed option replies (and the export reply when EXPORT_NAME ended it).
//!
//! `transmission`: a sequence of requests (READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, DISC, a
//! header with arbitrary fields, bytes that break the framing) written by a client into the
//! connection task the server runs ([`transmission`] over an in-memory pipe, a
//! [`MemDevice`] behind it, simple or structured replies). Checked: every reply is well
//! formed and answers a request that was sent and not answered yet; every request before
//! the first DISC or broken frame is answered; a READ returns what the acknowledged WRITEs,
//! TRIMs and WRITE_ZEROES before it left (a model of the device); the device ends equal to
//! the model.

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::Scripted;
use crate::frontend::nbd::command::ExportView;
use crate::frontend::nbd::conn::{transmission as serve, ConnCtx, End};
use crate::frontend::nbd::handshake::{negotiate, Admission, ExportInfo, HandshakeEnd};
use crate::frontend::nbd::proto::*;
use crate::frontend::nbd::stats::NbdStats;
use crate::frontend::nbd::PayloadBudget;
use crate::logrl::LogLimiter;
use crate::volume::mem::MemDevice;
use crate::volume::BlockDevice;

#[derive(Debug, Arbitrary)]
enum OptData {
    /// NBD_OPT_INFO / GO data: name length, name, count, info types.
    Info {
        name: Vec<u8>,
        infos: Vec<u16>,
    },
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct OptSpec {
    /// Low values pick the options the server knows, others are sent as they are.
    option: u32,
    data: OptData,
    /// Announce this length instead of the data's (a lie, or a huge option to skip).
    len: Option<u32>,
    /// Replace the IHAVEOPT magic.
    magic: Option<u64>,
}

#[derive(Debug, Arbitrary)]
struct Client {
    flags: u32,
    options: Vec<OptSpec>,
    trailing: Vec<u8>,
    refuse: bool,
    read_only: bool,
}

const KNOWN_OPTIONS: [u32; 7] = [
    OPT_EXPORT_NAME,
    OPT_ABORT,
    OPT_LIST,
    OPT_INFO,
    OPT_GO,
    OPT_STRUCTURED_REPLY,
    0,
];

fn client_bytes(c: &Client) -> Vec<u8> {
    let mut v = c.flags.to_be_bytes().to_vec();
    for o in &c.options {
        let option = if o.option < 64 {
            KNOWN_OPTIONS[o.option as usize % KNOWN_OPTIONS.len()]
        } else {
            o.option
        };
        let data = match &o.data {
            OptData::Info { name, infos } => {
                let mut d = (name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(name);
                d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
                for i in infos {
                    d.extend_from_slice(&(i % 8).to_be_bytes());
                }
                d
            }
            OptData::Raw(d) => d.clone(),
        };
        v.extend_from_slice(&o.magic.unwrap_or(IHAVEOPT).to_be_bytes());
        v.extend_from_slice(&option.to_be_bytes());
        v.extend_from_slice(&o.len.unwrap_or(data.len() as u32).to_be_bytes());
        v.extend_from_slice(&data);
    }
    v.extend_from_slice(&c.trailing);
    v
}

/// Option haggling against an arbitrary client (see the module doc).
pub fn handshake(data: &[u8]) {
    // A recorded client (flags, then IHAVEOPT...) is replayed as it is; anything else
    // describes one.
    let recorded = data.len() >= 12 && data[4..12] == IHAVEOPT.to_be_bytes();
    let client = if recorded {
        Client {
            flags: 0,
            options: Vec::new(),
            trailing: Vec::new(),
            refuse: false,
            read_only: false,
        }
    } else {
        let Ok(client) = Client::arbitrary_take_rest(Unstructured::new(data)) else {
            return;
        };
        client
    };
    let input = if recorded {
        data.to_vec()
    } else {
        client_bytes(&client)
    };
    let ex = ExportInfo {
        name: "vol".into(),
        description: "a fuzzed export".into(),
        size: 1 << 20,
        read_only: client.read_only,
        min_block: 512,
    };
    let admission = if client.refuse {
        Admission::Refuse("too many connections to this export")
    } else {
        Admission::Admit
    };
    let mut s = Scripted::new(&input);
    let result = super::block_on(negotiate(&mut s, &ex, admission));
    let out = s.written;
    assert_eq!(&out[..GREETING_BYTES], &greeting()[..], "greeting");
    let mut rest = &out[GREETING_BYTES..];
    while rest.len() >= 20 && rest[..8] == OPTION_REPLY_MAGIC.to_be_bytes() {
        let len = u32::from_be_bytes(rest[16..20].try_into().expect("4 bytes")) as usize;
        assert!(
            rest.len() >= 20 + len,
            "option reply shorter than its length"
        );
        rest = &rest[20 + len..];
    }
    match result {
        Ok(HandshakeEnd::Transmission { .. }) => assert!(
            rest.is_empty() || rest.len() == 10 || rest.len() == 10 + EXPORT_NAME_PADDING_BYTES,
            "{} bytes after the option replies",
            rest.len()
        ),
        _ => assert!(
            rest.is_empty(),
            "{} stray bytes from the server",
            rest.len()
        ),
    }
}

/// Device size for the transmission harness: small enough to compare on every input.
const DEVICE_BYTES: u64 = 64 * 1024;
/// WRITE payloads the harness sends at most (a header may announce more: see `Raw`).
const WRITE_BYTES_MAX: u32 = 3 * 4096;

#[derive(Debug, Arbitrary)]
enum Op {
    Read(u16, u16, bool),
    Write(u16, u16, u8, bool),
    Flush,
    Trim(u16, u16, bool),
    WriteZeroes(u16, u16, bool, bool),
    Disc,
    /// A header as the client likes it; a WRITE's payload follows (up to
    /// [`WRITE_BYTES_MAX`], the length is cut to that).
    Raw {
        flags: u16,
        cmd: u16,
        offset: u64,
        len: u32,
    },
    /// Bytes that are not a request header (the magic is broken).
    Garbage(Vec<u8>),
}

/// An offset and length near the device: mostly inside, sometimes across or past the end.
fn range(o: u16, l: u16) -> (u64, u32) {
    (
        u64::from(o) * 2 % (DEVICE_BYTES + 8192),
        u32::from(l) % (WRITE_BYTES_MAX + 1),
    )
}

/// What the client expects back for one request.
#[derive(Debug, Clone)]
struct Sent {
    cmd: u16,
    offset: u64,
    len: u32,
    /// Position in the request sequence (the model's clock).
    at: usize,
    payload: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
struct Session {
    structured: bool,
    read_only: bool,
    ops: Vec<Op>,
}

/// A request sequence against the real connection loop (see the module doc).
pub fn transmission(data: &[u8]) {
    // A recorded request stream (it starts with the request magic) is replayed with its
    // cookies renumbered; anything else describes one.
    let session = if data.starts_with(&REQUEST_MAGIC.to_be_bytes()) {
        recorded(data)
    } else {
        let Ok(session) = Session::arbitrary_take_rest(Unstructured::new(data)) else {
            return;
        };
        session
    };
    // Sized up front (growing by doubling copied up to 10 % of the harness's time).
    let mut wire = Vec::with_capacity(session.ops.len() * REQUEST_BYTES + data.len());
    // Indexed by cookie - 1 (cookies are positions + 1; a DISC has none).
    let mut sent: Vec<Option<Sent>> = Vec::with_capacity(session.ops.len());
    // Requests that must be answered: every one before the first DISC or broken frame.
    let mut must_answer = 0usize;
    let mut open = true;
    for (i, op) in session.ops.iter().enumerate() {
        let cookie = i as u64 + 1;
        let (flags, cmd, offset, len, payload) = match *op {
            Op::Read(o, l, df) => {
                let (o, l) = range(o, l);
                (if df { CMD_FLAG_DF } else { 0 }, CMD_READ, o, l, None)
            }
            Op::Write(o, l, fill, fua) => {
                let (o, l) = range(o, l);
                // fill, fill+1, ... in runs of 97 bytes (filled run by run: a closure per
                // byte was 40 % of the harness's time under coverage instrumentation).
                let mut p = vec![0u8; l as usize];
                for (run, bytes) in p.chunks_mut(97).enumerate() {
                    bytes.fill(fill.wrapping_add(run as u8));
                }
                (if fua { CMD_FLAG_FUA } else { 0 }, CMD_WRITE, o, l, Some(p))
            }
            Op::Flush => (0, CMD_FLUSH, 0, 0, None),
            Op::Trim(o, l, fua) => {
                let (o, l) = range(o, l);
                (if fua { CMD_FLAG_FUA } else { 0 }, CMD_TRIM, o, l, None)
            }
            Op::WriteZeroes(o, l, no_hole, fua) => {
                let (o, l) = range(o, l);
                let f =
                    if no_hole { CMD_FLAG_NO_HOLE } else { 0 } | if fua { CMD_FLAG_FUA } else { 0 };
                (f, CMD_WRITE_ZEROES, o, l, None)
            }
            Op::Disc => (0, CMD_DISC, 0, 0, None),
            Op::Raw {
                flags,
                cmd,
                offset,
                len,
            } => {
                let len = if cmd == CMD_WRITE {
                    len.min(WRITE_BYTES_MAX)
                } else {
                    len
                };
                let p = (cmd == CMD_WRITE).then(|| vec![0xa5; len as usize]);
                (flags, cmd, offset, len, p)
            }
            Op::Garbage(ref g) => {
                let mut g = g.clone();
                g.resize(g.len().max(REQUEST_BYTES), 0);
                g[0] = !(REQUEST_MAGIC >> 24) as u8;
                wire.extend_from_slice(&g);
                open = false;
                continue;
            }
        };
        let h = RequestHeader {
            flags,
            cmd,
            cookie,
            offset,
            len,
        };
        wire.extend_from_slice(&request_bytes(&h));
        if let Some(p) = &payload {
            wire.extend_from_slice(p);
        }
        if cmd == CMD_DISC {
            open = false;
        } else {
            sent.resize_with(i, || None);
            sent.push(Some(Sent {
                cmd,
                offset,
                len,
                at: i,
                payload: payload.unwrap_or_default(),
            }));
            if open {
                must_answer += 1;
            }
        }
        if !open {
            break;
        }
    }

    // Every reply's header and chunk headers, and the data of every READ.
    let reply_bytes = sent
        .iter()
        .flatten()
        .map(|s| 64 + if s.cmd == CMD_READ { s.len as usize } else { 0 })
        .sum::<usize>()
        .min(16 << 20);
    let dev =
        Arc::new(MemDevice::new("vol", DEVICE_BYTES as usize).with_read_only(session.read_only));
    let structured = session.structured;
    let (replies, end) = super::block_on(async {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let ctx = ConnCtx {
            view: ExportView {
                name: "vol".into(),
                size: dev.size_bytes(),
                read_only: dev.read_only(),
                structured,
            },
            dev: dev.clone(),
            stats: Arc::new(NbdStats::default()),
            log: Arc::new(LogLimiter::new(10)),
            peer: "fuzz".into(),
            budget: PayloadBudget::default(),
            idle: None,
        };
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let talk = async {
            // The server may stop reading (DISC, a broken frame): a failed write is fine.
            let _ = wr.write_all(&wire).await;
            let _ = wr.shutdown().await;
        };
        let listen = async {
            let mut replies = Vec::with_capacity(reply_bytes);
            let _ = rd.read_to_end(&mut replies).await;
            replies
        };
        let (end, (), replies) = tokio::join!(serve(server, ctx, stop_rx), talk, listen);
        (replies, end)
    });
    let end = end.expect("in-memory pipe I/O does not fail");

    // Walk the replies; check each against the model as of its request.
    let answered = check_replies(&replies, &sent, structured, &dev, &session);
    if matches!(
        end,
        End::ClientClosed | End::Disconnect | End::ProtocolError
    ) {
        assert!(
            answered >= must_answer,
            "{answered} requests answered, {must_answer} were sent before the end ({end:?})"
        );
    }
}

/// A recorded request stream as operations (structured replies, as qemu negotiates them).
fn recorded(mut b: &[u8]) -> Session {
    let mut ops = Vec::new();
    while b.len() >= REQUEST_BYTES {
        let Ok(h) = parse_request(b[..REQUEST_BYTES].try_into().expect("28 bytes")) else {
            break;
        };
        let payload = h.payload_len() as usize;
        b = &b[REQUEST_BYTES..];
        ops.push(Op::Raw {
            flags: h.flags,
            cmd: h.cmd,
            offset: h.offset,
            len: h.len,
        });
        b = &b[payload.min(b.len())..];
    }
    if !b.is_empty() {
        ops.push(Op::Garbage(b.to_vec()));
    }
    Session {
        structured: true,
        read_only: false,
        ops,
    }
}

/// The model of the device: applies acknowledged changes in request order, up to a position
/// (advanced once over all reads sorted by position, not rebuilt for each read).
struct Model<'a> {
    m: Vec<u8>,
    /// Acknowledged changes sorted by request position, and how many are applied.
    acked: &'a [(usize, &'a Sent)],
    applied: usize,
}

impl<'a> Model<'a> {
    fn new(acked: &'a [(usize, &'a Sent)]) -> Self {
        Model {
            m: vec![0u8; DEVICE_BYTES as usize],
            acked,
            applied: 0,
        }
    }

    /// The device after every acknowledged change before request `upto`.
    fn at(&mut self, upto: usize) -> &[u8] {
        while let Some((at, s)) = self.acked.get(self.applied) {
            if *at >= upto {
                break;
            }
            let r = s.offset as usize..s.offset as usize + s.len as usize;
            match s.cmd {
                CMD_WRITE => self.m[r].copy_from_slice(&s.payload),
                CMD_TRIM | CMD_WRITE_ZEROES => self.m[r].fill(0),
                _ => {}
            }
            self.applied += 1;
        }
        &self.m
    }
}

/// Parse every reply, check it, and return how many requests were answered.
fn check_replies(
    mut b: &[u8],
    sent: &[Option<Sent>],
    structured: bool,
    dev: &MemDevice,
    session: &Session,
) -> usize {
    let _ = session;
    // (request position, request) of every acknowledged change, for the model.
    let mut acked: Vec<(usize, &Sent)> = Vec::new();
    let mut reads: Vec<(&Sent, Vec<u8>)> = Vec::new();
    let mut answered = vec![false; sent.len()];
    // The request a cookie names (None: never sent, or a DISC, which is never answered).
    let lookup = |cookie: u64| {
        usize::try_from(cookie)
            .ok()
            .and_then(|c| c.checked_sub(1))
            .and_then(|i| sent.get(i))
            .and_then(Option::as_ref)
    };
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4"));
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8"));
    while !b.is_empty() {
        assert!(b.len() >= 4, "a reply cut short");
        let magic = be32(b, 0);
        let (cookie, error, data) = if magic == SIMPLE_REPLY_MAGIC {
            assert!(!structured, "a simple reply on a structured connection");
            assert!(b.len() >= SIMPLE_REPLY_BYTES, "a simple reply cut short");
            let (error, cookie) = (be32(b, 4), be64(b, 8));
            let s = lookup(cookie).expect("a reply to a request never sent");
            let n = if s.cmd == CMD_READ && error == 0 {
                s.len as usize
            } else {
                0
            };
            assert!(b.len() >= SIMPLE_REPLY_BYTES + n, "read data cut short");
            let data = b[SIMPLE_REPLY_BYTES..SIMPLE_REPLY_BYTES + n].to_vec();
            b = &b[SIMPLE_REPLY_BYTES + n..];
            (cookie, error, data)
        } else {
            assert_eq!(magic, STRUCTURED_REPLY_MAGIC, "reply magic");
            assert!(structured, "a structured reply on a simple connection");
            // Chunks until the one with DONE; a READ is answered in one OFFSET_DATA chunk.
            let mut data = Vec::new();
            let mut error = 0;
            let mut cookie;
            loop {
                assert!(
                    b.len() >= STRUCTURED_HEADER_BYTES,
                    "a chunk header cut short"
                );
                assert_eq!(be32(b, 0), STRUCTURED_REPLY_MAGIC, "chunk magic");
                let flags = u16::from_be_bytes([b[4], b[5]]);
                let ty = u16::from_be_bytes([b[6], b[7]]);
                cookie = be64(b, 8);
                let len = be32(b, 16) as usize;
                assert!(
                    b.len() >= STRUCTURED_HEADER_BYTES + len,
                    "a chunk cut short"
                );
                let p = &b[STRUCTURED_HEADER_BYTES..STRUCTURED_HEADER_BYTES + len];
                let s = lookup(cookie).expect("a chunk for a request never sent");
                match ty {
                    REPLY_TYPE_OFFSET_DATA => {
                        assert_eq!(s.cmd, CMD_READ, "data for a request that is not a READ");
                        assert_eq!(be64(p, 0), s.offset, "data chunk offset");
                        data.extend_from_slice(&p[8..]);
                    }
                    REPLY_TYPE_ERROR => {
                        error = be32(p, 0);
                        let msg_len = u16::from_be_bytes([p[4], p[5]]) as usize;
                        assert_eq!(6 + msg_len, len, "error chunk message length");
                        assert_ne!(error, 0, "an error chunk without an error");
                    }
                    REPLY_TYPE_NONE => assert_eq!(len, 0),
                    other => panic!("unexpected chunk type {other}"),
                }
                b = &b[STRUCTURED_HEADER_BYTES + len..];
                if flags & REPLY_FLAG_DONE != 0 {
                    break;
                }
            }
            (cookie, error, data)
        };
        let s = lookup(cookie).expect("a reply to a request never sent");
        let seen = &mut answered[cookie as usize - 1];
        assert!(!*seen, "request {cookie} answered twice");
        *seen = true;
        if error == 0 {
            match s.cmd {
                CMD_READ => {
                    assert_eq!(data.len(), s.len as usize, "READ of {} bytes", s.len);
                    reads.push((s, data));
                }
                CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES => {
                    assert!(
                        !session.read_only,
                        "a write acknowledged on a read-only export"
                    );
                    assert!(
                        s.offset + u64::from(s.len) <= DEVICE_BYTES,
                        "a write past the end acknowledged"
                    );
                    acked.push((s.at, s));
                }
                _ => {}
            }
        }
    }
    acked.sort_by_key(|(at, _)| *at);
    reads.sort_by_key(|(s, _)| s.at);
    let mut model = Model::new(&acked);
    for (s, data) in reads {
        let m = model.at(s.at);
        let r = s.offset as usize..s.offset as usize + s.len as usize;
        assert!(
            m[r] == data[..],
            "READ {}+{} (request {}) does not return the acknowledged writes before it",
            s.offset,
            s.len,
            s.at
        );
    }
    assert!(
        model.at(usize::MAX) == dev.contents(),
        "the device differs from the acknowledged writes"
    );
    answered.iter().filter(|a| **a).count()
}
