//! The command line itself: usage errors, locking, missing archive, stores
//! as typed, and what a user is told.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::push::{FIXTURE_REFS, fetched_fixture};
use crate::support::dataset::{FIXTURE_BUCKET, FIXTURE_DB, FIXTURE_TELEGRAM};
use crate::support::run::{run, starchive};
use crate::support::telegram::FakeTelegram;
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

// ---- stores as typed (SPEC §4) -----------------------------------------------

#[test]
fn mistyped_urls_are_refused_and_create_nothing() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    for (typed, meant) in [
        ("s3//bkt/prefix", Some("s3://bkt/prefix")),
        ("s3:/bkt", Some("s3://bkt")),
        ("file:/tmp/x", Some("file:///tmp/x")),
        ("file//tmp/x", Some("file:///tmp/x")),
        ("https:/host/x", None),
    ] {
        for args in [
            vec!["push", "--to", typed],
            vec!["verify", "--to", typed],
            vec!["fetch", "--storage", typed],
        ] {
            let out = run(starchive(&archive).args(&args).current_dir(&cwd));
            out.expect_code(2);
            assert!(
                out.stderr.contains("mistyped URL"),
                "{args:?}: {}",
                out.stderr
            );
            if let Some(meant) = meant {
                assert!(
                    out.stderr.contains(&format!("did you mean {meant}?")),
                    "{args:?}: {}",
                    out.stderr
                );
            }
        }
    }
    let left: Vec<_> = std::fs::read_dir(&cwd).expect("ls").collect();
    assert!(left.is_empty(), "created {left:?}");
    assert!(!Path::new("/tmp/x").exists() || Path::new("/tmp/x").is_dir());
}

#[test]
fn credentials_in_a_store_url_are_refused_and_never_shown() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    for url in [
        "s3://bkt?endpoint=http://AKUSER:StorUrlSecret@127.0.0.1:1&allow_http=true",
        "s3://bkt/p?endpoint=https%3A%2F%2FAKUSER%3AStorUrlSecret%40127.0.0.1%3A1",
        "s3://AKUSER:StorUrlSecret@bkt",
    ] {
        for (args, role) in [
            (vec!["push", "--to", url], "TO"),
            (vec!["verify", "--to", url], "TO"),
            (vec!["fetch", "--storage", url], "STORAGE"),
            (vec!["check", "--storage", url], "STORAGE"),
        ] {
            let out = run(starchive(&archive).arg("--json").args(&args));
            out.expect_code(2);
            for text in [&out.stdout, &out.stderr] {
                assert!(!text.contains("StorUrlSecret"), "{args:?}: {text}");
            }
            assert!(
                out.stderr
                    .contains(&format!("set STARCHIVE_{role}_ACCESS_KEY_ID")),
                "{args:?}: {}",
                out.stderr
            );
            let doc: serde_json::Value =
                serde_json::from_str(&out.stdout).expect("one JSON document");
            assert_eq!(doc["exit_code"], 2, "{doc}");
        }
    }
    let status = run(starchive(&archive).args(["--json", "status"]));
    assert!(
        !status.stdout.contains("StorUrlSecret"),
        "{}",
        status.stdout
    );
}

#[test]
fn json_errors_leave_one_document_on_stdout() {
    let dir = temp_dir();
    let none = dir.path().join("none");
    for (args, code) in [
        (vec!["plan", "--json"], 1),
        (vec!["--json", "fetch", "--storage", "/nonexistent"], 1),
        (vec!["--json", "plan", "--no-such-option"], 2),
        (vec!["--json", "fetch", "--jobs", "0"], 2),
    ] {
        let out = run(starchive(&none).args(&args));
        out.expect_code(code);
        let doc: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {}", out.stdout));
        assert_eq!(doc["exit_code"], code, "{doc}");
        let message = doc["error"].as_str().expect("error text");
        assert!(
            !message.is_empty() && out.stderr.contains(message),
            "{message}\n{}",
            out.stderr
        );
    }
    // Without --json, stdout stays empty.
    let out = run(starchive(&none).arg("plan"));
    out.expect_code(1);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn verify_of_a_missing_directory_exits_1_and_creates_nothing() {
    let fx = fetched_fixture();
    let cwd = fx.dir.path().join("cwd");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    for typed in ["./typo-dir", "typo-dir/sub"] {
        let out = run(starchive(&fx.archive)
            .args(["verify", "--to", typed])
            .current_dir(&cwd));
        out.expect_code(1);
        assert!(out.stderr.contains("no such directory"), "{}", out.stderr);
    }
    assert!(
        !cwd.join("typo-dir").exists(),
        "verify created the directory"
    );
    // push writes there: it creates it.
    run(starchive(&fx.archive)
        .args(["push", "--to", "./typo-dir"])
        .current_dir(&cwd))
    .expect_code(3);
    assert!(cwd.join("typo-dir/_starchive").is_dir());
}

// ---- reading beside a running command (SPEC §2) -----------------------------

#[test]
fn status_and_plan_run_beside_a_fetch() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    tg.latency(Duration::from_millis(400));
    let mut fetch = starchive(&archive)
        .args(["fetch", "--jobs", "1", "--telegram-rate", "1000"])
        .envs(tg.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fetch");
    // The fetch holds the archive once it asked Telegram for something.
    let started = Instant::now();
    while tg.total_requests() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "fetch never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = run(starchive(&archive).args(["--json", "status"]));
    let plan = run(starchive(&archive).args(["plan", "--json"]));
    let writer = run(starchive(&archive)
        .args(["push", "--to"])
        .arg(dir.path().join("d")));
    let still_running = fetch.try_wait().expect("try_wait").is_none();
    let _ = fetch.wait();
    assert!(still_running, "the fetch ended before the readers ran");
    let doc = status.expect_code(0).json();
    assert!(doc["fetch"]["sticker"].is_object(), "{doc}");
    assert_eq!(plan.expect_code(0).json()["total"]["refs"], FIXTURE_REFS);
    writer.expect_code(1);
    assert!(
        writer.stderr.contains("in use by another starchive"),
        "{}",
        writer.stderr
    );
}

// ---- what the user is told (SPEC §3) ------------------------------------------

#[test]
fn push_before_fetch_says_to_run_fetch() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    let dest = dir.path().join("dest");
    let want = format!("{FIXTURE_REFS} refs are not fetched yet: run `starchive fetch`");
    let out = run(starchive(&archive).args(["push", "--to"]).arg(&dest));
    out.expect_code(0);
    assert!(out.stdout.contains(&want), "{}", out.stdout);
    let doc = run(starchive(&archive)
        .args(["--json", "push", "--to"])
        .arg(&dest))
    .expect_code(0)
    .json();
    assert_eq!(doc["pending"], FIXTURE_REFS, "{doc}");
    assert_eq!(doc["notes"][0], want.as_str(), "{doc}");
}

#[test]
fn fetch_failure_is_named_and_counts_failed_in_push() {
    let fx = fetched_fixture();
    // The fixture's fetch warned with the ref's class and row id.
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    let out = run(starchive(&fx.archive)
        .args(["fetch", "--retry-failed", "--telegram-rate", "1000"])
        .envs(tg.env()));
    out.expect_code(3);
    assert!(
        out.stderr
            .contains("fetch failed for sticker stickers/00000000-0000-4000-8000-000000000315"),
        "{}",
        out.stderr
    );
    let out = run(starchive(&fx.archive)
        .args(["push", "--to"])
        .arg(fx.dir.path().join("d")));
    out.expect_code(3);
    assert!(out.stdout.contains("failed 1, pending 0"), "{}", out.stdout);
    assert!(out.stdout.contains("--retry-failed"), "{}", out.stdout);
}

#[test]
fn backfill_from_a_csv_directory_says_it_needs_postgres() {
    let fx = fetched_fixture();
    let dest = fx.dir.path().join("dest");
    let out = run(starchive(&fx.archive)
        .args(["backfill", "--db", FIXTURE_DB, "--to"])
        .arg(&dest));
    out.expect_code(2);
    assert!(out.stderr.contains("postgres://"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("connection string: unexpected"),
        "{}",
        out.stderr
    );
    assert!(!dest.exists());
}

#[test]
fn unknown_env_warns_and_names_the_envs() {
    let fx = fetched_fixture();
    for args in [vec!["plan"], vec!["status"], vec!["check"], vec!["verify"]] {
        let out = run(starchive(&fx.archive)
            .args(["--env", "nosuchenv", "--env", "prod"])
            .args(&args));
        // check reports the fixture's incomplete packs: exit 3.
        assert!(matches!(out.code, Some(0 | 3)), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("--env nosuchenv: no session has this env")
                && out.stderr.contains("prod, test"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("--env prod"), "{}", out.stderr);
    }
}

/// `--env ""` would match nothing (an empty env is none): bad usage, before
/// anything is done, naming the envs the catalog knows. A session whose env
/// is empty has no env (SPEC §1), like one whose env is NULL: never listed
/// as an env. An env blank at an end is shown quoted where envs are named.
#[test]
fn an_empty_env_is_refused_and_shown_quoted() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    let cases = [
        vec!["--env", "", "status"],
        vec!["--env=", "plan"],
        vec!["fetch", "--env", ""],
        vec!["--env", "prod", "--env", "", "snapshot", "--db", FIXTURE_DB],
    ];
    for args in &cases {
        let out = run(starchive(&archive).args(args));
        out.expect_code(2);
        assert!(
            out.stderr.contains(&format!(
                "--env \"\": an empty env is no env, and sessions with none are left out by \
                 any --env; give an env's name ({} holds no catalog yet)",
                archive.display()
            )),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert!(!archive.exists(), "nothing was created");

    // Only Postgres tells an empty env from none (a CSV export has NULL).
    let pg = crate::support::pg::TestPg::start();
    let url = pg.fixture_db("bot");
    pg.psql(
        "bot",
        "UPDATE sessions SET env = '' WHERE id = (SELECT id FROM sessions WHERE env = 'test' ORDER BY id LIMIT 1);
         UPDATE sessions SET env = ' eu' WHERE id = (SELECT id FROM sessions WHERE env = 'test' ORDER BY id DESC LIMIT 1);",
    );
    run(starchive(&archive).args(["snapshot", "--db", &url])).expect_code(0);
    let out = run(starchive(&archive).args(["--env", "nope", "plan"]));
    out.expect_code(0);
    assert!(
        out.stderr
            .contains(r#"--env nope: no session has this env (the envs are: " eu", prod, test)"#),
        "{}",
        out.stderr
    );
    for args in &cases[..3] {
        let out = run(starchive(&archive).args(args));
        out.expect_code(2);
        assert!(
            out.stderr
                .contains(r#"give an env's name (the envs are: " eu", prod, test), or no --env"#),
            "{args:?}: {}",
            out.stderr
        );
    }
    let json = run(starchive(&archive).args(["--json", "--env", "", "plan"]));
    json.expect_code(2);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("one document");
    assert!(
        doc["error"]
            .as_str()
            .is_some_and(|e| e.contains("the envs are")),
        "{doc}"
    );
}

#[test]
fn plan_after_a_failed_snapshot_says_no_snapshot_yet() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    // Nothing listens on port 1: the catalog is created, no snapshot taken.
    let out = run(starchive(&archive).args([
        "snapshot",
        "--db",
        "postgres://nobody@127.0.0.1:1/none?connect_timeout=5",
    ]));
    out.expect_code(1);
    assert!(archive.join("catalog.sqlite").is_file());
    for json in [false, true] {
        let mut cmd = starchive(&archive);
        cmd.arg("plan");
        if json {
            cmd.arg("--json");
        }
        let out = run(&mut cmd);
        out.expect_code(1);
        assert!(out.stderr.contains("no snapshot yet"), "{}", out.stderr);
        if json {
            let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("one document");
            assert!(
                doc["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no snapshot yet")),
                "{doc}"
            );
        } else {
            assert!(out.stdout.is_empty(), "{}", out.stdout);
        }
    }
}

// ---- help and output a person reads --------------------------------------------

#[test]
fn help_names_the_layouts_and_every_variable() {
    let help = |args: &[&str]| {
        let out = run(bin().args(args).arg("--help"));
        out.expect_code(0);
        out.stdout.clone()
    };
    for command in ["push", "run"] {
        let text = help(&[command]);
        assert!(
            text.contains("--layout <LAYOUT>")
                && text.contains("`mirror` keeps the bot's storage keys"),
            "{command}: {text}"
        );
    }
    for command in ["fetch", "run"] {
        let text = help(&[command]);
        for var in [
            "TELEGRAM_BOT_TOKEN ",
            "TELEGRAM_BOT_TOKEN_<ENV>",
            "TELEGRAM_API_URL",
            "STARCHIVE_STORAGE_ACCESS_KEY_ID",
        ] {
            assert!(text.contains(var), "{command} --help names {var}: {text}");
        }
    }
    for command in ["push", "backfill"] {
        let text = help(&[command]);
        for var in [
            "STARCHIVE_TO_ACCESS_KEY_ID",
            "STARCHIVE_TO_SECRET_ACCESS_KEY",
            "STARCHIVE_TO_SESSION_TOKEN",
            "AWS_ACCESS_KEY_ID",
        ] {
            assert!(text.contains(var), "{command} --help names {var}: {text}");
        }
    }
}

/// What a terminal shows of `raw` (output with `\r` and ANSI escapes): each
/// line as it stands after its last carriage return, escapes removed.
fn screen_lines(raw: &str) -> Vec<String> {
    raw.split('\n')
        .map(|line| {
            let shown = line
                .rsplit('\r')
                .find(|part| !part.is_empty())
                .unwrap_or("");
            let mut out = String::new();
            let mut chars = shown.chars();
            while let Some(c) = chars.next() {
                if c == '\u{1b}' {
                    // CSI: ESC [ parameters final-byte.
                    if chars.next() == Some('[') {
                        for c in chars.by_ref() {
                            if c.is_ascii_alphabetic() {
                                break;
                            }
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect()
}

/// On a terminal, a warning during a fetch is a line of its own: the bar is
/// cleared before it and drawn again after, never left above it.
#[test]
fn log_lines_on_a_terminal_leave_no_stale_bar() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    let tg = FakeTelegram::from_dir(FIXTURE_TELEGRAM);
    tg.latency(Duration::from_millis(100));
    // `script` gives the binary a terminal; its output is what was drawn.
    let command = format!(
        "{} --archive '{}' fetch --jobs 1 --telegram-rate 1000",
        env!("CARGO_BIN_EXE_starchive"),
        archive.display()
    );
    let mut script = std::process::Command::new("script");
    for (name, _) in std::env::vars() {
        if ["AWS_", "STARCHIVE_", "TELEGRAM_"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            script.env_remove(name);
        }
    }
    let raw = script
        .args(["-qefc", &command, "/dev/null"])
        .envs(tg.env())
        .env("COLUMNS", "200")
        .output()
        .expect("run script (bsdutils)");
    assert_eq!(raw.status.code(), Some(3), "{raw:?}");
    let text = String::from_utf8_lossy(&raw.stdout);
    assert!(text.contains("] 1/"), "a bar was drawn: {text:?}");
    let lines = screen_lines(&text);
    let warning = lines
        .iter()
        .find(|l| l.contains("fetch failed for sticker"))
        .unwrap_or_else(|| panic!("no warning in {lines:#?}"));
    assert!(
        warning.trim_start().starts_with("WARN"),
        "the warning shares its line with a bar: {warning:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("] ") && l.contains("WARN")),
        "{lines:#?}"
    );
    // The rates and sizes a person reads.
    assert!(
        !text.contains(".0000/s") && !text.contains("bytes in"),
        "{text:?}"
    );
}

/// A usage error under `--json` carries clap's whole message (which argument
/// is missing, the valid values of a bad one), not its first line; and the
/// usage line names only what is required or typed, even with the archive
/// set through `STARCHIVE_DIR`, which still selects the archive.
#[test]
fn json_usage_errors_carry_the_whole_message() {
    let dir = temp_dir();
    for (args, wanted) in [
        (vec!["--json", "push"], vec!["--to <URL>"]),
        (
            vec!["push", "--json", "--to", "x", "--layout", "foo"],
            vec!["'foo'", "mirror, cas"],
        ),
        (vec!["--json", "fetch", "--jobs", "0"], vec!["--jobs"]),
    ] {
        let out = bin()
            .env("STARCHIVE_DIR", dir.path())
            .args(&args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("one JSON document");
        let message = doc["error"].as_str().expect("error text");
        for part in wanted {
            assert!(message.contains(part), "{args:?}: {part} not in {message}");
        }
        assert!(!message.contains('\u{1b}'), "ANSI codes in {message:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("--archive"), "{args:?}: {stderr}");
    }
    // STARCHIVE_DIR still names the archive; --archive wins over it.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let out = bin()
        .env("STARCHIVE_DIR", &empty)
        .arg("plan")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&*empty.to_string_lossy()), "{stderr}");
    let other = dir.path().join("other");
    let out = bin()
        .env("STARCHIVE_DIR", &empty)
        .args(["plan", "--archive"])
        .arg(&other)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&*other.to_string_lossy()), "{stderr}");
}

/// Every refusal of an S3 store shows it by the same readable identity
/// (`s3://bucket/prefix?endpoint=http://host:port`), never percent-encoded,
/// however the endpoint was typed, and without the userinfo of an endpoint.
#[test]
fn store_refusals_show_the_store_readably() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    let shown = "s3://bkt/p?endpoint=http://127.0.0.1:15000:";
    for (query, says) in [
        (
            "endpoint=http://127.0.0.1:15000&region=eu-west-1",
            "allow_http=true",
        ),
        (
            "endpoint=http%3A%2F%2F127.0.0.1%3A15000&region=eu-west-1",
            "allow_http=true",
        ),
        (
            "endpoint=http://127.0.0.1:15000&allow_http=true&region=eu-west-1",
            "no credentials",
        ),
        (
            "region=eu-west-1&endpoint=http%3A%2F%2F127.0.0.1%3A15000&allow_http=true",
            "no credentials",
        ),
        (
            "endpoint=http://127.0.0.1:15000&allow_http=true&secret_access_key=Sx",
            "do not go on",
        ),
        (
            "endpoint=http://AK:Sx@127.0.0.1:15000&allow_http=true",
            "do not go on",
        ),
        (
            "endpoint=http://127.0.0.1:15000&allow_http=true&bogus=1",
            "unknown S3 option",
        ),
    ] {
        let url = format!("s3://bkt/p?{query}");
        for (args, option) in [
            (vec!["push", "--to", &url], "--to"),
            (vec!["check", "--storage", &url], "--storage"),
        ] {
            let out = run(starchive(&archive).arg("--json").args(&args));
            assert!(
                out.stderr.contains(&format!("error: {option} {shown} "))
                    && out.stderr.contains(says),
                "{url}: {}",
                out.stderr
            );
            let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("one document");
            let message = doc["error"].as_str().expect("error text");
            assert!(
                message.starts_with(&format!("{option} {shown} ")),
                "{message}"
            );
            assert!(
                !out.stderr.contains('%') && !out.stderr.contains("Sx"),
                "{}",
                out.stderr
            );
        }
    }
}

/// A local store that is a regular file is named as one, whatever the
/// command and however the path is typed (`push` no longer says "cannot
/// create …: File exists" without the option); a store under a file cannot
/// be created and says which option.
#[test]
fn a_file_given_as_a_store_is_named_a_file() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    let file = dir.path().join("afile");
    std::fs::write(&file, b"not a store").expect("write");
    let abs = file.display().to_string();
    let as_url = format!("file://localhost{abs}");
    for (args, says) in [
        (
            vec!["check", "--storage", "afile"],
            "--storage afile: is a file, not a directory",
        ),
        (
            vec!["fetch", "--storage", "afile"],
            "--storage afile: is a file, not a directory",
        ),
        (
            vec!["push", "--to", "afile"],
            "--to afile: is a file, not a directory",
        ),
        (
            vec!["verify", "--to", "afile"],
            "--to afile: is a file, not a directory",
        ),
        (vec!["push", "--to", &as_url], "is a file, not a directory"),
        (
            vec!["push", "--to", "afile/sub"],
            "--to afile/sub: cannot create the directory",
        ),
    ] {
        let out = run(starchive(&archive).current_dir(dir.path()).args(&args));
        out.expect_code(1);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(
            !out.stderr.contains("no such directory"),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(std::fs::read(&file).expect("read"), b"not a store");
}

/// `file://localhost/abs/path` is the same store as `file:///abs/path` and
/// as the plain path (RFC 8089); another host is refused.
#[test]
fn file_urls_with_localhost_name_the_local_path() {
    let dir = temp_dir();
    let archive = dir.path().join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    let check =
        |store: &str| run(starchive(&archive).args(["--json", "check", "--storage", store]));
    let plain = check(FIXTURE_BUCKET);
    for store in [
        format!("file://localhost{FIXTURE_BUCKET}"),
        format!("file://LocalHost{FIXTURE_BUCKET}"),
        format!("file://{FIXTURE_BUCKET}"),
    ] {
        let out = check(&store);
        assert_eq!(out.code, plain.code, "{store}: {}", out.stderr);
        assert_eq!(out.stdout, plain.stdout, "{store}");
    }
    let out = check(&format!("file://elsewhere{FIXTURE_BUCKET}"));
    out.expect_code(2);
    assert!(
        out.stderr.contains("file://localhost/abs/path"),
        "{}",
        out.stderr
    );
}
