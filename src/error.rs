//! Errors of the library.
//!
//! Policy: an error that stops a command is an [`Error`]; it says what failed
//! and, where it helps, what to do, and it never carries a secret (URLs are
//! redacted before they are put in one). A failure of one item (one ref, one
//! object) is not an error: it is recorded in the catalog with its reason and
//! the run goes on; the command's exit code remembers it.

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

    /// A configuration problem found before any work was done.
    #[error("{0}")]
    Config(String),
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Exit code of a command that stops on this error (SPEC §3).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}
