//! Persistence: restart, discard rules, damaged files, and `kill -9` in the middle of a burst.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use weft_ipam::{Error, LocalAllocator, OpenReport, Store, StoreError};

const PEER: &str = "aa:bb:cc:dd:ee:ff";

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn open_with(
    path: &Path,
    universe: &str,
    peer: &str,
) -> Result<(LocalAllocator, OpenReport), Error> {
    LocalAllocator::open(path, net(universe), net(universe), peer)
}

fn open(path: &Path) -> (LocalAllocator, OpenReport) {
    open_with(path, "10.32.0.0/12", PEER).unwrap()
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("weave-netdata.db")
}

#[test]
fn reopen_keeps_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let (mut a, _) = open(&path);
        assert_eq!(
            a.allocate("weave:expose", None, false).unwrap(),
            net("10.32.0.1/12")
        );
        for i in 0..5 {
            a.allocate(&format!("pod-{i}"), None, true).unwrap();
        }
        a.allocate("pod-0", Some(net("10.40.0.0/14")), true)
            .unwrap();
        a.claim("pod-9", net("10.44.1.1/12"), true).unwrap();
        a.claim("pod-9", net("172.16.0.9/16"), true).unwrap();
        a.release("pod-2").unwrap();
        a.release_addr("pod-0", ip("10.32.0.2")).unwrap();
    }
    let (mut a, report) = open(&path);
    assert_eq!(
        report,
        OpenReport {
            restored: true,
            discarded_reason: None,
            owned_ids: 6
        }
    );
    assert_eq!(a.lookup("weave:expose"), vec![net("10.32.0.1/12")]);
    assert_eq!(a.lookup("pod-0"), vec![net("10.40.0.1/14")]);
    assert_eq!(a.lookup("pod-2"), vec![]);
    assert_eq!(
        a.lookup("pod-9"),
        vec![net("10.44.1.1/12"), net("172.16.0.9/16")]
    );
    assert!(
        !a.owned()
            .iter()
            .find(|e| e.id == "weave:expose")
            .unwrap()
            .is_container
    );
    // weave:expose, pod-1, pod-3, pod-4, pod-0 (10.40.0.1), pod-9 (10.44.1.1).
    assert_eq!(a.num_allocated(), 6);
    assert_eq!(a.num_free(), (1 << 20) - 6);
    // The released addresses (10.32.0.2 and 10.32.0.4) are reused lowest first.
    assert_eq!(
        a.allocate("new-1", None, true).unwrap(),
        net("10.32.0.2/12")
    );
    assert_eq!(
        a.allocate("new-2", None, true).unwrap(),
        net("10.32.0.4/12")
    );
    assert_eq!(
        a.allocate("new-3", None, true).unwrap(),
        net("10.32.0.7/12")
    );
    // Restored claims still conflict.
    assert!(matches!(
        a.claim("other", net("10.44.1.1/12"), true),
        Err(Error::AlreadyOwned { .. })
    ));
    assert!(matches!(
        a.claim("other", net("172.16.0.9/16"), true),
        Err(Error::AlreadyOwned { .. })
    ));
}

#[test]
fn changed_universe_discards_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let (mut a, _) = open(&path);
        a.allocate("pod-0", None, true).unwrap();
        a.allocate("pod-1", None, true).unwrap();
    }
    {
        let (mut a, report) = open_with(&path, "10.32.0.0/16", PEER).unwrap();
        assert!(!report.restored);
        assert_eq!(report.owned_ids, 0);
        let reason = report.discarded_reason.unwrap();
        assert_eq!(
            reason,
            "the persisted allocation range 10.32.0.0/12 differs from the configured range 10.32.0.0/16"
        );
        assert!(a.owned().is_empty());
        assert_eq!(
            a.allocate("pod-7", None, true).unwrap(),
            net("10.32.0.1/16")
        );
    }
    // The discarded state was replaced: the new range now restores.
    let (a, report) = open_with(&path, "10.32.0.0/16", PEER).unwrap();
    assert!(report.restored, "{report:?}");
    assert_eq!(a.lookup("pod-7"), vec![net("10.32.0.1/16")]);
    assert_eq!(a.lookup("pod-0"), vec![]);
}

#[test]
fn changed_peer_name_discards_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let (mut a, _) = open(&path);
        a.allocate("pod-0", None, true).unwrap();
    }
    let (a, report) = open_with(&path, "10.32.0.0/12", "11:22:33:44:55:66").unwrap();
    assert_eq!(
        report,
        OpenReport {
            restored: false,
            discarded_reason: Some(
                "the persisted peer name aa:bb:cc:dd:ee:ff differs from this peer's name \
                 11:22:33:44:55:66"
                    .into()
            ),
            owned_ids: 0
        }
    );
    assert!(a.lookup("pod-0").is_empty());
    assert_eq!(a.num_allocated(), 0);
    assert_eq!(a.peer_name(), "11:22:33:44:55:66");
}

#[test]
fn other_top_keys_survive_a_discard() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let (a, _) = open(&path);
        a.store().put_top("flag:peer-reclaim", b"ok").unwrap();
    }
    let (a, report) = open_with(&path, "10.32.0.0/12", "other").unwrap();
    assert!(report.discarded_reason.is_some());
    assert_eq!(
        a.store().get_top("flag:peer-reclaim").unwrap(),
        Some(b"ok".to_vec())
    );
}

#[test]
fn garbage_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = open_with(&path, "10.32.0.0/12", PEER).unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Corrupt { .. })),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("remove it"), "{msg}");
    // The file is left alone for the operator to inspect.
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[test]
fn short_garbage_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    std::fs::write(&path, b"not a database").unwrap();
    let err = open_with(&path, "10.32.0.0/12", PEER).unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Corrupt { .. })),
        "{err:?}"
    );
}

#[test]
fn empty_file_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    std::fs::write(&path, b"").unwrap();
    let (_, report) = open(&path);
    assert_eq!(report.discarded_reason, None);
    assert!(!report.restored);
}

#[test]
fn damaged_database_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let (mut a, _) = open(&path);
        for i in 0..50 {
            a.allocate(&format!("pod-{i}"), None, true).unwrap();
        }
    }
    let good = std::fs::read(&path).unwrap();
    // Truncated: the tail of the file is gone.
    std::fs::write(&path, &good[..good.len() / 3]).unwrap();
    let err = open_with(&path, "10.32.0.0/12", PEER).unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Corrupt { .. })),
        "{err:?}"
    );
    // Every page after the header overwritten: the checksums cannot match.
    let mut bad = good.clone();
    for (i, b) in bad.iter_mut().enumerate().skip(4096) {
        *b = (i as u8).wrapping_mul(31) ^ 0x5a;
    }
    std::fs::write(&path, &bad).unwrap();
    let err = open_with(&path, "10.32.0.0/12", PEER).unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Corrupt { .. })),
        "{err:?}"
    );
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    Store::open(&path)
        .unwrap()
        .put_top("version", &[9, 0])
        .unwrap();
    let err = open_with(&path, "10.32.0.0/12", PEER).unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::NewerSchema { .. })),
        "{err:?}"
    );
}

#[test]
fn second_allocator_on_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let _first = open(&path);
    let err = open_with(&path, "10.32.0.0/12", PEER).unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::Locked { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("another weft router"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// kill -9 in the middle of a burst.
//
// The parent test re-runs this test binary as a child with only `kill9_child` selected and
// the database path in CHILD_ENV. The child runs a fixed sequence of operations and prints
// one line per operation *after* the allocator acknowledged it. The parent SIGKILLs it while
// it is still going, reopens the database, and checks that every acknowledged operation is
// there (plus at most the one operation that was in flight).

const CHILD_ENV: &str = "WEFT_IPAM_KILL9_DB";

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Alloc(String),
    Release(String),
    Claim(String, Ipv4Net),
}

/// The child's deterministic operation sequence.
fn ops() -> impl Iterator<Item = Op> {
    (0u32..).flat_map(|i| {
        let mut v = vec![Op::Alloc(format!("pod-{i}"))];
        if i % 3 == 2 {
            v.push(Op::Release(format!("pod-{}", i - 1)));
        }
        if i % 7 == 0 {
            let a = Ipv4Addr::from(u32::from(ip("10.40.0.0")) + i);
            v.push(Op::Claim(
                format!("claim-{i}"),
                Ipv4Net::new(a, 12).unwrap(),
            ));
        }
        if i % 11 == 0 {
            let a = Ipv4Addr::from(u32::from(ip("192.168.0.0")) + i);
            v.push(Op::Claim(
                format!("outside-{i}"),
                Ipv4Net::new(a, 16).unwrap(),
            ));
        }
        v
    })
}

#[test]
#[ignore = "child process of kill9_keeps_every_acknowledged_operation; does nothing alone"]
fn kill9_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let (mut a, _) = open(Path::new(&path));
    let mut out = std::io::stdout().lock();
    // The harness has printed "test kill9_child ... " without a newline: end that line.
    if writeln!(out).is_err() {
        return;
    }
    for (k, op) in ops().take(100_000).enumerate() {
        let line = match &op {
            Op::Alloc(id) => format!("ACK {k} {id} {}", a.allocate(id, None, true).unwrap()),
            Op::Release(id) => {
                a.release(id).unwrap();
                format!("ACK {k} {id} released")
            }
            Op::Claim(id, c) => {
                a.claim(id, *c, true).unwrap();
                format!("ACK {k} {id} {c}")
            }
        };
        // A closed pipe (the parent is gone) ends the child.
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
fn kill9_keeps_every_acknowledged_operation() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "kill9_child",
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

    // Replay the acknowledged operations into the model, killing the child mid-burst.
    let mut expected_ops = ops();
    let mut model = Model::new();
    let mut acked = 0usize;
    let mut killed = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue; // the test harness's own output
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
    assert!(
        killed,
        "the child stopped after {acked} operations before it could be killed"
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "child was not killed mid-burst: {status:?}"
    );

    let (mut a, report) = open(&path);
    assert!(report.restored, "{report:?}");
    let actual: Model = a.owned().into_iter().map(|e| (e.id, e.addrs)).collect();

    // The state is the acknowledged one, or that plus the single operation in flight.
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

    // No address is held twice, and the allocator's counts agree with the records.
    let mut in_use = BTreeSet::new();
    for addrs in actual.values() {
        for c in addrs {
            assert!(in_use.insert(c.addr()), "{} recorded twice", c.addr());
        }
    }
    let universe = net("10.32.0.0/12");
    let in_universe = in_use.iter().filter(|a| universe.contains(*a)).count() as u64;
    assert_eq!(a.num_allocated(), in_universe);
    assert!(
        in_use.len() > 150,
        "{} addresses after {acked} operations",
        in_use.len()
    );

    // New allocations take the lowest unused addresses and never duplicate a restored one.
    let mut candidate = u32::from(ip("10.32.0.1"));
    for i in 0..50 {
        while in_use.contains(&Ipv4Addr::from(candidate)) {
            candidate += 1;
        }
        let got = a.allocate(&format!("after-{i}"), None, true).unwrap();
        assert_eq!(got, Ipv4Net::new(Ipv4Addr::from(candidate), 12).unwrap());
        assert!(in_use.insert(got.addr()));
    }
}
