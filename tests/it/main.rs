//! One integration-test binary: a module per command, helpers in `support`
//! (a throwaway PostgreSQL, an in-process S3 server, a fake Bot API).

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
mod pull;
mod push;
mod snapshot;
mod store_errors;
