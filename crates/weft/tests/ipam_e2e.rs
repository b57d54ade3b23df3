//! The shared IPAM ring between real routers in lab namespaces: consensus, every host
//! allocating from its own ranges, the same ownership everywhere, kill -9 during a burst,
//! rmpeer, and no silent wedging.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;
use weft_lab::{lab_peer_name, Lab, LabConfig};

mod common;
use common::{owned, report, require_root, wait_for};

fn config(hosts: usize, pods: usize, range: Option<&str>) -> LabConfig {
    LabConfig {
        ipalloc_range: range.map(str::to_owned),
        ..common::config(hosts, pods)
    }
}

fn local_ranges(r: &Value) -> Vec<Ipv4Net> {
    r["IPAM"]["LocalRanges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect()
}

/// Ring entries as (token, peer), the ownership every peer must agree on.
fn entries(r: &Value) -> Vec<(String, String)> {
    r["IPAM"]["Entries"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|x| (x["Token"].to_string(), x["Peer"].to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_hosts_share_one_ring_and_allocate_from_their_own_ranges() {
    require_root();
    let lab = Lab::build(&config(3, 2, None)).unwrap();
    // The ring converges: every host reports the same ownership.
    assert!(
        wait_for(Duration::from_secs(30), || {
            let e1 = entries(&report(&lab, 1));
            !e1.is_empty() && (2..=3).all(|h| entries(&report(&lab, h)) == e1)
        }),
        "rings differ: {:?}",
        (1..=3)
            .map(|h| entries(&report(&lab, h)))
            .collect::<Vec<_>>()
    );
    let mut all = BTreeSet::new();
    for p in lab.pods() {
        let ranges = local_ranges(&report(&lab, p.host()));
        assert!(
            ranges.iter().any(|r| r.contains(&p.addr())),
            "{} ({}) is outside its host's ranges {ranges:?}",
            p.name(),
            p.addr()
        );
        assert!(all.insert(p.addr()), "{} handed out twice", p.addr());
        assert_eq!(p.cidr().prefix_len(), 12);
    }
    // Each host's ranges are disjoint from the others'.
    let ranges: Vec<Vec<Ipv4Net>> = (1..=3).map(|h| local_ranges(&report(&lab, h))).collect();
    for a in 0..3 {
        for b in (a + 1)..3 {
            for x in &ranges[a] {
                for y in &ranges[b] {
                    assert!(
                        !x.contains(&y.network()) && !y.contains(&x.network()),
                        "h{} {x} overlaps h{} {y}",
                        a + 1,
                        b + 1
                    );
                }
            }
        }
    }
    // `weft status ipam` lists every peer on every host.
    for h in 1..=3 {
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["status", "ipam", "--socket"])
            .arg(lab.router_socket(h))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for n in 1..=3 {
            assert!(text.contains(&lab_peer_name(n)), "h{h}: {text}");
        }
        let status = lab.http(h).get_text("/status").unwrap();
        assert!(status.contains("Status: ready"), "h{h}: {status}");
    }
}

#[test]
fn kill_9_during_200_allocations_loses_and_duplicates_nothing() {
    require_root();
    let mut lab = Lab::build(&config(3, 0, None)).unwrap();
    let http = lab.http(2);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let worker = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            for i in 0..200 {
                match http.post(&format!("/ip/k{i}"), "text/plain", b"") {
                    Ok(r) if r.status == 200 => acked
                        .lock()
                        .unwrap()
                        .push((format!("k{i}"), r.text().trim().to_owned())),
                    _ => break,
                }
            }
        })
    };
    while acked.lock().unwrap().len() < 30 {
        std::thread::sleep(Duration::from_millis(1));
    }
    lab.kill_router(2).unwrap();
    worker.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() < 200,
        "the router was killed after the burst, not during it"
    );
    lab.start_router(2).unwrap();
    let after = owned(&lab, 2);
    for (id, addr) in &acked {
        assert_eq!(
            after.get(id),
            Some(&vec![addr.clone()]),
            "acknowledged {id} -> {addr} was lost"
        );
    }
    // Finish the 200, then check no address is held twice anywhere in the cluster.
    let http = lab.http(2);
    for i in acked.len()..200 {
        let r = http.post(&format!("/ip/k{i}"), "text/plain", b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let h1 = lab.http(1);
    for i in 0..20 {
        let r = h1
            .post(&format!("/ip/other{i}"), "text/plain", b"")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut seen = BTreeMap::new();
    for h in 1..=3 {
        for (id, addrs) in owned(&lab, h) {
            for a in addrs {
                if let Some(prev) = seen.insert(a.clone(), (h, id.clone())) {
                    panic!("{a} held by {prev:?} and (h{h}, {id})");
                }
            }
        }
    }
    assert_eq!(
        owned(&lab, 2).keys().filter(|k| k.starts_with('k')).count(),
        200
    );
}

#[test]
fn rmpeer_takes_over_a_dead_peers_ranges_and_refuses_a_live_one() {
    require_root();
    let mut lab = Lab::build(&config(3, 0, None)).unwrap();
    assert!(wait_for(Duration::from_secs(30), || !local_ranges(
        &report(&lab, 3)
    )
    .is_empty()));
    let weft = |lab: &Lab, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(args)
            .arg("--socket")
            .arg(lab.router_socket(1))
            .output()
            .unwrap()
    };
    let live = weft(&lab, &["rmpeer", &lab_peer_name(2)]);
    assert!(!live.status.success());
    assert!(
        String::from_utf8_lossy(&live.stderr).contains("still reachable"),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let h3_ranges = local_ranges(&report(&lab, 3));
    lab.stop_router(3).unwrap();
    // Wait until h1 no longer reaches h3.
    assert!(wait_for(Duration::from_secs(30), || {
        let out = weft(&lab, &["rmpeer", "h3"]);
        out.status.success()
    }));
    let mine = local_ranges(&report(&lab, 1));
    for r in &h3_ranges {
        assert!(
            mine.iter().any(|m| m.contains(&r.network())),
            "{r} not taken over: {mine:?}"
        );
    }
    // h2 learns the new ownership.
    assert!(wait_for(Duration::from_secs(30), || entries(&report(
        &lab, 2
    )) == entries(
        &report(&lab, 1)
    )));
}

#[test]
fn an_allocation_that_cannot_complete_fails_with_the_reason() {
    require_root();
    let mut lab = Lab::create(&config(1, 0, None)).unwrap();
    lab.start_router_with(
        1,
        &[
            "--ipalloc-init".into(),
            "consensus=3".into(),
            "--ipam-timeout".into(),
            "2s".into(),
        ],
    )
    .unwrap();
    let r = lab.http(1).post("/ip/c1", "text/plain", b"").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("awaiting consensus"), "{}", r.text());
    let status = lab.http(1).get_text("/status").unwrap();
    assert!(
        status.contains("awaiting consensus") || status.contains("idle"),
        "{status}"
    );
    // The CNI plugin turns it into "try again later".
    let ns = weft_dataplane::netns::NamedNetNs::create(&format!("{}-w", lab.id())).unwrap();
    let mut cmd = Command::new(lab.cni_bin_dir().join("weft-net"));
    cmd.env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "wedge-0123456")
        .env("CNI_NETNS", ns.ns().path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", lab.cni_bin_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    weft_lab::exec::in_netns(&mut cmd, lab.host_netns(1)).unwrap();
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-net", "socket": lab.router_socket(1)});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 11, "{v}");
}

#[test]
fn a_user_chosen_range_is_split_between_hosts() {
    require_root();
    let lab = Lab::build(&config(2, 1, Some("10.2.0.0/16"))).unwrap();
    let net: Ipv4Net = "10.2.0.0/16".parse().unwrap();
    for p in lab.pods() {
        assert!(net.contains(&p.addr()), "{} outside {net}", p.addr());
        assert_eq!(p.cidr().prefix_len(), 16);
    }
    assert_ne!(lab.pod(1, 1).addr(), lab.pod(2, 1).addr());
    let r = report(&lab, 1);
    assert_eq!(r["IPAM"]["Range"], "10.2.0.0/16");
}

#[test]
fn a_ring_conflict_is_reported_without_dropping_the_connection() {
    require_root();
    let mut lab = Lab::create(&config(2, 0, None)).unwrap();
    // Each host seeds a ring of its own before they meet: Weave's "seeded by different peers".
    for h in 1..=2 {
        let seed = format!("seed={}", lab_peer_name(h));
        lab.start_router_with(h, &["--ipalloc-init".into(), seed])
            .unwrap();
    }
    let status_of = |h: usize| lab.http(h).get_text("/status").unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(30), || status_of(1)
            .contains("seeded by different peers")),
        "{}",
        status_of(1)
    );
    let status = status_of(1);
    assert!(
        status.contains(&lab_peer_name(2)),
        "the error names the peer: {status}"
    );
    // The mesh connection stays up: a ring conflict must not cut unrelated traffic.
    std::thread::sleep(Duration::from_secs(2));
    let r = report(&lab, 1);
    let conns = r["Router"]["Connections"].as_array().unwrap();
    assert!(
        conns
            .iter()
            .any(|c| c["State"] == "established" || c["State"] == "pending"),
        "{conns:#?}"
    );
    assert_eq!(
        r["Router"]["TerminationCount"], 0,
        "the connection was dropped: {conns:#?}"
    );
    let metrics = lab.http(1).get_text("/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weft_ipam_gossip_errors ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
