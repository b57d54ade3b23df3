//! Interoperability with the reference: Weft routers in a mesh with peers of the real Go
//! `weaveworks/mesh` library (the one Weave Net is built on), run by our small Go program
//! `interop/weave-mesh-peer` (built by `scripts/build-interop`).
//!
//! Both sides are checked through their own status: Weft's `/report` and the Go peer's
//! `mesh.NewStatus` snapshot. A peer only lists the other's connections once it has decoded
//! the other's topology gossip, so "each lists the other, connected to itself" proves the
//! handshake, the framing and the topology encoding in both directions.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_lab::{lab_peer_name, log_tail, Lab, LabConfig};

/// How long any convergence may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);
/// Weave's mesh port.
const MESH_PORT: u16 = 6783;

/// The environment variable that asks `weft router` to run the mesh alone, without a data
/// plane (it is inherited by the routers the lab starts).
const MESH_ONLY_ENV: &str = "WEFT_MESH_ONLY";

/// Checks the preconditions, and makes the routers run mesh-only: the reference peer runs
/// `mesh.NullOverlay`, so it never answers overlay heartbeats, and a router with a data plane
/// would keep its connection to it pending (as Weave Net would, treating a peer without the
/// `Overlays` feature as sleeve-only). These tests are about the control plane.
fn setup() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests create network namespaces: run them as root"
    );
    go_peer_bin();
    // Each test is its own process (nextest), and no thread has started yet.
    std::env::set_var(MESH_ONLY_ENV, "1");
}

/// The Go peer's binary: `$WEFT_WEAVE_MESH_PEER`, else `<workspace>/target/interop/weave-mesh-peer`.
fn go_peer_bin() -> PathBuf {
    let path = std::env::var_os("WEFT_WEAVE_MESH_PEER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/interop/weave-mesh-peer")
        });
    assert!(
        path.is_file(),
        "the Go reference peer {} is missing: run scripts/install-deps (as root) and then \
         scripts/build-interop",
        path.display()
    );
    path
}

fn config(hosts: usize, password: Option<&str>) -> LabConfig {
    LabConfig {
        hosts,
        pods: 0,
        weft_bin: env!("CARGO_BIN_EXE_weft").into(),
        password: password.map(str::to_owned),
        progress: false,
        ..LabConfig::default()
    }
}

/// A running `weave-mesh-peer` in a lab host. Dropping it kills it (by PID); declare it after
/// the [`Lab`] so that it goes first.
struct GoPeer {
    name: String,
    child: Child,
    status: PathBuf,
    log: PathBuf,
}

/// What a Go peer is started with.
struct GoOpts<'a> {
    host: usize,
    name: &'a str,
    nick: &'a str,
    port: u16,
    password: Option<&'a str>,
    gossip_every: Option<Duration>,
    peers: &'a [String],
}

impl GoPeer {
    fn spawn(lab: &Lab, o: &GoOpts) -> GoPeer {
        let dir = lab.host(o.host).dir().to_path_buf();
        let status = dir.join(format!("go-{}.json", o.nick));
        let log = dir.join(format!("go-{}.log", o.nick));
        let _ = std::fs::remove_file(&status);
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(go_peer_bin());
        cmd.arg("-name")
            .arg(o.name)
            .arg("-nickname")
            .arg(o.nick)
            .arg("-listen")
            .arg(format!("0.0.0.0:{}", o.port))
            .arg("-status")
            .arg(&status)
            .arg("-interval")
            .arg("100ms");
        if let Some(p) = o.password {
            cmd.arg("-password").arg(p);
        }
        if let Some(every) = o.gossip_every {
            cmd.arg("-gossip-every")
                .arg(format!("{}ms", every.as_millis()));
        }
        cmd.args(o.peers)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let child = lab.spawn_in_host(o.host, &mut cmd).unwrap();
        let mut peer = GoPeer {
            name: o.name.to_owned(),
            child,
            status,
            log,
        };
        peer.wait_started();
        peer
    }

    /// The last snapshot (`Null` until the first one is written). Fails if the peer died.
    fn snapshot(&mut self) -> Value {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!(
                "the Go peer {} exited ({st}):\n{}",
                self.name,
                log_tail(&self.log, 40)
            );
        }
        std::fs::read(&self.status)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Polls (bounded) until `done` holds for the snapshot; returns the last one.
    fn wait(&mut self, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let s = self.snapshot();
            if (!s.is_null() && done(&s)) || start.elapsed() > WAIT {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the first snapshot: the peer is then listening (the library binds its port
    /// before the first snapshot is written).
    fn wait_started(&mut self) {
        let s = self.wait(|_| true);
        assert!(
            !s.is_null(),
            "the Go peer {} wrote no status:\n{}",
            self.name,
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log, 40)
    }
}

impl Drop for GoPeer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn report(lab: &Lab, host: usize) -> Value {
    lab.http(host).get_json("/report").expect("GET /report")
}

/// Polls (bounded) until `done` holds for host `host`'s report; returns the last report.
fn wait_report(lab: &Lab, host: usize, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let r = report(lab, host);
        if done(&r) || start.elapsed() > WAIT {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The mesh status object: Weft's `/report` `Router`, or the Go snapshot's `Status`.
fn mesh_of(v: &Value) -> &Value {
    if v.get("Router").is_some() {
        &v["Router"]
    } else {
        &v["Status"]
    }
}

/// Established local connections whose `Info` names `peer`, as (address, outbound, info).
fn established_to(v: &Value, peer: &str) -> Vec<(String, bool, String)> {
    arr(&mesh_of(v)["Connections"])
        .iter()
        .filter(|c| c["State"] == "established")
        .filter(|c| c["Info"].as_str().unwrap_or("").contains(peer))
        .map(|c| {
            (
                c["Address"].as_str().unwrap_or("").to_owned(),
                c["Outbound"].as_bool().unwrap_or(false),
                c["Info"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn established_count(v: &Value) -> usize {
    arr(&mesh_of(v)["Connections"])
        .iter()
        .filter(|c| c["State"] == "established")
        .count()
}

/// The peer entry named `name` in the topology.
fn peer_entry<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    arr(&mesh_of(v)["Peers"]).iter().find(|p| p["Name"] == name)
}

/// Whether the topology holds peer `a` with an established connection to `b`.
fn topology_has(v: &Value, a: &str, b: &str) -> bool {
    peer_entry(v, a).is_some_and(|p| {
        arr(&p["Connections"])
            .iter()
            .any(|c| c["Name"] == b && c["Established"] == true)
    })
}

fn peer_names(v: &Value) -> Vec<String> {
    let mut names: Vec<String> = arr(&mesh_of(v)["Peers"])
        .iter()
        .filter_map(|p| p["Name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The first hop towards `dest` in the unicast routes.
fn route_via(v: &Value, dest: &str) -> Option<String> {
    arr(&mesh_of(v)["UnicastRoutes"])
        .iter()
        .find(|r| r["Dest"] == dest)
        .and_then(|r| r["Via"].as_str().map(str::to_owned))
}

/// Both sides list each other, connected to each other, in their topology.
fn mutual(v: &Value, us: &str, them: &str) -> bool {
    topology_has(v, us, them) && topology_has(v, them, us)
}

fn diag(lab: &Lab, weft_hosts: &[usize], go: &[&GoPeer]) -> String {
    let mut s = String::new();
    for &h in weft_hosts {
        let r = report(lab, h);
        let pending = arr(&r["Router"]["Connections"])
            .iter()
            .any(|c| c["State"] == "pending");
        if pending {
            s += &format!(
                "\nNOTE: weft h{h} has pending connections. The reference peer runs \
                 mesh.NullOverlay (no data plane): a router with a data plane waits for overlay \
                 heartbeats that never come. These tests need `weft router` to honour \
                 {MESH_ONLY_ENV}=1 (mesh only, connections established after the handshake)."
            );
        }
    }
    for &h in weft_hosts {
        s += &format!(
            "\n--- weft h{h} router log ---\n{}",
            log_tail(&lab.host(h).router_log(), 30)
        );
    }
    for g in go {
        s += &format!("\n--- Go peer {} log ---\n{}", g.name, g.log_tail());
    }
    s
}

const GO2: &str = "02:60:00:00:00:02";

/// (a) The Go peer dials Weft. It listens on another port, so that Weft's own dial (the lab
/// gives every router the other hosts' addresses) is refused: the only connection is Go's.
#[test]
fn go_peer_dials_weft() {
    setup();
    let mut lab = Lab::create(&config(2, None)).unwrap();
    lab.start_router(1).unwrap();
    let weft = lab_peer_name(1);
    let mut go = GoPeer::spawn(
        &lab,
        &GoOpts {
            host: 2,
            name: GO2,
            nick: "go-h2",
            port: 6790,
            password: None,
            gossip_every: None,
            peers: &[format!("198.18.0.1:{MESH_PORT}")],
        },
    );
    let r = wait_report(&lab, 1, |r| {
        established_to(r, GO2).len() == 1 && mutual(r, &weft, GO2)
    });
    let g = go.wait(|s| established_to(s, &weft).len() == 1 && mutual(s, GO2, &weft));
    let d = diag(&lab, &[1], &[&go]);

    let conns = established_to(&r, GO2);
    assert_eq!(conns.len(), 1, "Weft: {:#}{d}", r["Router"]["Connections"]);
    assert!(!conns[0].1, "Weft accepted, so inbound: {conns:?}");
    assert!(conns[0].0.starts_with("198.18.0.2:"), "{conns:?}");
    assert!(
        mutual(&r, &weft, GO2),
        "Weft's topology: {:#}{d}",
        r["Router"]["Peers"]
    );
    assert_eq!(peer_names(&r), sorted([weft.as_str(), GO2]));
    assert_eq!(peer_entry(&r, GO2).unwrap()["NickName"], "go-h2");
    assert_eq!(route_via(&r, GO2).as_deref(), Some(GO2));

    let conns = established_to(&g, &weft);
    assert_eq!(conns.len(), 1, "Go: {:#}{d}", g["Status"]["Connections"]);
    assert!(conns[0].1, "Go dialled, so outbound: {conns:?}");
    assert_eq!(conns[0].0, format!("198.18.0.1:{MESH_PORT}"));
    assert!(conns[0].2.contains("(h1)"), "{conns:?}");
    assert!(
        mutual(&g, GO2, &weft),
        "Go's topology: {:#}{d}",
        g["Status"]["Peers"]
    );
    assert_eq!(peer_names(&g), sorted([weft.as_str(), GO2]));
    assert_eq!(peer_entry(&g, &weft).unwrap()["NickName"], "h1");
    assert_eq!(route_via(&g, &weft).as_deref(), Some(weft.as_str()));
}

/// (b) Weft dials the Go peer (the lab gives h1's router 198.18.0.2, port 6783 by default).
#[test]
fn weft_dials_go_peer() {
    setup();
    let mut lab = Lab::create(&config(2, None)).unwrap();
    let weft = lab_peer_name(1);
    let mut go = GoPeer::spawn(
        &lab,
        &GoOpts {
            host: 2,
            name: GO2,
            nick: "go-h2",
            port: MESH_PORT,
            password: None,
            gossip_every: None,
            peers: &[],
        },
    );
    lab.start_router(1).unwrap();
    let r = wait_report(&lab, 1, |r| {
        established_to(r, GO2).len() == 1 && mutual(r, &weft, GO2)
    });
    let g = go.wait(|s| established_to(s, &weft).len() == 1 && mutual(s, GO2, &weft));
    let d = diag(&lab, &[1], &[&go]);

    let conns = established_to(&r, GO2);
    assert_eq!(conns.len(), 1, "Weft: {:#}{d}", r["Router"]["Connections"]);
    assert!(conns[0].1, "Weft dialled, so outbound: {conns:?}");
    assert_eq!(conns[0].0, format!("198.18.0.2:{MESH_PORT}"));
    assert!(
        mutual(&r, &weft, GO2),
        "Weft's topology: {:#}{d}",
        r["Router"]["Peers"]
    );
    let status = lab.http(1).get_text("/status").unwrap();
    assert!(status.contains("Connections: 1 (1 established"), "{status}");

    let conns = established_to(&g, &weft);
    assert_eq!(conns.len(), 1, "Go: {:#}{d}", g["Status"]["Connections"]);
    assert!(!conns[0].1, "Go accepted, so inbound: {conns:?}");
    assert!(conns[0].0.starts_with("198.18.0.1:"), "{conns:?}");
    assert!(
        mutual(&g, GO2, &weft),
        "Go's topology: {:#}{d}",
        g["Status"]["Peers"]
    );
    assert_eq!(peer_names(&g), sorted([weft.as_str(), GO2]));
}

/// (c) A shared password: the connection is encrypted on both sides. Both dial, so the
/// duplicate-connection rule has to agree between the implementations too. Then a wrong
/// password, and no password against one: refused on both sides, saying why.
#[test]
fn passwords_against_the_go_peer() {
    setup();
    let mut lab = Lab::create(&config(2, Some("s3cret"))).unwrap();
    let weft = lab_peer_name(1);
    let go_opts = |password| GoOpts {
        host: 2,
        name: GO2,
        nick: "go-h2",
        port: MESH_PORT,
        password,
        gossip_every: None,
        peers: &[],
    };
    let peers = [format!("198.18.0.1:{MESH_PORT}")];
    let mut go = GoPeer::spawn(
        &lab,
        &GoOpts {
            peers: &peers,
            ..go_opts(Some("s3cret"))
        },
    );
    lab.start_router(1).unwrap();
    let r = wait_report(&lab, 1, |r| {
        established_count(r) == 1 && established_to(r, GO2).len() == 1 && mutual(r, &weft, GO2)
    });
    let g = go.wait(|s| {
        established_count(s) == 1 && established_to(s, &weft).len() == 1 && mutual(s, GO2, &weft)
    });
    let d = diag(&lab, &[1], &[&go]);
    assert_eq!(
        established_count(&r),
        1,
        "Weft keeps one connection: {:#}{d}",
        r["Router"]["Connections"]
    );
    assert!(mutual(&r, &weft, GO2), "{:#}{d}", r["Router"]["Peers"]);
    assert_eq!(r["Router"]["Encryption"], true);
    let text = lab.http(1).get_text("/status/connections").unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("established"))
        .unwrap_or_default();
    assert!(line.contains("encrypted"), "{text}");
    assert_eq!(
        established_count(&g),
        1,
        "Go keeps one connection: {:#}{d}",
        g["Status"]["Connections"]
    );
    assert!(mutual(&g, GO2, &weft), "{:#}{d}", g["Status"]["Peers"]);
    assert_eq!(g["Status"]["Encryption"], true);
    let conns = established_to(&g, &weft);
    assert!(
        conns[0].2.starts_with("encrypted"),
        "Go's connection info: {conns:?}"
    );
    drop(go);

    // A different password: the session keys differ, nobody gets in. Fresh processes on both
    // sides, so that what they say is about this pairing only.
    lab.stop_router(1).unwrap();
    let mut go = GoPeer::spawn(
        &lab,
        &GoOpts {
            peers: &peers,
            ..go_opts(Some("not-the-same"))
        },
    );
    lab.start_router(1).unwrap();
    check_refused(
        &lab,
        &mut go,
        &weft,
        &["wrong password"],
        "Unable to decrypt TCP msg",
    );
    drop(go);

    // No password at all against Weft's: refused as well.
    lab.stop_router(1).unwrap();
    let mut go = GoPeer::spawn(
        &lab,
        &GoOpts {
            peers: &peers,
            ..go_opts(None)
        },
    );
    lab.start_router(1).unwrap();
    check_refused(
        &lab,
        &mut go,
        &weft,
        // The Go peer sends its "no encryption" byte and closes at once; when its close
        // resets the connection, the kernel may drop that byte before Weft reads it, and Weft
        // can only say that the peer closed after the key exchange.
        &[
            "we have a password but the peer asked for an unencrypted connection",
            "the peer closed the connection after the key exchange",
        ],
        // (sic: the library's own spelling)
        "no password specificed, but peer requested an encrypted connection",
    );
}

/// Waits until both sides have refused a handshake in both directions, then checks nothing
/// got established. Weft must say `weft_says`, on its target (its dial to the Go peer) and in
/// its log (the Go peer's dial). The Go peer must fail both its dial and the accepted
/// connection, saying `go_says` (the real cause, not an EOF: Weave sends its part of each
/// handshake step before checking the peer's, and so must Weft, even when it fails).
fn check_refused(lab: &Lab, go: &mut GoPeer, weft: &str, weft_says: &[&str], go_says: &str) {
    let go_target = format!("198.18.0.1:{MESH_PORT}");
    let weft_target = format!("198.18.0.2:{MESH_PORT}");
    let weft_refused = |r: &Value| {
        arr(&r["Router"]["Connections"]).iter().any(|c| {
            c["Address"] == weft_target.as_str()
                && c["State"] != "established"
                && weft_says
                    .iter()
                    .any(|w| c["Info"].as_str().unwrap_or("").contains(w))
        })
    };
    let weft_log = || log_tail(&lab.host(1).router_log(), 400);
    let weft_refused_inbound = |log: &str| {
        log.lines().any(|l| {
            l.contains("mesh handshake failed")
                // Any reason: the peer's own close may race its message (checked on the
                // outbound side, where the reason is kept in status).
                && l.contains("198.18.0.2:")
                && !l.contains(&weft_target)
        })
    };
    let go_refused = |s: &Value| {
        let target_failed = arr(&s["Status"]["Connections"]).iter().any(|c| {
            c["Address"] == go_target.as_str()
                && (c["State"] == "failed" || c["State"] == "retrying")
                && !c["Info"].as_str().unwrap_or("").is_empty()
        });
        let refused: Vec<&str> = arr(&s["Log"])
            .iter()
            .filter_map(|l| l.as_str())
            .filter(|l| l.contains("connection shutting down due to error during handshake"))
            .collect();
        let dial = format!("->[{go_target}]");
        let dial_refused = refused
            .iter()
            .any(|l| l.starts_with(&dial) && l.contains(go_says));
        let accept_refused = refused.iter().any(|l| {
            l.starts_with("->[198.18.0.1:") && !l.starts_with(&dial) && l.contains(go_says)
        });
        target_failed && dial_refused && accept_refused
    };
    let start = Instant::now();
    while !weft_refused_inbound(&weft_log()) && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = wait_report(lab, 1, weft_refused);
    let g = go.wait(go_refused);
    // Both have tried and failed at least once by now: check nothing slipped through.
    let r2 = report(lab, 1);
    let d = diag(lab, &[1], &[go]);
    assert!(
        weft_refused(&r),
        "Weft must refuse its dial, saying {weft_says:?}: {:#}{d}",
        r["Router"]["Connections"]
    );
    assert!(
        weft_refused_inbound(&weft_log()),
        "Weft must refuse the Go peer's dial, saying {weft_says:?}{d}"
    );
    assert!(
        go_refused(&g),
        "Go must refuse both connections, saying {go_says:?} (if it saw only EOF, Weft closed \
         without sending its part of the handshake: the router must write \
         Handshake::take_unsent() before closing): {:#}\n{:#}{d}",
        g["Status"]["Connections"],
        g["Log"]
    );
    assert_eq!(
        established_count(&r2),
        0,
        "{:#}{d}",
        r2["Router"]["Connections"]
    );
    assert_eq!(
        established_count(&g),
        0,
        "{:#}{d}",
        g["Status"]["Connections"]
    );
    assert!(
        peer_entry(&r2, GO2).is_none(),
        "{:#}",
        r2["Router"]["Peers"]
    );
    assert!(peer_entry(&g, weft).is_none(), "{:#}", g["Status"]["Peers"]);
    eprintln!(
        "refused; Weft says: {:?}\nGo says: {:?}",
        arr(&r["Router"]["Connections"])
            .iter()
            .map(|c| c["Info"].clone())
            .collect::<Vec<_>>(),
        arr(&g["Log"])
            .iter()
            .filter(|l| l.as_str().unwrap_or("").contains("error"))
            .collect::<Vec<_>>()
    );
}

/// Installs a filter in host `host` that drops everything from host `from`, so that the two
/// cannot connect directly (the table lives in the host's own netns and goes with it).
fn cut(lab: &Lab, host: usize, from: usize) {
    let nft = format!(
        "table inet weftcut {{\n chain input {{\n  type filter hook input priority 0;\n  ip saddr 198.18.0.{from} drop\n }}\n}}\n"
    );
    let rules = lab.host(host).dir().join("cut.nft");
    std::fs::write(&rules, nft).unwrap();
    let out = lab
        .exec_in_host(host, Command::new("nft").arg("-f").arg(&rules))
        .unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (d) Weft h1 — Go h2 — Weft h3 in a line (h1 and h3 cannot reach each other): h1 and h3
/// learn each other only through the Go peer, which must decode Weft's topology gossip and
/// gossip it on, and they route to each other through it.
#[test]
fn go_peer_relays_topology_between_weft_routers() {
    setup();
    let mut lab = Lab::create(&config(3, None)).unwrap();
    cut(&lab, 1, 3);
    let (w1, w3) = (lab_peer_name(1), lab_peer_name(3));
    let mut go = GoPeer::spawn(
        &lab,
        &GoOpts {
            host: 2,
            name: GO2,
            nick: "go-h2",
            port: MESH_PORT,
            password: None,
            gossip_every: None,
            peers: &[],
        },
    );
    lab.start_router(1).unwrap();
    lab.start_router(3).unwrap();
    let all = sorted([w1.as_str(), GO2, w3.as_str()]);
    let line_ok = |r: &Value, us: &str, other: &str| {
        peer_names(r) == all
            && mutual(r, us, GO2)
            && mutual(r, other, GO2)
            && route_via(r, other).as_deref() == Some(GO2)
    };
    let r1 = wait_report(&lab, 1, |r| line_ok(r, &w1, &w3));
    let r3 = wait_report(&lab, 3, |r| line_ok(r, &w3, &w1));
    let g = go.wait(|s| peer_names(s) == all && mutual(s, GO2, &w1) && mutual(s, GO2, &w3));
    let d = diag(&lab, &[1, 3], &[&go]);
    for (h, r, us, other) in [(1, &r1, &w1, &w3), (3, &r3, &w3, &w1)] {
        assert_eq!(peer_names(r), all, "h{h}: {:#}{d}", r["Router"]["Peers"]);
        assert!(
            mutual(r, other, GO2),
            "h{h} learns {other}'s link to Go through Go: {:#}{d}",
            r["Router"]["Peers"]
        );
        assert!(mutual(r, us, GO2), "h{h}: {:#}", r["Router"]["Peers"]);
        assert_eq!(
            route_via(r, other).as_deref(),
            Some(GO2),
            "h{h}: {:#}",
            r["Router"]["UnicastRoutes"]
        );
        assert_eq!(
            established_to(r, other).len(),
            0,
            "h{h} cannot reach {other} directly: {:#}",
            r["Router"]["Connections"]
        );
    }
    assert_eq!(peer_names(&g), all, "Go: {:#}{d}", g["Status"]["Peers"]);
    assert!(
        mutual(&g, GO2, &w1) && mutual(&g, GO2, &w3),
        "{:#}",
        g["Status"]["Peers"]
    );
}

/// Go h1 — Weft h2 — Go h3 in a line: the Go peers' messages on a gossip channel Weft does not
/// know (broadcast, unicast, periodic gossip) reach the other Go peer only through Weft's
/// relaying, in the library's own formats.
#[test]
fn weft_relays_gossip_between_go_peers() {
    setup();
    let mut lab = Lab::create(&config(3, None)).unwrap();
    cut(&lab, 1, 3);
    let (g1, g3) = ("02:60:00:00:00:01", "02:60:00:00:00:03");
    let w2 = lab_peer_name(2);
    let spawn = |host, name, nick| {
        GoPeer::spawn(
            &lab,
            &GoOpts {
                host,
                name,
                nick,
                port: MESH_PORT,
                password: None,
                gossip_every: Some(Duration::from_millis(500)),
                peers: &[],
            },
        )
    };
    let mut go1 = spawn(1, g1, "go-h1");
    let mut go3 = spawn(3, g3, "go-h3");
    lab.start_router(2).unwrap();
    let got = |s: &Value, kind: &str, prefix: &str| {
        arr(&s["Received"])
            .iter()
            .any(|m| m["Kind"] == kind && m["Message"].as_str().unwrap_or("").starts_with(prefix))
    };
    let all = sorted([g1, w2.as_str(), g3]);
    let check = |s: &Value, us: &str, other: &str| {
        peer_names(s) == all
            && route_via(s, other).as_deref() == Some(w2.as_str())
            && got(s, "broadcast", "broadcast ")
            && got(s, "unicast", "unicast ")
            && arr(&s["Received"])
                .iter()
                .filter(|m| m["Kind"] != "gossip")
                .all(|m| {
                    let text = m["Message"].as_str().unwrap_or("");
                    text.contains(&format!("from {other}"))
                        && (m["Kind"] != "unicast" || text.ends_with(&format!("to {us}")))
                })
    };
    let s1 = go1.wait(|s| check(s, g1, g3));
    let s3 = go3.wait(|s| check(s, g3, g1));
    let d = diag(&lab, &[2], &[&go1, &go3]);
    for (s, us, other) in [(&s1, g1, g3), (&s3, g3, g1)] {
        assert_eq!(peer_names(s), all, "{us}: {:#}{d}", s["Status"]["Peers"]);
        assert_eq!(
            route_via(s, other).as_deref(),
            Some(w2.as_str()),
            "{us}: {:#}{d}",
            s["Status"]["UnicastRoutes"]
        );
        assert!(
            got(s, "broadcast", "broadcast ") && got(s, "unicast", "unicast "),
            "{us} receives {other}'s broadcasts and unicasts through Weft: {:#}{d}",
            s["Received"]
        );
        assert!(check(s, us, other), "{us}: {:#}{d}", s["Received"]);
    }
    // Weft stays connected to both: relaying, and the unicasts addressed to itself on an
    // unknown channel, did not upset it.
    let r = report(&lab, 2);
    assert_eq!(
        established_count(&r),
        2,
        "{:#}{d}",
        r["Router"]["Connections"]
    );
    assert_eq!(r["Router"]["TerminationCount"], 0, "{:#}{d}", r["Router"]);
}

fn sorted<const N: usize>(names: [&str; N]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}
