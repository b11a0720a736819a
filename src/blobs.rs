//! The local content-addressed store: `blobs/<aa>/<sha256>`.
//!
//! One path publishes a blob: bytes go to a staging file under `blobs/tmp/`
//! while they are hashed and counted; [`Staging::publish`] checks the length,
//! fsyncs the file, renames it into place and fsyncs the directories. No call
//! site can skip a step, and the catalog is told of a blob only after
//! `publish` returned, so a crash leaves at most an orphan staging file
//! (removed by the next run), never a partial blob under its hash.
//!
//! Directories are created when first needed, not checked before every
//! blob: a fan-out directory is made (and the root fsynced, so that its
//! entry is durable) once per process, under a lock that also holds back
//! any other blob bound for it until then.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub struct BlobStore {
    root: PathBuf,
    /// Fan-out directories known to exist durably (shared with stagings).
    fans: Arc<Mutex<HashSet<String>>>,
}

/// What a published blob is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub sha256: String,
    pub size: u64,
    /// Extension from the bytes: webp, png, jpg, webm, tgs or bin.
    pub kind: &'static str,
}

impl BlobStore {
    pub fn new(archive: &Path) -> Self {
        BlobStore {
            root: archive.join("blobs"),
            fans: Arc::default(),
        }
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        let fan = sha256.get(..2).unwrap_or("xx");
        self.root.join(fan).join(sha256)
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Removes staging files a killed run left behind (the caller holds the archive lock).
    pub fn clear_staging(&self) -> Result<()> {
        let dir = self.staging_dir();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("cannot clear {}", dir.display()), e)),
        }
    }

    pub fn stage(&self) -> Result<Staging> {
        let dir = self.staging_dir();
        let path = dir.join(uuid::Uuid::new_v4().simple().to_string());
        let cannot = |e| Error::io(format!("cannot create {}", path.display()), e);
        let file = match File::create(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
                File::create(&path).map_err(cannot)?
            }
            Err(e) => return Err(cannot(e)),
        };
        Ok(Staging {
            file: Some(file),
            path,
            root: self.root.clone(),
            fans: self.fans.clone(),
            hasher: Sha256::new(),
            size: 0,
            head: Vec::with_capacity(HEAD),
            published: false,
        })
    }

    /// Hashes a stored blob again; `Ok(None)` when it is missing.
    pub fn rehash(&self, sha256: &str) -> Result<Option<(String, u64)>> {
        let path = self.path(sha256);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        let mut hasher = Sha256::new();
        let size = std::io::copy(&mut file, &mut hasher)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        Ok(Some((hex(&hasher.finalize()), size)))
    }
}

const HEAD: usize = 16;

/// A blob being written. Dropped without `publish`, it removes its file.
pub struct Staging {
    file: Option<File>,
    path: PathBuf,
    root: PathBuf,
    fans: Arc<Mutex<HashSet<String>>>,
    hasher: Sha256,
    size: u64,
    head: Vec<u8>,
    /// Renamed into place: nothing left to remove.
    published: bool,
}

impl Staging {
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.head.len() < HEAD {
            let take = (HEAD - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        let path = &self.path;
        match self.file.as_mut() {
            Some(file) => file
                .write_all(chunk)
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e)),
            None => Ok(()),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the blob durable under its hash. `expected` is the length the
    /// source announced; a body of another length is refused and removed.
    pub fn publish(mut self, expected: Option<u64>) -> Result<BlobInfo, PublishError> {
        if let Some(n) = expected
            && n != self.size
        {
            return Err(PublishError::Length {
                expected: n,
                got: self.size,
            });
        }
        let io = |what: &str, path: &Path, e: std::io::Error| {
            PublishError::Io(Error::io(format!("{what} {}", path.display()), e))
        };
        let file = self.file.take();
        if let Some(file) = file {
            file.sync_all()
                .map_err(|e| io("cannot sync", &self.path, e))?;
        }
        let sha256 = hex(&self.hasher.clone().finalize());
        let fan = self.root.join(&sha256[..2]);
        {
            let mut known = self.fans.lock().unwrap_or_else(|e| e.into_inner());
            if !known.contains(&sha256[..2]) {
                std::fs::create_dir_all(&fan).map_err(|e| io("cannot create", &fan, e))?;
                sync_dir(&self.root).map_err(|e| io("cannot sync", &self.root, e))?;
                if let Some(archive) = self.root.parent() {
                    sync_dir(archive).map_err(|e| io("cannot sync", archive, e))?;
                }
                known.insert(sha256[..2].to_string());
            }
        }
        let target = fan.join(&sha256);
        std::fs::rename(&self.path, &target)
            .map_err(|e| io("cannot move a blob to", &target, e))?;
        self.published = true;
        sync_dir(&fan).map_err(|e| io("cannot sync", &fan, e))?;
        Ok(BlobInfo {
            sha256,
            size: self.size,
            kind: sniff(&self.head),
        })
    }
}

impl Drop for Staging {
    /// A body refused, abandoned or that failed to publish (sync, rename)
    /// leaves no staging file behind.
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the body has {got} bytes where {expected} were announced")]
    Length { expected: u64, got: u64 },
    #[error(transparent)]
    Io(Error),
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The file type from its first bytes, as the extension used in keys.
pub fn sniff(head: &[u8]) -> &'static str {
    match head {
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => "webp",
        [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, ..] => "png",
        [0xff, 0xd8, 0xff, ..] => "jpg",
        [0x1a, 0x45, 0xdf, 0xa3, ..] => "webm",
        [0x1f, 0x8b, ..] => "tgs",
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_bytes() {
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8L"), "webp");
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), "png");
        assert_eq!(sniff(b"\xff\xd8\xff\xe0"), "jpg");
        assert_eq!(sniff(b"\x1a\x45\xdf\xa3\x01"), "webm");
        assert_eq!(sniff(b"\x1f\x8b\x08"), "tgs");
        assert_eq!(sniff(b"hello"), "bin");
        assert_eq!(sniff(b""), "bin");
    }

    #[test]
    fn publish_stores_under_hash_and_refuses_wrong_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::new(dir.path());
        let mut s = store.stage().expect("stage");
        s.write(b"abc").expect("write");
        let info = s.publish(Some(3)).expect("publish");
        assert_eq!(
            info.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            std::fs::read(store.path(&info.sha256)).expect("read"),
            b"abc"
        );

        let mut s = store.stage().expect("stage");
        s.write(b"ab").expect("write");
        assert!(matches!(
            s.publish(Some(3)),
            Err(PublishError::Length { .. })
        ));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("blobs/tmp"))
            .expect("tmp")
            .collect();
        assert!(left.is_empty(), "a refused body leaves no staging file");
    }
}
