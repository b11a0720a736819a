//! `check`: the archive (and, with `--storage`, the bot's bucket) held
//! against the database: pack batches with holes, blobs missing, bad or
//! named by no ref, bucket objects by class, orphans and dangling keys.
//!
//! It reads the catalog and `blobs/` and changes neither. Memory stays flat
//! however large the archive or the bucket: rows stream from the catalog,
//! the listing goes into the catalog's temp tables ([`crate::catalog::check`]),
//! and the report keeps the first [`CUT`] items of each list unless asked for
//! all of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::{Serialize, Serializer};

use super::Context;
use crate::blobs::BlobStore;
use crate::catalog::check as q;
use crate::catalog::{Catalog, paged};
use crate::error::{Error, Result};
use crate::layout::key_folder;
use crate::refs::RefClass;
use crate::stores::{self, Role};
use crate::transfer::run_units;

/// Items of each list a text report shows (the rest are counted).
pub const CUT: usize = 20;
/// Missing positions listed per pack batch at most: a `pack_index` far out
/// of range (a typo in the database) must not list a billion of them.
const MAX_MISSING_LISTED: u64 = 1_000;
/// Blobs to re-hash read from the catalog at a time.
const BLOBS_PAGE: usize = 1024;
/// Listed objects written to the catalog per transaction.
const LISTING_BATCH: usize = 1000;

pub struct CheckOptions {
    /// The bot's bucket (`--storage`).
    pub storage: Option<String>,
    /// Every item of every list (`--full`, and always with `--json`).
    pub full: bool,
}

/// A list that keeps its first items and counts the rest. It serializes as
/// the items it kept (every item, unless the report was asked to cut them).
#[derive(Debug)]
pub struct Listed<T> {
    pub items: Vec<T>,
    /// Items counted but not kept.
    pub more: u64,
    cap: Option<usize>,
}

impl<T> Listed<T> {
    fn new(full: bool) -> Self {
        Listed {
            items: Vec::new(),
            more: 0,
            cap: (!full).then_some(CUT),
        }
    }

    fn push(&mut self, item: T) {
        if self.cap.is_some_and(|cap| self.items.len() >= cap) {
            self.more += 1;
        } else {
            self.items.push(item);
        }
    }

    pub fn len(&self) -> u64 {
        self.items.len() as u64 + self.more
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes each kept item with `line`, then "… and N more".
    fn show(
        &self,
        f: &mut std::fmt::Formatter<'_>,
        title: &str,
        line: impl Fn(&mut std::fmt::Formatter<'_>, &T) -> std::fmt::Result,
    ) -> std::fmt::Result {
        if self.is_empty() {
            return Ok(());
        }
        writeln!(f, "\n{title} ({}):", self.len())?;
        for item in &self.items {
            write!(f, "  ")?;
            line(f, item)?;
            writeln!(f)?;
        }
        if self.more > 0 {
            writeln!(f, "  … and {} more (--full lists them all)", self.more)?;
        }
        Ok(())
    }
}

impl<T: Serialize> Serialize for Listed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(s)
    }
}

/// `check --json` (SPEC §3).
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub packs: Packs,
    pub blobs: Blobs,
    /// Only with `--storage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<Bucket>,
}

#[derive(Debug, Serialize)]
pub struct Packs {
    pub batches: u64,
    pub complete: u64,
    pub incomplete: Listed<IncompleteBatch>,
}

/// A pack batch with a position missing or held twice, or a sticker not fetched.
#[derive(Debug, Serialize)]
pub struct IncompleteBatch {
    pub pack_batch_id: String,
    pub session_id: Option<String>,
    /// Its stickers (refs of class `sticker`).
    pub stickers: u64,
    /// Positions of `0..=max(pack_index)` that no sticker holds.
    pub missing_indexes: Vec<i64>,
    /// Missing positions beyond the first [`MAX_MISSING_LISTED`].
    #[serde(skip_serializing_if = "is_zero")]
    pub missing_indexes_more: u64,
    /// Positions held by more than one sticker.
    pub duplicate_indexes: Vec<i64>,
    /// Its stickers not fetched.
    pub unfetched: u64,
    pub has_sheet: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
pub struct Blobs {
    /// Blobs re-hashed: every one a fetched ref in scope names.
    pub checked: u64,
    /// Named by fetched refs, absent from `blobs/`.
    pub missing: Listed<String>,
    /// Whose bytes no longer hash to their name.
    pub bad: Listed<String>,
    /// Files in `blobs/` that no ref names (none with `--env`: they have no env).
    pub unreferenced: Listed<String>,
}

#[derive(Debug, Serialize)]
pub struct Bucket {
    /// The bucket as it may be shown (no secret).
    pub url: String,
    pub objects: u64,
    pub bytes: u64,
    pub classes: BTreeMap<String, ClassCount>,
    pub orphans: Listed<OrphanObject>,
    pub dangling: Listed<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct ClassCount {
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct OrphanObject {
    pub key: String,
    pub size: u64,
    /// `pack`, `single` or `unknown`.
    pub kind: String,
}

impl CheckReport {
    /// Whether anything is reported.
    pub fn consistent(&self) -> bool {
        self.packs.incomplete.is_empty()
            && self.blobs.missing.is_empty()
            && self.blobs.bad.is_empty()
            && self.blobs.unreferenced.is_empty()
            && self
                .bucket
                .as_ref()
                .is_none_or(|b| b.orphans.is_empty() && b.dangling.is_empty())
    }

    /// Exit code: 0 when everything is consistent, 3 when something is reported.
    pub fn exit_code(&self) -> u8 {
        if self.consistent() { 0 } else { 3 }
    }
}

pub fn check(ctx: &Context, opts: &CheckOptions) -> Result<CheckReport> {
    let catalog = Catalog::open_existing(&ctx.archive)?;
    ctx.warn_unknown_envs(&catalog)?;
    // Opened first: a bucket that cannot be used stops the check before any work.
    let storage = opts
        .storage
        .as_deref()
        .map(|url| stores::open(url, Role::Storage))
        .transpose()?;
    let envs = ctx.env_param();
    let packs = packs(&catalog, &envs, opts.full)?;
    let blobs = blobs(ctx, &catalog, &envs, opts.full)?;
    let bucket = match storage {
        Some(store) => Some(bucket(ctx, &catalog, &envs, &store, opts.full)?),
        None => None,
    };
    Ok(CheckReport {
        packs,
        blobs,
        bucket,
    })
}

fn packs(catalog: &Catalog, envs: &Option<String>, full: bool) -> Result<Packs> {
    let mut packs = Packs {
        batches: 0,
        complete: 0,
        incomplete: Listed::new(full),
    };
    q::for_each_batch(catalog.conn(), envs, |batch| {
        packs.batches += 1;
        let (missing, missing_more, duplicates) = positions(&batch.indexes);
        if missing.is_empty() && duplicates.is_empty() && batch.unfetched == 0 {
            packs.complete += 1;
        } else {
            packs.incomplete.push(IncompleteBatch {
                pack_batch_id: batch.id,
                session_id: batch.session_id,
                stickers: batch.stickers,
                missing_indexes: missing,
                missing_indexes_more: missing_more,
                duplicate_indexes: duplicates,
                unfetched: batch.unfetched,
                has_sheet: batch.has_sheet,
            });
        }
        Ok(())
    })?;
    Ok(packs)
}

/// From the ascending positions stickers hold: the positions of
/// `0..=max` held by none (the first [`MAX_MISSING_LISTED`], and how many
/// more), and those held more than once.
fn positions(sorted: &[i64]) -> (Vec<i64>, u64, Vec<i64>) {
    let mut missing = Vec::new();
    let mut more = 0u64;
    let mut duplicates = Vec::new();
    let mut next = 0i64;
    for (i, &index) in sorted.iter().enumerate() {
        if index < next {
            if i > 0 && sorted[i - 1] == index && duplicates.last() != Some(&index) {
                duplicates.push(index);
            }
            continue;
        }
        let gap = index.abs_diff(next);
        let listed = gap.min(MAX_MISSING_LISTED.saturating_sub(missing.len() as u64));
        missing.extend((0..listed as i64).map(|k| next + k));
        more += gap - listed;
        next = index.saturating_add(1);
    }
    (missing, more, duplicates)
}

fn blobs(ctx: &Context, catalog: &Catalog, envs: &Option<String>, full: bool) -> Result<Blobs> {
    let conn = catalog.conn();
    q::create_blob_table(conn, envs)?;
    let mut report = Blobs {
        checked: 0,
        missing: Listed::new(full),
        bad: Listed::new(full),
        unreferenced: Listed::new(full),
    };

    // Re-hashed on the blocking pool, as many at once as there are cores.
    let store = Arc::new(BlobStore::new(&ctx.archive));
    let jobs = std::thread::available_parallelism().map_or(2, usize::from);
    ctx.progress
        .start("re-hashing blobs", Some(q::blobs_to_rehash(conn)?));
    let mut after: Option<String> = None;
    let shas = paged(move || {
        let page = q::blobs_to_rehash_after(conn, after.as_deref(), BLOBS_PAGE)?;
        after = page.last().cloned();
        Ok(page)
    });
    let mut failure = None;
    run_units(
        &ctx.runtime,
        ctx.progress.as_ref(),
        shas,
        jobs,
        move |sha| {
            let store = store.clone();
            async move {
                let name = sha.clone();
                let found = tokio::task::spawn_blocking(move || store.rehash(&name)).await;
                (sha, found)
            }
        },
        |batch| {
            for (sha, found) in batch {
                report.checked += 1;
                match found {
                    Ok(Ok(None)) => report.missing.push(sha),
                    Ok(Ok(Some((got, _)))) if got == sha => {}
                    Ok(Ok(Some(_))) => report.bad.push(sha),
                    Ok(Err(e)) => {
                        tracing::warn!("{e}");
                        report.bad.push(sha);
                    }
                    Err(e) => failure = Some(Error::Config(format!("re-hashing {sha}: {e}"))),
                }
            }
            failure.take().map_or(Ok(()), Err)
        },
    )?;
    ctx.progress.finish();

    // A blob no ref names has no env: left out by any `--env` (SPEC §1).
    if envs.is_none() {
        for_each_blob_file(&ctx.archive.join("blobs"), |sha| {
            if !q::blob_is_named(conn, &sha)? {
                report.unreferenced.push(sha);
            }
            Ok(())
        })?;
        report.unreferenced.items.sort();
    }
    Ok(report)
}

/// Every file in `blobs/` named as a blob (64 lower-case hex digits in the
/// directory of its first two); staging files and anything else are skipped.
fn for_each_blob_file(
    root: &std::path::Path,
    mut each: impl FnMut(String) -> Result<()>,
) -> Result<()> {
    let read = |dir: &std::path::Path| {
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))
    };
    let fans = match read(root) {
        Ok(fans) => fans,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let is_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    for fan in fans {
        let fan = fan.map_err(|e| Error::io(format!("cannot read {}", root.display()), e))?;
        let fan_name = fan.file_name().to_string_lossy().into_owned();
        if fan_name.len() != 2 || !is_hex(&fan_name) || !fan.path().is_dir() {
            continue;
        }
        for entry in read(&fan.path())? {
            let entry =
                entry.map_err(|e| Error::io(format!("cannot read {}", fan.path().display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && is_hex(&name) && name.starts_with(&fan_name) {
                each(name)?;
            }
        }
    }
    Ok(())
}

fn bucket(
    ctx: &Context,
    catalog: &Catalog,
    envs: &Option<String>,
    store: &stores::Store,
    full: bool,
) -> Result<Bucket> {
    let conn = catalog.conn();
    q::create_bucket_tables(conn, envs)?;
    ctx.progress.start("listing the bucket", None);
    let mut listing = store.list_keys();
    let mut tx = conn.unchecked_transaction()?;
    let mut in_tx = 0;
    while let Some(object) = ctx.runtime.block_on(listing.next()) {
        let (key, size) = object.map_err(|e| stores::unusable(store, Role::Storage, &e))?;
        q::add_listed(&tx, &key, size, key_folder(&key))?;
        in_tx += 1;
        if in_tx == LISTING_BATCH {
            tx.commit()?;
            tx = conn.unchecked_transaction()?;
            ctx.progress.advance(in_tx as u64);
            in_tx = 0;
        }
    }
    tx.commit()?;
    ctx.progress.finish();

    let mut classes: BTreeMap<String, ClassCount> = RefClass::ALL
        .iter()
        .filter(|c| crate::refs::key_column(c.name()).is_some())
        .map(|c| c.name())
        .chain(["orphan"])
        .map(|name| (name.to_string(), ClassCount::default()))
        .collect();
    let (mut objects, mut bytes) = (0, 0);
    for (class, n, size) in q::bucket_classes(conn, envs)? {
        objects += n;
        bytes += size;
        classes.insert(
            class,
            ClassCount {
                objects: n,
                bytes: size,
            },
        );
    }
    let mut orphans = Listed::new(full);
    q::for_each_orphan(conn, envs, |o| {
        orphans.push(OrphanObject {
            key: o.key,
            size: o.size,
            kind: o.kind,
        });
        Ok(())
    })?;
    let mut dangling = Listed::new(full);
    q::for_each_dangling(conn, |key| {
        dangling.push(key);
        Ok(())
    })?;
    Ok(Bucket {
        url: store.shown.clone(),
        objects,
        bytes,
        classes,
        orphans,
        dangling,
    })
}

/// `1234` as `1.2 KiB`: sizes for a person.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn join(xs: &[i64]) -> String {
    xs.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.packs;
        writeln!(
            f,
            "pack batches: {}, {} complete, {} incomplete",
            p.batches,
            p.complete,
            p.incomplete.len()
        )?;
        let b = &self.blobs;
        writeln!(
            f,
            "blobs: {} re-hashed, {} missing, {} bad; {} in blobs/ that no ref names",
            b.checked,
            b.missing.len(),
            b.bad.len(),
            b.unreferenced.len()
        )?;
        if let Some(bucket) = &self.bucket {
            writeln!(
                f,
                "bucket {}: {} objects, {}",
                bucket.url,
                bucket.objects,
                human(bucket.bytes)
            )?;
            let order = ["sticker", "session_sticker", "pack_sheet", "orphan"];
            let rest = bucket
                .classes
                .keys()
                .filter(|c| !order.contains(&c.as_str()));
            for class in order.into_iter().chain(rest.map(String::as_str)) {
                let Some(c) = bucket.classes.get(class) else {
                    continue;
                };
                let note = if class == "orphan" && c.objects > 0 {
                    "  (no row names them: what a clean-up would free)"
                } else {
                    ""
                };
                writeln!(
                    f,
                    "  {class:<16}{:>10} objects {:>12}{note}",
                    c.objects,
                    human(c.bytes)
                )?;
            }
            writeln!(
                f,
                "  dangling keys: {} (rows name them, the bucket lacks them)",
                bucket.dangling.len()
            )?;
        }

        p.incomplete.show(f, "incomplete pack batches", |f, b| {
            write!(f, "{}", b.pack_batch_id)?;
            if let Some(session) = &b.session_id {
                write!(f, " (session {session})")?;
            }
            write!(f, ": {} stickers", b.stickers)?;
            if !b.missing_indexes.is_empty() {
                write!(f, "; missing positions {}", join(&b.missing_indexes))?;
                if b.missing_indexes_more > 0 {
                    write!(f, " … and {} more", b.missing_indexes_more)?;
                }
            }
            if !b.duplicate_indexes.is_empty() {
                write!(f, "; positions held twice {}", join(&b.duplicate_indexes))?;
            }
            if b.unfetched > 0 {
                write!(f, "; {} not fetched", b.unfetched)?;
            }
            write!(
                f,
                "; {}",
                if b.has_sheet {
                    "has a sheet"
                } else {
                    "no sheet"
                }
            )
        })?;
        let sha = |f: &mut std::fmt::Formatter<'_>, s: &String| write!(f, "{s}");
        b.missing
            .show(f, "blobs fetched refs name, missing from blobs/", sha)?;
        b.bad
            .show(f, "blobs whose bytes no longer hash to their name", sha)?;
        b.unreferenced.show(f, "blobs no ref names", sha)?;
        if let Some(bucket) = &self.bucket {
            bucket
                .orphans
                .show(f, "orphans (key, size, kind)", |f, o| {
                    write!(f, "{}  {}  {}", o.key, human(o.size), o.kind)
                })?;
            bucket
                .dangling
                .show(f, "dangling keys, named by rows but not in the bucket", sha)?;
        }
        if self.consistent() {
            writeln!(f, "\nconsistent: nothing to report")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_name_holes_and_doubles() {
        assert_eq!(positions(&[]), (vec![], 0, vec![]));
        assert_eq!(positions(&[0, 1, 2]), (vec![], 0, vec![]));
        assert_eq!(positions(&[0, 2, 3, 3, 3, 5]), (vec![1, 4], 0, vec![3]));
        assert_eq!(positions(&[1, 1, 2, 2]), (vec![0], 0, vec![1, 2]));
        assert_eq!(positions(&[-1, -1, 0]), (vec![], 0, vec![-1]));
    }

    #[test]
    fn a_position_far_out_of_range_lists_a_bounded_number() {
        let (missing, more, _) = positions(&[0, i64::MAX]);
        assert_eq!(missing.len() as u64, MAX_MISSING_LISTED);
        assert_eq!(missing[0], 1);
        assert_eq!(more, (i64::MAX as u64 - 1) - MAX_MISSING_LISTED);
    }

    #[test]
    fn a_cut_list_counts_what_it_did_not_keep() {
        let mut cut = Listed::new(false);
        let mut all = Listed::new(true);
        for i in 0..CUT + 5 {
            cut.push(i);
            all.push(i);
        }
        assert_eq!(
            (cut.items.len(), cut.more, cut.len()),
            (CUT, 5, CUT as u64 + 5)
        );
        assert_eq!((all.items.len(), all.more), (CUT + 5, 0));
        assert_eq!(human(999), "999 bytes");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
