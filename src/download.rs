//! One GET of a store's object into a staged blob of the archive: streamed
//! into a staging file while it is hashed and counted, its length checked
//! against the object's. `fetch` reads the bot's bucket and `pull` a
//! destination through here; both publish what it stages with the
//! archive's [`crate::blobs::Publisher`].

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::blobs::{BlobStore, Staged, Unfinished, WrongLength};
use crate::error::Error;
use crate::stores::Store;

/// Why one read of an object gave no blob.
pub enum ReadError {
    /// The store has no such object.
    Missing,
    /// 401/403 (never retried).
    Refused(object_store::Error),
    /// Larger than the most the caller takes (the size announced or read).
    TooBig(u64),
    /// The archive's disk refused the staging file ([`Error::disk_refuses`]):
    /// stop, no object would fare better.
    Disk(Error),
    /// A client error about this key alone ([`S3Answer::is_about_the_key`]:
    /// a 4xx such as Supabase's 400 InvalidKey for a non-ASCII key): the
    /// store will not serve it, but the file may be had elsewhere.
    Unreadable(String),
    /// For good: the local disk, or a fault the store's client already
    /// retried (object_store's `RetryConfig` retries 5xx, 429, timeouts and
    /// broken connections, and resumes a broken body with a ranged GET when
    /// the object has an ETag).
    Failed(String),
    /// A passing fault object_store does not retry: a broken body of an
    /// object without an ETag, or a body of another length than announced.
    /// Try again.
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
        // A name a local disk cannot hold: no such file can be there.
        Err(e) if let Some(why) = crate::stores::name_too_long(store, key, &e) => {
            tracing::debug!("{what} {why}");
            return Err(ReadError::Missing);
        }
        Err(
            e @ (object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }),
        ) => return Err(ReadError::Refused(e)),
        Err(e) => {
            return Err(match S3Answer::of(&e) {
                Some(a) if a.is_about_the_key() => {
                    ReadError::Unreadable(format!("{what} {key}: {a}"))
                }
                Some(a) => ReadError::Failed(format!("{what} {key}: {a}")),
                None => {
                    ReadError::Failed(format!("{what} {key}: {}", without_request(&e.to_string())))
                }
            });
        }
    };
    let size = result.meta.size;
    let resumable = result.meta.e_tag.is_some();
    if size > max {
        return Err(ReadError::TooBig(size));
    }
    stage_body(blobs, result.into_stream(), max, Some(size))
        .await
        .map_err(|e| match e {
            StageError::Body(e) if resumable => ReadError::Failed(format!("{what} {key}: {e}")),
            StageError::Body(e) => ReadError::Again(format!("{what} {key}: {e}")),
            StageError::TooBig(size) => ReadError::TooBig(size),
            StageError::Disk(e) if e.disk_refuses() => ReadError::Disk(e),
            StageError::Disk(e) => ReadError::Failed(e.to_string()),
            StageError::Length(WrongLength { expected, got }) => ReadError::Again(format!(
                "{what} {key}: body of {got} bytes where {expected} were announced"
            )),
        })
}

/// What an S3 error answer says: its HTTP status, and the `Code` and
/// `Message` of its XML body (unescaped). Reasons carry these, never the raw
/// body (a kilobyte of XML, the request's URL with it).
#[derive(Debug, PartialEq, Eq)]
pub struct S3Answer {
    pub status: u16,
    pub code: Option<String>,
    pub message: Option<String>,
}

/// Codes that say the bucket or the credentials are wrong, or the server
/// is busy, not that one key cannot be read (with [`crate::stores::CREDENTIAL_ERRORS`]).
const NOT_ABOUT_THE_KEY: &[&str] = &[
    "NoSuchBucket",
    "InvalidBucketName",
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "AuthorizationHeaderMalformed",
    "RequestTimeTooSkewed",
    "SlowDown",
    "RequestTimeout",
];

impl S3Answer {
    /// The answer `e` carries (object_store shows it as `Server returned
    /// non-2xx status code: 400 Bad Request: <?xml …`), if any.
    pub fn of(e: &object_store::Error) -> Option<S3Answer> {
        Self::parse(&e.to_string())
    }

    fn parse(text: &str) -> Option<S3Answer> {
        const STATUS: &str = "status code: ";
        let at = text.find(STATUS)? + STATUS.len();
        let status = text.get(at..at + 3)?.parse().ok()?;
        let body = &text[at..];
        let field = |name: &str| {
            let open = format!("<{name}>");
            let start = body.find(&open)? + open.len();
            let end = start + body[start..].find(&format!("</{name}>"))?;
            let raw = &body[start..end];
            let text =
                quick_xml::escape::unescape(raw).map_or_else(|_| raw.into(), |t| t.into_owned());
            Some(text.trim().to_string())
        };
        Some(S3Answer {
            status,
            code: field("Code"),
            message: field("Message"),
        })
    }

    /// A client error about the key asked for: a 4xx other than the
    /// credentials (401, 403), a missing key (404), a timeout or throttling
    /// (408, 429), and not one of the codes about the bucket or the
    /// credentials ([`NOT_ABOUT_THE_KEY`]).
    pub fn is_about_the_key(&self) -> bool {
        let code = self.code.as_deref().unwrap_or("");
        (400..500).contains(&self.status)
            && !matches!(self.status, 401 | 403 | 404 | 408 | 429)
            && !NOT_ABOUT_THE_KEY.contains(&code)
            && !crate::stores::CREDENTIAL_ERRORS.contains(&code)
    }
}

impl std::fmt::Display for S3Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

/// `e` in a line: the [`S3Answer`] it carries, else its text without the
/// request's percent-encoded URL (`Error performing PUT http://… in 3s -
/// <cause>` becomes the cause). Every object-store error that becomes a
/// reason or a message goes through here.
pub fn describe(e: &object_store::Error) -> String {
    S3Answer::of(e).map_or_else(|| without_request(&e.to_string()), |a| a.to_string())
}

fn without_request(text: &str) -> String {
    const REQUEST: &str = "Error performing ";
    match text.find(REQUEST) {
        Some(at) => match text[at..].find(" - ") {
            Some(end) => text[at + end + 3..].to_string(),
            None => text.to_string(),
        },
        None => text.to_string(),
    }
}

/// Why a body gave no staged blob.
#[derive(Debug)]
pub enum StageError<E> {
    /// The body failed midway (the source's error).
    Body(E),
    /// More than the most taken: the bytes seen so far.
    TooBig(u64),
    /// The staging file could not be written (the local disk).
    Disk(Error),
    /// The body's length is not the one announced.
    Length(WrongLength),
}

/// Bytes gathered before one trip to the blocking pool: a large file goes
/// in steps of this much memory.
const BATCH: usize = 1 << 20;

/// The largest body staged on the async worker itself: a sticker (at most
/// 512 KiB) is created, written and hashed in well under a millisecond, into
/// the page cache, while a trip to the blocking pool and back costs two
/// thread wake-ups, as much CPU as the rest of its download (`bench/pull.sh`:
/// a quarter of the wall time).
const INLINE: usize = 512 << 10;

/// Streams `body` into a staged blob of `blobs`, refused as soon as it
/// passes `max` bytes, and unless it has `expected` bytes. A body of at most
/// [`INLINE`] bytes is staged where it arrived; a larger one on the blocking
/// pool ([`crate::blocking::run`]), a batch of chunks at a time, so the
/// async workers only wait on the network.
pub async fn stage_body<E>(
    blobs: &BlobStore,
    body: impl Stream<Item = Result<Bytes, E>>,
    max: u64,
    expected: Option<u64>,
) -> Result<Staged, StageError<E>>
where
    E: Send + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut staging = blobs.stage();
    let mut seen = 0u64;
    let mut batch = Vec::new();
    let mut batched = 0;
    loop {
        let chunk = body.next().await.transpose().map_err(StageError::Body)?;
        let end = chunk.is_none();
        if let Some(chunk) = chunk {
            seen += chunk.len() as u64;
            if seen > max {
                return Err(StageError::TooBig(seen));
            }
            batched += chunk.len();
            batch.push(chunk);
            if batched < BATCH {
                continue;
            }
        }
        let chunks = std::mem::take(&mut batch);
        let small = end && seen <= INLINE as u64;
        batched = 0;
        let step = move || {
            for chunk in &chunks {
                staging.write(chunk).map_err(StageError::Disk)?;
            }
            if !end {
                return Ok(Err(staging));
            }
            staging.finish(expected).map(Ok).map_err(|e| match e {
                Unfinished::Length(wrong) => StageError::Length(wrong),
                Unfinished::Disk(e) => StageError::Disk(e),
            })
        };
        let step = if small {
            step()?
        } else {
            crate::blocking::run(step)
                .await
                .map_err(|e| StageError::Disk(Error::Internal(e.to_string())))??
        };
        match step {
            Ok(staged) => return Ok(staged),
            Err(more) => staging = more,
        }
    }
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

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;

    fn chunks(body: &[u8], size: usize) -> Vec<Result<Bytes, String>> {
        body.chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    }

    fn stage(
        blobs: &BlobStore,
        body: Vec<Result<Bytes, String>>,
        max: u64,
        expected: Option<u64>,
    ) -> Result<Staged, StageError<String>> {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(stage_body(
            blobs,
            futures::stream::iter(body),
            max,
            expected,
        ))
    }

    #[test]
    fn a_fault_without_an_answer_is_its_cause_never_the_url() {
        assert_eq!(
            without_request(
                "Generic S3 error: Error performing PUT http://h/s3/b/%D0%BA in 3.2s, after 10 retries, max_retries: 10 - HTTP error: error sending request"
            ),
            "HTTP error: error sending request"
        );
        assert_eq!(without_request("disk full"), "disk full");
    }

    #[test]
    fn an_s3_answer_is_its_status_code_and_message_never_its_xml() {
        let text = "Generic S3 error: Error performing GET http://h/s3/b/k in 11ms - Server returned non-2xx status code: 400 Bad Request: <?xml version=\"1.0\"?><Error xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Resource>b/k</Resource><Code>InvalidKey</Code><Message>Invalid key: a&amp;b ünï</Message></Error>";
        let answer = S3Answer::parse(text).expect("an answer");
        assert_eq!(
            answer.to_string(),
            "HTTP 400 InvalidKey: Invalid key: a&b ünï"
        );
        assert!(answer.is_about_the_key());
        let about = |status: u16, code: &str| {
            S3Answer {
                status,
                code: Some(code.into()),
                message: None,
            }
            .is_about_the_key()
        };
        assert!(about(400, "InvalidArgument"));
        assert!(about(416, "InvalidRange"));
        for (status, code) in [
            (400, "AuthorizationHeaderMalformed"),
            (400, "InvalidAccessKeyId"),
            (403, "AccessDenied"),
            (404, "NoSuchKey"),
            (429, "SlowDown"),
            (500, "InternalError"),
        ] {
            assert!(!about(status, code), "{status} {code}");
        }
        assert_eq!(S3Answer::parse("connection reset"), None);
    }

    #[test]
    fn a_body_over_several_batches_is_staged_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::new(dir.path());
        let body: Vec<u8> = (0..BATCH * 5 / 2).map(|i| (i % 251) as u8).collect();
        let n = body.len() as u64;
        let staged = stage(&blobs, chunks(&body, 60_000), n, Some(n)).expect("staged");
        assert_eq!(staged.info().size, n);
        assert_eq!(
            staged.info().sha256,
            hex::encode(sha2::Sha256::digest(&body))
        );
    }

    #[test]
    fn a_body_is_refused_once_it_passes_the_most_taken_or_the_announced_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::new(dir.path());
        let body = vec![7u8; 10_000];
        assert!(matches!(
            stage(&blobs, chunks(&body, 4000), 9_999, None),
            Err(StageError::TooBig(10_000))
        ));
        assert!(matches!(
            stage(&blobs, chunks(&body, 4000), 10_000, Some(10_001)),
            Err(StageError::Length(WrongLength {
                expected: 10_001,
                got: 10_000
            }))
        ));
        let mut broken = chunks(&body, 4000);
        broken.push(Err("reset".into()));
        assert!(matches!(
            stage(&blobs, broken, 20_000, None),
            Err(StageError::Body(e)) if e == "reset"
        ));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("blobs/tmp"))
            .map(|d| d.collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "a refused body leaves no staging file: {left:?}"
        );
    }
}
