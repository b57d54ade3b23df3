//! The tokio driver of the sans-IO mesh core (`weft-mesh`).
//!
//! One actor task owns the [`Mesh`]: it is fed commands (connections up and down, received
//! frames, dial results, API requests) and timer expiries, and it carries out the actions the
//! mesh returns (send a frame, close, dial). Each TCP connection runs the byte-level handshake
//! of `weft-wire` in its own task, then a reader (frames → actor) and a writer (actor → frames).
//! Nothing here decides anything about the protocol: that all lives in the core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use weft_mesh::{Action, ConnId, ConnectionParams, Mesh, MeshConfig, MeshStatus, Millis};
use weft_wire::framing::{FrameReader, FrameWriter};
use weft_wire::handshake::{Features, Handshake, HandshakeParams, Progress};
use weft_wire::ShortId;

use super::dp_iface::{ConnInfo, FromDataPlane, ToDataPlane};
use super::ipam::{self, IpamCmd, IpamHandler};
use crate::identity::Identity;

/// Weave's mesh port.
pub const DEFAULT_PORT: u16 = 6783;
/// The header exchange must finish within this long (Weave's `headerTimeout`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often IPAM retries requests, checks deadlines and re-proposes.
const IPAM_TICK: Duration = Duration::from_millis(500);
/// Frames queued for one connection before it counts as stuck.
const WRITE_QUEUE: usize = 4096;

#[derive(Debug, Clone)]
pub struct MeshOptions {
    pub port: u16,
    pub listen: Option<SocketAddr>,
    pub password: Option<Vec<u8>>,
    pub conn_limit: usize,
    pub peer_discovery: bool,
    pub peers: Vec<String>,
    /// Our `Overlays` feature (e.g. "weft-vxlan sleeve"); `None` when there is no data plane.
    pub overlays: Option<String>,
}

/// The data plane's ends of the channels (see `dp_iface`); `None` runs the mesh alone, with
/// connections counted as established as soon as they are up.
pub struct DataPlaneLink {
    pub to: mpsc::UnboundedSender<ToDataPlane>,
    pub from: mpsc::UnboundedReceiver<FromDataPlane>,
}

enum Cmd {
    Up {
        params: ConnectionParams,
        info: Box<ConnInfo>,
        writer: mpsc::Sender<Vec<u8>>,
        reply: oneshot::Sender<Result<ConnId, String>>,
    },
    Msg {
        conn: ConnId,
        body: Vec<u8>,
    },
    Down {
        conn: ConnId,
        reason: String,
    },
    DialFailed {
        addr: String,
        error: String,
        permanent: bool,
    },
    Connect {
        peers: Vec<String>,
        replace: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Forget {
        peers: Vec<String>,
    },
    Status {
        reply: oneshot::Sender<(MeshStatus, ConnAttrs)>,
    },
    Ipam(IpamCmd),
}

/// Overlay attributes per connection, as the data plane last reported them.
pub type ConnAttrs = HashMap<ConnId, std::collections::BTreeMap<String, String>>;

/// What the HTTP API holds to talk to the mesh.
#[derive(Clone)]
pub struct MeshHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    pub encrypted: bool,
}

impl MeshHandle {
    pub async fn status(&self) -> Option<(MeshStatus, ConnAttrs)> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Status { reply }).ok()?;
        rx.await.ok()
    }

    pub async fn connect(&self, peers: Vec<String>, replace: bool) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Connect {
                peers,
                replace,
                reply,
            })
            .map_err(|_| "the mesh is not running".to_string())?;
        rx.await
            .map_err(|_| "the mesh is not running".to_string())?
    }

    pub fn forget(&self, peers: Vec<String>) {
        let _ = self.tx.send(Cmd::Forget { peers });
    }

    /// Sends an IPAM request to the actor; false if the actor is gone.
    pub fn ipam(&self, cmd: IpamCmd) -> bool {
        self.tx.send(Cmd::Ipam(cmd)).is_ok()
    }
}

/// Everything a connection task needs.
struct ConnCtx {
    identity: Identity,
    password: Option<Vec<u8>>,
    overlays: Option<String>,
    tx: mpsc::UnboundedSender<Cmd>,
}

impl ConnCtx {
    fn features(&self) -> Features {
        let mut f = Features::new(
            self.identity.name,
            self.identity.nickname.clone(),
            self.identity.uid,
            rand::random(),
        );
        f.short_id = ShortId::new(self.identity.short_id).ok();
        f.overlays = self
            .overlays
            .as_ref()
            .map(|o| o.split_whitespace().map(str::to_owned).collect());
        f
    }
}

/// Starts the mesh: the listener and the actor. Returns the handle for the API.
pub async fn start(
    identity: &Identity,
    opts: MeshOptions,
    dataplane: Option<DataPlaneLink>,
    ipam: weft_ipam::node::NodeIpam,
) -> anyhow::Result<MeshHandle> {
    let listen = opts
        .listen
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], opts.port)));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the mesh port {listen} (is another router running?)"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut cfg = MeshConfig::new(identity.name, identity.nickname.clone(), rand::random());
    cfg.uid = Some(identity.uid);
    cfg.short_id = ShortId::new(identity.short_id).ok();
    cfg.port = opts.port;
    cfg.conn_limit = opts.conn_limit;
    cfg.peer_discovery = opts.peer_discovery;
    let epoch = Instant::now();
    let mut mesh = Mesh::new(cfg, Millis(0));
    mesh.register_channel(ipam::CHANNEL, Box::new(IpamHandler::new(ipam)))
        .map_err(|e| anyhow::anyhow!("registering the IPAM gossip channel: {e}"))?;
    if let Err(e) = mesh.initiate_connections(&opts.peers, false, Millis(0)) {
        anyhow::bail!("invalid peer addresses: {}", join_errors(&e));
    }
    let ctx = Arc::new(ConnCtx {
        identity: identity.clone(),
        password: opts.password.clone(),
        overlays: opts.overlays.clone(),
        tx: tx.clone(),
    });
    tokio::spawn(accept_loop(listener, ctx.clone()));
    tokio::spawn(actor(mesh, epoch, rx, ctx, dataplane));
    Ok(MeshHandle {
        tx,
        encrypted: opts.password.is_some(),
    })
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ConnCtx>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(run_connection(stream, false, peer.to_string(), ctx.clone()));
            }
            Err(e) => {
                tracing::warn!("accepting a mesh connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn join_errors(errs: &[weft_mesh::PeerAddrError]) -> String {
    errs.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn now(epoch: Instant) -> Millis {
    Millis(epoch.elapsed().as_millis() as u64)
}

async fn actor(
    mut mesh: Mesh,
    epoch: Instant,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    ctx: Arc<ConnCtx>,
    dataplane: Option<DataPlaneLink>,
) {
    let mut writers: HashMap<ConnId, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut attrs: ConnAttrs = HashMap::new();
    let mut ipam_pending = ipam::Pending::default();
    let mut ipam_tick = tokio::time::interval(IPAM_TICK);
    ipam_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (dp_tx, mut dp_rx) = match dataplane {
        Some(l) => (Some(l.to), Some(l.from)),
        None => (None, None),
    };
    if let Some(dp) = &dp_tx {
        let _ = dp.send(ToDataPlane::Routes(Box::new(mesh.routes().clone())));
    }
    loop {
        if let Some(ranges) = ipam::after_mesh_call(&mut mesh, &mut ipam_pending) {
            if let Some(dp) = &dp_tx {
                let _ = dp.send(ToDataPlane::LocalRanges(ranges));
            }
        }
        drain_actions(
            &mut mesh,
            &mut writers,
            &ctx,
            epoch,
            dp_tx.as_ref(),
            &mut attrs,
        );
        let sleep = mesh
            .poll_timeout()
            .map(|t| epoch + Duration::from_millis(t.0))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let from_dp = async {
            match dp_rx.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let t = now(epoch);
                match cmd {
                    Cmd::Up { params, info, writer, reply } => {
                        let r = mesh.handle_connection_up(params, t);
                        if let Ok(id) = &r {
                            writers.insert(*id, writer);
                            match &dp_tx {
                                // The data plane confirms the connection once one of its
                                // overlays has a working heartbeat.
                                Some(dp) => {
                                    let mut info = info;
                                    info.conn = *id;
                                    let _ = dp.send(ToDataPlane::ConnUp(info));
                                }
                                // No data plane: the TCP link is all there is.
                                None => mesh.connection_established(*id, t),
                            }
                        }
                        let _ = reply.send(r.map_err(|e| e.to_string()));
                    }
                    Cmd::Msg { conn, body } => mesh.handle_message(conn, &body, t),
                    Cmd::Down { conn, reason } => {
                        if writers.remove(&conn).is_some() {
                            if let Some(dp) = &dp_tx {
                                let _ = dp.send(ToDataPlane::ConnDown(conn));
                            }
                        }
                        attrs.remove(&conn);
                        mesh.handle_connection_down(conn, &reason, t);
                    }
                    Cmd::DialFailed { addr, error, permanent } => {
                        if permanent {
                            mesh.handle_dial_failed_permanently(&addr, &error, t);
                        } else {
                            mesh.handle_dial_failed(&addr, &error, t);
                        }
                    }
                    Cmd::Connect { peers, replace, reply } => {
                        let r = mesh
                            .initiate_connections(&peers, replace, t)
                            .map_err(|e| join_errors(&e));
                        let _ = reply.send(r);
                    }
                    Cmd::Forget { peers } => mesh.forget_connections(&peers, t),
                    Cmd::Status { reply } => {
                        let _ = reply.send((mesh.status(t), attrs.clone()));
                    }
                    Cmd::Ipam(cmd) => ipam::handle(&mut mesh, &mut ipam_pending, cmd, t),
                }
            }
            _ = ipam_tick.tick() => ipam::tick(&mut mesh, &mut ipam_pending, now(epoch)),
            msg = from_dp => {
                let Some(msg) = msg else {
                    tracing::error!("the data plane stopped; connections can no longer carry traffic");
                    dp_rx = None;
                    continue;
                };
                let t = now(epoch);
                match msg {
                    FromDataPlane::Control { conn, msg } => match msg.encode() {
                        Ok(body) => {
                            if let Some(w) = writers.get(&conn) {
                                if w.try_send(body).is_err() {
                                    mesh.close_connection(
                                        conn,
                                        "the connection is not keeping up with its send queue",
                                        t,
                                    );
                                }
                            }
                        }
                        Err(e) => tracing::warn!("encoding an overlay control message: {e}"),
                    },
                    FromDataPlane::Established(conn) => mesh.connection_established(conn, t),
                    FromDataPlane::Failed { conn, reason } => mesh.close_connection(conn, &reason, t),
                    FromDataPlane::Attrs { conn, attrs: a } => {
                        if writers.contains_key(&conn) {
                            attrs.insert(conn, a);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(sleep.into()) => mesh.handle_timeout(now(epoch)),
        }
    }
}

fn drain_actions(
    mesh: &mut Mesh,
    writers: &mut HashMap<ConnId, mpsc::Sender<Vec<u8>>>,
    ctx: &Arc<ConnCtx>,
    epoch: Instant,
    dp: Option<&mpsc::UnboundedSender<ToDataPlane>>,
    attrs: &mut ConnAttrs,
) {
    while let Some(action) = mesh.poll_action() {
        match action {
            Action::Send { conn, body } => {
                let Some(w) = writers.get(&conn) else {
                    continue;
                };
                if w.try_send(body).is_err() {
                    writers.remove(&conn);
                    mesh.close_connection(
                        conn,
                        "the connection is not keeping up with its send queue",
                        now(epoch),
                    );
                }
            }
            Action::Close { conn, reason } => {
                tracing::info!(conn = ?conn, %reason, "closing mesh connection");
                // Dropping the writer ends the writer task, which shuts the socket down.
                if writers.remove(&conn).is_some() {
                    if let Some(dp) = dp {
                        let _ = dp.send(ToDataPlane::ConnDown(conn));
                    }
                }
                attrs.remove(&conn);
            }
            Action::Dial { address } => {
                tokio::spawn(dial(address, ctx.clone()));
            }
            Action::Overlay { conn, msg } => {
                if let Some(dp) = dp {
                    let _ = dp.send(ToDataPlane::Control { conn, msg });
                }
            }
            Action::RoutesChanged => {
                if let Some(dp) = dp {
                    let _ = dp.send(ToDataPlane::Routes(Box::new(mesh.routes().clone())));
                }
            }
            Action::ShortIdsInvalidated => {}
            Action::PeersRemoved(peers) => {
                for p in peers {
                    tracing::info!(peer = %p.name, "peer removed from the topology");
                }
            }
        }
    }
}

async fn dial(address: String, ctx: Arc<ConnCtx>) {
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&address)).await {
        Ok(Ok(stream)) => run_connection(stream, true, address, ctx).await,
        Ok(Err(e)) => fail(&ctx, &address, format!("connect: {e}"), false),
        Err(_) => fail(&ctx, &address, "connect: timed out".into(), false),
    }
}

fn fail(ctx: &ConnCtx, addr: &str, error: String, permanent: bool) {
    let _ = ctx.tx.send(Cmd::DialFailed {
        addr: addr.to_string(),
        error,
        permanent,
    });
}

/// Runs one connection from the handshake to its end.
async fn run_connection(mut stream: TcpStream, outbound: bool, addr: String, ctx: Arc<ConnCtx>) {
    let _ = stream.set_nodelay(true);
    let local = ctx.features();
    let (mut hs, first) = Handshake::new(HandshakeParams {
        outbound,
        password: ctx.password.clone(),
        features: local.clone(),
    });
    let done = match tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        stream
            .write_all(&first)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = vec![0u8; 4096];
        loop {
            // A close before the end is reported for the stage it happens at: after the key
            // exchange it means the peer could not open our features (wrong password).
            let n = match stream.read(&mut buf).await {
                Ok(0) => return Err(hs.peer_closed().to_string()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(hs.peer_closed().to_string())
                }
                Err(e) => return Err(format!("read: {e}")),
            };
            let progress = match hs.feed(&buf[..n]) {
                Ok(p) => p,
                Err(e) => {
                    // Weave sends its part of each step before checking the peer's; so do we,
                    // even when this input also failed, so that the peer can say why.
                    let unsent = hs.take_unsent();
                    if !unsent.is_empty() {
                        let _ = stream.write_all(&unsent).await;
                    }
                    return Err(e.to_string());
                }
            };
            match progress {
                Progress::Continue { send } => {
                    stream
                        .write_all(&send)
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                }
                Progress::Done(done) => {
                    stream
                        .write_all(&done.send)
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    return Ok(done);
                }
            }
        }
    })
    .await
    {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            tracing::warn!(%addr, "mesh handshake failed: {e}");
            if outbound {
                fail(&ctx, &addr, e, false);
            }
            return;
        }
        Err(_) => {
            let e = "handshake timed out".to_string();
            tracing::warn!(%addr, "{e}");
            if outbound {
                fail(&ctx, &addr, e, false);
            }
            return;
        }
    };
    if done.is_connection_to_self(&local) {
        if outbound {
            fail(&ctx, &addr, "cannot connect to ourself".into(), true);
        }
        return;
    }
    let params =
        ConnectionParams::from_features(&done.remote, done.conn_uid, outbound, addr.clone());
    let remote_tcp = match stream.peer_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%addr, "the connection closed right after the handshake: {e}");
            return;
        }
    };
    let info = Box::new(ConnInfo {
        conn: ConnId(0),
        remote: done.remote.name,
        remote_nickname: done.remote.nick_name.clone(),
        conn_uid: done.conn_uid,
        outbound,
        remote_tcp,
        remote_overlays: done.remote.overlays.clone(),
        session_key: done.session.as_ref().map(|c| c.session_key.clone()),
    });
    let (sealer, opener) = match done.session {
        Some(c) => (Some(c.sealer), Some(c.opener)),
        None => (None, None),
    };
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let (reply, rx) = oneshot::channel();
    if ctx
        .tx
        .send(Cmd::Up {
            params,
            info,
            writer: wtx,
            reply,
        })
        .is_err()
    {
        return;
    }
    let conn = match rx.await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => {
            tracing::info!(%addr, "mesh connection refused: {e}");
            return;
        }
        Err(_) => return,
    };
    tracing::info!(%addr, peer = %done.remote.name, nick = %done.remote.nick_name, encrypted = opener.is_some(), "mesh connection up");
    let (mut rd, mut wr) = stream.into_split();
    let mut writer = tokio::spawn(async move {
        let mut fw = FrameWriter::new(sealer);
        while let Some(body) = wrx.recv().await {
            let frame = match fw.encode(&body) {
                Ok(f) => f,
                Err(e) => return Err(format!("encoding a frame: {e}")),
            };
            if let Err(e) = wr.write_all(&frame).await {
                return Err(format!("write: {e}"));
            }
        }
        let _ = wr.shutdown().await;
        Ok(())
    });
    let mut fr = FrameReader::new(opener);
    let mut reason = "connection closed by peer".to_string();
    let mut pending = done.leftover;
    let mut buf = vec![0u8; 64 * 1024];
    'read: loop {
        if !pending.is_empty() {
            fr.feed(&pending);
            pending.clear();
        }
        loop {
            match fr.next_message() {
                Ok(Some(body)) => {
                    if ctx.tx.send(Cmd::Msg { conn, body }).is_err() {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    reason = e.to_string();
                    break 'read;
                }
            }
        }
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) => break,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) => { reason = format!("read: {e}"); break; }
            },
            w = &mut writer => {
                // The actor dropped our queue (it closed the connection) or a write failed.
                reason = match w {
                    Ok(Ok(())) => "closed".into(),
                    Ok(Err(e)) => e,
                    Err(e) => format!("writer task: {e}"),
                };
                let _ = ctx.tx.send(Cmd::Down { conn, reason });
                return;
            }
        }
    }
    writer.abort();
    let _ = ctx.tx.send(Cmd::Down { conn, reason });
}
