//! The coderun HTTP API. One axum [`Router`](axum::Router) ([`app::router`]) holds every
//! handler; `main.rs` serves it under `lambda_http` when the Lambda runtime API is present and
//! as a plain HTTP server otherwise. Handlers keep no state between requests.

pub mod app;
pub mod cli;
pub mod client_address;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod state;
pub mod web;
