//! Entry points shared by the fuzz targets (`fuzz/`) and the stable tests that
//! replay their corpus. Not part of the supported API.

use rand::rngs::StdRng;
use rand::SeedableRng;
use weft_wire::framing::ProtocolMsg;
use weft_wire::{GossipMsg, PeerName, ShortId};

use crate::connection::ConnectionParams;
use crate::mesh::{Mesh, MeshConfig};
use crate::peers::{ConnSummary, LocalIdentity, PeerChanges, Peers};
use crate::time::Millis;
use crate::topology::{decode_update, encode_update};

/// Feeds `data` to the topology decoder; whatever decodes is merged twice
/// into a table (checking invariants and idempotence), re-encoded (checking
/// the round trip) and delivered to a mesh as topology gossip and broadcast.
/// Panics only on a bug.
pub fn topology_update(data: &[u8]) {
    let Ok(updates) = decode_update(data) else {
        return;
    };
    let again = decode_update(&encode_update(&updates).expect("decoded updates re-encode"))
        .expect("re-encoded updates decode");
    assert_eq!(again, updates, "round trip");

    let me = PeerName::new(1).expect("small name");
    let mut rng = StdRng::seed_from_u64(0);
    let mut peers = Peers::new(LocalIdentity {
        name: me,
        nickname: "fuzz".into(),
        uid: 1,
        short_id: ShortId::new(1).expect("small id"),
    });
    for u in updates.iter().take(4) {
        if u.name != me {
            peers.add_local_connection(
                u.name,
                ConnSummary {
                    remote_tcp_addr: "10.0.0.1:6783".into(),
                    outbound: true,
                    established: true,
                },
            );
        }
    }
    let mut ch = PeerChanges::default();
    peers.apply_update(&updates, &mut rng, &mut ch);
    peers.check_invariants().expect("table invariants");
    let snapshot: Vec<_> = peers.iter().cloned().collect();
    let second = peers.apply_update(&updates, &mut rng, &mut ch);
    assert!(second.improved.is_empty(), "merging is idempotent");
    assert_eq!(peers.iter().cloned().collect::<Vec<_>>(), snapshot);
    peers.check_invariants().expect("table invariants");
    let _ = peers.encode_update(&peers.names());

    let mut mesh = Mesh::new(MeshConfig::new(me, "fuzz", 0), Millis(0));
    let remote = updates
        .first()
        .map(|u| u.name)
        .filter(|n| *n != me)
        .unwrap_or(PeerName::new(2).expect("small name"));
    let Ok(conn) = mesh.handle_connection_up(
        ConnectionParams {
            remote_name: remote,
            remote_nickname: "remote".into(),
            remote_uid: 2,
            remote_short_id: None,
            conn_uid: 3,
            outbound: false,
            remote_addr: "10.0.0.2:40000".into(),
        },
        Millis(0),
    ) else {
        return;
    };
    for broadcast in [false, true] {
        let m = GossipMsg {
            channel: "topology".into(),
            src: remote,
            msg: data.to_vec(),
        };
        let msg = if broadcast {
            ProtocolMsg::GossipBroadcast(m)
        } else {
            ProtocolMsg::Gossip(m)
        };
        if let Ok(body) = msg.encode() {
            mesh.handle_message(conn, &body, Millis(1));
        }
        while mesh.poll_action().is_some() {}
    }
    mesh.handle_timeout(Millis(60_000));
    while mesh.poll_action().is_some() {}
    let _ = mesh.status(Millis(60_000));
}
