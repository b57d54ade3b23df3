//! The lab's building blocks without a router: underlay + hosts + hand-wired pods on a static
//! routed network, the ping matrix, commands in namespaces, and teardown.
//!
//! Everything lives in network namespaces these tests create (names `wl<pid>-<n>-*`); nothing
//! touches the root namespace.
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use weft_lab::{Lab, LabConfig, PingOptions, PingOutcome, NETNS_DIR};

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn config(hosts: usize) -> LabConfig {
    LabConfig {
        hosts,
        pods: 0,
        ping: PingOptions {
            tries: 2,
            timeout: std::time::Duration::from_millis(300),
        },
        ..LabConfig::default()
    }
}

/// Netns names of a lab still present under /run/netns.
fn leftover_netns(id: &str) -> Vec<String> {
    let prefix = format!("{id}-");
    std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn static_network_matrix_blocked_pod_and_teardown() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let mut lab = Lab::create(&config(2)).expect("create lab topology");
    let id = lab.id().to_string();
    let workdir = lab.workdir().to_path_buf();
    assert!(workdir.is_dir());
    let names = [format!("{id}-ul"), format!("{id}-h1"), format!("{id}-h2")];
    for n in &names {
        assert!(Path::new(NETNS_DIR).join(n).exists(), "{n} should exist");
    }
    assert_eq!(lab.host(1).addr(), Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(lab.host(2).netns_name(), format!("{id}-h2"));

    lab.setup_static_routing("labbr0", "10.99.0.0/16".parse().unwrap())
        .expect("static routing");
    for host in 1..=2 {
        for _ in 0..2 {
            lab.add_static_pod(host).expect("add pod");
        }
    }
    assert_eq!(lab.pod(2, 1).addr(), Ipv4Addr::new(10, 99, 2, 1));
    assert_eq!(lab.pod(1, 2).name(), "h1p2");
    assert!(Path::new(NETNS_DIR).join(format!("{id}-h2p2")).exists());

    // Settling (bounded) because a fresh veth's queue is activated asynchronously by the
    // kernel, later when other tests are creating and destroying namespaces at the same time.
    let settle = std::time::Duration::from_secs(20);
    let m = lab.settled_matrix(settle);
    println!("{m}");
    assert_eq!(m.names, ["h1p1", "h1p2", "h2p1", "h2p2"]);
    assert_eq!(m.total(), 12);
    assert!(m.all_ok(), "every pair should answer:\n{m}");
    assert!(m.to_string().ends_with("12/12 pairs reachable"));

    // Block h2p1: remove its address. Every pair involving it fails, the rest still works.
    let blocked = lab.pod(2, 1).cidr();
    weft_lab::netlink_in(
        lab.pod(2, 1).netns(),
        || "removing the address".into(),
        |nl| {
            let eth0 = nl.link_by_name("eth0")?.expect("eth0 exists").index;
            nl.del_address(eth0, blocked)
        },
    )
    .unwrap();
    let m = lab.wait_matrix(settle, |m| m.reachable() == 6);
    println!("{m}");
    assert_eq!(m.reachable(), 6, "{m}");
    let failed = m.failed();
    assert_eq!(failed.len(), 6);
    assert!(
        failed.iter().all(|p| p.from == "h2p1" || p.to == "h2p1"),
        "{failed:?}"
    );
    assert!(matches!(
        m.get("h1p1", "h2p1"),
        Some(PingOutcome::Failed { .. })
    ));
    assert!(
        matches!(m.get("h2p1", "h1p2"), Some(PingOutcome::Failed { reason }) if reason.contains("send failed"))
    );
    assert!(m.get("h1p2", "h2p2").is_some_and(PingOutcome::is_ok));
    assert!(m.to_string().contains("6/12 pairs reachable"));

    // Removing a pod removes its netns; the matrix shrinks.
    lab.remove_pod("h2p1").unwrap();
    assert!(!Path::new(NETNS_DIR).join(format!("{id}-h2p1")).exists());
    let m = lab.settled_matrix(settle);
    assert!(m.all_ok() && m.total() == 6, "{m}");

    lab.shutdown().expect("clean teardown");
    assert_eq!(leftover_netns(&id), Vec::<String>::new());
    assert!(!workdir.exists(), "work directory removed");
}

#[test]
fn commands_run_inside_the_namespaces() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let mut lab = Lab::create(&config(2)).unwrap();
    lab.setup_static_routing("labbr0", "10.98.0.0/16".parse().unwrap())
        .unwrap();
    lab.add_static_pod(1).unwrap();

    // /sys is remounted for the child, like `ip netns exec`: it sees the host's interfaces only.
    let out = lab
        .exec_in_host(1, Command::new("ls").arg("/sys/class/net"))
        .unwrap();
    assert!(out.status.success());
    let mut ifs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    ifs.sort();
    assert_eq!(ifs, ["eth0", "labbr0", "lo", "vl1"]);

    // The underlay bridge has one port per host.
    let out = lab
        .exec_in_underlay(Command::new("ls").arg("/sys/class/net/ul0/brif"))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["h1", "h2"]
    );

    // Host to host over the underlay, and pod to the other host's underlay address (routed).
    let wait = std::time::Duration::from_secs(20);
    let r = weft_lab::ping_until(lab.host_netns(2), lab.host(1).addr(), wait).unwrap();
    assert!(r.is_ok(), "{r:?}");
    let r = weft_lab::ping_until(lab.pod(1, 1).netns(), lab.host(2).addr(), wait).unwrap();
    assert!(r.is_ok(), "{r:?}");

    // A long-running command can be spawned and killed by PID.
    let mut child = lab
        .spawn_in_pod(1, 1, Command::new("sleep").arg("30"))
        .unwrap();
    let status = weft_lab::exec::terminate(&mut child, std::time::Duration::from_secs(5)).unwrap();
    assert!(!status.success());

    // Unknown hosts/pods are errors, not panics.
    assert!(lab.exec_in_host(3, &mut Command::new("true")).is_err());
    assert!(lab.exec_in_pod(1, 9, &mut Command::new("true")).is_err());
    assert!(lab.try_host(0).is_err());
    assert!(lab.pod_named("h9p9").is_none());
    let id = lab.id().to_string();
    drop(lab);
    assert_eq!(leftover_netns(&id), Vec::<String>::new());
}

#[test]
fn teardown_happens_on_panic() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let mut lab = Lab::create(&config(1)).unwrap();
        lab.setup_static_routing("labbr0", "10.97.0.0/16".parse().unwrap())
            .unwrap();
        lab.add_static_pod(1).unwrap();
        tx.send((lab.id().to_string(), lab.workdir().to_path_buf()))
            .unwrap();
        panic!("test failure inside the lab");
    });
    assert!(result.is_err());
    let (id, workdir) = rx.recv().unwrap();
    assert_eq!(leftover_netns(&id), Vec::<String>::new());
    assert!(!workdir.exists());
}

#[test]
fn bad_configs_are_rejected_without_leftovers() {
    if !is_root() {
        eprintln!("skipping: needs root");
        return;
    }
    let e = Lab::create(&config(0)).unwrap_err().to_string();
    assert!(e.contains("between 1 and 254"), "{e}");
    let e = Lab::build(&config(1)).unwrap_err().to_string();
    assert!(e.contains("weft_bin is empty"), "{e}");
    // A base directory so deep that the router socket path would not fit in sun_path.
    let deep = std::env::temp_dir().join("x".repeat(120));
    let cfg = LabConfig {
        base_dir: Some(deep.clone()),
        ..config(1)
    };
    let e = Lab::create(&cfg).unwrap_err().to_string();
    assert!(e.contains("longer than 107 bytes"), "{e}");
    assert_eq!(std::fs::read_dir(&deep).map(|d| d.count()).unwrap_or(0), 0);
    let _ = std::fs::remove_dir(&deep);

    // A router that does not exist fails with a clear error, and the lab still tears down.
    let mut lab = Lab::create(&LabConfig {
        weft_bin: "/nonexistent/weft".into(),
        ..config(1)
    })
    .unwrap();
    let e = lab.start_router(1).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/weft"), "{e}");
    let id = lab.id().to_string();
    lab.shutdown().unwrap();
    assert_eq!(leftover_netns(&id), Vec::<String>::new());
}
