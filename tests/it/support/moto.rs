//! AWS S3's behaviour as the `moto` server reproduces it (`pip install
//! "moto[server]"`): a stand-in for AWS and MinIO, which cannot run here,
//! stricter than s3s-fs and Supabase where AWS is (multipart parts of at
//! least 5 MiB but the last, ETags of multipart objects).
//!
//! [`moto()`] starts one `moto_server` per test process on a free loopback
//! port. It runs under a shell that waits on a pipe from this process and
//! stops the server when the pipe closes, so it ends with the test process
//! however that ends. When it cannot start, every test that needs it fails
//! with the reason.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::objects::{Objects, runtime};

pub const ACCESS_KEY: &str = "moto-test-key";
pub const SECRET_KEY: &str = "moto-test-secret";
pub const REGION: &str = "us-east-1";

pub struct Moto {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// Kept open for the life of the process: closing it stops the server.
    _lifeline: Mutex<(Child, ChildStdin)>,
}

/// The moto server of this test process; panics with the reason when it
/// cannot be had.
pub fn moto() -> &'static Moto {
    static SERVER: OnceLock<Result<Moto, String>> = OnceLock::new();
    match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(reason) => panic!("the moto S3 server is not available: {reason}"),
    }
}

fn start() -> Result<Moto, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let log = std::env::temp_dir().join(format!("starchive-moto-{}.log", std::process::id()));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(
            r#"moto_server -H 127.0.0.1 -p "$1" >"$2" 2>&1 & pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$2"' EXIT
cat >/dev/null"#,
        )
        .args(["moto", &port.to_string()])
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        let mut text = String::new();
        let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
        // A missing command says so at once: no need to wait it out.
        if Instant::now() > deadline || text.contains("not found") {
            return Err(format!(
                "moto_server -p {port} did not answer \
                 (install it with `pip install \"moto[server]\"`); its output:\n{text}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Moto {
        endpoint: format!("http://127.0.0.1:{port}"),
        _lifeline: Mutex::new((child, stdin)),
    })
}

impl Moto {
    /// Creates a bucket with a name no other test uses; returns its name.
    pub fn bucket(&self) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!("moto-{}", N.fetch_add(1, Ordering::SeqCst));
        let url = format!("{}/{name}", self.endpoint);
        let status = runtime()
            .block_on(reqwest::Client::new().put(&url).send())
            .unwrap_or_else(|e| panic!("create moto bucket {name}: {e}"))
            .status();
        assert!(status.is_success(), "create moto bucket {name}: {status}");
        name
    }

    /// Puts every file under `src` readable by anyone (`x-amz-acl:
    /// public-read`, unsigned), as a public bucket's objects are.
    pub fn put_public_dir(&self, bucket: &str, src: &std::path::Path) -> usize {
        let files = super::objects::files(src);
        for (key, path) in &files {
            let url = format!("{}/{bucket}/{key}", self.endpoint);
            let body = std::fs::read(path).expect("read file");
            let status = runtime()
                .block_on(
                    reqwest::Client::new()
                        .put(&url)
                        .header("x-amz-acl", "public-read")
                        .body(body)
                        .send(),
                )
                .unwrap_or_else(|e| panic!("put {url}: {e}"))
                .status();
            assert!(status.is_success(), "put {url}: {status}");
        }
        files.len()
    }

    pub fn objects(&self, bucket: &str) -> Objects {
        Objects::s3(&self.endpoint, REGION, ACCESS_KEY, SECRET_KEY, bucket)
    }

    /// `s3://bucket/prefix?endpoint=...&region=us-east-1&allow_http=true`.
    pub fn store_url(&self, bucket: &str, prefix: &str) -> String {
        super::s3_url(&self.endpoint, REGION, bucket, prefix)
    }

    /// `STARCHIVE_{ROLE}_ACCESS_KEY_ID` and `..._SECRET_ACCESS_KEY`.
    pub fn env(&self, role: &str) -> Vec<(String, String)> {
        super::s3_env(role, ACCESS_KEY, SECRET_KEY)
    }
}
