//! Keys: which destination key a ref gets (SPEC §5) and which keys are safe.

use crate::refs::RefClass;

/// Refuses a key that could leave a store's root or confuse a store: empty,
/// absolute, with empty, `.` or `..` segments, backslashes or control bytes.
pub fn check_key(key: &str) -> Result<(), String> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key.chars().any(|c| c.is_control())
        || key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        Err(format!("unsafe key {key:?}"))
    } else {
        Ok(())
    }
}

/// Where a bot's key files its object: the user, when the key names one,
/// and the id of the session or pack batch the object belongs to. Every key
/// shape the bot and `backfill` write (SPEC §5) names one:
/// - `stickers/{user_id}/{id}/…`: a session's single stickers or a pack
///   batch's stickers (`{timestamp}.webp`, `{timestamp}_{pack_index}.webp`,
///   `backfill_{sticker_id}.{ext}`);
/// - `stickers/{user_id}/backfill_session/{session_id}.{ext}`: a session's last sticker;
/// - `pack_sheets/{pack_batch_id}.{ext}` and
///   `pack_sheets/session_{session_id}.{ext}`: a pack sheet.
///
/// Whether the id is a session's or a pack batch's the key alone does not
/// say (`stickers/{user_id}/{id}/…` holds either): only the database does.
/// Any other key has no owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyOwner<'a> {
    pub user_id: Option<&'a str>,
    pub id: &'a str,
}

/// The folder `stickers/{user_id}/…` of `backfill`'s session stickers.
const BACKFILL_SESSION: &str = "backfill_session";
/// The folder of pack sheets, and the prefix of a session's sheet in it.
const PACK_SHEETS: &str = "pack_sheets";
const SESSION_SHEET: &str = "session_";

/// The owner a key names (see [`KeyOwner`]).
pub fn key_owner(key: &str) -> Option<KeyOwner<'_>> {
    let segments: Vec<&str> = key.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let owner = match segments.as_slice() {
        ["stickers", user, BACKFILL_SESSION, file] => KeyOwner {
            user_id: Some(user),
            id: stem(file),
        },
        ["stickers", user, id, _, ..] => KeyOwner {
            user_id: Some(user),
            id,
        },
        [PACK_SHEETS, file] => {
            let id = stem(file);
            KeyOwner {
                user_id: None,
                id: id.strip_prefix(SESSION_SHEET).unwrap_or(id),
            }
        }
        _ => return None,
    };
    (!owner.id.is_empty()).then_some(owner)
}

/// `{id}.{ext}` gives `id` (an id may hold dots: only the last one goes).
fn stem(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_keys_are_refused() {
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a/\0b",
            "a\\..\\b",
            "a/",
        ] {
            assert!(check_key(key).is_err(), "{key:?}");
        }
        assert!(check_key("stickers/1/2/3.webp").is_ok());
        assert!(check_key("stickers/1/x..y.webp").is_ok());
    }

    #[test]
    fn a_key_names_its_owner_in_every_shape_the_bot_writes() {
        let owner = |user_id, id| Some(KeyOwner { user_id, id });
        assert_eq!(key_owner("stickers/7/S/1.webp"), owner(Some("7"), "S"));
        assert_eq!(key_owner("stickers/7/B/x/1_0.webp"), owner(Some("7"), "B"));
        assert_eq!(
            key_owner("stickers/7/backfill_session/S.webp"),
            owner(Some("7"), "S")
        );
        assert_eq!(key_owner("pack_sheets/B.png"), owner(None, "B"));
        assert_eq!(key_owner("pack_sheets/session_S.webp"), owner(None, "S"));
        assert_eq!(key_owner("pack_sheets/b.1.png"), owner(None, "b.1"));
        for key in [
            "stickers/7/S",
            "stickers/7/S/",
            "stickers//S/1.webp",
            "stickers/7//1.webp",
            "stickers/7/backfill_session/.webp",
            "pack_sheets/session_.png",
            "pack_sheets/x/B.png",
            "other/7/S/1.webp",
            "",
        ] {
            assert_eq!(key_owner(key), None, "{key:?}");
        }
    }
}

/// How refs are laid out at a destination (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The bot's own keys, so the bot can switch storage by changing its endpoint.
    Mirror,
    /// Each blob once at `blobs/sha256/<aa>/<hex>`.
    Cas,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Mirror => "mirror",
            Layout::Cas => "cas",
        }
    }

    pub fn parse(name: &str) -> Option<Layout> {
        match name {
            "mirror" => Some(Layout::Mirror),
            "cas" => Some(Layout::Cas),
            _ => None,
        }
    }
}

/// What a ref's key depends on.
#[derive(Clone, Debug)]
pub struct RefPlace {
    pub class: RefClass,
    pub row_id: String,
    pub slot: String,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub pack_batch_id: Option<String>,
    pub storage_key: Option<String>,
    /// For a session sticker: the storage key of a `stickers` row with the same `file_id`.
    pub sticker_key: Option<String>,
}

/// The destination key of a ref whose blob has `sha256` and type `ext`.
pub fn dest_key(
    layout: Layout,
    place: &RefPlace,
    sha256: &str,
    ext: &str,
) -> Result<String, String> {
    let key = match layout {
        Layout::Cas => cas_key(sha256),
        Layout::Mirror => mirror_key(place, ext)?,
    };
    check_key(&key)?;
    if key.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "key {key:?} is under {RESERVED_PREFIX}, which holds starchive's manifest and catalog copy"
        ));
    }
    Ok(key)
}

/// What push advises for a ref that has no mirror key, or whose mirror key
/// the store refuses: keys that are hashes name every blob.
pub const CAS_ADVICE: &str =
    "push to another destination with --layout cas (keys that are hashes) to keep its file";

/// Where a destination keeps starchive's own files: no ref is placed there.
pub const RESERVED_PREFIX: &str = "_starchive/";

pub fn cas_key(sha256: &str) -> String {
    format!("blobs/sha256/{}/{sha256}", sha256.get(..2).unwrap_or("xx"))
}

/// A value put into a key as one of its segments: refused unless it is one
/// safe segment, so that an id holding `/` or `..` (a CSV or database can
/// hold anything) can never give a key of another shape.
fn segment<'a>(class: &str, what: &str, value: &'a str) -> Result<&'a str, String> {
    let bad = value.is_empty()
        || value == "."
        || value == ".."
        || value.contains(['/', '\\'])
        || value.chars().any(char::is_control);
    if bad {
        Err(format!(
            "unsafe key: the {class}'s {what} {value:?} is not a single path segment"
        ))
    } else {
        Ok(value)
    }
}

fn mirror_key(p: &RefPlace, ext: &str) -> Result<String, String> {
    if let Some(key) = &p.storage_key {
        return Ok(key.clone());
    }
    let class = p.class.name();
    let need = |v: &Option<String>, what: &str| match v {
        Some(v) => segment(class, what, v).map(str::to_string),
        None => Err(format!(
            "cannot name a mirror key: the {class} has no {what}"
        )),
    };
    let row_id = || segment(class, "id", &p.row_id);
    Ok(match p.class {
        RefClass::Sticker => {
            let user = need(&p.user_id, "user_id")?;
            let parent = match &p.pack_batch_id {
                Some(_) => need(&p.pack_batch_id, "pack_batch_id")?,
                None => need(&p.session_id, "session_id")?,
            };
            format!("stickers/{user}/{parent}/backfill_{}.{ext}", row_id()?)
        }
        RefClass::SessionSticker => match &p.sticker_key {
            Some(key) => key.clone(),
            None => format!(
                "stickers/{}/{BACKFILL_SESSION}/{}.{ext}",
                need(&p.user_id, "user_id")?,
                row_id()?
            ),
        },
        RefClass::PackSheet => match &p.pack_batch_id {
            Some(_) => format!(
                "{PACK_SHEETS}/{}.{ext}",
                need(&p.pack_batch_id, "pack_batch_id")?
            ),
            None => format!(
                "{PACK_SHEETS}/{SESSION_SHEET}{}.{ext}",
                need(&p.session_id, "session_id")?
            ),
        },
        RefClass::Photo => format!(
            "photos/{}/{}/{}.{ext}",
            need(&p.user_id, "user_id")?,
            need(&p.session_id, "session_id")?,
            segment(class, "slot", &p.slot)?
        ),
    })
}

#[cfg(test)]
mod key_tests {
    use super::*;

    fn place(class: &str) -> RefPlace {
        RefPlace {
            class: RefClass::parse(class).unwrap_or_else(|| panic!("{class} is a class")),
            row_id: "R".into(),
            slot: String::new(),
            session_id: Some("S".into()),
            user_id: Some("7".into()),
            pack_batch_id: None,
            storage_key: None,
            sticker_key: None,
        }
    }

    #[test]
    fn mirror_keys_follow_the_spec() {
        let k = |p: &RefPlace| dest_key(Layout::Mirror, p, "ab12", "webp");
        assert_eq!(
            k(&place("sticker")),
            Ok("stickers/7/S/backfill_R.webp".into())
        );
        let pack = RefPlace {
            pack_batch_id: Some("B".into()),
            ..place("sticker")
        };
        assert_eq!(k(&pack), Ok("stickers/7/B/backfill_R.webp".into()));
        assert_eq!(
            k(&place("session_sticker")),
            Ok("stickers/7/backfill_session/R.webp".into())
        );
        let reuse = RefPlace {
            sticker_key: Some("stickers/7/S/1.webp".into()),
            ..place("session_sticker")
        };
        assert_eq!(k(&reuse), Ok("stickers/7/S/1.webp".into()));
        assert_eq!(k(&pack_sheet(Some("B"))), Ok("pack_sheets/B.webp".into()));
        assert_eq!(
            k(&pack_sheet(None)),
            Ok("pack_sheets/session_S.webp".into())
        );
        let photo = RefPlace {
            slot: "current".into(),
            ..place("photo")
        };
        assert_eq!(k(&photo), Ok("photos/7/S/current.webp".into()));
        let own = RefPlace {
            storage_key: Some("x/y.png".into()),
            ..place("sticker")
        };
        assert_eq!(k(&own), Ok("x/y.png".into()));
        let hostile = RefPlace {
            storage_key: Some("../../etc/passwd".into()),
            ..place("sticker")
        };
        assert!(k(&hostile).is_err());
        let reserved = RefPlace {
            storage_key: Some("_starchive/manifest.jsonl.zst".into()),
            ..place("sticker")
        };
        assert!(k(&reserved).is_err());
        assert_eq!(
            dest_key(Layout::Cas, &own, "ab12", "png"),
            Ok("blobs/sha256/ab/ab12".into())
        );
    }

    #[test]
    fn every_mirror_key_of_a_sticker_or_sheet_names_its_owner() {
        let pack = RefPlace {
            pack_batch_id: Some("B".into()),
            ..place("sticker")
        };
        for (p, id) in [
            (place("sticker"), "S"),
            (pack, "B"),
            // A session sticker's row is its session.
            (place("session_sticker"), "R"),
            (pack_sheet(Some("B")), "B"),
            (pack_sheet(None), "S"),
        ] {
            let key = mirror_key(&p, "webp").expect("key");
            assert_eq!(key_owner(&key).map(|o| o.id), Some(id), "{key}");
        }
    }

    #[test]
    fn an_id_that_is_not_one_segment_gives_no_key() {
        let k = |p: &RefPlace| dest_key(Layout::Mirror, p, "ab12", "webp");
        for bad in ["1/2", "..", ".", "", "a\\b", "../x", "a\nb", "/abs"] {
            let some = || Some(bad.to_string());
            for p in [
                RefPlace {
                    user_id: some(),
                    ..place("sticker")
                },
                RefPlace {
                    session_id: some(),
                    ..place("sticker")
                },
                RefPlace {
                    pack_batch_id: some(),
                    ..place("sticker")
                },
                RefPlace {
                    row_id: bad.into(),
                    ..place("sticker")
                },
                RefPlace {
                    user_id: some(),
                    ..place("session_sticker")
                },
                RefPlace {
                    row_id: bad.into(),
                    ..place("session_sticker")
                },
                RefPlace {
                    pack_batch_id: some(),
                    ..place("pack_sheet")
                },
                RefPlace {
                    session_id: some(),
                    ..place("pack_sheet")
                },
                RefPlace {
                    user_id: some(),
                    slot: "current".into(),
                    ..place("photo")
                },
                RefPlace {
                    session_id: some(),
                    slot: "current".into(),
                    ..place("photo")
                },
                RefPlace {
                    slot: bad.into(),
                    ..place("photo")
                },
            ] {
                let got = k(&p);
                assert!(
                    got.as_ref().is_err_and(|e| e.contains("unsafe key")),
                    "{bad:?} in {p:?}: {got:?}"
                );
            }
        }
    }

    fn pack_sheet(batch: Option<&str>) -> RefPlace {
        RefPlace {
            pack_batch_id: batch.map(str::to_string),
            ..place("pack_sheet")
        }
    }
}
