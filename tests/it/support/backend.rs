//! The stores the conformance suite runs against, behind one fixture: a
//! local directory, s3s-fs in process, the real Supabase Storage server and
//! the moto server. A test asks its backend for empty buckets
//! ([`Backend::bucket`]) and gets, for each, the URL and credentials to give
//! starchive and the test's own client to set up and read back objects.

use super::moto::{Moto, moto};
use super::objects::Objects;
use super::s3::TestS3;
use super::supabase::{Supabase, SupabaseBucket, supabase};
use super::temp_dir;

/// Which store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Local,
    S3s,
    Supabase,
    Moto,
}

/// One backend for one test.
pub struct Backend {
    pub kind: Kind,
    server: Server,
}

enum Server {
    Local(tempfile::TempDir),
    S3s(TestS3),
    Supabase(&'static Supabase),
    Moto(&'static Moto),
}

/// An empty bucket (or directory) of a backend.
pub struct Bucket {
    url: String,
    env: Vec<(String, String)>,
    /// The test's own client of the bucket.
    pub objects: Objects,
    /// Whether objects keep Content-Type and `x-amz-meta-*` (S3 stores).
    pub keeps_metadata: bool,
    /// Deletes a Supabase bucket when the test is done.
    _cleanup: Option<SupabaseBucket>,
}

impl Backend {
    /// The backend of `kind`, started (or reached) for this test.
    pub fn new(kind: Kind) -> Backend {
        let server = match kind {
            Kind::Local => Server::Local(temp_dir()),
            Kind::S3s => Server::S3s(TestS3::start()),
            Kind::Supabase => Server::Supabase(supabase()),
            Kind::Moto => Server::Moto(moto()),
        };
        Backend { kind, server }
    }

    /// A new empty bucket.
    pub fn bucket(&self) -> Bucket {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        match &self.server {
            Server::Local(dir) => {
                let path = dir.path().join(format!("bucket-{n}"));
                Bucket {
                    url: path.to_string_lossy().into_owned(),
                    env: Vec::new(),
                    objects: Objects::local(&path),
                    keeps_metadata: false,
                    _cleanup: None,
                }
            }
            Server::S3s(s3) => {
                let name = format!("bucket-{n}");
                s3.create_bucket(&name);
                Bucket {
                    url: s3.store_url(&name, ""),
                    env: s3.env("X"),
                    objects: Objects::s3(
                        &s3.endpoint(),
                        super::s3::REGION,
                        super::s3::ACCESS_KEY,
                        super::s3::SECRET_KEY,
                        &name,
                    ),
                    keeps_metadata: true,
                    _cleanup: None,
                }
            }
            Server::Supabase(server) => {
                let bucket = server.bucket();
                Bucket {
                    url: bucket.store_url(""),
                    env: server.env("X"),
                    objects: bucket.objects.clone(),
                    keeps_metadata: true,
                    _cleanup: Some(bucket),
                }
            }
            Server::Moto(server) => {
                let name = server.bucket();
                Bucket {
                    url: server.store_url(&name, ""),
                    env: server.env("X"),
                    objects: server.objects(&name),
                    keeps_metadata: true,
                    _cleanup: None,
                }
            }
        }
    }
}

impl Bucket {
    /// The store URL to give starchive.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The credentials for `role` (`STORAGE` or `TO`); none for a directory.
    pub fn env(&self, role: &str) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| (k.replace("_X_", &format!("_{role}_")), v.clone()))
            .collect()
    }
}

/// One `#[test]` per store, in modules `local`, `s3s`, `supabase` and
/// `moto`, for every test function named (each takes a `&Backend`).
macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        $crate::support::backend::on_every_store!(@backend local Local $($test)*);
        $crate::support::backend::on_every_store!(@backend s3s S3s $($test)*);
        $crate::support::backend::on_every_store!(@backend supabase Supabase $($test)*);
        $crate::support::backend::on_every_store!(@backend moto Moto $($test)*);
    };
    (@backend $module:ident $kind:ident $($test:ident)*) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    super::$test(&$crate::support::backend::Backend::new(
                        $crate::support::backend::Kind::$kind,
                    ));
                }
            )*
        }
    };
}
pub(crate) use on_every_store;
