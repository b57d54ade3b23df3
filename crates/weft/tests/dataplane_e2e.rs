//! The data plane between real `weft router` processes in lab namespaces: pods on different
//! hosts reach each other over the fast path; a blocked fast path falls back to sleeve and
//! comes back by itself; a cut underlay is routed around over sleeve; an encrypted sleeve
//! shows no pod payload on the wire; broadcast and multicast cross hosts.

use std::process::Command;
use std::time::{Duration, Instant};

use weft_lab::{Lab, LabConfig, Matrix};

/// The fast-path and sleeve heartbeat timeouts the routers run with here (production: 60 s).
const FASTDP_TIMEOUT_MS: &str = "3000";
const SLEEVE_TIMEOUT_MS: &str = "6000";

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests create network namespaces: run them as root"
    );
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

/// Short heartbeat timeouts for the routers (they inherit the test's environment; each test
/// runs in its own process under nextest, and sets the same values under `cargo test`).
fn short_timeouts() {
    // SAFETY (edition 2021: safe fn): set before any router or thread that reads it starts.
    std::env::set_var("WEFT_FASTDP_TIMEOUT_MS", FASTDP_TIMEOUT_MS);
    std::env::set_var("WEFT_SLEEVE_TIMEOUT_MS", SLEEVE_TIMEOUT_MS);
}

/// A lab with routers started (per-host extra arguments) and `pods` pods per host.
fn lab_with(
    hosts: usize,
    pods: usize,
    password: Option<&str>,
    before_routers: impl FnOnce(&Lab),
    extra: impl Fn(usize) -> Vec<&'static str>,
) -> Lab {
    short_timeouts();
    let mut lab = Lab::create(&config(hosts, password)).unwrap();
    before_routers(&lab);
    for n in 1..=hosts {
        let args: Vec<String> = extra(n).iter().map(|s| s.to_string()).collect();
        lab.start_router_with(n, &args).unwrap();
    }
    for n in 1..=hosts {
        for _ in 0..pods {
            lab.add_cni_pod(n).unwrap();
        }
    }
    lab
}

fn assert_all_ok(lab: &Lab, m: &Matrix, what: &str) {
    assert!(
        m.all_ok(),
        "{what}: {}\n{m}\n{}\n{}",
        m.summary(),
        connections_text(lab),
        router_logs(lab)
    );
}

fn connections(lab: &Lab, host: usize) -> String {
    lab.http(host)
        .get_text("/status/connections")
        .unwrap_or_else(|e| format!("(unavailable: {e})"))
}

fn connections_text(lab: &Lab) -> String {
    (1..=lab.host_count())
        .map(|h| format!("--- h{h} connections ---\n{}", connections(lab, h)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn router_logs(lab: &Lab) -> String {
    (1..=lab.host_count())
        .map(|h| {
            format!(
                "--- h{h} router log ---\n{}",
                weft_lab::log_tail(&lab.host(h).router_log(), 40)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls (bounded) until `done` holds for host `host`'s connection status; returns the last.
fn wait_connections(
    lab: &Lab,
    host: usize,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let t = connections(lab, host);
        if done(&t) || start.elapsed() > timeout {
            return t;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The status line of host `host`'s connection to `peer_addr`.
fn line_to<'a>(text: &'a str, peer_addr: &str) -> Option<&'a str> {
    text.lines().find(|l| l.contains(peer_addr))
}

fn established_via(text: &str, overlay: &str, count: usize) -> bool {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.len() == count
        && lines
            .iter()
            .all(|l| l.contains("established") && l.contains(&format!(" {overlay} ")))
}

fn nft_in_host(lab: &Lab, host: usize, script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.nft");
    std::fs::write(&path, script).unwrap();
    let out = lab
        .exec_in_host(host, Command::new("nft").arg("-f").arg(&path))
        .unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The acceptance command, through the real CLI: three hosts, two pods each, every
/// pod reaches every other, and every connection is carried by the fast path.
#[test]
fn lab_check_all_pairs_over_the_fast_path() {
    require_root();
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "lab",
            "--hosts",
            "3",
            "--pods",
            "2",
            "--check",
            "--expect-overlay",
            "fastdp",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("30/30 pairs reachable"), "{stdout}");
    assert!(
        stdout.contains("6/6 connections established (fastdp 6)"),
        "{stdout}"
    );
    let conn_lines = stdout
        .lines()
        .filter(|l| l.contains(" -> ") && l.contains("established fastdp"))
        .count();
    assert_eq!(conn_lines, 6, "{stdout}");
}

#[test]
fn pods_on_three_hosts_reach_each_other_over_the_fast_path() {
    require_root();
    let lab = lab_with(3, 2, None, |_| {}, |_| vec![]);
    let m = lab.settled_matrix(Duration::from_secs(60));
    assert_all_ok(&lab, &m, "all pairs over the fast path");
    for h in 1..=3 {
        let t = wait_connections(&lab, h, Duration::from_secs(30), |t| {
            established_via(t, "fastdp", 2)
        });
        assert!(established_via(&t, "fastdp", 2), "h{h}:\n{t}");
        assert!(t.contains("unencrypted fastdp"), "h{h}:\n{t}");
        assert!(t.contains("mtu=1438"), "h{h}:\n{t}");
    }
    // The frames really took the fast path: the VXLAN device of h1 carried them.
    let out = lab
        .exec_in_host(
            1,
            Command::new("ip").args(["-s", "link", "show", "vxlan-6784"]),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
}

/// The pod's address on host `host` (first pod).
fn pod_addr(lab: &Lab, host: usize) -> String {
    lab.pod(host, 1).addr().to_string()
}

#[test]
fn a_blocked_fast_path_falls_back_to_sleeve_and_comes_back() {
    require_root();
    let lab = lab_with(2, 1, None, |_| {}, |_| vec![]);
    let m = lab.settled_matrix(Duration::from_secs(60));
    assert_all_ok(&lab, &m, "before the block");
    for h in 1..=2 {
        let t = wait_connections(&lab, h, Duration::from_secs(30), |t| {
            established_via(t, "fastdp", 1)
        });
        assert!(established_via(&t, "fastdp", 1), "h{h}:\n{t}");
    }
    // h1 drops the fast path's UDP port to and from h2; sleeve (6783) still works.
    nft_in_host(
        &lab,
        1,
        "table inet weftblock {\n chain input {\n  type filter hook input priority 0;\n  ip saddr 198.18.0.2 udp dport 6784 drop\n }\n chain output {\n  type filter hook output priority 0;\n  ip daddr 198.18.0.2 udp dport 6784 drop\n }\n}\n",
    );
    for (h, peer) in [(1, "198.18.0.2"), (2, "198.18.0.1")] {
        let t = wait_connections(&lab, h, Duration::from_secs(60), |t| {
            line_to(t, peer).is_some_and(|l| l.contains(" sleeve ") && l.contains("established"))
        });
        let line = line_to(&t, peer).unwrap_or_default();
        assert!(
            line.contains(" sleeve ") && line.contains("established"),
            "h{h} must fall back to sleeve:\n{t}\n{}",
            router_logs(&lab)
        );
        eprintln!("h{h} after the block: {line}");
        // The status says why.
        assert!(
            line.contains("sleeve, because fastdp:") && line.contains("UDP 6784 blocked"),
            "h{h}:\n{t}"
        );
    }
    let m = lab.settled_matrix(Duration::from_secs(60));
    assert_all_ok(&lab, &m, "over sleeve while the fast path is blocked");
    assert!(m.get("h1p1", "h2p1").is_some_and(|o| o.is_ok()), "{m}");
    // Lift the block: both return to the fast path by themselves.
    let out = lab
        .exec_in_host(
            1,
            Command::new("nft").args(["delete", "table", "inet", "weftblock"]),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for h in 1..=2 {
        let t = wait_connections(&lab, h, Duration::from_secs(60), |t| {
            established_via(t, "fastdp", 1)
        });
        assert!(
            established_via(&t, "fastdp", 1),
            "h{h} must return to the fast path:\n{t}\n{}",
            router_logs(&lab)
        );
        eprintln!("h{h} after the block was lifted: {t}");
    }
    let m = lab.settled_matrix(Duration::from_secs(60));
    assert_all_ok(&lab, &m, "back on the fast path");
    let _ = pod_addr(&lab, 1);
}

#[test]
fn a_cut_underlay_is_bridged_by_sleeve_through_a_third_host() {
    require_root();
    // h1 and h3 cannot exchange anything; h2 reaches both.
    let lab = lab_with(
        3,
        1,
        None,
        |lab| {
            nft_in_host(
                lab,
                1,
                "table inet weftcut {\n chain input {\n  type filter hook input priority 0;\n  ip saddr 198.18.0.3 drop\n }\n chain output {\n  type filter hook output priority 0;\n  ip daddr 198.18.0.3 drop\n }\n}\n",
            )
        },
        |_| vec![],
    );
    let m = lab.settled_matrix(Duration::from_secs(90));
    assert_all_ok(&lab, &m, "h1 and h3 through h2");
    assert!(m.get("h1p1", "h3p1").is_some_and(|o| o.is_ok()), "{m}");
    assert!(m.get("h3p1", "h1p1").is_some_and(|o| o.is_ok()), "{m}");
    // h1 has no connection to h3: the frames were relayed by h2's sleeve.
    let t = connections(&lab, 1);
    assert!(
        !line_to(&t, "198.18.0.3").is_some_and(|l| l.contains("established")),
        "h1 must not be connected to h3:\n{t}"
    );
}

/// Reads a pcap file and returns the captured packets.
fn pcap_packets(path: &std::path::Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    if data.len() < 24 {
        return out;
    }
    let le = data[..4] == [0xd4, 0xc3, 0xb2, 0xa1] || data[..4] == [0x4d, 0x3c, 0xb2, 0xa1];
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32_at(&data[off + 8..off + 12]) as usize;
        off += 16;
        if off + incl > data.len() {
            break;
        }
        out.push(data[off..off + incl].to_vec());
        off += incl;
    }
    out
}

#[test]
fn an_encrypted_sleeve_shows_no_pod_payload_on_the_wire() {
    require_root();
    let lab = lab_with(2, 1, Some("an overlay secret"), |_| {}, |_| vec![]);
    let m = lab.settled_matrix(Duration::from_secs(60));
    assert_all_ok(&lab, &m, "encrypted sleeve");
    for h in 1..=2 {
        let t = wait_connections(&lab, h, Duration::from_secs(30), |t| {
            established_via(t, "sleeve", 1)
        });
        assert!(established_via(&t, "sleeve", 1), "h{h}:\n{t}");
        assert!(t.contains("encrypted sleeve"), "h{h}:\n{t}");
    }
    // Capture the sleeve traffic on the underlay while the pods exchange a recognisable
    // payload.
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("underlay.pcap");
    let mut dump = Command::new("ip")
        .args(["netns", "exec", lab.underlay_netns_name()])
        .args(["timeout", "30", "tcpdump", "-i", weft_lab::UNDERLAY_BRIDGE])
        .args(["-n", "-U", "-Z", "root", "-s", "0", "-c", "20", "-w"])
        .arg(&pcap)
        .args(["udp", "port", "6783", "and", "greater", "300"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    const PATTERN: [u8; 8] = [0xc0, 0xff, 0xee, 0x5e, 0xc2, 0xe7, 0xda, 0x7a];
    let hex: String = PATTERN.iter().map(|b| format!("{b:02x}")).collect();
    let target = pod_addr(&lab, 2);
    let out = lab
        .exec_in_pod(
            1,
            1,
            Command::new("ping").args(["-c", "15", "-i", "0.2", "-s", "400", "-p", &hex, &target]),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let status = dump.wait().unwrap();
    let packets = pcap_packets(&pcap);
    assert!(
        packets.len() >= 10,
        "tcpdump ({status}) captured only {} sleeve datagrams",
        packets.len()
    );
    for p in &packets {
        assert!(
            !p.windows(PATTERN.len()).any(|w| w == PATTERN),
            "a pod payload crossed the underlay in clear: {p:02x?}"
        );
    }
}

fn ping_replies(lab: &Lab, host: usize, args: &[&str]) -> String {
    let out = lab
        .exec_in_pod(host, 1, Command::new("ping").args(args))
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn broadcast_and_multicast_cross_hosts_on_both_overlays() {
    require_root();
    // h3 runs without the fast path: h1-h2 is fastdp, h1-h3 and h2-h3 are sleeve (a peer
    // that offers no weft-vxlan, like a Weave peer, gets sleeve).
    let lab = lab_with(
        3,
        1,
        None,
        |_| {},
        |n| {
            if n == 3 {
                vec!["--no-fastdp=true"]
            } else {
                vec![]
            }
        },
    );
    let m = lab.settled_matrix(Duration::from_secs(60));
    assert_all_ok(&lab, &m, "mixed overlays");
    let t = wait_connections(&lab, 1, Duration::from_secs(30), |t| {
        line_to(t, "198.18.0.2").is_some_and(|l| l.contains(" fastdp "))
            && line_to(t, "198.18.0.3").is_some_and(|l| l.contains(" sleeve "))
    });
    assert!(
        line_to(&t, "198.18.0.2").is_some_and(|l| l.contains(" fastdp ")),
        "h1:\n{t}"
    );
    let l3 = line_to(&t, "198.18.0.3").unwrap_or_default();
    assert!(
        l3.contains(" sleeve ") && l3.contains("weft-vxlan"),
        "h1 to h3 (no fast path there):\n{t}"
    );
    for h in 1..=3 {
        let out = lab
            .exec_in_pod(
                h,
                1,
                Command::new("sh").args([
                    "-c",
                    "echo 0 > /proc/sys/net/ipv4/icmp_echo_ignore_broadcasts",
                ]),
            )
            .unwrap();
        assert!(out.status.success());
    }
    let others = [pod_addr(&lab, 2), pod_addr(&lab, 3)];
    let bcast = lab.pod(1, 1).cidr().broadcast().to_string();
    for (what, args) in [
        (
            "broadcast",
            vec!["-b", "-c", "3", "-i", "0.3", "-w", "3", bcast.as_str()],
        ),
        (
            "multicast",
            vec!["-c", "3", "-i", "0.3", "-w", "3", "224.0.0.1"],
        ),
    ] {
        let start = Instant::now();
        let mut text;
        loop {
            text = ping_replies(&lab, 1, &args);
            let all = others.iter().all(|a| text.contains(&format!("from {a}:")));
            if all || start.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
        for a in &others {
            assert!(
                text.contains(&format!("from {a}:")),
                "{what} ping from h1p1 got no reply from {a}:\n{text}\n{}",
                connections_text(&lab)
            );
        }
    }
}
