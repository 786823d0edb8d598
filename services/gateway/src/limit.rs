//! Rate limits: a token bucket per key (governor's keyed limiter), one limiter per client
//! address and one per token subject. A call over a limit is refused at once with how long
//! to wait, never queued.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;

/// Calls per second and burst per key.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Config {
    /// `None` when `per_second` is 0 (no limit); a burst of 0 means "the rate".
    pub fn new(per_second: u32, burst: u32) -> Option<Config> {
        let per_second = NonZeroU32::new(per_second)?;
        Some(Config {
            per_second,
            burst: NonZeroU32::new(burst).unwrap_or(per_second),
        })
    }
}

/// A call over the limit: wait this many whole seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    pub retry_after_secs: u64,
}

/// One token bucket per key.
#[derive(Clone)]
pub struct Limiter<K: Hash + Eq + Clone> {
    limiter: Arc<DefaultKeyedRateLimiter<K>>,
    pub config: Config,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(config: Config) -> Self {
        let quota = Quota::per_second(config.per_second).allow_burst(config.burst);
        Self {
            limiter: Arc::new(RateLimiter::keyed(quota)),
            config,
        }
    }

    /// Takes one call from `key`'s bucket.
    pub fn check(&self, key: &K) -> Result<(), OverLimit> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            OverLimit {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }

    /// Forgets keys whose buckets are full again, so a stream of one-off addresses or
    /// subjects cannot grow the map for ever.
    pub fn shrink(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_with_a_wait() {
        let limiter = Limiter::new(Config::new(1, 3).expect("limit"));
        for _ in 0..3 {
            assert!(limiter.check(&"a").is_ok());
        }
        assert_eq!(
            limiter.check(&"a"),
            Err(OverLimit {
                retry_after_secs: 1
            })
        );
        // Keys do not share buckets.
        assert!(limiter.check(&"b").is_ok());
        assert!(Config::new(0, 10).is_none());
    }
}
