//! Multi-peer simulation of the overlay logic: four peers, each with a model
//! of its kernel bridge (pod ports, the sleeve TAP port and the VXLAN port,
//! TAP and VXLAN isolated from each other), a model of the VXLAN device
//! (FDB with learning, static heartbeat entries, flood list), the sleeve
//! router and one overlay switch per mesh connection. Datagrams, VXLAN
//! frames and TCP control messages travel through an in-memory network.
//!
//! Topology: every pair is connected except 1–3 (cut), so 1↔3 traffic is
//! relayed by 2 over sleeve. Only peer 2's links carry VXLAN (UDP 6784 is
//! blocked elsewhere), so 1–2, 2–3, 2–4 run on the fast path and 1–4, 3–4 on
//! sleeve; 1–4 is encrypted.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use weft_overlay::ether::internet_checksum;
use weft_overlay::fastdp::{parse_heartbeat, FastdpAction, FastdpConfig, HEARTBEAT_ETHERTYPE};
use weft_overlay::router::{PeerView, SleeveRouter, Verdict};
use weft_overlay::sleeve::codec::parse_sender;
use weft_overlay::sleeve::{SleeveAction, SleeveConfig};
use weft_overlay::switch::{FastdpSetup, OverlaySwitch, ServedBy, SwitchAction, SwitchParams};
use weft_overlay::{MacAddr, Millis};
use weft_wire::framing::ProtocolMsg;
use weft_wire::{PeerName, SessionKey};

fn peer(i: u8) -> PeerName {
    PeerName::from_mac([2, 0, 0, 0, 0, i])
}
fn ip_of(p: PeerName) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, p.to_name_bytes()[5])
}
fn pod(node: u8, k: u8) -> MacAddr {
    MacAddr([0x0a, 0x58, 0, 0, node, k])
}
fn pair(a: PeerName, b: PeerName) -> (PeerName, PeerName) {
    (a.min(b), a.max(b))
}

const UNDERLAY_PMTU: usize = 1500;
const BRIDGE_MTU: usize = 1376;

/// An IPv4 DF frame carrying a test id.
fn make_frame(dst: MacAddr, src: MacAddr, id: u64) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x00]);
    let payload = 108;
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
    h[6] = 0x40;
    h[8] = 64;
    h[9] = 253;
    h[12..16].copy_from_slice(&[10, 32, src.0[4], src.0[5]]);
    h[16..20].copy_from_slice(&[10, 32, dst.0[4], dst.0[5]]);
    let c = internet_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&id.to_be_bytes());
    f.resize(14 + 20 + payload, 0);
    f
}
fn frame_id(f: &[u8]) -> Option<u64> {
    if f.len() < 42 || f[12..14] != [0x08, 0x00] || f[23] != 253 {
        return None;
    }
    Some(u64::from_be_bytes(f[34..42].try_into().unwrap()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Port {
    Pod(MacAddr),
    Tap,
    Vxlan,
}

struct Node {
    name: PeerName,
    pods: Vec<MacAddr>,
    router: SleeveRouter,
    switches: BTreeMap<PeerName, OverlaySwitch>,
    bridge_fdb: HashMap<MacAddr, Port>,
    /// VXLAN FDB: MAC → remote peer, and whether static.
    vxlan_fdb: HashMap<MacAddr, (PeerName, bool)>,
    vxlan_flood: BTreeSet<PeerName>,
}

enum Msg {
    Udp {
        from: PeerName,
        to: PeerName,
        payload: Vec<u8>,
    },
    Tcp {
        from: PeerName,
        to: PeerName,
        msg: ProtocolMsg,
    },
    Vxlan {
        from: PeerName,
        to: PeerName,
        frame: Vec<u8>,
    },
}

struct SimView {
    me: PeerName,
    hops: BTreeMap<PeerName, PeerName>,
    fast: BTreeSet<PeerName>,
}

impl PeerView for SimView {
    fn local(&self) -> PeerName {
        self.me
    }
    fn next_hop(&self, dst: PeerName) -> Option<PeerName> {
        self.hops.get(&dst).copied()
    }
    fn reachable_peers(&self) -> Vec<PeerName> {
        self.hops.keys().copied().collect()
    }
    fn is_fastdp(&self, p: PeerName) -> bool {
        self.fast.contains(&p)
    }
}

struct Sim {
    now: Millis,
    nodes: BTreeMap<PeerName, Node>,
    links: BTreeSet<(PeerName, PeerName)>,
    vxlan_ok: BTreeSet<(PeerName, PeerName)>,
    queue: VecDeque<Msg>,
    /// (node, pod, id)
    deliveries: Vec<(PeerName, MacAddr, u64)>,
    failures: Vec<String>,
    udp_datagrams: u64,
    vxlan_frames: u64,
}

impl Sim {
    fn new() -> Sim {
        let names: Vec<PeerName> = (1..=4).map(peer).collect();
        let mut links = BTreeSet::new();
        for &a in &names {
            for &b in &names {
                if a < b && !(a == peer(1) && b == peer(3)) {
                    links.insert((a, b));
                }
            }
        }
        let vxlan_ok = links
            .iter()
            .copied()
            .filter(|(a, b)| *a == peer(2) || *b == peer(2))
            .collect();
        let mut nodes = BTreeMap::new();
        for (i, &n) in names.iter().enumerate() {
            let i = i as u8 + 1;
            let pods = if i == 1 {
                vec![pod(1, 1), pod(1, 2)]
            } else {
                vec![pod(i, 1)]
            };
            nodes.insert(
                n,
                Node {
                    name: n,
                    pods,
                    router: SleeveRouter::new(n),
                    switches: BTreeMap::new(),
                    bridge_fdb: HashMap::new(),
                    vxlan_fdb: HashMap::new(),
                    vxlan_flood: BTreeSet::new(),
                },
            );
        }
        let mut sim = Sim {
            now: Millis(0),
            nodes,
            links,
            vxlan_ok,
            queue: VecDeque::new(),
            deliveries: Vec::new(),
            failures: Vec::new(),
            udp_datagrams: 0,
            vxlan_frames: 0,
        };
        let links: Vec<_> = sim.links.iter().copied().collect();
        for (a, b) in links {
            let key = (a == peer(1) && b == peer(4)).then(|| SessionKey::from_bytes([14; 32]));
            let uid = 1000 + u64::from(a.to_name_bytes()[5]) * 10 + u64::from(b.to_name_bytes()[5]);
            for (local, remote, outbound) in [(a, b, true), (b, a, false)] {
                let sw = OverlaySwitch::prepare(SwitchParams {
                    local,
                    remote,
                    conn_uid: uid,
                    outbound,
                    session_key: key.clone(),
                    remote_overlays: Some(vec!["weft-vxlan".into(), "sleeve".into()]),
                    remote_ip: ip_of(remote),
                    sleeve_remote_addr: Some(SocketAddrV4::new(ip_of(remote), 6783)),
                    fastdp: Some(FastdpSetup {
                        local_mac: MacAddr::from(local),
                        remote_mac: MacAddr::from(remote),
                        frame_len: BRIDGE_MTU + 14,
                    }),
                    sleeve_config: SleeveConfig::default(),
                    fastdp_config: FastdpConfig::default(),
                })
                .unwrap();
                sim.nodes
                    .get_mut(&local)
                    .unwrap()
                    .switches
                    .insert(remote, sw);
            }
        }
        sim
    }

    fn peer_by_ip(&self, ip: Ipv4Addr) -> PeerName {
        *self.nodes.keys().find(|p| ip_of(**p) == ip).unwrap()
    }

    /// Data-plane routes of `me`: BFS over the links, neighbours in name order.
    fn view(&self, me: PeerName) -> SimView {
        let mut hops = BTreeMap::new();
        let mut frontier: Vec<(PeerName, PeerName)> = Vec::new();
        let neighbours = |p: PeerName| -> Vec<PeerName> {
            let mut v: Vec<PeerName> = self
                .links
                .iter()
                .filter_map(|&(a, b)| {
                    if a == p {
                        Some(b)
                    } else if b == p {
                        Some(a)
                    } else {
                        None
                    }
                })
                .collect();
            v.sort();
            v
        };
        for n in neighbours(me) {
            hops.insert(n, n);
            frontier.push((n, n));
        }
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for (p, via) in frontier {
                for n in neighbours(p) {
                    if n != me && !hops.contains_key(&n) {
                        hops.insert(n, via);
                        next.push((n, via));
                    }
                }
            }
            frontier = next;
        }
        let node = &self.nodes[&me];
        let fast = node
            .switches
            .iter()
            .filter(|(_, s)| s.served_by() == ServedBy::Fastdp)
            .map(|(p, _)| *p)
            .collect();
        SimView { me, hops, fast }
    }

    fn pump(&mut self, n: PeerName) {
        loop {
            let mut acts = Vec::new();
            for (remote, sw) in self.nodes.get_mut(&n).unwrap().switches.iter_mut() {
                while let Some(a) = sw.poll_action() {
                    acts.push((*remote, a));
                }
            }
            if acts.is_empty() {
                return;
            }
            for (remote, a) in acts {
                self.switch_action(n, remote, a);
            }
        }
    }

    fn switch_action(&mut self, n: PeerName, remote: PeerName, a: SwitchAction) {
        let now = self.now;
        match a {
            SwitchAction::Control(msg) => self.queue.push_back(Msg::Tcp {
                from: n,
                to: remote,
                msg,
            }),
            SwitchAction::Sleeve(SleeveAction::SendDatagram { to, df, payload }) => {
                if df && payload.len() > UNDERLAY_PMTU - 28 {
                    // EMSGSIZE: the driver reads IP_MTU and reports it.
                    let sw = self
                        .nodes
                        .get_mut(&n)
                        .unwrap()
                        .switches
                        .get_mut(&remote)
                        .unwrap();
                    sw.sleeve_mut().unwrap().underlay_pmtu(now, UNDERLAY_PMTU);
                    return;
                }
                let to = self.peer_by_ip(*to.ip());
                self.queue.push_back(Msg::Udp {
                    from: n,
                    to,
                    payload,
                });
            }
            SwitchAction::Sleeve(SleeveAction::FragNeeded { src, dst, frame }) => {
                let view = self.view(n);
                let node = self.nodes.get_mut(&n).unwrap();
                let v = node
                    .router
                    .handle_forwarded(now, None, src, dst, &frame, &view);
                self.verdict(n, v, &frame);
            }
            SwitchAction::Sleeve(_) => {}
            SwitchAction::Fastdp(f) => {
                let node = self.nodes.get_mut(&n).unwrap();
                match f {
                    FastdpAction::SendHeartbeat { frame } => self.vxlan_xmit(n, frame),
                    FastdpAction::AddHeartbeatFdb { mac, peer_ip } => {
                        let p = self.peer_by_ip(peer_ip);
                        self.nodes
                            .get_mut(&n)
                            .unwrap()
                            .vxlan_fdb
                            .insert(mac, (p, true));
                    }
                    FastdpAction::RemoveHeartbeatFdb { mac, .. } => {
                        node.vxlan_fdb.remove(&mac);
                    }
                    FastdpAction::AddFloodEntry { peer_ip } => {
                        let p = self.peer_by_ip(peer_ip);
                        self.nodes.get_mut(&n).unwrap().vxlan_flood.insert(p);
                    }
                    FastdpAction::RemoveFloodEntry { peer_ip } => {
                        let p = self.peer_by_ip(peer_ip);
                        self.nodes.get_mut(&n).unwrap().vxlan_flood.remove(&p);
                    }
                    FastdpAction::FlushPeerMacs { peer_ip } => {
                        // Dynamic VXLAN FDB entries of the peer, and the
                        // bridge's entries for them on the VXLAN port.
                        let p = self.peer_by_ip(peer_ip);
                        let node = self.nodes.get_mut(&n).unwrap();
                        let gone: Vec<MacAddr> = node
                            .vxlan_fdb
                            .iter()
                            .filter(|(_, (q, stat))| *q == p && !*stat)
                            .map(|(m, _)| *m)
                            .collect();
                        for m in gone {
                            node.vxlan_fdb.remove(&m);
                            if node.bridge_fdb.get(&m) == Some(&Port::Vxlan) {
                                node.bridge_fdb.remove(&m);
                            }
                        }
                    }
                    FastdpAction::SendControl { .. } | FastdpAction::StateChanged { .. } => {}
                }
            }
            SwitchAction::ServedByChanged { served_by, .. } => {
                if served_by == ServedBy::Fastdp {
                    // Integration contract: when a peer moves to the fast
                    // path, forget the bridge's TAP-port entries for its
                    // MACs so they are relearned on the VXLAN port.
                    let node = self.nodes.get_mut(&n).unwrap();
                    for m in node.router.macs_at(remote) {
                        if node.bridge_fdb.get(&m) == Some(&Port::Tap) {
                            node.bridge_fdb.remove(&m);
                        }
                    }
                }
            }
            SwitchAction::Established => {}
            SwitchAction::Failed { reason } => self.failures.push(reason),
        }
    }

    /// The VXLAN device transmits a frame.
    fn vxlan_xmit(&mut self, n: PeerName, frame: Vec<u8>) {
        let node = &self.nodes[&n];
        let dst = MacAddr::from_slice(&frame[..6]).unwrap();
        let targets: Vec<PeerName> = match node.vxlan_fdb.get(&dst) {
            Some((p, _)) if !dst.is_multicast() => vec![*p],
            _ => node.vxlan_flood.iter().copied().collect(),
        };
        for t in targets {
            if self.vxlan_ok.contains(&pair(n, t)) {
                self.queue.push_back(Msg::Vxlan {
                    from: n,
                    to: t,
                    frame: frame.clone(),
                });
            }
        }
    }

    /// A frame enters node `n`'s bridge on `ingress`.
    fn bridge_input(&mut self, n: PeerName, ingress: Port, frame: Vec<u8>) {
        let node = self.nodes.get_mut(&n).unwrap();
        let src = MacAddr::from_slice(&frame[6..12]).unwrap();
        let dst = MacAddr::from_slice(&frame[..6]).unwrap();
        if !src.is_multicast() {
            node.bridge_fdb.insert(src, ingress);
        }
        let outputs: Vec<Port> = match node.bridge_fdb.get(&dst) {
            Some(p) if !dst.is_multicast() => {
                if *p == ingress {
                    vec![]
                } else {
                    vec![*p]
                }
            }
            _ => {
                let mut ports: Vec<Port> = node.pods.iter().map(|m| Port::Pod(*m)).collect();
                ports.push(Port::Tap);
                ports.push(Port::Vxlan);
                ports
                    .into_iter()
                    .filter(|p| *p != ingress)
                    // Port isolation between the two uplinks.
                    .filter(|p| {
                        !matches!(
                            (ingress, p),
                            (Port::Tap, Port::Vxlan) | (Port::Vxlan, Port::Tap)
                        )
                    })
                    .collect()
            }
        };
        for out in outputs {
            match out {
                Port::Pod(m) => {
                    if let Some(id) = frame_id(&frame) {
                        self.deliveries.push((n, m, id));
                    }
                }
                Port::Vxlan => self.vxlan_xmit(n, frame.clone()),
                Port::Tap => {
                    let view = self.view(n);
                    let now = self.now;
                    let v = self
                        .nodes
                        .get_mut(&n)
                        .unwrap()
                        .router
                        .handle_captured(now, &frame, &view);
                    self.verdict(n, v, &frame);
                }
            }
        }
    }

    fn verdict(&mut self, n: PeerName, v: Verdict, frame: &[u8]) {
        match v {
            Verdict::Drop(_) => {}
            Verdict::Inject => self.bridge_input(n, Port::Tap, frame.to_vec()),
            Verdict::Forward {
                deliveries,
                broadcast,
            } => {
                let node = self.nodes.get_mut(&n).unwrap();
                for d in deliveries {
                    let sw = node
                        .switches
                        .get_mut(&d.via)
                        .expect("next hop is a neighbour");
                    sw.forward_sleeve(d.src, d.dst, frame, broadcast);
                    sw.flush();
                }
                self.pump(n);
            }
        }
    }

    fn deliver_all(&mut self) {
        let mut steps = 0;
        while let Some(m) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 100_000, "messages keep circulating: a loop");
            let now = self.now;
            match m {
                Msg::Tcp { from, to, msg } => {
                    let sw = self
                        .nodes
                        .get_mut(&to)
                        .unwrap()
                        .switches
                        .get_mut(&from)
                        .unwrap();
                    sw.handle_control(now, &msg).unwrap();
                    self.pump(to);
                }
                Msg::Udp { from, to, payload } => {
                    self.udp_datagrams += 1;
                    let (sender, body) = parse_sender(&payload).unwrap();
                    assert_eq!(sender, from);
                    let mut frames = Vec::new();
                    let sw = self
                        .nodes
                        .get_mut(&to)
                        .unwrap()
                        .switches
                        .get_mut(&from)
                        .unwrap();
                    sw.receive_sleeve(now, SocketAddrV4::new(ip_of(from), 6783), body, |f| {
                        frames.push((f.src, f.dst, f.frame.to_vec()))
                    })
                    .unwrap();
                    self.pump(to);
                    for (src, dst, frame) in frames {
                        let view = self.view(to);
                        let v = self.nodes.get_mut(&to).unwrap().router.handle_forwarded(
                            now,
                            Some(from),
                            src,
                            dst,
                            &frame,
                            &view,
                        );
                        self.verdict(to, v, &frame);
                    }
                }
                Msg::Vxlan { from, to, frame } => {
                    self.vxlan_frames += 1;
                    if u16::from_be_bytes([frame[12], frame[13]]) == HEARTBEAT_ETHERTYPE {
                        let hb = parse_heartbeat(&frame).unwrap();
                        let sw = self
                            .nodes
                            .get_mut(&to)
                            .unwrap()
                            .switches
                            .get_mut(&hb.sender)
                            .unwrap();
                        sw.receive_fastdp_heartbeat(now, &hb).unwrap();
                        self.pump(to);
                    } else {
                        let src = MacAddr::from_slice(&frame[6..12]).unwrap();
                        let node = self.nodes.get_mut(&to).unwrap();
                        node.vxlan_fdb.entry(src).or_insert((from, false)).0 = from;
                        self.bridge_input(to, Port::Vxlan, frame);
                    }
                }
            }
        }
    }

    fn confirm_all(&mut self) {
        let names: Vec<PeerName> = self.nodes.keys().copied().collect();
        for n in names {
            for sw in self.nodes.get_mut(&n).unwrap().switches.values_mut() {
                sw.confirm(Millis(0));
            }
            self.pump(n);
        }
        self.deliver_all();
    }

    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            self.deliver_all();
            let next = self
                .nodes
                .values()
                .flat_map(|n| {
                    n.switches
                        .values()
                        .filter_map(OverlaySwitch::poll_timeout)
                        .chain(n.router.poll_timeout())
                })
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = t.max(self.now);
                    let names: Vec<PeerName> = self.nodes.keys().copied().collect();
                    for n in names {
                        let now = self.now;
                        let node = self.nodes.get_mut(&n).unwrap();
                        for sw in node.switches.values_mut() {
                            sw.handle_timeout(now);
                        }
                        node.router.handle_timeout(now);
                        self.pump(n);
                    }
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn served(&self, a: u8, b: u8) -> ServedBy {
        self.nodes[&peer(a)].switches[&peer(b)].served_by()
    }

    fn all_pods(&self) -> Vec<(PeerName, MacAddr)> {
        self.nodes
            .values()
            .flat_map(|n| n.pods.iter().map(move |m| (n.name, *m)))
            .collect()
    }

    /// A pod sends a frame: it enters its node's bridge on its port.
    fn send(&mut self, node: PeerName, from: MacAddr, to: MacAddr, id: u64) {
        self.bridge_input(node, Port::Pod(from), make_frame(to, from, id));
        self.deliver_all();
    }

    fn deliveries_of(&self, id: u64) -> Vec<(PeerName, MacAddr)> {
        self.deliveries
            .iter()
            .filter(|d| d.2 == id)
            .map(|d| (d.0, d.1))
            .collect()
    }

    /// Every pod broadcasts; every other pod must get each broadcast once.
    fn broadcast_round(&mut self, base: u64) {
        let pods = self.all_pods();
        for (i, (node, mac)) in pods.iter().enumerate() {
            let id = base + i as u64;
            self.send(*node, *mac, MacAddr::BROADCAST, id);
            let mut got = self.deliveries_of(id);
            got.sort();
            let mut want: Vec<(PeerName, MacAddr)> =
                pods.iter().copied().filter(|(_, m)| m != mac).collect();
            want.sort();
            assert_eq!(
                got, want,
                "broadcast {id} from {mac} reached every other pod exactly once"
            );
        }
    }

    /// Every ordered pod pair exchanges a unicast; only the destination
    /// gets it, exactly once.
    fn unicast_round(&mut self, base: u64) {
        let pods = self.all_pods();
        let mut id = base;
        for (sn, smac) in &pods {
            for (dn, dmac) in &pods {
                if smac == dmac {
                    continue;
                }
                id += 1;
                self.send(*sn, *smac, *dmac, id);
                assert_eq!(
                    self.deliveries_of(id),
                    vec![(*dn, *dmac)],
                    "unicast {id} {smac}@{sn} -> {dmac}@{dn}"
                );
            }
        }
    }
}

#[test]
fn four_peers_cut_link_fastdp_on_peer_2() {
    let mut sim = Sim::new();
    sim.confirm_all();
    sim.advance(Duration::from_secs(5));
    assert!(sim.failures.is_empty(), "{:?}", sim.failures);

    // Peer 2's links are on the fast path, the others on sleeve.
    for (a, b) in [(1, 2), (2, 1), (2, 3), (3, 2), (2, 4), (4, 2)] {
        assert_eq!(sim.served(a, b), ServedBy::Fastdp, "{a}->{b}");
    }
    for (a, b) in [(1, 4), (4, 1), (3, 4), (4, 3)] {
        assert_eq!(sim.served(a, b), ServedBy::Sleeve, "{a}->{b}");
        let sw = &sim.nodes[&peer(a)].switches[&peer(b)];
        assert!(sw.reason().contains("fastdp"), "{}", sw.reason());
    }
    let enc = &sim.nodes[&peer(1)].switches[&peer(4)];
    assert!(enc.attrs().encrypted && enc.attrs().name == "sleeve");
    assert!(enc.reason().contains("encrypted"), "{}", enc.reason());
    // Sleeve PMTU discovery converged to the plaintext/NaCl overlay MTUs.
    assert_eq!(
        sim.nodes[&peer(3)].switches[&peer(4)].attrs().mtu,
        Some(1438)
    );
    assert_eq!(enc.attrs().mtu, Some(1414));
    assert_eq!(
        sim.nodes[&peer(1)].switches[&peer(2)].attrs().mtu,
        Some(BRIDGE_MTU)
    );
    // Flood lists: exactly the fast-path peers.
    assert_eq!(
        sim.nodes[&peer(2)].vxlan_flood,
        [peer(1), peer(3), peer(4)].into_iter().collect()
    );
    assert_eq!(
        sim.nodes[&peer(1)].vxlan_flood,
        [peer(2)].into_iter().collect()
    );

    sim.broadcast_round(100);
    sim.unicast_round(1000);
    // 1 <-> 3 went through 2 over sleeve.
    assert!(sim.nodes[&peer(2)].router.stats().relayed > 0);

    // Peer 2's fast path breaks (UDP 6784 blocked): after 60 s everything
    // is on sleeve, and traffic still arrives exactly once.
    sim.vxlan_ok.clear();
    sim.advance(Duration::from_secs(70));
    assert!(sim.failures.is_empty(), "{:?}", sim.failures);
    for (a, b) in [(1, 2), (2, 1), (2, 3), (3, 2), (2, 4), (4, 2)] {
        assert_eq!(sim.served(a, b), ServedBy::Sleeve, "{a}->{b}");
        let r = sim.nodes[&peer(a)].switches[&peer(b)].reason().to_string();
        assert!(r.contains("60s"), "{r}");
    }
    assert!(sim.nodes.values().all(|n| n.vxlan_flood.is_empty()));
    sim.broadcast_round(2000);
    sim.unicast_round(3000);

    // It heals: back on the fast path by itself.
    sim.vxlan_ok = sim
        .links
        .iter()
        .copied()
        .filter(|(a, b)| *a == peer(2) || *b == peer(2))
        .collect();
    sim.advance(Duration::from_secs(25));
    for (a, b) in [(1, 2), (2, 1), (2, 3), (3, 2), (2, 4), (4, 2)] {
        assert_eq!(sim.served(a, b), ServedBy::Fastdp, "{a}->{b}");
    }
    // A pod that stayed silent is still reachable (no black hole): the
    // bridge forgot its TAP entry when its peer moved to the fast path.
    let vx = sim.vxlan_frames;
    sim.send(peer(1), pod(1, 1), pod(2, 1), 9000);
    assert_eq!(
        sim.deliveries_of(9000)
            .into_iter()
            .filter(|(_, m)| *m == pod(2, 1))
            .count(),
        1
    );
    assert!(sim.vxlan_frames > vx, "went over VXLAN");
    sim.broadcast_round(4000);
    sim.unicast_round(5000);
    assert!(sim.failures.is_empty(), "{:?}", sim.failures);
}

#[test]
fn a_peer_behind_a_cut_link_is_reached_only_through_the_relay() {
    let mut sim = Sim::new();
    // Remove the 3-4 link too: 3 hangs off 2 only; and no VXLAN anywhere.
    sim.links.remove(&(peer(3), peer(4)));
    sim.nodes
        .get_mut(&peer(3))
        .unwrap()
        .switches
        .remove(&peer(4));
    sim.nodes
        .get_mut(&peer(4))
        .unwrap()
        .switches
        .remove(&peer(3));
    sim.vxlan_ok.clear();
    sim.confirm_all();
    sim.advance(Duration::from_secs(5));
    for (a, b) in [(1, 2), (2, 3), (2, 4), (1, 4)] {
        assert_eq!(sim.served(a, b), ServedBy::Sleeve);
    }
    let before = sim.nodes[&peer(2)].router.stats().relayed;
    sim.broadcast_round(100);
    sim.unicast_round(1000);
    // Broadcasts from 1, 4 to 3 and from 3 to 1, 4, plus the unicasts.
    assert!(sim.nodes[&peer(2)].router.stats().relayed > before);
    assert_eq!(sim.vxlan_frames, 0);
    assert!(sim.failures.is_empty());
}
