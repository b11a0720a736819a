//! The push plan: where every fetched ref goes at a destination, and which
//! layout a destination holds. `push` builds it to upload what is left,
//! `verify --to` to check what should be there.

use futures::StreamExt;
use rusqlite::Connection;

use crate::catalog::push as q;
use crate::error::{Error, Result};
use crate::layout::{Layout, dest_key};
use crate::manifest::MANIFEST_KEY;
use crate::stores::Store;

/// Plans where every fetched ref in scope goes at a destination, into the
/// connection's temp tables ([`q::create_plan_tables`]): the key each ref
/// gets, or why it gets none. Refs come in the catalog's order, those owning
/// a storage key first, so that a key's bytes are those of the ref the
/// database names it for. With `placed_at` (a destination's id), only the
/// refs a push placed there: what that destination should hold.
pub fn build_plan(
    conn: &Connection,
    envs: &Option<String>,
    placed_at: Option<i64>,
    layout: Layout,
) -> Result<()> {
    q::create_plan_tables(conn)?;
    q::for_each_fetched_ref(conn, envs, placed_at, |r| {
        match dest_key(layout, &r.place, &r.sha256, &r.kind) {
            Ok(key) => q::key_in_plan(conn, r.id, &key, &r.sha256, r.size, &r.kind),
            Err(reason) if layout == Layout::Mirror => q::refuse_in_plan(
                conn,
                r.id,
                &format!("{reason}; {}", crate::layout::CAS_ADVICE),
            ),
            Err(reason) => q::refuse_in_plan(conn, r.id, &reason),
        }
    })?;
    q::settle_keys(conn)
}

/// The layout to use at `store`: the one it holds once something was pushed
/// there (named by the manifest at the destination when `read_manifest`,
/// else recorded in the catalog), else `requested`, else mirror. A
/// destination has one layout: asking for another is bad usage, since the
/// copy would hold both and its manifest describe only one.
///
/// With `archive_id` (a push), a manifest read there that names another
/// archive is refused: a push would replace that archive's manifest and
/// catalog copy with this one's. A manifest that names none (written
/// before archive ids) is taken.
pub fn held_layout(
    runtime: &tokio::runtime::Handle,
    store: &Store,
    conn: &Connection,
    requested: Option<Layout>,
    read_manifest: bool,
    archive_id: Option<&str>,
) -> Result<Layout> {
    let head = match read_manifest {
        true => manifest_head(runtime, store)?,
        false => None,
    };
    if let (Some(ours), Some(theirs)) = (
        archive_id,
        head.as_ref()
            .and_then(|h| h.get("archive_id")?.as_str().map(str::to_string)),
    ) && ours != theirs
    {
        return Err(Error::Config(format!(
            "--to {}: it holds another archive (id {theirs}; this one is {ours}), whose manifest and catalog copy a push would replace: pull it into a directory of its own first (`starchive --archive DIR pull --from URL`), or push to another prefix; nothing was changed",
            store.shown
        )));
    }
    let found = head
        .as_ref()
        .and_then(head_layout)
        .map(|l| (l, "named by the manifest there"));
    // What is there now wins over what this archive last did there.
    let held = match found {
        Some(found) => Some(found),
        None => {
            q::held_layout(conn, &store.shown)?.map(|l| (l, "recorded in this archive's catalog"))
        }
    };
    if let (Some(requested), Some((layout, source))) = (requested, held)
        && requested != layout
    {
        return Err(Error::Usage(format!(
            "--to {}: it holds the {} layout ({source}), not {}: leave --layout out or use \
             --layout {}, or push to another destination for a {} copy",
            store.shown,
            layout.name(),
            requested.name(),
            layout.name(),
            requested.name(),
        )));
    }
    Ok(requested.or(held.map(|(l, _)| l)).unwrap_or(Layout::Mirror))
}

/// The envs the manifest at `store` says the destination holds; `None` when
/// it names none (every env) or there is no manifest starchive reads.
pub fn manifest_envs(
    runtime: &tokio::runtime::Handle,
    store: &Store,
) -> Result<Option<Vec<String>>> {
    let envs = manifest_head(runtime, store)?
        .and_then(|head| serde_json::from_value::<Vec<String>>(head.get("envs")?.clone()).ok());
    Ok(envs.filter(|e| !e.is_empty()))
}

/// Bytes of the manifest read to find its first line: more than a zstd
/// block can take, so the first block is whole.
const MANIFEST_HEAD_BYTES: usize = 256 << 10;

/// The first line of the manifest at `store`; `None` when there is none,
/// or it is no manifest starchive reads (a warning).
fn manifest_head(
    runtime: &tokio::runtime::Handle,
    store: &Store,
) -> Result<Option<serde_json::Value>> {
    use std::io::BufRead;
    let path = store.path(MANIFEST_KEY).map_err(Error::Config)?;
    let head = runtime.block_on(async {
        let mut stream = match store.inner.get(&path).await {
            Ok(got) => got.into_stream(),
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut head = Vec::new();
        while head.len() < MANIFEST_HEAD_BYTES
            && let Some(chunk) = stream.next().await
        {
            head.extend_from_slice(&chunk?);
        }
        Ok(Some(head))
    });
    let head = match head {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(Error::StoreRead {
                store: store.shown.clone(),
                key: MANIFEST_KEY.into(),
                reason: crate::download::describe(&e),
            });
        }
    };
    let mut line = String::new();
    let read = zstd::Decoder::new(head.as_slice())
        .map(std::io::BufReader::new)
        .and_then(|mut r| r.read_line(&mut line));
    let head = read
        .ok()
        .and_then(|_| serde_json::from_str::<serde_json::Value>(&line).ok());
    if head.as_ref().and_then(head_layout).is_none() {
        tracing::warn!(
            "{MANIFEST_KEY} at {} names no layout starchive knows: it is not taken into account",
            store.shown
        );
    }
    Ok(head)
}

/// The layout a manifest's first line names, when starchive knows it.
fn head_layout(head: &serde_json::Value) -> Option<Layout> {
    head.get("layout")?.as_str().and_then(Layout::parse)
}
