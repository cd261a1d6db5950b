//! Per-key rate limits (token buckets via `governor`): image submissions and speech
//! requests per user, login attempts per username and per client address.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::domain::UserId;
use crate::settings::LimitSettings;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// What a client is told about its bucket, in `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// The bucket's size.
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// A refused request: when to retry, and the bucket as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
    pub info: RateInfo,
}

/// One token bucket per key: `burst` tokens, refilled at `per_minute`.
pub struct RateLimit<K: Hash + Eq + Clone> {
    limiter: Keyed<K>,
    burst: u32,
    /// Time to refill one token.
    per_token: Duration,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> RateLimit<K> {
    /// `None` when `per_minute` is 0 (no limit).
    pub fn new(per_minute: u32, burst: u32) -> Option<RateLimit<K>> {
        let per_minute = NonZeroU32::new(per_minute)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        Some(RateLimit {
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            burst: burst.get(),
            per_token: quota.replenish_interval(),
            clock: DefaultClock::default(),
        })
    }

    /// Takes a token for `key`, or says how long until one is there.
    pub fn check(&self, key: &K) -> Result<RateInfo, Limited> {
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(self.info(remaining, Duration::ZERO))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(Limited {
                    retry_after_secs: ceil_secs(wait).max(1),
                    info: self.info(0, wait),
                })
            }
        }
    }

    fn info(&self, remaining: u32, wait: Duration) -> RateInfo {
        let missing = self.burst.saturating_sub(remaining);
        let refill = self.per_token.saturating_mul(missing);
        RateInfo {
            limit: self.burst,
            remaining,
            reset_secs: ceil_secs(wait + refill),
        }
    }

    /// Forgets keys whose buckets are full again, so memory follows active clients.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Every rate limit of the gateway, shared by all HTTP workers.
pub struct Limits {
    pub submit: Option<RateLimit<UserId>>,
    pub speech: Option<RateLimit<UserId>>,
    pub login_name: Option<RateLimit<String>>,
    pub login_addr: Option<RateLimit<IpAddr>>,
    pub trust_forwarded_for: bool,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Limits {
        Limits {
            submit: RateLimit::new(settings.submit_per_minute, settings.submit_burst),
            speech: RateLimit::new(settings.speech_per_minute, settings.speech_burst),
            login_name: RateLimit::new(settings.login_per_minute, settings.login_burst),
            login_addr: RateLimit::new(settings.login_per_minute, settings.login_burst),
            trust_forwarded_for: settings.trust_forwarded_for,
        }
    }

    pub fn forget_idle(&self) {
        self.submit.iter().for_each(RateLimit::forget_idle);
        self.speech.iter().for_each(RateLimit::forget_idle);
        self.login_name.iter().for_each(RateLimit::forget_idle);
        self.login_addr.iter().for_each(RateLimit::forget_idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_a_wait() {
        let limit = RateLimit::<i64>::new(60, 3).unwrap();
        assert_eq!(limit.check(&1).unwrap().remaining, 2);
        assert_eq!(limit.check(&1).unwrap().remaining, 1);
        let last = limit.check(&1).unwrap();
        assert_eq!((last.limit, last.remaining), (3, 0));
        assert_eq!(last.reset_secs, 3);
        let refused = limit.check(&1).unwrap_err();
        assert_eq!(refused.retry_after_secs, 1);
        assert_eq!(refused.info.remaining, 0);
        // Other keys have their own bucket.
        assert!(limit.check(&2).is_ok());
    }

    #[test]
    fn zero_per_minute_means_no_limit() {
        assert!(RateLimit::<i64>::new(0, 5).is_none());
    }
}
