//! Waiting out outages: what the worker does when Postgres, Redis, S3 or the Kubernetes API
//! fails for a reason that goes away by itself (see `coderun_shared::transient`).
//!
//! - [`Resilience::retry`] retries one step (a fetch, an upload, a phase record, a Job create)
//!   with capped exponential backoff and jitter for at most `resilience.retry_max_seconds`;
//!   permanent failures return at once. A run waiting on a retry stays in its phase.
//! - One circuit breaker per dependency: `breaker_failures` consecutive transient failures open
//!   it; while any breaker is open the consumer reserves no permit and reads no entry. After
//!   `breaker_open_ms` (doubling per failed probe) the consumer probes the dependency once
//!   (half-open); an answer closes the breaker. Every transition is logged and counted in the
//!   metrics `worker_breaker_open{dependency}` and `worker_breaker_opened_total{dependency}`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use coderun_shared::config::ResilienceSettings;
use coderun_shared::transient::{self, Dependency};
use tokio::time::Instant;

/// The dependency whose transient failure is somewhere in `e`'s chain: the shared classifier
/// for Postgres, Redis and S3, plus the worker's own clients — HTTP (presigned S3 URLs) and
/// Kubernetes.
pub fn classify(e: &anyhow::Error) -> Option<Dependency> {
    if let Some(dep) = transient::classify(e) {
        return Some(dep);
    }
    e.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<reqwest::Error>() {
            return reqwest_is_transient(e).then_some(Dependency::S3);
        }
        if let Some(e) = cause.downcast_ref::<kube::Error>() {
            return kube_is_transient(e).then_some(Dependency::Kubernetes);
        }
        None
    })
}

/// A presigned download or upload that did not get through: no connection, a timeout, a body
/// cut off, or the server saying "later" (5xx, 429).
pub fn reqwest_is_transient(e: &reqwest::Error) -> bool {
    if let Some(status) = e.status() {
        return status_is_transient(status.as_u16());
    }
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode()
}

/// 5xx and 429 mean "later"; anything else the server says is an answer.
pub fn status_is_transient(code: u16) -> bool {
    code >= 500 || code == 429
}

/// A Kubernetes API call that did not get through or was answered "later": 5xx, 429, a
/// connection or TLS failure, a timeout. 4xx answers (invalid, forbidden, not found, conflict)
/// are decisions, not outages.
pub fn kube_is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status_is_transient(status.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Working; counts consecutive transient failures.
    Closed { failures: u32 },
    /// Failing: no new work until `until`, then one probe.
    Open { until: Instant, open_for: Duration },
    /// A probe is under way.
    HalfOpen { open_for: Duration },
}

impl BreakerState {
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half-open",
        }
    }
}

struct Breaker {
    state: BreakerState,
    opened_total: u64,
}

/// The worker's breakers and retry settings; shared by every loop of one worker.
pub struct Resilience {
    settings: ResilienceSettings,
    breakers: Mutex<BTreeMap<Dependency, Breaker>>,
    /// No new work before this: Redis came back, and every worker's heartbeat must first
    /// re-create the permits of the executions it runs (a restarted Redis may have lost them).
    settle_until: Mutex<Option<Instant>>,
    /// Redis's `run_id` at the last heartbeat: a new one means Redis restarted.
    redis_run_id: Mutex<Option<String>>,
}

impl Resilience {
    pub fn new(settings: ResilienceSettings) -> Self {
        let breakers = Dependency::ALL
            .into_iter()
            .map(|dep| {
                metrics::gauge!("worker_breaker_open", "dependency" => dep.as_str()).set(0.0);
                (
                    dep,
                    Breaker {
                        state: BreakerState::Closed { failures: 0 },
                        opened_total: 0,
                    },
                )
            })
            .collect();
        Self {
            settings,
            breakers: Mutex::new(breakers),
            settle_until: Mutex::new(None),
            redis_run_id: Mutex::new(None),
        }
    }

    /// Takes no new work for `wait` (see `settle_until`).
    pub fn settle(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut settle = self.settle_until.lock().expect("settle lock");
        *settle = Some(settle.map_or(until, |t| t.max(until)));
    }

    /// Whether new work waits for the permits to be rebuilt.
    pub fn settling(&self) -> bool {
        self.settle_until
            .lock()
            .expect("settle lock")
            .is_some_and(|t| Instant::now() < t)
    }

    /// Records Redis's `run_id`; true when it changed (Redis restarted since the last look).
    pub fn redis_restarted(&self, run_id: &str) -> bool {
        let mut last = self.redis_run_id.lock().expect("run id lock");
        let restarted = last.as_deref().is_some_and(|l| l != run_id);
        *last = Some(run_id.to_owned());
        restarted
    }

    pub fn settings(&self) -> &ResilienceSettings {
        &self.settings
    }

    /// A transient failure of `dep`: the breaker opens after `breaker_failures` in a row (or
    /// at once when a half-open probe fails, for twice as long).
    pub fn failure(&self, dep: Dependency, error: &dyn std::fmt::Display) {
        let mut breakers = self.breakers.lock().expect("breakers lock");
        let breaker = breakers
            .get_mut(&dep)
            .expect("every dependency has a breaker");
        let first = Duration::from_millis(self.settings.breaker_open_ms.max(1));
        let max = Duration::from_millis(self.settings.breaker_max_open_ms).max(first);
        let open_for = match breaker.state {
            BreakerState::Closed { failures } => {
                if failures + 1 < self.settings.breaker_failures.max(1) {
                    breaker.state = BreakerState::Closed {
                        failures: failures + 1,
                    };
                    return;
                }
                first
            }
            BreakerState::HalfOpen { open_for } => (open_for * 2).min(max),
            // Failures reported while open (retries under way elsewhere) change nothing.
            BreakerState::Open { .. } => return,
        };
        let reopened = matches!(breaker.state, BreakerState::HalfOpen { .. });
        breaker.state = BreakerState::Open {
            until: Instant::now() + open_for,
            open_for,
        };
        if !reopened {
            breaker.opened_total += 1;
            metrics::counter!("worker_breaker_opened_total", "dependency" => dep.as_str())
                .increment(1);
            metrics::gauge!("worker_breaker_open", "dependency" => dep.as_str()).set(1.0);
            tracing::warn!(dependency = %dep, %error, ?open_for,
                "circuit breaker opened: taking no new work until the dependency answers");
        } else {
            tracing::warn!(dependency = %dep, %error, ?open_for, "probe failed: breaker stays open");
        }
    }

    /// `dep` answered: a half-open (or open) breaker closes, a closed one forgets its failures.
    pub fn success(&self, dep: Dependency) {
        let mut breakers = self.breakers.lock().expect("breakers lock");
        let breaker = breakers
            .get_mut(&dep)
            .expect("every dependency has a breaker");
        if !matches!(breaker.state, BreakerState::Closed { .. }) {
            metrics::gauge!("worker_breaker_open", "dependency" => dep.as_str()).set(0.0);
            tracing::info!(dependency = %dep, "circuit breaker closed: the dependency answers again");
        }
        breaker.state = BreakerState::Closed { failures: 0 };
    }

    /// The dependencies whose breaker is not closed.
    pub fn open(&self) -> Vec<Dependency> {
        let breakers = self.breakers.lock().expect("breakers lock");
        breakers
            .iter()
            .filter(|(_, b)| !matches!(b.state, BreakerState::Closed { .. }))
            .map(|(dep, _)| *dep)
            .collect()
    }

    /// Open breakers whose wait is over: each moves to half-open and is returned for the
    /// caller to probe (then report [`success`](Self::success) or [`failure`](Self::failure)).
    pub fn due_probes(&self) -> Vec<Dependency> {
        let now = Instant::now();
        let mut breakers = self.breakers.lock().expect("breakers lock");
        let mut due = Vec::new();
        for (dep, breaker) in breakers.iter_mut() {
            if let BreakerState::Open { until, open_for } = breaker.state
                && now >= until
            {
                breaker.state = BreakerState::HalfOpen { open_for };
                due.push(*dep);
            }
        }
        due
    }

    /// Every breaker's state name and how often it opened (for logs, metrics and tests).
    pub fn snapshot(&self) -> BTreeMap<Dependency, (&'static str, u64)> {
        let breakers = self.breakers.lock().expect("breakers lock");
        breakers
            .iter()
            .map(|(dep, b)| (*dep, (b.state.name(), b.opened_total)))
            .collect()
    }

    /// The backoff between tries: exponential from `retry_initial_ms`, capped at
    /// `retry_max_delay_ms`, with jitter, for at most `retry_max_seconds` in all.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.retry_initial_ms.max(1)))
            .with_max_delay(Duration::from_millis(
                self.settings
                    .retry_max_delay_ms
                    .max(self.settings.retry_initial_ms.max(1)),
            ))
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(Duration::from_secs(self.settings.retry_max_seconds)))
    }

    /// Runs `step` until it succeeds, fails permanently, or transient failures have lasted
    /// `retry_max_seconds`. Each transient failure counts against its dependency's breaker;
    /// success after one closes it.
    pub async fn retry<T, F, Fut>(&self, what: &str, step: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let failed: Mutex<Option<Dependency>> = Mutex::new(None);
        let result = step
            .retry(self.backoff())
            .when(|e: &anyhow::Error| classify(e).is_some())
            .notify(|e: &anyhow::Error, wait: Duration| {
                if let Some(dep) = classify(e) {
                    self.failure(dep, e);
                    *failed.lock().expect("failed lock") = Some(dep);
                    tracing::warn!(step = what, dependency = %dep, error = %e, ?wait,
                        "transient failure; retrying");
                }
            })
            .await;
        let failed = *failed.lock().expect("failed lock");
        match (&result, failed) {
            (Ok(_), Some(dep)) => self.success(dep),
            (Err(e), _) => {
                if let Some(dep) = classify(e) {
                    self.failure(dep, e);
                }
            }
            _ => {}
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ResilienceSettings {
        ResilienceSettings {
            retry_initial_ms: 10,
            retry_max_delay_ms: 40,
            retry_max_seconds: 1,
            breaker_failures: 3,
            breaker_open_ms: 1000,
            breaker_max_open_ms: 4000,
        }
    }

    fn refused() -> anyhow::Error {
        anyhow::Error::new(sqlx::Error::PoolTimedOut).context("a step")
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_opens_after_consecutive_failures_probes_and_closes() {
        let r = Resilience::new(settings());
        let pg = Dependency::Postgres;
        r.failure(pg, &"down");
        r.failure(pg, &"down");
        assert!(r.open().is_empty(), "two failures leave it closed");
        r.failure(pg, &"down");
        assert_eq!(r.open(), [pg]);
        assert!(r.due_probes().is_empty(), "no probe before breaker_open_ms");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(r.due_probes(), [pg]);
        assert_eq!(r.snapshot()[&pg].0, "half-open");
        // A failed probe waits twice as long.
        r.failure(pg, &"still down");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(r.due_probes().is_empty());
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(r.due_probes(), [pg]);
        r.success(pg);
        assert!(r.open().is_empty());
        assert_eq!(r.snapshot()[&pg], ("closed", 1), "opened once, then closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count_of_consecutive_failures() {
        let r = Resilience::new(settings());
        let s3 = Dependency::S3;
        r.failure(s3, &"down");
        r.failure(s3, &"down");
        r.success(s3);
        r.failure(s3, &"down");
        r.failure(s3, &"down");
        assert!(r.open().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_the_step_succeeds() {
        let r = Resilience::new(settings());
        let tries = &Mutex::new(0);
        let value = r
            .retry("flaky", || async move {
                let mut n = tries.lock().unwrap();
                *n += 1;
                if *n < 5 { Err(refused()) } else { Ok(*n) }
            })
            .await
            .unwrap();
        assert_eq!(value, 5);
        assert!(r.open().is_empty(), "the success closed the breaker");
        assert_eq!(r.snapshot()[&Dependency::Postgres].1, 1, "it had opened");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let r = Resilience::new(settings());
        let tries = &Mutex::new(0);
        let result: anyhow::Result<()> = r
            .retry("broken", || async move {
                *tries.lock().unwrap() += 1;
                Err(anyhow::anyhow!("the bundle's checksum does not match"))
            })
            .await;
        assert!(result.is_err());
        assert_eq!(*tries.lock().unwrap(), 1);
        assert!(r.open().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_gives_up_after_retry_max_seconds() {
        let r = Resilience::new(settings());
        let started = Instant::now();
        let result: anyhow::Result<()> = r.retry("down", || async { Err(refused()) }).await;
        assert!(result.is_err());
        let took = started.elapsed();
        assert!(
            took <= Duration::from_millis(1100),
            "gave up after {took:?}"
        );
        assert_eq!(r.open(), [Dependency::Postgres]);
    }

    #[test]
    fn http_statuses_5xx_and_429_are_transient_others_are_answers() {
        for code in [500, 502, 503, 504, 429] {
            assert!(status_is_transient(code), "{code}");
        }
        for code in [400, 403, 404, 409, 422] {
            assert!(!status_is_transient(code), "{code}");
        }
    }

    #[test]
    fn kubernetes_refusals_are_permanent_and_server_errors_transient() {
        let status = |code: u16, reason: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                reason: reason.into(),
                ..Default::default()
            }))
        };
        assert!(kube_is_transient(&status(500, "InternalError")));
        assert!(kube_is_transient(&status(503, "ServiceUnavailable")));
        assert!(kube_is_transient(&status(429, "TooManyRequests")));
        assert!(!kube_is_transient(&status(422, "Invalid")));
        assert!(!kube_is_transient(&status(403, "Forbidden")));
        assert!(!kube_is_transient(&status(409, "AlreadyExists")));
        let wrapped = anyhow::Error::new(status(503, "ServiceUnavailable")).context("create");
        assert_eq!(classify(&wrapped), Some(Dependency::Kubernetes));
    }
}
