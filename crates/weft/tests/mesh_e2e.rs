//! The mesh between real `weft router` processes in lab namespaces: full mesh, encryption,
//! a refused wrong password, and a cut underlay routed around through a third host.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use weft_lab::{lab_peer_name, Lab, LabConfig};

mod common;
use common::{report, require_root, wait_report};

fn config(hosts: usize, password: Option<&str>) -> LabConfig {
    LabConfig {
        password: password.map(str::to_owned),
        ..common::config(hosts, 0)
    }
}

fn established(r: &Value) -> usize {
    r["Router"]["Connections"]
        .as_array()
        .map(|c| c.iter().filter(|c| c["State"] == "established").count())
        .unwrap_or(0)
}

fn peer_names(r: &Value) -> Vec<String> {
    let mut v: Vec<String> = r["Router"]["Peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn three_hosts_form_a_full_mesh() {
    require_root();
    let lab = Lab::build(&config(3, None)).unwrap();
    let all: Vec<String> = (1..=3).map(lab_peer_name).collect();
    for h in 1..=3 {
        let r = wait_report(&lab, h, Duration::from_secs(30), |r| {
            established(r) == 2
                && peer_names(r) == all
                && r["Router"]["Peers"].as_array().unwrap().iter().all(|p| {
                    let c = p["Connections"].as_array().unwrap();
                    c.len() == 2 && c.iter().all(|c| c["Established"] == true)
                })
        });
        assert_eq!(established(&r), 2, "h{h}: {:#}", r["Router"]["Connections"]);
        assert_eq!(peer_names(&r), all, "h{h} peers");
        for p in r["Router"]["Peers"].as_array().unwrap() {
            let conns = p["Connections"].as_array().unwrap();
            assert_eq!(conns.len(), 2, "h{h}: {p:#}");
            assert!(
                conns.iter().all(|c| c["Established"] == true),
                "h{h}: {p:#}"
            );
        }
        let status = lab.http(h).get_text("/status").unwrap();
        assert!(status.contains("Connections: 2 (2 established"), "{status}");
        assert!(status.contains("Encryption: disabled"), "{status}");
        // `weft status peers` prints every peer.
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["status", "peers", "--socket"])
            .arg(lab.router_socket(h))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for name in &all {
            assert!(
                text.contains(name.as_str()),
                "h{h} status peers lacks {name}:\n{text}"
            );
        }
    }
}

#[test]
fn password_encrypts_and_a_wrong_one_is_refused() {
    require_root();
    let mut lab = Lab::build(&config(3, Some("s3cret"))).unwrap();
    for h in 1..=3 {
        let r = wait_report(&lab, h, Duration::from_secs(30), |r| established(r) == 2);
        assert_eq!(established(&r), 2, "h{h}: {:#}", r["Router"]["Connections"]);
        assert_eq!(r["Router"]["Encryption"], true);
        let conns = lab.http(h).get_text("/status/connections").unwrap();
        assert!(
            conns.lines().all(|l| l.contains("encrypted")),
            "h{h}:\n{conns}"
        );
    }
    // Restart h3 with another password: nobody lets it in.
    lab.stop_router(3).unwrap();
    lab.start_router_with(3, &["--password".into(), "wrong".into()])
        .unwrap();
    let r = wait_report(&lab, 3, Duration::from_secs(30), |r| {
        r["Router"]["Connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["Info"].as_str().unwrap_or("").contains("password"))
    });
    assert_eq!(established(&r), 0, "{:#}", r["Router"]["Connections"]);
    let infos: Vec<&str> = r["Router"]["Connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Info"].as_str().unwrap_or(""))
        .collect();
    assert!(infos.iter().any(|i| i.contains("password")), "{infos:?}");
    // h1 forgets the old h3 (unreachable, garbage-collected) and never learns the new one.
    let r1 = wait_report(&lab, 1, Duration::from_secs(30), |r| {
        peer_names(r).len() == 2
    });
    assert_eq!(
        peer_names(&r1).len(),
        2,
        "h1 must not keep h3: {:#}",
        r1["Router"]["Peers"]
    );
    std::thread::sleep(Duration::from_secs(2));
    let r1 = report(&lab, 1);
    assert_eq!(
        peer_names(&r1).len(),
        2,
        "h1 must not learn h3: {:#}",
        r1["Router"]["Peers"]
    );
}

#[test]
fn a_cut_underlay_is_routed_around() {
    require_root();
    let mut lab = Lab::create(&config(3, None)).unwrap();
    // h1 drops everything from h3 (so neither can connect to the other); h2 sees both.
    let nft = "table inet weftcut {\n chain input {\n  type filter hook input priority 0;\n  ip saddr 198.18.0.3 drop\n }\n}\n";
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("cut.nft");
    std::fs::write(&rules, nft).unwrap();
    let out = lab
        .exec_in_host(1, Command::new("nft").arg("-f").arg(&rules))
        .unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for h in 1..=3 {
        lab.start_router(h).unwrap();
    }
    let all: Vec<String> = (1..=3).map(lab_peer_name).collect();
    let h3 = lab_peer_name(3);
    let h2 = lab_peer_name(2);
    let r = wait_report(&lab, 1, Duration::from_secs(30), |r| {
        peer_names(r) == all
            && r["Router"]["UnicastRoutes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["Dest"] == h3.as_str())
    });
    assert_eq!(
        peer_names(&r),
        all,
        "h1 learns h3 through h2: {:#}",
        r["Router"]["Peers"]
    );
    let via = r["Router"]["UnicastRoutes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["Dest"] == h3.as_str())
        .map(|u| u["Via"].clone());
    assert_eq!(
        via,
        Some(Value::String(h2.clone())),
        "{:#}",
        r["Router"]["UnicastRoutes"]
    );
    assert_eq!(
        established(&r),
        1,
        "only h2 is reachable: {:#}",
        r["Router"]["Connections"]
    );
    let r3 = wait_report(&lab, 3, Duration::from_secs(30), |r| peer_names(r) == all);
    assert_eq!(peer_names(&r3), all);
}

#[test]
fn connect_forget_and_metrics() {
    require_root();
    let lab = Lab::build(&config(2, None)).unwrap();
    let r = wait_report(&lab, 1, Duration::from_secs(30), |r| established(r) == 1);
    assert_eq!(established(&r), 1);
    let metrics = lab.http(1).get_text("/metrics").unwrap();
    assert!(
        metrics.contains(r#"weave_connections{state="established",type="tcp",encryption=""} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("weft_peers 2"), "{metrics}");
    let heartbeats = metrics
        .lines()
        .find(|l| l.starts_with(r#"weft_dataplane{counter="heartbeats_sent"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(heartbeats.is_some_and(|n| n > 0), "{metrics}");
    let weft = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(args)
            .arg("--socket")
            .arg(lab.router_socket(1))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(weft(&["status", "targets"]).trim(), "198.18.0.2");
    weft(&["connect", "198.18.0.9:6783"]);
    let targets = weft(&["status", "targets"]);
    assert!(targets.contains("198.18.0.9:6783"), "{targets}");
    weft(&["forget", "198.18.0.9:6783"]);
    let targets = weft(&["status", "targets"]);
    assert!(!targets.contains("198.18.0.9"), "{targets}");
    weft(&["connect", "--replace", "198.18.0.2"]);
    assert_eq!(weft(&["status", "targets"]).trim(), "198.18.0.2");
}
