//! The Primary's conflicting-write wait (DRBD's `complete_conflicting_writes`).
//!
//! Two writes to the same block in flight at once may complete on the local disk in either
//! order (io_uring runs some inline and punts others to its workers). The peer applies
//! overlapping writes in the stream's order (`receiver.rs` holds a later one until the earlier
//! is on its disk), so if the Primary's disk took them the other way round the two disks
//! would differ in that block while both report in sync, and no bit would ever resync it
//! (`tests/repl_overlap.rs` found a block or two in 20,000 writes at QD 32 on 32 blocks).
//!
//! So a replicated write first enters its volume's [`WritingRanges`]: it waits while a write
//! overlapping its range is between entering and its local completion, then holds its own
//! range until its disk write completed. The later of two overlapping writes therefore takes
//! its sequence number after the earlier one and reaches the disk after it: the disk and the
//! stream agree. Writes that do not overlap are not held. The set holds one span per write in
//! flight on the volume, so it is bounded by what the front ends admit (the NBD in-flight
//! limits and `PayloadBudget`).

use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Default)]
struct Spans {
    next_id: u64,
    /// `(id, start, end)` of every write in flight, half-open byte ranges.
    spans: Vec<(u64, u64, u64)>,
    /// A writer waits: the next release wakes the waiters.
    contended: bool,
}

/// The byte ranges of one volume's writes in flight on the Primary (see the module doc).
#[derive(Default)]
pub struct WritingRanges {
    inner: Mutex<Spans>,
    released: Notify,
}

/// A write's hold on its range, released when dropped (after its disk write completed).
#[must_use = "the range is held until this is dropped"]
pub struct Writing<'a> {
    set: &'a WritingRanges,
    id: u64,
}

impl WritingRanges {
    /// Wait until no write in flight overlaps `offset..offset+len` (a zero length counts as
    /// one byte), then hold that range.
    pub async fn enter(&self, offset: u64, len: u64) -> Writing<'_> {
        let end = offset.saturating_add(len.max(1));
        loop {
            let notified = {
                let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if !s.spans.iter().any(|&(_, a, b)| a < end && offset < b) {
                    let id = s.next_id;
                    s.next_id += 1;
                    s.spans.push((id, offset, end));
                    return Writing { set: self, id };
                }
                s.contended = true;
                // Created under the lock: a release after it (which takes the lock first)
                // wakes it, even before it is polled.
                self.released.notified()
            };
            notified.await;
        }
    }

    /// Writes holding a range now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spans
            .len()
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let wake = {
            let mut s = self.set.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = s.spans.iter().position(|&(id, ..)| id == self.id) {
                s.spans.swap_remove(i);
            }
            std::mem::take(&mut s.contended)
        };
        if wake {
            self.set.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn an_overlapping_write_waits_for_the_one_in_flight_and_others_do_not() {
        let r = Arc::new(WritingRanges::default());
        let first = r.enter(4096, 4096).await;
        // Not overlapping (adjacent on both sides): entered at once.
        let before = r.enter(0, 4096).await;
        let after = r.enter(8192, 4096).await;
        assert_eq!(r.held(), 3);
        drop((before, after));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let r2 = r.clone();
        let waiter = tokio::spawn(async move {
            let _w = r2.enter(6144, 8192).await;
            tx.send(()).unwrap();
        });
        // The overlapping writer must still be waiting while `first` is held.
        tokio::task::yield_now().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut rx)
                .await
                .is_err(),
            "a write overlapping one in flight entered before it completed"
        );
        drop(first);
        rx.await.expect("the waiter entered after the release");
        waiter.await.unwrap();
        assert_eq!(r.held(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_writers_never_hold_the_same_block_together() {
        let r = Arc::new(WritingRanges::default());
        let holders = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16u64)
            .map(|i| {
                let (r, holders) = (r.clone(), holders.clone());
                tokio::spawn(async move {
                    for j in 0..200u64 {
                        // Two blocks, overlapping everyone's: only one holder at a time.
                        let _w = r.enter(((i + j) % 2) * 2048, 4096).await;
                        let n = holders.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert_eq!(n, 0, "two overlapping writes held their ranges together");
                        tokio::task::yield_now().await;
                        holders.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(r.held(), 0);
    }
}
