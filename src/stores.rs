//! Store URLs (SPEC §4) into `object_store` clients.
//!
//! `file:///abs/path`, a plain path, `s3://bucket/prefix?endpoint=…` (query
//! parameters named as `object_store` names them) and `memory://`. The URL's
//! path is a prefix before every key. Credentials come from the environment
//! for the store's role, never from the command line; the caller's other
//! `AWS_*` settings are not read, so a test or a laptop's AWS profile cannot
//! redirect a store.

use std::str::FromStr;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as StorePath;

use crate::error::{Error, Result};

pub mod hint;
mod probe;
pub(crate) use probe::CREDENTIAL_ERRORS;
pub use probe::{check, unusable};

/// The most bytes a file name (one segment of a key) can have on the
/// filesystems a local store sits on (ext4, XFS, btrfs, APFS, NTFS's 255
/// UTF-16 units are at least as many).
pub const LOCAL_NAME_MAX: usize = 255;

/// When `e` says a local store cannot name a file for `key` (its OS error
/// is "file name too long": `object_store` names its own staging file
/// `<key>#<n>`, which it shows instead), why, and what to do, naming the
/// key. `None` for any other error or store.
pub fn name_too_long(store: &Store, key: &str, e: &object_store::Error) -> Option<String> {
    // Only a local store names files after keys.
    store.local_root.as_ref()?;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidFilename)
        {
            let longest = key.split('/').map(str::len).max().unwrap_or(0);
            return Some(format!(
                "key {key}: a segment of {longest} bytes is too long for a file name on this local disk (at most {LOCAL_NAME_MAX} bytes, a few less for the last one while it is written): use --layout cas (keys of 64 hex characters) or an object store (S3) for such keys"
            ));
        }
        cause = c.source();
    }
    None
}

/// Whose credentials a store uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `--storage`: the bot's source bucket.
    Storage,
    /// `--to`: a destination.
    To,
    /// `pull --from`: a destination read back, with the credentials of a
    /// store read from (`STARCHIVE_STORAGE_*`).
    From,
}

impl Role {
    fn env_prefix(self) -> &'static str {
        match self {
            Role::Storage | Role::From => "STARCHIVE_STORAGE_",
            Role::To => "STARCHIVE_TO_",
        }
    }

    fn option(self) -> &'static str {
        match self {
            Role::Storage => "--storage",
            Role::To => "--to",
            Role::From => "--from",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    S3,
    Local,
    Memory,
}

/// An opened store and the prefix its URL names.
#[derive(Clone)]
pub struct Store {
    pub inner: Arc<dyn ObjectStore>,
    pub prefix: String,
    pub kind: StoreKind,
    /// The store's identity ([`crate::store_url`]): how it is shown, without
    /// secrets, and how a destination is recorded.
    pub shown: String,
    /// The directory of a local store.
    pub local_root: Option<std::path::PathBuf>,
    /// The signing region of an S3 store, named when the server refuses it.
    pub region: Option<String>,
    /// The `endpoint=` of an S3 store (none: AWS's), named when it cannot
    /// be reached.
    pub endpoint: Option<String>,
    /// A local store as itself, to find an object's file.
    local: Option<Arc<object_store::local::LocalFileSystem>>,
    /// The same S3 store with few retries, for the listing that checks it
    /// ([`check`]): no answer at all there (a mistyped host, a closed port)
    /// is said in a second, not after the ten retries of every request.
    quick: Option<Arc<dyn ObjectStore>>,
}

impl Store {
    /// The store path of a key (already checked by [`crate::layout::check_key`]).
    pub fn path(&self, key: &str) -> Result<StorePath, String> {
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        StorePath::parse(&full).map_err(|e| format!("unsafe key {key:?}: {e}"))
    }

    /// Makes the object at `path` durable before the catalog may say it is
    /// there. A remote store has it durable once it acknowledged it; the
    /// local store renames a finished file into place without an fsync, so
    /// here the file and its directory are synced.
    pub async fn make_durable(&self, path: &StorePath) -> Result<(), String> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        let file = local.path_to_filesystem(path).map_err(|e| e.to_string())?;
        crate::blocking::run(move || {
            std::fs::File::open(&file)?.sync_all()?;
            match file.parent() {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot make the object durable: {e}"))
    }

    /// Every object under the store's prefix, as its key (relative to the
    /// prefix) and size, streamed as the store pages its listing: nothing is
    /// held beyond the page being read.
    pub fn list_keys(&self) -> BoxStream<'static, object_store::Result<(String, u64)>> {
        let prefix = (!self.prefix.is_empty()).then(|| StorePath::from(self.prefix.as_str()));
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        self.inner
            .list(prefix.as_ref())
            .map(move |meta| {
                meta.map(|meta| {
                    let key = meta.location.as_ref();
                    let key = key.strip_prefix(&strip).unwrap_or(key);
                    (key.to_string(), meta.size)
                })
            })
            .boxed()
    }

    /// Whether objects keep user metadata (`x-amz-meta-*`).
    pub fn keeps_metadata(&self) -> bool {
        matches!(self.kind, StoreKind::S3 | StoreKind::Memory)
    }
}

const SECRET_OPTIONS: &[&str] = &[
    "access_key_id",
    "secret_access_key",
    "session_token",
    "token",
];

/// Whether a URL carries a user name or password (`scheme://user:pass@host`).
fn has_userinfo(url: &url::Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// Opens the store a URL names. A local directory must exist already: the
/// commands that write there create it first
/// ([`crate::store_url::create_local_dir`]).
pub fn open(url: &str, role: Role) -> Result<Store> {
    let shown = crate::redact::url(url);
    let usage = |msg: String| Error::Usage(format!("{} {shown}: {msg}", role.option()));
    crate::store_url::refuse_typo(url).map_err(usage)?;
    if let Some(rest) = url.strip_prefix("s3://") {
        let parsed = url::Url::parse(url).map_err(|e| usage(e.to_string()))?;
        // From here on the store is shown by its identity, readable (the
        // endpoint not percent-encoded) and as every later message shows it.
        let shown = crate::store_url::s3_identity(&parsed);
        let usage = |msg: String| Error::Usage(format!("{} {shown}: {msg}", role.option()));
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| usage("no bucket name (s3://BUCKET/prefix)".into()))?;
        // Over TLS, which already guards the bytes, the payload is not signed
        // (as boto3 and rclone do): no SHA-256 pass over every upload on
        // either side. Over plain http the signature is the only check of
        // the body in transit, so it stays. `unsigned_payload=` overrides.
        let over_tls = parsed
            .query_pairs()
            .find(|(k, _)| AmazonS3ConfigKey::from_str(k).ok() == Some(AmazonS3ConfigKey::Endpoint))
            .is_none_or(|(_, endpoint)| endpoint.starts_with("https://"));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_unsigned_payload(over_tls);
        let no_credentials_here = || {
            usage(format!(
                "credentials do not go on the command line: set {}ACCESS_KEY_ID and {}SECRET_ACCESS_KEY",
                role.env_prefix(),
                role.env_prefix()
            ))
        };
        if has_userinfo(&parsed) {
            return Err(no_credentials_here());
        }
        for (key, value) in parsed.query_pairs() {
            let lower = key.to_ascii_lowercase();
            let url_with_userinfo = url::Url::parse(&value).is_ok_and(|u| has_userinfo(&u));
            if url_with_userinfo
                || SECRET_OPTIONS
                    .iter()
                    .any(|s| lower.trim_start_matches("aws_") == *s)
            {
                return Err(no_credentials_here());
            }
            let config = AmazonS3ConfigKey::from_str(&key)
                .map_err(|_| usage(format!("unknown S3 option {key:?}")))?;
            builder = builder.with_config(config, value.into_owned());
        }
        let env = |name: &str| {
            std::env::var(format!("{}{name}", role.env_prefix()))
                .or_else(|_| std::env::var(format!("AWS_{name}")))
                .ok()
        };
        if let Some(v) = env("ACCESS_KEY_ID") {
            builder = builder.with_access_key_id(v);
        }
        if let Some(v) = env("SECRET_ACCESS_KEY") {
            crate::redact::remember(&v);
            builder = builder.with_secret_access_key(v);
        }
        if let Some(v) = env("SESSION_TOKEN") {
            crate::redact::remember(&v);
            builder = builder.with_token(v);
        }
        probe::settings(&builder, role, &shown)?;
        let region = builder.get_config_value(&AmazonS3ConfigKey::Region);
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .filter(|e| !e.is_empty())
            .map(|e| crate::redact::url(&e));
        let quick = builder
            .clone()
            .with_retry(probe::QUICK_RETRY)
            .build()
            .map_err(|e| usage(e.to_string()))?;
        let store = builder.build().map_err(|e| usage(e.to_string()))?;
        let prefix = rest
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .split_once('/')
            .map(|(_, p)| p.trim_matches('/').to_string())
            .unwrap_or_default();
        return Ok(Store {
            inner: Arc::new(store),
            prefix,
            kind: StoreKind::S3,
            shown,
            local_root: None,
            region,
            endpoint,
            local: None,
            quick: Some(Arc::new(quick)),
        });
    }
    if let Some(rest) = url.strip_prefix("memory://") {
        return Ok(Store {
            inner: Arc::new(object_store::memory::InMemory::new()),
            prefix: rest.trim_matches('/').to_string(),
            kind: StoreKind::Memory,
            shown: crate::store_url::identity(url).unwrap_or(shown),
            local_root: None,
            region: None,
            endpoint: None,
            local: None,
            quick: None,
        });
    }
    let dir = match crate::store_url::local_dir(url) {
        Some(dir) => dir.map_err(usage)?,
        None => {
            return Err(usage(
                "unknown store: use s3://, file:///, memory:// or a directory".into(),
            ));
        }
    };
    if !dir.is_dir() {
        let why = crate::store_url::not_a_dir(&dir).unwrap_or("no such directory");
        return Err(Error::Config(format!("{} {shown}: {why}", role.option())));
    }
    let dir = crate::store_url::local_identity(&dir);
    let store = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| usage(e.to_string()))?,
    );
    Ok(Store {
        inner: store.clone(),
        prefix: String::new(),
        kind: StoreKind::Local,
        shown: dir.to_string_lossy().into_owned(),
        local_root: Some(dir),
        region: None,
        endpoint: None,
        local: Some(store),
        quick: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_url_gives_bucket_prefix_and_refuses_secrets() {
        let store = open(
            "s3://bkt/some/prefix?endpoint=http://127.0.0.1:9&region=eu-west-1&allow_http=true&skip_signature=true",
            Role::To,
        )
        .expect("open");
        assert_eq!(store.prefix, "some/prefix");
        assert_eq!(store.kind, StoreKind::S3);
        assert_eq!(
            store.path("a/b.webp").expect("path").as_ref(),
            "some/prefix/a/b.webp"
        );
        let err = open("s3://bkt?secret_access_key=x", Role::To).err();
        assert!(matches!(err, Some(Error::Usage(m)) if !m.contains("=x")));
        for url in [
            "s3://bkt?endpoint=http://AKUSER:UrlSecret1@127.0.0.1:1&allow_http=true",
            "s3://bkt?endpoint=http%3A%2F%2FAKUSER%3AUrlSecret1%40127.0.0.1%3A1",
            "s3://bkt?endpoint=http://AKUSER@127.0.0.1:1",
            "s3://AKUSER:UrlSecret1@bkt/prefix",
        ] {
            match open(url, Role::Storage) {
                Err(Error::Usage(m)) => {
                    assert!(!m.contains("UrlSecret1"), "{m}");
                    assert!(m.contains("STARCHIVE_STORAGE_SECRET_ACCESS_KEY"), "{m}");
                }
                other => panic!("{url}: {:?}", other.err()),
            }
        }
    }

    #[test]
    fn plain_and_file_urls_are_local_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().display());
        assert_eq!(
            open(&url, Role::Storage).expect("open").kind,
            StoreKind::Local
        );
        assert!(open("file://relative", Role::Storage).is_err());
        assert!(open("ftp://x", Role::Storage).is_err());
    }
}
