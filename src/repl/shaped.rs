//! The replication link's side of WAN shaping: which traffic class a replication frame is
//! charged to, and writing frames through the node's shaper. It lives in `repl` (not in
//! `shaping`) because it reads replication frame types: `shaping` knows no layer above it.

use crate::limits::{REPL_FRAME_COPY_BELOW_BYTES, REPL_WRITEV_SLICES};
use crate::shaping::{Class, Shaper};

/// Encoded frames the socket writer sends together, gathered for one vectored write
/// (`writev`): a frame of at least [`REPL_FRAME_COPY_BELOW_BYTES`] is a slice of its own (its
/// payload is not copied again: the frame holds the one copy the Primary makes), runs of
/// smaller frames are copied side by side into one slice.
#[derive(Default)]
pub struct FrameBatch {
    /// Slices in order; the small frames after the last large one wait in `small`.
    segs: std::collections::VecDeque<bytes::Bytes>,
    small: bytes::BytesMut,
    remaining: usize,
}

impl FrameBatch {
    /// Append a frame.
    pub fn push(&mut self, frame: bytes::Bytes) {
        self.remaining += frame.len();
        if frame.len() < REPL_FRAME_COPY_BELOW_BYTES {
            self.small.extend_from_slice(&frame);
        } else {
            if !self.small.is_empty() {
                self.segs.push_back(self.small.split().freeze());
            }
            self.segs.push_back(frame);
        }
    }

    /// Drop what is left (keeps the buffers' capacity for the next batch).
    pub fn clear(&mut self) {
        self.segs.clear();
        self.small.clear();
        self.remaining = 0;
    }

    /// Bytes not written yet.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The slices of the batch's next (at most) `limit` bytes, into `dst`; how many.
    pub fn slices<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>], mut limit: usize) -> usize {
        let tail = (!self.small.is_empty()).then_some(&self.small[..]);
        let mut n = 0;
        for (d, seg) in dst
            .iter_mut()
            .zip(self.segs.iter().map(|b| &b[..]).chain(tail))
        {
            if limit == 0 {
                break;
            }
            let take = seg.len().min(limit);
            *d = std::io::IoSlice::new(&seg[..take]);
            limit -= take;
            n += 1;
        }
        n
    }

    /// The first unwritten bytes (at the start, the first frame: its type byte classes the
    /// batch), empty if none.
    pub fn first(&self) -> &[u8] {
        self.segs.front().map_or(&self.small[..], |f| f)
    }

    /// `cnt` bytes were written.
    pub fn advance(&mut self, mut cnt: usize) {
        use bytes::Buf;
        assert!(
            cnt <= self.remaining,
            "advance {cnt} past the batch's {} bytes",
            self.remaining
        );
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(f) = self.segs.front_mut() else {
                self.small.advance(cnt);
                return;
            };
            if cnt < f.len() {
                f.advance(cnt);
                return;
            }
            cnt -= f.len();
            self.segs.pop_front();
        }
    }
}

/// Write a batch of encoded replication frames (all of one class, see [`repl_frame_class`])
/// to the peer's socket through the daemon's `shaper`: under a cap, in pieces of at most one
/// grant, each granted before it is written, so the socket is fed at the shaped rate instead
/// of in batch-sized bursts; uncapped, one count and (as far as the socket takes it) one
/// vectored write for the batch (the replication sender's only call into shaping). Resync
/// frames are scheduled with the replication flow (one ordered connection: a resync frame at
/// its head must not hold the writes behind it to resync's share) and counted as resync; how
/// much resync enters the connection is the adaptive resync controller's decision
/// ([`crate::shaping::resync`]). Once the link is closed (`closed()`, or `closed_notify`
/// fires) the rest goes unshaped: it is the final Disconnect.
pub async fn write_repl_frames<W: tokio::io::AsyncWrite + Unpin>(
    shaper: &Shaper,
    wr: &mut W,
    batch: &mut FrameBatch,
    closed_notify: &tokio::sync::Notify,
    closed: impl Fn() -> bool,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let class = repl_frame_class(batch.first());
    let piece = match shaper.is_capped() {
        true => usize::try_from(shaper.config().grant_bytes_max()).unwrap_or(usize::MAX),
        false => batch.remaining(),
    }
    .max(1);
    while batch.remaining() > 0 {
        let mut left = batch.remaining().min(piece);
        if !closed() {
            tokio::select! {
                _ = shaper.acquire_as(Class::Replication, class, left as u64) => {}
                _ = closed_notify.notified() => {}
            }
        }
        while left > 0 {
            let n = {
                let mut io = [std::io::IoSlice::new(&[]); REPL_WRITEV_SLICES];
                let cnt = batch.slices(&mut io, left);
                wr.write_vectored(&io[..cnt]).await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            batch.advance(n);
            left -= n;
        }
    }
    Ok(())
}

/// The class of an encoded replication frame, from its type byte (header byte 6): resync
/// frames are `resync`, everything else (application writes, barriers, control) `replication`.
pub fn repl_frame_class(frame: &[u8]) -> Class {
    use super::frame::FrameType;
    // Online verify is background work like a resync (DRBD paces both the same way); the
    // writer keeps frame order across classes, so a VerifyDigests still follows the writes
    // its read saw.
    const RESYNC: [u8; 8] = [
        FrameType::ResyncRequest as u8,
        FrameType::ResyncData as u8,
        FrameType::ResyncDone as u8,
        FrameType::ResyncZeroes as u8,
        FrameType::VerifyRequest as u8,
        FrameType::VerifyDigests as u8,
        FrameType::VerifyResult as u8,
        FrameType::VerifyDone as u8,
    ];
    match frame.get(6) {
        Some(t) if RESYNC.contains(t) => Class::Resync,
        _ => Class::Replication,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repl::frame::Frame;
    use crate::repl::wire::Encoder;
    use crate::shaping::Class;
    use bytes::{Bytes, BytesMut};

    #[test]
    fn replication_frames_are_classed_by_their_type_byte() {
        let enc = Encoder::new(7);
        let class = |f: Frame| {
            let mut b = BytesMut::new();
            enc.encode(&f, &mut b).unwrap();
            repl_frame_class(&b)
        };
        assert_eq!(class(Frame::Ping { seq: 1 }), Class::Replication);
        assert_eq!(class(Frame::Barrier { epoch: 1 }), Class::Replication);
        assert_eq!(class(Frame::ResyncDone), Class::Resync);
        assert_eq!(class(Frame::VerifyDone { id: 1 }), Class::Resync);
        assert_eq!(
            class(Frame::VerifyRequest {
                run: crate::repl::frame::VerifyRun::Sender,
                id: 1,
                offset: 0,
                len: 4096
            }),
            Class::Resync
        );
        assert_eq!(
            class(Frame::ResyncZeroes {
                offset: 0,
                len: 4096
            }),
            Class::Resync
        );
        assert_eq!(
            class(Frame::ResyncData {
                offset: 0,
                data: Bytes::from(vec![1u8; 4096])
            }),
            Class::Resync
        );
        assert_eq!(repl_frame_class(&[]), Class::Replication);
    }

    /// A socket that takes at most `max` bytes per call and records every call.
    struct Rec {
        out: Vec<u8>,
        vectored_calls: usize,
        largest: usize,
        max: usize,
    }

    impl tokio::io::AsyncWrite for Rec {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let me = self.get_mut();
            me.vectored_calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(me.max - n);
                me.out.extend_from_slice(&b[..take]);
                n += take;
            }
            me.largest = me.largest.max(n);
            std::task::Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// `n` distinct frame-like buffers of `len` bytes (type byte 0: replication class).
    fn frames(n: usize, len: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| {
                let mut b: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                b[6] = 0;
                Bytes::from(b)
            })
            .collect()
    }

    fn batch_of(fs: &[Bytes]) -> FrameBatch {
        let mut b = FrameBatch::default();
        for f in fs {
            b.push(f.clone());
        }
        b
    }

    async fn send(shaper: &Shaper, fs: &[Bytes], max: usize) -> Rec {
        let mut rec = Rec {
            out: Vec::new(),
            vectored_calls: 0,
            largest: 0,
            max,
        };
        let mut batch = batch_of(fs);
        let notify = tokio::sync::Notify::new();
        write_repl_frames(shaper, &mut rec, &mut batch, &notify, || false)
            .await
            .unwrap();
        assert_eq!(batch.remaining(), 0);
        assert_eq!(rec.out, fs.concat(), "the frames, in order, whole");
        rec
    }

    #[test]
    fn a_frame_batch_copies_small_frames_together_and_not_large_ones() {
        let (big, small) = (frames(3, 5000), frames(4, 40));
        let order = [
            &big[0], &small[0], &small[1], &big[1], &small[2], &big[2], &small[3],
        ];
        let all: Vec<Bytes> = order.iter().map(|f| (*f).clone()).collect();
        let mut b = batch_of(&all);
        assert_eq!(b.remaining(), 3 * 5000 + 4 * 40);
        assert_eq!(b.first(), &big[0][..]);
        let lens = |b: &FrameBatch, limit| {
            let mut io = [std::io::IoSlice::new(&[]); 16];
            let n = b.slices(&mut io, limit);
            io[..n].iter().map(|s| s.len()).collect::<Vec<_>>()
        };
        assert_eq!(lens(&b, usize::MAX), [5000, 80, 5000, 40, 5000, 40]);
        {
            let mut io = [std::io::IoSlice::new(&[]); 16];
            b.slices(&mut io, usize::MAX);
            assert_eq!(
                io[2].as_ptr(),
                big[1].as_ptr(),
                "a large frame itself, not a copy"
            );
        }
        // A grant's worth ends inside a slice.
        assert_eq!(lens(&b, 5050), [5000, 50]);
        b.advance(5050);
        assert_eq!(b.first(), &[&small[0][..], &small[1][..]].concat()[50..]);
        b.advance(30 + 5000 + 40 + 4990);
        assert_eq!(b.first(), &big[2][4990..]);
        b.advance(10 + 40);
        assert_eq!((b.remaining(), b.first()), (0, &[][..]));
        // Small frames alone: one slice.
        let mut b = batch_of(&small);
        assert_eq!(lens(&b, usize::MAX), [160]);
        b.clear();
        assert_eq!((b.remaining(), lens(&b, usize::MAX).len()), (0, 0));
    }

    #[tokio::test]
    async fn an_uncapped_batch_goes_out_in_one_vectored_write() {
        let shaper = Shaper::new(crate::shaping::ShapingConfig::default());
        let fs = frames(64, 4096 + 40);
        let rec = send(&shaper, &fs, usize::MAX).await;
        assert_eq!(rec.vectored_calls, 1, "one writev for 64 frames");
        // Thousands of header-only frames (acks, zero ranges) too: one write, as when they
        // were copied into one buffer, not one per few frames.
        let rec = send(&shaper, &frames(6000, 40), usize::MAX).await;
        assert_eq!(rec.vectored_calls, 1, "one writev for 6000 small frames");
        // A socket that takes part of it each time: the rest follows, nothing lost or doubled.
        let rec = send(&shaper, &fs, 1000).await;
        assert_eq!(rec.vectored_calls, fs.concat().len().div_ceil(1000));
    }

    #[tokio::test]
    async fn a_capped_batch_is_written_a_grant_at_a_time() {
        let cfg = crate::shaping::ShapingConfig {
            link_bytes_per_s: Some(1 << 30),
            burst_bytes: 64 * 1024,
            ..Default::default()
        };
        let grant = usize::try_from(cfg.grant_bytes_max()).unwrap();
        let shaper = Shaper::new(cfg);
        let fs = frames(20, 4096 + 40);
        let rec = send(&shaper, &fs, usize::MAX).await;
        assert!(rec.largest <= grant, "{} > grant {grant}", rec.largest);
        assert_eq!(rec.vectored_calls, fs.concat().len().div_ceil(grant));
    }
}
