//! A per-client rate limit (`--rate-limit N`): a token bucket per client address holding at most
//! N requests, refilled at N per second; past it, 429 with `Retry-After`. IPv6 clients are
//! counted by their /64, which one host usually owns whole. The open paths (probes, scrapes) are
//! not limited.
//!
//! Memory is bounded: past [`MAX_CLIENTS`] buckets, full ones (clients idle for a second or more)
//! are dropped, and if all are busy, every bucket is (limits then start afresh).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::OPEN_PATHS;
use super::ApiError;

/// Buckets kept before idle ones are dropped.
const MAX_CLIENTS: usize = 10_000;

/// The buckets of every client.
pub struct RateLimiter {
    /// Requests per second, and the most a bucket holds.
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(per_second: NonZeroU32) -> RateLimiter {
        RateLimiter { rate: f64::from(per_second.get()), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a request from `client`'s bucket at `now`; when empty, how long until it holds one.
    fn take(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        // A poisoned lock only means another request panicked mid-update: the map is still sound.
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            let rate = self.rate;
            buckets.retain(|_, bucket| bucket.refilled(now, rate).tokens < rate);
            if buckets.len() >= MAX_CLIENTS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: self.rate, at: now });
        *bucket = bucket.refilled(now, self.rate);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

impl Bucket {
    fn refilled(self, now: Instant, rate: f64) -> Bucket {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        Bucket { tokens: (self.tokens + elapsed * rate).min(rate), at: now }
    }
}

/// The client an address counts as: itself, or its /64 for IPv6.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// The middleware. Requests without a peer address (not served by `api::serve`) pass.
pub(super) async fn limit(State(limiter): State<Arc<RateLimiter>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    if let Some(peer) = peer.filter(|_| !OPEN_PATHS.contains(&request.uri().path())) {
        if let Err(wait) = limiter.take(client_key(peer), Instant::now()) {
            let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
            return ApiError::TooManyRequests { retry_after }.into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_bursts_of_the_rate_then_the_rate() {
        let limiter = RateLimiter::new(NonZeroU32::new(5).unwrap());
        let (ann, bob) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.take(ann, start), Ok(()));
        }
        let wait = limiter.take(ann, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-9, "{wait:?}");
        assert_eq!(limiter.take(bob, start), Ok(()), "one client's bucket is its own");
        assert_eq!(limiter.take(ann, start + Duration::from_millis(200)), Ok(()));
        assert!(limiter.take(ann, start + Duration::from_millis(200)).is_err());
        // Refills to the burst, no further.
        let later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(limiter.take(ann, later), Ok(()));
        }
        assert!(limiter.take(ann, later).is_err());
    }

    #[test]
    fn keeps_a_bounded_number_of_buckets() {
        let limiter = RateLimiter::new(NonZeroU32::new(1).unwrap());
        let now = Instant::now();
        for n in 0..(MAX_CLIENTS as u32 + 10) {
            let _ = limiter.take(IpAddr::V4(n.into()), now);
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_CLIENTS);
    }

    #[test]
    fn counts_ipv6_clients_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        assert_eq!(client_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
