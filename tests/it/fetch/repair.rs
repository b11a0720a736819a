//! What `verify` finds wrong in `blobs/`, the next `fetch` downloads again
//! (SPEC §3), from Telegram as from the bucket (the bucket's case is in the
//! conformance suite).

use super::{clean_blobs, fetch_cmd, refs, telegram_with_files};
use crate::support::dataset::Db;
use crate::support::run::{catalog, run};
use crate::support::{bin, temp_dir};

#[test]
fn a_blob_verify_finds_bad_is_downloaded_again_once() {
    let dir = temp_dir();
    let (tg, ids) = telegram_with_files(2, 1800);
    let mut db = Db::per_env();
    // Two refs of one file_id, in two envs; another file.
    db.in_env("prod", Some(ids[0].as_str()), None)
        .in_env("test", Some(ids[0].as_str()), None)
        .in_env("prod", Some(ids[1].as_str()), None);
    let archive = db.snapshotted(dir.path());
    run(&mut fetch_cmd(&archive, None, Some(&tg))).expect_code(0);
    let blobs = clean_blobs(&archive);
    assert_eq!(blobs.len(), 2);

    // Bit rot in the blob of ids[0].
    let sha = refs(&archive)
        .into_iter()
        .find(|r| r.file_id.as_deref() == Some(ids[0].as_str()))
        .and_then(|r| r.sha256)
        .expect("fetched");
    let path = archive.join("blobs").join(&sha[..2]).join(&sha);
    let mut bytes = std::fs::read(&path).expect("blob");
    bytes[100] ^= 0x01;
    std::fs::write(&path, bytes).expect("spoil");

    // `--env prod` checks the prod refs' blobs; both refs of the bad blob
    // go back to pending, the test env's too, since the blob is gone for all.
    let verify = || {
        run(bin()
            .arg("--archive")
            .arg(&archive)
            .args(["--json", "--env", "prod", "verify"]))
    };
    let out = verify();
    out.expect_code(3);
    let doc = out.json();
    assert_eq!(doc["blobs_bad"], 1, "{doc}");
    assert_eq!(doc["refs_to_fetch_again"], 2, "{doc}");
    let conn = catalog(&archive);
    let (pending, blob_rows): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM refs WHERE state = 'pending' AND sha256 IS NULL),
                    (SELECT count(*) FROM blobs WHERE sha256 = ?1)",
            [&sha],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("counts");
    assert_eq!((pending, blob_rows), (2, 0));
    assert!(!path.exists(), "the bad bytes are removed");
    let text = run(bin().arg("--archive").arg(&archive).arg("verify"));
    assert!(
        text.stdout.contains("all good"),
        "nothing bad is left for a second verify: {}",
        text.stdout
    );

    let doc = run(&mut fetch_cmd(&archive, None, Some(&tg)))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], 2, "{doc}");
    assert_eq!(tg.completed_downloads(&ids[0]), 2, "downloaded again, once");
    assert_eq!(
        tg.completed_downloads(&ids[1]),
        1,
        "the good one is left alone"
    );
    assert_eq!(clean_blobs(&archive), blobs);
    verify().expect_code(0);
}
