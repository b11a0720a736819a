//! `check`: the archive (and, with `--storage`, the bot's bucket) held
//! against the database: pack batches with holes, blobs missing, bad or
//! named by no ref, bucket objects by class, orphans and dangling keys.
//!
//! It reads the catalog and `blobs/` and changes neither: the catalog is
//! opened read-only without the archive's lock (a fetch may go on meanwhile)
//! and read in one transaction, so that every part of the report holds the
//! same catalog against the latest snapshot it names. Memory stays flat
//! however large the archive or the bucket: rows stream from the catalog,
//! the listing goes into the catalog's temp tables ([`crate::catalog::check`]),
//! and the report keeps the first [`CUT`] items of each list unless asked for
//! all of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use rusqlite::Connection;
use serde::de::DeserializeOwned;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};

use super::{CUT, Context};
use crate::blobs::BlobStore;
use crate::catalog::check as q;
use crate::catalog::{Catalog, paged};
use crate::error::{Error, ExitStatus, Result};
use crate::layout::{RESERVED_PREFIX, key_owner};
use crate::refs::RefClass;
use crate::stores::{self, Role};
use crate::transfer::run_units;

/// Missing positions listed per pack batch at most: a `pack_index` far out
/// of range (a typo in the database) must not list a billion of them.
const MAX_MISSING_LISTED: u64 = 1_000;
/// Blobs to re-hash read from the catalog at a time.
const BLOBS_PAGE: usize = 1024;
/// Listed objects between two advances of the progress bar.
const PROGRESS_STEP: u64 = 1000;
/// SQLite page cache of a check, in KiB,
/// for the catalog and for the temp tables alike; it also bounds the sorter
/// of the ordered and grouped reads. A check reads the catalog and fills
/// its temp tables in order: a small cache does, and keeps the peak memory
/// the same whatever the size of the archive and of the bucket.
const CHECK_CACHE_KIB: u32 = 2 * 1024;

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
    /// Where a list as long as the bucket keeps every item after the first
    /// [`CUT`] when asked for all of them: JSON lines in an unnamed temp
    /// file, read back as the report is written, so that memory stays flat
    /// however many orphans or dangling keys there are.
    spill: Option<Spill>,
}

#[derive(Debug)]
enum Spill {
    Writing { file: BufWriter<File>, items: u64 },
    Done { file: File, items: u64 },
}

fn spill_error(e: impl Into<std::io::Error>) -> Error {
    Error::io("cannot write the check's temp file", e.into())
}

impl<T: Serialize + DeserializeOwned> Listed<T> {
    fn new(full: bool) -> Self {
        Listed {
            items: Vec::new(),
            more: 0,
            cap: (!full).then_some(CUT),
            spill: None,
        }
    }

    /// As [`Listed::new`], keeping the items after the first [`CUT`] in a
    /// temp file when `full`; [`Listed::finish`] ends it.
    fn spilling(full: bool) -> Result<Self> {
        let mut listed = Self::new(full);
        if full {
            listed.spill = Some(Spill::Writing {
                file: BufWriter::new(tempfile::tempfile().map_err(spill_error)?),
                items: 0,
            });
        }
        Ok(listed)
    }

    fn push(&mut self, item: T) -> Result<()> {
        if self.items.len() < self.cap.unwrap_or(CUT) {
            self.items.push(item);
            return Ok(());
        }
        match (&self.cap, &mut self.spill) {
            (Some(_), _) => self.more += 1,
            (None, Some(Spill::Writing { file, items })) => {
                serde_json::to_writer(&mut *file, &item).map_err(spill_error)?;
                file.write_all(b"\n").map_err(spill_error)?;
                *items += 1;
            }
            (None, _) => self.items.push(item),
        }
        Ok(())
    }

    /// Makes the items written to the temp file readable.
    fn finish(&mut self) -> Result<()> {
        if let Some(Spill::Writing { file, items }) = self.spill.take() {
            let file = file.into_inner().map_err(|e| spill_error(e.into_error()))?;
            self.spill = Some(Spill::Done { file, items });
        }
        Ok(())
    }

    pub fn len(&self) -> u64 {
        let spilled = match &self.spill {
            Some(Spill::Writing { items, .. } | Spill::Done { items, .. }) => *items,
            None => 0,
        };
        self.items.len() as u64 + self.more + spilled
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every item: those kept, then those in the temp file.
    fn for_each(&self, mut each: impl FnMut(&T) -> std::io::Result<()>) -> std::io::Result<()> {
        self.items.iter().try_for_each(&mut each)?;
        match &self.spill {
            None => Ok(()),
            Some(Spill::Writing { .. }) => Err(std::io::Error::other(
                "the check's temp file was read before it was finished",
            )),
            Some(Spill::Done { file, .. }) => {
                let mut file: &File = file;
                file.seek(SeekFrom::Start(0))?;
                for line in BufReader::new(file).lines() {
                    each(&serde_json::from_str(&line?)?)?;
                }
                Ok(())
            }
        }
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
        self.for_each(|item| {
            let shown = write!(f, "  ")
                .and_then(|()| line(f, item))
                .and_then(|()| writeln!(f));
            shown.map_err(std::io::Error::other)
        })
        .map_err(|_| std::fmt::Error)?;
        if self.more > 0 {
            writeln!(f, "  … and {} more (--full lists them all)", self.more)?;
        }
        Ok(())
    }
}

impl<T: Serialize + DeserializeOwned> Serialize for Listed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kept = self.len().saturating_sub(self.more);
        let mut seq = s.serialize_seq(usize::try_from(kept).ok())?;
        let mut failed = None;
        let read = self.for_each(|item| {
            seq.serialize_element(item).map_err(|e| {
                failed = Some(e);
                std::io::Error::other("serializing")
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        read.map_err(serde::ser::Error::custom)?;
        seq.end()
    }
}

/// `check --json` (SPEC §3).
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// The snapshot the archive is held against: the catalog's latest.
    pub snapshot_id: i64,
    /// When it was taken (RFC 3339, UTC).
    pub snapshot_taken_at: String,
    pub packs: Packs,
    pub blobs: Blobs,
    /// Only with `--storage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<Bucket>,
    /// Whether the text lists every item (`--full`) or the first [`CUT`].
    #[serde(skip)]
    pub full: bool,
}

#[derive(Debug, Serialize)]
pub struct Packs {
    pub batches: u64,
    pub complete: u64,
    pub incomplete: Listed<IncompleteBatch>,
}

/// A pack batch with a position missing or held twice, or a sticker not fetched.
#[derive(Debug, Serialize, Deserialize)]
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
    /// Positions no sticker can hold (below 0), each once.
    pub invalid_indexes: Vec<i64>,
    /// The missing positions as ranges (`first..=last`), every one: the text
    /// shows them so, however far a `pack_index` is out of range.
    #[serde(skip)]
    pub missing_ranges: Vec<(i64, i64)>,
    /// Its stickers with no `pack_index`: no position holds them.
    pub unindexed: u64,
    /// Its stickers not fetched.
    pub unfetched: u64,
    /// Its sheet is fetched: the archive has it.
    pub has_sheet: bool,
    /// A sheet is attached but not fetched yet.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sheet_not_fetched: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !b
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
    /// Files in `blobs/` that no ref names yet, left out of `unreferenced`:
    /// another command (a fetch or a pull) was writing the archive, or they
    /// are newer than the check.
    #[serde(skip_serializing_if = "is_zero")]
    pub in_flight: u64,
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
    /// What is likely wrong when no key the rows name is in the bucket (a
    /// wrong bucket or prefix, most often).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Objects under `_starchive/` (a push destination's manifest and
    /// catalog copy) that no row names: starchive's own, never orphans,
    /// left out of the counts above.
    #[serde(skip_serializing_if = "is_zero")]
    pub starchive_objects: u64,
    /// Objects that `backfill --apply` wrote after the latest snapshot: no
    /// row of the snapshot names them yet, the journal does (counted in the
    /// class of its column, never orphans). A new `snapshot` brings the rows
    /// up to date.
    #[serde(skip_serializing_if = "is_zero")]
    pub backfilled_since_snapshot: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct ClassCount {
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
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

    /// Success when everything is consistent, incomplete when something is reported.
    pub fn exit_status(&self) -> ExitStatus {
        ExitStatus::incomplete_if(!self.consistent())
    }
}

pub fn check(ctx: &Context, opts: &CheckOptions) -> Result<CheckReport> {
    let catalog = Catalog::open_read_only(&ctx.archive)?;
    ctx.warn_unknown_envs(&catalog)?;
    // Before the read transaction: see [`blobs`].
    let writes = Writes {
        probed: std::time::SystemTime::now(),
        running: crate::catalog::writer_running(&ctx.archive)?,
    };
    // TEMP tables through a cache as small as the catalog's.
    catalog.set_cache_kib(CHECK_CACHE_KIB)?;
    catalog.set_temp_in_file(CHECK_CACHE_KIB)?;
    // One read transaction: every part sees the same catalog, that of the
    // snapshot named. The TEMP tables it fills are dropped with it.
    let tx = catalog.conn().unchecked_transaction()?;
    let (snapshot_id, snapshot_taken_at) = ctx.latest_snapshot(&catalog)?;
    // Opened first: a bucket that cannot be used stops the check before any work.
    let storage = opts
        .storage
        .as_deref()
        .map(|url| stores::open(url, Role::Storage))
        .transpose()?;
    let envs = ctx.env_param();
    let packs = packs(&tx, &envs, opts.full)?;
    let blobs = blobs(ctx, &tx, &envs, opts.full, &writes)?;
    let bucket = match storage {
        Some(store) => Some(bucket(ctx, &tx, &envs, &store, opts.full)?),
        None => None,
    };
    Ok(CheckReport {
        snapshot_id,
        snapshot_taken_at,
        packs,
        blobs,
        bucket,
        full: opts.full,
    })
}

fn packs(conn: &Connection, envs: &Option<String>, full: bool) -> Result<Packs> {
    let mut packs = Packs {
        batches: 0,
        complete: 0,
        incomplete: Listed::new(full),
    };
    q::for_each_batch(conn, envs, |batch| {
        packs.batches += 1;
        // Ascending: the invalid (negative) positions come first.
        let valid = batch.indexes.partition_point(|&i| i < 0);
        let mut invalid = batch.indexes[..valid].to_vec();
        invalid.dedup();
        let (ranges, duplicates) = positions(&batch.indexes[valid..]);
        let (missing, missing_more) = listed_missing(&ranges);
        // SPEC's rule (every position of 0..max held once, every sticker
        // fetched). A batch with no sticker has no position to miss (the bot
        // leaves such rows when a generation fails): complete, as the rule
        // reads. A sticker with no position cannot be placed in the pack: not
        // whole.
        if batch.unindexed == 0
            && ranges.is_empty()
            && duplicates.is_empty()
            && invalid.is_empty()
            && batch.unfetched == 0
        {
            packs.complete += 1;
        } else {
            packs.incomplete.push(IncompleteBatch {
                pack_batch_id: batch.id,
                session_id: batch.session_id,
                stickers: batch.stickers,
                missing_indexes: missing,
                missing_indexes_more: missing_more,
                duplicate_indexes: duplicates,
                invalid_indexes: invalid,
                missing_ranges: ranges,
                unindexed: batch.unindexed,
                unfetched: batch.unfetched,
                has_sheet: batch.sheet == q::Sheet::Fetched,
                sheet_not_fetched: batch.sheet == q::Sheet::NotFetched,
            })?;
        }
        Ok(())
    })?;
    Ok(packs)
}

/// From the ascending positions (none below 0) stickers hold: the ranges
/// of `0..=max` held by none (`first..=last`, at most one per sticker), and
/// the positions held more than once.
fn positions(sorted: &[i64]) -> (Vec<(i64, i64)>, Vec<i64>) {
    let mut missing = Vec::new();
    let mut duplicates = Vec::new();
    let mut next = 0i64;
    for (i, &index) in sorted.iter().enumerate() {
        if index < next {
            if i > 0 && sorted[i - 1] == index && duplicates.last() != Some(&index) {
                duplicates.push(index);
            }
            continue;
        }
        if index > next {
            missing.push((next, index - 1));
        }
        next = index.saturating_add(1);
    }
    (missing, duplicates)
}

/// The first [`MAX_MISSING_LISTED`] positions of `ranges`, and how many more there are.
fn listed_missing(ranges: &[(i64, i64)]) -> (Vec<i64>, u64) {
    let mut listed = Vec::new();
    let mut more = 0u64;
    for &(first, last) in ranges {
        let len = last.abs_diff(first) + 1;
        let take = len.min(MAX_MISSING_LISTED - listed.len() as u64);
        listed.extend((0..take as i64).map(|k| first + k));
        more += len - take;
    }
    (listed, more)
}

/// Whether another command was writing the archive when the check began
/// (probed before its read transaction), and when that was.
struct Writes {
    running: bool,
    probed: std::time::SystemTime,
}

/// How much older than the probe a blob file's time must be for it to be
/// settled when the file system keeps times to the second (or two, on FAT).
const COARSE_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The blobs: those fetched refs name re-hashed, and the files no ref
/// names. A file no ref names is `unreferenced` only when it is settled:
/// no other command held the archive's lock at the probe, which came before
/// the check's read transaction, and the file is older than the probe. Its
/// writer then ended before the probe, having committed its refs (which
/// the transaction sees) or never to commit them (a killed run). Any other
/// such file may be a blob a running fetch or pull has published and not
/// committed yet (in its durability group): `in_flight`, not listed.
fn blobs(
    ctx: &Context,
    conn: &Connection,
    envs: &Option<String>,
    full: bool,
    writes: &Writes,
) -> Result<Blobs> {
    q::create_blob_table(conn, envs)?;
    let mut report = Blobs {
        in_flight: 0,
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
                    Ok(Ok(None)) => report.missing.push(sha)?,
                    Ok(Ok(Some((got, _)))) if got == sha => {}
                    Ok(Ok(Some(_))) => report.bad.push(sha)?,
                    Ok(Err(e)) => {
                        tracing::warn!("{e}");
                        report.bad.push(sha)?;
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
        let settled = |file: &std::fs::DirEntry| -> bool {
            if writes.running {
                return false;
            }
            let modified = file.metadata().and_then(|m| m.modified());
            modified.is_ok_and(|t| {
                // A time to the whole second may stand for one later in it.
                let coarse = t
                    .duration_since(std::time::UNIX_EPOCH)
                    .is_ok_and(|d| d.subsec_nanos() == 0);
                t + if coarse {
                    COARSE_MARGIN
                } else {
                    std::time::Duration::ZERO
                } < writes.probed
            })
        };
        for_each_blob_file(&ctx.archive.join("blobs"), |sha, file| {
            if !q::blob_is_named(conn, &sha)? {
                if settled(file) {
                    report.unreferenced.push(sha)?;
                } else {
                    report.in_flight += 1;
                }
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
    mut each: impl FnMut(String, &std::fs::DirEntry) -> Result<()>,
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
                each(name, &entry)?;
            }
        }
    }
    Ok(())
}

fn bucket(
    ctx: &Context,
    conn: &Connection,
    envs: &Option<String>,
    store: &stores::Store,
    full: bool,
) -> Result<Bucket> {
    q::create_bucket_tables(conn, envs)?;
    ctx.progress.start("listing the bucket", None);
    let mut listing = store.list_keys();
    let mut listed = 0u64;
    let mut starchive_objects = 0u64;
    while let Some(object) = ctx.runtime.block_on(listing.next()) {
        let (key, size) = object.map_err(|e| stores::unusable(store, Role::Storage, &e))?;
        if key.starts_with(RESERVED_PREFIX) && !q::key_is_named(conn, &key)? {
            starchive_objects += 1;
        } else {
            q::add_listed(conn, &key, size, key_owner(&key))?;
        }
        listed += 1;
        if listed.is_multiple_of(PROGRESS_STEP) {
            ctx.progress.advance(PROGRESS_STEP);
        }
    }
    ctx.progress.finish();

    let mut classes: BTreeMap<String, ClassCount> = RefClass::ALL
        .iter()
        .filter(|c| crate::bot::key_column(**c).is_some())
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
    let mut orphans = Listed::spilling(full)?;
    q::for_each_orphan(conn, envs, |o| {
        orphans.push(OrphanObject {
            key: o.key,
            size: o.size,
            kind: o.kind,
        })
    })?;
    orphans.finish()?;
    let mut dangling = Listed::spilling(full)?;
    q::for_each_dangling(conn, |key| dangling.push(key))?;
    dangling.finish()?;
    let backfilled_since_snapshot = q::journaled_objects(conn, envs)?;
    let orphan_objects = classes.get("orphan").map_or(0, |c| c.objects);
    let hint = if objects == orphan_objects && !dangling.is_empty() {
        let sample = q::first_listed(conn, stores::hint::HINT_SAMPLE)?;
        stores::hint::prefix_hint(
            store,
            dangling.len(),
            Some(objects),
            Some(&sample),
            |candidates| {
                let mut named = std::collections::HashSet::new();
                for key in candidates {
                    if q::key_is_named(conn, key)? {
                        named.insert(key.clone());
                    }
                }
                Ok(named)
            },
        )?
    } else {
        None
    };
    Ok(Bucket {
        url: store.shown.clone(),
        objects,
        bytes,
        classes,
        orphans,
        dangling,
        hint,
        starchive_objects,
        backfilled_since_snapshot,
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

/// `items` joined by commas: the first [`CUT`] of them unless `full`, then
/// "… and N more", N what `more` counts in the rest (positions, for ranges).
fn join_cut<T: std::fmt::Display>(items: &[T], full: bool, more: impl Fn(&[T]) -> u64) -> String {
    let shown = if full {
        items.len()
    } else {
        items.len().min(CUT)
    };
    let mut s = items[..shown]
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let rest = more(&items[shown..]);
    if rest > 0 {
        s += &format!(" … and {rest} more");
    }
    s
}

/// A range of missing positions as `4` or `4–4999999`.
struct Range((i64, i64));

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            (first, last) if first == last => write!(f, "{first}"),
            (first, last) => write!(f, "{first}–{last}"),
        }
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.packs;
        writeln!(
            f,
            "against snapshot {}, taken {}",
            self.snapshot_id, self.snapshot_taken_at
        )?;
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
        if b.in_flight > 0 {
            writeln!(
                f,
                "  ({} more in blobs/ that no ref names yet are left out: a fetch or pull \
                 is writing the archive, or they are newer than this check; check again \
                 once it ends)",
                b.in_flight
            )?;
        }
        if let Some(bucket) = &self.bucket {
            writeln!(
                f,
                "bucket {}: {} objects, {}",
                bucket.url,
                bucket.objects,
                human(bucket.bytes)
            )?;
            if bucket.starchive_objects > 0 {
                writeln!(
                    f,
                    "  ({} objects under {RESERVED_PREFIX}, starchive's own, left out)",
                    bucket.starchive_objects
                )?;
            }
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
            if bucket.backfilled_since_snapshot > 0 {
                writeln!(
                    f,
                    "  ({} objects backfill wrote after this snapshot are counted by the rows \
                     it wrote their keys to: run `snapshot` to bring the catalog up to date)",
                    bucket.backfilled_since_snapshot
                )?;
            }
        }

        p.incomplete.show(f, "incomplete pack batches", |f, b| {
            write!(f, "{}", b.pack_batch_id)?;
            if let Some(session) = &b.session_id {
                write!(f, " (session {session})")?;
            }
            write!(f, ": {} stickers", b.stickers)?;
            let count = |xs: &[_]| xs.len() as u64;
            if !b.missing_ranges.is_empty() {
                let ranges: Vec<Range> = b.missing_ranges.iter().copied().map(Range).collect();
                let positions = |rest: &[Range]| {
                    rest.iter()
                        .map(|r| r.0.1.abs_diff(r.0.0).saturating_add(1))
                        .fold(0u64, u64::saturating_add)
                };
                write!(
                    f,
                    "; missing positions {}",
                    join_cut(&ranges, self.full, positions)
                )?;
            }
            if !b.duplicate_indexes.is_empty() {
                write!(
                    f,
                    "; positions held twice {}",
                    join_cut(&b.duplicate_indexes, self.full, count)
                )?;
            }
            if !b.invalid_indexes.is_empty() {
                write!(
                    f,
                    "; invalid positions {}",
                    join_cut(&b.invalid_indexes, self.full, count)
                )?;
            }
            if b.unindexed > 0 {
                write!(f, "; {} without a position", b.unindexed)?;
            }
            if b.unfetched > 0 {
                write!(f, "; {} not fetched", b.unfetched)?;
            }
            write!(
                f,
                "; {}",
                if b.has_sheet {
                    "has a sheet"
                } else if b.sheet_not_fetched {
                    "sheet not fetched"
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
        if let Some(hint) = self.bucket.as_ref().and_then(|b| b.hint.as_ref()) {
            writeln!(f, "\nhint: {hint}")?;
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
        assert_eq!(positions(&[]), (vec![], vec![]));
        assert_eq!(positions(&[0, 1, 2]), (vec![], vec![]));
        assert_eq!(
            positions(&[0, 2, 3, 3, 3, 5]),
            (vec![(1, 1), (4, 4)], vec![3])
        );
        assert_eq!(positions(&[1, 1, 2, 2]), (vec![(0, 0)], vec![1, 2]));
        assert_eq!(positions(&[3, 9]), (vec![(0, 2), (4, 8)], vec![]));
    }

    #[test]
    fn a_position_far_out_of_range_lists_a_bounded_number() {
        let (ranges, _) = positions(&[0, i64::MAX]);
        assert_eq!(ranges, [(1, i64::MAX - 1)]);
        let (missing, more) = listed_missing(&ranges);
        assert_eq!(missing.len() as u64, MAX_MISSING_LISTED);
        assert_eq!(missing[0], 1);
        assert_eq!(more, (i64::MAX as u64 - 1) - MAX_MISSING_LISTED);
        let (missing, more) = listed_missing(&[(0, 1), (5, 2000)]);
        assert_eq!(&missing[..3], [0, 1, 5]);
        assert_eq!((missing.len() as u64, more), (MAX_MISSING_LISTED, 998));
    }

    #[test]
    fn text_lists_are_cut_and_ranges_count_their_positions() {
        let ranges: Vec<Range> = [(4, 4), (6, 4_999_999)].into_iter().map(Range).collect();
        let count = |rest: &[Range]| rest.iter().map(|r| r.0.1.abs_diff(r.0.0) + 1).sum();
        assert_eq!(join_cut(&ranges, false, count), "4, 6–4999999");
        let many: Vec<i64> = (0..CUT as i64 + 3).collect();
        let count = |rest: &[i64]| rest.len() as u64;
        let first: Vec<String> = (0..CUT).map(|i| i.to_string()).collect();
        assert_eq!(
            join_cut(&many, false, count),
            format!("{} … and 3 more", first.join(", "))
        );
        assert_eq!(join_cut(&many, true, count).split(", ").count(), CUT + 3);
    }

    #[test]
    fn a_cut_list_counts_what_it_did_not_keep() {
        let mut cut = Listed::new(false);
        let mut all = Listed::new(true);
        for i in 0..CUT + 5 {
            cut.push(i).expect("push");
            all.push(i).expect("push");
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
