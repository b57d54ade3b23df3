//! The lab: an underlay bridge, hosts in network namespaces, routers, pods.
use crate::cni::{self, CniRequest};
use crate::conns::Connections;
use crate::error::Context;
use crate::exec::{self, terminate};
use crate::matrix::Matrix;
use crate::ping::{ping_many, PingOptions, PingOutcome};
use crate::{signal, Error, Result};
use ipnet::Ipv4Net;
use serde_json::Value;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use weft_dataplane::netlink::{Netlink, Route};
use weft_dataplane::netns::{NamedNetNs, NetNs};
use weft_http::UnixHttp;

/// Where named network namespaces live.
pub const NETNS_DIR: &str = "/run/netns";
/// Default parent of lab work directories.
pub const DEFAULT_BASE_DIR: &str = "/run/weft-lab";
/// The underlay bridge's name (inside the underlay netns).
pub const UNDERLAY_BRIDGE: &str = "ul0";
/// The metrics address given to every router (each is in its own netns, so they do not clash).
pub const METRICS_ADDR: &str = "127.0.0.1:6782";
/// Grace period between SIGTERM and SIGKILL when stopping a router.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest unix socket path (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What to build, and how.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Number of hosts (1..=254); host `n` gets 198.18.0.`n`.
    pub hosts: usize,
    /// Pods per host, attached through the CNI plugin by [`Lab::build`].
    pub pods: usize,
    /// `--check`: run the matrix once (after letting the network settle), tear down, report.
    pub check: bool,
    /// The `weft` binary: run as `weft router` and, through a `weft-net` symlink, as the plugin.
    pub weft_bin: PathBuf,
    /// `--ipalloc-range` for every router.
    pub ipalloc_range: Option<String>,
    /// `--password` for every router.
    pub password: Option<String>,
    /// More arguments for every router (placed before the peer addresses).
    pub extra_router_args: Vec<String>,
    /// Parent of the work directory (default `/run/weft-lab`).
    pub base_dir: Option<PathBuf>,
    /// Print progress lines on stderr.
    pub progress: bool,
    /// How long a router may take to answer `GET /status` with 200.
    pub ready_timeout: Duration,
    /// How long one CNI plugin invocation may take.
    pub cni_timeout: Duration,
    /// `--check`: how long to keep re-running the matrix until every pair answers.
    pub settle_timeout: Duration,
    /// Without `--check`: how often to re-run the matrix (changes are printed).
    pub recheck_interval: Duration,
    /// Echo tries and timeout for the matrix.
    pub ping: PingOptions,
    /// Keep the work directory (router logs, databases) after teardown.
    pub keep_workdir: bool,
    /// With `check`: every connection must be established and carried by this overlay
    /// (`fastdp` or `sleeve`), else the check fails.
    pub expect_overlay: Option<String>,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            hosts: 2,
            pods: 2,
            check: false,
            weft_bin: PathBuf::new(),
            ipalloc_range: None,
            password: None,
            extra_router_args: Vec::new(),
            base_dir: None,
            progress: true,
            ready_timeout: Duration::from_secs(30),
            cni_timeout: Duration::from_secs(60),
            settle_timeout: Duration::from_secs(30),
            recheck_interval: Duration::from_secs(10),
            ping: PingOptions::default(),
            keep_workdir: false,
            expect_overlay: None,
        }
    }
}

/// One lab host: a netns on the underlay, maybe with a router.
#[derive(Debug)]
pub struct Host {
    number: usize,
    name: String,
    netns: NamedNetNs,
    addr: Ipv4Addr,
    dir: PathBuf,
    router: Option<Child>,
    /// Set by [`Lab::setup_static_routing`]: (bridge, this host's pod /24).
    static_net: Option<(String, Ipv4Net)>,
}

impl Host {
    /// 1-based host number.
    pub fn number(&self) -> usize {
        self.number
    }
    /// `h<n>`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The host's network namespace.
    pub fn netns(&self) -> &NetNs {
        self.netns.ns()
    }
    /// The netns name (under /run/netns).
    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }
    /// Underlay address 198.18.0.`n`.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    /// `<workdir>/h<n>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The router's unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("weft.sock")
    }
    /// The router's log (stdout and stderr, appended across restarts).
    pub fn router_log(&self) -> PathBuf {
        self.dir.join("router.log")
    }
}

/// One pod: a netns with an `eth0`.
#[derive(Debug)]
pub struct Pod {
    name: String,
    host: usize,
    index: usize,
    netns: NamedNetNs,
    cidr: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    container_id: String,
    /// The ADD result when attached through CNI (`None` for manual pods).
    cni_result: Option<Value>,
}

impl Pod {
    /// `h<host>p<index>`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// 1-based number of the host it lives on.
    pub fn host(&self) -> usize {
        self.host
    }
    /// 1-based index on its host.
    pub fn index(&self) -> usize {
        self.index
    }
    /// The pod's network namespace.
    pub fn netns(&self) -> &NetNs {
        self.netns.ns()
    }
    /// The netns name (under /run/netns).
    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }
    /// The netns path given to the plugin as `CNI_NETNS`.
    pub fn netns_path(&self) -> &Path {
        self.netns.ns().path()
    }
    /// The pod's address.
    pub fn addr(&self) -> Ipv4Addr {
        self.cidr.addr()
    }
    /// The pod's address with prefix length.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }
    /// Its gateway, if any.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
    }
    /// `CNI_CONTAINERID` (unique per lab).
    pub fn container_id(&self) -> &str {
        &self.container_id
    }
    /// The plugin's ADD result, for CNI pods.
    pub fn cni_result(&self) -> Option<&Value> {
        self.cni_result.as_ref()
    }
}

/// What [`crate::run`] hands back.
#[derive(Debug, Clone)]
pub struct LabReport {
    pub id: String,
    pub workdir: PathBuf,
    /// (name, underlay address, netns name)
    pub hosts: Vec<(String, Ipv4Addr, String)>,
    /// (name, address, netns name)
    pub pods: Vec<(String, Ipv4Net, String)>,
    /// The last matrix that was run.
    pub matrix: Matrix,
    /// The routers' connections after the matrix settled.
    pub connections: Connections,
}

/// A running lab. Dropping it tears everything down (pods through CNI DEL, routers, netns,
/// work directory); [`Lab::shutdown`] does the same and reports problems.
#[derive(Debug)]
pub struct Lab {
    id: String,
    workdir: PathBuf,
    cfg: LabConfig,
    underlay: Option<NamedNetNs>,
    hosts: Vec<Host>,
    pods: Vec<Pod>,
    torn_down: bool,
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

fn netns_exists_with_prefix(prefix: &str) -> bool {
    std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
        .unwrap_or(false)
}

/// Picks a fresh lab id (`wl<pid>-<counter>`) and creates its work directory under `base`.
fn allocate_id(base: &Path) -> Result<(String, PathBuf)> {
    std::fs::create_dir_all(base).ctx(|| format!("creating {}", base.display()))?;
    let pid = std::process::id();
    for _ in 0..10_000 {
        let c = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("wl{pid}-{c}");
        if netns_exists_with_prefix(&format!("{id}-")) {
            continue;
        }
        let dir = base.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).ctx(|| format!("creating lab directory {}", dir.display())),
        }
    }
    Err(Error::Config(format!(
        "no free lab id under {}; remove stale wl* directories there and stale wl* netns (ip netns list)",
        base.display()
    )))
}

/// Runs `f` with a netlink socket opened inside `ns`.
pub fn netlink_in<R: Send>(
    ns: &NetNs,
    what: impl FnOnce() -> String,
    f: impl FnOnce(&mut Netlink) -> weft_dataplane::Result<R> + Send,
) -> Result<R> {
    ns.run(|| {
        let mut nl = Netlink::open()?;
        f(&mut nl)
    })
    .ctx(what)
}

fn link_index(nl: &mut Netlink, name: &str) -> weft_dataplane::Result<u32> {
    nl.link_by_name(name)?
        .map(|l| l.index)
        .ok_or_else(|| weft_dataplane::Error::NotFound(format!("link {name}")))
}

/// Pings `targets` from inside `ns` (a thread joins the netns and opens a raw ICMP socket).
pub fn ping_in(ns: &NetNs, targets: &[Ipv4Addr], opts: &PingOptions) -> Result<Vec<PingOutcome>> {
    ns.run(|| Ok(ping_many(targets, opts)))
        .ctx(|| format!("entering netns {} to ping", ns.path().display()))?
        .ctx(|| format!("opening a raw ICMP socket in netns {}", ns.path().display()))
}

/// Pings `target` from inside `ns` until it answers or `timeout` passes; returns the last
/// outcome (a reply, or the last failure).
pub fn ping_until(ns: &NetNs, target: Ipv4Addr, timeout: Duration) -> Result<PingOutcome> {
    let start = Instant::now();
    let opts = PingOptions {
        tries: 1,
        timeout: Duration::from_millis(300),
    };
    loop {
        let out = ping_in(ns, &[target], &opts)?
            .pop()
            .unwrap_or(PingOutcome::Failed {
                reason: "no outcome".into(),
            });
        if out.is_ok() || start.elapsed() >= timeout || signal::stop_requested() {
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Last `lines` lines of a log file (reads at most the last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return "(no log written)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return "(log unreadable)".into();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    if tail.is_empty() {
        "(log is empty)".into()
    } else {
        tail.join("\n")
    }
}

impl Lab {
    /// Builds the whole lab: underlay, hosts, a router per host (waited for), and `cfg.pods`
    /// pods per host attached through the real CNI plugin.
    pub fn build(cfg: &LabConfig) -> Result<Lab> {
        if cfg.weft_bin.as_os_str().is_empty() {
            return Err(Error::Config(
                "weft_bin is empty: pass the path of the weft binary".into(),
            ));
        }
        let mut lab = Lab::create(cfg)?;
        for n in 1..=lab.hosts.len() {
            lab.check_stop("starting routers")?;
            lab.start_router(n)?;
        }
        for n in 1..=lab.hosts.len() {
            for _ in 0..cfg.pods {
                lab.check_stop("attaching pods")?;
                lab.add_cni_pod(n)?;
            }
        }
        Ok(lab)
    }

    /// Builds the topology only: work directory, underlay netns with bridge `ul0`, and
    /// `cfg.hosts` host netns wired to it (198.18.0.n/24 on `eth0`). No routers, no pods.
    pub fn create(cfg: &LabConfig) -> Result<Lab> {
        if cfg.hosts == 0 || cfg.hosts > 254 {
            return Err(Error::Config(format!(
                "hosts must be between 1 and 254 (got {})",
                cfg.hosts
            )));
        }
        if cfg.pods > 999 {
            return Err(Error::Config(format!(
                "pods per host must be at most 999 (got {})",
                cfg.pods
            )));
        }
        if !nix::unistd::Uid::effective().is_root() {
            return Err(Error::Config(
                "the lab needs root: it creates network namespaces, links and mounts".into(),
            ));
        }
        let mut cfg = cfg.clone();
        if !cfg.weft_bin.as_os_str().is_empty() {
            // Absolute, so that it does not depend on the routers' working directory.
            if let Ok(abs) = std::fs::canonicalize(&cfg.weft_bin) {
                cfg.weft_bin = abs;
            }
        }
        let cfg = &cfg;
        let base = cfg
            .base_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE_DIR));
        let (id, workdir) = allocate_id(&base)?;
        let mut lab = Lab {
            id,
            workdir,
            cfg: cfg.clone(),
            underlay: None,
            hosts: Vec::new(),
            pods: Vec::new(),
            torn_down: false,
        };
        // From here on, an early return drops `lab`, which tears down what exists.
        crate::stale::write_owner(&lab.workdir)?;
        let sock = lab
            .workdir
            .join(format!("h{}", cfg.hosts))
            .join("weft.sock");
        if sock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::Config(format!(
                "router socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter base directory",
                sock.display()
            )));
        }
        if !cfg.weft_bin.as_os_str().is_empty() {
            lab.ensure_cni_bin()?;
        }
        lab.progress(
            1,
            format!("creating underlay {}-ul (bridge {UNDERLAY_BRIDGE})", lab.id),
        );
        let ul = NamedNetNs::create(&format!("{}-ul", lab.id))
            .ctx(|| format!("creating underlay netns {}-ul", lab.id))?;
        netlink_in(
            ul.ns(),
            || "setting up the underlay bridge".into(),
            |nl| {
                let lo = link_index(nl, "lo")?;
                nl.set_up(lo)?;
                let br = nl.add_bridge(UNDERLAY_BRIDGE, None)?;
                nl.set_up(br.index)
            },
        )?;
        lab.underlay = Some(ul);
        for n in 1..=cfg.hosts {
            lab.check_stop("creating hosts")?;
            lab.create_host(n)?;
        }
        Ok(lab)
    }

    fn create_host(&mut self, n: usize) -> Result<()> {
        let name = format!("h{n}");
        let addr = Ipv4Addr::new(198, 18, 0, n as u8);
        self.progress(1, format!("creating host {name} ({addr})"));
        let netns = NamedNetNs::create(&format!("{}-{name}", self.id))
            .ctx(|| format!("creating netns {}-{name}", self.id))?;
        let dir = self.workdir.join(&name);
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let ul = self.underlay_netns();
        let host_fd = netns.ns().fd();
        netlink_in(
            ul,
            || format!("wiring host {name} to the underlay"),
            |nl| {
                let br = link_index(nl, UNDERLAY_BRIDGE)?;
                nl.add_veth(&name, "eth0", None, Some(host_fd))?;
                let port = link_index(nl, &name)?;
                nl.set_master(port, Some(br))?;
                nl.set_up(port)
            },
        )?;
        let cidr = Ipv4Net::new(addr, 24).expect("24 is a valid prefix length");
        netlink_in(
            netns.ns(),
            || format!("configuring eth0 of host {name}"),
            |nl| {
                let lo = link_index(nl, "lo")?;
                nl.set_up(lo)?;
                let eth0 = link_index(nl, "eth0")?;
                nl.add_address(eth0, cidr)?;
                nl.set_up(eth0)
            },
        )?;
        self.hosts.push(Host {
            number: n,
            name,
            netns,
            addr,
            dir,
            router: None,
            static_net: None,
        });
        Ok(())
    }

    fn ensure_cni_bin(&self) -> Result<PathBuf> {
        let dir = self.cni_bin_dir();
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let link = dir.join("weft-net");
        if std::fs::symlink_metadata(&link).is_err() {
            let target = self.cfg.weft_bin.clone();
            std::os::unix::fs::symlink(&target, &link).ctx(|| {
                format!(
                    "creating symlink {} -> {}",
                    link.display(),
                    target.display()
                )
            })?;
        }
        Ok(link)
    }

    fn progress(&self, step: u32, msg: impl std::fmt::Display) {
        if self.cfg.progress {
            eprintln!("[{step}/4] {msg}");
        }
    }

    fn check_stop(&self, doing: &str) -> Result<()> {
        if signal::stop_requested() {
            return Err(Error::Interrupted(doing.to_string()));
        }
        Ok(())
    }

    // ----- accessors -----

    /// The lab id (`wl<pid>-<n>`), prefix of all its netns names.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The work directory (`<base>/<id>`).
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }
    /// `<workdir>/cni-bin` (holds the `weft-net` symlink).
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.workdir.join("cni-bin")
    }
    /// The configuration the lab was built with.
    pub fn config(&self) -> &LabConfig {
        &self.cfg
    }
    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }
    /// Host `n` (1-based). Panics if there is no such host.
    pub fn host(&self, n: usize) -> &Host {
        self.try_host(n).unwrap_or_else(|e| panic!("{e}"))
    }
    /// Host `n` (1-based), or an error naming the valid range.
    pub fn try_host(&self, n: usize) -> Result<&Host> {
        n.checked_sub(1)
            .and_then(|i| self.hosts.get(i))
            .ok_or_else(|| {
                Error::NoSuch(format!(
                    "lab {} has no host {n} (hosts are 1..={})",
                    self.id,
                    self.hosts.len()
                ))
            })
    }
    fn host_mut(&mut self, n: usize) -> Result<&mut Host> {
        let count = self.hosts.len();
        let id = self.id.clone();
        n.checked_sub(1)
            .and_then(|i| self.hosts.get_mut(i))
            .ok_or_else(|| {
                Error::NoSuch(format!("lab {id} has no host {n} (hosts are 1..={count})"))
            })
    }
    /// All hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
    /// Host `n`'s network namespace. Panics if there is no such host.
    pub fn host_netns(&self, n: usize) -> &NetNs {
        self.host(n).netns()
    }
    /// The underlay network namespace (holds bridge `ul0` and ports `h1`..`hN`).
    pub fn underlay_netns(&self) -> &NetNs {
        self.underlay
            .as_ref()
            .expect("the underlay exists for the lifetime of a Lab")
            .ns()
    }
    /// The underlay netns name.
    pub fn underlay_netns_name(&self) -> &str {
        self.underlay
            .as_ref()
            .expect("the underlay exists for the lifetime of a Lab")
            .name()
    }
    /// Host `n`'s router socket. Panics if there is no such host.
    pub fn router_socket(&self, n: usize) -> PathBuf {
        self.host(n).socket()
    }
    /// An HTTP client for host `n`'s router socket. Panics if there is no such host.
    pub fn http(&self, n: usize) -> UnixHttp {
        UnixHttp::new(self.router_socket(n)).with_user_agent("weft-lab")
    }
    /// PID of host `n`'s router, if one is running (as far as we know).
    pub fn router_pid(&self, n: usize) -> Option<u32> {
        self.try_host(n).ok()?.router.as_ref().map(Child::id)
    }
    /// All pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
    /// Pod `j` of host `host` (both 1-based). Panics if there is no such pod.
    pub fn pod(&self, host: usize, j: usize) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.host == host && p.index == j)
            .unwrap_or_else(|| panic!("lab {} has no pod h{host}p{j}", self.id))
    }
    /// The pod with this name (`h1p2`).
    pub fn pod_named(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    // ----- running things inside the lab -----

    /// Runs `cmd` inside host `n`'s netns and waits for it.
    pub fn exec_in_host(&self, n: usize, cmd: &mut Command) -> Result<Output> {
        exec::exec_in(self.try_host(n)?.netns(), cmd)
    }
    /// Starts `cmd` inside host `n`'s netns.
    pub fn spawn_in_host(&self, n: usize, cmd: &mut Command) -> Result<Child> {
        exec::spawn_in(self.try_host(n)?.netns(), cmd)
    }
    /// Runs `cmd` inside pod `h<host>p<j>`'s netns and waits for it.
    pub fn exec_in_pod(&self, host: usize, j: usize, cmd: &mut Command) -> Result<Output> {
        exec::exec_in(self.try_pod(host, j)?.netns(), cmd)
    }
    /// Starts `cmd` inside pod `h<host>p<j>`'s netns.
    pub fn spawn_in_pod(&self, host: usize, j: usize, cmd: &mut Command) -> Result<Child> {
        exec::spawn_in(self.try_pod(host, j)?.netns(), cmd)
    }
    /// Runs `cmd` inside the underlay netns and waits for it.
    pub fn exec_in_underlay(&self, cmd: &mut Command) -> Result<Output> {
        exec::exec_in(self.underlay_netns(), cmd)
    }
    /// Runs `f` with a netlink socket inside host `n`'s netns.
    pub fn netlink_in_host<R: Send>(
        &self,
        n: usize,
        f: impl FnOnce(&mut Netlink) -> weft_dataplane::Result<R> + Send,
    ) -> Result<R> {
        let host = self.try_host(n)?;
        netlink_in(host.netns(), || format!("netlink in host {}", host.name), f)
    }

    fn try_pod(&self, host: usize, j: usize) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.host == host && p.index == j)
            .ok_or_else(|| Error::NoSuch(format!("lab {} has no pod h{host}p{j}", self.id)))
    }

    // ----- routers -----

    /// The arguments `weft` gets for host `n`'s router (after the binary name).
    pub fn router_args(&self, n: usize, extra: &[String]) -> Result<Vec<OsString>> {
        let host = self.try_host(n)?;
        let mut a: Vec<OsString> = vec![
            "router".into(),
            "--nickname".into(),
            host.name.clone().into(),
            "--db-prefix".into(),
        ];
        let mut prefix = host.dir.clone().into_os_string();
        prefix.push("/weft-");
        a.push(prefix);
        a.push("--socket".into());
        a.push(host.socket().into_os_string());
        a.push("--metrics-addr".into());
        a.push(METRICS_ADDR.into());
        if let Some(r) = &self.cfg.ipalloc_range {
            a.push("--ipalloc-range".into());
            a.push(r.into());
        }
        // Every lab host shares the machine's /etc/machine-id, from which a router would derive
        // its name: give each one its own.
        a.push("--name".into());
        a.push(lab_peer_name(n).into());
        a.extend(self.cfg.extra_router_args.iter().map(OsString::from));
        a.extend(extra.iter().map(OsString::from));
        for other in &self.hosts {
            if other.number != n {
                a.push(other.addr.to_string().into());
            }
        }
        Ok(a)
    }

    /// Starts host `n`'s router and waits until it answers `GET /status` with 200.
    pub fn start_router(&mut self, n: usize) -> Result<()> {
        self.start_router_with(n, &[])
    }

    /// Like [`Lab::start_router`], with extra arguments for this router only.
    pub fn start_router_with(&mut self, n: usize, extra: &[String]) -> Result<()> {
        self.spawn_router(n, extra)?;
        self.wait_router_ready(n, self.cfg.ready_timeout)
    }

    /// Starts host `n`'s router without waiting for it.
    pub fn spawn_router(&mut self, n: usize, extra: &[String]) -> Result<u32> {
        if self.cfg.weft_bin.as_os_str().is_empty() {
            return Err(Error::Config(
                "weft_bin is empty: pass the path of the weft binary".into(),
            ));
        }
        let args = self.router_args(n, extra)?;
        let weft_bin = self.cfg.weft_bin.clone();
        let progress = self.cfg.progress;
        let password = self.cfg.password.clone();
        let host = self.host_mut(n)?;
        if let Some(child) = host.router.as_mut() {
            if child
                .try_wait()
                .ctx(|| "checking the router process".into())?
                .is_none()
            {
                return Err(Error::Config(format!(
                    "router {} is already running (pid {}); stop or kill it first",
                    host.name,
                    child.id()
                )));
            }
            host.router = None;
        }
        let log_path = host.router_log();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .ctx(|| format!("opening {}", log_path.display()))?;
        {
            use std::io::Write;
            let shown: Vec<String> = args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let _ = writeln!(
                log,
                "=== weft-lab: {} {}",
                weft_bin.display(),
                shown.join(" ")
            );
        }
        let log_err = log
            .try_clone()
            .ctx(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&weft_bin);
        if let Some(p) = &password {
            // Through the environment, as Weave does: not visible in the process list.
            cmd.env("WEAVE_PASSWORD", p);
        }
        cmd.args(&args)
            .current_dir(&host.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // Own process group: Ctrl-C at the terminal reaches only `weft lab`, which then tears
        // down in order (CNI DEL needs the routers).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = exec::spawn_in(host.netns.ns(), &mut cmd)?;
        let pid = child.id();
        host.router = Some(child);
        if progress {
            eprintln!("[2/4] started router {} (pid {pid})", host.name);
        }
        Ok(pid)
    }

    /// Polls `GET /status` on host `n`'s socket until it answers 200.
    pub fn wait_router_ready(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let client = self.http(n).with_timeout(Duration::from_secs(2));
        loop {
            let host = self.host_mut(n)?;
            let Some(child) = host.router.as_mut() else {
                return Err(Error::Config(format!(
                    "router {} is not running",
                    host.name
                )));
            };
            if let Some(status) = child
                .try_wait()
                .ctx(|| "checking the router process".into())?
            {
                host.router = None;
                return Err(Error::RouterExited {
                    host: host.name.clone(),
                    status: status.to_string(),
                    log: host.router_log(),
                    tail: log_tail(&host.router_log(), 20),
                });
            }
            let why = match client.get("/status") {
                Ok(r) if r.status == 200 => {
                    let name = host.name.clone();
                    self.progress(2, format!("router {name} ready"));
                    return Ok(());
                }
                Ok(r) => format!(
                    "last answer {} {}: {}",
                    r.status,
                    r.reason,
                    r.text().lines().next().unwrap_or("")
                ),
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= timeout {
                let host = self.try_host(n)?;
                return Err(Error::RouterNotReady {
                    host: host.name.clone(),
                    secs: timeout.as_secs(),
                    why,
                    log: host.router_log(),
                    tail: log_tail(&host.router_log(), 20),
                });
            }
            self.check_stop("waiting for routers")?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops host `n`'s router: SIGTERM, then SIGKILL after a grace period.
    pub fn stop_router(&mut self, n: usize) -> Result<ExitStatus> {
        let host = self.host_mut(n)?;
        let mut child = host
            .router
            .take()
            .ok_or_else(|| Error::NoSuch(format!("router {} is not running", host.name)))?;
        terminate(&mut child, STOP_GRACE)
    }

    /// Kills host `n`'s router with SIGKILL (a crash, for tests).
    pub fn kill_router(&mut self, n: usize) -> Result<ExitStatus> {
        let host = self.host_mut(n)?;
        let mut child = host
            .router
            .take()
            .ok_or_else(|| Error::NoSuch(format!("router {} is not running", host.name)))?;
        exec::kill9(&mut child)
    }

    /// Stops host `n`'s router (if running) and starts it again, waiting for readiness.
    pub fn restart_router(&mut self, n: usize) -> Result<()> {
        if self.try_host(n)?.router.is_some() {
            self.stop_router(n)?;
        }
        self.start_router(n)
    }

    /// `GET /status/peers` and `GET /status/ipam` of every running router, as text.
    pub fn status_text(&self) -> String {
        let mut out = String::new();
        for h in self.hosts.iter().filter(|h| h.router.is_some()) {
            let client = UnixHttp::new(h.socket()).with_user_agent("weft-lab");
            for (title, path) in [("peers", "/status/peers"), ("IPAM", "/status/ipam")] {
                out.push_str(&format!("--- {} ({}) {title} ---\n", h.name, h.addr));
                match client.get_text(path) {
                    Ok(t) => out.push_str(t.trim_end()),
                    Err(e) => out.push_str(&format!("(unavailable: {e})")),
                }
                out.push('\n');
            }
        }
        out
    }

    // ----- pods -----

    fn next_pod_index(&self, host: usize) -> usize {
        self.pods
            .iter()
            .filter(|p| p.host == host)
            .map(|p| p.index)
            .max()
            .unwrap_or(0)
            + 1
    }

    fn new_pod_netns(&self, host: usize) -> Result<(usize, String, NamedNetNs)> {
        self.try_host(host)?;
        let j = self.next_pod_index(host);
        let name = format!("h{host}p{j}");
        let ns = NamedNetNs::create(&format!("{}-{name}", self.id))
            .ctx(|| format!("creating netns {}-{name}", self.id))?;
        netlink_in(
            ns.ns(),
            || format!("bringing up lo in pod {name}"),
            |nl| {
                let lo = link_index(nl, "lo")?;
                nl.set_up(lo)
            },
        )?;
        Ok((j, name, ns))
    }

    fn cni_request(
        &self,
        host: usize,
        container_id: &str,
        netns_path: &Path,
    ) -> Result<CniRequest> {
        let plugin = self.ensure_cni_bin()?;
        Ok(CniRequest {
            plugin,
            cni_path: self.cni_bin_dir(),
            container_id: container_id.to_string(),
            netns_path: netns_path.to_path_buf(),
            ifname: "eth0".into(),
            config: CniRequest::weft_config(&self.try_host(host)?.socket()),
            timeout: self.cfg.cni_timeout,
        })
    }

    /// Creates a pod netns on `host` and attaches it by running the plugin's ADD (in the host's
    /// netns, as a runtime would). On failure the plugin's DEL is run, as the spec asks.
    pub fn add_cni_pod(&mut self, host: usize) -> Result<&Pod> {
        if self.cfg.weft_bin.as_os_str().is_empty() {
            return Err(Error::Config(
                "weft_bin is empty: pass the path of the weft binary".into(),
            ));
        }
        let (j, name, ns) = self.new_pod_netns(host)?;
        let container_id = format!("{}-{name}", self.id);
        let req = self.cni_request(host, &container_id, ns.ns().path())?;
        let host_ns = self.try_host(host)?.netns();
        // Like a kubelet, retry "try again later" (code 11: the router is not ready yet, e.g.
        // its IPAM is still agreeing on the first ring with its peers), within the CNI timeout.
        let deadline = std::time::Instant::now() + self.cfg.cni_timeout;
        let mut delay = Duration::from_millis(100);
        let add = loop {
            match cni::add(host_ns, &req, &name) {
                Err(Error::Cni { code: Some(11), .. })
                    if std::time::Instant::now() + delay < deadline =>
                {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                other => break other,
            }
        };
        let res = match add {
            Ok(r) => r,
            Err(e) => {
                if let Err(del) = cni::del(host_ns, &req, None, &name) {
                    if self.cfg.progress {
                        eprintln!("weft-lab: cleanup DEL of pod {name} after the failed ADD also failed: {del}");
                    }
                }
                return Err(e);
            }
        };
        self.progress(3, format!("attaching pod {name} ({})", res.address.addr()));
        self.pods.push(Pod {
            name,
            host,
            index: j,
            netns: ns,
            cidr: res.address,
            gateway: res.gateway,
            container_id,
            cni_result: Some(res.raw),
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Creates a pod netns on `host` and wires it by hand, without CNI: a veth whose host end
    /// (`vl<j>`) is enslaved to the existing bridge `bridge` in the host netns and whose pod end
    /// is `eth0` with address `cidr` and, if given, a default route via `gateway`.
    pub fn add_manual_pod(
        &mut self,
        host: usize,
        bridge: &str,
        cidr: Ipv4Net,
        gateway: Option<Ipv4Addr>,
    ) -> Result<&Pod> {
        let (j, name, ns) = self.new_pod_netns(host)?;
        let host_if = format!("vl{j}");
        let pod_fd = ns.ns().fd();
        let host_ns = self.try_host(host)?.netns();
        netlink_in(
            host_ns,
            || format!("attaching pod {name} to bridge {bridge}"),
            |nl| {
                let br = link_index(nl, bridge)?;
                nl.add_veth(&host_if, "eth0", None, Some(pod_fd))?;
                let port = link_index(nl, &host_if)?;
                nl.set_master(port, Some(br))?;
                nl.set_up(port)
            },
        )?;
        netlink_in(
            ns.ns(),
            || format!("configuring eth0 of pod {name}"),
            |nl| {
                let eth0 = link_index(nl, "eth0")?;
                nl.add_address(eth0, cidr)?;
                nl.set_up(eth0)?;
                if let Some(gw) = gateway {
                    nl.add_route(&Route {
                        dst: Ipv4Net::default(),
                        gateway: Some(gw),
                        oif: Some(eth0),
                        scope_link: false,
                    })?;
                }
                Ok(())
            },
        )?;
        self.progress(3, format!("attaching pod {name} ({}) by hand", cidr.addr()));
        let container_id = format!("{}-{name}", self.id);
        self.pods.push(Pod {
            name,
            host,
            index: j,
            netns: ns,
            cidr,
            gateway,
            container_id,
            cni_result: None,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// A baseline network without Weft (for harness tests and benchmark comparisons): in every
    /// host, a bridge `bridge` holding the `.254` address of the host's /24 taken from
    /// `supernet` (host `n` gets the `n`-th /24), IP forwarding on, and a route to every other
    /// host's /24 via its underlay address. Then use [`Lab::add_static_pod`].
    pub fn setup_static_routing(&mut self, bridge: &str, supernet: Ipv4Net) -> Result<()> {
        let subnets: Vec<Ipv4Net> = supernet
            .subnets(24)
            .map_err(|_| Error::Config(format!("{supernet} is smaller than a /24")))?
            .take(self.hosts.len() + 1)
            .collect();
        if subnets.len() <= self.hosts.len() {
            return Err(Error::Config(format!(
                "{supernet} has fewer than {} /24 subnets; use a larger range",
                self.hosts.len() + 1
            )));
        }
        let plan: Vec<(Ipv4Net, Ipv4Addr)> = self
            .hosts
            .iter()
            .map(|h| (subnets[h.number], h.addr))
            .collect();
        for h in &mut self.hosts {
            let mine = subnets[h.number];
            let gw = Ipv4Net::new(Ipv4Addr::from(u32::from(mine.network()) | 254), 24)
                .expect("24 is a valid prefix length");
            let others: Vec<(Ipv4Net, Ipv4Addr)> =
                plan.iter().filter(|(n, _)| *n != mine).copied().collect();
            netlink_in(
                h.netns.ns(),
                || format!("setting up static routing in host {}", h.name),
                |nl| {
                    let br = nl.add_bridge(bridge, None)?;
                    nl.add_address(br.index, gw)?;
                    nl.set_up(br.index)?;
                    for (dst, via) in others {
                        nl.add_route(&Route {
                            dst,
                            gateway: Some(via),
                            oif: None,
                            scope_link: false,
                        })?;
                    }
                    weft_dataplane::sysctl::set("net.ipv4.ip_forward", "1")
                },
            )?;
            h.static_net = Some((bridge.to_string(), mine));
        }
        Ok(())
    }

    /// Adds a pod to `host` on the static network of [`Lab::setup_static_routing`]: address
    /// `.j` of the host's /24, default route via `.254`.
    pub fn add_static_pod(&mut self, host: usize) -> Result<&Pod> {
        let (bridge, net) = self.try_host(host)?.static_net.clone().ok_or_else(|| {
            Error::Config(format!(
                "host h{host} has no static network; call setup_static_routing first"
            ))
        })?;
        let j = self.next_pod_index(host);
        if j > 253 {
            return Err(Error::Config(format!(
                "host h{host} has no free static address left"
            )));
        }
        let base = u32::from(net.network());
        let cidr =
            Ipv4Net::new(Ipv4Addr::from(base | j as u32), 24).expect("24 is a valid prefix length");
        self.add_manual_pod(host, &bridge, cidr, Some(Ipv4Addr::from(base | 254)))
    }

    /// Detaches a pod (CNI DEL for CNI pods) and removes its netns.
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let i = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| Error::NoSuch(format!("lab {} has no pod {name}", self.id)))?;
        let pod = self.pods.remove(i);
        self.release_pod(pod)
    }

    fn release_pod(&self, pod: Pod) -> Result<()> {
        let res = match &pod.cni_result {
            Some(prev) => {
                let req = self.cni_request(pod.host, &pod.container_id, pod.netns_path())?;
                let host_ns = self.try_host(pod.host)?.netns();
                cni::del(host_ns, &req, Some(prev), &pod.name)
            }
            None => Ok(()),
        };
        drop(pod); // removes the netns (and with it the pod's end of the veth pair)
        res
    }

    // ----- reachability -----

    /// Every pod pings every other pod (in parallel, one thread per source pod).
    pub fn ping_matrix(&self) -> Matrix {
        self.ping_matrix_with(&self.cfg.ping)
    }

    /// [`Lab::ping_matrix`] with explicit ping options.
    pub fn ping_matrix_with(&self, opts: &PingOptions) -> Matrix {
        let mut pods: Vec<&Pod> = self.pods.iter().collect();
        pods.sort_by_key(|p| (p.host, p.index));
        let addrs: Vec<Ipv4Addr> = pods.iter().map(|p| p.addr()).collect();
        let cells = std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let targets: Vec<Ipv4Addr> = addrs
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| *k != i)
                        .map(|(_, a)| *a)
                        .collect();
                    s.spawn(move || ping_in(p.netns(), &targets, opts))
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(i, h)| {
                    let outcomes = match h.join() {
                        Ok(Ok(v)) => v,
                        Ok(Err(e)) => vec![
                            PingOutcome::Failed {
                                reason: e.to_string()
                            };
                            addrs.len() - 1
                        ],
                        Err(_) => vec![
                            PingOutcome::Failed {
                                reason: "the ping thread panicked".into()
                            };
                            addrs.len() - 1
                        ],
                    };
                    let mut row: Vec<Option<PingOutcome>> =
                        outcomes.into_iter().map(Some).collect();
                    row.insert(i, None);
                    row
                })
                .collect()
        });
        let mut cells: Vec<Vec<Option<PingOutcome>>> = cells;
        // A reply from an address that several pods hold proves nothing (a pod may be
        // answering itself): such pairs fail, saying why.
        for (k, a) in addrs.iter().enumerate() {
            let holders: Vec<&str> = pods
                .iter()
                .zip(&addrs)
                .filter(|(_, b)| *b == a)
                .map(|(p, _)| p.name.as_str())
                .collect();
            if holders.len() > 1 {
                for row in cells.iter_mut() {
                    if let Some(cell) = row.get_mut(k).and_then(Option::as_mut) {
                        *cell = PingOutcome::Failed {
                            reason: format!("{a} is held by several pods ({})", holders.join(", ")),
                        };
                    }
                }
            }
        }
        Matrix {
            names: pods.iter().map(|p| p.name.clone()).collect(),
            addrs,
            cells,
        }
    }

    /// Re-runs the matrix until every pair answers, `timeout` passes, or a stop is requested;
    /// returns the last matrix. Use this rather than a single [`Lab::ping_matrix`] right after
    /// building: links and routes take a moment to become usable (the kernel activates a veth's
    /// queue asynchronously), and a mesh takes time to converge.
    pub fn settled_matrix(&self, timeout: Duration) -> Matrix {
        self.wait_matrix(timeout, Matrix::all_ok)
    }

    /// Re-runs the matrix until `done(&matrix)` holds, `timeout` passes, or a stop is
    /// requested; returns the last matrix.
    pub fn wait_matrix(&self, timeout: Duration, done: impl Fn(&Matrix) -> bool) -> Matrix {
        let start = Instant::now();
        loop {
            let m = self.ping_matrix();
            if done(&m) || start.elapsed() >= timeout || signal::stop_requested() {
                return m;
            }
            self.progress(
                4,
                format!("{}; waiting for the network to settle", m.summary()),
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A summary of the lab with the given matrix and connections.
    pub fn report(&self, matrix: &Matrix, connections: &Connections) -> LabReport {
        LabReport {
            id: self.id.clone(),
            workdir: self.workdir.clone(),
            hosts: self
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.addr, h.netns.name().to_string()))
                .collect(),
            pods: self
                .pods
                .iter()
                .map(|p| (p.name.clone(), p.cidr, p.netns.name().to_string()))
                .collect(),
            matrix: matrix.clone(),
            connections: connections.clone(),
        }
    }

    // ----- teardown -----

    /// Tears the lab down and reports anything that went wrong (the rest is still cleaned up).
    pub fn shutdown(mut self) -> Result<()> {
        let problems = self.teardown();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown(problems))
        }
    }

    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let progress = self.cfg.progress;
        let say = |msg: String| {
            if progress {
                eprintln!("[teardown] {msg}");
            }
        };
        let mut problems = Vec::new();
        // 1. Pods, newest first, through the plugin while the routers still run.
        let pods = std::mem::take(&mut self.pods);
        let mut names: Vec<String> = pods.iter().map(|p| p.netns.name().to_string()).collect();
        for pod in pods.into_iter().rev() {
            let name = pod.name.clone();
            if pod.cni_result.is_some() {
                say(format!("DEL pod {name}"));
            }
            if let Err(e) = self.release_pod(pod) {
                problems.push(e.to_string());
            }
        }
        // 2. Routers.
        for h in &mut self.hosts {
            if let Some(mut child) = h.router.take() {
                let pid = child.id();
                say(format!("stopping router {} (pid {pid})", h.name));
                if let Err(e) = terminate(&mut child, STOP_GRACE) {
                    problems.push(format!("stopping router {} (pid {pid}): {e}", h.name));
                }
            }
        }
        // 3. Network namespaces: hosts, then the underlay.
        names.extend(self.hosts.iter().map(|h| h.netns.name().to_string()));
        self.hosts.clear();
        if let Some(ul) = self.underlay.take() {
            names.push(ul.name().to_string());
        }
        say(format!("removed {} network namespaces", names.len()));
        for n in &names {
            if Path::new(NETNS_DIR).join(n).exists() {
                problems.push(format!(
                    "netns {n} still exists after removal; remove it with `ip netns del {n}`"
                ));
            }
        }
        // 4. The work directory.
        if self.cfg.keep_workdir {
            say(format!("keeping {}", self.workdir.display()));
        } else if let Err(e) = std::fs::remove_dir_all(&self.workdir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("removing {}: {e}", self.workdir.display()));
            }
        }
        say(format!("lab {} is gone", self.id));
        problems
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in self.teardown() {
            eprintln!("weft-lab: teardown of lab {}: {p}", self.id);
        }
    }
}

/// The peer name lab host `n` runs under (unique within a lab, locally administered).
pub fn lab_peer_name(n: usize) -> String {
    format!("02:77:00:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff)
}
