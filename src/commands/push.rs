//! `push`: every fetched ref to a destination store, then the manifest and a
//! copy of the catalog under `_starchive/`.
//!
//! The catalog records each object once the store acknowledged it, so a
//! second push compares the plan with the catalog and sends nothing; a push
//! killed midway resumes with what is left. On a first push to a store that
//! already holds objects, one listing finds what is there with the right size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt;
use object_store::{Attribute, Attributes, PutOptions, PutPayload, WriteMultipart};
use rusqlite::Connection;
use sha2::{Digest, Sha256};

use super::{Context, TransferReport};
use crate::blobs::{BlobStore, hex};
use crate::catalog::Catalog;
use crate::catalog::push::{self as q, FetchedRef};
use crate::error::{Error, Result};
use crate::layout::{Layout, dest_key};
use crate::stores::{self, Role, Store};
use crate::transfer::run_units;

/// Objects above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 8 << 20;
pub const MANIFEST_KEY: &str = "_starchive/manifest.jsonl.zst";
pub const CATALOG_COPY_KEY: &str = "_starchive/catalog.sqlite";
/// SQLite page cache of a push, in KiB (negative: SQLite's unit for KiB).
const PUSH_CACHE_KIB: i64 = -8 * 1024;
/// Version of the manifest's format, in its first line.
pub const MANIFEST_FORMAT: u32 = 1;

pub struct PushOptions {
    pub to: String,
    pub layout: Layout,
    pub jobs: usize,
}

/// One object the destination must hold, and the refs placed at its key.
#[derive(Debug)]
pub struct PlannedObject {
    pub key: String,
    pub sha256: String,
    pub size: u64,
    pub kind: String,
    pub refs: Vec<i64>,
}

/// Where every fetched ref goes at a destination.
#[derive(Debug, Default)]
pub struct PushPlan {
    pub objects: Vec<PlannedObject>,
    /// Refs that get no object: no key can be named, or their key holds other bytes.
    pub refused: Vec<(i64, Option<String>, String)>,
}

impl PushPlan {
    /// The plan of every fetched ref in scope, read from the catalog as a
    /// stream (no ref is held but the objects it adds to).
    pub fn from_catalog(conn: &Connection, envs: &Option<String>, layout: Layout) -> Result<Self> {
        let mut builder = PlanBuilder::default();
        q::for_each_fetched_ref(conn, envs, |r| {
            builder.add(r, layout);
            Ok(())
        })?;
        Ok(builder.finish())
    }
}

/// Builds a plan from refs in the catalog's order: those owning a storage
/// key first, so that a key's bytes are those of the ref the database names
/// it for.
#[derive(Default)]
struct PlanBuilder {
    by_key: BTreeMap<String, PlannedObject>,
    refused: Vec<(i64, Option<String>, String)>,
}

impl PlanBuilder {
    fn add(&mut self, r: FetchedRef, layout: Layout) {
        let key = match dest_key(layout, &r.place, &r.sha256, &r.kind) {
            Ok(key) => key,
            Err(reason) => {
                self.refused.push((r.id, None, reason));
                return;
            }
        };
        match self.by_key.get_mut(&key) {
            Some(object) if object.sha256 == r.sha256 => object.refs.push(r.id),
            Some(object) => {
                let reason = format!(
                    "key {key} already holds other bytes ({}) from another ref",
                    &object.sha256[..12]
                );
                self.refused.push((r.id, Some(key), reason));
            }
            None => {
                self.by_key.insert(
                    key.clone(),
                    PlannedObject {
                        key,
                        sha256: r.sha256,
                        size: r.size,
                        kind: r.kind,
                        refs: vec![r.id],
                    },
                );
            }
        }
    }

    fn finish(self) -> PushPlan {
        PushPlan {
            objects: self.by_key.into_values().collect(),
            refused: self.refused,
        }
    }
}

/// One blob to upload, and every key that needs it with the number of refs placed there.
struct Upload {
    sha256: String,
    size: u64,
    kind: String,
    keys: Vec<(String, u64)>,
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
    let mut catalog = Catalog::open_existing(&ctx.archive)?;
    // A push reads the catalog once and writes it in small batches: a small
    // page cache does, and keeps memory low however many refs there are
    // (the copy made by VACUUM INTO gets a cache of this size too).
    catalog
        .conn()
        .pragma_update(None, "cache_size", PUSH_CACHE_KIB)?;
    let store = stores::open(&opts.to, Role::To)?;
    let envs = ctx.env_param();
    let dest = q::destination(catalog.conn(), &store.shown, opts.layout)?;
    let PushPlan { objects, refused } = PushPlan::from_catalog(catalog.conn(), &envs, opts.layout)?;
    let pending = q::unfetched_count(catalog.conn(), &envs)?;

    // Placements first: what is known pushed stays so, the rest is pending.
    // `left[i]` says whether objects[i] is still to be pushed, and if so
    // whether an object of the right size found at its key may be taken for
    // it: not when the catalog knows that key to hold other bytes (a ref
    // whose file changed, same size or not).
    let mut left: Vec<Option<bool>> = Vec::with_capacity(objects.len());
    let mut skipped = 0u64;
    {
        let tx = catalog.conn_mut().transaction()?;
        for object in &objects {
            let recorded = q::recorded_object(&tx, dest, &object.key)?;
            let done = recorded.as_ref().is_some_and(|(sha, size, state)| {
                state == "pushed" && *sha == object.sha256 && *size == object.size
            });
            let state = if done { "pushed" } else { "pending" };
            for id in &object.refs {
                q::set_placement(&tx, dest, *id, Some(&object.key), state, None)?;
            }
            if done {
                skipped += object.refs.len() as u64;
                left.push(None);
            } else {
                let other_bytes = recorded.is_some_and(|(sha, _, _)| sha != object.sha256);
                left.push(Some(!other_bytes));
            }
        }
        for (id, key, reason) in &refused {
            q::set_placement(&tx, dest, *id, key.as_deref(), "failed", Some(reason))?;
        }
        tx.commit()?;
    }

    let mut done = 0u64;
    let mut failed = refused.len() as u64;
    drop(refused);
    let bytes = Arc::new(AtomicU64::new(0));
    let mut uploaded_any = false;

    if left.iter().any(Option::is_some) {
        let todo = || {
            objects
                .iter()
                .zip(&left)
                .filter_map(|(o, l)| l.map(|may_be_present| (o, may_be_present)))
        };
        let wanted: HashSet<&str> = todo()
            .filter(|(_, may_be_present)| *may_be_present)
            .map(|(o, _)| o.key.as_str())
            .collect();
        let present = ctx.runtime.block_on(list_sizes(&store, &wanted))?;
        drop(wanted);
        remove_stale_staging(&store, todo().map(|(o, _)| o.key.as_str()));
        // The plan's objects move into the uploads, grouped by blob.
        let mut uploads: BTreeMap<String, Upload> = BTreeMap::new();
        let tx = catalog.conn_mut().transaction()?;
        for (object, left) in objects.into_iter().zip(left) {
            let Some(may_be_present) = left else {
                continue;
            };
            let refs = object.refs.len() as u64;
            if may_be_present && present.get(&object.key) == Some(&object.size) {
                q::set_object(&tx, dest, &object.key, &object.sha256, object.size, Ok(()))?;
                skipped += refs;
                continue;
            }
            uploads
                .entry(object.sha256)
                .or_insert_with(|| Upload {
                    sha256: String::new(),
                    size: object.size,
                    kind: object.kind,
                    keys: Vec::new(),
                })
                .keys
                .push((object.key, refs));
        }
        tx.commit()?;
        drop(present);
        let uploads: Vec<Upload> = uploads
            .into_iter()
            .map(|(sha256, upload)| Upload { sha256, ..upload })
            .collect();
        let total: u64 = uploads.iter().map(|u| u.keys.len() as u64).sum();
        ctx.progress.start("pushing", Some(total));
        let blobs = Arc::new(BlobStore::new(&ctx.archive));
        let (store2, bytes2) = (store.clone(), bytes.clone());
        run_units(
            &ctx.runtime,
            ctx.progress.as_ref(),
            uploads.into_iter().map(Ok),
            opts.jobs,
            move |upload| {
                let (store, blobs, bytes) = (store2.clone(), blobs.clone(), bytes2.clone());
                async move { upload_blob(&store, &blobs, upload, &bytes).await }
            },
            |batch: Vec<Vec<KeyOutcome>>| {
                let tx = catalog.conn_mut().transaction()?;
                for outcome in batch.into_iter().flatten() {
                    match &outcome.result {
                        Ok(()) => {
                            done += outcome.refs;
                            uploaded_any = true;
                        }
                        Err(reason) => {
                            failed += outcome.refs;
                            tracing::warn!("push {}: {reason}", outcome.key);
                        }
                    }
                    q::set_object(
                        &tx,
                        dest,
                        &outcome.key,
                        &outcome.sha256,
                        outcome.size,
                        outcome.result.as_ref().map(|_| ()).map_err(String::as_str),
                    )?;
                }
                tx.commit()?;
                Ok(())
            },
        )?;
        ctx.progress.finish();
    }

    write_self_description(ctx, &catalog, &store, dest, opts.layout, uploaded_any)?;
    Ok(TransferReport {
        done,
        skipped,
        failed,
        pending,
        bytes: bytes.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        notes: Vec::new(),
    })
}

/// Sizes of the `wanted` objects already at the destination, keyed as the
/// plan keys them (one listing; the rest of the listing is not kept).
async fn list_sizes(store: &Store, wanted: &HashSet<&str>) -> Result<HashMap<String, u64>> {
    let prefix =
        (!store.prefix.is_empty()).then(|| object_store::path::Path::from(store.prefix.as_str()));
    let strip = if store.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", store.prefix)
    };
    let mut listing = store.inner.list(prefix.as_ref());
    let mut sizes = HashMap::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| {
            Error::Config(format!("cannot list the destination {}: {e}", store.shown))
        })?;
        let key = meta.location.as_ref();
        let key = key.strip_prefix(&strip).unwrap_or(key);
        if wanted.contains(key) {
            sizes.insert(key.to_string(), meta.size);
        }
    }
    Ok(sizes)
}

/// Removes what killed pushes left beside `keys` in a local destination.
///
/// `object_store` writes a local file as `<key>#<n>` and renames it into
/// place; a push killed in between leaves that file behind, hidden from
/// listings and never reused. Only such files beside keys this push is about
/// to write are removed (one directory read per directory).
fn remove_stale_staging<'a>(store: &Store, keys: impl IntoIterator<Item = &'a str>) {
    let Some(root) = &store.local_root else {
        return;
    };
    let mut by_dir: BTreeMap<std::path::PathBuf, HashSet<String>> = BTreeMap::new();
    for key in keys {
        let path = root.join(key);
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            by_dir
                .entry(dir.to_path_buf())
                .or_default()
                .insert(name.to_string_lossy().into_owned());
        }
    }
    for (dir, names) in by_dir {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = name.rsplit_once('#').is_some_and(|(base, n)| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && names.contains(base)
            });
            if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Uploads a blob at its first key and copies it on the server to the others.
async fn upload_blob(
    store: &Store,
    blobs: &BlobStore,
    upload: Upload,
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
        let put = || async {
            let attributes = object_attributes(store, &sha256, &kind);
            put_file(store, &path, &file, size, attributes).await?;
            bytes.fetch_add(size, Ordering::Relaxed);
            Ok(())
        };
        let result = match &first {
            Some(from) => match store.inner.copy(from, &path).await {
                Ok(()) => Ok(()),
                Err(_) => put().await,
            },
            None => put().await,
        };
        if result.is_ok() && first.is_none() {
            first = Some(path);
        }
        out.push(outcome(key, refs, result));
    }
    out
}

/// PUT of a local file of `size` bytes, in parts above [`MULTIPART_THRESHOLD`].
pub(crate) async fn put_file(
    store: &Store,
    path: &object_store::path::Path,
    file: &std::path::Path,
    size: u64,
    attributes: Attributes,
) -> Result<(), String> {
    if size <= MULTIPART_THRESHOLD {
        let data = tokio::fs::read(file)
            .await
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if data.len() as u64 != size {
            return Err(format!(
                "{} has {} bytes, not {size}: run `starchive verify`",
                file.display(),
                data.len()
            ));
        }
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        store
            .inner
            .put_opts(path, PutPayload::from(data), opts)
            .await
            .map_err(|e| e.to_string())?;
    } else {
        let opts = object_store::PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let upload = store
            .inner
            .put_multipart_opts(path, opts)
            .await
            .map_err(|e| e.to_string())?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_THRESHOLD as usize);
        // Every way out but success aborts the upload, so that the store
        // keeps no orphaned parts.
        let written: Result<(), String> = async {
            use tokio::io::AsyncReadExt;
            let mut reader = tokio::fs::File::open(file)
                .await
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = reader
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                writer
                    .wait_for_capacity(4)
                    .await
                    .map_err(|e| e.to_string())?;
                writer.write(&buf[..n]);
            }
            if total != size {
                return Err(format!(
                    "{} has {total} bytes, not {size}: run `starchive verify`",
                    file.display()
                ));
            }
            writer.wait_for_capacity(0).await.map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = written {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.finish().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub(crate) fn object_attributes(store: &Store, sha256: &str, kind: &str) -> Attributes {
    if !store.keeps_metadata() {
        return Attributes::new();
    }
    let content_type = match kind {
        "webp" => "image/webp",
        "png" => "image/png",
        "jpg" => "image/jpeg",
        "webm" => "video/webm",
        "tgs" => "application/x-tgsticker",
        _ => "application/octet-stream",
    };
    Attributes::from_iter([
        (Attribute::Metadata("sha256".into()), sha256.to_string()),
        (Attribute::ContentType, content_type.to_string()),
    ])
}

/// Writes `_starchive/manifest.jsonl.zst` and `_starchive/catalog.sqlite` when
/// something changed since the last push to this destination.
///
/// The manifest streams from the catalog through zstd into a file of the
/// archive, hashed on the way, so that memory stays flat however many refs
/// there are. Both objects carry their sha256 where the store keeps metadata.
fn write_self_description(
    ctx: &Context,
    catalog: &Catalog,
    store: &Store,
    dest: i64,
    layout: Layout,
    uploaded_any: bool,
) -> Result<()> {
    use std::io::Write;

    let conn = catalog.conn();
    let envs = ctx.env_param();
    let (snapshot_id, taken_at) = q::latest_snapshot(conn)?.unwrap_or((0, String::new()));
    let (refs, placed) = q::manifest_counts(conn, dest, &envs)?;
    let header = serde_json::json!({
        "format": MANIFEST_FORMAT,
        "tool": concat!("starchive ", env!("CARGO_PKG_VERSION")),
        "snapshot_id": snapshot_id,
        "snapshot_taken_at": taken_at,
        "layout": layout.name(),
        "envs": ctx.envs,
        "counts": {"refs": refs, "pushed": placed},
    });
    let manifest = ctx.archive.join(".manifest-copy.jsonl.zst");
    let copy = ctx.archive.join(".catalog-copy.sqlite");
    let written = (|| -> Result<Option<(String, String)>> {
        let cannot = |e: std::io::Error| Error::io("cannot write the manifest", e);
        let file = std::fs::File::create(&manifest).map_err(cannot)?;
        let mut encoder = zstd::Encoder::new(HashingWriter::new(std::io::BufWriter::new(file)), 3)
            .map_err(cannot)?;
        let mut text_hash = Sha256::new();
        let mut line =
            serde_json::to_vec(&header).map_err(|e| Error::Config(format!("manifest: {e}")))?;
        line.push(b'\n');
        text_hash.update(&line);
        encoder.write_all(&line).map_err(cannot)?;
        q::for_each_manifest_ref(conn, dest, &envs, |value| {
            line.clear();
            serde_json::to_writer(&mut line, &value)
                .map_err(|e| Error::Config(format!("manifest: {e}")))?;
            line.push(b'\n');
            text_hash.update(&line);
            encoder.write_all(&line).map_err(cannot)
        })?;
        let digest = hex(&text_hash.finalize());
        if !uploaded_any && q::manifest_sha256(conn, dest)?.as_deref() == Some(digest.as_str()) {
            return Ok(None);
        }
        let HashingWriter { mut inner, hasher } = encoder.finish().map_err(cannot)?;
        inner.flush().map_err(cannot)?;
        let file_sha = hex(&hasher.finalize());
        Ok(Some((digest, file_sha)))
    })();
    let (digest, manifest_sha) = match written {
        Ok(Some(done)) => done,
        Ok(None) => {
            let _ = std::fs::remove_file(&manifest);
            return Ok(());
        }
        Err(e) => {
            let _ = std::fs::remove_file(&manifest);
            return Err(e);
        }
    };

    let _ = std::fs::remove_file(&copy);
    conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])?;
    remove_stale_staging(store, [CATALOG_COPY_KEY, MANIFEST_KEY]);
    let result = ctx.runtime.block_on(async {
        for (key, file, sha) in [
            (CATALOG_COPY_KEY, &copy, None),
            (MANIFEST_KEY, &manifest, Some(manifest_sha.as_str())),
        ] {
            let (size, sha) = match sha {
                Some(sha) => (file_size(file)?, sha.to_string()),
                None => hash_file(file)?,
            };
            let path = store.path(key).map_err(Error::Config)?;
            put_file(
                store,
                &path,
                file,
                size,
                object_attributes(store, &sha, "bin"),
            )
            .await
            .map_err(|e| cannot_write(store, key, e))?;
        }
        Ok::<_, Error>(())
    });
    let _ = std::fs::remove_file(&copy);
    let _ = std::fs::remove_file(&manifest);
    result?;
    q::set_manifest_sha256(conn, dest, &digest)?;
    Ok(())
}

fn file_size(file: &std::path::Path) -> Result<u64> {
    Ok(std::fs::metadata(file)
        .map_err(|e| Error::io(format!("cannot read {}", file.display()), e))?
        .len())
}

/// (size, sha256) of a local file.
fn hash_file(file: &std::path::Path) -> Result<(u64, String)> {
    let cannot = |e| Error::io(format!("cannot read {}", file.display()), e);
    let mut reader = std::fs::File::open(file).map_err(cannot)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut reader, &mut hasher).map_err(cannot)?;
    Ok((size, hex(&hasher.finalize())))
}

/// A writer that hashes what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn cannot_write(store: &Store, key: &str, reason: String) -> Error {
    Error::Config(format!("cannot write {key} to {}: {reason}", store.shown))
}
