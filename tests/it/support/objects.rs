//! The test's own view of one bucket or directory, through `object_store`
//! (the client starchive uses, configured here by the test, never from the
//! environment): to put a source bucket's objects in place and to read back
//! what starchive wrote, the same way on every backend.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{Attribute, GetOptions, ObjectStore, PutPayload};

/// One runtime for every blocking call of the test support.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-objects")
            .enable_all()
            .build()
            .expect("build the test support runtime")
    })
}

/// What a HEAD of an object says beyond its bytes.
#[derive(Debug, Default)]
pub struct Head {
    pub size: u64,
    pub content_type: Option<String>,
    /// `x-amz-meta-*`, names without the prefix.
    pub metadata: HashMap<String, String>,
}

/// A bucket (or a directory) as the test sees it.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
}

impl Objects {
    /// A bucket of an S3 server at `endpoint` (`http://...`, path-style).
    pub fn s3(endpoint: &str, region: &str, key: &str, secret: &str, bucket: &str) -> Objects {
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_region(region)
            .with_bucket_name(bucket)
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .with_allow_http(true)
            .build()
            .expect("test S3 client");
        Objects {
            store: Arc::new(store),
        }
    }

    /// A local directory (created if missing).
    pub fn local(dir: &Path) -> Objects {
        std::fs::create_dir_all(dir).expect("create the directory");
        let store =
            object_store::local::LocalFileSystem::new_with_prefix(dir).expect("local store");
        Objects {
            store: Arc::new(store),
        }
    }

    fn path(key: &str) -> StorePath {
        StorePath::parse(key).unwrap_or_else(|e| panic!("test key {key:?}: {e}"))
    }

    pub fn put(&self, key: &str, bytes: impl Into<Vec<u8>>) {
        let payload = PutPayload::from(bytes.into());
        runtime()
            .block_on(self.store.put(&Self::path(key), payload))
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    /// Puts every file under `src`, its path relative to `src` as the key.
    /// Returns the number of files.
    pub fn put_dir(&self, src: impl AsRef<Path>) -> usize {
        let files = files(src.as_ref());
        for (key, path) in &files {
            self.put(key, std::fs::read(path).expect("read file"));
        }
        files.len()
    }

    /// The bytes at `key`, `None` when there is no such object.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        runtime().block_on(async {
            match self.store.get(&Self::path(key)).await {
                Ok(got) => Some(got.bytes().await.expect("object bytes").to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("get {key}: {e}"),
            }
        })
    }

    /// Content-Type and user metadata of `key` (panics when it is missing).
    pub fn head(&self, key: &str) -> Head {
        let opts = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let got = runtime()
            .block_on(self.store.get_opts(&Self::path(key), opts))
            .unwrap_or_else(|e| panic!("head {key}: {e}"));
        let mut head = Head {
            size: got.meta.size,
            ..Head::default()
        };
        for (attribute, value) in &got.attributes {
            match attribute {
                Attribute::ContentType => head.content_type = Some(value.to_string()),
                Attribute::Metadata(name) => {
                    head.metadata.insert(name.to_string(), value.to_string());
                }
                _ => {}
            }
        }
        head
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = runtime()
            .block_on(
                self.store
                    .list(None)
                    .map_ok(|m| m.location.to_string())
                    .try_collect(),
            )
            .expect("list");
        keys.sort();
        keys
    }

    /// Every object with its bytes.
    pub fn all(&self) -> BTreeMap<String, Vec<u8>> {
        self.keys()
            .into_iter()
            .map(|k| {
                let bytes = self
                    .get(&k)
                    .unwrap_or_else(|| panic!("{k} listed but gone"));
                (k, bytes)
            })
            .collect()
    }

    pub fn delete(&self, key: &str) {
        runtime()
            .block_on(self.store.delete(&Self::path(key)))
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }

    /// Deletes every object (one request each: Supabase's DeleteObjects
    /// wants a Content-Type that not every client sends).
    pub fn clear(&self) {
        for key in self.keys() {
            self.delete(&key);
        }
    }
}

/// Every file under `dir` (nothing when there is no `dir`), with its path
/// relative to `dir` as a `/`-joined key. Links are listed, not followed.
pub fn files(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
                continue;
            }
            let key: Vec<String> = path
                .strip_prefix(dir)
                .expect("under dir")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push((key.join("/"), path));
        }
    }
    out
}

/// [`files`] with their bytes (empty for one that cannot be read).
pub fn files_under(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    files(dir)
        .into_iter()
        .map(|(key, path)| (key, std::fs::read(path).unwrap_or_default()))
        .collect()
}
