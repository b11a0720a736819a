//! Errors of the library.
//!
//! Policy:
//! - An error that stops a command is an [`Error`]. Its message is what
//!   the user reads after `error:`: it says what failed, on which item
//!   (the key, the file, the store, the row) and, where it helps, what to
//!   do. The binary prints it once, at the top; nothing below `main`
//!   prints an error.
//! - A failure of one item (one ref, one object, one backfill step) is not
//!   an error: it is recorded in the catalog with its reason, the run goes
//!   on, and the report's [`ExitStatus`] remembers it (3).
//! - No secret is ever put in one: URLs and connection strings are
//!   redacted (`crate::redact`) before they become text, and a store is
//!   named by its `shown` form.
//! - Variants say what kind of thing failed, so that a caller can match
//!   on it: bad usage (exit 2), the archive (locked, no catalog, no
//!   snapshot, too new), the catalog's SQLite, a local file, the source
//!   database or CSV, a store's own objects (read, write), the manifest,
//!   and [`Error::Internal`] for a worker that stopped (a bug). What
//!   remains in [`Error::Config`] is a setting that cannot work, found
//!   before any work was done, or a remote state the user must fix.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad usage: an option value that cannot be used as given (exit 2).
    #[error("{0}")]
    Usage(String),

    /// Another process holds the archive's lock.
    #[error(
        "the archive {0} is in use by another starchive process; wait for it to finish or use another --archive"
    )]
    Locked(PathBuf),

    #[error("no catalog in {0}: run `starchive snapshot --db URL` first")]
    NoCatalog(PathBuf),

    /// The catalog exists, but no snapshot was ever completed into it.
    #[error("no snapshot yet in {0}: run `starchive snapshot --db URL` first")]
    NoSnapshot(PathBuf),

    #[error(
        "the catalog {path} has format {found}, newer than this starchive knows ({known}); use a newer starchive"
    )]
    CatalogTooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },

    #[error("catalog: {0}")]
    Catalog(#[from] rusqlite::Error),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// The source database could not be read; `url` is already redacted.
    #[error("database {url}: {message}")]
    Database { url: String, message: String },

    #[error("{path}: {message}")]
    Csv { path: PathBuf, message: String },

    /// A store failed a read of one of starchive's own objects (the
    /// manifest, the catalog copy); `store` is redacted.
    #[error("cannot read {key} at {store}: {reason}")]
    StoreRead {
        store: String,
        key: String,
        reason: String,
    },

    /// A store refused or failed a write of one of starchive's own objects.
    #[error("cannot write {key} to {store}: {reason}")]
    StoreWrite {
        store: String,
        key: String,
        reason: String,
    },

    /// The manifest could not be written as JSON.
    #[error("manifest: {0}")]
    Manifest(serde_json::Error),

    /// A worker or reader of starchive's own stopped (a panic, a cancelled
    /// task): a bug, not a problem of the input.
    #[error("{0}")]
    Internal(String),

    /// A configuration problem found before any work was done.
    #[error("{0}")]
    Config(String),
}

/// Whether an I/O error says the archive's disk takes no more writes: full,
/// over quota, read-only, not writable by this user, or past the file size
/// limit. No download's fault: `fetch` and `pull` stop rather than fail the
/// refs, which stay pending.
pub fn disk_refuses(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        StorageFull | QuotaExceeded | ReadOnlyFilesystem | PermissionDenied | FileTooLarge
    )
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether this is the archive's disk refusing a write ([`disk_refuses`]).
    pub fn disk_refuses(&self) -> bool {
        matches!(self, Error::Io { source, .. } if disk_refuses(source))
    }

    /// The message shown for this error at the top of a command whose
    /// catalog is the file `catalog`. SQLite's own words for a full disk ("database or
    /// disk is full") name neither the file nor the way out: a catalog write
    /// the disk refused gets both. Nothing committed is lost then (the
    /// write's transaction rolled back), so the same command goes on once
    /// there is room.
    pub fn message(&self, catalog: &std::path::Path) -> String {
        match self {
            Error::Catalog(e) => match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DiskFull) => format!(
                    "{self}: cannot write {}: its disk is full (or over quota): free space there, then run the command again; what was committed stays",
                    catalog.display()
                ),
                // What SQLite says when a disk with no room left at all
                // refuses even its shared-memory file.
                Some(rusqlite::ErrorCode::SystemIoFailure) => format!(
                    "{self}: the disk refused a write of {} (full, over quota or failing): free space there or check the disk, then run the command again; what was committed stays",
                    catalog.display()
                ),
                _ => self.to_string(),
            },
            _ => self.to_string(),
        }
    }

    /// Whether this says the archive cannot be written by this user (its
    /// directory, lock file or catalog read-only): what read-only commands
    /// work around.
    pub fn cannot_write(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ),
            Error::Catalog(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
            ),
            _ => false,
        }
    }

    /// How a command that stops on this error exits (SPEC §3).
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Usage(_) => ExitStatus::Usage,
            _ => ExitStatus::Error,
        }
    }
}

/// How a command ended: its exit code (SPEC §3). Reports say theirs
/// (`exit_status`); only the binary turns one into the process's exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitStatus {
    /// 0: everything done (or nothing was left to do).
    Success,
    /// 1: the command stopped on an [`Error`].
    Error,
    /// 2: bad usage.
    Usage,
    /// 3: the command ran to its end, but some items failed, or what it
    /// checked is not as it should be.
    Incomplete,
}

impl ExitStatus {
    /// [`ExitStatus::Incomplete`] when `incomplete`, else success.
    pub fn incomplete_if(incomplete: bool) -> ExitStatus {
        if incomplete {
            ExitStatus::Incomplete
        } else {
            ExitStatus::Success
        }
    }

    /// The process's exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Error => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Incomplete => 3,
        }
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        std::process::ExitCode::from(status.code())
    }
}
