//! The verbs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;
use weft_dataplane::netlink::Netlink;

use crate::config::{Ipam, NetConf};
use crate::delegate::Delegate;
use crate::env::{CniEnv, Command};
use crate::error::{
    CniError, ERR_CHECK_FAILED, ERR_DELEGATE, ERR_GC, ERR_NOT_AVAILABLE, ERR_TRY_AGAIN,
};
use crate::kernel::{self, AttachSpec};
use crate::result::{CniResult, Dns, Interface, IpConfig, RouteEntry};
use crate::router::{parse_owned_addr, Router};

/// Everything one invocation needs.
pub struct Ctx<'a> {
    /// The validated environment.
    pub env: CniEnv,
    /// The validated config.
    pub conf: NetConf,
    /// The raw environment (passed on to delegates).
    pub raw_env: &'a HashMap<String, String>,
    /// The raw stdin (passed on to delegates).
    pub stdin: &'a [u8],
}

fn warn(msg: impl std::fmt::Display) {
    eprintln!("weft-net: warning: {msg}");
}

impl Ctx<'_> {
    fn router(&self) -> Router {
        Router::new(&self.conf.socket)
    }

    fn delegate(&self, plugin: &str) -> Result<Delegate<'_>, CniError> {
        Delegate::new(plugin, &self.env.path, self.raw_env, self.stdin)
    }

    /// Runs the verb; `Ok(Some(v))` is a result to print, `Ok(None)` prints nothing.
    pub fn dispatch(&self) -> Result<Option<Value>, CniError> {
        match self.env.command {
            Command::Add => self.add().map(Some),
            Command::Del => self.del().map(|_| None),
            Command::Check => self.check().map(|_| None),
            Command::Gc => self.gc().map(|_| None),
            Command::Status => self.status().map(|_| None),
            Command::Version => Ok(Some(crate::version::version_answer(self.stdin))),
        }
    }

    fn add(&self) -> Result<Value, CniError> {
        let conf = &self.conf;
        let env = &self.env;
        let netns_path = env.netns.as_deref().unwrap_or_default();
        let ns = kernel::open_container_netns(netns_path)?;
        // Before touching IPAM: an existing interface means a repeated ADD, and releasing the
        // address on the way out would break the first attachment.
        if kernel::link_in_ns(&ns, &env.ifname)?.is_some() {
            return Err(CniError::new(
                crate::error::ERR_IFACE_EXISTS,
                format!(
                    "container veth name provided ({}) already exists",
                    env.ifname
                ),
            )
            .with_details(
                "the runtime called ADD twice for this container and interface; call DEL first",
            ));
        }
        let mut nl = Netlink::open().map_err(|e| CniError::kernel("opening netlink", e))?;
        let bridge = kernel::bridge(&mut nl, &conf.bridge)?;
        if matches!(conf.ipam, Ipam::Own { .. })
            && conf.gateway.is_none()
            && bridge.addrs.is_empty()
        {
            // Fail before allocating: we could not route the pod anyway.
            bridge.gateway_for("0.0.0.0/0".parse().expect("valid"))?;
        }

        // IPAM.
        let (addrs, gateway, routes, ipam_dns) = match &conf.ipam {
            Ipam::Own { subnet } => {
                let a = self.router().allocate(&env.container_id, *subnet)?;
                let routes: Vec<(Ipv4Net, Option<Ipv4Addr>)> =
                    conf.routes.iter().map(|r| (r.dst, r.gw)).collect();
                (vec![a], conf.gateway, routes, Dns::default())
            }
            Ipam::Delegated { plugin } => {
                let d = self.delegate(plugin)?;
                let r = d.add()?;
                match ipam_to_v4(&r, plugin) {
                    Ok((addrs, gw, routes)) => (addrs, gw, routes, r.dns),
                    Err(e) => {
                        if let Err(de) = d.del() {
                            warn(format_args!(
                                "releasing the address after a failed ADD: {de}"
                            ));
                        }
                        return Err(e);
                    }
                }
            }
        };

        let mut attach = || -> Result<Value, CniError> {
            let gateway = match gateway {
                Some(g) => g,
                None => bridge.gateway_for(addrs[0])?,
            };
            let routes: Vec<(Ipv4Net, Ipv4Addr)> = if routes.is_empty() {
                vec![("0.0.0.0/0".parse().expect("valid"), gateway)]
            } else {
                routes
                    .iter()
                    .map(|(d, g)| (*d, g.unwrap_or(gateway)))
                    .collect()
            };
            let mtu = conf.mtu.unwrap_or(bridge.link.mtu);
            let spec = AttachSpec {
                container_id: &env.container_id,
                ifname: &env.ifname,
                mtu,
                hairpin: conf.hairpin,
                addrs: addrs.clone(),
                routes: routes.clone(),
            };
            let host = kernel::create_veth(&mut nl, &ns, &env.container_id, &env.ifname, mtu)?;
            let attached = match kernel::configure(&mut nl, &ns, &bridge, &host, &spec) {
                Ok(a) => a,
                Err(e) => {
                    if let Err(de) = kernel::delete_host_link(&mut nl, &host) {
                        warn(format_args!(
                            "removing {} after a failed ADD: {de}",
                            host.name
                        ));
                    }
                    return Err(e);
                }
            };
            let ours = CniResult {
                interfaces: vec![
                    Interface {
                        name: bridge.link.name.clone(),
                        mac: kernel::mac_string(&bridge.link),
                        ..Default::default()
                    },
                    Interface {
                        name: attached.host.name.clone(),
                        mac: kernel::mac_string(&attached.host),
                        ..Default::default()
                    },
                    Interface {
                        name: attached.container.name.clone(),
                        mac: kernel::mac_string(&attached.container),
                        sandbox: Some(netns_path.to_string()),
                        mtu: Some(attached.container.mtu),
                        ..Default::default()
                    },
                ],
                ips: addrs
                    .iter()
                    .map(|a| IpConfig {
                        address: IpNet::V4(*a),
                        gateway: Some(IpAddr::V4(gateway)),
                        interface: Some(2),
                    })
                    .collect(),
                routes: attached
                    .link_routes
                    .iter()
                    .map(|d| RouteEntry::new(IpNet::V4(*d), None))
                    .chain(
                        routes
                            .iter()
                            .map(|(d, g)| RouteEntry::new(IpNet::V4(*d), Some(IpAddr::V4(*g)))),
                    )
                    .collect(),
                dns: if conf.dns.is_empty() {
                    ipam_dns.clone()
                } else {
                    conf.dns.clone()
                },
            };
            let result = match &conf.prev_result {
                Some(prev) => prev.merged_with(&ours),
                None => ours,
            };
            Ok(result.to_value(conf.version))
        };
        match attach() {
            Ok(v) => Ok(v),
            Err(e) => {
                self.release_after_failure();
                Err(e)
            }
        }
    }

    fn release_after_failure(&self) {
        let r = match &self.conf.ipam {
            Ipam::Own { .. } => self.router().release(&self.env.container_id),
            Ipam::Delegated { plugin } => self.delegate(plugin).and_then(|d| d.del()),
        };
        if let Err(e) = r {
            warn(format_args!(
                "releasing the address of {} after a failed ADD: {e}",
                self.env.container_id
            ));
        }
    }

    fn del(&self) -> Result<(), CniError> {
        let env = &self.env;
        let mut errors: Vec<CniError> = Vec::new();
        if let Some(path) = env.netns.as_deref() {
            match kernel::open_container_netns(path) {
                Ok(ns) => {
                    if let Err(e) = kernel::delete_in_ns(&ns, &env.ifname) {
                        errors.push(e);
                    }
                }
                // Gone (or never a netns): the interface went with it. Our own netns: never
                // delete the host's interfaces.
                Err(e) => warn(format_args!("DEL: skipping interface removal: {}", e.msg)),
            }
        }
        let released = match &self.conf.ipam {
            Ipam::Own { .. } => self.router().release(&env.container_id),
            Ipam::Delegated { plugin } => self.delegate(plugin).and_then(|d| d.del()),
        };
        if let Err(e) = released {
            // IPAM first: it decides whether the runtime should retry (code 11).
            errors.insert(0, e);
        }
        join_errors(errors, ERR_DELEGATE)
    }

    fn check(&self) -> Result<(), CniError> {
        let conf = &self.conf;
        let env = &self.env;
        if !conf.version.has_check() {
            return Err(CniError::version(format!(
                "config version {} does not allow CHECK (needs 0.4.0 or later)",
                conf.version
            )));
        }
        let prev = conf.prev_result.as_ref().ok_or_else(|| {
            CniError::config("CHECK needs prevResult")
                .with_details("the runtime must pass the cached ADD result as prevResult")
        })?;
        let netns_path = env.netns.as_deref().unwrap_or_default();
        let idx = prev
            .container_interface(&env.ifname, netns_path)
            .ok_or_else(|| {
                CniError::new(
                    ERR_CHECK_FAILED,
                    format!(
                        "prevResult has no interface {} in sandbox {netns_path}",
                        env.ifname
                    ),
                )
            })?;
        let addrs: Vec<Ipv4Net> = prev
            .ips
            .iter()
            .filter(|ip| ip.interface == Some(idx))
            .filter_map(|ip| match ip.address {
                IpNet::V4(a) => Some(a),
                IpNet::V6(_) => None,
            })
            .collect();
        if addrs.is_empty() {
            return Err(CniError::new(
                ERR_CHECK_FAILED,
                format!(
                    "prevResult has no IPv4 address for interface {}",
                    env.ifname
                ),
            ));
        }
        let gateway = prev
            .ips
            .iter()
            .filter(|ip| ip.interface == Some(idx))
            .find_map(|ip| match ip.gateway {
                Some(IpAddr::V4(g)) => Some(g),
                _ => None,
            });
        let ns = kernel::open_container_netns(netns_path)?;
        let mut nl = Netlink::open().map_err(|e| CniError::kernel("opening netlink", e))?;
        let bridge = kernel::bridge(&mut nl, &conf.bridge)?;
        let gateway = match gateway.or(conf.gateway) {
            Some(g) => g,
            None => bridge.gateway_for(addrs[0])?,
        };
        let routes: Vec<(Ipv4Net, Ipv4Addr)> = match &conf.ipam {
            Ipam::Own { .. } if !conf.routes.is_empty() => conf
                .routes
                .iter()
                .map(|r| (r.dst, r.gw.unwrap_or(gateway)))
                .collect(),
            Ipam::Own { .. } => vec![("0.0.0.0/0".parse().expect("valid"), gateway)],
            Ipam::Delegated { .. } => {
                let mut v: Vec<(Ipv4Net, Ipv4Addr)> = prev
                    .routes
                    .iter()
                    .filter_map(|r| match (r.dst, r.gw) {
                        (IpNet::V4(d), Some(IpAddr::V4(g))) => Some((d, g)),
                        (IpNet::V4(d), None) => Some((d, gateway)),
                        _ => None,
                    })
                    .filter(|(d, _)| d.prefix_len() < 32 || d.addr() != gateway)
                    .collect();
                if v.is_empty() {
                    v.push(("0.0.0.0/0".parse().expect("valid"), gateway));
                }
                v
            }
        };
        kernel::check_container(&ns, &env.ifname, &addrs, &routes)?;
        if idx > 0 {
            let host = &prev.interfaces[idx - 1];
            if host.sandbox.is_none() {
                kernel::check_host(&mut nl, &host.name, &bridge)?;
            }
        }
        match &conf.ipam {
            Ipam::Own { .. } => {
                let owned = self.router().owned()?;
                for a in &addrs {
                    let held = owned.iter().any(|o| {
                        o.container_id == env.container_id
                            && o.addrs
                                .iter()
                                .any(|s| parse_owned_addr(s) == Some(a.addr()))
                    });
                    if !held {
                        return Err(CniError::new(
                            ERR_CHECK_FAILED,
                            format!(
                                "the weft router no longer holds {} for container {}",
                                a.addr(),
                                env.container_id
                            ),
                        )
                        .with_details(
                            "the address may be handed to another pod; recreate this pod sandbox",
                        ));
                    }
                }
                Ok(())
            }
            Ipam::Delegated { plugin } => self.delegate(plugin)?.exec(Command::Check).map(drop),
        }
    }

    fn gc(&self) -> Result<(), CniError> {
        let conf = &self.conf;
        if !conf.version.is_1_1() {
            return Err(CniError::version(format!(
                "config version {} does not allow GC (needs 1.1.0)",
                conf.version
            )));
        }
        match &conf.ipam {
            Ipam::Delegated { plugin } => self.delegate(plugin)?.exec(Command::Gc).map(drop),
            Ipam::Own { .. } => {
                let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
                    CniError::config("GC needs cni.dev/valid-attachments (or cni.dev/attachments)")
                        .with_details(
                        "refusing to release every address without the list of valid attachments",
                    )
                })?;
                let router = self.router();
                let owned = router.owned()?;
                let mut errors = Vec::new();
                for id in crate::gc::stale_ids(&owned, valid) {
                    if crate::env::validate_container_id(&id).is_err() {
                        warn(format_args!(
                            "GC: skipping owner {id:?}: not a container ID"
                        ));
                        continue;
                    }
                    match router.release(&id) {
                        Ok(()) => {
                            eprintln!("weft-net: GC released the addresses of stale container {id}")
                        }
                        Err(e) => errors.push(e.context(format!("releasing {id}"))),
                    }
                }
                join_errors(errors, ERR_GC)
            }
        }
    }

    fn status(&self) -> Result<(), CniError> {
        let conf = &self.conf;
        if !conf.version.is_1_1() {
            return Err(CniError::version(format!(
                "config version {} does not allow STATUS (needs 1.1.0)",
                conf.version
            )));
        }
        match &conf.ipam {
            Ipam::Own { .. } => self.router().status(),
            Ipam::Delegated { plugin } => match self.delegate(plugin)?.exec(Command::Status) {
                Ok(_) => Ok(()),
                Err(e) if e.code == ERR_NOT_AVAILABLE || e.code == 51 => Err(e),
                Err(e) => Err(CniError::new(ERR_NOT_AVAILABLE, e.msg).with_details(e.details)),
            },
        }
    }
}

/// Turns the IPAM plugin's result into IPv4 addresses, gateway and routes (Weft is IPv4-only).
/// Addresses, gateway and routes (destination, optional gateway) from IPAM.
type V4Ipam = (
    Vec<Ipv4Net>,
    Option<Ipv4Addr>,
    Vec<(Ipv4Net, Option<Ipv4Addr>)>,
);

fn ipam_to_v4(r: &CniResult, plugin: &str) -> Result<V4Ipam, CniError> {
    let unsupported = |what: String| {
        CniError::new(
            ERR_DELEGATE,
            format!("IPAM plugin {plugin:?} returned {what}, but weft is IPv4-only"),
        )
        .with_details("configure the IPAM plugin with IPv4 ranges only")
    };
    let mut addrs = Vec::new();
    let mut gateway = None;
    for ip in &r.ips {
        match (ip.address, ip.gateway) {
            (IpNet::V4(a), g) => {
                addrs.push(a);
                if gateway.is_none() {
                    if let Some(IpAddr::V4(g)) = g {
                        gateway = Some(g);
                    }
                }
            }
            (IpNet::V6(a), _) => return Err(unsupported(format!("IPv6 address {a}"))),
        }
    }
    if addrs.is_empty() {
        return Err(CniError::new(
            ERR_DELEGATE,
            format!("IPAM plugin {plugin:?} returned no IP address"),
        ));
    }
    let mut routes = Vec::new();
    for rt in &r.routes {
        match (rt.dst, rt.gw) {
            (IpNet::V4(d), None) => routes.push((d.trunc(), None)),
            (IpNet::V4(d), Some(IpAddr::V4(g))) => routes.push((d.trunc(), Some(g))),
            (d, _) => return Err(unsupported(format!("IPv6 route {d}"))),
        }
    }
    Ok((addrs, gateway, routes))
}

/// None → Ok; one → it; several → the first, with the others in its details. A transient
/// (code 11) error among them makes the whole answer code 11 so the runtime retries.
fn join_errors(mut errors: Vec<CniError>, multi_code: u32) -> Result<(), CniError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        n => {
            let transient = errors.iter().any(|e| e.code == ERR_TRY_AGAIN);
            let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            Err(CniError::new(
                if transient { ERR_TRY_AGAIN } else { multi_code },
                format!("{n} errors: {}", msgs.join("; ")),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_result_to_v4() {
        let r = CniResult::from_slice(
            br#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/16","gateway":"10.1.0.1"}],"routes":[{"dst":"10.9.0.0/16"},{"dst":"0.0.0.0/0","gw":"10.1.0.254"}]}"#,
        )
        .unwrap();
        let (a, g, rt) = ipam_to_v4(&r, "x").unwrap();
        assert_eq!(a, vec!["10.1.0.5/16".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(g, Some(Ipv4Addr::new(10, 1, 0, 1)));
        assert_eq!(rt[0], ("10.9.0.0/16".parse().unwrap(), None));
        assert_eq!(rt[1].1, Some(Ipv4Addr::new(10, 1, 0, 254)));
        let v6 = CniResult::from_slice(br#"{"ips":[{"address":"fd00::2/64"}]}"#).unwrap();
        assert_eq!(ipam_to_v4(&v6, "x").unwrap_err().code, ERR_DELEGATE);
        assert_eq!(
            ipam_to_v4(&CniResult::default(), "x").unwrap_err().code,
            ERR_DELEGATE
        );
    }

    #[test]
    fn error_joining() {
        assert!(join_errors(vec![], 105).is_ok());
        let e = join_errors(vec![CniError::new(103, "a")], 105).unwrap_err();
        assert_eq!(e.code, 103);
        let e =
            join_errors(vec![CniError::new(103, "a"), CniError::new(100, "b")], 105).unwrap_err();
        assert_eq!(e.code, 105);
        assert!(e.msg.contains("a") && e.msg.contains("b"));
        let e =
            join_errors(vec![CniError::new(103, "a"), CniError::try_again("b")], 105).unwrap_err();
        assert_eq!(e.code, 11);
    }
}
