//! The `Mesh` state machine driven by hand: connection admission rules,
//! heartbeats and deadlines, gossip dispatch, errors, status.

use std::time::Duration;

use weft_mesh::gossip::{GossipContext, GossipData, GossipHandler, HandlerError, MessagesData};
use weft_mesh::mesh::TOPOLOGY_UPDATE_DELAY;
use weft_mesh::topology::decode_update;
use weft_mesh::{
    Action, ConnId, ConnectError, ConnectionParams, Mesh, MeshConfig, MeshError, Millis, PeerName,
    ShortId,
};
use weft_wire::framing::ProtocolMsg;
use weft_wire::{GossipMsg, GossipUnicastMsg};

fn pn(v: u64) -> PeerName {
    PeerName::new(v).unwrap()
}

fn mesh(name: u64) -> Mesh {
    let mut c = MeshConfig::new(pn(name), format!("node-{name}"), name);
    c.uid = Some(1000 + name);
    c.short_id = Some(ShortId::new(name as u16).unwrap());
    Mesh::new(c, Millis(0))
}

fn params(remote: &Mesh, conn_uid: u64, outbound: bool, addr: &str) -> ConnectionParams {
    ConnectionParams {
        remote_name: remote.name(),
        remote_nickname: remote.nickname().to_string(),
        remote_uid: remote.uid(),
        remote_short_id: Some(remote.short_id()),
        conn_uid,
        outbound,
        remote_addr: addr.to_string(),
    }
}

fn drain(m: &mut Mesh) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn sends(actions: &[Action], conn: ConnId) -> Vec<ProtocolMsg> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn: c, body } if *c == conn => {
                Some(ProtocolMsg::decode(body).unwrap())
            }
            _ => None,
        })
        .collect()
}

/// Two meshes joined by one connection; messages are moved by `pump`.
struct Pair {
    a: Mesh,
    b: Mesh,
    ca: ConnId,
    cb: ConnId,
    now: Millis,
}

impl Pair {
    fn new(a: Mesh, b: Mesh) -> Pair {
        let mut a = a;
        let mut b = b;
        let ca = a
            .handle_connection_up(params(&b, 42, true, "10.0.0.2:6783"), Millis(0))
            .unwrap();
        let cb = b
            .handle_connection_up(params(&a, 42, false, "10.0.0.1:40000"), Millis(0))
            .unwrap();
        Pair {
            a,
            b,
            ca,
            cb,
            now: Millis(0),
        }
    }

    /// Moves messages both ways until both sides are quiet; returns the other
    /// actions seen.
    fn pump(&mut self) -> Vec<Action> {
        let mut other = Vec::new();
        loop {
            let mut moved = false;
            while let Some(act) = self.a.poll_action() {
                match act {
                    Action::Send { conn, body } if conn == self.ca => {
                        self.b.handle_message(self.cb, &body, self.now);
                        moved = true;
                    }
                    x => other.push(x),
                }
            }
            while let Some(act) = self.b.poll_action() {
                match act {
                    Action::Send { conn, body } if conn == self.cb => {
                        self.a.handle_message(self.ca, &body, self.now);
                        moved = true;
                    }
                    x => other.push(x),
                }
            }
            if !moved {
                return other;
            }
        }
    }

    fn advance(&mut self, d: Duration) -> Vec<Action> {
        self.now += d;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.pump()
    }
}

#[test]
fn two_peers_exchange_topology() {
    let mut p = Pair::new(mesh(1), mesh(2));
    p.pump();
    assert!(p.a.peers().get(pn(2)).is_some());
    assert!(p.b.peers().get(pn(1)).is_some());
    p.a.connection_established(p.ca, p.now);
    p.b.connection_established(p.cb, p.now);
    p.advance(TOPOLOGY_UPDATE_DELAY);
    for (m, other) in [(&p.a, &p.b), (&p.b, &p.a)] {
        let theirs = other.peers().ourself();
        let known = m.peers().get(theirs.name).unwrap();
        assert_eq!((known.uid, known.version), (theirs.uid, theirs.version));
        assert!(known.connections.values().all(|c| c.established));
    }
    assert_eq!(p.a.routes().unicast(pn(2)), Some(pn(2)));
    assert_eq!(p.b.routes().unicast(pn(1)), Some(pn(1)));
}

#[test]
fn refuses_ourself_and_name_collisions_forever() {
    let mut a = mesh(1);
    a.initiate_connections(&["10.0.0.1:6783", "10.0.0.9:6783"], false, Millis(0))
        .unwrap();
    let dials: Vec<String> = drain(&mut a)
        .into_iter()
        .filter_map(|x| match x {
            Action::Dial { address } => Some(address),
            _ => None,
        })
        .collect();
    assert_eq!(
        dials,
        vec!["10.0.0.1:6783".to_string(), "10.0.0.9:6783".into()]
    );
    let me = params(&mesh(1), 7, true, "10.0.0.1:6783");
    assert_eq!(
        a.handle_connection_up(me, Millis(0)),
        Err(ConnectError::ConnectToSelf)
    );
    let mut clone = params(&mesh(1), 8, true, "10.0.0.9:6783");
    clone.remote_uid = 5;
    let err = a.handle_connection_up(clone, Millis(0)).unwrap_err();
    assert!(matches!(
        err,
        ConnectError::NameCollision { their_uid: 5, .. }
    ));
    assert!(err.never_retry());
    // Neither target is ever dialled again.
    a.handle_timeout(Millis(10_000_000));
    assert!(drain(&mut a)
        .iter()
        .all(|x| !matches!(x, Action::Dial { .. })));
    let st = a.status(Millis(10_000_000));
    let failed: Vec<&str> = st
        .connections
        .iter()
        .filter(|c| c.state == "failed")
        .map(|c| c.info.as_str())
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(
        failed.iter().all(|i| i.ends_with("retry: never")),
        "{failed:?}"
    );
    assert_eq!(st.termination_count, 1, "ourself does not count");
}

#[test]
fn simultaneous_connections_keep_the_smaller_uid() {
    let b = mesh(2);
    // The existing connection has the larger UID: the new one wins.
    let mut a = mesh(1);
    let first = a
        .handle_connection_up(params(&b, 50, true, "10.0.0.2:6783"), Millis(0))
        .unwrap();
    drain(&mut a);
    let second = a
        .handle_connection_up(params(&b, 10, false, "10.0.0.2:41000"), Millis(0))
        .unwrap();
    let acts = drain(&mut a);
    assert!(acts
        .iter()
        .any(|x| matches!(x, Action::Close { conn, .. } if *conn == first)));
    assert_eq!(a.connection_to(pn(2)), Some(second));
    assert_eq!(a.connections().count(), 1);
    assert_eq!(a.peers().get(pn(2)).unwrap().local_ref_count(), 1);

    // The existing connection has the smaller UID: the new one is refused.
    let mut a = mesh(1);
    let first = a
        .handle_connection_up(params(&b, 10, true, "10.0.0.2:6783"), Millis(0))
        .unwrap();
    let err = a
        .handle_connection_up(params(&b, 50, false, "10.0.0.2:41000"), Millis(0))
        .unwrap_err();
    assert!(matches!(err, ConnectError::Duplicate { .. }));
    assert_eq!(a.connection_to(pn(2)), Some(first));

    // Equal UIDs: both go.
    let mut a = mesh(1);
    let first = a
        .handle_connection_up(params(&b, 10, true, "10.0.0.2:6783"), Millis(0))
        .unwrap();
    drain(&mut a);
    assert!(a
        .handle_connection_up(params(&b, 10, false, "10.0.0.2:41000"), Millis(0))
        .is_err());
    assert!(drain(&mut a)
        .iter()
        .any(|x| matches!(x, Action::Close { conn, .. } if *conn == first)));
    assert_eq!(a.connections().count(), 0);
    assert!(a.peers().ourself().connections.is_empty());
}

#[test]
fn connection_limit() {
    let mut c = MeshConfig::new(pn(1), "one", 1);
    c.conn_limit = 1;
    let mut a = Mesh::new(c, Millis(0));
    a.handle_connection_up(params(&mesh(2), 1, false, "10.0.0.2:40000"), Millis(0))
        .unwrap();
    assert_eq!(
        a.handle_connection_up(params(&mesh(3), 2, false, "10.0.0.3:40000"), Millis(0)),
        Err(ConnectError::ConnLimit(1))
    );
    // Targets are not dialled while at the limit.
    a.initiate_connections(&["10.0.0.4"], false, Millis(0))
        .unwrap();
    assert!(drain(&mut a)
        .iter()
        .all(|x| !matches!(x, Action::Dial { .. })));
    let st = a.status(Millis(0));
    assert!(st
        .connections
        .iter()
        .any(|c| c.address == "10.0.0.4:6783" && c.info.contains("connection limit reached (1)")));
}

#[test]
fn heartbeats_and_read_deadline() {
    let mut a = mesh(1);
    let c = a
        .handle_connection_up(params(&mesh(2), 1, true, "10.0.0.2:6783"), Millis(0))
        .unwrap();
    drain(&mut a);
    // Route notification first, then the coalesced topology update.
    assert_eq!(a.poll_timeout(), Some(Millis(100)));
    a.handle_timeout(Millis(100));
    assert_eq!(a.poll_timeout(), Some(Millis(1_000)));
    a.handle_timeout(Millis(1_000));
    drain(&mut a);
    a.handle_timeout(Millis(30_000));
    let acts = drain(&mut a);
    assert!(sends(&acts, c).contains(&ProtocolMsg::Heartbeat));
    // Something arrives at 50 s: the deadline moves to 110 s.
    a.handle_message(c, &[0], Millis(50_000));
    a.handle_timeout(Millis(100_000));
    assert!(drain(&mut a)
        .iter()
        .all(|x| !matches!(x, Action::Close { .. })));
    assert!(a.poll_timeout().unwrap() <= Millis(110_000));
    a.handle_timeout(Millis(110_000));
    let acts = drain(&mut a);
    assert!(acts.iter().any(
        |x| matches!(x, Action::Close { conn, reason } if *conn == c && reason.contains("read timeout"))
    ));
    assert_eq!(a.connections().count(), 0);
    // Reporting it down again is harmless.
    a.handle_connection_down(c, "EOF", Millis(110_000));
}

#[test]
fn new_and_restarted_peers_get_full_gossip() {
    let b = mesh(2);
    let mut a = mesh(1);
    let c = a
        .handle_connection_up(params(&b, 1, true, "10.0.0.2:6783"), Millis(0))
        .unwrap();
    let acts = drain(&mut a);
    let topo: Vec<GossipMsg> = sends(&acts, c)
        .into_iter()
        .filter_map(|m| match m {
            ProtocolMsg::Gossip(g) if g.channel == "topology" => Some(g),
            _ => None,
        })
        .collect();
    assert_eq!(topo.len(), 1, "full topology sent down the new connection");
    let names: Vec<PeerName> = decode_update(&topo[0].msg)
        .unwrap()
        .iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, vec![pn(1), pn(2)]);

    // The same peer after a restart (new UID) gets everything again.
    a.handle_connection_down(c, "EOF", Millis(10));
    drain(&mut a);
    let mut restarted = params(&b, 2, true, "10.0.0.2:6783");
    restarted.remote_uid = 9999;
    // Keep a reference so the old entry survives the disconnection.
    let c3 = a
        .handle_connection_up(params(&mesh(3), 3, false, "10.0.0.3:40000"), Millis(20))
        .unwrap();
    drain(&mut a);
    let _ = c3;
    let c2 = a.handle_connection_up(restarted, Millis(30)).unwrap();
    let acts = drain(&mut a);
    assert!(sends(&acts, c2)
        .iter()
        .any(|m| matches!(m, ProtocolMsg::Gossip(g) if g.channel == "topology")));
}

#[test]
fn topology_updates_are_coalesced_for_a_second() {
    let mut p = Pair::new(mesh(1), mesh(2));
    p.pump();
    p.a.connection_established(p.ca, Millis(100));
    p.a.connection_established(p.ca, Millis(200));
    // Nothing about the establishment has been sent yet.
    let before = p.b.peers().get(pn(1)).unwrap().version;
    p.pump();
    assert_eq!(p.b.peers().get(pn(1)).unwrap().version, before);
    p.advance(Duration::from_millis(999));
    assert_eq!(p.b.peers().get(pn(1)).unwrap().version, before);
    p.advance(Duration::from_millis(1));
    assert_eq!(
        p.b.peers().get(pn(1)).unwrap().version,
        p.a.peers().ourself().version
    );
}

#[test]
fn malformed_messages_close_the_connection() {
    for body in [
        vec![],
        vec![4, 1, 2, 3],
        ProtocolMsg::GossipUnicast(GossipUnicastMsg {
            channel: "topology".into(),
            src: pn(2),
            dst: pn(1),
            msg: vec![],
        })
        .encode()
        .unwrap(),
        ProtocolMsg::Gossip(GossipMsg {
            channel: "topology".into(),
            src: pn(2),
            msg: vec![0xff, 0, 1],
        })
        .encode()
        .unwrap(),
    ] {
        let mut a = mesh(1);
        a.initiate_connections(&["10.0.0.2"], false, Millis(0))
            .unwrap();
        let c = a
            .handle_connection_up(params(&mesh(2), 1, true, "10.0.0.2:6783"), Millis(0))
            .unwrap();
        drain(&mut a);
        a.handle_message(c, &body, Millis(1));
        let acts = drain(&mut a);
        assert!(
            acts.iter()
                .any(|x| matches!(x, Action::Close { conn, .. } if *conn == c)),
            "{body:?} should close the connection"
        );
        let st = a.status(Millis(1));
        assert!(st
            .connections
            .iter()
            .any(|c| c.address == "10.0.0.2:6783" && c.state == "failed"));
    }
}

/// Records unicasts; fails on broadcasts (to test error handling).
#[derive(Default)]
struct Strict {
    got: Vec<(PeerName, Vec<u8>)>,
    reply: bool,
}

impl GossipHandler for Strict {
    fn on_gossip_unicast(
        &mut self,
        ctx: &mut GossipContext<'_>,
        src: PeerName,
        msg: &[u8],
    ) -> Result<(), HandlerError> {
        self.got.push((src, msg.to_vec()));
        if self.reply {
            ctx.unicast(src, b"pong".to_vec());
        }
        Ok(())
    }

    fn on_gossip_broadcast(
        &mut self,
        _ctx: &mut GossipContext<'_>,
        _src: PeerName,
        _update: &[u8],
    ) -> Result<Option<Box<dyn GossipData>>, HandlerError> {
        Err("Incompatible IP allocation ranges".into())
    }

    fn gossip(&mut self, _ctx: &mut GossipContext<'_>) -> Option<Box<dyn GossipData>> {
        Some(MessagesData::one(b"state".to_vec()))
    }

    fn on_gossip(
        &mut self,
        _ctx: &mut GossipContext<'_>,
        _update: &[u8],
    ) -> Result<Option<Box<dyn GossipData>>, HandlerError> {
        Ok(None)
    }
}

#[test]
fn handlers_receive_reply_and_fail() {
    let mut a = mesh(1);
    let mut b = mesh(2);
    a.register_channel("IPallocation", Box::new(Strict::default()))
        .unwrap();
    b.register_channel(
        "IPallocation",
        Box::new(Strict {
            reply: true,
            ..Strict::default()
        }),
    )
    .unwrap();
    assert_eq!(
        a.register_channel("topology", Box::new(Strict::default())),
        Err(MeshError::ReservedChannel)
    );
    let mut p = Pair::new(a, b);
    // Full state of every channel went down the new connection both ways.
    p.pump();
    p.a.gossip_unicast("IPallocation", pn(2), b"ping".to_vec())
        .unwrap();
    p.pump();
    let hb: &Strict = p.b.handler("IPallocation").unwrap();
    assert_eq!(hb.got, vec![(pn(1), b"ping".to_vec())]);
    let ha: &mut Strict = p.a.handler_mut("IPallocation").unwrap();
    assert_eq!(ha.got, vec![(pn(2), b"pong".to_vec())]);
    assert_eq!(
        p.a.gossip_unicast("IPallocation", pn(77), vec![]),
        Err(MeshError::UnknownDestination(pn(77)))
    );
    // A handler error drops the connection with its text.
    p.a.gossip_broadcast("IPallocation", MessagesData::one(b"x".to_vec()))
        .unwrap();
    let other = p.pump();
    assert!(other.iter().any(|x| matches!(
        x,
        Action::Close { conn, reason } if *conn == p.cb && reason.contains("Incompatible IP allocation ranges")
    )));
}

#[test]
fn unicasts_are_relayed_unchanged_and_overlay_messages_passed_on() {
    let mut b = mesh(2);
    let c1 = b
        .handle_connection_up(params(&mesh(1), 1, false, "10.0.0.1:40000"), Millis(0))
        .unwrap();
    let c3 = b
        .handle_connection_up(params(&mesh(3), 2, true, "10.0.0.3:6783"), Millis(0))
        .unwrap();
    drain(&mut b);
    let body = ProtocolMsg::GossipUnicast(GossipUnicastMsg {
        channel: "nameserver".into(),
        src: pn(1),
        dst: pn(3),
        msg: b"hello".to_vec(),
    })
    .encode()
    .unwrap();
    b.handle_message(c1, &body, Millis(1));
    let acts = drain(&mut b);
    assert!(acts
        .iter()
        .any(|x| matches!(x, Action::Send { conn, body: sent } if *conn == c3 && *sent == body)));
    // Unknown destination: dropped quietly, the connection stays.
    let lost = ProtocolMsg::GossipUnicast(GossipUnicastMsg {
        channel: "nameserver".into(),
        src: pn(1),
        dst: pn(99),
        msg: vec![],
    })
    .encode()
    .unwrap();
    b.handle_message(c1, &lost, Millis(2));
    assert!(drain(&mut b)
        .iter()
        .all(|x| !matches!(x, Action::Close { .. })));
    // Overlay control messages go to the driver.
    b.handle_message(c1, &[7, 0, 1, 9], Millis(3));
    assert_eq!(
        drain(&mut b),
        vec![Action::Overlay {
            conn: c1,
            msg: ProtocolMsg::OverlayControl(vec![0, 1, 9])
        }]
    );
}

#[test]
fn status_is_shaped_like_weaves() {
    let mut p = Pair::new(mesh(1), mesh(2));
    p.pump();
    p.a.connection_established(p.ca, Millis(0));
    p.b.connection_established(p.cb, Millis(0));
    p.advance(TOPOLOGY_UPDATE_DELAY);
    p.a.initiate_connections(&["10.0.0.3"], false, p.now)
        .unwrap();
    p.a.handle_dial_failed("10.0.0.3:6783", "connect: connection refused", p.now);
    let st = p.a.status(p.now);
    let counts = st.connection_counts();
    assert_eq!((counts.total, counts.established, counts.failed), (2, 1, 1));
    assert_eq!((counts.peers, counts.peer_established), (2, 2));
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["Name"], "00:00:00:00:00:01");
    assert_eq!(json["NickName"], "node-1");
    assert_eq!(json["Targets"], serde_json::json!(["10.0.0.3"]));
    let peer = &json["Peers"][1];
    assert_eq!(peer["Name"], "00:00:00:00:00:02");
    assert_eq!(peer["UID"], 1002);
    assert_eq!(peer["ShortID"], 2);
    assert_eq!(peer["Connections"][0]["Name"], "00:00:00:00:00:01");
    assert_eq!(peer["Connections"][0]["Established"], true);
    assert_eq!(
        json["UnicastRoutes"],
        serde_json::json!([
            {"Dest": "00:00:00:00:00:01", "Via": "00:00:00:00:00:00"},
            {"Dest": "00:00:00:00:00:02", "Via": "00:00:00:00:00:02"}
        ])
    );
    assert_eq!(
        json["BroadcastRoutes"][0],
        serde_json::json!({"Source": "00:00:00:00:00:01", "Via": ["00:00:00:00:00:02"]})
    );
    let conns = json["Connections"].as_array().unwrap();
    assert_eq!(conns[0]["State"], "established");
    assert_eq!(conns[0]["Info"], "00:00:00:00:00:02(node-2)");
    assert_eq!(conns[1]["Address"], "10.0.0.3:6783");
    assert!(conns[1]["Info"]
        .as_str()
        .unwrap()
        .starts_with("connect: connection refused, retry: in "));
}

#[test]
fn peers_removed_when_unreachable() {
    let mut p = Pair::new(mesh(1), mesh(2));
    p.pump();
    let now = p.now;
    p.a.handle_connection_down(p.ca, "EOF", now);
    let acts = drain(&mut p.a);
    assert!(acts
        .iter()
        .any(|x| matches!(x, Action::PeersRemoved(v) if v.len() == 1 && v[0].name == pn(2))));
    assert_eq!(p.a.peers().len(), 1);
}

#[test]
fn blocked_connections_merge_pending_gossip() {
    let mut a = mesh(1);
    let c = a
        .handle_connection_up(params(&mesh(2), 1, true, "10.0.0.2:6783"), Millis(0))
        .unwrap();
    a.set_connection_blocked(c, true);
    assert!(
        sends(&drain(&mut a), c).is_empty(),
        "held back while blocked"
    );
    // More topology for the same connection merges into what is pending.
    a.handle_timeout(Millis(1_000));
    a.connection_established(c, Millis(1_000));
    a.handle_timeout(Millis(2_000));
    assert!(sends(&drain(&mut a), c).is_empty());
    a.set_connection_blocked(c, false);
    let msgs = sends(&drain(&mut a), c);
    assert_eq!(msgs.len(), 1, "one merged topology message: {msgs:?}");
    let ProtocolMsg::Gossip(g) = &msgs[0] else {
        panic!("unexpected {msgs:?}");
    };
    let ours = decode_update(&g.msg)
        .unwrap()
        .into_iter()
        .find(|u| u.name == pn(1))
        .unwrap();
    assert_eq!(
        ours.version,
        a.peers().ourself().version,
        "encoded when sent"
    );
    assert!(ours.connections[0].1.established);
}

#[test]
fn mesh_can_move_between_threads() {
    fn is_send<T: Send>() {}
    is_send::<Mesh>();
}
