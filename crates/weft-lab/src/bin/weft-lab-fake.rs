//! A stand-in for the `weft` binary, used only by weft-lab's own tests to exercise the whole lab
//! (router processes, readiness, the `weft-net` symlink, CNI ADD/DEL, status, teardown) without
//! the real router. It is NOT Weft: no mesh, no overlay.
//!
//! - `weft-lab-fake router --nickname hN --socket S ... [peers]`: creates bridge `weave` with
//!   10.32.N.254/24 (or the N-th /24 of `--ipalloc-range`), routes to the peers' /24s via their
//!   underlay addresses, and serves HTTP on S: `GET /status`, `/status/peers`, `/status/ipam`,
//!   `POST /ip/<id>` (allocate), `DELETE /ip/<id>` (release).
//!   Test switches: `--fail-add` (POST /ip answers 500), `--fail-ready` (/status answers 503),
//!   `--exit-early` (exits with an error before serving).
//! - invoked as `weft-net`: a CNI plugin that asks the router for an address and wires a veth
//!   from the pod into `weave`.
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use weft_dataplane::netlink::{Netlink, Route};
use weft_dataplane::netns::NetNs;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().map(String::as_str).unwrap_or("");
    let base = std::path::Path::new(argv0)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    if base == "weft-net" {
        std::process::exit(plugin());
    }
    if args.get(1).map(String::as_str) == Some("router") {
        if let Err(e) = router(&args[2..]) {
            eprintln!("fatal: {e}");
            std::process::exit(1);
        }
        return;
    }
    eprintln!("usage: weft-lab-fake router ... | (as weft-net) CNI plugin");
    std::process::exit(2);
}

fn nth_24(range: Ipv4Net, n: usize) -> Result<Ipv4Net, String> {
    range
        .subnets(24)
        .map_err(|e| e.to_string())?
        .nth(n)
        .ok_or_else(|| format!("{range} has no {n}-th /24"))
}

fn host_number(addr: Ipv4Addr) -> usize {
    addr.octets()[3] as usize
}

struct Router {
    name: String,
    subnet: Ipv4Net,
    peers: Vec<Ipv4Addr>,
    alloc: BTreeMap<String, Ipv4Addr>,
    fail_add: bool,
    fail_ready: bool,
}

fn router(args: &[String]) -> Result<(), String> {
    let mut flags: BTreeMap<String, String> = BTreeMap::new();
    let mut peers = Vec::new();
    let mut switches = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--fail-add" | "--fail-ready" | "--exit-early" => switches.push(a.clone()),
            "--nickname" | "--db-prefix" | "--socket" | "--metrics-addr" | "--ipalloc-range"
            | "--name" => {
                let v = it.next().ok_or(format!("{a} needs a value"))?;
                flags.insert(a.clone(), v.clone());
            }
            s if s.starts_with('-') => return Err(format!("unknown flag {s}")),
            s => peers.push(
                s.parse::<Ipv4Addr>()
                    .map_err(|_| format!("bad peer {s:?}"))?,
            ),
        }
    }
    if switches.iter().any(|s| s == "--exit-early") {
        return Err("injected startup failure (--exit-early)".into());
    }
    let need = |k: &str| flags.get(k).cloned().ok_or(format!("missing {k}"));
    let name = need("--nickname")?;
    let socket = need("--socket")?;
    need("--db-prefix")?;
    need("--metrics-addr")?;
    let n: usize = name
        .strip_prefix('h')
        .and_then(|s| s.parse().ok())
        .ok_or(format!("nickname {name:?} is not h<N>"))?;
    let range: Ipv4Net = flags
        .get("--ipalloc-range")
        .map(String::as_str)
        .unwrap_or("10.32.0.0/16")
        .parse()
        .map_err(|e| format!("bad --ipalloc-range: {e}"))?;
    let subnet = nth_24(range, n)?;
    let gw = Ipv4Net::new(Ipv4Addr::from(u32::from(subnet.network()) | 254), 24)
        .map_err(|e| e.to_string())?;

    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    // A restarted router adopts what its predecessor set up.
    let ok_if_exists = |r: weft_dataplane::Result<()>| match r {
        Err(e) if !e.is_exists() => Err(e.to_string()),
        _ => Ok(()),
    };
    let br = match nl.link_by_name("weave").map_err(|e| e.to_string())? {
        Some(l) => l,
        None => nl.add_bridge("weave", None).map_err(|e| e.to_string())?,
    };
    ok_if_exists(nl.add_address(br.index, gw))?;
    nl.set_up(br.index).map_err(|e| e.to_string())?;
    for p in &peers {
        ok_if_exists(nl.add_route(&Route {
            dst: nth_24(range, host_number(*p))?,
            gateway: Some(*p),
            oif: None,
            scope_link: false,
        }))
        .map_err(|e| format!("route via {p}: {e}"))?;
    }
    weft_dataplane::sysctl::set("net.ipv4.ip_forward", "1").map_err(|e| e.to_string())?;

    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| format!("bind {socket}: {e}"))?;
    eprintln!("fake router {name} serving on {socket}, subnet {subnet}, peers {peers:?}");
    let mut st = Router {
        name,
        subnet,
        peers,
        alloc: BTreeMap::new(),
        fail_add: switches.iter().any(|s| s == "--fail-add"),
        fail_ready: switches.iter().any(|s| s == "--fail-ready"),
    };
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if let Err(e) = serve(&mut st, conn) {
            eprintln!("request failed: {e}");
        }
    }
    Ok(())
}

fn serve(st: &mut Router, conn: UnixStream) -> std::io::Result<()> {
    let mut r = BufReader::new(&conn);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0).min(1 << 20);
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let (status, text) = match (method.as_str(), path.as_str()) {
        ("GET", "/status") if st.fail_ready => (503, "starting (--fail-ready)".to_string()),
        ("GET", "/status") => (200, format!("fake router {} ready\n", st.name)),
        ("GET", "/status/peers") => (
            200,
            st.peers
                .iter()
                .map(|p| format!("{} -> {p} established\n", st.name))
                .collect(),
        ),
        ("GET", "/status/ipam") => (
            200,
            format!(
                "{} owned by {}, {} allocated\n",
                st.subnet,
                st.name,
                st.alloc.len()
            ),
        ),
        ("POST", p) if p.starts_with("/ip/") && st.fail_add => {
            (500, "IPAM exhausted (injected by --fail-add)".to_string())
        }
        ("POST", p) if p.starts_with("/ip/") => {
            let id = p["/ip/".len()..].to_string();
            let base = u32::from(st.subnet.network());
            let addr = match st.alloc.get(&id) {
                Some(a) => Some(*a),
                None => (1..254)
                    .map(|j| Ipv4Addr::from(base | j))
                    .find(|a| !st.alloc.values().any(|b| b == a)),
            };
            match addr {
                Some(a) => {
                    st.alloc.insert(id, a);
                    (200, format!("{a}/24"))
                }
                None => (503, "range full".to_string()),
            }
        }
        ("DELETE", p) if p.starts_with("/ip/") => {
            st.alloc.remove(&p["/ip/".len()..]);
            (204, String::new())
        }
        _ => (404, "not found".to_string()),
    };
    let mut w = &conn;
    if status == 204 {
        write!(w, "HTTP/1.1 204 No Content\r\n\r\n")?;
    } else {
        write!(
            w,
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )?;
    }
    w.flush()
}

fn plugin() -> i32 {
    match plugin_inner() {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            0
        }
        Err(msg) => {
            println!(
                "{}",
                json!({"cniVersion": "1.1.0", "code": 999, "msg": msg})
            );
            1
        }
    }
}

fn host_ifname(container_id: &str) -> String {
    let h = container_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    format!("vw{:08x}", h as u32)
}

fn plugin_inner() -> Result<String, String> {
    let env = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let command = env("CNI_COMMAND")?;
    let mut stdin = Vec::new();
    std::io::stdin()
        .take(1 << 20)
        .read_to_end(&mut stdin)
        .map_err(|e| e.to_string())?;
    let conf: Value = serde_json::from_slice(&stdin).map_err(|e| format!("bad config: {e}"))?;
    let socket = conf["socket"].as_str().ok_or("config has no socket")?;
    let client = weft_lab::UnixHttp::new(socket);
    let id = env("CNI_CONTAINERID")?;
    let ifname = env("CNI_IFNAME")?;
    let host_if = host_ifname(&id);
    match command.as_str() {
        "ADD" => {
            let netns_path = env("CNI_NETNS")?;
            let resp = client
                .post(&format!("/ip/{id}"), "text/plain", b"")
                .map_err(|e| e.to_string())?;
            if !resp.is_success() {
                return Err(format!(
                    "router refused the allocation: {} {}",
                    resp.status,
                    resp.text()
                ));
            }
            let cidr: Ipv4Net = resp
                .text()
                .trim()
                .parse()
                .map_err(|e| format!("router sent a bad address: {e}"))?;
            let gw = Ipv4Addr::from(u32::from(cidr.network()) | 254);
            let pod = NetNs::open(&netns_path).map_err(|e| e.to_string())?;
            let mut nl = Netlink::open().map_err(|e| e.to_string())?;
            let br = nl
                .link_by_name("weave")
                .map_err(|e| e.to_string())?
                .ok_or("no weave bridge")?;
            nl.add_veth(&host_if, &ifname, None, Some(pod.fd()))
                .map_err(|e| e.to_string())?;
            let port = nl
                .link_by_name(&host_if)
                .map_err(|e| e.to_string())?
                .ok_or("veth vanished")?;
            nl.set_master(port.index, Some(br.index))
                .map_err(|e| e.to_string())?;
            nl.set_up(port.index).map_err(|e| e.to_string())?;
            let ifn = ifname.clone();
            pod.run(move || {
                let mut nl = Netlink::open()?;
                let l = nl
                    .link_by_name(&ifn)?
                    .ok_or_else(|| weft_dataplane::Error::NotFound(ifn.clone()))?;
                nl.add_address(l.index, cidr)?;
                nl.set_up(l.index)?;
                nl.add_route(&Route {
                    dst: Ipv4Net::default(),
                    gateway: Some(gw),
                    oif: Some(l.index),
                    scope_link: false,
                })
            })
            .map_err(|e| e.to_string())?;
            Ok(json!({
                "cniVersion": "1.1.0",
                "interfaces": [{"name": host_if}, {"name": ifname, "sandbox": netns_path}],
                "ips": [{"interface": 1, "address": cidr.to_string(), "gateway": gw.to_string()}],
            })
            .to_string())
        }
        "DEL" => {
            let resp = client
                .delete(&format!("/ip/{id}"))
                .map_err(|e| e.to_string())?;
            if !resp.is_success() {
                return Err(format!("router refused the release: {}", resp.status));
            }
            let mut nl = Netlink::open().map_err(|e| e.to_string())?;
            if let Some(l) = nl.link_by_name(&host_if).map_err(|e| e.to_string())? {
                nl.delete_link(l.index).map_err(|e| e.to_string())?;
            }
            Ok(String::new())
        }
        "VERSION" => {
            Ok(json!({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}).to_string())
        }
        other => Err(format!("unsupported CNI_COMMAND {other}")),
    }
}
