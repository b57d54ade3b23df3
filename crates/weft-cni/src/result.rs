//! The CNI Result: one version-neutral representation, parsed from any version we meet
//! (0.2.0-style `ip4`/`ip6` from old IPAM plugins, 0.3.x/0.4.0 with `ips[].version`, 1.x) and
//! printed in the version the request asked for.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::CniError;
use crate::version::Version;

/// `interfaces[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address (`aa:bb:..`).
    #[serde(default)]
    pub mac: Option<String>,
    /// The netns path for interfaces inside a sandbox (CNI_NETNS verbatim); `None` on the host.
    #[serde(default)]
    pub sandbox: Option<String>,
    /// 1.1.0: MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// 1.1.0: socket path (vhost-user and such).
    #[serde(default)]
    pub socket_path: Option<String>,
    /// 1.1.0: PCI ID.
    #[serde(default, rename = "pciID")]
    pub pci_id: Option<String>,
}

/// `ips[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length; host bits kept (`10.32.0.5/12`).
    pub address: IpNet,
    /// Gateway, if any.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`, absent in IPAM plugins' abbreviated results.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// `routes[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RouteEntry {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; absent means "the default gateway of the interface".
    #[serde(default)]
    pub gw: Option<IpAddr>,
    /// 1.1.0 extras, carried through.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// 1.1.0
    #[serde(default)]
    pub advmss: Option<u32>,
    /// 1.1.0
    #[serde(default)]
    pub priority: Option<u32>,
    /// 1.1.0
    #[serde(default)]
    pub table: Option<u32>,
    /// 1.1.0
    #[serde(default)]
    pub scope: Option<u32>,
}

impl RouteEntry {
    /// A plain route.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> RouteEntry {
        RouteEntry {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// `dns` (same shape in config and result).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI Result, version-neutral.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CniResult {
    /// Interfaces created (host side too).
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    /// DNS.
    #[serde(default)]
    pub dns: Dns,
}

/// 0.1.0/0.2.0 `ip4`/`ip6` block.
#[derive(Deserialize)]
struct LegacyIp {
    ip: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<RouteEntry>,
}

#[derive(Deserialize)]
struct LegacyResult {
    #[serde(default)]
    ip4: Option<LegacyIp>,
    #[serde(default)]
    ip6: Option<LegacyIp>,
    #[serde(default)]
    dns: Dns,
}

impl CniResult {
    /// Parses a result in any version (code 6 when it is not a result).
    pub fn from_value(v: &Value) -> Result<CniResult, CniError> {
        let obj = v
            .as_object()
            .ok_or_else(|| CniError::decode("a CNI result must be a JSON object"))?;
        let legacy = !obj.contains_key("ips")
            && !obj.contains_key("interfaces")
            && (obj.contains_key("ip4") || obj.contains_key("ip6"));
        if legacy {
            let l: LegacyResult = serde_json::from_value(v.clone()).map_err(|e| {
                CniError::decode(format!("failed to decode 0.2.0-style result: {e}"))
            })?;
            let mut r = CniResult {
                dns: l.dns,
                ..CniResult::default()
            };
            for ip in [l.ip4, l.ip6].into_iter().flatten() {
                r.ips.push(IpConfig {
                    address: ip.ip,
                    gateway: ip.gateway,
                    interface: None,
                });
                r.routes.extend(ip.routes);
            }
            return Ok(r);
        }
        let r: CniResult = serde_json::from_value(v.clone())
            .map_err(|e| CniError::decode(format!("failed to decode CNI result: {e}")))?;
        for ip in &r.ips {
            if let Some(i) = ip.interface {
                if i >= r.interfaces.len() {
                    return Err(CniError::decode(format!(
                        "CNI result has ips[].interface {i} but only {} interfaces",
                        r.interfaces.len()
                    )));
                }
            }
        }
        Ok(r)
    }

    /// Parses result bytes (a delegated plugin's stdout).
    pub fn from_slice(b: &[u8]) -> Result<CniResult, CniError> {
        let v: Value = serde_json::from_slice(b)
            .map_err(|e| CniError::decode(format!("failed to decode CNI result: {e}")))?;
        CniResult::from_value(&v)
    }

    /// Prints the result in `version`: `ips[].version` below 1.0.0, 1.1 fields only in 1.1.0.
    pub fn to_value(&self, version: Version) -> Value {
        let mut top = Map::new();
        top.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut o = Map::new();
                    o.insert("name".into(), json!(i.name));
                    if let Some(m) = &i.mac {
                        o.insert("mac".into(), json!(m));
                    }
                    if let Some(s) = &i.sandbox {
                        o.insert("sandbox".into(), json!(s));
                    }
                    if version.is_1_1() {
                        if let Some(m) = i.mtu {
                            o.insert("mtu".into(), json!(m));
                        }
                        if let Some(s) = &i.socket_path {
                            o.insert("socketPath".into(), json!(s));
                        }
                        if let Some(s) = &i.pci_id {
                            o.insert("pciID".into(), json!(s));
                        }
                    }
                    Value::Object(o)
                })
                .collect();
            top.insert("interfaces".into(), Value::Array(ifs));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut o = Map::new();
                    if version.has_ip_version_field() {
                        let fam = if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        };
                        o.insert("version".into(), json!(fam));
                    }
                    if let Some(i) = ip.interface {
                        o.insert("interface".into(), json!(i));
                    }
                    o.insert("address".into(), json!(ip.address.to_string()));
                    if let Some(g) = ip.gateway {
                        o.insert("gateway".into(), json!(g.to_string()));
                    }
                    Value::Object(o)
                })
                .collect();
            top.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    o.insert("dst".into(), json!(r.dst.to_string()));
                    if let Some(g) = r.gw {
                        o.insert("gw".into(), json!(g.to_string()));
                    }
                    if version.is_1_1() {
                        for (k, v) in [
                            ("mtu", r.mtu),
                            ("advmss", r.advmss),
                            ("priority", r.priority),
                            ("table", r.table),
                            ("scope", r.scope),
                        ] {
                            if let Some(v) = v {
                                o.insert(k.into(), json!(v));
                            }
                        }
                    }
                    Value::Object(o)
                })
                .collect();
            top.insert("routes".into(), Value::Array(routes));
        }
        top.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({})),
        );
        Value::Object(top)
    }

    /// Chaining: `self` is the prevResult; appends `ours` after it, shifting our interface
    /// indices. DNS: ours wins when set, else the previous one is kept.
    pub fn merged_with(&self, ours: &CniResult) -> CniResult {
        let offset = self.interfaces.len();
        let mut out = self.clone();
        out.interfaces.extend(ours.interfaces.iter().cloned());
        out.ips.extend(ours.ips.iter().map(|ip| IpConfig {
            interface: ip.interface.map(|i| i + offset),
            ..ip.clone()
        }));
        for r in &ours.routes {
            if !out.routes.contains(r) {
                out.routes.push(r.clone());
            }
        }
        if !ours.dns.is_empty() {
            out.dns = ours.dns.clone();
        }
        out
    }

    /// The index of the interface named `ifname` in sandbox `netns` (the last such one: a later
    /// plugin's entry replaces an earlier one).
    pub fn container_interface(&self, ifname: &str, netns: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .rposition(|i| i.name == ifname && i.sandbox.as_deref() == Some(netns))
            .or_else(|| {
                self.interfaces
                    .iter()
                    .rposition(|i| i.name == ifname && i.sandbox.is_some())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "weave".into(),
                    mac: Some("aa:bb:cc:dd:ee:01".into()),
                    ..Default::default()
                },
                Interface {
                    name: "vethwepl1234567".into(),
                    mac: Some("aa:bb:cc:dd:ee:02".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:dd:ee:03".into()),
                    sandbox: Some("/proc/42/ns/net".into()),
                    mtu: Some(1376),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.32.0.5/12".parse().unwrap(),
                gateway: Some("10.32.0.1".parse().unwrap()),
                interface: Some(2),
            }],
            routes: vec![RouteEntry::new(
                "0.0.0.0/0".parse().unwrap(),
                Some("10.32.0.1".parse().unwrap()),
            )],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn version_shapes() {
        let r = sample();
        for v in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            let j = r.to_value(v);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][0]["interface"], 2);
            assert_eq!(j["ips"][0]["address"], "10.32.0.5/12");
            assert!(j["interfaces"][2].get("mtu").is_none());
            assert_eq!(j["interfaces"][2]["sandbox"], "/proc/42/ns/net");
        }
        let j = r.to_value(Version::V1_0_0);
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["interfaces"][2].get("mtu").is_none());
        let j = r.to_value(Version::V1_1_0);
        assert!(j["ips"][0].get("version").is_none());
        assert_eq!(j["interfaces"][2]["mtu"], 1376);
        assert_eq!(j["dns"]["nameservers"][0], "10.96.0.10");
        assert_eq!(j["routes"][0]["gw"], "10.32.0.1");
    }

    #[test]
    fn round_trip_every_version() {
        let r = sample();
        for v in [
            Version::V0_3_0,
            Version::V0_3_1,
            Version::V0_4_0,
            Version::V1_0_0,
            Version::V1_1_0,
        ] {
            let back = CniResult::from_value(&r.to_value(v)).unwrap();
            let mut want = r.clone();
            if !v.is_1_1() {
                want.interfaces[2].mtu = None;
            }
            assert_eq!(back, want, "{v}");
        }
    }

    #[test]
    fn empty_dns_is_object() {
        let j = CniResult::default().to_value(Version::V1_0_0);
        assert_eq!(j["dns"], json!({}));
        assert!(j.get("ips").is_none());
    }

    #[test]
    fn host_local_abbreviated_result() {
        let r = CniResult::from_slice(
            br#"{"cniVersion":"1.0.0","ips":[{"address":"10.197.0.51/24","gateway":"10.197.0.1"}],"dns":{}}"#,
        )
        .unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.ips[0].interface, None);
        assert_eq!(r.ips[0].address.to_string(), "10.197.0.51/24");
        let r = CniResult::from_slice(
            br#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.2/16","gateway":"10.1.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#,
        )
        .unwrap();
        assert_eq!(r.routes[0].gw, None);
    }

    #[test]
    fn legacy_020_result() {
        let r = CniResult::from_slice(
            br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24","gateway":"10.0.0.1","routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.1"}]},"dns":{"nameservers":["1.1.1.1"]}}"#,
        )
        .unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.2/24");
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.dns.nameservers, vec!["1.1.1.1".to_string()]);
    }

    #[test]
    fn bad_results_are_code_6() {
        for bad in [
            &b"[]"[..],
            b"nope",
            br#"{"ips":[{"address":"not-an-ip"}]}"#,
            br#"{"ips":[{"address":"10.0.0.1/24","interface":3}]}"#,
            br#"{"interfaces":"x"}"#,
        ] {
            assert_eq!(CniResult::from_slice(bad).unwrap_err().code, 6);
        }
    }

    #[test]
    fn merge_shifts_indices() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                sandbox: Some("/x".into()),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "127.0.0.1/8".parse().unwrap(),
                gateway: None,
                interface: Some(0),
            }],
            routes: vec![],
            dns: Dns {
                domain: Some("prev".into()),
                ..Default::default()
            },
        };
        let ours = sample();
        let m = prev.merged_with(&ours);
        assert_eq!(m.interfaces.len(), 4);
        assert_eq!(m.ips[0].interface, Some(0));
        assert_eq!(m.ips[1].interface, Some(3));
        assert_eq!(m.dns, ours.dns);
        let m2 = prev.merged_with(&CniResult {
            dns: Dns::default(),
            ..ours
        });
        assert_eq!(m2.dns.domain.as_deref(), Some("prev"));
        assert_eq!(m.container_interface("eth0", "/proc/42/ns/net"), Some(3));
        assert_eq!(m.container_interface("eth0", "/other"), Some(3));
        assert_eq!(m.container_interface("eth9", "/x"), None);
    }
}
