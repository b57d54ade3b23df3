//! `weft router`: the node agent.
//!
//! Start-up is synchronous kernel and store work (identity, the `weave` bridge, the IPAM store,
//! the bridge's own address); then a tokio runtime serves Weave's HTTP API on TCP and on a unix
//! socket, and Prometheus metrics, until SIGTERM/SIGINT.

mod api;
mod dp_iface;
mod mesh;
mod metrics;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::Args;
use ipnet::Ipv4Net;
use weft_dataplane::bridge::{ensure_bridge, BridgeConfig};
use weft_dataplane::netlink::Netlink;
use weft_ipam::local::LocalAllocator;

use crate::identity;

pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";
/// The IPAM ID under which the bridge's own address is held (Weave's name for it).
pub const EXPOSE_ID: &str = "weave:expose";

#[derive(Args, Debug, Clone)]
pub struct RouterArgs {
    /// Peer name (a MAC, e.g. 02:00:00:00:00:01). Default: the bridge's MAC, else derived from
    /// /etc/machine-id as Weave does, else random (and kept in the store).
    #[arg(long, env = "WEFT_NAME")]
    pub name: Option<String>,
    /// Nickname shown next to the peer name. Default: the host name.
    #[arg(long, env = "HOSTNAME")]
    pub nickname: Option<String>,
    /// Name of the node's bridge.
    #[arg(long, default_value = "weave", env = "WEFT_BRIDGE")]
    pub bridge: String,
    /// MTU of the bridge and of pod interfaces.
    #[arg(long, env = "WEAVE_MTU", default_value_t = 1376)]
    pub mtu: u32,
    /// The address range shared by all peers.
    #[arg(long, env = "IPALLOC_RANGE", default_value = "10.32.0.0/12")]
    pub ipalloc_range: Ipv4Net,
    /// The subnet pods get addresses from when they ask for none in particular. Default: the range.
    #[arg(long, env = "IPALLOC_DEFAULT_SUBNET")]
    pub ipalloc_default_subnet: Option<Ipv4Net>,
    /// Fixed address for the bridge (CIDR), instead of the first free one.
    #[arg(long, env = "WEAVE_EXPOSE_IP")]
    pub expose_ip: Option<Ipv4Net>,
    /// Path prefix of the persistent store; the file is `<prefix>data.db`.
    #[arg(long, env = "DB_PREFIX", default_value = "/var/lib/weft/weft-net")]
    pub db_prefix: String,
    /// TCP address of the HTTP API (Weave's control port). Empty disables it.
    #[arg(long, env = "WEAVE_HTTP_ADDR", default_value = "127.0.0.1:6784")]
    pub http_addr: String,
    /// Unix socket of the HTTP API, used by the CNI plugin and the CLI (mode 0600).
    #[arg(long, env = "WEFT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Address of the Prometheus `/metrics` endpoint. Empty disables it.
    #[arg(long, env = "WEAVE_METRICS_ADDR", default_value = "0.0.0.0:6782")]
    pub metrics_addr: String,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `weft=debug`.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log_level: String,
    /// TCP port of the mesh (and, later, UDP port of the sleeve overlay).
    #[arg(long, env = "WEAVE_PORT", default_value_t = mesh::DEFAULT_PORT)]
    pub port: u16,
    /// Most mesh connections (0: unlimited).
    #[arg(long, env = "CONN_LIMIT", default_value_t = 200)]
    pub conn_limit: usize,
    /// Do not connect to peers learnt from the topology, only to the given ones.
    #[arg(long)]
    pub no_discovery: bool,
    /// Encrypt the mesh with this password (all peers must use the same one).
    #[arg(long, env = "WEAVE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Peers to connect to (host[:port]); also `WEAVE_PEERS`, space-separated.
    #[arg(env = "WEAVE_PEERS", value_delimiter = ' ')]
    pub peers: Vec<String>,
}

/// Validated router configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub bridge: String,
    pub mtu: u32,
    pub range: Ipv4Net,
    pub default_subnet: Ipv4Net,
    pub db_path: PathBuf,
    pub http_addr: Option<SocketAddr>,
    pub socket: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub expose_ip: Option<Ipv4Net>,
    pub mesh: mesh::MeshOptions,
}

impl Config {
    pub fn from_args(a: &RouterArgs) -> anyhow::Result<Config> {
        let range = a.ipalloc_range.trunc();
        if range != a.ipalloc_range {
            bail!(
                "--ipalloc-range {} has host bits set; did you mean {range}?",
                a.ipalloc_range
            );
        }
        if range.prefix_len() > 30 {
            bail!("--ipalloc-range {range} is too small: use a prefix of /30 or shorter");
        }
        let default_subnet = a.ipalloc_default_subnet.unwrap_or(range).trunc();
        if !(range.contains(&default_subnet.network()) || default_subnet.contains(&range.network()))
        {
            bail!("--ipalloc-default-subnet {default_subnet} does not overlap --ipalloc-range {range}");
        }
        if !(68..=65535).contains(&a.mtu) {
            bail!(
                "MTU {} is out of range: use a value between 68 and 65535",
                a.mtu
            );
        }
        if let Some(ip) = a.expose_ip {
            if !range.contains(&ip.addr()) {
                bail!("WEAVE_EXPOSE_IP {ip} is outside --ipalloc-range {range}");
            }
        }
        let parse_addr = |s: &str, what: &str| -> anyhow::Result<Option<SocketAddr>> {
            if s.is_empty() {
                return Ok(None);
            }
            s.parse()
                .map(Some)
                .with_context(|| format!("{what} {s:?} is not an address:port"))
        };
        Ok(Config {
            bridge: a.bridge.clone(),
            mtu: a.mtu,
            range,
            default_subnet,
            db_path: PathBuf::from(format!("{}data.db", a.db_prefix)),
            http_addr: parse_addr(&a.http_addr, "--http-addr")?,
            socket: a.socket.clone(),
            metrics_addr: parse_addr(&a.metrics_addr, "--metrics-addr")?,
            expose_ip: a.expose_ip,
            mesh: mesh::MeshOptions {
                port: a.port,
                listen: None,
                password: a
                    .password
                    .clone()
                    .filter(|p| !p.is_empty())
                    .map(String::into_bytes),
                conn_limit: a.conn_limit,
                peer_discovery: !a.no_discovery,
                peers: a.peers.iter().filter(|p| !p.is_empty()).cloned().collect(),
                overlays: None,
            },
        })
    }
}

/// Everything the HTTP handlers share.
pub struct State {
    pub cfg: Config,
    pub alloc: Mutex<LocalAllocator>,
    pub bridge_index: u32,
    pub mesh: mesh::MeshHandle,
    pub ready: AtomicBool,
    pub metrics: metrics::Metrics,
}

impl State {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Locks the allocator. A poisoned lock (a panic while holding it) still holds a consistent
    /// allocator, because every mutation commits to the store before changing memory.
    pub fn alloc(&self) -> std::sync::MutexGuard<'_, LocalAllocator> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn run(args: RouterArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level);
    let cfg = Config::from_args(&args)?;
    let nickname = match &args.nickname {
        Some(n) if !n.is_empty() => n.clone(),
        _ => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "weft".into()),
    };

    let mut nl = Netlink::open().context("opening a netlink socket")?;
    let existing_bridge_mac = nl
        .link_by_name(&cfg.bridge)
        .context("looking up the bridge")?
        .and_then(|l| l.mac);
    if let Some(dir) = cfg.db_path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the store directory {}", dir.display()))?;
    }
    let identity = identity::resolve(
        args.name.as_deref(),
        existing_bridge_mac,
        &cfg.db_path,
        nickname,
    )?;
    tracing::info!(name = %identity.name, nickname = %identity.nickname, source = identity.source, "peer identity");

    let (mut alloc, report) = LocalAllocator::open(
        &cfg.db_path,
        cfg.range,
        cfg.default_subnet,
        &identity.name.to_string(),
    )
    .with_context(|| format!("opening the IPAM store {}", cfg.db_path.display()))?;
    if let Some(why) = &report.discarded_reason {
        tracing::warn!("discarded persisted IPAM state: {why}");
    } else if report.restored {
        tracing::info!(ids = report.owned_ids, "restored IPAM state");
    }

    let bridge = ensure_bridge(
        &mut nl,
        &BridgeConfig {
            name: cfg.bridge.clone(),
            mtu: cfg.mtu,
            mac: Some(identity.name.to_name_bytes()),
        },
    )
    .with_context(|| format!("setting up the bridge {}", cfg.bridge))?;
    let bridge_ip = expose_bridge(&mut nl, &mut alloc, &cfg, bridge.index)?;
    tracing::info!(bridge = %cfg.bridge, ip = %bridge_ip, mtu = cfg.mtu, "bridge ready");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mesh = mesh::start(&identity, cfg.mesh.clone(), None).await?;
        let state = Arc::new(State {
            metrics: metrics::Metrics::new(),
            cfg,
            alloc: Mutex::new(alloc),
            bridge_index: bridge.index,
            mesh,
            ready: AtomicBool::new(false),
        });
        api::serve(state).await
    })
}

/// Gives the bridge its address from IPAM under [`EXPOSE_ID`]: an address the bridge already
/// has inside the range is claimed (so a restart keeps it), else the fixed `WEAVE_EXPOSE_IP`,
/// else the first free address.
fn expose_bridge(
    nl: &mut Netlink,
    alloc: &mut LocalAllocator,
    cfg: &Config,
    bridge_index: u32,
) -> anyhow::Result<Ipv4Net> {
    let present: Vec<Ipv4Net> = nl
        .addresses(bridge_index)
        .context("reading the bridge's addresses")?
        .into_iter()
        .filter(|a| cfg.range.contains(&a.addr()))
        .collect();
    let wanted = match (cfg.expose_ip, present.first()) {
        (Some(ip), _) => {
            alloc
                .claim(EXPOSE_ID, ip, false)
                .with_context(|| format!("claiming the bridge address {ip}"))?;
            ip
        }
        (None, Some(&have)) => {
            alloc
                .claim(EXPOSE_ID, have, false)
                .with_context(|| format!("claiming the bridge's existing address {have}"))?;
            have
        }
        (None, None) => alloc
            .allocate(EXPOSE_ID, None, false)
            .context("allocating the bridge address")?,
    };
    for stale in present.iter().filter(|a| **a != wanted) {
        tracing::info!(addr = %stale, "removing a stale bridge address");
        nl.del_address(bridge_index, *stale)?;
    }
    if !present.contains(&wanted) {
        nl.add_address(bridge_index, wanted)
            .with_context(|| format!("adding {wanted} to the bridge"))?;
    }
    Ok(wanted)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Removes a stale unix socket left by a previous router, refusing to if one still answers.
pub fn prepare_socket_path(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another router is already serving {}; stop it first or pass --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    Ok(())
}

/// Number of addresses in a range (Weave's `RangeNumIPs`).
pub fn range_size(net: Ipv4Net) -> u64 {
    1u64 << (32 - u32::from(net.prefix_len()))
}
