//! Datasets: the fixture bot in `fixtures/`, and generated ones written as
//! the dashboard's CSV exports ([`Db`]) with sticker-like bytes
//! ([`sticker_bytes`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::run::{run, starchive};

/// The fixture bot's CSV exports.
pub const FIXTURE_DB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/db");
/// The fixture bot's bucket (a directory).
pub const FIXTURE_BUCKET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/bucket");
/// The fixture bot's Telegram files, named by file_id.
pub const FIXTURE_TELEGRAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/telegram");
/// What a snapshot and plan of the fixture bot give.
pub const FIXTURE_EXPECTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/expected.json");

/// Deterministic pseudo-random bytes (xorshift64*), `len` long, starting
/// with a WebP header so that they look like stickers (typed `webp`).
pub fn sticker_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(b"RIFF\0\0\0\0WEBPVP8L");
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A CSV field: `None` is an empty unquoted field (NULL), text is quoted.
pub fn field(v: Option<&str>) -> String {
    match v {
        None => String::new(),
        Some(s) => format!("\"{}\"", s.replace('"', "\"\"")),
    }
}

/// A dataset written as the dashboard's CSV exports: rows given one by one
/// ([`Db::session`], [`Db::sticker`], [`Db::batch`]), or, from
/// [`Db::per_env`], numbered stickers of one session per env
/// ([`Db::in_env`]).
#[derive(Default)]
pub struct Db {
    sessions: Vec<String>,
    stickers: Vec<String>,
    batches: Vec<String>,
    /// The envs whose session is written (user 1, id `session-<env>`):
    /// `prod`, `test` and those given to [`Db::in_env`]; none unless made
    /// by [`Db::per_env`].
    envs: Option<BTreeSet<String>>,
}

impl Db {
    /// A dataset with a session per env: `prod` and `test`, and every env a
    /// sticker is added to by [`Db::in_env`].
    pub fn per_env() -> Db {
        Db {
            envs: Some(["prod".to_owned(), "test".to_owned()].into()),
            ..Db::default()
        }
    }

    /// A session: id, user, env, last sticker file_id, pack sheet file_id.
    pub fn session(
        &mut self,
        id: &str,
        user: &str,
        env: &str,
        last_file_id: Option<&str>,
        sheet_file_id: Option<&str>,
    ) -> &mut Db {
        self.sessions.push(format!(
            "{},{},{},single,,\"[]\",{},,{},2025-01-01 00:00:00+00,2025-01-01 00:00:00+00",
            field(Some(id)),
            field(Some(user)),
            field(Some(env)),
            field(last_file_id),
            field(sheet_file_id),
        ));
        self
    }

    /// A single sticker: id, user, session, file_id, storage key.
    pub fn sticker(
        &mut self,
        id: &str,
        user: &str,
        session: &str,
        file_id: Option<&str>,
        key: Option<&str>,
    ) -> &mut Db {
        self.stickers.push(format!(
            "{},{},{},,,,{},{},2025-01-01 00:00:00+00",
            field(Some(id)),
            field(Some(user)),
            field(Some(session)),
            field(file_id),
            field(key),
        ));
        self
    }

    /// A pack batch without a cleaned sheet.
    pub fn batch(&mut self, id: &str, session: &str, user: &str) -> &mut Db {
        self.batches.push(format!(
            "{},{},{},done,,2025-01-01 00:00:00+00",
            field(Some(id)),
            field(Some(session)),
            field(Some(user)),
        ));
        self
    }

    /// A sticker (`sticker-00001`, …) of the session of `env` (made
    /// [`Db::per_env`]).
    pub fn in_env(&mut self, env: &str, file_id: Option<&str>, key: Option<&str>) -> &mut Db {
        self.envs
            .as_mut()
            .expect("a dataset made by Db::per_env")
            .insert(env.to_owned());
        self.numbered(&format!("session-{env}"), file_id, key)
    }

    /// A sticker whose session is unknown: its refs have no env.
    pub fn without_env(&mut self, file_id: Option<&str>, key: Option<&str>) -> &mut Db {
        self.numbered("session-unknown", file_id, key)
    }

    fn numbered(&mut self, session: &str, file_id: Option<&str>, key: Option<&str>) -> &mut Db {
        let id = format!("sticker-{:05}", self.stickers.len() + 1);
        self.sticker(&id, "1", session, file_id, key)
    }

    /// Writes `sessions.csv`, `stickers.csv` and `pack_batches.csv` into `dir`.
    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("create db dir");
        let write = |name: &str, header: &str, lines: &[String]| {
            let mut text = format!("{header}\n");
            for l in lines {
                text.push_str(l);
                text.push('\n');
            }
            std::fs::write(dir.join(name), text).expect("write csv");
        };
        let mut per_env = Db::default();
        for env in self.envs.iter().flatten() {
            per_env.session(&format!("session-{env}"), "1", env, None, None);
        }
        let sessions = [self.sessions.as_slice(), &per_env.sessions].concat();
        write(
            "sessions.csv",
            "id,user_id,env,mode,current_photo_file_id,photos,last_sticker_file_id,last_sticker_storage_path,pack_sheet_file_id,created_at,updated_at",
            &sessions,
        );
        write(
            "stickers.csv",
            "id,user_id,session_id,pack_batch_id,pack_index,style_preset_id,telegram_file_id,result_storage_path,created_at",
            &self.stickers,
        );
        write(
            "pack_batches.csv",
            "id,session_id,user_id,status,cleaned_sheet_storage_path,created_at",
            &self.batches,
        );
    }

    /// Writes the CSV exports to `dir/db` and snapshots them into
    /// `dir/archive`, which it returns.
    pub fn snapshotted(&self, dir: &Path) -> PathBuf {
        let archive = dir.join("archive");
        self.snapshot(&dir.join("db"), &archive);
        archive
    }

    /// Writes the CSV exports to `dir` and snapshots them into `archive`.
    pub fn snapshot(&self, dir: &Path, archive: &Path) {
        self.write(dir);
        run(starchive(archive).args(["snapshot", "--db"]).arg(dir)).expect_code(0);
    }
}
