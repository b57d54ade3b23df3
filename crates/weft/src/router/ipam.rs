//! IPAM in the router: the ring-aware `NodeIpam` of `weft-ipam`, living in the mesh actor as
//! the handler of Weave's `IPallocation` gossip channel.
//!
//! The HTTP API asks for addresses through [`IpamCmd`]s sent to the mesh actor; an allocation
//! that needs other peers (consensus, a space request) completes later, when gossip arrives,
//! and its reply is sent then. `NodeIpam` persists every change before it reports it done.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use tokio::sync::oneshot;
use weft_ipam::allocator::OpId;
use weft_ipam::local::OwnedEntry;
use weft_ipam::node::{IpamFailure, NodeAction, NodeError, NodeIpam, NodeStatus};
use weft_mesh::gossip::{GossipContext, GossipData, GossipHandler, HandlerError, LatestData};
use weft_mesh::{Mesh, Millis};
use weft_wire::PeerName;

/// Weave's IPAM gossip channel.
pub const CHANNEL: &str = "IPallocation";

/// Why an IPAM request failed, with the HTTP status the API answers with.
#[derive(Debug)]
pub struct IpamError {
    pub status: u16,
    pub msg: String,
}

impl IpamError {
    fn from_node(e: NodeError) -> IpamError {
        let status = match &e {
            NodeError::Store(_) | NodeError::NotSaved(_) => 500,
            NodeError::AddressNotFound { .. } => 404,
            NodeError::Alloc(a) if a.to_string().contains("no addresses") => 404,
            _ => 400,
        };
        IpamError {
            status,
            msg: e.to_string(),
        }
    }

    fn from_failure(f: IpamFailure) -> IpamError {
        let status = match &f {
            // Still waiting for other peers: "try again later" for the CNI plugin.
            IpamFailure::TimedOut { .. } => 503,
            IpamFailure::NotSaved { .. } | IpamFailure::Dropped { .. } => 500,
            IpamFailure::Alloc(_) => 400,
        };
        IpamError {
            status,
            msg: f.to_string(),
        }
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, IpamError>>;

/// What the API asks of IPAM.
pub enum IpamCmd {
    Allocate {
        id: String,
        subnet: Option<Ipv4Net>,
        is_container: bool,
        reply: Reply<Ipv4Net>,
    },
    Claim {
        id: String,
        cidr: Ipv4Net,
        is_container: bool,
        reply: Reply<Ipv4Net>,
    },
    Release {
        id: String,
        reply: Reply<Vec<Ipv4Net>>,
    },
    ReleaseAddr {
        id: String,
        addr: Ipv4Addr,
        reply: Reply<()>,
    },
    Lookup {
        id: String,
        reply: oneshot::Sender<Vec<Ipv4Net>>,
    },
    Owned {
        reply: oneshot::Sender<Vec<OwnedEntry>>,
    },
    Status {
        reply: oneshot::Sender<IpamSnapshot>,
    },
    RmPeer {
        peer: String,
        reply: Reply<String>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// What status, report and metrics show of IPAM.
#[derive(Debug, Clone)]
pub struct IpamSnapshot {
    pub status: NodeStatus,
    pub text: String,
    pub universe: Ipv4Net,
    pub default_subnet: Ipv4Net,
    pub active: u64,
    pub local_ranges: Vec<Ipv4Net>,
    pub gossip_errors: u64,
}

/// The gossip handler: `NodeIpam` plus what its callbacks produced for the actor.
pub struct IpamHandler {
    pub node: NodeIpam,
    completed: Vec<(OpId, Result<Ipv4Net, IpamFailure>)>,
    /// Gossip the ring refused (merge errors, malformed messages), for metrics.
    gossip_errors: u64,
}

impl IpamHandler {
    pub fn new(node: NodeIpam) -> IpamHandler {
        IpamHandler {
            node,
            completed: Vec::new(),
            gossip_errors: 0,
        }
    }

    /// Turns actions produced inside a gossip callback into sends on `ctx`.
    fn apply_in(&mut self, ctx: &mut GossipContext<'_>, actions: Vec<NodeAction>) {
        for a in actions {
            match a {
                NodeAction::Broadcast(b) => ctx.broadcast(Box::new(LatestData(b))),
                NodeAction::Send { to, bytes } => ctx.unicast(to, bytes),
                NodeAction::Completed { op_id, result } => self.completed.push((op_id, result)),
            }
        }
    }
}

impl IpamHandler {
    /// Weave drops the TCP connection when IPAM gossip cannot be merged, which also cuts the
    /// data plane to that peer. Weft keeps the connection: the error is logged, counted and
    /// shown in `weft status` (NodeIpam keeps the last one, with the peer it came from), and the
    /// ring stays as it was. Only other failures (the database) are returned as errors.
    fn absorb(
        &mut self,
        r: Result<Vec<NodeAction>, NodeError>,
    ) -> Result<Vec<NodeAction>, HandlerError> {
        match r {
            Ok(a) => Ok(a),
            Err(e @ (NodeError::Merge { .. } | NodeError::Malformed { .. })) => {
                self.gossip_errors += 1;
                tracing::error!("IPAM gossip refused: {e}");
                Ok(Vec::new())
            }
            Err(e) => Err(Box::new(e)),
        }
    }
}

impl GossipHandler for IpamHandler {
    fn on_gossip_unicast(
        &mut self,
        ctx: &mut GossipContext<'_>,
        src: PeerName,
        msg: &[u8],
    ) -> Result<(), HandlerError> {
        let r = self.node.on_gossip_unicast(src, msg, ctx.now.0);
        let actions = self.absorb(r)?;
        self.apply_in(ctx, actions);
        Ok(())
    }

    fn on_gossip_broadcast(
        &mut self,
        ctx: &mut GossipContext<'_>,
        src: PeerName,
        update: &[u8],
    ) -> Result<Option<Box<dyn GossipData>>, HandlerError> {
        let (relay, actions) = match self.node.on_gossip_broadcast(src, update, ctx.now.0) {
            Ok(r) => r,
            Err(e) => (None, self.absorb(Err(e))?),
        };
        self.apply_in(ctx, actions);
        Ok(relay.map(|b| Box::new(LatestData(b)) as Box<dyn GossipData>))
    }

    fn gossip(&mut self, _ctx: &mut GossipContext<'_>) -> Option<Box<dyn GossipData>> {
        self.node
            .gossip_state_bytes()
            .ok()
            .map(|b| Box::new(LatestData(b)) as Box<dyn GossipData>)
    }

    fn on_gossip(
        &mut self,
        ctx: &mut GossipContext<'_>,
        update: &[u8],
    ) -> Result<Option<Box<dyn GossipData>>, HandlerError> {
        let r = self.node.on_gossip(update, ctx.now.0);
        let actions = self.absorb(r)?;
        self.apply_in(ctx, actions);
        Ok(None)
    }
}

/// The actor's IPAM bookkeeping: requests waiting for their operation to complete.
#[derive(Default)]
pub struct Pending {
    next_op: OpId,
    waiting: HashMap<OpId, Reply<Ipv4Net>>,
    last_ranges: Vec<Ipv4Net>,
}

fn handler(mesh: &mut Mesh) -> &mut IpamHandler {
    mesh.handler_mut::<IpamHandler>(CHANNEL)
        .expect("the IPAM handler is registered before the actor starts")
}

/// Carries out actions produced outside a gossip callback.
fn apply(mesh: &mut Mesh, pending: &mut Pending, actions: Vec<NodeAction>) {
    for a in actions {
        match a {
            NodeAction::Broadcast(b) => {
                if let Err(e) = mesh.gossip_broadcast(CHANNEL, Box::new(LatestData(b))) {
                    tracing::warn!("IPAM broadcast: {e}");
                }
            }
            NodeAction::Send { to, bytes } => {
                if let Err(e) = mesh.gossip_unicast(CHANNEL, to, bytes) {
                    tracing::warn!(peer = %to, "IPAM unicast: {e}");
                }
            }
            NodeAction::Completed { op_id, result } => complete(pending, op_id, result),
        }
    }
}

fn complete(pending: &mut Pending, op_id: OpId, result: Result<Ipv4Net, IpamFailure>) {
    if let Some(reply) = pending.waiting.remove(&op_id) {
        let _ = reply.send(result.map_err(IpamError::from_failure));
    }
}

/// Delivers completions that gossip callbacks produced; returns this node's ranges when they
/// changed (for the data plane's NO_MASQ_LOCAL set).
pub fn after_mesh_call(mesh: &mut Mesh, pending: &mut Pending) -> Option<Vec<Ipv4Net>> {
    let done = std::mem::take(&mut handler(mesh).completed);
    for (op, result) in done {
        complete(pending, op, result);
    }
    let ranges = local_ranges(handler(mesh));
    if ranges != pending.last_ranges {
        pending.last_ranges = ranges.clone();
        return Some(ranges);
    }
    None
}

fn local_ranges(h: &IpamHandler) -> Vec<Ipv4Net> {
    let us = h.node.peer();
    h.node
        .ring()
        .owned_ranges(us)
        .iter()
        .flat_map(|r| r.cidrs())
        .collect()
}

/// Periodic work: retries, deadlines, Paxos proposals.
pub fn tick(mesh: &mut Mesh, pending: &mut Pending, now: Millis) {
    let reachable: Vec<PeerName> = mesh.routes().reachable_all().into_iter().collect();
    let h = handler(mesh);
    h.node.set_reachable(reachable);
    let actions = h.node.tick(now.0);
    apply(mesh, pending, actions);
}

pub fn handle(mesh: &mut Mesh, pending: &mut Pending, cmd: IpamCmd, now: Millis) {
    match cmd {
        IpamCmd::Allocate {
            id,
            subnet,
            is_container,
            reply,
        } => {
            pending.next_op += 1;
            let op = pending.next_op;
            match handler(mesh)
                .node
                .allocate(&id, subnet, is_container, op, now.0)
            {
                Ok(actions) => {
                    pending.waiting.insert(op, reply);
                    apply(mesh, pending, actions);
                }
                Err(e) => {
                    let _ = reply.send(Err(IpamError::from_node(e)));
                }
            }
        }
        IpamCmd::Claim {
            id,
            cidr,
            is_container,
            reply,
        } => {
            pending.next_op += 1;
            let op = pending.next_op;
            match handler(mesh).node.claim(&id, cidr, is_container, op, now.0) {
                Ok(actions) => {
                    pending.waiting.insert(op, reply);
                    apply(mesh, pending, actions);
                }
                Err(e) => {
                    let _ = reply.send(Err(IpamError::from_node(e)));
                }
            }
        }
        IpamCmd::Release { id, reply } => match handler(mesh).node.release(&id, now.0) {
            Ok((freed, actions)) => {
                apply(mesh, pending, actions);
                let _ = reply.send(Ok(freed));
            }
            Err(e) => {
                let _ = reply.send(Err(IpamError::from_node(e)));
            }
        },
        IpamCmd::ReleaseAddr { id, addr, reply } => {
            match handler(mesh).node.release_addr(&id, addr, now.0) {
                Ok(actions) => {
                    apply(mesh, pending, actions);
                    let _ = reply.send(Ok(()));
                }
                Err(e) => {
                    let _ = reply.send(Err(IpamError::from_node(e)));
                }
            }
        }
        IpamCmd::Lookup { id, reply } => {
            let _ = reply.send(handler(mesh).node.lookup(&id));
        }
        IpamCmd::Owned { reply } => {
            let _ = reply.send(handler(mesh).node.owned());
        }
        IpamCmd::Status { reply } => {
            let h = handler(mesh);
            let _ = reply.send(IpamSnapshot {
                status: h.node.status(now.0),
                text: h.node.status_text(),
                universe: h.node.universe(),
                default_subnet: h.node.default_subnet(),
                active: h.node.num_allocated(),
                local_ranges: local_ranges(h),
                gossip_errors: h.gossip_errors,
            });
        }
        IpamCmd::RmPeer { peer, reply } => {
            let h = handler(mesh);
            let Some(name) = h.node.resolve_peer(&peer) else {
                let _ = reply.send(Err(IpamError {
                    status: 404,
                    msg: format!("no peer named {peer:?} in the IPAM ring or the topology"),
                }));
                return;
            };
            if mesh.routes().reachable_all().contains(&name) {
                let _ = reply.send(Err(IpamError {
                    status: 409,
                    msg: format!(
                        "peer {name} is still reachable: rmpeer is only for peers that are gone for good (stop it first, or run `weft reset` on it)"
                    ),
                }));
                return;
            }
            match handler(mesh).node.admin_takeover(name, now.0) {
                Ok((taken, actions)) => {
                    apply(mesh, pending, actions);
                    let _ = reply.send(Ok(format!("{taken} IPs taken over from {name}\n")));
                }
                Err(e) => {
                    let _ = reply.send(Err(IpamError::from_node(e)));
                }
            }
        }
        IpamCmd::Shutdown { reply } => {
            let actions = handler(mesh).node.shutdown(None);
            apply(mesh, pending, actions);
            let _ = reply.send(());
        }
    }
}
