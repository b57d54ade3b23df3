//! The ring-aware allocator in a simulated cluster: peers start empty, agree on the ring by
//! consensus, allocate from their own ranges, ask each other for space and donate; every
//! message goes through the gob wire encodings over a lossy, reordering network.
//!
//! Checked: every allocation completes, no address is handed out twice, each allocated
//! address lies in a range its peer owns, no merge ever fails, and the rings converge.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use rand::{Rng, SeedableRng};
use weft_ipam::address::from_ipv4;
use weft_ipam::allocator::{Action, AllocError, Allocator, AllocatorConfig, InitMode, Outcome};
use weft_ipam::gossip::{self, GossipState, Unicast};
use weft_ipam::ring::PeerName;
use weft_ipam::sim::{sim_peer, SimNet};

#[derive(Debug, Clone)]
enum Msg {
    Gossip(Vec<u8>),
    Unicast(Vec<u8>),
}

struct Cluster {
    peers: Vec<Allocator>,
    alive: Vec<bool>,
    net: SimNet<Msg>,
    done: BTreeMap<(usize, u64), Result<Ipv4Net, AllocError>>,
    waiting: BTreeSet<(usize, u64)>,
    next_op: u64,
    persisted_rings: u64,
}

fn index_of(p: PeerName) -> usize {
    (p.as_u64() & 0xffff_ffff) as usize - 1
}

impl Cluster {
    fn new(
        n: usize,
        universe: &str,
        init: impl Fn(usize) -> InitMode,
        seed: u64,
        loss: f64,
    ) -> Cluster {
        let universe: Ipv4Net = universe.parse().unwrap();
        let peers = (0..n)
            .map(|i| {
                Allocator::new(AllocatorConfig {
                    peer: sim_peer(i),
                    uid: i as u64 + 1000,
                    nickname: format!("node-{i}"),
                    universe,
                    default_subnet: universe,
                    init: init(i),
                })
                .unwrap()
            })
            .collect();
        Cluster {
            peers,
            alive: vec![true; n],
            net: SimNet::new(seed, loss, 1, 200),
            done: BTreeMap::new(),
            waiting: BTreeSet::new(),
            next_op: 1,
            persisted_rings: 0,
        }
    }

    fn handle(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Broadcast(state) => {
                    let bytes = state.encode().unwrap();
                    for j in 0..self.peers.len() {
                        if j != i {
                            self.net.send(i, j, Msg::Gossip(bytes.clone()));
                        }
                    }
                }
                Action::Send { to, msg } => {
                    let j = index_of(to);
                    self.net.send(i, j, Msg::Unicast(msg.encode().unwrap()));
                }
                Action::Completed { op, result } => {
                    assert!(self.waiting.remove(&(i, op)), "unexpected completion");
                    self.done.insert((i, op), result);
                }
                Action::PersistRing => {
                    // What would be written must read back.
                    let bytes = gossip::encode_ring(self.peers[i].ring()).unwrap();
                    assert_eq!(&gossip::decode_ring(&bytes).unwrap(), self.peers[i].ring());
                    self.persisted_rings += 1;
                }
                Action::PersistOwned { id, data } => {
                    let map = BTreeMap::from([(id, data)]);
                    let bytes = gossip::encode_owned(&map).unwrap();
                    assert_eq!(gossip::decode_owned(&bytes).unwrap(), map);
                }
            }
        }
    }

    fn allocate(&mut self, i: usize, id: &str) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        let now = self.net.now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(op);
        let (outcome, actions) = self.peers[i]
            .allocate(op, id, None, true, now, &mut rng)
            .unwrap();
        match outcome {
            Outcome::Done(c) => {
                self.done.insert((i, op), Ok(c));
            }
            Outcome::Pending => {
                self.waiting.insert((i, op));
            }
        }
        self.handle(i, actions);
        op
    }

    /// Runs the network until `until` (ms), with ticks every 5 s and periodic gossip.
    fn run(&mut self, until: u64) {
        let mut t = self.net.now();
        while t < until {
            t += 100;
            while let Some((from, to, msg)) = self.net.next_until(t) {
                if !self.alive[to] || !self.alive[from] {
                    continue;
                }
                let now = self.net.now();
                let src = sim_peer(from);
                let mut rng = rand::rngs::StdRng::seed_from_u64(now ^ (to as u64) << 32);
                let result = match msg {
                    Msg::Gossip(bytes) => {
                        let state = GossipState::decode(&bytes).unwrap();
                        self.peers[to].on_gossip(src, &state, now, &mut rng)
                    }
                    Msg::Unicast(bytes) => {
                        let msg = Unicast::decode(&bytes).unwrap();
                        self.peers[to].on_unicast(src, &msg, now, &mut rng)
                    }
                };
                let actions = result.unwrap_or_else(|e| panic!("peer {to} from {from}: {e}"));
                self.handle(to, actions);
            }
            if t.is_multiple_of(5_000) {
                for i in 0..self.peers.len() {
                    if self.alive[i] {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(t + i as u64);
                        let actions = self.peers[i].tick(t, &mut rng);
                        self.handle(i, actions);
                    }
                }
            }
            if t.is_multiple_of(3_000) {
                let n = self.peers.len();
                for i in 0..n {
                    if !self.alive[i] {
                        continue;
                    }
                    let bytes = self.peers[i].gossip_state(0).encode().unwrap();
                    for _ in 0..2 {
                        let j = (i + self.net.rng().random_range(1..n)) % n;
                        self.net.send(i, j, Msg::Gossip(bytes.clone()));
                    }
                }
            }
        }
    }

    fn check(&self) {
        for (&(i, op), r) in &self.done {
            assert!(r.is_ok(), "op {op} on {i}: {r:?}");
        }
        let mut seen = BTreeMap::new();
        for (i, peer) in self.peers.iter().enumerate() {
            if !self.alive[i] {
                continue;
            }
            for (id, data) in peer.owned().iter() {
                for cidr in &data.cidrs {
                    let addr = from_ipv4(cidr.addr());
                    if peer.ring().owner_of(addr).is_none() {
                        continue; // outside the universe
                    }
                    assert!(
                        seen.insert(addr, (i, id.to_string())).is_none(),
                        "{} handed out twice",
                        cidr.addr()
                    );
                    assert_eq!(
                        peer.ring().owner_of(addr),
                        Some(sim_peer(i)),
                        "peer {i} holds {cidr} outside its ranges"
                    );
                    assert!(peer.space().is_allocated(addr));
                }
            }
        }
        // No two live peers own the same address in their own copies.
        let mut owned: Vec<_> = (0..self.peers.len())
            .filter(|&i| self.alive[i])
            .flat_map(|i| {
                self.peers[i]
                    .space()
                    .owned_ranges()
                    .iter()
                    .map(move |r| (*r, i))
            })
            .collect();
        owned.sort();
        for w in owned.windows(2) {
            assert!(!w[0].0.overlaps(&w[1].0), "{w:?}");
        }
    }
}

#[test]
fn twelve_peers_consensus_and_donation() {
    let n = 12;
    // A /22 split 12 ways: each peer starts with 64 or 128 addresses; 100 allocations on
    // some peers force donations.
    let mut c = Cluster::new(
        n,
        "10.32.0.0/22",
        |_| InitMode::Consensus { quorum: 12 / 2 + 1 },
        7,
        0.05,
    );
    // Every peer allocates a few addresses at once (consensus starts lazily).
    for i in 0..n {
        for k in 0..5 {
            c.allocate(i, &format!("c{i}-{k}"));
        }
    }
    c.run(60_000);
    assert!(c.waiting.is_empty(), "still waiting: {:?}", c.waiting);
    c.check();
    // Three peers need far more than their share: donations.
    for i in [0, 5, 11] {
        for k in 5..105 {
            c.allocate(i, &format!("c{i}-{k}"));
        }
    }
    c.run(400_000);
    assert!(
        c.waiting.is_empty(),
        "still waiting: {} ops",
        c.waiting.len()
    );
    c.check();
    for i in [0, 5, 11] {
        assert!(c.peers[i].space().num_allocated() >= 105);
    }
    // The rings converge.
    c.run(500_000);
    let reference = c.peers[0].ring().entries().to_vec();
    for p in &c.peers {
        assert_eq!(p.ring().entries(), &reference[..]);
        assert_eq!(p.status().pending, 0);
        assert!(p.status().ring_ready);
    }
    assert!(reference.len() > n, "no donation happened");
    assert!(c.persisted_rings > 0);
    // Idempotent allocation: the same id gets the same address.
    let again = c.peers[0].allocate(
        9999,
        "c0-0",
        None,
        true,
        c.net.now(),
        &mut rand::rngs::StdRng::seed_from_u64(1),
    );
    let first = c
        .done
        .iter()
        .find(|((i, _), _)| *i == 0)
        .map(|(_, r)| r.clone().unwrap())
        .unwrap();
    assert_eq!(again.unwrap().0, Outcome::Done(first));
}

#[test]
fn seeded_ring_release_reuse_and_rmpeer() {
    let n = 10;
    let seeds: Vec<PeerName> = (0..n).rev().map(sim_peer).collect();
    let mut c = Cluster::new(n, "10.40.0.0/16", |_| InitMode::Seed(seeds.clone()), 3, 0.0);
    for i in 0..n {
        c.allocate(i, &format!("a{i}"));
    }
    // Seeded: done at once, no message needed.
    assert!(c.waiting.is_empty());
    c.run(10_000);
    c.check();
    // Release and allocate again: the lowest free address is reused.
    let (freed, actions) = c.peers[3].release("a3").unwrap();
    c.handle(3, actions);
    let op = c.allocate(3, "b3");
    assert_eq!(c.done[&(3, op)], Ok(freed[0]));
    assert!(matches!(
        c.peers[3].release("nobody"),
        Err(AllocError::NoAddresses(_))
    ));

    // Peer 4 dies; peer 2 takes over its ranges once (rmpeer).
    let owned4 = c.peers[4].space().num_owned();
    c.run(20_000);
    c.alive[4] = false;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let (taken, actions) = c.peers[2].admin_takeover(sim_peer(4), &mut rng);
    assert_eq!(taken, owned4);
    c.handle(2, actions);
    c.run(60_000);
    c.check();
    for (i, p) in c.peers.iter().enumerate() {
        if c.alive[i] {
            assert!(
                !p.ring().contains_peer(sim_peer(4)),
                "peer {i} still sees peer 4"
            );
        }
    }
    // Everything still allocatable: each live peer allocates 50 more.
    for i in (0..n).filter(|&i| i != 4) {
        for k in 0..50 {
            c.allocate(i, &format!("x{i}-{k}"));
        }
    }
    c.run(200_000);
    assert!(c.waiting.is_empty());
    c.check();
}

#[test]
fn observer_gets_the_ring_and_space() {
    // Peers 0-2 agree; peer 3 is an observer and must get space by donation.
    let mut c = Cluster::new(
        4,
        "10.32.0.0/24",
        |i| {
            if i == 3 {
                InitMode::Observer
            } else {
                InitMode::Consensus { quorum: 2 }
            }
        },
        11,
        0.0,
    );
    c.allocate(3, "obs-1");
    c.run(10_000);
    // Nobody asked for consensus yet: the observer waits.
    assert_eq!(c.waiting.len(), 1);
    assert!(c.peers[3].ring().is_empty());
    c.allocate(0, "first");
    c.run(60_000);
    assert!(c.waiting.is_empty(), "{:?}", c.waiting);
    c.check();
    assert!(!c.peers[3].ring().contains_peer(PeerName::default()));
    assert!(c.peers[3].ring().contains_peer(sim_peer(3)));
    assert!(c.peers[3].space().num_owned() > 0);
}

#[test]
fn claims_of_addresses_owned_elsewhere() {
    let seeds: Vec<PeerName> = (0..2).map(sim_peer).collect();
    let mut c = Cluster::new(2, "10.32.0.0/24", |_| InitMode::Seed(seeds.clone()), 5, 0.0);
    c.allocate(0, "x");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // 10.32.0.200 is peer 1's: peer 0 asks for it.
    let cidr: Ipv4Net = "10.32.0.200/24".parse().unwrap();
    let (outcome, actions) = c.peers[0]
        .claim(77, "claimed", cidr, true, 0, &mut rng)
        .unwrap();
    assert_eq!(outcome, Outcome::Pending);
    c.waiting.insert((0, 77));
    c.handle(0, actions);
    c.run(20_000);
    assert_eq!(c.done[&(0, 77)], Ok(cidr));
    assert_eq!(
        c.peers[0].owner_of(from_ipv4(cidr.addr())),
        Some(sim_peer(0))
    );
    c.check();
    // An address peer 1 has allocated cannot be claimed by peer 0: denied.
    c.allocate(1, "y");
    c.run(25_000);
    let y = c.peers[1].owned().get("y").unwrap().cidrs[0];
    let (outcome, actions) = c.peers[0]
        .claim(78, "z", y, true, c.net.now(), &mut rng)
        .unwrap();
    assert_eq!(outcome, Outcome::Pending);
    c.waiting.insert((0, 78));
    c.handle(0, actions);
    c.run(30_000);
    assert!(
        matches!(c.done[&(0, 78)], Err(AllocError::ClaimDenied { .. })),
        "{:?}",
        c.done[&(0, 78)]
    );
    // Outside the universe: recorded only. Ours: claimed at once.
    let outside: Ipv4Net = "192.168.1.5/24".parse().unwrap();
    let (o, _) = c.peers[0]
        .claim(79, "out", outside, false, 0, &mut rng)
        .unwrap();
    assert_eq!(o, Outcome::Done(outside));
    let mine: Ipv4Net = "10.32.0.9/24".parse().unwrap();
    assert_eq!(
        c.peers[0].owner_of(from_ipv4(mine.addr())),
        Some(sim_peer(0))
    );
    let (o, _) = c.peers[0]
        .claim(80, "mine", mine, true, 0, &mut rng)
        .unwrap();
    assert_eq!(o, Outcome::Done(mine));
    assert!(matches!(
        c.peers[0].claim(81, "other", mine, true, 0, &mut rng),
        Err(AllocError::AlreadyOwned { .. })
    ));
    // Subnet outside the universe.
    assert!(matches!(
        c.peers[0].allocate(
            82,
            "q",
            Some("10.99.0.0/16".parse().unwrap()),
            true,
            0,
            &mut rng
        ),
        Err(AllocError::SubnetOutsideUniverse { .. })
    ));
}

#[test]
fn rings_from_different_seeds_are_refused() {
    let universe: Ipv4Net = "10.32.0.0/12".parse().unwrap();
    let make = |i: usize, seeds: Vec<PeerName>| {
        Allocator::new(AllocatorConfig {
            peer: sim_peer(i),
            uid: 1,
            nickname: format!("n{i}"),
            universe,
            default_subnet: universe,
            init: InitMode::Seed(seeds),
        })
        .unwrap()
    };
    let mut a = make(0, vec![sim_peer(0)]);
    let mut b = make(1, vec![sim_peer(1)]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let err = b
        .on_gossip(sim_peer(0), &a.gossip_state(0), 0, &mut rng)
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("IP allocation was seeded by different peers"),
        "{err}"
    );
    // Another range: refused too.
    let mut c = Allocator::new(AllocatorConfig {
        peer: sim_peer(2),
        uid: 1,
        nickname: "n2".into(),
        universe: "10.32.0.0/16".parse().unwrap(),
        default_subnet: "10.32.0.0/16".parse().unwrap(),
        init: InitMode::Seed(vec![sim_peer(0)]),
    })
    .unwrap();
    let err = c
        .on_gossip(sim_peer(0), &a.gossip_state(0), 0, &mut rng)
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Incompatible IP allocation ranges"),
        "{err}"
    );
    // A newcomer's empty state gets our ring back by unicast.
    let mut fresh = Allocator::new(AllocatorConfig {
        peer: sim_peer(5),
        uid: 1,
        nickname: "n5".into(),
        universe,
        default_subnet: universe,
        init: InitMode::Observer,
    })
    .unwrap();
    let actions = a
        .on_gossip(sim_peer(5), &fresh.gossip_state(0), 0, &mut rng)
        .unwrap();
    let reply = actions
        .iter()
        .find_map(|x| match x {
            Action::Send {
                to,
                msg: Unicast::RingUpdate(s),
            } if *to == sim_peer(5) => Some(s.clone()),
            _ => None,
        })
        .expect("ring update sent back");
    fresh
        .on_unicast(sim_peer(0), &Unicast::RingUpdate(reply), 0, &mut rng)
        .unwrap();
    assert_eq!(fresh.ring().entries(), a.ring().entries());
    assert_eq!(
        fresh.nicknames().get(&sim_peer(0)).map(String::as_str),
        Some("n0")
    );
}
