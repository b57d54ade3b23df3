//! Cleaning up labs whose owner died without tearing down (SIGKILL, crash, power cut of the
//! terminal). Each lab records its owner in `<workdir>/owner` as `<pid> <start time>`.
use crate::error::Context;
use crate::lab::{DEFAULT_BASE_DIR, NETNS_DIR};
use crate::Result;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const OWNER_FILE: &str = "owner";

/// The start time (clock ticks since boot, field 22 of /proc/<pid>/stat) of a process, and
/// whether it is a zombie; `None` if there is no such process.
fn proc_start(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    let start = fields.get(19)?.parse().ok()?;
    Some((start, fields.first() == Some(&"Z")))
}

/// Writes `<dir>/owner` for the current process.
pub(crate) fn write_owner(dir: &Path) -> Result<()> {
    let pid = std::process::id();
    let start = proc_start(pid).map(|(s, _)| s).unwrap_or(0);
    let path = dir.join(OWNER_FILE);
    std::fs::write(&path, format!("{pid} {start}\n")).ctx(|| format!("writing {}", path.display()))
}

/// True if the lab in `dir` (id `id`) still has a live owner.
fn owner_alive(dir: &Path, id: &str) -> bool {
    match std::fs::read_to_string(dir.join(OWNER_FILE)) {
        Ok(text) => {
            let mut it = text.split_whitespace();
            let pid = it.next().and_then(|p| p.parse::<u32>().ok());
            let start = it.next().and_then(|s| s.parse::<u64>().ok());
            match (pid, start) {
                (Some(pid), Some(start)) => {
                    matches!(proc_start(pid), Some((s, zombie)) if s == start && !zombie)
                }
                _ => false,
            }
        }
        // No owner file (crashed right after creating the directory): fall back to the pid in
        // the id, `wl<pid>-<n>`.
        Err(_) => id
            .strip_prefix("wl")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| matches!(proc_start(pid), Some((_, false)))),
    }
}

/// PIDs of live processes whose network namespace is the one bound at `ns_path`.
fn processes_in_netns(ns_path: &Path) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(ns_path) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        })
        .filter(|&pid| matches!(proc_start(pid), Some((_, false))))
        .collect()
}

/// Cleans up every lab under `base` (default `/run/weft-lab`) whose owner process is gone:
/// kills (SIGKILL, by PID) the processes still running inside that lab's network namespaces —
/// its routers — removes the namespaces and the work directory. Labs of live owners are left
/// alone. Returns the ids cleaned up.
pub fn cleanup_stale(base: Option<&Path>) -> Result<Vec<String>> {
    let base: PathBuf = base
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE_DIR));
    let rd = match std::fs::read_dir(&base) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("listing {}", base.display())),
    };
    let mut cleaned = Vec::new();
    for entry in rd.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        if !id.starts_with("wl") || !dir.is_dir() || owner_alive(&dir, &id) {
            continue;
        }
        let prefix = format!("{id}-");
        let names: Vec<String> = std::fs::read_dir(NETNS_DIR)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        let mut pids = Vec::new();
        for n in &names {
            pids.extend(processes_in_netns(&Path::new(NETNS_DIR).join(n)));
        }
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids
            .iter()
            .any(|&p| matches!(proc_start(p), Some((_, false))))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for n in &names {
            weft_dataplane::netns::NetNs::remove_named(n).ctx(|| format!("removing netns {n}"))?;
        }
        std::fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        cleaned.push(id);
    }
    Ok(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_dead_ones_are_not() {
        let dir = std::env::temp_dir().join(format!("weft-lab-owner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_owner(&dir).unwrap();
        assert!(owner_alive(&dir, "wl1-0"));
        // Same pid, different start time: a recycled pid is not the owner.
        let (start, _) = proc_start(std::process::id()).unwrap();
        std::fs::write(
            dir.join(OWNER_FILE),
            format!("{} {}\n", std::process::id(), start + 1),
        )
        .unwrap();
        assert!(!owner_alive(&dir, "wl1-0"));
        std::fs::write(dir.join(OWNER_FILE), "garbage").unwrap();
        assert!(!owner_alive(&dir, "wl1-0"));
        std::fs::remove_file(dir.join(OWNER_FILE)).unwrap();
        assert!(owner_alive(&dir, &format!("wl{}-3", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
