//! `fetch` against servers that are not the Bot API they claim to be: a
//! mistyped `--telegram-api`, a web page, a server failing every call, and
//! answers that would lead starchive out of the bot's files or store bytes
//! that are not the file getFile described (SPEC §7).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::{clean_blobs, fetch_cmd, refs};
use crate::support::dataset::{Db, sticker_bytes};
use crate::support::run::{catalog, run};
use crate::support::telegram::{FakeTelegram, TOKEN};
use crate::support::{BackgroundServer, closed_port_url, full_body, temp_dir};

/// A server answering every request with `answer(path_and_query)`, keeping
/// the paths it was asked for.
struct Server {
    server: BackgroundServer,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(answer: fn(&str) -> (u16, &'static str, Vec<u8>)) -> Server {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let server = BackgroundServer::start("hostile-api", move |req: Request<Incoming>| {
            let path = req
                .uri()
                .path_and_query()
                .map_or(String::new(), |p| p.to_string());
            log.lock().expect("log").push(path.clone());
            async move {
                let (status, content_type, body) = answer(&path);
                Ok(Response::builder()
                    .status(status)
                    .header("content-type", content_type)
                    .body(full_body(body))
                    .expect("response"))
            }
        });
        Server { server, asked }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("log").clone()
    }

    /// `fetch --json` of `archive` through this server.
    fn fetch(&self, archive: &Path) -> super::Run {
        run(fetch_cmd(archive, None, None)
            .env("TELEGRAM_BOT_TOKEN", TOKEN)
            .env("TELEGRAM_API_URL", self.server.url()))
    }
}

/// An archive whose `n` refs are Telegram-only (file ids `f0`, `f1`, …).
fn archive_of(dir: &Path, n: usize) -> PathBuf {
    let mut db = Db::per_env();
    for i in 0..n {
        db.in_env("prod", Some(&format!("f{i}")), None);
    }
    db.snapshotted(dir)
}

fn states(archive: &Path) -> Vec<String> {
    refs(archive).into_iter().map(|r| r.state).collect()
}

fn get_file(file_path: &str, file_size: usize) -> (u16, &'static str, Vec<u8>) {
    let doc = serde_json::json!({
        "ok": true,
        "result": {"file_id": "x", "file_unique_id": "u", "file_size": file_size, "file_path": file_path}
    });
    (200, "application/json", doc.to_string().into_bytes())
}

#[test]
fn a_telegram_api_url_that_is_no_http_url_is_bad_usage() {
    let dir = temp_dir();
    let archive = archive_of(dir.path(), 2);
    for url in [
        "htp://127.0.0.1:1",
        "ftp://127.0.0.1:1",
        "127.0.0.1:8081",
        "api.telegram.org",
        "https://",
        "http://127.0.0.1:1/?x=1",
    ] {
        for by_env in [false, true] {
            let mut cmd = fetch_cmd(&archive, None, None);
            cmd.env("TELEGRAM_BOT_TOKEN", TOKEN);
            if by_env {
                cmd.env("TELEGRAM_API_URL", url);
            } else {
                cmd.args(["--telegram-api", url]);
            }
            let out = run(&mut cmd);
            out.expect_code(2);
            assert!(
                out.stderr.contains("--telegram-api"),
                "{url}: {}",
                out.stderr
            );
            assert_eq!(out.json()["exit_code"], 2);
        }
    }
    assert!(states(&archive).iter().all(|s| s == "pending"));
}

#[test]
fn a_server_that_never_answers_as_the_bot_api_stops_the_run_leaving_refs_pending() {
    let dir = temp_dir();
    let archive = archive_of(dir.path(), 3);
    let html: fn(&str) -> _ = |_| {
        (
            200,
            "text/html",
            b"<!doctype html><html><body>Welcome to nginx!</body></html>".to_vec(),
        )
    };
    let failing: fn(&str) -> _ = |_| (502, "text/html", b"<h1>502 Bad Gateway</h1>".to_vec());
    let other_json: fn(&str) -> _ = |_| (200, "application/json", b"{\"status\":\"up\"}".to_vec());
    let failing_json: fn(&str) -> _ = |_| {
        (
            500,
            "application/json",
            b"{\"ok\":false,\"error_code\":500,\"description\":\"Internal Server Error\"}".to_vec(),
        )
    };
    for (name, answer) in [
        ("HTML 200", html),
        ("502 page", failing),
        ("other JSON", other_json),
        ("500 always", failing_json),
    ] {
        let server = Server::start(answer);
        let out = server.fetch(&archive);
        out.expect_code(1);
        out.expect_error_doc();
        assert!(
            out.stderr
                .contains("check --telegram-api / TELEGRAM_API_URL")
                && out.stderr.contains("not a Bot API server or is failing"),
            "{name}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("SECRET"), "{name}: {}", out.stderr);
        assert!(
            states(&archive).iter().all(|s| s == "pending"),
            "{name}: {:?}",
            states(&archive)
        );
        assert!(!server.asked().is_empty(), "{name}: the server was asked");
    }
}

#[test]
fn a_bot_api_refusal_stays_per_ref() {
    let dir = temp_dir();
    let archive = archive_of(dir.path(), 2);
    let server = Server::start(|_| {
        (
            400,
            "application/json",
            b"{\"ok\":false,\"error_code\":400,\"description\":\"Bad Request: invalid file_id\"}"
                .to_vec(),
        )
    });
    let out = server.fetch(&archive);
    out.expect_code(3);
    assert_eq!(states(&archive), ["failed", "failed"]);
}

#[test]
fn a_file_path_leaving_the_bots_files_is_refused_and_nothing_is_asked_outside() {
    let dir = temp_dir();
    let archive = archive_of(dir.path(), 6);
    let server = Server::start(|path| {
        let size = sticker_bytes(1, 300).len();
        if path.contains("getFile") {
            let id = path.rsplit("file_id=").next().unwrap_or("");
            return match id {
                "f0" => get_file("../../../../etc/hostname", size),
                "f1" => get_file("stickers/../../x.webp", size),
                "f2" => get_file("/etc/../etc/hostname", size),
                "f3" => get_file("stickers//x.webp", size),
                "f4" => get_file("stickers/a\\..\\..\\b", size),
                // Safe, but its bytes are not the size getFile gives.
                _ => get_file("stickers/file 5?.webp", size + 1),
            };
        }
        (200, "image/webp", sticker_bytes(1, 300))
    });
    let out = server.fetch(&archive);
    out.expect_code(3);
    assert!(
        states(&archive).iter().all(|s| s == "failed"),
        "{:?}",
        states(&archive)
    );
    let downloads: Vec<String> = server
        .asked()
        .into_iter()
        .filter(|p| !p.contains("getFile"))
        .collect();
    let prefix = format!("/file/bot{TOKEN}/");
    assert!(
        downloads
            .iter()
            .all(|p| p == &format!("{prefix}stickers/file%205%3F.webp")),
        "{downloads:?}"
    );
    assert!(!downloads.is_empty(), "the safe path was downloaded");
    assert!(clean_blobs(&archive).is_empty(), "nothing stored");
    let reasons: Vec<String> = refs(&archive)
        .into_iter()
        .map(|r| r.reason.unwrap_or_default())
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("unsafe file_path"))
            .count(),
        5,
        "{reasons:?}"
    );
    assert!(reasons.iter().all(|r| !r.contains("SECRET")), "{reasons:?}");
    let stored: i64 = catalog(&archive)
        .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
        .expect("count blobs");
    assert_eq!(stored, 0);
}

#[test]
fn a_download_redirected_to_a_dead_host_fails_its_ref_naming_the_download() {
    let dir = temp_dir();
    let archive = archive_of(dir.path(), 2);
    let tg = FakeTelegram::new();
    tg.add_file("f0", "stickers/f0.webp", sticker_bytes(1, 300));
    tg.add_file("f1", "stickers/f1.webp", sticker_bytes(2, 300));
    // The file's host is gone, the Bot API is not: getFile answers.
    let dead = closed_port_url();
    // Its link carries the token and a signature, as a CDN's may.
    tg.redirect_download(
        "f1",
        &format!("{dead}/file/bot{TOKEN}/stickers/f1.webp?X-Amz-Signature=sigSECRET"),
    );
    let out = run(&mut fetch_cmd(&archive, None, Some(&tg)));
    out.expect_code(3);
    let doc = out.json();
    assert_eq!(
        (&doc["done"], &doc["failed"]),
        (&1.into(), &1.into()),
        "{doc}"
    );
    assert!(doc.get("stopped").is_none(), "{doc}");
    let failed: Vec<_> = refs(&archive)
        .into_iter()
        .filter(|r| r.state == "failed")
        .collect();
    let reason = failed[0].reason.clone().unwrap_or_default();
    // The download is named, at the URL it failed at, without the token.
    assert!(
        reason.contains(&format!("file download from {dead}/file/bot"))
            && reason.contains("f1.webp"),
        "{reason} ({dead})"
    );
    assert!(
        !reason.contains("cannot reach the Telegram Bot API"),
        "{reason}"
    );
    let secret = TOKEN.split_once(':').expect("token").1;
    for text in [&reason, &out.stdout, &out.stderr] {
        assert!(
            !text.contains(secret) && !text.contains("sigSECRET"),
            "{text}"
        );
    }
    assert!(!out.stderr.contains("cannot reach"), "{}", out.stderr);
    // Each attempt asked getFile again: the Bot API is not the one at fault.
    assert!(tg.get_file_calls("f1") > 1);
}
