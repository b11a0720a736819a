//! Shared helpers for starchive's integration tests.
//!
//! - [`pg::TestPg`]: a throwaway PostgreSQL cluster on a free loopback port.
//! - [`s3::TestS3`]: an in-process S3 server (s3s + s3s-fs) with request counters.
//! - [`telegram::FakeTelegram`]: a fake Telegram Bot API with scriptable faults.
//! - [`supabase::supabase`]: the real Supabase Storage server.
//! - [`moto::moto`]: the `moto` server (AWS S3's behaviour).
//! - [`objects::Objects`]: the test's own client of a bucket or directory.
//! - [`run`]: running the binary ([`run::Run`]) and reading its catalog.
//! - [`dataset`]: the fixture bot, generated datasets ([`dataset::Db`]).
//! - [`bench`]: what the benchmarks share (medians, timing, rclone).
//!
//! The two HTTP servers run on a background thread with their own tokio
//! runtime ([`BackgroundServer`]), so they keep serving whether the test is a
//! plain `#[test]` that blocks on the starchive binary or a `#[tokio::test]`.
#![allow(dead_code)]

pub mod backend;
pub mod bench;
pub mod dataset;
pub mod media;
pub mod moto;
pub mod objects;
pub mod pg;
pub mod run;
pub mod s3;
pub mod supabase;
pub mod telegram;
pub mod tmpfs;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

/// Environment variables that would leak the developer's or CI's
/// configuration into the binary under test.
const SCRUBBED_PREFIXES: &[&str] = &["AWS_", "STARCHIVE_", "TELEGRAM_"];
const SCRUBBED_NAMES: &[&str] = &["DATABASE_URL"];

/// A `Command` for the crate's binary, with every `AWS_*`, `STARCHIVE_*`,
/// `TELEGRAM_*` variable and `DATABASE_URL` removed from its environment
/// (this machine sets `AWS_CA_BUNDLE`, among others). Add back what the test
/// means to pass with `.env(..)` / `.envs(..)`.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_starchive"));
    for (key, _) in std::env::vars_os() {
        let Some(name) = key.to_str() else { continue };
        if SCRUBBED_PREFIXES.iter().any(|p| name.starts_with(p)) || SCRUBBED_NAMES.contains(&name) {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// `s3://bucket/prefix?endpoint=ENDPOINT&region=REGION&allow_http=true`
/// (no `/prefix` when `prefix` is empty).
pub fn s3_url(endpoint: &str, region: &str, bucket: &str, prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    let path = if prefix.is_empty() {
        String::new()
    } else {
        format!("/{prefix}")
    };
    format!("s3://{bucket}{path}?endpoint={endpoint}&region={region}&allow_http=true")
}

/// `STARCHIVE_{ROLE}_ACCESS_KEY_ID` and `STARCHIVE_{ROLE}_SECRET_ACCESS_KEY`
/// for role `STORAGE` (`--storage`) or `TO` (`--to`).
pub fn s3_env(role: &str, key: &str, secret: &str) -> Vec<(String, String)> {
    let role = role.to_ascii_uppercase();
    vec![
        (format!("STARCHIVE_{role}_ACCESS_KEY_ID"), key.to_owned()),
        (
            format!("STARCHIVE_{role}_SECRET_ACCESS_KEY"),
            secret.to_owned(),
        ),
    ]
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes.as_ref()))
}

/// A URL on which nothing listens: connections to it are refused. Port 1
/// (tcpmux, which no machine of ours serves): a free port found and let go
/// would be free for any other test's server too, and under a full parallel
/// run one took it, answering requests that were meant to be refused.
pub fn closed_port_url() -> String {
    "http://127.0.0.1:1".to_string()
}

/// A fresh temporary directory (removed on drop).
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("starchive-test-")
        .tempdir()
        .expect("create temp dir")
}

/// Error type of the helper servers' bodies and handlers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response body of the helper servers.
pub type HttpBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete response body.
pub fn full_body(bytes: impl Into<Bytes>) -> HttpBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// An HTTP/1 + HTTP/2 server on `127.0.0.1:0`, served by a dedicated thread
/// that owns a multi-thread tokio runtime. Every accepted socket gets
/// `TCP_NODELAY` (without it, small responses stall ~40 ms on delayed ACKs).
/// A handler returning `Err` makes hyper drop the connection without an
/// answer (a "connection reset" for the client).
/// Dropping the server stops accepting, cancels open connections and joins
/// the thread.
pub struct BackgroundServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundServer {
    pub fn start<F, Fut>(name: &str, handler: F) -> BackgroundServer
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<HttpBody>, BoxError>> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handler = Arc::new(handler);
        let worker_name = format!("{name}-worker");
        let thread = std::thread::Builder::new()
            .name(format!("{name}-server"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(worker_name)
                    .enable_all()
                    .build()
                    .expect("build server runtime");
                rt.block_on(accept_loop(listener, handler, rx));
                // Connection tasks still running are cancelled here.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn server thread");
        BackgroundServer {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn accept_loop<F, Fut>(
    listener: std::net::TcpListener,
    handler: Arc<F>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<HttpBody>, BoxError>> + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;

    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handler(req));
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `%XX` escapes decoded (URL paths and query values of the test servers).
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A seeded xorshift generator for tests that kill the binary at random
/// moments; the seed is printed so a failure can be replayed.
pub fn seeded_rng(test: &str) -> impl FnMut() -> u64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("{test}: seed {seed}");
    let mut rng = seed | 1;
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

/// Starts `cmd` (output discarded), lets it run for `delay`, then kills it
/// with SIGKILL. Returns whether it had already finished before the kill.
pub fn kill_after(cmd: &mut std::process::Command, delay: std::time::Duration) -> bool {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(delay);
    let finished = child.try_wait().expect("try_wait").is_some();
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    finished
}
