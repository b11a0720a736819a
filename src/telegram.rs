//! The Telegram Bot API client: `getFile`, then the file download.
//!
//! The token is part of every URL Telegram uses, so no URL leaves this module
//! as text: errors are built from status codes and Telegram's descriptions,
//! transport errors are stripped of their URL, and the token is scrubbed from
//! whatever remains. One [`Pacer`] is shared by every call: it spaces
//! requests to `--telegram-rate` and pauses them all when Telegram answers
//! 429 with `retry_after`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Deserialize;
use tokio::time::Instant;

/// What `getFile` says of a file.
#[derive(Clone, Debug)]
pub struct FileInfo {
    pub file_path: String,
    pub file_size: Option<u64>,
}

/// Failures, sorted by what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TgError {
    /// Telegram refuses this file for good (invalid `file_id`, too big).
    Refused(String),
    /// `wrong file_id or the file is temporarily unavailable`: Telegram says
    /// this of files it lost and of passing faults alike (and of a file_id
    /// another bot received), so it is retried with backoff before it fails the ref.
    Unavailable(String),
    /// Telegram refuses the token: a configuration error, nothing will work.
    Unauthorized(String),
    /// Flood control: every call waits this long.
    RetryAfter(Duration),
    /// 5xx, reset, timeout, truncated body: try again later.
    Transient(String),
    /// The download link expired (Telegram keeps them about an hour): ask `getFile` again.
    LinkExpired,
    /// No connection could be made (refused, no route, DNS): retried, then
    /// the run stops, since no file can be had.
    Unreachable(String),
    /// The answer is not the Bot API's (an HTML page, JSON of another
    /// shape): retried like a passing fault; a server that never gives a
    /// Bot API answer stops the run.
    NotBotApi(String),
}

/// Checks `--telegram-api` before anything is done: an `http(s)://` URL with
/// a host. The message shows the URL without secrets.
pub fn check_api_url(text: &str) -> Result<(), String> {
    let shown = crate::redact::url(text);
    let parsed = url::Url::parse(text)
        .map_err(|e| format!("--telegram-api {shown}: not a URL ({e}): give the Bot API's base URL, such as https://api.telegram.org"))?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
        return Err(format!(
            "--telegram-api {shown}: the Bot API is reached over http:// or https:// (such as https://api.telegram.org); check --telegram-api / TELEGRAM_API_URL"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "--telegram-api {shown}: a base URL takes no ?query or #fragment"
        ));
    }
    Ok(())
}

/// What a path segment keeps of a server-sent `file_path` unescaped:
/// everything but controls, space and the characters a URL gives a meaning.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'\\');

/// A `file_path` from getFile as the path after `/file/bot<TOKEN>/`: a
/// relative path of safe segments, each percent-encoded, so that a server
/// cannot make starchive ask for a path outside the bot's files.
pub fn download_path(file_path: &str) -> Result<String, TgError> {
    let unsafe_path = || {
        TgError::Refused(format!(
            "the Bot API server gave an unsafe file_path {file_path:?} (not a relative path of plain segments)"
        ))
    };
    let mut out = Vec::new();
    for segment in file_path.split('/') {
        if segment.is_empty()
            || segment == "."
            || segment == ".."
            || segment.contains('\\')
            || segment.chars().any(char::is_control)
        {
            return Err(unsafe_path());
        }
        out.push(utf8_percent_encode(segment, SEGMENT).to_string());
    }
    Ok(out.join("/"))
}

#[derive(Deserialize)]
struct Answer {
    ok: bool,
    result: Option<FileResult>,
    description: Option<String>,
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct FileResult {
    file_path: Option<String>,
    file_size: Option<u64>,
}

#[derive(Deserialize)]
struct Parameters {
    /// Any JSON number: a server may send what it likes ([`flood_wait`] bounds it).
    retry_after: Option<f64>,
}

pub struct Telegram {
    http: reqwest::Client,
    base: String,
    token: String,
    pacer: Pacer,
    /// Whether the server ever gave a usable Bot API answer (its JSON, below 500).
    answered: AtomicBool,
}

impl Telegram {
    /// `rate`: requests per second at most (getFile and downloads alike).
    pub fn new(base: &str, token: String, rate: f64) -> Result<Telegram, String> {
        let http = reqwest::Client::builder()
            // Followed by `get`, which knows where each request failed.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot set up HTTP: {}", e.without_url()))?;
        crate::redact::remember(&token);
        Ok(Telegram {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
            pacer: Pacer::new(rate),
            answered: AtomicBool::new(false),
        })
    }

    pub async fn get_file(&self, file_id: &str) -> Result<FileInfo, TgError> {
        self.pacer.wait().await;
        let mut url = url::Url::parse(&format!("{}/bot{}/getFile", self.base, self.token))
            .map_err(|e| {
                TgError::Unauthorized(self.scrub(&format!("the token makes no URL ({e})")))
            })?;
        url.query_pairs_mut().append_pair("file_id", file_id);
        let response = self.get(url).await.map_err(|(e, _)| self.transport(e))?;
        let status = response.status();
        let header_wait = retry_after_header(&response);
        let body = response.bytes().await.map_err(|e| self.transport(e))?;
        let answer: Option<Answer> = serde_json::from_slice(&body).ok();
        // A usable answer: the Bot API's JSON, not a server failing (5xx).
        if answer.is_some() && status.as_u16() < 500 {
            self.answered.store(true, Ordering::Relaxed);
        }
        let description = answer
            .as_ref()
            .and_then(|a| a.description.clone())
            .unwrap_or_else(|| format!("HTTP {status}"));
        match status.as_u16() {
            200 if answer.is_none() => Err(TgError::NotBotApi(self.scrub(&format!(
                "getFile answered HTTP 200 with {}, not a Bot API answer",
                what_body(&body)
            )))),
            200 => {
                let result = answer
                    .filter(|a| a.ok)
                    .and_then(|a| a.result)
                    .ok_or_else(|| TgError::Transient("getFile gave no result".into()))?;
                let file_path = result.file_path.filter(|p| !p.is_empty()).ok_or_else(|| {
                    TgError::Refused("Telegram gave no file_path (file not downloadable)".into())
                })?;
                Ok(FileInfo {
                    file_path,
                    file_size: result.file_size,
                })
            }
            429 => {
                let secs = answer
                    .and_then(|a| a.parameters)
                    .and_then(|p| p.retry_after)
                    .or(header_wait)
                    .unwrap_or(1.0);
                Err(TgError::RetryAfter(flood_wait(secs)))
            }
            401 | 404 => Err(TgError::Unauthorized(self.scrub(&description))),
            400 if description.contains("temporarily unavailable") => {
                Err(TgError::Unavailable(self.scrub(&description)))
            }
            s if s >= 500 => Err(TgError::Transient(format!(
                "getFile: {}",
                self.scrub(&description)
            ))),
            _ => Err(TgError::Refused(self.scrub(&description))),
        }
    }

    /// Whether the server ever gave a usable Bot API answer to getFile.
    pub fn ever_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// Starts the download of a file (its `file_path` checked and escaped
    /// by [`download_path`]); the caller streams the body.
    pub async fn download(&self, file_path: &str) -> Result<reqwest::Response, TgError> {
        let path = download_path(file_path)?;
        self.pacer.wait().await;
        let url = url::Url::parse(&format!("{}/file/bot{}/{path}", self.base, self.token))
            .map_err(|e| {
                TgError::Unauthorized(self.scrub(&format!("the token makes no URL ({e})")))
            })?;
        let response = self
            .get(url)
            .await
            .map_err(|(e, at)| self.download_failed(e, Some(&at)))?;
        let status = response.status().as_u16();
        match status {
            200 => Ok(response),
            404 => Err(TgError::LinkExpired),
            429 => Err(TgError::RetryAfter(flood_wait(
                retry_after_header(&response).unwrap_or(1.0),
            ))),
            401 => Err(TgError::Unauthorized("Unauthorized".into())),
            s if s >= 500 => Err(TgError::Transient(format!("download: HTTP {s}"))),
            s => Err(TgError::Refused(format!("download: HTTP {s}"))),
        }
    }

    /// Pauses every call for `wait` (429).
    pub fn pause(&self, wait: Duration) {
        self.pacer.pause(wait);
    }

    /// The API's base URL as it may be shown.
    pub fn shown_base(&self) -> String {
        crate::redact::url(&self.base)
    }

    /// A transport error of getFile as text without URL or token: no
    /// connection made is [`TgError::Unreachable`].
    fn transport(&self, e: reqwest::Error) -> TgError {
        match self.transport_text(e) {
            (true, text) => TgError::Unreachable(text),
            (false, text) => TgError::Transient(text),
        }
    }

    /// Whether no connection was made, and the error as text without URL
    /// or token.
    fn transport_text(&self, e: reqwest::Error) -> (bool, String) {
        let connect = e.is_connect();
        let e = e.without_url();
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        (connect, self.scrub(&text))
    }

    /// GET `url`, following redirects here rather than in the client, so
    /// that a failure comes with the URL it happened at (a redirect's target).
    async fn get(
        &self,
        mut url: url::Url,
    ) -> Result<reqwest::Response, (reqwest::Error, url::Url)> {
        let mut hops = 0;
        loop {
            let response = match self.http.get(url.clone()).send().await {
                Ok(response) => response,
                Err(e) => return Err((e, url)),
            };
            let next = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok());
            match next {
                Some(next) if response.status().is_redirection() && hops < MAX_REDIRECTS => {
                    hops += 1;
                    url = next;
                }
                _ => return Ok(response),
            }
        }
    }

    /// A transport error of a file download (the Bot API answered getFile,
    /// so it is not unreachable): a passing fault of this file, named with
    /// the URL it failed at (`at`, a redirect's target; else the error's),
    /// without the token or other secrets. The ref fails with it if it lasts.
    pub fn download_failed(&self, e: reqwest::Error, at: Option<&url::Url>) -> TgError {
        let at = at
            .or(e.url())
            .map(|u| format!(" from {}", self.scrub(&crate::redact::url(u.as_str()))))
            .unwrap_or_default();
        let (_, text) = self.transport_text(e);
        TgError::Transient(format!("file download{at} failed: {text}"))
    }

    /// `text` without the token (a local Bot API server's paths hold it).
    /// A plain replace of every occurrence: a token is long and random, so
    /// no ordinary word holds it and the mask reveals nothing.
    pub fn scrub(&self, text: &str) -> String {
        crate::redact::scrub(text, &self.token)
    }
}

/// A body that is not a Bot API answer, described without quoting it
/// whole: a server's page could hold anything.
fn what_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let start: String = text.trim_start().chars().take(40).collect();
    if start.is_empty() {
        "an empty body".into()
    } else {
        format!("{} bytes starting {start:?}", body.len())
    }
}

/// Redirects followed for one request, as many as reqwest would.
const MAX_REDIRECTS: usize = 10;

/// The `--telegram-rate` values (requests per second) that make sense, inclusive:
/// from one request every 1000 s to a million a second.
pub const RATES: (f64, f64) = (0.001, 1_000_000.0);

/// The longest flood-control wait taken at once: a server asking for more is
/// asked again after it (and a run is not frozen for days by one answer).
pub const MAX_FLOOD_WAIT: Duration = Duration::from_secs(3600);

/// A server's `retry_after` seconds as a wait of 1 s to [`MAX_FLOOD_WAIT`]:
/// negative, zero, tiny, huge or not a number, it never overflows a clock.
pub fn flood_wait(secs: f64) -> Duration {
    if secs.is_nan() {
        return Duration::from_secs(1);
    }
    Duration::from_secs_f64(secs.clamp(1.0, MAX_FLOOD_WAIT.as_secs_f64()))
}

fn retry_after_header(response: &reqwest::Response) -> Option<f64> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Spaces requests to a rate and holds them all during a flood-control pause.
struct Pacer {
    interval: Duration,
    next: tokio::sync::Mutex<Instant>,
    paused_until: std::sync::Mutex<Instant>,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        let interval = if rate.is_finite() && rate > 0.0 {
            Duration::from_secs_f64(1.0 / rate.clamp(RATES.0, RATES.1))
        } else {
            Duration::ZERO
        };
        Pacer {
            interval,
            next: tokio::sync::Mutex::new(Instant::now()),
            paused_until: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Returns when a request may go: out of any pause, in its own slot.
    /// A pause that began while the caller waited for its slot (slots are
    /// handed out ahead of time) is waited out too, then a new slot taken.
    async fn wait(&self) {
        loop {
            let until = self.paused_until();
            if until > Instant::now() {
                tokio::time::sleep_until(until).await;
                continue;
            }
            let slot = {
                let mut next = self.next.lock().await;
                let slot = (*next).max(Instant::now());
                *next = slot + self.interval;
                slot
            };
            tokio::time::sleep_until(slot).await;
            if self.paused_until() <= Instant::now() {
                return;
            }
        }
    }

    fn paused_until(&self) -> Instant {
        self.paused_until
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|_| Instant::now())
    }

    fn pause(&self, wait: Duration) {
        if let Ok(mut until) = self.paused_until.lock() {
            let wait = wait.min(MAX_FLOOD_WAIT);
            *until = (*until).max(Instant::now() + wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_path_is_relative_plain_segments_escaped() {
        assert_eq!(
            download_path("stickers/file_0.webp"),
            Ok("stickers/file_0.webp".into())
        );
        assert_eq!(
            download_path("stickers/a b?#%.webp"),
            Ok("stickers/a%20b%3F%23%25.webp".into())
        );
        for bad in [
            "../etc/hostname",
            "stickers/../../x",
            "/etc/hostname",
            "stickers//x",
            "stickers/",
            "./x",
            "",
            "a\\..\\b",
            "a/\nb",
        ] {
            assert!(
                matches!(download_path(bad), Err(TgError::Refused(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_api_url_is_http_or_https_with_a_host() {
        for good in [
            "https://api.telegram.org",
            "http://127.0.0.1:8081/",
            "http://h/prefix",
        ] {
            assert_eq!(check_api_url(good), Ok(()), "{good}");
        }
        for bad in [
            "htp://127.0.0.1:1",
            "file:///tmp",
            "api.telegram.org",
            "https://",
            "http://h/?q=1",
        ] {
            assert!(check_api_url(bad).is_err(), "{bad}");
        }
        let shown = check_api_url("htp://u:TgUrlPw@h").expect_err("refused");
        assert!(!shown.contains("TgUrlPw"), "{shown}");
    }
}
