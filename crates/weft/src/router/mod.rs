//! `weft router`: the node agent.
//!
//! Start-up is synchronous kernel and store work (identity, the `weave` bridge, the IPAM store,
//! the bridge's own address); then a tokio runtime serves Weave's HTTP API on TCP and on a unix
//! socket, and Prometheus metrics, until SIGTERM/SIGINT.

mod api;
mod dataplane;
mod dp_iface;
mod ipam;
mod mesh;
mod metrics;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use ipnet::Ipv4Net;
use weft_dataplane::bridge::{ensure_bridge, BridgeConfig};
use weft_dataplane::netlink::Netlink;
use weft_ipam::allocator::{AllocatorConfig, InitMode};
use weft_ipam::node::NodeIpam;
use weft_wire::PeerName;

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
    /// MTU of the bridge and of pod interfaces. Default: the underlay's MTU minus the largest
    /// encapsulation overhead in use.
    #[arg(long, env = "WEAVE_MTU")]
    pub mtu: Option<u32>,
    /// Do not use the kernel VXLAN fast path; carry all traffic in the sleeve overlay.
    #[arg(long, env = "WEAVE_NO_FASTDP", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub no_fastdp: bool,
    /// Run the mesh and IPAM without a data plane: no overlays are advertised and connections
    /// count as established once their handshake is done. For control-plane-only peers and for
    /// interoperability tests against a bare Weave mesh peer.
    #[arg(long, env = "WEFT_MESH_ONLY", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub mesh_only: bool,
    /// Masquerade pod traffic to this node's own addresses too (Weave's NO_MASQ_LOCAL=0).
    #[arg(long, env = "NO_MASQ_LOCAL", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub no_masq_local: bool,
    /// The address range shared by all peers.
    #[arg(long, env = "IPALLOC_RANGE", default_value = "10.32.0.0/12")]
    pub ipalloc_range: Ipv4Net,
    /// The subnet pods get addresses from when they ask for none in particular. Default: the range.
    #[arg(long, env = "IPALLOC_DEFAULT_SUBNET")]
    pub ipalloc_default_subnet: Option<Ipv4Net>,
    /// How the first IPAM ring is made: `consensus[=N]` (Paxos among N peers; default N from
    /// the number of peers given), `seed=NAME,...` (the same list on every peer), `observer`.
    #[arg(long, env = "IPALLOC_INIT")]
    pub ipalloc_init: Option<String>,
    /// How long an allocation may wait for other peers (consensus, space) before failing.
    #[arg(long, env = "WEFT_IPAM_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub ipam_timeout: std::time::Duration,
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
    pub mtu: Option<u32>,
    pub fastdp: bool,
    pub mesh_only: bool,
    pub no_masq_local: bool,
    pub range: Ipv4Net,
    pub default_subnet: Ipv4Net,
    pub db_path: PathBuf,
    pub http_addr: Option<SocketAddr>,
    pub socket: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub expose_ip: Option<Ipv4Net>,
    pub mesh: mesh::MeshOptions,
    pub init: InitMode,
    pub ipam_timeout: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s or 500ms"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" | "" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?}; use ms, s or m")),
    }
}

/// Parses `IPALLOC_INIT` as Weave does; without it, consensus with a quorum from the number of
/// peers given (`(targets+1)/2 + 1`).
fn parse_init(spec: Option<&str>, targets: usize) -> anyhow::Result<InitMode> {
    use weft_ipam::paxos::{quorum_for_consensus, quorum_for_targets};
    let spec = spec.map(str::trim).filter(|s| !s.is_empty());
    Ok(match spec {
        None | Some("consensus") => InitMode::Consensus {
            quorum: quorum_for_targets(targets),
        },
        Some("observer") => InitMode::Observer,
        Some(s) if s.starts_with("consensus=") => {
            let n: u32 = s["consensus=".len()..].parse().map_err(|_| {
                anyhow::anyhow!(
                    "IPALLOC_INIT {s:?}: the count after consensus= must be a number of peers"
                )
            })?;
            if n == 0 {
                bail!("IPALLOC_INIT {s:?}: consensus needs at least one peer");
            }
            InitMode::Consensus {
                quorum: quorum_for_consensus(n),
            }
        }
        Some(s) if s.starts_with("seed=") => {
            let names: Result<Vec<PeerName>, _> = s["seed=".len()..]
                .split(',')
                .map(|n| n.trim().parse::<PeerName>())
                .collect();
            let names = names.map_err(|e| anyhow::anyhow!("IPALLOC_INIT {s:?}: {e}"))?;
            if names.is_empty() {
                bail!("IPALLOC_INIT {s:?}: name at least one peer");
            }
            InitMode::Seed(names)
        }
        Some(s) => bail!("IPALLOC_INIT {s:?} is not one of consensus[=N], seed=NAME,..., observer"),
    })
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
        if let Some(mtu) = a.mtu {
            if !(552..=65535).contains(&mtu) {
                bail!("WEAVE_MTU {mtu} is out of range: use a value between 552 and 65535");
            }
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
            fastdp: !a.no_fastdp,
            mesh_only: a.mesh_only,
            no_masq_local: a.no_masq_local,
            range,
            default_subnet,
            db_path: PathBuf::from(format!("{}data.db", a.db_prefix)),
            http_addr: parse_addr(&a.http_addr, "--http-addr")?,
            socket: a.socket.clone(),
            metrics_addr: parse_addr(&a.metrics_addr, "--metrics-addr")?,
            expose_ip: a.expose_ip,
            init: parse_init(
                a.ipalloc_init.as_deref(),
                a.peers.iter().filter(|p| !p.is_empty()).count(),
            )?,
            ipam_timeout: a.ipam_timeout,
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
    pub bridge_index: u32,
    pub mesh: mesh::MeshHandle,
    /// The data plane's counters (`None` in mesh-only mode).
    pub dp_stats: Option<Arc<dataplane::Stats>>,
    pub ready: AtomicBool,
    pub metrics: metrics::Metrics,
}

impl State {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
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

    let (mut ipam, report) = NodeIpam::open(
        &cfg.db_path,
        AllocatorConfig {
            peer: identity.name,
            uid: identity.uid,
            nickname: identity.nickname.clone(),
            universe: cfg.range,
            default_subnet: cfg.default_subnet,
            init: cfg.init.clone(),
        },
    )
    .with_context(|| format!("opening the IPAM store {}", cfg.db_path.display()))?;
    ipam.set_op_timeout(cfg.ipam_timeout);
    if let Some(why) = &report.discarded_reason {
        tracing::warn!("discarded persisted IPAM state: {why}");
    } else if report.restored {
        tracing::info!(ids = report.owned_ids, "restored IPAM state");
    }

    let mtu = dataplane::derive_mtu(&mut nl, cfg.mtu, cfg.mesh.password.is_some(), cfg.fastdp)
        .context("working out the overlay MTU")?;
    let bridge = ensure_bridge(
        &mut nl,
        &BridgeConfig {
            name: cfg.bridge.clone(),
            mtu,
            mac: Some(identity.name.to_name_bytes()),
        },
    )
    .with_context(|| format!("setting up the bridge {}", cfg.bridge))?;
    tracing::info!(bridge = %cfg.bridge, mtu, "bridge ready");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let mut mesh_opts = cfg.mesh.clone();
        let link = if cfg.mesh_only {
            tracing::warn!("mesh-only mode: no data plane, pods on other nodes are not reachable");
            None
        } else {
            let (to_dp, from_mesh) = tokio::sync::mpsc::unbounded_channel();
            let (to_mesh, from_dp) = tokio::sync::mpsc::unbounded_channel();
            let dp = dataplane::start(
                dataplane::DataPlaneParams {
                    local: identity.name,
                    bridge: cfg.bridge.clone(),
                    bridge_index: bridge.index,
                    bridge_mac: identity.name.to_name_bytes(),
                    mtu,
                    port: cfg.mesh.port,
                    fastdp: cfg.fastdp,
                    encrypted: cfg.mesh.password.is_some(),
                    range: cfg.range,
                    no_masq_local: cfg.no_masq_local,
                },
                from_mesh,
                to_mesh,
            )
            .context("starting the data plane")?;
            mesh_opts.overlays = Some(dp.overlays_feature.clone());
            Some((
                dp,
                mesh::DataPlaneLink {
                    to: to_dp,
                    from: from_dp,
                },
            ))
        };
        let (dp, link) = match link {
            Some((dp, link)) => (Some(dp), Some(link)),
            None => (None, None),
        };
        let mesh = mesh::start(&identity, mesh_opts, link, ipam).await?;
        let state = Arc::new(State {
            metrics: metrics::Metrics::new(),
            cfg,
            bridge_index: bridge.index,
            mesh,
            dp_stats: dp.as_ref().map(|d| d.stats.clone()),
            ready: AtomicBool::new(false),
        });
        tokio::spawn(expose_bridge(state.clone()));
        let served = api::serve(state).await;
        drop(dp);
        served
    })
}

/// Gives the bridge its address from IPAM under [`EXPOSE_ID`], as `weave expose` does: an
/// address the bridge already has inside the range is claimed (so a restart keeps it), else
/// the fixed `WEAVE_EXPOSE_IP`, else the first free one. IPAM may have to wait for the first
/// ring (consensus with other peers), so this retries until it succeeds; until then the CNI
/// plugin answers "try again later".
async fn expose_bridge(st: Arc<State>) {
    let index = st.bridge_index;
    let range = st.cfg.range;
    let present: Vec<Ipv4Net> =
        match tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Ipv4Net>> {
            let mut nl = Netlink::open()?;
            Ok(nl
                .addresses(index)?
                .into_iter()
                .filter(|a| range.contains(&a.addr()))
                .collect())
        })
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::error!("reading the bridge's addresses: {e:#}");
                Vec::new()
            }
            Err(e) => {
                tracing::error!("reading the bridge's addresses: {e}");
                Vec::new()
            }
        };
    let mut delay = std::time::Duration::from_millis(200);
    let wanted = loop {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let cmd = match (st.cfg.expose_ip, present.first()) {
            (Some(ip), _) | (None, Some(&ip)) => ipam::IpamCmd::Claim {
                id: EXPOSE_ID.into(),
                cidr: ip,
                is_container: false,
                reply,
            },
            (None, None) => ipam::IpamCmd::Allocate {
                id: EXPOSE_ID.into(),
                subnet: None,
                is_container: false,
                reply,
            },
        };
        if !st.mesh.ipam(cmd) {
            return;
        }
        match rx.await {
            Ok(Ok(net)) => break net,
            Ok(Err(e)) => tracing::warn!("the bridge has no address yet: {}", e.msg),
            Err(_) => return,
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    };
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut nl = Netlink::open()?;
        for stale in present.iter().filter(|a| **a != wanted) {
            tracing::info!(addr = %stale, "removing a stale bridge address");
            nl.del_address(index, *stale)?;
        }
        if !present.contains(&wanted) {
            nl.add_address(index, wanted)?;
        }
        Ok(())
    })
    .await;
    match result {
        Ok(Ok(())) => tracing::info!(ip = %wanted, "bridge address set"),
        Ok(Err(e)) => tracing::error!("adding {wanted} to the bridge: {e:#}"),
        Err(e) => tracing::error!("adding {wanted} to the bridge: {e}"),
    }
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
