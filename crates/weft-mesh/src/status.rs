//! Status snapshots shaped like Weave's `/status` and `/report` router section.
//!
//! [`Mesh::status`] returns a [`MeshStatus`] whose JSON form (serde) uses Weave's
//! field names (`Name`, `NickName`, `Peers`, `UnicastRoutes`, ...), so the daemon
//! can embed it in its `WeaveStatus.Router` object and add what only it knows
//! (protocol versions, encryption, overlay attributes and diagnostics, trusted
//! subnets). [`MeshStatus::connection_counts`] gives the numbers of the text
//! `Connections:` and `Peers:` lines.

use serde::Serialize;
use weft_wire::PeerName;

use crate::connection::ConnId;
use crate::maker::TargetState;
use crate::mesh::Mesh;
use crate::time::Millis;

fn ser_name<S: serde::Serializer>(n: &PeerName, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(n)
}

fn ser_names<S: serde::Serializer>(v: &[PeerName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|n| n.to_string()))
}

/// One connection in a peer's entry (Weave's `connectionStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerConnectionStatus {
    /// Remote peer name.
    #[serde(serialize_with = "ser_name")]
    pub name: PeerName,
    /// Remote nickname ("" if unknown).
    pub nick_name: String,
    /// Remote address as the owning peer sees it.
    pub address: String,
    /// Whether the owning peer dialled it.
    pub outbound: bool,
    /// Whether it is established.
    pub established: bool,
}

/// One peer (Weave's `PeerStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerStatus {
    /// Name.
    #[serde(serialize_with = "ser_name")]
    pub name: PeerName,
    /// Nickname.
    pub nick_name: String,
    /// UID.
    #[serde(rename = "UID")]
    pub uid: u64,
    /// Short ID.
    #[serde(rename = "ShortID")]
    pub short_id: u16,
    /// Version.
    pub version: u64,
    /// Its connections.
    pub connections: Vec<PeerConnectionStatus>,
}

/// A unicast route (Weave's `unicastRouteStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UnicastRouteStatus {
    /// Destination.
    #[serde(serialize_with = "ser_name")]
    pub dest: PeerName,
    /// First hop (`00:00:00:00:00:00` for ourself).
    #[serde(serialize_with = "ser_name")]
    pub via: PeerName,
}

/// A broadcast route (Weave's `broadcastRouteStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BroadcastRouteStatus {
    /// Source of the broadcast.
    #[serde(serialize_with = "ser_name")]
    pub source: PeerName,
    /// Where we forward it.
    #[serde(serialize_with = "ser_names")]
    pub via: Vec<PeerName>,
}

/// One local connection or target (Weave's `LocalConnectionStatus`, without
/// the overlay `Attrs`, which the daemon adds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LocalConnectionStatus {
    /// Remote address (the target, for outbound connections).
    pub address: String,
    /// Whether we dialled.
    pub outbound: bool,
    /// `established`, `pending`, `connecting`, `retrying`, `failed` or `waiting`.
    pub state: String,
    /// Details: `name(nick)` of the remote for live connections, the last error
    /// and next retry for targets. The daemon prefixes the overlay name (and the
    /// encryption marker) for live connections, as Weave prints them.
    pub info: String,
    /// The live connection, if it is one.
    #[serde(skip)]
    pub conn: Option<ConnId>,
    /// The remote peer of a live connection.
    #[serde(skip)]
    pub remote: Option<PeerName>,
    /// When a waiting target is retried (`None`: never, or not waiting).
    #[serde(skip)]
    pub next_try: Option<Millis>,
}

/// The counts shown on the `Connections:` and `Peers:` lines of `weave status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// All entries of [`MeshStatus::connections`].
    pub total: usize,
    /// `established`.
    pub established: usize,
    /// `pending`.
    pub pending: usize,
    /// `retrying`.
    pub retrying: usize,
    /// `failed`.
    pub failed: usize,
    /// `connecting`.
    pub connecting: usize,
    /// Peers known (`Peers: N`).
    pub peers: usize,
    /// Established connections across all peers' entries (`with k established`).
    pub peer_established: usize,
    /// Pending connections across all peers' entries (`m pending connections`).
    pub peer_pending: usize,
}

/// The mesh part of Weave's router status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MeshStatus {
    /// Our name.
    #[serde(serialize_with = "ser_name")]
    pub name: PeerName,
    /// Our nickname.
    pub nick_name: String,
    /// Our listening port.
    pub port: u16,
    /// Whether discovery is on.
    pub peer_discovery: bool,
    /// Every known peer.
    pub peers: Vec<PeerStatus>,
    /// Data-plane unicast routes.
    pub unicast_routes: Vec<UnicastRouteStatus>,
    /// Data-plane broadcast routes, per reachable source.
    pub broadcast_routes: Vec<BroadcastRouteStatus>,
    /// Live connections, then targets not connected.
    pub connections: Vec<LocalConnectionStatus>,
    /// Connections that ended.
    pub termination_count: u64,
    /// The direct peers.
    pub targets: Vec<String>,
}

impl MeshStatus {
    /// Counts for the status text.
    pub fn connection_counts(&self) -> ConnectionCounts {
        let mut c = ConnectionCounts {
            total: self.connections.len(),
            peers: self.peers.len(),
            ..Default::default()
        };
        for l in &self.connections {
            match l.state.as_str() {
                "established" => c.established += 1,
                "pending" => c.pending += 1,
                "retrying" => c.retrying += 1,
                "failed" => c.failed += 1,
                "connecting" => c.connecting += 1,
                _ => {}
            }
        }
        for p in &self.peers {
            for pc in &p.connections {
                if pc.established {
                    c.peer_established += 1;
                } else {
                    c.peer_pending += 1;
                }
            }
        }
        c
    }
}

fn fmt_in(now: Millis, at: Millis) -> String {
    let d = now.until(at);
    format!("in {:.1}s", d.as_secs_f64())
}

impl Mesh {
    /// A status snapshot at `now`.
    pub fn status(&mut self, now: Millis) -> MeshStatus {
        self.routes();
        let peers = self.peers();
        let nick = |n: PeerName| peers.get(n).map(|p| p.nickname.clone()).unwrap_or_default();
        let peer_status: Vec<PeerStatus> = peers
            .iter()
            .map(|p| PeerStatus {
                name: p.name,
                nick_name: p.nickname.clone(),
                uid: p.uid,
                short_id: p.short_id.get(),
                version: p.version,
                connections: p
                    .connections
                    .iter()
                    .map(|(n, c)| PeerConnectionStatus {
                        name: *n,
                        nick_name: nick(*n),
                        address: c.remote_tcp_addr.clone(),
                        outbound: c.outbound,
                        established: c.established,
                    })
                    .collect(),
            })
            .collect();

        let mut connections: Vec<LocalConnectionStatus> = Vec::new();
        let live: Vec<(ConnId, PeerName, String, bool, bool)> = self
            .connections()
            .map(|(id, r, a, o, e)| (id, r, a.to_string(), o, e))
            .collect();
        for (id, remote, address, outbound, established) in live {
            let nick_name = self
                .conn_state(id)
                .map(|c| c.remote_nickname.clone())
                .unwrap_or_default();
            connections.push(LocalConnectionStatus {
                address,
                outbound,
                state: if established {
                    "established"
                } else {
                    "pending"
                }
                .into(),
                info: format!("{remote}({nick_name})"),
                conn: Some(id),
                remote: Some(remote),
                next_try: None,
            });
        }
        for (address, t) in self.maker().targets() {
            let err = t.last_error.clone();
            let (state, info, next_try) = match t.state {
                TargetState::Connected | TargetState::Suspended => continue,
                TargetState::Attempting => match err {
                    None => ("connecting", String::new(), None),
                    Some(e) => ("retrying", e, None),
                },
                TargetState::Waiting => {
                    let retry = match t.try_after {
                        Some(at) => fmt_in(now, at),
                        None => "never".to_string(),
                    };
                    match err {
                        None => ("waiting", format!("retry: {retry}"), t.try_after),
                        Some(e) => ("failed", format!("{e}, retry: {retry}"), t.try_after),
                    }
                }
            };
            connections.push(LocalConnectionStatus {
                address: address.clone(),
                outbound: true,
                state: state.into(),
                info,
                conn: None,
                remote: None,
                next_try,
            });
        }

        let routes = self.routes();
        let unicast_routes: Vec<UnicastRouteStatus> = routes
            .unicast_table()
            .iter()
            .map(|(d, v)| UnicastRouteStatus { dest: *d, via: *v })
            .collect();
        let sources: Vec<PeerName> = unicast_routes.iter().map(|r| r.dest).collect();
        let mut broadcast_routes = Vec::new();
        for s in sources {
            let via = self.broadcast_routes(s);
            broadcast_routes.push(BroadcastRouteStatus { source: s, via });
        }

        MeshStatus {
            name: self.name(),
            nick_name: self.nickname().to_string(),
            port: self.port(),
            peer_discovery: self.maker().discovery(),
            peers: peer_status,
            unicast_routes,
            broadcast_routes,
            connections,
            termination_count: self.maker().termination_count(),
            targets: self.maker().direct_peers(),
        }
    }
}
