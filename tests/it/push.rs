//! `push`, `verify --to` and `run`: every fetched ref to a destination
//! (SPEC §3, §4, §5, §7).
//!
//! The binary runs end to end against the in-process S3 server (SigV4) and
//! local directories; what it did is read back from the destination (files,
//! stored metadata), the server's request counters and the catalog.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::dataset::{Db, FIXTURE_BUCKET, FIXTURE_DB, FIXTURE_TELEGRAM, sticker_bytes};
use crate::support::objects::files_under;
use crate::support::run::{catalog, run, starchive};
use crate::support::s3::{ACCESS_KEY, SECRET_KEY, TestS3};
use crate::support::telegram::{FakeTelegram, TOKEN};
use crate::support::{closed_port_url, sha256_hex, temp_dir};
use crate::verify::verify_cmd;

// ---- the known answer ----------------------------------------------------

pub(crate) const MANIFEST: &str = "_starchive/manifest.jsonl.zst";
/// A push of the fetched fixture exits 3: sticker 315 failed at fetch, and
/// push counts it as failed.
pub(crate) const FIXTURE_PUSH_EXIT: i32 = 3;
pub(crate) const CATALOG_COPY: &str = "_starchive/catalog.sqlite.zst";

/// Where a key's bytes come from in the fixtures.
#[derive(Clone, Copy, Debug)]
enum Src {
    /// `fixtures/bucket/<key>`.
    Bucket,
    /// The Telegram file of this file_id (`fixtures/telegram/<file_id>`).
    Tg(&'static str),
}

/// Every ref of the fixture dataset that `push --layout mirror` places, with
/// its key, written by hand from `fixtures/db/*.csv` and SPEC §5:
/// - a ref with a storage key keeps it (sticker 302's key is dangling in the
///   bucket: its bytes come from Telegram, its key is still the database's);
/// - a sticker without one: `stickers/{user_id}/{session_id}/backfill_{id}.{ext}`
///   (single) or `stickers/{user_id}/{pack_batch_id}/backfill_{id}.{ext}` (pack);
/// - a session sticker without one: the key of the `stickers` row with the
///   same file_id when that row has one (sessions 101 -> sticker 301, 102 ->
///   303), else `stickers/{user_id}/backfill_session/{session_id}.{ext}`;
/// - a pack sheet without one: `pack_sheets/{pack_batch_id}.{ext}` (session
///   109, latest batch 204 has no cleaned sheet), or
///   `pack_sheets/session_{session_id}.{ext}` (session 110 has no batch).
///
/// Sticker 315 (invalid file_id) fails at fetch and gets no key.
const MIRROR: &[(&str, &str, &str, Src)] = &[
    (
        "sticker",
        "00000000-0000-4000-8000-000000000301",
        "stickers/100000001/00000000-0000-4000-8000-000000000101/1740823500000.webp",
        Src::Bucket,
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000302",
        "stickers/100000001/00000000-0000-4000-8000-000000000101/1740823320000.webp",
        Src::Tg("CAACAgIAAxkBAAIYOqpO9_ItQeBo8zQFK1Q8O6h_PdhRpGYHuXfiynMRP0"),
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000303",
        "stickers/100000001/00000000-0000-4000-8000-000000000102/1740907800000.webp",
        Src::Bucket,
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000304",
        "stickers/100000004/00000000-0000-4000-8000-000000000201/1741172400000_0.webp",
        Src::Bucket,
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000305",
        "stickers/100000004/00000000-0000-4000-8000-000000000201/1741172400000_1.webp",
        Src::Bucket,
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000306",
        "stickers/100000004/00000000-0000-4000-8000-000000000201/backfill_00000000-0000-4000-8000-000000000306.webp",
        Src::Tg("CAACAgIAAxkBAAIfNUrNC6WUeV3yOt0F7ZNduzEiiUNdKByINZIjlyjbOI"),
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000307",
        "stickers/100000004/00000000-0000-4000-8000-000000000201/1741172400000_3.webp",
        Src::Bucket,
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000308",
        "stickers/100000004/00000000-0000-4000-8000-000000000202/backfill_00000000-0000-4000-8000-000000000308.webp",
        Src::Tg("CAACAgIAAxkBAAI3fd_o-Lm8CqpBmDu6uS9SQOqXf1axXGdRmPcFMj1dAs"),
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000309",
        "stickers/100000004/00000000-0000-4000-8000-000000000202/backfill_00000000-0000-4000-8000-000000000309.webp",
        Src::Tg("CAACAgIAAxkBAAInioKC2wflVks-F1lqkvVGYsdyPwCknvU3nf4bhl8lks"),
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000310",
        "stickers/100000005/00000000-0000-4000-8000-000000000203/1740060000000_0.webp",
        Src::Bucket,
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000311",
        "stickers/100000005/00000000-0000-4000-8000-000000000203/1740060000000_1.webp",
        Src::Bucket,
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000312",
        "stickers/100000005/00000000-0000-4000-8000-000000000203/1740060000000_2.webp",
        Src::Bucket,
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000313",
        "stickers/100000002/00000000-0000-4000-8000-000000000204/1741464000000_0.webp",
        Src::Bucket,
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000314",
        "stickers/100000002/00000000-0000-4000-8000-000000000204/backfill_00000000-0000-4000-8000-000000000314.webp",
        Src::Tg("CAACAgIAAxkBAAIRSt6GNyqNNpIBZB0w2EcrkfQ5eTNyhrcpvOEY_KtVMg"),
    ),
    (
        "sticker",
        "00000000-0000-4000-8000-000000000316",
        "stickers/100000002/00000000-0000-4000-8000-000000000199/1736956800000.webp",
        Src::Bucket,
    ),
    (
        "session_sticker",
        "00000000-0000-4000-8000-000000000101",
        "stickers/100000001/00000000-0000-4000-8000-000000000101/1740823500000.webp",
        Src::Bucket,
    ),
    (
        "session_sticker",
        "00000000-0000-4000-8000-000000000102",
        "stickers/100000001/00000000-0000-4000-8000-000000000102/1740907800000.webp",
        Src::Bucket,
    ),
    (
        "session_sticker",
        "00000000-0000-4000-8000-000000000103",
        "stickers/100000002/backfill_session/00000000-0000-4000-8000-000000000103.webp",
        Src::Tg("CAACAgIAAxkBAAImjFLVojuLRFuuakwzbtU4CNBd1pZVrreIYwG4O0dPc4"),
    ),
    (
        "session_sticker",
        "00000000-0000-4000-8000-000000000104",
        "stickers/100000002/backfill_session/00000000-0000-4000-8000-000000000104.tgs",
        Src::Tg("CAACAgIAAxkBAAI70XfVqwvM0exaBEKXaX7C6eVVaYsVZ6D-5U36W_LvC0"),
    ),
    (
        "session_sticker",
        "00000000-0000-4000-8000-000000000105",
        "stickers/100000003/00000000-0000-4000-8000-000000000105/1739188860000.webp",
        Src::Bucket,
    ),
    (
        "session_sticker",
        "00000000-0000-4000-8000-000000000106",
        "stickers/100000003/backfill_session/00000000-0000-4000-8000-000000000106.webm",
        Src::Tg("CAACAgIAAxkBAAI-u9VAnrlXHi0ILOHPAuEEnWvTYLufiyAWgWCvlXiSEY"),
    ),
    (
        "pack_sheet",
        "00000000-0000-4000-8000-000000000107",
        "pack_sheets/100000004/00000000-0000-4000-8000-000000000201/1741172400000_clean.png",
        Src::Bucket,
    ),
    (
        "pack_sheet",
        "00000000-0000-4000-8000-000000000109",
        "pack_sheets/00000000-0000-4000-8000-000000000204.png",
        Src::Tg("BQACAgIAAxkBAAI34ABaGTlz_B3tt3F7STROfXJPltk-1gK8OSqFca_rMc"),
    ),
    (
        "pack_sheet",
        "00000000-0000-4000-8000-000000000110",
        "pack_sheets/session_00000000-0000-4000-8000-000000000110.jpg",
        Src::Tg("AgACAgIAAxkBAAIi-kC8ZHO2wsVKSo5lEUIoRQdHTKiLE08Qs8HMCKBnnM"),
    ),
    (
        "pack_sheet",
        "00000000-0000-4000-8000-000000000203",
        "pack_sheets/100000005/00000000-0000-4000-8000-000000000203/1740060000000_clean.png",
        Src::Bucket,
    ),
];

/// The fixture refs whose session has env `test` (SPEC §1, `--env`): three
/// pack stickers and the pack sheet of batch 203 (session 108), the session
/// stickers of 105 and 106, the sheet of session 110. (Sticker 315, also
/// `test`, fails at fetch.)
const TEST_ENV_KEYS: &[&str] = &[
    "pack_sheets/100000005/00000000-0000-4000-8000-000000000203/1740060000000_clean.png",
    "pack_sheets/session_00000000-0000-4000-8000-000000000110.jpg",
    "stickers/100000003/00000000-0000-4000-8000-000000000105/1739188860000.webp",
    "stickers/100000003/backfill_session/00000000-0000-4000-8000-000000000106.webm",
    "stickers/100000005/00000000-0000-4000-8000-000000000203/1740060000000_0.webp",
    "stickers/100000005/00000000-0000-4000-8000-000000000203/1740060000000_1.webp",
    "stickers/100000005/00000000-0000-4000-8000-000000000203/1740060000000_2.webp",
];

pub(crate) const FIXTURE_REFS: usize = 26;
pub(crate) const FIXTURE_PUSHED_REFS: u64 = 25;
pub(crate) const FIXTURE_BLOBS: usize = 22;
pub(crate) const FIXTURE_BLOB_BYTES: u64 = 1376;
const INVALID_STICKER: &str = "00000000-0000-4000-8000-000000000315";

/// The mirror keys (one per distinct key) and their expected bytes.
pub(crate) fn mirror_objects() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (_, _, key, src) in MIRROR {
        let bytes = match src {
            Src::Bucket => std::fs::read(Path::new(FIXTURE_BUCKET).join(key))
                .unwrap_or_else(|e| panic!("fixtures/bucket/{key}: {e}")),
            Src::Tg(id) => std::fs::read(Path::new(FIXTURE_TELEGRAM).join(id))
                .unwrap_or_else(|e| panic!("fixtures/telegram/{id}: {e}")),
        };
        if let Some(prev) = out.insert(key.to_string(), bytes.clone()) {
            assert_eq!(prev, bytes, "two refs at {key} with different bytes");
        }
    }
    out
}

/// The cas keys of the fixture's blobs (`blobs/sha256/<aa>/<sha256>`) and their bytes.
pub(crate) fn cas_objects() -> BTreeMap<String, Vec<u8>> {
    mirror_objects()
        .into_values()
        .map(|bytes| {
            let sha = sha256_hex(&bytes);
            (format!("blobs/sha256/{}/{sha}", &sha[..2]), bytes)
        })
        .collect()
}

// ---- helpers ---------------------------------------------------------------

/// `push --json --to URL` with the destination's credentials when it is S3.
pub(crate) fn push_cmd(archive: &Path, to: &str, s3: Option<&TestS3>) -> Command {
    let mut cmd = starchive(archive);
    cmd.args(["--json", "push", "--to", to]);
    if let Some(s3) = s3 {
        cmd.envs(s3.env("TO"));
    }
    cmd
}

/// An archive with the fixture dataset snapshotted and fetched (from
/// `fixtures/bucket` and the fake Bot API; the invalid file_id fails).
pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
    pub archive: PathBuf,
}

pub(crate) fn fetched_fixture() -> Fixture {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["--json", "snapshot", "--db", FIXTURE_DB])).expect_code(0);
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    let doc = run(starchive(&archive)
        .args(["--json", "fetch", "--storage", FIXTURE_BUCKET])
        .args(["--telegram-rate", "1000"])
        .envs(tg.env()))
    .expect_code(3)
    .json();
    assert_eq!(doc["failed"], 1, "{doc}");
    Fixture { dir, archive }
}

/// The objects in an S3 bucket, with their bytes.
pub(crate) fn bucket_objects(s3: &TestS3, bucket: &str) -> BTreeMap<String, Vec<u8>> {
    s3.object_keys(bucket)
        .into_iter()
        .map(|k| {
            let bytes = s3.get_file(bucket, &k).expect("object bytes");
            (k, bytes)
        })
        .collect()
}

/// The manifest's lines, decompressed by the `zstd` command-line tool.
/// `status --json`, and the failures it lists for the push stage.
fn push_failures(archive: &Path) -> (Value, Vec<Value>) {
    let status = run(starchive(archive).args(["--json", "status"]))
        .expect_code(0)
        .json();
    let failures = status["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .filter(|f| f["stage"] == "push")
        .cloned()
        .collect();
    (status, failures)
}

pub(crate) fn manifest_lines(compressed: &[u8]) -> Vec<Value> {
    let mut child = Command::new("zstd")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run zstd -dc (the zstd package)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(compressed).expect("feed zstd");
    }
    let out = child.wait_with_output().expect("zstd -dc");
    assert!(out.status.success(), "zstd -dc failed");
    String::from_utf8(out.stdout)
        .expect("manifest is UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each manifest line is JSON"))
        .collect()
}

/// Asserts that `objects` (a destination's content) holds exactly the
/// fixture's mirror keys with their bytes, plus `_starchive/`.
#[track_caller]
pub(crate) fn assert_mirror(objects: &BTreeMap<String, Vec<u8>>) {
    let want = mirror_objects();
    let mut want_keys: BTreeSet<String> = want.keys().cloned().collect();
    want_keys.insert(MANIFEST.into());
    want_keys.insert(CATALOG_COPY.into());
    let got_keys: BTreeSet<String> = objects.keys().cloned().collect();
    assert_eq!(
        got_keys,
        want_keys,
        "missing: {:?}\nunexpected: {:?}",
        want_keys.difference(&got_keys).collect::<Vec<_>>(),
        got_keys.difference(&want_keys).collect::<Vec<_>>()
    );
    for (key, bytes) in &want {
        assert!(
            objects[key] == *bytes,
            "{key}: {} bytes hashing to {}, expected {} bytes hashing to {}",
            objects[key].len(),
            sha256_hex(&objects[key]),
            bytes.len(),
            sha256_hex(bytes)
        );
    }
}

/// Asserts that two maps have the same keys, naming the differences.
#[track_caller]
fn assert_same_keys<V>(got: &BTreeMap<String, V>, want: &BTreeMap<String, V>, what: &str) {
    let got: BTreeSet<&String> = got.keys().collect();
    let want: BTreeSet<&String> = want.keys().collect();
    assert!(
        got == want,
        "{what}\nmissing: {:?}\nunexpected: {:?}",
        want.difference(&got).collect::<Vec<_>>(),
        got.difference(&want).collect::<Vec<_>>()
    );
}

/// `n` stickers whose storage keys are files of a local bucket directory
/// (`dir/bucket`), in sessions of 50; every 10th sticker has the same bytes
/// as the one before (one blob at two keys). Snapshotted and fetched into
/// `dir/archive`. Returns the keys with their bytes.
fn bucket_dataset(
    dir: &Path,
    n: usize,
    min_len: usize,
    max_len: usize,
) -> BTreeMap<String, Vec<u8>> {
    let bucket = dir.join("bucket");
    let mut db = Db::default();
    let mut objects = BTreeMap::new();
    let mut seed = 0u64;
    for i in 0..n {
        let user = format!("{}", 1000 + i / 50);
        let session = format!("session-{:04}", i / 50);
        if i % 50 == 0 {
            db.session(&session, &user, "prod", None, None);
        }
        if i % 10 != 9 {
            seed += 1;
        }
        let len = min_len + (seed as usize * 7919) % (max_len - min_len + 1);
        let key = format!("stickers/{user}/{session}/{i:06}.webp");
        let bytes = sticker_bytes(seed, len);
        let path = bucket.join(&key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &bytes).expect("write bucket file");
        db.sticker(
            &format!("sticker-{i:06}"),
            &user,
            &session,
            None,
            Some(&key),
        );
        objects.insert(key, bytes);
    }
    db.write(&dir.join("db"));
    let archive = dir.join("archive");
    run(starchive(&archive)
        .args(["--json", "snapshot", "--db"])
        .arg(dir.join("db")))
    .expect_code(0);
    let doc = run(starchive(&archive)
        .args(["--json", "fetch", "--jobs", "8", "--storage"])
        .arg(&bucket))
    .expect_code(0)
    .json();
    assert_eq!(doc["done"], n as u64, "{doc}");
    objects
}

/// Objects the catalog records as pushed to the destination shown as `url`.
fn recorded_pushed(archive: &Path) -> Vec<(String, String)> {
    let conn = catalog(archive);
    let mut stmt = conn
        .prepare("SELECT key, sha256 FROM objects WHERE state = 'pushed' ORDER BY key")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

// ---- layouts ---------------------------------------------------------------

#[test]
fn mirror_push_writes_exactly_the_bot_keys() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("mirror");
    let url = s3.store_url("mirror", "");
    let doc = run(&mut push_cmd(&fx.archive, &url, Some(&s3)))
        .expect_code(FIXTURE_PUSH_EXIT)
        .json();
    assert_eq!(doc["done"], FIXTURE_PUSHED_REFS, "{doc}");
    assert_eq!(doc["failed"], 1, "sticker 315 failed at fetch: {doc}");
    assert_eq!(doc["pending"], 0, "{doc}");
    assert_eq!(
        doc["bytes"], FIXTURE_BLOB_BYTES,
        "each blob sent once: {doc}"
    );

    let objects = bucket_objects(&s3, "mirror");
    assert_mirror(&objects);
    // Every object carries its sha256 as user metadata.
    for (key, bytes) in &objects {
        let meta = s3.user_metadata("mirror", key);
        assert_eq!(
            meta.get("sha256").map(String::as_str),
            Some(sha256_hex(bytes).as_str()),
            "{key}: x-amz-meta-sha256"
        );
    }
    run(&mut verify_cmd(&fx.archive, &url, Some(&s3))).expect_code(0);
}

#[test]
fn mirror_push_to_a_directory_writes_the_same_keys() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let url = format!("file://{}", dest.display());
    let doc = run(&mut push_cmd(&fx.archive, &url, None))
        .expect_code(FIXTURE_PUSH_EXIT)
        .json();
    assert_eq!(doc["done"], FIXTURE_PUSHED_REFS, "{doc}");
    assert_mirror(&files_under(&dest));
    run(&mut verify_cmd(&fx.archive, &url, None)).expect_code(0);
}

#[test]
fn cas_push_writes_each_blob_once() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("cas");
    let url = s3.store_url("cas", "");
    let mut cmd = push_cmd(&fx.archive, &url, Some(&s3));
    let doc = run(cmd.args(["--layout", "cas"]))
        .expect_code(FIXTURE_PUSH_EXIT)
        .json();
    assert_eq!(doc["done"], FIXTURE_PUSHED_REFS, "{doc}");
    assert_eq!(doc["bytes"], FIXTURE_BLOB_BYTES, "{doc}");

    let want = cas_objects();
    assert_eq!(want.len(), FIXTURE_BLOBS);
    let mut objects = bucket_objects(&s3, "cas");
    assert!(objects.remove(MANIFEST).is_some(), "manifest written");
    assert!(
        objects.remove(CATALOG_COPY).is_some(),
        "catalog copy written"
    );
    assert_eq!(
        objects.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert!(objects == want, "every blob's bytes at its sha256 key");
    // One PUT per blob, plus the manifest and the catalog copy; no copies.
    assert_eq!(s3.requests("COPY"), 0);
    assert_eq!(s3.requests("PUT"), FIXTURE_BLOBS as u64 + 2);
    for key in want.keys() {
        let sha = key.rsplit('/').next().expect("name");
        assert_eq!(
            s3.user_metadata("cas", key)
                .get("sha256")
                .map(String::as_str),
            Some(sha)
        );
    }
    let mut verify = verify_cmd(&fx.archive, &url, Some(&s3));
    run(verify.arg("--json")).expect_code(0);
}

#[test]
fn shared_blob_is_uploaded_once_and_copied_on_the_server() {
    // Stickers 303 and 312: same bytes, two keys.
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("copies");
    run(&mut push_cmd(
        &fx.archive,
        &s3.store_url("copies", ""),
        Some(&s3),
    ))
    .expect_code(FIXTURE_PUSH_EXIT);
    assert_eq!(s3.requests("COPY"), 1, "{:?}", s3.request_log());
    // 22 blobs + manifest + catalog copy, each sent once; the copy is a PUT too.
    assert_eq!(
        s3.requests("PUT") - s3.requests("COPY"),
        FIXTURE_BLOBS as u64 + 2
    );
    let a = "stickers/100000001/00000000-0000-4000-8000-000000000102/1740907800000.webp";
    let b = "stickers/100000005/00000000-0000-4000-8000-000000000203/1740060000000_2.webp";
    assert_eq!(s3.get_file("copies", a), s3.get_file("copies", b));
    let sha = sha256_hex(s3.get_file("copies", a).expect("object"));
    for key in [a, b] {
        assert_eq!(
            s3.user_metadata("copies", key).get("sha256"),
            Some(&sha),
            "{key}: the copy carries the sha256 too"
        );
    }
}

// ---- idempotence and resumption -------------------------------------------------

#[test]
fn second_push_makes_zero_puts() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("twice");
    for layout in ["mirror", "cas"] {
        let url = s3.store_url("twice", layout);
        let mut first = push_cmd(&fx.archive, &url, Some(&s3));
        run(first.args(["--layout", layout])).expect_code(FIXTURE_PUSH_EXIT);
        s3.reset_counts();
        let mut second = push_cmd(&fx.archive, &url, Some(&s3));
        let doc = run(second.args(["--layout", layout]))
            .expect_code(FIXTURE_PUSH_EXIT)
            .json();
        assert_eq!(s3.requests("PUT"), 0, "{layout}: {:?}", s3.request_log());
        assert_eq!(s3.requests("POST"), 0, "{layout}");
        assert_eq!(
            s3.requests("TOTAL"),
            1,
            "{layout}: one request: {:?}",
            s3.request_log()
        );
        assert_eq!(doc["done"], 0, "{doc}");
        assert_eq!(doc["skipped"], FIXTURE_PUSHED_REFS, "{doc}");
        assert_eq!(doc["bytes"], 0, "{doc}");
    }
}

#[test]
fn first_push_skips_objects_already_there_with_the_right_size() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("half");
    let want = mirror_objects();
    let shared = [
        "stickers/100000001/00000000-0000-4000-8000-000000000102/1740907800000.webp",
        "stickers/100000005/00000000-0000-4000-8000-000000000203/1740060000000_2.webp",
    ];
    // Ten objects already there, right bytes (no metadata: another tool put them).
    let present: Vec<&String> = want
        .keys()
        .filter(|k| !shared.contains(&k.as_str()))
        .take(10)
        .collect();
    for key in &present {
        s3.put_file("half", key, &want[*key]);
    }
    let refs_at_present = MIRROR
        .iter()
        .filter(|(_, _, key, _)| present.iter().any(|p| p.as_str() == *key))
        .count() as u64;

    let doc = run(&mut push_cmd(
        &fx.archive,
        &s3.store_url("half", ""),
        Some(&s3),
    ))
    .expect_code(FIXTURE_PUSH_EXIT)
    .json();
    // One listing of the destination, besides the one-page check that the
    // store can serve (with a delimiter) and, once the manifest is up, the
    // listing of `_starchive/` that finds older catalog copies to delete.
    let listings = s3
        .request_log()
        .into_iter()
        .filter(|(c, q)| {
            c == "LIST" && !q.contains("delimiter=") && !q.contains("prefix=_starchive")
        })
        .count();
    assert_eq!(listings, 1, "one listing: {:?}", s3.request_log());
    assert_eq!(s3.requests("LIST"), 3, "{:?}", s3.request_log());
    assert_eq!(
        s3.requests("HEAD"),
        1,
        "no per-object probe; one of the manifest written, to record it"
    );
    // 22 blobs - 10 present + manifest + catalog copy.
    assert_eq!(
        s3.requests("PUT") - s3.requests("COPY"),
        FIXTURE_BLOBS as u64 - 10 + 2,
        "{:?}",
        s3.request_log()
    );
    assert_eq!(doc["skipped"], refs_at_present, "{doc}");
    assert_eq!(doc["done"], FIXTURE_PUSHED_REFS - refs_at_present, "{doc}");
    assert_mirror(&bucket_objects(&s3, "half"));
}

#[test]
fn killed_push_resumes_to_a_complete_destination() {
    const REFS: usize = 300;
    const KILLS: usize = 5;
    let mut next = crate::support::seeded_rng("killed_push_resumes_to_a_complete_destination");
    let dir = temp_dir();
    let want = bucket_dataset(dir.path(), REFS, 500, 20_000);
    let archive = dir.path().join("archive");
    let s3 = TestS3::start();
    s3.create_bucket("resume");
    // A slow store, so that kills land while uploads are in flight.
    s3.set_latency(Duration::from_millis(6));
    let url = s3.store_url("resume", "");
    let mut kills = 0;
    for round in 0..KILLS {
        let delay = Duration::from_millis(40 + next() % 300);
        let mut push = push_cmd(&archive, &url, Some(&s3));
        if crate::support::kill_after(push.args(["--jobs", "4"]), delay) {
            eprintln!("round {round}: finished before the kill at {delay:?}");
            break;
        }
        kills += 1;
        // Whatever the catalog holds as pushed is at the destination, whole.
        let recorded = recorded_pushed(&archive);
        for (key, sha) in &recorded {
            let bytes = s3
                .get_file("resume", key)
                .unwrap_or_else(|| panic!("round {round}: {key} recorded as pushed, absent"));
            assert_eq!(&sha256_hex(&bytes), sha, "round {round}: {key}");
        }
        eprintln!(
            "round {round}: killed after {delay:?}, {} objects recorded, {} at the store",
            recorded.len(),
            s3.object_keys("resume").len()
        );
    }
    assert!(kills >= 2, "the push finished too fast to be killed");
    s3.set_latency(Duration::ZERO);

    let doc = run(&mut push_cmd(&archive, &url, Some(&s3)))
        .expect_code(0)
        .json();
    assert_eq!(doc["failed"], 0, "{doc}");
    assert_eq!(doc["pending"], 0, "{doc}");
    assert_eq!(
        doc["done"].as_u64().unwrap_or(0) + doc["skipped"].as_u64().unwrap_or(0),
        REFS as u64,
        "{doc}"
    );
    let mut objects = bucket_objects(&s3, "resume");
    assert!(objects.remove(MANIFEST).is_some());
    assert!(objects.remove(CATALOG_COPY).is_some());
    assert_same_keys(
        &objects,
        &want,
        "the destination holds every key, and only them",
    );
    assert!(objects == want, "every key with its bytes");
    for (key, bytes) in &want {
        assert_eq!(
            s3.user_metadata("resume", key).get("sha256"),
            Some(&sha256_hex(bytes)),
            "{key}"
        );
    }
    let manifest = manifest_lines(&s3.get_file("resume", MANIFEST).expect("manifest"));
    assert_eq!(manifest.len(), REFS + 1);
    assert!(manifest[1..].iter().all(|l| l["state"] == "pushed"));
    run(&mut verify_cmd(&archive, &url, Some(&s3))).expect_code(0);
    s3.reset_counts();
    run(&mut push_cmd(&archive, &url, Some(&s3))).expect_code(0);
    assert_eq!(
        s3.requests("TOTAL"),
        s3.requests("HEAD"),
        "{:?}",
        s3.request_log()
    );
    assert_eq!(s3.requests("HEAD"), 1, "the manifest checked only");
}

#[test]
fn killed_push_to_a_directory_leaves_only_whole_files() {
    const REFS: usize = 300;
    let mut next = crate::support::seeded_rng("killed_push_to_a_directory_leaves_only_whole_files");
    let dir = temp_dir();
    let want = bucket_dataset(dir.path(), REFS, 20_000, 200_000);
    let archive = dir.path().join("archive");
    let dest = dir.path().join("dest");
    let url = dest.to_string_lossy().into_owned();
    for _ in 0..3 {
        let mut child = push_cmd(&archive, &url, None)
            .args(["--jobs", "4"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn push");
        std::thread::sleep(Duration::from_millis(5 + next() % 150));
        let _ = child.kill();
        child.wait().expect("wait");
    }
    let staging = files_under(&dest)
        .keys()
        .filter(|k| {
            k.rsplit_once('#')
                .is_some_and(|(_, n)| n.parse::<u32>().is_ok())
        })
        .count();
    eprintln!("{staging} partial files left by the kills");
    run(&mut push_cmd(&archive, &url, None)).expect_code(0);
    let mut files = files_under(&dest);
    assert!(files.remove(MANIFEST).is_some());
    assert!(files.remove(CATALOG_COPY).is_some());
    assert_same_keys(&files, &want, "no partial or temporary file left behind");
    assert!(files == want);
    run(&mut verify_cmd(&archive, &url, None)).expect_code(0);
}

#[test]
fn partial_files_of_a_killed_push_to_a_directory_are_removed() {
    // What a push killed between writing `<key>#<n>` and renaming it leaves.
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let key = "stickers/100000004/00000000-0000-4000-8000-000000000201/1741172400000_1.webp";
    let planted = [format!("{key}#1"), format!("{CATALOG_COPY}#3")];
    let foreign = "stickers/100000004/notes.txt#1";
    for name in planted.iter().map(String::as_str).chain([foreign]) {
        let path = dest.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"half a file").expect("plant");
    }
    run(&mut push_cmd(&fx.archive, &dest.to_string_lossy(), None)).expect_code(FIXTURE_PUSH_EXIT);
    for name in &planted {
        assert!(!dest.join(name).exists(), "{name} left behind");
    }
    assert!(
        dest.join(foreign).exists(),
        "a file that is no key of ours stays"
    );
    let mut files = files_under(&dest);
    files.remove(foreign);
    assert_mirror(&files);
}

#[test]
fn changed_file_at_a_known_key_is_uploaded_again() {
    // A sticker regenerated under the same key: the catalog knows the
    // destination holds the old bytes, even though the size is the same.
    let dir = temp_dir();
    let bucket = dir.path().join("bucket");
    let key = "stickers/1/s1/1.webp";
    std::fs::create_dir_all(bucket.join("stickers/1/s1")).expect("mkdir");
    let archive = dir.path().join("archive");
    let s3 = TestS3::start();
    s3.create_bucket("changed");
    let url = s3.store_url("changed", "");
    for (version, file_id) in [(1u64, "tg-v1"), (2, "tg-v2")] {
        std::fs::write(bucket.join(key), sticker_bytes(version, 400)).expect("write");
        let mut db = Db::default();
        db.session("s1", "1", "prod", None, None).sticker(
            "st-1",
            "1",
            "s1",
            Some(file_id),
            Some(key),
        );
        db.snapshot(&dir.path().join("db"), &archive);
        run(starchive(&archive)
            .args(["fetch", "--storage"])
            .arg(&bucket))
        .expect_code(0);
        let doc = run(&mut push_cmd(&archive, &url, Some(&s3)))
            .expect_code(0)
            .json();
        assert_eq!(doc["done"], 1, "version {version}: {doc}");
        assert_eq!(
            s3.get_file("changed", key),
            Some(sticker_bytes(version, 400)),
            "version {version}"
        );
    }
    run(&mut verify_cmd(&archive, &url, Some(&s3))).expect_code(0);
}

/// A push after one that left the destination whole, with nothing changed
/// in between, sends nothing but the manifest check (push's fast path);
/// whatever changed in between what a push writes is pushed: a changed ref,
/// a blob fetched again with other bytes, an object verify found gone, a new
/// snapshot (the manifest and the catalog copy), another scope (`--env`). A
/// push to another destination in between changes nothing here.
#[test]
fn a_push_after_any_change_pushes_it() {
    let dir = temp_dir();
    let bucket = dir.path().join("bucket");
    let archive = dir.path().join("archive");
    let keys = ["stickers/1/s1/1.webp", "stickers/1/s1/2.webp"];
    std::fs::create_dir_all(bucket.join("stickers/1/s1")).expect("mkdir");
    let s3 = TestS3::start();
    s3.create_bucket("dest");
    s3.create_bucket("other");
    let url = s3.store_url("dest", "");
    // The bucket's files and a snapshot of two stickers whose file ids say
    // which version of their file they are, fetched.
    let snapshot_and_fetch = |versions: [u64; 2]| {
        let mut db = Db::default();
        db.session("s1", "1", "prod", None, None);
        for (i, (key, v)) in keys.iter().zip(versions).enumerate() {
            std::fs::write(bucket.join(key), sticker_bytes(10 * i as u64 + v, 500)).expect("write");
            db.sticker(
                &format!("st-{i}"),
                "1",
                "s1",
                Some(&format!("tg-{i}-v{v}")),
                Some(key),
            );
        }
        db.snapshot(&dir.path().join("db"), &archive);
        run(starchive(&archive)
            .args(["fetch", "--storage"])
            .arg(&bucket))
        .expect_code(0);
    };
    let push = |args: &[&str]| {
        s3.reset_counts();
        run(push_cmd(&archive, &url, Some(&s3)).args(args))
            .expect_code(0)
            .json()
    };
    let at_dest = |i: usize| s3.get_file("dest", keys[i]);
    let header = || manifest_lines(&s3.get_file("dest", MANIFEST).expect("manifest"))[0].clone();
    let nothing_to_do = |step: &str| {
        let doc = push(&[]);
        assert_eq!(
            s3.requests("TOTAL"),
            1,
            "{step}: the manifest check only: {:?}",
            s3.request_log()
        );
        assert_eq!(
            (&doc["done"], &doc["skipped"]),
            (&0.into(), &2.into()),
            "{step}: {doc}"
        );
    };

    snapshot_and_fetch([1, 1]);
    assert_eq!(push(&[])["done"], 2);
    nothing_to_do("pushed");

    // A changed ref.
    snapshot_and_fetch([2, 1]);
    assert_eq!(push(&[])["done"], 1);
    assert_eq!(at_dest(0), Some(sticker_bytes(2, 500)));
    nothing_to_do("a changed ref pushed");

    // A local blob verify finds bad is fetched again, as other bytes.
    let blob = sha256_hex(sticker_bytes(11, 500));
    std::fs::write(archive.join("blobs").join(&blob[..2]).join(&blob), b"rot").expect("rot");
    run(starchive(&archive).args(["verify"])).expect_code(3);
    std::fs::write(bucket.join(keys[1]), sticker_bytes(12, 500)).expect("write");
    run(starchive(&archive)
        .args(["fetch", "--storage"])
        .arg(&bucket))
    .expect_code(0);
    assert_eq!(push(&[])["done"], 1);
    assert_eq!(at_dest(1), Some(sticker_bytes(12, 500)));
    nothing_to_do("a blob fetched again pushed");

    // An object verify finds gone at the destination.
    std::fs::remove_file(s3.bucket_dir("dest").join(keys[0])).expect("remove");
    run(&mut verify_cmd(&archive, &url, Some(&s3))).expect_code(3);
    assert_eq!(push(&[])["done"], 1);
    assert_eq!(at_dest(0), Some(sticker_bytes(2, 500)));
    nothing_to_do("an object verify found gone pushed");

    // A new snapshot of the same rows: a new manifest and catalog copy.
    let before = header();
    let copy_before = s3.get_file("dest", CATALOG_COPY).expect("catalog copy");
    run(starchive(&archive)
        .args(["snapshot", "--db"])
        .arg(dir.path().join("db")))
    .expect_code(0);
    let doc = push(&[]);
    assert_eq!(doc["done"], 0, "{doc}");
    assert_eq!(
        s3.requests("PUT"),
        2,
        "manifest and copy: {:?}",
        s3.request_log()
    );
    assert_eq!(
        header()["snapshot_id"],
        before["snapshot_id"].as_u64().expect("snapshot id") + 1
    );
    assert_ne!(s3.get_file("dest", CATALOG_COPY), Some(copy_before));
    nothing_to_do("a new snapshot pushed");

    // A push scoped to one env leaves a destination that holds every env
    // as it was: its manifest still describes every env.
    push(&["--env", "prod"]);
    assert_eq!(header()["envs"], serde_json::json!([]));
    push(&[]);
    assert_eq!(header()["envs"], serde_json::json!([]));
    nothing_to_do("back to every env");

    // A push to another destination.
    let doc = run(&mut push_cmd(
        &archive,
        &s3.store_url("other", ""),
        Some(&s3),
    ))
    .expect_code(0)
    .json();
    assert_eq!(doc["done"], 2, "{doc}");
    nothing_to_do("after a push elsewhere");
    run(&mut verify_cmd(&archive, &url, Some(&s3))).expect_code(0);
}

/// The catalog's write generation: push's fast path holds while it stays.
fn write_generation(archive: &Path) -> String {
    catalog(archive)
        .query_row(
            "SELECT value FROM settings WHERE key = 'write_generation'",
            [],
            |r| r.get(0),
        )
        .expect("write generation")
}

/// What push logs (at debug) when it takes its fast path.
const FAST_PATH: &str = "nothing changed since the push that left";

/// A push that exits 0, logging at debug: its report, whether it took the
/// fast path, and the requests it sent (counted from zero).
fn logged_push(archive: &Path, url: &str, s3: &TestS3) -> (Value, bool, u64) {
    s3.reset_counts();
    let out = run(push_cmd(archive, url, Some(s3)).env("STARCHIVE_LOG", "starchive=debug"));
    out.expect_code(0);
    (
        out.json(),
        out.stderr.contains(FAST_PATH),
        s3.requests("TOTAL"),
    )
}

/// A `fetch`, `verify` or `pull` that changed nothing in the catalog puts
/// the write generation it bumped back: the push after it takes the fast
/// path (the manifest check, nothing else). One that changed something
/// leaves it moved on, and the push after it pushes the change: a ref
/// fetched for another env, an object `verify` found with other bytes.
#[test]
fn a_command_that_changed_nothing_leaves_the_fast_path_open() {
    let dir = temp_dir();
    let bucket = dir.path().join("bucket");
    let keys = ["stickers/1/s1/1.webp", "stickers/2/s2/1.webp"];
    let mut db = Db::default();
    db.session("s1", "1", "prod", None, None)
        .session("s2", "2", "test", None, None);
    for (i, key) in keys.iter().enumerate() {
        let path = bucket.join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, sticker_bytes(70 + i as u64, 600)).expect("write");
        db.sticker(
            &format!("st-{i}"),
            &format!("{}", i + 1),
            &format!("s{}", i + 1),
            None,
            Some(key),
        );
    }
    let archive = dir.path().join("archive");
    db.snapshot(&dir.path().join("db"), &archive);
    let s3 = TestS3::start();
    s3.create_bucket("dest");
    let url = s3.store_url("dest", "");
    let fetch = |env: Option<&str>| {
        let mut cmd = starchive(&archive);
        cmd.args(["--json", "fetch", "--storage"]).arg(&bucket);
        if let Some(env) = env {
            cmd.args(["--env", env]);
        }
        run(&mut cmd).expect_code(0).json()
    };

    // prod fetched and pushed; test's ref pending.
    assert_eq!(fetch(Some("prod"))["done"], 1);
    let (doc, fast, _) = logged_push(&archive, &url, &s3);
    assert_eq!(
        (&doc["done"], &doc["pending"], fast),
        (&1.into(), &1.into(), false),
        "{doc}"
    );
    let generation = write_generation(&archive);

    let json = |args: &[&str]| {
        let mut cmd = starchive(&archive);
        cmd.arg("--json").args(args);
        cmd
    };
    let mut fetch_prod = json(&["fetch", "--env", "prod", "--storage"]);
    fetch_prod.arg(&bucket);
    let mut pull = json(&["pull", "--from", &url]);
    pull.envs(s3.env("STORAGE"));
    let no_ops = [
        ("fetch --env prod", fetch_prod),
        ("fetch without a bucket", json(&["fetch", "--env", "prod"])),
        ("verify", json(&["verify"])),
        ("verify --deep --to", verify_cmd(&archive, &url, Some(&s3))),
        ("pull from the destination", pull),
    ];
    for (what, mut cmd) in no_ops {
        let out = run(&mut cmd);
        out.expect_code(0);
        if let Ok(doc) = serde_json::from_str::<Value>(&out.stdout)
            && let Some(done) = doc.get("done")
        {
            assert_eq!(done, 0, "{what}: {doc}");
        }
        assert_eq!(write_generation(&archive), generation, "after {what}");
        let (doc, fast, requests) = logged_push(&archive, &url, &s3);
        assert!(fast, "after {what}: {doc}");
        assert_eq!(
            requests,
            1,
            "after {what}: the manifest check only: {:?}",
            s3.request_log()
        );
        assert_eq!(
            (&doc["done"], &doc["skipped"], &doc["pending"]),
            (&0.into(), &1.into(), &1.into()),
            "after {what}: {doc}"
        );
    }

    // A fetch that fetched test's ref: the push after it uploads it.
    assert_eq!(fetch(None)["done"], 1);
    assert_ne!(write_generation(&archive), generation);
    let (doc, fast, _) = logged_push(&archive, &url, &s3);
    assert!(!fast, "{doc}");
    assert_eq!(
        (&doc["done"], &doc["skipped"], &doc["pending"]),
        (&1.into(), &1.into(), &0.into()),
        "{doc}"
    );
    assert_eq!(s3.get_file("dest", keys[1]), Some(sticker_bytes(71, 600)));
    let (_, fast, requests) = logged_push(&archive, &url, &s3);
    assert!(fast && requests == 1, "pushed: nothing left to do");

    // An object verify finds with other bytes (of its size) is pushed again.
    let generation = write_generation(&archive);
    std::fs::write(s3.bucket_dir("dest").join(keys[0]), sticker_bytes(99, 600)).expect("spoil");
    run(&mut verify_cmd(&archive, &url, Some(&s3))).expect_code(3);
    assert_ne!(write_generation(&archive), generation);
    let (doc, fast, _) = logged_push(&archive, &url, &s3);
    assert!(!fast, "{doc}");
    assert_eq!(doc["done"], 1, "{doc}");
    assert_eq!(s3.get_file("dest", keys[0]), Some(sticker_bytes(70, 600)));
    run(&mut verify_cmd(&archive, &url, Some(&s3))).expect_code(0);
}

/// A `fetch` killed after it committed fetched refs leaves the write
/// generation moved on: the next push uploads them, not the fast path.
#[test]
fn a_fetch_killed_after_a_change_leaves_the_fast_path_closed() {
    const FILES: usize = 200;
    let dir = temp_dir();
    let tg = FakeTelegram::new();
    tg.latency(Duration::from_millis(40));
    let mut db = Db::per_env();
    for i in 0..FILES {
        let id = format!("killed-{i:04}");
        tg.add_file(
            &id,
            &format!("stickers/k{i}.webp"),
            sticker_bytes(500 + i as u64, 700),
        );
        db.in_env("prod", Some(id.as_str()), None);
    }
    let archive = db.snapshotted(dir.path());
    let s3 = TestS3::start();
    s3.create_bucket("dest");
    let url = s3.store_url("dest", "");
    // Nothing fetched yet: a push that leaves the destination whole, all
    // of its refs pending.
    let (doc, _, _) = logged_push(&archive, &url, &s3);
    assert_eq!(
        (&doc["done"], &doc["pending"]),
        (&0.into(), &(FILES as u64).into()),
        "{doc}"
    );
    let (_, fast, _) = logged_push(&archive, &url, &s3);
    assert!(fast, "a push right after a whole one takes the fast path");

    let fetched = || -> u64 {
        catalog(&archive)
            .query_row(
                "SELECT count(*) FROM refs WHERE state = 'fetched'",
                [],
                |r| r.get(0),
            )
            .expect("count")
    };
    let mut child = starchive(&archive)
        .args(["fetch", "--jobs", "2", "--telegram-rate", "1000"])
        .envs(tg.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fetch");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fetched() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing fetched in 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let finished = child.try_wait().expect("try_wait").is_some();
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(!finished, "the fetch finished before the kill");
    let at_kill = fetched();
    assert!(at_kill < FILES as u64, "{at_kill} fetched: killed midway");

    let (doc, fast, _) = logged_push(&archive, &url, &s3);
    assert!(!fast, "{doc}");
    assert_eq!(
        doc["done"], at_kill,
        "every ref fetched before the kill pushed: {doc}"
    );
    assert_eq!(doc["pending"], FILES as u64 - at_kill, "{doc}");
}

// ---- bad input -----------------------------------------------------------------

#[test]
fn hostile_key_writes_nothing_outside_the_root() {
    let root = temp_dir();
    let root = root.path();
    let bucket = root.join("bucket");
    let good = "stickers/1/s1/good.webp";
    std::fs::create_dir_all(bucket.join("stickers/1/s1")).expect("mkdir");
    std::fs::write(bucket.join(good), sticker_bytes(1, 300)).expect("write");
    let tg = FakeTelegram::new();
    for (i, id) in [
        "tg-good",
        "tg-evil-1",
        "tg-evil-2",
        "tg-evil-3",
        "tg-evil-4",
        "tg-evil-5",
        "tg-evil-6",
        "tg-evil-7",
        "tg-evil-8",
        "tg-sheet",
    ]
    .iter()
    .enumerate()
    {
        tg.add_file(
            id,
            &format!("stickers/{id}.webp"),
            sticker_bytes(100 + i as u64, 200),
        );
    }
    let literal = "stickers/%2e%2e/%2e%2e/%2e%2e/outside-7.webp";
    let mut db = Db::default();
    // The session sticker shares evil-1's file_id: its key would be evil-1's.
    db.session("s1", "1", "prod", Some("tg-evil-1"), Some("tg-sheet"))
        // The sheet's key would be pack_sheets/{batch id}.webp.
        .batch("../../../../../sheet-outside", "s1", "1")
        .sticker("good-1", "1", "s1", Some("tg-good"), Some(good))
        .sticker(
            "evil-1",
            "1",
            "s1",
            Some("tg-evil-1"),
            Some("../../../outside-1.webp"),
        )
        .sticker(
            "evil-2",
            "1",
            "s1",
            Some("tg-evil-2"),
            Some("/tmp/outside-2.webp"),
        )
        .sticker(
            "evil-3",
            "1",
            "s1",
            Some("tg-evil-3"),
            Some("stickers/../../../../outside-3.webp"),
        )
        // No key: the backfill key is built from hostile ids.
        .sticker("evil-4", "..", "../../../../..", Some("tg-evil-4"), None)
        .sticker(
            "../../../../../outside-5",
            "1",
            "s1",
            Some("tg-evil-5"),
            None,
        )
        .sticker(
            "evil-6",
            "1",
            "s1",
            Some("tg-evil-6"),
            Some("stickers\\..\\..\\outside-6.webp"),
        )
        // Percent signs are plain characters in a key: it stays inside.
        .sticker("evil-7", "1", "s1", Some("tg-evil-7"), Some(literal))
        // starchive's own files are not the bot's to overwrite.
        .sticker(
            "evil-8",
            "1",
            "s1",
            Some("tg-evil-8"),
            Some("_starchive/manifest.jsonl.zst"),
        );
    db.write(&root.join("db"));
    let archive = root.join("archive");
    run(starchive(&archive)
        .args(["--json", "snapshot", "--db"])
        .arg(root.join("db")))
    .expect_code(0);
    let fetched = run(starchive(&archive)
        .args(["--json", "fetch", "--telegram-rate", "1000", "--storage"])
        .arg(&bucket)
        .envs(tg.env()));
    assert!(
        fetched.code == Some(0) || fetched.code == Some(3),
        "{}",
        fetched.stderr
    );

    let before = files_under(root);
    let dest = root.join("a/b/c/d/e/dest");
    let url = format!("file://{}", dest.display());
    let out = run(&mut push_cmd(&archive, &url, None));
    out.expect_code(3);
    let doc = out.json();
    assert!(doc["failed"].as_u64().unwrap_or(0) >= 4, "{doc}");
    let mut cas = push_cmd(&archive, &root.join("cas").to_string_lossy(), None);
    run(cas.args(["--layout", "cas"])).expect_code(3);

    // Nothing changed outside the archive and the two destinations.
    let after = files_under(root);
    let outside: Vec<&String> = after
        .keys()
        .filter(|k| {
            !k.starts_with("archive/")
                && !k.starts_with("a/b/c/d/e/dest/")
                && !k.starts_with("cas/")
                && !before.contains_key(*k)
        })
        .collect();
    assert!(outside.is_empty(), "written outside the roots: {outside:?}");
    for name in [
        "outside-1.webp",
        "outside-2.webp",
        "outside-3.webp",
        "outside-6.webp",
    ] {
        assert!(!Path::new("/tmp").join(name).exists(), "/tmp/{name}");
    }
    let written: BTreeSet<String> = files_under(&dest)
        .into_keys()
        .filter(|k| !k.starts_with("_starchive/"))
        .collect();
    let want: BTreeSet<String> = [good.to_string(), literal.to_string()].into();
    assert_eq!(written, want);
    let manifest = manifest_lines(&std::fs::read(dest.join(MANIFEST)).expect("manifest"));
    assert_eq!(manifest[0]["format"], 2, "the manifest is starchive's");
    // Each refused ref is a push failure with its reason.
    let (status, push_failures) = push_failures(&archive);
    assert!(push_failures.len() >= 5, "{status}");
    assert!(
        push_failures.iter().all(|f| {
            let reason = f["reason"].as_str().unwrap_or("");
            reason.contains("unsafe key") || reason.contains("_starchive/")
        }),
        "{status}"
    );
}

/// An id that is not one path segment (`7/8`, `..`) from the database never
/// gives a mirror key of another shape: that ref fails as an unsafe key.
#[test]
fn an_id_with_a_slash_fails_the_ref_instead_of_adding_folders() {
    let dir = temp_dir();
    let tg = FakeTelegram::new();
    let mut db = Db::default();
    db.session("s1", "7/8", "prod", None, None)
        .session("s2", "9", "prod", None, None)
        .session("..", "9", "prod", None, None);
    for (i, (id, user, session)) in [
        ("a", "7/8", "s1"),
        ("c/d", "9", "s2"),
        ("e", "9", ".."),
        ("ok", "9", "s2"),
    ]
    .into_iter()
    .enumerate()
    {
        let file_id = format!("tg-{i}");
        tg.add_file(
            &file_id,
            &format!("stickers/{i}.webp"),
            sticker_bytes(i as u64 + 1, 300),
        );
        db.sticker(id, user, session, Some(&file_id), None);
    }
    let archive = dir.path().join("archive");
    db.snapshot(&dir.path().join("db"), &archive);
    run(starchive(&archive)
        .args(["fetch", "--telegram-rate", "1000"])
        .envs(tg.env()))
    .expect_code(0);
    let dest = dir.path().join("dest");
    let doc = run(&mut push_cmd(&archive, &dest.to_string_lossy(), None))
        .expect_code(3)
        .json();
    assert_eq!(doc["done"], 1, "{doc}");
    assert_eq!(doc["failed"], 3, "{doc}");
    let written: BTreeSet<String> = files_under(&dest)
        .into_keys()
        .filter(|k| !k.starts_with("_starchive/"))
        .collect();
    assert_eq!(
        written,
        BTreeSet::from(["stickers/9/s2/backfill_ok.webp".to_string()])
    );
    let (status, failures) = push_failures(&archive);
    assert_eq!(failures.len(), 3, "{status}");
    assert!(
        failures.iter().all(|f| f["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unsafe key"))),
        "{status}"
    );
}

#[test]
fn key_holding_other_bytes_fails_the_ref_and_exits_3() {
    // Three refs name the same key; the bucket lacks it, so each is fetched
    // from Telegram: the first's bytes own the key, the second's other bytes
    // cannot be placed there, the third's (the first's again) are.
    let dir = temp_dir();
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket).expect("mkdir");
    let tg = FakeTelegram::new();
    tg.add_file("tg-a", "stickers/a.webp", sticker_bytes(1, 300));
    tg.add_file("tg-b", "stickers/b.webp", sticker_bytes(2, 300));
    tg.add_file("tg-c", "stickers/c.webp", sticker_bytes(1, 300));
    let mut db = Db::default();
    db.session("s1", "1", "prod", None, None)
        .sticker("a", "1", "s1", Some("tg-a"), Some("stickers/1/same.webp"))
        .sticker("b", "1", "s1", Some("tg-b"), Some("stickers/1/same.webp"))
        .sticker("c", "1", "s1", Some("tg-c"), Some("stickers/1/same.webp"));
    let archive = dir.path().join("archive");
    db.snapshot(&dir.path().join("db"), &archive);
    run(starchive(&archive)
        .args(["fetch", "--telegram-rate", "1000", "--storage"])
        .arg(&bucket)
        .envs(tg.env()))
    .expect_code(0);
    let dest = dir.path().join("dest");
    let doc = run(&mut push_cmd(&archive, &dest.to_string_lossy(), None))
        .expect_code(3)
        .json();
    assert_eq!(doc["done"], 2, "{doc}");
    assert_eq!(doc["failed"], 1, "{doc}");
    assert_eq!(
        std::fs::read(dest.join("stickers/1/same.webp")).expect("the first ref's bytes"),
        sticker_bytes(1, 300)
    );
    // The refused ref stays failed once the key's object is pushed: status
    // lists it, with why (the bytes the key holds).
    let (status, push_failures) = push_failures(&archive);
    assert_eq!(push_failures.len(), 1, "{status}");
    let reason = push_failures[0]["reason"].as_str().unwrap_or_default();
    let held = sha256_hex(sticker_bytes(1, 300));
    assert_eq!(
        reason,
        format!(
            "key stickers/1/same.webp already holds other bytes ({}) from another ref",
            &held[..12]
        ),
        "{status}"
    );
}

#[test]
fn failed_upload_exits_3_and_the_next_push_completes() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("flaky");
    let url = s3.store_url("flaky", "");
    // The first upload is refused (403: not retried).
    s3.fail_next("PUT", 1, 403);
    let mut cmd = push_cmd(&fx.archive, &url, Some(&s3));
    let out = run(cmd.args(["--jobs", "1"]));
    out.expect_code(3);
    let doc = out.json();
    assert!(doc["failed"].as_u64().unwrap_or(0) >= 1, "{doc}");
    assert_eq!(
        doc["done"].as_u64().unwrap_or(0) + doc["failed"].as_u64().unwrap_or(0),
        FIXTURE_PUSHED_REFS + 1,
        "{doc}"
    );
    let status = run(starchive(&fx.archive).args(["--json", "status"]))
        .expect_code(0)
        .json();
    assert!(
        status["failures"]
            .as_array()
            .expect("failures")
            .iter()
            .any(|f| f["stage"] == "push"),
        "status lists the push failure: {status}"
    );
    let doc = run(&mut push_cmd(&fx.archive, &url, Some(&s3)))
        .expect_code(FIXTURE_PUSH_EXIT)
        .json();
    assert_eq!(doc["failed"], 1, "sticker 315 failed at fetch: {doc}");
    assert_mirror(&bucket_objects(&s3, "flaky"));
}

// ---- reports -------------------------------------------------------------------

#[test]
fn push_json_has_the_documented_keys() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let doc = run(&mut push_cmd(&fx.archive, &dest.to_string_lossy(), None))
        .expect_code(FIXTURE_PUSH_EXIT)
        .json();
    let keys: BTreeSet<&str> = doc
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    for key in ["done", "skipped", "failed", "pending", "bytes", "seconds"] {
        assert!(keys.contains(key), "{key} in {doc}");
    }
    for key in ["done", "skipped", "failed", "pending", "bytes"] {
        assert!(doc[key].is_u64(), "{key} is a count: {doc}");
    }
    assert!(doc["seconds"].is_number(), "{doc}");
}

#[test]
fn unfetched_refs_are_counted_as_pending() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    let dest = dir.path().join("dest");
    let url = dest.to_string_lossy().into_owned();
    // Nothing fetched yet: everything is pending, nothing is written but _starchive/.
    let doc = run(&mut push_cmd(&archive, &url, None))
        .expect_code(0)
        .json();
    assert_eq!(doc["pending"], FIXTURE_REFS as u64, "{doc}");
    assert_eq!(doc["done"], 0, "{doc}");
    // The bucket only (no Telegram token): the Telegram-only refs stay pending.
    run(starchive(&archive).args(["fetch", "--storage", FIXTURE_BUCKET]));
    let fetched: u64 = catalog(&archive)
        .query_row(
            "SELECT count(*) FROM refs WHERE state = 'fetched'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert!(fetched > 0 && fetched < FIXTURE_PUSHED_REFS, "{fetched}");
    let doc = run(&mut push_cmd(&archive, &url, None))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], fetched, "{doc}");
    assert_eq!(doc["pending"], FIXTURE_REFS as u64 - fetched, "{doc}");
    let manifest = manifest_lines(&std::fs::read(dest.join(MANIFEST)).expect("manifest"));
    assert_eq!(
        manifest.len(),
        FIXTURE_REFS + 1,
        "every ref, pending ones too"
    );
}

#[test]
fn manifest_lists_every_ref() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    run(&mut push_cmd(&fx.archive, &dest.to_string_lossy(), None)).expect_code(FIXTURE_PUSH_EXIT);
    let lines = manifest_lines(&std::fs::read(dest.join(MANIFEST)).expect("manifest"));
    let header = &lines[0];
    assert!(header["format"].is_u64(), "format version: {header}");
    assert!(
        header["snapshot_taken_at"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "snapshot time: {header}"
    );
    assert_eq!(header["counts"]["refs"], FIXTURE_REFS as u64, "{header}");
    let refs = &lines[1..];
    assert_eq!(refs.len(), FIXTURE_REFS);
    let by_ref: BTreeMap<(String, String), &Value> = refs
        .iter()
        .map(|l| {
            let class = l["class"].as_str().expect("class").to_string();
            let row = l["row_id"].as_str().expect("row_id").to_string();
            ((class, row), l)
        })
        .collect();
    assert_eq!(by_ref.len(), FIXTURE_REFS, "one line per ref");
    for (class, row, key, _) in MIRROR {
        let line = by_ref[&(class.to_string(), row.to_string())];
        assert_eq!(line["key"], *key, "{line}");
        assert_eq!(line["state"], "pushed", "{line}");
        let bytes = std::fs::read(dest.join(key)).expect("object");
        assert_eq!(line["sha256"], sha256_hex(&bytes), "{line}");
        assert_eq!(line["size"], bytes.len() as u64, "{line}");
        let ext = key.rsplit('.').next().expect("ext");
        assert_eq!(line["type"], ext, "{line}");
        for field in [
            "env",
            "telegram_file_id",
            "storage_key",
            "table",
            "session_id",
        ] {
            assert!(line.get(field).is_some(), "{field} in {line}");
        }
    }
    let failed = by_ref[&("sticker".to_string(), INVALID_STICKER.to_string())];
    assert_eq!(failed["key"], Value::Null, "{failed}");
    assert_ne!(failed["state"], "pushed", "{failed}");
    assert_eq!(
        failed["telegram_file_id"],
        "CAACAgIAAxkBAAI-invalid-file-id-0000000000000000000000000000"
    );
    // The catalog copy is a catalog: its refs table has every ref.
    let copy_file = fx.dir.path().join("copy.sqlite");
    let compressed = std::fs::read(dest.join(CATALOG_COPY)).expect("catalog copy");
    std::fs::write(
        &copy_file,
        zstd::decode_all(&compressed[..]).expect("zstd stream"),
    )
    .expect("write the copy");
    let copy = rusqlite::Connection::open_with_flags(
        &copy_file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the catalog copy");
    let n: i64 = copy
        .query_row("SELECT count(*) FROM v_refs", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, FIXTURE_REFS as i64);
}

// ---- options ---------------------------------------------------------------------

#[test]
fn env_limits_push_to_its_refs() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let mut cmd = push_cmd(&fx.archive, &dest.to_string_lossy(), None);
    let doc = run(cmd.args(["--env", "test"]))
        .expect_code(FIXTURE_PUSH_EXIT)
        .json();
    assert_eq!(doc["done"], TEST_ENV_KEYS.len() as u64, "{doc}");
    assert_eq!(doc["failed"], 1, "sticker 315 failed at fetch: {doc}");
    let files: BTreeSet<String> = files_under(&dest)
        .into_keys()
        .filter(|k| !k.starts_with("_starchive/"))
        .collect();
    let want: BTreeSet<String> = TEST_ENV_KEYS.iter().map(|k| k.to_string()).collect();
    assert_eq!(files, want);
    let lines = manifest_lines(&std::fs::read(dest.join(MANIFEST)).expect("manifest"));
    assert_eq!(lines.len(), 8 + 1, "the 8 refs of env test");
    assert!(lines[1..].iter().all(|l| l["env"] == "test"));
}

#[test]
fn s3_prefix_puts_every_key_under_it() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("prefixed");
    let url = s3.store_url("prefixed", "backups/2025");
    run(&mut push_cmd(&fx.archive, &url, Some(&s3))).expect_code(FIXTURE_PUSH_EXIT);
    let objects = bucket_objects(&s3, "prefixed");
    assert!(
        objects.keys().all(|k| k.starts_with("backups/2025/")),
        "{objects:?}"
    );
    let stripped: BTreeMap<String, Vec<u8>> = objects
        .into_iter()
        .map(|(k, v)| (k["backups/2025/".len()..].to_string(), v))
        .collect();
    assert_mirror(&stripped);
    run(&mut verify_cmd(&fx.archive, &url, Some(&s3))).expect_code(0);
    // A fresh catalog (another archive) pushing to the same prefix once its
    // manifest is gone finds everything there.
    std::fs::remove_file(
        s3.bucket_dir("prefixed")
            .join("backups/2025")
            .join(MANIFEST),
    )
    .expect("remove the manifest");
    let again = fetched_fixture();
    s3.reset_counts();
    let doc = run(&mut push_cmd(&again.archive, &url, Some(&s3)))
        .expect_code(FIXTURE_PUSH_EXIT)
        .json();
    assert_eq!(doc["skipped"], FIXTURE_PUSHED_REFS, "{doc}");
    assert_eq!(
        s3.requests("PUT") - s3.requests("COPY"),
        2,
        "only the manifest and the catalog copy: {:?}",
        s3.request_log()
    );
}

#[test]
fn relative_path_and_file_url_are_directories() {
    let fx = fetched_fixture();
    let work = fx.dir.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let mut cmd = push_cmd(&fx.archive, "./backup", None);
    run(cmd.current_dir(&work)).expect_code(FIXTURE_PUSH_EXIT);
    assert_mirror(&files_under(&work.join("backup")));
    let mut verify = verify_cmd(&fx.archive, "./backup", None);
    run(verify.current_dir(&work)).expect_code(0);

    let abs = fx.dir.path().join("abs dest");
    let url = format!("file://{}", abs.display());
    run(&mut push_cmd(&fx.archive, &url, None)).expect_code(FIXTURE_PUSH_EXIT);
    assert_mirror(&files_under(&abs));
}

#[test]
fn run_snapshots_fetches_and_pushes_in_one_go() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    let s3 = TestS3::start();
    s3.create_bucket("run");
    let url = s3.store_url("run", "");
    let out = run(starchive(&archive)
        .args([
            "--json",
            "run",
            "--db",
            FIXTURE_DB,
            "--storage",
            FIXTURE_BUCKET,
        ])
        .args(["--telegram-rate", "1000", "--to", &url])
        .envs(tg.env())
        .envs(s3.env("TO")));
    out.expect_code(3);
    let doc = out.json();
    assert_eq!(doc["snapshot"]["tables"]["stickers"]["rows"], 16, "{doc}");
    assert_eq!(doc["fetch"]["failed"], 1, "{doc}");
    assert_eq!(doc["push"]["done"], FIXTURE_PUSHED_REFS, "{doc}");
    assert_eq!(doc["push"]["failed"], 1, "{doc}");
    assert_mirror(&bucket_objects(&s3, "run"));
    run(&mut verify_cmd(&archive, &url, Some(&s3))).expect_code(0);
}

#[test]
fn run_pushes_what_the_bucket_gave_when_telegram_cannot_be_reached() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    let dest = dir.path().join("dest");
    let dead = closed_port_url();
    let out = run(starchive(&archive)
        .args([
            "--json",
            "run",
            "--db",
            FIXTURE_DB,
            "--storage",
            FIXTURE_BUCKET,
        ])
        .args(["--telegram-api", &dead, "--to"])
        .arg(&dest)
        .env("TELEGRAM_BOT_TOKEN", TOKEN));
    // Not a configuration error: the refs Telegram was to serve are
    // pending, what the bucket gave is pushed, and the run says why (exit 3).
    out.expect_code(3);
    let doc = out.json();
    let stopped = doc["fetch"]["stopped"].as_str().unwrap_or_default();
    assert!(
        stopped.contains("cannot reach the Telegram Bot API")
            && stopped.contains(&dead)
            && stopped.contains("getFile"),
        "{doc}"
    );
    let secret = TOKEN.split_once(':').expect("token").1;
    assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
    assert!(
        out.stderr.contains("cannot reach the Telegram Bot API"),
        "{}",
        out.stderr
    );
    let pending = doc["fetch"]["pending"].as_u64().unwrap_or_default();
    assert!(pending > 0, "{doc}");
    assert_eq!(doc["fetch"]["failed"], 0, "pending, not failed: {doc}");
    assert!(doc["fetch"]["done"].as_u64() > Some(0), "{doc}");
    assert_eq!(doc["push"]["done"], doc["fetch"]["done"], "{doc}");
    assert_eq!(doc["push"]["pending"], pending, "{doc}");
    let keys = files_under(&dest)
        .into_keys()
        .filter(|k| !k.starts_with("_starchive/"));
    let want = mirror_objects();
    for key in keys {
        assert!(
            matches!(want.get(&key), Some(bytes) if Some(bytes) == files_under(&dest).get(&key)),
            "{key}"
        );
    }

    // Once Telegram answers, a plain fetch takes the refs left pending.
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    let doc = run(starchive(&archive)
        .args(["--json", "fetch", "--telegram-rate", "1000"])
        .envs(tg.env()))
    .expect_code(3)
    .json();
    assert_eq!(
        (&doc["pending"], &doc["failed"]),
        (&0.into(), &1.into()),
        "{doc}"
    );
}

#[test]
fn run_reports_the_stages_that_ran_when_one_fails() {
    let dir = temp_dir();
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    let run_cmd = |name: &str, json: bool, to: &str, token: &str| {
        let mut cmd = starchive(&dir.path().join(name));
        if json {
            cmd.arg("--json");
        }
        cmd.args(["run", "--db", FIXTURE_DB, "--storage", FIXTURE_BUCKET])
            .args([
                "--telegram-rate",
                "1000",
                "--telegram-api",
                &tg.url(),
                "--to",
                to,
            ])
            .env("TELEGRAM_BOT_TOKEN", token);
        run(&mut cmd)
    };
    let dest = dir.path().join("dest").to_string_lossy().into_owned();
    // A token the Bot API refuses stops the run at fetch (exit 1): the
    // snapshot's report is still there.
    let bad_token = "123456:wrong-SECRET-token";
    let out = run_cmd("bad-token", true, &dest, bad_token);
    out.expect_code(1);
    let doc = out.json();
    assert_eq!(doc["snapshot"]["tables"]["stickers"]["rows"], 16, "{doc}");
    assert_eq!(doc["failed_stage"], "fetch", "{doc}");
    assert_eq!(doc["exit_code"], 1, "{doc}");
    assert!(
        doc["error"]
            .as_str()
            .is_some_and(|e| e.contains("refused the token")),
        "{doc}"
    );
    assert!(
        doc.get("fetch").is_none() && doc.get("push").is_none(),
        "{doc}"
    );
    assert!(!out.stdout.contains("wrong-SECRET") && !out.stderr.contains("wrong-SECRET"));
    let out = run_cmd("bad-token-text", false, &dest, bad_token);
    out.expect_code(1);
    assert!(
        out.stdout.contains("stickers") && out.stdout.contains("fetch: stopped the run"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("error: fetch: ") && out.stderr.contains("refused the token"),
        "{}",
        out.stderr
    );

    // A destination that cannot serve stops it at push: snapshot and fetch
    // are reported.
    let no_keys = "s3://nowhere?endpoint=http://127.0.0.1:9&allow_http=true&region=us-east-1";
    let out = run_cmd("bad-dest", true, no_keys, &tg.token());
    out.expect_code(1);
    let doc = out.json();
    assert_eq!(doc["failed_stage"], "push", "{doc}");
    assert_eq!(doc["fetch"]["failed"], 1, "{doc}");
    assert!(
        doc["snapshot"].is_object() && doc.get("push").is_none(),
        "{doc}"
    );
}

#[test]
fn big_object_goes_multipart() {
    const BIG: usize = 9 * 1024 * 1024 + 12_345;
    let dir = temp_dir();
    let tg = FakeTelegram::new();
    let big = sticker_bytes(42, BIG);
    tg.add_file("tg-big", "stickers/big.webp", big.clone());
    tg.add_file("tg-small", "stickers/small.webp", sticker_bytes(43, 500));
    let mut db = Db::default();
    db.session("s1", "7", "prod", None, None)
        .sticker("big", "7", "s1", Some("tg-big"), None)
        .sticker("small", "7", "s1", Some("tg-small"), None);
    db.write(&dir.path().join("db"));
    let s3 = TestS3::start();
    s3.create_bucket("big");
    let url = s3.store_url("big", "");
    let archive = dir.path().join("archive");
    let doc = run(starchive(&archive)
        .args(["--json", "run", "--db"])
        .arg(dir.path().join("db"))
        .args([
            "--max-file-size",
            "20MiB",
            "--telegram-rate",
            "1000",
            "--to",
            &url,
        ])
        .envs(tg.env())
        .envs(s3.env("TO")))
    .expect_code(0)
    .json();
    assert_eq!(doc["push"]["done"], 2, "{doc}");
    let key = "stickers/7/s1/backfill_big.webp";
    assert!(s3.get_file("big", key) == Some(big.clone()), "{key}: whole");
    // CreateMultipartUpload + CompleteMultipartUpload, and two parts.
    assert!(s3.requests("POST") >= 2, "{:?}", s3.request_log());
    let parts = s3
        .request_log()
        .iter()
        .filter(|(c, p)| c == "PUT" && p.contains("partNumber="))
        .count();
    assert_eq!(parts, 2, "{:?}", s3.request_log());
    assert_eq!(
        s3.user_metadata("big", key).get("sha256"),
        Some(&sha256_hex(&big))
    );
    run(&mut verify_cmd(&archive, &url, Some(&s3))).expect_code(0);
}

// ---- secrets -----------------------------------------------------------------------

#[test]
fn no_secret_in_output_or_destination() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    let s3 = TestS3::start();
    assert_eq!(s3.put_dir("source", FIXTURE_BUCKET), 13);
    s3.create_bucket("dest");
    let url = s3.store_url("dest", "copy");
    let storage = s3.store_url("source", "");
    let secrets = [
        TOKEN,
        TOKEN.split_once(':').expect("token").1,
        SECRET_KEY,
        ACCESS_KEY,
    ];
    let mut outputs = Vec::new();
    let mut all = |cmd: &mut Command| {
        let out = run(cmd
            .envs(tg.env())
            .envs(s3.env("TO"))
            .envs(s3.env("STORAGE")));
        outputs.push(format!("{}\n{}", out.stdout, out.stderr));
        out
    };
    for json in [true, false] {
        let name = if json { "run-json" } else { "run-text" };
        let fresh = dir.path().join(name);
        let mut cmd = starchive(&fresh);
        if json {
            cmd.arg("--json");
        }
        // Each archive to a destination of its own (another's is refused).
        let out = all(cmd
            .args(["run", "--db", FIXTURE_DB, "--telegram-rate", "1000"])
            .args(["--storage", &storage, "--to", &s3.store_url("dest", name)]));
        assert_eq!(out.code, Some(3), "{}", out.stderr);
    }
    all(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB]));
    all(starchive(&archive).args(["fetch", "--telegram-rate", "1000", "--storage", &storage]));
    for json in [true, false] {
        let j = if json { vec!["--json"] } else { vec![] };
        all(starchive(&archive).args(&j).args(["push", "--to", &url]));
        all(starchive(&archive)
            .args(&j)
            .args(["verify", "--deep", "--to", &url]));
        all(starchive(&archive).args(&j).arg("status"));
        all(starchive(&archive).args(&j).arg("plan"));
    }
    // Refused credentials: an error, which names no secret either.
    let mut refused = starchive(&archive);
    refused
        .args(["push", "--to", &s3.store_url("dest", "other")])
        .envs(tg.env())
        .env("STARCHIVE_TO_ACCESS_KEY_ID", ACCESS_KEY)
        .env("STARCHIVE_TO_SECRET_ACCESS_KEY", "wrong-secret-SECRET");
    let out = run(&mut refused);
    assert_ne!(out.code, Some(0), "a refused store is not a success");
    outputs.push(format!("{}\n{}", out.stdout, out.stderr));

    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, v) in files_under(dir.path()) {
        files.push((k, v));
    }
    for (k, v) in bucket_objects(&s3, "dest") {
        if k.ends_with(MANIFEST) {
            let text = manifest_lines(&v)
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n");
            files.push((format!("{k} (decompressed)"), text.into_bytes()));
        }
        if k.ends_with(CATALOG_COPY) {
            let copy = zstd::decode_all(&v[..]).expect("the catalog copy is a zstd stream");
            files.push((format!("{k} (decompressed)"), copy));
        }
        files.push((format!("dest/{k}"), v));
    }
    assert!(
        files
            .iter()
            .any(|(k, _)| k.ends_with("catalog.sqlite.zst (decompressed)"))
    );
    for secret in secrets {
        for text in &outputs {
            assert!(!text.contains(secret), "{secret:?} in output:\n{text}");
        }
        assert!(!outputs.iter().any(|t| t.contains("wrong-secret")));
        for (name, bytes) in &files {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} in {name}"
            );
        }
    }
}

// ---- destinations by identity, and the manifest check (SPEC §4) -------------

/// `status --json`'s destinations: identity -> states.
fn destinations(archive: &Path) -> serde_json::Map<String, Value> {
    let status = run(starchive(archive).args(["--json", "status"]))
        .expect_code(0)
        .json();
    status["destinations"]
        .as_object()
        .expect("destinations")
        .clone()
}

#[test]
fn deleted_destination_is_pushed_again_whole() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let url = dest.to_string_lossy().into_owned();
    run(&mut push_cmd(&fx.archive, &url, None)).expect_code(FIXTURE_PUSH_EXIT);
    std::fs::remove_dir_all(&dest).expect("rm -r dest");
    let doc = run(&mut push_cmd(&fx.archive, &url, None))
        .expect_code(FIXTURE_PUSH_EXIT)
        .json();
    assert_eq!(doc["done"], FIXTURE_PUSHED_REFS, "{doc}");
    assert_eq!(doc["bytes"], FIXTURE_BLOB_BYTES, "{doc}");
    assert_mirror(&files_under(&dest));
    run(&mut verify_cmd(&fx.archive, &url, None)).expect_code(0);
}

#[test]
fn manifest_replaced_or_gone_makes_push_check_a_listing() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("other");
    let dir = fx.dir.path().join("dest");
    let key = "stickers/100000004/00000000-0000-4000-8000-000000000201/1741172400000_1.webp";
    // A manifest of the same size and other bytes, one of other bytes, and none.
    type Tamper = fn(&[u8]) -> Option<Vec<u8>>;
    let tampers: [(&str, Tamper); 3] = [
        ("same size", |m| Some(m.iter().map(|b| b ^ 1).collect())),
        ("other manifest", |_| {
            Some(b"another archive's manifest".to_vec())
        }),
        ("deleted", |_| None),
    ];
    for (what, tamper) in tampers {
        for s3_dest in [false, true] {
            let (url, s3_arg) = if s3_dest {
                (s3.store_url("other", what), Some(&s3))
            } else {
                (dir.join(what).to_string_lossy().into_owned(), None)
            };
            run(&mut push_cmd(&fx.archive, &url, s3_arg)).expect_code(FIXTURE_PUSH_EXIT);
            // Another machine's push (or a hand) changed the destination.
            let manifest_key = format!("{what}/{MANIFEST}");
            let object_key = format!("{what}/{key}");
            let manifest = if s3_dest {
                s3.get_file("other", &manifest_key).expect("manifest")
            } else {
                std::fs::read(dir.join(&manifest_key)).expect("manifest")
            };
            match (tamper(&manifest), s3_dest) {
                (Some(bytes), true) => s3.put_file("other", &manifest_key, bytes),
                (Some(bytes), false) => {
                    std::fs::write(dir.join(&manifest_key), bytes).expect("write")
                }
                (None, true) => std::fs::remove_file(s3.bucket_dir("other").join(&manifest_key))
                    .expect("rm manifest"),
                (None, false) => std::fs::remove_file(dir.join(&manifest_key)).expect("rm"),
            }
            if s3_dest {
                std::fs::remove_file(s3.bucket_dir("other").join(&object_key)).expect("rm");
            } else {
                std::fs::remove_file(dir.join(&object_key)).expect("rm object");
            }
            let doc = run(&mut push_cmd(&fx.archive, &url, s3_arg))
                .expect_code(FIXTURE_PUSH_EXIT)
                .json();
            assert_eq!(doc["done"], 1, "{what}, s3 {s3_dest}: {doc}");
            assert_eq!(
                doc["skipped"],
                FIXTURE_PUSHED_REFS - 1,
                "{what}, s3 {s3_dest}: {doc}"
            );
            let mut verify = verify_cmd(&fx.archive, &url, s3_arg);
            run(&mut verify).expect_code(0);
            let written = if s3_dest {
                s3.get_file("other", &manifest_key).expect("manifest")
            } else {
                std::fs::read(dir.join(&manifest_key)).expect("manifest")
            };
            assert_eq!(
                manifest_lines(&written)[1..].len(),
                FIXTURE_REFS,
                "{what}: the manifest written again"
            );
        }
    }
}

#[test]
fn one_directory_however_typed_is_one_destination() {
    let fx = fetched_fixture();
    let work = fx.dir.path().join("work");
    let sub = work.join("sub");
    std::fs::create_dir_all(&sub).expect("mkdir");
    run(push_cmd(&fx.archive, "backup", None).current_dir(&work)).expect_code(FIXTURE_PUSH_EXIT);
    let abs = work.join("backup");
    for (typed, cwd) in [
        ("./backup/".to_string(), &work),
        ("../backup".to_string(), &sub),
        ("../sub/../backup/.".to_string(), &sub),
        (abs.display().to_string(), &sub),
        (format!("file://{}/", abs.display()), &sub),
    ] {
        let doc = run(push_cmd(&fx.archive, &typed, None).current_dir(cwd))
            .expect_code(FIXTURE_PUSH_EXIT)
            .json();
        assert_eq!(doc["done"], 0, "{typed}: {doc}");
        assert_eq!(doc["skipped"], FIXTURE_PUSHED_REFS, "{typed}: {doc}");
    }
    let shown: Vec<String> = destinations(&fx.archive).keys().cloned().collect();
    let canonical = std::fs::canonicalize(&abs).expect("canonical");
    assert_eq!(shown, [canonical.display().to_string()]);
}

#[test]
fn same_relative_path_from_two_directories_is_two_destinations() {
    let fx = fetched_fixture();
    let (a, b) = (fx.dir.path().join("a"), fx.dir.path().join("b"));
    for cwd in [&a, &b] {
        std::fs::create_dir_all(cwd).expect("mkdir");
        let doc = run(push_cmd(&fx.archive, "./backup", None).current_dir(cwd))
            .expect_code(FIXTURE_PUSH_EXIT)
            .json();
        assert_eq!(
            doc["done"],
            FIXTURE_PUSHED_REFS,
            "from {}: {doc}",
            cwd.display()
        );
        assert_mirror(&files_under(&cwd.join("backup")));
    }
    assert_eq!(destinations(&fx.archive).len(), 2);
}

#[test]
fn s3_destination_is_endpoint_bucket_and_prefix_shown_readably() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("named");
    let url = s3.store_url("named", "backups/2025");
    run(&mut push_cmd(&fx.archive, &url, Some(&s3))).expect_code(FIXTURE_PUSH_EXIT);
    // The same store, spelt otherwise: trailing slashes, parameters in
    // another order, the endpoint percent-encoded.
    let respelt = format!(
        "s3://named/backups/2025/?allow_http=true&endpoint={}%2F&region=us-east-1",
        s3.endpoint().replace(':', "%3A").replace('/', "%2F")
    );
    let doc = run(&mut push_cmd(&fx.archive, &respelt, Some(&s3)))
        .expect_code(FIXTURE_PUSH_EXIT)
        .json();
    assert_eq!(doc["done"], 0, "{doc}");
    let shown: Vec<String> = destinations(&fx.archive).keys().cloned().collect();
    assert_eq!(
        shown,
        [format!(
            "s3://named/backups/2025?endpoint={}",
            s3.endpoint()
        )]
    );
    let out = run(starchive(&fx.archive).arg("status"));
    let text = &out.expect_code(0).stdout;
    assert!(!text.contains("%3A") && !text.contains("region"), "{text}");
}

/// A catalog written before destinations had identities keyed them by the
/// URL as typed: the next push folds every spelling of one store into one.
#[test]
fn destinations_recorded_as_typed_are_folded_into_one() {
    let fx = fetched_fixture();
    let work = fx.dir.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    run(push_cmd(&fx.archive, "./backup", None).current_dir(&work)).expect_code(FIXTURE_PUSH_EXIT);
    let abs = work.join("backup");
    // As an older starchive left it: the same directory under three
    // spellings (two copies of the records), none canonical, and a
    // manifest record it did not keep.
    {
        let conn = rusqlite::Connection::open(fx.archive.join("catalog.sqlite")).expect("open");
        conn.execute_batch(&format!(
            "UPDATE destinations SET url = './backup', canonical = 0,
                    manifest_size = NULL, manifest_etag = NULL;
             INSERT INTO destinations(url, layout) VALUES ('file://{abs}/', 'mirror');
             INSERT INTO objects SELECT (SELECT id FROM destinations WHERE url LIKE 'file:%'),
                 key, sha256, size, state, reason, updated_at, written FROM objects;
             INSERT INTO placements SELECT (SELECT id FROM destinations WHERE url LIKE 'file:%'),
                 ref_id, key, state, reason FROM placements;
             INSERT INTO destinations(url, layout) VALUES ('/elsewhere/backup', 'mirror');",
            abs = abs.display()
        ))
        .expect("rewrite as an old catalog");
    }
    let doc = run(push_cmd(&fx.archive, "backup", None).current_dir(&work))
        .expect_code(FIXTURE_PUSH_EXIT)
        .json();
    assert_eq!(doc["done"], 0, "every object found by the listing: {doc}");
    assert_eq!(doc["skipped"], FIXTURE_PUSHED_REFS, "{doc}");
    let shown = destinations(&fx.archive);
    let canonical = std::fs::canonicalize(&abs).expect("canonical");
    assert_eq!(
        shown.keys().cloned().collect::<Vec<_>>(),
        [canonical.display().to_string()],
        "one destination; the unrelated row has no placements"
    );
    assert_eq!(
        shown[&canonical.display().to_string()]["pushed"],
        FIXTURE_PUSHED_REFS
    );
    let rows: Vec<(String, i64)> = {
        let conn = catalog(&fx.archive);
        let mut stmt = conn
            .prepare("SELECT url, canonical FROM destinations ORDER BY url")
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert_eq!(
        rows,
        [
            ("/elsewhere/backup".to_string(), 0),
            (canonical.display().to_string(), 1)
        ]
    );
}

#[test]
fn push_never_replaces_another_archives_manifest_nor_pushes_with_no_snapshot() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("shared");
    let dest = fx.dir.path().join("dest");
    let dir_url = dest.to_string_lossy().into_owned();
    let s3_url = s3.store_url("shared", "team");
    let stores = [(dir_url.clone(), None), (s3_url, Some(&s3))];
    let held = |on_s3: bool| match on_s3 {
        true => bucket_objects(&s3, "shared"),
        false => files_under(&dest),
    };
    for (url, on_s3) in &stores {
        run(&mut push_cmd(&fx.archive, url, *on_s3)).expect_code(FIXTURE_PUSH_EXIT);
    }
    // Another archive of the same bot (an id of its own), and one whose
    // first snapshot failed.
    let other = fetched_fixture();
    let unsnapshotted = fx.dir.path().join("unsnapshotted");
    std::fs::create_dir_all(fx.dir.path().join("no-csv")).expect("mkdir");
    run(starchive(&unsnapshotted)
        .args(["snapshot", "--db"])
        .arg(fx.dir.path().join("no-csv")))
    .expect_code(1);
    assert!(unsnapshotted.join("catalog.sqlite").exists());
    for (url, on_s3) in &stores {
        let before = held(on_s3.is_some());
        let out = run(&mut push_cmd(&other.archive, url, *on_s3));
        out.expect_code(1);
        for words in [
            "another archive",
            "pull",
            "another prefix",
            "nothing was changed",
        ] {
            assert!(out.stderr.contains(words), "{words}: {}", out.stderr);
        }
        assert!(held(on_s3.is_some()) == before, "{url}: left as it was");
        let out = run(&mut push_cmd(&unsnapshotted, url, *on_s3));
        out.expect_code(1);
        assert!(out.stderr.contains("no snapshot yet"), "{}", out.stderr);
        assert!(held(on_s3.is_some()) == before, "{url}: left as it was");
    }
    // Its own archive, and one pulled from there (the same id), push there.
    run(&mut push_cmd(&fx.archive, &dir_url, None)).expect_code(FIXTURE_PUSH_EXIT);
    let pulled = fx.dir.path().join("pulled");
    run(starchive(&pulled).args(["pull", "--from", &dir_url])).expect_code(0);
    run(&mut push_cmd(&pulled, &dir_url, None)).expect_code(FIXTURE_PUSH_EXIT);
    // A manifest from before archive ids names none: taken.
    let mut lines = manifest_lines(&std::fs::read(dest.join(MANIFEST)).expect("manifest"));
    lines[0]
        .as_object_mut()
        .expect("header")
        .remove("archive_id");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(
        dest.join(MANIFEST),
        zstd::encode_all(text.as_bytes(), 3).expect("zstd"),
    )
    .expect("write");
    run(&mut push_cmd(&other.archive, &dir_url, None)).expect_code(FIXTURE_PUSH_EXIT);
}

#[test]
fn a_key_too_long_for_a_local_disk_fails_only_its_ref_and_says_why() {
    let dir = temp_dir();
    // 150 Cyrillic letters: 300 bytes in UTF-8, more than a file name takes.
    let long = "Ж".repeat(150);
    let long_key = format!("stickers/7/s1/{long}.webp");
    // A folder of the key too, and a prefix beside it that is fine.
    let long_dir_key = format!("stickers/7/{long}/a.webp");
    let tg = FakeTelegram::new();
    for (i, id) in ["tg-long", "tg-long-dir", "tg-ok"].into_iter().enumerate() {
        tg.add_file(
            id,
            &format!("stickers/{id}.webp"),
            sticker_bytes(60 + i as u64, 400),
        );
    }
    let mut db = Db::default();
    db.session("s1", "7", "prod", None, None)
        .sticker("long", "7", "s1", Some("tg-long"), Some(&long_key))
        .sticker(
            "long-dir",
            "7",
            "s1",
            Some("tg-long-dir"),
            Some(&long_dir_key),
        )
        .sticker(
            "ok",
            "7",
            "s1",
            Some("tg-ok"),
            Some("stickers/7/s1/ok.webp"),
        );
    let archive = db.snapshotted(dir.path());
    // A local bucket cannot hold such keys: they are missing there
    // (dangling), and Telegram gives their files.
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket).expect("bucket");
    let doc = run(starchive(&archive)
        .args(["--json", "fetch", "--telegram-rate", "1000", "--storage"])
        .arg(&bucket)
        .envs(tg.env()))
    .expect_code(0)
    .json();
    assert_eq!(doc["done"], 3, "{doc}");
    let dangling: i64 = catalog(&archive)
        .query_row(
            "SELECT count(*) FROM refs WHERE key_dangling = 1",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(dangling, 3);

    // Pushed to a local directory in the mirror layout, each long key fails
    // alone, named with why and what to do; the rest is pushed.
    let dest = dir.path().join("dest");
    let out = run(starchive(&archive)
        .args(["--json", "push", "--to"])
        .arg(&dest));
    out.expect_code(3);
    let doc = out.json();
    assert_eq!(
        (&doc["done"], &doc["failed"]),
        (&1.into(), &2.into()),
        "{doc}"
    );
    assert!(dest.join("stickers/7/s1/ok.webp").is_file());
    let (_, failures) = push_failures(&archive);
    assert_eq!(failures.len(), 2, "{failures:?}");
    for key in [&long_key, &long_dir_key] {
        let reason = failures
            .iter()
            .filter_map(|f| f["reason"].as_str())
            .find(|r| r.contains(key.as_str()))
            .unwrap_or_else(|| panic!("no failure names {key}: {failures:?}"));
        assert!(
            reason.contains("bytes is too long for a file name")
                && reason.contains("255")
                && reason.contains("--layout cas"),
            "{reason}"
        );
        assert!(
            !reason.contains('#') && !reason.contains(&*dest.to_string_lossy()),
            "{reason}"
        );
    }
    assert!(
        !out.stderr.contains(&format!("{long}.webp#")),
        "{}",
        out.stderr
    );
    // verify --to says the same of them, as missing.
    let doc = run(starchive(&archive)
        .args(["--json", "verify", "--to"])
        .arg(&dest))
    .expect_code(3)
    .json();
    assert_eq!(doc["objects_missing"], 2, "{doc}");
    assert!(doc["problems"].to_string().contains("255"), "{doc}");

    // The cas layout has short keys: every ref goes up.
    let cas = dir.path().join("cas");
    let doc = run(starchive(&archive)
        .args(["--json", "push", "--layout", "cas", "--to"])
        .arg(&cas))
    .expect_code(0)
    .json();
    assert_eq!(doc["done"], 3, "{doc}");
}

/// Refs of the fixture placed at `key`.
fn refs_at(key: &str) -> u64 {
    MIRROR.iter().filter(|(_, _, k, _)| *k == key).count() as u64
}

/// The keys of the mirror whose bytes no other key holds, in key order.
fn keys_of_unique_bytes(want: &BTreeMap<String, Vec<u8>>) -> Vec<&String> {
    want.keys()
        .filter(|k| want.values().filter(|b| *b == &want[*k]).count() == 1)
        .collect()
}

#[test]
fn push_never_overwrites_an_object_it_did_not_write() {
    // The bot's live bucket as a mirror destination: at one key a newer file
    // of another size, at another the same file the archive holds.
    let fx = fetched_fixture();
    let want = mirror_objects();
    let s3 = TestS3::start();
    s3.create_bucket("live");
    let keys = keys_of_unique_bytes(&want);
    let (newer, same) = (keys[0].as_str(), keys[1].as_str());
    let newer_bytes = sticker_bytes(77, want[newer].len() + 100);
    let dir_dest = fx.dir.path().join("live");
    for key_file in [(newer, &newer_bytes), (same, &want[same])] {
        let (key, bytes) = key_file;
        s3.put_file("live", key, bytes);
        let path = dir_dest.join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }
    let s3_url = s3.store_url("live", "");
    let dir_url = dir_dest.to_string_lossy().into_owned();
    let read = |s3_dest: bool, key: &str| match s3_dest {
        true => s3.get_file("live", key),
        false => std::fs::read(dir_dest.join(key)).ok(),
    };
    for (url, s3_arg) in [(&s3_url, Some(&s3)), (&dir_url, None)] {
        let s3_dest = s3_arg.is_some();
        for round in ["first push", "second push"] {
            let doc = run(&mut push_cmd(&fx.archive, url, s3_arg))
                .expect_code(3)
                .json();
            let at = format!("{round}, s3 {s3_dest}");
            assert_eq!(
                read(s3_dest, newer).as_ref(),
                Some(&newer_bytes),
                "{at}: the newer file stays"
            );
            assert_eq!(read(s3_dest, same).as_ref(), Some(&want[same]), "{at}");
            // Sticker 315 failed at fetch; the refs at the newer file fail.
            assert_eq!(doc["failed"], 1 + refs_at(newer), "{at}: {doc}");
            let note = doc["notes"].to_string();
            for part in [
                newer.to_string(),
                format!("holds {} bytes", newer_bytes.len()),
                format!("is {} bytes", want[newer].len()),
                "did not write".to_string(),
            ] {
                assert!(note.contains(&part), "{at}: {part}: {doc}");
            }
        }
        if s3_dest {
            assert_eq!(
                s3.user_metadata("live", same).get("sha256"),
                None,
                "the same file was taken as present, not written again"
            );
        }
        let (status, failures) = push_failures(&fx.archive);
        assert!(
            failures.iter().any(|f| {
                f["reason"].as_str().is_some_and(|r| {
                    r.contains(newer) && r.contains(&format!("holds {} bytes", newer_bytes.len()))
                })
            }),
            "status names the key: {status}"
        );
        // Every other object is there.
        for key in want.keys().filter(|k| k.as_str() != newer) {
            assert_eq!(read(s3_dest, key).as_ref(), Some(&want[key]), "{key}");
        }
        // The file taken for present, replaced by the bot with one of the
        // same size: verify reports it, push still does not overwrite it.
        let mut newer_same = want[same].clone();
        newer_same[0] ^= 0xff;
        match s3_dest {
            true => s3.put_file("live", same, &newer_same),
            false => std::fs::write(dir_dest.join(same), &newer_same).expect("write"),
        }
        let doc = run(verify_cmd(&fx.archive, url, s3_arg).arg("--json"))
            .expect_code(3)
            .json();
        assert!(
            doc["problems"].to_string().contains(same),
            "verify names it: {doc}"
        );
        run(&mut push_cmd(&fx.archive, url, s3_arg)).expect_code(3);
        assert_eq!(
            read(s3_dest, same).as_ref(),
            Some(&newer_same),
            "left untouched"
        );
    }
}

#[test]
fn an_object_push_wrote_and_verify_found_bad_is_pushed_again() {
    let fx = fetched_fixture();
    let want = mirror_objects();
    let s3 = TestS3::start();
    s3.create_bucket("own");
    let keys = keys_of_unique_bytes(&want);
    let (resized, flipped) = (keys[0].as_str(), keys[1].as_str());
    let dir_dest = fx.dir.path().join("own");
    let s3_url = s3.store_url("own", "");
    let dir_url = dir_dest.to_string_lossy().into_owned();
    for (url, s3_arg) in [(&s3_url, Some(&s3)), (&dir_url, None)] {
        run(&mut push_cmd(&fx.archive, url, s3_arg)).expect_code(FIXTURE_PUSH_EXIT);
        // Damaged after the push: another size at one key, the same size
        // with other bytes at the other (the directory keeps no metadata).
        let mut other = want[flipped].clone();
        other[0] ^= 0xff;
        let damaged = [(resized, b"short".to_vec()), (flipped, other)];
        for (key, bytes) in &damaged {
            match s3_arg {
                Some(s3) => std::fs::write(s3.bucket_dir("own").join(key), bytes),
                None => std::fs::write(dir_dest.join(key), bytes),
            }
            .expect("damage");
        }
        let doc = run(verify_cmd(&fx.archive, url, s3_arg).arg("--json"))
            .expect_code(3)
            .json();
        assert_eq!(doc["objects_to_push_again"], 2, "{doc}");
        let doc = run(&mut push_cmd(&fx.archive, url, s3_arg))
            .expect_code(FIXTURE_PUSH_EXIT)
            .json();
        assert_eq!(doc["done"], refs_at(resized) + refs_at(flipped), "{doc}");
        assert!(
            doc["notes"].to_string().find("did not write").is_none(),
            "{doc}"
        );
        for key in [resized, flipped] {
            let got = match s3_arg {
                Some(s3) => s3.get_file("own", key),
                None => std::fs::read(dir_dest.join(key)).ok(),
            };
            assert_eq!(got.as_ref(), Some(&want[key]), "{key}");
        }
        run(&mut verify_cmd(&fx.archive, url, s3_arg)).expect_code(0);
    }
}
