//! `NodeIpam` and its store: restart keeps the ring and the owned addresses, Weave's discard
//! rules, `kill -9` in the middle of a burst, gossip errors naming the peer, and the status
//! structures' field names.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use weft_ipam::address::{from_ipv4, Range};
use weft_ipam::allocator::{AllocError, AllocatorConfig, InitMode};
use weft_ipam::gossip::Unicast;
use weft_ipam::node::{take_completion, IpamFailure, NodeAction, NodeError, NodeIpam};
use weft_ipam::ring::PeerName;
use weft_ipam::sim::sim_peer;
use weft_ipam::{LocalAllocator, OpenReport};

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn config(peer: PeerName, universe: &str, init: InitMode, uid: u64) -> AllocatorConfig {
    AllocatorConfig {
        peer,
        uid,
        nickname: format!("host-{}", peer.as_u64() & 0xff),
        universe: net(universe),
        default_subnet: net(universe),
        init,
    }
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("weave-netdata.db")
}

/// Allocates and expects an immediate result.
fn alloc_now(n: &mut NodeIpam, id: &str, op: u64) -> Ipv4Net {
    let mut actions = n.allocate(id, None, true, op, 0).unwrap();
    take_completion(&mut actions, op)
        .expect("completed at once")
        .unwrap()
}

fn claim_now(n: &mut NodeIpam, id: &str, cidr: Ipv4Net, op: u64) -> Result<Ipv4Net, IpamFailure> {
    let mut actions = n.claim(id, cidr, true, op, 0).unwrap();
    take_completion(&mut actions, op).expect("completed at once")
}

fn owned_map(n: &NodeIpam) -> BTreeMap<String, Vec<Ipv4Net>> {
    n.owned().into_iter().map(|e| (e.id, e.addrs)).collect()
}

#[test]
fn restart_keeps_ring_and_owned() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let (p0, p1) = (sim_peer(0), sim_peer(1));
    let seeded = InitMode::Seed(vec![p1, p0]);
    let (ring_before, owned_before, ranges_before) = {
        let (mut a, report) = NodeIpam::open(&path, config(p0, "10.32.0.0/24", seeded, 1)).unwrap();
        assert_eq!(
            report,
            OpenReport {
                restored: false,
                discarded_reason: None,
                owned_ids: 0
            }
        );
        assert!(a.ring_ready());
        assert_eq!(a.num_owned(), 128);
        for i in 0..5 {
            assert_eq!(
                alloc_now(&mut a, &format!("pod-{i}"), i),
                Ipv4Net::new(Ipv4Addr::new(10, 32, 0, i as u8 + 1), 24).unwrap()
            );
        }
        assert_eq!(
            claim_now(&mut a, "claimed", net("10.32.0.100/24"), 10),
            Ok(net("10.32.0.100/24"))
        );
        assert_eq!(
            claim_now(&mut a, "outside", net("192.168.1.1/24"), 11),
            Ok(net("192.168.1.1/24"))
        );
        let (freed, _) = a.release("pod-1", 0).unwrap();
        assert_eq!(freed, vec![net("10.32.0.2/24")]);
        a.release_addr("pod-3", ip("10.32.0.4"), 0).unwrap();
        // Peer 1 asks for space: the donation changes the ring, which must be persisted.
        let request = Unicast::SpaceRequest(Range::new(
            from_ipv4(ip("10.32.0.0")),
            from_ipv4(ip("10.32.1.0")),
        ))
        .encode()
        .unwrap();
        let actions = a.on_gossip_unicast(p1, &request, 0).unwrap();
        assert!(actions
            .iter()
            .any(|x| matches!(x, NodeAction::Broadcast(_))));
        assert!(actions
            .iter()
            .any(|x| matches!(x, NodeAction::Send { to, .. } if *to == p1)));
        assert!(a.num_owned() < 128, "nothing donated");
        (a.ring().clone(), owned_map(&a), a.ring().owned_ranges(p0))
    };
    // Restart with other init settings: ignored, the persisted ring wins.
    let (mut a, report) = NodeIpam::open(
        &path,
        config(p0, "10.32.0.0/24", InitMode::Consensus { quorum: 5 }, 2),
    )
    .unwrap();
    assert_eq!(
        report,
        OpenReport {
            restored: true,
            discarded_reason: None,
            owned_ids: 5
        }
    );
    assert_eq!(a.ring().entries(), ring_before.entries());
    assert_eq!(a.ring().seeds(), &[p0, p1]);
    assert_eq!(a.ring().owned_ranges(p0), ranges_before);
    assert_eq!(owned_map(&a), owned_before);
    assert_eq!(a.lookup("pod-3"), Vec::<Ipv4Net>::new());
    assert_eq!(a.lookup("outside"), vec![net("192.168.1.1/24")]);
    // pod-0, pod-2, pod-4, claimed (the outside claim is not in the range).
    assert_eq!(a.num_allocated(), 4);
    assert_eq!(a.owner_of(ip("10.32.0.100")), Some("claimed"));
    // No consensus needed: allocation continues at once, lowest free first.
    assert_eq!(alloc_now(&mut a, "new-1", 1), net("10.32.0.2/24"));
    assert_eq!(alloc_now(&mut a, "new-2", 2), net("10.32.0.4/24"));
    assert_eq!(alloc_now(&mut a, "new-3", 3), net("10.32.0.6/24"));
    // Refused at once: a subnet outside the range.
    let mut actions = a
        .allocate("far", Some(net("10.99.0.0/16")), true, 50, 0)
        .unwrap();
    let err = take_completion(&mut actions, 50).unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            IpamFailure::Alloc(AllocError::SubnetOutsideUniverse { .. })
        ),
        "{err}"
    );
    assert_eq!(a.num_pending(), 0);
    // Restored records still conflict.
    let err = claim_now(&mut a, "other", net("10.32.0.100/24"), 4).unwrap_err();
    assert_eq!(
        err.to_string(),
        "address 10.32.0.100 is already owned by claimed"
    );
    assert!(matches!(a.release("nobody", 0), Err(NodeError::Alloc(_))));
    let err = a.release_addr("pod-0", ip("10.32.0.9"), 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Free: address 10.32.0.9 not found for pod-0"
    );
}

#[test]
fn changed_name_or_range_discards_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let (p0, p1) = (sim_peer(0), sim_peer(1));
    {
        let (mut a, _) = NodeIpam::open(
            &path,
            config(p0, "10.32.0.0/24", InitMode::Seed(vec![p0]), 1),
        )
        .unwrap();
        alloc_now(&mut a, "pod-0", 1);
        alloc_now(&mut a, "weave:expose", 2);
    }
    {
        let (mut b, report) = NodeIpam::open(
            &path,
            config(p1, "10.32.0.0/24", InitMode::Seed(vec![p1]), 1),
        )
        .unwrap();
        assert_eq!(
            report,
            OpenReport {
                restored: false,
                discarded_reason: Some(
                    "the persisted peer name 02:00:00:00:00:01 differs from this peer's name \
                     02:00:00:00:00:02"
                        .into()
                ),
                owned_ids: 0
            }
        );
        assert!(b.owned().is_empty());
        assert_eq!(b.num_allocated(), 0);
        // The thrown-away records are handed to the daemon once.
        let discarded = b.take_discarded_owned();
        assert_eq!(
            discarded.keys().map(String::as_str).collect::<Vec<_>>(),
            ["pod-0", "weave:expose"]
        );
        assert!(b.take_discarded_owned().is_empty());
        assert_eq!(b.ring().peers(), vec![p1]);
        assert_eq!(alloc_now(&mut b, "pod-9", 1), net("10.32.0.1/24"));
    }
    // The discarded state was replaced by the new one, which restores.
    {
        let (b, report) = NodeIpam::open(
            &path,
            config(p1, "10.32.0.0/24", InitMode::Seed(vec![p1]), 2),
        )
        .unwrap();
        assert!(report.restored, "{report:?}");
        assert_eq!(b.lookup("pod-9"), vec![net("10.32.0.1/24")]);
        assert!(b.lookup("pod-0").is_empty());
    }
    // Another range.
    let (b, report) = NodeIpam::open(
        &path,
        config(p1, "10.32.0.0/16", InitMode::Seed(vec![p1]), 3),
    )
    .unwrap();
    assert!(!report.restored);
    assert_eq!(
        report.discarded_reason.as_deref(),
        Some(
            "the persisted allocation range 10.32.0.0/24 differs from the configured range \
             10.32.0.0/16"
        )
    );
    assert!(b.owned().is_empty());
    assert_eq!(b.num_owned(), 1 << 16);
}

#[test]
fn missing_or_empty_ring_discards() {
    let p0 = sim_peer(0);
    // A database of the single-node allocator: same name and range, no ring.
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let (mut l, _) = LocalAllocator::open(
            &path,
            net("10.32.0.0/24"),
            net("10.32.0.0/24"),
            &p0.to_string(),
        )
        .unwrap();
        l.allocate("pod-0", None, true).unwrap();
    }
    let (a, report) = NodeIpam::open(
        &path,
        config(p0, "10.32.0.0/24", InitMode::Consensus { quorum: 1 }, 1),
    )
    .unwrap();
    assert!(!report.restored);
    let reason = report.discarded_reason.unwrap();
    assert!(
        reason.starts_with("the persisted data has no ring"),
        "{reason}"
    );
    assert!(a.owned().is_empty());
    drop(a);

    // A consensus peer that never got a ring: nothing to lose, no reason.
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let cfg = || config(p0, "10.32.0.0/24", InitMode::Consensus { quorum: 2 }, 1);
    drop(NodeIpam::open(&path, cfg()).unwrap());
    let (mut a, report) = NodeIpam::open(&path, cfg()).unwrap();
    assert_eq!(
        report,
        OpenReport {
            restored: false,
            discarded_reason: None,
            owned_ids: 0
        }
    );
    // A claim outside the range is recorded without a ring; with no ring to restore it is
    // discarded at the next start, as Weave does.
    assert_eq!(
        claim_now(&mut a, "outside", net("192.168.0.7/24"), 1),
        Ok(net("192.168.0.7/24"))
    );
    drop(a);
    let (a, report) = NodeIpam::open(&path, cfg()).unwrap();
    assert!(!report.restored);
    assert!(report.discarded_reason.is_some());
    assert!(a.owned().is_empty());
}

#[test]
fn gossip_errors_name_the_peer() {
    let (p0, p1) = (sim_peer(0), sim_peer(1));
    let d0 = tempfile::tempdir().unwrap();
    let d1 = tempfile::tempdir().unwrap();
    let (mut a, _) = NodeIpam::open(
        &db(&d0),
        config(p0, "10.32.0.0/24", InitMode::Seed(vec![p0]), 1),
    )
    .unwrap();
    let (mut b, _) = NodeIpam::open(
        &db(&d1),
        config(p1, "10.32.0.0/24", InitMode::Seed(vec![p1]), 1),
    )
    .unwrap();
    let state = a.gossip_state_bytes().unwrap();
    let err = b.on_gossip_broadcast(p0, &state, 0).unwrap_err();
    assert!(matches!(err, NodeError::Merge { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("IPAM gossip from peer 02:00:00:00:00:01 cannot be merged: IP allocation was seeded by different peers"),
        "{msg}"
    );
    assert!(msg.contains("weft reset"), "{msg}");
    assert_eq!(b.status(0).last_gossip_error, Some(msg));
    // Periodic gossip has no sender: the ring's holder is still named.
    let err = b.on_gossip(&state, 0).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "IPAM gossip from a neighbour (periodic gossip, sender not known) cannot be merged"
        ) && err.contains("peer 02:00:00:00:00:01's"),
        "{err}"
    );
    // Malformed bytes.
    let err = b.on_gossip_unicast(p0, &[7, 1, 2], 0).unwrap_err();
    assert!(matches!(err, NodeError::Malformed { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "malformed IPAM message from peer 02:00:00:00:00:01: unknown IPAM unicast message \
             kind 7"
        ),
        "{msg}"
    );
    let err = b.on_gossip_broadcast(p0, &[0xff; 40], 0).unwrap_err();
    assert!(matches!(err, NodeError::Malformed { .. }), "{err}");
    // Nothing changed on b.
    assert_eq!(b.ring().peers(), vec![p1]);
    // A compatible peer merges and relays its whole state.
    let d2 = tempfile::tempdir().unwrap();
    let p2 = sim_peer(2);
    let (mut c, _) =
        NodeIpam::open(&db(&d2), config(p2, "10.32.0.0/24", InitMode::Observer, 1)).unwrap();
    let (relay, _) = c.on_gossip_broadcast(p0, &state, 0).unwrap();
    assert!(relay.is_some());
    assert_eq!(c.ring().entries(), a.ring().entries());
    assert!(c.status(0).last_gossip_error.is_none());
}

#[test]
fn report_has_weaves_field_names() {
    let (p0, p1) = (sim_peer(0), sim_peer(1));
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _) = NodeIpam::open(
        &db(&dir),
        config(p0, "10.32.0.0/24", InitMode::Seed(vec![p0, p1]), 1),
    )
    .unwrap();
    alloc_now(&mut a, "weave:expose", 1);
    alloc_now(&mut a, "pod", 2);
    a.set_reachable([p1]);
    let v = serde_json::to_value(a.report()).unwrap();
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "Paxos",
            "Range",
            "RangeNumIPs",
            "ActiveIPs",
            "DefaultSubnet",
            "Entries",
            "PendingClaims",
            "PendingAllocates"
        ])
    );
    assert_eq!(v["Paxos"], serde_json::Value::Null);
    assert_eq!(v["Range"], "10.32.0.0/24");
    assert_eq!(v["RangeNumIPs"], 256);
    assert_eq!(v["ActiveIPs"], 2);
    assert_eq!(
        v["Entries"][0],
        serde_json::json!({
            "Token": "10.32.0.0",
            "Size": 128,
            "Peer": "02:00:00:00:00:01",
            "Nickname": "host-1",
            "IsKnownPeer": true,
            "Version": 0,
        })
    );
    assert_eq!(v["Entries"][1]["Token"], "10.32.0.128");
    assert_eq!(v["Entries"][1]["Nickname"], "");
    let st = a.status(0);
    assert_eq!(st.status, "ready");
    assert_eq!(st.shares.len(), 2);
    assert!(st.shares[0].is_us);
    assert_eq!(st.shares[0].active, Some(2));
    assert_eq!(st.shares[0].ips, 128);
    assert!(st.unreachable_peers.is_empty());
    let text = a.status_text();
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("02:00:00:00:00:01(host-1) "), "{text}");
    assert!(
        first.ends_with("128 IPs (50.0% of total) (2 active)"),
        "{text}"
    );
    // Peer 1 unreachable: marked.
    a.set_reachable([]);
    let text = a.status_text();
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .ends_with("128 IPs (50.0% of total)  - unreachable!"),
        "{text}"
    );
    let st = a.status(0);
    assert_eq!(st.unreachable_peers, vec!["02:00:00:00:00:02".to_string()]);
    assert_eq!(st.unreachable_percentage, 50.0);
    let v = serde_json::to_value(&st).unwrap();
    assert_eq!(v["IPAM"]["Entries"][1]["IsKnownPeer"], false);
    assert_eq!(v["Status"], "ready");
}

// ---------------------------------------------------------------------------------------------
// kill -9 in the middle of a burst, for a node that owns a ring (seed = itself).
//
// The parent re-runs this test binary as a child with only `node_kill9_child` selected and the
// database path in CHILD_ENV. The child prints one line per operation after NodeIpam returned
// its completion. The parent SIGKILLs it mid-burst, reopens the database, and checks that
// every acknowledged operation is there (plus at most the one in flight).

const CHILD_ENV: &str = "WEFT_NODE_IPAM_KILL9_DB";
const UNIVERSE: &str = "10.32.0.0/16";

fn kill9_config(uid: u64) -> AllocatorConfig {
    let p = "aa:bb:cc:dd:ee:ff".parse().unwrap();
    config(p, UNIVERSE, InitMode::Seed(vec![p]), uid)
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Alloc(String),
    Release(String),
    Claim(String, Ipv4Net),
}

fn ops() -> impl Iterator<Item = Op> {
    (0u32..).flat_map(|i| {
        let mut v = vec![Op::Alloc(format!("pod-{i}"))];
        if i % 3 == 2 {
            v.push(Op::Release(format!("pod-{}", i - 1)));
        }
        if i % 7 == 0 {
            let a = Ipv4Addr::from(u32::from(ip("10.32.200.0")) + i);
            v.push(Op::Claim(
                format!("claim-{i}"),
                Ipv4Net::new(a, 16).unwrap(),
            ));
        }
        if i % 11 == 0 {
            let a = Ipv4Addr::from(u32::from(ip("192.168.0.0")) + i);
            v.push(Op::Claim(
                format!("outside-{i}"),
                Ipv4Net::new(a, 24).unwrap(),
            ));
        }
        v
    })
}

#[test]
#[ignore = "child process of node_kill9_keeps_every_acknowledged_operation"]
fn node_kill9_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let (mut a, _) = NodeIpam::open(Path::new(&path), kill9_config(1)).unwrap();
    let mut out = std::io::stdout().lock();
    if writeln!(out).is_err() {
        return;
    }
    for (k, op) in ops().take(100_000).enumerate() {
        let op_id = k as u64;
        let line = match &op {
            Op::Alloc(id) => {
                let mut actions = a.allocate(id, None, true, op_id, 0).unwrap();
                let got = take_completion(&mut actions, op_id).unwrap().unwrap();
                format!("ACK {k} {id} {got}")
            }
            Op::Release(id) => {
                a.release(id, 0).unwrap();
                format!("ACK {k} {id} released")
            }
            Op::Claim(id, c) => {
                let mut actions = a.claim(id, *c, true, op_id, 0).unwrap();
                let got = take_completion(&mut actions, op_id).unwrap().unwrap();
                assert_eq!(got, *c);
                format!("ACK {k} {id} {c}")
            }
        };
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return;
        }
    }
}

type Model = BTreeMap<String, Vec<Ipv4Net>>;

fn apply(model: &mut Model, op: &Op, alloc_result: Option<Ipv4Net>) {
    match op {
        Op::Alloc(id) => model.entry(id.clone()).or_default().extend(alloc_result),
        Op::Release(id) => {
            model.remove(id);
        }
        Op::Claim(id, c) => model.entry(id.clone()).or_default().push(*c),
    }
}

#[test]
fn node_kill9_keeps_every_acknowledged_operation() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "node_kill9_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut expected_ops = ops();
    let mut model = Model::new();
    let mut acked = 0usize;
    let mut killed = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(fields[0].parse::<usize>().unwrap(), acked, "{line}");
        let op = expected_ops.next().unwrap();
        let result = match &op {
            Op::Alloc(id) => {
                assert_eq!(fields[1], id);
                Some(fields[2].parse::<Ipv4Net>().unwrap())
            }
            Op::Release(id) => {
                assert_eq!((fields[1], fields[2]), (id.as_str(), "released"));
                None
            }
            Op::Claim(id, c) => {
                assert_eq!(
                    (fields[1], fields[2]),
                    (id.as_str(), c.to_string().as_str())
                );
                None
            }
        };
        apply(&mut model, &op, result);
        acked += 1;
        if acked == 300 && !killed {
            child.kill().unwrap(); // SIGKILL
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "the child stopped after {acked} operations");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");

    let (mut a, report) = NodeIpam::open(&path, kill9_config(2)).unwrap();
    assert!(report.restored, "{report:?}");
    // The ring survived: the seeded single-peer ring, all ours.
    assert_eq!(a.ring().peers(), vec![a.peer()]);
    assert_eq!(a.num_owned(), 1 << 16);
    let actual = owned_map(&a);
    let in_flight = expected_ops.next().unwrap();
    if actual != model {
        let mut with_in_flight = model.clone();
        match &in_flight {
            Op::Alloc(id) => {
                let got = actual.get(id).cloned().unwrap_or_default();
                assert_eq!(got.len(), 1, "in-flight allocation of {id}: {got:?}");
                apply(&mut with_in_flight, &in_flight, Some(got[0]));
            }
            _ => apply(&mut with_in_flight, &in_flight, None),
        }
        assert_eq!(
            actual, with_in_flight,
            "state after kill -9 ({acked} acknowledged)"
        );
    }
    let mut in_use = BTreeSet::new();
    for addrs in actual.values() {
        for c in addrs {
            assert!(in_use.insert(c.addr()), "{} recorded twice", c.addr());
        }
    }
    let universe = net(UNIVERSE);
    let in_universe = in_use.iter().filter(|x| universe.contains(*x)).count() as u64;
    assert_eq!(a.num_allocated(), in_universe);
    assert!(in_use.len() > 150, "{} addresses", in_use.len());
    // New allocations take the lowest unused addresses, never a restored one.
    let mut candidate = u32::from(ip("10.32.0.1"));
    for i in 0..50 {
        while in_use.contains(&Ipv4Addr::from(candidate)) {
            candidate += 1;
        }
        let got = alloc_now(&mut a, &format!("after-{i}"), 1_000_000 + i);
        assert_eq!(got, Ipv4Net::new(Ipv4Addr::from(candidate), 16).unwrap());
        assert!(in_use.insert(got.addr()));
    }
}

// ---------------------------------------------------------------------------------------------
// A failing disk: in a child process the database file may not grow any more (RLIMIT_FSIZE,
// SIGXFSZ ignored), so commits start failing. Every allocation the child saw acknowledged must
// be in the database afterwards; every one reported as not saved must not be, and was not
// kept in memory either. A ring change that cannot be committed is not sent.

const FAIL_ENV: &str = "WEFT_NODE_IPAM_FAIL_DB";

#[test]
#[ignore = "child process of node_failed_commits_are_never_acknowledged"]
fn node_store_failure_child() {
    let Some(path) = std::env::var_os(FAIL_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    let (mut a, _) = NodeIpam::open(&path, kill9_config(1)).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out).unwrap();
    for i in 0..20u64 {
        let got = alloc_now(&mut a, &format!("warm-{i}"), i);
        writeln!(out, "OK warm-{i} {got}").unwrap();
    }
    // From now on the file cannot grow.
    let len = std::fs::metadata(&path).unwrap().len();
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: len,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let mut failures = 0;
    for i in 100..5_000u64 {
        let id = format!("pod-{i}");
        let mut actions = a.allocate(&id, None, true, i, 0).unwrap();
        match take_completion(&mut actions, i).unwrap() {
            Ok(got) => writeln!(out, "OK {id} {got}").unwrap(),
            Err(e @ IpamFailure::NotSaved { .. }) => {
                assert!(e.to_string().contains("nothing was handed out"), "{e}");
                assert!(a.lookup(&id).is_empty(), "{id} kept in memory");
                assert!(a.status(0).store_error.is_some());
                writeln!(out, "FAIL {id}").unwrap();
                failures += 1;
                if failures == 20 {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(failures, 20, "the disk never failed");
    // A donation that cannot be committed is neither broadcast nor answered.
    let p1 = sim_peer(1);
    let request = Unicast::SpaceRequest(Range::new(
        from_ipv4(ip("10.32.0.0")),
        from_ipv4(ip("10.33.0.0")),
    ))
    .encode()
    .unwrap();
    let actions = a.on_gossip_unicast(p1, &request, 0).unwrap();
    assert!(actions.is_empty(), "{actions:?}");
    assert!(a.ring().contains_peer(p1));
    assert!(matches!(
        a.gossip_state_bytes(),
        Err(NodeError::NotSaved(_))
    ));
    assert!(a.tick(1_000).is_empty());
    writeln!(out, "DONE").unwrap();
    out.flush().unwrap();
}

#[test]
fn node_failed_commits_are_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "node_store_failure_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FAIL_ENV, &path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "child failed: {:?}", output.status);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.lines().any(|l| l == "DONE"), "{stdout}");
    let mut acked: BTreeMap<String, Ipv4Net> = BTreeMap::new();
    let mut failed = Vec::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["OK", id, addr] => {
                acked.insert(id.to_string(), addr.parse().unwrap());
            }
            ["FAIL", id] => failed.push(id.to_string()),
            _ => {}
        }
    }
    assert_eq!(failed.len(), 20);
    let (a, report) = NodeIpam::open(&path, kill9_config(2)).unwrap();
    assert!(report.restored, "{report:?}");
    let actual: BTreeMap<String, Ipv4Net> = a
        .owned()
        .into_iter()
        .map(|e| {
            assert_eq!(e.addrs.len(), 1, "{}", e.id);
            (e.id, e.addrs[0])
        })
        .collect();
    assert_eq!(actual, acked);
    // The donation never committed: the persisted ring is all ours.
    assert_eq!(a.ring().peers(), vec![a.peer()]);
}

/// A record restored for an address in a range the persisted ring does not give us yet (the
/// donation to us was not committed before a crash) stays taken once gossip gives the range
/// back: it is never handed out to another identifier.
#[test]
fn regained_range_keeps_recorded_addresses() {
    use rand::SeedableRng;
    use weft_ipam::allocator::{Action, Allocator};
    use weft_ipam::OwnedData;

    let (p0, p1) = (sim_peer(0), sim_peer(1));
    let make = |peer| {
        Allocator::new(config(
            peer,
            "10.32.0.0/24",
            InitMode::Seed(vec![p0, p1]),
            1,
        ))
        .unwrap()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (mut a, mut b) = (make(p0), make(p1));
    let seeded = a.ring().clone();
    // p1 donates to p0 (p0's half is 10.32.0.0/25, p1's 10.32.0.128/25).
    let request = Range::new(from_ipv4(ip("10.32.0.0")), from_ipv4(ip("10.32.1.0")));
    let actions = b
        .on_unicast(p0, &Unicast::SpaceRequest(request), 0, &mut rng)
        .unwrap();
    let update = actions
        .into_iter()
        .find_map(|x| match x {
            Action::Send {
                msg: msg @ Unicast::RingUpdate(_),
                ..
            } => Some(msg),
            _ => None,
        })
        .unwrap();
    let donated = b
        .ring()
        .owned_ranges(p0)
        .into_iter()
        .find(|r| r.start >= from_ipv4(ip("10.32.0.128")))
        .expect("a range donated to p0");
    let held = weft_ipam::address::to_ipv4(donated.start + 1);
    // p0 restarts with the old ring and a record inside the donated range.
    let records = BTreeMap::from([(
        "pod".to_string(),
        OwnedData {
            is_container: true,
            cidrs: vec![Ipv4Net::new(held, 24).unwrap()],
        },
    )]);
    a.restore(seeded, records).unwrap();
    assert!(!a.space().is_owned(from_ipv4(held)));
    a.on_unicast(p1, &update, 0, &mut rng).unwrap();
    assert_eq!(a.owner_of(from_ipv4(held)), Some(p0));
    assert!(a.space().is_allocated(from_ipv4(held)));
    // Fill everything p0 owns: the held address is never handed out again.
    for i in 0..256u64 {
        match a
            .allocate(i, &format!("x{i}"), None, true, 0, &mut rng)
            .unwrap()
            .0
        {
            weft_ipam::allocator::Outcome::Done(c) => assert_ne!(c.addr(), held),
            weft_ipam::allocator::Outcome::Pending => break,
        }
    }
}
