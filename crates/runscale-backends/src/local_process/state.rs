//! The state directory: one sub-directory per pool holding, per instance, a state file
//! (`{id}.json`), a credentials file (`{id}.credentials.json`, only with `file` delivery) and a
//! log (`{id}.log`).
//!
//! State and credentials files are written atomically (temporary file + rename) with mode
//! 0600. Logs of instances that are gone are kept, [`KEPT_LOGS_PER_POOL`] per pool, newest
//! first. No process is started or signalled here.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;
use runscale_core::Timestamp;
use serde::{Deserialize, Serialize};

/// Logs of gone instances kept per pool (the newest ones); older logs are deleted.
pub(crate) const KEPT_LOGS_PER_POOL: usize = 20;

const ID_PREFIX: &str = "lp-";
const ID_LEN: usize = 12;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const STATE_EXT: &str = ".json";
const CREDENTIALS_EXT: &str = ".credentials.json";
const LOG_EXT: &str = ".log";

/// A fresh instance id: `lp-` and 12 random lower-case letters and digits.
pub(crate) fn new_instance_id() -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..ID_LEN)
        .map(|_| char::from(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())]))
        .collect();
    format!("{ID_PREFIX}{suffix}")
}

/// Whether `id` has the shape of an instance id (so it is safe as a file name).
pub(crate) fn is_instance_id(id: &str) -> bool {
    id.strip_prefix(ID_PREFIX).is_some_and(|s| {
        !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| ID_ALPHABET.contains(&b))
    })
}

/// Whether `pool` can name a directory: ASCII letters, digits, `.`, `_`, `-`, not starting
/// with `.`, at most 128 bytes.
pub(crate) fn is_safe_pool_name(pool: &str) -> bool {
    !pool.is_empty()
        && pool.len() <= 128
        && !pool.starts_with('.')
        && pool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What is recorded about one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Format version of this file.
    pub version: u32,
    /// The pool.
    pub pool: String,
    /// The instance id.
    pub instance_id: String,
    /// The process id of the instance's main process (leader of its process group).
    pub pid: i32,
    /// Its start time, field 22 of `/proc/<pid>/stat`: tells it from a later process with the
    /// same pid.
    pub start_time: u64,
    /// Names of the runners it hosts.
    pub runner_names: Vec<String>,
    /// Template hash it was launched from.
    pub template_hash: String,
    /// When it was launched.
    pub launched_at: Timestamp,
    /// When it was first asked to terminate (SIGTERM sent).
    #[serde(default)]
    pub stopping_since: Option<Timestamp>,
    /// Reconstructed from the process's environment (runscale stopped between spawn and the
    /// first state write).
    #[serde(default)]
    pub adopted: bool,
}

/// Current [`Record::version`].
pub(crate) const RECORD_VERSION: u32 = 1;

/// The paths of the state directory.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root` (already created and canonical).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A pool's directory.
    pub fn pool_dir(&self, pool: &str) -> PathBuf {
        self.root.join(pool)
    }

    /// An instance's state file.
    pub fn state_path(&self, pool: &str, id: &str) -> PathBuf {
        self.pool_dir(pool).join(format!("{id}{STATE_EXT}"))
    }

    /// An instance's credentials file.
    pub fn credentials_path(&self, pool: &str, id: &str) -> PathBuf {
        self.pool_dir(pool).join(format!("{id}{CREDENTIALS_EXT}"))
    }

    /// An instance's log.
    pub fn log_path(&self, pool: &str, id: &str) -> PathBuf {
        self.pool_dir(pool).join(format!("{id}{LOG_EXT}"))
    }

    /// Creates a pool's directory (mode 0700) if missing.
    pub fn ensure_pool_dir(&self, pool: &str) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.pool_dir(pool))
    }

    /// The pools that have a directory.
    pub fn pools(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir()
                && let Some(name) = entry.file_name().to_str()
                && is_safe_pool_name(name)
            {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    /// The instance ids that have a state file in `pool` (none if the pool has no directory).
    pub fn state_ids(&self, pool: &str) -> io::Result<Vec<String>> {
        self.ids_with(pool, |name| {
            name.strip_suffix(STATE_EXT)
                .filter(|stem| !stem.ends_with(".credentials"))
        })
    }

    /// The instance ids that have a credentials file in `pool`.
    pub fn credentials_ids(&self, pool: &str) -> io::Result<Vec<String>> {
        self.ids_with(pool, |name| name.strip_suffix(CREDENTIALS_EXT))
    }

    fn ids_with(&self, pool: &str, stem: impl Fn(&str) -> Option<&str>) -> io::Result<Vec<String>> {
        let dir = match fs::read_dir(self.pool_dir(pool)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in dir {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(&stem)
                && is_instance_id(id)
            {
                out.push(id.to_owned());
            }
        }
        Ok(out)
    }

    /// Reads a state file: `Ok(None)` if there is none, `InvalidData` if it cannot be parsed
    /// or names another instance.
    pub fn read(&self, pool: &str, id: &str) -> io::Result<Option<Record>> {
        let bytes = match fs::read(self.state_path(pool, id)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let record: Record = serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if record.pool != pool || record.instance_id != id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "state file names another instance",
            ));
        }
        Ok(Some(record))
    }

    /// Writes a state file atomically (0600).
    pub fn write(&self, record: &Record) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        write_private_atomic(&self.state_path(&record.pool, &record.instance_id), &bytes)
    }

    /// Removes an instance's state and credentials files (missing ones are fine). Its log is
    /// kept.
    pub fn remove_instance(&self, pool: &str, id: &str) -> io::Result<()> {
        remove_if_present(&self.credentials_path(pool, id))?;
        remove_if_present(&self.state_path(pool, id))
    }

    /// Deletes the oldest logs of gone instances of `pool`, keeping `keep`.
    pub fn cap_logs(&self, pool: &str, keep: usize) -> io::Result<()> {
        let dir = match fs::read_dir(self.pool_dir(pool)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut gone = Vec::new();
        for entry in dir {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(LOG_EXT)) else {
                continue;
            };
            if !is_instance_id(id) || self.state_path(pool, id).exists() {
                continue;
            }
            let modified = entry.metadata()?.modified()?;
            gone.push((modified, entry.path()));
        }
        gone.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        for (_, path) in gone.into_iter().skip(keep) {
            remove_if_present(&path)?;
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers see the old content or the new one, never a part. The file has mode 0600.
pub(crate) fn write_private_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no directory"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{name}.{}.tmp", new_instance_id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_have_a_fixed_safe_shape() {
        let id = new_instance_id();
        assert_eq!(id.len(), 15);
        assert!(is_instance_id(&id), "{id}");
        assert_ne!(id, new_instance_id());
        for bad in ["lp-", "lp-../x", "i-123", "lp-ABC", "lp-a/b", ""] {
            assert!(!is_instance_id(bad), "{bad}");
        }
    }

    #[test]
    fn pool_names_must_be_safe_directory_names() {
        for ok in ["linux-x64", "a.b_c", "A1"] {
            assert!(is_safe_pool_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", ".hidden", "a b", "é"] {
            assert!(!is_safe_pool_name(bad), "{bad}");
        }
    }
}
