//! `pull`: a local archive rebuilt from a destination that `push` wrote
//! (SPEC §3, §5), in either layout.
//!
//! The manifest's first line comes first: it names the archive and its
//! catalog copy. Into a directory with no catalog, the copy is downloaded,
//! checked part by part and decompressed into a staging file, which is
//! renamed into place whole and then opened like any catalog (so an older
//! one is migrated). A directory with a catalog is accepted only when it is
//! the same archive (a resumed pull) and is otherwise left as it was. The
//! installed catalog says fetched only for refs whose blob is in `blobs/`:
//! the others are pending in the file renamed into place. Then every blob
//! the manifest names and `blobs/` lacks is downloaded once per SHA-256,
//! hashed as it streams and published like `fetch`'s, and the refs the
//! manifest says hold it are fetched in the transaction that records it,
//! whatever state an earlier pull or `verify` left them in; a blob missing
//! or bad at the source fails its refs. A kill at any point loses nothing
//! and claims nothing: a blob is in `blobs/` whole or not at all, a ref is
//! fetched only once its blob is, and the next run downloads what is still
//! missing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{Context, TransferReport};
use crate::blobs::{BlobStore, Publisher};
use crate::catalog::BlobInfo;
use crate::catalog::pull::{self as q, BlobToPull, PULLED_FROM, PULLED_SNAPSHOT};
use crate::catalog::{ARCHIVE_ID, ArchiveLock, CATALOG_FILE, Catalog, paged, scope};
use crate::download::{ReadError, credentials_refused, read_object};
use crate::error::{Error, Result};
use crate::layout::check_key;
use crate::manifest::{Header, MANIFEST_KEY, Manifest, restore_catalog_copy};
use crate::stores::{self, Role, Store};
use crate::transfer::{COMMIT_BATCH, backoff, run_units};

pub struct PullOptions {
    /// The destination to read (`push --to`'s URL).
    pub from: String,
    pub jobs: usize,
}

/// Blobs to download read from the catalog at a time.
const PAGE: usize = 256;
/// Attempts of one object before its refs fail.
const ATTEMPTS: u32 = 5;
/// Units in flight beyond `--jobs`: those whose blob waits for its group.
const PUBLISHING: usize = COMMIT_BATCH;
/// Where the catalog copy is decompressed before it is renamed into place.
const STAGED_CATALOG: &str = ".pull-catalog.sqlite";

/// What one download did.
enum Outcome {
    Stored(BlobInfo),
    Failed {
        sha256: String,
        reason: String,
    },
    /// The store refused the credentials: stop, with this message.
    Fatal(String),
    /// Not tried because the run is stopping.
    Cancelled,
}

pub fn pull(ctx: &Context, opts: &PullOptions) -> Result<TransferReport> {
    let started = Instant::now();
    // Pulled into its own source, the archive's files would be written
    // among the objects it is read from.
    crate::store_url::refuse_archive_overlap(&opts.from, &ctx.archive, "--from")?;
    let store = stores::open(&opts.from, Role::From)?;
    let manifest = Manifest::open(&ctx.runtime, &store)?.ok_or_else(|| {
        Error::Config(format!(
            "{} holds no {MANIFEST_KEY}: pull reads a destination that `starchive push` wrote",
            store.shown
        ))
    })?;
    let lock = ArchiveLock::take(&ctx.archive)?;
    let mut notes = Vec::new();
    if ctx.archive.join(CATALOG_FILE).is_file() {
        check_same_archive(ctx, &store, &manifest.header)?;
        notes.extend(take_newer_snapshot(ctx, &store, &manifest.header)?);
    } else if let Err(e) = restore_catalog(ctx, &store, &manifest.header) {
        lock.abandon(&ctx.archive);
        return Err(e);
    }
    let catalog = Catalog::open_locked(&ctx.archive, lock)?;
    let conn = catalog.conn();
    let blobs = BlobStore::new(&ctx.archive);
    blobs.clear_staging()?;

    q::create_pull_table(conn)?;
    {
        let tx = conn.unchecked_transaction()?;
        let envs = &ctx.envs;
        manifest.for_each_line(|line| {
            if !envs.is_empty() && !line.env.as_ref().is_some_and(|e| envs.contains(e)) {
                return Ok(());
            }
            if line.state.as_deref() != Some("pushed") {
                return Ok(());
            }
            if let (Some(class), Some(table), Some(row_id), Some(key), Some(sha256), Some(size)) = (
                &line.class,
                &line.table,
                &line.row_id,
                &line.key,
                &line.sha256,
                line.size,
            ) && is_sha256(sha256)
                && check_key(key).is_ok()
            {
                q::add_line(
                    &tx,
                    &q::PushedLine {
                        class,
                        table,
                        row_id,
                        slot: line.slot.as_deref().unwrap_or(""),
                        sha256,
                        key,
                        size,
                        kind: line.kind.as_deref().unwrap_or("bin"),
                    },
                )?;
            }
            Ok(())
        })?;
        tx.commit()?;
    }
    // Into a new directory: no `blobs/`, no file to look for per blob.
    let here = blobs.exists();
    let left = q::mark_present(conn, |sha256| here && blobs.path(sha256).is_file())?;
    q::index_refs_to_pull(conn)?;

    let shared = Arc::new(Shared {
        store,
        publisher: blobs.publisher()?,
        blobs,
        downloads: Semaphore::new(opts.jobs.max(1)),
        stop: AtomicBool::new(false),
        bytes: AtomicU64::new(0),
    });
    let mut fatal = None;
    if left > 0 {
        ctx.progress.start("pulling", Some(left));
        let mut after = None;
        let units = paged(move || {
            let page = q::blobs_to_pull_after(conn, after.as_ref(), PAGE)?;
            after = page.last().map(|b| b.order.clone());
            Ok(page)
        });
        let work = shared.clone();
        run_units(
            &ctx.runtime,
            ctx.progress.as_ref(),
            units,
            opts.jobs.max(1) + PUBLISHING,
            move |blob| {
                let shared = work.clone();
                async move { pull_blob(&shared, blob).await }
            },
            |batch: Vec<Outcome>| {
                // The page source reads this connection between commits.
                let tx = conn.unchecked_transaction()?;
                for outcome in batch {
                    match outcome {
                        Outcome::Stored(blob) => q::mark_pulled(&tx, &blob)?,
                        Outcome::Failed { sha256, reason } => {
                            tracing::warn!("pull {sha256}: {reason}");
                            q::mark_pull_failed(&tx, &sha256, &reason)?;
                        }
                        Outcome::Fatal(message) => fatal = Some(message),
                        Outcome::Cancelled => {}
                    }
                }
                tx.commit()?;
                Ok(())
            },
        )?;
        ctx.progress.finish();
    }
    if let Some(message) = fatal {
        return Err(Error::Config(message));
    }
    let blobs = &shared.blobs;
    q::unbacked_to_pending(conn, true, |sha256| blobs.path(sha256).is_file())?;
    let (done, skipped, failed, pending) = q::pull_counts(conn, &ctx.env_param())?;
    if pending > 0 {
        notes.push(format!(
            "{pending} {} no file at {}: not pushed there (or outside --env); `starchive pull` again once a push has them, or `starchive fetch` gets them from the bucket",
            if pending == 1 { "ref is pending: it has" } else { "refs are pending: they have" },
            shared.store.shown
        ));
    }
    Ok(TransferReport {
        done,
        skipped,
        failed,
        pending,
        bytes: shared.bytes.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        notes,
        refused: Vec::new(),
        stopped: None,
    })
}

/// What every download of a pull shares.
struct Shared {
    store: Store,
    blobs: BlobStore,
    publisher: Publisher,
    /// `--jobs` permits, held by a download until its bytes are staged: a
    /// blob waiting for its group to be durable holds none (as in `fetch`).
    downloads: Semaphore,
    stop: AtomicBool,
    bytes: AtomicU64,
}

async fn pull_blob(shared: &Shared, blob: BlobToPull) -> Outcome {
    let BlobToPull {
        sha256, key, size, ..
    } = blob;
    let Ok(permit) = shared.downloads.acquire().await else {
        return Outcome::Cancelled;
    };
    if shared.stop.load(Ordering::Relaxed) {
        return Outcome::Cancelled;
    }
    let store = &shared.store;
    let path = match store.path(&key) {
        Ok(p) => p,
        Err(reason) => return Outcome::Failed { sha256, reason },
    };
    let mut attempt = 0;
    let reason = loop {
        attempt += 1;
        let reason = match read_object(store, &shared.blobs, &path, &key, size, "source").await {
            Ok(staged) if staged.info().sha256 != sha256 => {
                // Dropped: never stored.
                break format!(
                    "source {key}: the bytes hash to {}, not to {sha256}",
                    staged.info().sha256
                );
            }
            Ok(staged) => {
                drop(permit);
                return match shared.publisher.publish(staged).await {
                    Ok(blob) => {
                        shared.bytes.fetch_add(blob.size, Ordering::Relaxed);
                        Outcome::Stored(blob)
                    }
                    Err(e) if e.disk_refuses() => {
                        shared.stop.store(true, Ordering::Relaxed);
                        Outcome::Fatal(super::disk_stop(&e, &pull_again(store)))
                    }
                    Err(e) => Outcome::Failed {
                        sha256,
                        reason: e.to_string(),
                    },
                };
            }
            Err(ReadError::Missing) => break format!("source {key}: missing at the source"),
            Err(ReadError::Refused(e)) if credentials_refused(&e) => {
                shared.stop.store(true, Ordering::Relaxed);
                return Outcome::Fatal(format!(
                    "{} refused the credentials ({e}): check STARCHIVE_STORAGE_ACCESS_KEY_ID and STARCHIVE_STORAGE_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); what was pulled stays pulled",
                    store.shown
                ));
            }
            Err(ReadError::Refused(e)) => {
                break format!("source {key}: {}", crate::download::describe(&e));
            }
            Err(ReadError::TooBig(got)) => {
                break format!("source {key}: {got} bytes where the manifest says {size}");
            }
            Err(ReadError::Failed(reason) | ReadError::Unreadable(reason)) => break reason,
            Err(ReadError::Disk(e)) => {
                shared.stop.store(true, Ordering::Relaxed);
                return Outcome::Fatal(super::disk_stop(&e, &pull_again(store)));
            }
            Err(ReadError::Again(reason)) => reason,
        };
        if attempt >= ATTEMPTS {
            break reason;
        }
        tokio::time::sleep(backoff(
            attempt,
            Duration::from_millis(200),
            Duration::from_secs(5),
        ))
        .await;
    };
    Outcome::Failed { sha256, reason }
}

/// The command that resumes this pull.
fn pull_again(store: &Store) -> String {
    format!("pull --from {}", store.shown)
}

/// Whether `text` is a SHA-256 as blobs are named: 64 lower-case hex digits.
fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Refuses a directory whose catalog is not of the archive the manifest
/// names (read-only: a refused directory is left as it was).
fn check_same_archive(ctx: &Context, store: &Store, header: &Header) -> Result<()> {
    // Read and write, under the archive's lock: a read-only connection
    // would leave the WAL's index files behind; this one removes them when
    // it closes, and writes nothing.
    let conn = q::open_file(&ctx.archive.join(CATALOG_FILE))?;
    let same = match &header.archive_id {
        Some(id) => q::read_setting(&conn, ARCHIVE_ID).as_deref() == Some(id.as_str()),
        // A manifest from before archive ids: the same archive is one this
        // destination was pulled into.
        None => q::read_setting(&conn, PULLED_FROM).as_deref() == Some(store.shown.as_str()),
    };
    if same {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{} holds another archive than the one at {}: pull into an empty or new directory (--archive DIR); nothing was changed",
            ctx.archive.display(),
            store.shown
        )))
    }
}

/// A destination pushed again since this archive was pulled from it holds
/// a newer snapshot: when the archive has none of its own since (its
/// latest is the one a pull installed), the newer catalog replaces its
/// catalog (`blobs/` stays, and the pull brings the blobs it lacks);
/// otherwise the pull is refused, changing nothing. Returns what the
/// report says about it.
fn take_newer_snapshot(ctx: &Context, store: &Store, header: &Header) -> Result<Option<String>> {
    let Some(theirs) = header.snapshot_id else {
        return Ok(None);
    };
    let conn = q::open_file(&ctx.archive.join(CATALOG_FILE))?;
    let ours = q::latest_snapshot_id(&conn)?;
    let pulled = q::read_setting(&conn, PULLED_SNAPSHOT).and_then(|v| v.parse::<i64>().ok());
    let shown = &store.shown;
    // The same snapshot, but the destination now holds envs the copy this
    // archive was pulled from was cut without.
    let held =
        (!header.envs.is_empty()).then(|| serde_json::Value::from(header.envs.clone()).to_string());
    let wider = pulled == ours && scope::is_wider(&held, &scope::copy_envs(&conn)?);
    match ours {
        Some(ours) if ours == theirs && !wider => Ok(None),
        Some(ours) if ours > theirs => Ok(Some(format!(
            "{shown} holds snapshot {theirs}, older than this archive's {ours}: `starchive push --to` it to bring it up to date"
        ))),
        Some(ours) if pulled != Some(ours) => Err(Error::Config(format!(
            "{shown} holds snapshot {theirs}, newer than this archive's {ours}, and {} has snapshots of its own since it was pulled, which its catalog would lose: pull into a new directory (--archive DIR) to get snapshot {theirs}; nothing was changed",
            ctx.archive.display()
        ))),
        _ => {
            // Every commit in the file, so that the WAL removed as the newer
            // catalog is installed holds nothing.
            q::checkpoint(&conn)?;
            drop(conn);
            restore_catalog(ctx, store, header)?;
            Ok(Some(match ours {
                Some(ours) if ours == theirs => format!(
                    "{shown} holds more envs than when this archive was pulled from it: its catalog replaced this one"
                ),
                _ => format!(
                    "{shown} holds snapshot {theirs}, newer than this archive's{}: its catalog replaced this one",
                    ours.map(|o| format!(" {o}")).unwrap_or_default()
                ),
            }))
        }
    }
}

/// Downloads the catalog copy into a staging file of the archive and
/// renames it into place once it is whole and durable.
fn restore_catalog(ctx: &Context, store: &Store, header: &Header) -> Result<()> {
    let staged = ctx.archive.join(STAGED_CATALOG);
    let target = ctx.archive.join(CATALOG_FILE);
    // What a killed pull, or a catalog removed by hand, left: a journal or
    // WAL of another database must never be applied to this one.
    for leftover in ["-wal", "-shm", "-journal"] {
        for base in [&staged, &target] {
            let mut name = base.as_os_str().to_owned();
            name.push(leftover);
            let _ = std::fs::remove_file(std::path::PathBuf::from(name));
        }
    }
    let result = (|| {
        restore_catalog_copy(&ctx.runtime, store, header, &staged)?;
        {
            let mut conn = q::open_file(&staged)?;
            let id = q::read_setting(&conn, ARCHIVE_ID);
            if let (Some(want), Some(got)) = (&header.archive_id, &id)
                && want != got
            {
                return Err(Error::Config(format!(
                    "the catalog copy at {} is of another archive than its manifest: is a push writing it? run again once it is done",
                    store.shown
                )));
            }
            crate::catalog::set_setting(&conn, PULLED_FROM, &store.shown)?;
            // A catalog from elsewhere is a new generation here: what the
            // copy recorded of pushes it made leaves no push a fast path.
            crate::catalog::bump_write_generation(&conn)?;
            if let Some(id) = q::latest_snapshot_id(&conn)? {
                crate::catalog::set_setting(&conn, PULLED_SNAPSHOT, &id.to_string())?;
            }
            // A copy an older starchive pushed: brought up to date first,
            // to be written as this starchive writes it.
            q::migrate_file(&mut conn, &staged)?;
            // The copy says fetched for the pusher's blobs: here, a ref is
            // fetched only once its blob is in `blobs/` (the pull sets it so
            // as each blob is published), in the file renamed into place.
            let blobs = BlobStore::new(&ctx.archive);
            let here = blobs.exists();
            q::unbacked_to_pending(&conn, false, |sha256| here && blobs.path(sha256).is_file())?;
        }
        let sync = |path: &std::path::Path| {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(format!("cannot sync {}", path.display()), e))
        };
        sync(&staged)?;
        std::fs::rename(&staged, &target).map_err(|e| {
            Error::io(
                format!("cannot move the catalog to {}", target.display()),
                e,
            )
        })?;
        sync(&ctx.archive)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    result
}
