//! Connection attempts per source address: a token bucket each, time passed
//! in. A flood from one address is refused at accept, before any TLS or
//! password work, while the others keep connecting.
//!
//! IPv6 sources are counted per /64 (one site or host usually gets a /64,
//! so hopping addresses inside it gains nothing), and the table is bounded:
//! past [`MAX_SOURCES`] the least recently seen source is forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sustained connection attempts per second from one source. A site with
/// many bridges behind one NAT reconnecting after an outage gets through in
/// seconds; a flood is held to this rate.
pub const CONNECTS_PER_SECOND: f64 = 10.0;
/// Attempts one source may make at once before the rate applies.
pub const BURST: f64 = 50.0;
/// Sources remembered at most (about 64 bytes each).
pub const MAX_SOURCES: usize = 100_000;
/// Seconds' worth of attempts a source may make at once when the rate is
/// configured (`mqtt_connects_per_second`): the default's ratio of
/// [`BURST`] to [`CONNECTS_PER_SECOND`].
pub const BURST_SECONDS: f64 = BURST / CONNECTS_PER_SECOND;

/// The per-source limit of connection attempts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnectRate {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for ConnectRate {
    fn default() -> Self {
        ConnectRate {
            per_second: CONNECTS_PER_SECOND,
            burst: BURST,
        }
    }
}

impl ConnectRate {
    /// `per_second` sustained, [`BURST_SECONDS`] of them at once; `None`
    /// unless `per_second` is a positive number.
    pub fn per_second(per_second: f64) -> Option<Self> {
        (per_second.is_finite() && per_second > 0.0).then(|| ConnectRate {
            per_second,
            burst: (per_second * BURST_SECONDS).max(1.0),
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-source token buckets.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(CONNECTS_PER_SECOND, BURST, MAX_SOURCES)
    }
}

impl From<ConnectRate> for RateLimit {
    fn from(rate: ConnectRate) -> Self {
        RateLimit::new(rate.per_second, rate.burst, MAX_SOURCES)
    }
}

impl RateLimit {
    pub fn new(per_second: f64, burst: f64, max_sources: usize) -> Self {
        RateLimit {
            per_second,
            burst,
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
        }
    }

    /// May `source` open a connection at `now`? Takes a token if so.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let key = group(source);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_sources {
            self.evict_oldest();
        }
        let (per_second, burst) = (self.per_second, self.burst);
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_second).min(burst);
        b.at = now.max(b.at);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Sources remembered now.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }

    /// Forget sources whose bucket is full again (idle at least
    /// `burst / per_second`), so the table shrinks when a flood ends.
    pub fn forget_idle(&mut self, now: Instant) {
        let full_after = Duration::from_secs_f64(self.burst / self.per_second);
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.at) < full_after);
    }

    fn evict_oldest(&mut self) {
        if let Some(key) = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.at)
            .map(|(k, _)| *k)
        {
            self.buckets.remove(&key);
        }
    }
}

/// The address counted: itself for IPv4, its /64 for IPv6.
fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_passes_then_the_rate_applies_and_others_are_untouched() {
        let mut r = RateLimit::new(10.0, 5.0, 100);
        let t0 = Instant::now();
        let a = ip("203.0.113.7");
        assert_eq!((0..5).filter(|_| r.allow(a, t0)).count(), 5);
        assert!(!r.allow(a, t0), "the burst is spent");
        assert!(
            r.allow(ip("203.0.113.8"), t0),
            "another source is not affected"
        );
        assert!(!r.allow(a, t0 + Duration::from_millis(50)), "half a token");
        assert!(
            r.allow(a, t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!r.allow(a, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn ipv6_addresses_in_one_64_share_a_bucket() {
        let mut r = RateLimit::new(1.0, 2.0, 100);
        let t0 = Instant::now();
        assert!(r.allow(ip("2001:db8:1:2::1"), t0));
        assert!(r.allow(ip("2001:db8:1:2::ffff"), t0));
        assert!(
            !r.allow(ip("2001:db8:1:2:dead::1"), t0),
            "hopping inside the /64 gains nothing"
        );
        assert!(
            r.allow(ip("2001:db8:1:3::1"), t0),
            "another /64 is another source"
        );
    }

    #[test]
    fn the_table_stays_bounded_and_idle_sources_are_forgotten() {
        let mut r = RateLimit::new(10.0, 5.0, 3);
        let t0 = Instant::now();
        for i in 0..10u8 {
            r.allow(
                IpAddr::from([10, 0, 0, i]),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert_eq!(r.sources(), 3);
        r.forget_idle(t0 + Duration::from_secs(10));
        assert_eq!(r.sources(), 0);
    }
}
