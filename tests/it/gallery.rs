//! `gallery`: the static site, read back as files and looked at in chromium.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{bin, media, percent_decode, temp_dir};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

const HOSTILE_FILE_ID: &str = r#"<script>alert("file_id")</script>"#;
const HOSTILE_KEY: &str = r#"../<script>alert("key")</script>.webp"#;

/// An archive of real media: CSV exports and a bucket directory, snapshot
/// and fetched (no Telegram: refs with only a file_id stay pending).
///
/// - user 7001 (prod): session A (a video session sticker, a single webp),
///   session B with pack batch P: positions 0 (webp), 1 (tgs), 3 (webp and
///   jpg: held twice), 5 (webm), 6 (Telegram only: pending), 7 (an unsafe
///   key: failed); 2 and 4 held by none; a png sheet;
/// - user 7002 (test): session C (a tgs session sticker, a single sticker
///   with the same tgs bytes), session D (a hostile file_id, pending).
struct MediaArchive {
    _dir: tempfile::TempDir,
    root: PathBuf,
    archive: PathBuf,
}

impl MediaArchive {
    fn new() -> MediaArchive {
        let dir = temp_dir();
        let root = dir.path().to_path_buf();
        let archive = root.join("archive");
        let db = root.join("db");
        let bucket = root.join("bucket");
        std::fs::create_dir_all(&db).expect("db dir");
        let put = |key: &str, bytes: &[u8]| {
            let path = bucket.join(key);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("bucket dir");
            std::fs::write(path, bytes).expect("bucket object");
            key.to_string()
        };
        let (a, b, c, d, p) = (uuid(0xa1), uuid(0xa2), uuid(0xa3), uuid(0xa4), uuid(0xb1));
        let anim = media::tgs("spin", [0.9, 0.3, 0.2]);
        let video_key = put("stickers/7001/a/video.webm", &media::webm());
        let anim_key = put("stickers/7002/c/anim.tgs", &anim);
        let sheet_key = put("pack_sheets/7001/p/sheet.png", &media::png(96, 64, 3));

        let mut sessions = csv::Writer::from_path(db.join("sessions.csv")).expect("csv");
        sessions
            .write_record([
                "id",
                "user_id",
                "env",
                "mode",
                "last_sticker_file_id",
                "last_sticker_storage_path",
                "pack_sheet_file_id",
                "created_at",
            ])
            .expect("csv");
        for row in [
            [
                &a,
                "7001",
                "prod",
                "single",
                "CAAC-video-a",
                &video_key,
                "",
                "2025-04-01 10:00:00+00",
            ],
            [
                &b,
                "7001",
                "prod",
                "pack",
                "",
                "",
                "",
                "2025-04-02 10:00:00+00",
            ],
            [
                &c,
                "7002",
                "test",
                "single",
                "CAAC-anim-c",
                &anim_key,
                "",
                "2025-04-03 10:00:00+00",
            ],
            [
                &d,
                "7002",
                "test",
                "single",
                HOSTILE_FILE_ID,
                "",
                "",
                "2025-04-04 10:00:00+00",
            ],
        ] {
            sessions.write_record(row).expect("csv");
        }
        sessions.flush().expect("csv");

        let mut batches = csv::Writer::from_path(db.join("pack_batches.csv")).expect("csv");
        batches
            .write_record([
                "id",
                "session_id",
                "user_id",
                "status",
                "cleaned_sheet_storage_path",
                "created_at",
            ])
            .expect("csv");
        batches
            .write_record([&p, &b, "7001", "done", &sheet_key, "2025-04-02 10:05:00+00"])
            .expect("csv");
        batches.flush().expect("csv");

        let mut stickers = csv::Writer::from_path(db.join("stickers.csv")).expect("csv");
        stickers
            .write_record([
                "id",
                "user_id",
                "session_id",
                "pack_batch_id",
                "pack_index",
                "telegram_file_id",
                "result_storage_path",
                "created_at",
            ])
            .expect("csv");
        let at = "2025-04-02 10:05:00+00";
        let pack = [
            (
                0xc1,
                "3",
                put(
                    "stickers/7001/p/3.webp",
                    &media::webp(64, [220, 40, 40, 255]),
                ),
            ),
            (
                0xc2,
                "0",
                put(
                    "stickers/7001/p/0.webp",
                    &media::webp(64, [40, 180, 60, 255]),
                ),
            ),
            (
                0xc3,
                "1",
                put(
                    "stickers/7001/p/1.tgs",
                    &media::tgs("pack", [0.2, 0.4, 0.9]),
                ),
            ),
            (
                0xc4,
                "3",
                put("stickers/7001/p/3b.jpg", &media::jpeg("three again")),
            ),
            (0xc5, "5", put("stickers/7001/p/5.webm", &media::webm())),
            (0xc6, "6", String::new()),
            (0xc7, "7", HOSTILE_KEY.to_string()),
        ];
        for (n, index, key) in &pack {
            let fid = format!("CAAC-pack-{index}-{n:x}");
            stickers
                .write_record([&uuid(*n), "7001", &b, &p, index, &fid, key, at])
                .expect("csv");
        }
        let single = put(
            "stickers/7001/a/single.webp",
            &media::webp(64, [40, 90, 220, 128]),
        );
        let same_anim = put("stickers/7002/c/again.tgs", &anim);
        for (n, user, session, key) in [(0xd1, "7001", &a, single), (0xd2, "7002", &c, same_anim)] {
            let fid = format!("CAAC-single-{n:x}");
            stickers
                .write_record([&uuid(n), user, session, "", "", &fid, &key, at])
                .expect("csv");
        }
        stickers.flush().expect("csv");

        let archive_arg = archive.to_str().expect("utf-8");
        run_ok(
            bin()
                .args(["--archive", archive_arg, "snapshot", "--db"])
                .arg(&db),
        );
        fetch(
            bin()
                .args(["--archive", archive_arg, "fetch", "--storage"])
                .arg(&bucket),
        );
        MediaArchive {
            _dir: dir,
            root,
            archive,
        }
    }

    fn gallery(&self, extra: &[&str]) -> Value {
        gallery(&self.archive, extra)
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run starchive");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A fetch that may leave failed refs behind (exit 3).
fn fetch(cmd: &mut Command) {
    let out = cmd.output().expect("run starchive");
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gallery(archive: &Path, extra: &[&str]) -> Value {
    let out = run_ok(
        bin()
            .arg("--archive")
            .arg(archive)
            .args(["gallery", "--json"])
            .args(extra),
    );
    serde_json::from_str(&out).expect("gallery --json")
}

/// The archive of `fixtures/` (CSV + bucket), fetched without Telegram.
fn fixture_archive() -> (tempfile::TempDir, PathBuf) {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    let a = archive.to_str().expect("utf-8");
    run_ok(bin().args([
        "--archive",
        a,
        "snapshot",
        "--db",
        &format!("{FIXTURES}/db"),
    ]));
    fetch(bin().args([
        "--archive",
        a,
        "fetch",
        "--storage",
        &format!("{FIXTURES}/bucket"),
    ]));
    (dir, archive)
}

/// Every HTML page under `site`.
fn pages(site: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![site.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "html") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The values of every `href` and `src` attribute of a page, unescaped.
fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in [" href=\"", " src=\""] {
        for (at, _) in html.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            let value = &rest[..rest.find('"').expect("closing quote")];
            out.push(
                value
                    .replace("&quot;", "\"")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&#39;", "'")
                    .replace("&amp;", "&"),
            );
        }
    }
    out
}

/// Checks that every link of every page resolves to a file or directory on
/// disk and names no other machine; returns the blobs linked (sha256s).
fn check_links(site: &Path) -> BTreeSet<String> {
    let mut blobs = BTreeSet::new();
    for page in pages(site) {
        let html = std::fs::read_to_string(&page).expect("page");
        for link in links(&html) {
            let scheme = link
                .find(':')
                .is_some_and(|i| !link[..i].contains('/') && !link[..i].contains('#'));
            assert!(
                !scheme && !link.starts_with("//"),
                "{} links off the page's directory tree: {link}",
                page.display()
            );
            let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                page.clone()
            } else {
                page.parent().expect("dir").join(percent_decode(path))
            };
            assert!(
                target.exists(),
                "{} links to {link}, which does not exist ({})",
                page.display(),
                target.display()
            );
            if !fragment.is_empty() {
                let text = std::fs::read_to_string(&target).expect("linked page");
                assert!(
                    text.contains(&format!("id=\"{fragment}\"")),
                    "{} links to {link}: no such anchor",
                    page.display()
                );
            }
            if link.contains("/blobs/") {
                let target = target.canonicalize().expect("canonical");
                blobs.insert(
                    target
                        .file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    blobs
}

/// The sha256 of every fetched ref of the archive (of `env` when given).
fn fetched_blobs(archive: &Path, env: Option<&str>) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(archive.join("catalog.sqlite")).expect("catalog");
    let mut stmt = conn
        .prepare(
            "SELECT DISTINCT sha256 FROM v_refs WHERE state = 'fetched' AND (?1 IS NULL OR env = ?1)",
        )
        .expect("query");
    stmt.query_map([env], |r| r.get::<_, String>(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn refs_in_scope(archive: &Path, env: Option<&str>) -> u64 {
    let conn = rusqlite::Connection::open(archive.join("catalog.sqlite")).expect("catalog");
    conn.query_row(
        "SELECT count(*) FROM v_refs WHERE ?1 IS NULL OR env = ?1",
        [env],
        |r| r.get(0),
    )
    .expect("count")
}

#[test]
fn every_link_resolves_on_this_machine_and_every_fetched_blob_is_shown() {
    let media = MediaArchive::new();
    let (_dir, fixture) = fixture_archive();
    for archive in [&media.archive, &fixture] {
        let report = gallery(archive, &[]);
        let site = archive.join("gallery");
        assert_eq!(report["out"], site.display().to_string());
        assert_eq!(report["pages"], pages(&site).len() as u64, "{report}");
        assert_eq!(
            report["stickers"],
            refs_in_scope(archive, None),
            "each ref once"
        );
        let linked = check_links(&site);
        let fetched = fetched_blobs(archive, None);
        assert!(!fetched.is_empty());
        assert_eq!(
            linked, fetched,
            "the blobs linked are those of fetched refs"
        );
        // Blobs are linked in place: nothing of blobs/ is copied.
        for page in pages(&site) {
            assert!(page.metadata().expect("meta").len() < 512 * 1024);
        }
        for sha in &fetched {
            let copies = walk_files(&site).filter(|f| f.ends_with(sha)).count();
            assert_eq!(copies, 0, "{sha} copied into the site");
        }
    }
    // Not fetched: the fixture's Telegram-only refs show as placeholders.
    let report = gallery(&fixture, &[]);
    let pending: u64 = {
        let conn = rusqlite::Connection::open(fixture.join("catalog.sqlite")).expect("catalog");
        conn.query_row(
            "SELECT count(*) FROM refs WHERE state <> 'fetched'",
            [],
            |r| r.get(0),
        )
        .expect("count")
    };
    assert!(pending > 0);
    assert_eq!(report["placeholders"], pending);
}

fn walk_files(dir: &Path) -> impl Iterator<Item = String> {
    crate::support::objects::files(dir)
        .into_iter()
        .map(|(_, path)| path.display().to_string())
}

/// The `data-row` of each card of a page, in order, and the text around.
fn rows_in_order(html: &str) -> Vec<String> {
    html.match_indices("data-row=\"")
        .map(|(at, m)| {
            let rest = &html[at + m.len()..];
            rest[..rest.find('"').expect("quote")].to_string()
        })
        .collect()
}

#[test]
fn pack_page_keeps_pack_order_and_shows_gaps_duplicates_and_the_sheet() {
    let media = MediaArchive::new();
    media.gallery(&[]);
    let page = media
        .archive
        .join("gallery/packs")
        .join(format!("{}.html", uuid(0xb1)));
    let html = std::fs::read_to_string(&page).expect("pack page");
    let expected: Vec<String> = [0xc2, 0xc3, 0xc1, 0xc4, 0xc5, 0xc6, 0xc7]
        .into_iter()
        .map(uuid)
        .chain([uuid(0xb1)]) // the sheet (a pack_batches row) comes last
        .collect();
    assert_eq!(rows_in_order(&html), expected);
    // Positions 2 and 4 are visibly missing, in their places.
    let at = |needle: &str| {
        html.find(needle)
            .unwrap_or_else(|| panic!("{needle} not on the page"))
    };
    assert!(at(&uuid(0xc3)) < at("position 2") && at("position 2") < at(&uuid(0xc1)));
    assert!(at(&uuid(0xc4)) < at("position 4") && at("position 4") < at(&uuid(0xc5)));
    // Both stickers at position 3 say so, and no other does.
    assert_eq!(html.matches("card state-fetched shared").count(), 2);
    assert_eq!(html.matches("position held twice").count(), 2);
    // Media by type: images, the webm as muted looping video, the tgs as a player.
    assert_eq!(html.matches("<img ").count(), 4, "3 stickers and the sheet");
    assert!(html.contains("<video") && html.contains(" muted") && html.contains(" loop"));
    assert_eq!(html.matches("data-tgs=").count(), 1);
    assert!(html.contains("assets/lottie_light.min.js"));
    // Placeholders with their state and reason.
    assert!(html.contains("not fetched yet"));
    assert!(html.contains("unsafe key"));
    assert!(at("<h2>Sheet</h2>") > at(&uuid(0xc7)));
}

#[test]
fn hostile_strings_from_the_database_are_escaped() {
    let media = MediaArchive::new();
    media.gallery(&[]);
    let site = media.archive.join("gallery");
    let mut seen_id = false;
    let mut seen_reason = false;
    for page in pages(&site) {
        let html = std::fs::read_to_string(&page).expect("page");
        assert!(!html.contains("<script>alert"), "{}", page.display());
        // The only scripts are the site's own files.
        for (at, _) in html.match_indices("<script") {
            assert!(
                html[at..].starts_with("<script src=\""),
                "{}",
                page.display()
            );
        }
        seen_id |= html.contains("&lt;script&gt;alert(&quot;file_id&quot;)&lt;/script&gt;");
        seen_reason |= html.contains("&lt;script&gt;alert(\\&quot;key\\&quot;)&lt;/script&gt;");
    }
    assert!(seen_id, "the hostile file_id is shown, escaped");
    assert!(
        seen_reason,
        "the reason naming the hostile key is shown, escaped"
    );
}

#[test]
fn animations_are_unpacked_once_into_scripts_that_hold_only_json() {
    let media = MediaArchive::new();
    media.gallery(&[]);
    let site = media.archive.join("gallery");
    let scripts: Vec<String> = walk_files(&site.join("anim")).collect();
    assert_eq!(scripts.len(), 2, "two distinct tgs blobs: {scripts:?}");
    for script in &scripts {
        let text = std::fs::read_to_string(script).expect("script");
        let (head, json) = text.split_once(", ").expect("call");
        assert!(head.starts_with("starchiveAnimation(\""), "{head}");
        let json = json.trim_end().strip_suffix(");").expect("end of call");
        let lottie: Value = serde_json::from_str(json).expect("JSON");
        assert_eq!(lottie["layers"][0]["ty"], 4);
    }
    // Session C's page: two players of one animation, its script once.
    let user = std::fs::read_to_string(site.join("users/7002.html")).expect("page");
    assert_eq!(user.matches("data-tgs=").count(), 2);
    assert_eq!(user.matches("/anim/").count(), 1);
}

#[test]
fn rerun_replaces_the_site_and_env_limits_it() {
    let media = MediaArchive::new();
    let site = media.archive.join("gallery");
    let all = media.gallery(&[]);
    let stale = site.join("packs/stale.html");
    std::fs::write(&stale, "old").expect("stale page");
    let test_only = media.gallery(&["--env", "test"]);
    assert!(!stale.exists(), "a re-run removes pages it did not write");
    assert!(
        !site.join("users/7001.html").exists(),
        "user 7001 is prod only"
    );
    assert!(!site.join(format!("packs/{}.html", uuid(0xb1))).exists());
    assert!(site.join("users/7002.html").is_file());
    assert_eq!(
        test_only["stickers"],
        refs_in_scope(&media.archive, Some("test"))
    );
    assert!(test_only["stickers"].as_u64() < all["stickers"].as_u64());
    assert_eq!(
        check_links(&site),
        fetched_blobs(&media.archive, Some("test"))
    );
    let index = std::fs::read_to_string(site.join("index.html")).expect("index");
    assert!(
        !index.contains(">prod<"),
        "no prod env on a --env test index"
    );
    // Nothing is left beside the site.
    let leftovers: Vec<_> = std::fs::read_dir(&media.archive)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("starchive-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn out_elsewhere_links_back_and_a_foreign_directory_is_refused() {
    let media = MediaArchive::new();
    let out = media.root.join("elsewhere/my site");
    let report = media.gallery(&["--out", out.to_str().expect("utf-8")]);
    assert_eq!(report["out"], out.display().to_string());
    assert_eq!(check_links(&out), fetched_blobs(&media.archive, None));
    assert!(!media.archive.join("gallery").exists());

    let foreign = media.root.join("documents");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(foreign.join("letter.txt"), "mine").expect("write");
    let run = bin()
        .arg("--archive")
        .arg(&media.archive)
        .args(["gallery", "--out"])
        .arg(&foreign)
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("not a starchive gallery"));
    let left: Vec<_> = std::fs::read_dir(&foreign).expect("read_dir").collect();
    assert_eq!(left.len(), 1, "the directory is left as it was");
}

/// A pulled archive is a catalog and `blobs/`: nothing else is read.
#[test]
fn catalog_and_blobs_alone_are_enough() {
    let media = MediaArchive::new();
    let copy = media.root.join("pulled");
    std::fs::create_dir_all(&copy).expect("mkdir");
    std::fs::copy(
        media.archive.join("catalog.sqlite"),
        copy.join("catalog.sqlite"),
    )
    .expect("copy");
    copy_dir(&media.archive.join("blobs"), &copy.join("blobs"));
    std::fs::remove_dir_all(media.root.join("bucket")).expect("no bucket any more");
    std::fs::remove_dir_all(media.root.join("db")).expect("no database any more");
    let report = gallery(&copy, &[]);
    assert_eq!(report["stickers"], refs_in_scope(&copy, None));
    assert_eq!(
        check_links(&copy.join("gallery")),
        fetched_blobs(&copy, None)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// `tests/browser`, with its npm dependencies installed (from the lockfile)
/// when they are not yet: once per test process, whichever test asks first.
fn browser_dir() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
            if !dir.join("node_modules/playwright-core").is_dir() {
                let status = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    .status()
                    .expect("npm: install Node.js and npm (.ci/run does)");
                assert!(status.success(), "npm ci in {}", dir.display());
            }
            dir
        })
        .clone()
}

/// The gallery in a real browser: chromium loads the index and a pack page
/// from file:// and every image decodes, every video has a frame, every
/// animation draws, the console shows no error and no request leaves file://.
#[test]
fn chromium_shows_every_sticker_offline() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium}: install Debian's chromium (.ci/run does) or set CHROMIUM"
    );
    let media = MediaArchive::new();
    media.gallery(&[]);
    let site = media.archive.join("gallery");
    let pack = site.join(format!("packs/{}.html", uuid(0xb1)));
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gallery-pack-page.png");
    let out = Command::new("node")
        .arg("check.mjs")
        .arg(&screenshot)
        .args([
            site.join("index.html"),
            site.join("users/7002.html"),
            site.join("users/7001.html"),
            pack,
        ])
        .current_dir(browser_dir())
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node: install Node.js (.ci/run does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("report");
    let counts: Vec<[u64; 4]> = report["pages"]
        .as_array()
        .expect("pages")
        .iter()
        .map(|p| {
            ["images", "videos", "players", "placeholders"].map(|k| p[k].as_u64().expect("count"))
        })
        .collect();
    assert_eq!(
        counts,
        [
            [0, 0, 0, 0], // index
            [0, 0, 2, 1], // user 7002: two players, the hostile file_id pending
            [1, 1, 0, 0], // user 7001: a single webp, the video session sticker
            [4, 1, 1, 4], // pack: 3 stickers + sheet, a video, a player; 2 gaps, pending, failed
        ],
        "{stdout}"
    );
    eprintln!("screenshot of the pack page: {}", screenshot.display());
    assert!(screenshot.metadata().expect("screenshot").len() > 10_000);
}

/// The browser check itself fails on what it must catch: an image that
/// does not decode, a video with no frame, a player that draws nothing, a
/// console error and a request off the machine.
#[test]
fn the_browser_check_catches_a_broken_page() {
    let dir = temp_dir();
    std::fs::write(dir.path().join("not-an-image"), "plain text").expect("write");
    let lottie = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/vendor/lottie-web/lottie_light.min.js"
    );
    std::fs::write(
        dir.path().join("bad.html"),
        format!(
            r#"<!DOCTYPE html><html><body>
            <img src="not-an-image">
            <video src="not-an-image" muted></video>
            <div data-tgs="00"></div>
            <div data-tgs="blank" style="width:100px;height:100px"></div>
            <img src="http://127.0.0.1:9/x.png">
            <script src="{lottie}"></script>
            <script>
              lottie.loadAnimation({{container: document.querySelector('[data-tgs="blank"]'),
                renderer: "svg", animationData: {{v: "5.5.2", fr: 30, ip: 0, op: 30, w: 512,
                h: 512, layers: [], assets: []}}}});
              console.error("boom");
            </script>
            </body></html>"#
        ),
    )
    .expect("write");
    let out = Command::new("node")
        .arg("check.mjs")
        .arg(dir.path().join("shot.png"))
        .arg(dir.path().join("bad.html"))
        .current_dir(browser_dir())
        .env("CHECK_WAIT_MS", "1500")
        .output()
        .expect("node");
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    let failures = report["failures"].to_string();
    for expected in [
        "image did not decode",
        "video has no frame",
        "tgs player 00 on",
        "tgs player blank on",
        "drew nothing",
        "console error",
        "request off the machine: http://127.0.0.1:9/x.png",
    ] {
        assert!(failures.contains(expected), "{expected} in {failures}");
    }
}

/// Positions from the database are any i64: a pack at position i64::MAX
/// gets one card for its gap, not billions, and negative positions show.
#[test]
fn extreme_pack_positions_make_one_gap_card() {
    let dir = temp_dir();
    let db = dir.path().join("db");
    std::fs::create_dir_all(&db).expect("mkdir");
    let (s, p) = (uuid(0xa1), uuid(0xb1));
    std::fs::write(
        db.join("sessions.csv"),
        format!("id,user_id,env,mode,created_at\n{s},1,prod,pack,2025-01-01 00:00:00+00\n"),
    )
    .expect("csv");
    std::fs::write(
        db.join("pack_batches.csv"),
        format!("id,session_id,user_id,created_at\n{p},{s},1,2025-01-01 00:00:00+00\n"),
    )
    .expect("csv");
    let mut stickers =
        String::from("id,user_id,session_id,pack_batch_id,pack_index,telegram_file_id\n");
    for (n, index) in [(0xc1, "0"), (0xc2, "9223372036854775807"), (0xc3, "-5")] {
        stickers.push_str(&format!("{},1,{s},{p},{index},CAAC-{n:x}\n", uuid(n)));
    }
    std::fs::write(db.join("stickers.csv"), stickers).expect("csv");
    let archive = dir.path().join("archive");
    run_ok(
        bin()
            .arg("--archive")
            .arg(&archive)
            .args(["snapshot", "--db"])
            .arg(&db),
    );
    let report = gallery(&archive, &[]);
    assert_eq!(report["stickers"], 3);
    let html = std::fs::read_to_string(archive.join(format!("gallery/packs/{p}.html")))
        .expect("pack page");
    assert_eq!(html.matches("card gap").count(), 1);
    assert!(html.contains("positions 1–9223372036854775806"));
    assert!(
        html.contains("<dd>9223372036854775806</dd>"),
        "missing positions counted"
    );
    assert!(html.contains("sticker #-5"));
    let order = rows_in_order(&html);
    assert_eq!(order, [uuid(0xc3), uuid(0xc1), uuid(0xc2)]);
}

/// The gallery only reads the archive: it runs while another command holds
/// the archive's lock (a long fetch, say).
#[test]
fn gallery_runs_beside_a_command_that_holds_the_archive() {
    let media = MediaArchive::new();
    let _writer = starchive::catalog::Catalog::open_existing(&media.archive).expect("lock");
    let report = media.gallery(&[]);
    assert_eq!(report["stickers"], refs_in_scope(&media.archive, None));
}

/// A large bot's pages stay small: a user with 600 sessions gets three
/// pages, the index two, linked in order, and every session's link lands on
/// the page that shows it.
#[test]
fn long_pages_continue_on_further_pages() {
    let dir = temp_dir();
    let db = dir.path().join("db");
    std::fs::create_dir_all(&db).expect("mkdir");
    let mut sessions = String::from("id,user_id,env,mode,last_sticker_file_id,created_at\n");
    for n in 0..600u32 {
        sessions.push_str(&format!(
            "{},1,prod,single,CAAC-{n},2025-01-01 00:{:02}:{:02}+00\n",
            uuid(0x1000 + n),
            n / 60,
            n % 60
        ));
    }
    std::fs::write(db.join("sessions.csv"), sessions).expect("csv");
    std::fs::write(db.join("stickers.csv"), "id,session_id\n").expect("csv");
    std::fs::write(db.join("pack_batches.csv"), "id,session_id\n").expect("csv");
    let archive = dir.path().join("archive");
    run_ok(
        bin()
            .arg("--archive")
            .arg(&archive)
            .args(["snapshot", "--db"])
            .arg(&db),
    );
    let report = gallery(&archive, &[]);
    let site = archive.join("gallery");
    assert_eq!(report["stickers"], 600);
    assert_eq!(report["placeholders"], 600, "none fetched");
    let names: Vec<String> = pages(&site)
        .iter()
        .map(|p| {
            p.strip_prefix(&site)
                .expect("in site")
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "index.html",
            "index.p2.html",
            "users/1.html",
            "users/1.p2.html",
            "users/1.p3.html"
        ]
    );
    for page in pages(&site) {
        let html = std::fs::read_to_string(&page).expect("page");
        let items = html.matches("<tr>").count() + html.matches("<figure").count();
        assert!(items <= 500 + 8, "{}: {items} items", page.display());
    }
    let second = std::fs::read_to_string(site.join("users/1.p2.html")).expect("page 2");
    assert!(second.contains(r#"href="1.html""#) && second.contains(r#"href="1.p3.html""#));
    // Every link (and every #anchor) resolves, across the pages.
    check_links(&site);
    let index = std::fs::read_to_string(site.join("index.p2.html")).expect("index 2");
    assert!(index.contains(&format!("users/1.p3.html#s-{}", uuid(0x1000 + 599))));
}

/// The Envs table of the index: one row per env, then "(no env)" for the
/// sessions whose env is empty or NULL (an empty env is none, SPEC §1) with
/// their refs, and "(session unknown)" for refs whose session the catalog
/// has not: never an unnamed env, never one label for both.
#[test]
fn an_empty_env_is_no_env_and_told_apart_from_an_unknown_session() {
    let pg = crate::support::pg::TestPg::start();
    pg.create_db("bot");
    pg.load_schema("bot");
    let a = uuid(0xa1);
    let e = uuid(0xe1);
    pg.psql(
        "bot",
        &format!(
            "INSERT INTO sessions (id, user_id, env) VALUES ('{a}', 1, 'prod'), ('{e}', 2, '');
             INSERT INTO stickers (user_id, session_id, telegram_file_id) VALUES
                 (1, '{a}', 'F-prod'), (2, '{e}', 'F-empty-1'), (2, '{e}', 'F-empty-2'),
                 (3, NULL, 'F-nobody');"
        ),
    );
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    run_ok(
        bin()
            .arg("--archive")
            .arg(&archive)
            .args(["snapshot", "--db", &pg.url("bot")]),
    );
    gallery(&archive, &[]);
    let index = std::fs::read_to_string(archive.join("gallery/index.html")).expect("index");
    let table = &index[index.find("<h2>Envs</h2>").expect("Envs")..];
    let table = &table[..table.find("</table>").expect("table end")];
    // Each row's cells, as text: env, users, sessions, pack batches, refs, fetched.
    let rows: Vec<Vec<String>> = table
        .split("<tr>")
        .skip(2)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let text = &cell[cell.find('>').expect(">") + 1..];
                    text[..text.find("</td>").expect("</td>")].to_string()
                })
                .collect()
        })
        .collect();
    let row = |cells: [&str; 6]| cells.map(str::to_string).to_vec();
    assert_eq!(
        rows,
        [
            row(["prod", "1", "1", "0", "1", "0"]),
            row(["(no env)", "1", "1", "0", "2", "0"]),
            row(["(session unknown)", "1", "0", "0", "1", "0"]),
        ],
        "{table}"
    );
    // No command counts the empty env as one.
    let out = crate::support::run::run(
        bin()
            .arg("--archive")
            .arg(&archive)
            .args(["--env", "nope", "plan"]),
    );
    out.expect_code(0);
    assert!(
        out.stderr
            .contains("--env nope: no session has this env (the envs are: prod)"),
        "{}",
        out.stderr
    );
}
