//! One integration-test binary: a module per command, helpers in `support`
//! (a throwaway PostgreSQL, an in-process S3 server, a fake Bot API).
// A test fails by panicking, and the benches print their figures: the
// manifest's no-panic and no-println lints are for the library and binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod support;

mod backfill;
mod bench_check;
mod bench_pull;
mod bench_push;
mod check;
mod cli;
mod conformance;
mod copy;
mod destinations;
mod fetch;
mod gallery;
mod plan;
mod pull;
mod push;
mod read_only;
mod snapshot;
mod store_errors;
mod verify;
