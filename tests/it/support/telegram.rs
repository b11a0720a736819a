//! A fake Telegram Bot API (the two endpoints starchive uses) on
//! `127.0.0.1:0`, served by a background thread.
//!
//! - `GET|POST /bot<TOKEN>/getFile?file_id=X` (or `file_id` in a form or JSON
//!   body) answers `{"ok":true,"result":{"file_id","file_unique_id","file_size","file_path"}}`;
//!   an unknown file_id gets 400 `Bad Request: invalid file_id`, a wrong
//!   token 401 `Unauthorized`, another method 404 `Not Found`.
//! - `GET /file/bot<TOKEN>/<file_path>` serves the bytes; 404 for an unknown
//!   path, 401 for a wrong token.
//!
//! Several bots can be served at once ([`FakeTelegram::add_bot`]): a file
//! belongs to the bot it was added for, and another bot's getFile for it
//! gets 400 `Bad Request: wrong file_id or the file is temporarily
//! unavailable` (a file_id works only with the bot that received it).
//! [`FakeTelegram::local`] makes it answer as `telegram-bot-api --local`:
//! absolute paths on the server's disk, no `/file/` downloads.
//!
//! Faults are scripted per file_id; the counted ones apply to that file's
//! next N matching requests, then clear. Every setter returns `&Self`, so
//! they chain: `tg.fail_get_file_429("a", 1, 1).fail_download_502("a", 2);`
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};

use super::{BackgroundServer, BoxError, HttpBody, full_body, percent_decode};

/// The default bot token: realistic shape, obviously fake, with a marker
/// (`SECRET`) that tests can grep for in output to prove it is redacted.
pub const TOKEN: &str = "123456789:AAF-fake_Token_SECRET_abcdefghijklmnop";

pub struct FakeTelegram {
    server: BackgroundServer,
    state: Arc<State>,
}

struct State {
    /// Every bot's token; the first is the default one.
    tokens: Mutex<Vec<String>>,
    /// `--local`: getFile answers `<root>/<TOKEN>/<file_path>`.
    local_root: Mutex<Option<std::path::PathBuf>>,
    latency: Mutex<Duration>,
    files: Mutex<HashMap<String, FileEntry>>,
    faults: Mutex<HashMap<String, Faults>>,
    get_file_calls: Mutex<HashMap<String, u64>>,
    downloads: Mutex<HashMap<String, u64>>,
    completed_downloads: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
    times: Mutex<Vec<Instant>>,
}

#[derive(Clone)]
struct FileEntry {
    file_path: String,
    bytes: Bytes,
    /// The token of the bot that received the file.
    owner: String,
}

#[derive(Default)]
struct Faults {
    get_file_429: u64,
    /// JSON number text, sent as is in the body and the header.
    retry_after: String,
    get_file_500: u64,
    download_502: u64,
    download_truncate: u64,
    download_reset: u64,
    too_big: bool,
    gone: bool,
    unavailable: u64,
    expire_armed: bool,
    link_stale: bool,
    /// Downloads answer `302 Found` to this URL.
    redirect: Option<String>,
}

impl FakeTelegram {
    /// A server with no files and the default [`TOKEN`].
    pub fn new() -> FakeTelegram {
        Self::with_token(TOKEN)
    }

    pub fn with_token(token: &str) -> FakeTelegram {
        let state = Arc::new(State {
            tokens: Mutex::new(vec![token.to_owned()]),
            local_root: Mutex::default(),
            latency: Mutex::new(Duration::ZERO),
            files: Mutex::default(),
            faults: Mutex::default(),
            get_file_calls: Mutex::default(),
            downloads: Mutex::default(),
            completed_downloads: Mutex::default(),
            total: AtomicU64::new(0),
            times: Mutex::default(),
        });
        let handler_state = Arc::clone(&state);
        let server = BackgroundServer::start("telegram", move |req: Request<Incoming>| {
            let state = Arc::clone(&handler_state);
            async move { handle(state, req).await }
        });
        FakeTelegram { server, state }
    }

    /// Loads a `fixtures/telegram/`-style directory: one file per file_id,
    /// named by the file_id, plus `paths.json` mapping file_id to file_path
    /// (`{"FILE_ID": "stickers/file_1.webp"}`; an object value with a
    /// `file_path` key works too). A file missing from `paths.json` gets
    /// `documents/<file_id>`; a file_id in `paths.json` without its file
    /// panics. Other `*.json`, `README*` and dot files are skipped.
    pub fn from_dir(dir: impl AsRef<Path>) -> FakeTelegram {
        let dir = dir.as_ref();
        let tg = Self::new();
        let paths: serde_json::Map<String, serde_json::Value> =
            match std::fs::read(dir.join("paths.json")) {
                Ok(text) => serde_json::from_slice(&text).expect("paths.json is a JSON object"),
                Err(_) => serde_json::Map::new(),
            };
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") || name.starts_with("README") || name.starts_with('.') {
                continue;
            }
            let file_path = match paths.get(&name) {
                Some(serde_json::Value::String(p)) => p.clone(),
                Some(serde_json::Value::Object(o)) => o
                    .get("file_path")
                    .and_then(|p| p.as_str())
                    .map_or_else(|| format!("documents/{name}"), str::to_owned),
                _ => format!("documents/{name}"),
            };
            let bytes = std::fs::read(entry.path()).expect("read fixture file");
            tg.add_file(&name, &file_path, bytes);
        }
        let files = tg.state.files.lock().expect("files lock");
        let missing: Vec<&String> = paths.keys().filter(|id| !files.contains_key(*id)).collect();
        assert!(
            missing.is_empty(),
            "{}: paths.json names file_ids with no file beside it: {missing:?}",
            dir.display()
        );
        drop(files);
        tg
    }

    /// Adds (or replaces) a file of the default bot.
    pub fn add_file(&self, file_id: &str, file_path: &str, bytes: impl Into<Bytes>) -> &Self {
        let token = self.token();
        self.add_file_of(&token, file_id, file_path, bytes)
    }

    /// Adds (or replaces) a file that the bot of `token` received.
    pub fn add_file_of(
        &self,
        token: &str,
        file_id: &str,
        file_path: &str,
        bytes: impl Into<Bytes>,
    ) -> &Self {
        self.state.files.lock().expect("files lock").insert(
            file_id.to_owned(),
            FileEntry {
                file_path: file_path.trim_start_matches('/').to_owned(),
                bytes: bytes.into(),
                owner: token.to_owned(),
            },
        );
        self
    }

    /// Serves another bot, with this token, besides the default one.
    pub fn add_bot(&self, token: &str) -> &Self {
        self.state
            .tokens
            .lock()
            .expect("tokens lock")
            .push(token.to_owned());
        self
    }

    /// Answers as `telegram-bot-api --local` keeping its files under
    /// `root`: getFile gives `<root>/<TOKEN>/<file_path>`, and downloads
    /// answer 404. Nothing is written there: see [`FakeTelegram::local_path`].
    pub fn local(&self, root: &Path) -> &Self {
        *self.state.local_root.lock().expect("local lock") = Some(root.to_path_buf());
        self
    }

    /// Where a `--local` server keeps `file_id` (its owner's token in the path).
    pub fn local_path(&self, file_id: &str) -> Option<std::path::PathBuf> {
        let root = self.state.local_root.lock().expect("local lock").clone()?;
        let files = self.state.files.lock().expect("files lock");
        files
            .get(file_id)
            .map(|f| root.join(&f.owner).join(&f.file_path))
    }

    /// `http://127.0.0.1:PORT` (what `--telegram-api` / `TELEGRAM_API_URL` takes).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The default bot's token.
    pub fn token(&self) -> String {
        self.state.tokens.lock().expect("tokens lock")[0].clone()
    }

    /// `TELEGRAM_BOT_TOKEN` and `TELEGRAM_API_URL` for this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("TELEGRAM_BOT_TOKEN".to_owned(), self.token()),
            ("TELEGRAM_API_URL".to_owned(), self.url()),
        ]
    }

    /// The file_path getFile reports for a file_id.
    pub fn file_path(&self, file_id: &str) -> Option<String> {
        let files = self.state.files.lock().expect("files lock");
        files.get(file_id).map(|f| f.file_path.clone())
    }

    /// The bytes served for a file_id.
    pub fn file_bytes(&self, file_id: &str) -> Option<Bytes> {
        let files = self.state.files.lock().expect("files lock");
        files.get(file_id).map(|f| f.bytes.clone())
    }

    // ---- faults -------------------------------------------------------

    /// The next `times` getFile calls for `file_id` get 429 with
    /// `parameters.retry_after` and a `Retry-After` header.
    pub fn fail_get_file_429(&self, file_id: &str, times: u64, retry_after_secs: u64) -> &Self {
        self.fail_get_file_429_raw(file_id, times, &retry_after_secs.to_string())
    }

    /// As [`Self::fail_get_file_429`], with any JSON number as `retry_after`
    /// (`-5`, `1e300`, `18446744073709551615`): what a faulty server may send.
    pub fn fail_get_file_429_raw(&self, file_id: &str, times: u64, retry_after: &str) -> &Self {
        self.fault(file_id, |f| {
            f.get_file_429 = times;
            f.retry_after = retry_after.to_string();
        })
    }

    /// The next `times` getFile calls for `file_id` get 500.
    pub fn fail_get_file_500(&self, file_id: &str, times: u64) -> &Self {
        self.fault(file_id, |f| f.get_file_500 = times)
    }

    /// The next `times` downloads of `file_id`'s path get 502 (HTML body, as
    /// Telegram's nginx sends).
    pub fn fail_download_502(&self, file_id: &str, times: u64) -> &Self {
        self.fault(file_id, |f| f.download_502 = times)
    }

    /// The next `times` downloads announce the full `Content-Length` but
    /// send only the first half of the bytes, then close the connection.
    pub fn truncate_download(&self, file_id: &str, times: u64) -> &Self {
        self.fault(file_id, |f| f.download_truncate = times)
    }

    /// The next `times` downloads are dropped without any answer
    /// (connection closed after the request: a reset for the client).
    pub fn reset_download(&self, file_id: &str, times: u64) -> &Self {
        self.fault(file_id, |f| f.download_reset = times)
    }

    /// From now on getFile for `file_id` answers 400 `Bad Request: file is too big`.
    pub fn too_big(&self, file_id: &str) -> &Self {
        self.fault(file_id, |f| f.too_big = true)
    }

    /// From now on getFile for `file_id` answers 400 `Bad Request: wrong
    /// file_id or the file is temporarily unavailable` (a file Telegram lost).
    pub fn gone(&self, file_id: &str) -> &Self {
        self.fault(file_id, |f| f.gone = true)
    }

    /// The next `times` getFile calls for `file_id` answer 400 `Bad Request:
    /// wrong file_id or the file is temporarily unavailable` (a passing fault).
    pub fn unavailable(&self, file_id: &str, times: u64) -> &Self {
        self.fault(file_id, |f| f.unavailable = times)
    }

    /// The next download of `file_id` answers 404, and so does every
    /// download of it after that until getFile is called again (a file link
    /// that expired): the client must ask getFile for a fresh link.
    pub fn expire_link_once(&self, file_id: &str) -> &Self {
        self.fault(file_id, |f| f.expire_armed = true)
    }

    /// From now on downloads of `file_id` answer `302 Found` to `location`
    /// (as a Bot API server handing files to another host does).
    pub fn redirect_download(&self, file_id: &str, location: &str) -> &Self {
        self.fault(file_id, |f| f.redirect = Some(location.to_owned()))
    }

    /// Delay added before every response.
    pub fn latency(&self, delay: Duration) -> &Self {
        *self.state.latency.lock().expect("latency lock") = delay;
        self
    }

    fn fault(&self, file_id: &str, set: impl FnOnce(&mut Faults)) -> &Self {
        let mut faults = self.state.faults.lock().expect("faults lock");
        set(faults.entry(file_id.to_owned()).or_default());
        self
    }

    // ---- counters -----------------------------------------------------

    /// getFile requests naming `file_id` (whatever the answer).
    pub fn get_file_calls(&self, file_id: &str) -> u64 {
        count(&self.state.get_file_calls, file_id)
    }

    /// Download requests for `file_id`'s path (whatever the answer).
    pub fn downloads(&self, file_id: &str) -> u64 {
        count(&self.state.downloads, file_id)
    }

    /// Downloads of `file_id` answered with the full bytes.
    pub fn completed_downloads(&self, file_id: &str) -> u64 {
        count(&self.state.completed_downloads, file_id)
    }

    /// Every request received, to any path.
    pub fn total_requests(&self) -> u64 {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Arrival time of every request, in order (for rate-limit checks).
    pub fn request_times(&self) -> Vec<Instant> {
        self.state.times.lock().expect("times lock").clone()
    }

    /// Zeroes every counter and the request-time log (files and faults stay).
    pub fn reset_counts(&self) {
        self.state.get_file_calls.lock().expect("lock").clear();
        self.state.downloads.lock().expect("lock").clear();
        self.state.completed_downloads.lock().expect("lock").clear();
        self.state.times.lock().expect("lock").clear();
        self.state.total.store(0, Ordering::SeqCst);
    }
}

impl Default for FakeTelegram {
    fn default() -> Self {
        Self::new()
    }
}

fn count(map: &Mutex<HashMap<String, u64>>, key: &str) -> u64 {
    map.lock()
        .expect("counter lock")
        .get(key)
        .copied()
        .unwrap_or(0)
}

fn bump(map: &Mutex<HashMap<String, u64>>, key: &str) {
    *map.lock()
        .expect("counter lock")
        .entry(key.to_owned())
        .or_default() += 1;
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<HttpBody>, BoxError> {
    state.times.lock().expect("times lock").push(Instant::now());
    state.total.fetch_add(1, Ordering::SeqCst);
    let latency = *state.latency.lock().expect("latency lock");
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/file/bot") {
        let (token, file_path) = rest.split_once('/').unwrap_or((rest, ""));
        if !state.knows(token) {
            return Ok(api_error(401, "Unauthorized", None));
        }
        if state.local_root.lock().expect("local lock").is_some() {
            return Ok(api_error(404, "Not Found", None));
        }
        return download(&state, token, &percent_decode(file_path));
    }
    if let Some(rest) = path.strip_prefix("/bot") {
        let (token, method) = rest.split_once('/').unwrap_or((rest, ""));
        if !state.knows(token) {
            return Ok(api_error(401, "Unauthorized", None));
        }
        if method.eq_ignore_ascii_case("getFile") {
            let token = token.to_owned();
            let file_id = request_file_id(req).await;
            return Ok(get_file(&state, &token, file_id));
        }
    }
    Ok(api_error(404, "Not Found", None))
}

/// `file_id` from the query string, else from a form or JSON body.
async fn request_file_id(req: Request<Incoming>) -> Option<String> {
    if let Some(id) = req.uri().query().and_then(|q| form_value(q, "file_id")) {
        return Some(id);
    }
    let is_json = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body = req.into_body().collect().await.ok()?.to_bytes();
    if is_json {
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        return match value.get("file_id")? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
    }
    form_value(&String::from_utf8_lossy(&body), "file_id")
}

impl State {
    fn knows(&self, token: &str) -> bool {
        self.tokens
            .lock()
            .expect("tokens lock")
            .iter()
            .any(|t| t == token)
    }
}

const UNAVAILABLE: &str = "Bad Request: wrong file_id or the file is temporarily unavailable";

fn get_file(state: &State, token: &str, file_id: Option<String>) -> Response<HttpBody> {
    let Some(file_id) = file_id.filter(|id| !id.is_empty()) else {
        return api_error(400, "Bad Request: file_id is empty", None);
    };
    bump(&state.get_file_calls, &file_id);
    let entry = state
        .files
        .lock()
        .expect("files lock")
        .get(&file_id)
        .cloned();
    let Some(entry) = entry else {
        return api_error(400, "Bad Request: invalid file_id", None);
    };
    if entry.owner != token {
        return api_error(400, UNAVAILABLE, None);
    }
    {
        let mut faults = state.faults.lock().expect("faults lock");
        if let Some(f) = faults.get_mut(&file_id) {
            if f.get_file_429 > 0 {
                f.get_file_429 -= 1;
                let secs = f.retry_after.clone();
                let number: serde_json::Value =
                    serde_json::from_str(&secs).expect("retry_after is a JSON number");
                let mut resp = api_error(
                    429,
                    &format!("Too Many Requests: retry after {secs}"),
                    Some(serde_json::json!({ "retry_after": number })),
                );
                resp.headers_mut()
                    .insert("retry-after", secs.parse().expect("header value"));
                return resp;
            }
            if f.get_file_500 > 0 {
                f.get_file_500 -= 1;
                return api_error(500, "Internal Server Error", None);
            }
            if f.too_big {
                return api_error(400, "Bad Request: file is too big", None);
            }
            if f.gone {
                return api_error(400, UNAVAILABLE, None);
            }
            if f.unavailable > 0 {
                f.unavailable -= 1;
                return api_error(400, UNAVAILABLE, None);
            }
            f.link_stale = false;
        }
    }
    let file_path = match &*state.local_root.lock().expect("local lock") {
        Some(root) => root
            .join(token)
            .join(&entry.file_path)
            .to_string_lossy()
            .into_owned(),
        None => entry.file_path,
    };
    let body = serde_json::json!({
        "ok": true,
        "result": {
            "file_id": file_id,
            "file_unique_id": unique_id(&file_id),
            "file_size": entry.bytes.len(),
            "file_path": file_path,
        }
    });
    json_response(200, &body)
}

fn download(state: &State, token: &str, file_path: &str) -> Result<Response<HttpBody>, BoxError> {
    let found = {
        let files = state.files.lock().expect("files lock");
        let mut matching: Vec<_> = files
            .iter()
            .filter(|(_, f)| f.file_path == file_path && f.owner == token)
            .map(|(id, f)| (id.clone(), f.bytes.clone()))
            .collect();
        matching.sort_by(|a, b| a.0.cmp(&b.0));
        matching.into_iter().next()
    };
    let Some((file_id, bytes)) = found else {
        return Ok(api_error(404, "Not Found", None));
    };
    bump(&state.downloads, &file_id);
    {
        let mut faults = state.faults.lock().expect("faults lock");
        if let Some(f) = faults.get_mut(&file_id) {
            if f.expire_armed {
                f.expire_armed = false;
                f.link_stale = true;
            }
            if f.link_stale {
                return Ok(api_error(404, "Not Found", None));
            }
            if let Some(location) = &f.redirect {
                return Ok(Response::builder()
                    .status(StatusCode::FOUND)
                    .header("location", location.as_str())
                    .body(full_body(""))
                    .expect("build redirect"));
            }
            if f.download_reset > 0 {
                f.download_reset -= 1;
                return Err("fake telegram: connection reset (scripted)".into());
            }
            if f.download_502 > 0 {
                f.download_502 -= 1;
                return Ok(Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .header("content-type", "text/html")
                    .body(full_body(
                        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n",
                    ))
                    .expect("build 502"));
            }
            if f.download_truncate > 0 {
                f.download_truncate -= 1;
                let total = bytes.len() as u64;
                let half = bytes.slice(..bytes.len() / 2);
                return Ok(Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/octet-stream")
                    .header("content-length", total)
                    .body(TruncatedBody::new(half, total).boxed_unsync())
                    .expect("build truncated response"));
            }
        }
    }
    bump(&state.completed_downloads, &file_id);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/octet-stream")
        .header("content-length", bytes.len())
        .body(full_body(bytes))
        .expect("build download response"))
}

fn api_error(
    code: u16,
    description: &str,
    parameters: Option<serde_json::Value>,
) -> Response<HttpBody> {
    let mut body =
        serde_json::json!({ "ok": false, "error_code": code, "description": description });
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    json_response(code, &body)
}

fn json_response(status: u16, body: &serde_json::Value) -> Response<HttpBody> {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .header("content-type", "application/json")
        .body(full_body(body.to_string()))
        .expect("build json response")
}

/// A stable, Telegram-looking `file_unique_id` (FNV-1a of the file_id).
fn unique_id(file_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in file_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("u{h:016x}")
}

fn form_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(&k.replace('+', " ")) == name).then(|| percent_decode(&v.replace('+', " ")))
    })
}

/// A body that claims `total` bytes, yields `first`, gives hyper a moment
/// to flush it, then fails, which makes hyper close the connection short.
struct TruncatedBody {
    first: Option<Bytes>,
    total: u64,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TruncatedBody {
    fn new(first: Bytes, total: u64) -> Self {
        TruncatedBody {
            first: Some(first),
            total,
            pause: None,
        }
    }
}

impl hyper::body::Body for TruncatedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take()
            && !first.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let pause = self
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
        match pause.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                Poll::Ready(Some(Err("fake telegram: body truncated (scripted)".into())))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.total)
    }
}
