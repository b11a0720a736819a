//! `fetch` against the Bot API as it really is (SPEC §1 "Telegram tokens",
//! §7): one bot per env, a Bot API server run with `--local`, and the
//! "temporarily unavailable" that Telegram answers for passing faults too.

use std::path::Path;

use super::{
    clean_blobs, fetch_cmd, fetched_refs_have_their_blob, refs, status_json, telegram_with_files,
};
use crate::support::dataset::{Db, sticker_bytes};
use crate::support::run::{catalog, run};
use crate::support::telegram::{FakeTelegram, TOKEN};
use crate::support::{bin, temp_dir};

/// The staging bot's token: another bot, with a marker to grep for.
const TOKEN_EU: &str = "555000111:AAE-staging_eu_SECRET_qrstuvwxyz";

/// Whether any file under `dir` holds `needle`.
fn some_file_holds(dir: &Path, needle: &str) -> Option<std::path::PathBuf> {
    crate::support::objects::files(dir)
        .into_iter()
        .map(|(_, path)| path)
        .find(|path| {
            std::fs::read(path)
                .expect("read")
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        })
}

// ---- one bot per env ----------------------------------------------------------

/// Two bots: the default one (`TOKEN`, env `prod` and refs with no env) and
/// the one of env `staging-eu` (`TOKEN_EU`). `eu-shared` was received by
/// the staging bot and is named by a `prod` ref too.
fn two_bots(dir: &Path) -> (FakeTelegram, std::path::PathBuf) {
    let tg = FakeTelegram::new();
    tg.add_bot(TOKEN_EU);
    tg.add_file("prod-a", "stickers/file_1.webp", sticker_bytes(1, 1200))
        .add_file(
            "prod-orphan",
            "stickers/file_2.webp",
            sticker_bytes(2, 1300),
        )
        .add_file_of(
            TOKEN_EU,
            "eu-a",
            "stickers/file_1.webp",
            sticker_bytes(3, 1400),
        )
        .add_file_of(
            TOKEN_EU,
            "eu-shared",
            "stickers/file_2.webp",
            sticker_bytes(4, 1500),
        );
    let mut db = Db::per_env();
    db.in_env("prod", Some("prod-a"), None)
        // The prod ref comes first: the default bot is asked first, and refuses.
        .in_env("prod", Some("eu-shared"), None)
        .in_env("staging-eu", Some("eu-a"), None)
        .in_env("staging-eu", Some("eu-shared"), None)
        .without_env(Some("prod-orphan"), None);
    let archive = db.snapshotted(dir);
    (tg, archive)
}

fn state_of(archive: &Path, file_id: &str) -> Vec<String> {
    refs(archive)
        .into_iter()
        .filter(|r| r.file_id.as_deref() == Some(file_id))
        .map(|r| r.state)
        .collect()
}

#[test]
fn each_env_is_fetched_with_its_own_bot() {
    let dir = temp_dir();
    let (tg, archive) = two_bots(dir.path());

    // Only the staging bot's token: its env's refs, and the prod ref naming
    // the same file_id with them; the rest waits for TELEGRAM_BOT_TOKEN.
    let out = run(fetch_cmd(&archive, None, None)
        .env("TELEGRAM_API_URL", tg.url())
        .env("TELEGRAM_BOT_TOKEN_STAGING_EU", TOKEN_EU));
    out.expect_code(0);
    let doc = out.json();
    assert_eq!(doc["done"], 3, "{doc}");
    assert_eq!(doc["pending"], 2, "{doc}");
    let notes = doc["notes"].to_string();
    assert!(
        notes.contains("2 refs") && notes.contains("TELEGRAM_BOT_TOKEN"),
        "{doc}"
    );
    assert!(!notes.contains("STAGING_EU"), "its env has a token: {doc}");
    assert_eq!(state_of(&archive, "eu-shared"), ["fetched", "fetched"]);
    assert_eq!(state_of(&archive, "eu-a"), ["fetched"]);
    assert_eq!(state_of(&archive, "prod-a"), ["pending"]);
    assert_eq!(state_of(&archive, "prod-orphan"), ["pending"]);
    assert_eq!(tg.get_file_calls("prod-a"), 0);

    // Both: the rest, the ref with no env through the default bot.
    let doc =
        run(fetch_cmd(&archive, None, Some(&tg)).env("TELEGRAM_BOT_TOKEN_STAGING_EU", TOKEN_EU))
            .expect_code(0)
            .json();
    assert_eq!(doc["done"], 2, "{doc}");
    assert_eq!(doc["pending"], 0, "{doc}");
    let all = refs(&archive);
    assert!(all.iter().all(|r| r.state == "fetched"), "{all:?}");
    fetched_refs_have_their_blob(&archive, &all);
    assert_eq!(clean_blobs(&archive).len(), 4);
    for id in ["prod-a", "prod-orphan", "eu-a", "eu-shared"] {
        assert_eq!(tg.completed_downloads(id), 1, "{id}: downloaded once");
    }
    let blob_of = |id: &str| {
        all.iter()
            .find(|r| r.file_id.as_deref() == Some(id))
            .and_then(|r| r.sha256.clone())
            .expect("sha256")
    };
    assert_eq!(
        blob_of("eu-shared"),
        crate::support::sha256_hex(sticker_bytes(4, 1500))
    );
}

#[test]
fn a_file_id_shared_by_two_envs_is_asked_of_each_bot_until_one_serves_it() {
    let dir = temp_dir();
    let (tg, archive) = two_bots(dir.path());
    let doc = run(fetch_cmd(&archive, None, Some(&tg))
        .args(["--jobs", "1"])
        .env("TELEGRAM_BOT_TOKEN_STAGING_EU", TOKEN_EU))
    .expect_code(0)
    .json();
    assert_eq!(doc["done"], 5, "{doc}");
    // The default bot first (the prod ref comes first), then the staging bot:
    // no backoff round, no second download.
    assert_eq!(tg.get_file_calls("eu-shared"), 2);
    assert_eq!(tg.completed_downloads("eu-shared"), 1);

    // Without the staging bot's token, its files are another bot's to the
    // default one: they fail, after the retries, with Telegram's reason.
    let dir = temp_dir();
    let (tg, archive) = two_bots(dir.path());
    let out = run(fetch_cmd(&archive, None, Some(&tg)).args(["--env", "staging-eu"]));
    out.expect_code(3);
    for r in refs(&archive).iter().filter(|r| r.state == "failed") {
        let reason = r.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("temporarily unavailable"), "{r:?}");
    }
    assert_eq!(state_of(&archive, "eu-a"), ["failed"]);
}

#[test]
fn a_token_refused_for_one_env_stops_the_fetch_and_names_its_variable() {
    let dir = temp_dir();
    let (tg, archive) = two_bots(dir.path());
    let wrong = "555000111:AAWRONG-staging_SECRET_zzzz";
    let out = run(fetch_cmd(&archive, None, Some(&tg))
        .args(["--env", "staging-eu"])
        .env("TELEGRAM_BOT_TOKEN_STAGING_EU", wrong)
        .env("STARCHIVE_LOG", "debug"));
    out.expect_code(1);
    out.expect_error_doc();
    assert!(
        out.stderr
            .contains("refused the token of TELEGRAM_BOT_TOKEN_STAGING_EU"),
        "{}",
        out.stderr
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains("SECRET"), "a token leaked:\n{text}");
    }
    assert!(
        refs(&archive).iter().all(|r| r.state == "pending"),
        "no ref is failed for the token's sake"
    );
}

// ---- a local Bot API server -----------------------------------------------

#[test]
fn a_local_bot_api_servers_file_is_read_when_readable_here_else_fails_at_once() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(3, 2500);
    let root = dir.path().join("var/lib/telegram-bot-api");
    tg.local(&root);
    // The server's disk holds ids[0] and ids[1]; ids[2] is on a disk this
    // machine cannot see.
    for id in &ids[..2] {
        let path = tg.local_path(id).expect("path");
        assert!(path.starts_with(root.join(TOKEN)), "{}", path.display());
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, tg.file_bytes(id).expect("bytes")).expect("write");
    }
    let mut db = Db::per_env();
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    let archive = db.snapshotted(dir.path());

    let out = run(fetch_cmd(&archive, None, Some(&tg)).env("STARCHIVE_LOG", "debug"));
    out.expect_code(3);
    let doc = out.json();
    assert_eq!(doc["done"], 2, "{doc}");
    assert_eq!(doc["failed"], 1, "{doc}");
    let blobs = clean_blobs(&archive);
    for id in &ids[..2] {
        let bytes = tg.file_bytes(id).expect("bytes");
        assert!(blobs.values().any(|b| *b == bytes.as_ref()), "{id}");
        assert_eq!(tg.downloads(id), 0, "read from disk, not downloaded");
    }
    // The unreadable one failed at once, saying why, with the token hidden.
    assert_eq!(tg.get_file_calls(&ids[2]), 1, "no retry");
    let failed = refs(&archive)
        .into_iter()
        .find(|r| r.state == "failed")
        .expect("a failed ref");
    let reason = failed.reason.expect("reason");
    assert!(reason.contains("--local"), "{reason}");
    assert!(
        reason.contains("cannot be read on this machine"),
        "{reason}"
    );
    let shown = format!("{}/***/stickers/file_2.webp", root.display());
    assert!(reason.contains(&shown), "{reason}");

    let status = status_json(&archive);
    assert!(status.to_string().contains("/***/stickers/"), "{status}");
    let text = run(bin().arg("--archive").arg(&archive).arg("status"));
    let secret = TOKEN.split(':').nth(1).expect("secret");
    for text in [&out.stdout, &out.stderr, &text.stdout, &text.stderr] {
        assert!(!text.contains(secret), "the token leaked:\n{text}");
    }
    assert_eq!(some_file_holds(&archive, secret), None);
    // The catalog's view says the same.
    let reason: String = catalog(&archive)
        .query_row(
            "SELECT reason FROM v_refs WHERE state = 'failed'",
            [],
            |r| r.get(0),
        )
        .expect("v_refs");
    assert!(!reason.contains(secret), "{reason}");
}

// ---- "temporarily unavailable" ----------------------------------------------

#[test]
fn temporarily_unavailable_is_retried_and_other_refusals_are_final() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(4, 1500);
    tg.unavailable(&ids[0], 3).gone(&ids[1]).too_big(&ids[2]);
    let mut db = Db::per_env();
    for id in &ids {
        db.in_env("prod", Some(id.as_str()), None);
    }
    db.in_env("prod", Some("no-such-file-id"), None);
    let archive = db.snapshotted(dir.path());

    let doc = run(&mut fetch_cmd(&archive, None, Some(&tg)))
        .expect_code(3)
        .json();
    assert_eq!(doc["done"], 2, "{doc}");
    assert_eq!(doc["failed"], 3, "{doc}");
    // Unavailable three times, then served.
    assert_eq!(state_of(&archive, &ids[0]), ["fetched"]);
    assert_eq!(tg.get_file_calls(&ids[0]), 4);
    assert_eq!(tg.completed_downloads(&ids[0]), 1);
    // Always unavailable: a few tries, then that reason.
    assert_eq!(tg.get_file_calls(&ids[1]), 5);
    let reason_of = |id: &str| {
        refs(&archive)
            .into_iter()
            .find(|r| r.file_id.as_deref() == Some(id))
            .and_then(|r| r.reason)
            .unwrap_or_default()
    };
    let reason = reason_of(&ids[1]);
    assert!(
        reason.contains("wrong file_id or the file is temporarily unavailable"),
        "{reason}"
    );
    // Too big and invalid are final at once.
    assert_eq!(tg.get_file_calls(&ids[2]), 1);
    assert!(reason_of(&ids[2]).contains("file is too big"));
    assert_eq!(tg.get_file_calls("no-such-file-id"), 1);
    assert!(reason_of("no-such-file-id").contains("invalid file_id"));
    assert_eq!(state_of(&archive, &ids[3]), ["fetched"]);
}

#[test]
fn a_local_file_shorter_than_get_file_says_is_never_stored() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(1, 4000);
    let root = dir.path().join("srv");
    tg.local(&root);
    // The server is still writing it: half of it is on disk.
    let path = tg.local_path(&ids[0]).expect("path");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, &tg.file_bytes(&ids[0]).expect("bytes")[..2000]).expect("write");
    let mut db = Db::per_env();
    db.in_env("prod", Some(ids[0].as_str()), None);
    let archive = db.snapshotted(dir.path());

    let doc = run(&mut fetch_cmd(&archive, None, Some(&tg)))
        .expect_code(3)
        .json();
    assert_eq!(doc["failed"], 1, "{doc}");
    assert!(clean_blobs(&archive).is_empty(), "nothing stored");
    assert_eq!(tg.get_file_calls(&ids[0]), 5, "read again, a few times");
    let reason = refs(&archive)[0].reason.clone().expect("reason");
    assert!(reason.contains("2000 bytes where 4000"), "{reason}");
    assert!(!reason.contains(TOKEN), "{reason}");
}

/// The trial's case: refs of env `staging-eu` fail "wrong file_id" because
/// `TELEGRAM_BOT_TOKEN_STAGING_EU` is unset and the default bot was asked.
/// The summary names the variable to set; once it is set, no such note.
#[test]
fn wrong_file_id_of_an_env_without_its_token_names_its_variable() {
    let dir = temp_dir();
    let (tg, archive) = two_bots(dir.path());
    let out = run(fetch_cmd(&archive, None, Some(&tg)).args(["--env", "staging-eu"]));
    let doc = out.expect_code(3).json();
    let notes: Vec<String> = doc["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .map(|n| n.as_str().expect("note").to_string())
        .collect();
    let named: Vec<&String> = notes
        .iter()
        .filter(|n| n.contains("TELEGRAM_BOT_TOKEN_STAGING_EU"))
        .collect();
    assert_eq!(named.len(), 1, "{notes:?}");
    assert!(
        named[0].starts_with("2 refs of env staging-eu failed with Telegram's \"wrong file_id\"")
            && named[0].contains("set TELEGRAM_BOT_TOKEN_STAGING_EU to its token")
            && named[0].contains("fetch --retry-failed"),
        "{notes:?}"
    );
    let text = run(bin()
        .arg("--archive")
        .arg(&archive)
        .arg("fetch")
        .envs(tg.env()))
    .expect_code(3)
    .stdout
    .clone();
    assert!(text.contains("set TELEGRAM_BOT_TOKEN_STAGING_EU"), "{text}");
    // status says it too, while the variable is unset.
    let status = |token: Option<&str>| {
        let mut cmd = bin();
        cmd.arg("--archive")
            .arg(&archive)
            .args(["--json", "status"]);
        if let Some(token) = token {
            cmd.env("TELEGRAM_BOT_TOKEN_STAGING_EU", token);
        }
        run(&mut cmd).expect_code(0).json()
    };
    let doc = status(None);
    assert!(
        doc["notes"]
            .to_string()
            .contains("2 refs of env staging-eu failed with Telegram's \\\"wrong file_id\\\""),
        "{doc:#}"
    );
    // Set: no note for its env (the prod ref of the staging bot's file
    // has one of its own: prod has no variable of its own either).
    let doc = status(Some(TOKEN_EU));
    assert!(!doc.to_string().contains("STAGING_EU"), "{doc:#}");
    assert!(
        doc["notes"].to_string().contains("TELEGRAM_BOT_TOKEN_PROD"),
        "{doc:#}"
    );

    // With its token: fetched, and the note is gone.
    let doc = run(fetch_cmd(&archive, None, Some(&tg))
        .args(["--retry-failed"])
        .env("TELEGRAM_BOT_TOKEN_STAGING_EU", TOKEN_EU))
    .expect_code(0)
    .json();
    assert_eq!(doc["failed"], 0, "{doc}");
    assert!(!doc.to_string().contains("wrong file_id"), "{doc}");
}
