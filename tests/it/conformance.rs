//! The store conformance suite: the same tests of fetch (from the bucket),
//! push (mirror and cas, multipart, server-side copy, sha256 metadata,
//! Content-Type), verify (`--deep`) and backfill, written once against a
//! [`Backend`] and run on each store starchive is tested with:
//!
//! - `conformance::local`: a local directory;
//! - `conformance::s3s`: s3s-fs, in process;
//! - `conformance::supabase`: the real Supabase Storage server;
//! - `conformance::moto`: AWS S3's behaviour as the moto server has it.
//!
//! `cargo test --test it conformance::supabase` runs it against Supabase
//! Storage alone.

use std::collections::BTreeMap;

use crate::backfill::{DANGLING_KEY, fixture_fills, fx};
use crate::push::{
    FIXTURE_BLOB_BYTES, FIXTURE_BLOBS, FIXTURE_PUSH_EXIT, FIXTURE_PUSHED_REFS, MANIFEST,
    cas_objects, fetched_fixture, mirror_objects,
};
use crate::support::backend::{Backend, Bucket, on_every_store};
use crate::support::dataset::{FIXTURE_BUCKET, FIXTURE_DB, FIXTURE_TELEGRAM, sticker_bytes};
use crate::support::pg::TestPg;
use crate::support::run::{run, starchive};
use crate::support::sha256_hex;
use crate::support::telegram::FakeTelegram;
use crate::verify::problem_names;

on_every_store!(
    fetch_reads_every_object_of_the_bucket,
    mirror_push_places_the_bot_keys_with_their_type_and_sha256,
    cas_push_writes_each_blob_once_at_its_hash,
    big_object_goes_up_in_parts,
    deep_verify_names_bad_and_missing_objects,
    verify_marks_what_it_finds_for_the_next_push_and_fetch,
    verify_before_a_first_push_reports_other_bytes_push_leaves_them,
    backfill_writes_objects_and_keys,
);

/// The fixture refs whose storage key `fixtures/bucket` holds.
const REFS_IN_THE_BUCKET: u64 = 15;

/// `--to` with the bucket's credentials.
fn with_to(cmd: &mut std::process::Command, bucket: &Bucket) {
    cmd.args(["--to", bucket.url()]).envs(bucket.env("TO"));
}

/// The objects of `bucket` but those under `_starchive/`, which must hold
/// the manifest.
#[track_caller]
fn stickers_in(bucket: &Bucket) -> BTreeMap<String, Vec<u8>> {
    let mut objects = bucket.objects.all();
    assert!(
        objects.contains_key(MANIFEST),
        "no manifest in {:?}",
        objects.keys()
    );
    objects.retain(|k, _| !k.starts_with("_starchive/"));
    objects
}

#[track_caller]
fn assert_same(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>) {
    let keys = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(got), keys(want), "the keys");
    for (key, bytes) in want {
        assert!(got[key] == *bytes, "{key}: other bytes");
    }
}

/// Content-Type and `x-amz-meta-sha256` of every object, where the store
/// keeps them.
#[track_caller]
fn assert_described(bucket: &Bucket, objects: &BTreeMap<String, Vec<u8>>) {
    if !bucket.keeps_metadata {
        return;
    }
    for (key, bytes) in objects {
        let head = bucket.objects.head(key);
        assert_eq!(head.size, bytes.len() as u64, "{key}");
        assert_eq!(
            head.metadata.get("sha256"),
            Some(&sha256_hex(bytes)),
            "{key}: {head:?}"
        );
        let want = match key.rsplit('.').next() {
            Some("webp") => "image/webp",
            Some("png") => "image/png",
            Some("jpg") => "image/jpeg",
            Some("webm") => "video/webm",
            Some("tgs") => "application/x-tgsticker",
            _ => "application/octet-stream",
        };
        // The cas layout's keys have no extension: the type follows the bytes.
        if key.contains('.') {
            assert_eq!(head.content_type.as_deref(), Some(want), "{key}");
        } else {
            assert!(head.content_type.is_some(), "{key}: {head:?}");
        }
    }
}

fn fetch_reads_every_object_of_the_bucket(backend: &Backend) {
    let source = backend.bucket();
    assert_eq!(source.objects.put_dir(FIXTURE_BUCKET), 13);
    let dir = crate::support::temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    // The bucket alone first: every ref whose key it has is fetched from it,
    // none is taken for dangling.
    let doc = run(starchive(&archive)
        .args(["--json", "fetch", "--storage", source.url()])
        .envs(source.env("STORAGE")))
    .expect_code(0)
    .json();
    assert_eq!(doc["done"], REFS_IN_THE_BUCKET, "{doc}");
    assert_eq!(doc["pending"], 11, "the refs only Telegram has: {doc}");
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    let doc = run(starchive(&archive)
        .args(["--json", "fetch", "--telegram-rate", "1000"])
        .args(["--storage", source.url()])
        .envs(source.env("STORAGE"))
        .envs(tg.env()))
    .expect_code(3)
    .json();
    assert_eq!(doc["failed"], 1, "the invalid file_id alone: {doc}");
    assert_eq!(doc["pending"], 0, "{doc}");
    // Every blob, named by its hash.
    let mut blobs = 0;
    let mut stack = vec![archive.join("blobs")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read blobs").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.file_name().and_then(|n| n.to_str()).expect("name");
                let bytes = std::fs::read(&path).expect("blob");
                assert!(name.starts_with(&sha256_hex(&bytes)), "{}", path.display());
                blobs += 1;
            }
        }
    }
    assert_eq!(blobs, FIXTURE_BLOBS);
}

fn mirror_push_places_the_bot_keys_with_their_type_and_sha256(backend: &Backend) {
    let fx = fetched_fixture();
    let dest = backend.bucket();
    let mut cmd = starchive(&fx.archive);
    with_to(cmd.args(["--json", "push"]), &dest);
    let doc = run(&mut cmd).expect_code(FIXTURE_PUSH_EXIT).json();
    assert_eq!(doc["done"], FIXTURE_PUSHED_REFS, "{doc}");
    // Two keys share one blob: it is sent once and copied on the server.
    assert_eq!(
        doc["bytes"], FIXTURE_BLOB_BYTES,
        "each blob sent once: {doc}"
    );
    let objects = stickers_in(&dest);
    assert_same(&objects, &mirror_objects());
    assert_described(&dest, &objects);

    let mut again = starchive(&fx.archive);
    with_to(again.args(["--json", "push"]), &dest);
    let doc = run(&mut again).expect_code(FIXTURE_PUSH_EXIT).json();
    assert_eq!(
        (doc["done"].as_u64(), doc["bytes"].as_u64()),
        (Some(0), Some(0)),
        "{doc}"
    );
    assert_eq!(doc["skipped"], FIXTURE_PUSHED_REFS, "{doc}");
}

fn cas_push_writes_each_blob_once_at_its_hash(backend: &Backend) {
    let fx = fetched_fixture();
    let dest = backend.bucket();
    let mut cmd = starchive(&fx.archive);
    with_to(cmd.args(["--json", "push", "--layout", "cas"]), &dest);
    let doc = run(&mut cmd).expect_code(FIXTURE_PUSH_EXIT).json();
    assert_eq!(doc["done"], FIXTURE_PUSHED_REFS, "{doc}");
    assert_eq!(doc["bytes"], FIXTURE_BLOB_BYTES, "{doc}");
    let want = cas_objects();
    let objects = stickers_in(&dest);
    assert_same(&objects, &want);
    assert_described(&dest, &objects);
    let mut verify = starchive(&fx.archive);
    with_to(verify.args(["verify", "--deep"]), &dest);
    run(&mut verify).expect_code(0);
}

fn big_object_goes_up_in_parts(backend: &Backend) {
    // Over the multipart threshold (8 MiB): a first part of 8 MiB, a last
    // one smaller, as AWS (moto) wants them.
    const BIG: usize = 9 * 1024 * 1024 + 12_345;
    let dir = crate::support::temp_dir();
    let tg = FakeTelegram::new();
    let big = sticker_bytes(42, BIG);
    tg.add_file("tg-big", "stickers/big.webp", big.clone());
    let mut db = crate::support::dataset::Db::default();
    db.session("s1", "7", "prod", None, None)
        .sticker("big", "7", "s1", Some("tg-big"), None);
    let archive = dir.path().join("archive");
    db.snapshot(&dir.path().join("db"), &archive);
    run(starchive(&archive)
        .args([
            "fetch",
            "--max-file-size",
            "20MiB",
            "--telegram-rate",
            "1000",
        ])
        .envs(tg.env()))
    .expect_code(0);
    let dest = backend.bucket();
    let mut cmd = starchive(&archive);
    with_to(cmd.args(["--json", "push"]), &dest);
    let doc = run(&mut cmd).expect_code(0).json();
    assert_eq!(doc["done"], 1, "{doc}");
    let key = "stickers/7/s1/backfill_big.webp";
    let objects = stickers_in(&dest);
    assert_same(&objects, &BTreeMap::from([(key.to_string(), big)]));
    assert_described(&dest, &objects);
    let mut verify = starchive(&archive);
    with_to(verify.args(["verify", "--deep"]), &dest);
    run(&mut verify).expect_code(0);
}

fn deep_verify_names_bad_and_missing_objects(backend: &Backend) {
    let fx = fetched_fixture();
    let dest = backend.bucket();
    let mut push = starchive(&fx.archive);
    with_to(push.arg("push"), &dest);
    run(&mut push).expect_code(FIXTURE_PUSH_EXIT);
    let verify = || {
        let mut cmd = starchive(&fx.archive);
        with_to(cmd.args(["--json", "verify", "--deep"]), &dest);
        run(&mut cmd)
    };
    verify().expect_code(0);

    // Same size, other bytes, put by someone else (no sha256 metadata).
    let bad = "stickers/100000004/00000000-0000-4000-8000-000000000201/1741172400000_1.webp";
    let mut bytes = dest.objects.get(bad).expect("pushed");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    dest.objects.put(bad, bytes);
    let gone = "pack_sheets/session_00000000-0000-4000-8000-000000000110.jpg";
    dest.objects.delete(gone);

    let doc = verify().expect_code(3).json();
    assert_eq!(doc["objects_bad"], 1, "{doc}");
    assert_eq!(doc["objects_missing"], 1, "{doc}");
    let named = problem_names(&doc);
    assert!(named.contains(&bad) && named.contains(&gone), "{doc}");
}

fn backfill_writes_objects_and_keys(backend: &Backend) {
    const DB: &str = "bot";
    let pg = TestPg::start();
    pg.fixture_db(DB);
    let db = pg.url(DB);
    let bucket = backend.bucket();
    bucket.objects.put_dir(FIXTURE_BUCKET);
    let before = bucket.objects.all();
    let dir = crate::support::temp_dir();
    let archive = dir.path().join("archive");
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    let run = |args: &[&str]| {
        let mut cmd = starchive(&archive);
        cmd.args(args)
            .envs(bucket.env("STORAGE"))
            .envs(bucket.env("TO"))
            .envs(tg.env());
        run(&mut cmd)
    };
    run(&["snapshot", "--db", &db]).expect_code(0);
    run(&[
        "fetch",
        "--telegram-rate",
        "1000",
        "--storage",
        bucket.url(),
    ])
    .expect_code(3);
    let doc = run(&[
        "--json",
        "backfill",
        "--apply",
        "--db",
        &db,
        "--to",
        bucket.url(),
    ])
    .expect_code(3)
    .json();
    assert_eq!(doc["failed"], 1, "only the refused file_id: {doc}");

    let after = bucket.objects.all();
    for (key, bytes) in &before {
        assert!(after.get(key) == Some(bytes), "{key} was changed");
    }
    let gained: BTreeMap<String, Vec<u8>> = after
        .into_iter()
        .filter(|(k, _)| !before.contains_key(k))
        .collect();
    for (table, id, column, key) in fixture_fills() {
        let value = pg.psql(
            DB,
            &format!("SELECT {column} FROM public.{table} WHERE id = '{id}';"),
        );
        assert_eq!(value.trim_end(), key, "{table} {id} {column}");
        assert!(
            gained.contains_key(&key) || before.contains_key(&key),
            "{key} is in the bucket"
        );
    }
    assert!(
        gained.contains_key(DANGLING_KEY),
        "the dangling key is written back"
    );
    assert_described(&bucket, &gained);
    assert_eq!(
        pg.psql(
            DB,
            "SELECT id FROM stickers WHERE result_storage_path IS NULL;"
        )
        .trim_end(),
        fx(315)
    );
}

/// SPEC §3: an object `verify` finds missing or bad is uploaded again by the
/// next `push`; a local blob it finds missing or bad puts its refs back to
/// pending, and the next `fetch` downloads it again.
fn verify_marks_what_it_finds_for_the_next_push_and_fetch(backend: &Backend) {
    let source = backend.bucket();
    source.objects.put_dir(FIXTURE_BUCKET);
    let dir = crate::support::temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    let fetch = || {
        run(starchive(&archive)
            .args(["--json", "fetch", "--storage", source.url()])
            .envs(source.env("STORAGE")))
    };
    assert_eq!(fetch().expect_code(0).json()["done"], REFS_IN_THE_BUCKET);
    let dest = backend.bucket();
    let push = || {
        let mut cmd = starchive(&archive);
        with_to(cmd.args(["--json", "push"]), &dest);
        run(&mut cmd)
    };
    let verify = |args: &[&str]| {
        let mut cmd = starchive(&archive);
        cmd.args(["--json", "verify"]).args(args);
        if !args.is_empty() {
            with_to(&mut cmd, &dest);
        }
        run(&mut cmd)
    };
    assert_eq!(push().expect_code(0).json()["done"], REFS_IN_THE_BUCKET);
    let pushed = stickers_in(&dest);

    // At the destination: other bytes of the same size (only --deep sees
    // them), an object gone, one cut short.
    let keys: Vec<&String> = pushed.keys().collect();
    let (other, gone, short) = (keys[0], keys[1], keys[2]);
    let mut bytes = pushed[other].clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    dest.objects.put(other, bytes);
    dest.objects.delete(gone);
    dest.objects.put(short, pushed[short][..10].to_vec());
    let doc = verify(&["--deep"]).expect_code(3).json();
    assert_eq!(doc["objects_missing"], 1, "{doc}");
    assert_eq!(doc["objects_bad"], 2, "{doc}");
    assert_eq!(doc["objects_to_push_again"], 3, "{doc}");
    let doc = push().expect_code(0).json();
    let done = doc["done"].as_u64().expect("done");
    assert!(done >= 3, "the three objects' refs: {doc}");
    assert_eq!(doc["skipped"].as_u64(), Some(REFS_IN_THE_BUCKET - done));
    assert_same(&stickers_in(&dest), &pushed);
    assert_eq!(verify(&["--deep"]).expect_code(0).json()["objects_bad"], 0);
    assert_eq!(
        push().expect_code(0).json()["done"],
        0,
        "nothing left to upload"
    );

    // In the archive: one blob gone, one with other bytes.
    let blob_path = |sha: &str| archive.join("blobs").join(&sha[..2]).join(sha);
    let shas: Vec<String> = {
        let conn = rusqlite::Connection::open(archive.join("catalog.sqlite")).expect("catalog");
        let mut stmt = conn
            .prepare("SELECT sha256 FROM blobs ORDER BY sha256 LIMIT 2")
            .expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let originals: Vec<Vec<u8>> = shas
        .iter()
        .map(|sha| std::fs::read(blob_path(sha)).expect("blob"))
        .collect();
    std::fs::remove_file(blob_path(&shas[0])).expect("remove a blob");
    let mut bytes = originals[1].clone();
    bytes[0] ^= 0xff;
    std::fs::write(blob_path(&shas[1]), bytes).expect("spoil a blob");
    let pending = || -> u64 {
        rusqlite::Connection::open(archive.join("catalog.sqlite"))
            .expect("catalog")
            .query_row(
                "SELECT count(*) FROM v_refs WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )
            .expect("count")
    };
    let pending_before = pending();
    let doc = verify(&[]).expect_code(3).json();
    assert_eq!(doc["blobs_bad"], 2, "{doc}");
    let again = doc["refs_to_fetch_again"]
        .as_u64()
        .expect("refs_to_fetch_again");
    assert!(again >= 2, "{doc}");
    assert!(!blob_path(&shas[1]).exists(), "the bad bytes are gone");
    assert_eq!(pending() - pending_before, again, "the refs of both blobs");
    let doc = fetch().expect_code(0).json();
    assert_eq!(doc["done"], again, "{doc}");
    for (sha, bytes) in shas.iter().zip(&originals) {
        assert!(
            std::fs::read(blob_path(sha)).expect("fetched again") == *bytes,
            "{sha}"
        );
    }
    assert_eq!(verify(&[]).expect_code(0).json()["blobs_bad"], 0);
    // The destination still holds them: nothing to push.
    assert_eq!(push().expect_code(0).json()["done"], 0);
}

/// A store never pushed to from this archive, holding other bytes of the
/// right size at a key: `verify --deep` reports them, but a push does not
/// overwrite what it did not write (the key may be the bot's newer file): it
/// takes them for present, and every verify reports them, until they are
/// deleted and a push writes the archive's. Where the store keeps metadata,
/// objects without starchive's sha256 metadata are not its own, right bytes
/// or not: verify, deep or not, finds every one bad.
fn verify_before_a_first_push_reports_other_bytes_push_leaves_them(backend: &Backend) {
    let source = backend.bucket();
    source.objects.put_dir(FIXTURE_BUCKET);
    let dir = crate::support::temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    run(starchive(&archive)
        .args(["fetch", "--storage", source.url()])
        .envs(source.env("STORAGE")))
    .expect_code(0);
    let dest = backend.bucket();
    dest.objects.put_dir(FIXTURE_BUCKET);
    let want = dest.objects.all();
    let stale = want.keys().next().expect("a key");
    let mut bytes = want[stale].clone();
    bytes[0] ^= 0xff;
    dest.objects.put(stale, bytes);

    let run = |args: &[&str]| {
        let mut cmd = starchive(&archive);
        with_to(cmd.arg("--json").args(args), &dest);
        run(&mut cmd)
    };
    let bad = if dest.keeps_metadata { want.len() } else { 1 };
    let doc = run(&["verify"])
        .expect_code(if dest.keeps_metadata { 3 } else { 0 })
        .json();
    assert_eq!(doc["objects_checked"], want.len(), "{doc}");
    let plain_bad = if dest.keeps_metadata { want.len() } else { 0 };
    assert_eq!(doc["objects_bad"], plain_bad, "plain: by metadata: {doc}");
    let doc = run(&["verify", "--deep"]).expect_code(3).json();
    assert_eq!(doc["objects_bad"], bad, "{doc}");
    assert_eq!(doc["objects_missing"], 0, "{doc}");
    assert_eq!(doc["objects_to_push_again"], 0, "not starchive's: {doc}");
    let stale_problem = doc["problems"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == stale.as_str()))
        .and_then(|p| p["problem"].as_str())
        .unwrap_or_default();
    assert!(stale_problem.starts_with("bytes hash to"), "{doc}");
    let stale_bytes = dest.objects.get(stale);
    let doc = run(&["push"]).expect_code(0).json();
    assert_eq!(doc["done"], 0, "everything there has the right size: {doc}");
    assert_eq!(dest.objects.get(stale), stale_bytes, "left untouched");
    let doc = run(&["verify", "--deep"]).expect_code(3).json();
    assert_eq!(doc["objects_bad"], bad, "reported again: {doc}");
    // Deleted by hand, the object is the archive's to write.
    dest.objects.delete(stale);
    let doc = run(&["push"]).expect_code(0).json();
    assert!(doc["done"].as_u64() >= Some(1), "{doc}");
    assert_same(&stickers_in(&dest), &want);
    let doc = run(&["verify", "--deep"])
        .expect_code(if dest.keeps_metadata { 3 } else { 0 })
        .json();
    assert_eq!(doc["objects_bad"], bad - 1, "{doc}");
}
