//! The catalog copy that `push` writes under `_starchive/` (SPEC §5):
//! zstd-compressed, cut into parts when larger than the part size, the
//! parts named with their sizes and sha256 in the manifest's first line.
//!
//! The part size is lowered with push's hidden `--catalog-part-size`, so
//! that the fixture's small catalog makes a copy of several parts.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::push::{
    CATALOG_COPY, FIXTURE_PUSH_EXIT, MANIFEST, bucket_objects, fetched_fixture, manifest_lines,
    mirror_objects, push_cmd,
};
use crate::support::objects::files_under;
use crate::support::run::{catalog, run, starchive};
use crate::support::s3::TestS3;
use crate::support::sha256_hex;
use crate::support::supabase::supabase_with_upload_limit;

const LEGACY_COPY: &str = "_starchive/catalog.sqlite";

/// Every ref of a catalog, as one sortable text per ref.
pub(crate) fn refs_of(conn: &rusqlite::Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT json_array(class, env, row_id, session_id, telegram_file_id, storage_key,
                               state, sha256, size, type, reason)
             FROM v_refs ORDER BY 1",
        )
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// The manifest's first line, and the catalog copy it names read from
/// `objects` (a destination's content): each object checked against its
/// size and sha256, the concatenation decompressed into a file of `dir`.
#[track_caller]
fn read_copy(objects: &BTreeMap<String, Vec<u8>>, dir: &Path) -> (Value, rusqlite::Connection) {
    let header = manifest_lines(&objects[MANIFEST]).swap_remove(0);
    assert_eq!(header["format"], 2, "{header}");
    let named = header["catalog"].as_array().expect("catalog objects named");
    let mut stream = Vec::new();
    for object in named {
        let key = object["key"].as_str().expect("key");
        let bytes = objects
            .get(key)
            .unwrap_or_else(|| panic!("{key} is missing"));
        assert_eq!(object["size"], bytes.len() as u64, "{object}");
        assert_eq!(object["sha256"], sha256_hex(bytes), "{object}");
        stream.extend_from_slice(bytes);
    }
    let file = dir.join(format!("copy-{}.sqlite", sha256_hex(&stream)));
    std::fs::write(
        &file,
        zstd::decode_all(&stream[..]).expect("one zstd stream"),
    )
    .expect("write");
    let conn =
        rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the copy is a SQLite database");
    (header, conn)
}

/// The copy's keys at a destination.
fn copy_keys(objects: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    objects
        .keys()
        .filter(|k| k.starts_with("_starchive/catalog"))
        .cloned()
        .collect()
}

fn parts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{CATALOG_COPY}.{i:03}")).collect()
}

/// The next push writes `_starchive/` again, as after a change.
fn forget_manifest(archive: &Path) {
    rusqlite::Connection::open(archive.join("catalog.sqlite"))
        .expect("open")
        .execute("UPDATE destinations SET manifest_sha256 = NULL", [])
        .expect("forget");
}

#[test]
fn catalog_copy_in_parts_at_s3_is_the_catalog() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("parts");
    let url = s3.store_url("parts", "");
    run(push_cmd(&fx.archive, &url, Some(&s3)).args(["--catalog-part-size", "2KiB"]))
        .expect_code(FIXTURE_PUSH_EXIT);
    let objects = bucket_objects(&s3, "parts");
    let (header, copy) = read_copy(&objects, fx.dir.path());
    let named: Vec<&str> = header["catalog"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| o["key"].as_str().expect("key"))
        .collect();
    assert!(named.len() >= 3, "a copy of several parts: {header}");
    assert_eq!(named, parts(named.len()), "parts .000, .001, … in order");
    assert_eq!(copy_keys(&objects), parts(named.len()), "nothing else");
    for key in &named {
        assert!(objects[*key].len() <= 2048, "{key} over the part size");
        let meta = s3.user_metadata("parts", key);
        assert_eq!(
            meta.get("sha256"),
            Some(&sha256_hex(&objects[*key])),
            "{key}"
        );
    }
    let local = catalog(&fx.archive);
    assert_eq!(refs_of(&copy), refs_of(&local), "the copy holds every ref");
    let id: String = local
        .query_row(
            "SELECT value FROM settings WHERE key = 'archive_id'",
            [],
            |r| r.get(0),
        )
        .expect("the catalog has an archive id");
    assert_eq!(header["archive_id"], id, "{header}");
    assert_eq!(id.len(), 32, "{id}");
}

#[test]
fn catalog_copy_in_parts_at_a_directory_replaces_older_copies() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let url = dest.to_string_lossy().into_owned();
    // What an older push left: a plain catalog.sqlite, and more parts than now.
    std::fs::create_dir_all(dest.join("_starchive")).expect("mkdir");
    std::fs::write(dest.join(LEGACY_COPY), b"SQLite format 3\0old").expect("plant");
    let stale_part = format!("{CATALOG_COPY}.077");
    std::fs::write(dest.join(&stale_part), b"an old part").expect("plant");

    run(push_cmd(&fx.archive, &url, None).args(["--catalog-part-size", "3KiB"]))
        .expect_code(FIXTURE_PUSH_EXIT);
    let files = files_under(&dest);
    let (header, copy) = read_copy(&files, fx.dir.path());
    let n = header["catalog"].as_array().expect("objects").len();
    assert!(n >= 2, "{header}");
    assert_eq!(copy_keys(&files), parts(n), "the older copies are gone");
    assert_eq!(refs_of(&copy), refs_of(&catalog(&fx.archive)));

    // Smaller parts, more of them; then one object: what the last push
    // wrote is all there is.
    forget_manifest(&fx.archive);
    run(push_cmd(&fx.archive, &url, None).args(["--catalog-part-size", "1KiB"]))
        .expect_code(FIXTURE_PUSH_EXIT);
    let files = files_under(&dest);
    let (header, _) = read_copy(&files, fx.dir.path());
    let more = header["catalog"].as_array().expect("objects").len();
    assert!(more > n, "{more} parts of 1 KiB, {n} of 3 KiB");
    assert_eq!(copy_keys(&files), parts(more));

    forget_manifest(&fx.archive);
    run(&mut push_cmd(&fx.archive, &url, None)).expect_code(FIXTURE_PUSH_EXIT);
    let files = files_under(&dest);
    let (header, copy) = read_copy(&files, fx.dir.path());
    assert_eq!(header["catalog"].as_array().map(Vec::len), Some(1));
    assert_eq!(copy_keys(&files), [CATALOG_COPY], "one object, no parts");
    assert_eq!(refs_of(&copy), refs_of(&catalog(&fx.archive)));
}

/// The largest object the limited Supabase server takes: more than a
/// fixture sticker (4 KiB) and the manifest, less than the whole copy.
const SUPABASE_LIMIT: u64 = 6_000;

/// Against the real Supabase Storage server started with a lowered
/// `UPLOAD_FILE_SIZE_LIMIT` (a free project refuses files over 50 MB): a
/// copy in one object is refused, by name, with exit 3 once every sticker
/// is up; a copy in parts under the limit goes up, and is the catalog.
#[test]
fn supabase_size_limit_refuses_a_whole_copy_and_takes_it_in_parts() {
    let server = supabase_with_upload_limit(SUPABASE_LIMIT);
    let bucket = server.bucket();
    let url = bucket.store_url("");
    let fx = fetched_fixture();

    let push = |part_size: Option<&str>| {
        let mut cmd = starchive(&fx.archive);
        cmd.args(["--json", "push", "--to", &url])
            .envs(server.env("TO"));
        if let Some(size) = part_size {
            cmd.args(["--catalog-part-size", size]);
        }
        run(&mut cmd)
    };
    let out = push(None);
    out.expect_code(3);
    let doc = out.json();
    assert_eq!(doc["failed"], 1, "only the ref whose fetch failed: {doc}");
    assert!(
        doc["refused"]
            .to_string()
            .contains("_starchive/catalog.sqlite.zst")
            && doc["refused"].to_string().contains("too large"),
        "the refused object is named: {doc}"
    );
    let objects = bucket.objects.all();
    let stickers: BTreeMap<String, Vec<u8>> = objects
        .iter()
        .filter(|(k, _)| !k.starts_with("_starchive/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(stickers, mirror_objects(), "every sticker is up");
    assert!(!objects.contains_key(CATALOG_COPY), "{:?}", objects.keys());
    let header = manifest_lines(&objects[MANIFEST]).swap_remove(0);
    assert_eq!(header["catalog"], Value::Null, "no copy to name: {header}");

    // Parts under the limit: the next push writes the copy it could not.
    let doc = push(Some("4KiB")).expect_code(FIXTURE_PUSH_EXIT).json();
    assert_eq!(doc.get("refused"), None, "{doc}");
    assert_eq!(doc["done"], 0, "the stickers stay pushed: {doc}");
    let objects = bucket.objects.all();
    let (header, copy) = read_copy(&objects, fx.dir.path());
    let named = header["catalog"].as_array().expect("objects");
    let total: u64 = named.iter().filter_map(|o| o["size"].as_u64()).sum();
    assert!(
        total > SUPABASE_LIMIT,
        "the copy ({total} bytes) must exceed the limit"
    );
    assert_eq!(copy_keys(&objects), parts(named.len()));
    assert_eq!(refs_of(&copy), refs_of(&catalog(&fx.archive)));
}
