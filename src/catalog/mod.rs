//! The catalog: `catalog.sqlite`, the archive's only state.
//!
//! One [`Catalog`] owns the SQLite connection and the archive's lock file.
//! Locking: an exclusive OS lock on `catalog.lock` is taken before the
//! database is opened and held until the value is dropped, so a second
//! process fails at once and changes nothing; [`Catalog::open_read_only`]
//! takes no lock, so `plan`, `status`, `gallery` and `check` run beside
//! any command (the WAL gives them a consistent view while another process
//! writes). Durability: WAL with `synchronous=FULL`, so a commit that returned survives power loss; every
//! state change a command reports has been committed first. Compatibility:
//! `PRAGMA user_version` numbers the migrations applied; they are append-only,
//! and a catalog newer than this binary is refused rather than misread.

pub mod backfill;
pub mod check;
pub mod derive;
pub mod events;
pub mod fetch;
pub mod gallery;
mod migrations;
pub mod plan;
pub mod pull;
pub mod push;
pub mod scope;
pub mod snapshot;
pub mod status;
pub mod tally;
pub mod verify;

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;

use crate::error::{Error, Result};

/// What a published blob is ([`crate::blobs`] publishes it; the catalog
/// records it on the refs it holds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub sha256: String,
    pub size: u64,
    /// Extension from the bytes: webp, png, jpg, webm, tgs or bin.
    pub kind: &'static str,
}

/// An enum stored in the catalog as text: each variant with its name, read
/// and written by rusqlite as that name (an unknown name is an error).
macro_rules! sql_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// The name the catalog stores.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.name().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                match value.as_str()? {
                    $($text => Ok($name::$variant),)+
                    other => Err(rusqlite::types::FromSqlError::Other(
                        format!("unknown {} {other:?}", stringify!($name)).into(),
                    )),
                }
            }
        }
    };
}
pub(crate) use sql_enum;

sql_enum! {
    /// `refs.state`: where a ref's file stands.
    pub enum RefState {
        /// Not fetched yet (or to fetch again).
        Pending = "pending",
        /// Its bytes are a blob of the archive.
        Fetched = "fetched",
        /// It could not be had; `reason` says why.
        Failed = "failed",
    }
}

sql_enum! {
    /// `objects.state`: what this archive knows of an object at a destination.
    pub enum ObjectState {
        /// The store acknowledged it (and made it durable).
        Pushed = "pushed",
        /// The upload failed, or `verify` found other bytes there.
        Failed = "failed",
    }
}

sql_enum! {
    /// `placements.state`: where a ref stands at a destination.
    pub enum PlacementState {
        /// Not pushed yet (or to push again).
        Pending = "pending",
        /// Its object is at its key.
        Pushed = "pushed",
        /// It could not be placed; `reason` says why.
        Failed = "failed",
    }
}

pub const CATALOG_FILE: &str = "catalog.sqlite";
const LOCK_FILE: &str = "catalog.lock";
/// The `settings` key of the archive's identity.
pub const ARCHIVE_ID: &str = "archive_id";
/// The `settings` key of the write generation: a counter every opening of
/// the catalog to write bumps (before it writes anything), but `push`'s,
/// whose writes are records of its own destination. A push that left a
/// destination whole records the generation it saw; while the counter
/// still says so, nothing a push writes can have changed, and the next push
/// there sends nothing but the manifest check (`push`'s fast path). A
/// command that ends having changed nothing in the catalog puts the counter
/// back ([`Catalog::open_existing`]); one killed keeps it bumped.
pub const WRITE_GENERATION: &str = "write_generation";
/// The `settings` key that keeps photo refs in scope once
/// `fetch --include photos` asked for them.
pub const INCLUDE_PHOTOS: &str = "include_photos";

/// The SQL condition that keeps refs of the selected envs: `?1` is a JSON
/// array of envs, or NULL for every env (`Context::env_param`).
pub const ENV_FILTER: &str = "(?1 IS NULL OR env IN (SELECT value FROM json_each(?1)))";

/// How a ref is named in reports: `table/row_id`, plus the slot for photos.
pub const REF_LABEL_SQL: &str = "row_table || '/' || row_id || CASE WHEN slot = '' THEN '' ELSE '/' || class || '/' || slot END";

/// The size, in bytes, at which the catalog's write-ahead log is
/// checkpointed, and to which it is cut back after.
const WAL_BYTES: i64 = 1024 * 1024;

/// Keeps the write-ahead log of `conn` near [`WAL_BYTES`]. SQLite's default
/// checkpoints it at 1,000 pages (16 MiB of the catalog's 16 KiB pages) and
/// keeps the file at that size: a fetch, which commits a page or two per
/// file, then needed 16 MiB more disk than its files, and a disk that did
/// not have it stopped every run after ("database or disk is full").
fn limit_wal(conn: &Connection) -> Result<()> {
    let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    conn.pragma_update(None, "wal_autocheckpoint", (WAL_BYTES / page.max(1)).max(1))?;
    conn.pragma_update(None, "journal_size_limit", WAL_BYTES)?;
    Ok(())
}

/// How often [`WriteBehind`] hands the catalog's written pages to the disk.
const WRITE_BEHIND_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Hands the pages a long transaction writes to the disk while it runs,
/// from a thread of its own (`fdatasync` every [`WRITE_BEHIND_EVERY`]) so
/// that the disk writes while the transaction computes. Otherwise the
/// kernel keeps them in its page cache until the commit's `fsync`, which
/// then waits for all of them: a first snapshot of a million rows wrote
/// about 600 MB there, 2.3 s of commit on a disk that writes 400 MB/s.
/// Durability is SQLite's as before: this only writes sooner pages that
/// SQLite already wrote, never in place of its own syncs. Stopped (and the
/// thread joined) when dropped.
struct WriteBehind {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriteBehind {
    /// Starts on the file at `path`; `None` (the commit then writes all)
    /// when it cannot be opened.
    fn start(path: &Path) -> Option<WriteBehind> {
        let file = File::open(path)
            .inspect_err(|e| tracing::debug!("no write-behind for {}: {e}", path.display()))
            .ok()?;
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("write-behind".into())
            .spawn(move || {
                let (stopped, wake) = &*flag;
                let mut stopped = stopped.lock().unwrap_or_else(|e| e.into_inner());
                while !*stopped {
                    stopped = wake
                        .wait_timeout(stopped, WRITE_BEHIND_EVERY)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if !*stopped {
                        // A failure here is SQLite's to meet at its own sync.
                        let _ = file.sync_data();
                    }
                }
            })
            .inspect_err(|e| tracing::debug!("no write-behind thread: {e}"))
            .ok()?;
        Some(WriteBehind {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// SQLite's page cache, in KiB (negative: SQLite's unit for KiB).
const CACHE_KIB: i64 = -8 * 1024;

pub struct Catalog {
    conn: Connection,
    dir: PathBuf,
    /// What puts the [`WRITE_GENERATION`] back when this catalog is closed
    /// having changed nothing; `None` when it stays as it is.
    watch: Option<ChangeWatch>,
    /// The archive's lock; `None` for a read-only catalog.
    _lock: Option<ArchiveLock>,
    /// Where a read-only catalog read from an archive that cannot be
    /// written was copied to be migrated (removed when dropped).
    _copy: Option<tempfile::TempDir>,
}

/// What an opening to write does with the [`WRITE_GENERATION`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Generation {
    /// Leaves it as it is (`push`), unless the opening migrates the catalog.
    Keep,
    /// Bumps it for good (`snapshot`, which always records a snapshot).
    Bump,
    /// Bumps it, and puts it back when the catalog is closed having changed
    /// nothing ([`ChangeWatch`]).
    BumpUnlessUnchanged,
}

/// The SQL function the watch's triggers call with the number of the
/// table a row of which changed: it notes the table and returns false.
const CHANGED_FN: &str = "starchive_changed";
/// The SQL function that says whether the watch saw a change already.
const SEEN_FN: &str = "starchive_change_seen";

/// Watches a command's changes to the catalog, to put the
/// [`WRITE_GENERATION`] it bumped on opening back when it changed nothing.
/// TEMP triggers on every table of `main` (SQLite's update hook misses
/// WITHOUT ROWID tables, and its change counts include TEMP tables, which
/// the commands' plans live in) call [`CHANGED_FN`] for a row inserted, a
/// row deleted, or a row updated to other values: an update that writes
/// what was there is no change. A change of the schema (`schema_version`)
/// is one too, and so is a change rolled back (conservative: the next push
/// merely compares the whole plan). Crash-safe: the bump is committed
/// before the command writes and undone only by a clean close that saw no
/// change, so a command killed after it committed anything leaves the
/// generation moved on.
struct ChangeWatch {
    /// The counter's text before the bump (`None`: the catalog had none).
    before: Option<String>,
    /// Its text after the bump: only that is put back.
    bumped: String,
    /// `main`'s `schema_version` once the watch was set.
    schema_version: i64,
    /// The table of the first change seen.
    changed: Arc<OnceLock<String>>,
}

impl ChangeWatch {
    /// Bumps the [`WRITE_GENERATION`] of `conn` (committed at once) and
    /// watches every table of `main` from then on.
    fn start(conn: &Connection) -> Result<ChangeWatch> {
        let before = setting(conn, WRITE_GENERATION)?;
        let bumped = bump_write_generation(conn)?;
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM main.sqlite_schema
                 WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
                   AND sql NOT LIKE 'CREATE VIRTUAL %'
                 ORDER BY name",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut sql = String::new();
        for (i, table) in tables.iter().enumerate() {
            let columns: Vec<String> = conn
                .prepare("SELECT name FROM pragma_table_info(?1, 'main') ORDER BY cid")?
                .query_map([table], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let differ = columns
                .iter()
                .map(|c| format!("OLD.{0} IS NOT NEW.{0}", ident(c)))
                .collect::<Vec<_>>()
                .join(" OR ");
            let on = format!("main.{}", ident(table));
            // Lazy (CASE): once a change was seen, an update costs a call
            // (a 1M-row update as fast as without the watch); until then the
            // function runs only for a row that changed.
            sql.push_str(&format!(
                "CREATE TEMP TRIGGER starchive_watch_{i}_insert AFTER INSERT ON {on}
                     WHEN {CHANGED_FN}({i}) BEGIN SELECT 1; END;
                 CREATE TEMP TRIGGER starchive_watch_{i}_delete AFTER DELETE ON {on}
                     WHEN {CHANGED_FN}({i}) BEGIN SELECT 1; END;
                 CREATE TEMP TRIGGER starchive_watch_{i}_update AFTER UPDATE ON {on}
                     WHEN CASE WHEN {SEEN_FN}() THEN 0 WHEN {differ} THEN {CHANGED_FN}({i}) ELSE 0 END
                     BEGIN SELECT 1; END;\n"
            ));
        }
        let changed = Arc::new(OnceLock::new());
        let seen = changed.clone();
        // Neither is deterministic: SQLite would be free to call them once
        // for a statement, whatever the rows.
        conn.create_scalar_function(CHANGED_FN, 1, FunctionFlags::SQLITE_UTF8, move |ctx| {
            if seen.get().is_none() {
                let i = ctx.get::<usize>(0)?;
                let _ = seen.set(tables.get(i).cloned().unwrap_or_default());
            }
            Ok(false)
        })?;
        let seen = changed.clone();
        conn.create_scalar_function(SEEN_FN, 0, FunctionFlags::SQLITE_UTF8, move |_| {
            Ok(seen.get().is_some())
        })?;
        conn.execute_batch(&sql)?;
        Ok(ChangeWatch {
            before,
            bumped,
            schema_version: schema_version(conn)?,
            changed,
        })
    }

    /// Puts the [`WRITE_GENERATION`] back if nothing changed since
    /// [`ChangeWatch::start`] and the counter still says what it bumped.
    fn finish(self, conn: &Connection) -> Result<()> {
        let bumped = &self.bumped;
        if let Some(table) = self.changed.get() {
            tracing::debug!("the catalog changed (in {table} first): write generation {bumped}");
            return Ok(());
        }
        if schema_version(conn)? != self.schema_version {
            tracing::debug!("the catalog's schema changed: write generation {bumped}");
            return Ok(());
        }
        match &self.before {
            Some(before) => conn.execute(
                "UPDATE settings SET value = ?2 WHERE key = ?1 AND value = ?3",
                [WRITE_GENERATION, before, bumped],
            )?,
            None => conn.execute(
                "DELETE FROM settings WHERE key = ?1 AND value = ?2",
                [WRITE_GENERATION, bumped],
            )?,
        };
        tracing::debug!(
            "nothing changed in the catalog: write generation back to {}",
            self.before.as_deref().unwrap_or("none")
        );
        Ok(())
    }
}

/// `main`'s `PRAGMA schema_version`: moves with every change of its schema.
fn schema_version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(Some("main"), "schema_version", |r| r.get(0))?)
}

/// `name` as an SQL identifier, quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Bumps the [`WRITE_GENERATION`] of the catalog `conn` opens (committed
/// at once when no transaction is open); returns its new text.
pub fn bump_write_generation(conn: &Connection) -> Result<String> {
    Ok(conn.query_row(
        "INSERT INTO settings(key, value) VALUES (?1, '1')
         ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1
         RETURNING value",
        [WRITE_GENERATION],
        |r| r.get(0),
    )?)
}

impl Drop for Catalog {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.take()
            && let Err(e) = watch.finish(&self.conn)
        {
            // Conservative: the next push compares the whole plan.
            tracing::debug!("write generation not put back: {e}");
        }
    }
}

/// The archive's exclusive lock, held until dropped.
pub struct ArchiveLock {
    _file: File,
}

impl ArchiveLock {
    /// Locks the archive `dir` (created when missing), or says who holds it.
    pub fn take(dir: &Path) -> Result<ArchiveLock> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create the archive {}", dir.display()), e))?;
        Ok(ArchiveLock {
            _file: lock_archive(dir)?,
        })
    }

    /// Lets go of the lock of `dir` and removes its file, and `dir` itself
    /// when nothing else is in it: what a command that failed before it
    /// wrote anything leaves of an archive it was to create.
    pub fn abandon(self, dir: &Path) {
        let _ = std::fs::remove_file(dir.join(LOCK_FILE));
        drop(self);
        // Fails, as it should, when the directory holds anything.
        let _ = std::fs::remove_dir(dir);
    }
}

/// A read-only connection to the catalog at `path` (`immutable`: SQLite
/// takes no lock and reads no WAL, see [`Catalog::open_read_only`]), and
/// its `user_version`, read to find out whether the catalog can be read.
fn read_only_conn(path: &Path, immutable: bool) -> rusqlite::Result<(Connection, i64)> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if immutable {
        let mut uri = url::Url::from_file_path(path)
            .map_err(|()| rusqlite::Error::InvalidPath(path.to_path_buf()))?;
        uri.set_query(Some("immutable=1"));
        Connection::open_with_flags(uri.as_str(), flags | OpenFlags::SQLITE_OPEN_URI)?
    } else {
        Connection::open_with_flags(path, flags)?
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let found = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok((conn, found))
}

/// Whether SQLite failed for want of write access (to the `-shm` file of a
/// WAL catalog in a directory that cannot be written).
fn cannot_write(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, ReadOnly};
    matches!(e.sqlite_error_code(), Some(ReadOnly | CannotOpen))
}

/// Whether the catalog's `-wal` file holds anything: commits not yet in
/// the database file, which an immutable read would not see.
fn wal_holds_commits(catalog: &Path) -> bool {
    let mut wal = catalog.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(PathBuf::from(wal)).is_ok_and(|m| m.len() > 0)
}

/// Whether another command holds the lock of the archive `dir` (a fetch or
/// a pull may be writing blobs). Probed with a shared lock let go at once;
/// a missing lock file means no command ever wrote there.
pub fn writer_running(dir: &Path) -> Result<bool> {
    let path = dir.join(LOCK_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(Error::io(
                format!("cannot open the lock file {}", path.display()),
                e,
            ));
        }
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(Error::io(
            format!("cannot probe the lock of the archive {}", dir.display()),
            e,
        )),
    }
}

impl Catalog {
    /// Opens the archive's catalog, creating the archive when it does not
    /// exist, for `snapshot`: a new [`WRITE_GENERATION`] for good.
    pub fn open_or_create(dir: &Path) -> Result<Catalog> {
        Self::open_in(dir, Generation::Bump)
    }

    /// Opens the catalog of an archive that must already exist, with a new
    /// [`WRITE_GENERATION`] that is put back when the catalog is closed
    /// (dropped) having changed nothing ([`ChangeWatch`]): a `fetch`,
    /// `verify` or `backfill` with nothing to do leaves `push`'s fast path
    /// open.
    pub fn open_existing(dir: &Path) -> Result<Catalog> {
        if !dir.join(CATALOG_FILE).is_file() {
            return Err(Error::NoCatalog(dir.to_path_buf()));
        }
        Self::open_in(dir, Generation::BumpUnlessUnchanged)
    }

    /// Opens the catalog of an existing archive to read only, without the
    /// archive's lock, so that it can be read while another command writes.
    /// A catalog that still lacks migrations is opened as a writer once,
    /// to bring it up to date.
    ///
    /// An archive that cannot be written (a read-only copy, a mount, another
    /// user's) is read too: in WAL mode SQLite needs the `-shm` file, which
    /// a read-only directory cannot get, so the catalog is then opened as
    /// immutable, which is safe only while no one writes it: only when no
    /// `-wal` holds commits (no writer is open, none left work behind) and
    /// the normal open failed for want of write access, so that no command
    /// of this user can be writing. A catalog that lacks migrations is
    /// migrated in a temporary copy, the archive left as it is.
    pub fn open_read_only(dir: &Path) -> Result<Catalog> {
        let path = dir.join(CATALOG_FILE);
        if !path.is_file() {
            return Err(Error::NoCatalog(dir.to_path_buf()));
        }
        let (conn, found) = match read_only_conn(&path, false) {
            Ok(opened) => opened,
            Err(e) if cannot_write(&e) && !wal_holds_commits(&path) => {
                tracing::debug!(
                    "{} cannot be opened as usual ({e}): reading it as immutable",
                    path.display()
                );
                read_only_conn(&path, true)?
            }
            Err(e) => return Err(e.into()),
        };
        if found < migrations::count() {
            drop(conn);
            match Self::open_in(dir, Generation::Bump) {
                Ok(catalog) => drop(catalog),
                Err(e) if e.cannot_write() => return Self::open_migrated_copy(dir),
                Err(e) => return Err(e),
            }
            return Self::open_read_only(dir);
        }
        migrations::check_version(found, &path)?;
        conn.pragma_update(None, "cache_size", CACHE_KIB)?;
        Ok(Catalog {
            conn,
            dir: dir.to_path_buf(),
            watch: None,
            _lock: None,
            _copy: None,
        })
    }

    /// [`Catalog::open_read_only`] of a migrated copy of the catalog of
    /// `dir`, an archive that cannot be written.
    fn open_migrated_copy(dir: &Path) -> Result<Catalog> {
        let copy = tempfile::Builder::new()
            .prefix("starchive-catalog-")
            .tempdir()
            .map_err(|e| Error::io("cannot make a temporary directory", e))?;
        tracing::info!(
            "{} cannot be written and its catalog is older than this starchive: reading a migrated copy in {}",
            dir.display(),
            copy.path().display()
        );
        for name in [CATALOG_FILE.to_string(), format!("{CATALOG_FILE}-wal")] {
            let from = dir.join(&name);
            if from.is_file() {
                let to = copy.path().join(&name);
                let cannot = |e| Error::io(format!("cannot copy {}", from.display()), e);
                std::fs::copy(&from, &to).map_err(cannot)?;
                // The copy keeps the original's mode: read-only, as likely as not.
                let mut mode = std::fs::metadata(&to).map_err(cannot)?.permissions();
                #[allow(clippy::permissions_set_readonly_false)]
                mode.set_readonly(false);
                std::fs::set_permissions(&to, mode).map_err(cannot)?;
            }
        }
        drop(Self::open_in(copy.path(), Generation::Bump)?);
        let mut catalog = Self::open_read_only(copy.path())?;
        catalog.dir = dir.to_path_buf();
        catalog._copy = Some(copy);
        Ok(catalog)
    }

    fn open_in(dir: &Path, generation: Generation) -> Result<Catalog> {
        Self::open_with(dir, ArchiveLock::take(dir)?, generation)
    }

    /// Opens the catalog of an existing archive for `push`, whose writes
    /// (records of its destination) leave the [`WRITE_GENERATION`] as it
    /// is, unless this opening migrates the catalog.
    pub fn open_existing_for_push(dir: &Path) -> Result<Catalog> {
        if !dir.join(CATALOG_FILE).is_file() {
            return Err(Error::NoCatalog(dir.to_path_buf()));
        }
        Self::open_with(dir, ArchiveLock::take(dir)?, Generation::Keep)
    }

    /// Opens (creating or migrating) the catalog of an archive whose lock
    /// the caller took first, to look at the directory before it is
    /// opened. Like [`Catalog::open_existing`], a close having changed
    /// nothing puts the [`WRITE_GENERATION`] back.
    pub fn open_locked(dir: &Path, lock: ArchiveLock) -> Result<Catalog> {
        Self::open_with(dir, lock, Generation::BumpUnlessUnchanged)
    }

    /// Opens the catalog to write, the [`WRITE_GENERATION`] as `generation` says.
    fn open_with(dir: &Path, lock: ArchiveLock, generation: Generation) -> Result<Catalog> {
        let path = dir.join(CATALOG_FILE);
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // 16 KiB pages for a new catalog (an existing one keeps its own):
        // a snapshot writes a GB per million rows, in a quarter of the
        // system calls and B-tree pages of SQLite's default 4 KiB.
        conn.pragma_update(None, "page_size", 16_384)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        limit_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // 8 MiB of page cache: rows arrive in id order, so even a large
        // snapshot writes its indexes at their ends and a small cache does;
        // memory stays flat whatever the row count.
        conn.pragma_update(None, "cache_size", CACHE_KIB)?;
        // A large sort (an index a snapshot builds: a million refs' file id
        // hashes) takes the other cores too, idle by then: SQLite's sorter
        // sorts and merges runs on up to this many more threads
        // (https://sqlite.org/pragma.html#pragma_threads; default none).
        let more_threads = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
        conn.pragma_update(None, "threads", more_threads.min(4) as i64)?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        migrations::migrate(&mut conn, &path)?;
        // Committed before the command writes: a kill after any of its
        // writes leaves the generation already moved on. A migration is a
        // change for good.
        let migrated = found < migrations::count();
        let watch = match generation {
            Generation::BumpUnlessUnchanged if !migrated => Some(ChangeWatch::start(&conn)?),
            Generation::Keep if !migrated => None,
            _ => {
                bump_write_generation(&conn)?;
                None
            }
        };
        Ok(Catalog {
            conn,
            dir: dir.to_path_buf(),
            watch,
            _lock: Some(lock),
            _copy: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Sets SQLite's page cache of this connection, in KiB.
    pub fn set_cache_kib(&self, kib: u32) -> Result<()> {
        self.conn
            .pragma_update(None, "cache_size", -i64::from(kib))?;
        Ok(())
    }

    /// Keeps this connection's TEMP tables in a file (SQLite's default,
    /// said here because flat memory depends on it), through a page cache
    /// of `kib` KiB.
    pub fn set_temp_in_file(&self, kib: u32) -> Result<()> {
        self.conn.pragma_update(None, "temp_store", "FILE")?;
        self.conn
            .pragma_update(Some("temp"), "cache_size", -i64::from(kib))?;
        Ok(())
    }

    /// Runs `work` with a rollback journal instead of the WAL. A snapshot
    /// writes most of the catalog anew: the WAL would take every page twice
    /// (the log, then the checkpoint), while a rollback journal writes pages
    /// past the old end of the file once and journals only the pages it
    /// overwrites. Crash safety is the same: a hot journal is rolled back on
    /// the next open, which also puts the WAL back.
    pub fn with_rollback_journal<T>(
        &mut self,
        work: impl FnOnce(&mut Catalog) -> Result<T>,
    ) -> Result<T> {
        // SQLite refuses to leave WAL while another connection (a `sqlite3`
        // shell, say) has the catalog open: then the work runs in WAL mode,
        // only slower.
        match self
            .conn
            .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get::<_, String>(0))
        {
            Ok(mode) => tracing::debug!("journal mode for bulk writes: {mode}"),
            Err(e) => tracing::debug!("journal mode stays WAL: {e}"),
        }
        let behind = WriteBehind::start(&self.dir.join(CATALOG_FILE));
        let out = work(self);
        drop(behind);
        // Likewise back: if refused, the next open puts the WAL back.
        if let Err(e) = self.conn.pragma_update(None, "journal_mode", "WAL") {
            tracing::debug!("journal mode not back to WAL yet: {e}");
        }
        out
    }

    /// The [`WRITE_GENERATION`] (0 in a catalog never opened to write since it had one).
    pub fn write_generation(&self) -> Result<i64> {
        Ok(self
            .setting(WRITE_GENERATION)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// The archive's identity (migration 6): kept by every copy of the catalog.
    pub fn archive_id(&self) -> Result<String> {
        self.setting(ARCHIVE_ID)?
            .ok_or_else(|| Error::Config("the catalog has no archive id".into()))
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        setting(&self.conn, key)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        set_setting(&self.conn, key, value)
    }
}

/// The envs the sessions of the latest snapshot name, in order.
pub fn known_envs(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare("SELECT DISTINCT env FROM sessions WHERE env IS NOT NULL ORDER BY env")?;
    let envs = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(envs)
}

/// A `settings` value of `conn`.
fn setting(conn: &Connection, key: &str) -> Result<Option<String>> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Sets a `settings` value on `conn` (a transaction, say).
pub fn set_setting(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO settings(key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

/// Items read from the catalog a page at a time: `next_page` returns the
/// page after the one before it (keyset pagination; empty at the end), so
/// that no statement stays open between pages and the connection is free
/// for writes in between, and no more than a page is held.
pub fn paged<T>(next_page: impl FnMut() -> Result<Vec<T>>) -> impl Iterator<Item = Result<T>> {
    Paged {
        next_page,
        page: Vec::new().into_iter(),
        ended: false,
    }
}

struct Paged<T, F> {
    next_page: F,
    page: std::vec::IntoIter<T>,
    ended: bool,
}

impl<T, F: FnMut() -> Result<Vec<T>>> Iterator for Paged<T, F> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if let Some(item) = self.page.next() {
            return Some(Ok(item));
        }
        if self.ended {
            return None;
        }
        match (self.next_page)() {
            Ok(page) if page.is_empty() => {
                self.ended = true;
                None
            }
            Ok(page) => {
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
            Err(e) => {
                self.ended = true;
                Some(Err(e))
            }
        }
    }
}

/// Tries, 10 ms apart, before an archive is taken to be locked by another command.
const PROBE_RETRIES: u32 = 5;

fn lock_archive(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            // A command that records what it did needs the archive writable;
            // say so, and which commands read one that is not.
            let read_only = matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            );
            let what = match read_only {
                true => format!(
                    "the archive {} cannot be written (a read-only disk, or not this user's; cannot open the lock file {}): this command records what it does in the catalog; run it where the archive is writable (plan, status, check and gallery read a read-only archive)",
                    dir.display(),
                    path.display()
                ),
                false => format!("cannot open the lock file {}", path.display()),
            };
            Error::io(what, e)
        })?;
    // `check` probes the lock with a shared one let go at once
    // ([`writer_running`]): a lock refused for a few milliseconds is that.
    let mut tries = 0;
    let locked = loop {
        match file.try_lock() {
            Err(TryLockError::WouldBlock) if tries < PROBE_RETRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            locked => break locked,
        }
    };
    match locked {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
        Err(TryLockError::Error(e)) => Err(Error::io(
            format!("cannot lock the archive {}", dir.display()),
            e,
        )),
    }
}

/// Now, as RFC 3339 UTC text to the second (`2025-11-25T10:00:00Z`): how
/// the catalog writes times.
pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_behind_runs_beside_the_writes_and_stops_when_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(WriteBehind::start(&dir.path().join("none")).is_none());
        let path = dir.path().join(CATALOG_FILE);
        let mut file = File::create(&path).expect("create");
        let behind = WriteBehind::start(&path).expect("started");
        for _ in 0..3 {
            std::io::Write::write_all(&mut file, &[7u8; 1 << 20]).expect("write");
            std::thread::sleep(WRITE_BEHIND_EVERY);
        }
        drop(behind);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 3 << 20);
    }

    #[test]
    fn now_text_is_rfc3339_utc_to_the_second() {
        let text = now_text();
        assert_eq!(text.len(), "2025-11-25T10:00:00Z".len(), "{text}");
        assert!(text.ends_with('Z'), "{text}");
        let parsed = chrono::DateTime::parse_from_rfc3339(&text).expect("RFC 3339");
        let age = chrono::Utc::now().signed_duration_since(parsed);
        assert!(age.num_seconds().abs() <= 5, "{text} is now");
    }

    #[test]
    fn paged_yields_every_page_in_order_until_an_empty_one() {
        let mut pages = vec![vec![1, 2], vec![3], Vec::new(), vec![99]].into_iter();
        let items: Vec<i32> = paged(|| Ok(pages.next().unwrap_or_default()))
            .collect::<Result<_>>()
            .expect("pages");
        assert_eq!(items, [1, 2, 3]);
    }

    #[test]
    fn paged_stops_at_a_page_that_cannot_be_read() {
        let mut calls = 0;
        let items: Vec<Result<i32>> = paged(|| {
            calls += 1;
            match calls {
                1 => Ok(vec![1]),
                _ => Err(Error::Config("unreadable".into())),
            }
        })
        .take(5)
        .collect();
        assert!(matches!(items.as_slice(), [Ok(1), Err(Error::Config(_))]));
    }

    /// A command's writes to the catalog.
    type Write = fn(&Connection);

    /// The write generation after `write` ran on a catalog opened by
    /// `open_existing`, and the one before.
    fn generation_around(write: impl FnOnce(&Connection)) -> (i64, i64) {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Catalog::open_or_create(dir.path()).expect("create"));
        let before = Catalog::open_existing_for_push(dir.path())
            .and_then(|c| c.write_generation())
            .expect("before");
        {
            let catalog = Catalog::open_existing(dir.path()).expect("open");
            assert_eq!(catalog.write_generation().expect("bumped"), before + 1);
            write(catalog.conn());
        }
        let after = Catalog::open_existing_for_push(dir.path())
            .and_then(|c| c.write_generation())
            .expect("after");
        (before, after)
    }

    #[test]
    fn a_command_that_changed_nothing_puts_the_write_generation_back() {
        let unchanged: [(&str, Write); 3] = [
            ("nothing", |_| {}),
            ("an update to the same values", |c| {
                c.execute_batch("UPDATE settings SET value = value; UPDATE blobs SET size = size")
                    .expect("update");
                let id: String = c
                    .query_row(
                        "SELECT value FROM settings WHERE key = ?1",
                        [ARCHIVE_ID],
                        |r| r.get(0),
                    )
                    .expect("archive id");
                set_setting(c, ARCHIVE_ID, &id).expect("upsert");
            }),
            ("a TEMP table", |c| {
                c.execute_batch("CREATE TEMP TABLE t(x); INSERT INTO t VALUES (1);")
                    .expect("temp");
            }),
        ];
        for (what, write) in unchanged {
            let (before, after) = generation_around(write);
            assert_eq!(after, before, "{what}");
        }
    }

    #[test]
    fn a_command_that_changed_anything_keeps_the_write_generation_bumped() {
        let changes: [(&str, Write); 6] = [
            ("a row inserted", |c| {
                set_setting(c, "k", "v").expect("insert");
            }),
            ("a row of a WITHOUT ROWID table", |c| {
                c.execute(
                    "INSERT INTO blobs VALUES ('aa', 1, 'png', 'bucket', '2025-11-25T10:00:00Z')",
                    [],
                )
                .expect("insert");
            }),
            ("a row inserted, then deleted", |c| {
                c.execute_batch(
                    "INSERT INTO settings(key, value) VALUES ('k', 'v');
                     DELETE FROM settings WHERE key = 'k';",
                )
                .expect("insert and delete");
            }),
            ("a row updated to another value", |c| {
                set_setting(c, ARCHIVE_ID, "another").expect("update");
            }),
            ("a row deleted", |c| {
                c.execute("DELETE FROM settings WHERE key = ?1", [ARCHIVE_ID])
                    .expect("delete");
            }),
            ("the schema", |c| {
                c.execute_batch("CREATE INDEX settings_value ON settings(value)")
                    .expect("index");
            }),
        ];
        for (what, write) in changes {
            let (before, after) = generation_around(write);
            assert_eq!(after, before + 1, "{what}");
        }
    }

    #[test]
    fn second_open_is_locked_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Catalog::open_or_create(dir.path()).expect("first open");
        match Catalog::open_or_create(dir.path()) {
            Err(Error::Locked(_)) => {}
            other => panic!("expected Locked, got {:?}", other.err()),
        }
    }
}
