//! The plugin as a real executable against the kernel, inside namespaces each test creates.

mod common;

use std::net::Ipv4Addr;

use common::*;
use serde_json::{json, Value};
use weft_cni::SUPPORTED_VERSIONS;
use weft_dataplane::netlink::Netlink;

const GW: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 1);

/// Result shape for `version`, and the kernel state behind it.
fn assert_attached(
    w: &World,
    pod: &weft_dataplane::netns::NetNs,
    r: &Value,
    version: &str,
    netns: &str,
    id: &str,
) {
    assert_eq!(r["cniVersion"], version, "{r}");
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3, "{r}");
    assert_eq!(ifs[0]["name"], "weave");
    assert!(ifs[1]["name"].as_str().unwrap().starts_with("vethwepl"));
    assert!(ifs[1].get("sandbox").is_none());
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(
        ifs[2]["sandbox"], netns,
        "sandbox must be CNI_NETNS verbatim"
    );
    for i in ifs {
        assert!(i["mac"].as_str().unwrap().len() == 17, "{i}");
    }
    if version == "1.1.0" {
        assert_eq!(ifs[2]["mtu"], BRIDGE_MTU);
    } else {
        assert!(ifs[2].get("mtu").is_none());
    }
    let ip = &r["ips"][0];
    assert_eq!(ip["interface"], 2);
    assert_eq!(ip["gateway"], "10.32.0.1");
    if version.starts_with("0.") {
        assert_eq!(ip["version"], "4");
    } else {
        assert!(ip.get("version").is_none(), "{r}");
    }
    let addr = result_ip(r);
    assert_eq!(addr.prefix_len(), 12);
    assert_eq!(w.router.addrs_of(id), vec![addr]);
    assert!(
        r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["dst"] == "0.0.0.0/0" && x["gw"] == "10.32.0.1"),
        "{r}"
    );

    // Kernel: container side.
    let eth0 = link(pod, "eth0").expect("eth0 in pod");
    assert!(eth0.up);
    assert_eq!(eth0.mtu, BRIDGE_MTU, "{version}");
    assert_eq!(addresses(pod, "eth0"), vec![addr]);
    assert!(has_default_via(pod, GW));
    // Kernel: host side.
    let host_name = ifs[1]["name"].as_str().unwrap();
    let host = link(w.host_ns(), host_name).expect("host veth");
    assert_eq!(host.master, Some(w.bridge().index));
    assert!(host.up);
    assert_eq!(host.mtu, BRIDGE_MTU);
    assert!(w.hairpin(host.index));
}

#[test]
fn add_check_del_every_version() {
    let w = World::new();
    for (n, version) in SUPPORTED_VERSIONS.iter().enumerate() {
        let pod = w.pod();
        let netns = netns_path(&pod);
        let id = format!("cid{n}abcdef0123456789");
        let conf = w.conf(version);
        let r = w.plugin("ADD", &id, Some(&netns), "eth0", &conf).ok();
        assert_attached(&w, pod.ns(), &r, version, &netns, &id);

        let mut with_prev = conf.clone();
        with_prev["prevResult"] = r.clone();
        let check = w.plugin("CHECK", &id, Some(&netns), "eth0", &with_prev);
        if version.starts_with("0.3") {
            check.err(1);
        } else {
            assert_eq!(check.ok(), Value::Null);
        }

        w.plugin("DEL", &id, Some(&netns), "eth0", &with_prev).ok();
        assert!(link(pod.ns(), "eth0").is_none());
        assert!(w.router.addrs_of(&id).is_empty());
        assert!(w.host_veths().is_empty(), "host veth left behind");
        // DEL twice is fine.
        w.plugin("DEL", &id, Some(&netns), "eth0", &with_prev).ok();
    }
}

#[test]
fn proc_pid_netns_path() {
    let w = World::new();
    let pod = w.pod();
    let holder = Holder::new(pod.ns());
    let netns = holder.netns_path();
    let r = w
        .plugin("ADD", "procpid1", Some(&netns), "eth0", &w.conf("1.0.0"))
        .ok();
    assert_attached(&w, pod.ns(), &r, "1.0.0", &netns, "procpid1");
    w.plugin("DEL", "procpid1", Some(&netns), "eth0", &w.conf("1.0.0"))
        .ok();
    assert!(link(pod.ns(), "eth0").is_none());
}

#[test]
fn version_verb_needs_nothing_else() {
    let w = World::new();
    let out = exec_in(
        w.host_ns(),
        PLUGIN,
        &[("CNI_COMMAND", "VERSION")],
        br#"{"cniVersion":"0.4.0"}"#,
    );
    let j = out.ok();
    assert_eq!(j["cniVersion"], "0.4.0");
    assert_eq!(j["supportedVersions"], json!(SUPPORTED_VERSIONS));
    // libcni's dummy values.
    let out = exec_in(
        w.host_ns(),
        PLUGIN,
        &[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_PATH", "dummy"),
        ],
        b"",
    );
    assert_eq!(out.ok()["cniVersion"], "1.1.0");
}

#[test]
fn add_twice_keeps_first_address() {
    let w = World::new();
    let pod = w.pod();
    let netns = netns_path(&pod);
    let conf = w.conf("1.0.0");
    let r = w.plugin("ADD", "twice1", Some(&netns), "eth0", &conf).ok();
    let addr = result_ip(&r);
    let e = w
        .plugin("ADD", "twice1", Some(&netns), "eth0", &conf)
        .err(101);
    assert!(e["msg"].as_str().unwrap().contains("already exists"), "{e}");
    assert_eq!(
        w.router.addrs_of("twice1"),
        vec![addr],
        "first ADD's address must be kept"
    );
    assert_eq!(addresses(pod.ns(), "eth0"), vec![addr]);
    assert_eq!(w.host_veths().len(), 1);
    // And the router never saw a DELETE.
    assert!(!w.router.log().iter().any(|l| l.starts_with("DELETE")));
}

#[test]
fn del_without_netns_and_missing_netns() {
    let w = World::new();
    let conf = w.conf("1.0.0");
    // ADD, then the runtime lost the netns: DEL without CNI_NETNS releases the address.
    let pod = w.pod();
    let netns = netns_path(&pod);
    w.plugin("ADD", "nons1", Some(&netns), "eth0", &conf).ok();
    drop(pod); // the netns goes away, and with it both veth ends
    w.plugin("DEL", "nons1", None, "eth0", &conf).ok();
    assert!(w.router.addrs_of("nons1").is_empty());
    // CNI_NETNS naming a netns that no longer exists.
    let pod = w.pod();
    let netns = netns_path(&pod);
    w.plugin("ADD", "nons2", Some(&netns), "eth0", &conf).ok();
    drop(pod);
    w.plugin("DEL", "nons2", Some(&netns), "eth0", &conf).ok();
    assert!(w.router.addrs_of("nons2").is_empty());
    // Never added at all, no prevResult, no runtimeConfig, twice.
    w.plugin("DEL", "never1", None, "eth0", &conf).ok();
    w.plugin(
        "DEL",
        "never1",
        Some("/run/netns/does-not-exist-xyz"),
        "eth0",
        &conf,
    )
    .ok();
    // (The host veths of the dropped pods disappear when the kernel destroys those netns,
    // asynchronously; that is the kernel's job, not DEL's.)
}

#[test]
fn del_with_router_down_is_retryable() {
    let mut w = World::new();
    let conf = w.conf("1.0.0");
    w.router.shutdown();
    let e = w.plugin("DEL", "down1", None, "eth0", &conf).err(11);
    assert!(e["msg"].as_str().unwrap().contains("not reachable"), "{e}");
}

#[test]
fn concurrent_adds() {
    const N: usize = 50;
    let w = World::new();
    let pods: Vec<_> = (0..N).map(|_| w.pod()).collect();
    let conf = w.conf("1.0.0");
    // Every ID shares the same 7-character prefix: all but one need a fallback veth name.
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (w, conf) = (&w, &conf);
                s.spawn(move || {
                    let netns = netns_path(pod);
                    w.plugin(
                        "ADD",
                        &format!("concurr-{i:03}"),
                        Some(&netns),
                        "eth0",
                        conf,
                    )
                    .ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs: Vec<_> = results.iter().map(result_ip).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), N, "addresses must be distinct");
    let mut names: Vec<String> = results
        .iter()
        .map(|r| r["interfaces"][1]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), N, "host veth names must be distinct");
    assert_eq!(w.host_veths().len(), N);
    for (pod, r) in pods.iter().zip(&results) {
        assert_eq!(addresses(pod.ns(), "eth0"), vec![result_ip(r)]);
    }
}

#[test]
fn shared_prefix_gets_hash_name() {
    let w = World::new();
    let conf = w.conf("1.0.0");
    let (p1, p2) = (w.pod(), w.pod());
    let r1 = w
        .plugin(
            "ADD",
            "abcdefg-first",
            Some(&netns_path(&p1)),
            "eth0",
            &conf,
        )
        .ok();
    let r2 = w
        .plugin(
            "ADD",
            "abcdefg-second",
            Some(&netns_path(&p2)),
            "eth0",
            &conf,
        )
        .ok();
    assert_eq!(r1["interfaces"][1]["name"], "vethweplabcdefg");
    let n2 = r2["interfaces"][1]["name"].as_str().unwrap();
    assert_ne!(n2, "vethweplabcdefg");
    assert!(n2.starts_with("vethwepl") && n2.len() == 15);
    // Deterministic: same name again after DEL + ADD.
    w.plugin(
        "DEL",
        "abcdefg-second",
        Some(&netns_path(&p2)),
        "eth0",
        &conf,
    )
    .ok();
    let r3 = w
        .plugin(
            "ADD",
            "abcdefg-second",
            Some(&netns_path(&p2)),
            "eth0",
            &conf,
        )
        .ok();
    assert_eq!(r3["interfaces"][1]["name"], n2);
}

#[test]
fn input_errors() {
    let w = World::new();
    let pod = w.pod();
    let netns = netns_path(&pod);
    let conf = w.conf("1.0.0");
    // Malformed JSON.
    let out = exec_in(
        w.host_ns(),
        PLUGIN,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "e1"),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "eth0"),
        ],
        b"{\"cniVersion\": \"1.0.0\", \"name\": ",
    );
    out.err(6);
    // Missing env.
    let out = exec_in(
        w.host_ns(),
        PLUGIN,
        &[("CNI_COMMAND", "ADD")],
        conf.to_string().as_bytes(),
    );
    let e = out.err(4);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME"),
        "{e}"
    );
    // Unsupported version.
    let mut bad = conf.clone();
    bad["cniVersion"] = json!("9.9.9");
    w.plugin("ADD", "e1", Some(&netns), "eth0", &bad).err(1);
    // isGateway / ipMasq.
    for key in ["isGateway", "ipMasq"] {
        let mut bad = conf.clone();
        bad[key] = json!(true);
        let e = w.plugin("ADD", "e1", Some(&netns), "eth0", &bad).err(2);
        assert!(e["msg"].as_str().unwrap().contains(key));
    }
    // Bad ifname / container ID.
    w.plugin("ADD", "e1", Some(&netns), "this-is-too-long-0", &conf)
        .err(7);
    w.plugin("ADD", "bad/id", Some(&netns), "eth0", &conf)
        .err(7);
    // Missing name.
    let mut bad = conf.clone();
    bad.as_object_mut().unwrap().remove("name");
    w.plugin("ADD", "e1", Some(&netns), "eth0", &bad).err(7);
    // Netns problems: missing, the plugin's own.
    w.plugin(
        "ADD",
        "e1",
        Some("/run/netns/no-such-netns-here"),
        "eth0",
        &conf,
    )
    .err(8);
    let own = netns_path(&w.host);
    let e = w.plugin("ADD", "e1", Some(&own), "eth0", &conf).err(8);
    assert!(
        e["msg"].as_str().unwrap().contains("own network namespace"),
        "{e}"
    );
    // Unknown CNI_ARGS keys and unknown config keys are fine.
    let mut extra = conf.clone();
    extra["somethingNew"] = json!({"x": 1});
    extra["capabilities"] = json!({"portMappings": true});
    extra["runtimeConfig"] = json!({"portMappings": []});
    w.plugin_env(
        "ADD",
        "e1",
        Some(&netns),
        "eth0",
        &extra,
        &[("CNI_ARGS", "FOO=bar;X")],
    )
    .ok();
    // Nothing leaked by the failures.
    assert_eq!(
        w.router.owners(),
        vec!["e1".to_string(), "weave:expose".to_string()]
    );
    assert_eq!(w.host_veths().len(), 1);
}

#[test]
fn router_down_is_code_11_and_leaves_nothing() {
    let mut w = World::new();
    let pod = w.pod();
    let netns = netns_path(&pod);
    let conf = w.conf("1.0.0");
    w.router.shutdown();
    let e = w
        .plugin("ADD", "down2", Some(&netns), "eth0", &conf)
        .err(11);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("not reachable") && msg.contains("weft.sock"),
        "{e}"
    );
    assert!(
        e["details"].as_str().unwrap().contains("weft status"),
        "{e}"
    );
    assert!(w.host_veths().is_empty());
    assert!(link(pod.ns(), "eth0").is_none());
}

#[test]
fn router_not_ready_is_code_11() {
    let w = World::new();
    let pod = w.pod();
    w.router.set_ready(false);
    w.plugin(
        "ADD",
        "nr1",
        Some(&netns_path(&pod)),
        "eth0",
        &w.conf("1.0.0"),
    )
    .err(11);
    assert!(w.host_veths().is_empty());
}

#[test]
fn bridge_without_address_is_code_11_before_allocating() {
    let w = World::with_bridge_addr(None);
    let pod = w.pod();
    let e = w
        .plugin(
            "ADD",
            "nobrip",
            Some(&netns_path(&pod)),
            "eth0",
            &w.conf("1.0.0"),
        )
        .err(11);
    assert!(
        e["msg"].as_str().unwrap().contains("no IPv4 address"),
        "{e}"
    );
    assert!(w.router.addrs_of("nobrip").is_empty());
    assert!(!w.router.log().iter().any(|l| l.starts_with("POST")));
}

#[test]
fn failure_after_allocation_rolls_back() {
    let w = World::new();
    let pod = w.pod();
    let mut conf = w.conf("1.0.0");
    // The second identical route fails with EEXIST after the address was taken.
    conf["ipam"] = json!({"routes": [{"dst": "10.99.0.0/16"}, {"dst": "10.99.0.0/16"}]});
    let e = w.plugin("ADD", "rollback1", Some(&netns_path(&pod)), "eth0", &conf);
    assert_ne!(e.code, 0);
    assert!(
        w.router.addrs_of("rollback1").is_empty(),
        "address must be released"
    );
    assert!(w.router.log().iter().any(|l| l == "DELETE /ip/rollback1"));
    assert!(w.host_veths().is_empty(), "host veth must be removed");
    assert!(link(pod.ns(), "eth0").is_none());
}

#[test]
fn own_ipam_subnet_gateway_and_routes() {
    let w = World::new();
    // A second bridge address for the 10.40.0.0/16 subnet.
    let br = w.bridge().index;
    w.host_ns()
        .run(move || Netlink::open()?.add_address(br, "10.40.0.1/16".parse().unwrap()))
        .unwrap();
    let pod = w.pod();
    let netns = netns_path(&pod);
    let mut conf = w.conf("1.1.0");
    conf["mtu"] = json!(1300);
    conf["hairpinMode"] = json!(false);
    conf["dns"] = json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]});
    conf["ipam"] = json!({"subnet": "10.40.0.0/16", "routes": [{"dst": "10.0.0.0/8"}, {"dst": "192.168.7.0/24", "gw": "10.40.0.254"}]});
    let r = w.plugin("ADD", "subnet1", Some(&netns), "eth0", &conf).ok();
    let addr = result_ip(&r);
    assert!(
        "10.40.0.0/16"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&addr.addr()),
        "{r}"
    );
    assert_eq!(r["ips"][0]["gateway"], "10.40.0.1");
    assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
    assert!(w
        .router
        .log()
        .contains(&"POST /ip/subnet1/10.40.0.0/16".to_string()));
    let eth0 = link(pod.ns(), "eth0").unwrap();
    assert_eq!(eth0.mtu, 1300);
    let host = link(w.host_ns(), r["interfaces"][1]["name"].as_str().unwrap()).unwrap();
    assert!(!w.hairpin(host.index));
    let rt = routes(pod.ns());
    assert!(rt.iter().any(|x| x.dst == "10.0.0.0/8".parse().unwrap()
        && x.gateway == Some(Ipv4Addr::new(10, 40, 0, 1))));
    assert!(rt.iter().any(|x| x.dst == "192.168.7.0/24".parse().unwrap()
        && x.gateway == Some(Ipv4Addr::new(10, 40, 0, 254))));
    assert!(
        !has_default_via(pod.ns(), Ipv4Addr::new(10, 40, 0, 1)),
        "ipam.routes replaces the default route"
    );
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = r;
    w.plugin("CHECK", "subnet1", Some(&netns), "eth0", &with_prev)
        .ok();
    w.plugin("DEL", "subnet1", Some(&netns), "eth0", &with_prev)
        .ok();
}

#[test]
fn gateway_outside_subnet_gets_link_route() {
    let w = World::new();
    let pod = w.pod();
    let netns = netns_path(&pod);
    let mut conf = w.conf("1.0.0");
    conf["ipam"] = json!({"gateway": "192.168.99.1"});
    let r = w.plugin("ADD", "gwout1", Some(&netns), "eth0", &conf).ok();
    assert_eq!(r["ips"][0]["gateway"], "192.168.99.1");
    let rt = routes(pod.ns());
    assert!(
        rt.iter()
            .any(|x| x.dst == "192.168.99.1/32".parse().unwrap() && x.scope_link),
        "{rt:?}"
    );
    assert!(has_default_via(pod.ns(), Ipv4Addr::new(192, 168, 99, 1)));
}

#[test]
fn check_detects_breakage() {
    let w = World::new();
    let pod = w.pod();
    let netns = netns_path(&pod);
    let mut conf = w.conf("1.0.0");
    let r = w.plugin("ADD", "chk1", Some(&netns), "eth0", &conf).ok();
    conf["prevResult"] = r.clone();
    w.plugin("CHECK", "chk1", Some(&netns), "eth0", &conf).ok();
    // The router forgot the address.
    w.router.forget("chk1");
    let e = w
        .plugin("CHECK", "chk1", Some(&netns), "eth0", &conf)
        .err(104);
    assert!(
        e["msg"].as_str().unwrap().contains("no longer holds"),
        "{e}"
    );
    w.router.reserve("chk1");
    // Remove the address from eth0.
    let addr = result_ip(&r);
    pod.ns()
        .run(move || {
            let mut nl = Netlink::open()?;
            let l = nl.link_by_name("eth0")?.unwrap();
            nl.del_address(l.index, addr)
        })
        .unwrap();
    let e = w
        .plugin("CHECK", "chk1", Some(&netns), "eth0", &conf)
        .err(104);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains(&format!("failed to match addr {addr}")),
        "{e}"
    );
    // Interface gone entirely.
    pod.ns()
        .run(|| {
            let mut nl = Netlink::open()?;
            let l = nl.link_by_name("eth0")?.unwrap();
            nl.delete_link(l.index)
        })
        .unwrap();
    let e = w
        .plugin("CHECK", "chk1", Some(&netns), "eth0", &conf)
        .err(104);
    assert!(e["msg"].as_str().unwrap().contains("not found"), "{e}");
    // CHECK without prevResult.
    let e = w
        .plugin("CHECK", "chk1", Some(&netns), "eth0", &w.conf("1.0.0"))
        .err(7);
    assert!(e["msg"].as_str().unwrap().contains("prevResult"));
}

#[test]
fn status_verb() {
    let mut w = World::new();
    let conf = w.conf("1.1.0");
    let status = |w: &World| {
        exec_in(
            w.host_ns(),
            PLUGIN,
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", REF_PLUGINS)],
            conf.to_string().as_bytes(),
        )
    };
    assert_eq!(status(&w).ok(), Value::Null);
    w.router.set_ready(false);
    status(&w).err(50);
    w.router.shutdown();
    let e = status(&w).err(50);
    assert!(e["msg"].as_str().unwrap().contains("not reachable"), "{e}");
    // Before 1.1.0, STATUS does not exist.
    let out = exec_in(
        w.host_ns(),
        PLUGIN,
        &[("CNI_COMMAND", "STATUS")],
        w.conf("1.0.0").to_string().as_bytes(),
    );
    out.err(1);
}

#[test]
fn gc_releases_stale_ids_only() {
    let w = World::new();
    let pods: Vec<_> = (0..3).map(|_| w.pod()).collect();
    let conf = w.conf("1.1.0");
    for (i, p) in pods.iter().enumerate() {
        w.plugin(
            "ADD",
            &format!("gc{i}"),
            Some(&netns_path(p)),
            "eth0",
            &conf,
        )
        .ok();
    }
    w.router.reserve("orphan1");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc0", "ifname": "eth0"}]);
    gc["cni.dev/attachments"] = json!([{"containerID": "gc1", "ifname": "eth0"}]);
    let out = exec_in(
        w.host_ns(),
        PLUGIN,
        &[
            ("CNI_COMMAND", "GC"),
            ("CNI_PATH", REF_PLUGINS),
            ("CNI_CONTAINERID", ""),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", ""),
        ],
        gc.to_string().as_bytes(),
    );
    assert_eq!(out.ok(), Value::Null);
    assert_eq!(
        w.router.owners(),
        vec![
            "gc0".to_string(),
            "gc1".to_string(),
            "weave:expose".to_string()
        ]
    );
    // Without the attachment list GC refuses rather than releasing everything.
    let out = exec_in(
        w.host_ns(),
        PLUGIN,
        &[("CNI_COMMAND", "GC")],
        conf.to_string().as_bytes(),
    );
    out.err(7);
    assert_eq!(w.router.owners().len(), 3);
    // Empty list: every container is stale, weave:expose survives.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    exec_in(
        w.host_ns(),
        PLUGIN,
        &[("CNI_COMMAND", "GC")],
        gc.to_string().as_bytes(),
    )
    .ok();
    assert_eq!(w.router.owners(), vec!["weave:expose".to_string()]);
}

#[test]
fn chained_with_portmap() {
    let w = World::new();
    let pod = w.pod();
    let netns = netns_path(&pod);
    let id = "chainpm1";
    let weft_conf = w.conf("1.0.0");
    let pm_conf = json!({
        "cniVersion": "1.0.0", "name": w.net_name, "type": "portmap",
        "capabilities": {"portMappings": true}, "snat": true,
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
    });
    // ADD: weft, then portmap with weft's result as prevResult.
    let r1 = w.plugin("ADD", id, Some(&netns), "eth0", &weft_conf).ok();
    let mut pm_add = pm_conf.clone();
    pm_add["prevResult"] = r1.clone();
    let r2 = w
        .reference("portmap", "ADD", id, &netns, "eth0", &pm_add)
        .ok();
    assert_eq!(
        r2["interfaces"], r1["interfaces"],
        "portmap passes our result through"
    );
    assert_eq!(r2["ips"][0]["address"], r1["ips"][0]["address"]);
    let nat = command_in(w.host_ns(), "iptables", &["-t", "nat", "-S"]);
    assert!(
        nat.contains("18080"),
        "no DNAT rule for the port mapping:\n{nat}"
    );
    // CHECK both with the final result.
    let mut weft_check = weft_conf.clone();
    weft_check["prevResult"] = r2.clone();
    w.plugin("CHECK", id, Some(&netns), "eth0", &weft_check)
        .ok();
    // (portmap 1.1.1's own CHECK looks for ip6tables chains its ADD never creates for an
    // IPv4-only pod, so it is not run here; runtimes can set disableCheck.)
    let mut pm_check = pm_conf.clone();
    pm_check["prevResult"] = r2.clone();
    // DEL in reverse order, everyone gets the final result.
    w.reference("portmap", "DEL", id, &netns, "eth0", &pm_check)
        .ok();
    w.plugin("DEL", id, Some(&netns), "eth0", &weft_check).ok();
    let nat = command_in(w.host_ns(), "iptables", &["-t", "nat", "-S"]);
    assert!(!nat.contains("18080"), "port mapping left behind:\n{nat}");
    assert!(w.router.addrs_of(id).is_empty());
    assert!(link(pod.ns(), "eth0").is_none());
}

#[test]
fn weft_after_another_plugin_merges_prev_result() {
    let w = World::new();
    let pod = w.pod();
    let netns = netns_path(&pod);
    let lo_conf = json!({"cniVersion": "1.0.0", "name": w.net_name, "type": "loopback"});
    let prev = w
        .reference("loopback", "ADD", "merge1", &netns, "lo", &lo_conf)
        .ok();
    let mut conf = w.conf("1.0.0");
    conf["prevResult"] = prev.clone();
    let r = w.plugin("ADD", "merge1", Some(&netns), "eth0", &conf).ok();
    let n_prev = prev["interfaces"].as_array().map_or(0, |a| a.len());
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), n_prev + 3, "{r}");
    assert_eq!(
        ifs[..n_prev],
        prev["interfaces"].as_array().map_or(&[][..], |a| &a[..])[..]
    );
    let ours = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ip| ip["interface"] == json!(n_prev + 2));
    assert!(
        ours.is_some(),
        "our address must point at our interface: {r}"
    );
    assert_eq!(
        r["ips"].as_array().unwrap().len(),
        prev["ips"].as_array().map_or(0, |a| a.len()) + 1
    );
    let mut check = w.conf("1.0.0");
    check["prevResult"] = r;
    w.plugin("CHECK", "merge1", Some(&netns), "eth0", &check)
        .ok();
}

fn host_local_conf(w: &World, data_dir: &std::path::Path, version: &str) -> Value {
    json!({
        "cniVersion": version, "name": w.net_name, "type": "weft-net",
        "socket": w.router.path().to_str().unwrap(),
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir.to_str().unwrap(),
            "ranges": [[{"subnet": "10.32.0.0/12", "rangeStart": "10.32.100.1", "rangeEnd": "10.32.100.200", "gateway": "10.32.0.1"}]],
        }
    })
}

#[test]
fn delegated_host_local() {
    let w = World::new();
    let data = tempfile::tempdir().unwrap();
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let pod = w.pod();
        let netns = netns_path(&pod);
        let id = format!("hl-{}", version.replace('.', ""));
        let mut conf = host_local_conf(&w, data.path(), version);
        let r = w.plugin("ADD", &id, Some(&netns), "eth0", &conf).ok();
        let addr = result_ip(&r);
        assert!(
            addr.addr() >= Ipv4Addr::new(10, 32, 100, 1)
                && addr.addr() <= Ipv4Addr::new(10, 32, 100, 200),
            "{r}"
        );
        assert_eq!(r["cniVersion"], version);
        assert_eq!(r["ips"][0]["interface"], 2);
        assert_eq!(addresses(pod.ns(), "eth0"), vec![addr]);
        assert!(has_default_via(pod.ns(), GW));
        let store = data.path().join(&w.net_name).join(addr.addr().to_string());
        assert!(store.exists(), "host-local did not record {store:?}");
        // The router was not involved.
        assert!(!w.router.log().iter().any(|l| l.contains(&id)));
        conf["prevResult"] = r;
        if version != "0.3.1" {
            w.plugin("CHECK", &id, Some(&netns), "eth0", &conf).ok();
        }
        w.plugin("DEL", &id, Some(&netns), "eth0", &conf).ok();
        assert!(!store.exists(), "host-local DEL not called");
        w.plugin("DEL", &id, Some(&netns), "eth0", &conf).ok();
        w.plugin("DEL", &id, None, "eth0", &conf).ok();
    }
}

#[test]
fn delegated_failure_after_ipam_calls_ipam_del() {
    let w = World::new();
    let data = tempfile::tempdir().unwrap();
    let pod = w.pod();
    let netns = netns_path(&pod);
    // IPv6 range: host-local allocates, weft refuses (IPv4-only) and must release it.
    let mut conf = host_local_conf(&w, data.path(), "1.0.0");
    conf["ipam"]["ranges"] = json!([[{"subnet": "fd00:32::/64"}]]);
    let out = w.plugin("ADD", "hl-v6", Some(&netns), "eth0", &conf);
    out.err(102);
    let dir = data.path().join(&w.net_name);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(':'))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "IPAM DEL not called: {leftovers:?}");
    // Failure in the kernel part after a successful host-local ADD: duplicate routes.
    let mut conf = host_local_conf(&w, data.path(), "1.0.0");
    conf["ipam"]["routes"] = json!([{"dst": "10.99.0.0/16"}, {"dst": "10.99.0.0/16"}]);
    let out = w.plugin("ADD", "hl-kfail", Some(&netns), "eth0", &conf);
    assert_ne!(out.code, 0);
    let held: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(held.is_empty(), "host-local still holds {held:?}");
    assert!(w.host_veths().is_empty());
    // Missing plugin in CNI_PATH.
    let mut conf = host_local_conf(&w, data.path(), "1.0.0");
    conf["ipam"]["type"] = json!("no-such-ipam");
    w.plugin("ADD", "hl-missing", Some(&netns), "eth0", &conf)
        .err(102);
}

#[test]
fn delegated_gc_status_check_are_forwarded() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("log");
    // A recording IPAM plugin: logs the verb and the stdin, answers like an IPAM plugin would.
    let script = format!(
        "#!/bin/sh\necho \"$CNI_COMMAND $CNI_CONTAINERID\" >> {log}\ncat > {log}.stdin\ncase \"$CNI_COMMAND\" in\n  ADD) echo '{{\"cniVersion\":\"1.1.0\",\"ips\":[{{\"address\":\"10.32.200.7/12\",\"gateway\":\"10.32.0.1\"}}]}}' ;;\n  STATUS) if [ -e {log}.down ]; then echo '{{\"code\":50,\"msg\":\"ipam down\"}}'; exit 1; fi ;;\nesac\nexit 0\n",
        log = log.display()
    );
    let p = bin.path().join("rec-ipam");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = bin.path().to_str().unwrap().to_string();
    let mut conf = w.conf("1.1.0");
    conf["ipam"] = json!({"type": "rec-ipam"});

    let pod = w.pod();
    let netns = netns_path(&pod);
    let r = w
        .plugin_env(
            "ADD",
            "fw1",
            Some(&netns),
            "eth0",
            &conf,
            &[("CNI_PATH", &path)],
        )
        .ok();
    assert_eq!(r["ips"][0]["address"], "10.32.200.7/12");
    assert_eq!(
        std::fs::read(log.with_extension("stdin")).unwrap(),
        conf.to_string().into_bytes(),
        "same stdin bytes"
    );
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = r;
    w.plugin_env(
        "CHECK",
        "fw1",
        Some(&netns),
        "eth0",
        &with_prev,
        &[("CNI_PATH", &path)],
    )
    .ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    exec_in(
        w.host_ns(),
        PLUGIN,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", &path)],
        gc.to_string().as_bytes(),
    )
    .ok();
    exec_in(
        w.host_ns(),
        PLUGIN,
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", &path)],
        conf.to_string().as_bytes(),
    )
    .ok();
    std::fs::write(log.with_extension("down"), "").unwrap();
    let e = exec_in(
        w.host_ns(),
        PLUGIN,
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", &path)],
        conf.to_string().as_bytes(),
    )
    .err(50);
    assert!(e["msg"].as_str().unwrap().contains("ipam down"), "{e}");
    w.plugin_env(
        "DEL",
        "fw1",
        Some(&netns),
        "eth0",
        &with_prev,
        &[("CNI_PATH", &path)],
    )
    .ok();
    let seen = std::fs::read_to_string(&log).unwrap();
    let verbs: Vec<&str> = seen.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        verbs,
        ["ADD", "CHECK", "GC", "STATUS", "STATUS", "DEL"],
        "{seen}"
    );
    // The fake router was never asked.
    assert!(w.router.log().is_empty(), "{:?}", w.router.log());
}

#[test]
fn del_never_touches_the_plugins_own_netns() {
    let w = World::new();
    let own = netns_path(&w.host);
    w.router.reserve("ownns1");
    // A confused runtime passes the host's netns and the bridge's name.
    w.plugin("DEL", "ownns1", Some(&own), "weave", &w.conf("1.0.0"))
        .ok();
    assert!(
        link(w.host_ns(), "weave").is_some(),
        "DEL deleted a host interface"
    );
    assert!(
        w.router.addrs_of("ownns1").is_empty(),
        "the address is still released"
    );
}

/// Opens an AF_PACKET socket receiving ARP frames on `ifindex` (in the calling thread's netns).
fn arp_listener(ifindex: u32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket calls with a zeroed, fully initialised sockaddr_ll.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        );
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd,
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

#[test]
fn add_announces_the_pod_with_a_gratuitous_arp() {
    use std::os::fd::AsRawFd;
    let w = World::new();
    let pod = w.pod();
    let netns = netns_path(&pod);
    let bridge = w.bridge();
    let listener = w.host_ns().run(|| Ok(arp_listener(bridge.index))).unwrap();
    let r = w
        .plugin(
            "ADD",
            "garp0123456789",
            Some(&netns),
            "eth0",
            &w.conf("1.0.0"),
        )
        .ok();
    let addr: ipnet::Ipv4Net = r["ips"][0]["address"].as_str().unwrap().parse().unwrap();
    let ip = addr.addr().octets();
    let mut seen = Vec::new();
    // Bounded: 25 reads of at most 200 ms each.
    for _ in 0..25 {
        let mut buf = [0u8; 128];
        // SAFETY: reading into a local buffer of the stated length.
        let n = unsafe { libc::recv(listener.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 42 {
            continue;
        }
        let f = &buf[..n as usize];
        // Ethernet (14) + ARP: sender IP at 28..32, target IP at 38..42.
        seen.push(format!("{:?}", &f[12..42]));
        if f[12..14] == [0x08, 0x06] && f[28..32] == ip && f[38..42] == ip {
            return;
        }
    }
    panic!("no gratuitous ARP for {addr} seen on the bridge; frames: {seen:?}");
}
