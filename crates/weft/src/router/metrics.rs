//! Prometheus metrics, with Weave's metric names where Weave has one.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weft_ipam::local::LocalAllocator;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IpsLabels {
    state: String,
}

pub struct Metrics {
    registry: Registry,
    ips: Family<IpsLabels, Gauge<u64, AtomicU64>>,
    max_ips: Gauge<u64, AtomicU64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let ips = Family::<IpsLabels, Gauge<u64, AtomicU64>>::default();
        let max_ips = Gauge::<u64, AtomicU64>::default();
        registry.register("weave_ips", "Number of IP addresses", ips.clone());
        registry.register("weave_max_ips", "Size of the IP range", max_ips.clone());
        Metrics {
            registry,
            ips,
            max_ips,
        }
    }

    pub fn observe_ipam(&self, a: &LocalAllocator) {
        self.ips
            .get_or_create(&IpsLabels {
                state: "local-used".into(),
            })
            .set(a.num_allocated());
        self.max_ips.set(super::range_size(a.universe()));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
