//! The object check: whether a key of a store holds the bytes it should,
//! by size and sha256 metadata, or (deep) by hashing them as they stream.
//! `verify --to` checks a destination with it, `backfill` the bucket.

use futures::StreamExt;
use object_store::{Attribute, GetOptions};
use sha2::{Digest, Sha256};

use crate::stores::Store;

/// Chunks of an object at most hashed in one trip to the blocking pool.
const HASH_BATCH: usize = 64;

/// What a key was found to hold.
pub enum Check {
    /// The right size, and the right sha256 (metadata, or bytes when deep).
    Good,
    /// No object at the key; why, in words.
    Missing(String),
    /// Other bytes, or a key that cannot be read; why, in words.
    Bad(String),
}

/// Whether `key` holds `size` bytes hashing to `sha256` (by metadata, or by reading when `deep`).
pub async fn check_object(dest: &Store, key: &str, sha256: &str, size: u64, deep: bool) -> Check {
    inspect_object(dest, key, sha256, size, deep, false).await
}

/// [`check_object`]; with `ours`, the key is one starchive writes: on a
/// store that keeps metadata, bytes without its sha256 metadata are not its
/// own and are bad whatever they hash to.
pub async fn inspect_object(
    dest: &Store,
    key: &str,
    sha256: &str,
    size: u64,
    deep: bool,
    ours: bool,
) -> Check {
    let path = match dest.path(key) {
        Ok(p) => p,
        Err(e) => return Check::Bad(e),
    };
    let opts = GetOptions {
        head: !deep,
        ..GetOptions::default()
    };
    let result = match dest.inner.get_opts(&path, opts).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => {
            return Check::Missing("missing".into());
        }
        Err(e) if let Some(why) = crate::stores::name_too_long(dest, key, &e) => {
            return Check::Missing(format!("missing: {why}"));
        }
        Err(e) => {
            return Check::Bad(format!("cannot read: {}", crate::download::describe(&e)));
        }
    };
    if result.meta.size != size {
        return Check::Bad(format!("{} bytes, expected {size}", result.meta.size));
    }
    let foreign = match result.attributes.get(&Attribute::Metadata("sha256".into())) {
        Some(meta) if meta.as_ref() != sha256 => {
            return Check::Bad(format!(
                "sha256 metadata {}, expected {sha256}",
                meta.as_ref()
            ));
        }
        Some(_) => false,
        None => ours && dest.keeps_metadata(),
    };
    let not_ours = || {
        Check::Bad(format!(
            "no sha256 metadata: not written by starchive (expected {sha256})"
        ))
    };
    if foreign && !deep {
        return not_ours();
    }
    if deep {
        // Hashed on the blocking pool, the chunks that have come at a time.
        let mut hasher = Sha256::new();
        let mut batches = std::pin::pin!(result.into_stream().ready_chunks(HASH_BATCH));
        while let Some(batch) = batches.next().await {
            let chunks = match batch.into_iter().collect::<Result<Vec<_>, _>>() {
                Ok(chunks) => chunks,
                Err(e) => return Check::Bad(format!("cannot read: {e}")),
            };
            let hashed = crate::blocking::run(move || {
                chunks.iter().for_each(|chunk| hasher.update(chunk));
                hasher
            });
            hasher = match hashed.await {
                Ok(hasher) => hasher,
                Err(e) => return Check::Bad(e.to_string()),
            };
        }
        let got = hex::encode(hasher.finalize());
        if got != sha256 {
            return Check::Bad(format!("bytes hash to {got}, expected {sha256}"));
        }
    }
    if foreign {
        return not_ours();
    }
    Check::Good
}
