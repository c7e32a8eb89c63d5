//! One module per resource, each with its own `router()`, merged in [`crate::app`].

pub mod auth;
pub mod catalogue;
pub mod files;
pub mod ops;
pub mod runs;
pub mod tasks;
pub mod users;
