//! Where the bot's rows come from: a Postgres database or a directory of CSV
//! exports. A source sends [`SourceEvent`]s, in batches, to the catalog
//! writer; it holds no rows itself, so memory stays flat at any table size.

pub mod csv;
pub mod postgres;

use tokio::sync::mpsc;

use crate::catalog::events::SourceEvent;
use crate::error::{Error, Result};

/// Rows travel in batches of this many events.
pub const BATCH: usize = 1024;

/// Where `snapshot --db` reads from.
pub enum SourceSpec {
    Postgres(String),
    CsvDir(std::path::PathBuf),
}

impl SourceSpec {
    /// `origin` names where `db` came from (`--db`, `DATABASE_URL`) in messages.
    pub fn parse(db: &str, origin: &str) -> Result<SourceSpec> {
        if db.starts_with("postgres://")
            || db.starts_with("postgresql://")
            || (crate::redact::conninfo::starts_as_pairs(db) && !std::path::Path::new(db).exists())
        {
            return Ok(SourceSpec::Postgres(db.to_string()));
        }
        let path = std::path::Path::new(db.strip_prefix("file://").unwrap_or(db));
        if path.is_dir() {
            return Ok(SourceSpec::CsvDir(path.to_path_buf()));
        }
        Err(Error::Usage(format!(
            "{origin} {}: neither a postgres:// URL nor a directory of CSV exports",
            crate::redact::conninfo::shown(db)
        )))
    }

    /// The source as it may be shown: no password.
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::Postgres(url) => crate::redact::conninfo::shown(url),
            SourceSpec::CsvDir(path) => path.display().to_string(),
        }
    }
}

/// Collects events into batches and sends them; the writer applies
/// backpressure through the bounded channel.
pub struct Batcher {
    tx: mpsc::Sender<Vec<SourceEvent>>,
    buf: Vec<SourceEvent>,
}

impl Batcher {
    pub fn new(tx: mpsc::Sender<Vec<SourceEvent>>) -> Self {
        Batcher {
            tx,
            buf: Vec::with_capacity(BATCH),
        }
    }

    pub async fn push(&mut self, ev: SourceEvent) -> Result<()> {
        self.buf.push(ev);
        if self.buf.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH));
        self.tx.send(batch).await.map_err(|_| writer_gone())
    }

    /// For sources read on a plain thread.
    pub fn push_blocking(&mut self, ev: SourceEvent) -> Result<()> {
        self.buf.push(ev);
        if self.buf.len() >= BATCH {
            self.flush_blocking()?;
        }
        Ok(())
    }

    pub fn flush_blocking(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH));
        self.tx.blocking_send(batch).map_err(|_| writer_gone())
    }
}

fn writer_gone() -> Error {
    Error::Internal("the catalog writer stopped before the source was read".into())
}
