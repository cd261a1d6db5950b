//! Per-key rate limits (token buckets via `governor`): image submissions and speech
//! requests per user, login attempts per username and per client address, registrations
//! per client address.
//!
//! Users are a bounded set (the users table), so their buckets are keyed by id. Usernames
//! and addresses come from anyone: a limiter keyed by them would hold one bucket per
//! string or address an attacker makes up. Those limiters key by a hash of the key (with
//! a random per-process key, so collisions cannot be aimed) into `KEY_SLOTS` slots, which
//! bounds their memory whatever the keys; two keys sharing a slot share a bucket, which
//! only ever makes a limit stricter.

use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, Ipv6Addr};
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

/// Buckets of a limiter keyed by a hash: about 3 MiB at most, and with a few thousand
/// keys active in a minute (login bursts refill in well under that), one in tens shares a
/// bucket with another.
pub const KEY_SLOTS: u64 = 1 << 16;

/// A rate limit keyed by anything, with at most `KEY_SLOTS` buckets.
pub struct HashedRateLimit {
    limit: RateLimit<u32>,
    hasher: RandomState,
}

impl HashedRateLimit {
    /// `None` when `per_minute` is 0 (no limit).
    pub fn new(per_minute: u32, burst: u32) -> Option<HashedRateLimit> {
        Some(HashedRateLimit {
            limit: RateLimit::new(per_minute, burst)?,
            hasher: RandomState::new(),
        })
    }

    /// Takes a token from `key`'s bucket, or says how long until one is there.
    pub fn check<Q: Hash + ?Sized>(&self, key: &Q) -> Result<RateInfo, Limited> {
        let slot = (self.hasher.hash_one(key) % KEY_SLOTS) as u32;
        self.limit.check(&slot)
    }

    pub fn forget_idle(&self) {
        self.limit.forget_idle();
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.limit.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key a client address is limited by: IPv4 as it is, IPv6 by its /64 network, which
/// one subscriber usually holds whole (limiting by single IPv6 addresses would let them
/// pick a fresh one for every attempt).
pub fn client_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Every rate limit of the gateway, shared by all HTTP workers.
pub struct Limits {
    pub submit: Option<RateLimit<UserId>>,
    pub speech: Option<RateLimit<UserId>>,
    /// Keyed by the lowercased username (usernames are case-insensitive).
    pub login_name: Option<HashedRateLimit>,
    /// Keyed by `client_key` of the address, as is `register_addr`.
    pub login_addr: Option<HashedRateLimit>,
    pub register_addr: Option<HashedRateLimit>,
    pub trust_forwarded_for: bool,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Limits {
        Limits {
            submit: RateLimit::new(settings.submit_per_minute, settings.submit_burst),
            speech: RateLimit::new(settings.speech_per_minute, settings.speech_burst),
            login_name: HashedRateLimit::new(settings.login_per_minute, settings.login_burst),
            login_addr: HashedRateLimit::new(settings.login_per_minute, settings.login_burst),
            register_addr: HashedRateLimit::new(
                settings.register_per_minute,
                settings.register_burst,
            ),
            trust_forwarded_for: settings.trust_forwarded_for,
        }
    }

    pub fn forget_idle(&self) {
        self.submit.iter().for_each(RateLimit::forget_idle);
        self.speech.iter().for_each(RateLimit::forget_idle);
        self.login_name
            .iter()
            .for_each(HashedRateLimit::forget_idle);
        self.login_addr
            .iter()
            .for_each(HashedRateLimit::forget_idle);
        self.register_addr
            .iter()
            .for_each(HashedRateLimit::forget_idle);
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
    fn a_hashed_limiter_holds_a_bounded_number_of_buckets_whatever_the_keys() {
        let limit = HashedRateLimit::new(1, 1).unwrap();
        for i in 0..(3 * KEY_SLOTS) {
            let _ = limit.check(&i);
        }
        let long = "x".repeat(48 * 1024);
        for i in 0..100 {
            let _ = limit.check(&format!("{long}{i}"));
        }
        assert!(limit.len() as u64 <= KEY_SLOTS, "{} buckets", limit.len());
        let fresh = HashedRateLimit::new(1, 1).unwrap();
        assert!(fresh.check("alice").is_ok());
        assert!(fresh.check("alice").is_err());
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64_network() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn zero_per_minute_means_no_limit() {
        assert!(RateLimit::<i64>::new(0, 5).is_none());
    }
}
