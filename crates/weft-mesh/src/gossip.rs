//! Gossip channels: the interface between the mesh and the subsystems that gossip
//! through it (`topology` is the mesh's own; IPAM uses `IPallocation`).
//!
//! A subsystem implements [`GossipHandler`] and registers it under a channel name
//! with [`Mesh::register_channel`](crate::Mesh::register_channel). The mesh calls
//! it, sans-IO, when messages arrive:
//!
//! | Weave                       | here                                   | result                              |
//! |-----------------------------|----------------------------------------|-------------------------------------|
//! | `OnGossipUnicast(src, msg)` | [`GossipHandler::on_gossip_unicast`]   | error drops the connection          |
//! | `OnGossipBroadcast(src, u)` | [`GossipHandler::on_gossip_broadcast`] | data returned is relayed on along the source's broadcast tree |
//! | `Gossip()`                  | [`GossipHandler::gossip`]              | full state, sent periodically and down new connections |
//! | `OnGossip(msg)`             | [`GossipHandler::on_gossip`]           | delta returned is relayed to random neighbours |
//!
//! Handlers never send. Anything they want sent (a unicast reply, a broadcast of
//! their own) is queued on the [`GossipContext`] they are given and carried out by
//! the mesh when the handler returns; outside a callback, the driver calls
//! [`Mesh::gossip_unicast`](crate::Mesh::gossip_unicast) and friends.
//!
//! Data to be sent is a [`GossipData`]: it can [`encode`](GossipData::encode)
//! itself into messages and [`merge`](GossipData::merge) with more data of the same
//! channel. Each connection has one sender per channel holding at most one pending
//! gossip item plus one pending broadcast item per source; new data merges into
//! what is pending, so a slow connection receives the union rather than a backlog.
//! Plain gossip is sent before broadcasts. Two ready-made data types cover the
//! common cases: [`MessagesData`] (a list of messages, merge = append) and
//! [`LatestData`] (a full-state snapshot, merge = keep the newer).
//!
//! Messages on a channel nobody registered go to a [`SurrogateGossiper`]: it relays
//! broadcasts and gossip without understanding them, dropping exact duplicates
//! seen within one gossip interval (FNV-64a hash plus byte comparison), and
//! ignores unicasts addressed to us. A peer without a DNS subsystem can thus still
//! relay `nameserver` traffic for others.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use weft_wire::PeerName;

use crate::peers::Peers;
use crate::time::Millis;

/// Weave's default `GossipInterval`.
pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(30);

/// The mesh's own channel.
pub const TOPOLOGY_CHANNEL: &str = "topology";

/// Errors a handler reports; the mesh drops the connection the message came on
/// (as Weave does) and shows the text as the connection's last error.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Data to be gossiped on one channel (Weave's `GossipData`).
///
/// Implementations must be `Clone` (the same data may be queued on several
/// connections); [`GossipDataClone`] is then provided automatically.
pub trait GossipData: Any + Send + fmt::Debug + GossipDataClone {
    /// The messages to put on the wire (each becomes one gossip message).
    fn encode(&self) -> Vec<Vec<u8>>;
    /// Combines `self` with `other`, more recent data of the same channel.
    fn merge(self: Box<Self>, other: Box<dyn GossipData>) -> Box<dyn GossipData>;
}

/// Cloning boxed [`GossipData`]; implemented for every `Clone` data type.
pub trait GossipDataClone {
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn GossipData>;
}

impl<T: GossipData + Clone> GossipDataClone for T {
    fn clone_box(&self) -> Box<dyn GossipData> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn GossipData> {
    fn clone(&self) -> Self {
        (**self).clone_box()
    }
}

/// A list of opaque messages; merging appends (skipping exact repeats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessagesData(pub Vec<Vec<u8>>);

impl MessagesData {
    /// One message.
    pub fn one(msg: Vec<u8>) -> Box<dyn GossipData> {
        Box::new(MessagesData(vec![msg]))
    }
}

impl GossipData for MessagesData {
    fn encode(&self) -> Vec<Vec<u8>> {
        self.0.clone()
    }

    fn merge(mut self: Box<Self>, other: Box<dyn GossipData>) -> Box<dyn GossipData> {
        for m in other.encode() {
            if !self.0.contains(&m) {
                self.0.push(m);
            }
        }
        self
    }
}

/// A full-state snapshot; merging keeps the newer one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatestData(pub Vec<u8>);

impl GossipData for LatestData {
    fn encode(&self) -> Vec<Vec<u8>> {
        vec![self.0.clone()]
    }

    fn merge(self: Box<Self>, other: Box<dyn GossipData>) -> Box<dyn GossipData> {
        other
    }
}

/// A request a handler queued while being called.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Unicast { dst: PeerName, msg: Vec<u8> },
    Broadcast(Box<dyn GossipData>),
    NeighbourSubset(Box<dyn GossipData>),
}

/// What a handler sees while the mesh calls it.
pub struct GossipContext<'a> {
    /// The current time.
    pub now: Millis,
    /// The channel being handled.
    pub channel: &'a str,
    /// The topology table (read-only).
    pub peers: &'a Peers,
    pub(crate) outbox: &'a mut Vec<Outgoing>,
}

impl GossipContext<'_> {
    /// Our own name.
    pub fn our_name(&self) -> PeerName {
        self.peers.our_name()
    }

    /// Queues a unicast to `dst` on this channel (Weave's `GossipUnicast`).
    pub fn unicast(&mut self, dst: PeerName, msg: Vec<u8>) {
        self.outbox.push(Outgoing::Unicast { dst, msg });
    }

    /// Queues a broadcast from us along our broadcast tree (`GossipBroadcast`).
    pub fn broadcast(&mut self, data: Box<dyn GossipData>) {
        self.outbox.push(Outgoing::Broadcast(data));
    }

    /// Queues gossip to a random subset of neighbours (`GossipNeighbourSubset`).
    pub fn gossip_neighbour_subset(&mut self, data: Box<dyn GossipData>) {
        self.outbox.push(Outgoing::NeighbourSubset(data));
    }
}

/// A subsystem receiving gossip on one channel (Weave's `Gossiper`).
pub trait GossipHandler: Any + Send {
    /// A unicast addressed to us from `src`.
    fn on_gossip_unicast(
        &mut self,
        ctx: &mut GossipContext<'_>,
        src: PeerName,
        msg: &[u8],
    ) -> Result<(), HandlerError>;

    /// A broadcast originated by `src`. Return the data to relay onward along
    /// `src`'s broadcast tree (typically what was received), or `None` to stop.
    fn on_gossip_broadcast(
        &mut self,
        ctx: &mut GossipContext<'_>,
        src: PeerName,
        update: &[u8],
    ) -> Result<Option<Box<dyn GossipData>>, HandlerError>;

    /// The complete state to gossip, or `None` if there is nothing to say.
    fn gossip(&mut self, ctx: &mut GossipContext<'_>) -> Option<Box<dyn GossipData>>;

    /// Gossip from a neighbour. Return what was new to us (it is relayed to
    /// random neighbours), or `None`.
    fn on_gossip(
        &mut self,
        ctx: &mut GossipContext<'_>,
        update: &[u8],
    ) -> Result<Option<Box<dyn GossipData>>, HandlerError>;
}

/// 64-bit FNV-1a (Go's `hash/fnv` `New64a`).
pub fn fnv64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Debug)]
struct PrevUpdate {
    hash: u64,
    update: Vec<u8>,
    at: Millis,
}

/// The handler of channels nobody registered: relays, deduplicates, never
/// interprets (Weave's `surrogateGossiper`).
#[derive(Debug)]
pub struct SurrogateGossiper {
    window: Duration,
    prev: VecDeque<PrevUpdate>,
}

impl Default for SurrogateGossiper {
    fn default() -> Self {
        SurrogateGossiper::new(GOSSIP_INTERVAL)
    }
}

impl SurrogateGossiper {
    /// A surrogate remembering updates for `window` (the gossip interval).
    pub fn new(window: Duration) -> Self {
        SurrogateGossiper {
            window,
            prev: VecDeque::new(),
        }
    }

    /// Returns the update to relay, or `None` if it is a duplicate seen within
    /// the window.
    fn check(&mut self, now: Millis, update: &[u8]) -> Option<Box<dyn GossipData>> {
        let hash = fnv64a(update);
        while self
            .prev
            .front()
            .is_some_and(|p| now.saturating_duration_since(p.at) >= self.window)
        {
            self.prev.pop_front();
        }
        if self
            .prev
            .iter()
            .any(|p| p.hash == hash && p.update == update)
        {
            return None;
        }
        self.prev.push_back(PrevUpdate {
            hash,
            update: update.to_vec(),
            at: now,
        });
        Some(MessagesData::one(update.to_vec()))
    }

    /// Number of updates currently remembered.
    pub fn remembered(&self) -> usize {
        self.prev.len()
    }
}

impl GossipHandler for SurrogateGossiper {
    fn on_gossip_unicast(
        &mut self,
        _ctx: &mut GossipContext<'_>,
        _src: PeerName,
        _msg: &[u8],
    ) -> Result<(), HandlerError> {
        Ok(())
    }

    fn on_gossip_broadcast(
        &mut self,
        ctx: &mut GossipContext<'_>,
        _src: PeerName,
        update: &[u8],
    ) -> Result<Option<Box<dyn GossipData>>, HandlerError> {
        Ok(self.check(ctx.now, update))
    }

    fn gossip(&mut self, _ctx: &mut GossipContext<'_>) -> Option<Box<dyn GossipData>> {
        None
    }

    fn on_gossip(
        &mut self,
        ctx: &mut GossipContext<'_>,
        update: &[u8],
    ) -> Result<Option<Box<dyn GossipData>>, HandlerError> {
        Ok(self.check(ctx.now, update))
    }
}

/// Data pending on a sender: topology data is a set of peer names encoded from
/// the table at send time (so a slow link always gets the latest entries);
/// everything else is the handler's own data.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Topology(BTreeSet<PeerName>),
    Data(Box<dyn GossipData>),
}

impl Pending {
    fn merge(self, other: Pending) -> Pending {
        match (self, other) {
            (Pending::Topology(mut a), Pending::Topology(b)) => {
                a.extend(b);
                Pending::Topology(a)
            }
            (Pending::Data(a), Pending::Data(b)) => Pending::Data(a.merge(b)),
            // Mixed kinds cannot happen on one channel; keep the newer.
            (_, other) => other,
        }
    }
}

fn merge_into(slot: &mut Option<Pending>, data: Pending) {
    *slot = Some(match slot.take() {
        None => data,
        Some(p) => p.merge(data),
    });
}

/// What one connection still has to send on one channel (Weave's `gossipSender`).
#[derive(Debug, Default)]
pub(crate) struct ChannelSender {
    gossip: Option<Pending>,
    broadcasts: BTreeMap<PeerName, Option<Pending>>,
}

impl ChannelSender {
    pub(crate) fn send(&mut self, data: Pending) {
        merge_into(&mut self.gossip, data);
    }

    pub(crate) fn broadcast(&mut self, src: PeerName, data: Pending) {
        merge_into(self.broadcasts.entry(src).or_default(), data);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.gossip.is_none() && self.broadcasts.is_empty()
    }

    /// Takes everything pending: the gossip item, then broadcasts by source.
    pub(crate) fn take(&mut self) -> (Option<Pending>, Vec<(PeerName, Pending)>) {
        let g = self.gossip.take();
        let b = std::mem::take(&mut self.broadcasts)
            .into_iter()
            .filter_map(|(s, p)| p.map(|p| (s, p)))
            .collect();
        (g, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::LocalIdentity;
    use weft_wire::ShortId;

    fn ctx_peers() -> Peers {
        Peers::new(LocalIdentity {
            name: PeerName::new(1).unwrap(),
            nickname: "a".into(),
            uid: 1,
            short_id: ShortId::new(1).unwrap(),
        })
    }

    #[test]
    fn fnv64a_known_values() {
        // Reference values of the FNV-1a 64-bit function.
        assert_eq!(fnv64a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv64a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv64a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn surrogate_drops_duplicates_within_interval() {
        let peers = ctx_peers();
        let mut outbox = Vec::new();
        let mut s = SurrogateGossiper::default();
        let src = PeerName::new(2).unwrap();
        let mut at = |now: u64, s: &mut SurrogateGossiper, msg: &[u8], bcast: bool| {
            let mut ctx = GossipContext {
                now: Millis(now),
                channel: "nameserver",
                peers: &peers,
                outbox: &mut outbox,
            };
            if bcast {
                s.on_gossip_broadcast(&mut ctx, src, msg).unwrap()
            } else {
                s.on_gossip(&mut ctx, msg).unwrap()
            }
        };
        let first = at(0, &mut s, b"hello", true).expect("new update relayed");
        assert_eq!(first.encode(), vec![b"hello".to_vec()]);
        assert!(at(1_000, &mut s, b"hello", true).is_none(), "duplicate");
        assert!(
            at(2_000, &mut s, b"hello", false).is_none(),
            "same via gossip"
        );
        assert!(at(2_000, &mut s, b"world", false).is_some());
        // After the interval the first copy is forgotten.
        assert!(at(30_000, &mut s, b"hello", true).is_some());
        assert_eq!(s.remembered(), 2);
        let mut ctx = GossipContext {
            now: Millis(0),
            channel: "nameserver",
            peers: &peers,
            outbox: &mut outbox,
        };
        assert!(s.gossip(&mut ctx).is_none());
        assert!(s.on_gossip_unicast(&mut ctx, src, b"x").is_ok());
        assert!(outbox.is_empty());
    }

    #[test]
    fn sender_merges_pending_data() {
        let mut s = ChannelSender::default();
        let a = PeerName::new(1).unwrap();
        let b = PeerName::new(2).unwrap();
        s.send(Pending::Topology([a].into()));
        s.send(Pending::Topology([b].into()));
        s.broadcast(a, Pending::Data(MessagesData::one(b"x".to_vec())));
        s.broadcast(a, Pending::Data(MessagesData::one(b"y".to_vec())));
        s.broadcast(a, Pending::Data(MessagesData::one(b"x".to_vec())));
        let (g, bs) = s.take();
        match g {
            Some(Pending::Topology(set)) => assert_eq!(set, [a, b].into()),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(bs.len(), 1);
        match &bs[0].1 {
            Pending::Data(d) => assert_eq!(d.encode(), vec![b"x".to_vec(), b"y".to_vec()]),
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.is_empty());
        let latest: Box<dyn GossipData> = Box::new(LatestData(b"1".to_vec()));
        let merged = latest.merge(Box::new(LatestData(b"2".to_vec())));
        assert_eq!(merged.encode(), vec![b"2".to_vec()]);
    }
}
