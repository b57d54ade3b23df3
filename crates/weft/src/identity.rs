//! The peer's identity: its name (a MAC), nickname, per-start UID and short ID.
//!
//! The name is chosen as Weave chooses it, so a node moving from Weave to Weft keeps its name:
//! `--name`, else the MAC of an existing bridge (the previous name), else derived from the
//! machine ID and product UUID, else random. A random name is kept in a file next to the store
//! so that the next start finds it again.

use std::path::{Path, PathBuf};

use anyhow::Context;
use weft_wire::peer_name::{mac_from_uuid, PeerName};

#[derive(Debug, Clone)]
pub struct Identity {
    pub name: PeerName,
    pub nickname: String,
    /// Random per start, never 0.
    pub uid: u64,
    /// 12-bit short ID (the VXLAN VNI of the fast path).
    pub short_id: u16,
    /// Where the name came from, for logs and status.
    pub source: &'static str,
}

pub fn resolve(
    flag: Option<&str>,
    bridge_mac: Option<[u8; 6]>,
    db_path: &Path,
    nickname: String,
) -> anyhow::Result<Identity> {
    let (name, source) = choose_name(flag, bridge_mac, db_path, &system_ids())?;
    Ok(Identity {
        name,
        nickname,
        uid: loop {
            let u: u64 = rand::random();
            if u != 0 {
                break u;
            }
        },
        short_id: rand::random::<u16>() & 0x0fff,
        source,
    })
}

fn name_file(db_path: &Path) -> PathBuf {
    let mut s = db_path.as_os_str().to_owned();
    s.push(".peername");
    PathBuf::from(s)
}

/// The machine's stable IDs, concatenated as Weave does (machine-id then product UUID).
fn system_ids() -> Option<Vec<u8>> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let machine_id = read("/etc/machine-id").or_else(|| read("/var/lib/dbus/machine-id"));
    let product = read("/sys/class/dmi/id/product_uuid").or_else(|| read("/sys/hypervisor/uuid"));
    match (machine_id, product) {
        (None, None) => None,
        (m, p) => Some(format!("{}{}", m.unwrap_or_default(), p.unwrap_or_default()).into_bytes()),
    }
}

fn choose_name(
    flag: Option<&str>,
    bridge_mac: Option<[u8; 6]>,
    db_path: &Path,
    system_ids: &Option<Vec<u8>>,
) -> anyhow::Result<(PeerName, &'static str)> {
    if let Some(f) = flag.filter(|f| !f.is_empty()) {
        let name: PeerName = f.parse().map_err(|e| {
            anyhow::anyhow!("--name {f:?} is not a peer name (a MAC like 02:00:00:00:00:01): {e}")
        })?;
        return Ok((name, "--name"));
    }
    if let Some(mac) = bridge_mac.filter(|m| m.iter().any(|b| *b != 0)) {
        return Ok((PeerName::from_mac(mac), "bridge MAC"));
    }
    if let Some(ids) = system_ids {
        return Ok((PeerName::from_mac(mac_from_uuid(ids)), "machine id"));
    }
    let file = name_file(db_path);
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(name) = text.trim().parse::<PeerName>() {
            return Ok((name, "persisted"));
        }
    }
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    let name = PeerName::from_mac(mac);
    std::fs::write(&file, format!("{name}\n"))
        .with_context(|| format!("persisting the random peer name to {}", file.display()))?;
    Ok((name, "random"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("weft-data.db");
        let ids = Some(b"0123456789abcdef".to_vec());
        let (n, s) = choose_name(
            Some("02:00:00:00:00:07"),
            Some([2, 1, 1, 1, 1, 1]),
            &db,
            &ids,
        )
        .unwrap();
        assert_eq!((n.to_string().as_str(), s), ("02:00:00:00:00:07", "--name"));
        let (n, s) = choose_name(None, Some([2, 1, 1, 1, 1, 1]), &db, &ids).unwrap();
        assert_eq!(
            (n.to_string().as_str(), s),
            ("02:01:01:01:01:01", "bridge MAC")
        );
        let (n, s) = choose_name(None, None, &db, &ids).unwrap();
        assert_eq!(s, "machine id");
        assert_eq!(n, PeerName::from_mac(mac_from_uuid(b"0123456789abcdef")));
        assert!(choose_name(Some("not-a-mac"), None, &db, &ids).is_err());
    }

    #[test]
    fn random_name_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("weft-data.db");
        let (first, s1) = choose_name(None, None, &db, &None).unwrap();
        let (second, s2) = choose_name(None, None, &db, &None).unwrap();
        assert_eq!((s1, s2), ("random", "persisted"));
        assert_eq!(first, second);
        assert_eq!(
            first.to_name_bytes()[0] & 0x03,
            0x02,
            "locally administered unicast"
        );
    }
}
