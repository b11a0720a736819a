//! The real Supabase Storage server (supabase/storage, its S3 protocol on
//! `/s3`), for the tests that must meet what a user's project answers.
//!
//! [`supabase()`] gives the server of this test process, obtained once:
//! - when `SUPABASE_S3_ENDPOINT` is set (`.ci/run` starts the server and
//!   exports its `env` file), that server, with the other `SUPABASE_*`
//!   values of the same file;
//! - otherwise it is started by `../shared/supabase-storage/start.sh DIR`
//!   (beside the repository), DIR being `$SUPABASE_STORAGE_DIR` or
//!   `/tmp/starchive-supabase-storage`: about 75 s the first time in a DIR
//!   (it installs the server), about 10 s later, nothing when it already
//!   runs. It is left running for the next test run; `start.sh DIR stop`
//!   stops it. Starts are serialized with `flock`, so parallel test
//!   processes share one server.
//!
//! When neither works, every test that needs the server fails with the
//! reason: a missing server never passes for a green suite.
//!
//! Each test gets buckets of its own ([`Supabase::bucket`]), emptied and
//! deleted when dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::objects::{Objects, runtime};

/// The directory `start.sh` runs the default server in.
const DEFAULT_DIR: &str = "/tmp/starchive-supabase-storage";

/// A running Supabase Storage server.
#[derive(Debug)]
pub struct Supabase {
    /// `http://127.0.0.1:PORT` (REST API).
    pub storage_url: String,
    /// `http://127.0.0.1:PORT/s3` (S3 protocol, path-style).
    pub s3_endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    service_key: String,
}

/// The server of this test process; panics with the reason when it cannot
/// be had.
pub fn supabase() -> &'static Supabase {
    static SERVER: OnceLock<Result<Supabase, String>> = OnceLock::new();
    match SERVER.get_or_init(obtain) {
        Ok(server) => server,
        Err(reason) => panic!("the real Supabase Storage server is not available: {reason}"),
    }
}

/// A server of its own that refuses objects over `bytes`
/// (`UPLOAD_FILE_SIZE_LIMIT`, as a free project's 50 MB), in
/// `<DIR>-limit-<bytes>` beside the default one, whose installation it
/// shares. Left running for the next test run, as the default one.
pub fn supabase_with_upload_limit(bytes: u64) -> &'static Supabase {
    static SERVERS: OnceLock<Mutex<HashMap<u64, &'static Supabase>>> = OnceLock::new();
    let mut servers = SERVERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(server) = servers.get(&bytes) {
        return server;
    }
    let base = install_dir();
    let dir = PathBuf::from(format!("{}-limit-{bytes}", base.display()));
    std::fs::create_dir_all(&dir).expect("create the server's directory");
    // The installation (Node, the built server) is shared: a start in a new
    // directory is then ~10 s instead of ~75 s.
    for part in ["node", "storage"] {
        let (from, to) = (base.join(part), dir.join(part));
        if from.exists() && !to.exists() {
            std::os::unix::fs::symlink(&from, &to).expect("link the installation");
        }
    }
    let server = start(&dir, Some(bytes)).unwrap_or_else(|reason| {
        panic!("the real Supabase Storage server (limit {bytes} bytes) is not available: {reason}")
    });
    let server: &'static Supabase = Box::leak(Box::new(server));
    servers.insert(bytes, server);
    server
}

fn install_dir() -> PathBuf {
    PathBuf::from(std::env::var("SUPABASE_STORAGE_DIR").unwrap_or_else(|_| DEFAULT_DIR.into()))
}

fn obtain() -> Result<Supabase, String> {
    if std::env::var_os("SUPABASE_S3_ENDPOINT").is_some() {
        return from_vars(&std::env::vars().collect())
            .map_err(|e| format!("SUPABASE_S3_ENDPOINT is set, but {e}"));
    }
    start(&install_dir(), None)
}

/// `SUPABASE_STORAGE_STARTER` when set, else the script the project's CI
/// keeps beside the repository.
fn start_script() -> PathBuf {
    match std::env::var_os("SUPABASE_STORAGE_STARTER") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/supabase-storage/start.sh"),
    }
}

fn start(dir: &Path, upload_limit: Option<u64>) -> Result<Supabase, String> {
    let script = start_script();
    if !script.is_file() {
        return Err(format!(
            "SUPABASE_S3_ENDPOINT is not set (the values of a running server's env file) \
             and there is no {} to start one (SUPABASE_STORAGE_STARTER names a starter)",
            script.display()
        ));
    }
    eprintln!(
        "starting the Supabase Storage server in {} (about 75 s the first time)",
        dir.display()
    );
    // The lock is held on a descriptor that the server does not inherit:
    // with `flock LOCK start.sh`, the server it leaves running would hold
    // the lock for ever and every later start would wait on it.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec 9>"$1" && flock 9 && "$2" "$3" 9>&-"#)
        .arg("sh")
        .arg(format!("{}.lock", dir.display()))
        .arg(&script)
        .arg(dir);
    if let Some(bytes) = upload_limit {
        cmd.env("UPLOAD_FILE_SIZE_LIMIT", bytes.to_string());
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run sh (flock) {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}):\n{}{}",
            script.display(),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let env_file = dir.join("env");
    let text = std::fs::read_to_string(&env_file)
        .map_err(|e| format!("cannot read {}: {e}", env_file.display()))?;
    let vars = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    from_vars(&vars).map_err(|e| format!("{}: {e}", env_file.display()))
}

fn from_vars(vars: &HashMap<String, String>) -> Result<Supabase, String> {
    let get = |name: &str| {
        vars.get(name)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| format!("{name} is not set"))
    };
    Ok(Supabase {
        storage_url: get("SUPABASE_STORAGE_URL")?,
        s3_endpoint: get("SUPABASE_S3_ENDPOINT")?,
        region: get("SUPABASE_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
        access_key: get("SUPABASE_S3_ACCESS_KEY_ID")?,
        secret_key: get("SUPABASE_S3_SECRET_ACCESS_KEY")?,
        service_key: get("SUPABASE_SERVICE_ROLE_KEY")?,
    })
}

/// A bucket of the server, deleted with its objects when dropped.
pub struct SupabaseBucket {
    server: &'static Supabase,
    pub name: String,
    pub objects: Objects,
}

impl Supabase {
    /// A new empty bucket with a name no other test uses.
    pub fn bucket(&'static self) -> SupabaseBucket {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let body = serde_json::json!({ "id": name, "name": name, "public": false });
        self.rest(reqwest::Method::POST, "/bucket", Some(body))
            .unwrap_or_else(|e| panic!("create Supabase bucket {name}: {e}"));
        SupabaseBucket {
            server: self,
            objects: self.objects(&name),
            name,
        }
    }

    /// The test's own client of `bucket`.
    pub fn objects(&self, bucket: &str) -> Objects {
        Objects::s3(
            &self.s3_endpoint,
            &self.region,
            &self.access_key,
            &self.secret_key,
            bucket,
        )
    }

    /// `s3://bucket/prefix?endpoint=...&region=...&allow_http=true`.
    pub fn store_url(&self, bucket: &str, prefix: &str) -> String {
        super::s3_url(&self.s3_endpoint, &self.region, bucket, prefix)
    }

    /// `STARCHIVE_{ROLE}_ACCESS_KEY_ID` and `..._SECRET_ACCESS_KEY` for role
    /// `STORAGE` or `TO`.
    pub fn env(&self, role: &str) -> Vec<(String, String)> {
        super::s3_env(role, &self.access_key, &self.secret_key)
    }

    /// A call of the REST API as the service role.
    fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), String> {
        let url = format!("{}{path}", self.storage_url);
        runtime().block_on(async {
            let mut req = reqwest::Client::new()
                .request(method, &url)
                .bearer_auth(&self.service_key);
            if let Some(body) = body {
                req = req.json(&body);
            }
            let resp = req.send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!(
                    "{status}: {}",
                    resp.text().await.unwrap_or_default()
                ))
            }
        })
    }
}

impl SupabaseBucket {
    pub fn store_url(&self, prefix: &str) -> String {
        self.server.store_url(&self.name, prefix)
    }
}

impl Drop for SupabaseBucket {
    fn drop(&mut self) {
        // A failed test leaves its bucket to be looked at.
        if std::thread::panicking() {
            return;
        }
        let name = self.name.clone();
        let objects = self.objects.clone();
        let cleared =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || objects.clear())).is_ok();
        if cleared {
            let _ = self
                .server
                .rest(reqwest::Method::DELETE, &format!("/bucket/{name}"), None);
        }
    }
}
