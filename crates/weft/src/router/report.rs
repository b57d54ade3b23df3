//! The router's status in Weave's layouts: `/status` text, `/status/{peers,connections,targets,ipam}`
//! text, and the `/report` JSON document (Weave's `WeaveStatus` field names). The mesh part comes
//! from a [`MeshStatus`] snapshot taken by the handler.

use std::fmt::Write as _;

use serde_json::{json, Value};
use weft_mesh::MeshStatus;

use super::ipam::IpamSnapshot;
use super::mesh::ConnAttrs;
use super::State;

pub const PROTOCOL: &str = "weave";
pub const PROTOCOL_MIN: u8 = 1;
pub const PROTOCOL_MAX: u8 = 2;

fn label(name: impl std::fmt::Display, nick: &str) -> String {
    format!("{name}({nick})")
}

fn row(s: &mut String, k: &str, v: impl std::fmt::Display) {
    let _ = writeln!(s, "{k:>15}: {v}");
}

pub fn status_text(st: &State, m: &MeshStatus, ipam: &IpamSnapshot) -> String {
    let c = m.connection_counts();
    let mut s = String::new();
    row(
        &mut s,
        "Version",
        format!("weft {}", env!("CARGO_PKG_VERSION")),
    );
    row(&mut s, "Service", "router");
    row(
        &mut s,
        "Protocol",
        format!("{PROTOCOL} {PROTOCOL_MIN}..{PROTOCOL_MAX}"),
    );
    row(&mut s, "Name", label(m.name, &m.nick_name));
    row(
        &mut s,
        "Encryption",
        if st.mesh.encrypted {
            "enabled"
        } else {
            "disabled"
        },
    );
    row(
        &mut s,
        "PeerDiscovery",
        if m.peer_discovery {
            "enabled"
        } else {
            "disabled"
        },
    );
    row(&mut s, "Targets", m.targets.len());
    row(
        &mut s,
        "Connections",
        format!(
            "{} ({} established, {} pending, {} retrying, {} failed, {} connecting)",
            c.total, c.established, c.pending, c.retrying, c.failed, c.connecting
        ),
    );
    row(
        &mut s,
        "Peers",
        format!(
            "{} (with {} established, {} pending connections)",
            c.peers, c.peer_established, c.peer_pending
        ),
    );
    row(&mut s, "TrustedSubnets", "none");
    s.push('\n');
    row(&mut s, "Service", "ipam");
    row(&mut s, "Status", &ipam.status.status);
    row(&mut s, "Range", ipam.universe);
    row(&mut s, "DefaultSubnet", ipam.default_subnet);
    if let Some(e) = &ipam.status.last_gossip_error {
        row(&mut s, "GossipError", e);
    }
    if let Some(e) = &ipam.status.store_error {
        row(&mut s, "StoreError", e);
    }
    s
}

pub fn status_part(
    st: &State,
    m: &MeshStatus,
    attrs: &ConnAttrs,
    ipam: &IpamSnapshot,
    what: &str,
) -> Option<String> {
    let mut s = String::new();
    match what {
        "peers" => {
            for p in &m.peers {
                let _ = writeln!(s, "{}", label(p.name, &p.nick_name));
                for c in &p.connections {
                    let _ = writeln!(
                        s,
                        "   -> {:<21} {} {}",
                        c.address,
                        label(c.name, &c.nick_name),
                        if c.established {
                            "established"
                        } else {
                            "pending"
                        }
                    );
                }
            }
        }
        "connections" => {
            for c in &m.connections {
                let dir = if c.outbound { "->" } else { "<-" };
                let overlay = c.conn.and_then(|id| attrs.get(&id));
                let detail = match overlay {
                    Some(a) => connection_attrs(a, st.mesh.encrypted, &c.info),
                    None if c.state == "established" || c.state == "pending" => format!(
                        "{}tcp {}",
                        if st.mesh.encrypted { "encrypted " } else { "" },
                        c.info
                    ),
                    None => c.info.clone(),
                };
                let _ = writeln!(s, "{dir} {:<21} {:<11} {detail}", c.address, c.state);
            }
        }
        "targets" => {
            for t in &m.targets {
                let _ = writeln!(s, "{t}");
            }
        }
        "ipam" => {
            s.push_str(&ipam.text);
            for p in &ipam.status.pending {
                let _ = writeln!(s, "pending: {} {} ({})", p.ident, p.cidr, p.reason);
            }
        }
        _ => return None,
    }
    Some(s)
}

/// Weave's connection line detail: `[encrypted ]fastdp name(nick) mtu=1376`, plus why sleeve.
fn connection_attrs(
    a: &std::collections::BTreeMap<String, String>,
    tcp_encrypted: bool,
    info: &str,
) -> String {
    let encrypted = a
        .get("encrypted")
        .map(|v| v == "true")
        .unwrap_or(tcp_encrypted);
    let mut s = format!(
        "{}{} {info}",
        if encrypted {
            "encrypted "
        } else {
            "unencrypted "
        },
        a.get("name").map(String::as_str).unwrap_or("tcp")
    );
    if let Some(mtu) = a.get("mtu") {
        let _ = write!(s, " mtu={mtu}");
    }
    if let Some(why) = a.get("why").filter(|w| !w.is_empty()) {
        let _ = write!(s, " ({why})");
    }
    s
}

pub fn report(st: &State, m: &MeshStatus, attrs: &ConnAttrs, ipam: &IpamSnapshot) -> Value {
    let mut router = serde_json::to_value(m).unwrap_or_else(|_| json!({}));
    if let Some(conns) = router.get_mut("Connections").and_then(Value::as_array_mut) {
        for (c, v) in m.connections.iter().zip(conns.iter_mut()) {
            if let (Some(at), Value::Object(o)) = (c.conn.and_then(|id| attrs.get(&id)), v) {
                o.insert("Attrs".into(), json!(at));
            }
        }
    }
    if let Value::Object(r) = &mut router {
        r.insert("Protocol".into(), json!(PROTOCOL));
        r.insert("ProtocolMinVersion".into(), json!(PROTOCOL_MIN));
        r.insert("ProtocolMaxVersion".into(), json!(PROTOCOL_MAX));
        r.insert("Encryption".into(), json!(st.mesh.encrypted));
        r.insert("TrustedSubnets".into(), json!([]));
        r.insert("Interface".into(), json!(st.cfg.bridge));
        r.insert("OverlayDiagnostics".into(), json!({}));
    }
    let mut ipam_json = serde_json::to_value(&ipam.status.ipam).unwrap_or_else(|_| json!({}));
    if let Value::Object(o) = &mut ipam_json {
        o.insert("Status".into(), json!(ipam.status.status));
        o.insert("Shares".into(), json!(ipam.status.shares));
        o.insert(
            "UnreachablePeers".into(),
            json!(ipam.status.unreachable_peers),
        );
        o.insert("Pending".into(), json!(ipam.status.pending));
        o.insert(
            "LocalRanges".into(),
            json!(ipam
                .local_ranges
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()),
        );
    }
    json!({
        "Ready": st.is_ready(),
        "Version": env!("CARGO_PKG_VERSION"),
        "VersionCheck": { "Enabled": false },
        "Router": router,
        "IPAM": ipam_json,
    })
}
