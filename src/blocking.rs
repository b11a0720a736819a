//! Blocking work off the async worker threads, behind one helper (the model
//! is object_store's `maybe_spawn_blocking`): file creation and writes,
//! hashing, reading certificates. A worker that blocks stalls every other
//! download it drives; the runtime's blocking pool has threads for it.

/// Blocking work that did not finish: it panicked, or the runtime is
/// shutting down.
#[derive(Debug, thiserror::Error)]
#[error("blocking work stopped: {0}")]
pub struct Stopped(#[from] tokio::task::JoinError);

/// Runs `f` on the current runtime's blocking pool, or in place when no
/// runtime runs (a synchronous caller, a plain `#[test]`).
pub async fn run<T, F>(f: F) -> Result<T, Stopped>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => Ok(runtime.spawn_blocking(f).await?),
        Err(_) => Ok(f()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_off_the_async_workers() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let task = runtime.spawn(async {
            let worker = std::thread::current().id();
            (worker, run(|| std::thread::current().id()).await)
        });
        let (worker, blocking) = runtime.block_on(task).expect("task");
        assert_ne!(worker, blocking.expect("ran"));
    }

    #[test]
    fn a_panic_in_the_work_is_an_error_not_a_crash() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let result = runtime.block_on(run(|| -> u8 { std::panic::panic_any("boom") }));
        assert!(result.is_err());
    }
}
