//! Injectable time: monotonic instants, wall-clock time and sleeping.
//!
//! Retry, politeness and token-expiry code ask a [`Clock`] instead of calling
//! `tokio::time` or `SystemTime` directly, so tests can run hours of backoff in
//! microseconds with [`ManualClock`] (or with `tokio::time::pause()` and [`TokioClock`]).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use time::OffsetDateTime;

/// A source of time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic time since an arbitrary, fixed origin.
    fn elapsed(&self) -> Duration;
    /// Wall-clock time (for HTTP dates, token expiry and audit timestamps).
    fn now_utc(&self) -> OffsetDateTime;
    /// Completes after `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// The production clock: `tokio::time` (so `tokio::time::pause()` applies) and the system
/// wall clock.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }

    fn now_utc(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A test clock: `sleep` returns at once after advancing the clock, and every sleep is
/// recorded so tests can assert on the waits a component chose.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<ManualState>>,
}

struct ManualState {
    elapsed: Duration,
    wall0: OffsetDateTime,
    sleeps: Vec<Duration>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state();
        f.debug_struct("ManualClock")
            .field("elapsed", &st.elapsed)
            .field("sleeps", &st.sleeps.len())
            .finish()
    }
}

impl ManualClock {
    /// A clock whose wall time starts at `wall` and whose monotonic time starts at zero.
    pub fn new(wall: OffsetDateTime) -> Self {
        Self {
            inner: Arc::new(Mutex::new(ManualState {
                elapsed: Duration::ZERO,
                wall0: wall,
                sleeps: Vec::new(),
            })),
        }
    }

    /// A clock starting at the current system time.
    pub fn starting_now() -> Self {
        Self::new(OffsetDateTime::now_utc())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ManualState> {
        // A poisoned test clock is still a valid clock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves time forward without recording a sleep.
    pub fn advance(&self, d: Duration) {
        self.state().elapsed += d;
    }

    /// Every duration passed to [`Clock::sleep`], in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.state().sleeps.clone()
    }
}

impl Clock for ManualClock {
    fn elapsed(&self) -> Duration {
        self.state().elapsed
    }

    fn now_utc(&self) -> OffsetDateTime {
        let st = self.state();
        st.wall0 + st.elapsed
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        {
            let mut st = self.state();
            st.elapsed += d;
            st.sleeps.push(d);
        }
        Box::pin(async {
            // Let other tasks run, as a real sleep would.
            tokio::task::yield_now().await;
        })
    }
}
