//! Per-connection state after the handshake, and the rules for admitting a
//! connection into the mesh.
//!
//! The byte-level handshake is `weft_wire::Handshake`'s job. Its outcome — the
//! remote's [`Features`], the connection UID (`localConnID XOR remoteConnID`, the
//! same on both ends), whether we dialled, and the remote address — is what
//! [`Mesh::handle_connection_up`](crate::Mesh::handle_connection_up) consumes as
//! [`ConnectionParams`]. Admission follows Weave:
//!
//! 1. a remote with our name and our UID is ourself ([`ConnectError::ConnectToSelf`]);
//!    our name with another UID is a clone ([`ConnectError::NameCollision`]); both
//!    make the target *never retry*;
//! 2. the remote is registered in the topology table and referenced (so topology
//!    arriving on the link cannot garbage-collect it); a connection to a
//!    *discovered* target must lead to a peer we already know;
//! 3. if we already have a connection to that peer, the one with the **smaller
//!    connection UID** survives on both ends; equal UIDs drop both;
//! 4. the connection limit (`--conn-limit`, default 200, 0 = unlimited) applies;
//! 5. the connection is added to our topology entry (version bump, topology
//!    update queued) and, if the peer restarted (new UID) or was not reachable
//!    before, every channel's full gossip is sent down the new connection.
//!
//! **Sequencing (Weave's note 13).** The driver prepares the overlay before calling
//! `handle_connection_up`, confirms it after it returns `Ok`, and only then starts
//! feeding received messages to the mesh. Since the call is synchronous, nothing
//! received on the link can be processed before the connection holds its reference.
//!
//! **Liveness.** A heartbeat (tag 0) is sent every 30 s; if nothing at all is
//! received for 60 s the mesh closes the connection. The *established* flag is set
//! when the driver reports that the data-plane overlay works
//! ([`Mesh::connection_established`](crate::Mesh::connection_established)); until then
//! the connection counts as *pending* and carries no data-plane routes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use weft_wire::{Features, PeerName, ShortId};

use crate::gossip::ChannelSender;
use crate::time::Millis;

/// Interval between TCP heartbeats (`tcpHeartbeat`).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Read deadline: a connection silent for this long is closed (`2*tcpHeartbeat`).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Weave's default `--conn-limit`.
pub const DEFAULT_CONN_LIMIT: usize = 200;

/// Identifies a connection admitted into the mesh. Never reused by one `Mesh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// The outcome of a successful handshake, as the mesh needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionParams {
    /// The remote's `Name`.
    pub remote_name: PeerName,
    /// The remote's `NickName`.
    pub remote_nickname: String,
    /// The remote's `UID`.
    pub remote_uid: u64,
    /// The remote's `ShortID`, if it sent one.
    pub remote_short_id: Option<ShortId>,
    /// The connection UID (`localConnID ^ remoteConnID`).
    pub conn_uid: u64,
    /// Whether we dialled.
    pub outbound: bool,
    /// The remote TCP address, `ip:port`. For an outbound connection this should
    /// be the target dialled (what [`Action::Dial`](crate::Action::Dial) named).
    pub remote_addr: String,
}

impl ConnectionParams {
    /// Builds the parameters from the remote features of a finished handshake.
    pub fn from_features(
        remote: &Features,
        conn_uid: u64,
        outbound: bool,
        remote_addr: impl Into<String>,
    ) -> ConnectionParams {
        ConnectionParams {
            remote_name: remote.name,
            remote_nickname: remote.nick_name.clone(),
            remote_uid: remote.uid,
            remote_short_id: remote.short_id,
            conn_uid,
            outbound,
            remote_addr: remote_addr.into(),
        }
    }
}

/// Why a connection was refused (or later closed) by the mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The remote is this very process.
    #[error("cannot connect to ourself")]
    ConnectToSelf,
    /// Another peer uses our name.
    #[error("peer name collision: remote {name} has UID {their_uid}, ours is {our_uid}; give one of the peers another name (cloned machines share machine-id/product_uuid)")]
    NameCollision {
        /// The shared name.
        name: PeerName,
        /// Our UID.
        our_uid: u64,
        /// Theirs.
        their_uid: u64,
    },
    /// A connection to a discovered target led to a peer we do not know.
    #[error("found unknown remote name {name} at {address}")]
    UnknownPeer {
        /// The remote's name.
        name: PeerName,
        /// The address dialled.
        address: String,
    },
    /// We already have a connection to that peer and it wins.
    #[error("multiple connections to {remote} added to {local}")]
    Duplicate {
        /// The remote peer.
        remote: PeerName,
        /// Ourself.
        local: PeerName,
    },
    /// `--conn-limit` reached.
    #[error("connection limit reached ({0})")]
    ConnLimit(usize),
}

impl ConnectError {
    /// Whether the target must never be retried (ourself, name collision).
    pub fn never_retry(&self) -> bool {
        matches!(
            self,
            ConnectError::ConnectToSelf | ConnectError::NameCollision { .. }
        )
    }
}

/// A live connection's state inside the mesh.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) remote: PeerName,
    pub(crate) remote_nickname: String,
    pub(crate) conn_uid: u64,
    pub(crate) outbound: bool,
    pub(crate) remote_addr: String,
    pub(crate) established: bool,
    pub(crate) last_received: Millis,
    pub(crate) next_heartbeat: Millis,
    pub(crate) blocked: bool,
    pub(crate) senders: BTreeMap<String, ChannelSender>,
}

impl Conn {
    pub(crate) fn new(p: &ConnectionParams, now: Millis) -> Conn {
        Conn {
            remote: p.remote_name,
            remote_nickname: p.remote_nickname.clone(),
            conn_uid: p.conn_uid,
            outbound: p.outbound,
            remote_addr: p.remote_addr.clone(),
            established: false,
            last_received: now,
            next_heartbeat: now + HEARTBEAT_INTERVAL,
            blocked: false,
            senders: BTreeMap::new(),
        }
    }

    pub(crate) fn read_deadline(&self) -> Millis {
        self.last_received + READ_TIMEOUT
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.blocked && self.senders.values().any(|s| !s.is_empty())
    }
}
