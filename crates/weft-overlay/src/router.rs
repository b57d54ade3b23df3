//! The sleeve-side network router (Weave's `NetworkRouter`, adapted to
//! Weft's split between the kernel fast path and sleeve).
//!
//! The bridge has two uplinks that are isolated from each other: the VXLAN
//! device (fast path, handled entirely by the kernel) and the sleeve TAP
//! port. This router sees only the TAP side:
//!
//! **Captured frames** (read from the TAP):
//! - STP and other `01:80:c2:00:00:xx` frames are dropped;
//! - the source MAC is learned as local; a frame whose source MAC is known
//!   at another peer is dropped (it is probably one we injected);
//! - a unicast destination known at peer P goes to P over sleeve — unless P
//!   is ourself (the bridge delivered it) or P is served by the fast path
//!   (the kernel sent it through the VXLAN device): dropped;
//! - broadcast, multicast and unknown unicast: the kernel already flooded
//!   it to every fast-path peer through the VXLAN flood entries, so sleeve
//!   sends **one copy to each reachable peer not served by the fast path**,
//!   addressed to that peer (head-end replication), each along the mesh's
//!   unicast route.
//!
//! **Frames received over sleeve** (`src peer`, `dst peer`, from a neighbour):
//! - `dst != us`: relayed unchanged to the next hop towards `dst` (never
//!   back to the neighbour it came from);
//! - `dst == us`: the source MAC is learned at `src` and the frame is
//!   injected into the TAP. Nothing is re-flooded: every peer got its own
//!   copy.
//!
//! MACs are learned from traffic only, never gossiped; entries expire after
//! 10 minutes, swept every minute.
//!
//! The router takes the peer set, their overlay state and the next-hop
//! function as a [`PeerView`], so it runs without a mesh in tests;
//! [`RoutesView`] adapts `weft_mesh::Routes`.

use std::collections::HashMap;
use std::time::Duration;

use weft_mesh::{Millis, Routes};
use weft_wire::{PeerName, UNKNOWN_PEER_NAME};

use crate::ether::{parse_ethernet, MacAddr};

/// How long an unused MAC entry lives (`macMaxAge`).
pub const MAC_MAX_AGE: Duration = Duration::from_secs(600);
/// Entries the MAC cache holds at most (learning stops beyond; forwarding
/// then floods, which stays correct).
pub const DEFAULT_MAC_CAPACITY: usize = 100_000;

/// What the router needs to know about the mesh.
pub trait PeerView {
    /// Our own peer name.
    fn local(&self) -> PeerName;
    /// The next hop towards `dst` over established connections, `None` if
    /// unreachable (or `dst` is ourself).
    fn next_hop(&self, dst: PeerName) -> Option<PeerName>;
    /// The peers reachable over established connections (ourself may be
    /// included; it is skipped).
    fn reachable_peers(&self) -> Vec<PeerName>;
    /// Whether `peer` is a neighbour whose connection is served by the fast
    /// path (the kernel floods to it and forwards to its learned MACs).
    fn is_fastdp(&self, peer: PeerName) -> bool;
}

/// A [`PeerView`] over the mesh's route tables and a fast-path predicate
/// (typically: the neighbour's `OverlaySwitch::served_by() == Fastdp`).
pub struct RoutesView<'a, F> {
    /// Our name.
    pub local: PeerName,
    /// The mesh routes (`Mesh::routes`).
    pub routes: &'a Routes,
    /// Whether a neighbour is served by the fast path.
    pub fastdp: F,
}

impl<F: Fn(PeerName) -> bool> PeerView for RoutesView<'_, F> {
    fn local(&self) -> PeerName {
        self.local
    }

    fn next_hop(&self, dst: PeerName) -> Option<PeerName> {
        if dst == self.local {
            return None;
        }
        self.routes
            .unicast(dst)
            .filter(|&via| via != UNKNOWN_PEER_NAME)
    }

    fn reachable_peers(&self) -> Vec<PeerName> {
        self.routes
            .unicast_table()
            .iter()
            .filter(|(dst, via)| **dst != self.local && **via != UNKNOWN_PEER_NAME)
            .map(|(dst, _)| *dst)
            .collect()
    }

    fn is_fastdp(&self, peer: PeerName) -> bool {
        (self.fastdp)(peer)
    }
}

/// Result of learning a MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A new entry.
    New,
    /// Already known at this peer; refreshed.
    Refreshed,
    /// Known at another peer; left alone (non-forced learning).
    Conflict(PeerName),
    /// Moved from another peer (forced learning).
    Moved(PeerName),
    /// The cache is full; not learned.
    Full,
}

#[derive(Debug, Clone, Copy)]
struct MacEntry {
    peer: PeerName,
    last_seen: Millis,
}

/// MAC address → peer, learned from traffic.
#[derive(Debug, Clone)]
pub struct MacCache {
    entries: HashMap<MacAddr, MacEntry>,
    max_age: Duration,
    capacity: usize,
}

impl MacCache {
    /// A cache with the given entry lifetime and capacity.
    pub fn new(max_age: Duration, capacity: usize) -> Self {
        MacCache {
            entries: HashMap::new(),
            max_age,
            capacity,
        }
    }

    fn learn_inner(&mut self, mac: MacAddr, peer: PeerName, now: Millis, force: bool) -> Learned {
        if let Some(e) = self.entries.get_mut(&mac) {
            if e.peer == peer {
                e.last_seen = now;
                return Learned::Refreshed;
            }
            let old = e.peer;
            if !force {
                return Learned::Conflict(old);
            }
            *e = MacEntry {
                peer,
                last_seen: now,
            };
            return Learned::Moved(old);
        }
        if self.entries.len() >= self.capacity {
            return Learned::Full;
        }
        self.entries.insert(
            mac,
            MacEntry {
                peer,
                last_seen: now,
            },
        );
        Learned::New
    }

    /// Learns `mac` at `peer` unless it is known at another peer.
    pub fn learn(&mut self, mac: MacAddr, peer: PeerName, now: Millis) -> Learned {
        self.learn_inner(mac, peer, now, false)
    }

    /// Learns `mac` at `peer`, moving it from another peer if need be.
    pub fn learn_forced(&mut self, mac: MacAddr, peer: PeerName, now: Millis) -> Learned {
        self.learn_inner(mac, peer, now, true)
    }

    /// The peer `mac` is at.
    pub fn lookup(&self, mac: MacAddr) -> Option<PeerName> {
        self.entries.get(&mac).map(|e| e.peer)
    }

    /// Removes entries not seen for longer than the maximum age; returns how
    /// many.
    pub fn expire(&mut self, now: Millis) -> usize {
        let before = self.entries.len();
        let max_age = self.max_age;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) <= max_age);
        before - self.entries.len()
    }

    /// Forgets every MAC at `peer` (the peer left the mesh); returns how many.
    pub fn remove_peer(&mut self, peer: PeerName) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.peer != peer);
        before - self.entries.len()
    }

    /// The MACs known at `peer`, sorted.
    pub fn macs_at(&self, peer: PeerName) -> Vec<MacAddr> {
        let mut v: Vec<MacAddr> = self
            .entries
            .iter()
            .filter(|(_, e)| e.peer == peer)
            .map(|(m, _)| *m)
            .collect();
        v.sort();
        v
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One sleeve transmission: send the frame to neighbour `via` with the
/// sleeve frame header `src → dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The neighbour whose sleeve forwarder sends it.
    pub via: PeerName,
    /// Sleeve source peer.
    pub src: PeerName,
    /// Sleeve destination peer.
    pub dst: PeerName,
}

/// Why the router dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    TooShort,
    /// To an IEEE 802.1D link-local control address (STP).
    Stp,
    /// Captured, but its source MAC is known at another peer.
    SourceAtOtherPeer(PeerName),
    /// To a MAC of a local pod: the bridge delivered it.
    LocalDestination,
    /// To a MAC at a peer served by the fast path: the kernel sent it.
    ServedByFastdp(PeerName),
    /// No route to the destination peer.
    NoRoute(PeerName),
    /// A flood with nobody to send to over sleeve.
    NobodyToFlood,
    /// Relaying would send it back where it came from (transient routes).
    WouldLoop,
    /// A forwarded frame claiming to come from ourself.
    FromOurself,
}

/// What to do with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Drop it.
    Drop(DropReason),
    /// Send it over sleeve, once per delivery. `broadcast` marks flood
    /// copies (a too-big DF copy is then dropped, not answered with ICMP).
    Forward {
        /// The transmissions.
        deliveries: Vec<Delivery>,
        /// Whether this is a flood.
        broadcast: bool,
    },
    /// Write it to the TAP.
    Inject,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Frames captured from the TAP.
    pub captured: u64,
    /// Frames received over sleeve.
    pub received: u64,
    /// Frames injected.
    pub injected: u64,
    /// Frames relayed for other peers.
    pub relayed: u64,
    /// Flood copies sent.
    pub flood_copies: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// MACs that moved between peers.
    pub mac_moves: u64,
}

/// The sleeve-side router of the local peer.
#[derive(Debug, Clone)]
pub struct SleeveRouter {
    local: PeerName,
    macs: MacCache,
    next_sweep: Option<Millis>,
    stats: RouterStats,
}

impl SleeveRouter {
    /// A router for `local` with Weave's MAC timing.
    pub fn new(local: PeerName) -> Self {
        Self::with_cache(local, MacCache::new(MAC_MAX_AGE, DEFAULT_MAC_CAPACITY))
    }

    /// A router with a custom MAC cache.
    pub fn with_cache(local: PeerName, macs: MacCache) -> Self {
        SleeveRouter {
            local,
            macs,
            next_sweep: None,
            stats: RouterStats::default(),
        }
    }

    /// The MAC cache.
    pub fn macs(&self) -> &MacCache {
        &self.macs
    }

    /// Counters.
    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run (the expiry
    /// sweep, every max-age / 10).
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.next_sweep
    }

    /// Runs the expiry sweep if due; returns the number of expired MACs.
    pub fn handle_timeout(&mut self, now: Millis) -> usize {
        if self.next_sweep.is_some_and(|t| now < t) {
            return 0;
        }
        self.next_sweep = Some(now + self.macs.max_age / 10);
        self.macs.expire(now)
    }

    /// Forgets the MACs of peers removed from the mesh.
    pub fn forget_peer(&mut self, peer: PeerName) -> usize {
        self.macs.remove_peer(peer)
    }

    /// The MACs known at `peer`. When a peer moves to the fast path, the
    /// driver can delete the bridge's FDB entries for these MACs on the TAP
    /// port, so the bridge relearns them on the VXLAN port.
    pub fn macs_at(&self, peer: PeerName) -> Vec<MacAddr> {
        self.macs.macs_at(peer)
    }

    fn arm(&mut self, now: Millis) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.macs.max_age / 10);
        }
    }

    fn drop(&mut self, r: DropReason) -> Verdict {
        self.stats.dropped += 1;
        Verdict::Drop(r)
    }

    /// Decides what to do with a frame captured from the TAP port.
    pub fn handle_captured(&mut self, now: Millis, frame: &[u8], view: &dyn PeerView) -> Verdict {
        self.arm(now);
        self.stats.captured += 1;
        let Some(eth) = parse_ethernet(frame) else {
            return self.drop(DropReason::TooShort);
        };
        if eth.dst.is_link_local_control() {
            return self.drop(DropReason::Stp);
        }
        if !eth.src.is_multicast() && !eth.src.is_zero() {
            if let Learned::Conflict(p) = self.macs.learn(eth.src, self.local, now) {
                return self.drop(DropReason::SourceAtOtherPeer(p));
            }
        }
        if !eth.dst.is_multicast() {
            if let Some(p) = self.macs.lookup(eth.dst) {
                if p == self.local {
                    return self.drop(DropReason::LocalDestination);
                }
                if view.is_fastdp(p) {
                    return self.drop(DropReason::ServedByFastdp(p));
                }
                return match view.next_hop(p) {
                    Some(via) => Verdict::Forward {
                        deliveries: vec![Delivery {
                            via,
                            src: self.local,
                            dst: p,
                        }],
                        broadcast: false,
                    },
                    None => self.drop(DropReason::NoRoute(p)),
                };
            }
        }
        // Flood: one copy per reachable peer the kernel does not reach.
        let mut deliveries: Vec<Delivery> = view
            .reachable_peers()
            .into_iter()
            .filter(|&p| p != self.local && !view.is_fastdp(p))
            .filter_map(|p| {
                view.next_hop(p).map(|via| Delivery {
                    via,
                    src: self.local,
                    dst: p,
                })
            })
            .collect();
        deliveries.sort_by_key(|d| (d.via, d.dst));
        deliveries.dedup();
        if deliveries.is_empty() {
            return self.drop(DropReason::NobodyToFlood);
        }
        self.stats.flood_copies += deliveries.len() as u64;
        Verdict::Forward {
            deliveries,
            broadcast: true,
        }
    }

    /// Decides what to do with a frame received over sleeve from neighbour
    /// `from` (`None` for frames produced locally, e.g. an ICMP
    /// frag-needed reply) with sleeve header `src → dst`.
    pub fn handle_forwarded(
        &mut self,
        now: Millis,
        from: Option<PeerName>,
        src: PeerName,
        dst: PeerName,
        frame: &[u8],
        view: &dyn PeerView,
    ) -> Verdict {
        self.arm(now);
        self.stats.received += 1;
        let Some(eth) = parse_ethernet(frame) else {
            return self.drop(DropReason::TooShort);
        };
        if src == self.local && from.is_some() {
            return self.drop(DropReason::FromOurself);
        }
        if dst != self.local {
            return match view.next_hop(dst) {
                Some(via) if Some(via) == from => self.drop(DropReason::WouldLoop),
                Some(via) => {
                    self.stats.relayed += 1;
                    Verdict::Forward {
                        deliveries: vec![Delivery { via, src, dst }],
                        broadcast: eth.dst.is_multicast(),
                    }
                }
                None => self.drop(DropReason::NoRoute(dst)),
            };
        }
        if eth.dst.is_link_local_control() {
            return self.drop(DropReason::Stp);
        }
        if !eth.src.is_multicast() && !eth.src.is_zero() {
            if let Learned::Moved(_) = self.macs.learn_forced(eth.src, src, now) {
                self.stats.mac_moves += 1;
            }
        }
        self.stats.injected += 1;
        Verdict::Inject
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn pn(v: u64) -> PeerName {
        PeerName::new(0x0200_0000_0000 | v).unwrap()
    }

    /// A static view: next hops and fast-path peers.
    struct View {
        me: PeerName,
        hops: BTreeMap<PeerName, PeerName>,
        fast: BTreeSet<PeerName>,
    }

    impl PeerView for View {
        fn local(&self) -> PeerName {
            self.me
        }
        fn next_hop(&self, dst: PeerName) -> Option<PeerName> {
            self.hops.get(&dst).copied()
        }
        fn reachable_peers(&self) -> Vec<PeerName> {
            self.hops.keys().copied().collect()
        }
        fn is_fastdp(&self, peer: PeerName) -> bool {
            self.fast.contains(&peer)
        }
    }

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0; 28]);
        f
    }

    const POD1: [u8; 6] = [0x0a, 0, 0, 0, 0, 1];
    const POD2: [u8; 6] = [0x0a, 0, 0, 0, 0, 2];
    const POD3: [u8; 6] = [0x0a, 0, 0, 0, 0, 3];
    const BCAST: [u8; 6] = [0xff; 6];

    /// Peer 1's view: 2 direct (fast path), 3 via 2, 4 direct (sleeve).
    fn view1() -> View {
        View {
            me: pn(1),
            hops: [(pn(2), pn(2)), (pn(3), pn(2)), (pn(4), pn(4))]
                .into_iter()
                .collect(),
            fast: [pn(2)].into_iter().collect(),
        }
    }

    #[test]
    fn flood_goes_to_peers_not_on_the_fast_path() {
        let mut r = SleeveRouter::new(pn(1));
        let v = view1();
        let got = r.handle_captured(Millis(0), &frame(BCAST, POD1), &v);
        assert_eq!(
            got,
            Verdict::Forward {
                deliveries: vec![
                    Delivery {
                        via: pn(2),
                        src: pn(1),
                        dst: pn(3)
                    },
                    Delivery {
                        via: pn(4),
                        src: pn(1),
                        dst: pn(4)
                    },
                ],
                broadcast: true
            }
        );
        assert_eq!(r.macs().lookup(MacAddr(POD1)), Some(pn(1)));
        // Unknown unicast floods the same way.
        let got = r.handle_captured(Millis(0), &frame(POD3, POD1), &v);
        assert!(
            matches!(got, Verdict::Forward { broadcast: true, ref deliveries } if deliveries.len() == 2)
        );
        // Nobody to flood to over sleeve when everyone is on the fast path.
        let all_fast = View {
            fast: [pn(2), pn(3), pn(4)].into_iter().collect(),
            ..view1()
        };
        assert_eq!(
            r.handle_captured(Millis(0), &frame(BCAST, POD1), &all_fast),
            Verdict::Drop(DropReason::NobodyToFlood)
        );
    }

    #[test]
    fn known_unicast_and_fastdp_and_local() {
        let mut r = SleeveRouter::new(pn(1));
        let v = view1();
        // Learn POD3 at peer 3 and POD2 at peer 2 from sleeve traffic.
        assert_eq!(
            r.handle_forwarded(
                Millis(0),
                Some(pn(2)),
                pn(3),
                pn(1),
                &frame(BCAST, POD3),
                &v
            ),
            Verdict::Inject
        );
        r.handle_forwarded(
            Millis(0),
            Some(pn(2)),
            pn(2),
            pn(1),
            &frame(BCAST, POD2),
            &v,
        );
        assert_eq!(
            r.handle_captured(Millis(1), &frame(POD3, POD1), &v),
            Verdict::Forward {
                deliveries: vec![Delivery {
                    via: pn(2),
                    src: pn(1),
                    dst: pn(3)
                }],
                broadcast: false
            }
        );
        assert_eq!(
            r.handle_captured(Millis(1), &frame(POD2, POD1), &v),
            Verdict::Drop(DropReason::ServedByFastdp(pn(2)))
        );
        // A second local pod.
        r.handle_captured(Millis(1), &frame(BCAST, [0x0a, 0, 0, 0, 0, 0x11]), &v);
        assert_eq!(
            r.handle_captured(Millis(1), &frame([0x0a, 0, 0, 0, 0, 0x11], POD1), &v),
            Verdict::Drop(DropReason::LocalDestination)
        );
        // Unreachable destination.
        let cut = View {
            hops: BTreeMap::new(),
            ..view1()
        };
        assert_eq!(
            r.handle_captured(Millis(1), &frame(POD3, POD1), &cut),
            Verdict::Drop(DropReason::NoRoute(pn(3)))
        );
    }

    #[test]
    fn captured_frames_from_remote_macs_and_stp_are_dropped() {
        let mut r = SleeveRouter::new(pn(1));
        let v = view1();
        r.handle_forwarded(
            Millis(0),
            Some(pn(4)),
            pn(4),
            pn(1),
            &frame(BCAST, POD2),
            &v,
        );
        assert_eq!(
            r.handle_captured(Millis(0), &frame(BCAST, POD2), &v),
            Verdict::Drop(DropReason::SourceAtOtherPeer(pn(4)))
        );
        assert_eq!(
            r.handle_captured(Millis(0), &frame([0x01, 0x80, 0xc2, 0, 0, 0], POD1), &v),
            Verdict::Drop(DropReason::Stp)
        );
        assert_eq!(
            r.handle_captured(Millis(0), &[0u8; 10], &v),
            Verdict::Drop(DropReason::TooShort)
        );
        assert_eq!(r.stats().dropped, 3);
    }

    #[test]
    fn relay_and_loops() {
        // Peer 2's view: 1 and 3 direct.
        let v2 = View {
            me: pn(2),
            hops: [(pn(1), pn(1)), (pn(3), pn(3))].into_iter().collect(),
            fast: BTreeSet::new(),
        };
        let mut r = SleeveRouter::new(pn(2));
        assert_eq!(
            r.handle_forwarded(
                Millis(0),
                Some(pn(1)),
                pn(1),
                pn(3),
                &frame(BCAST, POD1),
                &v2
            ),
            Verdict::Forward {
                deliveries: vec![Delivery {
                    via: pn(3),
                    src: pn(1),
                    dst: pn(3)
                }],
                broadcast: true
            }
        );
        // Relays do not learn MACs (the frame is not for us).
        assert_eq!(r.macs().lookup(MacAddr(POD1)), None);
        // A stale route pointing back where the frame came from.
        assert_eq!(
            r.handle_forwarded(
                Millis(0),
                Some(pn(3)),
                pn(1),
                pn(3),
                &frame(BCAST, POD1),
                &v2
            ),
            Verdict::Drop(DropReason::WouldLoop)
        );
        assert_eq!(
            r.handle_forwarded(
                Millis(0),
                Some(pn(1)),
                pn(2),
                pn(3),
                &frame(BCAST, POD1),
                &v2
            ),
            Verdict::Drop(DropReason::FromOurself)
        );
        assert_eq!(
            r.handle_forwarded(
                Millis(0),
                Some(pn(1)),
                pn(1),
                pn(9),
                &frame(BCAST, POD1),
                &v2
            ),
            Verdict::Drop(DropReason::NoRoute(pn(9)))
        );
        // A MAC moving between peers is counted.
        r.handle_forwarded(
            Millis(0),
            Some(pn(1)),
            pn(1),
            pn(2),
            &frame(BCAST, POD1),
            &v2,
        );
        r.handle_forwarded(
            Millis(0),
            Some(pn(3)),
            pn(3),
            pn(2),
            &frame(BCAST, POD1),
            &v2,
        );
        assert_eq!(r.macs().lookup(MacAddr(POD1)), Some(pn(3)));
        assert_eq!(r.stats().mac_moves, 1);
    }

    #[test]
    fn routes_view_over_mesh_routes() {
        use rand::rngs::StdRng;
        use rand::SeedableRng;
        use weft_mesh::peers::{LocalIdentity, PeerChanges};
        use weft_mesh::{ConnSummary, PeerUpdate, Peers};
        use weft_wire::ShortId;

        // 1-2, 2-3, 1-4, all established both ways; seen from 1.
        let edges = [(1, 2), (2, 1), (2, 3), (3, 2), (1, 4), (4, 1)];
        let conn = || ConnSummary {
            remote_tcp_addr: String::new(),
            outbound: true,
            established: true,
        };
        let mut peers = Peers::new(LocalIdentity {
            name: pn(1),
            nickname: String::new(),
            uid: 1,
            short_id: ShortId::new(1).unwrap(),
        });
        for (a, b) in edges {
            if a == 1 {
                peers.add_local_connection(pn(b), conn());
            }
        }
        let updates: Vec<PeerUpdate> = [2u64, 3, 4]
            .into_iter()
            .map(|n| PeerUpdate {
                name: pn(n),
                nickname: String::new(),
                uid: n,
                version: 1,
                short_id: ShortId::new(n as u16).unwrap(),
                has_short_id: true,
                connections: edges
                    .iter()
                    .filter(|(a, _)| *a == n)
                    .map(|(_, b)| (pn(*b), conn()))
                    .collect(),
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(1);
        peers.apply_update(&updates, &mut rng, &mut PeerChanges::default());
        let routes = Routes::new(&peers);
        let view = RoutesView {
            local: pn(1),
            routes: &routes,
            fastdp: |p| p == pn(2),
        };
        assert_eq!(view.local(), pn(1));
        assert_eq!(view.next_hop(pn(3)), Some(pn(2)));
        assert_eq!(view.next_hop(pn(4)), Some(pn(4)));
        assert_eq!(view.next_hop(pn(1)), None);
        assert_eq!(view.next_hop(pn(9)), None);
        assert_eq!(view.reachable_peers(), vec![pn(2), pn(3), pn(4)]);
        // A flood from 1 skips 2 (fast path) and relays 3's copy via 2.
        let mut r = SleeveRouter::new(pn(1));
        assert_eq!(
            r.handle_captured(Millis(0), &frame(BCAST, POD1), &view),
            Verdict::Forward {
                deliveries: vec![
                    Delivery {
                        via: pn(2),
                        src: pn(1),
                        dst: pn(3)
                    },
                    Delivery {
                        via: pn(4),
                        src: pn(1),
                        dst: pn(4)
                    },
                ],
                broadcast: true
            }
        );
    }

    #[test]
    fn mac_expiry_and_capacity() {
        let mut r = SleeveRouter::new(pn(1));
        let v = view1();
        let t0 = Millis(0);
        r.handle_captured(t0, &frame(BCAST, POD1), &v);
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        // Seen again at 5 min: survives the 10-minute mark.
        r.handle_captured(t0 + Duration::from_secs(300), &frame(BCAST, POD1), &v);
        r.handle_forwarded(t0, Some(pn(4)), pn(4), pn(1), &frame(BCAST, POD2), &v);
        let mut expired = 0;
        let mut t = t0;
        while t < t0 + Duration::from_secs(660) {
            t = r.poll_timeout().unwrap();
            expired += r.handle_timeout(t);
        }
        assert_eq!(expired, 1);
        assert_eq!(r.macs().lookup(MacAddr(POD2)), None);
        assert_eq!(r.macs().lookup(MacAddr(POD1)), Some(pn(1)));
        assert_eq!(r.macs_at(pn(1)), vec![MacAddr(POD1)]);
        assert_eq!(r.forget_peer(pn(1)), 1);
        assert!(r.macs().is_empty());

        let mut c = MacCache::new(MAC_MAX_AGE, 1);
        assert_eq!(c.learn(MacAddr(POD1), pn(1), t0), Learned::New);
        assert_eq!(c.learn(MacAddr(POD2), pn(1), t0), Learned::Full);
        assert_eq!(c.learn(MacAddr(POD1), pn(1), t0), Learned::Refreshed);
        assert_eq!(c.learn(MacAddr(POD1), pn(2), t0), Learned::Conflict(pn(1)));
        assert_eq!(
            c.learn_forced(MacAddr(POD1), pn(2), t0),
            Learned::Moved(pn(1))
        );
        assert_eq!(c.len(), 1);
    }
}
