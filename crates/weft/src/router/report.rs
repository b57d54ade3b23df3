//! The router's status in Weave's layouts: `/status` text, `/status/{peers,connections,targets,ipam}`
//! text, and the `/report` JSON document (Weave's `WeaveStatus` field names).

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{State, EXPOSE_ID};

pub const PROTOCOL: &str = "weave";
pub const PROTOCOL_MIN: u8 = 1;
pub const PROTOCOL_MAX: u8 = 2;

fn peer_label(st: &State) -> String {
    format!("{}({})", st.identity.name, st.identity.nickname)
}

pub fn status_text(st: &State) -> String {
    let a = st.alloc();
    let mut s = String::new();
    let rows: [(&str, String); 11] = [
        ("Version", format!("weft {}", env!("CARGO_PKG_VERSION"))),
        ("Service", "router".into()),
        (
            "Protocol",
            format!("{PROTOCOL} {PROTOCOL_MIN}..{PROTOCOL_MAX}"),
        ),
        ("Name", peer_label(st)),
        ("Encryption", "disabled".into()),
        ("PeerDiscovery", "enabled".into()),
        ("Targets", st.cfg.peers.len().to_string()),
        ("Connections", "0".into()),
        ("Peers", "1".into()),
        ("TrustedSubnets", "none".into()),
        ("", String::new()),
    ];
    for (k, v) in rows.iter().filter(|(k, _)| !k.is_empty()) {
        let _ = writeln!(s, "{k:>15}: {v}");
    }
    s.push('\n');
    let ipam: [(&str, String); 4] = [
        ("Service", "ipam".into()),
        ("Status", "ready".into()),
        ("Range", a.universe().to_string()),
        ("DefaultSubnet", a.default_subnet().to_string()),
    ];
    for (k, v) in ipam {
        let _ = writeln!(s, "{k:>15}: {v}");
    }
    s
}

pub fn status_part(st: &State, what: &str) -> Option<String> {
    match what {
        "peers" => Some(format!("{}\n", peer_label(st))),
        "connections" | "targets" => Some(
            st.cfg
                .peers
                .iter()
                .map(|p| {
                    format!(
                        "-> {p:<21} failed      peer connections are not available in this build\n"
                    )
                })
                .collect(),
        ),
        "ipam" => {
            let a = st.alloc();
            let total = super::range_size(a.universe());
            let owned = total; // a single node owns the whole range
            let pct = if total == 0 {
                0.0
            } else {
                100.0 * owned as f64 / total as f64
            };
            Some(format!(
                "{}  {} IPs ({:.1}% of total) ({} active)\n",
                peer_label(st),
                owned,
                pct,
                a.num_allocated()
            ))
        }
        _ => None,
    }
}

pub fn report(st: &State) -> Value {
    let a = st.alloc();
    let name = st.identity.name.to_string();
    let total = super::range_size(a.universe());
    json!({
        "Ready": st.is_ready(),
        "Version": env!("CARGO_PKG_VERSION"),
        "VersionCheck": { "Enabled": false },
        "Router": {
            "Protocol": PROTOCOL,
            "ProtocolMinVersion": PROTOCOL_MIN,
            "ProtocolMaxVersion": PROTOCOL_MAX,
            "Encryption": false,
            "PeerDiscovery": true,
            "Name": name,
            "NickName": st.identity.nickname,
            "Port": 6783,
            "Peers": [{
                "Name": name,
                "NickName": st.identity.nickname,
                "UID": st.identity.uid,
                "ShortID": st.identity.short_id,
                "Version": 1,
                "Connections": [],
            }],
            "UnicastRoutes": [{ "Dest": name, "Via": "00:00:00:00:00:00" }],
            "BroadcastRoutes": [{ "Source": name, "Via": null }],
            "Connections": [],
            "TerminationCount": 0,
            "Targets": st.cfg.peers,
            "OverlayDiagnostics": {},
            "TrustedSubnets": [],
            "Interface": st.cfg.bridge,
            "BridgeAddress": a.lookup(EXPOSE_ID).first().map(|n| n.to_string()),
        },
        "IPAM": {
            "Paxos": null,
            "Range": a.universe().to_string(),
            "RangeNumIPs": total,
            "ActiveIPs": a.num_allocated(),
            "DefaultSubnet": a.default_subnet().to_string(),
            "Entries": [{
                "Token": a.universe().network().to_string(),
                "Size": total,
                "Peer": name,
                "Nickname": st.identity.nickname,
                "IsKnownPeer": true,
                "Version": 0,
            }],
            "PendingClaims": [],
            "PendingAllocates": [],
        },
    })
}
