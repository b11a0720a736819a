//! Running the binary: [`starchive`] builds the command, [`run`] runs it
//! and gives a [`Run`] to assert on.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::bin;

/// What one run of the binary gave.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The one JSON document on stdout.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts the exit code, showing both streams when it is another.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts stdout holds only the error document of a stop (`--json`):
    /// `{"error", "exit_code"}` and no report.
    #[track_caller]
    pub fn expect_error_doc(&self) {
        let doc = self.json();
        let keys: Vec<&String> = doc
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["error", "exit_code"], "{doc}");
        assert_eq!(doc["exit_code"].as_i64(), self.code.map(i64::from), "{doc}");
    }
}

/// Runs `cmd` to its end.
pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run starchive");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `starchive --archive DIR` (environment scrubbed, see [`bin`]).
pub fn starchive(archive: &Path) -> Command {
    let mut cmd = bin();
    cmd.arg("--archive").arg(archive);
    cmd
}

/// The archive's catalog, opened read-write (never created) so that a
/// killed run's write-ahead log can be recovered by the reader.
#[track_caller]
pub fn catalog(archive: &Path) -> rusqlite::Connection {
    let path = archive.join("catalog.sqlite");
    assert!(path.is_file(), "no catalog at {}", path.display());
    rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .expect("open catalog.sqlite")
}
