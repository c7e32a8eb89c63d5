//! Which failures of coderun's dependencies go away by themselves: a connection refused or
//! reset, a timeout, a server restarting or still loading its data, a 5xx or a 429. Such a
//! failure is waited out and retried — the API answers 503 with `Retry-After`, the worker keeps
//! the run queued or waiting in its phase — and never charged to a run or answered as a bug.
//! Anything else (a refused request, a constraint, bad data) is permanent.
//!
//! One classifier per dependency, plus [`classify`], which walks an `anyhow` chain and says
//! which dependency failed transiently, if any.

use std::error::Error as StdError;
use std::fmt;

use crate::storage;

/// A server coderun stands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dependency {
    Postgres,
    Redis,
    S3,
    Kubernetes,
}

impl Dependency {
    pub const ALL: [Dependency; 4] = [
        Dependency::Postgres,
        Dependency::Redis,
        Dependency::S3,
        Dependency::Kubernetes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres",
            Dependency::Redis => "redis",
            Dependency::S3 => "s3",
            Dependency::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Postgres SQLSTATEs that mean "the server is going away, restarting or full": class 08
/// (connection exception), 57P01–57P03 (admin shutdown, crash shutdown, cannot connect now),
/// 53300 (too many connections), and the two a retried transaction cures (40001, 40P01).
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
        )
}

/// A Postgres failure that goes away by itself (the server restarting, the pool unable to
/// connect for now).
pub fn sqlx_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_sqlstate(&code)),
        _ => false,
    }
}

/// Redis answers that mean "ask again shortly": a server loading its data after a restart, a
/// replica not yet writable, a busy script, a cluster reshuffling.
fn transient_redis_reply(details: &str) -> bool {
    let word = details.split_whitespace().next().unwrap_or("");
    matches!(
        word,
        "LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "BUSY" | "CLUSTERDOWN" | "NOREPLICAS"
    )
}

/// A Redis failure that goes away by itself. `NOGROUP` also counts: a restarted Redis that lost
/// its last second may have lost the consumer group, which the worker creates again.
pub fn redis_is_transient(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    match e.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Cluster => true,
        _ => transient_redis_reply(e.details()) || e.details().starts_with("NOGROUP"),
    }
}

/// An S3 failure that goes away by itself: see [`storage::Error::is_transient`].
pub fn s3_is_transient(e: &storage::Error) -> bool {
    e.is_transient()
}

/// What the S3 SDK said, as [`storage`] keeps it (the error's `Debug` form, which names the
/// SDK's error variant and the service's error code): transient when the request never got an
/// answer (dispatch failure, timeout, a response cut off) or the service said "later" (5xx,
/// `SlowDown`, `ServiceUnavailable`, `InternalError`, `RequestTimeout`, 429).
pub fn s3_debug_is_transient(debug: &str) -> bool {
    const TRANSIENT_VARIANTS: [&str; 3] = ["DispatchFailure", "TimeoutError", "ResponseError"];
    const TRANSIENT_CODES: [&str; 6] = [
        "\"SlowDown\"",
        "\"ServiceUnavailable\"",
        "\"InternalError\"",
        "\"RequestTimeout\"",
        "\"RequestTimeTooSkewed\"",
        "\"TooManyRequests\"",
    ];
    let head = debug.trim_start();
    TRANSIENT_VARIANTS.iter().any(|v| head.starts_with(v))
        || TRANSIENT_CODES.iter().any(|c| debug.contains(c))
        || [
            "StatusCode(500)",
            "StatusCode(502)",
            "StatusCode(503)",
            "StatusCode(504)",
            "StatusCode(429)",
        ]
        .iter()
        .any(|s| debug.contains(s))
        || debug.contains("connection refused")
        || debug.contains("Connection refused")
        || debug.contains("connection reset")
        || debug.contains("Connection reset")
}

/// The dependency that failed transiently somewhere in `e`'s chain, if any. Errors of the
/// executors' own clients (Kubernetes, plain HTTP) are classified by the worker, which knows
/// those crates.
pub fn classify(e: &anyhow::Error) -> Option<Dependency> {
    for cause in e.chain() {
        if let Some(dep) = classify_one(cause) {
            return Some(dep);
        }
    }
    None
}

fn classify_one(cause: &(dyn StdError + 'static)) -> Option<Dependency> {
    if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
        return sqlx_is_transient(e).then_some(Dependency::Postgres);
    }
    if let Some(e) = cause.downcast_ref::<fred::error::Error>() {
        return redis_is_transient(e).then_some(Dependency::Redis);
    }
    if let Some(e) = cause.downcast_ref::<storage::Error>() {
        return s3_is_transient(e).then_some(Dependency::S3);
    }
    // Its variants are transparent: the wrapped error never shows up as a cause of its own.
    if let Some(e) = cause.downcast_ref::<crate::snapshots::Error>() {
        return match e {
            crate::snapshots::Error::Db(e) => sqlx_is_transient(e).then_some(Dependency::Postgres),
            crate::snapshots::Error::Storage(e) => s3_is_transient(e).then_some(Dependency::S3),
            _ => None,
        };
    }
    None
}

/// Whether `e` failed for a reason that goes away by itself.
pub fn is_transient(e: &anyhow::Error) -> bool {
    classify(e).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error as RedisError, ErrorKind};

    #[test]
    fn postgres_restarting_or_unreachable_is_transient() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(sqlx_is_transient(&sqlx::Error::Io(refused)));
        assert!(sqlx_is_transient(&sqlx::Error::PoolTimedOut));
        assert!(sqlx_is_transient(&sqlx::Error::PoolClosed));
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "53300", "40001",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn postgres_refusing_the_request_is_permanent() {
        assert!(!sqlx_is_transient(&sqlx::Error::RowNotFound));
        assert!(!sqlx_is_transient(&sqlx::Error::ColumnNotFound("x".into())));
        // unique_violation, foreign_key_violation, syntax_error, undefined_table
        for code in ["23505", "23503", "42601", "42P01", "22P02"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn redis_down_loading_or_readonly_is_transient() {
        assert!(redis_is_transient(&RedisError::new(
            ErrorKind::IO,
            "connection reset"
        )));
        assert!(redis_is_transient(&RedisError::new(
            ErrorKind::Timeout,
            "timed out"
        )));
        assert!(redis_is_transient(&RedisError::new(
            ErrorKind::Canceled,
            "canceled"
        )));
        assert!(redis_is_transient(&RedisError::new(
            ErrorKind::Unknown,
            "LOADING Redis is loading the dataset in memory"
        )));
        assert!(redis_is_transient(&RedisError::new(
            ErrorKind::Unknown,
            "READONLY You can't write against a read only replica."
        )));
        assert!(redis_is_transient(&RedisError::new(
            ErrorKind::Unknown,
            "NOGROUP No such key 'x' or consumer group 'workers'"
        )));
    }

    #[test]
    fn redis_refusing_the_command_is_permanent() {
        assert!(!redis_is_transient(&RedisError::new(
            ErrorKind::InvalidArgument,
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        )));
        assert!(!redis_is_transient(&RedisError::new(
            ErrorKind::Auth,
            "WRONGPASS"
        )));
        assert!(!redis_is_transient(&RedisError::new(
            ErrorKind::Unknown,
            "ERR unknown command 'FOO'"
        )));
    }

    #[test]
    fn s3_unanswered_or_busy_is_transient() {
        assert!(s3_debug_is_transient(
            "DispatchFailure(DispatchFailure { source: ConnectorError { kind: Io, source: hyper_util::client::legacy::Error(Connect, ConnectError(\"tcp connect error\", Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" })) } })"
        ));
        assert!(s3_debug_is_transient(
            "TimeoutError(TimeoutError { source: MaybeTimeoutError { kind: Operation, duration: 30s } })"
        ));
        assert!(s3_debug_is_transient(
            "ResponseError(ResponseError { source: … })"
        ));
        assert!(s3_debug_is_transient(
            "ServiceError(ServiceError { source: Unhandled(Unhandled { source: ErrorMetadata { code: Some(\"SlowDown\"), message: None } }), raw: Response { status: StatusCode(503) } })"
        ));
    }

    #[test]
    fn s3_refusing_the_request_is_permanent() {
        assert!(!s3_debug_is_transient(
            "ServiceError(ServiceError { source: NoSuchKey(NoSuchKey { message: None }), raw: Response { status: StatusCode(404) } })"
        ));
        assert!(!s3_debug_is_transient(
            "ServiceError(ServiceError { source: Unhandled(Unhandled { source: ErrorMetadata { code: Some(\"AccessDenied\") } }), raw: Response { status: StatusCode(403) } })"
        ));
        assert!(!s3_debug_is_transient(
            "ConstructionFailure(ConstructionFailure { source: … })"
        ));
    }

    #[test]
    fn a_chain_names_the_dependency_that_failed() {
        let e = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("recording a phase");
        assert_eq!(classify(&e), Some(Dependency::Postgres));
        let e = anyhow::Error::new(RedisError::new(ErrorKind::IO, "reset")).context("acking");
        assert_eq!(classify(&e), Some(Dependency::Redis));
        let e = anyhow::Error::new(storage::Error::Unavailable("DispatchFailure(…)".into()))
            .context("fetching the code");
        assert_eq!(classify(&e), Some(Dependency::S3));
        let e = anyhow::Error::new(sqlx::Error::RowNotFound).context("reading a run");
        assert_eq!(classify(&e), None);
        assert!(!is_transient(&anyhow::anyhow!(
            "the bundle's checksum does not match"
        )));
    }
}
