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

/// Every number given on the command line is range-checked: a value that is
/// zero, negative, not a number, infinite, too small for a clock or too large
/// for its type is bad usage (exit 2) that names the option, before anything
/// is done; never a panic or an endless wait.
#[test]
fn extreme_numbers_are_bad_usage() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    let mut cases: Vec<(&str, &str, &str)> = Vec::new();
    for rate in [
        "0", "-0", "-1", "nan", "NaN", "inf", "-inf", "1e-20", "5e-324", "1e300", "", "ten",
    ] {
        cases.push(("fetch", "--telegram-rate", rate));
        cases.push(("run", "--telegram-rate", rate));
    }
    for size in [
        "0",
        "0GiB",
        "-1",
        "1e3",
        "99999999999999999999",
        "18446744073709551615GiB",
        "17179869184GiB",
        "5MB",
    ] {
        cases.push(("fetch", "--max-file-size", size));
    }
    for jobs in [
        "0",
        "-1",
        "1025",
        "4294967296",
        "99999999999999999999",
        "nan",
        "2.5",
    ] {
        cases.push(("fetch", "--jobs", jobs));
        cases.push(("push", "--jobs", jobs));
    }
    for (command, option, value) in cases {
        let mut cmd = bin();
        cmd.arg("--archive").arg(&archive).arg(command);
        if command != "fetch" {
            cmd.args(["--to", &dir.path().join("dest").display().to_string()]);
        }
        if command == "run" {
            cmd.args(["--db", &dir.path().display().to_string()]);
        }
        let out = cmd.arg(format!("{option}={value}")).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command} {option}={value}: {err}"
        );
        assert!(err.contains(option), "{command} {option}={value}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !archive.exists(),
            "{command} {option}={value} did something"
        );
    }
    // The bounds themselves are fine.
    for rate in ["0.001", "1000000"] {
        let out = bin()
            .arg("--archive")
            .arg(&archive)
            .args(["fetch", "--telegram-rate", rate])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "no catalog yet: {rate}");
    }
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
