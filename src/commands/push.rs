//! `push`: every fetched ref to a destination store, then the manifest and a
//! copy of the catalog under `_starchive/`.
//!
//! The catalog records each object once the store acknowledged it, so a
//! second push compares the plan with the catalog and sends nothing; a push
//! killed midway resumes with what is left. On a first push to a store that
//! already holds objects, one listing finds what is there with the right size.
//!
//! Memory does not grow with the number of refs: the plan is built in temp
//! tables of the catalog's connection as the refs stream by, the listing is
//! matched against it as it comes, and uploads are read back a page of
//! blobs at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Context, TransferReport};
use crate::blobs::BlobStore;
use crate::catalog::push::{self as q, KeyToPush};
use crate::catalog::{Catalog, paged, scope};
use crate::error::{Error, Result};
use crate::layout::{Layout, RESERVED_PREFIX};
use crate::manifest::{self, MANIFEST_KEY};
use crate::placement::{build_plan, held_layout};
use crate::stores::{self, Role, Store};
use crate::transfer::run_units;
use crate::upload;

/// SQLite page cache of a push, in KiB.
/// It also bounds the sorter of the plan's ordered read and the cache of the
/// copy made by VACUUM INTO. A push reads and writes the catalog's pages in
/// order, through the OS's file cache: at 100,000 refs a cache of 8 MiB was
/// no faster than this one, and took 18 MB more at its peak.
const PUSH_CACHE_KIB: u32 = 2 * 1024;
/// Blobs to upload read from the catalog at a time.
const UPLOADS_PAGE: usize = 256;

pub struct PushOptions {
    pub to: String,
    /// `None`: the layout the destination holds, else mirror.
    pub layout: Option<Layout>,
    pub jobs: usize,
    /// The largest object of the catalog copy
    /// ([`manifest::CATALOG_PART_BYTES`]; smaller only in tests).
    pub catalog_part_bytes: u64,
}

/// One blob to upload, and every key that needs it with the number of refs placed there.
struct Upload {
    sha256: String,
    size: u64,
    kind: String,
    keys: Vec<(String, u64)>,
}

/// Groups keys to push, ordered by sha256, into one upload per blob.
fn uploads(keys: Vec<KeyToPush>) -> Vec<Upload> {
    let mut uploads: Vec<Upload> = Vec::new();
    for k in keys {
        match uploads.last_mut() {
            Some(upload) if upload.sha256 == k.sha256 => upload.keys.push((k.key, k.refs)),
            _ => uploads.push(Upload {
                sha256: k.sha256,
                size: k.size,
                kind: k.kind,
                keys: vec![(k.key, k.refs)],
            }),
        }
    }
    uploads
}

struct KeyOutcome {
    key: String,
    sha256: String,
    size: u64,
    /// Refs placed at the key.
    refs: u64,
    result: Result<(), String>,
}

pub fn push(ctx: &Context, opts: &PushOptions) -> Result<TransferReport> {
    let started = Instant::now();
    crate::store_url::refuse_archive_overlap(&opts.to, &ctx.archive, "--to")?;
    let mut catalog = Catalog::open_existing_for_push(&ctx.archive)?;
    // A catalog with no snapshot (a first snapshot that failed) has nothing
    // to describe: its manifest and copy would replace a good one's.
    ctx.latest_snapshot(&catalog)?;
    ctx.warn_unknown_envs(&catalog)?;
    // A push streams through the catalog and writes it in small batches; the
    // plan lives in temp tables. A small page cache does, and keeps memory
    // low however many refs there are.
    catalog.set_cache_kib(PUSH_CACHE_KIB)?;
    crate::store_url::create_local_dir(&opts.to, "--to")?;
    let store = stores::open(&opts.to, Role::To)?;
    let envs = ctx.env_param();
    let recorded = q::find_destination(catalog.conn(), &store.shown, crate::store_url::identity)?;
    // The manifest found where it was left shows the store serves; else one
    // listing checks it can, before any ref is marked.
    let trusted = match &recorded {
        Some((id, _)) => manifest_still_there(ctx, &store, catalog.conn(), *id),
        None => Ok(false),
    };
    let trusted = match trusted {
        Ok(true) => true,
        other => {
            ctx.runtime.block_on(stores::check(&store, Role::To))?;
            other?
        }
    };
    let generation = catalog.write_generation()?;
    let whole = |layout: Layout| WholePush {
        generation,
        tool: TOOL.to_string(),
        layout: layout.name().to_string(),
        envs: envs.clone(),
        part_bytes: opts.catalog_part_bytes,
        ..WholePush::default()
    };
    if trusted
        && let Some((id, name)) = &recorded
        && let Some(held) = Layout::parse(name)
        && opts.layout.is_none_or(|l| l == held)
        && let Some(last) = q::whole_push(catalog.conn(), *id)?
        && let Ok(last) = serde_json::from_str::<WholePush>(&last)
        && last.same_push(&whole(held))
    {
        // Nothing a push writes changed since the last one left this
        // destination whole, and its manifest is still there: nothing to do.
        tracing::debug!(
            "nothing changed since the push that left {} whole (write generation {generation}): its manifest checked, nothing to push",
            store.shown
        );
        return Ok(TransferReport {
            done: 0,
            skipped: last.skipped,
            failed: last.refused + last.failed_at_fetch + last.failed_at_pull,
            pending: last.pending,
            bytes: 0,
            seconds: started.elapsed().as_secs_f64(),
            notes: unfetched_notes(
                &q::Unfetched {
                    pending: last.pending,
                    failed_at_fetch: last.failed_at_fetch,
                    failed_at_pull: last.failed_at_pull,
                },
                pulled(&catalog, &envs, last.pending)?.as_ref(),
            ),
            refused: Vec::new(),
            stopped: None,
        });
    }
    // A manifest this archive wrote names the layout recorded; any other
    // (another machine's push) is read for the layout it names.
    let layout = held_layout(
        &ctx.runtime,
        &store,
        catalog.conn(),
        opts.layout,
        !trusted,
        Some(&catalog.archive_id()?),
    )?;
    let dest = q::destination(
        catalog.conn(),
        &store.shown,
        crate::store_url::identity,
        layout,
    )?;
    // Until this push ends with the destination whole, the next one does
    // all the work (a kill midway included).
    q::set_whole_push(catalog.conn(), dest, None)?;

    // Placements first: what is known pushed stays so, the rest is pending.
    let counts = {
        let tx = catalog.conn_mut().transaction()?;
        build_plan(&tx, &envs, None, layout)?;
        q::settle_plan(&tx, dest, trusted)?;
        q::write_placements(&tx, dest)?;
        let counts = q::plan_counts(&tx)?;
        tx.commit()?;
        counts
    };
    let unfetched = q::unfetched_counts(catalog.conn(), &envs)?;
    let mut notes = unfetched_notes(
        &unfetched,
        pulled(&catalog, &envs, unfetched.pending)?.as_ref(),
    );
    let q::Unfetched {
        pending,
        failed_at_fetch,
        failed_at_pull,
    } = unfetched;
    let mut skipped = counts.refs_pushed;
    let mut done = 0u64;
    let mut failed = counts.refs_refused + failed_at_fetch + failed_at_pull;
    let bytes = Arc::new(AtomicU64::new(0));
    let mut uploaded_any = false;
    let mut upload_failed = false;

    if counts.blobs_to_push > 0 {
        let conn = catalog.conn();
        remove_stale_staging_of_plan(&store, conn)?;
        let present = {
            let tx = conn.unchecked_transaction()?;
            let present = take_objects_present(ctx, &store, &tx, dest)?;
            tx.commit()?;
            present
        };
        skipped += present.taken;
        if let Some(first) = present.first_foreign {
            failed += present.foreign_refs;
            upload_failed = true;
            notes.push(match present.foreign_keys {
                1 => format!("1 object was not pushed: {first}"),
                n => format!(
                    "{n} objects were not pushed, as starchive did not write what their keys hold (`starchive status` names them); the first: {first}"
                ),
            });
        }
        q::index_keys_to_push(conn)?;
        let total = q::plan_counts(conn)?.blobs_to_push;
        ctx.progress.start("pushing", Some(total));
        let mut after: Option<String> = None;
        let units = paged(move || {
            let page = uploads(q::keys_to_push_after(conn, after.as_deref(), UPLOADS_PAGE)?);
            after = page.last().map(|u| u.sha256.clone());
            Ok(page)
        });
        let blobs = Arc::new(BlobStore::new(&ctx.archive));
        let (store2, bytes2) = (store.clone(), bytes.clone());
        run_units(
            &ctx.runtime,
            ctx.progress.as_ref(),
            units,
            opts.jobs,
            move |upload| {
                let (store, blobs, bytes) = (store2.clone(), blobs.clone(), bytes2.clone());
                async move { upload_blob(&store, &blobs, upload, layout, &bytes).await }
            },
            |batch: Vec<Vec<KeyOutcome>>| {
                // The page source reads this connection between commits: a
                // shared borrow, hence the unchecked transaction (none is open).
                let tx = conn.unchecked_transaction()?;
                for outcome in batch.into_iter().flatten() {
                    match &outcome.result {
                        Ok(()) => {
                            done += outcome.refs;
                            uploaded_any = true;
                        }
                        Err(reason) => {
                            failed += outcome.refs;
                            upload_failed = true;
                            tracing::warn!("push failed for {}: {reason}", outcome.key);
                        }
                    }
                    q::set_object(
                        &tx,
                        dest,
                        &outcome.key,
                        &outcome.sha256,
                        outcome.size,
                        true,
                        outcome.result.as_ref().map(|_| ()).map_err(String::as_str),
                    )?;
                }
                tx.commit()?;
                Ok(())
            },
        )?;
        ctx.progress.finish();
    }

    let changed = uploaded_any || !trusted;
    let refused = write_self_description(
        ctx,
        &catalog,
        &store,
        dest,
        layout,
        opts.catalog_part_bytes,
        changed,
    )?;
    if !upload_failed && refused.is_empty() {
        let record = WholePush {
            skipped: skipped + done,
            refused: counts.refs_refused,
            pending,
            failed_at_fetch,
            failed_at_pull,
            ..whole(layout)
        };
        let record =
            serde_json::to_string(&record).map_err(|e| Error::Config(format!("push: {e}")))?;
        q::set_whole_push(catalog.conn(), dest, Some(&record))?;
    }
    Ok(TransferReport {
        done,
        skipped,
        failed,
        pending,
        bytes: bytes.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        notes,
        refused,
        stopped: None,
    })
}

/// This build, as the manifest's header names it.
const TOOL: &str = concat!("starchive ", env!("CARGO_PKG_VERSION"));

/// What a push that left its destination whole records there (all it had
/// to upload uploaded, the manifest and catalog copy written): the
/// [`crate::catalog::WRITE_GENERATION`] it saw, what shaped what it wrote,
/// and the counts of its report. While they hold, the next push there has
/// nothing to do but check that the manifest is still there.
#[derive(Default, Serialize, Deserialize)]
struct WholePush {
    generation: i64,
    tool: String,
    layout: String,
    envs: Option<String>,
    part_bytes: u64,
    /// Refs placed at objects the destination holds.
    skipped: u64,
    /// Refs that get no object (their key is another's).
    refused: u64,
    /// Refs in scope not fetched yet, failed at fetch, failed at pull.
    pending: u64,
    failed_at_fetch: u64,
    #[serde(default)]
    failed_at_pull: u64,
}

impl WholePush {
    /// Whether a push shaped like `other` would write what this one wrote.
    fn same_push(&self, other: &WholePush) -> bool {
        (
            self.generation,
            &self.tool,
            &self.layout,
            &self.envs,
            self.part_bytes,
        ) == (
            other.generation,
            &other.tool,
            &other.layout,
            &other.envs,
            other.part_bytes,
        )
    }
}

/// The report's notes about refs in scope that are not fetched.
fn unfetched_notes(unfetched: &q::Unfetched, pulled: Option<&Pulled>) -> Vec<String> {
    let refs = |n: u64| match n {
        1 => "1 ref".to_string(),
        n => format!("{n} refs"),
    };
    let are = |n: u64| match n {
        1 => "1 ref is".to_string(),
        n => format!("{n} refs are"),
    };
    let pull = format!(
        "starchive pull --from {}",
        pulled.map_or("URL", |p| p.from.as_str())
    );
    let mut notes = Vec::new();
    let q::Unfetched {
        pending,
        failed_at_fetch,
        failed_at_pull,
    } = *unfetched;
    let unplaced = pulled.map_or(0, |p| p.unplaced.0);
    if let Some(Pulled {
        from,
        unplaced: (n @ 1.., reason),
    }) = pulled
    {
        // No pull brings these: the destination never held their files.
        notes.push(format!(
            "{} not fetched: {from} lacks their files, its push could not place them ({}): `starchive fetch` gets them from the bucket",
            are(*n),
            reason.as_deref().unwrap_or("no key"),
        ));
    }
    let pending = pending.saturating_sub(unplaced);
    if pending > 0 {
        notes.push(match pulled {
            // A pull killed or scoped with --env leaves refs pending too.
            Some(_) => format!(
                "{} not fetched yet: `{pull}` finishes the pull this archive came from, `starchive fetch` gets the rest from the bucket",
                are(pending)
            ),
            None => format!("{} not fetched yet: run `starchive fetch`", are(pending)),
        });
    }
    if failed_at_fetch > 0 {
        notes.push(format!(
            "{} failed at fetch: `starchive fetch --retry-failed` tries again",
            refs(failed_at_fetch)
        ));
    }
    if failed_at_pull > 0 {
        notes.push(format!(
            "{} failed at pull (the object was missing or bad where the archive was pulled from): `{pull}` again once it is repaired there",
            refs(failed_at_pull)
        ));
    }
    notes
}

/// The destination the archive was pulled from, and its pending refs that
/// no pull from there can bring: (how many, the reason the push there gave
/// one of them).
struct Pulled {
    /// As shown (no secrets).
    from: String,
    unplaced: (u64, Option<String>),
}

/// [`Pulled`], when the archive was pulled from a destination; its
/// unplaced refs are looked for only when `pending` refs are in scope.
fn pulled(catalog: &Catalog, envs: &Option<String>, pending: u64) -> Result<Option<Pulled>> {
    let Some(from) =
        crate::catalog::pull::read_setting(catalog.conn(), crate::catalog::pull::PULLED_FROM)
    else {
        return Ok(None);
    };
    let unplaced = match pending {
        0 => (0, None),
        _ => q::unplaced_at(catalog.conn(), envs, &from)?,
    };
    Ok(Some(Pulled { from, unplaced }))
}

/// Whether the catalog's records of `dest` can be trusted: the manifest the
/// last push wrote there is still there, as it was written (one request).
/// When it is not (the destination was deleted, replaced, or pushed to from
/// another archive), every object is looked for again in a listing.
fn manifest_still_there(
    ctx: &Context,
    store: &Store,
    conn: &Connection,
    dest: i64,
) -> Result<bool> {
    let Some((size, etag)) = q::manifest_record(conn, dest)? else {
        return Ok(false);
    };
    let path = store.path(MANIFEST_KEY).map_err(Error::Config)?;
    let same = match ctx.runtime.block_on(store.inner.head(&path)) {
        Ok(meta) => meta.size == size && (etag.is_none() || meta.e_tag == etag),
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => {
            return Err(Error::StoreRead {
                store: store.shown.clone(),
                key: MANIFEST_KEY.into(),
                reason: crate::download::describe(&e),
            });
        }
    };
    if !same {
        tracing::info!(
            "{MANIFEST_KEY} at {} is not the one this archive wrote: checking every object against a listing",
            store.shown
        );
    }
    Ok(same)
}

/// What the listing of a first push (or one that cannot trust its records) found.
#[derive(Default)]
struct Present {
    /// Refs placed at objects found there with the right size.
    taken: u64,
    /// Refs placed at keys holding an object of another size that starchive
    /// did not write there: left untouched, the refs failed.
    foreign_refs: u64,
    /// Those keys, and the reason given for the first.
    foreign_keys: u64,
    first_foreign: Option<String>,
}

/// Records as pushed the planned objects found at the destination with the
/// right size, in one listing read as it comes (as taken, not written). An
/// object of another size is overwritten only where push wrote that key:
/// any other is someone else's (the bot's newer file, in its live bucket)
/// and is left as it is, its refs failed with a reason that says so.
fn take_objects_present(
    ctx: &Context,
    store: &Store,
    conn: &Connection,
    dest: i64,
) -> Result<Present> {
    let mut listing = store.list_keys();
    let mut present = Present::default();
    while let Some(object) = ctx.runtime.block_on(listing.next()) {
        let (key, listed_size) = object.map_err(|e| stores::unusable(store, Role::To, &e))?;
        let Some(planned) = q::planned_pending(conn, &key)? else {
            continue;
        };
        if planned.size == listed_size {
            q::set_object(
                conn,
                dest,
                &key,
                &planned.sha256,
                planned.size,
                false,
                Ok(()),
            )?;
            q::set_planned_pushed(conn, &key)?;
            present.taken += planned.refs;
        } else if !planned.recorded {
            let reason = format!(
                "{key} at {} holds {listed_size} bytes that starchive did not write \
                 (the archive's file is {} bytes): left untouched; delete or move that \
                 object if the archive's file belongs there, or push to another \
                 destination or prefix",
                store.shown, planned.size
            );
            tracing::warn!("push refused for {key}: {reason}");
            q::refuse_foreign(conn, dest, &key, &planned.sha256, &reason)?;
            present.foreign_refs += planned.refs;
            present.foreign_keys += 1;
            present.first_foreign.get_or_insert(reason);
        }
    }
    Ok(present)
}

/// [`upload::remove_stale_staging`] beside every key the plan has still to push.
fn remove_stale_staging_of_plan(store: &Store, conn: &Connection) -> Result<()> {
    if store.local_root.is_none() {
        return Ok(());
    }
    q::for_each_dir_to_push(conn, |dir| {
        upload::remove_stale_staging(store, dir, |key| q::is_planned_to_push(conn, key))
    })
}

/// Uploads a blob at its first key and copies it on the server to the others.
/// A key the store refuses under the mirror layout gets the advice to push
/// with keys that are hashes.
async fn upload_blob(
    store: &Store,
    blobs: &BlobStore,
    upload: Upload,
    layout: Layout,
    bytes: &AtomicU64,
) -> Vec<KeyOutcome> {
    let Upload {
        sha256,
        size,
        kind,
        keys,
    } = upload;
    let outcome = |key: String, refs: u64, result: Result<(), String>| KeyOutcome {
        key,
        sha256: sha256.clone(),
        size,
        refs,
        result,
    };
    let file = blobs.path(&sha256);
    let mut out = Vec::with_capacity(keys.len());
    let mut first: Option<object_store::path::Path> = None;
    for (key, refs) in keys {
        let path = match store.path(&key) {
            Ok(p) => p,
            Err(reason) => {
                out.push(outcome(key, refs, Err(reason)));
                continue;
            }
        };
        let blob = upload::Blob {
            file: &file,
            sha256: &sha256,
            size,
            kind: &kind,
        };
        let result = upload::put_blob(store, &path, &blob, first.as_ref(), bytes)
            .await
            .map_err(|reason| match layout {
                Layout::Mirror if upload::refused_key(&key, &reason) => {
                    format!("{reason}; {}", crate::layout::CAS_ADVICE)
                }
                _ => reason,
            });
        if result.is_ok() && first.is_none() {
            first = Some(path);
        }
        out.push(outcome(key, refs, result));
    }
    out
}

/// Writes the manifest and the catalog copy (SPEC §5) of what the
/// destination holds (the refs and rows of the envs pushed there, [`scope`]) when
/// something changed since the last push to this destination (or
/// `must_write`), and records
/// the manifest as the store describes it. Returns the objects the store
/// refused for their size, each named with what to do: the push then exits
/// 3, and the next one writes them again.
///
/// The manifest's ref lines stream from the catalog through zstd into a
/// file of the archive, hashed on the way; its first line, which names the
/// copy's objects, is a zstd frame of its own written before them once the
/// copy is up (concatenated frames are one zstd stream). The copy is a
/// consistent snapshot of the catalog (`VACUUM INTO`), compressed and
/// uploaded a part at a time ([`manifest::write_catalog_copy`]). Memory
/// stays flat however large the catalog is.
fn write_self_description(
    ctx: &Context,
    catalog: &Catalog,
    store: &Store,
    dest: i64,
    layout: Layout,
    part_bytes: u64,
    must_write: bool,
) -> Result<Vec<String>> {
    use std::io::Write;

    let conn = catalog.conn();
    // What the destination holds: this push's envs and those pushed there before.
    let envs = &scope::widen(conn, dest, &ctx.env_param())?;
    // `[]`: every env.
    let envs_shown = envs
        .as_deref()
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or_else(|| serde_json::json!([]));
    let (snapshot_id, taken_at) = q::latest_snapshot(conn)?.unwrap_or((0, String::new()));
    let (refs, placed) = q::manifest_counts(conn, dest, envs)?;
    let mut header = serde_json::json!({
        "format": manifest::MANIFEST_FORMAT,
        "tool": TOOL,
        "archive_id": catalog.archive_id()?,
        "snapshot_id": snapshot_id,
        "snapshot_taken_at": taken_at,
        "layout": layout.name(),
        "envs": envs_shown,
        "counts": {"refs": refs, "pushed": placed},
    });
    let body = ctx.archive.join(".manifest-body.jsonl.zst");
    let manifest = ctx.archive.join(".manifest-copy.jsonl.zst");
    let copy = ctx.archive.join(".catalog-copy.sqlite");
    let part = ctx.archive.join(".catalog-copy.sqlite.zst.part");
    let cleanup = || {
        for file in [&body, &manifest, &copy, &part] {
            let _ = std::fs::remove_file(file);
        }
    };
    let cannot = |e: std::io::Error| Error::io("cannot write the manifest", e);
    let to_line = |value: &serde_json::Value| -> Result<Vec<u8>> {
        let mut line = serde_json::to_vec(value).map_err(Error::Manifest)?;
        line.push(b'\n');
        Ok(line)
    };
    let header_line = to_line(&header)?;
    let written = (|| -> Result<Option<String>> {
        // Unless something is known to have changed, the text is hashed
        // first, uncompressed and unwritten: most often it is the one the
        // destination holds, and compressing it would be for nothing.
        if !must_write {
            let digest = manifest_text(conn, dest, envs, &header_line, std::io::sink())?;
            if q::manifest_sha256(conn, dest)?.as_deref() == Some(digest.as_str()) {
                return Ok(None);
            }
        }
        let file = std::fs::File::create(&body).map_err(cannot)?;
        let mut encoder = zstd::Encoder::new(std::io::BufWriter::new(file), 3).map_err(cannot)?;
        let digest = manifest_text(conn, dest, envs, &header_line, &mut encoder)?;
        encoder.finish().map_err(cannot)?.flush().map_err(cannot)?;
        Ok(Some(digest))
    })();
    let digest = match written {
        Ok(Some(digest)) => digest,
        Ok(None) => {
            cleanup();
            return Ok(Vec::new());
        }
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };

    let mut refused = Vec::new();
    let result = (|| -> Result<()> {
        let _ = std::fs::remove_file(&copy);
        scope::copy_into(conn, &copy, envs)?;
        upload::remove_stale_staging(store, RESERVED_PREFIX, |key| {
            Ok(key == MANIFEST_KEY || manifest::is_catalog_copy_key(key))
        })?;
        let mut too_big = None;
        let copied = manifest::write_catalog_copy(
            &copy,
            part.clone(),
            part_bytes,
            |key, file, size, sha| {
                let result = ctx
                    .runtime
                    .block_on(upload::put_durable(store, key, file, size, sha));
                if let Err(reason) = &result
                    && upload::refused_for_size(reason)
                {
                    too_big = Some(format!(
                        "{} refused {key} ({size} bytes) as too large: \
                         raise the store's object size limit, then push again",
                        store.shown
                    ));
                }
                result.map_err(|reason| cannot_write(store, key, reason))
            },
        );
        let _ = std::fs::remove_file(&copy);
        let objects = match (copied, too_big) {
            (Ok(objects), _) => Some(objects),
            (Err(_), Some(message)) => {
                refused.push(message);
                None
            }
            (Err(e), None) => return Err(e),
        };
        header["catalog"] = serde_json::to_value(&objects).map_err(Error::Manifest)?;
        {
            let mut file = std::fs::File::create(&manifest).map_err(cannot)?;
            file.write_all(&zstd::encode_all(&to_line(&header)?[..], 3).map_err(cannot)?)
                .map_err(cannot)?;
            let mut rest = std::fs::File::open(&body).map_err(cannot)?;
            std::io::copy(&mut rest, &mut file).map_err(cannot)?;
        }
        let (size, sha) = hash_file(&manifest)?;
        match ctx.runtime.block_on(upload::put_durable(
            store,
            MANIFEST_KEY,
            &manifest,
            size,
            &sha,
        )) {
            Ok(()) => {}
            Err(reason) if upload::refused_for_size(&reason) => refused.push(format!(
                "{} refused {} ({size} bytes) as too large: \
                 raise the store's object size limit, then push again",
                store.shown, MANIFEST_KEY
            )),
            Err(reason) => return Err(cannot_write(store, MANIFEST_KEY, reason)),
        }
        // Recorded only when the copy is up too: otherwise the next push
        // does not trust the manifest and writes both again.
        if let Some(objects) = objects
            && refused.is_empty()
        {
            remove_stale_copies(ctx, store, &objects);
            let path = store.path(MANIFEST_KEY).map_err(Error::Config)?;
            let written = ctx
                .runtime
                .block_on(store.inner.head(&path))
                .map_err(|e| cannot_write(store, MANIFEST_KEY, crate::download::describe(&e)))?;
            q::set_manifest_record(conn, dest, &digest, written.size, written.e_tag.as_deref())?;
        }
        Ok(())
    })();
    cleanup();
    result.map(|()| refused)
}

/// Writes the manifest's ref lines to `out` and returns the sha256 of its
/// text: `header_line`, then those lines.
fn manifest_text(
    conn: &Connection,
    dest: i64,
    envs: &Option<String>,
    header_line: &[u8],
    mut out: impl std::io::Write,
) -> Result<String> {
    let mut text_hash = Sha256::new();
    text_hash.update(header_line);
    let mut line = Vec::new();
    q::for_each_manifest_ref(conn, dest, envs, |value| {
        line.clear();
        serde_json::to_writer(&mut line, value).map_err(Error::Manifest)?;
        line.push(b'\n');
        text_hash.update(&line);
        out.write_all(&line)
            .map_err(|e| Error::io("cannot write the manifest", e))
    })?;
    Ok(hex::encode(text_hash.finalize()))
}

/// Deletes the objects of older catalog copies (a plain `catalog.sqlite`,
/// parts beyond the current ones) once the manifest no longer names them.
/// Readers only take what the manifest names, so one left behind (a
/// failed delete) misleads nobody; it is only space.
fn remove_stale_copies(ctx: &Context, store: &Store, current: &[manifest::CopyObject]) {
    let Ok(dir) = store.path(RESERVED_PREFIX.trim_end_matches('/')) else {
        return;
    };
    let strip = if store.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", store.prefix)
    };
    ctx.runtime.block_on(async {
        let listed: Vec<_> = store.inner.list(Some(&dir)).collect().await;
        for meta in listed.into_iter().flatten() {
            let key = meta.location.as_ref();
            let key = key.strip_prefix(&strip).unwrap_or(key);
            if manifest::is_catalog_copy_key(key)
                && !current.iter().any(|o| o.key == key)
                && let Err(e) = store.inner.delete(&meta.location).await
            {
                tracing::warn!("cannot delete the stale {key}: {e}");
            }
        }
    });
}

/// (size, sha256) of a local file.
fn hash_file(file: &std::path::Path) -> Result<(u64, String)> {
    let cannot = |e| Error::io(format!("cannot read {}", file.display()), e);
    let mut reader = std::fs::File::open(file).map_err(cannot)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut reader, &mut hasher).map_err(cannot)?;
    Ok((size, hex::encode(hasher.finalize())))
}

fn cannot_write(store: &Store, key: &str, reason: String) -> Error {
    Error::StoreWrite {
        store: store.shown.clone(),
        key: key.into(),
        reason,
    }
}
