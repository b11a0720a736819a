//! A destination's description of itself under `_starchive/` (SPEC §5): the
//! manifest and the zstd-compressed copy of the catalog, cut into parts of
//! at most [`CATALOG_PART_BYTES`] when larger. `push` writes them; `pull`
//! reads them back.
//!
//! The manifest's first line names the copy's objects with their sizes and
//! sha256, so a reader takes exactly those objects and checks each: objects
//! of an older copy left beside them (a plain `catalog.sqlite`, more parts
//! than now) are never read, and a copy rewritten under a manifest that does
//! not describe it is refused rather than stitched together.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::stores::Store;

pub const MANIFEST_KEY: &str = "_starchive/manifest.jsonl.zst";
/// The catalog copy as one object, when it fits in one part.
pub const CATALOG_COPY_KEY: &str = "_starchive/catalog.sqlite.zst";
/// The uncompressed copy that manifests of format 1 describe.
pub const LEGACY_CATALOG_COPY_KEY: &str = "_starchive/catalog.sqlite";
/// The largest object of the catalog copy: under the 50 MB per file that
/// Supabase's free plan accepts.
pub const CATALOG_PART_BYTES: u64 = 45 << 20;
/// Version of the manifest's format, in its first line. 2: the catalog
/// copy is compressed, in parts, named in the first line with the archive id.
pub const MANIFEST_FORMAT: u32 = 2;

/// The key of part `index` of a catalog copy cut into parts.
pub fn part_key(index: usize) -> String {
    format!("{CATALOG_COPY_KEY}.{index:03}")
}

/// Whether `key` is an object of some catalog copy (this one's or an older one's).
pub fn is_catalog_copy_key(key: &str) -> bool {
    key == LEGACY_CATALOG_COPY_KEY
        || key == CATALOG_COPY_KEY
        || key
            .strip_prefix(CATALOG_COPY_KEY)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// One object of the catalog copy, as the manifest's first line names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyObject {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// The manifest's first line, as `pull` reads it (the writer adds more).
#[derive(Clone, Debug, Deserialize)]
pub struct Header {
    pub format: u32,
    #[serde(default)]
    pub layout: Option<String>,
    /// The pushing archive's identity (format 2 on).
    #[serde(default)]
    pub archive_id: Option<String>,
    /// The id of the snapshot the pushed catalog holds last.
    #[serde(default)]
    pub snapshot_id: Option<i64>,
    /// The envs the destination holds; empty (or absent) for every env.
    #[serde(default)]
    pub envs: Vec<String>,
    /// The catalog copy's objects, in order (format 2 on); absent when the
    /// store refused the copy.
    #[serde(default)]
    pub catalog: Option<Vec<CopyObject>>,
}

/// Compresses a catalog copy into parts of at most `part_bytes`, giving each
/// finished part to `upload` (its key, a file holding it, its size and
/// sha256) as soon as it is known to be final: only one part is ever on disk
/// and none in memory. A copy that fits in one part is the single object
/// [`CATALOG_COPY_KEY`]; a larger one is parts `.000`, `.001`, …
pub fn write_catalog_copy(
    copy: &Path,
    scratch: PathBuf,
    part_bytes: u64,
    upload: impl FnMut(&str, &Path, u64, &str) -> Result<()>,
) -> Result<Vec<CopyObject>> {
    let cannot_read = |e| Error::io(format!("cannot read {}", copy.display()), e);
    let mut source = std::fs::File::open(copy).map_err(cannot_read)?;
    let mut parts = Parts::new(scratch, part_bytes.max(1), upload)?;
    let compressed = (|| {
        let mut encoder = zstd::Encoder::new(&mut parts, 3)?;
        std::io::copy(&mut source, &mut encoder)?;
        encoder.finish()?.flush()
    })();
    if let Err(e) = compressed {
        return Err(parts
            .failure
            .take()
            .unwrap_or_else(|| Error::io("cannot compress the catalog copy", e)));
    }
    parts.finish()
}

/// The sink of [`write_catalog_copy`]: a part file that is handed over when
/// full and the next byte arrives.
struct Parts<F> {
    path: PathBuf,
    file: std::fs::File,
    hasher: Sha256,
    size: u64,
    part_bytes: u64,
    done: Vec<CopyObject>,
    upload: F,
    /// Why `upload` failed, returned instead of the io error that carried it.
    failure: Option<Error>,
}

impl<F: FnMut(&str, &Path, u64, &str) -> Result<()>> Parts<F> {
    fn new(path: PathBuf, part_bytes: u64, upload: F) -> Result<Self> {
        let file = std::fs::File::create(&path)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        Ok(Parts {
            path,
            file,
            hasher: Sha256::new(),
            size: 0,
            part_bytes,
            done: Vec::new(),
            upload,
            failure: None,
        })
    }

    /// Uploads the part held under `key` and starts the next one, empty.
    fn hand_over(&mut self, key: String) -> Result<()> {
        self.file
            .flush()
            .map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e))?;
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        (self.upload)(&key, &self.path, self.size, &sha256)?;
        self.done.push(CopyObject {
            key,
            size: self.size,
            sha256,
        });
        self.file = std::fs::File::create(&self.path)
            .map_err(|e| Error::io(format!("cannot write {}", self.path.display()), e))?;
        self.size = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<CopyObject>> {
        let key = if self.done.is_empty() {
            CATALOG_COPY_KEY.to_string()
        } else {
            part_key(self.done.len())
        };
        self.hand_over(key)?;
        Ok(std::mem::take(&mut self.done))
    }
}

impl<F: FnMut(&str, &Path, u64, &str) -> Result<()>> Write for Parts<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.size == self.part_bytes {
            let key = part_key(self.done.len());
            if let Err(e) = self.hand_over(key) {
                let text = e.to_string();
                self.failure = Some(e);
                return Err(std::io::Error::other(text));
            }
        }
        let room = usize::try_from(self.part_bytes - self.size).unwrap_or(usize::MAX);
        let n = buf.len().min(room);
        self.file.write_all(&buf[..n])?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl<F> Drop for Parts<F> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One ref line of the manifest, as `pull` reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct Line {
    /// The ref's identity in the catalog: class, table, row id and slot.
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub row_id: Option<String>,
    /// None for the empty slot.
    #[serde(default)]
    pub slot: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
    /// The ref's key at the destination; none when it is not placed there.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// An object of a store read as it streams, for a thread outside the
/// async runtime (it blocks on each chunk).
pub struct ObjectReader {
    runtime: tokio::runtime::Handle,
    stream: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl ObjectReader {
    /// Opens `key` of `store`; `None` when the store has no such object.
    pub fn open(
        runtime: &tokio::runtime::Handle,
        store: &Store,
        key: &str,
    ) -> Result<Option<Self>> {
        let path = store.path(key).map_err(Error::Config)?;
        match runtime.block_on(store.inner.get(&path)) {
            Ok(got) => Ok(Some(ObjectReader {
                runtime: runtime.clone(),
                stream: got.into_stream(),
                chunk: bytes::Bytes::new(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::Config(format!(
                "cannot read {key} from {}: {}",
                store.shown,
                crate::download::describe(&e)
            ))),
        }
    }
}

impl std::io::Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use futures::StreamExt;
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// The manifest of a destination, read as it streams: its first line,
/// then [`Manifest::for_each_line`].
pub struct Manifest {
    pub header: Header,
    lines: std::io::BufReader<zstd::Decoder<'static, std::io::BufReader<ObjectReader>>>,
    shown: String,
}

impl Manifest {
    /// Reads the first line of `store`'s manifest; `None` when there is none.
    pub fn open(runtime: &tokio::runtime::Handle, store: &Store) -> Result<Option<Manifest>> {
        use std::io::BufRead;
        let Some(reader) = ObjectReader::open(runtime, store, MANIFEST_KEY)? else {
            return Ok(None);
        };
        let bad = |what: String| {
            Error::Config(format!(
                "the manifest {MANIFEST_KEY} of {} cannot be read ({what}): is a push writing it? run again once it is done",
                store.shown
            ))
        };
        let decoder = zstd::Decoder::new(reader).map_err(|e| bad(e.to_string()))?;
        let mut lines = std::io::BufReader::new(decoder);
        let mut first = String::new();
        lines
            .read_line(&mut first)
            .map_err(|e| bad(e.to_string()))?;
        let header: Header = serde_json::from_str(&first).map_err(|e| bad(e.to_string()))?;
        if header.format > MANIFEST_FORMAT {
            return Err(Error::Config(format!(
                "the manifest of {} has format {}, newer than this starchive knows ({MANIFEST_FORMAT}): use a newer starchive",
                store.shown, header.format
            )));
        }
        Ok(Some(Manifest {
            header,
            lines,
            shown: store.shown.clone(),
        }))
    }

    /// Every ref line, in order.
    pub fn for_each_line(mut self, mut each: impl FnMut(Line) -> Result<()>) -> Result<()> {
        use std::io::BufRead;
        let mut text = String::new();
        loop {
            text.clear();
            let n = self.lines.read_line(&mut text).map_err(|e| {
                Error::Config(format!(
                    "the manifest {MANIFEST_KEY} of {} cannot be read ({e}): run again",
                    self.shown
                ))
            })?;
            if n == 0 {
                return Ok(());
            }
            if text.trim().is_empty() {
                continue;
            }
            let line: Line = serde_json::from_str(&text).map_err(|e| {
                Error::Config(format!(
                    "the manifest {MANIFEST_KEY} of {} has a line that is not a ref ({e})",
                    self.shown
                ))
            })?;
            each(line)?;
        }
    }
}

/// Writes the catalog copy that `header` names, from `store`, into the new
/// file `out` (synced): the parts checked against their sizes and sha256 as
/// they stream and decompressed on the way, or, for a manifest of format
/// 1, the plain `catalog.sqlite`.
pub fn restore_catalog_copy(
    runtime: &tokio::runtime::Handle,
    store: &Store,
    header: &Header,
    out: &Path,
) -> Result<()> {
    let cannot = |e: std::io::Error| Error::io(format!("cannot write {}", out.display()), e);
    let file = std::fs::File::create(out).map_err(cannot)?;
    let missing = |key: &str| {
        Error::Config(format!(
            "{} has no {key}, which its manifest names: is a push writing it? run again once it is done",
            store.shown
        ))
    };
    let file = match (&header.catalog, header.format) {
        (Some(objects), _) => {
            let mut decoder =
                zstd::stream::write::Decoder::new(std::io::BufWriter::new(file)).map_err(cannot)?;
            for object in objects {
                let mut reader = ObjectReader::open(runtime, store, &object.key)?
                    .ok_or_else(|| missing(&object.key))?;
                let mut hashing = HashingWriter::new(&mut decoder);
                let size = std::io::copy(&mut reader, &mut hashing).map_err(|e| {
                    Error::Config(format!(
                        "cannot read {} from {}: {e}",
                        object.key, store.shown
                    ))
                })?;
                let sha256 = hex::encode(hashing.hasher.finalize());
                if size != object.size || sha256 != object.sha256 {
                    return Err(Error::Config(format!(
                        "{} of {} is not the object its manifest names ({size} bytes hashing to {sha256}, not {} bytes hashing to {}): is a push writing it? run again once it is done",
                        object.key, store.shown, object.size, object.sha256
                    )));
                }
            }
            decoder.flush().map_err(cannot)?;
            decoder
                .into_inner()
                .into_inner()
                .map_err(|e| cannot(e.into_error()))?
        }
        (None, 1) => {
            let mut reader = ObjectReader::open(runtime, store, LEGACY_CATALOG_COPY_KEY)?
                .ok_or_else(|| missing(LEGACY_CATALOG_COPY_KEY))?;
            let mut writer = std::io::BufWriter::new(file);
            std::io::copy(&mut reader, &mut writer).map_err(|e| {
                Error::Config(format!(
                    "cannot read {LEGACY_CATALOG_COPY_KEY} from {}: {e}",
                    store.shown
                ))
            })?;
            writer.into_inner().map_err(|e| cannot(e.into_error()))?
        }
        (None, _) => {
            return Err(Error::Config(format!(
                "{} holds no catalog copy (the store refused it when it was pushed): push to it again, then pull",
                store.shown
            )));
        }
    };
    file.sync_all().map_err(cannot)
}

/// A writer that hashes what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Parts concatenated in order are the zstd stream of the copy; each is
    /// at most the part size and named as SPEC §5 says.
    #[test]
    fn copy_in_parts_concatenates_to_the_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("copy");
        let data = pseudo_random(300_000);
        std::fs::write(&copy, &data).expect("write");
        let mut uploaded = Vec::new();
        let objects = write_catalog_copy(
            &copy,
            dir.path().join("part"),
            65_536,
            |key, f, size, sha| {
                let bytes = std::fs::read(f).expect("part");
                assert_eq!(bytes.len() as u64, size);
                assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
                uploaded.push((key.to_string(), bytes));
                Ok(())
            },
        )
        .expect("copy");
        assert!(objects.len() >= 4, "{} parts", objects.len());
        let keys: Vec<_> = objects.iter().map(|o| o.key.clone()).collect();
        let want: Vec<_> = (0..objects.len()).map(part_key).collect();
        assert_eq!(keys, want);
        assert!(objects.iter().all(|o| o.size <= 65_536));
        let stream: Vec<u8> = uploaded.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(zstd::decode_all(&stream[..]).expect("decode"), data);
        assert!(!dir.path().join("part").exists(), "no part file left");
    }

    #[test]
    fn small_copy_is_one_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("copy");
        std::fs::write(&copy, b"SQLite format 3\0").expect("write");
        let objects = write_catalog_copy(
            &copy,
            dir.path().join("part"),
            CATALOG_PART_BYTES,
            |_, _, _, _| Ok(()),
        )
        .expect("copy");
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].key, CATALOG_COPY_KEY);
    }

    #[test]
    fn a_refused_part_stops_the_copy_with_its_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("copy");
        std::fs::write(&copy, pseudo_random(200_000)).expect("write");
        let err = write_catalog_copy(&copy, dir.path().join("part"), 50_000, |key, _, _, _| {
            Err(Error::Config(format!("{key} refused")))
        })
        .err();
        assert!(
            matches!(&err, Some(Error::Config(m)) if m == "_starchive/catalog.sqlite.zst.000 refused"),
            "{err:?}"
        );
    }

    #[test]
    fn copy_keys_are_recognised() {
        assert!(is_catalog_copy_key("_starchive/catalog.sqlite"));
        assert!(is_catalog_copy_key("_starchive/catalog.sqlite.zst"));
        assert!(is_catalog_copy_key("_starchive/catalog.sqlite.zst.012"));
        assert!(!is_catalog_copy_key("_starchive/catalog.sqlite.zst.tmp"));
        assert!(!is_catalog_copy_key("_starchive/manifest.jsonl.zst"));
    }
}
