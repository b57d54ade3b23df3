//! Prometheus metrics, with Weave's metric names where Weave has one.

use std::sync::atomic::AtomicU64;

use weft_ipam::address::CidrExt;

use super::ipam::IpamSnapshot;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IpsLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    state: String,
    r#type: String,
    encryption: String,
}

pub struct Metrics {
    registry: Registry,
    ips: Family<IpsLabels, Gauge<u64, AtomicU64>>,
    max_ips: Gauge<u64, AtomicU64>,
    connections: Family<ConnLabels, Gauge<u64, AtomicU64>>,
    terminations: Gauge<u64, AtomicU64>,
    peers: Gauge<u64, AtomicU64>,
    unreachable: Gauge<u64, AtomicU64>,
    pending_allocates: Gauge<u64, AtomicU64>,
    pending_claims: Gauge<u64, AtomicU64>,
    gossip_errors: Gauge<u64, AtomicU64>,
    dataplane: Family<DpLabels, Gauge<u64, AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DpLabels {
    counter: String,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let ips = Family::<IpsLabels, Gauge<u64, AtomicU64>>::default();
        let max_ips = Gauge::<u64, AtomicU64>::default();
        registry.register("weave_ips", "Number of IP addresses", ips.clone());
        registry.register("weave_max_ips", "Size of the IP range", max_ips.clone());
        let connections = Family::<ConnLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "weave_connections",
            "Number of peer connections",
            connections.clone(),
        );
        // A counter in Weave; here a gauge fed from the mesh's running total.
        let terminations = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "weave_connection_terminations",
            "Number of peer connections terminated since start",
            terminations.clone(),
        );
        let peers = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "weft_peers",
            "Number of peers in the topology",
            peers.clone(),
        );
        let unreachable = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "weave_ipam_unreachable_count",
            "Number of unreachable peers that own IP ranges",
            unreachable.clone(),
        );
        let pending_allocates = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "weave_ipam_pending_allocates",
            "Allocations waiting",
            pending_allocates.clone(),
        );
        let pending_claims = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "weave_ipam_pending_claims",
            "Claims waiting",
            pending_claims.clone(),
        );
        let gossip_errors = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "weft_ipam_gossip_errors",
            "IPAM gossip messages refused (ring merge errors) since start; see weft status",
            gossip_errors.clone(),
        );
        let dataplane = Family::<DpLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "weft_dataplane",
            "Data plane counters since start (sleeve frames and datagrams, fast-path heartbeats)",
            dataplane.clone(),
        );
        Metrics {
            registry,
            dataplane,
            gossip_errors,
            unreachable,
            pending_allocates,
            pending_claims,
            ips,
            max_ips,
            connections,
            terminations,
            peers,
        }
    }

    pub fn observe_ipam(&self, ipam: &IpamSnapshot) {
        self.ips
            .get_or_create(&IpsLabels {
                state: "local-used".into(),
            })
            .set(ipam.active);
        self.max_ips.set(ipam.universe.num_addresses());
        self.unreachable
            .set(ipam.status.unreachable_peers.len() as u64);
        self.pending_allocates
            .set(ipam.status.pending_allocates as u64);
        self.pending_claims.set(ipam.status.pending_claims as u64);
        self.gossip_errors.set(ipam.gossip_errors);
    }

    pub fn observe_mesh(&self, m: &weft_mesh::MeshStatus, encrypted: bool) {
        self.connections.clear();
        for state in ["established", "pending", "retrying", "failed", "connecting"] {
            let n = m.connections.iter().filter(|c| c.state == state).count() as u64;
            self.connections
                .get_or_create(&ConnLabels {
                    state: state.into(),
                    r#type: "tcp".into(),
                    encryption: if encrypted {
                        "yes".into()
                    } else {
                        String::new()
                    },
                })
                .set(n);
        }
        self.terminations.set(m.termination_count);
        self.peers.set(m.peers.len() as u64);
    }

    pub fn observe_dataplane(&self, st: &super::dataplane::Stats) {
        use std::sync::atomic::Ordering::Relaxed;
        let rows: [(&str, &AtomicU64); 8] = [
            ("tap_frames", &st.tap_frames),
            ("injected_frames", &st.injected_frames),
            ("udp_sent", &st.udp_sent),
            ("udp_received", &st.udp_received),
            ("udp_send_errors", &st.udp_send_errors),
            ("udp_rejected", &st.udp_rejected),
            ("heartbeats_sent", &st.heartbeats_sent),
            ("heartbeats_received", &st.heartbeats_received),
        ];
        for (name, v) in rows {
            self.dataplane
                .get_or_create(&DpLabels {
                    counter: name.into(),
                })
                .set(v.load(Relaxed));
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
