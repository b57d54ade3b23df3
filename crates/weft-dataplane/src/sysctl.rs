//! sysctls under /proc/sys. `/proc/sys/net` shows the network namespace of the
//! *calling thread*, so these act in that netns (use [`crate::netns::NetNs::run`]).

use crate::netlink::validate_ifname;
use crate::{Error, Result};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const PROC_SYS: &str = "/proc/sys";

/// Turns a key ("net/ipv4/ip_forward" or "net.ipv4.ip_forward") into a path under
/// /proc/sys. Use the slash form when a component (an interface name) contains dots.
fn key_path(key: &str) -> Result<PathBuf> {
    let normalized = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "invalid sysctl key {key:?}: {why}; use e.g. \"net/ipv4/ip_forward\" or \"net.ipv4.ip_forward\""
        ))
    };
    if normalized.is_empty() {
        return Err(bad("empty"));
    }
    for part in normalized.split('/') {
        if part.is_empty() {
            return Err(bad("empty path component"));
        }
        if part == "." || part == ".." {
            return Err(bad("'.' or '..' component"));
        }
        if part.bytes().any(|b| b == 0 || b.is_ascii_whitespace()) {
            return Err(bad("NUL or whitespace"));
        }
    }
    Ok(Path::new(PROC_SYS).join(normalized))
}

fn map_io(key: &str, op: &str, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        Error::NotFound(format!(
            "sysctl {key} (in this thread's network namespace; does the interface exist here?)"
        ))
    } else {
        Error::io(format!("{op} sysctl {key}"), e)
    }
}

/// Writes a sysctl.
pub fn set(key: &str, value: &str) -> Result<()> {
    let path = key_path(key)?;
    if value.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "sysctl value for {key} contains NUL"
        )));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| map_io(key, "open", e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| map_io(key, &format!("write {value:?} to"), e))
}

/// Reads a sysctl (trailing newline removed).
pub fn get(key: &str) -> Result<String> {
    let path = key_path(key)?;
    let s = std::fs::read_to_string(&path).map_err(|e| map_io(key, "read", e))?;
    Ok(s.trim_end_matches('\n').to_string())
}

/// Weave's ARP tuning for an interface: base_reachable_time=5,
/// delay_first_probe_time=2, ucast_solicit=1.
pub fn tune_arp(ifname: &str) -> Result<()> {
    validate_ifname(ifname)?;
    for (k, v) in [
        ("base_reachable_time", "5"),
        ("delay_first_probe_time", "2"),
        ("ucast_solicit", "1"),
    ] {
        set(&format!("net/ipv4/neigh/{ifname}/{k}"), v)?;
    }
    Ok(())
}

/// Sets net/ipv6/conf/IF/accept_ra=0. Ok when the kernel has no IPv6.
pub fn disable_accept_ra(ifname: &str) -> Result<()> {
    validate_ifname(ifname)?;
    if !Path::new(PROC_SYS).join("net/ipv6").exists() {
        return Ok(());
    }
    set(&format!("net/ipv6/conf/{ifname}/accept_ra"), "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            key_path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            key_path("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in [
            "",
            "net/../../etc",
            "/net/ipv4",
            "net//x",
            "net.ipv4.",
            "a b",
            "net/./x",
        ] {
            assert!(
                matches!(key_path(bad), Err(Error::InvalidArgument(_))),
                "{bad:?} accepted"
            );
        }
    }
}
