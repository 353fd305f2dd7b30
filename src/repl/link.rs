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
//! frames by [`REPL_WRITER_QUEUE_CONTROL_FRAMES_MAX`] on top of it (a peer that floods
//! requests or pings without reading cannot make this node buffer without limit). A peer that
//! stops reading is found by time ([`Link::stalled`], [`REPL_SEND_STALL_MS`] without a byte
//! taken from the socket while frames wait), never by how many frames wait.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Notify};

use crate::limits::{
    REPL_COMPRESS_BACKLOG_BYTES, REPL_COMPRESS_BACKLOG_MS, REPL_COMPRESS_HOLD_MS,
    REPL_SEND_STALL_MS, REPL_WRITER_QUEUE_CONTROL_FRAMES_MAX,
};
use crate::repl::epoch::EpochTracker;
use crate::repl::frame::{Frame, FrameType};
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
    /// Of `queued_frames`, the control frames (not application writes or barriers).
    queued_control: AtomicUsize,
    queued_bytes: AtomicU64,
    /// When the socket last took bytes, or the writer found nothing waiting (ms since `born`).
    progress_ms: AtomicU64,
    /// When the socket writer last found nothing waiting (ms since `born`).
    drained_ms: AtomicU64,
    /// When `backlogged` last saw a backlog (u64::MAX: never).
    backlog_seen_ms: AtomicU64,
    born: std::time::Instant,
    /// Bytes handed to the socket writer in this session.
    pub(crate) sent_bytes: AtomicU64,
    /// Pull-ahead: application writes are not shipped (their bits stay set).
    pub(crate) ahead: AtomicBool,
    /// Every write received on this link is on the disk (the session's receiver is idle);
    /// kept by the session loop, read by online verify (see [`crate::repl::verify::provide`]).
    pub(crate) rx_idle: AtomicBool,
    /// The last state-change confirmation asked for ([`Link::push_state_change`]) and the
    /// last the peer answered; `state_notify` is signalled on each answer.
    state_asked: AtomicU64,
    state_answered: AtomicU64,
    state_notify: Notify,
    /// Consistency groups: volumes 0..this are replicated on this link (the handshake's, and
    /// those announced since with [`Link::announce_volume`]); a write to a later volume only
    /// marks its bitmap (the volume's full sync covers it). Changed under the tracker's lock.
    volumes: AtomicUsize,
}

/// A Ping whose seq has this bit set asks the peer to confirm the StateChange queued before
/// it: the peer applies frames in order and echoes the seq in its PingAck, so that PingAck
/// means the StateChange took effect there. Keepalive pings count up from 1 and never reach
/// it; a peer needs nothing new to answer (it echoes any seq).
pub const STATE_PING_BIT: u64 = 1 << 63;

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
            queued_control: AtomicUsize::new(0),
            queued_bytes: AtomicU64::new(0),
            progress_ms: AtomicU64::new(0),
            drained_ms: AtomicU64::new(0),
            backlog_seen_ms: AtomicU64::new(u64::MAX),
            born: std::time::Instant::now(),
            sent_bytes: AtomicU64::new(0),
            ahead: AtomicBool::new(false),
            rx_idle: AtomicBool::new(true),
            state_asked: AtomicU64::new(0),
            state_answered: AtomicU64::new(0),
            state_notify: Notify::new(),
            volumes: AtomicUsize::new(usize::MAX),
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
        self.state_notify.notify_waiters();
    }

    /// Queue a StateChange and, behind it, a Ping asking the peer to confirm it
    /// ([`STATE_PING_BIT`]). False if the link could not take them.
    pub fn push_state_change(&self, change: &Frame) -> bool {
        debug_assert!(matches!(change, Frame::StateChange { .. }));
        let n = self.state_asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.push(change)
            && self.push(&Frame::Ping {
                seq: STATE_PING_BIT | n,
            })
    }

    /// A PingAck arrived: if it confirms a state change, record it. True if it did.
    pub fn on_ping_ack(&self, seq: u64) -> bool {
        if seq & STATE_PING_BIT == 0 {
            return false;
        }
        self.state_answered
            .fetch_max(seq & !STATE_PING_BIT, Ordering::AcqRel);
        self.state_notify.notify_waiters();
        true
    }

    /// Whether the peer confirmed every state change queued so far (now, without waiting).
    pub fn state_confirmed_now(&self) -> bool {
        self.state_answered.load(Ordering::Acquire) >= self.state_asked.load(Ordering::Acquire)
    }

    /// Wait until the peer confirmed every state change queued so far, the link closed (the
    /// next handshake carries the new state), or `timeout` passed. True if confirmed.
    pub async fn state_confirmed(&self, timeout: std::time::Duration) -> bool {
        let want = self.state_asked.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state_answered.load(Ordering::Acquire) >= want {
                return true;
            }
            if self.is_closed() {
                return false;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Close the open epoch and queue its Barrier while the tracker is locked, as the
    /// application writers queue their writes: a Barrier queued after the lock is released could
    /// follow a write of the next epoch from another thread. Nothing open: nothing sent.
    pub fn close_epoch(&self) {
        let mut t = self.tracker();
        if let Some(e) = t.close_epoch() {
            self.push(&Frame::Barrier { epoch: e });
        }
    }

    /// The volumes this link replicates (the session sets it from the handshake before the
    /// link is published to the writers).
    pub fn set_volumes(&self, n: usize) {
        self.volumes.store(n, Ordering::Release);
    }

    /// Whether writes to volume `vol` are shipped on this link. Read under the tracker's
    /// lock, where [`Link::announce_volume`] changes it.
    pub fn ships_volume(&self, vol: u16) -> bool {
        usize::from(vol) < self.volumes.load(Ordering::Acquire)
    }

    /// Consistency groups (issue 15): the barrier of a volume added at run time. Under the
    /// tracker's lock, as the writers queue theirs: close the open epoch (its Barrier), queue
    /// the `VolumeAdd`, and ship the volume's writes from now on, so every write of the new
    /// volume on the wire follows its announcement. False if the link is closed.
    pub fn announce_volume(&self, vol: u16, size_bytes: u64) -> bool {
        let mut t = self.tracker();
        if let Some(e) = t.close_epoch() {
            self.push(&Frame::Barrier { epoch: e });
        }
        let ok = self.push(&Frame::VolumeAdd { vol, size_bytes });
        self.volumes
            .fetch_max(usize::from(vol) + 1, Ordering::AcqRel);
        drop(t);
        ok
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
        if !is_data {
            if self.queued_control.load(Ordering::Relaxed) >= REPL_WRITER_QUEUE_CONTROL_FRAMES_MAX {
                self.close(format!(
                    "more than {REPL_WRITER_QUEUE_CONTROL_FRAMES_MAX} control frames queued for the peer: it asks without reading"
                ));
                return false;
            }
            if let Some(ms) = self.stalled(self.ms()) {
                self.close(format!(
                    "the peer has read nothing for {ms} ms while frames wait for it"
                ));
                return false;
            }
        }
        let mut out = BytesMut::new();
        if let Err(e) = self.enc.encode_with(frame, self.backlogged(), &mut out) {
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
    pub fn push_data(&self, vol: u16, at: (u64, u64, u64), fua: bool, data: &[u8]) -> bool {
        if self.is_closed() {
            return false;
        }
        let mut out = BytesMut::new();
        if let Err(e) = self
            .enc
            .encode_data(vol, at, fua, data, self.backlogged(), &mut out)
        {
            self.close(format!("cannot encode a Data frame: {e}"));
            return false;
        }
        self.queue(out)
    }

    /// Whether data payloads are worth compressing now: only while the socket is the
    /// bottleneck, i.e. frames wait for the writer (a slow, congested or shaped link) and have
    /// not stopped waiting for [`REPL_COMPRESS_BACKLOG_MS`] (a burst of 1 MiB writes queues
    /// megabytes for a moment even on a fast link). While the writer keeps up, zstd saves no
    /// time and spends CPU the writes need (measured over loopback: 40 % of the Primary's CPU
    /// under 1 MiB sequential writes).
    ///
    /// Once seen, a backlog keeps compression on for [`REPL_COMPRESS_HOLD_MS`]: compression
    /// itself drains the queue, and dropping it at once made a link that is the bottleneck
    /// only without compression (500 Mbit/s, compressible data) flip back to raw frames and
    /// run at the link rate (0.99x of it instead of 1.24x).
    fn backlogged(&self) -> bool {
        let now = self.ms();
        if self.queued_bytes() >= REPL_COMPRESS_BACKLOG_BYTES
            && now.saturating_sub(self.drained_ms.load(Ordering::Relaxed))
                >= REPL_COMPRESS_BACKLOG_MS
        {
            self.backlog_seen_ms.store(now, Ordering::Relaxed);
            return true;
        }
        let seen = self.backlog_seen_ms.load(Ordering::Relaxed);
        seen != u64::MAX && now.saturating_sub(seen) < REPL_COMPRESS_HOLD_MS
    }

    fn ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// The socket writer found the queue empty: the link keeps up (for now).
    pub(crate) fn drained(&self) {
        let now = self.ms();
        self.drained_ms.store(now, Ordering::Relaxed);
        self.progress_ms.store(now, Ordering::Relaxed);
    }

    /// The socket took bytes: the peer reads.
    pub(crate) fn progressed(&self) {
        self.progress_ms.store(self.ms(), Ordering::Relaxed);
    }

    /// How long (ms) frames have waited without the socket taking a byte, if that is at least
    /// [`REPL_SEND_STALL_MS`] at `now_ms` (ms since the link was made): the peer stopped
    /// reading. Time, not the queue's length, decides: a hiccup of the network queues many
    /// frames quickly and must not drop the session.
    pub(crate) fn stalled(&self, now_ms: u64) -> Option<u64> {
        if self.queued_frames.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let idle = now_ms.saturating_sub(self.progress_ms.load(Ordering::Relaxed));
        (idle >= REPL_SEND_STALL_MS).then_some(idle)
    }

    /// [`Self::stalled`] now.
    pub(crate) fn stalled_now(&self) -> Option<u64> {
        self.stalled(self.ms())
    }

    fn queue(&self, out: BytesMut) -> bool {
        let n = out.len() as u64;
        if self.queued_frames.fetch_add(1, Ordering::Relaxed) == 0 {
            // The stall clock starts when something waits (an idle link is not stalled).
            self.progress_ms.store(self.ms(), Ordering::Relaxed);
        }
        if !is_data_frame(&out) {
            self.queued_control.fetch_add(1, Ordering::Relaxed);
        }
        self.queued_bytes.fetch_add(n, Ordering::Relaxed);
        if self.tx.send(out.freeze()).is_err() {
            self.close("socket writer stopped");
            return false;
        }
        true
    }

    /// The writer took `frame` off the queue.
    pub(crate) fn dequeued(&self, frame: &[u8]) {
        let n = frame.len() as u64;
        if !is_data_frame(frame) {
            self.queued_control.fetch_sub(1, Ordering::Relaxed);
        }
        self.queued_frames.fetch_sub(1, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
        self.sent_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes waiting for the socket.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}

/// An encoded application write or barrier (bounded by the epoch buffer), from its type byte
/// (header byte 6, as [`crate::repl::shaped::repl_frame_class`] reads it).
fn is_data_frame(frame: &[u8]) -> bool {
    const DATA: [u8; 4] = [
        FrameType::Data as u8,
        FrameType::Trim as u8,
        FrameType::Zeroes as u8,
        FrameType::Barrier as u8,
    ];
    frame.get(6).is_some_and(|t| DATA.contains(t))
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
            link.dequeued(&b);
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
    fn data_is_compressed_only_while_frames_wait_for_the_socket() {
        use crate::limits::{REPL_COMPRESS_BACKLOG_BYTES, REPL_COMPRESS_BACKLOG_MS};
        use crate::repl::wire::flags;
        let mut enc = Encoder::new(1);
        enc.set_zstd(true);
        let (link, mut rx) = Link::new(enc, EpochTracker::default());
        let zeros = vec![0u8; 4096];
        let zstd_flag = |b: &Bytes| b[7] & flags::ZSTD != 0;
        // The writer keeps up: raw, no attempt.
        assert!(link.push_data(0, (1, 1, 0), false, &zeros));
        let b = rx.try_recv().unwrap();
        link.dequeued(&b);
        assert!(!zstd_flag(&b));
        // Frames pile up and the writer has not caught up for a while (a slow link):
        // compressed once the backlog passes the bound.
        std::thread::sleep(std::time::Duration::from_millis(
            REPL_COMPRESS_BACKLOG_MS + 5,
        ));
        let mut seq = 2;
        while link.queued_bytes() < REPL_COMPRESS_BACKLOG_BYTES {
            assert!(link.push_data(0, (seq, 1, 0), false, &zeros));
            seq += 1;
        }
        assert!(link.push_data(0, (seq, 1, 0), false, &zeros));
        let frames: Vec<Bytes> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(!zstd_flag(&frames[0]));
        assert!(zstd_flag(frames.last().unwrap()));
        assert!(frames.last().unwrap().len() < 200);
        // The queue drains (compression helped): still compressed within the hold time.
        for f in &frames {
            link.dequeued(f);
        }
        link.drained();
        assert!(link.push_data(0, (seq + 1, 1, 0), false, &zeros));
        assert!(
            zstd_flag(&rx.try_recv().unwrap()),
            "compression dropped at once"
        );
    }

    #[tokio::test]
    async fn a_state_change_is_confirmed_only_by_the_ping_queued_behind_it() {
        use drbd_compat::{DiskState, Role};
        use std::time::Duration;
        let rid = resource_id("r0");
        let (link, mut rx) = Link::new(Encoder::new(rid), EpochTracker::default());
        // Nothing asked: confirmed at once.
        assert!(link.state_confirmed(Duration::ZERO).await);
        let change = Frame::StateChange {
            role: Role::Secondary,
            disk: DiskState::UpToDate,
            ahead: false,
        };
        assert!(link.push_state_change(&change));
        assert!(link.push_state_change(&change));
        // The StateChange, then the Ping that asks for its confirmation, in that order.
        let mut dec = Decoder::new(rid);
        let mut buf = BytesMut::new();
        while let Ok(b) = rx.try_recv() {
            buf.extend_from_slice(&b);
        }
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0], change);
        assert_eq!(
            frames[1],
            Frame::Ping {
                seq: STATE_PING_BIT | 1
            }
        );
        assert_eq!(
            frames[3],
            Frame::Ping {
                seq: STATE_PING_BIT | 2
            }
        );
        // A keepalive answer or the first confirmation do not confirm the second change.
        assert!(!link.on_ping_ack(7));
        assert!(link.on_ping_ack(STATE_PING_BIT | 1));
        assert!(!link.state_confirmed(Duration::from_millis(20)).await);
        // A waiter is woken by the answer.
        let l = std::sync::Arc::new(link);
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.state_confirmed(Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(l.on_ping_ack(STATE_PING_BIT | 2));
        assert!(waiter.await.unwrap());
        // A closed link ends the wait unconfirmed (the next handshake carries the state).
        assert!(l.push_state_change(&change));
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.state_confirmed(Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        l.close("test");
        assert!(!waiter.await.unwrap());
    }

    /// Issue 12: a short network hiccup under 4 KiB writes queues thousands of frames at
    /// once; that alone must not drop the session (it did at 1024 frames, about 0.2 s).
    #[test]
    fn a_hiccup_that_queues_many_frames_does_not_drop_the_link() {
        let (link, _rx) = Link::new(Encoder::new(1), EpochTracker::default());
        for e in 0..5000 {
            assert!(link.push(&Frame::Barrier { epoch: e + 1 }));
        }
        assert!(link.push(&Frame::Ping { seq: 1 }));
        assert!(link.push(&Frame::PingAck { seq: 1 }));
        assert!(!link.is_closed());
        assert_eq!(link.stalled(link.ms()), None);
    }

    /// Stalled is a matter of time without progress while frames wait.
    #[test]
    fn a_peer_that_reads_nothing_for_the_stall_time_is_stalled() {
        let (link, mut rx) = Link::new(Encoder::new(1), EpochTracker::default());
        let t = link.ms();
        assert_eq!(
            link.stalled(t + 10 * REPL_SEND_STALL_MS),
            None,
            "nothing waits"
        );
        assert!(link.push(&Frame::Barrier { epoch: 1 }));
        assert_eq!(link.stalled(link.ms() + REPL_SEND_STALL_MS / 2), None);
        assert!(link
            .stalled(link.ms() + REPL_SEND_STALL_MS + 1)
            .is_some_and(|ms| ms > REPL_SEND_STALL_MS));
        let b = rx.try_recv().unwrap();
        link.dequeued(&b);
        assert_eq!(link.stalled(link.ms() + 10 * REPL_SEND_STALL_MS), None);
    }

    /// A peer that floods requests without reading is bounded by memory, not left to grow.
    #[test]
    fn control_frames_queued_are_bounded() {
        let (link, _rx) = Link::new(Encoder::new(1), EpochTracker::default());
        for i in 0..REPL_WRITER_QUEUE_CONTROL_FRAMES_MAX {
            assert!(link.push(&Frame::PingAck { seq: i as u64 }));
        }
        assert!(!link.push(&Frame::PingAck { seq: 0 }));
        assert!(link.is_closed());
    }
}
