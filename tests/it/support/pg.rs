//! A throwaway PostgreSQL cluster for one test.
//!
//! `TestPg::start()` runs `initdb` into a fresh temp dir and starts the
//! server on a free loopback port with fsync off (about a second). Auth is
//! `trust` for user `postgres`, so `url(db)` needs no password. When the
//! tests run as root (CI here does), every server command runs as the
//! `postgres` OS user through `runuser -u postgres --`, since PostgreSQL
//! refuses to run as root. Dropping the value stops the server
//! (`pg_ctl -m immediate stop`) and removes the directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `tests/schema.sql`: the bot's tables as `shared/schema.sql` describes them.
/// The bot's tables that hold rows, in the order they are loaded.
pub const FIXTURE_TABLES: [&str; 3] = ["sessions", "pack_batches", "stickers"];

pub const SCHEMA_SQL: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/schema.sql"));

pub struct TestPg {
    bin_dir: PathBuf,
    port: u16,
    as_postgres: bool,
    data_dir: PathBuf,
    // Last field: removed after `Drop::drop` has stopped the server.
    dir: tempfile::TempDir,
}

impl TestPg {
    /// Creates and starts a new cluster. Panics (with the server log) if it
    /// cannot.
    pub fn start() -> TestPg {
        let bin_dir = find_bin_dir();
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("starchive-pg-")
            .tempdir_in("/tmp")
            .expect("create temp dir for postgres");
        let data_dir = dir.path().join("data");
        if as_postgres {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod postgres temp dir");
            run_ok(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres")
                    .arg(dir.path()),
                "chown",
            );
        }
        let mut pg = TestPg {
            bin_dir,
            port: 0,
            as_postgres,
            data_dir,
            dir,
        };
        let mut initdb = pg.server_cmd("initdb");
        initdb.arg("-D").arg(&pg.data_dir).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run_ok(&mut initdb, "initdb");

        // The port is free when probed but could be taken before the server
        // binds it: try a few times.
        let mut last_error = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            let options = format!(
                "-k {} -c listen_addresses=127.0.0.1 -p {} -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c shared_buffers=32MB -c max_connections=50",
                pg.dir.path().display(),
                pg.port
            );
            let mut start = pg.server_cmd("pg_ctl");
            start
                .arg("-D")
                .arg(&pg.data_dir)
                .arg("-l")
                .arg(pg.log_path())
                .args(["-w", "-t", "60", "-o", &options, "start"]);
            let out = start.output().expect("run pg_ctl start");
            if out.status.success() {
                return pg;
            }
            last_error = format!(
                "{}{}\n--- server log ---\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(pg.log_path()).unwrap_or_default()
            );
        }
        panic!("pg_ctl start failed:\n{last_error}");
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory of the cluster (data dir, socket, `postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `CREATE DATABASE name`.
    pub fn create_db(&self, name: &str) {
        self.psql("postgres", &format!("create database \"{name}\";"));
    }

    /// Runs `sql` through `psql` (unaligned, tuples only, stop on first
    /// error) against `db` and returns its stdout. Panics with psql's stderr
    /// when psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        use std::io::Write;
        let mut cmd = Command::new(self.psql_path());
        scrub_pg_env(&mut cmd);
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(self.port.to_string())
        .args(["-U", "postgres", "-d", db])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn psql");
        {
            let mut stdin = child.stdin.take().expect("psql stdin");
            stdin.write_all(sql.as_bytes()).expect("write sql to psql");
        }
        let out = child.wait_with_output().expect("wait for psql");
        if !out.status.success() {
            panic!(
                "psql failed on database {db:?} ({}):\n{}\n--- sql ---\n{sql}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout).expect("psql output is UTF-8")
    }

    /// Applies `tests/schema.sql` (the bot's tables) to `db`. The
    /// `create extension pgcrypto` line is dropped when the contrib package
    /// is not installed (PostgreSQL 13+ has `gen_random_uuid()` built in).
    pub fn load_schema(&self, db: &str) {
        let available = self.psql(
            db,
            "select count(*) from pg_available_extensions where name = 'pgcrypto';",
        );
        let sql = if available.trim() == "1" {
            SCHEMA_SQL.to_owned()
        } else {
            SCHEMA_SQL
                .lines()
                .filter(|l| {
                    !l.to_ascii_lowercase()
                        .contains("create extension if not exists pgcrypto")
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        self.psql(db, &sql);
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn psql_path(&self) -> PathBuf {
        let in_bin = self.bin_dir.join("psql");
        if in_bin.exists() {
            in_bin
        } else {
            PathBuf::from("psql")
        }
    }

    /// A command for a server binary, run as `postgres` when we are root.
    fn server_cmd(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        scrub_pg_env(&mut cmd);
        // runuser keeps the cwd; postgres must be able to stat it.
        cmd.current_dir(self.dir.path());
        cmd
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if self.port == 0 {
            return;
        }
        let mut stop = self.server_cmd("pg_ctl");
        stop.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Drops `PG*` variables (PGHOST, PGDATABASE, PGPASSWORD...) that would
/// redirect psql or the server tools.
fn scrub_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(&key);
        }
    }
}

/// The directory holding `initdb` and `pg_ctl`: from PATH, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() && dir.join("pg_ctl").is_file() {
                // Resolve symlinks (/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb)
                // so that sibling tools like psql are found next to it.
                return std::fs::canonicalize(&initdb)
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .unwrap_or(dir);
            }
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found (initdb on PATH or /usr/lib/postgresql/*/bin)"
        ),
    }
}

/// Effective uid 0, read from /proc/self/status (no libc, no unsafe).
fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe a free port")
        .port()
}

impl TestPg {
    /// Database `name` holding schema.sql plus the columns the fixture bot
    /// has beyond it, without the foreign key stickers.session_id (the
    /// fixtures hold a sticker whose session is gone, as old bot data does);
    /// no row yet.
    pub fn create_fixture_schema(&self, name: &str) {
        self.create_db(name);
        self.load_schema(name);
        self.psql(
            name,
            "ALTER TABLE sessions ADD COLUMN language_code text;
             ALTER TABLE stickers ADD COLUMN prompt text;
             ALTER TABLE pack_batches ADD COLUMN style text;
             ALTER TABLE stickers DROP CONSTRAINT stickers_session_id_fkey;",
        );
    }

    /// Copies the fixture bot's rows (`fixtures/db/*.csv`) into `db`.
    pub fn copy_fixture_rows(&self, db: &str) {
        for table in FIXTURE_TABLES {
            let path = Path::new(super::dataset::FIXTURE_DB).join(format!("{table}.csv"));
            let text = std::fs::read_to_string(path).expect("read fixture csv");
            self.copy_csv(db, table, &text);
        }
    }

    /// Database `name` holding the fixture bot ([`TestPg::create_fixture_schema`]
    /// and its rows); its URL.
    pub fn fixture_db(&self, name: &str) -> String {
        self.create_fixture_schema(name);
        self.copy_fixture_rows(name);
        self.url(name)
    }

    /// Loads CSV text (first line: the header naming the columns, in any
    /// order) into `table` of `db` with `COPY … FROM STDIN (FORMAT csv,
    /// HEADER true)`: an empty unquoted field is NULL, `""` the empty string.
    pub fn copy_csv(&self, db: &str, table: &str, csv_text: &str) {
        let header = csv_text.lines().next().unwrap_or_default();
        let columns = header.trim_start_matches('\u{feff}').trim_end_matches('\r');
        let mut sql = format!(
            "SET client_encoding TO 'UTF8';\nCOPY {table} ({columns}) FROM STDIN WITH (FORMAT csv, HEADER true);\n"
        );
        sql.push_str(csv_text);
        // The end-of-data marker must use the data's own line ends.
        let eol = if csv_text.contains("\r\n") {
            "\r\n"
        } else {
            "\n"
        };
        if !csv_text.ends_with('\n') {
            sql.push_str(eol);
        }
        sql.push_str("\\.");
        sql.push_str(eol);
        self.psql(db, &sql);
    }
}
