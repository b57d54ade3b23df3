//! Paxos over simulated gossip: nodes reach one value, with competing proposers, message loss
//! and reordering; safety (no two nodes learn different values) over many seeds.

use rand::rngs::StdRng;
use rand::SeedableRng;
use weft_ipam::paxos::{
    quorum_for_consensus, quorum_for_targets, AcceptedValue, GossipState, NodeClaims, NodeId,
    Paxos, ProposalId, PROPOSAL_INTERVAL_MS,
};
use weft_ipam::ring::PeerName;
use weft_ipam::sim::{sim_peer, simulate_paxos, PaxosSimConfig, PaxosSimOutcome};

fn check(out: &PaxosSimOutcome, n: usize, quorum: usize) -> Vec<PeerName> {
    assert!(!out.disagreement, "{out:?}");
    assert!(out.all_consensus_ms.is_some(), "no consensus: {out:?}");
    let v = out.values[0].clone().unwrap();
    for x in &out.values {
        assert_eq!(x.as_ref(), Some(&v));
    }
    // The value is the set of nodes the first successful proposer knew: at least a quorum.
    assert!(v.len() >= quorum && v.len() <= n, "{v:?}");
    let all: Vec<PeerName> = (0..n).map(sim_peer).collect();
    assert!(v.iter().all(|p| all.contains(p)));
    assert!(v.windows(2).all(|w| w[0] < w[1]), "not sorted: {v:?}");
    v
}

#[test]
fn three_nodes_one_proposer() {
    for seed in 0..50 {
        let mut c = PaxosSimConfig::new(3, seed);
        c.proposers = vec![(0, 0)];
        let out = simulate_paxos(&c);
        check(&out, 3, 2);
        assert_eq!(out.max_round, 1, "seed {seed}: {out:?}");
    }
}

#[test]
fn three_nodes_competing_proposers_with_loss() {
    for seed in 0..100 {
        let mut c = PaxosSimConfig::new(3, seed);
        c.loss = 0.2;
        c.max_delay_ms = 300;
        c.proposers = vec![(0, 0), (1, 0), (2, 40)];
        check(&simulate_paxos(&c), 3, 2);
    }
}

#[test]
fn fifty_nodes_all_proposing() {
    for seed in 0..5 {
        let c = PaxosSimConfig::new(50, seed);
        let out = simulate_paxos(&c);
        check(&out, 50, 26);
    }
}

#[test]
fn fifty_nodes_lossy_reordering() {
    for seed in 0..3 {
        let mut c = PaxosSimConfig::new(50, 100 + seed);
        c.loss = 0.3;
        c.max_delay_ms = 2_000;
        c.proposers = (0..50).map(|i| (i, (i as u64 * 37) % 3_000)).collect();
        check(&simulate_paxos(&c), 50, 26);
    }
}

#[test]
fn heavy_loss_still_safe_and_live() {
    for seed in 0..30 {
        let mut c = PaxosSimConfig::new(5, 1000 + seed);
        c.loss = 0.6;
        c.max_delay_ms = 5_000;
        c.proposers = vec![(0, 0), (3, 0), (4, 7_000)];
        check(&simulate_paxos(&c), 5, 3);
    }
}

#[test]
fn a_single_node_with_quorum_one() {
    let c = PaxosSimConfig::new(1, 0);
    let out = simulate_paxos(&c);
    assert_eq!(check(&out, 1, 1), vec![sim_peer(0)]);
    assert_eq!(out.first_consensus_ms, Some(0));
}

#[test]
fn no_quorum_no_consensus() {
    // Three nodes but a quorum of four (e.g. consensus=7): nobody decides.
    let mut c = PaxosSimConfig::new(3, 1);
    c.quorum = 4;
    c.max_time_ms = 60_000;
    let out = simulate_paxos(&c);
    assert_eq!(out.first_consensus_ms, None);
    assert!(out.values.iter().all(Option::is_none));
    // Proposals were retried every interval.
    assert!(
        out.max_round >= 60_000 / (PROPOSAL_INTERVAL_MS * 3 / 2),
        "{out:?}"
    );
}

fn id(name: u64, uid: u64) -> NodeId {
    NodeId {
        name: PeerName::new(name).unwrap(),
        uid,
    }
}

#[test]
fn proposal_order_is_round_then_name_then_uid() {
    let pid = |round, name, uid| ProposalId {
        round,
        proposer: id(name, uid),
    };
    assert!(pid(2, 1, 1) > pid(1, 9, 9));
    assert!(pid(1, 2, 1) > pid(1, 1, 9));
    assert!(pid(1, 1, 2) > pid(1, 1, 1));
    assert!(!pid(0, 5, 5).is_valid());
    assert!(pid(1, 0, 0).is_valid());
}

#[test]
fn quorums() {
    assert_eq!(quorum_for_consensus(0), 1);
    assert_eq!(quorum_for_consensus(1), 1);
    assert_eq!(quorum_for_consensus(2), 2);
    assert_eq!(quorum_for_consensus(3), 2);
    assert_eq!(quorum_for_consensus(50), 26);
    // Without N: the targets plus ourself.
    assert_eq!(quorum_for_targets(0), 1);
    assert_eq!(quorum_for_targets(1), 2);
    assert_eq!(quorum_for_targets(2), 2);
    assert_eq!(quorum_for_targets(3), 3);
}

#[test]
fn update_takes_later_proposals_and_ignores_our_own_entry() {
    let me = id(1, 1);
    let other = id(2, 2);
    let mut px = Paxos::new(me, 2);
    assert_eq!(px.gossip_state().len(), 1);
    let claims = |round, proposer: NodeId, accepted_round| NodeClaims {
        promise: ProposalId { round, proposer },
        accepted: ProposalId {
            round: accepted_round,
            proposer,
        },
        accepted_val: AcceptedValue {
            value: vec![proposer.name],
            origin: ProposalId {
                round: accepted_round,
                proposer,
            },
        },
    };
    let mut st = GossipState::new();
    st.insert(other, claims(3, other, 2));
    assert!(px.update(&st));
    assert!(!px.update(&st));
    // Older information changes nothing.
    let mut old = GossipState::new();
    old.insert(other, claims(2, other, 1));
    assert!(!px.update(&old));
    assert_eq!(px.gossip_state()[&other], claims(3, other, 2));
    // Claims about ourselves are ours alone.
    let mut fake = GossipState::new();
    fake.insert(me, claims(9, other, 9));
    assert!(!px.update(&fake));
    assert_eq!(px.gossip_state()[&me], NodeClaims::default());
    // A later promise alone.
    let mut later = GossipState::new();
    later.insert(other, claims(4, other, 2));
    assert!(px.update(&later));
    assert_eq!(px.gossip_state()[&other].promise.round, 4);
}

#[test]
fn proposer_accepts_the_highest_accepted_value() {
    let (a, b, c) = (id(1, 1), id(2, 2), id(3, 3));
    let mut rng = StdRng::seed_from_u64(0);
    let mut px = Paxos::new(a, 2);
    // b proposed in round 1 and accepted its own value, which nobody else accepted.
    let old = ProposalId {
        round: 1,
        proposer: b,
    };
    let mut st = GossipState::new();
    st.insert(
        b,
        NodeClaims {
            promise: old,
            accepted: old,
            accepted_val: AcceptedValue {
                value: vec![c.name, b.name],
                origin: old,
            },
        },
    );
    st.insert(c, NodeClaims::default());
    assert!(px.update(&st));
    // We propose: a round above every round seen.
    px.propose(0, &mut rng);
    assert!(px.is_proposing());
    let ours = px.gossip_state()[&a].promise;
    assert_eq!(
        ours,
        ProposalId {
            round: 2,
            proposer: a
        }
    );
    // Only our own promise so far: nothing accepted.
    px.think(0, &mut rng);
    assert!(!px.gossip_state()[&a].accepted.is_valid());
    // b promises our proposal, still reporting its accepted value.
    st.get_mut(&b).unwrap().promise = ours;
    assert!(px.update(&st));
    assert!(px.think(1, &mut rng));
    let mine = &px.gossip_state()[&a];
    assert_eq!(mine.accepted, ours);
    // The highest previously accepted value, with its origin, not the names we know.
    assert_eq!(mine.accepted_val.value, vec![c.name, b.name]);
    assert_eq!(mine.accepted_val.origin, old);
    // Two nodes (a quorum) accepted values of that origin: consensus, sorted.
    assert_eq!(px.consensus(), Some(vec![b.name, c.name]));
    let status = px.status();
    assert!(status.consensus);
    assert_eq!(status.to_string(), "consensus reached (quorum 2)");
    // No re-proposal once there is consensus.
    assert!(!px.think(1_000_000, &mut rng));
}

#[test]
fn fresh_proposal_uses_all_known_names() {
    let (a, b, c) = (id(3, 1), id(1, 2), id(2, 3));
    let mut rng = StdRng::seed_from_u64(0);
    let mut px = Paxos::new(a, 2);
    let status = px.status();
    assert_eq!(status.to_string(), "awaiting consensus: quorum 2, known 1");
    let mut st = GossipState::new();
    st.insert(c, NodeClaims::default());
    px.update(&st);
    px.propose(0, &mut rng);
    px.think(0, &mut rng);
    // Only our own promise: no acceptance yet.
    assert!(!px.gossip_state()[&a].accepted.is_valid());
    let ours = px.gossip_state()[&a].promise;
    let mut st = GossipState::new();
    st.insert(
        b,
        NodeClaims {
            promise: ours,
            ..Default::default()
        },
    );
    px.update(&st);
    assert!(px.think(1, &mut rng));
    let mine = &px.gossip_state()[&a];
    assert_eq!(mine.accepted, ours);
    assert_eq!(mine.accepted_val.origin, ours);
    assert_eq!(mine.accepted_val.value, vec![b.name, c.name, a.name]);
    // One acceptance is not a quorum.
    assert_eq!(px.consensus(), None);
    assert_eq!(px.status().best_accepted, 1);
}

#[test]
fn acceptor_follows_the_proposal_it_promised() {
    let (a, b) = (id(1, 1), id(2, 2));
    let mut rng = StdRng::seed_from_u64(0);
    let mut acceptor = Paxos::new(a, 2);
    let p = ProposalId {
        round: 5,
        proposer: b,
    };
    let val = AcceptedValue {
        value: vec![a.name, b.name],
        origin: p,
    };
    let mut st = GossipState::new();
    st.insert(
        b,
        NodeClaims {
            promise: p,
            accepted: p,
            accepted_val: val.clone(),
        },
    );
    acceptor.update(&st);
    assert!(acceptor.think(0, &mut rng));
    let mine = &acceptor.gossip_state()[&a];
    assert_eq!(mine.promise, p);
    assert_eq!(mine.accepted, p);
    assert_eq!(mine.accepted_val, val);
    assert_eq!(acceptor.consensus(), Some(vec![a.name, b.name]));
    // Nothing more to do.
    assert!(!acceptor.think(1, &mut rng));
    // A new node learns the consensus from gossip alone (learner).
    let mut learner = Paxos::new(id(9, 9), 2);
    learner.update(acceptor.gossip_state());
    assert_eq!(learner.consensus(), Some(vec![a.name, b.name]));
}

#[test]
fn acceptor_refuses_a_lower_proposal() {
    let (a, b, c) = (id(1, 1), id(2, 2), id(3, 3));
    let mut rng = StdRng::seed_from_u64(0);
    let mut px = Paxos::new(a, 2);
    let high = ProposalId {
        round: 7,
        proposer: c,
    };
    let low = ProposalId {
        round: 6,
        proposer: b,
    };
    let mut st = GossipState::new();
    st.insert(
        c,
        NodeClaims {
            promise: high,
            ..Default::default()
        },
    );
    st.insert(
        b,
        NodeClaims {
            promise: low,
            accepted: low,
            accepted_val: AcceptedValue {
                value: vec![b.name],
                origin: low,
            },
        },
    );
    px.update(&st);
    px.think(0, &mut rng);
    let mine = &px.gossip_state()[&a];
    assert_eq!(mine.promise, high);
    assert!(!mine.accepted.is_valid());
}

#[test]
fn observers_take_no_part() {
    let mut rng = StdRng::seed_from_u64(0);
    let mut obs = Paxos::observer(id(1, 1));
    assert!(obs.is_observer());
    obs.propose(0, &mut rng);
    assert!(!obs.think(100_000, &mut rng));
    let mut st = GossipState::new();
    let p = ProposalId {
        round: 1,
        proposer: id(2, 2),
    };
    st.insert(
        id(2, 2),
        NodeClaims {
            promise: p,
            accepted: p,
            accepted_val: AcceptedValue {
                value: vec![],
                origin: p,
            },
        },
    );
    assert!(!obs.update(&st));
    assert!(obs.gossip_state().is_empty());
    assert_eq!(obs.consensus(), None);
    assert!(obs.status().to_string().starts_with("observer"));
}

#[test]
fn reproposes_after_the_interval() {
    let mut rng = StdRng::seed_from_u64(0);
    let mut px = Paxos::new(id(1, 1), 2);
    // Not started: no proposal however long we wait.
    assert!(!px.think(1_000_000, &mut rng));
    px.propose(0, &mut rng);
    assert_eq!(px.gossip_state()[&id(1, 1)].promise.round, 1);
    assert!(!px.think(PROPOSAL_INTERVAL_MS - 1, &mut rng));
    assert!(px.think(PROPOSAL_INTERVAL_MS * 3 / 2, &mut rng));
    assert_eq!(px.gossip_state()[&id(1, 1)].promise.round, 2);
}
