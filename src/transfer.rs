//! Bounded concurrent work whose results are committed by one thread.
//!
//! Workers run on the async runtime, at most `jobs` at once; each sends its
//! outcome over a channel to the calling thread, which owns the catalog and
//! commits outcomes in batches (whatever arrived together, up to
//! [`COMMIT_BATCH`]). A worker's outcome is sent only after the bytes it
//! stands for are durable, so a commit never gets ahead of the data.
//!
//! Units are drawn on the calling thread too, only as outcomes come back:
//! a source that reads the catalog between commits holds a window of units,
//! never all of them.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::progress::Progress;

pub const COMMIT_BATCH: usize = 256;

/// Runs `work` over `units` with `jobs` in flight; `commit` receives outcomes
/// in arrival order, batched. At most `2 * max(jobs, COMMIT_BATCH)` units are
/// drawn and not yet committed: enough that workers do not wait on a commit.
/// Stops early (dropping the rest) when a unit cannot be had or `commit` fails.
pub fn run_units<U, O, F, Fut>(
    runtime: &tokio::runtime::Handle,
    progress: &dyn Progress,
    units: impl IntoIterator<Item = Result<U>>,
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
    let jobs = jobs.max(1);
    // Both channels hold at most `window` items (the units drawn and not
    // committed), so neither side ever waits to send.
    let window = 2 * jobs.max(COMMIT_BATCH);
    let (unit_tx, mut unit_rx) = mpsc::channel::<U>(window);
    let (tx, mut rx) = mpsc::channel::<O>(window);
    let driver = runtime.spawn(async move {
        let units = futures::stream::poll_fn(move |cx| unit_rx.poll_recv(cx));
        let mut outcomes = units.map(work).buffer_unordered(jobs);
        while let Some(outcome) = outcomes.next().await {
            if tx.send(outcome).await.is_err() {
                break;
            }
        }
    });
    let mut units = units.into_iter();
    // Dropped when the units run out, which ends the driver once they are done.
    let mut unit_tx = Some(unit_tx);
    let mut drawn = 0usize;
    let mut failed = None;
    'run: loop {
        while drawn < window
            && let Some(sender) = &unit_tx
        {
            match units.next() {
                Some(Ok(unit)) => {
                    if sender.blocking_send(unit).is_err() {
                        break 'run;
                    }
                    drawn += 1;
                }
                Some(Err(e)) => {
                    failed = Some(e);
                    break 'run;
                }
                None => unit_tx = None,
            }
        }
        if drawn == 0 {
            break;
        }
        // None: the driver stopped (it panicked); joining it says why.
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < COMMIT_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        drawn -= batch.len();
        let n = batch.len() as u64;
        if let Err(e) = commit(batch) {
            failed = Some(e);
            break;
        }
        progress.advance(n);
    }
    drop(unit_tx);
    drop(rx);
    if failed.is_some() {
        driver.abort();
    }
    let joined = runtime.block_on(driver);
    if let Some(e) = failed {
        return Err(e);
    }
    joined.map_err(|e| Error::Internal(format!("a transfer worker stopped: {e}")))
}

/// Exponential backoff with jitter: attempt 1 waits about `base`, doubling up to `cap`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(cap);
    capped.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::progress::NoProgress;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime")
    }

    #[test]
    fn units_are_drawn_as_outcomes_are_committed() {
        const UNITS: usize = 10_000;
        let rt = runtime();
        let drawn = Arc::new(AtomicUsize::new(0));
        let units = {
            let drawn = drawn.clone();
            (0..UNITS).map(move |i| {
                drawn.fetch_add(1, Ordering::SeqCst);
                Ok(i)
            })
        };
        let (mut committed, mut most_ahead, mut sum) = (0, 0, 0);
        run_units(
            rt.handle(),
            &NoProgress,
            units,
            4,
            |i| async move { i },
            |batch| {
                most_ahead = most_ahead.max(drawn.load(Ordering::SeqCst) - committed);
                committed += batch.len();
                sum += batch.iter().sum::<usize>();
                Ok(())
            },
        )
        .expect("run");
        assert_eq!(committed, UNITS);
        assert_eq!(sum, UNITS * (UNITS - 1) / 2, "every unit once");
        assert!(
            most_ahead <= 2 * COMMIT_BATCH,
            "{most_ahead} units drawn ahead of the commits"
        );
    }

    #[test]
    fn a_unit_that_cannot_be_had_stops_the_run() {
        let rt = runtime();
        let units = (0..1_000).map(|i| {
            if i == 600 {
                Err(Error::Config("page 3 unreadable".into()))
            } else {
                Ok(i)
            }
        });
        let mut committed = 0;
        let result = run_units(
            rt.handle(),
            &NoProgress,
            units,
            4,
            |i| async move { i },
            |batch| {
                committed += batch.len();
                Ok(())
            },
        );
        assert!(
            matches!(&result, Err(Error::Config(m)) if m == "page 3 unreadable"),
            "{:?}",
            result.err()
        );
        assert!(committed < 600, "{committed} committed past the error");
    }
}
