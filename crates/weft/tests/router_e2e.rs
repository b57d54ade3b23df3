//! End-to-end tests of `weft router` with the real CNI plugin, in lab namespaces.
//!
//! Each test builds its own lab (unique namespace names, torn down by `Drop` even on failure)
//! and talks to the router over its unix socket the way the plugin and the CLI do.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft_lab::{Lab, LabConfig};

mod common;
use common::{owned, require_root};

fn lab(hosts: usize, pods: usize, range: Option<&str>) -> Lab {
    require_root();
    let cfg = LabConfig {
        hosts,
        pods,
        weft_bin: env!("CARGO_BIN_EXE_weft").into(),
        ipalloc_range: range.map(str::to_owned),
        progress: false,
        ..LabConfig::default()
    };
    Lab::build(&cfg).expect("building the lab")
}

fn allocate(lab: &Lab, host: usize, id: &str) -> String {
    let r = lab
        .http(host)
        .post(&format!("/ip/{id}"), "text/plain", b"")
        .expect("POST /ip");
    assert_eq!(r.status, 200, "POST /ip/{id}: {}", r.text());
    r.text()
}

fn assert_unique(owned: &BTreeMap<String, Vec<String>>) {
    let mut seen = BTreeMap::new();
    for (id, addrs) in owned {
        for a in addrs {
            if let Some(other) = seen.insert(a.clone(), id.clone()) {
                panic!("{a} is held by both {other} and {id}");
            }
        }
    }
}

#[test]
fn three_pods_on_one_node_reach_each_other_and_the_bridge() {
    let lab = lab(1, 3, None);
    let m = lab.settled_matrix(Duration::from_secs(20));
    assert!(m.all_ok(), "{}", m.summary());
    // Every pod got an address from the default range with the range's prefix, gateway = bridge.
    let bridge = lab.pod(1, 1).gateway().expect("gateway");
    for p in lab.pods() {
        assert_eq!(p.cidr().prefix_len(), 12, "{}", p.cidr());
        assert!("10.32.0.0/12"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&p.addr()));
        assert_eq!(p.gateway(), Some(bridge));
    }
    let out = weft_lab::ping_in(lab.pod(1, 2).netns(), &[bridge], &Default::default()).unwrap();
    assert!(out[0].is_ok(), "pod -> bridge: {out:?}");
    // The bridge's address is held under weave:expose, the pods' under their container IDs.
    let o = owned(&lab, 1);
    assert_eq!(o["weave:expose"], vec![format!("{bridge}/12")]);
    for p in lab.pods() {
        assert_eq!(o[p.container_id()], vec![p.cidr().to_string()]);
    }
    assert_unique(&o);
}

#[test]
fn status_report_and_metrics() {
    let lab = lab(1, 2, None);
    let http = lab.http(1);
    let status = http.get_text("/status").unwrap();
    for key in [
        "Service: router",
        "Protocol: weave 1..2",
        "Service: ipam",
        "Range: 10.32.0.0/12",
        "Status: ready",
    ] {
        assert!(status.contains(key), "missing {key:?} in\n{status}");
    }
    let ipam = http.get_text("/status/ipam").unwrap();
    assert!(ipam.contains("(3 active)"), "{ipam}");
    let report: serde_json::Value = http.get_json("/report").unwrap();
    assert_eq!(report["IPAM"]["ActiveIPs"], 3);
    assert_eq!(report["IPAM"]["RangeNumIPs"], 1u64 << 20);
    assert_eq!(report["Router"]["NickName"], "h1");
    let metrics = http.get_text("/metrics").unwrap();
    assert!(
        metrics.contains("weave_ips{state=\"local-used\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("weave_max_ips 1048576"), "{metrics}");
    let r = http.get("/status/bogus").unwrap();
    assert_eq!(r.status, 404);
    // The CLI renders the same thing.
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["status", "ipam", "--socket"])
        .arg(lab.router_socket(1))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(3 active)"));
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["status", "--json", "ipam", "--socket"])
        .arg(lab.router_socket(1))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ActiveIPs"], 3);
    // An unreachable router is a clear error, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["status", "--socket", "/nonexistent/weft.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the weft router"));
}

#[test]
fn api_follows_weave_routes_and_rejects_bad_input() {
    let lab = lab(1, 0, None);
    let http = lab.http(1);
    let a = allocate(&lab, 1, "c1");
    assert_eq!(
        allocate(&lab, 1, "c1"),
        a,
        "allocation is idempotent per ID"
    );
    let sub = http.post("/ip/c2/10.40.0.0/16", "text/plain", b"").unwrap();
    assert_eq!(sub.status, 200);
    assert_eq!(sub.text(), "10.40.0.1/16");
    let claim = http.put("/ip/c3/10.33.0.9/12", "text/plain", b"").unwrap();
    assert!(claim.status < 300, "{}", claim.text());
    let taken = http.put("/ip/c4/10.33.0.9/12", "text/plain", b"").unwrap();
    assert_eq!(
        taken.status,
        400,
        "claiming another ID's address: {}",
        taken.text()
    );
    assert_eq!(owned(&lab, 1)["c3"], vec!["10.33.0.9/12".to_string()]);
    for bad in [
        "/ip/c5/300.1.1.1/12",
        "/ip/c5/10.1.1.1/40",
        "/ip/c5/10.0.0.0/8x",
    ] {
        let r = http.post(bad, "text/plain", b"").unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let outside = http
        .post("/ip/c6/192.168.0.0/24", "text/plain", b"")
        .unwrap();
    assert_eq!(
        outside.status,
        400,
        "subnet outside the range: {}",
        outside.text()
    );
    assert_eq!(http.delete("/ip/c1").unwrap().status, 204);
    assert_eq!(
        http.delete("/ip/c1").unwrap().status,
        404,
        "nothing left to release"
    );
    assert_eq!(
        allocate(&lab, 1, "c7"),
        a,
        "a released address is reused first"
    );
    assert_eq!(http.delete("/ip/c2/10.40.0.1").unwrap().status, 204);
    assert_eq!(
        http.get_text("/ipinfo/defaultsubnet").unwrap().trim(),
        "10.32.0.0/12"
    );
    assert_unique(&owned(&lab, 1));
}

#[test]
fn restart_keeps_every_allocation() {
    let mut lab = lab(1, 2, None);
    let mut want = BTreeMap::new();
    for i in 0..30 {
        let id = format!("r{i}");
        want.insert(id.clone(), vec![allocate(&lab, 1, &id)]);
    }
    let before = owned(&lab, 1);
    lab.restart_router(1).unwrap();
    let after = owned(&lab, 1);
    assert_eq!(before, after);
    for (id, addrs) in &want {
        assert_eq!(&after[id], addrs);
    }
    // Pods keep working across the restart, and new allocations do not reuse held addresses.
    let fresh = allocate(&lab, 1, "after-restart");
    assert!(
        !before.values().flatten().any(|a| *a == fresh),
        "{fresh} was handed out twice"
    );
    let m = lab.settled_matrix(Duration::from_secs(20));
    assert!(m.all_ok(), "{}", m.summary());
}

#[test]
fn kill_9_during_a_burst_loses_and_duplicates_nothing() {
    let mut lab = lab(1, 0, None);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for t in 0..4 {
        let http = lab.http(1);
        let acked = acked.clone();
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("b{t}-{i}");
                match http.post(&format!("/ip/{id}"), "text/plain", b"") {
                    Ok(r) if r.status == 200 => acked.lock().unwrap().push((id, r.text())),
                    _ => break, // the router is gone
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    lab.kill_router(1).unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    lab.start_router(1).unwrap();
    let after = owned(&lab, 1);
    for (id, addr) in &acked {
        assert_eq!(
            after.get(id),
            Some(&vec![addr.clone()]),
            "acknowledged {id} -> {addr} was lost"
        );
    }
    assert_unique(&after);
    let held: BTreeSet<&String> = after.values().flatten().collect();
    for i in 0..20 {
        let fresh = allocate(&lab, 1, &format!("post-{i}"));
        assert!(
            !held.contains(&fresh),
            "{fresh} handed out twice after kill -9"
        );
    }
}

/// Runs the lab's installed plugin binary with the given verb and config.
fn plugin(
    lab: &Lab,
    command: &str,
    conf: &serde_json::Value,
    extra_env: &[(&str, &str)],
) -> (i32, serde_json::Value) {
    let mut cmd = Command::new(lab.cni_bin_dir().join("weft-net"));
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", lab.cni_bin_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    weft_lab::exec::in_netns(&mut cmd, lab.host_netns(1)).unwrap();
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v = if out.stdout.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    (out.status.code().unwrap_or(-1), v)
}

fn conf(socket: &Path, version: &str) -> serde_json::Value {
    serde_json::json!({"cniVersion": version, "name": "weft", "type": "weft-net", "socket": socket})
}

#[test]
fn plugin_status_and_try_again_follow_the_router() {
    let mut lab = lab(1, 1, None);
    let c = conf(&lab.router_socket(1), "1.1.0");
    let (code, _) = plugin(&lab, "STATUS", &c, &[]);
    assert_eq!(code, 0, "STATUS with the router up");
    lab.stop_router(1).unwrap();
    let (code, err) = plugin(&lab, "STATUS", &c, &[]);
    assert_ne!(code, 0);
    assert_eq!(err["code"], 50, "{err}");
    // ADD and DEL while the router is down: "try again later".
    let pod = lab.pod(1, 1);
    let env = [
        ("CNI_CONTAINERID", "down-1"),
        ("CNI_NETNS", pod.netns_path().to_str().unwrap()),
        ("CNI_IFNAME", "eth9"),
    ];
    let (code, err) = plugin(&lab, "ADD", &c, &env);
    assert_ne!(code, 0);
    assert_eq!(err["code"], 11, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("router"), "{err}");
    // Nothing was left behind by the failed ADD.
    let links = lab
        .exec_in_pod(1, 1, Command::new("ip").args(["-o", "link"]))
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("eth9"));
    lab.start_router(1).unwrap();
    let (code, _) = plugin(&lab, "STATUS", &c, &[]);
    assert_eq!(code, 0, "STATUS after the router came back");
    // VERSION needs nothing but the command.
    let (code, v) = plugin(
        &lab,
        "VERSION",
        &serde_json::json!({"cniVersion": "1.1.0"}),
        &[],
    );
    assert_eq!(code, 0);
    assert!(v["supportedVersions"].as_array().unwrap().len() >= 5);
}

#[test]
fn user_chosen_range_is_honoured_end_to_end() {
    let lab = lab(1, 2, Some("10.2.0.0/16"));
    let net: ipnet::Ipv4Net = "10.2.0.0/16".parse().unwrap();
    for p in lab.pods() {
        assert!(net.contains(&p.addr()), "{} outside {net}", p.addr());
        assert_eq!(p.cidr().prefix_len(), 16);
    }
    let m = lab.settled_matrix(Duration::from_secs(20));
    assert!(m.all_ok(), "{}", m.summary());
    let status = lab.http(1).get_text("/status").unwrap();
    assert!(status.contains("Range: 10.2.0.0/16"), "{status}");
}

#[test]
fn setup_cni_installs_a_working_plugin() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let conf_dir = dir.path().join("net.d");
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["setup-cni", "--bin-dir"])
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(conf_dir.join("10-weft.conflist")).unwrap())
            .unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "weft-net");
    // The installed link answers VERSION as the CNI plugin.
    let mut child = Command::new(bin.join("weft-net"))
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"cniVersion":"0.4.0"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "0.4.0");
}

#[test]
fn fifty_concurrent_adds_get_fifty_addresses() {
    let lab = lab(1, 0, None);
    let c = conf(&lab.router_socket(1), "1.0.0");
    let pods: Vec<weft_dataplane::netns::NamedNetNs> = (0..50)
        .map(|i| weft_dataplane::netns::NamedNetNs::create(&format!("{}-c{i}", lab.id())).unwrap())
        .collect();
    let results: Vec<(i32, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (lab, c) = (&lab, &c);
                s.spawn(move || {
                    let id = format!("conc{i:02}-0123456789");
                    let path = p.ns().path().to_str().unwrap().to_owned();
                    plugin(
                        lab,
                        "ADD",
                        c,
                        &[
                            ("CNI_CONTAINERID", &id),
                            ("CNI_NETNS", &path),
                            ("CNI_IFNAME", "eth0"),
                        ],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs = BTreeSet::new();
    for (code, r) in &results {
        assert_eq!(*code, 0, "{r}");
        addrs.insert(r["ips"][0]["address"].as_str().unwrap().to_owned());
    }
    assert_eq!(addrs.len(), 50, "distinct addresses: {addrs:?}");
    let o = owned(&lab, 1);
    assert_eq!(o.len(), 51, "50 pods and the bridge");
    assert_unique(&o);
    // Every pod can reach the bridge.
    let gw = results[0].1["ips"][0]["gateway"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for p in &pods {
        let out = weft_lab::ping_until(p.ns(), gw, Duration::from_secs(5)).unwrap();
        assert!(out.is_ok(), "{out:?}");
    }
    // DEL them all (the lab only knows its own pods).
    for (i, p) in pods.iter().enumerate() {
        let id = format!("conc{i:02}-0123456789");
        let path = p.ns().path().to_str().unwrap().to_owned();
        let (code, r) = plugin(
            &lab,
            "DEL",
            &c,
            &[
                ("CNI_CONTAINERID", &id),
                ("CNI_NETNS", &path),
                ("CNI_IFNAME", "eth0"),
            ],
        );
        assert_eq!(code, 0, "{r}");
    }
    assert_eq!(owned(&lab, 1).len(), 1, "only the bridge's address is left");
}

#[test]
fn api_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let lab = lab(1, 0, None);
    let mode = std::fs::metadata(lab.router_socket(1))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
}
