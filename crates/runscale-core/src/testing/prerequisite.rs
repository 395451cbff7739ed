//! What a test needs from the machine (a program, an emulator, a package of fixtures) and
//! cannot find: one rule for every test of the workspace.
//!
//! A missing prerequisite fails the test, naming it and saying how to get it
//! (`scripts/test.sh` installs the tools the tests use, or fails naming one it cannot). Only when [`ALLOW_SKIP_ENV`] is `1`
//! does the test skip instead: it prints a `SKIPPED` line and, when [`SKIP_REPORT_ENV`] names a
//! file, appends `test<TAB>what` to it, so that `scripts/test.sh` can count and name the
//! skipped tests in its summary line.

use std::io::Write;
use std::path::PathBuf;

/// `RUNSCALE_ALLOW_SKIP=1`: a missing prerequisite skips the test instead of failing it.
pub const ALLOW_SKIP_ENV: &str = "RUNSCALE_ALLOW_SKIP";

/// A file to which every skipped test appends one line: its name, a tab, what was missing.
pub const SKIP_REPORT_ENV: &str = "RUNSCALE_SKIP_REPORT";

/// `found`, or, when it is `None`: a panic naming `what` is missing and `how` to get it; or,
/// under `RUNSCALE_ALLOW_SKIP=1`, `None` after a `SKIPPED` line (and a line in the skip
/// report), for the test to return at once.
pub fn require<T>(found: Option<T>, what: &str, how: &str) -> Option<T> {
    if found.is_some() {
        return found;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    let allowed = std::env::var_os(ALLOW_SKIP_ENV).is_some_and(|v| v == "1");
    assert!(
        allowed,
        "{test}: {what} is missing; {how}. scripts/test.sh installs the tools the tests use, \
         or fails naming one it cannot (set {ALLOW_SKIP_ENV}=1 to skip such tests instead of \
         failing them)"
    );
    println!("SKIPPED {test}: {what} is missing ({how})");
    if let Some(report) = std::env::var_os(SKIP_REPORT_ENV) {
        let line = format!("{test}\t{what}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&report)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("{test}: cannot append to {SKIP_REPORT_ENV}={report:?}: {e}");
        }
    }
    None
}

/// The executable `name` on `PATH`, if there is one.
pub fn program_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The executable `name` on `PATH` (see [`require`]); `package` says where it comes from.
pub fn require_program(name: &str, package: &str) -> Option<PathBuf> {
    require(
        program_on_path(name),
        &format!("`{name}` (not on PATH)"),
        &format!("install {package}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_on_path_is_found_and_a_missing_one_is_not() {
        assert!(program_on_path("sh").is_some());
        assert!(program_on_path("runscale-no-such-program").is_none());
    }

    #[test]
    fn a_found_prerequisite_is_returned() {
        assert_eq!(require(Some(3), "three", "count"), Some(3));
    }
}
