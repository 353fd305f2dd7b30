//! The replication link's side of WAN shaping: which traffic class a replication frame is
//! charged to, and writing frames through the node's shaper. It lives in `repl` (not in
//! `shaping`) because it reads replication frame types: `shaping` knows no layer above it.

use crate::shaping::{Class, Shaper};

/// Write one encoded replication frame to the peer's socket through the daemon's `shaper`: in
/// pieces of at most one grant, each granted before it is written, so the socket is fed at the
/// shaped rate instead of in frame-sized bursts (the replication sender's only call into
/// shaping). Resync frames are scheduled with the replication flow (one ordered connection:
/// a resync frame at its head must not hold the writes behind it to resync's share) and
/// counted as resync; how much resync enters the connection is the adaptive resync
/// controller's decision ([`crate::shaping::resync`]). Once the link is closed (`closed()`,
/// or `closed_notify` fires) the rest goes unshaped: it is the final Disconnect.
pub async fn write_repl_frame<W: tokio::io::AsyncWrite + Unpin>(
    shaper: &Shaper,
    wr: &mut W,
    frame: &[u8],
    closed_notify: &tokio::sync::Notify,
    closed: impl Fn() -> bool,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let class = repl_frame_class(frame);
    // Counting only: one write (and one count) per frame.
    let piece = match shaper.is_capped() {
        true => usize::try_from(shaper.config().grant_bytes_max()).unwrap_or(usize::MAX),
        false => frame.len().max(1),
    };
    for chunk in frame.chunks(piece) {
        if !closed() {
            tokio::select! {
                _ = shaper.acquire_as(Class::Replication, class, chunk.len() as u64) => {}
                _ = closed_notify.notified() => {}
            }
        }
        wr.write_all(chunk).await?;
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
}
