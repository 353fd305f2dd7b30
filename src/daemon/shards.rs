//! The data path's threads ("shards"): each one a tokio current-thread runtime on a thread of
//! its own (`drl-shard-N`), beside the multi-thread runtime that runs the control socket,
//! jobs, streams and detection.
//!
//! A resource lives on one shard, its home: it is opened there (so its disks' io_uring reaper
//! tasks run there) and its tasks run there (replication service and session, bitmap
//! persistence, progress, the NBD export's accept loop). An NBD connection runs on the shard
//! of its export with the fewest of that export's connections, the home shard first: a
//! volume with one client is served by one thread from socket to disk to peer, without a
//! wake-up of another thread on the way; a multi-conn client's connections spread over the
//! shards. Resources are placed round-robin, so many volumes use many cores.
//!
//! Why: with one multi-thread runtime, the tasks of one busy volume (the connection, the
//! ring's reaper, the replication writer) were stolen back and forth between workers; each
//! steal is a futex wake-up and context switches (~8 µs each in this VM), which made a
//! replicated write cost about 1 µs more CPU on each daemon than with one worker
//! (`bench-results/nbd-20261207T0545Z-workers-loop.md`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::runtime::Handle;

/// The shard threads of a daemon (or of `drl serve-null`).
pub struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Shards {
    /// Start `n` shard threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Shards> {
        let n = n.max(1);
        let (mut handles, mut stops, mut threads) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            handles.push(rt.handle().clone());
            stops.push(tx);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("drl-shard-{i}"))
                    .spawn(move || {
                        // A current-thread runtime runs its tasks while a thread is in
                        // block_on: this one, until told to stop. Dropping the runtime then
                        // drops what is still on it (the daemon drained its resources first).
                        rt.block_on(async move {
                            let _ = rx.await;
                        });
                    })?,
            );
        }
        Ok(Shards {
            handles,
            next: AtomicUsize::new(0),
            stops: Mutex::new(stops),
            threads: Mutex::new(threads),
        })
    }

    /// The number of shard threads (1 or more).
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// The home for the next resource: round-robin over the shards.
    pub fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()
    }

    /// Every shard's runtime, shard `first` first (for an export homed there).
    pub fn from(&self, first: usize) -> Vec<Handle> {
        let n = self.handles.len();
        (0..n)
            .map(|i| self.handles[(first + i) % n].clone())
            .collect()
    }

    /// Tell every shard to stop: its runtime drops what is still on it (the daemon drained
    /// its resources first) and its thread ends.
    pub fn signal_stop(&self) {
        let mut stops = self.stops.lock().unwrap_or_else(|p| p.into_inner());
        for tx in stops.drain(..) {
            let _ = tx.send(());
        }
    }

    /// Wait for the shard threads told to stop (blocking: call it outside the runtimes).
    pub fn join(&self) {
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            if t.join().is_err() {
                tracing::error!("a shard thread panicked while stopping");
            }
        }
    }
}

/// Run `f` on the runtime of `home` and wait for it (from any runtime). A panic in `f` is
/// resumed here, as if `f` had been awaited in place.
pub async fn run_on<F>(home: &Handle, f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match home.spawn(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The shard stopped: only when the daemon exits, after its drain, while the control
        // runtime's last tasks are being dropped too. Wait to be dropped with them.
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_shard_thread_and_shards_stop() {
        let shards = Shards::start(2).unwrap();
        assert_eq!(shards.count(), 2);
        assert_eq!((shards.pick(), shards.pick(), shards.pick()), (0, 1, 0));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let names: Vec<String> = rt.block_on(async {
            let mut v = Vec::new();
            for h in shards.from(1) {
                v.push(
                    run_on(&h, async {
                        // Spawned from inside: lands on the same shard.
                        tokio::spawn(async {
                            std::thread::current().name().unwrap_or("").to_owned()
                        })
                        .await
                        .unwrap()
                    })
                    .await,
                );
            }
            v
        });
        assert_eq!(names, ["drl-shard-1", "drl-shard-0"]);
        shards.signal_stop();
        shards.join();
        let h = shards.from(0).remove(0);
        let gone = rt.block_on(async { h.spawn(async {}).await });
        assert!(gone.is_err(), "a stopped shard runs nothing");
    }

    #[test]
    fn a_panic_on_the_shard_reaches_the_caller() {
        let shards = Shards::start(1).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let h = shards.from(0).remove(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(run_on(&h, async { panic!("boom") }))
        }));
        assert!(r.is_err());
        // The shard survives its task's panic.
        assert_eq!(rt.block_on(run_on(&h, async { 7 })), 7);
        shards.signal_stop();
        shards.join();
    }
}
