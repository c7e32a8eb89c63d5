//! A client-side rate limit on Job creates: kube has none, and the API server is shared.
//!
//! Creates are spaced `1 / rate` apart (a token bucket holding one token): a burst of
//! submissions reaches the API server as a steady stream. The limit is per worker; the
//! fleet's rate is the sum over its replicas.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct RateLimiter {
    /// `None`: no limit.
    interval: Option<Duration>,
    /// When the next create may go.
    next: Mutex<Instant>,
}

impl RateLimiter {
    /// `per_second <= 0` (or not finite) disables the limit.
    pub fn new(per_second: f64) -> Self {
        let interval = (per_second.is_finite() && per_second > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / per_second));
        Self {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's turn. Turns are handed out in call order, and a caller that
    /// gives up (its future dropped) still used its turn — which only ever slows creates down.
    pub async fn until_ready(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn creates_are_spaced_by_the_rate() {
        let limiter = RateLimiter::new(2.0);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.until_ready().await;
        }
        // The first goes at once, the other four half a second apart.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_limiter_lets_the_next_create_go_at_once_but_saves_no_burst() {
        let limiter = RateLimiter::new(1.0);
        limiter.until_ready().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        limiter.until_ready().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.until_ready().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_each_get_their_own_turn() {
        let limiter = std::sync::Arc::new(RateLimiter::new(4.0));
        let start = Instant::now();
        let waits: Vec<_> = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.until_ready().await })
            })
            .collect();
        for wait in waits {
            wait.await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::from_millis(750));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_of_zero_means_no_limit() {
        let limiter = RateLimiter::new(0.0);
        let start = Instant::now();
        for _ in 0..100 {
            limiter.until_ready().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
