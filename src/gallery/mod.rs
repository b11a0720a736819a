//! `gallery`: a static site of the archive that a browser shows from disk.
//!
//! Layout of the site (`ARCHIVE/gallery/` unless `--out`):
//! - `index.html` (`index.p2.html`, … for large bots): the counts of `plan`,
//!   every env, then every user, session and pack batch with links;
//! - `users/<id>.html`: a user's sessions, each with its session sticker,
//!   single stickers and links to its pack batches;
//! - `packs/<id>.html`: a pack batch's stickers in `pack_index` order (gaps
//!   and positions held twice shown), then its sheet;
//! - `assets/`: the stylesheet, lottie-web's light player and its licence;
//! - `anim/<aa>/<sha256>.js`: the Lottie data of each animated sticker.
//!
//! Pages link to the archive's `blobs/` in place by relative path: no file
//! is copied. Animated stickers (`tgs`) are gzipped Lottie JSON, and a page
//! opened from `file://` cannot `fetch()` a neighbouring file in Chromium,
//! so each animation is unpacked here (once per blob, size-capped, checked
//! to be JSON) into a small script that hands the data to the player: pages
//! stay small and an animation shared by many stickers is written once.
//!
//! A page holds at most [`PAGE_ITEMS`] rows or cards; longer ones continue
//! on `NAME.p2.html`, …. Pages are rendered one at a time from streamed
//! queries, so memory stays flat whatever the archive's size. The site is
//! built in a sibling directory and swapped in when complete: a re-run
//! replaces the old site (stale pages go with it), and a run that stops
//! half-way leaves the previous site as it was.

mod pages;

use std::cell::Cell;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use maud::Markup;
use serde::Serialize;

use crate::catalog::gallery::{Card, Scope};
use crate::catalog::plan::PlanReport;
use crate::error::{Error, Result};

/// Rows or cards on one page.
pub const PAGE_ITEMS: usize = 500;

/// Unpacked Lottie JSON larger than this is not played (Telegram's own
/// limit is 64 KiB packed; this only stops a gzip bomb).
const MAX_ANIMATION_BYTES: u64 = 8 << 20;

/// The file that marks a directory as a gallery that a re-run may replace.
const MARKER: &str = ".starchive-gallery";

/// `gallery --json` (SPEC §3).
#[derive(Debug, Serialize)]
pub struct GalleryReport {
    /// The site's directory.
    pub out: String,
    /// HTML pages written.
    pub pages: u64,
    /// Refs shown, each on one page (as its file, or as a placeholder).
    pub stickers: u64,
    /// Refs shown as a placeholder: not fetched, blob missing from
    /// `blobs/`, or a type a browser cannot show.
    pub placeholders: u64,
}

impl std::fmt::Display for GalleryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "gallery: {} pages, {} stickers ({} as placeholders) in {}",
            self.pages, self.stickers, self.placeholders, self.out
        )?;
        writeln!(
            f,
            "open {} in a browser",
            Path::new(&self.out).join("index.html").display()
        )
    }
}

/// The directory the site goes to: `out`, else `ARCHIVE/gallery`.
pub fn out_dir(archive: &Path, out: Option<&Path>) -> PathBuf {
    out.map_or_else(|| archive.join("gallery"), Path::to_path_buf)
}

/// Writes the site of the refs in `scope` to `out`, replacing the gallery
/// that is there. `counts` are `plan`'s, shown on the index.
pub fn write(
    scope: &Scope<'_>,
    archive: &Path,
    out: &Path,
    counts: &PlanReport,
) -> Result<GalleryReport> {
    let out = std::path::absolute(out)
        .map_err(|e| Error::io(format!("cannot resolve {}", out.display()), e))?;
    refuse_foreign_dir(&out)?;
    let (parent, name) = match (out.parent(), out.file_name().and_then(|n| n.to_str())) {
        (Some(parent), Some(name)) => (parent, name),
        _ => {
            return Err(Error::Usage(format!(
                "--out {}: name a directory of its own for the gallery",
                out.display()
            )));
        }
    };
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
    let parent = canonical(parent)?;
    let archive = canonical(archive)?;
    let stage = parent.join(format!(".{name}.starchive-new"));
    remove_dir(&stage)?;
    create_dir(&stage)?;
    std::fs::write(
        stage.join(MARKER),
        "a site written by `starchive gallery`\n",
    )
    .map_err(|e| Error::io(format!("cannot write in {}", stage.display()), e))?;

    let site = Site {
        stage: stage.clone(),
        blobs: archive.join("blobs"),
        blobs_href: relative_href(&parent.join(name), &archive.join("blobs"))?,
        pages: Cell::new(0),
        stickers: Cell::new(0),
        placeholders: Cell::new(0),
    };
    site.write_assets()?;
    site.write_user_pages(scope)?;
    site.write_pack_pages(scope)?;
    site.write_index(scope, counts)?;

    // Swap the new site in; the old one goes last.
    let old = parent.join(format!(".{name}.starchive-old"));
    remove_dir(&old)?;
    let final_dir = parent.join(name);
    if final_dir.exists() {
        std::fs::rename(&final_dir, &old)
            .map_err(|e| Error::io(format!("cannot move {} aside", final_dir.display()), e))?;
    }
    std::fs::rename(&stage, &final_dir)
        .map_err(|e| Error::io(format!("cannot put the site at {}", final_dir.display()), e))?;
    remove_dir(&old)?;
    Ok(GalleryReport {
        out: out.display().to_string(),
        pages: site.pages.get(),
        stickers: site.stickers.get(),
        placeholders: site.placeholders.get(),
    })
}

/// A directory that holds files but no gallery is the user's: never replace it.
fn refuse_foreign_dir(out: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Config(format!(
                "--out {}: cannot use it for the gallery ({e}); name a new or empty directory",
                out.display()
            )));
        }
    };
    if entries.count() > 0 && !out.join(MARKER).is_file() {
        return Err(Error::Config(format!(
            "--out {} holds files that are not a starchive gallery: name a new or empty directory",
            out.display()
        )));
    }
    Ok(())
}

fn canonical(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path)
        .map_err(|e| Error::io(format!("cannot resolve {}", path.display()), e))
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))
}

fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot remove {}", path.display()), e)),
    }
}

/// The relative URL from directory `from` to `to` (both absolute and
/// canonical), each segment percent-encoded, without a trailing slash.
fn relative_href(from: &Path, to: &Path) -> Result<String> {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    /// Everything but RFC 3986's unreserved characters.
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let from: Vec<Component<'_>> = from.components().collect();
    let to: Vec<Component<'_>> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut segments: Vec<String> = vec!["..".into(); from.len() - common];
    for part in &to[common..] {
        let text = part.as_os_str().to_str().ok_or_else(|| {
            Error::Config(format!(
                "the archive's path {} is not UTF-8: a page cannot link to it",
                to.iter()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            ))
        })?;
        segments.push(utf8_percent_encode(text, SEGMENT).to_string());
    }
    Ok(segments.join("/"))
}

/// A file name for a row's page: the id itself when it is short and plain
/// (lower-case letters, digits, `-`, `_`), else its letters and digits and
/// a hash of the id after a `~` (which no plain id holds, so the two never
/// meet). Pages of one book after the first add `.pN`.
pub fn slug(id: Option<&str>) -> String {
    let Some(id) = id else {
        return "~none".into();
    };
    let plain = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if plain {
        return id.to_string();
    }
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(id.as_bytes()));
    let clean: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{clean}~{}", &hash[..16])
}

/// The site being written, and its counters.
struct Site {
    stage: PathBuf,
    blobs: PathBuf,
    /// From the site's root to `blobs/`.
    blobs_href: String,
    pages: Cell<u64>,
    stickers: Cell<u64>,
    placeholders: Cell<u64>,
}

/// What a card shows where its file would be.
pub(crate) enum Media {
    Image,
    Video,
    /// The sha256 of the animation.
    Animation(String),
    Placeholder {
        state: String,
        reason: String,
    },
}

/// A ref's card: its media, and the href of its file when it is in `blobs/`.
pub(crate) struct Shown {
    pub media: Media,
    pub file: Option<String>,
}

impl Site {
    fn write_assets(&self) -> Result<()> {
        const ASSETS: &[(&str, &str)] = &[
            ("gallery.css", include_str!("assets/gallery.css")),
            ("gallery.js", include_str!("assets/gallery.js")),
            (
                "lottie_light.min.js",
                include_str!("../../vendor/lottie-web/lottie_light.min.js"),
            ),
            (
                "lottie-web-LICENSE.md",
                include_str!("../../vendor/lottie-web/LICENSE.md"),
            ),
        ];
        let dir = self.stage.join("assets");
        create_dir(&dir)?;
        for (name, text) in ASSETS {
            self.write_file(&dir.join(name), text.as_bytes())?;
        }
        create_dir(&self.stage.join("users"))?;
        create_dir(&self.stage.join("packs"))
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        std::fs::write(path, bytes)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
    }

    /// The href of a blob from a page `depth` directories below the root.
    fn blob_href(&self, sha256: &str, depth: usize) -> String {
        let fan = sha256.get(..2).unwrap_or("xx");
        format!("{}{}/{fan}/{sha256}", "../".repeat(depth), self.blobs_href)
    }

    /// How a ref's card shows its file; counts the ref.
    fn shown(&self, card: &Card, depth: usize) -> Result<Shown> {
        self.stickers.set(self.stickers.get() + 1);
        let shown = self.shown_of(card, depth)?;
        if matches!(shown.media, Media::Placeholder { .. }) {
            self.placeholders.set(self.placeholders.get() + 1);
        }
        Ok(shown)
    }

    fn shown_of(&self, card: &Card, depth: usize) -> Result<Shown> {
        let placeholder = |state: &str, reason: String| Shown {
            media: Media::Placeholder {
                state: state.to_string(),
                reason,
            },
            file: None,
        };
        let sha = match (card.state.as_str(), &card.sha256) {
            ("fetched", Some(sha)) => sha,
            (state, _) => {
                let reason = card.reason.clone().unwrap_or_else(|| match state {
                    "pending" => "not fetched yet: run `starchive fetch`".into(),
                    _ => String::new(),
                });
                return Ok(placeholder(state, reason));
            }
        };
        let path = self.blobs.join(sha.get(..2).unwrap_or("xx")).join(sha);
        if !path.is_file() {
            return Ok(placeholder(
                "missing",
                "its blob is not in blobs/: `starchive verify` puts it back to pending, \
                 then `starchive fetch` downloads it again"
                    .into(),
            ));
        }
        let media = match card.kind.as_deref() {
            Some("webp" | "png" | "jpg") => Media::Image,
            Some("webm") => Media::Video,
            Some("tgs") => match self.animation(sha, &path)? {
                Ok(()) => Media::Animation(sha.clone()),
                Err(reason) => Media::Placeholder {
                    state: "not playable".into(),
                    reason,
                },
            },
            other => Media::Placeholder {
                state: "not shown".into(),
                reason: format!("a {} file: follow its link", other.unwrap_or("bin")),
            },
        };
        Ok(Shown {
            media,
            file: Some(self.blob_href(sha, depth)),
        })
    }

    /// Writes `anim/<aa>/<sha>.js` for a tgs blob unless written already.
    /// `Ok(Err(reason))`: the blob cannot be played.
    fn animation(&self, sha: &str, blob: &Path) -> Result<Result<(), String>> {
        let dir = self.stage.join("anim").join(sha.get(..2).unwrap_or("xx"));
        let script = dir.join(format!("{sha}.js"));
        if script.is_file() {
            return Ok(Ok(()));
        }
        let file = std::fs::File::open(blob)
            .map_err(|e| Error::io(format!("cannot read {}", blob.display()), e))?;
        let mut json = Vec::new();
        let unpacked = flate2::read::GzDecoder::new(std::io::BufReader::new(file))
            .take(MAX_ANIMATION_BYTES + 1)
            .read_to_end(&mut json);
        if let Err(e) = unpacked {
            return Ok(Err(format!("not a gzipped Lottie animation: {e}")));
        }
        if json.len() as u64 > MAX_ANIMATION_BYTES {
            return Ok(Err(format!(
                "its animation unpacks to more than {} MiB",
                MAX_ANIMATION_BYTES >> 20
            )));
        }
        // Only a JSON object goes into the script: valid JSON is a valid
        // JavaScript expression, so the blob's bytes cannot become code.
        if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Ok(Err("its animation is not a JSON object".into()));
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&json) {
            return Ok(Err(format!("its animation is not valid JSON: {e}")));
        }
        create_dir(&dir)?;
        let mut text = Vec::with_capacity(json.len() + 96);
        text.extend_from_slice(format!("starchiveAnimation(\"{sha}\", ").as_bytes());
        text.extend_from_slice(&json);
        text.extend_from_slice(b");\n");
        self.write_file(&script, &text)?;
        Ok(Ok(()))
    }
}

/// One item of a page.
enum Item {
    /// Free content: a heading, a facts list, a table of its own.
    Block(Markup),
    /// A table row; consecutive rows of one kind share a table.
    Row(pages::Table, Markup),
    /// A sticker's card; consecutive cards share a grid.
    Card(Markup),
}

/// A page that continues on further pages when it grows past
/// [`PAGE_ITEMS`]: `DIR/NAME.html`, `DIR/NAME.p2.html`, ….
struct Book {
    /// `""` (the root) or a directory of the site.
    dir: &'static str,
    name: String,
    title: String,
    items: Vec<Item>,
    /// Animations on the current page (their scripts go with it).
    animations: Vec<String>,
    page: u32,
}

impl Book {
    fn new(dir: &'static str, name: String, title: String) -> Book {
        Book {
            dir,
            name,
            title,
            items: Vec::new(),
            animations: Vec::new(),
            page: 1,
        }
    }

    fn depth(&self) -> usize {
        usize::from(!self.dir.is_empty())
    }

    /// The file of page `n`, relative to the book's directory.
    fn file(&self, n: u32) -> String {
        if n <= 1 {
            format!("{}.html", self.name)
        } else {
            format!("{}.p{n}.html", self.name)
        }
    }

    /// The current page's file, from the site's root.
    fn current_path(&self) -> String {
        match self.dir {
            "" => self.file(self.page),
            dir => format!("{dir}/{}", self.file(self.page)),
        }
    }

    fn push(&mut self, site: &Site, item: Item) -> Result<()> {
        if self.items.len() >= PAGE_ITEMS {
            self.flush(site, true)?;
        }
        self.items.push(item);
        Ok(())
    }

    fn animation(&mut self, sha: &str) {
        if !self.animations.iter().any(|a| a == sha) {
            self.animations.push(sha.to_string());
        }
    }

    fn finish(mut self, site: &Site) -> Result<()> {
        self.flush(site, false)
    }

    fn flush(&mut self, site: &Site, more: bool) -> Result<()> {
        let prev = (self.page > 1).then(|| self.file(self.page - 1));
        let next = more.then(|| self.file(self.page + 1));
        let html = pages::page(
            &self.title,
            self.page,
            self.depth(),
            &self.items,
            &self.animations,
            prev.as_deref(),
            next.as_deref(),
        );
        let dir = match self.dir {
            "" => site.stage.clone(),
            dir => site.stage.join(dir),
        };
        site.write_file(&dir.join(self.file(self.page)), html.0.as_bytes())?;
        site.pages.set(site.pages.get() + 1);
        self.items.clear();
        self.animations.clear();
        self.page += 1;
        Ok(())
    }

    /// Adds a ref's card.
    fn card(&mut self, site: &Site, card: &Card, shared_position: bool) -> Result<()> {
        let shown = site.shown(card, self.depth())?;
        if let Media::Animation(sha) = &shown.media {
            self.animation(sha);
        }
        let html = pages::card(card, &shown, shared_position);
        self.push(site, Item::Card(html))
    }
}

impl Site {
    /// A page per user; records on which page each session landed.
    fn write_user_pages(&self, scope: &Scope<'_>) -> Result<()> {
        scope.for_each_user(|user| {
            let uid = user.user_id.as_deref();
            let mut book = Book::new("users", slug(uid), pages::user_title(uid));
            book.push(self, Item::Block(pages::user_head(&user)))?;
            scope.for_each_session_of(uid, |session| {
                book.push(self, Item::Block(pages::session_head(&session)))?;
                scope.set_session_page(&session.id, &book.current_path())?;
                scope
                    .for_each_card_of_session(&session.id, |card| book.card(self, &card, false))?;
                let mut packs = Vec::new();
                scope.for_each_batch_of_session(&session.id, |batch| {
                    packs.push(batch);
                    Ok(())
                })?;
                if !packs.is_empty() {
                    book.push(self, Item::Block(pages::pack_links(&packs)))?;
                }
                Ok(())
            })?;
            let mut heading = false;
            scope.for_each_sessionless_card_of(uid, |card| {
                if !std::mem::replace(&mut heading, true) {
                    book.push(self, Item::Block(pages::sessionless_head()))?;
                }
                book.card(self, &card, false)
            })?;
            let mut packs = Vec::new();
            scope.for_each_sessionless_batch_of(uid, |batch| {
                packs.push(batch);
                Ok(())
            })?;
            if !packs.is_empty() {
                if !heading {
                    book.push(self, Item::Block(pages::sessionless_head()))?;
                }
                book.push(self, Item::Block(pages::pack_links(&packs)))?;
            }
            book.finish(self)
        })
    }

    /// A page per pack batch: stickers in `pack_index` order with the
    /// positions no sticker holds, then the sheet.
    fn write_pack_pages(&self, scope: &Scope<'_>) -> Result<()> {
        scope.for_each_batch(|batch| {
            let mut book = Book::new("packs", slug(Some(&batch.id)), pages::pack_title(&batch));
            book.push(self, Item::Block(pages::pack_head(&batch)))?;
            let mut next_position: i64 = 0;
            let mut sheet = false;
            scope.for_each_card_of_batch(&batch.id, |card, shared| {
                if card.class == "pack_sheet" {
                    if !std::mem::replace(&mut sheet, true) {
                        book.push(self, Item::Block(pages::sheet_head()))?;
                    }
                } else if let Some(index) = card.pack_index {
                    if index > next_position {
                        book.push(self, Item::Card(pages::gap(next_position, index - 1)))?;
                    }
                    next_position = next_position.max(index.saturating_add(1));
                }
                book.card(self, &card, shared)
            })?;
            if !sheet {
                book.push(self, Item::Block(pages::no_sheet()))?;
            }
            book.finish(self)
        })
    }

    /// `index.html` and its continuations: counts, envs, then every user,
    /// session and pack batch.
    fn write_index(&self, scope: &Scope<'_>, counts: &PlanReport) -> Result<()> {
        let mut book = Book::new("", "index".into(), "Sticker archive".into());
        book.push(self, Item::Block(pages::counts(counts)))?;
        book.push(self, Item::Block(pages::envs(&scope.envs()?)))?;
        book.push(self, Item::Block(pages::heading("Users", "users")))?;
        scope.for_each_user(|user| {
            book.push(self, Item::Row(pages::Table::Users, pages::user_row(&user)))
        })?;
        book.push(self, Item::Block(pages::heading("Sessions", "sessions")))?;
        scope.for_each_session(|session| {
            book.push(
                self,
                Item::Row(pages::Table::Sessions, pages::session_row(&session)),
            )
        })?;
        book.push(self, Item::Block(pages::heading("Pack batches", "packs")))?;
        scope.for_each_batch(|batch| {
            book.push(
                self,
                Item::Row(pages::Table::Batches, pages::batch_row(&batch)),
            )
        })?;
        book.finish(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_safe_distinct_file_names() {
        assert_eq!(slug(Some("100000001")), "100000001");
        assert_eq!(
            slug(Some("00000000-0000-4000-8000-000000000201")),
            "00000000-0000-4000-8000-000000000201"
        );
        assert_eq!(slug(None), "~none");
        let hostile = [
            "../etc/passwd",
            "<script>alert(1)</script>",
            "A",
            "a",
            "",
            "con",
            "x y",
            &"9".repeat(65),
        ];
        let slugs: Vec<String> = hostile.iter().map(|id| slug(Some(id))).collect();
        for s in &slugs {
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_~".contains(&b)),
                "{s:?} is not a plain file name"
            );
            assert!(!s.is_empty() && s.len() <= 64, "{s:?}");
        }
        let mut unique = slugs.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), slugs.len(), "{slugs:?}");
        // A hashed slug never equals a plain id's, nor the NULL user's.
        assert_ne!(slug(Some("A")), slug(Some("a")));
        assert_ne!(slug(Some("~none")), "~none");
    }

    #[test]
    fn relative_hrefs_climb_then_descend_and_escape() {
        let href = |a: &str, b: &str| relative_href(Path::new(a), Path::new(b)).expect("href");
        assert_eq!(href("/a/archive/gallery", "/a/archive/blobs"), "../blobs");
        assert_eq!(
            href("/x/site", "/a/my archive/blobs"),
            "../../a/my%20archive/blobs"
        );
        assert_eq!(href("/a/b", "/a/b/blobs"), "blobs");
        assert_eq!(href("/a/#?%", "/a/#?%/blobs"), "blobs");
        assert_eq!(href("/s", "/a/#?%/blobs"), "../a/%23%3F%25/blobs");
    }

    #[test]
    fn a_directory_of_other_files_is_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("site");
        assert!(refuse_foreign_dir(&out).is_ok(), "a new directory");
        std::fs::create_dir(&out).expect("mkdir");
        assert!(refuse_foreign_dir(&out).is_ok(), "an empty directory");
        std::fs::write(out.join("notes.txt"), "mine").expect("write");
        assert!(matches!(refuse_foreign_dir(&out), Err(Error::Config(_))));
        std::fs::write(out.join(MARKER), "").expect("marker");
        assert!(refuse_foreign_dir(&out).is_ok(), "a gallery");
    }
}
