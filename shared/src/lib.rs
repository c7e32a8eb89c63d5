//! What both coderun binaries share: configuration, domain types, Postgres and S3 access,
//! authentication. It knows nothing of HTTP, Lambda or Kubernetes.

pub mod archive;
pub mod auth;
pub mod bundle;
pub mod config;
pub mod datasets;
pub mod db;
pub mod domain;
pub mod files;
pub mod lifecycle;
pub mod livelog;
pub mod logfile;
pub mod objects;
pub mod pipelines;
pub mod queue;
pub mod redis;
pub mod runs;
pub mod semaphore;
pub mod snapshots;
pub mod storage;
pub mod sweep;
pub mod tasks;
pub mod telemetry;
pub mod throttle;
pub mod transient;
pub mod users;
pub mod webhooks;
