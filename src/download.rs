//! One GET of a store's object into a staged blob of the archive: streamed
//! into a staging file while it is hashed and counted, its length checked
//! against the object's. `fetch` reads the bot's bucket and `pull` a
//! destination through here; both publish what it stages with the
//! archive's [`crate::blobs::Publisher`].

use futures::StreamExt;

use crate::blobs::{BlobStore, Staged, WrongLength};
use crate::stores::Store;

/// Why one read of an object gave no blob.
pub enum ReadError {
    /// The store has no such object.
    Missing,
    /// 401/403 (never retried).
    Refused(object_store::Error),
    /// Larger than the most the caller takes (the size announced or read).
    TooBig(u64),
    /// For good (the local disk).
    Failed(String),
    /// A passing fault (an error answer, a broken or short body): try again.
    Again(String),
}

/// One GET of `key` (at `path` of `store`) into a staged blob whose length
/// is the object's; bodies over `max` bytes are refused. `what` starts every
/// reason (`bucket`, `source`).
pub async fn read_object(
    store: &Store,
    blobs: &BlobStore,
    path: &object_store::path::Path,
    key: &str,
    max: u64,
    what: &str,
) -> Result<Staged, ReadError> {
    let result = match store.inner.get(path).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Err(ReadError::Missing),
        Err(
            e @ (object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }),
        ) => return Err(ReadError::Refused(e)),
        Err(e) => return Err(ReadError::Again(format!("{what} {key}: {e}"))),
    };
    let size = result.meta.size;
    if size > max {
        return Err(ReadError::TooBig(size));
    }
    let mut staging = blobs
        .stage()
        .map_err(|e| ReadError::Failed(e.to_string()))?;
    let mut stream = result.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ReadError::Again(format!("{what} {key}: {e}")))?;
        if staging.size() + chunk.len() as u64 > max {
            return Err(ReadError::TooBig(staging.size() + chunk.len() as u64));
        }
        staging
            .write(&chunk)
            .map_err(|e| ReadError::Failed(e.to_string()))?;
    }
    staging
        .finish(Some(size))
        .map_err(|WrongLength { expected, got }| {
            ReadError::Again(format!(
                "{what} {key}: body of {got} bytes where {expected} were announced"
            ))
        })
}

/// Whether a 401/403 says the credentials themselves are refused (then no
/// object will be served), rather than a policy on one key.
pub fn credentials_refused(e: &object_store::Error) -> bool {
    let text = e.to_string();
    matches!(e, object_store::Error::Unauthenticated { .. })
        || crate::stores::CREDENTIAL_ERRORS
            .iter()
            .any(|code| text.contains(code))
}
