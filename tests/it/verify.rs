//! `verify`: the archive's blobs, and with `--to` the objects of a
//! destination, held against the catalog (SPEC §4); `--deep` reads and
//! hashes every object.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::push::{
    FIXTURE_PUSH_EXIT, assert_mirror, bucket_objects, fetched_fixture, mirror_objects, push_cmd,
};
use crate::support::dataset::{FIXTURE_BUCKET, FIXTURE_TELEGRAM};
use crate::support::run::{run, starchive};
use crate::support::s3::TestS3;
use crate::support::sha256_hex;
use crate::support::telegram::FakeTelegram;

/// The names of the problems a `verify --json` report lists.
pub(crate) fn problem_names(doc: &Value) -> Vec<&str> {
    doc["problems"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default()
}

/// `verify --deep --to URL` with the destination's credentials when it is S3.
pub(crate) fn verify_cmd(archive: &Path, to: &str, s3: Option<&TestS3>) -> Command {
    let mut cmd = starchive(archive);
    cmd.args(["verify", "--deep", "--to", to]);
    if let Some(s3) = s3 {
        cmd.envs(s3.env("TO"));
    }
    cmd
}

#[test]
fn corrupted_object_fails_deep_verify_and_is_named() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("bad");
    let url = s3.store_url("bad", "");
    run(&mut push_cmd(&fx.archive, &url, Some(&s3))).expect_code(FIXTURE_PUSH_EXIT);
    let dir_dest = fx.dir.path().join("dest");
    let dir_url = dir_dest.to_string_lossy().into_owned();
    run(&mut push_cmd(&fx.archive, &dir_url, None)).expect_code(FIXTURE_PUSH_EXIT);
    run(&mut verify_cmd(&fx.archive, &url, Some(&s3))).expect_code(0);

    let corrupt = "stickers/100000004/00000000-0000-4000-8000-000000000201/1741172400000_1.webp";
    let mut bytes = s3.get_file("bad", corrupt).expect("object");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    // Same size, other bytes, no metadata left to give it away.
    s3.put_file("bad", corrupt, &bytes);
    let out = run(&mut verify_cmd(&fx.archive, &url, Some(&s3)));
    out.expect_code(3);
    assert!(
        out.stdout.contains(corrupt),
        "the key is named:\n{}",
        out.stdout
    );
    let doc = run(verify_cmd(&fx.archive, &url, Some(&s3)).arg("--json"))
        .expect_code(3)
        .json();
    assert_eq!(doc["objects_bad"], 1, "{doc}");
    assert_eq!(doc["objects_missing"], 0, "{doc}");
    assert_eq!(doc["blobs_bad"], 0, "{doc}");

    // A missing object too, in a directory destination.
    let gone = "pack_sheets/session_00000000-0000-4000-8000-000000000110.jpg";
    std::fs::write(dir_dest.join(corrupt), &bytes).expect("corrupt the file");
    std::fs::remove_file(dir_dest.join(gone)).expect("remove");
    let doc = run(verify_cmd(&fx.archive, &dir_url, None).arg("--json"))
        .expect_code(3)
        .json();
    assert_eq!(doc["objects_bad"], 1, "{doc}");
    assert_eq!(doc["objects_missing"], 1, "{doc}");
    let named = problem_names(&doc);
    assert!(named.contains(&corrupt) && named.contains(&gone), "{doc}");
    // Without --deep, the missing object is still found.
    let mut shallow = starchive(&fx.archive);
    let out = run(shallow.args(["verify", "--to", &dir_url]));
    out.expect_code(3);
    assert!(out.stdout.contains(gone), "{}", out.stdout);
}

/// `fetch` again from the fixture's bucket and Bot API (the invalid file_id fails again).
fn fetch_again(archive: &Path) {
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    run(starchive(archive)
        .args(["--json", "fetch", "--storage", FIXTURE_BUCKET])
        .args(["--telegram-rate", "1000"])
        .envs(tg.env()))
    .expect_code(3);
}

/// `bytes` with the last byte flipped: same size, other sha256.
fn flipped(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if let Some(last) = out.last_mut() {
        *last ^= 0xff;
    }
    out
}

#[test]
fn verify_checks_the_objects_of_bad_local_blobs_too() {
    let fx = fetched_fixture();
    let want = mirror_objects();
    let s3 = TestS3::start();
    s3.create_bucket("both");
    let url = s3.store_url("both", "");
    let dir_dest = fx.dir.path().join("dest");
    let dir_url = dir_dest.to_string_lossy().into_owned();
    run(&mut push_cmd(&fx.archive, &url, Some(&s3))).expect_code(FIXTURE_PUSH_EXIT);
    run(&mut push_cmd(&fx.archive, &dir_url, None)).expect_code(FIXTURE_PUSH_EXIT);
    let blob_path = |bytes: &[u8]| {
        let sha = sha256_hex(bytes);
        fx.archive.join("blobs").join(&sha[..2]).join(&sha)
    };
    // Keys whose bytes no other key holds: one per case.
    let unique: Vec<&String> = want
        .iter()
        .filter(|(_, b)| want.values().filter(|o| o == b).count() == 1)
        .map(|(k, _)| k)
        .collect();
    let (k1, k2) = (unique[0].as_str(), unique[1].as_str());

    // k1: its blob corrupted locally, and its object at S3 too (same size,
    // the sha256 metadata of the right bytes left in place).
    std::fs::write(blob_path(&want[k1]), flipped(&want[k1])).expect("corrupt blob");
    std::fs::write(s3.bucket_dir("both").join(k1), flipped(&want[k1])).expect("corrupt object");
    let doc = run(verify_cmd(&fx.archive, &url, Some(&s3)).arg("--json"))
        .expect_code(3)
        .json();
    assert_eq!(doc["objects_checked"], want.len(), "every object: {doc}");
    assert_eq!(doc["objects_bad"], 1, "{doc}");
    assert_eq!(doc["blobs_bad"], 1, "{doc}");
    let problems = doc["problems"].as_array().expect("problems");
    let problem = |what: &str, name: &str| {
        problems
            .iter()
            .find(|p| p["what"] == what && p["name"] == name)
            .and_then(|p| p["problem"].as_str())
            .unwrap_or_else(|| panic!("no {what} problem for {name}: {doc}"))
            .to_string()
    };
    problem("object", k1);
    let sha1 = sha256_hex(&want[k1]);
    assert!(
        problem("blob", &sha1).ends_with(&format!(
            "expected {} bytes hashing to {sha1}",
            want[k1].len()
        )),
        "the bad blob's message gives the expected sha256: {doc}"
    );

    // k2: its blob gone locally, its object in the directory corrupted.
    std::fs::remove_file(blob_path(&want[k2])).expect("remove blob");
    std::fs::write(dir_dest.join(k2), flipped(&want[k2])).expect("corrupt file");
    let doc = run(verify_cmd(&fx.archive, &dir_url, None).arg("--json"))
        .expect_code(3)
        .json();
    // k1's refs are pending since the last verify: its object is checked
    // all the same (the directory holds it whole).
    assert_eq!(doc["objects_checked"], want.len(), "{doc}");
    assert_eq!(doc["objects_bad"], 1, "{doc}");
    assert_eq!(doc["blobs_bad"], 1, "{doc}");
    assert!(
        doc["problems"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["what"] == "object" && p["name"] == k2)),
        "{doc}"
    );

    // Fetched again and pushed, both destinations hold the right bytes.
    fetch_again(&fx.archive);
    run(&mut push_cmd(&fx.archive, &url, Some(&s3))).expect_code(FIXTURE_PUSH_EXIT);
    run(&mut push_cmd(&fx.archive, &dir_url, None)).expect_code(FIXTURE_PUSH_EXIT);
    assert_mirror(&bucket_objects(&s3, "both"));
    for key in [k1, k2] {
        assert_eq!(
            std::fs::read(dir_dest.join(key)).ok().as_ref(),
            Some(&want[key])
        );
    }
    run(&mut verify_cmd(&fx.archive, &url, Some(&s3))).expect_code(0);
    run(&mut verify_cmd(&fx.archive, &dir_url, None)).expect_code(0);
}

#[test]
fn object_without_our_metadata_fails_plain_verify_and_is_pushed_again() {
    let fx = fetched_fixture();
    let want = mirror_objects();
    let s3 = TestS3::start();
    s3.create_bucket("meta");
    let url = s3.store_url("meta", "");
    run(&mut push_cmd(&fx.archive, &url, Some(&s3))).expect_code(FIXTURE_PUSH_EXIT);
    let keys: Vec<&String> = want.keys().take(2).collect();
    let (other, same) = (keys[0].as_str(), keys[1].as_str());
    // Written by another tool, without metadata: other bytes of the same
    // size, and the right bytes.
    s3.put_file("meta", other, flipped(&want[other]));
    s3.put_file("meta", same, &want[same]);
    let plain = |s3: &TestS3| {
        let mut cmd = starchive(&fx.archive);
        cmd.args(["--json", "verify", "--to", &url])
            .envs(s3.env("TO"));
        cmd
    };
    let doc = run(&mut plain(&s3)).expect_code(3).json();
    assert_eq!(doc["objects_bad"], 2, "{doc}");
    assert_eq!(doc["objects_to_push_again"], 2, "{doc}");
    for key in [other, same] {
        assert!(
            doc["problems"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| {
                    p["name"] == key
                        && p["problem"]
                            .as_str()
                            .is_some_and(|t| t.contains("no sha256 metadata"))
                })),
            "{key}: {doc}"
        );
    }
    run(&mut push_cmd(&fx.archive, &url, Some(&s3))).expect_code(FIXTURE_PUSH_EXIT);
    for key in [other, same] {
        assert_eq!(s3.get_file("meta", key).as_ref(), Some(&want[key]), "{key}");
        assert_eq!(
            s3.user_metadata("meta", key).get("sha256"),
            Some(&sha256_hex(&want[key])),
            "{key}"
        );
    }
    run(&mut plain(&s3)).expect_code(0);

    // A directory keeps no metadata: other bytes of the right size pass a
    // plain verify there; --deep finds them.
    let dir_dest = fx.dir.path().join("dest");
    let dir_url = dir_dest.to_string_lossy().into_owned();
    run(&mut push_cmd(&fx.archive, &dir_url, None)).expect_code(FIXTURE_PUSH_EXIT);
    std::fs::write(dir_dest.join(other), flipped(&want[other])).expect("overwrite");
    run(starchive(&fx.archive).args(["verify", "--to", &dir_url])).expect_code(0);
    run(&mut verify_cmd(&fx.archive, &dir_url, None)).expect_code(3);
}

/// The keys of a directory destination, but those under `_starchive/`.
fn keys_under(dest: &Path) -> Vec<String> {
    crate::support::objects::files_under(dest)
        .into_keys()
        .filter(|k| !k.starts_with("_starchive/"))
        .collect()
}

#[test]
fn verify_checks_what_push_placed_there_not_every_env() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let url = dest.to_string_lossy().into_owned();
    let push = |env: &str| {
        let out = run(starchive(&fx.archive).args(["--json", "push", "--env", env, "--to", &url]));
        out.json()
    };
    let verify = |args: &[&str]| {
        run(starchive(&fx.archive)
            .args(["--json", "verify", "--deep", "--to", &url])
            .args(args))
    };
    // The fixture's one failed ref is test's: prod's push is whole.
    push("prod");
    let prod_keys = keys_under(&dest);
    assert!(!prod_keys.is_empty());

    // Without --env, the objects prod's push placed: test's refs were never
    // pushed there, so they are not missing there.
    let doc = verify(&[]).expect_code(0).json();
    assert_eq!(doc["objects_checked"], prod_keys.len(), "{doc}");
    assert_eq!(doc["objects_missing"], 0, "{doc}");
    // Nothing was marked: a push of prod again has nothing to do.
    let again = push("prod");
    assert_eq!(again["done"], 0, "{again}");
    // --env test on a prod-only destination: nothing of it to check.
    let doc = verify(&["--env", "test"]).expect_code(0).json();
    assert_eq!(doc["objects_checked"], 0, "{doc}");
    let text = run(starchive(&fx.archive).args(["verify", "--env", "test", "--to", &url]));
    assert!(
        text.expect_code(0).stdout.contains("objects: 0 checked"),
        "{}",
        text.stdout
    );

    // Pushed again with test: the union verifies clean, and is all there is.
    push("test");
    let all = keys_under(&dest);
    // Every object of an unscoped push but that of the sticker whose
    // session the database lacks: it has no env.
    let whole: Vec<String> = mirror_objects().into_keys().collect();
    assert!(all.iter().all(|k| whole.contains(k)), "{all:?}");
    assert_eq!(all.len() + 1, whole.len(), "{all:?}");
    let doc = verify(&[]).expect_code(0).json();
    assert_eq!(doc["objects_checked"], all.len(), "{doc}");
    let doc = verify(&["--env", "prod"]).expect_code(0).json();
    assert_eq!(doc["objects_checked"], prod_keys.len(), "{doc}");

    // What is gone from the union is still found, whatever its env.
    let lost = all
        .iter()
        .find(|k| !prod_keys.contains(k))
        .expect("a test key");
    std::fs::remove_file(dest.join(lost)).expect("remove");
    let doc = verify(&[]).expect_code(3).json();
    assert_eq!(doc["objects_missing"], 1, "{doc}");
    assert_eq!(problem_names(&doc), vec![lost.as_str()], "{doc}");
}

#[test]
fn verify_of_a_destination_another_archive_pushed_checks_the_envs_its_manifest_names() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let url = dest.to_string_lossy().into_owned();
    run(starchive(&fx.archive).args(["--json", "push", "--env", "prod", "--to", &url]))
        .expect_code(0);
    let prod_keys = keys_under(&dest);
    // Another archive of the same database never pushed there: it checks
    // what a push would place there of the envs the manifest names.
    let other = fetched_fixture();
    let verify = |args: &[&str]| {
        run(starchive(&other.archive)
            .args(["--json", "verify", "--deep", "--to", &url])
            .args(args))
    };
    let doc = verify(&[]).expect_code(0).json();
    assert_eq!(doc["objects_checked"], prod_keys.len(), "{doc}");
    let doc = verify(&["--env", "test"]).expect_code(0).json();
    assert_eq!(doc["objects_checked"], 0, "{doc}");
    let doc = verify(&["--env", "prod", "--env", "test"])
        .expect_code(0)
        .json();
    assert_eq!(doc["objects_checked"], prod_keys.len(), "{doc}");
}

#[test]
fn an_object_found_bad_or_missing_stays_reported_until_a_push_replaces_it() {
    let fx = fetched_fixture();
    let want = mirror_objects();
    let dest = fx.dir.path().join("dest");
    let url = dest.to_string_lossy().into_owned();
    run(&mut push_cmd(&fx.archive, &url, None)).expect_code(FIXTURE_PUSH_EXIT);
    let unique: Vec<&String> = want
        .iter()
        .filter(|(_, b)| want.values().filter(|o| o == b).count() == 1)
        .map(|(k, _)| k)
        .collect();
    let (corrupt, gone) = (unique[0].as_str(), unique[1].as_str());
    // Each object damaged at the destination, and its local blob gone too:
    // the first verify puts its refs back to pending.
    std::fs::write(dest.join(corrupt), flipped(&want[corrupt])).expect("corrupt");
    std::fs::remove_file(dest.join(gone)).expect("remove object");
    for key in [corrupt, gone] {
        let sha = sha256_hex(&want[key]);
        std::fs::remove_file(fx.archive.join("blobs").join(&sha[..2]).join(&sha))
            .expect("remove blob");
    }
    let verify = |deep: bool| {
        let mut cmd = starchive(&fx.archive);
        cmd.args(["--json", "verify", "--to", &url]);
        if deep {
            cmd.arg("--deep");
        }
        run(&mut cmd).expect_code(3).json()
    };
    let first = verify(true);
    assert_eq!(first["blobs_bad"], 2, "{first}");
    assert_eq!(first["objects_bad"], 1, "{first}");
    assert_eq!(first["objects_missing"], 1, "{first}");
    assert_eq!(first["refs_to_fetch_again"], 2, "{first}");
    // Every later verify reports both objects again (a plain one finds the
    // missing one; the deep one both), though no ref of theirs is fetched.
    for round in 0..2 {
        let doc = verify(true);
        assert_eq!(doc["blobs_bad"], 0, "round {round}: {doc}");
        assert_eq!(doc["objects_checked"], want.len(), "round {round}: {doc}");
        assert_eq!(doc["objects_bad"], 1, "round {round}: {doc}");
        assert_eq!(doc["objects_missing"], 1, "round {round}: {doc}");
        let names = problem_names(&doc);
        assert!(names.contains(&corrupt) && names.contains(&gone), "{doc}");
    }
    let plain = verify(false);
    assert_eq!(plain["objects_missing"], 1, "{plain}");
    assert!(problem_names(&plain).contains(&gone), "{plain}");
    // Fetched again and pushed: both are replaced, and verify is content.
    fetch_again(&fx.archive);
    run(&mut push_cmd(&fx.archive, &url, None)).expect_code(FIXTURE_PUSH_EXIT);
    for key in [corrupt, gone] {
        assert_eq!(
            std::fs::read(dest.join(key)).ok().as_ref(),
            Some(&want[key])
        );
    }
    run(&mut verify_cmd(&fx.archive, &url, None)).expect_code(0);
}
