//! Fuzz harnesses: one function per parser a peer or client can reach, fed raw bytes.
//!
//! Each harness drives the code the daemon itself runs (the NBD handshake and transmission
//! loop against an in-memory device, the replication decoder and handshake state machine,
//! the control socket's line framing and JSON-RPC parser, the TCP control endpoint's
//! authentication, Swift manifests and listings, the config, DRBD `.res` import, detection
//! probes) and checks what must hold for any input: no panic, and where a model exists, the
//! model's answer (a frame encoded then decoded is the same frame; an NBD write acknowledged
//! is what a later read returns; the handshake never establishes with a wrong secret).
//!
//! They live in the library, not in `fuzz/`, so that two callers run the very same code:
//! - `fuzz/` (cargo-fuzz, nightly): one libFuzzer target per entry of [`TARGETS`];
//!   `scripts/fuzz.sh` builds and runs them;
//! - `tests/fuzz_corpus.rs` (stable, in `cargo test`): every file of `fuzz/corpus/NAME/` and
//!   `fuzz/regressions/NAME/` through the same function, so a crash once found stays fixed.
//!
//! Structure-aware harnesses read their input through [`arbitrary::Unstructured`]: the first
//! bytes choose operations (NBD requests, frames, mutations), the fuzzer's mutations of those
//! bytes become mutations of the operation list.

use std::pin::Pin;
use std::task::{Context, Poll};

pub mod control;
pub mod detect;
pub mod nbd;
pub mod repl;
pub mod seeds;
pub mod stream;
pub mod text;

/// A harness: any bytes in, panics on a violated property.
pub type Harness = fn(&[u8]);

/// Every harness by target name (the file name under `fuzz/fuzz_targets/` and the directory
/// name under `fuzz/corpus/` and `fuzz/regressions/`).
pub const TARGETS: &[(&str, Harness)] = &[
    ("nbd_handshake", nbd::handshake),
    ("nbd_transmission", nbd::transmission),
    ("repl_frames", repl::frames),
    ("repl_handshake", repl::handshake),
    ("control_rpc", control::rpc),
    ("control_tcp_auth", control::tcp_auth),
    ("swift_manifest", stream::manifest),
    ("swift_listing", stream::listing),
    ("config", text::config),
    ("drbd_res", text::drbd_res),
    ("detect_probe", detect::probe),
];

/// The harness called `name`.
pub fn harness(name: &str) -> Option<Harness> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, h)| *h)
}

thread_local! {
    /// One current-thread runtime per fuzzing thread: building one per input would cost more
    /// than most inputs take to run.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime");
}

/// Run `f` to completion on this thread's runtime.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// An in-memory stream for one side of a conversation: reads the other side's script,
/// collects what is written. Never pending: a read past the script is the end of the stream.
pub(crate) struct Scripted<'a> {
    input: &'a [u8],
    pub(crate) written: Vec<u8>,
}

impl<'a> Scripted<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Scripted {
            input,
            written: Vec::new(),
        }
    }
}

impl tokio::io::AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.input.len());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Scripted<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
