//! The uploader: local files into a store's objects, as every command that
//! writes to a store does it (push, backfill): one PUT, or a multipart
//! upload above [`MULTIPART_THRESHOLD`] that is aborted on any failure; a
//! server-side copy of a blob already put at another key; the metadata
//! starchive writes (`sha256`, content type); durability; and the clean-up
//! of what killed uploads left in a local store.

use std::sync::atomic::{AtomicU64, Ordering};

use object_store::{Attribute, Attributes, PutOptions, PutPayload, WriteMultipart};

use crate::error::Result;
use crate::stores::Store;

/// Objects above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 8 << 20;
/// Parts of one object uploaded while the next is read: each holds a part
/// in memory, and `--jobs` already uploads objects side by side.
const MULTIPART_PARTS_IN_FLIGHT: usize = 1;

/// PUT of a local file of `size` bytes, in parts above [`MULTIPART_THRESHOLD`].
pub async fn put_file(
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
            .map_err(|e| put_error(store, path, &e))?;
    } else {
        let opts = object_store::PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let upload = store
            .inner
            .put_multipart_opts(path, opts)
            .await
            .map_err(|e| put_error(store, path, &e))?;
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
                    .wait_for_capacity(MULTIPART_PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| put_error(store, path, &e))?;
                writer.write(&buf[..n]);
            }
            if total != size {
                return Err(format!(
                    "{} has {total} bytes, not {size}: run `starchive verify`",
                    file.display()
                ));
            }
            writer
                .wait_for_capacity(0)
                .await
                .map_err(|e| put_error(store, path, &e))
        }
        .await;
        if let Err(e) = written {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer
            .finish()
            .await
            .map_err(|e| put_error(store, path, &e))?;
    }
    Ok(())
}

/// A failed write of `path` as a reason that names the key as written: a
/// key a local disk cannot hold with why ([`crate::stores::name_too_long`]),
/// not by the staging file `object_store` tried to create; else the store's
/// answer condensed by [`crate::download::describe`] (never its XML body
/// nor the percent-encoded URL).
fn put_error(store: &Store, path: &object_store::path::Path, e: &object_store::Error) -> String {
    let key = path.as_ref();
    let key = match store.prefix.as_str() {
        "" => key,
        prefix => key
            .strip_prefix(prefix)
            .and_then(|k| k.strip_prefix('/'))
            .unwrap_or(key),
    };
    crate::stores::name_too_long(store, key, e)
        .unwrap_or_else(|| format!("key {key}: {}", crate::download::describe(e)))
}

/// Whether a failed write's `reason` says the store refuses the key
/// itself, whatever the bytes: S3's `InvalidKey`, or a 400 on a key with
/// characters other than ASCII (Supabase Storage's answer to those).
pub fn refused_key(key: &str, reason: &str) -> bool {
    reason.contains("InvalidKey") || (!key.is_ascii() && reason.contains("HTTP 400"))
}

/// The metadata starchive writes with an object, on a store that keeps
/// it: the blob's `sha256` (what `verify` checks) and its content type.
pub fn object_attributes(store: &Store, sha256: &str, kind: &str) -> Attributes {
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

/// A blob of the archive to put at a key.
pub struct Blob<'a> {
    /// Its file in `blobs/`.
    pub file: &'a std::path::Path,
    pub sha256: &'a str,
    pub size: u64,
    /// Its type (`webp`, …), for the content type.
    pub kind: &'a str,
}

/// Puts `blob` at `path`, durable before it returns: copied on the server
/// from `copy_from` (a key that holds the same bytes) when given, else, or
/// when the copy fails, uploaded with its metadata (its size then added to
/// `sent`).
pub async fn put_blob(
    store: &Store,
    path: &object_store::path::Path,
    blob: &Blob<'_>,
    copy_from: Option<&object_store::path::Path>,
    sent: &AtomicU64,
) -> Result<(), String> {
    let copied = match copy_from {
        Some(from) => store.inner.copy(from, path).await.is_ok(),
        None => false,
    };
    if !copied {
        let attributes = object_attributes(store, blob.sha256, blob.kind);
        put_file(store, path, blob.file, blob.size, attributes).await?;
        sent.fetch_add(blob.size, Ordering::Relaxed);
    }
    store.make_durable(path).await
}

/// [`put_file`], then made durable ([`Store::make_durable`]) before it
/// returns: for starchive's own objects (the manifest, the catalog copy).
pub async fn put_durable(
    store: &Store,
    key: &str,
    file: &std::path::Path,
    size: u64,
    sha256: &str,
) -> Result<(), String> {
    let path = store.path(key)?;
    put_file(
        store,
        &path,
        file,
        size,
        object_attributes(store, sha256, "bin"),
    )
    .await?;
    store.make_durable(&path).await
}

/// Removes what killed pushes left beside the keys this push is about to
/// write in directory `dir` (a key prefix: `a/b/`, or empty for the root) of
/// a local destination; `is_ours` says whether a key is one of them.
///
/// `object_store` writes a local file as `<key>#<n>` and renames it into
/// place; a push killed in between leaves that file behind, hidden from
/// listings and never reused. Only such files are removed, one directory
/// read per directory.
pub fn remove_stale_staging(
    store: &Store,
    dir: &str,
    mut is_ours: impl FnMut(&str) -> Result<bool>,
) -> Result<()> {
    let Some(root) = &store.local_root else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some((base, n)) = name.rsplit_once('#') else {
            continue;
        };
        let staging = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
        if staging
            && entry.file_type().is_ok_and(|t| t.is_file())
            && is_ours(&format!("{dir}{base}"))?
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Whether a store's refusal says the object is too large (S3's
/// `EntityTooLarge`, HTTP 413: Supabase's per-file limit).
pub fn refused_for_size(reason: &str) -> bool {
    reason.contains("EntityTooLarge")
        || reason.contains("status 413")
        || reason.contains("413 Payload Too Large")
}
