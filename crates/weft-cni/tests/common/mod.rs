//! Test world for the plugin's integration tests: a "host" netns holding a `weave` bridge with
//! 10.32.0.1/12, pod netns, a fake weft router (unix-socket HTTP server thread with a simple
//! allocator) and a runner that executes the plugin binary inside the host netns.
#![allow(dead_code)]

pub mod fake_router;

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use weft_dataplane::bridge::{ensure_bridge, BridgeConfig};
use weft_dataplane::netlink::{Link, Netlink, Route};
use weft_dataplane::netns::{NamedNetNs, NetNs};

pub use fake_router::FakeRouter;

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_weft-net-test");
pub const BRIDGE_MTU: u32 = 1376;
pub const REF_PLUGINS: &str = "/usr/lib/cni";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique name fragment: pid + counter.
pub fn unique(tag: &str) -> String {
    format!(
        "wcni-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// What the plugin printed and its exit code.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}; stderr: {}",
                String::from_utf8_lossy(&self.stdout),
                self.stderr
            )
        })
    }

    /// Asserts success and returns the JSON (Null for empty stdout).
    pub fn ok(&self) -> Value {
        assert_eq!(
            self.code,
            0,
            "plugin failed: {}; stderr: {}",
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        if self.stdout.iter().all(|b| b.is_ascii_whitespace()) {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts failure with `code` and returns the error JSON.
    pub fn err(&self, code: u64) -> Value {
        assert_ne!(
            self.code,
            0,
            "expected failure, got: {}",
            String::from_utf8_lossy(&self.stdout)
        );
        let j = self.json();
        assert_eq!(
            j["code"],
            json!(code),
            "unexpected error: {j}; stderr: {}",
            self.stderr
        );
        assert!(j["msg"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        j
    }
}

/// Runs an executable inside `ns` with exactly `env` (plus PATH) and `stdin`.
pub fn exec_in(ns: &NetNs, program: &str, env: &[(&str, &str)], stdin: &[u8]) -> Out {
    let fd = ns.fd().as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setns is async-signal-safe; `fd` stays open in the parent (and thus in the child)
    // for the duration of the spawn because `ns` outlives this call.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(
                BorrowedFd::borrow_raw(fd),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut sin = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = sin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One test's world.
pub struct World {
    pub host: NamedNetNs,
    pub router: FakeRouter,
    pub dir: tempfile::TempDir,
    pub net_name: String,
}

/// Sets up the bridge inside `ns` (optionally with an address).
pub fn make_bridge(ns: &NetNs, name: &str, addr: Option<Ipv4Net>) -> Link {
    let name = name.to_string();
    ns.run(move || {
        let mut nl = Netlink::open()?;
        let l = ensure_bridge(
            &mut nl,
            &BridgeConfig {
                name,
                mtu: BRIDGE_MTU,
                mac: None,
            },
        )?;
        // A bridge created with IFLA_MTU follows its ports' MTU (and falls back to 1500 when
        // the last port leaves) unless the MTU was set explicitly afterwards: pin it.
        nl.set_mtu(l.index, BRIDGE_MTU + 1)?;
        nl.set_mtu(l.index, BRIDGE_MTU)?;
        if let Some(a) = addr {
            nl.add_address(l.index, a)?;
        }
        Ok(l)
    })
    .expect("bridge setup")
}

impl World {
    /// Host netns with the bridge at 10.32.0.1/12 and a ready fake router.
    pub fn new() -> World {
        World::with_bridge_addr(Some("10.32.0.1/12".parse().unwrap()))
    }

    pub fn with_bridge_addr(addr: Option<Ipv4Net>) -> World {
        let host = NamedNetNs::create(&unique("host")).expect("create host netns");
        make_bridge(host.ns(), "weave", addr);
        let dir = tempfile::tempdir().unwrap();
        let router = FakeRouter::start(&dir.path().join("weft.sock"));
        World {
            host,
            router,
            dir,
            net_name: "weave".into(),
        }
    }

    pub fn host_ns(&self) -> &NetNs {
        self.host.ns()
    }

    /// A fresh pod netns.
    pub fn pod(&self) -> NamedNetNs {
        NamedNetNs::create(&unique("pod")).expect("create pod netns")
    }

    /// The plugin's config for `version` (own IPAM via the fake router).
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.net_name,
            "type": "weft-net",
            "hairpinMode": true,
            "socket": self.router.path().to_str().unwrap(),
        })
    }

    /// Runs the plugin in the host netns.
    pub fn plugin(
        &self,
        command: &str,
        id: &str,
        netns: Option<&str>,
        ifname: &str,
        conf: &Value,
    ) -> Out {
        self.plugin_env(command, id, netns, ifname, conf, &[])
    }

    pub fn plugin_env(
        &self,
        command: &str,
        id: &str,
        netns: Option<&str>,
        ifname: &str,
        conf: &Value,
        extra: &[(&str, &str)],
    ) -> Out {
        let mut env: Vec<(&str, &str)> = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", REF_PLUGINS),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test",
            ),
        ];
        if let Some(n) = netns {
            env.push(("CNI_NETNS", n));
        }
        env.extend_from_slice(extra);
        exec_in(self.host_ns(), PLUGIN, &env, conf.to_string().as_bytes())
    }

    /// Runs a reference plugin from /usr/lib/cni in the host netns.
    pub fn reference(
        &self,
        plugin: &str,
        command: &str,
        id: &str,
        netns: &str,
        ifname: &str,
        conf: &Value,
    ) -> Out {
        let path = format!("{REF_PLUGINS}/{plugin}");
        assert!(
            Path::new(&path).exists(),
            "{path} missing: apt-get install -y containernetworking-plugins"
        );
        exec_in(
            self.host_ns(),
            &path,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", REF_PLUGINS),
            ],
            conf.to_string().as_bytes(),
        )
    }

    /// Host-side links whose name starts with `vethwepl`.
    pub fn host_veths(&self) -> Vec<Link> {
        links(self.host_ns())
            .into_iter()
            .filter(|l| l.name.starts_with("vethwepl"))
            .collect()
    }

    pub fn bridge(&self) -> Link {
        link(self.host_ns(), "weave").expect("bridge exists")
    }

    pub fn hairpin(&self, index: u32) -> bool {
        self.host_ns()
            .run(move || Netlink::open()?.hairpin(index))
            .unwrap()
    }
}

pub fn netns_path(ns: &NamedNetNs) -> String {
    ns.ns().path().to_str().unwrap().to_string()
}

pub fn links(ns: &NetNs) -> Vec<Link> {
    ns.run(|| Netlink::open()?.links()).unwrap()
}

pub fn link(ns: &NetNs, name: &str) -> Option<Link> {
    let name = name.to_string();
    ns.run(move || Netlink::open()?.link_by_name(&name))
        .unwrap()
}

pub fn addresses(ns: &NetNs, name: &str) -> Vec<Ipv4Net> {
    let name = name.to_string();
    ns.run(move || {
        let mut nl = Netlink::open()?;
        match nl.link_by_name(&name)? {
            Some(l) => nl.addresses(l.index),
            None => Ok(vec![]),
        }
    })
    .unwrap()
}

pub fn routes(ns: &NetNs) -> Vec<Route> {
    ns.run(|| Netlink::open()?.routes()).unwrap()
}

pub fn has_default_via(ns: &NetNs, gw: Ipv4Addr) -> bool {
    routes(ns)
        .iter()
        .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(gw))
}

/// Lets a process live inside `ns` so `/proc/<pid>/ns/net` names it; killed (by PID) on drop.
pub struct Holder {
    child: std::process::Child,
}

impl Holder {
    pub fn new(ns: &NetNs) -> Holder {
        let fd = ns.fd().as_raw_fd();
        let mut cmd = Command::new("sleep");
        cmd.arg("600").stdin(Stdio::null()).stdout(Stdio::null());
        // SAFETY: as in exec_in.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(
                    BorrowedFd::borrow_raw(fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        Holder {
            child: cmd.spawn().unwrap(),
        }
    }

    pub fn netns_path(&self) -> String {
        format!("/proc/{}/ns/net", self.child.id())
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command (e.g. iptables) inside `ns` and returns its stdout.
pub fn command_in(ns: &NetNs, program: &str, args: &[&str]) -> String {
    let fd = ns.fd().as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: as in exec_in.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(
                BorrowedFd::borrow_raw(fd),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .map_err(std::io::Error::from)
        });
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// IPv4 of the first `ips` entry of a result.
pub fn result_ip(r: &Value) -> Ipv4Net {
    r["ips"][0]["address"].as_str().unwrap().parse().unwrap()
}

/// A map view of an environment, for convenience.
pub fn envmap(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn tmp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
