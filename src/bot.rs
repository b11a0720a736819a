//! The bot's database as `backfill` writes it (SPEC §6): the storage key
//! columns it fills, with a guard so that a value the bot wrote meanwhile
//! is left alone; the `stickers` rows `--sync-stickers` adds; and the undo
//! of both. Every identifier and value goes through `escape_identifier` /
//! `escape_literal`. With [`crate::refs`] (which columns name files), this
//! is the only module that names a table or column of the bot.

use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::refs::{RefClass, Table};
use crate::source::postgres::pg_message;

/// The column of `stickers` that names its file in the bucket.
pub const STICKER_KEY_COLUMN: &str = "result_storage_path";

/// Where the database records the storage key of a ref of `class`: (table,
/// column). Photos have no such column.
pub fn key_column(class: RefClass) -> Option<(Table, &'static str)> {
    match class {
        RefClass::Sticker => Some((Table::Stickers, STICKER_KEY_COLUMN)),
        RefClass::SessionSticker => Some((Table::Sessions, "last_sticker_storage_path")),
        RefClass::PackSheet => Some((Table::PackBatches, "cleaned_sheet_storage_path")),
        RefClass::Photo => None,
    }
}

/// Whether backfill writes this column: the storage key columns of §6.
pub fn written_column(table: &str, column: &str) -> bool {
    RefClass::ALL
        .into_iter()
        .filter_map(key_column)
        .any(|(t, c)| t.name() == table && c == column)
}

/// One storage key column of one row: `table.column` of the row `row_id`.
pub struct KeyCell<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row_id: &'a str,
}

/// What a guarded write (or its undo) found.
pub enum Written {
    /// The value is written (or set back) now.
    Now,
    /// The cell holds the value already.
    Already,
    /// The cell holds another value: left alone.
    Other,
}

impl KeyCell<'_> {
    /// The table (schema-qualified) and column, quoted as identifiers.
    fn quoted(&self) -> (String, String) {
        (
            format!("public.{}", escape_identifier(self.table)),
            escape_identifier(self.column),
        )
    }

    /// The cell's value: `None` when the row is gone, `Some(None)` for NULL.
    pub async fn read(&self, client: &Client) -> Result<Option<Option<String>>, String> {
        let (t, col) = self.quoted();
        let id = escape_literal(self.row_id);
        query_value(client, &format!("SELECT {col} FROM {t} WHERE id = {id}")).await
    }

    /// Writes `value` where the cell is NULL; else says what is there.
    pub async fn write(&self, client: &Client, value: &str) -> Result<Written, String> {
        let (t, col) = self.quoted();
        let (id, literal) = (escape_literal(self.row_id), escape_literal(value));
        let sql = format!("UPDATE {t} SET {col} = {literal} WHERE id = {id} AND {col} IS NULL");
        if execute(client, &sql).await? == 1 {
            return Ok(Written::Now);
        }
        match self.read(client).await? {
            None => Err(self.gone()),
            Some(Some(v)) if v == value => Ok(Written::Already),
            Some(_) => Ok(Written::Other),
        }
    }

    /// What [`KeyCell::write`] would find, from a read only.
    pub async fn would_write(&self, client: &Client, value: &str) -> Result<Written, String> {
        match self.read(client).await? {
            None => Err(self.gone()),
            Some(None) => Ok(Written::Now),
            Some(Some(v)) if v == value => Ok(Written::Already),
            Some(Some(_)) => Ok(Written::Other),
        }
    }

    /// Whether the cell still holds `value` (what an undo would set back).
    pub async fn holds(&self, client: &Client, value: &str) -> Result<bool, String> {
        let sql = format!("SELECT 1 FROM {} {}", self.quoted().0, self.guard(value));
        Ok(query_value(client, &sql).await?.is_some())
    }

    /// Undoes a write of `value`: the cell back to NULL, or, for a row we
    /// added (`added_row`), the row removed; only where `value` still
    /// stands. Returns whether it did.
    pub async fn undo(
        &self,
        client: &Client,
        value: &str,
        added_row: bool,
    ) -> Result<bool, String> {
        let (t, col) = self.quoted();
        let guard = self.guard(value);
        let sql = if added_row {
            format!("DELETE FROM {t} {guard}")
        } else {
            format!("UPDATE {t} SET {col} = NULL {guard}")
        };
        Ok(execute(client, &sql).await? == 1)
    }

    fn guard(&self, value: &str) -> String {
        format!(
            "WHERE id = {} AND {} = {}",
            escape_literal(self.row_id),
            self.quoted().1,
            escape_literal(value)
        )
    }

    fn gone(&self) -> String {
        format!("the {} row {} is gone", self.table, self.row_id)
    }
}

/// The `stickers` row `--sync-stickers` adds for a session sticker that has
/// none: its id, and the columns to fill. The id is derived from the session
/// and the file, so a re-run (or two runs at once) can never add it twice.
pub struct NewStickerRow {
    pub id: String,
    pub user_id: Option<String>,
    pub session_id: String,
    pub telegram_file_id: String,
    pub result_storage_path: String,
}

/// What adding a [`NewStickerRow`] found.
pub enum Inserted {
    /// The row is added now (or would be, in a dry run).
    Now,
    /// Our row is there already.
    Already,
    /// Another row names this file already: nothing added.
    NamedElsewhere,
}

impl NewStickerRow {
    pub fn new(session_id: &str, user_id: Option<String>, file_id: &str, key: &str) -> Self {
        let name = format!("starchive/sync-stickers/{session_id}/{file_id}");
        NewStickerRow {
            id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).to_string(),
            user_id,
            session_id: session_id.to_string(),
            telegram_file_id: file_id.to_string(),
            result_storage_path: key.to_string(),
        }
    }

    /// The guarded insert: nothing when a row names this file already.
    fn insert_sql(&self) -> String {
        let quote = |s: &str| escape_literal(s);
        let user = self
            .user_id
            .as_deref()
            .map(quote)
            .unwrap_or_else(|| "NULL".into());
        format!(
            "INSERT INTO public.stickers (id, user_id, session_id, telegram_file_id, result_storage_path)
             SELECT {id}, {user}, {session}, {fid}, {key}
             WHERE NOT EXISTS (SELECT 1 FROM public.stickers WHERE telegram_file_id = {fid})
             ON CONFLICT (id) DO NOTHING",
            id = quote(&self.id),
            session = quote(&self.session_id),
            fid = quote(&self.telegram_file_id),
            key = quote(&self.result_storage_path),
        )
    }

    /// Adds the row unless a row names its file already.
    pub async fn insert(&self, client: &Client) -> Result<Inserted, String> {
        if execute(client, &self.insert_sql()).await? == 1 {
            return Ok(Inserted::Now);
        }
        Ok(if self.is_there(client).await? {
            Inserted::Already
        } else {
            Inserted::NamedElsewhere
        })
    }

    /// What [`NewStickerRow::insert`] would find, from reads only.
    pub async fn would_insert(&self, client: &Client) -> Result<Inserted, String> {
        if self.is_there(client).await? {
            return Ok(Inserted::Already);
        }
        let named = format!(
            "SELECT 1 FROM public.stickers WHERE telegram_file_id = {} LIMIT 1",
            escape_literal(&self.telegram_file_id)
        );
        Ok(match query_value(client, &named).await? {
            Some(_) => Inserted::NamedElsewhere,
            None => Inserted::Now,
        })
    }

    async fn is_there(&self, client: &Client) -> Result<bool, String> {
        let ours = format!(
            "SELECT 1 FROM public.stickers WHERE id = {}",
            escape_literal(&self.id)
        );
        Ok(query_value(client, &ours).await?.is_some())
    }
}

/// Runs one statement in its own transaction; returns the rows it affected.
async fn execute(client: &Client, sql: &str) -> Result<u64, String> {
    let messages = client.simple_query(sql).await.map_err(|e| pg_message(&e))?;
    Ok(messages
        .iter()
        .map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => *n,
            _ => 0,
        })
        .sum())
}

/// The first column of the first row: `None` when there is no row, `Some(None)` for NULL.
async fn query_value(client: &Client, sql: &str) -> Result<Option<Option<String>>, String> {
    let messages = client.simple_query(sql).await.map_err(|e| pg_message(&e))?;
    Ok(messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
        _ => None,
    }))
}
