//! The command line itself: usage errors, locking, missing archive.

use crate::support::{bin, temp_dir};

#[test]
fn bad_usage_exits_2() {
    let out = bin().args(["fetch", "--jobs", "0"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = bin().args(["frobnicate"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = bin()
        .args(["fetch", "--max-file-size", "5MB"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plan_without_archive_says_what_to_do() {
    let dir = temp_dir();
    let out = bin()
        .args(["--archive"])
        .arg(dir.path().join("none"))
        .arg("plan")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("starchive snapshot"), "{err}");
}

#[test]
fn global_options_go_before_or_after_the_command() {
    let dir = temp_dir();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/db");
    let before = bin()
        .arg("--archive")
        .arg(dir.path())
        .args(["--json", "snapshot", "--db", fixtures])
        .output()
        .expect("run");
    assert_eq!(
        before.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    let after = bin()
        .args(["plan", "--json", "--env", "prod", "--archive"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(after.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&after.stdout).expect("one JSON document");
    assert_eq!(doc["total"]["refs"], 17, "prod refs of the fixtures");
}
