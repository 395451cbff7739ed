//! What the local-process backend reads from `/proc` and how it signals processes.
//!
//! A process is identified by its pid *and* its start time (field 22 of `/proc/<pid>/stat`),
//! so a reused pid is never mistaken for an instance: every signal is sent only after the
//! start time was checked. Environment scans keep only `RUNSCALE_*` variables, so credentials
//! delivered through the environment are never retained.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The fields of `/proc/<pid>/stat` the backend uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 5: process group id.
    pub pgrp: i32,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    /// Whether the process still runs (it is neither a zombie nor dead).
    pub fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the content of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses, so fields are counted after the last `)`.
pub(crate) fn parse_stat(content: &str) -> Option<ProcStat> {
    let (_, rest) = content.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state).
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(5 - 3)?.parse().ok()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        start_time,
    })
}

/// Reads `/proc/<pid>/stat`; `None` if there is no such process (or it cannot be read).
pub(crate) fn read_stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    let content = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&content)
}

/// The live process `pid` if it is the one that started at `start_time`.
pub(crate) fn live_instance(pid: i32, start_time: u64) -> Option<ProcStat> {
    read_stat(pid).filter(|s| s.start_time == start_time && s.running())
}

/// The pids currently listed in `/proc`.
pub(crate) fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid > 0)
        .collect()
}

/// Whether process `pid` belongs to the same user as this process (a process of another user
/// is never taken for an instance, even when running as root).
pub(crate) fn same_owner(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata("/proc/self"),
        std::fs::metadata(format!("/proc/{pid}")),
    ) {
        (Ok(me), Ok(them)) => me.uid() == them.uid(),
        _ => false,
    }
}

/// The `RUNSCALE_*` variables of a process's initial environment, by name. Other variables
/// (which may hold credentials) are dropped while parsing.
pub(crate) fn runscale_env(pid: i32) -> Option<BTreeMap<String, OsString>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(parse_runscale_env(&raw))
}

/// Keeps the `RUNSCALE_*` entries of a NUL-separated environment block.
pub(crate) fn parse_runscale_env(raw: &[u8]) -> BTreeMap<String, OsString> {
    raw.split(|b| *b == 0)
        .filter(|entry| entry.starts_with(b"RUNSCALE_"))
        .filter_map(|entry| {
            let eq = entry.iter().position(|b| *b == b'=')?;
            let name = std::str::from_utf8(&entry[..eq]).ok()?.to_owned();
            Some((name, OsString::from_vec(entry[eq + 1..].to_vec())))
        })
        .collect()
}

/// What happened to a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signalled {
    /// Sent (to the process group when the process leads one, else to the process).
    Sent,
    /// Not sent: the process is gone, or the pid now belongs to another process.
    Gone,
}

/// Sends `signal` to the instance process `pid` (and its process group when it leads one),
/// after checking that `pid` still is the process that started at `start_time`.
pub(crate) fn signal_instance(
    pid: i32,
    start_time: u64,
    signal: Signal,
) -> Result<Signalled, Errno> {
    let Some(stat) = read_stat(pid).filter(|s| s.start_time == start_time) else {
        return Ok(Signalled::Gone);
    };
    let result = if stat.pgrp == pid {
        killpg(Pid::from_raw(pid), signal)
    } else {
        kill(Pid::from_raw(pid), signal)
    };
    match result {
        Ok(()) => Ok(Signalled::Sent),
        Err(Errno::ESRCH) => Ok(Signalled::Gone),
        Err(e) => Err(e),
    }
}

/// SIGKILLs the processes left in the process group `pgrp` of a dead instance: only those
/// whose environment names this instance (`RUNSCALE_INSTANCE_ID`) and this state directory,
/// so a reused group id never reaches anybody else. Returns how many were signalled.
pub(crate) fn kill_stragglers(pgrp: i32, instance_id: &str, state_dir: &Path) -> usize {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut killed = 0;
    for pid in pids() {
        if pid == me {
            continue;
        }
        let Some(stat) = read_stat(pid).filter(|s| s.pgrp == pgrp && s.running()) else {
            continue;
        };
        if !same_owner(pid) {
            continue;
        }
        let Some(env) = runscale_env(pid) else {
            continue;
        };
        let ours = env
            .get(super::spawn::ENV_INSTANCE_ID)
            .is_some_and(|v| v.as_os_str() == instance_id)
            && env
                .get(super::spawn::ENV_STATE_DIR)
                .is_some_and(|v| Path::new(v) == state_dir);
        if ours && signal_instance(pid, stat.start_time, Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (my (weird) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 12345678 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                pgrp: 4242,
                start_time: 987654,
            })
        );
        let zombie = "7 (sh) Z 1 3 3 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        let z = parse_stat(zombie).expect("parses");
        assert_eq!((z.state, z.pgrp, z.start_time), ('Z', 3, 55));
        assert!(!z.running());
        assert_eq!(parse_stat("12 (truncated) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_own_stat() {
        let me = i32::try_from(std::process::id()).expect("pid fits");
        let s = read_stat(me).expect("own stat");
        assert!(s.running());
        assert!(live_instance(me, s.start_time).is_some());
        assert!(live_instance(me, s.start_time + 1).is_none());
        assert!(read_stat(0).is_none());
        assert!(same_owner(me));
    }

    #[test]
    fn environment_scan_keeps_only_runscale_variables() {
        let raw = b"PATH=/bin\0RUNSCALE_POOL=p\0TOKEN=secret\0RUNSCALE_X=a=b\0RUNSCALE_BAD\0";
        let env = parse_runscale_env(raw);
        assert_eq!(env.len(), 2);
        assert_eq!(env.get("RUNSCALE_POOL"), Some(&OsString::from("p")));
        assert_eq!(env.get("RUNSCALE_X"), Some(&OsString::from("a=b")));
    }
}
