//! What a store URL names, whatever way it was typed (SPEC §4).
//!
//! A destination is recorded by its identity: a local directory by its
//! canonical absolute path (`backup`, `./backup/`, `file:///abs/backup` and the
//! same directory typed from another working directory are one), an S3 store
//! by its endpoint, bucket and prefix. The identity is also how a store is
//! shown: readable, and without secrets. A plain path that looks like a
//! mistyped URL is refused rather than taken for a directory.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use object_store::aws::AmazonS3ConfigKey;

/// Schemes a store URL may have, for "did you mean" hints.
const SCHEMES: &[&str] = &["s3", "file", "memory"];

/// Refuses a plain path that looks like a mistyped URL (`s3//bucket`,
/// `s3:/bucket`, `file:/tmp/x`), with the URL it probably meant.
pub fn refuse_typo(text: &str) -> Result<(), String> {
    if text.contains("://") {
        return Ok(());
    }
    let first = text.split('/').next().unwrap_or("");
    let (scheme, rest) = match first.split_once(':') {
        // `name:…` in the first segment: a URL with too few slashes.
        Some((scheme, _)) if looks_like_scheme(scheme) => {
            (scheme, text[scheme.len() + 1..].trim_start_matches('/'))
        }
        // `s3//bucket`: a known scheme that lost its colon.
        None if SCHEMES.contains(&first.to_ascii_lowercase().as_str())
            && text[first.len()..].starts_with("//") =>
        {
            (first, text[first.len()..].trim_start_matches('/'))
        }
        _ => return Ok(()),
    };
    let scheme = scheme.to_ascii_lowercase();
    let hint = match scheme.as_str() {
        "file" => format!(": did you mean file:///{rest}?"),
        "s3" | "memory" => format!(": did you mean {scheme}://{rest}?"),
        _ => String::new(),
    };
    Err(format!(
        "{text:?} looks like a mistyped URL, not a directory{hint} (to mean a directory, write ./{text})"
    ))
}

fn looks_like_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The directory a local store URL names (a plain path or `file:///abs`),
/// as typed (not made absolute); `None` for a URL of another scheme.
pub fn local_dir(text: &str) -> Option<Result<PathBuf, String>> {
    match text.strip_prefix("file://") {
        // `file:///abs` or `file://localhost/abs` (RFC 8089: the same file);
        // percent-escapes decoded (`file:///a%20b` is `/a b`), as a URL reads.
        Some(path) if path.starts_with('/') || starts_with_localhost(path) => Some(
            url::Url::parse(text)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .ok_or_else(|| "not a usable file:// URL".to_string()),
        ),
        Some(_) => Some(Err(
            "a file:// URL takes an absolute path (file:///abs/path or file://localhost/abs/path)"
                .into(),
        )),
        None if text.contains("://") => None,
        None => Some(Ok(PathBuf::from(text))),
    }
}

/// Whether the rest of a `file://` URL names the host `localhost`.
fn starts_with_localhost(rest: &str) -> bool {
    rest.get(..10)
        .is_some_and(|host| host.eq_ignore_ascii_case("localhost/"))
}

/// Why `dir` cannot be a local store although something is there: it is a
/// file (or another thing that is no directory). `None` when it is a
/// directory or nothing is there.
pub fn not_a_dir(dir: &Path) -> Option<&'static str> {
    let meta = std::fs::metadata(dir).ok()?;
    if meta.is_dir() {
        None
    } else if meta.is_file() {
        Some("is a file, not a directory")
    } else {
        Some("is not a directory")
    }
}

/// Creates the directory of a local store given as `option`, for the
/// commands that write there (`push`, `backfill --apply`); any other store is
/// left alone.
pub fn create_local_dir(text: &str, option: &str) -> Result<(), crate::Error> {
    refuse_typo(text).map_err(crate::Error::Usage)?;
    let Some(Ok(dir)) = local_dir(text) else {
        return Ok(());
    };
    let shown = crate::redact::url(text);
    if let Some(why) = not_a_dir(&dir) {
        return Err(crate::Error::Config(format!("{option} {shown}: {why}")));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| crate::Error::io(format!("{option} {shown}: cannot create the directory"), e))
}

/// The identity of a local directory: its canonical absolute path. Of a
/// directory not there yet, the canonical path of its deepest existing
/// ancestor (symlinks resolved) with the rest appended, `.` and `..`
/// resolved as text.
pub fn local_identity(dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut rest = Vec::new();
    let mut base = absolute.as_path();
    let mut out = loop {
        if let Ok(canonical) = std::fs::canonicalize(base) {
            break canonical;
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                base = parent;
            }
            _ => break PathBuf::new(),
        }
    };
    for part in rest.into_iter().rev() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Refuses (bad usage) a local store given to `option` that is the archive,
/// lies inside it, or holds it, however typed (symlinks, `file://`, `..`):
/// writing there would mix the copy with the archive's own files. Any other
/// store is left alone.
pub fn refuse_archive_overlap(
    text: &str,
    archive: &Path,
    option: &str,
) -> Result<(), crate::Error> {
    let Some(Ok(dir)) = local_dir(text) else {
        return Ok(());
    };
    let (dir, archive) = (local_identity(&dir), local_identity(archive));
    let why = if dir == archive {
        "is the archive itself"
    } else if dir.starts_with(&archive) {
        "is inside the archive"
    } else if archive.starts_with(&dir) {
        "holds the archive"
    } else {
        return Ok(());
    };
    Err(crate::Error::Usage(format!(
        "{option} {text}: {} {why} ({}): choose a directory outside the archive",
        dir.display(),
        archive.display()
    )))
}

/// The identity of an `s3://` URL: `s3://bucket/prefix`, with
/// `?endpoint=URL` (readable, without secrets) when it names one.
pub fn s3_identity(parsed: &url::Url) -> String {
    let bucket = parsed.host_str().unwrap_or("");
    let prefix = parsed.path().trim_matches('/');
    let mut out = format!("s3://{bucket}");
    if !prefix.is_empty() {
        out.push('/');
        out.push_str(prefix);
    }
    let endpoint = parsed
        .query_pairs()
        .find(|(k, _)| AmazonS3ConfigKey::from_str(k).ok() == Some(AmazonS3ConfigKey::Endpoint));
    if let Some((_, endpoint)) = endpoint {
        // Userinfo is no part of the identity (and is refused anyway): none
        // shown, not even a masked one that reads like a password.
        let endpoint = url::Url::parse(&endpoint)
            .map(|mut u| {
                let _ = u.set_password(None);
                let _ = u.set_username("");
                u.to_string()
            })
            .unwrap_or_else(|_| endpoint.into_owned());
        let endpoint = crate::redact::url(&endpoint);
        out.push_str("?endpoint=");
        out.push_str(endpoint.trim_end_matches('/'));
    }
    out
}

/// The identity of any store URL, without opening it: how `push` records a
/// destination and `status` shows it. `None` when the text is no store URL.
pub fn identity(text: &str) -> Option<String> {
    if refuse_typo(text).is_err() {
        return None;
    }
    if text.starts_with("s3://") {
        return url::Url::parse(text).ok().map(|u| s3_identity(&u));
    }
    if let Some(rest) = text.strip_prefix("memory://") {
        return Some(format!("memory://{}", rest.trim_matches('/')));
    }
    match local_dir(text)? {
        Ok(dir) => Some(local_identity(&dir).to_string_lossy().into_owned()),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistyped_urls_are_refused_with_a_hint() {
        for (typed, meant) in [
            ("s3//bkt/p", "s3://bkt/p"),
            ("s3:/bkt", "s3://bkt"),
            ("s3:bkt/p", "s3://bkt/p"),
            ("S3://bkt", ""),
            ("file:/tmp/x", "file:///tmp/x"),
            ("file://tmp/x", ""),
            ("file//tmp/x", "file:///tmp/x"),
            ("memory:/x", "memory://x"),
            ("http:/host/x", ""),
        ] {
            match refuse_typo(typed) {
                Err(message) => assert!(
                    meant.is_empty() || message.contains(&format!("did you mean {meant}?")),
                    "{typed}: {message}"
                ),
                Ok(()) if typed.contains("://") => {}
                Ok(()) => panic!("{typed} was taken for a directory"),
            }
        }
        for plain in [
            "backup",
            "./backup",
            "/tmp/x",
            "s3/backup",
            "./a:b",
            "dir/x:y",
        ] {
            assert_eq!(refuse_typo(plain), Ok(()), "{plain}");
        }
    }

    #[test]
    fn one_directory_has_one_identity_however_typed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backup = dir.path().join("backup");
        std::fs::create_dir(&backup).expect("mkdir");
        let canonical = std::fs::canonicalize(&backup).expect("canonical");
        let want = Some(canonical.to_string_lossy().into_owned());
        for typed in [
            backup.display().to_string(),
            format!("{}/", backup.display()),
            format!("{}/./sub/..", backup.display()),
            format!("file://{}", backup.display()),
            format!("file://{}/", backup.display()),
        ] {
            assert_eq!(identity(&typed), want, "{typed}");
        }
        // Not there yet: the same path, made absolute as text.
        let later = dir.path().join("later");
        assert_eq!(
            identity(&format!("{}/x/../", later.display())).map(PathBuf::from),
            Some(local_identity(&later))
        );
    }

    #[test]
    fn a_store_overlapping_the_archive_is_refused_however_typed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("pga");
        std::fs::create_dir_all(archive.join("blobs")).expect("mkdir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&archive, &link).expect("symlink");
        let a = archive.display();
        for typed in [
            format!("{a}"),
            format!("{a}/"),
            format!("{a}/blobs"),
            format!("{a}/not-yet/deeper"),
            format!("file://{a}/blobs"),
            format!("{a}/../pga/blobs/.."),
            format!("{}/blobs", link.display()),
            format!("{}/new", link.display()),
            format!("{}/x/..", link.display()),
            dir.path().display().to_string(),
            "/".to_string(),
        ] {
            let err = refuse_archive_overlap(&typed, &archive, "--to").expect_err(&typed);
            assert_eq!(err.exit_status(), crate::ExitStatus::Usage, "{typed}");
        }
        for fine in [
            dir.path().join("backup").display().to_string(),
            dir.path().join("pga2").display().to_string(),
            format!("{a}/../backup"),
            "s3://pga/blobs".to_string(),
            "memory://".to_string(),
        ] {
            assert!(
                refuse_archive_overlap(&fine, &archive, "--to").is_ok(),
                "{fine}"
            );
        }
        // The archive typed through the symlink is the same archive.
        assert!(refuse_archive_overlap(&format!("{a}/blobs"), &link, "--to").is_err());
    }

    #[test]
    fn s3_identity_is_endpoint_bucket_and_prefix() {
        let a = identity(
            "s3://bkt/some/prefix/?endpoint=http%3A%2F%2F127.0.0.1%3A9000%2F&region=eu-west-1&allow_http=true",
        );
        let b = identity("s3://bkt/some/prefix?allow_http=true&endpoint=http://127.0.0.1:9000");
        assert_eq!(
            a.as_deref(),
            Some("s3://bkt/some/prefix?endpoint=http://127.0.0.1:9000")
        );
        assert_eq!(a, b);
        assert_ne!(identity("s3://bkt/other?endpoint=http://127.0.0.1:9000"), a);
        assert_eq!(identity("s3://bkt").as_deref(), Some("s3://bkt"));
        let shown = identity("s3://bkt?endpoint=https://user:pw@host.example").expect("id");
        assert!(!shown.contains("pw"), "{shown}");
    }
}
