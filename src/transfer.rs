//! Bounded concurrent work whose results are committed by one thread.
//!
//! Workers run on the async runtime, at most `jobs` at once; each sends its
//! outcome over a channel to the calling thread, which owns the catalog and
//! commits outcomes in batches (whatever arrived together, up to
//! [`COMMIT_BATCH`]). A worker's outcome is sent only after the bytes it
//! stands for are durable, so a commit never gets ahead of the data.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::progress::Progress;

pub const COMMIT_BATCH: usize = 256;

/// Runs `work` over `units` with `jobs` in flight; `commit` receives outcomes
/// in arrival order, batched. Stops early (dropping the rest) when `commit`
/// fails.
pub fn run_units<U, O, F, Fut>(
    runtime: &tokio::runtime::Handle,
    progress: &dyn Progress,
    units: Vec<U>,
    jobs: usize,
    work: F,
    mut commit: impl FnMut(Vec<O>) -> Result<()>,
) -> Result<()>
where
    U: Send + 'static,
    O: Send + 'static,
    F: Fn(U) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
{
    if units.is_empty() {
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel::<O>(COMMIT_BATCH * 2);
    let driver = runtime.spawn(async move {
        let mut outcomes = futures::stream::iter(units)
            .map(work)
            .buffer_unordered(jobs.max(1));
        while let Some(outcome) = outcomes.next().await {
            if tx.send(outcome).await.is_err() {
                break;
            }
        }
    });
    let mut failed = None;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < COMMIT_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        if let Err(e) = commit(batch) {
            failed = Some(e);
            break;
        }
        progress.advance(n);
    }
    drop(rx);
    if failed.is_some() {
        driver.abort();
    }
    let joined = runtime.block_on(driver);
    if let Some(e) = failed {
        return Err(e);
    }
    joined.map_err(|e| Error::Config(format!("a transfer worker stopped: {e}")))
}

/// Exponential backoff with jitter: attempt 1 waits about `base`, doubling up to `cap`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(cap);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
    capped.mul_f64(0.5 + jitter / 2.0)
}
