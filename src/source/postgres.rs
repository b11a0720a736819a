//! Reading the bot's tables from Postgres.
//!
//! Only the simple query protocol is used (no prepared statement is ever
//! named), so Supabase's transaction pooler on port 6543 works as well as a
//! direct connection. The three tables are read in one `REPEATABLE READ, READ
//! ONLY` transaction: one consistent state even while the bot writes. Rows
//! arrive as `to_jsonb(t)::text`, so every column survives without starchive
//! knowing it, and they stream (the driver's response channel is bounded).

use std::sync::Arc;

use futures::StreamExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::{Client, SimpleQueryMessage, config::SslMode};

use super::Batcher;
use crate::catalog::events::SourceEvent;
use crate::error::{Error, Result};
use crate::refs::Table;

/// How the server's certificate is checked, as libpq's `sslmode` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    /// `disable`, `allow`, `prefer`, `require`: encrypted when asked, certificate not checked (libpq does the same).
    None,
    /// `verify-ca`, `verify-full`: the certificate must chain to a trusted root.
    Full,
}

/// Connects to the database; the returned client's connection runs on the runtime.
pub async fn connect(url: &str) -> Result<Client> {
    let shown = crate::redact::conninfo::shown(url);
    if crate::redact::conninfo::raw_at_in_userinfo(url) {
        return Err(Error::Usage(
            "the database URL has more than one `@` before its host: the driver would take \
             what follows the first one for the host. Percent-encode the user name and \
             password (`@` as %40, `#` as %23, `/` as %2F)"
                .into(),
        ));
    }
    let (cleaned, mode, verify, root_cert) = split_ssl_options(url)?;
    let mut config: tokio_postgres::Config = cleaned.parse().map_err(|e| Error::Database {
        url: shown.clone(),
        message: format!("not a valid connection string: {}", pg_message(&e)),
    })?;
    // Whatever the driver took as the password never appears in a message
    // that quotes it; its letters elsewhere stay (they would reveal it).
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let scrubbed = |message: String| match &password {
        Some(p) => crate::redact::password_hidden(&message, p),
        None => message,
    };
    config.ssl_mode(mode);
    if config.get_application_name().is_none() {
        config.application_name("starchive");
    }
    // Reading the system's certificates is file I/O.
    let tls = crate::blocking::run(move || tls_connector(verify, root_cert.as_deref()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|made| made)
        .map_err(|message| Error::Database {
            url: shown.clone(),
            message: scrubbed(message),
        })?;
    let (client, connection) = config.connect(tls).await.map_err(|e| Error::Database {
        url: shown.clone(),
        message: scrubbed(pg_message(&e)),
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("database connection closed: {}", pg_message(&e));
        }
    });
    Ok(client)
}

/// The transaction every read runs in: one consistent state, in UTC (the
/// text of a `timestamptz` depends on the time zone). A role's timeouts
/// (Supabase sets them) would cut the read of a large table, which goes
/// only as fast as the catalog writes: lifted for this transaction alone,
/// which a transaction pooler also honours. No sort: a table read in id
/// order is its primary key's index scan, which the planner may price
/// above a sequential scan and a sort (it does for half of a million
/// stickers with random ids), but such a sort spills to temp files on the
/// bot's server, about 400 MB per million rows, for no gain in time.
/// `{SNAPSHOT}`: where a second connection takes the first one's state.
const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {SNAPSHOT}\
     SET LOCAL TIME ZONE 'UTC'; SET LOCAL statement_timeout = 0; \
     SET LOCAL idle_in_transaction_session_timeout = 0; SET LOCAL enable_sort = off";

/// A table with at least this many rows (as the planner estimates them) is
/// read over two connections ([`split_read`]).
const SPLIT_MIN_ROWS: i64 = 10_000;

/// Reads the three tables in one consistent transaction into `out`; a
/// large stickers table in two halves at once ([`split_read`]).
/// `resnapshot`: the catalog holds stickers already, so each sticker comes
/// unparsed, with its id beside its text ([`SourceEvent::Unparsed`]).
pub async fn read(url: &str, out: &mut Batcher, resnapshot: bool) -> Result<()> {
    let shown = crate::redact::conninfo::shown(url);
    let db_err = |e: tokio_postgres::Error| Error::Database {
        url: shown.clone(),
        message: pg_message(&e),
    };
    let client = connect(url).await?;
    client
        .batch_execute(&BEGIN.replace("{SNAPSHOT}", ""))
        .await
        .map_err(db_err)?;
    // Before anything is read: a failure to share the state (a role that
    // may not export it, a server or pooler that cannot) leaves this
    // transaction aborted, and only then can it begin again unharmed.
    let mut split = split_read(url, &client, Table::Stickers).await;
    if split.is_none() {
        client
            .batch_execute(&format!("ROLLBACK; {}", BEGIN.replace("{SNAPSHOT}", "")))
            .await
            .map_err(db_err)?;
    }
    // Per table: whether it exists, and whether it has an `id` column.
    let probes: Vec<String> = Table::ALL
        .iter()
        .map(|t| {
            format!(
                "to_regclass('public.{t}') IS NOT NULL, EXISTS (SELECT 1 FROM pg_attribute \
                 WHERE attrelid = to_regclass('public.{t}') AND attname = 'id' AND NOT attisdropped)",
                t = t.name()
            )
        })
        .collect();
    let first = simple_values(
        &client,
        &format!(
            "SELECT to_char(now(), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), {}",
            probes.join(", ")
        ),
    )
    .await
    .map_err(db_err)?;
    let yes = |i: usize| first.get(i).cloned().flatten().as_deref() == Some("t");
    let taken_at = first.first().cloned().flatten().unwrap_or_default();
    out.push(SourceEvent::Began {
        taken_at,
        exports: false,
    })
    .await?;
    for (i, table) in Table::ALL.into_iter().enumerate() {
        let present = yes(1 + 2 * i);
        if !present && table.required() {
            return Err(Error::Database {
                url: shown.clone(),
                message: format!(
                    "it has no table public.{}: is this the bot's database?",
                    table.name()
                ),
            });
        }
        out.push(SourceEvent::Table { table, present }).await?;
        if !present {
            continue;
        }
        // In id order (the primary key's index scan, no sort): the catalog's
        // indexes on ids then grow at their end instead of at random pages,
        // which makes a large snapshot several times cheaper to write.
        let ordered = yes(2 + 2 * i);
        let order = if ordered { " ORDER BY t.id" } else { "" };
        // A re-snapshot's stickers come with their id beside the text, and
        // are parsed only when the catalog's text differs (`Unparsed`).
        let unparsed = resnapshot && ordered && table == Table::Stickers;
        let columns = match unparsed {
            true => "t.id::text, to_jsonb(t)::text",
            false => "to_jsonb(t)::text",
        };
        let sql = format!("SELECT {columns} FROM public.{} t{order}", table.name());
        let split = match table == Table::Stickers && ordered {
            true => split.take(),
            false => None,
        };
        let stream = match &split {
            Some((second, at)) => {
                let t = table.name();
                let below =
                    format!("SELECT {columns} FROM public.{t} t WHERE t.id < {at} ORDER BY t.id");
                let above =
                    format!("SELECT {columns} FROM public.{t} t WHERE t.id >= {at} ORDER BY t.id");
                let below = client.simple_query_raw(&below).await.map_err(db_err)?;
                let above = second.simple_query_raw(&above).await.map_err(db_err)?;
                futures::stream::select(below, above).left_stream()
            }
            None => client
                .simple_query_raw(&sql)
                .await
                .map_err(db_err)?
                .right_stream(),
        };
        futures::pin_mut!(stream);
        while let Some(msg) = stream.next().await {
            if let SimpleQueryMessage::Row(row) = msg.map_err(db_err)? {
                let column = |i| row.try_get(i).ok().flatten();
                let event = match (unparsed, column(0), column(1)) {
                    (true, Some(id), Some(text)) => SourceEvent::Unparsed {
                        table,
                        id: id.to_string(),
                        text: text.to_string(),
                    },
                    (true, None, Some(text)) | (false, Some(text), _) => {
                        SourceEvent::from_json_text(table, text.to_string())
                    }
                    _ => continue,
                };
                out.push(event).await?;
            }
        }
        if let Some((second, _)) = split {
            second.batch_execute("COMMIT").await.map_err(db_err)?;
        }
    }
    client.batch_execute("COMMIT").await.map_err(db_err)?;
    out.flush().await
}

/// For a large table read in id order: a second connection in the same
/// state as `client` (its exported snapshot) and the id (an SQL literal)
/// that splits the table in two halves, by the planner's statistics, so
/// that the two halves are read at once. The database then reads the table
/// about as fast as without the order (each half is an index scan, whose
/// random visits of the table are most of the cost of reading in id order),
/// while the catalog still sees each half in id order, at two places of its
/// indexes instead of one. `None` (one connection, as for a small table)
/// when the table has no statistics or the second connection cannot be had;
/// `client`'s transaction may then be aborted, so it is called before
/// anything is read, and the caller begins that transaction again.
async fn split_read(url: &str, client: &Client, table: Table) -> Option<(Client, String)> {
    let found = simple_values(
        client,
        &format!(
            "SELECT quote_literal(b[array_length(b, 1) / 2 + 1]), quote_literal(pg_export_snapshot())
             FROM (SELECT histogram_bounds::text::text[] AS b FROM pg_stats
                   WHERE schemaname = 'public' AND tablename = '{t}' AND attname = 'id'
                     AND NOT inherited) s
             WHERE (SELECT reltuples FROM pg_class WHERE oid = to_regclass('public.{t}')) >= {SPLIT_MIN_ROWS}",
            t = table.name()
        ),
    )
    .await;
    let (at, snapshot) = match found.as_deref() {
        Ok([Some(at), Some(snapshot)]) => (at.clone(), snapshot.clone()),
        Ok(_) => return None,
        Err(e) => {
            tracing::debug!(
                "{}: read on one connection: {}",
                table.name(),
                pg_message(e)
            );
            return None;
        }
    };
    let second = match connect(url).await {
        Ok(second) => second,
        Err(e) => {
            tracing::debug!("{}: read on one connection: {e}", table.name());
            return None;
        }
    };
    let begin = BEGIN.replace(
        "{SNAPSHOT}",
        &format!("SET TRANSACTION SNAPSHOT {snapshot}; "),
    );
    if let Err(e) = second.batch_execute(&begin).await {
        tracing::debug!(
            "{}: read on one connection: {}",
            table.name(),
            pg_message(&e)
        );
        return None;
    }
    tracing::debug!("{}: read in two halves, split at {at}", table.name());
    Some((second, at))
}

async fn simple_values(
    client: &Client,
    sql: &str,
) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
    for msg in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = msg {
            return Ok((0..row.len())
                .map(|i| row.get(i).map(str::to_string))
                .collect());
        }
    }
    Ok(Vec::new())
}

/// The driver's message with its causes (`error connecting to server: Connection refused`).
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

/// libpq's values of `sslmode` (case sensitive, as libpq has them).
const SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Takes libpq's `sslmode`/`sslrootcert` out of the connection string (the
/// driver knows only three modes) and says how to honour them; every other
/// parameter stays as given, byte for byte. An `sslmode` libpq would refuse
/// is bad usage: taken as `prefer`, it would connect in plaintext.
fn split_ssl_options(url: &str) -> Result<(String, SslMode, Verify, Option<String>)> {
    let mut mode = SslMode::Prefer;
    let mut verify = Verify::None;
    let mut root = None;
    let mut refused = None;
    let apply = |key: &str, value: &str| match key {
        "sslmode" => {
            (mode, verify) = match value {
                "disable" => (SslMode::Disable, Verify::None),
                // `allow` tries plaintext first; the driver's nearest is `prefer`.
                "allow" | "prefer" => (SslMode::Prefer, Verify::None),
                "require" => (SslMode::Require, Verify::None),
                "verify-ca" | "verify-full" => (SslMode::Require, Verify::Full),
                _ => {
                    refused = Some(value.to_string());
                    (SslMode::Prefer, Verify::None)
                }
            };
            true
        }
        "sslrootcert" => {
            root = Some(value.to_string());
            true
        }
        _ => false,
    };
    let cleaned = crate::redact::conninfo::without_params(url, apply);
    if let Some(value) = refused {
        return Err(Error::Usage(format!(
            "the database connection string has sslmode={value:?}, which libpq refuses: \
             use one of {} (lower case)",
            SSL_MODES.join(", ")
        )));
    }
    Ok((cleaned, mode, verify, root))
}

fn tls_connector(
    verify: Verify,
    root_cert: Option<&str>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = match verify {
        Verify::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
            .with_no_client_auth(),
        Verify::Full => {
            let mut roots = rustls::RootCertStore::empty();
            if let Some(path) = root_cert {
                use rustls::pki_types::pem::PemObject;
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?
                {
                    let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert {path}: {e}"))?;
                }
            } else {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// libpq's `sslmode=require`: encryption without checking who answers.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_ssl_modes_are_understood() {
        let (url, mode, verify, _) =
            split_ssl_options("postgres://u:p@h:6543/postgres?sslmode=verify-full&x=1")
                .expect("valid");
        assert_eq!(url, "postgres://u:p@h:6543/postgres?x=1");
        assert_eq!((mode, verify), (SslMode::Require, Verify::Full));
        let (url, mode, verify, _) =
            split_ssl_options("postgres://h/db?sslmode=require").expect("valid");
        assert_eq!(url, "postgres://h/db");
        assert_eq!((mode, verify), (SslMode::Require, Verify::None));
        let (url, mode, _, root) =
            split_ssl_options("host=h sslmode=verify-ca sslrootcert=/ca.pem").expect("valid");
        assert_eq!(url.trim(), "host=h");
        assert_eq!(mode, SslMode::Require);
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        for mode in SSL_MODES {
            split_ssl_options(&format!("postgres://h/db?sslmode={mode}")).expect(mode);
        }
    }

    #[test]
    fn an_sslmode_libpq_refuses_is_bad_usage() {
        for url in [
            "postgres://h/db?sslmode=REQUIRE",
            "postgres://h/db?sslmode=bogus",
            "postgres://h/db?sslmode=",
            "host=h sslmode=Disable",
            "postgres://h/db?sslmode=require&sslmode=verify_full",
        ] {
            match split_ssl_options(url) {
                Err(Error::Usage(m)) => assert!(
                    m.contains("disable, allow, prefer, require, verify-ca, verify-full"),
                    "{url}: {m}"
                ),
                other => panic!("{url}: {:?}", other.map(|(u, ..)| u)),
            }
        }
    }
}
