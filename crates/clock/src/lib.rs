//! Wall-clock time as an injected dependency.
//!
//! Business rules in Palisade are measured in days (90-day refresh-token inactivity, 24-hour
//! alert response, 5-day endpoint failure, daily digests). Tests must move time rather than
//! wait for it, so services read time only through a [`Clock`]. Timers that merely pace loops
//! (poll intervals, backoff sleeps) still use tokio's time.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use chrono::{DateTime, TimeZone, Utc};

/// Milliseconds since the Unix epoch, the format stored in every table.
pub type Millis = i64;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_millis(&self) -> Millis;

    fn now(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.now_millis())
            .single()
            .unwrap_or_else(Utc::now)
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// The real time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> Millis {
        Utc::now().timestamp_millis()
    }
}

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Real time plus an offset that tests advance; it keeps ticking, so timeouts still work.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_millis: AtomicI64,
}

impl OffsetClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn advance(&self, by: std::time::Duration) {
        let millis = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_millis.fetch_add(millis, Ordering::SeqCst);
    }

    pub fn offset_millis(&self) -> Millis {
        self.offset_millis.load(Ordering::SeqCst)
    }
}

impl Clock for OffsetClock {
    fn now_millis(&self) -> Millis {
        Utc::now().timestamp_millis() + self.offset_millis.load(Ordering::SeqCst)
    }
}

/// A clock that stands still until told to move: for exact schedule assertions.
#[derive(Debug)]
pub struct ManualClock {
    now_millis: AtomicI64,
}

impl ManualClock {
    pub fn at(millis: Millis) -> Arc<Self> {
        Arc::new(Self {
            now_millis: AtomicI64::new(millis),
        })
    }

    pub fn advance(&self, by: std::time::Duration) {
        let millis = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now_millis.fetch_add(millis, Ordering::SeqCst);
    }

    pub fn set(&self, millis: Millis) {
        self.now_millis.store(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> Millis {
        self.now_millis.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn offset_clock_moves_forward_by_the_advance() {
        let clock = OffsetClock::new();
        let before = clock.now_millis();
        clock.advance(Duration::from_secs(90 * 24 * 3600));
        assert!(clock.now_millis() - before >= 90 * 24 * 3600 * 1000);
    }

    #[test]
    fn manual_clock_stands_still() {
        let clock = ManualClock::at(1_000);
        assert_eq!(clock.now_millis(), 1_000);
        clock.advance(Duration::from_millis(500));
        assert_eq!(clock.now_millis(), 1_500);
        assert_eq!(clock.now().timestamp_millis(), 1_500);
    }
}
