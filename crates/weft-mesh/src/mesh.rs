//! The top-level state machine tying topology, routes, gossip, connections and the
//! connection maker together (Weave's `Router` and `localPeer`).
//!
//! # Driving a `Mesh`
//!
//! The mesh is sans-IO, in the style of `quinn-proto`: it owns no sockets, timers,
//! threads or global randomness. The driver
//!
//! 1. feeds it events —
//!    [`handle_connection_up`](Mesh::handle_connection_up) after a handshake,
//!    [`handle_message`](Mesh::handle_message) for each received frame body,
//!    [`connection_established`](Mesh::connection_established) when the overlay
//!    works, [`handle_connection_down`](Mesh::handle_connection_down) when a socket
//!    closes, [`handle_dial_failed`](Mesh::handle_dial_failed) when a dial or
//!    handshake fails, and [`handle_timeout`](Mesh::handle_timeout) when the time
//!    returned by [`poll_timeout`](Mesh::poll_timeout) has come;
//! 2. after every call, drains [`poll_action`](Mesh::poll_action) and carries out
//!    each [`Action`]: send a frame body on a connection, close a connection, dial
//!    an address, hand an overlay control message to the overlay, or react to
//!    route/short-ID/peer changes.
//!
//! Every entry point takes the current time as [`Millis`]. Randomness comes from a
//! `StdRng` seeded from [`MeshConfig::seed`], so a simulation is reproducible.
//!
//! A driver loop, in outline (one task owning the `Mesh`):
//!
//! ```text
//! loop {
//!     select! {
//!         handshake done (features, conn_uid, outbound, addr) =>
//!             match mesh.handle_connection_up(ConnectionParams::from_features(..), now) {
//!                 Ok(id) => { confirm overlay; start reading frames for id }
//!                 Err(e) => close the socket,
//!             },
//!         frame body on id  => mesh.handle_message(id, &body, now),
//!         overlay of id up  => mesh.connection_established(id, now),
//!         socket id closed  => mesh.handle_connection_down(id, &why, now),
//!         dial/handshake to addr failed => mesh.handle_dial_failed(&addr, &why, now),
//!         sleep_until(mesh.poll_timeout()) => mesh.handle_timeout(now),
//!     }
//!     while let Some(action) = mesh.poll_action() { carry it out }
//! }
//! ```
//!
//! # What happens inside
//!
//! - Local connection changes bump our version and queue a topology update about
//!   ourself (and the new remote), coalesced for 1 s and then sent to a random
//!   subset of neighbours. Received topology is merged
//!   ([`Peers::apply_update`]); what improved our view is relayed to random
//!   neighbours, so topology spreads epidemically.
//! - Every gossip interval (30 s) each channel's full state goes to random
//!   neighbours; a new or restarted peer gets every channel's full state at once.
//! - Unicasts are relayed hop by hop along [`Routes::unicast_all`]; broadcasts
//!   along [`Routes::broadcast_all`] trees, keeping the original source.
//! - Routes are recomputed lazily whenever topology changed; a
//!   [`Action::RoutesChanged`] is emitted at most every 100 ms, after which the
//!   connection maker re-reads the topology for new targets.
//! - Gossip to relay is queued; when [`poll_action`](Mesh::poll_action) runs out
//!   of other actions, the mesh garbage-collects the topology once, recomputes
//!   routes once, picks each item's connections, and hands it to their
//!   per-connection, per-channel senders, where it merges with what is pending.
//!   Then the senders are encoded (topology entries: as the table holds them
//!   *then*, each entry encoded once and reused until it changes) into `Send`s.
//!   All input handled between two polls is thus processed as one batch. A driver whose
//!   write queue for a connection is full can call
//!   [`set_connection_blocked`](Mesh::set_connection_blocked) so gossip for it keeps
//!   merging instead of queueing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_wire::framing::ProtocolMsg;
use weft_wire::{GossipMsg, GossipUnicastMsg, PeerName, ShortId, UNKNOWN_PEER_NAME};

use crate::connection::{
    Conn, ConnId, ConnectError, ConnectionParams, DEFAULT_CONN_LIMIT, HEARTBEAT_INTERVAL,
};
use crate::gossip::{
    ChannelSender, GossipContext, GossipData, GossipHandler, Outgoing, Pending, SurrogateGossiper,
    GOSSIP_INTERVAL, TOPOLOGY_CHANNEL,
};
use crate::maker::{ConnectionMaker, OurConnection, PeerAddrError, DEFAULT_PORT};
use crate::peers::{AppliedUpdate, ConnSummary, LocalIdentity, Peer, PeerChanges, Peers};
use crate::routes::Routes;
use crate::time::Millis;
use crate::topology::{self, TopologyError};

/// Topology updates are coalesced for this long (`deferTopologyUpdateDuration`).
pub const TOPOLOGY_UPDATE_DELAY: Duration = Duration::from_secs(1);
/// Route-change notifications (and the connection maker's re-read of the
/// topology) are coalesced for this long.
pub const ROUTE_NOTIFY_DELAY: Duration = Duration::from_millis(100);
/// Most gossip channels (registered plus surrogates for unknown names) kept;
/// messages on further unknown channels are ignored.
pub const MAX_CHANNELS: usize = 256;

/// Gossip waiting for its targets, which are chosen when actions are polled
/// (after one garbage collection and route calculation for the whole batch).
#[derive(Debug)]
enum Relay {
    /// To random neighbours, never `except`.
    Gossip {
        channel: String,
        except: PeerName,
        data: Pending,
    },
    /// Along `src`'s broadcast tree.
    Broadcast {
        channel: String,
        src: PeerName,
        data: Pending,
    },
}

/// Configuration of a [`Mesh`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// Our peer name.
    pub name: PeerName,
    /// Our nickname.
    pub nickname: String,
    /// Our UID for this incarnation; `None` picks a random non-zero one.
    pub uid: Option<u64>,
    /// Our initial short ID; `None` picks a random one.
    pub short_id: Option<ShortId>,
    /// The TCP port we listen on (completes port-less targets; discovery).
    pub port: u16,
    /// `--conn-limit`: most connections, 0 = unlimited.
    pub conn_limit: usize,
    /// Whether to discover targets from the topology.
    pub peer_discovery: bool,
    /// Interval of periodic full-state gossip.
    pub gossip_interval: Duration,
    /// Seed of the mesh's random number generator.
    pub seed: u64,
}

impl MeshConfig {
    /// Weave's defaults: port 6783, connection limit 200, discovery on, 30 s
    /// gossip interval, random UID and short ID.
    pub fn new(name: PeerName, nickname: impl Into<String>, seed: u64) -> MeshConfig {
        MeshConfig {
            name,
            nickname: nickname.into(),
            uid: None,
            short_id: None,
            port: DEFAULT_PORT,
            conn_limit: DEFAULT_CONN_LIMIT,
            peer_discovery: true,
            gossip_interval: GOSSIP_INTERVAL,
            seed,
        }
    }
}

/// Something the driver must do (or know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a frame body (`[tag][payload]`) on a connection; the driver frames
    /// (and encrypts) it.
    Send {
        /// The connection.
        conn: ConnId,
        /// The frame body.
        body: Vec<u8>,
    },
    /// Close a connection; the mesh has already forgotten it (do not report it
    /// down again — doing so is harmless).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: String,
    },
    /// Dial `address` (`host:port`), handshake, then call
    /// [`Mesh::handle_connection_up`] (with `remote_addr` = `address`) or
    /// [`Mesh::handle_dial_failed`].
    Dial {
        /// Where.
        address: String,
    },
    /// An overlay control message (tags 1–3 and 7) for the connection's overlay.
    Overlay {
        /// The connection it arrived on.
        conn: ConnId,
        /// The message.
        msg: ProtocolMsg,
    },
    /// The route tables changed (fastdp: invalidate flows).
    RoutesChanged,
    /// Which peer owns which short ID changed (fastdp: invalidate flows). Our own
    /// short ID may have changed too: see [`Mesh::short_id`].
    ShortIdsInvalidated,
    /// Peers were garbage-collected (MAC cache, IPAM nicknames, DNS: forget them).
    PeersRemoved(Vec<Peer>),
}

/// Errors of the driver-facing gossip calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// No route to the destination of a unicast.
    #[error("unknown relay destination: {0} (the peer is not reachable)")]
    UnknownDestination(PeerName),
    /// The route's next hop has no live connection (topology is stale).
    #[error("unable to find connection to relay peer {0}")]
    NoConnectionToRelay(PeerName),
    /// The `topology` channel belongs to the mesh.
    #[error("the \"topology\" gossip channel is reserved for the mesh itself")]
    ReservedChannel,
    /// Too many channels.
    #[error("too many gossip channels (at most {MAX_CHANNELS})")]
    TooManyChannels,
    /// A message could not be encoded.
    #[error("encoding gossip message: {0}")]
    Encode(String),
}

/// Traffic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Frame bodies handed to the driver.
    pub msgs_sent: u64,
    /// Their total size in bytes (without framing).
    pub bytes_sent: u64,
    /// Frame bodies received.
    pub msgs_received: u64,
    /// Their total size in bytes.
    pub bytes_received: u64,
    /// Topology updates received.
    pub topology_msgs_received: u64,
}

/// The mesh state machine. See the module documentation.
pub struct Mesh {
    port: u16,
    conn_limit: usize,
    gossip_interval: Duration,
    rng: StdRng,
    peers: Peers,
    routes: Routes,
    routes_dirty: bool,
    routes_changed: bool,
    route_notify_at: Option<Millis>,
    maker: ConnectionMaker,
    conns: BTreeMap<ConnId, Conn>,
    by_peer: BTreeMap<PeerName, ConnId>,
    next_conn_id: u64,
    channels: BTreeMap<String, Box<dyn GossipHandler>>,
    pending_topology: BTreeSet<PeerName>,
    topology_at: Option<Millis>,
    gc_pending: bool,
    relays: Vec<Relay>,
    /// The latest time seen by an entry point.
    now: Millis,
    next_gossip: Millis,
    actions: VecDeque<Action>,
    stats: MeshStats,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("name", &self.peers.our_name())
            .field("peers", &self.peers.len())
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

/// The text a connection is closed with.
fn conn_reason(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Mesh {
    /// A mesh with only ourself, at time `now`.
    pub fn new(config: MeshConfig, now: Millis) -> Mesh {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let uid = match config.uid {
            Some(u) if u != 0 => u,
            _ => loop {
                let u: u64 = rng.random();
                if u != 0 {
                    break u;
                }
            },
        };
        let short_id = config
            .short_id
            .unwrap_or_else(|| ShortId::new(rng.random_range(0..=ShortId::MAX)).expect("in range"));
        let peers = Peers::new(LocalIdentity {
            name: config.name,
            nickname: config.nickname.clone(),
            uid,
            short_id,
        });
        let routes = Routes::new(&peers);
        Mesh {
            port: config.port,
            conn_limit: config.conn_limit,
            gossip_interval: config.gossip_interval,
            rng,
            peers,
            routes,
            routes_dirty: false,
            routes_changed: false,
            route_notify_at: None,
            maker: ConnectionMaker::new(config.port, config.peer_discovery),
            conns: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            next_conn_id: 1,
            channels: BTreeMap::new(),
            pending_topology: BTreeSet::new(),
            topology_at: None,
            gc_pending: false,
            relays: Vec::new(),
            now,
            next_gossip: now + config.gossip_interval,
            actions: VecDeque::new(),
            stats: MeshStats::default(),
        }
    }

    // ----- identity and read access ---------------------------------------------

    /// Our name.
    pub fn name(&self) -> PeerName {
        self.peers.our_name()
    }

    /// Our nickname.
    pub fn nickname(&self) -> &str {
        &self.peers.ourself().nickname
    }

    /// Our UID (for the handshake's `UID` feature).
    pub fn uid(&self) -> u64 {
        self.peers.ourself().uid
    }

    /// Our current short ID (for the handshake's `ShortID` feature).
    pub fn short_id(&self) -> ShortId {
        self.peers.ourself().short_id
    }

    /// Our listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The topology table. Peers made unreachable by topology received since
    /// the last [`poll_action`](Self::poll_action) may still be listed.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The route tables, brought up to date.
    pub fn routes(&mut self) -> &Routes {
        self.collect_garbage();
        self.ensure_routes();
        &self.routes
    }

    /// Next hops of a data-plane broadcast from `source`.
    pub fn broadcast_routes(&mut self, source: PeerName) -> Vec<PeerName> {
        self.ensure_routes();
        self.routes.broadcast(source)
    }

    /// Next hops of a gossip broadcast from `source`.
    pub fn broadcast_all_routes(&mut self, source: PeerName) -> Vec<PeerName> {
        self.ensure_routes();
        self.routes.broadcast_all(source)
    }

    /// The connection maker (targets, direct peers).
    pub fn maker(&self) -> &ConnectionMaker {
        &self.maker
    }

    /// Traffic counters.
    pub fn stats(&self) -> MeshStats {
        self.stats
    }

    /// Our live connections: id, remote peer, remote address, outbound, established.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, PeerName, &str, bool, bool)> {
        self.conns.iter().map(|(id, c)| {
            (
                *id,
                c.remote,
                c.remote_addr.as_str(),
                c.outbound,
                c.established,
            )
        })
    }

    /// The connection to `peer`, if any.
    pub fn connection_to(&self, peer: PeerName) -> Option<ConnId> {
        self.by_peer.get(&peer).copied()
    }

    pub(crate) fn conn_state(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(&id)
    }

    // ----- channels -------------------------------------------------------------

    /// Registers the handler of a gossip channel (replacing a surrogate).
    pub fn register_channel(
        &mut self,
        name: &str,
        handler: Box<dyn GossipHandler>,
    ) -> Result<(), MeshError> {
        if name == TOPOLOGY_CHANNEL {
            return Err(MeshError::ReservedChannel);
        }
        if !self.channels.contains_key(name) && self.channels.len() >= MAX_CHANNELS {
            return Err(MeshError::TooManyChannels);
        }
        self.channels.insert(name.to_string(), handler);
        Ok(())
    }

    /// The handler of `channel`, if it is a `T`.
    pub fn handler_mut<T: GossipHandler>(&mut self, channel: &str) -> Option<&mut T> {
        let h: &mut dyn GossipHandler = self.channels.get_mut(channel)?.as_mut();
        let any: &mut dyn std::any::Any = h;
        any.downcast_mut::<T>()
    }

    /// The handler of `channel`, if it is a `T`.
    pub fn handler<T: GossipHandler>(&self, channel: &str) -> Option<&T> {
        let h: &dyn GossipHandler = self.channels.get(channel)?.as_ref();
        let any: &dyn std::any::Any = h;
        any.downcast_ref::<T>()
    }

    // ----- driver → mesh: targets -------------------------------------------------

    /// Adds direct peers (`host[:port]`), or replaces the list; dials as due.
    pub fn initiate_connections<S: AsRef<str>>(
        &mut self,
        peers: &[S],
        replace: bool,
        now: Millis,
    ) -> Result<(), Vec<PeerAddrError>> {
        self.tick(now);
        self.maker.initiate_connections(peers, replace)?;
        self.run_maker(now);
        Ok(())
    }

    /// Removes direct peers.
    pub fn forget_connections<S: AsRef<str>>(&mut self, peers: &[S], now: Millis) {
        self.tick(now);
        self.maker.forget_connections(peers);
        self.run_maker(now);
    }

    /// A dial (or its handshake) to `address` failed before the connection could
    /// be added. `error` is shown in status.
    pub fn handle_dial_failed(&mut self, address: &str, error: &str, now: Millis) {
        self.tick(now);
        self.maker
            .connection_aborted(address, error.to_string(), false, now, &mut self.rng);
        self.run_maker(now);
    }

    /// Like [`handle_dial_failed`](Self::handle_dial_failed) for a failure that
    /// must never be retried.
    pub fn handle_dial_failed_permanently(&mut self, address: &str, error: &str, now: Millis) {
        self.tick(now);
        self.maker
            .connection_aborted(address, error.to_string(), true, now, &mut self.rng);
        self.run_maker(now);
    }

    // ----- driver → mesh: connections ---------------------------------------------

    /// Admits a connection whose handshake finished (see
    /// [`connection`](crate::connection) for the rules). On `Err` the driver closes
    /// the socket; nothing else is needed.
    pub fn handle_connection_up(
        &mut self,
        p: ConnectionParams,
        now: Millis,
    ) -> Result<ConnId, ConnectError> {
        self.tick(now);
        let r = self.admit(&p, now);
        match &r {
            Ok(_) => {
                if p.outbound {
                    self.maker.connection_created(&p.remote_addr);
                }
            }
            Err(e) => {
                let to_self = matches!(e, ConnectError::ConnectToSelf);
                self.maker.connection_terminated(
                    &p.remote_addr,
                    e.to_string(),
                    e.never_retry(),
                    to_self,
                    now,
                    &mut self.rng,
                );
            }
        }
        self.run_maker(now);
        r
    }

    fn admit(&mut self, p: &ConnectionParams, now: Millis) -> Result<ConnId, ConnectError> {
        self.collect_garbage();
        let me = self.peers.ourself();
        let name = p.remote_name;
        if name == me.name {
            return Err(if p.remote_uid == me.uid {
                ConnectError::ConnectToSelf
            } else {
                ConnectError::NameCollision {
                    name,
                    our_uid: me.uid,
                    their_uid: p.remote_uid,
                }
            });
        }
        let accept_new = !p.outbound
            || self.maker.is_direct(&p.remote_addr)
            || !self.maker.targets().contains_key(&p.remote_addr);
        let mut ch = PeerChanges::default();
        let prior_uid = if accept_new {
            self.peers.fetch_with_default(
                name,
                &p.remote_nickname,
                p.remote_uid,
                p.remote_short_id,
                &mut self.rng,
                &mut ch,
            )
        } else {
            match self.peers.fetch_and_add_ref(name) {
                Some(u) => Some(u),
                None => {
                    return Err(ConnectError::UnknownPeer {
                        name,
                        address: p.remote_addr.clone(),
                    })
                }
            }
        };
        self.after_peer_changes(ch, now);
        let restarted = prior_uid.is_some_and(|u| u != p.remote_uid);

        if let Some(&dup) = self.by_peer.get(&name) {
            let dup_err = ConnectError::Duplicate {
                remote: name,
                local: self.name(),
            };
            let dup_uid = self.conns[&dup].conn_uid;
            if dup_uid <= p.conn_uid {
                if dup_uid == p.conn_uid {
                    // Both sides drop both.
                    self.remove_connection(dup, dup_err.to_string(), true, now);
                }
                self.release_ref(name, now);
                return Err(dup_err);
            }
            // The new connection wins; the old one goes without a version bump.
            self.by_peer.remove(&name);
            if let Some(old) = self.conns.remove(&dup) {
                self.peers.dereference(old.remote);
                self.actions.push_back(Action::Close {
                    conn: dup,
                    reason: dup_err.to_string(),
                });
                self.maker.connection_terminated(
                    &old.remote_addr,
                    dup_err.to_string(),
                    false,
                    false,
                    now,
                    &mut self.rng,
                );
            }
        }

        if self.conn_limit != 0 && self.by_peer.len() >= self.conn_limit {
            self.release_ref(name, now);
            return Err(ConnectError::ConnLimit(self.conn_limit));
        }

        self.ensure_routes();
        let was_connected = self.routes.unicast(name).is_some();
        let id = ConnId(self.next_conn_id);
        self.next_conn_id += 1;
        self.conns.insert(id, Conn::new(p, now));
        self.by_peer.insert(name, id);
        self.peers.add_local_connection(
            name,
            ConnSummary {
                remote_tcp_addr: p.remote_addr.clone(),
                outbound: p.outbound,
                established: false,
            },
        );
        self.topology_changed(now);
        self.queue_topology_update([self.name(), name], now);
        if restarted || !was_connected {
            self.send_all_gossip_down(id, now);
        }
        Ok(id)
    }

    fn tick(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    fn release_ref(&mut self, name: PeerName, now: Millis) {
        self.peers.dereference(name);
        let mut ch = PeerChanges::default();
        self.peers.garbage_collect(&mut self.rng, &mut ch);
        self.after_peer_changes(ch, now);
    }

    /// The overlay of `conn` is established (data can flow): marks the connection
    /// established in our topology entry.
    pub fn connection_established(&mut self, conn: ConnId, now: Millis) {
        self.tick(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.established = true;
        let remote = c.remote;
        if self.by_peer.get(&remote) == Some(&conn)
            && self.peers.set_local_connection_established(remote)
        {
            self.topology_changed(now);
            self.queue_topology_update([self.name()], now);
        }
    }

    /// The socket of `conn` closed (or the driver closed it) for `reason`.
    pub fn handle_connection_down(&mut self, conn: ConnId, reason: &str, now: Millis) {
        self.tick(now);
        self.remove_connection(conn, reason.to_string(), false, now);
    }

    /// Closes `conn` from the driver's side (e.g. the overlay failed): the mesh
    /// forgets it and emits [`Action::Close`].
    pub fn close_connection(&mut self, conn: ConnId, reason: &str, now: Millis) {
        self.tick(now);
        self.remove_connection(conn, reason.to_string(), true, now);
    }

    /// While blocked, gossip for `conn` is merged and held back instead of being
    /// emitted (the driver's write queue is full); unblocking releases it.
    pub fn set_connection_blocked(&mut self, conn: ConnId, blocked: bool) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.blocked = blocked;
        }
    }

    fn remove_connection(&mut self, id: ConnId, reason: String, emit_close: bool, now: Millis) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let registered = self.by_peer.get(&conn.remote) == Some(&id);
        if registered {
            self.by_peer.remove(&conn.remote);
        }
        self.peers.dereference(conn.remote);
        if registered && self.peers.remove_local_connection(conn.remote) {
            // Collect first so the update we send names no unreachable peers.
            let mut ch = PeerChanges::default();
            self.peers.garbage_collect(&mut self.rng, &mut ch);
            self.after_peer_changes(ch, now);
            self.topology_changed(now);
            self.queue_topology_update([self.name()], now);
        }
        if emit_close {
            self.actions.push_back(Action::Close {
                conn: id,
                reason: reason.clone(),
            });
        }
        self.maker.connection_terminated(
            &conn.remote_addr,
            reason,
            false,
            false,
            now,
            &mut self.rng,
        );
        self.run_maker(now);
    }

    /// A frame body received on `conn`. Errors (malformed message, a handler's
    /// error) close the connection, as in Weave.
    pub fn handle_message(&mut self, conn: ConnId, body: &[u8], now: Millis) {
        self.tick(now);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_received = now;
        self.stats.msgs_received += 1;
        self.stats.bytes_received += body.len() as u64;
        let msg = match ProtocolMsg::decode(body) {
            Ok(m) => m,
            Err(e) => {
                self.close_connection(conn, &conn_reason(e), now);
                return;
            }
        };
        let result = match msg {
            ProtocolMsg::Heartbeat | ProtocolMsg::Unknown { .. } => Ok(()),
            m @ (ProtocolMsg::Reserved { .. } | ProtocolMsg::OverlayControl(_)) => {
                self.actions.push_back(Action::Overlay { conn, msg: m });
                Ok(())
            }
            ProtocolMsg::Gossip(m) => self.deliver_gossip(m, now),
            ProtocolMsg::GossipBroadcast(m) => self.deliver_broadcast(m, now),
            ProtocolMsg::GossipUnicast(m) => self.deliver_unicast(m, body, now),
        };
        if let Err(reason) = result {
            self.close_connection(conn, &reason, now);
        }
    }

    // ----- driver → mesh: gossip --------------------------------------------------

    /// Sends `msg` to `dst` on `channel`, relayed hop by hop.
    pub fn gossip_unicast(
        &mut self,
        channel: &str,
        dst: PeerName,
        msg: Vec<u8>,
    ) -> Result<(), MeshError> {
        if channel == TOPOLOGY_CHANNEL {
            return Err(MeshError::ReservedChannel);
        }
        self.send_unicast(channel, dst, msg)
    }

    /// Broadcasts `data` from us on `channel` along our broadcast tree.
    pub fn gossip_broadcast(
        &mut self,
        channel: &str,
        data: Box<dyn GossipData>,
    ) -> Result<(), MeshError> {
        if channel == TOPOLOGY_CHANNEL {
            return Err(MeshError::ReservedChannel);
        }
        let me = self.name();
        self.relay_broadcast(channel, me, Pending::Data(data));
        Ok(())
    }

    /// Gossips `data` on `channel` to a random subset of neighbours.
    pub fn gossip_neighbour_subset(
        &mut self,
        channel: &str,
        data: Box<dyn GossipData>,
    ) -> Result<(), MeshError> {
        if channel == TOPOLOGY_CHANNEL {
            return Err(MeshError::ReservedChannel);
        }
        let me = self.name();
        self.relay(channel, me, Pending::Data(data));
        Ok(())
    }

    // ----- timers and actions -----------------------------------------------------

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut t = Some(self.next_gossip);
        let mut min = |x: Option<Millis>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        min(self.topology_at);
        min(self.route_notify_at);
        min(self.maker.next_wakeup());
        for c in self.conns.values() {
            min(Some(c.next_heartbeat));
            min(Some(c.read_deadline()));
        }
        t
    }

    /// Runs everything due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.tick(now);
        // Liveness.
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if now >= c.read_deadline() {
                let reason = format!(
                    "read timeout: nothing received from {} for {}s",
                    c.remote,
                    crate::connection::READ_TIMEOUT.as_secs()
                );
                self.close_connection(id, &reason, now);
                continue;
            }
            if now >= c.next_heartbeat {
                while c.next_heartbeat <= now {
                    c.next_heartbeat += HEARTBEAT_INTERVAL;
                }
                let body = vec![weft_wire::framing::tag::HEARTBEAT];
                self.push_send(id, body);
            }
        }
        // Coalesced topology update.
        if self.topology_at.is_some_and(|t| t <= now) {
            self.topology_at = None;
            let names = std::mem::take(&mut self.pending_topology);
            let me = self.name();
            self.relay(TOPOLOGY_CHANNEL, me, Pending::Topology(names));
        }
        // Route notification and the maker's look at the new topology.
        if self.route_notify_at.is_some_and(|t| t <= now) {
            self.route_notify_at = None;
            self.ensure_routes();
            if std::mem::take(&mut self.routes_changed) {
                self.actions.push_back(Action::RoutesChanged);
            }
            self.run_maker(now);
        }
        // Periodic gossip.
        if self.next_gossip <= now {
            while self.next_gossip <= now {
                self.next_gossip += self.gossip_interval;
            }
            self.send_all_gossip(now);
        }
        if self.maker.next_wakeup().is_some_and(|t| t <= now) {
            self.run_maker(now);
        }
    }

    /// The next action for the driver, if any. Pending gossip is encoded and
    /// emitted once all other actions are drained.
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() {
            self.flush_senders();
        }
        let a = self.actions.pop_front()?;
        if let Action::Send { body, .. } = &a {
            self.stats.msgs_sent += 1;
            self.stats.bytes_sent += body.len() as u64;
        }
        Some(a)
    }

    // ----- internals: topology ----------------------------------------------------

    fn after_peer_changes(&mut self, ch: PeerChanges, now: Millis) {
        if !ch.removed.is_empty() {
            self.topology_changed(now);
            self.actions.push_back(Action::PeersRemoved(ch.removed));
        }
        if ch.short_ids_invalidated {
            self.actions.push_back(Action::ShortIdsInvalidated);
        }
        if ch.local_peer_modified {
            self.topology_changed(now);
            self.queue_topology_update([self.name()], now);
        }
    }

    fn topology_changed(&mut self, now: Millis) {
        self.routes_dirty = true;
        if self.route_notify_at.is_none() {
            self.route_notify_at = Some(now + ROUTE_NOTIFY_DELAY);
        }
    }

    fn ensure_routes(&mut self) {
        if self.routes_dirty {
            self.routes_dirty = false;
            if self.routes.recalculate(&self.peers) {
                self.routes_changed = true;
            }
        }
    }

    fn queue_topology_update(&mut self, names: impl IntoIterator<Item = PeerName>, now: Millis) {
        self.pending_topology.extend(names);
        if self.topology_at.is_none() {
            self.topology_at = Some(now + TOPOLOGY_UPDATE_DELAY);
        }
    }

    fn apply_topology(
        &mut self,
        bytes: &[u8],
        now: Millis,
    ) -> Result<AppliedUpdate, TopologyError> {
        self.stats.topology_msgs_received += 1;
        let updates = topology::decode_update(bytes)?;
        let mut ch = PeerChanges::default();
        let (applied, changed) = self.peers.merge_update(&updates, &mut self.rng, &mut ch);
        if changed {
            self.gc_pending = true;
            self.topology_changed(now);
        }
        self.after_peer_changes(ch, now);
        Ok(applied)
    }

    // ----- internals: delivery ------------------------------------------------------

    fn deliver_gossip(&mut self, m: GossipMsg, now: Millis) -> Result<(), String> {
        if m.channel == TOPOLOGY_CHANNEL {
            let applied = self.apply_topology(&m.msg, now).map_err(conn_reason)?;
            if !applied.improved.is_empty() {
                self.relay(TOPOLOGY_CHANNEL, m.src, Pending::Topology(applied.improved));
            }
            return Ok(());
        }
        let delta = self
            .with_handler(&m.channel, now, |h, ctx| h.on_gossip(ctx, &m.msg))
            .transpose()
            .map_err(conn_reason)?
            .flatten();
        if let Some(d) = delta {
            self.relay(&m.channel, m.src, Pending::Data(d));
        }
        Ok(())
    }

    fn deliver_broadcast(&mut self, m: GossipMsg, now: Millis) -> Result<(), String> {
        if m.channel == TOPOLOGY_CHANNEL {
            let applied = self.apply_topology(&m.msg, now).map_err(conn_reason)?;
            if !applied.received.is_empty() {
                self.relay_broadcast(TOPOLOGY_CHANNEL, m.src, Pending::Topology(applied.received));
            }
            return Ok(());
        }
        let src = m.src;
        let data = self
            .with_handler(&m.channel, now, |h, ctx| {
                h.on_gossip_broadcast(ctx, src, &m.msg)
            })
            .transpose()
            .map_err(conn_reason)?
            .flatten();
        if let Some(d) = data {
            self.relay_broadcast(&m.channel, src, Pending::Data(d));
        }
        Ok(())
    }

    fn deliver_unicast(
        &mut self,
        m: GossipUnicastMsg,
        body: &[u8],
        now: Millis,
    ) -> Result<(), String> {
        if m.dst != self.name() {
            // Relay the original bytes; failure to relay is not the sender's fault.
            let _ = self.relay_unicast(m.dst, body.to_vec());
            return Ok(());
        }
        if m.channel == TOPOLOGY_CHANNEL {
            return Err("unexpected topology gossip unicast".into());
        }
        let src = m.src;
        self.with_handler(&m.channel, now, |h, ctx| {
            h.on_gossip_unicast(ctx, src, &m.msg)
        })
        .transpose()
        .map_err(conn_reason)?;
        Ok(())
    }

    /// Calls the handler of `channel` (creating a surrogate for an unknown name,
    /// unless there are too many channels: then `None`), then carries out what it
    /// queued.
    fn with_handler<R>(
        &mut self,
        channel: &str,
        now: Millis,
        f: impl FnOnce(&mut dyn GossipHandler, &mut GossipContext<'_>) -> R,
    ) -> Option<R> {
        if !self.channels.contains_key(channel) {
            if self.channels.len() >= MAX_CHANNELS {
                return None;
            }
            self.channels.insert(
                channel.to_string(),
                Box::new(SurrogateGossiper::new(self.gossip_interval)),
            );
        }
        let mut outbox = Vec::new();
        let handler = self.channels.get_mut(channel)?;
        let mut ctx = GossipContext {
            now,
            channel,
            peers: &self.peers,
            outbox: &mut outbox,
        };
        let r = f(handler.as_mut(), &mut ctx);
        self.process_outbox(channel, outbox);
        Some(r)
    }

    fn process_outbox(&mut self, channel: &str, outbox: Vec<Outgoing>) {
        let me = self.name();
        for o in outbox {
            match o {
                Outgoing::Unicast { dst, msg } => {
                    // A handler cannot act on a failure here any better than on
                    // a lost message; routes will come back.
                    let _ = self.send_unicast(channel, dst, msg);
                }
                Outgoing::Broadcast(d) => self.relay_broadcast(channel, me, Pending::Data(d)),
                Outgoing::NeighbourSubset(d) => self.relay(channel, me, Pending::Data(d)),
            }
        }
    }

    // ----- internals: sending -----------------------------------------------------

    fn push_send(&mut self, conn: ConnId, body: Vec<u8>) {
        self.actions.push_back(Action::Send { conn, body });
    }

    fn send_unicast(
        &mut self,
        channel: &str,
        dst: PeerName,
        msg: Vec<u8>,
    ) -> Result<(), MeshError> {
        let m = GossipUnicastMsg {
            channel: channel.to_string(),
            src: self.name(),
            dst,
            msg,
        };
        let body = ProtocolMsg::GossipUnicast(m)
            .encode()
            .map_err(|e| MeshError::Encode(e.to_string()))?;
        self.relay_unicast(dst, body)
    }

    fn relay_unicast(&mut self, dst: PeerName, body: Vec<u8>) -> Result<(), MeshError> {
        self.ensure_routes();
        let via = match self.routes.unicast_all(dst) {
            Some(v) if v != UNKNOWN_PEER_NAME => v,
            _ => return Err(MeshError::UnknownDestination(dst)),
        };
        let conn = *self
            .by_peer
            .get(&via)
            .ok_or(MeshError::NoConnectionToRelay(via))?;
        self.push_send(conn, body);
        Ok(())
    }

    fn sender(&mut self, conn: ConnId, channel: &str) -> Option<&mut ChannelSender> {
        let c = self.conns.get_mut(&conn)?;
        if !c.senders.contains_key(channel) {
            c.senders
                .insert(channel.to_string(), ChannelSender::default());
        }
        c.senders.get_mut(channel)
    }

    /// Gossip to random neighbours, never back to `except`.
    fn relay(&mut self, channel: &str, except: PeerName, data: Pending) {
        self.relays.push(Relay::Gossip {
            channel: channel.to_string(),
            except,
            data,
        });
    }

    fn relay_broadcast(&mut self, channel: &str, src: PeerName, data: Pending) {
        self.relays.push(Relay::Broadcast {
            channel: channel.to_string(),
            src,
            data,
        });
    }

    /// Runs the garbage collection that merged updates left due.
    fn collect_garbage(&mut self) {
        if std::mem::take(&mut self.gc_pending) {
            let mut ch = PeerChanges::default();
            self.peers.garbage_collect(&mut self.rng, &mut ch);
            self.after_peer_changes(ch, self.now);
        }
    }

    /// Collects garbage if an update left some, recomputes routes, and hands
    /// queued gossip to the senders of the chosen connections.
    fn settle(&mut self) {
        self.collect_garbage();
        if self.relays.is_empty() {
            return;
        }
        self.ensure_routes();
        for r in std::mem::take(&mut self.relays) {
            match r {
                Relay::Gossip {
                    channel,
                    except,
                    data,
                } => {
                    let targets = self.routes.random_neighbours(except, &mut self.rng);
                    for peer in targets {
                        if let Some(&id) = self.by_peer.get(&peer) {
                            if let Some(s) = self.sender(id, &channel) {
                                s.send(data.clone());
                            }
                        }
                    }
                }
                Relay::Broadcast { channel, src, data } => {
                    for peer in self.routes.broadcast_all(src) {
                        if let Some(&id) = self.by_peer.get(&peer) {
                            if let Some(s) = self.sender(id, &channel) {
                                s.broadcast(src, data.clone());
                            }
                        }
                    }
                }
            }
        }
    }

    fn channel_names(&self) -> Vec<String> {
        self.channels.keys().cloned().collect()
    }

    fn send_all_gossip(&mut self, now: Millis) {
        let me = self.name();
        let all = self.peers.names();
        self.relay(TOPOLOGY_CHANNEL, me, Pending::Topology(all));
        for ch in self.channel_names() {
            if let Some(Some(d)) = self.with_handler(&ch, now, |h, ctx| h.gossip(ctx)) {
                self.relay(&ch, me, Pending::Data(d));
            }
        }
    }

    fn send_all_gossip_down(&mut self, conn: ConnId, now: Millis) {
        let all = self.peers.names();
        if let Some(s) = self.sender(conn, TOPOLOGY_CHANNEL) {
            s.send(Pending::Topology(all));
        }
        for ch in self.channel_names() {
            if let Some(Some(d)) = self.with_handler(&ch, now, |h, ctx| h.gossip(ctx)) {
                if let Some(s) = self.sender(conn, &ch) {
                    s.send(Pending::Data(d));
                }
            }
        }
    }

    fn encode_pending(
        &self,
        p: &Pending,
        cache: &mut Vec<(BTreeSet<PeerName>, Vec<Vec<u8>>)>,
    ) -> Vec<Vec<u8>> {
        match p {
            Pending::Topology(names) => {
                if let Some((_, enc)) = cache.iter().find(|(n, _)| n == names) {
                    return enc.clone();
                }
                let enc = self.encode_topology(names);
                cache.push((names.clone(), enc.clone()));
                enc
            }
            Pending::Data(d) => d.encode(),
        }
    }

    fn encode_topology(&self, names: &BTreeSet<PeerName>) -> Vec<Vec<u8>> {
        match self.peers.encode_update(names) {
            Ok(Some(b)) => vec![b],
            Ok(None) | Err(_) => Vec::new(),
        }
    }

    fn flush_senders(&mut self) {
        self.settle();
        let me = self.name();
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.has_pending())
            .map(|(id, _)| *id)
            .collect();
        let mut cache = Vec::new();
        for id in ids {
            let mut taken = Vec::new();
            if let Some(c) = self.conns.get_mut(&id) {
                for (ch, s) in c.senders.iter_mut() {
                    if !s.is_empty() {
                        taken.push((ch.clone(), s.take()));
                    }
                }
            }
            for (channel, (gossip, broadcasts)) in taken {
                if let Some(g) = gossip {
                    for msg in self.encode_pending(&g, &mut cache) {
                        let m = GossipMsg {
                            channel: channel.clone(),
                            src: me,
                            msg,
                        };
                        if let Ok(body) = ProtocolMsg::Gossip(m).encode() {
                            self.push_send(id, body);
                        }
                    }
                }
                for (src, b) in broadcasts {
                    for msg in self.encode_pending(&b, &mut cache) {
                        let m = GossipMsg {
                            channel: channel.clone(),
                            src,
                            msg,
                        };
                        if let Ok(body) = ProtocolMsg::GossipBroadcast(m).encode() {
                            self.push_send(id, body);
                        }
                    }
                }
            }
        }
    }

    // ----- internals: connection maker ----------------------------------------------

    fn run_maker(&mut self, now: Millis) {
        let conns: Vec<OurConnection<'_>> = self
            .conns
            .values()
            .map(|c| OurConnection {
                remote: c.remote,
                address: &c.remote_addr,
                outbound: c.outbound,
            })
            .collect();
        let dials = self.maker.check(now, &conns, &self.peers);
        for address in dials {
            if self.conn_limit != 0 && self.by_peer.len() >= self.conn_limit {
                let e = ConnectError::ConnLimit(self.conn_limit);
                self.maker
                    .connection_aborted(&address, e.to_string(), false, now, &mut self.rng);
            } else {
                self.actions.push_back(Action::Dial { address });
            }
        }
    }
}
