//! weft-dataplane: synchronous kernel access for Weft.
//!
//! Small modules with one job each: [`netlink`] (NETLINK_ROUTE links, addresses,
//! routes), [`netns`] (network namespaces), [`sysctl`], [`arp`] (gratuitous ARP)
//! and [`bridge`] (the node's `weave` bridge). Everything is blocking; call it from
//! `spawn_blocking` in async code.
//!
//! Data-plane I/O building blocks: [`vxlan`] (the fast-path VXLAN device and its FDB),
//! [`udp`] (the sleeve's batched, offloaded UDP socket), [`tap`] (the sleeve's TAP device
//! with virtio-net offloads), [`gso`] (segmentation of the large frames a TAP yields, and
//! TCP coalescing for TAP writes) and [`masq`]
//! (pod egress masquerading with nftables). The fd-based ones expose their descriptors
//! (`AsFd`) and run non-blocking, for a tokio driver to wrap in `AsyncFd`.

pub mod arp;
pub mod bridge;
pub mod gso;
pub mod masq;
pub mod netlink;
pub mod netns;
pub mod sysctl;
pub mod tap;
pub mod udp;
pub mod vxlan;

mod error;
pub use error::{Error, Result};

/// An Ethernet MAC address.
pub type MacAddr = [u8; 6];

/// Formats a MAC address as lower-case `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &MacAddr) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex digits, either case; `-` also accepted as separator).
pub fn parse_mac(s: &str) -> Result<MacAddr> {
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "malformed MAC address {s:?}: {why}; expected six hex octets like aa:bb:cc:dd:ee:ff"
        ))
    };
    let mut mac = [0u8; 6];
    let mut n = 0;
    for part in s.split([':', '-']) {
        if n == 6 {
            return Err(bad("more than six octets"));
        }
        if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("each octet must be one or two hex digits"));
        }
        mac[n] = u8::from_str_radix(part, 16).map_err(|_| bad("invalid hex"))?;
        n += 1;
    }
    if n != 6 {
        return Err(bad("fewer than six octets"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_to_worker_threads() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<netlink::Netlink>();
        send_sync::<netns::NetNs>();
        send_sync::<netns::NamedNetNs>();
        send_sync::<Error>();
    }

    #[test]
    fn mac_roundtrip() {
        let mac = [0xaa, 0xbb, 0xcc, 0x01, 0x02, 0xff];
        assert_eq!(format_mac(&mac), "aa:bb:cc:01:02:ff");
        assert_eq!(parse_mac("aa:bb:cc:01:02:ff").unwrap(), mac);
        assert_eq!(parse_mac("AA-BB-CC-1-2-FF").unwrap(), mac);
    }

    #[test]
    fn malformed_macs_are_errors() {
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:fg",
            "aa:bb:cc:dd:ee:",
            "aabbccddeeff",
            "aa:bb:cc:dd:ee:fff",
            "+a:bb:cc:dd:ee:ff",
            "aa::cc:dd:ee:ff",
        ] {
            match parse_mac(bad) {
                Err(Error::InvalidArgument(msg)) => assert!(msg.contains("MAC"), "{msg}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
