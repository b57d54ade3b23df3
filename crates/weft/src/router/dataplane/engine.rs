//! The data-plane thread: one thread owns every overlay's state and all data-plane
//! descriptors (the sleeve TAP, the two sleeve UDP sockets, the fast path's heartbeat packet
//! socket) and waits on them with `poll(2)`, together with an eventfd that announces control
//! messages from the mesh actor, and the overlays' timers.
//!
//! Frames are handled in batches: a TAP read yields up to 64 KiB (TSO), split into
//! MTU-sized frames, routed by the [`SleeveRouter`], packed by the per-connection sleeve
//! forwarders, and sent as UDP GSO runs; a `recvmmsg` yields up to 64 (GRO-coalesced)
//! datagrams, decoded by the forwarders, routed, and written to the TAP merged back into TCP
//! GSO frames. The kernel's VXLAN device carries the fast path by itself: this thread only
//! sends and answers its heartbeats and programs its forwarding database.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use weft_dataplane::gso::{gso_split, Segments, TcpCoalescer, VirtioNetHdr, VNET_HDR_LEN};
use weft_dataplane::netlink::Netlink;
use weft_dataplane::tap::Tap;
use weft_dataplane::udp::{RecvBatch, Transmit, UdpSocket, MAX_GSO_SEGMENTS};
use weft_mesh::{ConnId, Millis, Routes};
use weft_overlay::fastdp::{parse_heartbeat, FastdpAction, FastdpConfig};
use weft_overlay::router::{PeerView, SleeveRouter, Verdict};
use weft_overlay::sleeve::codec::parse_sender;
use weft_overlay::sleeve::forwarder::{SleeveAction, SleeveConfig};
use weft_overlay::switch::{FastdpSetup, OverlaySwitch, ServedBy, SwitchAction, SwitchParams};
use weft_overlay::MacAddr;
use weft_wire::{PeerName, UNKNOWN_PEER_NAME};

use super::kernel::{poll_readable, wait_writable, BridgeFdb, EventFd, PacketSocket};
use crate::router::dp_iface::{ConnInfo, FromDataPlane, ToDataPlane};

/// TAP reads per wake-up before the other descriptors get their turn.
const TAP_READS_PER_ROUND: usize = 64;
/// `recvmmsg` calls per socket per wake-up.
const UDP_BATCHES_PER_ROUND: usize = 4;
/// Slots of the receive batch (each up to 64 KiB with GRO).
const RECV_SLOTS: usize = 32;
/// Largest UDP payload sent as one GSO message.
const MAX_GSO_BYTES: usize = 65_000;
/// Pause after a descriptor reports an error other than "nothing to read".
const ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait in poll: timers are re-checked at least this often.
const MAX_POLL_MS: u64 = 1000;

/// Counters of the data-plane thread (shared with the rest of the router).
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames read from the sleeve TAP (after GSO segmentation).
    pub tap_frames: AtomicU64,
    /// Frames written to the sleeve TAP (before TCP coalescing).
    pub injected_frames: AtomicU64,
    /// UDP datagrams sent / received on the sleeve port.
    pub udp_sent: AtomicU64,
    pub udp_received: AtomicU64,
    /// Datagrams that could not be sent (errors other than a full buffer).
    pub udp_send_errors: AtomicU64,
    /// Datagrams from unknown senders or that did not decode.
    pub udp_rejected: AtomicU64,
    /// Fast-path heartbeats sent / received.
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_received: AtomicU64,
}

/// What the thread needs besides the descriptors.
pub struct EngineConfig {
    pub local: PeerName,
    pub bridge_mac: [u8; 6],
    pub mtu: u32,
    pub sleeve: SleeveConfig,
    pub fastdp: FastdpConfig,
}

/// The fast path's kernel objects (absent when it is disabled or could not be set up).
pub struct FastPath {
    pub vxlan_index: u32,
    pub packets: PacketSocket,
}

/// The descriptors the thread owns.
pub struct Devices {
    pub tap: Tap,
    pub udp: UdpSocket,
    pub udp_df: UdpSocket,
    pub fast: Option<FastPath>,
    pub nl: Netlink,
    pub bridge_fdb: BridgeFdb,
}

/// A transmit to make: (first out, last out, range in the GSO buffer or `None` for the out's
/// own payload, GSO segment size).
type Plan = (usize, usize, Option<(usize, usize)>, Option<usize>);

/// A datagram the forwarders asked to send.
struct Out {
    conn: ConnId,
    to: SocketAddrV4,
    df: bool,
    payload: Vec<u8>,
}

struct Conn {
    remote: PeerName,
    conn_uid: u64,
    switch: OverlaySwitch,
    /// The attributes last sent to the mesh.
    attrs_sent: Option<BTreeMap<String, String>>,
    /// Frames were queued since the last flush.
    touched: bool,
}

/// The mesh's routes and the fast-path peers, as the sleeve router sees them.
struct View<'a> {
    local: PeerName,
    routes: Option<&'a Routes>,
    fast: &'a HashSet<PeerName>,
}

impl PeerView for View<'_> {
    fn local(&self) -> PeerName {
        self.local
    }

    fn next_hop(&self, dst: PeerName) -> Option<PeerName> {
        if dst == self.local {
            return None;
        }
        self.routes?
            .unicast(dst)
            .filter(|&via| via != UNKNOWN_PEER_NAME)
    }

    fn reachable_peers(&self) -> Vec<PeerName> {
        match self.routes {
            Some(r) => r
                .unicast_table()
                .iter()
                .filter(|(dst, via)| **dst != self.local && **via != UNKNOWN_PEER_NAME)
                .map(|(dst, _)| *dst)
                .collect(),
            None => Vec::new(),
        }
    }

    fn is_fastdp(&self, peer: PeerName) -> bool {
        self.fast.contains(&peer)
    }
}

/// Everything but the connections, so that a connection can be borrowed mutably while its
/// actions are carried out.
struct Ctx {
    cfg: EngineConfig,
    epoch: Instant,
    to_mesh: UnboundedSender<FromDataPlane>,
    stats: Arc<Stats>,
    tap_index: u32,
    fast: Option<FastPath>,
    nl: Netlink,
    bridge_fdb: BridgeFdb,
    router: SleeveRouter,
    routes: Option<Routes>,
    /// The connection that carries each peer's sleeve traffic (the newest one).
    by_peer: HashMap<PeerName, ConnId>,
    /// Neighbours currently served by the fast path.
    fastdp_peers: HashSet<PeerName>,
    /// Reference counts of the heartbeat FDB entries and flood entries we installed.
    hb_entries: HashMap<([u8; 6], Ipv4Addr), usize>,
    flood_entries: HashMap<Ipv4Addr, usize>,
    /// Datagrams to send.
    out: Vec<Out>,
    /// Frames produced locally (ICMP "fragmentation needed" replies) to route.
    local_frames: Vec<(PeerName, PeerName, Vec<u8>)>,
    /// The last error of each kind that was logged, to keep logs readable.
    logged: HashSet<String>,
}

/// Frames decoded from datagrams, kept until they are routed.
#[derive(Default)]
struct Arena {
    buf: Vec<u8>,
    frames: Vec<(PeerName, PeerName, PeerName, usize, usize)>,
}

impl Arena {
    fn clear(&mut self) {
        self.buf.clear();
        self.frames.clear();
    }
}

pub struct Engine {
    ctx: Ctx,
    conns: HashMap<ConnId, Conn>,
    tap: Tap,
    udp: [UdpSocket; 2],
    tap_buf: Vec<u8>,
    segs: Segments,
    batch: RecvBatch,
    arena: Arena,
    coalescer: TcpCoalescer,
    hb_buf: Vec<u8>,
    wire: Vec<u8>,
    /// Frames of the current batch to write to the TAP: (flow key, index in the arena).
    inject: Vec<(u128, usize)>,
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        dev: Devices,
        to_mesh: UnboundedSender<FromDataPlane>,
        stats: Arc<Stats>,
    ) -> Engine {
        let local = cfg.local;
        Engine {
            ctx: Ctx {
                cfg,
                epoch: Instant::now(),
                to_mesh,
                stats,
                tap_index: dev.tap.index(),
                fast: dev.fast,
                nl: dev.nl,
                bridge_fdb: dev.bridge_fdb,
                router: SleeveRouter::new(local),
                routes: None,
                by_peer: HashMap::new(),
                fastdp_peers: HashSet::new(),
                hb_entries: HashMap::new(),
                flood_entries: HashMap::new(),
                out: Vec::new(),
                local_frames: Vec::new(),
                logged: HashSet::new(),
            },
            conns: HashMap::new(),
            tap: dev.tap,
            udp: [dev.udp, dev.udp_df],
            tap_buf: vec![0; VNET_HDR_LEN + 65_535],
            segs: Segments::new(),
            batch: RecvBatch::new(RECV_SLOTS, 65_535),
            arena: Arena::default(),
            coalescer: TcpCoalescer::new(),
            hb_buf: vec![0; 65_536],
            wire: Vec::with_capacity(MAX_GSO_BYTES),
            inject: Vec::new(),
        }
    }

    /// Runs until the control channel closes (the mesh stopped); then stops every
    /// connection's overlays (removing their FDB entries) and returns.
    pub fn run(mut self, ctl: Receiver<ToDataPlane>, wake: Arc<EventFd>) {
        tracing::info!(
            tap = %self.tap.name(),
            fastdp = self.ctx.fast.is_some(),
            "data plane running"
        );
        loop {
            let now = self.ctx.now();
            self.run_timers(now);
            self.route_local_frames(now);
            self.send_out();
            let wait = match self.next_deadline() {
                Some(t) => t.as_millis().saturating_sub(self.ctx.now().as_millis()),
                None => MAX_POLL_MS,
            }
            .min(MAX_POLL_MS);
            let mut fds = [
                libc::pollfd {
                    fd: wake.as_raw_fd(),
                    events: 0,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.tap.as_raw_fd(),
                    events: 0,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.udp[0].as_raw_fd(),
                    events: 0,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.udp[1].as_raw_fd(),
                    events: 0,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.ctx.fast.as_ref().map_or(-1, |f| f.packets.as_raw_fd()),
                    events: 0,
                    revents: 0,
                },
            ];
            if let Err(e) = poll_readable(&mut fds, wait as i32) {
                tracing::error!("data plane: poll failed: {e}; stopping");
                break;
            }
            let ready = |i: usize| fds[i].revents != 0;
            if ready(0) {
                wake.drain();
                if !self.drain_control(&ctl) {
                    break;
                }
            }
            if ready(1) {
                self.handle_tap();
            }
            for i in 0..2 {
                if ready(2 + i) {
                    self.handle_udp(i);
                }
            }
            if ready(4) {
                self.handle_heartbeats();
            }
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.conn_down(id);
        }
        self.send_out();
        tracing::info!("data plane stopped");
    }

    /// Handles every queued control message; false once the mesh has gone.
    fn drain_control(&mut self, ctl: &Receiver<ToDataPlane>) -> bool {
        loop {
            match ctl.try_recv() {
                Ok(msg) => self.handle_control(msg),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn handle_control(&mut self, msg: ToDataPlane) {
        let now = self.ctx.now();
        match msg {
            ToDataPlane::ConnUp(info) => self.conn_up(now, &info),
            ToDataPlane::ConnDown(id) => self.conn_down(id),
            ToDataPlane::Control { conn, msg } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    if let Err(e) = c.switch.handle_control(now, &msg) {
                        tracing::debug!(peer = %c.remote, "overlay control message: {e}");
                    }
                    self.ctx.drain(now, conn, c);
                }
            }
            ToDataPlane::Routes(r) => self.ctx.routes = Some(*r),
            // Masquerading is applied by the control task.
            ToDataPlane::LocalRanges(_) => {}
        }
    }

    fn conn_up(&mut self, now: Millis, info: &ConnInfo) {
        let params = match switch_params(&self.ctx.cfg, self.ctx.fast.is_some(), info) {
            Ok(p) => p,
            Err(reason) => {
                let _ = self.ctx.to_mesh.send(FromDataPlane::Failed {
                    conn: info.conn,
                    reason,
                });
                return;
            }
        };
        let mut switch = match OverlaySwitch::prepare(params) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %info.remote, "cannot set up overlays: {e}");
                let _ = self.ctx.to_mesh.send(FromDataPlane::Failed {
                    conn: info.conn,
                    reason: e.to_string(),
                });
                return;
            }
        };
        tracing::info!(
            peer = %info.remote,
            nickname = %info.remote_nickname,
            addr = %info.remote_tcp,
            overlays = ?switch.negotiation(),
            encrypted = switch.is_encrypted(),
            "overlays prepared"
        );
        switch.confirm(now);
        let mut conn = Conn {
            remote: info.remote,
            conn_uid: info.conn_uid,
            switch,
            attrs_sent: None,
            touched: false,
        };
        self.ctx.by_peer.insert(info.remote, info.conn);
        self.ctx.drain(now, info.conn, &mut conn);
        self.conns.insert(info.conn, conn);
    }

    fn conn_down(&mut self, id: ConnId) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        let now = self.ctx.now();
        conn.switch.stop();
        self.ctx.drain(now, id, &mut conn);
        let peer = conn.remote;
        if self.ctx.by_peer.get(&peer) == Some(&id) {
            self.ctx.by_peer.remove(&peer);
            // Another connection to the same peer (a reconnect) takes over.
            if let Some((other, _)) = self.conns.iter().find(|(_, c)| c.remote == peer) {
                self.ctx.by_peer.insert(peer, *other);
            }
        }
        let still_fast = self
            .conns
            .values()
            .any(|c| c.remote == peer && c.switch.served_by() == ServedBy::Fastdp);
        if !still_fast {
            self.ctx.fastdp_peers.remove(&peer);
        }
        tracing::info!(peer = %peer, "overlays stopped");
    }

    fn run_timers(&mut self, now: Millis) {
        for (id, c) in self.conns.iter_mut() {
            if c.switch.poll_timeout().is_some_and(|t| t <= now) {
                c.switch.handle_timeout(now);
                self.ctx.drain(now, *id, c);
            }
        }
        if self.ctx.router.poll_timeout().is_some_and(|t| t <= now) {
            self.ctx.router.handle_timeout(now);
        }
    }

    fn next_deadline(&self) -> Option<Millis> {
        self.conns
            .values()
            .filter_map(|c| c.switch.poll_timeout())
            .chain(self.ctx.router.poll_timeout())
            .min()
    }

    /// Reads and forwards a round of frames from the TAP.
    fn handle_tap(&mut self) {
        let now = self.ctx.now();
        let mut frames = 0u64;
        for _ in 0..TAP_READS_PER_ROUND {
            let (hdr, len) = match self.tap.read_frame(&mut self.tap_buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.ctx
                        .log_once("tap-read", || format!("reading the sleeve TAP: {e}"));
                    // A broken descriptor must not spin the thread.
                    std::thread::sleep(ERROR_BACKOFF);
                    break;
                }
            };
            self.segs.clear();
            let frame = &self.tap_buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
            if let Err(e) = gso_split(&hdr, frame, &mut self.segs) {
                tracing::debug!("dropping a malformed frame from the TAP: {e}");
                continue;
            }
            for seg in self.segs.iter() {
                frames += 1;
                route_captured(&mut self.ctx, &mut self.conns, now, seg);
            }
        }
        self.ctx
            .stats
            .tap_frames
            .fetch_add(frames, Ordering::Relaxed);
        self.flush_touched(now);
        self.send_out();
    }

    /// Receives and handles a round of datagrams on sleeve socket `i`.
    fn handle_udp(&mut self, i: usize) {
        for _ in 0..UDP_BATCHES_PER_ROUND {
            match self.udp[i].recv_batch(&mut self.batch) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.ctx
                        .log_once("udp-recv", || format!("receiving sleeve datagrams: {e}"));
                    // A broken descriptor must not spin the thread.
                    std::thread::sleep(ERROR_BACKOFF);
                    break;
                }
            }
            let now = self.ctx.now();
            self.arena.clear();
            let mut received = 0u64;
            for (src, dgram) in self.batch.datagrams() {
                received += 1;
                let SocketAddr::V4(src) = src else {
                    continue;
                };
                receive_datagram(
                    &mut self.ctx,
                    &mut self.conns,
                    now,
                    src,
                    dgram,
                    &mut self.arena,
                );
            }
            self.ctx
                .stats
                .udp_received
                .fetch_add(received, Ordering::Relaxed);
            // Route first; then write the frames for us grouped by TCP flow (a stable sort
            // keeps each flow's order), so that interleaved flows still merge into large
            // frames.
            self.inject.clear();
            for (k, &(from, src, dst, start, end)) in self.arena.frames.iter().enumerate() {
                let frame = &self.arena.buf[start..end];
                if route_forwarded(
                    &mut self.ctx,
                    &mut self.conns,
                    now,
                    Some(from),
                    src,
                    dst,
                    frame,
                ) {
                    self.inject.push((flow_key(frame), k));
                }
            }
            self.inject.sort_by_key(|&(key, _)| key);
            let injected = self.inject.len() as u64;
            let tap = &self.tap;
            let mut emit = |h: &VirtioNetHdr, f: &[u8]| {
                // A full TAP queue drops, as a NIC would.
                let _ = tap.write_with_hdr(h, f);
                Ok(())
            };
            for &(_, k) in &self.inject {
                let (_, _, _, start, end) = self.arena.frames[k];
                let _ = self.coalescer.push(&self.arena.buf[start..end], &mut emit);
            }
            let _ = self.coalescer.flush(&mut emit);
            self.ctx
                .stats
                .injected_frames
                .fetch_add(injected, Ordering::Relaxed);
            self.flush_touched(now);
            self.send_out();
        }
    }

    /// Receives fast-path heartbeats.
    fn handle_heartbeats(&mut self) {
        let now = self.ctx.now();
        for _ in 0..64 {
            let Some(fast) = &self.ctx.fast else {
                return;
            };
            let n = match fast.packets.recv(&mut self.hb_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.ctx
                        .log_once("hb-recv", || format!("receiving fast-path heartbeats: {e}"));
                    // A broken descriptor must not spin the thread.
                    std::thread::sleep(ERROR_BACKOFF);
                    break;
                }
            };
            if n > self.hb_buf.len() {
                continue;
            }
            let Ok(hb) = parse_heartbeat(&self.hb_buf[..n]) else {
                continue;
            };
            if hb.receiver != self.ctx.cfg.local {
                continue;
            }
            self.ctx
                .stats
                .heartbeats_received
                .fetch_add(1, Ordering::Relaxed);
            let target = self
                .conns
                .iter()
                .find(|(_, c)| c.remote == hb.sender && c.conn_uid == hb.conn_uid)
                .map(|(id, _)| *id);
            let Some(id) = target else {
                tracing::trace!(sender = %hb.sender, "fast-path heartbeat for no current connection");
                continue;
            };
            if let Some(c) = self.conns.get_mut(&id) {
                if let Err(e) = c.switch.receive_fastdp_heartbeat(now, &hb) {
                    tracing::debug!(peer = %c.remote, "fast-path heartbeat: {e}");
                }
                self.ctx.drain(now, id, c);
            }
        }
        self.send_out();
    }

    /// Routes the ICMP replies the forwarders produced.
    fn route_local_frames(&mut self, now: Millis) {
        if self.ctx.local_frames.is_empty() {
            return;
        }
        let frames = std::mem::take(&mut self.ctx.local_frames);
        for (src, dst, frame) in frames {
            if route_forwarded(&mut self.ctx, &mut self.conns, now, None, src, dst, &frame) {
                let _ = self.tap.write_frame(&frame);
            }
        }
        self.flush_touched(now);
    }

    fn flush_touched(&mut self, now: Millis) {
        for (id, c) in self.conns.iter_mut() {
            if c.touched {
                c.touched = false;
                c.switch.flush();
                self.ctx.drain(now, *id, c);
            }
        }
    }

    /// Sends every queued datagram: runs of equal-size DF datagrams to one destination as
    /// UDP GSO messages, the rest one by one, all with `sendmmsg`.
    fn send_out(&mut self) {
        // An EMSGSIZE makes the forwarder probe again: a few rounds at most.
        for _ in 0..4 {
            if self.ctx.out.is_empty() {
                return;
            }
            let outs = std::mem::take(&mut self.ctx.out);
            for df in [true, false] {
                self.send_channel(&outs, df);
            }
            if self.ctx.out.is_empty() {
                // Keep the allocation.
                self.ctx.out = outs;
                self.ctx.out.clear();
            }
            let now = self.ctx.now();
            self.route_local_frames(now);
        }
    }

    fn send_channel(&mut self, outs: &[Out], df: bool) {
        let mut plans: Vec<Plan> = Vec::new();
        self.wire.clear();
        let idx: Vec<usize> = (0..outs.len()).filter(|&i| outs[i].df == df).collect();
        let sock = if df { 1 } else { 0 };
        let gso = df && self.udp[sock].gso_enabled();
        let mut k = 0;
        while k < idx.len() {
            let first = &outs[idx[k]];
            let seg = first.payload.len();
            let mut n = 1;
            if gso {
                while k + n < idx.len() && n < MAX_GSO_SEGMENTS {
                    let o = &outs[idx[k + n]];
                    if o.to != first.to || o.payload.len() > seg || (n + 1) * seg > MAX_GSO_BYTES {
                        break;
                    }
                    n += 1;
                    if o.payload.len() < seg {
                        break; // a shorter datagram ends a run
                    }
                }
            }
            if n == 1 {
                plans.push((idx[k], idx[k], None, None));
            } else {
                let start = self.wire.len();
                for &i in &idx[k..k + n] {
                    self.wire.extend_from_slice(&outs[i].payload);
                }
                plans.push((
                    idx[k],
                    idx[k + n - 1],
                    Some((start, self.wire.len())),
                    Some(seg),
                ));
            }
            k += n;
        }
        if plans.is_empty() {
            return;
        }
        let txs: Vec<Transmit<'_>> = plans
            .iter()
            .map(|&(first, _, range, seg)| Transmit {
                dst: SocketAddr::V4(outs[first].to),
                contents: match range {
                    Some((s, e)) => &self.wire[s..e],
                    None => &outs[first].payload,
                },
                segment_size: seg,
            })
            .collect();
        let mut done = 0;
        let mut waits = 0;
        let mut too_big = Vec::new();
        while done < txs.len() {
            match self.udp[sock].send_batch(&txs[done..]) {
                Ok(()) => {
                    let sent: usize = plans[done..].iter().map(|p| p.1 - p.0 + 1).sum();
                    self.ctx
                        .stats
                        .udp_sent
                        .fetch_add(sent as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    let failed = done + e.sent;
                    let sent: usize = plans[done..failed].iter().map(|p| p.1 - p.0 + 1).sum();
                    self.ctx
                        .stats
                        .udp_sent
                        .fetch_add(sent as u64, Ordering::Relaxed);
                    if e.error.kind() == io::ErrorKind::WouldBlock && waits < 3 {
                        waits += 1;
                        wait_writable(self.udp[sock].as_raw_fd(), 20);
                        done = failed;
                        continue;
                    }
                    let (first, last, _, _) = plans[failed];
                    self.ctx
                        .stats
                        .udp_send_errors
                        .fetch_add((last - first + 1) as u64, Ordering::Relaxed);
                    let o = &outs[first];
                    if e.error.raw_os_error() == Some(libc::EMSGSIZE) {
                        too_big.push((o.conn, o.to));
                    } else {
                        let to = o.to;
                        self.ctx
                            .log_once(&format!("send-{to}-{:?}", e.error.kind()), || {
                                format!("sending sleeve datagrams to {to}: {}", e.error)
                            });
                    }
                    done = failed + 1;
                }
            }
        }
        drop(txs);
        for (conn, to) in too_big {
            self.path_mtu_exceeded(conn, to);
        }
    }

    /// A DF datagram was too big for the path: tell the forwarder the kernel's path MTU.
    fn path_mtu_exceeded(&mut self, id: ConnId, to: SocketAddrV4) {
        let pmtu = match weft_dataplane::udp::path_mtu(IpAddr::V4(*to.ip())) {
            Ok(m) => m as usize,
            Err(e) => {
                tracing::debug!("path MTU towards {to}: {e}");
                return;
            }
        };
        let now = self.ctx.now();
        if let Some(c) = self.conns.get_mut(&id) {
            tracing::debug!(peer = %c.remote, pmtu, "underlay path MTU");
            if let Some(s) = c.switch.sleeve_mut() {
                s.underlay_pmtu(now, pmtu);
            }
            self.ctx.drain(now, id, c);
        }
    }
}

/// A key that groups the frames of one IPv4 TCP flow (addresses and ports); every other
/// frame gets 0 and keeps its place among the others.
fn flow_key(frame: &[u8]) -> u128 {
    const ETH: usize = 14;
    if frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] || frame[ETH + 9] != 6 {
        return 0;
    }
    let ihl = usize::from(frame[ETH] & 0x0f) * 4;
    if ihl < 20 || frame.len() < ETH + ihl + 4 {
        return 0;
    }
    let mut k = [0u8; 16];
    k[0] = 1;
    k[4..12].copy_from_slice(&frame[ETH + 12..ETH + 20]);
    k[12..16].copy_from_slice(&frame[ETH + ihl..ETH + ihl + 4]);
    u128::from_be_bytes(k)
}

/// The switch parameters for a new connection.
pub fn switch_params(
    cfg: &EngineConfig,
    fastdp_available: bool,
    info: &ConnInfo,
) -> Result<SwitchParams, String> {
    let remote_ip = match info.remote_tcp.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => ip.to_ipv4_mapped().ok_or_else(|| {
            format!(
                "the overlays need an IPv4 underlay, but {} connected over IPv6 ({})",
                info.remote, info.remote_tcp
            )
        })?,
    };
    Ok(SwitchParams {
        local: cfg.local,
        remote: info.remote,
        conn_uid: info.conn_uid,
        outbound: info.outbound,
        session_key: info.session_key.clone(),
        remote_overlays: info.remote_overlays.clone(),
        remote_ip,
        sleeve_remote_addr: info
            .outbound
            .then(|| SocketAddrV4::new(remote_ip, info.remote_tcp.port())),
        fastdp: fastdp_available.then(|| FastdpSetup {
            local_mac: MacAddr(cfg.bridge_mac),
            remote_mac: MacAddr::from(info.remote),
            frame_len: cfg.mtu as usize + weft_overlay::ether::ETHERNET_HEADER_LEN,
        }),
        sleeve_config: cfg.sleeve.clone(),
        fastdp_config: cfg.fastdp.clone(),
    })
}

/// Routes one frame captured from the TAP and queues its sleeve copies.
fn route_captured(ctx: &mut Ctx, conns: &mut HashMap<ConnId, Conn>, now: Millis, frame: &[u8]) {
    let view = View {
        local: ctx.cfg.local,
        routes: ctx.routes.as_ref(),
        fast: &ctx.fastdp_peers,
    };
    match ctx.router.handle_captured(now, frame, &view) {
        Verdict::Forward {
            deliveries,
            broadcast,
        } => {
            for d in deliveries {
                forward(ctx, conns, d.via, d.src, d.dst, frame, broadcast);
            }
        }
        Verdict::Inject | Verdict::Drop(_) => {}
    }
}

/// Routes one frame received over sleeve (or produced locally when `from` is `None`);
/// returns whether it must be written to the TAP.
fn route_forwarded(
    ctx: &mut Ctx,
    conns: &mut HashMap<ConnId, Conn>,
    now: Millis,
    from: Option<PeerName>,
    src: PeerName,
    dst: PeerName,
    frame: &[u8],
) -> bool {
    let view = View {
        local: ctx.cfg.local,
        routes: ctx.routes.as_ref(),
        fast: &ctx.fastdp_peers,
    };
    match ctx
        .router
        .handle_forwarded(now, from, src, dst, frame, &view)
    {
        Verdict::Inject => true,
        Verdict::Forward {
            deliveries,
            broadcast,
        } => {
            for d in deliveries {
                forward(ctx, conns, d.via, d.src, d.dst, frame, broadcast);
            }
            false
        }
        Verdict::Drop(_) => false,
    }
}

fn forward(
    ctx: &mut Ctx,
    conns: &mut HashMap<ConnId, Conn>,
    via: PeerName,
    src: PeerName,
    dst: PeerName,
    frame: &[u8],
    broadcast: bool,
) {
    let Some(id) = ctx.by_peer.get(&via) else {
        return;
    };
    if let Some(c) = conns.get_mut(id) {
        c.switch.forward_sleeve(src, dst, frame, broadcast);
        c.touched = true;
    }
}

/// Hands a datagram to the forwarder of the peer that sent it; its frames go to the arena.
fn receive_datagram(
    ctx: &mut Ctx,
    conns: &mut HashMap<ConnId, Conn>,
    now: Millis,
    src: SocketAddrV4,
    dgram: &[u8],
    arena: &mut Arena,
) {
    let Ok((sender, body)) = parse_sender(dgram) else {
        ctx.stats.udp_rejected.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(&id) = ctx.by_peer.get(&sender) else {
        ctx.stats.udp_rejected.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(c) = conns.get_mut(&id) else {
        return;
    };
    let r = c.switch.receive_sleeve(now, src, body, |f| {
        let start = arena.buf.len();
        arena.buf.extend_from_slice(f.frame);
        arena
            .frames
            .push((sender, f.src, f.dst, start, arena.buf.len()));
    });
    if let Err(e) = r {
        ctx.stats.udp_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(peer = %sender, "sleeve datagram dropped: {e}");
    }
    ctx.drain(now, id, c);
}

impl Ctx {
    fn now(&self) -> Millis {
        Millis(self.epoch.elapsed().as_millis() as u64)
    }

    fn log_once(&mut self, key: &str, msg: impl FnOnce() -> String) {
        if self.logged.len() > 1000 {
            self.logged.clear();
        }
        if self.logged.insert(key.to_string()) {
            tracing::warn!("data plane: {}", msg());
        }
    }

    /// Carries out a connection's queued actions.
    fn drain(&mut self, now: Millis, id: ConnId, c: &mut Conn) {
        let mut attrs_dirty = c.attrs_sent.is_none();
        while let Some(a) = c.switch.poll_action() {
            match a {
                SwitchAction::Control(msg) => {
                    let _ = self.to_mesh.send(FromDataPlane::Control { conn: id, msg });
                }
                SwitchAction::Sleeve(s) => match s {
                    SleeveAction::SendDatagram { to, df, payload } => self.out.push(Out {
                        conn: id,
                        to,
                        df,
                        payload,
                    }),
                    SleeveAction::FragNeeded { src, dst, frame } => {
                        self.local_frames.push((src, dst, frame))
                    }
                    SleeveAction::MtuChanged { mtu, verified } => {
                        tracing::info!(peer = %c.remote, mtu, verified, "sleeve MTU");
                        attrs_dirty = true;
                    }
                    SleeveAction::RemoteAddrChanged { addr } => {
                        tracing::info!(peer = %c.remote, %addr, "sleeve remote address");
                    }
                    // Consumed by the switch.
                    SleeveAction::SendControl { .. }
                    | SleeveAction::Established
                    | SleeveAction::Failed { .. } => {}
                },
                SwitchAction::Fastdp(f) => self.fastdp_action(c.remote, f),
                SwitchAction::Established => {
                    tracing::info!(peer = %c.remote, "connection established: {}", c.switch.served_by().name());
                    let _ = self.to_mesh.send(FromDataPlane::Established(id));
                }
                SwitchAction::ServedByChanged { served_by, reason } => {
                    tracing::info!(peer = %c.remote, overlay = served_by.name(), %reason, "overlay switch");
                    attrs_dirty = true;
                    if served_by == ServedBy::Fastdp {
                        self.fastdp_peers.insert(c.remote);
                        // The bridge learned the peer's MACs on the TAP port while sleeve
                        // carried them: forget them so that it relearns them on the VXLAN port.
                        for mac in self.router.macs_at(c.remote) {
                            let _ = self.bridge_fdb.delete(self.tap_index, mac.0);
                        }
                    } else if self.by_peer.get(&c.remote) == Some(&id) {
                        self.fastdp_peers.remove(&c.remote);
                    }
                }
                SwitchAction::Failed { reason } => {
                    tracing::warn!(peer = %c.remote, %reason, "connection failed");
                    let _ = self
                        .to_mesh
                        .send(FromDataPlane::Failed { conn: id, reason });
                }
            }
        }
        if attrs_dirty {
            let attrs = c.switch.attrs().to_map();
            if c.attrs_sent.as_ref() != Some(&attrs) {
                c.attrs_sent = Some(attrs.clone());
                let _ = self.to_mesh.send(FromDataPlane::Attrs { conn: id, attrs });
            }
        }
        let _ = now;
    }

    fn fastdp_action(&mut self, peer: PeerName, a: FastdpAction) {
        let Some(fast) = &self.fast else {
            return;
        };
        let vx = fast.vxlan_index;
        match a {
            FastdpAction::SendHeartbeat { frame } => match fast.packets.send(&frame) {
                Ok(()) => {
                    self.stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(peer = %peer, "sending a fast-path heartbeat: {e}"),
            },
            FastdpAction::AddHeartbeatFdb { mac, peer_ip } => {
                let n = self.hb_entries.entry((mac.0, peer_ip)).or_insert(0);
                *n += 1;
                if *n == 1 {
                    if let Err(e) = self.nl.fdb_add_unicast(vx, mac.0, IpAddr::V4(peer_ip)) {
                        tracing::warn!(peer = %peer, "adding the fast-path heartbeat FDB entry: {e}");
                    }
                }
            }
            FastdpAction::RemoveHeartbeatFdb { mac, peer_ip } => {
                if release(&mut self.hb_entries, (mac.0, peer_ip)) {
                    if let Err(e) = self.nl.fdb_del_unicast(vx, mac.0) {
                        tracing::warn!(peer = %peer, "removing the fast-path heartbeat FDB entry: {e}");
                    }
                }
            }
            FastdpAction::AddFloodEntry { peer_ip } => {
                let n = self.flood_entries.entry(peer_ip).or_insert(0);
                *n += 1;
                if *n == 1 {
                    if let Err(e) = self.nl.fdb_append_flood(vx, IpAddr::V4(peer_ip)) {
                        tracing::warn!(peer = %peer, "adding the fast-path flood entry: {e}");
                    }
                }
            }
            FastdpAction::RemoveFloodEntry { peer_ip } => {
                if release(&mut self.flood_entries, peer_ip) {
                    if let Err(e) = self.nl.fdb_del_flood(vx, IpAddr::V4(peer_ip)) {
                        tracing::warn!(peer = %peer, "removing the fast-path flood entry: {e}");
                    }
                }
            }
            FastdpAction::FlushPeerMacs { peer_ip } => {
                if self.flood_entries.contains_key(&peer_ip) {
                    return; // another connection to that address still uses the fast path
                }
                let entries = match self.nl.fdb_entries(vx) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(peer = %peer, "reading the VXLAN FDB: {e}");
                        return;
                    }
                };
                for e in entries {
                    if e.dst == Some(IpAddr::V4(peer_ip)) && !e.permanent && e.mac != [0; 6] {
                        let _ = self.nl.fdb_del_unicast(vx, e.mac);
                        // And the bridge's entry on the VXLAN port, so that it floods (and
                        // sleeve carries) the next frame to that MAC.
                        let _ = self.bridge_fdb.delete(vx, e.mac);
                    }
                }
            }
            // Framed by the switch.
            FastdpAction::SendControl { .. } => {}
            FastdpAction::StateChanged {
                established,
                healthy,
                reason,
                ..
            } => {
                tracing::debug!(peer = %peer, established, healthy, %reason, "fast path state");
            }
        }
    }
}

/// Drops one reference; true when it was the last.
fn release<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K) -> bool {
    match m.get_mut(&k) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            m.remove(&k);
            true
        }
        None => false,
    }
}

/// Timings from the environment, for tests: `WEFT_FASTDP_TIMEOUT_MS` and
/// `WEFT_SLEEVE_TIMEOUT_MS` shorten the heartbeat timeouts (the slow heartbeat interval
/// follows, at a quarter of the timeout).
pub fn timings_from_env() -> (SleeveConfig, FastdpConfig) {
    let ms = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&v| v >= 100)
            .map(Duration::from_millis)
    };
    let mut sleeve = SleeveConfig::default();
    let mut fast = FastdpConfig::default();
    if let Some(t) = ms("WEFT_FASTDP_TIMEOUT_MS") {
        fast.timeout = t;
        fast.slow_heartbeat = fast
            .slow_heartbeat
            .min(t / 4)
            .max(fast.fast_heartbeat.min(t / 4));
        fast.fast_heartbeat = fast.fast_heartbeat.min(t / 4);
        tracing::info!(timeout = ?t, "fast-path heartbeat timeout from WEFT_FASTDP_TIMEOUT_MS");
    }
    if let Some(t) = ms("WEFT_SLEEVE_TIMEOUT_MS") {
        sleeve.heartbeat_timeout = t;
        sleeve.slow_heartbeat = sleeve
            .slow_heartbeat
            .min(t / 4)
            .max(sleeve.fast_heartbeat.min(t / 4));
        sleeve.fast_heartbeat = sleeve.fast_heartbeat.min(t / 4);
        tracing::info!(timeout = ?t, "sleeve heartbeat timeout from WEFT_SLEEVE_TIMEOUT_MS");
    }
    (sleeve, fast)
}

#[cfg(test)]
mod tests {
    use super::flow_key;

    fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn flow_keys_group_tcp_flows_only() {
        let a = tcp_frame([10, 0, 0, 1], [10, 0, 0, 2], 1000, 5201);
        let b = tcp_frame([10, 0, 0, 1], [10, 0, 0, 2], 1001, 5201);
        assert_eq!(flow_key(&a), flow_key(&a.clone()));
        assert_ne!(flow_key(&a), flow_key(&b));
        assert_ne!(flow_key(&a), 0);
        // Not TCP, not IPv4, or truncated: 0.
        let mut udp = a.clone();
        udp[14 + 9] = 17;
        assert_eq!(flow_key(&udp), 0);
        let mut arp = a.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(flow_key(&arp), 0);
        assert_eq!(flow_key(&a[..30]), 0);
        let mut opts = a.clone();
        opts[14] = 0x4f; // 60-byte IP header, longer than the frame
        assert_eq!(flow_key(&opts), 0);
    }
}
