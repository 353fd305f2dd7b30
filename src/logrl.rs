//! Rate limiting for log lines that a peer or a client can cause (Firecracker style).
//!
//! A misbehaving client must not be able to flood the log: every line it can trigger goes
//! through a [`LogLimiter`], which lets at most `per_second` lines through in each one-second
//! window and counts the rest. The first line let through after a suppressed stretch carries
//! the number of lines that were dropped (`suppressed = N`), so nothing disappears silently.
//!
//! Use [`warn_rl!`](crate::warn_rl) / [`info_rl!`](crate::info_rl) for the common case:
//!
//! ```
//! use drl::logrl::LogLimiter;
//! let rl = LogLimiter::new(10);
//! drl::warn_rl!(rl, peer = "10.0.0.1:4711", "bad magic from client");
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of one counting window.
const WINDOW: Duration = Duration::from_secs(1);

/// Lets at most `per_second` log lines through per one-second window; counts the others.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter letting `per_second` lines through per second (0 suppresses everything).
    pub fn new(per_second: u32) -> Self {
        LogLimiter {
            per_second,
            state: Mutex::new(Window {
                start: None,
                passed: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` if a line may be logged now, where `n` lines were suppressed since the last
    /// line that was let through; `None` if this line must be dropped.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`check`](Self::check) with an explicit clock, for tests.
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while counting; the counters
        // are still usable.
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let expired = match w.start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= WINDOW,
        };
        if expired {
            w.start = Some(now);
            w.passed = 0;
        }
        if w.passed < self.per_second {
            w.passed += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed = w.suppressed.saturating_add(1);
            None
        }
    }

    /// Lines dropped since the last line that was let through.
    pub fn suppressed(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .suppressed
    }
}

/// `tracing::warn!` through a [`LogLimiter`]; adds a `suppressed` field.
#[macro_export]
macro_rules! warn_rl {
    ($rl:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $rl.check() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    };
}

/// `tracing::info!` through a [`LogLimiter`]; adds a `suppressed` field.
#[macro_export]
macro_rules! info_rl {
    ($rl:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $rl.check() {
            ::tracing::info!(suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_through_up_to_the_rate_then_counts() {
        let rl = LogLimiter::new(3);
        let t0 = Instant::now();
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0 + Duration::from_millis(500)), Some(0));
        assert_eq!(rl.check_at(t0 + Duration::from_millis(600)), None);
        assert_eq!(rl.check_at(t0 + Duration::from_millis(900)), None);
        assert_eq!(rl.suppressed(), 2);
        // New window: the first line reports what was dropped, then the count restarts.
        assert_eq!(rl.check_at(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(rl.check_at(t0 + Duration::from_millis(1001)), Some(0));
        assert_eq!(rl.suppressed(), 0);
    }

    #[test]
    fn zero_rate_suppresses_everything() {
        let rl = LogLimiter::new(0);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(rl.check_at(t0), None);
        }
        assert_eq!(rl.suppressed(), 5);
    }

    #[test]
    fn macro_compiles_and_counts() {
        let rl = LogLimiter::new(1);
        for i in 0..4 {
            crate::warn_rl!(rl, line = i, "test line");
        }
        assert_eq!(rl.suppressed(), 3);
    }
}
