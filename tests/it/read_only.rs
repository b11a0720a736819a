//! An archive that cannot be written (a read-only copy, another user's, a
//! read-only mount) can be looked at: `plan`, `status`, `check` and
//! `gallery --out` elsewhere read it and change nothing in it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::push::fetched_fixture;
use crate::support::objects::files_under;
use crate::support::run::{Run, run};

/// Another user, and a copy of the binary that user may run (the build's
/// own may sit in a directory only its owner enters, as a clone into
/// `mktemp -d` does).
type OtherUser<'a> = (&'a str, &'a Path);

/// `starchive --archive ARCHIVE ARGS…`, run by another user through runuser
/// (`None`: this user).
fn as_user(user: Option<OtherUser>, archive: &Path, args: &[&str]) -> Run {
    let mut cmd = match user {
        Some((user, binary)) => {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", user, "--"]).arg(binary);
            cmd
        }
        None => crate::support::bin(),
    };
    run(cmd.arg("--archive").arg(archive).args(args))
}

/// The read-only commands, each exiting 0 on the archive, the gallery
/// written to `out`; the archive left byte for byte as it was.
#[track_caller]
fn every_read_only_command_works(user: Option<OtherUser>, archive: &Path, out: &Path, what: &str) {
    let before = files_under(archive);
    for args in [
        vec!["plan"],
        vec!["status"],
        vec!["--json", "status"],
        vec!["check"],
    ] {
        let got = as_user(user, archive, &args);
        assert_eq!(
            got.code,
            Some(0),
            "{what}: {args:?}: {}{}",
            got.stdout,
            got.stderr
        );
        assert!(!got.stderr.contains("readonly"), "{what}: {}", got.stderr);
    }
    let gallery = out.join(what.replace(' ', "-"));
    let got = as_user(
        user,
        archive,
        &["gallery", "--out", &gallery.to_string_lossy()],
    );
    assert_eq!(
        got.code,
        Some(0),
        "{what}: gallery: {}{}",
        got.stdout,
        got.stderr
    );
    assert!(gallery.join("index.html").is_file(), "{what}");
    // A command that records what it does says why it cannot, and which do.
    let got = as_user(user, archive, &["verify"]);
    assert_eq!(got.code, Some(1), "{what}: verify: {}", got.stderr);
    assert!(
        got.stderr.contains("cannot be written (")
            && got.stderr.contains("plan, status, check and gallery"),
        "{what}: verify: {}",
        got.stderr
    );
    assert!(
        files_under(archive) == before,
        "{what}: the archive changed"
    );
}

/// Takes away (`read_only`) or gives back the owner's write bit of `dir`
/// and everything under it, leaving all readable by anyone (as
/// `chmod -R a-w` on an archive others may read).
fn chmod_tree(dir: &Path, read_only: bool) {
    for entry in walk(dir) {
        let meta = std::fs::metadata(&entry).expect("metadata");
        let readable = if meta.is_dir() { 0o555 } else { 0o444 };
        let mode = meta.permissions().mode() | readable;
        let mode = if read_only {
            mode & !0o222
        } else {
            mode | 0o200
        };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn a_read_only_archive_can_be_looked_at() {
    let fx = fetched_fixture();
    let out = fx.dir.path().join("out");
    std::fs::create_dir_all(&out).expect("out");
    // Open to other users: the test directory, and the gallery's.
    for dir in [fx.dir.path(), &out] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }

    // Another user on a copy without write bits (as `chmod -R a-w`).
    let runuser = Command::new("runuser")
        .args(["-u", "nobody", "--", "true"])
        .status();
    if runuser.is_ok_and(|s| s.success()) {
        let binary = fx.dir.path().join("starchive");
        std::fs::copy(env!("CARGO_BIN_EXE_starchive"), &binary).expect("copy the binary");
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        chmod_tree(&fx.archive, true);
        every_read_only_command_works(Some(("nobody", &binary)), &fx.archive, &out, "nobody");
        chmod_tree(&fx.archive, false);
    } else {
        eprintln!("skipped the other user's case: cannot run `runuser -u nobody`");
    }

    // Root on a read-only bind mount (root ignores modes, not the mount).
    let ro = fx.dir.path().join("ro");
    std::fs::create_dir_all(&ro).expect("mount point");
    let mounted = Command::new("mount")
        .args(["--bind", "-o", "ro"])
        .arg(&fx.archive)
        .arg(&ro)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&ro)
            .status()
            .is_ok_and(|s| s.success());
    if mounted {
        let result = std::panic::catch_unwind(|| {
            every_read_only_command_works(None, &ro, &out, "read-only mount")
        });
        let _ = Command::new("umount").arg(&ro).status();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    } else {
        let _ = Command::new("umount").arg(&ro).status();
        eprintln!("skipped the read-only mount's case: mount --bind -o ro is not permitted");
    }
}
