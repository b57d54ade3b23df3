//! The fast path's per-connection heartbeat state machine (`weft-vxlan`).
//!
//! The kernel VXLAN device (UDP 6784) carries the frames; userspace only
//! proves that the path works and programs the device's FDB:
//!
//! - **Heartbeats** are Ethernet frames the driver sends *through* the VXLAN
//!   device (so they take exactly the path data takes, DF enforced by the
//!   device): EtherType [`HEARTBEAT_ETHERTYPE`] (0x88B5, IEEE local
//!   experimental), full size (`bridge MTU + 14` bytes), addressed to the
//!   peer's bridge MAC from ours. The peer receives them with a packet socket
//!   on its VXLAN device and acknowledges each one over TCP (fast-path
//!   sub-tag 0, [`HeartbeatAck`](crate::control::fastdp_tag::HEARTBEAT_ACK),
//!   payload = the heartbeat's u64 BE sequence number). A frame too big for
//!   the underlay never arrives, so the heartbeat doubles as an MTU check.
//! - Heartbeats go every 500 ms until the fast path is **established**, then
//!   every 10 s. It is established once our heartbeats are acknowledged *and*
//!   the peer's heartbeats reach us: both directions work.
//! - It is **healthy** while both still hold within the timeout (60 s). When
//!   either lapses the path is *on hold* — the flood entry is removed, the
//!   peer's learned MACs are flushed and the switch moves the peer to sleeve —
//!   but the heartbeats continue, and a later ack plus heartbeat makes it
//!   healthy again by itself.
//!
//! Requiring both directions makes the two ends agree on the state, so
//! neither keeps sending into a path the other has given up on.
//!
//! # Heartbeat frame
//!
//! ```text
//! [dst MAC:6][src MAC:6][0x88B5:2]
//! [magic "WfHb":4][version 1:1][reserved 0:1][frame length:u16 BE]
//! [sender PeerName:6][receiver PeerName:6][connection UID:u64 BE][sequence:u64 BE]
//! [zero padding to the frame length]
//! ```
//!
//! # Driver notes
//!
//! - The VXLAN device must know where to send the heartbeat before any flood
//!   entry exists: [`FastdpAction::AddHeartbeatFdb`] asks for a static FDB
//!   entry `remote_mac → peer_ip` (remove it on
//!   [`FastdpAction::RemoveHeartbeatFdb`]; a flush of learned MACs must keep it).
//! - With the peer's bridge MAC as destination, the receiving bridge delivers
//!   the heartbeat to itself (no flooding to pods) where the unknown
//!   EtherType is dropped. The packet socket must see it *before* the bridge
//!   consumes it: bind it with `ETH_P_ALL` on the VXLAN device and filter on
//!   the EtherType (a socket bound to 0x88B5 only sees frames the bridge did
//!   not take).
//! - One packet socket serves all connections: [`parse_heartbeat`] tells the
//!   driver which connection (sender peer) a frame belongs to.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

use weft_mesh::Millis;
use weft_wire::PeerName;

use crate::control::{fastdp_tag, OverlayKind};
use crate::ether::{MacAddr, ETHERNET_HEADER_LEN};

/// EtherType of fast-path heartbeats (IEEE 802 local experimental 1).
pub const HEARTBEAT_ETHERTYPE: u16 = 0x88B5;
/// Magic at the start of the heartbeat payload.
pub const HEARTBEAT_MAGIC: [u8; 4] = *b"WfHb";
/// Heartbeat format version.
pub const HEARTBEAT_VERSION: u8 = 1;
/// Bytes of the heartbeat payload before padding.
pub const HEARTBEAT_PAYLOAD_LEN: usize = 4 + 1 + 1 + 2 + 6 + 6 + 8 + 8;
/// Smallest heartbeat frame.
pub const HEARTBEAT_MIN_FRAME_LEN: usize = ETHERNET_HEADER_LEN + HEARTBEAT_PAYLOAD_LEN;

/// Errors of the fast-path heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FastdpError {
    /// The frame is not a Weft fast-path heartbeat.
    #[error("not a fast-path heartbeat frame: {0}")]
    NotHeartbeat(&'static str),
    /// The heartbeat's length field does not match the frame (truncated or
    /// padded on the way).
    #[error(
        "fast-path heartbeat says {claimed} bytes but {actual} arrived (truncated on the path?)"
    )]
    LengthMismatch {
        /// The length in the frame.
        claimed: usize,
        /// What arrived.
        actual: usize,
    },
    /// A frame length that cannot be built.
    #[error("fast-path heartbeat frame length {0} is outside {HEARTBEAT_MIN_FRAME_LEN}..=65535")]
    BadLength(usize),
    /// The heartbeat is for another connection.
    #[error("fast-path heartbeat for another connection (sender {sender}, receiver {receiver}, uid {conn_uid})")]
    WrongConnection {
        /// Sender in the frame.
        sender: PeerName,
        /// Receiver in the frame.
        receiver: PeerName,
        /// Connection UID in the frame.
        conn_uid: u64,
    },
}

/// A decoded fast-path heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Destination MAC (the receiver's bridge MAC).
    pub dst_mac: MacAddr,
    /// Source MAC (the sender's bridge MAC).
    pub src_mac: MacAddr,
    /// The sending peer.
    pub sender: PeerName,
    /// The peer it is for.
    pub receiver: PeerName,
    /// The mesh connection's UID.
    pub conn_uid: u64,
    /// Sequence number (from 0 per connection).
    pub seq: u64,
    /// Total frame length.
    pub frame_len: usize,
}

impl Heartbeat {
    /// Builds the frame, zero-padded to `frame_len`.
    pub fn encode(&self) -> Result<Vec<u8>, FastdpError> {
        if !(HEARTBEAT_MIN_FRAME_LEN..=usize::from(u16::MAX)).contains(&self.frame_len) {
            return Err(FastdpError::BadLength(self.frame_len));
        }
        let mut f = Vec::with_capacity(self.frame_len);
        f.extend_from_slice(&self.dst_mac.0);
        f.extend_from_slice(&self.src_mac.0);
        f.extend_from_slice(&HEARTBEAT_ETHERTYPE.to_be_bytes());
        f.extend_from_slice(&HEARTBEAT_MAGIC);
        f.push(HEARTBEAT_VERSION);
        f.push(0);
        f.extend_from_slice(&(self.frame_len as u16).to_be_bytes());
        f.extend_from_slice(&self.sender.to_name_bytes());
        f.extend_from_slice(&self.receiver.to_name_bytes());
        f.extend_from_slice(&self.conn_uid.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.resize(self.frame_len, 0);
        Ok(f)
    }
}

/// Parses a frame received on the VXLAN device's packet socket.
pub fn parse_heartbeat(frame: &[u8]) -> Result<Heartbeat, FastdpError> {
    if frame.len() < HEARTBEAT_MIN_FRAME_LEN {
        return Err(FastdpError::NotHeartbeat("too short"));
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != HEARTBEAT_ETHERTYPE {
        return Err(FastdpError::NotHeartbeat("wrong EtherType"));
    }
    let p = &frame[ETHERNET_HEADER_LEN..];
    if p[..4] != HEARTBEAT_MAGIC {
        return Err(FastdpError::NotHeartbeat("bad magic"));
    }
    if p[4] != HEARTBEAT_VERSION {
        return Err(FastdpError::NotHeartbeat("unknown version"));
    }
    let claimed = usize::from(u16::from_be_bytes([p[6], p[7]]));
    if claimed != frame.len() {
        return Err(FastdpError::LengthMismatch {
            claimed,
            actual: frame.len(),
        });
    }
    let name = |b: &[u8]| {
        let mut m = [0u8; 6];
        m.copy_from_slice(b);
        PeerName::from_mac(m)
    };
    let u64_at = |b: &[u8]| {
        let mut x = [0u8; 8];
        x.copy_from_slice(b);
        u64::from_be_bytes(x)
    };
    let mac = |b: &[u8]| {
        let mut m = [0u8; 6];
        m.copy_from_slice(b);
        MacAddr(m)
    };
    Ok(Heartbeat {
        dst_mac: mac(&frame[0..6]),
        src_mac: mac(&frame[6..12]),
        sender: name(&p[8..14]),
        receiver: name(&p[14..20]),
        conn_uid: u64_at(&p[20..28]),
        seq: u64_at(&p[28..36]),
        frame_len: frame.len(),
    })
}

/// Timing of the fast-path heartbeat.
#[derive(Debug, Clone)]
pub struct FastdpConfig {
    /// Interval until established (500 ms).
    pub fast_heartbeat: Duration,
    /// Interval afterwards (10 s).
    pub slow_heartbeat: Duration,
    /// Missing acks or heartbeats for this long put the path on hold (60 s).
    pub timeout: Duration,
}

impl Default for FastdpConfig {
    fn default() -> Self {
        FastdpConfig {
            fast_heartbeat: Duration::from_millis(500),
            slow_heartbeat: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
        }
    }
}

/// What the fast path of a connection needs to know.
#[derive(Debug, Clone)]
pub struct FastdpParams {
    /// Our peer name.
    pub local: PeerName,
    /// The remote peer.
    pub remote: PeerName,
    /// The connection UID.
    pub conn_uid: u64,
    /// Our bridge MAC (heartbeat source).
    pub local_mac: MacAddr,
    /// The peer's bridge MAC (heartbeat destination).
    pub remote_mac: MacAddr,
    /// The peer's underlay IPv4 address (VXLAN remote).
    pub peer_ip: Ipv4Addr,
    /// Heartbeat frame length: the bridge MTU + 14.
    pub frame_len: usize,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastdpAction {
    /// Send this frame through the VXLAN device (a packet socket on it).
    SendHeartbeat {
        /// The Ethernet frame.
        frame: Vec<u8>,
    },
    /// Send a fast-path control message over the TCP connection.
    SendControl {
        /// Fast-path sub-tag.
        sub_tag: u8,
        /// Payload.
        msg: Vec<u8>,
    },
    /// Add the static VXLAN FDB entry `mac dst peer_ip` heartbeats need.
    AddHeartbeatFdb {
        /// The peer's bridge MAC.
        mac: MacAddr,
        /// The peer's underlay address.
        peer_ip: Ipv4Addr,
    },
    /// Remove that entry (the connection is gone).
    RemoveHeartbeatFdb {
        /// The peer's bridge MAC.
        mac: MacAddr,
        /// The peer's underlay address.
        peer_ip: Ipv4Addr,
    },
    /// Add the all-zeros flood entry `00:00:00:00:00:00 dst peer_ip`: the
    /// kernel now floods broadcast/unknown unicast to this peer.
    AddFloodEntry {
        /// The peer's underlay address.
        peer_ip: Ipv4Addr,
    },
    /// Remove the flood entry for the peer.
    RemoveFloodEntry {
        /// The peer's underlay address.
        peer_ip: Ipv4Addr,
    },
    /// Flush the MACs the VXLAN device learned behind the peer (dynamic
    /// entries only; keep the static heartbeat entry).
    FlushPeerMacs {
        /// The peer's underlay address.
        peer_ip: Ipv4Addr,
    },
    /// The fast path's state changed.
    StateChanged {
        /// Always [`OverlayKind::Fastdp`].
        overlay: OverlayKind,
        /// Established (both directions proven at least once).
        established: bool,
        /// Currently healthy (usable).
        healthy: bool,
        /// Human-readable reason for status output.
        reason: String,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastdpStats {
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Heartbeats received from the peer.
    pub heartbeats_received: u64,
    /// Acks received for our heartbeats.
    pub acks_received: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Prepared,
    Confirmed,
    Stopped,
}

/// The fast path of one connection.
#[derive(Debug)]
pub struct FastdpConnection {
    cfg: FastdpConfig,
    p: FastdpParams,
    life: Lifecycle,
    next_seq: u64,
    next_heartbeat: Option<Millis>,
    last_ack: Option<Millis>,
    last_rx: Option<Millis>,
    highest_rx_seq: Option<u64>,
    established: bool,
    healthy: bool,
    flood_installed: bool,
    reason: String,
    actions: VecDeque<FastdpAction>,
    stats: FastdpStats,
}

impl FastdpConnection {
    /// A fast path for a prepared connection. Fails if the heartbeat frame
    /// length is impossible.
    pub fn new(params: FastdpParams, cfg: FastdpConfig) -> Result<Self, FastdpError> {
        if !(HEARTBEAT_MIN_FRAME_LEN..=usize::from(u16::MAX)).contains(&params.frame_len) {
            return Err(FastdpError::BadLength(params.frame_len));
        }
        Ok(FastdpConnection {
            cfg,
            p: params,
            life: Lifecycle::Prepared,
            next_seq: 0,
            next_heartbeat: None,
            last_ack: None,
            last_rx: None,
            highest_rx_seq: None,
            established: false,
            healthy: false,
            flood_installed: false,
            reason: "fastdp: not started yet".into(),
            actions: VecDeque::new(),
            stats: FastdpStats::default(),
        })
    }

    /// The remote peer.
    pub fn remote(&self) -> PeerName {
        self.p.remote
    }

    /// The peer's underlay address.
    pub fn peer_ip(&self) -> Ipv4Addr {
        self.p.peer_ip
    }

    /// Both directions were proven at least once.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Established and currently healthy: the peer can be served by the
    /// fast path.
    pub fn is_usable(&self) -> bool {
        self.established && self.healthy && self.life == Lifecycle::Confirmed
    }

    /// The overlay MTU the heartbeat proves (frame length − 14).
    pub fn mtu(&self) -> usize {
        self.p.frame_len - ETHERNET_HEADER_LEN
    }

    /// Why the fast path is (not) usable, for status output.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Counters.
    pub fn stats(&self) -> FastdpStats {
        self.stats
    }

    /// The next queued action.
    pub fn poll_action(&mut self) -> Option<FastdpAction> {
        self.actions.pop_front()
    }

    /// The connection was confirmed: install the heartbeat FDB entry and
    /// start heartbeating.
    pub fn confirm(&mut self, now: Millis) {
        if self.life != Lifecycle::Prepared {
            return;
        }
        self.life = Lifecycle::Confirmed;
        self.actions.push_back(FastdpAction::AddHeartbeatFdb {
            mac: self.p.remote_mac,
            peer_ip: self.p.peer_ip,
        });
        self.send_heartbeat(now);
        self.evaluate(now);
    }

    /// Stops: removes the flood entry (and the peer's MACs) if installed
    /// and the heartbeat FDB entry.
    pub fn stop(&mut self) {
        if self.life == Lifecycle::Stopped {
            return;
        }
        let was_confirmed = self.life == Lifecycle::Confirmed;
        self.life = Lifecycle::Stopped;
        self.next_heartbeat = None;
        self.set_flood(false);
        if was_confirmed {
            self.actions.push_back(FastdpAction::RemoveHeartbeatFdb {
                mac: self.p.remote_mac,
                peer_ip: self.p.peer_ip,
            });
        }
        self.healthy = false;
        self.reason = "fastdp: stopped".into();
    }

    fn send_heartbeat(&mut self, now: Millis) {
        let interval = if self.established {
            self.cfg.slow_heartbeat
        } else {
            self.cfg.fast_heartbeat
        };
        self.next_heartbeat = Some(now + interval);
        let hb = Heartbeat {
            dst_mac: self.p.remote_mac,
            src_mac: self.p.local_mac,
            sender: self.p.local,
            receiver: self.p.remote,
            conn_uid: self.p.conn_uid,
            seq: self.next_seq,
            frame_len: self.p.frame_len,
        };
        // The length was validated in new().
        if let Ok(frame) = hb.encode() {
            self.next_seq += 1;
            self.stats.heartbeats_sent += 1;
            self.actions
                .push_back(FastdpAction::SendHeartbeat { frame });
        }
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) must run.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if self.life != Lifecycle::Confirmed {
            return None;
        }
        let health = if self.healthy {
            [self.last_ack, self.last_rx]
                .into_iter()
                .flatten()
                .min()
                .map(|t| t + self.cfg.timeout)
        } else {
            None
        };
        [self.next_heartbeat, health].into_iter().flatten().min()
    }

    /// Runs due timers: heartbeats and the health check.
    pub fn handle_timeout(&mut self, now: Millis) {
        if self.life != Lifecycle::Confirmed {
            return;
        }
        if self.next_heartbeat.is_some_and(|t| now >= t) {
            self.send_heartbeat(now);
        }
        self.evaluate(now);
    }

    /// Handles a heartbeat received on the VXLAN device (already parsed
    /// with [`parse_heartbeat`]). Errors mean it is not for this connection.
    pub fn handle_heartbeat(&mut self, now: Millis, hb: &Heartbeat) -> Result<(), FastdpError> {
        if hb.sender != self.p.remote
            || hb.receiver != self.p.local
            || hb.conn_uid != self.p.conn_uid
        {
            return Err(FastdpError::WrongConnection {
                sender: hb.sender,
                receiver: hb.receiver,
                conn_uid: hb.conn_uid,
            });
        }
        if self.life != Lifecycle::Confirmed {
            return Ok(());
        }
        if self.highest_rx_seq.is_some_and(|h| hb.seq <= h) {
            return Ok(()); // duplicate or reordered: already acknowledged
        }
        self.highest_rx_seq = Some(hb.seq);
        self.stats.heartbeats_received += 1;
        self.last_rx = Some(now);
        self.actions.push_back(FastdpAction::SendControl {
            sub_tag: fastdp_tag::HEARTBEAT_ACK,
            msg: hb.seq.to_be_bytes().to_vec(),
        });
        self.evaluate(now);
        Ok(())
    }

    /// Handles a fast-path control message. Unknown sub-tags (Weave's
    /// IPsec setup, sub-tag 1) and malformed acks are ignored.
    pub fn handle_control(&mut self, now: Millis, sub_tag: u8, msg: &[u8]) {
        if self.life != Lifecycle::Confirmed || sub_tag != fastdp_tag::HEARTBEAT_ACK {
            return;
        }
        let Ok(b) = <[u8; 8]>::try_from(msg) else {
            return;
        };
        let seq = u64::from_be_bytes(b);
        if seq >= self.next_seq {
            return; // we never sent it
        }
        self.stats.acks_received += 1;
        self.last_ack = Some(now);
        self.evaluate(now);
    }

    fn fresh(&self, t: Option<Millis>, now: Millis) -> bool {
        t.is_some_and(|t| now.saturating_duration_since(t) < self.cfg.timeout)
    }

    fn evaluate(&mut self, now: Millis) {
        if self.life != Lifecycle::Confirmed {
            return;
        }
        let was = (self.established, self.healthy);
        let ack_ok = self.fresh(self.last_ack, now);
        let rx_ok = self.fresh(self.last_rx, now);
        let secs = self.cfg.timeout.as_secs();
        if !self.established && ack_ok && rx_ok {
            self.established = true;
            // Slow down from now on.
            self.next_heartbeat = Some(now + self.cfg.slow_heartbeat);
        }
        self.healthy = self.established && ack_ok && rx_ok;
        let reason = if self.healthy {
            "fastdp: heartbeats healthy".to_string()
        } else if !self.established {
            if self.last_ack.is_none() {
                "fastdp: awaiting heartbeat ack (UDP 6784 blocked or MTU too small?)".to_string()
            } else {
                "fastdp: awaiting the peer's heartbeat (UDP 6784 blocked or MTU too small on the way back?)".to_string()
            }
        } else if !ack_ok {
            format!("fastdp: heartbeats lost for {secs}s (UDP 6784 blocked or MTU too small?)")
        } else {
            format!("fastdp: no heartbeat from the peer for {secs}s (UDP 6784 blocked or MTU too small on the way back?)")
        };
        let usable = self.established && self.healthy;
        self.set_flood(usable);
        if was != (self.established, self.healthy) || reason != self.reason {
            self.reason = reason;
            self.actions.push_back(FastdpAction::StateChanged {
                overlay: OverlayKind::Fastdp,
                established: self.established,
                healthy: self.healthy,
                reason: self.reason.clone(),
            });
        }
    }

    fn set_flood(&mut self, on: bool) {
        if on == self.flood_installed {
            return;
        }
        self.flood_installed = on;
        let peer_ip = self.p.peer_ip;
        if on {
            self.actions
                .push_back(FastdpAction::AddFloodEntry { peer_ip });
        } else {
            self.actions
                .push_back(FastdpAction::RemoveFloodEntry { peer_ip });
            self.actions
                .push_back(FastdpAction::FlushPeerMacs { peer_ip });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pn(v: u64) -> PeerName {
        PeerName::new(v).unwrap()
    }
    const A: u64 = 0x02_00_00_00_00_0a;
    const B: u64 = 0x02_00_00_00_00_0b;

    fn params(local: u64, remote: u64, ip: u8) -> FastdpParams {
        FastdpParams {
            local: pn(local),
            remote: pn(remote),
            conn_uid: 99,
            local_mac: MacAddr::from(pn(local)),
            remote_mac: MacAddr::from(pn(remote)),
            peer_ip: Ipv4Addr::new(192, 168, 0, ip),
            frame_len: 1376 + 14,
        }
    }

    fn pair() -> (FastdpConnection, FastdpConnection) {
        (
            FastdpConnection::new(params(A, B, 2), FastdpConfig::default()).unwrap(),
            FastdpConnection::new(params(B, A, 1), FastdpConfig::default()).unwrap(),
        )
    }

    fn drain(c: &mut FastdpConnection) -> Vec<FastdpAction> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    /// Delivers `from`'s heartbeats (if `path_ok`) and control messages to
    /// `to`; returns the other actions.
    fn shuttle(
        now: Millis,
        from: &mut FastdpConnection,
        to: &mut FastdpConnection,
        path_ok: bool,
    ) -> Vec<FastdpAction> {
        let mut rest = Vec::new();
        for a in drain(from) {
            match a {
                FastdpAction::SendHeartbeat { frame } => {
                    if path_ok {
                        let hb = parse_heartbeat(&frame).unwrap();
                        to.handle_heartbeat(now, &hb).unwrap();
                    }
                }
                FastdpAction::SendControl { sub_tag, msg } => to.handle_control(now, sub_tag, &msg),
                other => rest.push(other),
            }
        }
        rest
    }

    #[test]
    fn heartbeat_frame_layout() {
        let hb = Heartbeat {
            dst_mac: MacAddr([2, 0, 0, 0, 0, 0x0b]),
            src_mac: MacAddr([2, 0, 0, 0, 0, 0x0a]),
            sender: pn(A),
            receiver: pn(B),
            conn_uid: 0x1122334455667788,
            seq: 5,
            frame_len: 64,
        };
        let f = hb.encode().unwrap();
        let expected: Vec<u8> = [
            &[2, 0, 0, 0, 0, 0x0b, 2, 0, 0, 0, 0, 0x0a, 0x88, 0xb5][..],
            b"WfHb",
            &[1, 0, 0, 64],
            &[2, 0, 0, 0, 0, 0x0a, 2, 0, 0, 0, 0, 0x0b],
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
            &[0, 0, 0, 0, 0, 0, 0, 5],
            &[0; 64 - 50],
        ]
        .concat();
        assert_eq!(f, expected);
        assert_eq!(parse_heartbeat(&f).unwrap(), hb);
        // Truncation, other EtherTypes, bad magic/version are rejected.
        assert_eq!(
            parse_heartbeat(&f[..60]),
            Err(FastdpError::LengthMismatch {
                claimed: 64,
                actual: 60
            })
        );
        let mut g = f.clone();
        g[13] = 0xb6;
        assert!(matches!(
            parse_heartbeat(&g),
            Err(FastdpError::NotHeartbeat(_))
        ));
        let mut g = f.clone();
        g[14] = b'X';
        assert!(matches!(
            parse_heartbeat(&g),
            Err(FastdpError::NotHeartbeat(_))
        ));
        let mut g = f.clone();
        g[18] = 2;
        assert!(matches!(
            parse_heartbeat(&g),
            Err(FastdpError::NotHeartbeat(_))
        ));
        assert!(matches!(
            parse_heartbeat(&f[..40]),
            Err(FastdpError::NotHeartbeat(_))
        ));
        assert_eq!(
            Heartbeat {
                frame_len: 49,
                ..hb
            }
            .encode(),
            Err(FastdpError::BadLength(49))
        );
    }

    #[test]
    fn lifecycle_established_lost_recovered() {
        let (mut a, mut b) = pair();
        let t0 = Millis(0);
        a.confirm(t0);
        b.confirm(t0);
        let acts = drain(&mut a);
        assert_eq!(
            acts[0],
            FastdpAction::AddHeartbeatFdb {
                mac: MacAddr::from(pn(B)),
                peer_ip: Ipv4Addr::new(192, 168, 0, 2)
            }
        );
        let FastdpAction::SendHeartbeat { frame } = &acts[1] else {
            panic!()
        };
        assert_eq!(frame.len(), 1390);
        assert!(!a.is_usable());
        assert!(a.reason().contains("awaiting heartbeat ack"));
        // Re-queue a's heartbeat by handling it on b directly.
        b.handle_heartbeat(t0, &parse_heartbeat(frame).unwrap())
            .unwrap();
        // b acks a; b's own heartbeat reaches a; a acks it.
        shuttle(t0, &mut b, &mut a, true);
        let rest = shuttle(t0, &mut a, &mut b, true);
        assert!(a.is_usable() && b.is_usable());
        assert!(rest.contains(&FastdpAction::AddFloodEntry {
            peer_ip: Ipv4Addr::new(192, 168, 0, 2)
        }));
        assert!(rest.iter().any(|x| matches!(
            x,
            FastdpAction::StateChanged {
                established: true,
                healthy: true,
                ..
            }
        )));
        assert_eq!(a.reason(), "fastdp: heartbeats healthy");
        // Slow heartbeats now.
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(10)));

        // Steady state for a while.
        let mut t = t0;
        for _ in 0..10 {
            t += Duration::from_secs(10);
            a.handle_timeout(t);
            b.handle_timeout(t);
            shuttle(t, &mut a, &mut b, true);
            shuttle(t, &mut b, &mut a, true);
            assert!(a.is_usable() && b.is_usable());
        }
        // UDP 6784 gets blocked: heartbeats vanish in both directions.
        let cut = t;
        let mut lost_at = None;
        let mut a_actions = Vec::new();
        while lost_at.is_none() {
            t = a.poll_timeout().unwrap().min(b.poll_timeout().unwrap());
            a.handle_timeout(t);
            b.handle_timeout(t);
            a_actions.extend(shuttle(t, &mut a, &mut b, false));
            shuttle(t, &mut b, &mut a, false);
            if !a.is_usable() {
                lost_at = Some(t);
            }
        }
        assert_eq!(lost_at.unwrap(), cut + Duration::from_secs(60));
        assert!(!b.is_usable());
        assert!(a.is_established());
        assert!(
            a.reason().contains("heartbeats lost for 60s"),
            "{}",
            a.reason()
        );
        let ip = Ipv4Addr::new(192, 168, 0, 2);
        assert!(a_actions.contains(&FastdpAction::RemoveFloodEntry { peer_ip: ip }));
        assert!(a_actions.contains(&FastdpAction::FlushPeerMacs { peer_ip: ip }));
        // Heartbeats continue (slowly) while on hold.
        assert!(a.poll_timeout().is_some());
        let sent_before = a.stats().heartbeats_sent;
        t += Duration::from_secs(30);
        a.handle_timeout(t);
        assert!(a.stats().heartbeats_sent > sent_before);
        drain(&mut a);
        // The path comes back: the next heartbeats and acks restore it.
        let mut recovered = Vec::new();
        for _ in 0..6 {
            t = a.poll_timeout().unwrap().min(b.poll_timeout().unwrap());
            a.handle_timeout(t);
            b.handle_timeout(t);
            recovered.extend(shuttle(t, &mut a, &mut b, true));
            shuttle(t, &mut b, &mut a, true);
            recovered.extend(shuttle(t, &mut a, &mut b, true));
        }
        assert!(a.is_usable() && b.is_usable());
        assert!(recovered.contains(&FastdpAction::AddFloodEntry { peer_ip: ip }));
        // Stop cleans up.
        drain(&mut a);
        a.stop();
        let acts = drain(&mut a);
        assert_eq!(
            acts,
            vec![
                FastdpAction::RemoveFloodEntry { peer_ip: ip },
                FastdpAction::FlushPeerMacs { peer_ip: ip },
                FastdpAction::RemoveHeartbeatFdb {
                    mac: MacAddr::from(pn(B)),
                    peer_ip: ip
                },
            ]
        );
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn one_way_path_is_not_established() {
        let (mut a, mut b) = pair();
        let t0 = Millis(0);
        a.confirm(t0);
        b.confirm(t0);
        // a → b works, b → a is blocked (acks still flow over TCP).
        let mut t = t0;
        for _ in 0..20 {
            shuttle(t, &mut a, &mut b, true);
            shuttle(t, &mut b, &mut a, false);
            shuttle(t, &mut a, &mut b, true);
            t += Duration::from_millis(500);
            a.handle_timeout(t);
            b.handle_timeout(t);
        }
        assert!(!a.is_established() && !b.is_established());
        assert!(
            a.reason().contains("awaiting the peer's heartbeat"),
            "{}",
            a.reason()
        );
        assert!(
            b.reason().contains("awaiting heartbeat ack"),
            "{}",
            b.reason()
        );
        // Still fast heartbeats.
        assert_eq!(a.poll_timeout(), Some(t + Duration::from_millis(500)));
    }

    #[test]
    fn foreign_and_duplicate_heartbeats_and_bogus_acks() {
        let (mut a, mut b) = pair();
        a.confirm(Millis(0));
        b.confirm(Millis(0));
        let mut hb = Heartbeat {
            dst_mac: MacAddr::from(pn(A)),
            src_mac: MacAddr::from(pn(B)),
            sender: pn(B),
            receiver: pn(A),
            conn_uid: 98,
            seq: 0,
            frame_len: 1390,
        };
        assert!(matches!(
            a.handle_heartbeat(Millis(1), &hb),
            Err(FastdpError::WrongConnection { .. })
        ));
        hb.conn_uid = 99;
        drain(&mut a);
        a.handle_heartbeat(Millis(1), &hb).unwrap();
        a.handle_heartbeat(Millis(2), &hb).unwrap();
        let acks = drain(&mut a)
            .into_iter()
            .filter(|x| matches!(x, FastdpAction::SendControl { .. }))
            .count();
        assert_eq!(acks, 1, "a duplicate is not acked twice");
        // An ack for a heartbeat never sent is ignored; so is garbage.
        a.handle_control(Millis(3), 0, &100u64.to_be_bytes());
        a.handle_control(Millis(3), 0, &[1, 2]);
        a.handle_control(Millis(3), 1, &[0; 64]);
        assert_eq!(a.stats().acks_received, 0);
        assert!(!a.is_established());
        a.handle_control(Millis(3), 0, &0u64.to_be_bytes());
        assert!(a.is_usable());
        let _ = b;
    }

    proptest! {
        #[test]
        fn parse_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(hb) = parse_heartbeat(&frame) {
                prop_assert_eq!(hb.frame_len, frame.len());
            }
        }

        #[test]
        fn round_trip(seq: u64, uid: u64, len in HEARTBEAT_MIN_FRAME_LEN..2000usize) {
            let hb = Heartbeat {
                dst_mac: MacAddr([2, 1, 2, 3, 4, 5]),
                src_mac: MacAddr([2, 5, 4, 3, 2, 1]),
                sender: pn(A), receiver: pn(B), conn_uid: uid, seq, frame_len: len,
            };
            prop_assert_eq!(parse_heartbeat(&hb.encode().unwrap()).unwrap(), hb);
        }
    }
}
