//! No silent wedging: pending allocations and claims fail at their deadline with the reason
//! they were waiting, derived from the allocator's state.

use std::time::Duration;

use ipnet::Ipv4Net;
use weft_ipam::allocator::{AllocError, AllocatorConfig, InitMode};
use weft_ipam::node::{take_completion, IpamFailure, NodeAction, NodeIpam};
use weft_ipam::paxos::quorum_for_consensus;
use weft_ipam::ring::PeerName;
use weft_ipam::sim::sim_peer;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn config(peer: PeerName, universe: &str, init: InitMode) -> AllocatorConfig {
    AllocatorConfig {
        peer,
        uid: 42,
        nickname: format!("h{}", peer.as_u64() & 0xff),
        universe: net(universe),
        default_subnet: net(universe),
        init,
    }
}

fn completions(actions: &[NodeAction]) -> Vec<(u64, Result<Ipv4Net, IpamFailure>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            NodeAction::Completed { op_id, result } => Some((*op_id, result.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn lone_consensus_peer_fails_after_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let p0 = sim_peer(0);
    // consensus=3: quorum 2, and no other peer ever shows up.
    let quorum = quorum_for_consensus(3);
    assert_eq!(quorum, 2);
    let (mut a, _) = NodeIpam::open(
        &dir.path().join("data.db"),
        config(p0, "10.32.0.0/12", InitMode::Consensus { quorum }),
    )
    .unwrap();
    a.set_reachable([]);
    assert_eq!(a.status(0).status, "idle");
    let actions = a.allocate("pod-1", None, true, 7, 1_000).unwrap();
    assert!(completions(&actions).is_empty());
    // The proposal is broadcast (nobody listens).
    assert!(actions
        .iter()
        .any(|x| matches!(x, NodeAction::Broadcast(_))));
    assert_eq!(a.next_deadline(), Some(31_000));
    let st = a.status(11_000);
    assert_eq!(st.status, "awaiting consensus (quorum: 2, known: 1)");
    assert_eq!(st.pending_allocates, 1);
    assert_eq!(st.pending[0].waited_ms, 10_000);
    assert_eq!(st.pending[0].deadline_in_ms, 20_000);
    assert!(
        st.pending[0]
            .reason
            .starts_with("awaiting consensus: quorum 2, known 1"),
        "{}",
        st.pending[0].reason
    );
    let v = serde_json::to_value(&st.ipam).unwrap();
    assert_eq!(
        v["Paxos"],
        serde_json::json!({"Elector": true, "KnownNodes": 1, "Quorum": 2})
    );
    assert_eq!(v["PendingAllocates"], serde_json::json!(["pod-1"]));
    // Ticks before the deadline: still waiting, the proposal is repeated.
    let mut t = 1_000;
    while t < 31_000 {
        let actions = a.tick(t);
        assert!(completions(&actions).is_empty(), "at {t}");
        t += 1_000;
    }
    let actions = a.tick(31_000);
    let done = completions(&actions);
    assert_eq!(done.len(), 1);
    let (op, result) = &done[0];
    assert_eq!(*op, 7);
    let err = result.clone().unwrap_err();
    assert!(
        matches!(
            err,
            IpamFailure::TimedOut {
                waited_ms: 30_000,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "allocation for pod-1 in 10.32.0.0/12 timed out after 30 s: awaiting consensus: \
             quorum 2, known 1"
        ),
        "{msg}"
    );
    assert!(msg.contains("--ipalloc-init"), "{msg}");
    assert_eq!(a.num_pending(), 0);
    assert!(a.allocator().pending_ops().is_empty());
    assert_eq!(a.next_deadline(), None);
    // Later ticks do not report it again.
    assert!(completions(&a.tick(40_000)).is_empty());
    assert!(a.status(40_000).pending.is_empty());

    // A shorter timeout, and a claim: same story.
    a.set_op_timeout(Duration::from_secs(5));
    let actions = a
        .claim("pod-2", net("10.32.0.9/12"), true, 8, 50_000)
        .unwrap();
    assert!(completions(&actions).is_empty());
    assert!(completions(&a.tick(54_999)).is_empty());
    let done = completions(&a.tick(55_000));
    let msg = done[0].1.clone().unwrap_err().to_string();
    assert!(
        msg.starts_with("claim of 10.32.0.9/12 for pod-2 timed out after 5 s: awaiting consensus"),
        "{msg}"
    );
    // Cancel: one completion, then nothing.
    a.allocate("pod-3", None, true, 9, 60_000).unwrap();
    let done = completions(&a.cancel(9));
    assert_eq!(
        done,
        vec![(9, Err(IpamFailure::Alloc(AllocError::Cancelled)))]
    );
    assert!(a.cancel(9).is_empty());
    assert!(completions(&a.tick(100_000)).is_empty());
    // An op id still pending cannot be reused.
    a.allocate("pod-4", None, true, 10, 100_000).unwrap();
    assert!(a.allocate("pod-5", None, true, 10, 100_000).is_err());
}

#[test]
fn space_owned_by_unreachable_peers_is_named_then_rmpeer_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let (p0, p1) = (sim_peer(0), sim_peer(1));
    // A /28 seeded for two peers: we own 10.32.0.0/29 and hand out .1-.7 (the /28's network
    // address is excluded); peer 1 owns 10.32.0.8/29 and is never reachable.
    let (mut a, _) = NodeIpam::open(
        &dir.path().join("data.db"),
        config(p0, "10.32.0.0/28", InitMode::Seed(vec![p0, p1])),
    )
    .unwrap();
    a.set_reachable([]);
    for i in 0..7u64 {
        let mut actions = a.allocate(&format!("pod-{i}"), None, true, i, 0).unwrap();
        take_completion(&mut actions, i).unwrap().unwrap();
    }
    let actions = a.allocate("pod-7", None, true, 7, 0).unwrap();
    assert!(completions(&actions).is_empty());
    // No space request goes to an unreachable peer.
    assert!(!actions.iter().any(|x| matches!(x, NodeAction::Send { .. })));
    let st = a.status(1_000);
    assert_eq!(
        st.status,
        "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead"
    );
    assert_eq!(st.unreachable_peers, vec![p1.to_string()]);
    let done = completions(&a.tick(30_000));
    assert_eq!(done.len(), 1);
    let msg = done[0].1.clone().unwrap_err().to_string();
    assert_eq!(
        msg,
        "allocation for pod-7 in 10.32.0.0/28 timed out after 30 s: all free space in \
         10.32.0.0/28 is owned by unreachable peers: 02:00:00:00:00:02; if they are dead, \
         remove them with `weft rmpeer <peer>` on one node"
    );
    // Once reachable, the request goes out and the reason says what we wait for.
    a.set_reachable([p1]);
    let actions = a.allocate("pod-7", None, true, 8, 31_000).unwrap();
    assert!(actions
        .iter()
        .any(|x| matches!(x, NodeAction::Send { to, .. } if *to == p1)));
    assert_eq!(
        a.status(31_000).status,
        "waiting for IP(s) to become available"
    );
    let done = completions(&a.tick(61_000));
    let msg = done[0].1.clone().unwrap_err().to_string();
    assert!(
        msg.ends_with("no free address in 10.32.0.0/28 on this peer; asked 02:00:00:00:00:02 for space, no donation yet"),
        "{msg}"
    );
    // rmpeer: its 8 addresses are ours; the allocation succeeds at once.
    a.set_reachable([]);
    assert!(a.admin_takeover(a.peer(), 62_000).is_err());
    let (taken, actions) = a.admin_takeover(p1, 62_000).unwrap();
    assert_eq!(taken, 8);
    assert!(actions
        .iter()
        .any(|x| matches!(x, NodeAction::Broadcast(_))));
    assert!(!a.ring().contains_peer(p1));
    let mut actions = a.allocate("pod-7", None, true, 9, 62_000).unwrap();
    assert_eq!(
        take_completion(&mut actions, 9).unwrap(),
        Ok(net("10.32.0.8/28"))
    );
    assert_eq!(a.status(62_000).status, "ready");
    // Everything else is full: the reason says so.
    for i in 10..16u64 {
        let mut actions = a
            .allocate(&format!("x-{i}"), None, true, i, 62_000)
            .unwrap();
        take_completion(&mut actions, i).unwrap().unwrap();
    }
    a.allocate("full", None, true, 99, 62_000).unwrap();
    let done = completions(&a.tick(92_000));
    let msg = done[0].1.clone().unwrap_err().to_string();
    assert!(
        msg.ends_with(
            "no free address in 10.32.0.0/28: this peer's ranges there are full and no other \
             peer reports free space; release addresses or use a bigger --ipalloc-range"
        ),
        "{msg}"
    );
}
