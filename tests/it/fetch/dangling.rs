//! A key found missing in the bucket is not missing for good: the next fetch
//! with `--storage` reads it again (a wrong bucket URL, or an object the bot
//! uploaded since); a fetch that finds none of the keys hints at the prefix.

use super::{clean_blobs, fetch_cmd, refs};
use crate::support::dataset::{Db, sticker_bytes};
use crate::support::run::run;
use crate::support::s3::TestS3;
use crate::support::temp_dir;

const KEYS: [&str; 3] = [
    "stickers/1/a/x.webp",
    "stickers/1/b/y.webp",
    "stickers/2/c/z.webp",
];

/// Three refs with a key and a file_id, their objects at the bucket's root.
fn dataset(s3: &TestS3) -> Db {
    s3.create_bucket("stickers");
    let mut db = Db::per_env();
    for (i, key) in KEYS.iter().enumerate() {
        s3.put_file("stickers", key, sticker_bytes(i as u64, 700));
        db.in_env("prod", Some(&format!("FILEID{i}")), Some(key));
    }
    db
}

#[test]
fn a_wrong_prefix_then_the_right_one_reads_every_key() {
    let dir = temp_dir();
    let s3 = TestS3::start();
    let db = dataset(&s3);
    let archive = db.snapshotted(dir.path());

    // The wrong prefix: every key is missing, and there is no token.
    let wrong = run(fetch_cmd(&archive, None, None)
        .arg("--storage")
        .arg(s3.store_url("stickers", "stickers"))
        .envs(s3.env("STORAGE")))
    .expect_code(0)
    .json();
    assert_eq!(
        (&wrong["done"], &wrong["pending"]),
        (&0.into(), &3.into()),
        "{wrong}"
    );
    let notes = wrong["notes"].to_string();
    assert!(
        notes.contains("3 refs can only come from Telegram"),
        "{notes}"
    );
    assert!(
        notes.contains(
            "none of the 3 keys the rows name is in the bucket under the prefix 'stickers', \
             but they seem to be at the bucket's root"
        ),
        "{notes}"
    );
    assert!(refs(&archive).iter().all(|r| r.dangling));

    // Another snapshot of the same rows keeps what fetch learnt; the right
    // bucket URL reads every key again.
    db.snapshot(&dir.path().join("db"), &archive);
    let right = run(&mut fetch_cmd(&archive, Some((&s3, "stickers")), None))
        .expect_code(0)
        .json();
    assert_eq!(
        (&right["done"], &right["pending"]),
        (&3.into(), &0.into()),
        "{right}"
    );
    assert!(right.get("notes").is_none(), "{right}");
    for r in refs(&archive) {
        assert_eq!(
            (r.state.as_str(), r.source.as_deref()),
            ("fetched", Some("bucket")),
            "{r:?}"
        );
        assert!(!r.dangling, "{r:?}");
    }
    assert_eq!(clean_blobs(&archive).len(), 3);
}

#[test]
fn an_object_the_bot_uploads_later_is_read_by_the_next_fetch() {
    let dir = temp_dir();
    let s3 = TestS3::start();
    s3.create_bucket("stickers");
    s3.put_file("stickers", "k/here.webp", sticker_bytes(1, 800));
    let mut db = Db::per_env();
    db.in_env("prod", None, Some("k/here.webp"))
        .in_env("prod", Some("FILEIDLATE"), Some("k/late.webp"))
        .in_env("prod", None, Some("k/gone.webp"));
    let archive = db.snapshotted(dir.path());

    let first = run(&mut fetch_cmd(&archive, Some((&s3, "stickers")), None))
        .expect_code(3)
        .json();
    assert_eq!(
        (&first["done"], &first["failed"], &first["pending"]),
        (&1.into(), &1.into(), &1.into()),
        "{first}"
    );
    // One key of three is there: not a wrong prefix, no hint.
    assert!(!first["notes"].to_string().contains("prefix"), "{first}");

    // The bot uploads both objects; a plain fetch (no --retry-failed) reads
    // them: the ref waiting on Telegram and the one failed for its key alone.
    s3.put_file("stickers", "k/late.webp", sticker_bytes(2, 800));
    s3.put_file("stickers", "k/gone.webp", sticker_bytes(3, 800));
    let second = run(&mut fetch_cmd(&archive, Some((&s3, "stickers")), None))
        .expect_code(0)
        .json();
    assert_eq!(
        (&second["done"], &second["failed"], &second["pending"]),
        (&2.into(), &0.into(), &0.into()),
        "{second}"
    );
    assert_eq!(clean_blobs(&archive).len(), 3);
    assert!(
        refs(&archive)
            .iter()
            .all(|r| r.source.as_deref() == Some("bucket"))
    );
}

#[test]
fn an_empty_prefix_gets_the_hint_that_it_lists_nothing() {
    let dir = temp_dir();
    let s3 = TestS3::start();
    let archive = dataset(&s3).snapshotted(dir.path());
    let doc = run(fetch_cmd(&archive, None, None)
        .arg("--storage")
        .arg(s3.store_url("stickers", "nothing/here"))
        .envs(s3.env("STORAGE")))
    .expect_code(0)
    .json();
    let notes = doc["notes"].to_string();
    assert!(
        notes.contains(
            "none of the 3 keys the rows name is in the bucket, which lists no object under \
             the prefix 'nothing/here'"
        ),
        "{notes}"
    );
}

/// The trial's case: most keys read, one missing (a dangling key, waiting on
/// Telegram). Every later fetch with `--storage` reads the missing key again
/// alone and finds it missing again: that is no wrong prefix, at the root or
/// under one, and no hint may say so (nor contradict itself).
#[test]
fn one_dangling_key_beside_keys_read_gets_no_prefix_hint() {
    for prefix in ["", "bot/files"] {
        let dir = temp_dir();
        let s3 = TestS3::start();
        s3.create_bucket("stickers");
        let mut db = Db::per_env();
        let under = |key: &str| {
            if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}/{key}")
            }
        };
        for (i, key) in KEYS.iter().enumerate() {
            s3.put_file("stickers", &under(key), sticker_bytes(i as u64, 700));
            db.in_env("prod", Some(&format!("FILEID{i}")), Some(key));
        }
        db.in_env("prod", Some("FILEIDGONE"), Some("stickers/3/d/gone.webp"));
        let archive = db.snapshotted(dir.path());
        let fetch = || {
            run(fetch_cmd(&archive, None, None)
                .arg("--storage")
                .arg(s3.store_url("stickers", prefix))
                .envs(s3.env("STORAGE")))
            .expect_code(0)
            .json()
        };
        let first = fetch();
        assert_eq!(
            (&first["done"], &first["pending"]),
            (&3.into(), &1.into()),
            "{first}"
        );
        for doc in [first, fetch(), fetch()] {
            let notes = doc["notes"].to_string();
            assert!(!notes.contains("prefix"), "prefix {prefix:?}: {notes}");
            assert!(
                notes.contains("1 refs can only come from Telegram"),
                "{notes}"
            );
        }
    }
}

/// Supabase answers 400 InvalidKey for a key it cannot name (non-ASCII):
/// the bucket will not serve it, but its file_id can. The ref falls back to
/// Telegram as for a missing key; one without a file_id fails with S3's
/// code and message, never the answer's XML.
#[test]
fn a_key_the_real_supabase_refuses_falls_back_to_the_file_id() {
    let server = crate::support::supabase::supabase();
    let bucket = server.bucket();
    let readable = "stickers/1/ok.webp";
    bucket.objects.put(readable, sticker_bytes(7, 900));
    let (tg, ids) = super::telegram_with_files(2, 1000);
    let refused = ["stickers/1/ünï cødé.webp", "stickers/1/ñø_fîlé_id.webp"];
    let mut db = Db::per_env();
    db.in_env("prod", Some(&ids[0]), Some(refused[0]))
        .in_env("prod", Some(&ids[1]), Some(readable))
        .in_env("prod", None, Some(refused[1]));
    let dir = temp_dir();
    let archive = db.snapshotted(dir.path());
    let fetch = || {
        let mut cmd = fetch_cmd(&archive, None, Some(&tg));
        cmd.arg("--storage")
            .arg(bucket.store_url(""))
            .envs(server.env("STORAGE"));
        run(&mut cmd)
    };
    let out = fetch();
    out.expect_code(3);
    assert!(!out.stderr.contains("<?xml"), "{}", out.stderr);
    assert!(
        out.stderr.contains("InvalidKey") && out.stderr.contains("fall back"),
        "the warning notes the key unreadable: {}",
        out.stderr
    );
    let by_key = |key: &str| {
        refs(&archive)
            .into_iter()
            .find(|r| r.key.as_deref() == Some(key))
            .expect("the ref")
    };
    let from_tg = by_key(refused[0]);
    assert_eq!(from_tg.state, "fetched", "{from_tg:?}");
    assert_eq!(from_tg.source.as_deref(), Some("telegram"), "{from_tg:?}");
    assert_eq!(by_key(readable).source.as_deref(), Some("bucket"));
    let failed = by_key(refused[1]);
    assert_eq!(failed.state, "failed", "{failed:?}");
    let reason = failed.reason.clone().unwrap_or_default();
    assert!(reason.contains("HTTP 400 InvalidKey"), "{reason}");
    assert!(reason.contains(refused[1]), "names the key: {reason}");
    assert!(
        !reason.contains('<') && reason.len() < 300,
        "no XML: {reason}"
    );
    // The next fetch leaves them so, and says nothing of XML either.
    let out = fetch();
    out.expect_code(3);
    assert!(!out.stderr.contains("<?xml"), "{}", out.stderr);
    assert_eq!(by_key(refused[0]).state, "fetched");

    // A mirror push to Supabase: the same key is refused on upload; the
    // ref fails with a short reason (the key as written, the status, S3's
    // code and message) and the advice to push with hashed keys, the same
    // in `status --full`; the readable key is pushed.
    let dest = server.bucket();
    let push = || {
        run(crate::support::run::starchive(&archive)
            .args(["--json", "push", "--to", &dest.store_url("")])
            .envs(server.env("TO")))
    };
    let out = push();
    out.expect_code(3);
    assert!(!out.stderr.contains("<?xml"), "{}", out.stderr);
    assert!(
        dest.objects.get(readable).is_some(),
        "the readable key is pushed"
    );
    let status = run(crate::support::run::starchive(&archive).args(["status", "--full"]))
        .stdout
        .clone();
    let line = status
        .lines()
        .find(|l| l.contains(refused[0]))
        .unwrap_or_else(|| panic!("status --full names the refused key: {status}"));
    assert!(line.contains("HTTP 400 InvalidKey"), "{line}");
    assert!(line.contains("--layout cas"), "advice: {line}");
    assert!(
        !status.contains("<?xml") && !status.contains("%C3"),
        "{status}"
    );
    assert!(line.len() < 300, "short: {line}");
    assert!(!out.stdout.contains("<?xml"), "{}", out.stdout);
}
