//! Test harness for coderun: real servers for the tests that cross crates (`servers`), a
//! coderun API per test on them (`app`), the benchmarks (`bench`), and the whole stack in one
//! process for the web app's end-to-end tests (`e2e_stack`), and the local S3 gateway that answers
//! browsers' CORS preflights for `s3s-fs` (`s3_gateway`).

pub mod app;
pub mod bench;
pub mod bench_floors;
pub mod bench_kube;
pub mod bench_login;
pub mod bench_memory;
pub mod bench_pipelines;
pub mod bench_runs;
pub mod bench_table;
pub mod demo;
pub mod e2e_stack;
pub mod https;
pub mod kube;
pub mod s3_gateway;
pub mod servers;
