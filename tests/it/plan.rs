//! `plan`: what the catalog holds and what fetch and backfill have left,
//! per class and env, against the fixture bot's known answers.

use std::path::Path;

use serde_json::{Value, json};

use crate::snapshot::{RefRow, counts, fid, one, refs_of, snapshot_ok, starchive, stderr};
use crate::support::dataset::FIXTURE_EXPECTED;
use crate::support::pg::{FIXTURE_TABLES as TABLES, TestPg};
use crate::support::run::catalog;
use crate::support::temp_dir;

/// `plan --json [extra]`, which must succeed; its report.
pub(crate) fn plan_json(archive: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["plan", "--json"];
    args.extend_from_slice(extra);
    let out = starchive(archive, &args);
    assert_eq!(out.status.code(), Some(0), "plan failed:\n{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("plan --json prints one JSON document")
}

/// On the fixture dataset, whose answers are known (fixtures/expected.json):
/// refs per class, with/without storage key, the backfill volumes, per env,
/// with photos once they are in scope; and the refs of the edge cases.
#[test]
fn plan_counts_match_the_fixture_answers() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(FIXTURE_EXPECTED).expect("expected.json"))
            .expect("expected.json is JSON");
    let pg = TestPg::start();
    let url = pg.fixture_db("bot");
    let archive = temp_dir();
    let report = snapshot_ok(archive.path(), &url, &[]);
    for table in TABLES {
        assert_eq!(
            counts(&report, table).0,
            expected["rows"][table].as_u64().unwrap(),
            "{table}"
        );
    }

    let check = |plan: &Value, want: &Value, with_photos: bool| {
        let classes = want["classes"].as_object().expect("classes");
        for (class, w) in classes {
            let got = &plan["classes"][class];
            for key in ["refs", "with_storage_key", "telegram_only"] {
                assert_eq!(got[key], w[key], "{class}.{key}: {plan}");
            }
            assert_eq!(
                got["pending"], w["refs"],
                "{class}: all pending before fetch"
            );
            assert_eq!(got["fetched"], 0);
            assert_eq!(got["failed"], 0);
        }
        if !with_photos {
            assert_eq!(plan["classes"]["photo"]["refs"], 0, "photos are opt-in");
        }
        for key in ["refs", "with_storage_key", "telegram_only"] {
            assert_eq!(plan["total"][key], want["total"][key], "total.{key}");
        }
        assert_eq!(plan["blobs"], json!({"count": 0, "bytes": 0}));
        for key in [
            "sessions_missing_storage_path",
            "stickers_missing_storage_path",
        ] {
            assert_eq!(
                plan["backfill"][key], expected["backfill"][key],
                "backfill.{key}: {plan}"
            );
        }
    };
    let plan = plan_json(archive.path(), &[]);
    check(&plan, &expected["without_photos"], false);
    for env in ["prod", "test"] {
        let p = plan_json(archive.path(), &["--env", env]);
        assert_eq!(
            p["total"]["refs"], expected["by_env"][env]["refs"],
            "--env {env}"
        );
    }

    // The edge cases of EXPECTED.md, ref by ref.
    let conn = catalog(archive.path());
    let refs = refs_of(&conn);
    let find = |class: &str, row_id: &str| -> Vec<&RefRow> {
        refs.iter()
            .filter(|r| r.0 == class && r.2 == row_id)
            .collect()
    };
    // Session 107's sheet is attached to its latest batch (201), with the batch's cleaned sheet.
    let sheet = find("pack_sheet", &fid(107));
    assert_eq!(sheet.len(), 1);
    assert_eq!(sheet[0].7.as_deref(), Some(fid(201).as_str()));
    assert_eq!(
        sheet[0].10.as_deref(),
        Some("pack_sheets/100000004/00000000-0000-4000-8000-000000000201/1741172400000_clean.png")
    );
    assert!(
        find("pack_sheet", &fid(202)).is_empty(),
        "older batch: no sheet"
    );
    // Batch 203: cleaned sheet, session without a sheet file_id: storage-only ref.
    let storage_only = find("pack_sheet", &fid(203));
    assert_eq!(storage_only.len(), 1);
    assert_eq!(
        (storage_only[0].1.as_str(), storage_only[0].9.as_deref()),
        ("pack_batches", None)
    );
    assert_eq!(storage_only[0].6.as_deref(), Some("test"));
    // Session 110: a sheet and no batch.
    let no_batch = find("pack_sheet", &fid(110));
    assert_eq!(no_batch.len(), 1);
    assert_eq!(
        (no_batch[0].7.as_deref(), no_batch[0].10.as_deref()),
        (None, None)
    );
    // Sticker 316: unknown session, no env.
    let orphan = find("sticker", &fid(316));
    assert_eq!(orphan.len(), 1);
    assert_eq!(orphan[0].6, None);
    // Session 111 names no file; single stickers carry no batch, pack stickers their index.
    assert!(refs.iter().all(|r| r.2 != fid(111)));
    let s306 = find("sticker", &fid(306));
    assert_eq!(
        (s306[0].7.as_deref(), s306[0].8, s306[0].10.as_deref()),
        (Some(fid(201).as_str()), Some(2), None)
    );
    assert_eq!(
        find("sticker", &fid(301))[0].5.as_deref(),
        Some("100000001")
    );
    // The documented view has one row per ref, all pending before any fetch.
    let pending: i64 = one(&conn, "SELECT count(*) FROM v_refs WHERE state = 'pending'");
    assert_eq!(pending, 26);
    drop(conn);

    // Photos come into scope once asked for (the setting `fetch --include photos` records).
    {
        let catalog = starchive::catalog::Catalog::open_or_create(archive.path()).expect("open");
        catalog
            .set_setting(starchive::catalog::INCLUDE_PHOTOS, "true")
            .expect("set include_photos");
    }
    let again = snapshot_ok(archive.path(), &url, &[]);
    assert_eq!(counts(&again, "sessions"), (11, 0, 0, 0, 0), "{again}");
    let plan = plan_json(archive.path(), &[]);
    check(&plan, &expected["with_photos"], true);
    for env in ["prod", "test"] {
        let p = plan_json(archive.path(), &["--env", env]);
        assert_eq!(
            p["total"]["refs"], expected["by_env"][env]["refs_with_photos"],
            "--env {env} with photos"
        );
    }
}
