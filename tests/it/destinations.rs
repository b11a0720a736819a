//! What a destination may be, and what it holds: never the archive itself
//! or a place inside it, one layout for good, and reports that stay
//! readable when much is missing or failed (`--full` has it all).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::push::{
    FIXTURE_PUSH_EXIT, FIXTURE_PUSHED_REFS, MANIFEST, bucket_objects, fetched_fixture,
    mirror_objects, push_cmd,
};
use crate::support::dataset::{FIXTURE_BUCKET, FIXTURE_DB, FIXTURE_TELEGRAM};
use crate::support::objects::files_under;
use crate::support::run::{catalog, run, starchive};
use crate::support::s3::TestS3;
use crate::support::telegram::FakeTelegram;
use crate::support::temp_dir;

/// Every file and directory under `dir`, as relative paths.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(dir).expect("under").display().to_string());
            if entry.file_type().expect("file type").is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_destination_that_is_in_or_holds_the_archive_is_refused() {
    let fx = fetched_fixture();
    let top = fx.dir.path();
    let link = top.join("link");
    std::os::unix::fs::symlink(&fx.archive, &link).expect("symlink");
    let a = fx.archive.display().to_string();
    let before = tree(&fx.archive);
    let blobs = fx.archive.join("blobs");
    // (typed, working directory)
    let cases = [
        (a.clone(), top),
        ("archive".to_string(), top),
        ("./archive/blobs".to_string(), top),
        (format!("{a}/blobs"), top),
        (format!("{a}/new/deeper"), top),
        (format!("file://{a}/blobs"), top),
        (format!("{a}/../archive/blobs/.."), top),
        ("..".to_string(), &blobs),
        (format!("{}/blobs", link.display()), top),
        (format!("{}/not-yet", link.display()), top),
        (top.display().to_string(), top),
        (".".to_string(), top),
    ];
    for (typed, cwd) in &cases {
        for command in ["push", "backfill"] {
            let mut cmd = starchive(&fx.archive);
            cmd.current_dir(cwd).args([command, "--to", typed]);
            if command == "backfill" {
                cmd.args(["--db", "postgres://u@127.0.0.1:9/db", "--apply"]);
            }
            let out = run(&mut cmd);
            out.expect_code(2);
            assert!(
                out.stderr.contains("archive") && out.stderr.contains(typed.as_str()),
                "{command} --to {typed}: {}",
                out.stderr
            );
            assert_eq!(tree(&fx.archive), before, "{command} --to {typed} wrote");
        }
    }
    // A neighbour whose name starts like the archive's is no part of it.
    let beside = format!("{a}-copy");
    let doc = run(&mut push_cmd(&fx.archive, &beside, None))
        .expect_code(FIXTURE_PUSH_EXIT)
        .json();
    assert_eq!(doc["done"], FIXTURE_PUSHED_REFS, "{doc}");
    assert_eq!(tree(&fx.archive), before);
}

#[test]
fn run_into_the_archive_is_refused_before_it_does_anything() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    let out = run(starchive(&archive)
        .args(["run", "--db", FIXTURE_DB, "--storage", FIXTURE_BUCKET])
        .args(["--to", &format!("{}/blobs", archive.display())])
        .envs(tg.env()));
    out.expect_code(2);
    assert!(out.stderr.contains("inside the archive"), "{}", out.stderr);
    assert!(
        !archive.join("blobs").exists(),
        "run fetched before refusing"
    );
}

/// `push --json --to URL --layout LAYOUT` (no `--layout` when `None`).
fn push_with(
    archive: &Path,
    to: &str,
    layout: Option<&str>,
    s3: Option<&TestS3>,
) -> crate::support::run::Run {
    let mut cmd = push_cmd(archive, to, s3);
    if let Some(layout) = layout {
        cmd.args(["--layout", layout]);
    }
    run(&mut cmd)
}

/// `verify --to URL [--layout LAYOUT]`.
fn verify_with(
    archive: &Path,
    to: &str,
    layout: Option<&str>,
    s3: Option<&TestS3>,
) -> crate::support::run::Run {
    let mut cmd = starchive(archive);
    cmd.args(["verify", "--to", to]);
    if let Some(layout) = layout {
        cmd.args(["--layout", layout]);
    }
    if let Some(s3) = s3 {
        cmd.envs(s3.env("TO"));
    }
    run(&mut cmd)
}

fn has_cas_keys<V>(objects: &BTreeMap<String, V>) -> bool {
    objects.keys().any(|k| k.starts_with("blobs/sha256/"))
}

fn has_mirror_keys<V>(objects: &BTreeMap<String, V>) -> bool {
    objects.keys().any(|k| mirror_objects().contains_key(k))
}

#[test]
fn a_destination_keeps_the_layout_it_was_pushed_with() {
    let fx = fetched_fixture();
    for (first, other) in [("mirror", "cas"), ("cas", "mirror")] {
        let dest = fx.dir.path().join(format!("dest-{first}"));
        let url = dest.display().to_string();
        // `--layout mirror` is the default: say it or not.
        let given = (first == "cas").then_some(first);
        push_with(&fx.archive, &url, given, None).expect_code(FIXTURE_PUSH_EXIT);
        let mut held = files_under(&dest);
        for _ in 0..2 {
            let out = push_with(&fx.archive, &url, Some(other), None);
            out.expect_code(2);
            assert!(
                out.stderr.contains(&format!("holds the {first} layout")),
                "{first}: {}",
                out.stderr
            );
            assert_eq!(
                files_under(&dest),
                held,
                "{first}: push --layout {other} wrote"
            );
            let out = verify_with(&fx.archive, &url, Some(other), None);
            out.expect_code(2);
            assert!(out.stderr.contains(first), "{}", out.stderr);
            // The catalog remembers the layout even without the manifest.
            std::fs::remove_file(dest.join(MANIFEST)).ok();
            held = files_under(&dest);
        }
        // Without --layout: the layout it holds.
        let doc = push_with(&fx.archive, &url, None, None)
            .expect_code(FIXTURE_PUSH_EXIT)
            .json();
        assert_eq!(doc["done"], 0, "{first}: {doc}");
        let objects = files_under(&dest);
        assert_eq!(has_cas_keys(&objects), first == "cas", "{first}");
        assert_eq!(has_mirror_keys(&objects), first == "mirror", "{first}");
        verify_with(&fx.archive, &url, None, None).expect_code(0);
        verify_with(&fx.archive, &url, Some(first), None).expect_code(0);
        let status = run(starchive(&fx.archive).args(["--json", "status"]))
            .expect_code(0)
            .json();
        let canonical = std::fs::canonicalize(&dest).expect("canonical");
        assert_eq!(
            status["destinations"][canonical.display().to_string()]["pushed"],
            FIXTURE_PUSHED_REFS,
            "{status}"
        );
    }
}

#[test]
fn the_layout_named_by_another_machines_manifest_is_kept() {
    let s3 = TestS3::start();
    s3.create_bucket("shared");
    let first = fetched_fixture();
    // The same archive on another machine (its id; its own catalog, which
    // never pushed there): another archive's manifest would be refused.
    let second = fetched_fixture();
    let id: String = catalog(&first.archive)
        .query_row(
            "SELECT value FROM settings WHERE key = 'archive_id'",
            [],
            |r| r.get(0),
        )
        .expect("archive id");
    catalog(&second.archive)
        .execute(
            "UPDATE settings SET value = ?1 WHERE key = 'archive_id'",
            [&id],
        )
        .expect("the same id");
    for (layout, other, prefix) in [("cas", "mirror", "c"), ("mirror", "cas", "m")] {
        let url = s3.store_url("shared", prefix);
        push_with(&first.archive, &url, Some(layout), Some(&s3)).expect_code(FIXTURE_PUSH_EXIT);
        let held = bucket_objects(&s3, "shared");
        // The second archive never pushed there: the manifest says what it holds.
        let out = push_with(&second.archive, &url, Some(other), Some(&s3));
        out.expect_code(2);
        assert!(
            out.stderr.contains(&format!("holds the {layout} layout"))
                && out.stderr.contains("manifest"),
            "{}",
            out.stderr
        );
        verify_with(&second.archive, &url, Some(other), Some(&s3)).expect_code(2);
        assert_eq!(bucket_objects(&s3, "shared"), held, "refused, yet written");
        verify_with(&second.archive, &url, None, Some(&s3)).expect_code(0);
        let doc = push_with(&second.archive, &url, None, Some(&s3))
            .expect_code(FIXTURE_PUSH_EXIT)
            .json();
        assert_eq!(doc["done"], 0, "{layout}: {doc}");
        assert_eq!(doc["skipped"], FIXTURE_PUSHED_REFS, "{layout}: {doc}");
        let under: BTreeMap<String, ()> = bucket_objects(&s3, "shared")
            .into_keys()
            .filter_map(|k| {
                k.strip_prefix(&format!("{prefix}/"))
                    .map(|k| (k.to_string(), ()))
            })
            .collect();
        assert_eq!(has_cas_keys(&under), layout == "cas", "{layout}");
        assert_eq!(has_mirror_keys(&under), layout == "mirror", "{layout}");
    }
}

#[test]
fn run_again_with_another_layout_is_refused() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    let dest = dir.path().join("runbk");
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    let run = |layout: Option<&str>| {
        let mut cmd = starchive(&archive);
        cmd.args(["run", "--db", FIXTURE_DB, "--storage", FIXTURE_BUCKET])
            .args(["--telegram-rate", "1000", "--to"])
            .arg(&dest)
            .envs(tg.env());
        if let Some(layout) = layout {
            cmd.args(["--layout", layout]);
        }
        run(&mut cmd)
    };
    run(None).expect_code(3);
    let out = run(Some("cas"));
    out.expect_code(2);
    assert!(
        out.stderr.contains("holds the mirror layout"),
        "{}",
        out.stderr
    );
    assert!(!has_cas_keys(&files_under(&dest)), "cas objects written");
    verify_with(&archive, &dest.display().to_string(), None, None).expect_code(0);
}

/// The problem lines of a text `verify` report.
fn problem_lines(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("object ")).count()
}

#[test]
fn long_lists_are_cut_in_text_unless_full() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let url = dest.display().to_string();
    push_with(&fx.archive, &url, None, None).expect_code(FIXTURE_PUSH_EXIT);
    let keys = mirror_objects().len();
    assert!(
        keys > 20,
        "the fixture has only {keys} keys: nothing to cut"
    );
    for key in mirror_objects().keys() {
        std::fs::remove_file(dest.join(key)).expect("rm object");
    }
    let verify = |args: &[&str]| {
        let mut cmd = starchive(&fx.archive);
        run(cmd.args(["verify", "--to", &url]).args(args))
    };
    let out = verify(&[]);
    out.expect_code(3);
    assert_eq!(problem_lines(&out.stdout), 20, "{}", out.stdout);
    assert!(
        out.stdout
            .contains(&format!("… and {} more (--full lists them all)", keys - 20)),
        "{}",
        out.stdout
    );
    let out = verify(&["--full"]);
    out.expect_code(3);
    assert_eq!(problem_lines(&out.stdout), keys, "{}", out.stdout);
    assert!(!out.stdout.contains("more"), "{}", out.stdout);
    let doc = verify(&["--json"]).expect_code(3).json();
    assert_eq!(doc["objects_missing"], keys as u64, "{doc}");
    assert_eq!(
        doc["problems"].as_array().map(Vec::len),
        Some(keys),
        "{doc}"
    );

    // Push failures: every key under a folder that is a file at the destination.
    let blocked = fx.dir.path().join("blocked");
    std::fs::create_dir(&blocked).expect("mkdir");
    for folder in ["stickers", "pack_sheets"] {
        std::fs::write(blocked.join(folder), b"in the way").expect("write");
    }
    push_with(&fx.archive, &blocked.display().to_string(), None, None).expect_code(3);
    let status = |args: &[&str]| {
        run(starchive(&fx.archive).arg("status").args(args))
            .expect_code(0)
            .stdout
            .clone()
    };
    let failure_lines = |text: &str| text.lines().filter(|l| l.contains(" [push to ")).count();
    let json = run(starchive(&fx.archive).args(["--json", "status"]))
        .expect_code(0)
        .json();
    let failures = json["failures"].as_array().map(Vec::len).unwrap_or(0);
    assert!(failures > 21, "{json}");
    let text = status(&[]);
    assert_eq!(failure_lines(&text), 20 - 1, "{text}"); // the failed fetch comes first
    assert!(text.contains(&format!("failures ({failures}):")), "{text}");
    assert!(
        text.contains(&format!("  … and {} more", failures - 20)),
        "{text}"
    );
    let text = status(&["--full"]);
    assert_eq!(failure_lines(&text), failures - 1, "{text}");
}

#[test]
fn status_shows_only_destinations_reached() {
    let fx = fetched_fixture();
    let s3 = TestS3::start();
    s3.create_bucket("real");
    // A bucket that does not exist (a typo): the push fails, nothing is there.
    let typo = s3.store_url("reel", "");
    let out = push_with(&fx.archive, &typo, None, Some(&s3));
    out.expect_code(1);
    let destinations = |archive: &Path| -> Value {
        run(starchive(archive).args(["--json", "status"]))
            .expect_code(0)
            .json()["destinations"]
            .clone()
    };
    assert_eq!(destinations(&fx.archive), serde_json::json!({}));
    let text = run(starchive(&fx.archive).arg("status"))
        .expect_code(0)
        .stdout
        .clone();
    assert!(text.contains("none pushed yet"), "{text}");
    let real = s3.store_url("real", "");
    push_with(&fx.archive, &real, None, Some(&s3)).expect_code(FIXTURE_PUSH_EXIT);
    // What a push killed before its first upload leaves (or an older
    // starchive's push to a store it never reached): every ref pending there.
    let conn = rusqlite::Connection::open(fx.archive.join("catalog.sqlite")).expect("catalog");
    conn.execute_batch(
        "INSERT INTO destinations(url, layout, canonical) VALUES ('s3://never', 'mirror', 1);
         INSERT INTO placements(dest_id, ref_id, key, state)
             SELECT (SELECT id FROM destinations WHERE url = 's3://never'), ref_id, key, 'pending'
             FROM placements;",
    )
    .expect("insert");
    drop(conn);
    let shown = destinations(&fx.archive);
    let shown: Vec<&String> = shown.as_object().expect("object").keys().collect();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(shown[0].starts_with("s3://real?endpoint="), "{shown:?}");
    let text = run(starchive(&fx.archive).arg("status"))
        .expect_code(0)
        .stdout
        .clone();
    assert!(!text.contains("never"), "{text}");
}
