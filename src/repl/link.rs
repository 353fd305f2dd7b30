//! The sending side of one live connection: the ordered frame queue to the socket writer and
//! the protocol-A epoch tracker (the bounded send buffer, `max-buffer`).
//!
//! Every frame a session sends goes through [`Link::push`], in one order: application writes
//! (Data/Trim/Zeroes with their sequence numbers, Barriers), resync answers and control
//! frames share the queue, so a resync answer read after an application write is always on
//! the wire after that write. Data frames are numbered and queued under the tracker lock, so
//! sequence order is wire order.
//!
//! Bounds: application data is bounded by the tracker ([`EpochTracker::has_room`]); other
//! frames by [`REPL_WRITER_QUEUE_FRAMES_MAX`] on top of it (a peer that stops reading while it
//! asks for resync data or pings gets disconnected, it cannot make this node buffer without
//! limit).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Notify};

use crate::limits::REPL_WRITER_QUEUE_FRAMES_MAX;
use crate::repl::epoch::EpochTracker;
use crate::repl::frame::Frame;
use crate::repl::wire::Encoder;

/// The sending half of a session.
pub struct Link {
    enc: Encoder,
    tx: mpsc::UnboundedSender<Bytes>,
    pub(crate) tracker: Mutex<EpochTracker>,
    /// Signalled when an ack frees buffer room, or when the link closes.
    pub(crate) room: Notify,
    /// Signalled when the link closes.
    pub(crate) closed_notify: Notify,
    closed: AtomicBool,
    reason: Mutex<Option<String>>,
    queued_frames: AtomicUsize,
    queued_bytes: AtomicU64,
    /// Bytes handed to the socket writer in this session.
    pub(crate) sent_bytes: AtomicU64,
    /// Pull-ahead: application writes are not shipped (their bits stay set).
    pub(crate) ahead: AtomicBool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("closed", &self.is_closed())
            .field("queued_bytes", &self.queued_bytes())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link and the receiving end its socket writer drains.
    pub fn new(enc: Encoder, tracker: EpochTracker) -> (Link, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Link {
            enc,
            tx,
            tracker: Mutex::new(tracker),
            room: Notify::new(),
            closed_notify: Notify::new(),
            closed: AtomicBool::new(false),
            reason: Mutex::new(None),
            queued_frames: AtomicUsize::new(0),
            queued_bytes: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            ahead: AtomicBool::new(false),
        };
        (link, rx)
    }

    pub fn tracker(&self) -> std::sync::MutexGuard<'_, EpochTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Close the link (first reason wins) and wake everyone waiting on it.
    pub fn close(&self, reason: impl Into<String>) {
        {
            let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        self.closed.store(true, Ordering::Release);
        self.room.notify_waiters();
        self.closed_notify.notify_waiters();
    }

    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Encode `frame` and queue it for the socket. False (and the link closed) if it cannot
    /// be encoded, the link is closed, or control frames exceed their bound.
    pub fn push(&self, frame: &Frame) -> bool {
        if self.is_closed() {
            return false;
        }
        let is_data = matches!(
            frame,
            Frame::Data { .. } | Frame::Trim(_) | Frame::Zeroes(_) | Frame::Barrier { .. }
        );
        if !is_data && self.queued_frames.load(Ordering::Relaxed) >= REPL_WRITER_QUEUE_FRAMES_MAX {
            self.close(format!(
                "more than {REPL_WRITER_QUEUE_FRAMES_MAX} frames queued for the peer: it stopped reading"
            ));
            return false;
        }
        let mut out = BytesMut::new();
        if let Err(e) = self.enc.encode(frame, &mut out) {
            self.close(format!(
                "cannot encode a {} frame: {e}",
                frame.frame_type().name()
            ));
            return false;
        }
        self.queue(out)
    }

    /// [`Link::push`] of a Data frame encoded straight from the writer's buffer
    /// ([`Encoder::encode_data`]): no copy of the payload before the frame's own.
    pub fn push_data(&self, at: (u64, u64, u64), fua: bool, data: &[u8]) -> bool {
        if self.is_closed() {
            return false;
        }
        let mut out = BytesMut::new();
        if let Err(e) = self.enc.encode_data(at, fua, data, &mut out) {
            self.close(format!("cannot encode a Data frame: {e}"));
            return false;
        }
        self.queue(out)
    }

    fn queue(&self, out: BytesMut) -> bool {
        let n = out.len() as u64;
        self.queued_frames.fetch_add(1, Ordering::Relaxed);
        self.queued_bytes.fetch_add(n, Ordering::Relaxed);
        if self.tx.send(out.freeze()).is_err() {
            self.close("socket writer stopped");
            return false;
        }
        true
    }

    /// The writer took a frame of `n` bytes off the queue.
    pub(crate) fn dequeued(&self, n: u64) {
        self.queued_frames.fetch_sub(1, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
        self.sent_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes waiting for the socket.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repl::wire::{resource_id, Decoder};

    #[test]
    fn frames_leave_in_push_order_and_close_stops_pushing() {
        let rid = resource_id("r0");
        let (link, mut rx) = Link::new(Encoder::new(rid), EpochTracker::default());
        assert!(link.push(&Frame::Ping { seq: 1 }));
        assert!(link.push(&Frame::Barrier { epoch: 1 }));
        let mut dec = Decoder::new(rid);
        let mut buf = BytesMut::new();
        for _ in 0..2 {
            let b = rx.try_recv().unwrap();
            link.dequeued(b.len() as u64);
            buf.extend_from_slice(&b);
        }
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::Ping { seq: 1 }));
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Frame::Barrier { epoch: 1 })
        );
        assert_eq!(link.queued_bytes(), 0);
        link.close("test");
        link.close("second reason is ignored");
        assert!(!link.push(&Frame::Ping { seq: 2 }));
        assert_eq!(link.reason().as_deref(), Some("test"));
    }

    #[test]
    fn a_peer_that_stops_reading_is_disconnected() {
        let (link, _rx) = Link::new(Encoder::new(1), EpochTracker::default());
        for i in 0..REPL_WRITER_QUEUE_FRAMES_MAX {
            assert!(link.push(&Frame::PingAck { seq: i as u64 }));
        }
        assert!(!link.push(&Frame::PingAck { seq: 0 }));
        assert!(link.is_closed());
    }
}
