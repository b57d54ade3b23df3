//! The per-connection overlay switch: runs the negotiated overlays in
//! parallel and says which one serves the peer now, and why.
//!
//! - **fastdp** serves the peer while its heartbeat is established and
//!   healthy;
//! - otherwise **sleeve**, once established;
//! - otherwise the peer is **pending**.
//!
//! The connection counts as established (for
//! `Mesh::connection_established`) as soon as either overlay is
//! ([`SwitchAction::Established`], once). It fails ([`SwitchAction::Failed`])
//! when sleeve has failed (60 s without heartbeats) and the fast path is not
//! usable — the mesh should then drop and redial the connection. The fast
//! path is never used on an encrypted (untrusted) connection: Weft has no
//! IPsec for it, and sleeve encrypts.
//!
//! The switch owns one [`SleeveForwarder`] and one [`FastdpConnection`] (when
//! negotiated); the driver reaches them through the delegating methods or
//! [`sleeve_mut`](OverlaySwitch::sleeve_mut) /
//! [`fastdp_mut`](OverlaySwitch::fastdp_mut), and always drains
//! [`poll_action`](OverlaySwitch::poll_action) afterwards: it collects the
//! overlays' actions, frames their control messages for the TCP connection
//! and re-evaluates the choice.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddrV4;

use weft_mesh::Millis;
use weft_wire::framing::ProtocolMsg;
use weft_wire::{PeerName, SessionKey};

use crate::control::{
    decode_control, encode_control, local_overlays, negotiate, ControlError, ControlRoute,
    Negotiation, OverlayKind, FASTDP_OVERLAY,
};
use crate::ether::MacAddr;
use crate::fastdp::{
    FastdpAction, FastdpConfig, FastdpConnection, FastdpError, FastdpParams, Heartbeat,
};
use crate::sleeve::codec::{CodecError, SleeveFrame};
use crate::sleeve::forwarder::{
    ForwardDrop, ForwardOutcome, ForwarderParams, SleeveAction, SleeveConfig, SleeveForwarder,
};

/// Which overlay serves a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServedBy {
    /// The kernel VXLAN fast path.
    Fastdp,
    /// Userspace sleeve.
    Sleeve,
    /// Nothing established yet (or everything on hold).
    Pending,
}

impl ServedBy {
    /// Name for status output.
    pub fn name(self) -> &'static str {
        match self {
            ServedBy::Fastdp => "fastdp",
            ServedBy::Sleeve => "sleeve",
            ServedBy::Pending => "pending",
        }
    }
}

/// Local fast-path settings for a connection (`None` in
/// [`SwitchParams::fastdp`] when the fast path is disabled on this peer).
#[derive(Debug, Clone)]
pub struct FastdpSetup {
    /// Our bridge MAC.
    pub local_mac: MacAddr,
    /// The peer's bridge MAC (heartbeat destination).
    pub remote_mac: MacAddr,
    /// Heartbeat frame length: bridge MTU + 14.
    pub frame_len: usize,
}

/// Everything the switch needs to prepare a connection.
#[derive(Debug, Clone)]
pub struct SwitchParams {
    /// Our peer name.
    pub local: PeerName,
    /// The remote peer.
    pub remote: PeerName,
    /// The connection UID.
    pub conn_uid: u64,
    /// Whether we dialled.
    pub outbound: bool,
    /// The session key on untrusted connections.
    pub session_key: Option<SessionKey>,
    /// The remote's `Overlays` feature, split on whitespace (`None` if absent).
    pub remote_overlays: Option<Vec<String>>,
    /// The peer's underlay IPv4 address (TCP remote address).
    pub remote_ip: std::net::Ipv4Addr,
    /// The remote's sleeve UDP address when outbound (`remote_ip:6783`).
    pub sleeve_remote_addr: Option<SocketAddrV4>,
    /// Fast-path settings, `None` if the fast path is disabled here (then
    /// `weft-vxlan` must not be advertised either).
    pub fastdp: Option<FastdpSetup>,
    /// Sleeve timing.
    pub sleeve_config: SleeveConfig,
    /// Fast-path timing.
    pub fastdp_config: FastdpConfig,
}

/// Errors preparing a connection or handling its control messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// Negotiation or control-message framing failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The fast path could not be set up.
    #[error("fast path: {0}")]
    Fastdp(#[from] FastdpError),
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchAction {
    /// Send this message on the mesh TCP connection.
    Control(ProtocolMsg),
    /// A sleeve action (datagrams, ICMP replies, MTU and address changes).
    Sleeve(SleeveAction),
    /// A fast-path action (heartbeat frames, FDB programming, state).
    Fastdp(FastdpAction),
    /// The connection is established (first overlay up): tell the mesh.
    Established,
    /// The serving overlay (or its reason) changed.
    ServedByChanged {
        /// The overlay now serving the peer.
        served_by: ServedBy,
        /// Why, for status output.
        reason: String,
    },
    /// No working overlay is left: close the connection.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Attributes of a connection for `weft status connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionAttrs {
    /// `fastdp`, `sleeve` or `pending`.
    pub name: &'static str,
    /// Whether the data plane is encrypted (NaCl sleeve).
    pub encrypted: bool,
    /// The overlay MTU of the serving overlay.
    pub mtu: Option<usize>,
    /// Why this overlay serves the peer.
    pub why: String,
}

impl ConnectionAttrs {
    /// As a string map (Weave's `Attrs()`).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("name".into(), self.name.into());
        m.insert("encrypted".into(), self.encrypted.to_string());
        if let Some(mtu) = self.mtu {
            m.insert("mtu".into(), mtu.to_string());
        }
        m.insert("why".into(), self.why.clone());
        m
    }
}

/// The overlays of one mesh connection.
#[derive(Debug)]
pub struct OverlaySwitch {
    remote: PeerName,
    encrypted: bool,
    negotiation: Negotiation,
    sleeve: Option<(ControlRoute, SleeveForwarder)>,
    sleeve_error: Option<String>,
    fastdp: Option<(ControlRoute, FastdpConnection)>,
    /// Why the fast path is not part of this connection, if it is not.
    fastdp_absent: Option<String>,
    established_sent: bool,
    failed: bool,
    served: ServedBy,
    reason: String,
    /// Where [`evaluate`](Self::evaluate) writes, reused: it runs after
    /// every datagram and must not allocate.
    reason_scratch: String,
    actions: VecDeque<SwitchAction>,
}

impl OverlaySwitch {
    /// Negotiates the overlays and prepares them (Weave's
    /// `PrepareConnection`). Errors if there is no overlay in common.
    pub fn prepare(p: SwitchParams) -> Result<Self, SwitchError> {
        let ours = local_overlays(p.fastdp.is_some());
        let negotiation = negotiate(&ours, p.remote_overlays.as_deref(), p.outbound)?;
        let routes: Vec<(OverlayKind, ControlRoute)> = match &negotiation {
            Negotiation::Compat => vec![(OverlayKind::Sleeve, ControlRoute::Compat)],
            Negotiation::Common(list) => list
                .iter()
                .enumerate()
                .map(|(i, k)| (*k, ControlRoute::Indexed(i as u8)))
                .collect(),
        };
        let mut sleeve = None;
        let mut fastdp = None;
        let mut fastdp_absent = None;
        for (kind, route) in routes {
            match kind {
                OverlayKind::Sleeve => {
                    let fwd = SleeveForwarder::new(
                        ForwarderParams {
                            local: p.local,
                            remote: p.remote,
                            conn_uid: p.conn_uid,
                            outbound: p.outbound,
                            remote_addr: if p.outbound {
                                p.sleeve_remote_addr
                            } else {
                                None
                            },
                            session_key: p.session_key.clone(),
                        },
                        p.sleeve_config.clone(),
                    );
                    sleeve = Some((route, fwd));
                }
                OverlayKind::Fastdp => {
                    let Some(setup) = &p.fastdp else {
                        continue; // not offered by us: cannot be common
                    };
                    if p.session_key.is_some() {
                        fastdp_absent = Some(
                            "fastdp: not used on an encrypted (untrusted) connection, sleeve encrypts"
                                .to_string(),
                        );
                        continue;
                    }
                    let conn = FastdpConnection::new(
                        FastdpParams {
                            local: p.local,
                            remote: p.remote,
                            conn_uid: p.conn_uid,
                            local_mac: setup.local_mac,
                            remote_mac: setup.remote_mac,
                            peer_ip: p.remote_ip,
                            frame_len: setup.frame_len,
                        },
                        p.fastdp_config.clone(),
                    )?;
                    fastdp = Some((route, conn));
                }
            }
        }
        if fastdp.is_none() && fastdp_absent.is_none() {
            let theirs = p.remote_overlays.as_deref();
            let remote_offers = |name: &str| theirs.is_some_and(|t| t.iter().any(|n| n == name));
            let ours_on = p.fastdp.is_some();
            fastdp_absent = Some(
                if theirs.is_none() {
                    "remote is a Weave peer without the overlay switch: sleeve only"
                } else if !ours_on && remote_offers(FASTDP_OVERLAY) {
                    "fast path disabled on this peer"
                } else if !ours_on {
                    "fast path disabled on this peer and on the remote"
                } else if remote_offers("fastdp") {
                    "remote is a Weave peer without weft-vxlan"
                } else {
                    "remote does not offer weft-vxlan (fast path disabled there)"
                }
                .to_string(),
            );
        }
        let mut sw = OverlaySwitch {
            remote: p.remote,
            encrypted: p.session_key.is_some(),
            negotiation,
            sleeve,
            sleeve_error: None,
            fastdp,
            fastdp_absent,
            established_sent: false,
            failed: false,
            served: ServedBy::Pending,
            reason: String::new(),
            reason_scratch: String::new(),
            actions: VecDeque::new(),
        };
        let mut reason = String::new();
        sw.evaluate(&mut reason);
        sw.reason = reason;
        Ok(sw)
    }

    /// The remote peer.
    pub fn remote(&self) -> PeerName {
        self.remote
    }

    /// The negotiated overlays.
    pub fn negotiation(&self) -> &Negotiation {
        &self.negotiation
    }

    /// Which overlay serves the peer now.
    pub fn served_by(&self) -> ServedBy {
        self.served
    }

    /// Why, for status output.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether the connection's data plane is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// The sleeve forwarder, if sleeve was negotiated.
    pub fn sleeve(&self) -> Option<&SleeveForwarder> {
        self.sleeve.as_ref().map(|(_, s)| s)
    }

    /// Mutable access to the sleeve forwarder (drain
    /// [`poll_action`](Self::poll_action) afterwards).
    pub fn sleeve_mut(&mut self) -> Option<&mut SleeveForwarder> {
        self.sleeve.as_mut().map(|(_, s)| s)
    }

    /// The fast path, if negotiated and usable on this connection.
    pub fn fastdp(&self) -> Option<&FastdpConnection> {
        self.fastdp.as_ref().map(|(_, f)| f)
    }

    /// Mutable access to the fast path (drain
    /// [`poll_action`](Self::poll_action) afterwards).
    pub fn fastdp_mut(&mut self) -> Option<&mut FastdpConnection> {
        self.fastdp.as_mut().map(|(_, f)| f)
    }

    /// The MTU of each running overlay.
    pub fn overlay_mtus(&self) -> Vec<(OverlayKind, usize)> {
        let mut v = Vec::new();
        if let Some(f) = self.fastdp() {
            v.push((OverlayKind::Fastdp, f.mtu()));
        }
        if let Some(s) = self.sleeve() {
            v.push((OverlayKind::Sleeve, s.mtu()));
        }
        v
    }

    /// Attributes for `weft status connections`.
    pub fn attrs(&self) -> ConnectionAttrs {
        let mtu = match self.served {
            ServedBy::Fastdp => self.fastdp().map(FastdpConnection::mtu),
            ServedBy::Sleeve => self.sleeve().map(SleeveForwarder::mtu),
            ServedBy::Pending => None,
        };
        ConnectionAttrs {
            name: self.served.name(),
            encrypted: self.encrypted,
            mtu,
            why: self.reason.clone(),
        }
    }

    /// The connection was confirmed: start both overlays.
    pub fn confirm(&mut self, now: Millis) {
        if let Some((_, s)) = &mut self.sleeve {
            s.confirm(now);
        }
        if let Some((_, f)) = &mut self.fastdp {
            f.confirm(now);
        }
        self.pump();
    }

    /// Stops both overlays (the fast path removes its FDB entries).
    pub fn stop(&mut self) {
        if let Some((_, s)) = &mut self.sleeve {
            s.stop();
        }
        if let Some((_, f)) = &mut self.fastdp {
            f.stop();
        }
        self.pump();
    }

    /// Handles an overlay control message the mesh handed over
    /// (`Action::Overlay`). Errors are for logging; the connection goes on.
    pub fn handle_control(&mut self, now: Millis, msg: &ProtocolMsg) -> Result<(), SwitchError> {
        let c = decode_control(msg)?;
        let kind = match (&self.negotiation, c.overlay_index) {
            (Negotiation::Compat, None) => OverlayKind::Sleeve,
            (Negotiation::Compat, Some(_)) => {
                return Err(ControlError::WrongFraming(
                    "indexed message on a connection without the overlay switch",
                )
                .into())
            }
            (Negotiation::Common(_), None) => {
                return Err(ControlError::WrongFraming(
                    "legacy tag 1-3 message on a connection using the overlay switch",
                )
                .into())
            }
            (Negotiation::Common(list), Some(i)) => *list
                .get(usize::from(i))
                .ok_or(ControlError::UnknownIndex(i))?,
        };
        match kind {
            OverlayKind::Sleeve => {
                if let Some((_, s)) = &mut self.sleeve {
                    s.handle_control(now, c.sub_tag, &c.msg);
                }
            }
            OverlayKind::Fastdp => {
                if let Some((_, f)) = &mut self.fastdp {
                    f.handle_control(now, c.sub_tag, &c.msg);
                }
            }
        }
        self.pump();
        Ok(())
    }

    /// Feeds a sleeve datagram body (after the sender name) from the peer.
    pub fn receive_sleeve(
        &mut self,
        now: Millis,
        from: SocketAddrV4,
        body: &[u8],
        on_frame: impl FnMut(SleeveFrame<'_>),
    ) -> Result<usize, CodecError> {
        let r = match &mut self.sleeve {
            Some((_, s)) => s.receive(now, from, body, on_frame),
            None => Ok(0),
        };
        self.pump();
        r
    }

    /// Feeds a fast-path heartbeat from the peer.
    pub fn receive_fastdp_heartbeat(
        &mut self,
        now: Millis,
        hb: &Heartbeat,
    ) -> Result<(), FastdpError> {
        let r = match &mut self.fastdp {
            Some((_, f)) => f.handle_heartbeat(now, hb),
            None => Ok(()),
        };
        self.pump();
        r
    }

    /// Forwards a frame over this connection's sleeve (see
    /// [`SleeveForwarder::forward`]).
    pub fn forward_sleeve(
        &mut self,
        src: PeerName,
        dst: PeerName,
        frame: &[u8],
        broadcast: bool,
    ) -> ForwardOutcome {
        match &mut self.sleeve {
            Some((_, s)) => s.forward(src, dst, frame, broadcast),
            None => ForwardOutcome::Dropped(ForwardDrop::NotRunning),
        }
    }

    /// Sends the sleeve frames still queued.
    pub fn flush(&mut self) {
        if let Some((_, s)) = &mut self.sleeve {
            s.flush();
        }
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) must run.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let s = self.sleeve().and_then(SleeveForwarder::poll_timeout);
        let f = self.fastdp().and_then(FastdpConnection::poll_timeout);
        [s, f].into_iter().flatten().min()
    }

    /// Runs both overlays' due timers.
    pub fn handle_timeout(&mut self, now: Millis) {
        if let Some((_, s)) = &mut self.sleeve {
            s.handle_timeout(now);
        }
        if let Some((_, f)) = &mut self.fastdp {
            f.handle_timeout(now);
        }
        self.pump();
    }

    /// The next action (collects the overlays' actions first).
    pub fn poll_action(&mut self) -> Option<SwitchAction> {
        self.pump();
        self.actions.pop_front()
    }

    fn push_control(&mut self, route: ControlRoute, sub_tag: u8, msg: &[u8]) {
        // Encoding only fails for an impossible compat sub-tag, which the
        // sleeve never produces.
        if let Ok(m) = encode_control(route, sub_tag, msg) {
            self.actions.push_back(SwitchAction::Control(m));
        }
    }

    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            if let Some((route, s)) = &mut self.sleeve {
                let route = *route;
                if let Some(a) = s.poll_action() {
                    progressed = true;
                    match a {
                        SleeveAction::SendControl { sub_tag, msg } => {
                            self.push_control(route, sub_tag, &msg)
                        }
                        SleeveAction::Established => {}
                        SleeveAction::Failed { error } => {
                            self.sleeve_error = Some(format!("sleeve: {error}"));
                        }
                        other => self.actions.push_back(SwitchAction::Sleeve(other)),
                    }
                }
            }
            if let Some((route, f)) = &mut self.fastdp {
                let route = *route;
                if let Some(a) = f.poll_action() {
                    progressed = true;
                    match a {
                        FastdpAction::SendControl { sub_tag, msg } => {
                            self.push_control(route, sub_tag, &msg)
                        }
                        other => self.actions.push_back(SwitchAction::Fastdp(other)),
                    }
                }
            }
            self.update();
            if !progressed {
                break;
            }
        }
    }

    /// Which overlay serves the connection and whether it failed; the
    /// reason is written to `reason` (cleared first).
    fn evaluate(&self, reason: &mut String) -> (ServedBy, bool) {
        reason.clear();
        let fast_usable = self.fastdp().is_some_and(FastdpConnection::is_usable);
        let sleeve_running = self.sleeve().is_some_and(SleeveForwarder::is_running);
        let sleeve_up =
            sleeve_running && self.sleeve().is_some_and(SleeveForwarder::is_established);
        let why_not_fast = match (self.fastdp(), &self.fastdp_absent) {
            (Some(f), _) => f.reason(),
            (None, Some(r)) => r.as_str(),
            (None, None) => "fast path unavailable",
        };
        if fast_usable {
            reason.push_str(why_not_fast);
            return (ServedBy::Fastdp, false);
        }
        if sleeve_up {
            reason.push_str("sleeve, because ");
            reason.push_str(why_not_fast);
            return (ServedBy::Sleeve, false);
        }
        let sleeve_state = if let Some(e) = &self.sleeve_error {
            e.as_str()
        } else if self.sleeve.is_none() {
            "sleeve not negotiated"
        } else {
            "sleeve: awaiting heartbeat ack"
        };
        reason.push_str(sleeve_state);
        reason.push_str("; ");
        reason.push_str(why_not_fast);
        let failed = self.sleeve.is_some() && !sleeve_running;
        (ServedBy::Pending, failed)
    }

    fn update(&mut self) {
        if self.failed {
            return;
        }
        let mut reason = std::mem::take(&mut self.reason_scratch);
        let (served, failed) = self.evaluate(&mut reason);
        if served != ServedBy::Pending && !self.established_sent {
            self.established_sent = true;
            self.actions.push_back(SwitchAction::Established);
        }
        if served != self.served || reason != self.reason {
            self.served = served;
            self.reason.clone_from(&reason);
            self.actions.push_back(SwitchAction::ServedByChanged {
                served_by: served,
                reason: reason.clone(),
            });
        }
        if failed {
            self.failed = true;
            self.actions.push_back(SwitchAction::Failed {
                reason: format!("no working overlay to {}: {reason}", self.remote),
            });
        }
        self.reason_scratch = reason;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastdp::parse_heartbeat;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn pn(v: u64) -> PeerName {
        PeerName::new(v).unwrap()
    }
    const A: u64 = 0x02_00_00_00_00_0a;
    const B: u64 = 0x02_00_00_00_00_0b;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 0, last)
    }

    fn params(
        local: u64,
        remote: u64,
        outbound: bool,
        remote_overlays: Option<&str>,
        fast: bool,
        key: Option<SessionKey>,
    ) -> SwitchParams {
        let remote_last = (remote & 0xff) as u8;
        SwitchParams {
            local: pn(local),
            remote: pn(remote),
            conn_uid: 5,
            outbound,
            session_key: key,
            remote_overlays: remote_overlays
                .map(|s| s.split_whitespace().map(str::to_string).collect()),
            remote_ip: ip(remote_last),
            sleeve_remote_addr: Some(SocketAddrV4::new(ip(remote_last), 6783)),
            fastdp: fast.then(|| FastdpSetup {
                local_mac: MacAddr::from(pn(local)),
                remote_mac: MacAddr::from(pn(remote)),
                frame_len: 1390,
            }),
            sleeve_config: SleeveConfig::default(),
            fastdp_config: FastdpConfig::default(),
        }
    }

    fn drain(s: &mut OverlaySwitch) -> Vec<SwitchAction> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    /// Moves `from`'s actions to `to`: control messages always, sleeve
    /// datagrams if `sleeve_ok`, fast-path heartbeats if `fast_ok`.
    fn shuttle(
        now: Millis,
        from: &mut OverlaySwitch,
        from_ip: Ipv4Addr,
        to: &mut OverlaySwitch,
        sleeve_ok: bool,
        fast_ok: bool,
    ) -> Vec<SwitchAction> {
        let mut rest = Vec::new();
        for a in drain(from) {
            match a {
                SwitchAction::Control(m) => to.handle_control(now, &m).unwrap(),
                SwitchAction::Sleeve(SleeveAction::SendDatagram { payload, .. }) => {
                    if sleeve_ok {
                        to.receive_sleeve(
                            now,
                            SocketAddrV4::new(from_ip, 6783),
                            &payload[6..],
                            |_| {},
                        )
                        .unwrap();
                    }
                }
                SwitchAction::Fastdp(FastdpAction::SendHeartbeat { frame }) => {
                    if fast_ok {
                        to.receive_fastdp_heartbeat(now, &parse_heartbeat(&frame).unwrap())
                            .unwrap();
                    }
                }
                other => rest.push(other),
            }
        }
        rest
    }

    fn run(
        a: &mut OverlaySwitch,
        b: &mut OverlaySwitch,
        from: Millis,
        until: Millis,
        sleeve_ok: bool,
        fast_ok: bool,
    ) -> (Vec<SwitchAction>, Vec<SwitchAction>) {
        let (mut ra, mut rb) = (Vec::new(), Vec::new());
        let mut t = from;
        loop {
            for _ in 0..3 {
                ra.extend(shuttle(t, a, ip(1), b, sleeve_ok, fast_ok));
                rb.extend(shuttle(t, b, ip(2), a, sleeve_ok, fast_ok));
            }
            let next = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(n) if n <= until => {
                    t = n.max(t);
                    a.handle_timeout(t);
                    b.handle_timeout(t);
                }
                _ => break,
            }
        }
        (ra, rb)
    }

    #[test]
    fn weft_peers_use_fastdp_when_healthy_and_fall_back() {
        let mut a =
            OverlaySwitch::prepare(params(A, B, true, Some("weft-vxlan sleeve"), true, None))
                .unwrap();
        let mut b =
            OverlaySwitch::prepare(params(B, A, false, Some("weft-vxlan sleeve"), true, None))
                .unwrap();
        assert_eq!(
            a.negotiation(),
            &Negotiation::Common(vec![OverlayKind::Fastdp, OverlayKind::Sleeve])
        );
        assert_eq!(a.served_by(), ServedBy::Pending);
        assert!(
            a.reason().contains("sleeve: awaiting heartbeat ack"),
            "{}",
            a.reason()
        );
        let t0 = Millis(0);
        a.confirm(t0);
        b.confirm(t0);
        let (ra, _) = run(&mut a, &mut b, t0, t0 + Duration::from_secs(1), true, true);
        assert_eq!(a.served_by(), ServedBy::Fastdp);
        assert_eq!(b.served_by(), ServedBy::Fastdp);
        assert_eq!(
            ra.iter()
                .filter(|x| **x == SwitchAction::Established)
                .count(),
            1
        );
        assert!(
            ra.contains(&SwitchAction::Fastdp(FastdpAction::AddFloodEntry {
                peer_ip: ip(0x0b)
            }))
        );
        let attrs = a.attrs();
        assert_eq!(
            (attrs.name, attrs.encrypted, attrs.mtu),
            ("fastdp", false, Some(1376))
        );
        assert_eq!(attrs.to_map()["why"], "fastdp: heartbeats healthy");
        // Control messages went out with overlay indices 0 (fastdp) and 1 (sleeve).
        // The fast path dies (UDP 6784 blocked), sleeve carries on.
        let t1 = t0 + Duration::from_secs(1);
        let (ra, _) = run(
            &mut a,
            &mut b,
            t1,
            t1 + Duration::from_secs(90),
            true,
            false,
        );
        assert_eq!(a.served_by(), ServedBy::Sleeve);
        assert!(
            a.reason().contains("fastdp: heartbeats lost for 60s"),
            "{}",
            a.reason()
        );
        assert!(ra.iter().any(|x| matches!(
            x,
            SwitchAction::ServedByChanged {
                served_by: ServedBy::Sleeve,
                ..
            }
        )));
        assert!(!ra.iter().any(|x| matches!(x, SwitchAction::Failed { .. })));
        assert_eq!(a.attrs().name, "sleeve");
        // It comes back by itself.
        let t2 = t1 + Duration::from_secs(90);
        run(&mut a, &mut b, t2, t2 + Duration::from_secs(30), true, true);
        assert_eq!(a.served_by(), ServedBy::Fastdp);
        assert_eq!(b.served_by(), ServedBy::Fastdp);
        // Sleeve dies but the fast path serves: no failure...
        let t3 = t2 + Duration::from_secs(30);
        let (ra, _) = run(
            &mut a,
            &mut b,
            t3,
            t3 + Duration::from_secs(70),
            false,
            true,
        );
        assert_eq!(a.served_by(), ServedBy::Fastdp);
        assert!(!a.sleeve().unwrap().is_running());
        assert!(!ra.iter().any(|x| matches!(x, SwitchAction::Failed { .. })));
        // ... until the fast path goes too.
        let t4 = t3 + Duration::from_secs(70);
        let (ra, _) = run(
            &mut a,
            &mut b,
            t4,
            t4 + Duration::from_secs(70),
            false,
            false,
        );
        let failed: Vec<_> = ra
            .iter()
            .filter_map(|x| match x {
                SwitchAction::Failed { reason } => Some(reason.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].contains("timed out waiting for UDP heartbeat"),
            "{}",
            failed[0]
        );
    }

    #[test]
    fn weave_peer_gets_sleeve_at_index_0() {
        let mut a =
            OverlaySwitch::prepare(params(A, B, true, Some("fastdp sleeve"), true, None)).unwrap();
        assert_eq!(
            a.negotiation(),
            &Negotiation::Common(vec![OverlayKind::Sleeve])
        );
        assert!(a.fastdp().is_none());
        let t0 = Millis(0);
        a.confirm(t0);
        drain(&mut a);
        // A Weave peer's ack: tag 7, index 0, sub-tag 1.
        a.handle_control(t0, &ProtocolMsg::OverlayControl(vec![0, 1]))
            .unwrap();
        let acts = drain(&mut a);
        assert!(acts.contains(&SwitchAction::Established));
        assert_eq!(a.served_by(), ServedBy::Sleeve);
        assert_eq!(
            a.reason(),
            "sleeve, because remote is a Weave peer without weft-vxlan"
        );
        // Our control messages use index 0 as well: the frag-test datagram
        // was sent; a PMTU ack would come back as [7, 0, 3, hi, lo].
        let peer_frag_ack = ProtocolMsg::OverlayControl(vec![0, 2]);
        a.handle_control(t0, &peer_frag_ack).unwrap();
        assert!(a.sleeve().unwrap().stack_frag());
        // Wrong index / framing are errors, not panics.
        assert_eq!(
            a.handle_control(t0, &ProtocolMsg::OverlayControl(vec![1, 1])),
            Err(SwitchError::Control(ControlError::UnknownIndex(1)))
        );
        assert!(a
            .handle_control(
                t0,
                &ProtocolMsg::Reserved {
                    tag: 1,
                    payload: vec![]
                }
            )
            .is_err());
    }

    #[test]
    fn compat_peer_uses_legacy_tags() {
        let mut b = OverlaySwitch::prepare(params(B, A, false, None, true, None)).unwrap();
        assert_eq!(b.negotiation(), &Negotiation::Compat);
        let t0 = Millis(0);
        b.confirm(t0);
        // An old Weave peer's heartbeat arrives; we ack with top-level tag 1.
        let mut enc = crate::sleeve::codec::SleeveEncryptor::plaintext(pn(A));
        let d = enc
            .single(
                true,
                pn(A),
                pn(B),
                &crate::sleeve::codec::heartbeat_frame(5),
            )
            .unwrap();
        b.receive_sleeve(t0, SocketAddrV4::new(ip(1), 6783), &d[6..], |_| {})
            .unwrap();
        let acts = drain(&mut b);
        assert!(acts.contains(&SwitchAction::Control(ProtocolMsg::Reserved {
            tag: 1,
            payload: vec![]
        })));
        b.handle_control(
            t0,
            &ProtocolMsg::Reserved {
                tag: 1,
                payload: vec![],
            },
        )
        .unwrap();
        assert_eq!(b.served_by(), ServedBy::Sleeve);
        assert!(
            b.reason().contains("without the overlay switch"),
            "{}",
            b.reason()
        );
    }

    #[test]
    fn encrypted_connections_never_use_fastdp() {
        let key = SessionKey::from_bytes([4; 32]);
        let mut a = OverlaySwitch::prepare(params(
            A,
            B,
            true,
            Some("weft-vxlan sleeve"),
            true,
            Some(key.clone()),
        ))
        .unwrap();
        let mut b = OverlaySwitch::prepare(params(
            B,
            A,
            false,
            Some("weft-vxlan sleeve"),
            true,
            Some(key),
        ))
        .unwrap();
        assert!(a.fastdp().is_none());
        let t0 = Millis(0);
        a.confirm(t0);
        b.confirm(t0);
        run(&mut a, &mut b, t0, t0 + Duration::from_secs(2), true, true);
        assert_eq!(a.served_by(), ServedBy::Sleeve);
        assert!(a.reason().contains("encrypted"), "{}", a.reason());
        let attrs = a.attrs();
        assert!(attrs.encrypted);
        assert_eq!(attrs.name, "sleeve");
        // Index of sleeve is still 1 on both sides.
        assert_eq!(
            b.negotiation(),
            &Negotiation::Common(vec![OverlayKind::Fastdp, OverlayKind::Sleeve])
        );
    }

    #[test]
    fn fastdp_disabled_locally_and_no_common_overlay() {
        let a = OverlaySwitch::prepare(params(A, B, true, Some("weft-vxlan sleeve"), false, None))
            .unwrap();
        assert_eq!(
            a.reason(),
            "sleeve: awaiting heartbeat ack; fast path disabled on this peer"
        );
        // Both sides disabled, and only the remote disabled.
        let both = OverlaySwitch::prepare(params(A, B, true, Some("sleeve"), false, None)).unwrap();
        assert!(
            both.reason()
                .ends_with("fast path disabled on this peer and on the remote"),
            "{}",
            both.reason()
        );
        let theirs =
            OverlaySwitch::prepare(params(A, B, true, Some("sleeve"), true, None)).unwrap();
        assert!(
            theirs
                .reason()
                .ends_with("remote does not offer weft-vxlan (fast path disabled there)"),
            "{}",
            theirs.reason()
        );
        let err =
            OverlaySwitch::prepare(params(A, B, true, Some("awsvpc"), true, None)).unwrap_err();
        assert!(err.to_string().contains("no overlays in common"));
        let bad = SwitchParams {
            fastdp: Some(FastdpSetup {
                local_mac: MacAddr::ZERO,
                remote_mac: MacAddr::ZERO,
                frame_len: 10,
            }),
            ..params(A, B, true, Some("weft-vxlan sleeve"), true, None)
        };
        assert!(matches!(
            OverlaySwitch::prepare(bad),
            Err(SwitchError::Fastdp(_))
        ));
    }

    #[test]
    fn fastdp_blocked_from_the_start_means_sleeve_with_reason() {
        let mut a =
            OverlaySwitch::prepare(params(A, B, true, Some("weft-vxlan sleeve"), true, None))
                .unwrap();
        let mut b =
            OverlaySwitch::prepare(params(B, A, false, Some("weft-vxlan sleeve"), true, None))
                .unwrap();
        let t0 = Millis(0);
        a.confirm(t0);
        b.confirm(t0);
        run(&mut a, &mut b, t0, t0 + Duration::from_secs(5), true, false);
        assert_eq!(a.served_by(), ServedBy::Sleeve);
        assert_eq!(
            a.reason(),
            "sleeve, because fastdp: awaiting heartbeat ack (UDP 6784 blocked or MTU too small?)"
        );
        assert_eq!(a.attrs().mtu, Some(65535));
    }
}
