//! An in-process S3 server for one test: s3s-fs over a temp dir, behind s3s
//! with SigV4 auth, served on `127.0.0.1:0` by a background thread.
//!
//! Layout of the root directory (s3s-fs 0.14):
//! - `<root>/<bucket>/` is a bucket; `<root>/<bucket>/<key>` the object's
//!   bytes, `/` in keys being subdirectories. A bucket directory holds
//!   nothing but objects (and empty directories left after deletes, since
//!   DeleteObject does not prune them).
//! - Sidecars live in the root itself, beside the bucket directories, never
//!   inside them:
//!   - `.bucket-{b64(bucket)}.object-{b64(key)}.metadata.json`: content-type
//!     etc. and user metadata (`x-amz-meta-*`), as
//!     `{"user_metadata":{"sha256":"..."},"content_type":"..."}`;
//!   - `.bucket-{b64(bucket)}.object-{b64(key)}.internal.json`: ETag and checksums;
//!   - `.upload-{uuid}.json`, `.upload_id-{uuid}.part-{n}`: multipart uploads;
//!   - `.tmp.{n}.internal.part`: writes in progress.
//!
//!   (b64 = URL-safe base64 without padding.) DeleteObject leaves both
//!   sidecars behind. An object without sidecars (written by [`TestS3::put_file`])
//!   is served fine: its ETag is its MD5, computed on demand.
//!
//! Behaviour worth knowing (s3s-fs 0.14.1):
//! - HEAD and GET return the stored user metadata and content-type.
//! - CopyObject works, copying the metadata sidecar unless the request says
//!   `x-amz-metadata-directive: REPLACE`. s3s-fs would fail a copy whose
//!   destination directory does not exist yet (it does a bare `fs::copy`); the
//!   counting layer below creates that directory first, as real S3 has no
//!   directories to miss.
//! - ListObjectsV2 returns keys, sizes and mtimes but no ETags.
//! - Conditional PUT (`If-None-Match: *`, `If-Match`) is supported.
//! - ListObjectsV2 walks the whole bucket directory for every request (a
//!   page of 1,000 keys costs a visit of every file), so a flat listing of N
//!   objects costs N²/1,000 visits; a listing with a delimiter and a prefix
//!   prunes the walk to that prefix.
//! - s3s-fs takes an empty `delimiter=` (rclone's flat listing sends one)
//!   for a delimiter, answering one common prefix and no object; S3 takes
//!   it for none, and so does this server ([`EmptyDelimiterIsNone`]).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{BackgroundServer, BoxError, HttpBody, full_body, percent_decode};

pub const ACCESS_KEY: &str = "starchive-test-key";
pub const SECRET_KEY: &str = "starchive-test-secret";
pub const REGION: &str = "us-east-1";

/// Categories counted by [`TestS3::requests`].
pub const CATEGORIES: &[&str] = &[
    "GET", "LIST", "PUT", "COPY", "HEAD", "POST", "DELETE", "OTHER", "TOTAL",
];

pub struct TestS3 {
    // Declared first: the server stops before the directory is removed.
    server: BackgroundServer,
    state: Arc<State>,
    dir: tempfile::TempDir,
}

#[derive(Default)]
struct State {
    counts: HashMap<&'static str, AtomicU64>,
    log: Mutex<Vec<(String, String)>>,
    faults: Mutex<Vec<Fault>>,
    /// Milliseconds every request waits before it is served.
    latency_ms: AtomicU64,
}

struct Fault {
    category: String,
    remaining: u64,
    status: u16,
    /// The S3 error code; `None`: the usual one for the status.
    code: Option<String>,
}

impl TestS3 {
    pub fn start() -> TestS3 {
        let dir = tempfile::Builder::new()
            .prefix("starchive-s3-")
            .tempdir()
            .expect("create temp dir for s3");
        let root = dir.path().canonicalize().expect("canonicalize s3 root");
        let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs FileSystem::new");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        builder.set_access(EmptyDelimiterIsNone);
        let service = builder.build();

        let state = Arc::new(State {
            counts: CATEGORIES.iter().map(|c| (*c, AtomicU64::new(0))).collect(),
            ..State::default()
        });
        let handler_state = Arc::clone(&state);
        let server = BackgroundServer::start("s3", move |req: Request<Incoming>| {
            let service = service.clone();
            let state = Arc::clone(&handler_state);
            let root = root.clone();
            async move { handle(service, state, &root, req).await }
        });
        TestS3 { server, state, dir }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        self.server.url()
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The s3s-fs root: bucket directories plus sidecar files.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root().join(bucket)
    }

    /// Creates a bucket (a directory under the root). s3s validates bucket
    /// names as AWS does (3-63 lowercase letters, digits, `-`, `.`), so a
    /// name it would refuse panics here.
    pub fn create_bucket(&self, bucket: &str) {
        assert!(
            s3s::path::check_bucket_name(bucket),
            "{bucket:?} is not a valid S3 bucket name"
        );
        std::fs::create_dir_all(self.bucket_dir(bucket)).expect("create bucket dir");
    }

    /// Writes an object directly into the bucket directory (no request
    /// counted). Any sidecar left by an earlier S3 write of the same key is
    /// removed so that ETag and metadata match the new bytes.
    pub fn put_file(&self, bucket: &str, key: &str, bytes: impl AsRef<[u8]>) {
        let path = self.object_path(bucket, key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create object dir");
        }
        std::fs::write(&path, bytes).expect("write object");
        for suffix in ["metadata.json", "internal.json"] {
            let _ = std::fs::remove_file(self.sidecar_path(bucket, key, suffix));
        }
    }

    /// Copies every file under `src` into the bucket (created if needed),
    /// the path relative to `src` being the key: e.g.
    /// `put_dir("stickers", "fixtures/bucket")`. Returns the number of files.
    pub fn put_dir(&self, bucket: &str, src: impl AsRef<Path>) -> usize {
        let src = src.as_ref();
        self.create_bucket(bucket);
        let mut stack = vec![src.to_path_buf()];
        let mut n = 0;
        while let Some(dir) = stack.pop() {
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(src).expect("under src");
                    let key: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    let bytes = std::fs::read(&path).expect("read fixture file");
                    self.put_file(bucket, &key.join("/"), bytes);
                    n += 1;
                }
            }
        }
        n
    }

    /// The stored bytes of an object, read from disk.
    pub fn get_file(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.object_path(bucket, key)).ok()
    }

    /// The user metadata (`x-amz-meta-*`, without the prefix) stored for an
    /// object by the last PUT/Copy through the server; empty when none.
    pub fn user_metadata(&self, bucket: &str, key: &str) -> HashMap<String, String> {
        let Ok(text) = std::fs::read(self.sidecar_path(bucket, key, "metadata.json")) else {
            return HashMap::new();
        };
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        value
            .get("user_metadata")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The content-type stored for an object, if the writer sent one.
    pub fn content_type(&self, bucket: &str, key: &str) -> Option<String> {
        let text = std::fs::read(self.sidecar_path(bucket, key, "metadata.json")).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
        value.get("content_type")?.as_str().map(str::to_owned)
    }

    /// Every object key in the bucket: sorted, `/`-joined paths relative to
    /// the bucket directory. s3s-fs keeps its sidecars outside bucket
    /// directories, so this is every regular file under it (in-progress
    /// `.tmp.*.internal.part` files are skipped all the same).
    pub fn object_keys(&self, bucket: &str) -> Vec<String> {
        let base = self.bucket_dir(bucket);
        let mut keys = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with(".tmp.") && name.ends_with(".internal.part") {
                        continue;
                    }
                    let rel = path.strip_prefix(&base).expect("under bucket dir");
                    let key: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    keys.push(key.join("/"));
                }
            }
        }
        keys.sort();
        keys
    }

    /// `s3://bucket/prefix?endpoint=http://127.0.0.1:PORT&region=us-east-1&allow_http=true`
    /// (no `/prefix` when `prefix` is empty).
    pub fn store_url(&self, bucket: &str, prefix: &str) -> String {
        super::s3_url(&self.endpoint(), REGION, bucket, prefix)
    }

    /// `STARCHIVE_{ROLE}_ACCESS_KEY_ID` and `STARCHIVE_{ROLE}_SECRET_ACCESS_KEY`
    /// for role `STORAGE` (`--storage`) or `TO` (`--to`).
    pub fn env(&self, role: &str) -> Vec<(String, String)> {
        super::s3_env(role, ACCESS_KEY, SECRET_KEY)
    }

    /// Requests received in a category, case-insensitive:
    /// - `GET`: object GETs (not listings); `LIST`: GETs on a bucket
    ///   (ListObjects/ListObjectsV2, GetBucketLocation...);
    /// - `PUT`: every PUT, copies and CreateBucket included; `COPY`: PUTs with
    ///   `x-amz-copy-source` only;
    /// - `HEAD`, `POST` (multipart, DeleteObjects), `DELETE`, `OTHER`;
    /// - `TOTAL`: everything.
    ///
    /// Requests answered by an injected fault are counted too.
    pub fn requests(&self, category: &str) -> u64 {
        let category = category.to_ascii_uppercase();
        match self.state.counts.get(category.as_str()) {
            Some(n) => n.load(Ordering::SeqCst),
            None => panic!("unknown request category {category:?}; known: {CATEGORIES:?}"),
        }
    }

    /// Every request so far as `(category, path?query)`, in arrival order.
    pub fn request_log(&self) -> Vec<(String, String)> {
        self.state.log.lock().expect("log lock").clone()
    }

    /// Every request from now on waits `delay` before it is served (a slow
    /// or distant store); `Duration::ZERO` turns it off.
    pub fn set_latency(&self, delay: std::time::Duration) {
        self.state
            .latency_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Zeroes the counters and clears the request log.
    pub fn reset_counts(&self) {
        for n in self.state.counts.values() {
            n.store(0, Ordering::SeqCst);
        }
        self.state.log.lock().expect("log lock").clear();
    }

    /// The next `times` requests of `category` (as in [`TestS3::requests`],
    /// or `*` for any) get an S3 error with that HTTP status (500
    /// InternalError, 503 SlowDown, 403 AccessDenied, 404 NoSuchKey...)
    /// instead of reaching the store.
    pub fn fail_next(&self, category: &str, times: u64, status: u16) {
        self.push_fault(category, times, status, None);
    }

    /// As [`TestS3::fail_next`], with the S3 error `code` of the answer
    /// (`FeatureNotEnabled`, `SignatureDoesNotMatch`...).
    pub fn fail_next_with_code(&self, category: &str, times: u64, status: u16, code: &str) {
        self.push_fault(category, times, status, Some(code.to_owned()));
    }

    fn push_fault(&self, category: &str, times: u64, status: u16, code: Option<String>) {
        self.state.faults.lock().expect("faults lock").push(Fault {
            category: category.to_ascii_uppercase(),
            remaining: times,
            status,
            code,
        });
    }

    fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        assert!(
            !key.split('/').any(|s| s == ".." || s == "."),
            "object key {key:?} would leave the bucket"
        );
        self.bucket_dir(bucket).join(key.trim_start_matches('/'))
    }

    fn sidecar_path(&self, bucket: &str, key: &str, suffix: &str) -> PathBuf {
        self.root().join(format!(
            ".bucket-{}.object-{}.{suffix}",
            base64_url_nopad(bucket.as_bytes()),
            base64_url_nopad(key.as_bytes())
        ))
    }
}

/// Reads a listing's empty `delimiter=` as no delimiter, as S3 does
/// (after the request's signature is checked, which covers the query).
struct EmptyDelimiterIsNone;

#[async_trait::async_trait]
impl s3s::access::S3Access for EmptyDelimiterIsNone {
    async fn list_objects(
        &self,
        req: &mut s3s::S3Request<s3s::dto::ListObjectsInput>,
    ) -> s3s::S3Result<()> {
        if req.input.delimiter.as_deref() == Some("") {
            req.input.delimiter = None;
        }
        Ok(())
    }

    async fn list_objects_v2(
        &self,
        req: &mut s3s::S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> s3s::S3Result<()> {
        if req.input.delimiter.as_deref() == Some("") {
            req.input.delimiter = None;
        }
        Ok(())
    }
}

async fn handle(
    service: s3s::service::S3Service,
    state: Arc<State>,
    root: &Path,
    req: Request<Incoming>,
) -> Result<Response<HttpBody>, BoxError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    let has_key = segments.len() == 2 && !segments[1].is_empty();
    let is_copy = req.headers().contains_key("x-amz-copy-source");
    let category: &'static str = match req.method().as_str() {
        "GET" if has_key => "GET",
        "GET" => "LIST",
        "PUT" => "PUT",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "DELETE" => "DELETE",
        _ => "OTHER",
    };
    let bump = |c: &str| {
        if let Some(n) = state.counts.get(c) {
            n.fetch_add(1, Ordering::SeqCst);
        }
    };
    bump(category);
    bump("TOTAL");
    if is_copy && category == "PUT" {
        bump("COPY");
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
    state.log.lock().expect("log lock").push((
        (if is_copy { "COPY" } else { category }).to_owned(),
        path_and_query,
    ));

    let latency = state.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }

    if let Some((status, code)) = take_fault(&state, category, is_copy) {
        return Ok(s3_error_response(status, code.as_deref()));
    }

    // s3s-fs copies with a bare fs::copy: make the destination's directory.
    if is_copy && has_key {
        let bucket = percent_decode(segments[0]);
        let key = percent_decode(segments[1]);
        if !key.split('/').any(|s| s == ".." || s == ".")
            && !bucket.contains('/')
            && let Some(parent) = root.join(&bucket).join(&key).parent()
            && root.join(&bucket).is_dir()
        {
            let _ = std::fs::create_dir_all(parent);
        }
    }

    // Served on a task of its own: a request whose client goes away (killed
    // mid-upload) is still carried out whole or not at all, as S3 does, and
    // never stopped between s3s-fs writing an object and its metadata.
    let call = tokio::spawn(async move { service.call(req.map(s3s::Body::from)).await });
    let resp = call
        .await
        .map_err(BoxError::from)?
        .map_err(BoxError::from)?;
    Ok(resp.map(|b| b.boxed_unsync()))
}

fn take_fault(state: &State, category: &str, is_copy: bool) -> Option<(u16, Option<String>)> {
    let mut faults = state.faults.lock().expect("faults lock");
    let idx = faults.iter().position(|f| {
        f.remaining > 0
            && (f.category == "*" || f.category == category || (is_copy && f.category == "COPY"))
    })?;
    let fault = &mut faults[idx];
    fault.remaining -= 1;
    let status = (fault.status, fault.code.clone());
    if fault.remaining == 0 {
        faults.remove(idx);
    }
    Some(status)
}

fn s3_error_response(status: u16, code: Option<&str>) -> Response<HttpBody> {
    let code = code.unwrap_or(match status {
        400 => "InvalidRequest",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        409 => "OperationAborted",
        412 => "PreconditionFailed",
        429 | 503 => "SlowDown",
        501 => "NotImplemented",
        _ => "InternalError",
    });
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by TestS3</Message></Error>"
    );
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/xml")
        .body(full_body(body))
        .expect("build error response")
}

/// URL-safe base64 without padding, as s3s-fs names its sidecars.
fn base64_url_nopad(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[idx as usize]));
        }
    }
    out
}
