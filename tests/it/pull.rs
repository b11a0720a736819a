//! `pull --from URL` (SPEC §3, §5): an archive rebuilt from a destination
//! that `push` wrote, on every store starchive is tested with (a local
//! directory, s3s-fs, the real Supabase Storage server, moto), then used
//! with no database and no token: `plan`, `status`, `verify`, `push`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::copy::refs_of;
use crate::push::{
    CATALOG_COPY, FIXTURE_BLOBS, FIXTURE_PUSH_EXIT, MANIFEST, fetched_fixture, manifest_lines,
    mirror_objects,
};
use crate::support::backend::{Backend, Bucket, Kind, on_every_store};
use crate::support::dataset::FIXTURE_BUCKET;
use crate::support::objects::files_under;
use crate::support::run::{Run, catalog, run, starchive};
use crate::support::s3::TestS3;
use crate::support::{kill_after, seeded_rng, sha256_hex, temp_dir};

on_every_store!(pull_rebuilds_the_archive_from_either_layout);

/// `--json pull --from URL` into `archive`, with the store's credentials.
fn pull(archive: &Path, from: &str, env: Vec<(String, String)>) -> Command {
    let mut cmd = starchive(archive);
    cmd.args(["--json", "pull", "--from", from]).envs(env);
    cmd
}

/// `--json push --to URL`, with the store's credentials.
fn push(archive: &Path, to: &str, env: Vec<(String, String)>) -> Command {
    let mut cmd = starchive(archive);
    cmd.args(["--json", "push", "--to", to]).envs(env);
    cmd
}

/// `plan --json` of an archive.
fn plan(archive: &Path) -> Value {
    run(starchive(archive).args(["--json", "plan"]))
        .expect_code(0)
        .json()
}

/// Every file under `blobs/`, with its bytes.
fn blobs_of(archive: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(&archive.join("blobs"))
}

/// Asserts that `pulled` is the archive `origin` as a user sees it: the
/// same refs, the same plan, the same blobs.
#[track_caller]
fn assert_same_archive(pulled: &Path, origin: &Path) {
    assert_eq!(
        refs_of(&catalog(pulled)),
        refs_of(&catalog(origin)),
        "v_refs"
    );
    assert_eq!(plan(pulled), plan(origin), "plan --json");
    let (got, want) = (blobs_of(pulled), blobs_of(origin));
    assert_eq!(want.len(), FIXTURE_BLOBS);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert!(got == want, "every blob with its bytes");
}

/// Asserts that `plan` and `status` count as fetched only refs whose blob
/// is in `blobs/`, as a killed pull must leave them.
#[track_caller]
fn assert_fetched_means_here(archive: &Path) {
    let conn = catalog(archive);
    let mut stmt = conn
        .prepare("SELECT sha256 FROM refs WHERE state = 'fetched'")
        .expect("prepare");
    let fetched: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let here = blobs_of(archive);
    for sha in &fetched {
        assert!(
            here.contains_key(&format!("{}/{sha}", &sha[..2])),
            "a ref says fetched while blob {sha} is not in blobs/"
        );
    }
    let plan = plan(archive);
    assert_eq!(plan["total"]["fetched"], fetched.len() as u64, "{plan}");
    run(starchive(archive).args(["--json", "status"])).expect_code(0);
}

/// The objects of a bucket but `_starchive/`.
fn stickers_in(bucket: &Bucket) -> BTreeMap<String, Vec<u8>> {
    let mut objects = bucket.objects.all();
    objects.retain(|k, _| !k.starts_with("_starchive/"));
    objects
}

fn pull_rebuilds_the_archive_from_either_layout(backend: &Backend) {
    let fx = fetched_fixture();
    for layout in ["mirror", "cas"] {
        let first = backend.bucket();
        run(push(&fx.archive, first.url(), first.env("TO")).args([
            "--layout",
            layout,
            "--catalog-part-size",
            "2KiB",
        ]))
        .expect_code(FIXTURE_PUSH_EXIT);
        let objects = first.objects.all();
        let header = manifest_lines(&objects[MANIFEST]).swap_remove(0);
        assert!(
            header["catalog"].as_array().is_some_and(|c| c.len() > 1),
            "a copy in parts: {header}"
        );

        let dir = temp_dir();
        let pulled = dir.path().join("pulled");
        let doc = run(&mut pull(&pulled, first.url(), first.env("STORAGE")))
            .expect_code(0)
            .json();
        assert_eq!(doc["failed"], 0, "{layout}: {doc}");
        assert_eq!(
            doc["bytes"],
            crate::push::FIXTURE_BLOB_BYTES,
            "{layout}: {doc}"
        );
        assert_same_archive(&pulled, &fx.archive);

        // A second pull downloads nothing.
        let doc = run(&mut pull(&pulled, first.url(), first.env("STORAGE")))
            .expect_code(0)
            .json();
        assert_eq!(
            (doc["done"].as_u64(), doc["bytes"].as_u64()),
            (Some(0), Some(0)),
            "{doc}"
        );
        assert!(doc["skipped"].as_u64() > Some(0), "{doc}");

        // No database, no token: status, verify and a push to another store.
        run(starchive(&pulled).args(["--json", "status"])).expect_code(0);
        run(starchive(&pulled).args(["--json", "verify"])).expect_code(0);
        let second = backend.bucket();
        run(&mut push(&pulled, second.url(), second.env("TO"))).expect_code(FIXTURE_PUSH_EXIT);
        let copied = stickers_in(&second);
        assert_eq!(
            copied,
            mirror_objects(),
            "{layout}: the pulled archive's mirror"
        );
        let mut deep = starchive(&pulled);
        deep.args(["--json", "verify", "--deep", "--to", second.url()])
            .envs(second.env("TO"));
        run(&mut deep).expect_code(0);
        let cas = backend.bucket();
        run(push(&pulled, cas.url(), cas.env("TO")).args(["--layout", "cas"]))
            .expect_code(FIXTURE_PUSH_EXIT);
        let first_cas = backend.bucket();
        run(push(&fx.archive, first_cas.url(), first_cas.env("TO")).args(["--layout", "cas"]))
            .expect_code(FIXTURE_PUSH_EXIT);
        assert!(
            stickers_in(&cas) == stickers_in(&first_cas),
            "{layout}: the same cas objects as from the first archive"
        );
    }
}

/// A destination of the fixture in a local directory, and the archive that pushed it.
struct Pushed {
    fx: crate::push::Fixture,
    dest: std::path::PathBuf,
}

fn pushed_to_a_directory(layout: &str) -> Pushed {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    run(push(&fx.archive, &dest.to_string_lossy(), Vec::new()).args(["--layout", layout]))
        .expect_code(FIXTURE_PUSH_EXIT);
    Pushed { fx, dest }
}

impl Pushed {
    fn url(&self) -> String {
        self.dest.to_string_lossy().into_owned()
    }

    fn pull(&self, archive: &Path) -> Run {
        run(&mut pull(archive, &self.url(), Vec::new()))
    }
}

/// The manifest's lines with a key, by key.
fn placed(dest: &Path) -> BTreeMap<String, Value> {
    manifest_lines(&std::fs::read(dest.join(MANIFEST)).expect("manifest"))
        .into_iter()
        .skip(1)
        .filter_map(|l| Some((l["key"].as_str()?.to_string(), l)))
        .collect()
}

#[test]
fn a_bad_or_missing_object_fails_only_its_refs() {
    let p = pushed_to_a_directory("mirror");
    let lines = placed(&p.dest);
    let mut keys = lines.keys();
    let corrupt = keys.next().expect("a key").clone();
    let gone = keys.next().expect("another key").clone();
    let good_bytes = std::fs::read(p.dest.join(&corrupt)).expect("object");
    let mut bad_bytes = good_bytes.clone();
    bad_bytes[good_bytes.len() / 2] ^= 0x55;
    std::fs::write(p.dest.join(&corrupt), &bad_bytes).expect("corrupt");
    let gone_bytes = std::fs::read(p.dest.join(&gone)).expect("object");
    std::fs::remove_file(p.dest.join(&gone)).expect("remove");

    let dir = temp_dir();
    let pulled = dir.path().join("pulled");
    let out = p.pull(&pulled);
    out.expect_code(3);
    let doc = out.json();
    let refs_of_blob = |sha: &Value| lines.values().filter(|l| l["sha256"] == *sha).count() as u64;
    let want_failed =
        refs_of_blob(&lines[&corrupt]["sha256"]) + refs_of_blob(&lines[&gone]["sha256"]);
    assert_eq!(doc["failed"], want_failed, "{doc}");
    let blobs = blobs_of(&pulled);
    assert_eq!(blobs.len(), FIXTURE_BLOBS - 2, "every other blob is there");
    assert!(
        !blobs.values().any(|b| *b == bad_bytes),
        "bytes that do not hash to their name are never stored"
    );
    let status = run(starchive(&pulled).args(["--json", "status"]))
        .expect_code(0)
        .json();
    let reasons: Vec<String> = status["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| f["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&corrupt) && r.contains("hash")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&gone) && r.contains("missing")),
        "{reasons:?}"
    );
    // They failed at pull, and say so: pulling again is what repairs them
    // (the fixture's invalid file_id failed at fetch, on the first machine).
    for f in status["failures"].as_array().expect("failures") {
        let at_pull = f["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("source "));
        assert_eq!(f["stage"], if at_pull { "pull" } else { "fetch" }, "{f}");
    }
    let text = run(starchive(&pulled).arg("status"));
    assert!(
        text.expect_code(0).stdout.contains("[pull]"),
        "{}",
        text.stdout
    );

    // Their refs failed (at the source), no blob here is bad: verify finds
    // nothing to repair and leaves them failed, with the sha256 the next
    // pull needs.
    let verified = run(starchive(&pulled).args(["--json", "verify"]))
        .expect_code(0)
        .json();
    assert_eq!(
        verified["blobs_checked"],
        (FIXTURE_BLOBS - 2) as u64,
        "{verified}"
    );
    assert_eq!(verified["blobs_bad"], 0, "{verified}");
    assert_eq!(verified["refs_to_fetch_again"], 0, "{verified}");
    let after = run(starchive(&pulled).args(["--json", "status"]))
        .expect_code(0)
        .json();
    assert_eq!(after, status, "verify changed no ref");
    // A push from here says what to do about them.
    let pushed = run(&mut push(
        &pulled,
        &dir.path().join("elsewhere").to_string_lossy(),
        Vec::new(),
    ));
    let doc = pushed.expect_code(3).json();
    let notes: Vec<&str> = doc["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        notes.contains(&format!("{want_failed} refs failed at pull (the object was missing or bad where the archive was pulled from): `starchive pull --from {}` again once it is repaired there", std::fs::canonicalize(&p.dest).expect("dest").display()).as_str()),
        "{doc}"
    );
    assert!(
        notes.contains(&"1 ref failed at fetch: `starchive fetch --retry-failed` tries again"),
        "only the ref that failed at fetch: {doc}"
    );
    assert_eq!(doc["failed"], want_failed + 1, "{doc}");

    // Repaired at the source, the next pull takes them.
    std::fs::write(p.dest.join(&corrupt), &good_bytes).expect("repair");
    std::fs::write(p.dest.join(&gone), &gone_bytes).expect("repair");
    let doc = p.pull(&pulled).expect_code(0).json();
    assert_eq!(doc["done"], want_failed, "{doc}");
    assert_same_archive(&pulled, &p.fx.archive);
}

#[test]
fn a_pull_into_another_archive_is_refused_and_changes_nothing() {
    let p = pushed_to_a_directory("cas");
    // Another archive of the same bot: another identity.
    let other = fetched_fixture();
    let before = files_under(&other.archive);
    let out = p.pull(&other.archive);
    out.expect_code(1);
    assert!(out.stderr.contains("another archive"), "{}", out.stderr);
    let after = files_under(&other.archive);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(after == before, "the archive is left as it was");

    // A directory that holds no archive is fine, and so is the archive
    // that pushed (the same identity): it lacks nothing.
    let dir = temp_dir();
    std::fs::write(dir.path().join("notes.txt"), b"mine").expect("write");
    p.pull(dir.path()).expect_code(0);
    assert_eq!(
        std::fs::read(dir.path().join("notes.txt")).ok(),
        Some(b"mine".to_vec())
    );
    let doc = p.pull(&p.fx.archive).expect_code(0).json();
    assert_eq!(doc["bytes"], 0, "{doc}");
}

#[test]
fn a_killed_pull_resumes_to_the_whole_archive() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("src");
    let url = s3.store_url("src", "");
    run(push(&fx.archive, &url, s3.env("TO")).args(["--catalog-part-size", "2KiB"]))
        .expect_code(FIXTURE_PUSH_EXIT);
    // Each request waits, so that the kills land in every phase: the
    // manifest, the catalog's parts, the blobs.
    s3.set_latency(Duration::from_millis(40));
    let dir = temp_dir();
    let pulled = dir.path().join("pulled");
    let mut rng = seeded_rng("a_killed_pull_resumes_to_the_whole_archive");
    let mut finished = 0;
    for _ in 0..12 {
        let delay = Duration::from_millis(20 + rng() % 700);
        let mut cmd = pull(&pulled, &url, s3.env("STORAGE"));
        cmd.args(["--jobs", "2"]);
        if kill_after(&mut cmd, delay) {
            finished += 1;
        }
        // What a kill leaves is never taken for whole.
        if pulled.join("catalog.sqlite").exists() {
            let conn = catalog(&pulled);
            let ok: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .expect("integrity_check");
            assert_eq!(ok, "ok");
        }
        for (name, bytes) in blobs_of(&pulled) {
            // `tmp/` holds staging files; a blob is `<aa>/<sha256>`.
            if let Some((fan, sha)) = name.split_once('/')
                && fan != "tmp"
            {
                assert_eq!(sha256_hex(&bytes), sha, "{name}");
            }
        }
        if pulled.join("catalog.sqlite").exists() {
            assert_fetched_means_here(&pulled);
            // What `verify` does to a killed pull never keeps the next
            // one from finishing (checked by the pull at the end).
            if rng().is_multiple_of(3) {
                let verified = run(starchive(&pulled).args(["--json", "verify"]))
                    .expect_code(0)
                    .json();
                assert_eq!(verified["blobs_bad"], 0, "{verified}");
            }
        }
    }
    eprintln!("{finished} of 12 pulls finished before their kill");
    s3.set_latency(Duration::ZERO);
    let doc = run(&mut pull(&pulled, &url, s3.env("STORAGE")))
        .expect_code(0)
        .json();
    assert_eq!(doc["failed"], 0, "{doc}");
    assert_same_archive(&pulled, &fx.archive);
    assert!(
        !pulled.join("blobs/tmp").exists()
            || std::fs::read_dir(pulled.join("blobs/tmp"))
                .map(|d| d.count() == 0)
                .unwrap_or(true),
        "no staging file left"
    );
    assert!(!pulled.join(".pull-catalog.sqlite").exists());
}

/// Turns the `refs_core` and `refs` view of migration 11 back into the
/// `refs` table before it (with the placements that reference it).
const UNDO_THIN_REFS: &str = "
DROP VIEW v_refs;
CREATE TABLE refs_10 (
    id               INTEGER PRIMARY KEY,
    class            TEXT NOT NULL,
    row_table        TEXT NOT NULL,
    row_id           TEXT NOT NULL,
    slot             TEXT NOT NULL DEFAULT '',
    session_id       TEXT,
    user_id          TEXT,
    env              TEXT,
    pack_batch_id    TEXT,
    pack_index       INTEGER,
    telegram_file_id TEXT,
    storage_key      TEXT,
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'fetched', 'failed')),
    sha256           TEXT REFERENCES blobs(sha256),
    source           TEXT,
    key_dangling     INTEGER NOT NULL DEFAULT 0,
    reason           TEXT,
    derived_gen      INTEGER NOT NULL,
    updated_at       TEXT,
    UNIQUE (class, row_table, row_id, slot)
);
INSERT INTO refs_10 SELECT id, class, row_table, row_id, slot, session_id, user_id, env,
    pack_batch_id, pack_index, telegram_file_id, storage_key, state, sha256, source,
    key_dangling, reason, 1, updated_at FROM refs;
CREATE TABLE placements_10 (
    dest_id INTEGER NOT NULL REFERENCES destinations(id),
    ref_id  INTEGER NOT NULL REFERENCES refs_10(id) ON DELETE CASCADE,
    key     TEXT,
    state   TEXT NOT NULL CHECK (state IN ('pending', 'pushed', 'failed')),
    reason  TEXT,
    PRIMARY KEY (dest_id, ref_id)
) WITHOUT ROWID;
INSERT INTO placements_10 SELECT dest_id, ref_id, key, state, reason FROM placements;
DROP TABLE placements;
DROP VIEW refs;
DROP TABLE refs_core;
ALTER TABLE refs_10 RENAME TO refs;
ALTER TABLE placements_10 RENAME TO placements;
CREATE INDEX placements_key ON placements(dest_id, key);
CREATE INDEX placements_ref ON placements(ref_id);
CREATE INDEX refs_file_id ON refs(telegram_file_id);
CREATE INDEX refs_orphans ON refs(session_id) WHERE env IS NULL AND session_id IS NOT NULL;
CREATE VIEW v_refs(class, env, row_id, session_id, telegram_file_id, storage_key,
                   state, sha256, size, type, reason) AS
    SELECT r.class, r.env, r.row_id, r.session_id, r.telegram_file_id, r.storage_key,
           r.state, r.sha256, b.size, b.type, r.reason
    FROM refs r LEFT JOIN blobs b ON b.sha256 = r.sha256;";

/// A destination written before the catalog copy was compressed (format 1):
/// a plain `_starchive/catalog.sqlite` of a catalog that knows no archive id.
#[test]
fn a_format_1_destination_is_pulled_and_its_catalog_migrated() {
    let p = pushed_to_a_directory("mirror");
    let starchive_dir = p.dest.join("_starchive");
    // The copy as format 1 wrote it: uncompressed, from before migration 6.
    let copy = zstd::decode_all(
        &std::fs::read(starchive_dir.join("catalog.sqlite.zst")).expect("copy")[..],
    )
    .expect("zstd");
    let legacy = starchive_dir.join("catalog.sqlite");
    std::fs::write(&legacy, copy).expect("write");
    {
        let conn = rusqlite::Connection::open(&legacy).expect("open");
        // Migrations 7 to 11 undone (8 drops `seen_snapshot`, 9 adds
        // `objects.written`, 11 makes `refs` a view of `refs_core`).
        conn.execute_batch(UNDO_THIN_REFS)
            .expect("refs as before migration 11");
        conn.execute_batch(
            "DELETE FROM settings WHERE key = 'archive_id';
             ALTER TABLE objects DROP COLUMN written;
             DROP INDEX refs_orphans;
             ALTER TABLE sessions ADD COLUMN seen_snapshot INTEGER NOT NULL DEFAULT 1;
             ALTER TABLE pack_batches ADD COLUMN seen_snapshot INTEGER NOT NULL DEFAULT 1;
             PRAGMA user_version = 6;",
        )
        .expect("make it older");
    }
    std::fs::remove_file(starchive_dir.join("catalog.sqlite.zst")).expect("rm");
    let mut lines = manifest_lines(&std::fs::read(p.dest.join(MANIFEST)).expect("manifest"));
    let header = lines[0].as_object_mut().expect("header");
    header.insert("format".into(), 1.into());
    header.remove("catalog");
    header.remove("archive_id");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(
        p.dest.join(MANIFEST),
        zstd::encode_all(text.as_bytes(), 3).expect("zstd"),
    )
    .expect("write");
    assert!(!p.dest.join(CATALOG_COPY).exists());

    let dir = temp_dir();
    let pulled = dir.path().join("pulled");
    p.pull(&pulled).expect_code(0);
    assert_same_archive(&pulled, &p.fx.archive);
    let id: String = catalog(&pulled)
        .query_row(
            "SELECT value FROM settings WHERE key = 'archive_id'",
            [],
            |r| r.get(0),
        )
        .expect("migrated: an archive id");
    assert_eq!(id.len(), 32);
    // Resumed: the same destination, nothing to download.
    let doc = p.pull(&pulled).expect_code(0).json();
    assert_eq!(doc["bytes"], 0, "{doc}");
    // Another archive is still refused.
    let other = temp_dir();
    run(starchive(other.path()).args([
        "--json",
        "snapshot",
        "--db",
        crate::support::dataset::FIXTURE_DB,
    ]))
    .expect_code(0);
    p.pull(other.path()).expect_code(1);
}

#[test]
fn pull_help_names_the_credentials_it_reads() {
    let out = run(crate::support::bin().args(["pull", "--help"]));
    out.expect_code(0);
    for var in [
        "STARCHIVE_STORAGE_ACCESS_KEY_ID",
        "STARCHIVE_STORAGE_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
    ] {
        assert!(out.stdout.contains(var), "{var} in:\n{}", out.stdout);
    }
}

#[test]
fn a_store_that_is_no_destination_is_refused() {
    let dir = temp_dir();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let archive = dir.path().join("archive");
    let out = run(&mut pull(&archive, &empty.to_string_lossy(), Vec::new()));
    out.expect_code(1);
    assert!(
        out.stderr.contains("_starchive/manifest.jsonl.zst"),
        "{}",
        out.stderr
    );
    assert!(!archive.exists(), "nothing made");
}

#[allow(dead_code)]
fn kinds() -> [Kind; 4] {
    [Kind::Local, Kind::S3s, Kind::Supabase, Kind::Moto]
}

#[test]
fn a_pull_after_a_scoped_pull_or_a_verify_finishes_the_archive() {
    let p = pushed_to_a_directory("cas");
    let dir = temp_dir();
    let pulled = dir.path().join("pulled");
    // One env first: the other env's refs wait, pending, and say so.
    let out = run(pull(&pulled, &p.url(), Vec::new()).args(["--env", "test"]));
    let doc = out.expect_code(0).json();
    assert_fetched_means_here(&pulled);
    let whole = p.pull(&pulled);
    let doc2 = whole.expect_code(0).json();
    assert!(doc2["done"].as_u64() > Some(0), "{doc} then {doc2}");
    assert_same_archive(&pulled, &p.fx.archive);

    // A blob lost, and `verify` makes its refs pending: the next pull
    // brings it back whatever their state.
    let (name, _) = blobs_of(&pulled).into_iter().next().expect("a blob");
    std::fs::remove_file(pulled.join("blobs").join(&name)).expect("remove");
    run(starchive(&pulled).args(["--json", "verify"])).expect_code(3);
    let doc = p.pull(&pulled).expect_code(0).json();
    assert!(doc["done"].as_u64() > Some(0), "{doc}");
    assert_same_archive(&pulled, &p.fx.archive);
}

#[test]
fn a_pull_that_leaves_refs_pending_says_why() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let url = dest.to_string_lossy().into_owned();
    // A blob lost before the push: its refs are pending, with no file there.
    let lost: String = catalog(&fx.archive)
        .query_row(
            "SELECT sha256 FROM refs WHERE state = 'fetched' AND storage_key IS NOT NULL LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("a fetched ref from the bucket");
    std::fs::remove_file(fx.archive.join("blobs").join(&lost[..2]).join(&lost)).expect("remove");
    run(starchive(&fx.archive).args(["verify"])).expect_code(3);
    run(&mut push(&fx.archive, &url, Vec::new())).expect_code(FIXTURE_PUSH_EXIT);
    let dir = temp_dir();
    let pulled = dir.path().join("pulled");
    let out = run(&mut pull(&pulled, &url, Vec::new()));
    let doc = out.expect_code(0).json();
    assert!(doc["pending"].as_u64() > Some(0), "{doc}");
    let note = doc["notes"][0].as_str().unwrap_or_default();
    assert!(
        note.contains("pending") && note.contains("pull") && note.contains(&url),
        "{doc}"
    );
    let human = run(starchive(&pulled).args(["pull", "--from", &url]));
    assert!(
        human.expect_code(0).stdout.contains("note: "),
        "{}",
        human.stdout
    );
    assert_fetched_means_here(&pulled);
    // A push from here names the pull that would finish it.
    let elsewhere = dir.path().join("elsewhere");
    let doc = run(&mut push(&pulled, &elsewhere.to_string_lossy(), Vec::new()))
        .expect_code(3)
        .json();
    assert!(
        doc["notes"].to_string().contains("starchive pull --from"),
        "{doc}"
    );

    // Once the whole archive is pushed there, a pull takes the rest.
    // (The fixture's failed ref stays failed: exit 3.)
    let doc = run(starchive(&fx.archive).args(["--json", "fetch", "--storage", FIXTURE_BUCKET]))
        .expect_code(3)
        .json();
    assert!(doc["done"].as_u64() > Some(0), "{doc}");
    assert_eq!(doc["pending"], 0, "{doc}");
    run(&mut push(&fx.archive, &url, Vec::new())).expect_code(FIXTURE_PUSH_EXIT);
    let doc = run(&mut pull(&pulled, &url, Vec::new()))
        .expect_code(0)
        .json();
    assert!(doc["done"].as_u64() > Some(0), "{doc}");
    assert_eq!(doc["pending"], 0, "{doc}");
    assert_same_archive(&pulled, &fx.archive);
}

#[test]
fn a_pull_into_its_own_source_is_refused_and_writes_nothing() {
    let p = pushed_to_a_directory("mirror");
    let before = files_under(&p.dest);
    let inside = p.dest.join("restored");
    let sub = format!("{}/sub/..", p.url());
    for (archive, from) in [
        (p.dest.clone(), p.url()),
        (p.dest.clone(), sub),
        (inside.clone(), p.url()),
    ] {
        let out = run(&mut pull(&archive, &from, Vec::new()));
        out.expect_code(2);
        assert!(
            out.stderr.contains("--from") && out.stderr.contains("archive"),
            "{}",
            out.stderr
        );
        assert!(files_under(&p.dest) == before, "{from} into {archive:?}");
        assert!(!inside.exists());
    }
}

#[test]
fn a_pull_whose_catalog_copy_is_bad_leaves_nothing_behind() {
    let p = pushed_to_a_directory("cas");
    let copy = p.dest.join(CATALOG_COPY);
    let mut bytes = std::fs::read(&copy).expect("copy");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&copy, &bytes).expect("corrupt");
    let dir = temp_dir();
    let fresh = dir.path().join("fresh");
    let out = p.pull(&fresh);
    out.expect_code(1);
    assert!(!fresh.exists(), "{:?}", files_under(&fresh));
    // Into an existing empty directory: it stays, empty.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    p.pull(&empty).expect_code(1);
    assert_eq!(files_under(&empty).len(), 0, "{:?}", files_under(&empty));
}

#[test]
fn a_pull_brings_a_newer_push_unless_the_archive_has_snapshots_of_its_own() {
    let p = pushed_to_a_directory("mirror");
    let dir = temp_dir();
    let pulled = dir.path().join("pulled");
    p.pull(&pulled).expect_code(0);
    let latest = |archive: &Path| -> i64 {
        catalog(archive)
            .query_row("SELECT max(id) FROM snapshots", [], |r| r.get(0))
            .expect("snapshot")
    };
    let snapshot = |archive: &Path| {
        run(starchive(archive).args([
            "--json",
            "snapshot",
            "--db",
            crate::support::dataset::FIXTURE_DB,
        ]))
        .expect_code(0);
    };
    // The first machine snapshots and pushes again: the pull takes it.
    snapshot(&p.fx.archive);
    run(&mut push(&p.fx.archive, &p.url(), Vec::new())).expect_code(FIXTURE_PUSH_EXIT);
    let newer = latest(&p.fx.archive);
    assert!(newer > latest(&pulled));
    let doc = p.pull(&pulled).expect_code(0).json();
    let notes = doc["notes"].to_string();
    assert!(
        notes.contains(&format!("holds snapshot {newer}, newer")),
        "{doc}"
    );
    assert_eq!(latest(&pulled), newer);
    assert_same_archive(&pulled, &p.fx.archive);
    // Again: the same snapshot, nothing to say.
    let doc = p.pull(&pulled).expect_code(0).json();
    assert!(doc.get("notes").is_none(), "{doc}");

    // The pulled archive snapshots on its own: a newer push there is
    // refused, and the archive is left as it was.
    snapshot(&pulled);
    let own = latest(&pulled);
    let before = files_under(&pulled);
    snapshot(&p.fx.archive);
    snapshot(&p.fx.archive);
    run(&mut push(&p.fx.archive, &p.url(), Vec::new())).expect_code(FIXTURE_PUSH_EXIT);
    let out = p.pull(&pulled);
    out.expect_code(1);
    assert!(
        out.stderr.contains("snapshots of its own") && out.stderr.contains("new directory"),
        "{}",
        out.stderr
    );
    assert_eq!(latest(&pulled), own);
    assert!(files_under(&pulled) == before, "left as it was");

    // A destination older than the archive: said, and pulled from.
    let older = dir.path().join("older");
    p.pull(&older).expect_code(0);
    snapshot(&older);
    let doc = p.pull(&older).expect_code(0).json();
    assert!(
        doc["notes"].to_string().contains("older than this archive"),
        "{doc}"
    );
}

/// The distinct envs of a catalog table's rows (`''` for none), in order.
fn envs_of(archive: &Path, table: &str) -> Vec<String> {
    let conn = catalog(archive);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT DISTINCT coalesce(env, '') FROM {table} ORDER BY 1"
        ))
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn a_destination_pushed_for_one_env_pulls_as_that_env_alone() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let url = dest.to_string_lossy().into_owned();
    run(push(&fx.archive, &url, Vec::new()).args(["--env", "prod"])).expect_code(0);
    let dir = temp_dir();
    let pulled = dir.path().join("pulled");
    let doc = run(&mut pull(&pulled, &url, Vec::new()))
        .expect_code(0)
        .json();
    assert_eq!(
        (&doc["pending"], &doc["failed"]),
        (&0.into(), &0.into()),
        "{doc}"
    );

    // Only prod's rows and refs are in the copy: no other env's row is in
    // the file at all.
    assert_eq!(envs_of(&pulled, "refs"), ["prod"]);
    assert_eq!(envs_of(&pulled, "sessions"), ["prod"]);
    let others: Vec<String> = {
        let conn = catalog(&fx.archive);
        let mut stmt = conn
            .prepare("SELECT id FROM sessions WHERE env IS NOT 'prod'")
            .expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert!(!others.is_empty());
    let file = std::fs::read(pulled.join("catalog.sqlite")).expect("catalog");
    for id in &others {
        assert!(
            !file.windows(id.len()).any(|w| w == id.as_bytes()),
            "session {id} of another env is in the pulled catalog"
        );
    }

    // plan, status, verify and check speak of prod alone, as the archive
    // that pushed does with --env prod.
    let scoped = |archive: &Path, cmd: &str, env: &[&str]| {
        let out = run(starchive(archive).args(["--json", cmd]).args(env));
        (out.code, out.json())
    };
    for cmd in ["plan", "check"] {
        assert_eq!(
            scoped(&pulled, cmd, &[]),
            scoped(&fx.archive, cmd, &["--env", "prod"]),
            "{cmd}"
        );
    }
    let (code, status) = scoped(&pulled, "status", &[]);
    assert_eq!(code, Some(0));
    assert_eq!(status["failures"], serde_json::json!([]), "{status}");
    run(starchive(&pulled).args(["verify", "--deep", "--to", &url])).expect_code(0);

    // test pushed there too: the next pull brings its rows and refs.
    run(push(&fx.archive, &url, Vec::new()).args(["--env", "test"])).expect_code(3);
    let doc = run(&mut pull(&pulled, &url, Vec::new()))
        .expect_code(0)
        .json();
    assert!(doc["notes"].to_string().contains("more envs"), "{doc}");
    assert_eq!(envs_of(&pulled, "refs"), ["prod", "test"]);
    assert_eq!(
        scoped(&pulled, "plan", &[]),
        scoped(&fx.archive, "plan", &["--env", "prod", "--env", "test"])
    );
    run(starchive(&pulled).args(["verify", "--deep", "--to", &url])).expect_code(0);
}

/// A sticker without a user_id has no mirror key: the push to a mirror
/// destination fails it, saying to use cas. An archive pulled from there
/// lacks its file for good, and its push says so, not that a pull would
/// finish it.
#[test]
fn a_ref_the_source_could_not_place_is_not_promised_by_a_pull() {
    let dir = temp_dir();
    let tg = crate::support::telegram::FakeTelegram::new();
    for (id, seed) in [("tg-a", 1), ("tg-b", 2)] {
        tg.add_file(
            id,
            "stickers/f.webp",
            crate::support::dataset::sticker_bytes(seed, 600),
        );
    }
    let mut db = crate::support::dataset::Db::default();
    db.session("s1", "1", "prod", None, None)
        .sticker("a", "1", "s1", Some("tg-a"), None);
    let db_dir = dir.path().join("db");
    db.write(&db_dir);
    // Sticker b: no user_id (an empty field is NULL).
    let stickers = db_dir.join("stickers.csv");
    let mut text = std::fs::read_to_string(&stickers).expect("csv");
    text.push_str("\"b\",,\"s1\",,,,\"tg-b\",,2025-01-01 00:00:00+00\n");
    std::fs::write(&stickers, text).expect("csv");
    let archive = dir.path().join("archive");
    run(starchive(&archive).arg("snapshot").arg("--db").arg(&db_dir)).expect_code(0);
    run(starchive(&archive)
        .args(["fetch", "--telegram-rate", "1000"])
        .envs(tg.env()))
    .expect_code(0);

    let dest = dir.path().join("dest").to_string_lossy().into_owned();
    let doc = run(&mut push(&archive, &dest, Vec::new()))
        .expect_code(3)
        .json();
    assert_eq!(doc["failed"], 1, "{doc}");
    let status = run(starchive(&archive).args(["--json", "status"]))
        .expect_code(0)
        .json();
    let reason = status["failures"].to_string();
    assert!(
        reason.contains("no user_id") && reason.contains("--layout cas"),
        "{status}"
    );

    let pulled = dir.path().join("pulled");
    run(&mut pull(&pulled, &dest, Vec::new())).expect_code(0);
    // Pending, not failed: the push exits 0.
    let doc = run(&mut push(
        &pulled,
        &dir.path().join("again").to_string_lossy(),
        Vec::new(),
    ))
    .expect_code(0)
    .json();
    let notes = doc["notes"].to_string();
    assert!(!notes.contains("finishes the pull"), "{doc}");
    assert!(
        notes.contains(&format!("{dest} lacks their files")) && notes.contains("--layout cas"),
        "{doc}"
    );
}
