//! The messages between the mesh actor (`mesh.rs`) and the data plane (`dataplane.rs`).
//!
//! The mesh actor owns the TCP connections; the data plane owns the overlays (the kernel
//! VXLAN fast path and the userspace sleeve) and moves frames on its own threads. They talk
//! only through these messages, so neither blocks the other.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use weft_mesh::{ConnId, Routes};
use weft_wire::crypto::SessionKey;
use weft_wire::framing::ProtocolMsg;
use weft_wire::PeerName;

/// A mesh connection whose handshake finished and which the mesh admitted.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub conn: ConnId,
    pub remote: PeerName,
    pub remote_nickname: String,
    pub conn_uid: u64,
    pub outbound: bool,
    /// The remote's TCP address (its IP is the overlay's remote IP).
    pub remote_tcp: SocketAddr,
    /// The remote's `Overlays` feature, if it sent one (a Weave peer without it is sleeve-only,
    /// in Weave's compat mode).
    pub remote_overlays: Option<Vec<String>>,
    /// The session key when the connection is untrusted and a password is set.
    pub session_key: Option<SessionKey>,
}

/// Mesh actor → data plane.
#[derive(Debug)]
pub enum ToDataPlane {
    /// Prepare and confirm the overlays of a new connection.
    ConnUp(Box<ConnInfo>),
    /// The connection ended: stop its overlays.
    ConnDown(ConnId),
    /// An overlay control message received on the connection (tags 1–3 and 7).
    Control { conn: ConnId, msg: ProtocolMsg },
    /// The mesh's route tables changed.
    Routes(Box<Routes>),
    /// The address ranges this node owns changed (for NO_MASQ_LOCAL).
    LocalRanges(Vec<ipnet::Ipv4Net>),
}

/// Data plane → mesh actor.
#[derive(Debug)]
pub enum FromDataPlane {
    /// Send this overlay control message on the connection.
    Control { conn: ConnId, msg: ProtocolMsg },
    /// An overlay of the connection is established: the connection carries data.
    Established(ConnId),
    /// No overlay works any more: close the connection with this reason.
    Failed { conn: ConnId, reason: String },
    /// The connection's overlay attributes changed (`name`, `encrypted`, `mtu`, `why`): shown by
    /// `weft status connections` and `/report`.
    Attrs {
        conn: ConnId,
        attrs: BTreeMap<String, String>,
    },
}
