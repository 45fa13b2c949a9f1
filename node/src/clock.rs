//! Wall-clock time in Unix milliseconds, advanced by tokio's clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the unit of every absolute expiry time.
pub type UnixMillis = u64;

/// A wall clock anchored once to the system time and advanced by tokio's monotonic clock.
///
/// Expiry times are absolute so that every replica agrees on them, which needs wall time.
/// Advancing it by the monotonic clock keeps it from jumping backwards when the system
/// clock is stepped, and lets tests drive expiry with tokio's paused clock
/// (`tokio::time::advance`) instead of sleeping.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor_unix_ms: UnixMillis,
    anchor: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            anchor_unix_ms: since_epoch.as_millis() as UnixMillis,
            anchor: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> UnixMillis {
        self.anchor_unix_ms + self.anchor.elapsed().as_millis() as UnixMillis
    }

    /// The absolute time `ttl` from now.
    pub fn after(&self, ttl: Duration) -> UnixMillis {
        self.now_ms().saturating_add(ttl.as_millis() as UnixMillis)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let clock = Clock::new();
        let start = clock.now_ms();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(clock.now_ms() - start, 5_000);
        assert_eq!(clock.after(Duration::from_millis(250)), start + 5_250);
    }
}
