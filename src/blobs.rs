//! The local content-addressed store: `blobs/<aa>/<sha256>`.
//!
//! One path publishes a blob, in two types: bytes go to a [`Staging`] file
//! under `blobs/tmp/` while they are hashed and counted;
//! [`Staging::finish`] checks the length and gives a [`Staged`] blob; a
//! [`Publisher`] makes it durable, renames it into place and makes the new
//! name durable, and only then says it is published. No call site can skip a
//! step, and the catalog is told of a blob only after that, so a crash leaves
//! at most an orphan staging file (removed by the next run), never a partial
//! blob under its hash.
//!
//! Durability is paid per group, not per blob (group commit): the
//! publisher's thread takes every staged blob that is waiting, makes their
//! bytes durable with one barrier, renames them all, then makes the names
//! durable with a second barrier. On Linux a barrier is one `syncfs(2)` of
//! the store's filesystem (which reports write errors since Linux 5.8);
//! elsewhere it is an fsync of every file, then of every directory that got
//! a name. Two fsyncs per blob cost more than the download of a sticker
//! (each is a write and a cache flush of the disk); two `syncfs` per group
//! of dozens do not.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::catalog::BlobInfo;
use crate::error::{Error, Result};

pub struct BlobStore {
    root: PathBuf,
    /// Names the staging files (the directory is cleared before a run).
    staged: AtomicU64,
}

impl BlobStore {
    pub fn new(archive: &Path) -> Self {
        BlobStore {
            root: archive.join("blobs"),
            staged: AtomicU64::new(0),
        }
    }

    /// Whether `blobs/` exists: a new archive has none, so no blob to look for.
    pub fn exists(&self) -> bool {
        self.root.is_dir()
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

    /// A new staging file under `blobs/tmp/`: named now, created by its
    /// first write (or by [`Staging::finish`]). Writing is blocking work:
    /// async callers do it through [`crate::blocking::run`].
    pub fn stage(&self) -> Staging {
        let n = self.staged.fetch_add(1, Ordering::Relaxed);
        let dir = self.staging_dir();
        Staging {
            file: None,
            path: Removed(Some(dir.join(n.to_string()))),
            dir,
            hasher: Sha256::new(),
            size: 0,
            head: Vec::with_capacity(HEAD),
        }
    }

    /// Starts the thread that publishes this store's staged blobs; it stops
    /// when the [`Publisher`] is dropped, once the groups it holds are done.
    /// Creates `blobs/` if needed: the barrier of every group is taken on it.
    pub fn publisher(&self) -> Result<Publisher> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::io(format!("cannot create {}", self.root.display()), e))?;
        let barrier = Barrier::new(&self.root)?;
        let root = self.root.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("publish".into())
            .spawn(move || publish_groups(&rx, &root, &barrier))
            .map_err(|e| Error::io("cannot start the blob publisher", e))?;
        Ok(Publisher {
            tx: Some(tx),
            thread: Some(thread),
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
        Ok(Some((hex::encode(hasher.finalize()), size)))
    }
}

const HEAD: usize = 16;

/// A staging file's path, removed on drop unless taken (renamed into place).
struct Removed(Option<PathBuf>);

impl Removed {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
}

impl Drop for Removed {
    /// A body refused, abandoned or that failed to publish (sync, rename)
    /// leaves no staging file behind.
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A blob being written. Dropped before it is published, it removes its file.
pub struct Staging {
    /// Created by the first write (`None` until then).
    file: Option<File>,
    path: Removed,
    dir: PathBuf,
    hasher: Sha256,
    size: u64,
    head: Vec<u8>,
}

impl Staging {
    /// Appends `chunk` (blocking: file I/O and hashing).
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.head.len() < HEAD {
            let take = (HEAD - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        let path = self.path.path().to_path_buf();
        self.file()?
            .write_all(chunk)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }

    /// The staging file, created (with `blobs/tmp/`) if it is not yet.
    fn file(&mut self) -> Result<&mut File> {
        if let Some(ref mut file) = self.file {
            return Ok(file);
        }
        let path = self.path.path();
        let cannot = |e| Error::io(format!("cannot create {}", path.display()), e);
        let file = match File::create(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir)
                    .map_err(|e| Error::io(format!("cannot create {}", self.dir.display()), e))?;
                File::create(path).map_err(cannot)?
            }
            Err(e) => return Err(cannot(e)),
        };
        Ok(self.file.insert(file))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The whole body is written. `expected` is the length the source
    /// announced; a body of another length is refused (and removed).
    /// Blocking (an empty body's file is created here).
    pub fn finish(mut self, expected: Option<u64>) -> Result<Staged, Unfinished> {
        if let Some(n) = expected
            && n != self.size
        {
            return Err(Unfinished::Length(WrongLength {
                expected: n,
                got: self.size,
            }));
        }
        self.file().map_err(Unfinished::Disk)?;
        // Closed here: a blob waiting for its group holds no descriptor.
        drop(self.file);
        Ok(Staged {
            info: BlobInfo {
                sha256: hex::encode(self.hasher.finalize()),
                size: self.size,
                kind: sniff(&self.head),
            },
            path: self.path,
        })
    }
}

/// A complete blob in its staging file, not durable yet: hand it to a
/// [`Publisher`]. Dropped unpublished, it removes its file.
pub struct Staged {
    info: BlobInfo,
    path: Removed,
}

impl Staged {
    pub fn info(&self) -> &BlobInfo {
        &self.info
    }
}

/// The blob publisher of a [`BlobStore`] (see the module's doc): staged
/// blobs go to its thread, which makes them durable in groups.
pub struct Publisher {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// A staged blob waiting for its group, and who waits for the answer.
struct Job {
    staged: Staged,
    done: tokio::sync::oneshot::Sender<Result<BlobInfo>>,
}

/// Blobs at most in one group: past that, the names are made durable before
/// more bytes are taken in.
const GROUP_MAX: usize = 1024;
/// How long a group waits for more blobs once its first one came: a few
/// downloads' worth, so that the barriers (and the catalog's commits of what
/// they made durable) serve dozens of blobs rather than two or three. The
/// download slots are free meanwhile; only the answer waits.
const GROUP_WAIT: Duration = Duration::from_millis(20);
/// How often a group being gathered looks for more blobs.
const GROUP_POLL: Duration = Duration::from_millis(5);

impl Publisher {
    /// Makes `staged` durable under its hash; returns once it is (with the
    /// rest of its group).
    pub async fn publish(&self, staged: Staged) -> Result<BlobInfo> {
        let stopped = || Error::Internal("the blob publisher stopped".into());
        let (done, answer) = tokio::sync::oneshot::channel();
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        tx.send(Job { staged, done }).map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

impl Drop for Publisher {
    /// Lets the thread finish the groups it holds, then waits for it.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The publisher's thread: one group at a time, of every job waiting.
fn publish_groups(rx: &mpsc::Receiver<Job>, root: &Path, barrier: &Barrier) {
    // Fan-out directories known to exist (made by this thread).
    let mut fans = HashSet::new();
    while let Ok(first) = rx.recv() {
        let until = Instant::now() + GROUP_WAIT;
        let mut group = vec![first];
        // The thread sleeps rather than waits on the channel: a send to a
        // receiver that is not waiting wakes no thread, so a group of dozens
        // of blobs costs a few wake-ups, not one per blob.
        loop {
            group.extend(rx.try_iter().take(GROUP_MAX - group.len()));
            let left = until.saturating_duration_since(Instant::now());
            if group.len() >= GROUP_MAX || left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(GROUP_POLL));
        }
        publish_group(group, root, barrier, &mut fans);
    }
}

/// Bytes durable, then renamed, then names durable; every job is answered.
fn publish_group(group: Vec<Job>, root: &Path, barrier: &Barrier, fans: &mut HashSet<String>) {
    let fail = |job: Job, what: String, e: &std::io::Error| {
        let e = std::io::Error::new(e.kind(), e.to_string());
        let _ = job.done.send(Err(Error::io(what, e)));
    };
    let files: Vec<&Path> = group.iter().map(|j| j.staged.path.path()).collect();
    if let Err(e) = barrier.files(&files) {
        for job in group {
            fail(
                job,
                format!("cannot sync the blobs in {}", root.display()),
                &e,
            );
        }
        return;
    }
    let mut renamed = Vec::with_capacity(group.len());
    let mut dirs = HashSet::new();
    let mut new_fan = false;
    for mut job in group {
        let info = &job.staged.info;
        let fan = root.join(&info.sha256[..2]);
        if !fans.contains(&info.sha256[..2]) {
            if let Err(e) = std::fs::create_dir_all(&fan) {
                fail(job, format!("cannot create {}", fan.display()), &e);
                continue;
            }
            fans.insert(info.sha256[..2].to_string());
            new_fan = true;
        }
        let target = fan.join(&info.sha256);
        if let Err(e) = std::fs::rename(job.staged.path.path(), &target) {
            fail(
                job,
                format!("cannot move a blob to {}", target.display()),
                &e,
            );
            continue;
        }
        // In place under its hash: nothing to remove any more.
        job.staged.path.0 = None;
        dirs.insert(fan);
        renamed.push(job);
    }
    if new_fan {
        dirs.insert(root.to_path_buf());
        if let Some(archive) = root.parent() {
            dirs.insert(archive.to_path_buf());
        }
    }
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    if let Err(e) = barrier.names(&dirs) {
        for job in renamed {
            fail(
                job,
                format!("cannot sync the blobs in {}", root.display()),
                &e,
            );
        }
        return;
    }
    for job in renamed {
        let _ = job.done.send(Ok(job.staged.info.clone()));
    }
}

/// How a group's writes are made durable: one `syncfs(2)` where the system
/// has it, else an fsync of every file (bytes) or directory (names).
struct Barrier {
    /// A descriptor of `blobs/` for `syncfs`, opened before any blob is
    /// staged so that it hears of every write error since (Linux 5.8+).
    dir: File,
}

impl Barrier {
    fn new(root: &Path) -> Result<Barrier> {
        let dir = File::open(root)
            .map_err(|e| Error::io(format!("cannot open {}", root.display()), e))?;
        Ok(Barrier { dir })
    }

    /// Makes the bytes of `files` durable.
    fn files(&self, files: &[&Path]) -> std::io::Result<()> {
        syncfs(&self.dir).unwrap_or_else(|| each_synced(files))
    }

    /// Makes the entries of `dirs` durable.
    fn names(&self, dirs: &[&Path]) -> std::io::Result<()> {
        syncfs(&self.dir).unwrap_or_else(|| each_synced(dirs))
    }
}

/// `syncfs(2)` of the filesystem of `dir`; `None` where there is none.
fn syncfs(dir: &File) -> Option<std::io::Result<()>> {
    #[cfg(target_os = "linux")]
    match rustix::fs::syncfs(dir) {
        Err(rustix::io::Errno::NOSYS) => None,
        done => Some(done.map_err(Into::into)),
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        None
    }
}

/// fsync of every file or directory of `paths`.
fn each_synced(paths: &[&Path]) -> std::io::Result<()> {
    paths.iter().try_for_each(|p| File::open(p)?.sync_all())
}

/// Why a staging file gave no [`Staged`] blob.
#[derive(Debug, thiserror::Error)]
pub enum Unfinished {
    #[error(transparent)]
    Length(#[from] WrongLength),
    /// The (empty) file could not be created.
    #[error(transparent)]
    Disk(Error),
}

/// A body whose length is not the one its source announced.
#[derive(Debug, thiserror::Error)]
#[error("the body has {got} bytes where {expected} were announced")]
pub struct WrongLength {
    pub expected: u64,
    pub got: u64,
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

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn staged(store: &BlobStore, bytes: &[u8]) -> Staged {
        let mut s = store.stage();
        s.write(bytes).expect("write");
        s.finish(Some(bytes.len() as u64)).expect("finish")
    }

    fn staging_files(archive: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(archive.join("blobs/tmp"))
            .expect("tmp")
            .map(|e| e.expect("entry").path())
            .collect()
    }

    #[test]
    fn publish_stores_under_hash_and_refuses_wrong_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::new(dir.path());
        let publisher = store.publisher().expect("publisher");
        let info = block_on(publisher.publish(staged(&store, b"abc"))).expect("publish");
        assert_eq!(
            info.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            std::fs::read(store.path(&info.sha256)).expect("read"),
            b"abc"
        );

        let mut s = store.stage();
        s.write(b"ab").expect("write");
        assert!(matches!(
            s.finish(Some(3)),
            Err(Unfinished::Length(WrongLength {
                expected: 3,
                got: 2
            }))
        ));
        let empty = store.stage().finish(Some(0)).expect("an empty body");
        assert_eq!(
            block_on(publisher.publish(empty)).expect("publish").sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "an empty body is a blob too"
        );
        let mut s = store.stage();
        s.write(b"abandoned").expect("write");
        drop(s);
        drop(staged(&store, b"staged, never published"));
        assert_eq!(
            staging_files(dir.path()),
            Vec::<PathBuf>::new(),
            "a refused, abandoned or unpublished body leaves no staging file"
        );
    }

    #[test]
    fn a_group_publishes_every_blob_and_fails_only_the_one_that_cannot_move() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::new(dir.path());
        let publisher = store.publisher().expect("publisher");
        let bodies: Vec<Vec<u8>> = (0..300u32)
            .map(|i| i.to_le_bytes().repeat(i as usize % 50 + 1))
            .collect();
        // The fan-out directory of one blob is taken by a file: that blob
        // alone cannot be renamed into place.
        let blocked = hex::encode(Sha256::digest(&bodies[7]));
        std::fs::write(dir.path().join("blobs").join(&blocked[..2]), b"in the way").expect("block");
        let results = block_on(futures::future::join_all(
            bodies.iter().map(|b| publisher.publish(staged(&store, b))),
        ));
        for (body, result) in bodies.iter().zip(results) {
            let sha = hex::encode(Sha256::digest(body));
            if sha[..2] == blocked[..2] {
                let e = result.expect_err("its fan-out directory is a file");
                assert!(matches!(e, Error::Io { .. }), "{e}");
                assert!(!store.path(&sha).exists());
            } else {
                let info = result.expect("published");
                assert_eq!(
                    (info.sha256.as_str(), info.size),
                    (sha.as_str(), body.len() as u64)
                );
                assert_eq!(std::fs::read(store.path(&sha)).expect("read"), *body);
            }
        }
        assert_eq!(
            staging_files(dir.path()),
            Vec::<PathBuf>::new(),
            "a blob that failed to publish leaves no staging file"
        );
        drop(publisher);
    }
}
