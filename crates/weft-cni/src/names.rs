//! Host-side veth names: `vethwepl` + 7 characters, unique per attachment.

use sha2::{Digest, Sha256};

/// Prefix of the host side (Weave's).
pub const HOST_PREFIX: &str = "vethwepl";
/// Characters after the prefix (IFNAMSIZ − 1 − len(prefix)).
pub const SUFFIX_LEN: usize = 7;
/// How many candidates we try before giving up.
pub const MAX_CANDIDATES: usize = 16;

/// The candidate host-side names for (container ID, ifname), in the order to try them:
/// first Weave's `vethwepl<id[..7]>`; then, for when another container shares that prefix (or a
/// concurrent ADD took it), 7 hex characters of SHA-256(containerID, ifname); then further
/// deterministic variants mixing in a counter.
pub fn host_veth_candidates(container_id: &str, ifname: &str) -> Vec<String> {
    let prefix: String = container_id.chars().take(SUFFIX_LEN).collect();
    let mut out = vec![format!("{HOST_PREFIX}{prefix}")];
    for variant in 0..(MAX_CANDIDATES - 1) {
        let mut h = Sha256::new();
        h.update(container_id.as_bytes());
        h.update([0u8]);
        h.update(ifname.as_bytes());
        if variant > 0 {
            h.update([0u8]);
            h.update((variant as u32).to_be_bytes());
        }
        let digest = h.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{HOST_PREFIX}{}", &hex[..SUFFIX_LEN]);
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_is_weave_name() {
        let c = host_veth_candidates("0123456789abcdef", "eth0");
        assert_eq!(c[0], "vethwepl0123456");
        assert!(c.iter().all(|n| n.len() <= 15), "{c:?}");
        assert_eq!(c.len(), MAX_CANDIDATES);
        let mut d = c.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), c.len());
    }

    #[test]
    fn short_ids() {
        assert_eq!(host_veth_candidates("abc", "eth0")[0], "vethweplabc");
    }

    #[test]
    fn shared_prefix_diverges_and_is_deterministic() {
        let a = host_veth_candidates("abcdefg-one", "eth0");
        let b = host_veth_candidates("abcdefg-two", "eth0");
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_eq!(a, host_veth_candidates("abcdefg-one", "eth0"));
        // Another ifname of the same container gets other fallbacks.
        assert_ne!(a[1], host_veth_candidates("abcdefg-one", "net1")[1]);
    }
}
