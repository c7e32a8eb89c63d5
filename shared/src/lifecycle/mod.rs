//! The life of a run on the API side, one module per step, so a reader can follow a run from
//! `POST /tasks/{id}/runs` to the stream without reading HTTP code:
//!
//! - [`access`] — may this actor read or change this task or run?
//! - [`submit`] — checks a submission, then: authorise, check room ([`room`]), snapshot the
//!   task's files ([`crate::snapshots`]), commit the run row ([`commit`]), enqueue it.
//! - [`retry`] — a new run of a finished run's snapshot, through the same room, commit and
//!   enqueue steps.
//! - [`stop`] — stop wins in every state: cancel a queued run, move a launched one to
//!   `stopping` and tell the workers.
//! - [`idempotency`] — a repeated `Idempotency-Key` answers the run the first request made.
//!
//! The order of the steps is the rule that keeps Postgres the source of truth: nothing is
//! stored before every check passed; the snapshot is stored before the row that references it
//! is committed; the row is committed before its stream entry is added, so a lost entry only
//! delays the run (the worker's reconciler re-enqueues queued runs). Every refusal is an
//! [`Error`] the HTTP edge turns into its status; nothing here knows HTTP.

pub mod access;
pub mod commit;
pub mod idempotency;
pub mod retry;
pub mod room;
pub mod stop;
pub mod submit;

use fred::prelude::Client;
use sqlx::PgPool;

use crate::config::Settings;
use crate::domain::Invalid;
use crate::queue::RunQueue;
use crate::redis::Keys;
use crate::runs::{self, Run};
use crate::snapshots;
use crate::storage::{self, Storage};

pub use access::{Access, Actor};
pub use submit::Submission;

/// What the lifecycle needs of the process: the stores and the settings. Borrowed, so the
/// API builds one per request from its state at no cost.
#[derive(Clone, Copy)]
pub struct Lifecycle<'a> {
    pub settings: &'a Settings,
    pub db: &'a PgPool,
    pub storage: &'a Storage,
    pub queue: &'a RunQueue,
    /// For announcing stop requests to the workers.
    pub redis: &'a Client,
    pub keys: &'a Keys,
}

/// A run a submit or retry answers with.
#[derive(Debug)]
pub struct Accepted {
    pub run: Run,
    /// The run was created by an earlier request with the same `Idempotency-Key`; this request
    /// created nothing.
    pub replayed: bool,
}

/// Why a lifecycle step refused, or failed. The messages are safe to show the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such task or run, or one the actor may not see (the two are indistinguishable).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The actor may read it but not change it.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A value of the request breaks a rule; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// The request cannot be carried out in the state things are in.
    #[error("{0}")]
    Conflict(String),
    /// The same `Idempotency-Key` came with a different request.
    #[error("this Idempotency-Key was already used for a different request; use a new key")]
    IdempotencyKeyReused,
    /// The owner's stored runs would exceed `runs.storage_quota_bytes`; retention frees room.
    #[error(
        "storage quota exceeded: your runs keep {used} bytes (logs, outputs and code \
         snapshots) of the {quota} you may store, and this task holds {adding} bytes; delete \
         old tasks, or wait until old runs are purged"
    )]
    QuotaExceeded {
        used: u64,
        quota: u64,
        adding: u64,
        /// Seconds until the retention sweep may have freed room.
        retry_after: u64,
    },
    /// A refusal of the runs table (busy task, too many active runs, not finished …).
    #[error(transparent)]
    Run(runs::Error),
    #[error("code snapshot: {0}")]
    Snapshot(#[from] snapshots::Error),
    #[error("the snapshot was swept {0} times between its upload and the run")]
    SnapshotSwept(usize),
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Db(sqlx::Error),
}

impl From<crate::datasets::Error> for Error {
    fn from(e: crate::datasets::Error) -> Self {
        use crate::datasets::Error as D;
        match e {
            D::NotFound(m) | D::Invalid(m) => Error::Invalid(m),
            D::Conflict(m) | D::TooLarge(m) | D::ChecksumMismatch(m) => Error::Conflict(m),
            D::Forbidden(m) => Error::Forbidden(m),
            D::Storage(e) => Error::Storage(e),
            D::Db(e) => Error::Db(e),
        }
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::Invalid(e.0)
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Db(e)
    }
}

impl From<runs::Error> for Error {
    fn from(e: runs::Error) -> Self {
        match e {
            runs::Error::Db(e) => Error::Db(e),
            e => Error::Run(e),
        }
    }
}
