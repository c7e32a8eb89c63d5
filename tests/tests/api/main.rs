//! The HTTP API against real Postgres and S3 servers started by the harness.

mod auth;
mod catalogue;
mod datasets;
mod files;
mod idempotency;
mod memory;
mod ops;
mod pipelines;
mod runs;
mod schema;
mod storage;
mod tasks;
mod users;
mod web;
mod webhooks;
