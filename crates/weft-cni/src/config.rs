//! The network configuration a runtime sends on stdin, validated.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::Value;

use crate::error::CniError;
use crate::result::{CniResult, Dns};
use crate::version::Version;

/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "weave";
/// Default router socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";

/// One `cni.dev/valid-attachments` (or `cni.dev/attachments`) entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    #[serde(default)]
    pub ifname: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    cni_version: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    plugin_type: Option<String>,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: Option<bool>,
    #[serde(default)]
    is_gateway: Option<bool>,
    #[serde(default)]
    is_default_gateway: Option<bool>,
    #[serde(default)]
    ip_masq: Option<bool>,
    #[serde(default)]
    ipam: Option<RawIpam>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    socket: Option<String>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(default, rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
}

#[derive(Deserialize)]
struct RawIpam {
    #[serde(default, rename = "type")]
    ipam_type: Option<String>,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
}

/// A static route from `ipam.routes` (IPv4; Weft is IPv4-only like Weave).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfRoute {
    /// Destination.
    pub dst: Ipv4Net,
    /// Next hop; `None` = the pod's gateway.
    pub gw: Option<Ipv4Addr>,
}

/// Where addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipam {
    /// Weft's router over its unix socket.
    Own {
        /// `ipam.subnet`: allocate from this subnet instead of the default one.
        subnet: Option<Ipv4Net>,
    },
    /// A CNI IPAM plugin found in CNI_PATH.
    Delegated {
        /// `ipam.type`: the binary name.
        plugin: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// `cniVersion`.
    pub version: Version,
    /// `name`.
    pub name: String,
    /// `type`.
    pub plugin_type: String,
    /// `bridge` (default "weave").
    pub bridge: String,
    /// `mtu` (`None` = the bridge's MTU).
    pub mtu: Option<u32>,
    /// `hairpinMode` (default true).
    pub hairpin: bool,
    /// IPAM source.
    pub ipam: Ipam,
    /// `ipam.gateway`.
    pub gateway: Option<Ipv4Addr>,
    /// `ipam.routes`.
    pub routes: Vec<ConfRoute>,
    /// `dns`.
    pub dns: Dns,
    /// The router socket (`socket`, else env `WEFT_SOCKET`, else the default).
    pub socket: PathBuf,
    /// `prevResult`, parsed.
    pub prev_result: Option<CniResult>,
    /// GC: the union of `cni.dev/valid-attachments` and `cni.dev/attachments`, `None` when both
    /// are absent.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Decodes stdin as a JSON object (code 6 when it is not one).
pub fn decode_json(stdin: &[u8]) -> Result<Value, CniError> {
    let v: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::decode(format!("error unmarshalling network config: {e}")))?;
    if !v.is_object() {
        return Err(CniError::decode(
            "error unmarshalling network config: expected a JSON object",
        ));
    }
    Ok(v)
}

/// Reads just `cniVersion` from a decoded config (for error replies).
pub fn raw_version(v: &Value) -> Option<String> {
    v.get("cniVersion")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn bad(msg: String) -> CniError {
    CniError::config(msg)
}

impl NetConf {
    /// Validates a decoded config. `env_socket` is `WEFT_SOCKET` from the environment.
    pub fn from_value(v: &Value, env_socket: Option<&str>) -> Result<NetConf, CniError> {
        let raw: RawConf = serde_json::from_value(v.clone())
            .map_err(|e| bad(format!("invalid network config: {e}")))?;
        let version = Version::from_config(raw.cni_version.as_deref())?;
        let name = raw
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("missing network name".into()))?;
        let plugin_type = raw
            .plugin_type
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("missing plugin type".into()))?;
        if raw.is_gateway == Some(true) {
            return Err(CniError::unsupported_field(
                "unsupported field in network config: \"isGateway\": true",
            )
            .with_details("weft's bridge gateway is managed by the router; remove isGateway"));
        }
        if raw.is_default_gateway == Some(true) {
            return Err(CniError::unsupported_field(
                "unsupported field in network config: \"isDefaultGateway\": true",
            )
            .with_details(
                "weft always routes the default route via the bridge; remove isDefaultGateway",
            ));
        }
        if raw.ip_masq == Some(true) {
            return Err(CniError::unsupported_field(
                "unsupported field in network config: \"ipMasq\": true",
            )
            .with_details("masquerading is done by the weft router; remove ipMasq"));
        }
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        crate::env::validate_ifname(&bridge)
            .map_err(|_| bad(format!("invalid bridge name {bridge:?}")))?;
        let mtu = match raw.mtu {
            None | Some(0) => None,
            Some(m) if (68..=65535).contains(&m) => Some(m),
            Some(m) => {
                return Err(bad(format!(
                    "invalid mtu {m}: must be 68..65535 (or 0 for the bridge's MTU)"
                )))
            }
        };
        let (ipam, gateway, routes) = match raw.ipam {
            None => (Ipam::Own { subnet: None }, None, Vec::new()),
            Some(ri) => {
                let ipam = match ri.ipam_type.filter(|t| !t.is_empty()) {
                    Some(t) => {
                        if t.contains('/') || t.contains('\\') || t == "." || t == ".." {
                            return Err(bad(format!(
                                "invalid ipam.type {t:?}: must be a plain binary name"
                            )));
                        }
                        Ipam::Delegated { plugin: t }
                    }
                    None => {
                        let subnet = match ri.subnet.as_deref() {
                            None | Some("") => None,
                            Some(s) => {
                                let n: Ipv4Net = s.parse().map_err(|_| {
                                    bad(format!("invalid ipam.subnet {s:?}: expected an IPv4 CIDR like 10.40.0.0/16"))
                                })?;
                                if n.trunc() != n {
                                    return Err(bad(format!(
                                        "invalid ipam.subnet {s:?}: host bits set; did you mean {}?",
                                        n.trunc()
                                    )));
                                }
                                Some(n)
                            }
                        };
                        Ipam::Own { subnet }
                    }
                };
                let gateway = match ri.gateway.as_deref() {
                    None | Some("") => None,
                    Some(g) => Some(g.parse::<Ipv4Addr>().map_err(|_| {
                        bad(format!(
                            "invalid ipam.gateway {g:?}: expected an IPv4 address"
                        ))
                    })?),
                };
                let mut routes = Vec::new();
                for r in ri.routes {
                    let dst: Ipv4Net = r.dst.parse().map_err(|_| {
                        bad(format!(
                            "invalid ipam.routes dst {:?}: expected an IPv4 CIDR",
                            r.dst
                        ))
                    })?;
                    let gw = match r.gw.as_deref() {
                        None | Some("") => None,
                        Some(g) => Some(g.parse::<Ipv4Addr>().map_err(|_| {
                            bad(format!(
                                "invalid ipam.routes gw {g:?}: expected an IPv4 address"
                            ))
                        })?),
                    };
                    routes.push(ConfRoute {
                        dst: dst.trunc(),
                        gw,
                    });
                }
                (ipam, gateway, routes)
            }
        };
        let socket = raw
            .socket
            .filter(|s| !s.is_empty())
            .or_else(|| env_socket.filter(|s| !s.is_empty()).map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
        let prev_result = match raw.prev_result {
            None | Some(Value::Null) => None,
            Some(p) if p.as_object().is_some_and(|o| o.is_empty()) => None,
            Some(p) => {
                Some(CniResult::from_value(&p).map_err(|e| e.context("invalid prevResult"))?)
            }
        };
        let valid_attachments = match (raw.valid_attachments, raw.attachments) {
            (None, None) => None,
            (a, b) => Some(a.into_iter().chain(b).flatten().collect()),
        };
        Ok(NetConf {
            version,
            name,
            plugin_type,
            bridge,
            mtu,
            hairpin: raw.hairpin_mode.unwrap_or(true),
            ipam,
            gateway,
            routes,
            dns: raw.dns.unwrap_or_default(),
            socket: PathBuf::from(socket),
            prev_result,
            valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> Result<NetConf, CniError> {
        NetConf::from_value(&v, None)
    }

    #[test]
    fn weave_conflist_entry() {
        let c = conf(
            json!({"cniVersion":"0.3.0","name":"weave","type":"weave-net","hairpinMode":true}),
        )
        .unwrap();
        assert_eq!(c.version, Version::V0_3_0);
        assert_eq!(c.bridge, "weave");
        assert!(c.hairpin);
        assert_eq!(c.mtu, None);
        assert_eq!(c.ipam, Ipam::Own { subnet: None });
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(c.prev_result.is_none());
        assert!(c.valid_attachments.is_none());
    }

    #[test]
    fn tolerates_unknown_and_runtime_keys() {
        let c = conf(json!({
            "capabilities":{"portMappings":true}, "cniVersion":"1.0.0", "name":"n",
            "runtimeConfig":{"portMappings":[]}, "args":{"cni":{}}, "type":"weft-net",
            "somethingNew": [1,2,3], "hairpinMode": false, "mtu": 1400, "bridge": "br9",
            "dns": {"nameservers":["10.96.0.10"], "search":["svc.cluster.local"]},
            "ipam": {"subnet":"10.40.0.0/16","gateway":"10.40.0.1","routes":[{"dst":"10.0.0.0/8"},{"dst":"192.168.0.0/16","gw":"10.40.0.254"}]}
        }))
        .unwrap();
        assert!(!c.hairpin);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.bridge, "br9");
        assert_eq!(
            c.ipam,
            Ipam::Own {
                subnet: Some("10.40.0.0/16".parse().unwrap())
            }
        );
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 40, 0, 1)));
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw, Some(Ipv4Addr::new(10, 40, 0, 254)));
        assert_eq!(c.dns.search, vec!["svc.cluster.local".to_string()]);
    }

    #[test]
    fn socket_precedence() {
        let base = json!({"cniVersion":"1.0.0","name":"n","type":"t"});
        assert_eq!(
            NetConf::from_value(&base, Some("/e.sock")).unwrap().socket,
            PathBuf::from("/e.sock")
        );
        let mut with = base.clone();
        with["socket"] = json!("/c.sock");
        assert_eq!(
            NetConf::from_value(&with, Some("/e.sock")).unwrap().socket,
            PathBuf::from("/c.sock")
        );
    }

    #[test]
    fn error_table() {
        let cases: Vec<(Value, u32, &str)> = vec![
            (json!({"name":"n","type":"t"}), 1, "incompatible"),
            (
                json!({"cniVersion":"0.2.0","name":"n","type":"t"}),
                1,
                "incompatible",
            ),
            (
                json!({"cniVersion":"1.0.0","type":"t"}),
                7,
                "missing network name",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n"}),
                7,
                "missing plugin type",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","type":"t","isGateway":true}),
                2,
                "isGateway",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","type":"t","ipMasq":true}),
                2,
                "ipMasq",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","type":"t","mtu":20}),
                7,
                "mtu",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","type":"t","mtu":"big"}),
                7,
                "invalid network config",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"subnet":"10.40.0.1/16"}}),
                7,
                "host bits",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"subnet":"nope"}}),
                7,
                "ipam.subnet",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"gateway":"x"}}),
                7,
                "ipam.gateway",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"routes":[{"dst":"x"}]}}),
                7,
                "ipam.routes",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"../evil"}}),
                7,
                "ipam.type",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","type":"t","bridge":"a/b"}),
                7,
                "bridge",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","type":"t","prevResult":{"ips":[{"address":"bad"}]}}),
                6,
                "prevResult",
            ),
        ];
        for (v, code, needle) in cases {
            let e = conf(v.clone()).unwrap_err();
            assert_eq!(e.code, code, "{v}: {e}");
            assert!(e.to_string().contains(needle), "{v}: {e}");
        }
        // isGateway:false / ipMasq:false are fine.
        conf(json!({"cniVersion":"1.0.0","name":"n","type":"t","isGateway":false,"ipMasq":false}))
            .unwrap();
    }

    #[test]
    fn delegated_ipam() {
        let c = conf(json!({"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.0/16"}]]}})).unwrap();
        assert_eq!(
            c.ipam,
            Ipam::Delegated {
                plugin: "host-local".into()
            }
        );
    }

    #[test]
    fn gc_attachment_keys_are_merged() {
        let c = conf(json!({"cniVersion":"1.1.0","name":"n","type":"t",
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
            "cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]}))
        .unwrap();
        let ids: Vec<_> = c
            .valid_attachments
            .unwrap()
            .into_iter()
            .map(|a| a.container_id)
            .collect();
        assert_eq!(ids, vec!["a", "b"]);
        let c = conf(json!({"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/attachments":[]}))
            .unwrap();
        assert_eq!(c.valid_attachments, Some(vec![]));
    }

    #[test]
    fn decode_errors() {
        assert_eq!(decode_json(b"{").unwrap_err().code, 6);
        assert_eq!(decode_json(b"[1]").unwrap_err().code, 6);
        assert_eq!(decode_json(b"").unwrap_err().code, 6);
        assert!(decode_json(b"{}").is_ok());
    }

    #[test]
    fn empty_prev_result_is_none() {
        let c = conf(json!({"cniVersion":"1.0.0","name":"n","type":"t","prevResult":{}})).unwrap();
        assert!(c.prev_result.is_none());
    }
}
