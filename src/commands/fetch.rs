//! `fetch`: every pending ref's file into `blobs/`.
//!
//! Order (SPEC §1): refs resolvable from what is already fetched are
//! resolved without a download; then every distinct storage key is read
//! from the bucket once (a key the bucket lacks is marked dangling and its
//! refs fall back to Telegram); then every distinct `file_id` left is asked
//! of Telegram once. So a `file_id` some ref can get from the bucket is never
//! asked of Telegram.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{Context, TransferReport};
use crate::blobs::{BlobInfo, BlobStore, PublishError, Staging};
use crate::catalog::{self, Catalog};
use crate::error::{Error, Result};
use crate::layout::check_key;
use crate::stores::{self, Role, Store};
use crate::telegram::{Telegram, TgError};
use crate::transfer::{backoff, run_units};

pub struct FetchOptions {
    pub storage: Option<String>,
    pub telegram_api: String,
    /// From `TELEGRAM_BOT_TOKEN`; never printed.
    pub telegram_token: Option<String>,
    pub jobs: usize,
    pub include_photos: bool,
    pub retry_failed: bool,
    pub max_file_size: u64,
    pub telegram_rate: f64,
}

/// What one download did.
enum Outcome {
    Fetched {
        refs: Vec<i64>,
        blob: BlobInfo,
        source: &'static str,
    },
    Dangling {
        refs: Vec<i64>,
    },
    Failed {
        refs: Vec<i64>,
        reason: String,
    },
    /// A configuration error (the token or the bucket's credentials are
    /// refused): stop, with this message.
    Fatal(String),
    /// Not tried because the run is stopping.
    Cancelled,
}

const ATTEMPTS: u32 = 5;
const MAX_FLOOD_WAITS: u32 = 30;

pub fn fetch(ctx: &Context, opts: &FetchOptions) -> Result<TransferReport> {
    let started = Instant::now();
    let mut catalog = Catalog::open_existing(&ctx.archive)?;
    let storage = opts
        .storage
        .as_deref()
        .map(|url| stores::open(url, Role::Storage))
        .transpose()?;
    let blobs = Arc::new(BlobStore::new(&ctx.archive));
    blobs.clear_staging()?;
    let envs = ctx.env_param();

    if opts.include_photos {
        let tx = catalog.conn_mut().transaction()?;
        tx.execute(
            "INSERT INTO settings(key, value) VALUES (?1, 'true')
             ON CONFLICT(key) DO UPDATE SET value = 'true'",
            [super::snapshot::INCLUDE_PHOTOS],
        )?;
        crate::refs::derive(&tx, true)?;
        tx.commit()?;
    }
    if opts.retry_failed {
        catalog::fetch::retry_failed(catalog.conn(), &envs)?;
    }
    let (fetched_before, _, _) = catalog::fetch::state_counts(catalog.conn(), &envs)?;
    let bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut fatal: Option<String> = None;
    let mut notes = Vec::new();

    catalog::fetch::resolve_known(catalog.conn(), &envs)?;

    // A key that could leave a root fails its refs before anything is read,
    // with or without a bucket (SPEC §7): such a ref is never downloaded.
    let mut keys = Vec::new();
    let mut unsafe_keys = Vec::new();
    for work in catalog::fetch::pending_keys(catalog.conn(), &envs)? {
        match check_key(&work.key) {
            Ok(()) => keys.push(work),
            Err(reason) => unsafe_keys.push(Outcome::Failed {
                refs: work.refs,
                reason,
            }),
        }
    }
    if !unsafe_keys.is_empty() {
        commit(&mut catalog, unsafe_keys, &mut fatal)?;
    }

    // The bucket, once per key.
    match &storage {
        Some(store) if !keys.is_empty() => {
            let (store, blobs, bytes) = (store.clone(), blobs.clone(), bytes.clone());
            let max = opts.max_file_size;
            let phase = Phase {
                ctx,
                jobs: opts.jobs,
                stop: &stop,
            };
            phase.run("from the bucket", keys, &mut catalog, &mut fatal, move |work| {
                let (store, blobs, bytes) = (store.clone(), blobs.clone(), bytes.clone());
                async move { from_bucket(&store, &blobs, work.key, work.refs, max, &bytes).await }
            })?;
        }
        None if !keys.is_empty() => {
            let n: usize = keys.iter().map(|k| k.refs.len()).sum();
            notes.push(format!(
                "{n} refs have a storage key: pass --storage URL (the bot's bucket) to fetch them"
            ));
        }
        _ => {}
    }
    catalog::fetch::fail_unservable(catalog.conn(), &envs)?;
    catalog::fetch::resolve_known(catalog.conn(), &envs)?;

    // Telegram, once per file_id.
    let file_ids = catalog::fetch::pending_file_ids(catalog.conn(), &envs)?;
    if !file_ids.is_empty() && fatal.is_none() {
        match opts.telegram_token.as_deref().filter(|t| !t.is_empty()) {
            None => {
                let n: usize = file_ids.iter().map(|w| w.refs.len()).sum();
                notes.push(format!(
                    "{n} refs can only come from Telegram: set TELEGRAM_BOT_TOKEN to fetch them"
                ));
            }
            Some(token) => {
                let telegram =
                    Telegram::new(&opts.telegram_api, token.to_string(), opts.telegram_rate)
                        .map_err(Error::Config)?;
                let telegram = Arc::new(telegram);
                let max = opts.max_file_size;
                let (blobs, bytes) = (blobs.clone(), bytes.clone());
                let phase = Phase {
                    ctx,
                    jobs: opts.jobs,
                    stop: &stop,
                };
                phase.run(
                    "from Telegram",
                    file_ids,
                    &mut catalog,
                    &mut fatal,
                    move |work| {
                        let (telegram, blobs, bytes) =
                            (telegram.clone(), blobs.clone(), bytes.clone());
                        async move {
                            from_telegram(&telegram, &blobs, work.file_id, work.refs, max, &bytes)
                                .await
                        }
                    },
                )?;
                catalog::fetch::resolve_known(catalog.conn(), &envs)?;
            }
        }
    }
    if let Some(message) = fatal {
        return Err(Error::Config(message));
    }
    let (fetched, failed, pending) = catalog::fetch::state_counts(catalog.conn(), &envs)?;
    Ok(TransferReport {
        done: fetched.saturating_sub(fetched_before),
        skipped: fetched_before,
        failed,
        pending,
        bytes: bytes.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        notes,
    })
}

/// One stage of downloads: `work` runs for every unit, at most `jobs` at
/// once, until one of them meets a configuration error (then the rest are
/// skipped); outcomes are committed as they come.
struct Phase<'a> {
    ctx: &'a Context,
    jobs: usize,
    stop: &'a Arc<AtomicBool>,
}

impl Phase<'_> {
    fn run<U, F, Fut>(
        &self,
        stage: &str,
        units: Vec<U>,
        catalog: &mut Catalog,
        fatal: &mut Option<String>,
        work: F,
    ) -> Result<()>
    where
        U: Send + 'static,
        F: Fn(U) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Outcome> + Send + 'static,
    {
        self.ctx.progress.start(stage, Some(units.len() as u64));
        let stop = self.stop.clone();
        run_units(
            &self.ctx.runtime,
            self.ctx.progress.as_ref(),
            units.into_iter().map(Ok),
            self.jobs,
            move |unit| {
                let stop = stop.clone();
                let download = work(unit);
                async move {
                    if stop.load(Ordering::Relaxed) {
                        return Outcome::Cancelled;
                    }
                    let outcome = download.await;
                    if matches!(outcome, Outcome::Fatal(_)) {
                        stop.store(true, Ordering::Relaxed);
                    }
                    outcome
                }
            },
            |batch| commit(catalog, batch, fatal),
        )?;
        self.ctx.progress.finish();
        Ok(())
    }
}

fn commit(catalog: &mut Catalog, batch: Vec<Outcome>, fatal: &mut Option<String>) -> Result<()> {
    let tx = catalog.conn_mut().transaction()?;
    for outcome in batch {
        match outcome {
            Outcome::Fetched { refs, blob, source } => {
                catalog::fetch::mark_fetched(&tx, &refs, &blob, source)?
            }
            Outcome::Dangling { refs } => catalog::fetch::mark_dangling(&tx, &refs)?,
            Outcome::Failed { refs, reason } => {
                tracing::warn!("failed: {reason}");
                catalog::fetch::mark_failed(&tx, &refs, &reason)?
            }
            Outcome::Fatal(reason) => *fatal = Some(reason),
            Outcome::Cancelled => {}
        }
    }
    tx.commit()?;
    Ok(())
}

async fn from_bucket(
    store: &Store,
    blobs: &BlobStore,
    key: String,
    refs: Vec<i64>,
    max: u64,
    bytes: &AtomicU64,
) -> Outcome {
    if let Err(reason) = check_key(&key) {
        return Outcome::Failed { refs, reason };
    }
    let path = match store.path(&key) {
        Ok(p) => p,
        Err(reason) => return Outcome::Failed { refs, reason },
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match store.inner.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Outcome::Dangling { refs },
            Err(
                e @ (object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }),
            ) => return refused(store, key, refs, e),
            Err(e) => {
                let reason = format!("bucket {key}: {e}");
                if attempt >= ATTEMPTS {
                    return Outcome::Failed { refs, reason };
                }
                tracing::debug!("{reason}; retrying");
                tokio::time::sleep(backoff(
                    attempt,
                    Duration::from_millis(200),
                    Duration::from_secs(5),
                ))
                .await;
                continue;
            }
        };
        let size = result.meta.size;
        if size > max {
            return Outcome::Failed {
                refs,
                reason: too_big(size, max),
            };
        }
        let mut staging = match blobs.stage() {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Failed {
                    refs,
                    reason: e.to_string(),
                };
            }
        };
        let mut stream = result.into_stream();
        let mut broken = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    if staging.size() + chunk.len() as u64 > max {
                        return Outcome::Failed {
                            refs,
                            reason: too_big(staging.size() + chunk.len() as u64, max),
                        };
                    }
                    if let Err(e) = staging.write(&chunk) {
                        return Outcome::Failed {
                            refs,
                            reason: e.to_string(),
                        };
                    }
                }
                Err(e) => {
                    broken = Some(format!("bucket {key}: {e}"));
                    break;
                }
            }
        }
        let reason = match broken {
            Some(reason) => reason,
            None => match publish(staging, Some(size)).await {
                Ok(blob) => {
                    bytes.fetch_add(blob.size, Ordering::Relaxed);
                    return Outcome::Fetched {
                        refs,
                        blob,
                        source: "bucket",
                    };
                }
                Err(PublishError::Length { expected, got }) => {
                    format!("bucket {key}: body of {got} bytes where {expected} were announced")
                }
                Err(PublishError::Io(e)) => {
                    return Outcome::Failed {
                        refs,
                        reason: e.to_string(),
                    };
                }
            },
        };
        if attempt >= ATTEMPTS {
            return Outcome::Failed { refs, reason };
        }
        tokio::time::sleep(backoff(
            attempt,
            Duration::from_millis(200),
            Duration::from_secs(5),
        ))
        .await;
    }
}

async fn from_telegram(
    telegram: &Telegram,
    blobs: &BlobStore,
    file_id: String,
    refs: Vec<i64>,
    max: u64,
    bytes: &AtomicU64,
) -> Outcome {
    let mut attempt = 0u32;
    let mut flood_waits = 0u32;
    let mut unreachable = 0u32;
    let mut last_error = String::new();
    while attempt < ATTEMPTS {
        let step = download_once(telegram, blobs, &file_id, max).await;
        let error = match step {
            Ok(blob) => {
                bytes.fetch_add(blob.size, Ordering::Relaxed);
                return Outcome::Fetched {
                    refs,
                    blob,
                    source: "telegram",
                };
            }
            Err(e) => e,
        };
        if let TgError::Unreachable(_) = error {
            unreachable += 1;
        }
        match error {
            TgError::Refused(reason) => {
                return Outcome::Failed {
                    refs,
                    reason: format!("Telegram: {reason}"),
                };
            }
            TgError::Unauthorized(reason) => {
                return Outcome::Fatal(format!(
                    "the Telegram Bot API refused the token ({reason}): check TELEGRAM_BOT_TOKEN; what was fetched stays fetched"
                ));
            }
            TgError::RetryAfter(wait) => {
                flood_waits += 1;
                if flood_waits > MAX_FLOOD_WAITS {
                    return Outcome::Failed {
                        refs,
                        reason: "Telegram: too many flood-control waits".into(),
                    };
                }
                tracing::info!("Telegram asks to wait {} s (flood control)", wait.as_secs());
                telegram.pause(wait);
            }
            TgError::LinkExpired => {
                attempt += 1;
                last_error = "the download link expired again".into();
            }
            TgError::Unreachable(reason) if unreachable >= ATTEMPTS => {
                // Every attempt found no server: no file can be had this run.
                return Outcome::Fatal(format!(
                    "cannot reach the Telegram Bot API at {} ({reason}): check --telegram-api / TELEGRAM_API_URL and the network; what was fetched stays fetched",
                    telegram.shown_base()
                ));
            }
            TgError::Transient(reason) | TgError::Unreachable(reason) => {
                attempt += 1;
                tracing::debug!("{file_id}: {reason}; retrying");
                last_error = reason;
                tokio::time::sleep(backoff(
                    attempt,
                    Duration::from_millis(250),
                    Duration::from_secs(8),
                ))
                .await;
            }
        }
    }
    Outcome::Failed {
        refs,
        reason: format!("Telegram: {last_error} (after {ATTEMPTS} attempts)"),
    }
}

/// getFile, then the download into a published blob.
async fn download_once(
    telegram: &Telegram,
    blobs: &BlobStore,
    file_id: &str,
    max: u64,
) -> Result<BlobInfo, TgError> {
    let info = telegram.get_file(file_id).await?;
    if let Some(size) = info.file_size.filter(|s| *s > max) {
        return Err(TgError::Refused(too_big(size, max)));
    }
    let mut response = telegram.download(&info.file_path).await?;
    let announced = response.content_length().or(info.file_size);
    if let Some(size) = announced.filter(|s| *s > max) {
        return Err(TgError::Refused(too_big(size, max)));
    }
    let mut staging = blobs
        .stage()
        .map_err(|e| TgError::Transient(e.to_string()))?;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if staging.size() + chunk.len() as u64 > max {
                    return Err(TgError::Refused(too_big(
                        staging.size() + chunk.len() as u64,
                        max,
                    )));
                }
                staging
                    .write(&chunk)
                    .map_err(|e| TgError::Transient(e.to_string()))?;
            }
            Ok(None) => break,
            Err(e) => return Err(telegram.transport(e)),
        }
    }
    match publish(staging, announced).await {
        Ok(blob) => Ok(blob),
        Err(PublishError::Length { expected, got }) => Err(TgError::Transient(format!(
            "truncated body: {got} of {expected} bytes"
        ))),
        Err(PublishError::Io(e)) => Err(TgError::Transient(e.to_string())),
    }
}

/// fsync and rename off the async threads.
async fn publish(staging: Staging, expected: Option<u64>) -> Result<BlobInfo, PublishError> {
    tokio::task::spawn_blocking(move || staging.publish(expected))
        .await
        .unwrap_or_else(|e| {
            Err(PublishError::Io(Error::Config(format!(
                "publish stopped: {e}"
            ))))
        })
}

/// S3 error codes that say the credentials themselves are refused.
const CREDENTIAL_ERRORS: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
];

/// 401/403 from the bucket. Refused credentials stop the run (nothing else
/// would work); any other refusal (a policy on one key; S3 also answers 403
/// for a missing key when listing is not allowed) fails that key's refs.
/// Neither is retried.
fn refused(store: &Store, key: String, refs: Vec<i64>, e: object_store::Error) -> Outcome {
    let text = e.to_string();
    let credentials = matches!(e, object_store::Error::Unauthenticated { .. })
        || CREDENTIAL_ERRORS.iter().any(|code| text.contains(code));
    if credentials {
        Outcome::Fatal(format!(
            "the bucket {} refused the credentials ({text}): check STARCHIVE_STORAGE_ACCESS_KEY_ID and STARCHIVE_STORAGE_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); what was fetched stays fetched",
            store.shown
        ))
    } else {
        Outcome::Failed {
            refs,
            reason: format!("bucket {key}: {text}"),
        }
    }
}

fn too_big(size: u64, max: u64) -> String {
    format!("the file has {size} bytes, more than --max-file-size ({max} bytes)")
}
