//! Unit tests of the NBD front end: parsers (every error path, proptests over random bytes),
//! option haggling over an in-memory pipe, and the transmission loop against [`MemDevice`].
//! Section names refer to the NBD protocol document (NetworkBlockDevice/nbd, doc/proto.md).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

use super::budget::PayloadBudget;
use super::command::{validate, Command, ExportView};
use super::conn::{transmission, ConnCtx, End};
use super::handshake::{negotiate, Admission, ExportInfo, HandshakeEnd, HandshakeError};
use super::proto::*;
use super::stats::NbdStats;
use super::{NbdError, NbdListen};
use crate::limits::*;
use crate::logrl::LogLimiter;
use crate::volume::mem::MemDevice;
use crate::volume::{nbd_err, AlignedBuf, BlockDevice, VolumeError};

// ---------- parsers ----------

fn opt_header(magic: u64, option: u32, len: u32) -> [u8; OPTION_HEADER_BYTES] {
    let mut b = [0u8; OPTION_HEADER_BYTES];
    b[0..8].copy_from_slice(&magic.to_be_bytes());
    b[8..12].copy_from_slice(&option.to_be_bytes());
    b[12..16].copy_from_slice(&len.to_be_bytes());
    b
}

fn info_data(name: &[u8], infos: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

#[test]
fn option_header_parses_and_checks() {
    let h = parse_option_header(&opt_header(IHAVEOPT, OPT_GO, 10)).unwrap();
    assert_eq!(
        h,
        OptionHeader {
            option: OPT_GO,
            len: 10
        }
    );
    assert!(h.check_len().is_ok());
    let h = parse_option_header(&opt_header(IHAVEOPT, 99, NBD_OPTION_BYTES_MAX)).unwrap();
    assert!(h.check_len().is_ok());
    let h = parse_option_header(&opt_header(IHAVEOPT, 99, NBD_OPTION_BYTES_MAX + 1)).unwrap();
    assert!(matches!(
        h.check_len(),
        Err(ProtoError::OptionTooLong { option: 99, .. })
    ));
    let e = parse_option_header(&opt_header(NBD_MAGIC, OPT_GO, 0)).unwrap_err();
    assert!(matches!(e, ProtoError::BadMagic { what: "option", got } if got == NBD_MAGIC));
}

#[test]
fn info_request_parses_and_rejects_every_malformation() {
    let r = parse_info_request(OPT_GO, &info_data(b"vol", &[INFO_BLOCK_SIZE, INFO_NAME])).unwrap();
    assert_eq!(r.name, b"vol");
    assert_eq!(r.infos, vec![INFO_BLOCK_SIZE, INFO_NAME]);
    let r = parse_info_request(OPT_INFO, &info_data(b"", &[])).unwrap();
    assert!(r.name.is_empty() && r.infos.is_empty());

    let bad = |d: &[u8]| parse_info_request(OPT_GO, d).unwrap_err();
    assert!(matches!(
        bad(&[0, 0, 0, 0, 0]),
        ProtoError::BadOptionData { .. }
    )); // short
    let mut long_name = info_data(&[b'a'; 4097], &[]);
    assert!(matches!(bad(&long_name), ProtoError::BadOptionData { .. }));
    long_name.truncate(10); // name length says 4097, data ends early
    assert!(matches!(bad(&long_name), ProtoError::BadOptionData { .. }));
    let mut past = info_data(b"vol", &[]);
    past[3] = 200; // name runs past the data
    assert!(matches!(bad(&past), ProtoError::BadOptionData { .. }));
    let mut count = info_data(b"vol", &[1, 2]);
    count.pop(); // count says 2 but only 3 bytes of list
    assert!(matches!(bad(&count), ProtoError::BadOptionData { .. }));
    let mut extra = info_data(b"vol", &[1]);
    extra.push(0); // trailing byte
    assert!(matches!(bad(&extra), ProtoError::BadOptionData { .. }));
}

#[test]
fn request_header_roundtrip_and_bad_magic() {
    let h = RequestHeader {
        flags: 1,
        cmd: CMD_WRITE,
        cookie: 0xdead_beef_0102,
        offset: 4096,
        len: 512,
    };
    let b = request_bytes(&h);
    assert_eq!(parse_request(&b).unwrap(), h);
    assert_eq!(h.payload_len(), 512);
    assert!(h.payload_fits());
    let read = RequestHeader {
        cmd: CMD_READ,
        len: u32::MAX,
        ..h
    };
    assert_eq!(read.payload_len(), 0);
    let big = RequestHeader {
        len: NBD_PAYLOAD_BYTES_MAX + 1,
        ..h
    };
    assert!(!big.payload_fits());
    let mut b = request_bytes(&h);
    b[0] ^= 1;
    assert!(matches!(
        parse_request(&b),
        Err(ProtoError::BadMagic {
            what: "request",
            ..
        })
    ));
}

#[test]
fn serializers_follow_the_document() {
    let g = greeting();
    assert_eq!(&g[0..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(
        u16::from_be_bytes([g[16], g[17]]),
        FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
    );
    assert_eq!(export_name_reply(5, 1, true).len(), 10);
    assert_eq!(export_name_reply(5, 1, false).len(), 134);
    let r = option_reply(OPT_LIST, REP_ACK, &[]);
    assert_eq!(r.len(), 20);
    assert_eq!(&r[0..8], &OPTION_REPLY_MAGIC.to_be_bytes());
    // An error chunk cuts its message on a character boundary at 256 bytes.
    let msg = "é".repeat(200); // 400 bytes
    let e = structured_error(9, nbd_err::EIO, &msg);
    let msg_len = u16::from_be_bytes([e[24], e[25]]) as usize;
    assert_eq!(msg_len, 256);
    assert!(std::str::from_utf8(&e[26..]).is_ok());
    assert_eq!(
        u32::from_be_bytes([e[16], e[17], e[18], e[19]]) as usize,
        6 + msg_len
    );
}

#[test]
fn listen_parse() {
    assert_eq!(
        NbdListen::parse("tcp:127.0.0.1:10809").unwrap(),
        NbdListen::Tcp("127.0.0.1:10809".parse().unwrap())
    );
    assert_eq!(
        NbdListen::parse("tcp:[::1]:5").unwrap(),
        NbdListen::Tcp("[::1]:5".parse().unwrap())
    );
    assert_eq!(
        NbdListen::parse("/run/drl/v.sock").unwrap(),
        NbdListen::Unix("/run/drl/v.sock".into())
    );
    assert_eq!(
        NbdListen::parse("unix:/x").unwrap(),
        NbdListen::Unix("/x".into())
    );
    assert!(matches!(NbdListen::parse("tcp:localhost:10809").unwrap(),
        NbdListen::Tcp(a) if a.ip().is_loopback() && a.port() == 10809));
    for bad in [
        "",
        "unix:",
        "tcp:",
        "tcp::1",
        "tcp:no.such.host.invalid:1",
        "tcp:127.0.0.1",
        "tcp:1.2.3.4:99999",
    ] {
        assert!(
            matches!(NbdListen::parse(bad), Err(NbdError::BadListen { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(
        NbdListen::parse("tcp:127.0.0.1:1").unwrap().to_string(),
        "tcp:127.0.0.1:1"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any 28 bytes: the parser does not panic, and the server only ever reads a payload that
    /// fits the limit (a WRITE over it is refused and its payload skipped, not stored).
    #[test]
    fn request_parser_never_exceeds_limits(bytes in prop::array::uniform28(any::<u8>()),
                                           structured in any::<bool>(), ro in any::<bool>()) {
        if let Ok(h) = parse_request(&bytes) {
            let view = ExportView { name: "v".into(), size: 1 << 40, read_only: ro, structured };
            if let Ok(Command::Write { len, .. } | Command::Read { len, .. }) = validate(&h, &view) {
                prop_assert!(len <= NBD_PAYLOAD_BYTES_MAX);
            }
        }
    }

    /// Requests with a valid magic and arbitrary fields, so validation paths are exercised.
    #[test]
    fn validate_never_panics(flags in any::<u16>(), cmd in 0u16..10, offset in any::<u64>(),
                             len in any::<u32>(), size in any::<u64>()) {
        let h = RequestHeader { flags, cmd, cookie: 1, offset, len };
        let view = ExportView { name: "v".into(), size, read_only: false, structured: true };
        match validate(&h, &view) {
            Ok(Command::Read { offset, len } | Command::Write { offset, len, .. }) => {
                prop_assert!(len <= NBD_PAYLOAD_BYTES_MAX);
                prop_assert!(offset.checked_add(len as u64).is_some_and(|e| e <= size));
            }
            Ok(_) => {}
            Err(e) => prop_assert!([nbd_err::EINVAL, nbd_err::ENOSPC].contains(&e.nbd_errno())),
        }
    }

    /// Any 16 bytes: an option header that passes its checks never announces more than the
    /// option limit.
    #[test]
    fn option_header_never_exceeds_limit(bytes in prop::array::uniform16(any::<u8>()),
                                         option in any::<u32>(), len in any::<u32>()) {
        for b in [bytes, opt_header(IHAVEOPT, option, len)] {
            if let Ok(h) = parse_option_header(&b) {
                if h.check_len().is_ok() {
                    prop_assert!(h.len <= NBD_OPTION_BYTES_MAX);
                }
            }
        }
    }

    /// Any option data: the info parser does not panic and returns no more than it was given.
    #[test]
    fn info_parser_is_bounded(data in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(r) = parse_info_request(OPT_GO, &data) {
            prop_assert!(r.name.len() <= STRING_BYTES_MAX);
            prop_assert_eq!(4 + r.name.len() + 2 + 2 * r.infos.len(), data.len());
        }
    }
}

// ---------- option haggling ----------

fn export() -> ExportInfo {
    ExportInfo {
        name: "vol".into(),
        description: "a test volume".into(),
        size: 1 << 20,
        read_only: false,
        min_block: 1,
    }
}

async fn send_opt<S: AsyncWrite + Unpin>(s: &mut S, option: u32, data: &[u8]) {
    s.write_all(&opt_header(IHAVEOPT, option, data.len() as u32))
        .await
        .unwrap();
    s.write_all(data).await.unwrap();
}

/// (option, reply type, data) of one option reply.
async fn read_reply<S: AsyncRead + Unpin>(s: &mut S) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(&h[0..8], &OPTION_REPLY_MAGIC.to_be_bytes());
    let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).await.unwrap();
    (opt, typ, d)
}

/// Start `negotiate` on one end of a pipe; return the client end after the greeting.
async fn start(
    admission: Admission,
    client_flags: u32,
) -> (
    DuplexStream,
    tokio::task::JoinHandle<Result<HandshakeEnd, HandshakeError>>,
) {
    let (mut c, mut s) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(async move { negotiate(&mut s, &export(), admission).await });
    let mut g = [0u8; GREETING_BYTES];
    c.read_exact(&mut g).await.unwrap();
    assert_eq!(g, greeting());
    c.write_all(&client_flags.to_be_bytes()).await.unwrap();
    (c, task)
}

#[tokio::test]
async fn go_with_infos_then_transmission() {
    let (mut c, task) = start(Admission::Admit, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).await;
    send_opt(&mut c, OPT_STRUCTURED_REPLY, &[]).await;
    assert_eq!(
        read_reply(&mut c).await,
        (OPT_STRUCTURED_REPLY, REP_ACK, vec![])
    );
    let asked = [INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 77];
    send_opt(&mut c, OPT_GO, &info_data(b"vol", &asked)).await;
    let mut seen = Vec::new();
    loop {
        let (opt, typ, d) = read_reply(&mut c).await;
        assert_eq!(opt, OPT_GO);
        if typ == REP_ACK {
            break;
        }
        assert_eq!(typ, REP_INFO);
        let info = u16::from_be_bytes([d[0], d[1]]);
        match info {
            INFO_EXPORT => {
                assert_eq!(u64::from_be_bytes(d[2..10].try_into().unwrap()), 1 << 20);
                let f = u16::from_be_bytes([d[10], d[11]]);
                let want = TFLAG_HAS_FLAGS
                    | TFLAG_SEND_FLUSH
                    | TFLAG_SEND_FUA
                    | TFLAG_SEND_TRIM
                    | TFLAG_SEND_WRITE_ZEROES
                    | TFLAG_SEND_DF
                    | TFLAG_CAN_MULTI_CONN;
                assert_eq!(f, want);
            }
            INFO_NAME => assert_eq!(&d[2..], b"vol"),
            INFO_DESCRIPTION => assert_eq!(&d[2..], b"a test volume"),
            INFO_BLOCK_SIZE => {
                let v: Vec<u32> = d[2..]
                    .chunks(4)
                    .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
                    .collect();
                assert_eq!(v, vec![1, 4096, NBD_PAYLOAD_BYTES_MAX]);
            }
            other => panic!("unexpected info {other}"),
        }
        seen.push(info);
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]
    );
    assert_eq!(
        task.await.unwrap().unwrap(),
        HandshakeEnd::Transmission { structured: true }
    );
}

#[tokio::test]
async fn option_errors_keep_the_negotiation_going() {
    let (mut c, task) = start(Admission::Admit, FLAG_C_FIXED_NEWSTYLE).await;
    // Unknown export for INFO and GO.
    send_opt(&mut c, OPT_INFO, &info_data(b"other", &[])).await;
    assert_eq!(read_reply(&mut c).await.1, REP_ERR_UNKNOWN);
    send_opt(&mut c, OPT_GO, &info_data(b"other", &[])).await;
    assert_eq!(read_reply(&mut c).await.1, REP_ERR_UNKNOWN);
    // Malformed GO data.
    send_opt(&mut c, OPT_GO, &[0, 0, 0, 9]).await;
    assert_eq!(read_reply(&mut c).await.1, REP_ERR_INVALID);
    // Unknown options (SET_META_CONTEXT, STARTTLS, made up).
    for opt in [10, 5, 0x1234] {
        send_opt(&mut c, opt, b"xyz").await;
        let (o, t, _) = read_reply(&mut c).await;
        assert_eq!((o, t), (opt, REP_ERR_UNSUP));
    }
    // Data where none is allowed.
    send_opt(&mut c, OPT_LIST, b"x").await;
    assert_eq!(read_reply(&mut c).await.1, REP_ERR_INVALID);
    send_opt(&mut c, OPT_STRUCTURED_REPLY, b"x").await;
    assert_eq!(read_reply(&mut c).await.1, REP_ERR_INVALID);
    // Oversized option data is skipped unread and refused.
    send_opt(
        &mut c,
        OPT_INFO,
        &vec![0u8; NBD_OPTION_BYTES_MAX as usize + 1],
    )
    .await;
    assert_eq!(read_reply(&mut c).await.1, REP_ERR_TOO_BIG);
    // LIST names the export.
    send_opt(&mut c, OPT_LIST, &[]).await;
    let (_, t, d) = read_reply(&mut c).await;
    assert_eq!(t, REP_SERVER);
    assert_eq!(&d[0..4], &3u32.to_be_bytes());
    assert_eq!(&d[4..], b"vola test volume");
    assert_eq!(read_reply(&mut c).await.1, REP_ACK);
    // INFO on the default name succeeds and does not end the negotiation.
    send_opt(&mut c, OPT_INFO, &info_data(b"", &[])).await;
    assert_eq!(read_reply(&mut c).await.1, REP_INFO);
    assert_eq!(read_reply(&mut c).await.1, REP_ACK);
    send_opt(&mut c, OPT_ABORT, &[]).await;
    assert_eq!(read_reply(&mut c).await.1, REP_ACK);
    assert_eq!(task.await.unwrap().unwrap(), HandshakeEnd::Aborted);
}

#[tokio::test]
async fn export_name_with_and_without_zeroes() {
    for (flags, want_len) in [(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES, 10), (0, 134)] {
        let (mut c, task) = start(Admission::Admit, flags).await;
        send_opt(&mut c, OPT_EXPORT_NAME, b"vol").await;
        let mut v = vec![0u8; want_len];
        c.read_exact(&mut v).await.unwrap();
        assert_eq!(u64::from_be_bytes(v[0..8].try_into().unwrap()), 1 << 20);
        assert_eq!(
            task.await.unwrap().unwrap(),
            HandshakeEnd::Transmission { structured: false }
        );
        drop(c);
    }
    // An unknown name cannot be answered with an error: the server closes.
    let (mut c, task) = start(Admission::Admit, FLAG_C_FIXED_NEWSTYLE).await;
    send_opt(&mut c, OPT_EXPORT_NAME, b"nope").await;
    assert!(matches!(task.await.unwrap(), Err(HandshakeError::UnknownExport(n)) if n == "nope"));
}

#[tokio::test]
async fn handshake_protocol_violations_close() {
    let (_c, task) = start(Admission::Admit, 1 << 5).await;
    assert!(matches!(
        task.await.unwrap(),
        Err(HandshakeError::ClientFlags(0x20))
    ));

    let (mut c, task) = start(Admission::Admit, FLAG_C_FIXED_NEWSTYLE).await;
    c.write_all(&opt_header(0x1122_3344_5566_7788, OPT_GO, 0))
        .await
        .unwrap();
    assert!(matches!(
        task.await.unwrap(),
        Err(HandshakeError::Proto(ProtoError::BadMagic { .. }))
    ));

    let (mut c, task) = start(Admission::Admit, FLAG_C_FIXED_NEWSTYLE).await;
    for _ in 0..NBD_OPTIONS_PER_CONNECTION_MAX {
        send_opt(&mut c, 0x99, &[]).await;
    }
    assert!(matches!(
        task.await.unwrap(),
        Err(HandshakeError::TooManyOptions(_))
    ));

    let (mut c, task) = start(Admission::Admit, FLAG_C_FIXED_NEWSTYLE).await;
    c.write_all(&opt_header(
        IHAVEOPT,
        OPT_EXPORT_NAME,
        NBD_OPTION_BYTES_MAX + 1,
    ))
    .await
    .unwrap();
    assert!(matches!(
        task.await.unwrap(),
        Err(HandshakeError::Proto(ProtoError::OptionTooLong { .. }))
    ));

    // The client leaving mid-option is a disconnect, not a protocol error.
    let (mut c, task) = start(Admission::Admit, FLAG_C_FIXED_NEWSTYLE).await;
    c.write_all(&opt_header(IHAVEOPT, OPT_GO, 100))
        .await
        .unwrap();
    c.write_all(&[0u8; 10]).await.unwrap();
    drop(c);
    assert!(task.await.unwrap().unwrap_err().is_disconnect());
}

#[tokio::test]
async fn refused_connection_gets_policy_error() {
    let (mut c, task) = start(Admission::Refuse("too many"), FLAG_C_FIXED_NEWSTYLE).await;
    send_opt(&mut c, OPT_GO, &info_data(b"", &[])).await;
    let (_, t, d) = read_reply(&mut c).await;
    assert_eq!((t, d.as_slice()), (REP_ERR_POLICY, &b"too many"[..]));
    send_opt(&mut c, OPT_EXPORT_NAME, b"").await;
    assert!(matches!(
        task.await.unwrap(),
        Err(HandshakeError::Refused("too many"))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random client bytes after the greeting: the negotiation ends (with any outcome) without
    /// panicking, hanging or reading more than the input.
    #[test]
    fn handshake_survives_random_input(flags in 0u32..4, opts in prop::collection::vec(
        (prop_oneof![Just(1u32), Just(2), Just(3), Just(6), Just(7), Just(8), any::<u32>()],
         prop::collection::vec(any::<u8>(), 0..40), any::<bool>()), 0..8),
        tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut c, mut s) = tokio::io::duplex(1 << 20);
            let mut input = flags.to_be_bytes().to_vec();
            for (opt, data, honest_len) in opts {
                let len = if honest_len { data.len() as u32 } else { data.len() as u32 + 3 };
                input.extend_from_slice(&opt_header(IHAVEOPT, opt, len));
                input.extend_from_slice(&data);
            }
            input.extend_from_slice(&tail);
            c.write_all(&input).await.unwrap();
            c.shutdown().await.unwrap();
            let r = tokio::time::timeout(Duration::from_secs(5),
                negotiate(&mut s, &export(), Admission::Admit)).await;
            assert!(r.is_ok(), "negotiation hung");
        });
    }
}

// ---------- transmission ----------

/// The client's end of a served pipe, the connection's stats, its stop signal and its task.
type Served = (
    DuplexStream,
    Arc<NbdStats>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<End>>,
);

async fn serve_pipe(dev: Arc<MemDevice>, structured: bool) -> Served {
    serve_pipe_sharing(dev, structured, PayloadBudget::default()).await
}

async fn serve_pipe_sharing(
    dev: Arc<MemDevice>,
    structured: bool,
    budget: PayloadBudget,
) -> Served {
    serve_device(dev, structured, budget, 1 << 20).await
}

/// Serve `dev` over an in-memory pipe of `pipe_bytes` each way.
async fn serve_device<D: BlockDevice>(
    dev: Arc<D>,
    structured: bool,
    budget: PayloadBudget,
    pipe_bytes: usize,
) -> Served {
    let (c, s) = tokio::io::duplex(pipe_bytes);
    let stats = Arc::new(NbdStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = ConnCtx {
        view: ExportView {
            name: "vol".into(),
            size: dev.size_bytes(),
            read_only: dev.read_only(),
            structured,
        },
        dev,
        stats: stats.clone(),
        log: Arc::new(LogLimiter::new(10)),
        peer: "test".into(),
        budget,
        idle: None,
    };
    let task = tokio::spawn(transmission(s, ctx, stop_rx));
    (c, stats, stop_tx, task)
}

async fn req<S: AsyncWrite + Unpin>(
    s: &mut S,
    cmd: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    len: u32,
) {
    let h = RequestHeader {
        flags,
        cmd,
        cookie,
        offset,
        len,
    };
    s.write_all(&request_bytes(&h)).await.unwrap();
}

/// (error, cookie) of a simple reply.
async fn simple<S: AsyncRead + Unpin>(s: &mut S) -> (u32, u64) {
    let mut b = [0u8; SIMPLE_REPLY_BYTES];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b[0..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
    (
        u32::from_be_bytes(b[4..8].try_into().unwrap()),
        u64::from_be_bytes(b[8..16].try_into().unwrap()),
    )
}

/// Poll `cond` for up to 5 s (the machine running the tests may be busy).
async fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

#[tokio::test]
async fn simple_replies_and_errors() {
    let dev = Arc::new(MemDevice::new("m", 1 << 20).with_failing_range(8192..8193));
    let (mut c, stats, _stop, task) = serve_pipe(dev.clone(), false).await;
    req(&mut c, CMD_WRITE, CMD_FLAG_FUA, 1, 512, 4).await;
    c.write_all(b"abcd").await.unwrap();
    assert_eq!(simple(&mut c).await, (0, 1));
    assert_eq!(dev.fua_writes(), 1);
    req(&mut c, CMD_READ, 0, 2, 510, 8).await;
    assert_eq!(simple(&mut c).await, (0, 2));
    let mut d = [0u8; 8];
    c.read_exact(&mut d).await.unwrap();
    assert_eq!(&d, b"\0\0abcd\0\0");
    // Out of range, unknown command, unknown flag, device failure.
    req(&mut c, CMD_READ, 0, 3, (1 << 20) - 4, 8).await;
    assert_eq!(simple(&mut c).await, (nbd_err::ENOSPC, 3));
    req(&mut c, 42, 0, 4, 0, 0).await;
    assert_eq!(simple(&mut c).await, (nbd_err::EINVAL, 4));
    req(&mut c, CMD_FLUSH, 1 << 12, 5, 0, 0).await;
    assert_eq!(simple(&mut c).await, (nbd_err::EINVAL, 5));
    req(&mut c, CMD_READ, 0, 6, 8000, 1000).await;
    assert_eq!(simple(&mut c).await, (nbd_err::EIO, 6));
    // An out-of-range WRITE's payload is skipped and the stream stays in sync.
    req(&mut c, CMD_WRITE, 0, 7, 1 << 20, 3).await;
    c.write_all(b"xyz").await.unwrap();
    assert_eq!(simple(&mut c).await, (nbd_err::ENOSPC, 7));
    // TRIM with FUA flushes; WRITE_ZEROES with NO_HOLE zeroes.
    req(&mut c, CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 8, 513, 2).await;
    assert_eq!(simple(&mut c).await, (0, 8));
    req(&mut c, CMD_TRIM, CMD_FLAG_FUA, 9, 515, 1).await;
    assert_eq!(simple(&mut c).await, (0, 9));
    assert_eq!(&dev.contents()[512..516], b"a\0\0\0");
    assert_eq!(dev.flushes(), 1);
    req(&mut c, CMD_DISC, 0, 10, 0, 0).await;
    assert_eq!(task.await.unwrap().unwrap(), End::Disconnect);
    let s = stats.snapshot();
    assert_eq!(
        (s.requests_read, s.requests_write, s.requests_unknown),
        (3, 2, 1)
    );
    assert_eq!(
        (
            s.error_replies,
            s.bytes_written,
            s.bytes_read,
            s.requests_inflight
        ),
        (5, 4, 8, 0)
    );
}

#[tokio::test]
async fn structured_replies() {
    let dev = Arc::new(MemDevice::new("m", 1 << 20));
    dev.fill(100, b"hello");
    let (mut c, _stats, _stop, task) = serve_pipe(dev, true).await;
    req(&mut c, CMD_READ, CMD_FLAG_DF, 1, 100, 5).await;
    let mut h = [0u8; STRUCTURED_HEADER_BYTES + 8 + 5];
    c.read_exact(&mut h).await.unwrap();
    assert_eq!(
        &h[0..20],
        &structured_header(REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 1, 13)
    );
    assert_eq!(&h[20..28], &100u64.to_be_bytes());
    assert_eq!(&h[28..], b"hello");
    req(&mut c, CMD_READ, 0, 2, 1 << 20, 1).await;
    let mut h = [0u8; STRUCTURED_HEADER_BYTES];
    c.read_exact(&mut h).await.unwrap();
    assert_eq!(u16::from_be_bytes([h[6], h[7]]), REPLY_TYPE_ERROR);
    assert_eq!(u16::from_be_bytes([h[4], h[5]]), REPLY_FLAG_DONE);
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut p = vec![0u8; len];
    c.read_exact(&mut p).await.unwrap();
    assert_eq!(
        u32::from_be_bytes(p[0..4].try_into().unwrap()),
        nbd_err::ENOSPC
    );
    assert_eq!(u16::from_be_bytes([p[4], p[5]]) as usize, len - 6);
    req(&mut c, CMD_FLUSH, 0, 3, 0, 0).await;
    c.read_exact(&mut h).await.unwrap();
    assert_eq!(h, structured_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, 3, 0));
    drop(c);
    assert_eq!(task.await.unwrap().unwrap(), End::ClientClosed);
}

#[tokio::test]
async fn replies_complete_out_of_order() {
    let dev = Arc::new(
        MemDevice::new("m", 1 << 20).with_slow_range(0..4096, Duration::from_millis(1000)),
    );
    let (mut c, _stats, _stop, _task) = serve_pipe(dev, false).await;
    req(&mut c, CMD_READ, 0, 1, 0, 16).await; // slow
    req(&mut c, CMD_READ, 0, 2, 8192, 16).await; // fast
    let (e, cookie) = simple(&mut c).await;
    assert_eq!(
        (e, cookie),
        (0, 2),
        "the fast read must not wait for the slow one"
    );
    let mut d = [0u8; 16];
    c.read_exact(&mut d).await.unwrap();
    assert_eq!(simple(&mut c).await, (0, 1));
}

/// A [`MemDevice`] that counts the writes each [`BlockDevice::batched`] pass starts: with the
/// io_uring engine, one pass is one submission to the disk.
struct PassProbe {
    inner: MemDevice,
    in_pass: std::sync::atomic::AtomicUsize,
    largest_pass: std::sync::atomic::AtomicUsize,
    started: std::sync::atomic::AtomicUsize,
    /// Writes wait for it to be open before they complete.
    gate: watch::Receiver<bool>,
}

impl PassProbe {
    fn new(inner: MemDevice, gate: watch::Receiver<bool>) -> Self {
        PassProbe {
            inner,
            in_pass: Default::default(),
            largest_pass: Default::default(),
            started: Default::default(),
            gate,
        }
    }
}

impl BlockDevice for PassProbe {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl std::future::Future<Output = Result<AlignedBuf, VolumeError>> + Send {
        self.inner.read(offset, len)
    }
    fn write(
        &self,
        offset: u64,
        data: AlignedBuf,
        fua: bool,
    ) -> impl std::future::Future<Output = Result<(), VolumeError>> + Send {
        // Called in the request's first poll, where a disk write is submitted; pending there,
        // as a disk write is (a write that completes in its first poll would end the pass).
        self.in_pass.fetch_add(1, Relaxed);
        self.started.fetch_add(1, Relaxed);
        let write = self.inner.write(offset, data, fua);
        let mut gate = self.gate.clone();
        async move {
            tokio::task::yield_now().await;
            let _ = gate.wait_for(|open| *open).await;
            write.await
        }
    }
    fn flush(&self) -> impl std::future::Future<Output = Result<(), VolumeError>> + Send {
        self.inner.flush()
    }
    fn batched<R>(&self, f: impl FnOnce() -> R) -> R {
        self.in_pass.store(0, Relaxed);
        let r = f();
        self.largest_pass
            .fetch_max(self.in_pass.swap(0, Relaxed), Relaxed);
        r
    }
    fn trim(
        &self,
        offset: u64,
        len: u32,
    ) -> impl std::future::Future<Output = Result<(), VolumeError>> + Send {
        self.inner.trim(offset, len)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    ) -> impl std::future::Future<Output = Result<(), VolumeError>> + Send {
        self.inner.write_zeroes(offset, len, may_trim, fua)
    }
}

/// WRITE requests `ids` of `len` bytes each at `id * len` (payload byte = id + 1, cookie = id),
/// back to back in one buffer.
fn writes(ids: std::ops::Range<u64>, len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in ids {
        let h = RequestHeader {
            flags: 0,
            cmd: CMD_WRITE,
            cookie: i,
            offset: i * u64::from(len),
            len,
        };
        out.extend_from_slice(&request_bytes(&h));
        out.extend(std::iter::repeat_n(i as u8 + 1, len as usize));
    }
    out
}

/// Read `n` simple replies, each a success; their cookies, sorted.
async fn successes<S: AsyncRead + Unpin>(c: &mut S, n: u64) -> Vec<u64> {
    let mut answered: Vec<u64> = Vec::new();
    for _ in 0..n {
        let (e, cookie) = simple(c).await;
        assert_eq!(e, 0);
        answered.push(cookie);
    }
    answered.sort_unstable();
    answered
}

/// Send `first` writes of `len` bytes, and once the server started them all, `rest` more at
/// once (one `write_all` into a pipe with room for all of it: it does not yield, so on this
/// test's single thread the server's task runs only once they all are in the pipe, as when the
/// client sent a queue while the server waited for a CPU). The first writes complete only
/// when the rest are sent: their completions are then ready before the rest are read. Reads
/// every reply and the data back; the largest number of writes one pass started.
async fn largest_pass(first: u64, rest: u64, len: u32) -> usize {
    let n = first + rest;
    let (open, gate) = watch::channel(first == 0);
    let dev = Arc::new(PassProbe::new(
        MemDevice::new("m", n as usize * len as usize),
        gate,
    ));
    let (mut c, _stats, _stop, _task) = serve_device(
        dev.clone(),
        false,
        PayloadBudget::default(),
        2 * writes(0..n, len).len(),
    )
    .await;
    if first > 0 {
        c.write_all(&writes(0..first, len)).await.unwrap();
        wait_until(|| dev.started.load(Relaxed) == first as usize).await;
        open.send(true).unwrap();
    }
    c.write_all(&writes(first..n, len)).await.unwrap();
    assert_eq!(successes(&mut c, n).await, (0..n).collect::<Vec<_>>());
    for i in 0..n {
        let got = dev.inner.read(i * u64::from(len), len).await.unwrap();
        assert!(got.iter().all(|&b| b == i as u8 + 1), "write {i} landed");
    }
    dev.largest_pass.load(Relaxed)
}

#[tokio::test]
async fn a_queue_read_at_once_goes_to_the_disk_in_batches() {
    let max = NBD_SUBMIT_BATCH_REQUESTS_MAX;
    // 32 small writes: submitted a batch's worth at a time while the rest are read, not all
    // 32 after the last one is read (the disk idled meanwhile), and not one by one either.
    let largest = largest_pass(0, 32, 4096).await;
    assert!(
        (2..=max).contains(&largest),
        "{largest} writes in one submission (batches of 2..={max} expected)"
    );
    // The same while earlier writes complete: their completions are found first, and must not
    // leave a batch unstarted until the next one is read.
    let largest = largest_pass(max as u64, 32, 4096).await;
    assert!(
        (2..=max).contains(&largest),
        "{largest} writes in one submission with completions pending (2..={max} expected)"
    );
}

#[tokio::test]
async fn a_batch_of_writes_done_at_once_is_answered() {
    // Exactly one batch, on a device whose writes complete in their first poll: the pass that
    // starts the batch also finds every write done, and nothing else is left to wake the
    // connection. Its replies must still go out (a version that took them after choosing what
    // to write left the client waiting for ever).
    let n = NBD_SUBMIT_BATCH_REQUESTS_MAX as u64;
    let dev = Arc::new(MemDevice::new("m", n as usize * 4096));
    let (mut c, _stats, _stop, _task) = serve_pipe(dev, false).await;
    c.write_all(&writes(0..n, 4096)).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(30), successes(&mut c, n))
        .await
        .expect("every write of the batch answered");
    assert_eq!(answered, (0..n).collect::<Vec<_>>());
}

#[tokio::test]
async fn reader_stops_at_the_inflight_bound_and_drains_on_stop() {
    let dev =
        Arc::new(MemDevice::new("m", 1 << 20).with_slow_range(0..1, Duration::from_millis(1500)));
    let (mut c, stats, stop, task) = serve_pipe(dev, false).await;
    let n = NBD_INFLIGHT_PER_CONNECTION_MAX as u64 + 20;
    for i in 0..n {
        req(&mut c, CMD_READ, 0, i, 0, 1).await;
    }
    let bound = NBD_INFLIGHT_PER_CONNECTION_MAX as u64;
    wait_until(|| stats.snapshot().requests_read >= bound).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // would it read more?
    let s = stats.snapshot();
    assert_eq!(
        s.requests_read, NBD_INFLIGHT_PER_CONNECTION_MAX as u64,
        "reader must stop at the bound"
    );
    assert_eq!(s.requests_inflight, NBD_INFLIGHT_PER_CONNECTION_MAX as u64);
    // Stop: no new requests are read, but every dispatched one is answered.
    stop.send(true).unwrap();
    let mut got = 0;
    let mut buf = [0u8; SIMPLE_REPLY_BYTES + 1];
    while c.read_exact(&mut buf).await.is_ok() {
        got += 1;
    }
    assert_eq!(got, NBD_INFLIGHT_PER_CONNECTION_MAX);
    assert_eq!(task.await.unwrap().unwrap(), End::Stopped);
    assert_eq!(stats.snapshot().requests_inflight, 0);
}

#[tokio::test]
async fn byte_bound_limits_large_reads() {
    let max = NBD_PAYLOAD_BYTES_MAX;
    let dev = Arc::new(
        MemDevice::new("m", 2 * max as usize).with_slow_range(0..1, Duration::from_millis(1500)),
    );
    let (mut c, stats, _stop, _task) = serve_pipe(dev, false).await;
    let fit = NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX / max as u64;
    for i in 0..fit + 2 {
        req(&mut c, CMD_READ, 0, i, 0, max).await;
    }
    wait_until(|| stats.snapshot().requests_inflight >= fit).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // would it start more?
    assert_eq!(stats.snapshot().requests_inflight, fit);
    for _ in 0..fit + 2 {
        let (e, _) = simple(&mut c).await;
        assert_eq!(e, 0);
        let mut skip = (&mut c).take(max as u64);
        tokio::io::copy(&mut skip, &mut tokio::io::sink())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn connections_share_the_daemon_wide_byte_budget() {
    let max = NBD_PAYLOAD_BYTES_MAX;
    let dev = Arc::new(
        MemDevice::new("m", 2 * max as usize).with_slow_range(0..1, Duration::from_millis(800)),
    );
    // The smallest budget there is: one largest request.
    let budget = PayloadBudget::new(0);
    assert_eq!(budget.total_bytes(), u64::from(max));
    let (mut a, sa, _stop_a, _ta) = serve_pipe_sharing(dev.clone(), false, budget.clone()).await;
    let (mut b, sb, _stop_b, _tb) = serve_pipe_sharing(dev, false, budget.clone()).await;
    // A takes the whole budget with one read and queues another; B's small read must wait
    // although B itself has nothing in flight.
    req(&mut a, CMD_READ, 0, 1, 0, max).await;
    req(&mut a, CMD_READ, 0, 2, 0, max).await;
    wait_until(|| sa.snapshot().requests_inflight >= 1).await;
    req(&mut b, CMD_READ, 0, 3, u64::from(max), 4096).await;
    wait_until(|| sb.snapshot().budget_waits >= 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // would anything else start?
    assert_eq!(
        sa.snapshot().requests_inflight,
        1,
        "A's second read must wait"
    );
    assert_eq!(
        sb.snapshot().requests_inflight,
        0,
        "B's read must wait for the budget"
    );
    assert_eq!(budget.available_bytes(), 0);
    // Read A's replies: as each is written its bytes return, and everyone gets served, in
    // the order they asked (A's second read was first in line).
    for cookie in [1, 2] {
        let (e, c) = simple(&mut a).await;
        assert_eq!((e, c), (0, cookie));
        tokio::io::copy(&mut (&mut a).take(u64::from(max)), &mut tokio::io::sink())
            .await
            .unwrap();
    }
    let (e, c) = simple(&mut b).await;
    assert_eq!((e, c), (0, 3));
    let mut data = vec![0u8; 4096];
    b.read_exact(&mut data).await.unwrap();
    wait_until(|| budget.available_bytes() == u64::from(max)).await;
    assert!(sa.snapshot().budget_waits >= 1);
}

#[tokio::test]
async fn bad_magic_and_mid_payload_disconnect_end_the_connection() {
    let dev = Arc::new(MemDevice::new("m", 1 << 20));
    let (mut c, stats, _stop, task) = serve_pipe(dev.clone(), false).await;
    c.write_all(&[0xffu8; REQUEST_BYTES]).await.unwrap();
    assert_eq!(task.await.unwrap().unwrap(), End::ProtocolError);
    assert_eq!(stats.protocol_errors.load(Relaxed), 1);

    let (mut c, _stats, _stop, task) = serve_pipe(dev.clone(), false).await;
    req(&mut c, CMD_WRITE, 0, 1, 0, 4096).await;
    c.write_all(&[7u8; 100]).await.unwrap();
    drop(c);
    assert_eq!(task.await.unwrap().unwrap(), End::ClientClosed);
    assert!(
        dev.contents()[..4096].iter().all(|b| *b == 0),
        "a partial write must not be applied"
    );
}
