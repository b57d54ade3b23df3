//! The per-connection sleeve state machine (Weave's `sleeveForwarder`).
//!
//! # Driving it
//!
//! Sans-IO: the driver owns the UDP socket(s), the clock and the TCP
//! connection. It
//!
//! - calls [`confirm`](SleeveForwarder::confirm) once the mesh connection is
//!   confirmed (heartbeats start);
//! - feeds datagrams whose sender prefix names this forwarder's remote peer
//!   to [`receive`](SleeveForwarder::receive) (the driver strips the 6-byte
//!   prefix with [`parse_sender`](super::codec::parse_sender) to find the
//!   forwarder), which handles special frames itself and hands ordinary frames
//!   to a callback (the router);
//! - feeds sleeve control messages from the TCP connection to
//!   [`handle_control`](SleeveForwarder::handle_control);
//! - reports the underlay path MTU with
//!   [`underlay_pmtu`](SleeveForwarder::underlay_pmtu) — after `EMSGSIZE` on a
//!   DF send (read `IP_MTU`), or proactively;
//! - forwards frames with [`forward`](SleeveForwarder::forward) and calls
//!   [`flush`](SleeveForwarder::flush) after each batch of frames (frames are
//!   packed, up to 100 per datagram);
//! - fires [`handle_timeout`](SleeveForwarder::handle_timeout) at
//!   [`poll_timeout`](SleeveForwarder::poll_timeout);
//! - drains [`poll_action`](SleeveForwarder::poll_action) after every call.
//!
//! # Behaviour (Weave 2.8, §4.1 of the reference)
//!
//! - Heartbeats (22-byte special frames, DF channel) every 500 ms from
//!   confirmation until the remote acknowledges one over TCP
//!   (`ProtocolConnectionEstablished`), then every 10 s. No heartbeat from
//!   the remote for 60 s is fatal.
//! - The inbound side learns the remote UDP address from the first valid
//!   heartbeat and adopts later changes (NAT rebinding).
//! - After establishment: the 60001-byte fragmentation test (non-DF; on
//!   `ProtocolFragmentationReceived` the kernel's fragmentation is trusted),
//!   repeated every 5 minutes; and PMTU discovery: overlay MTU = underlay PMTU
//!   − (28 + packet overhead + 14 + 14), verified by a binary search with
//!   `ProtocolPMTUVerified` acks, 8 attempts per candidate with timeouts of
//!   10 ms << attempt.
//! - Forwarding decisions follow `curriedForward.Process`; see
//!   [`forward`](SleeveForwarder::forward).

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::time::Duration;

use weft_mesh::Millis;
use weft_wire::{PeerName, SessionKey};

use super::codec::{
    classify_special, frag_test_frame, heartbeat_frame, zero_frame, CodecError, DatagramBuilder,
    FrameIter, SleeveDecryptor, SleeveEncryptor, SleeveFrame, Special, FRAME_OVERHEAD,
    MAX_UDP_PAYLOAD, PMTU_DISCOVERY_SIZE, UDP_OVERHEAD,
};
use crate::control::sleeve_tag;
use crate::ether::{fragment_ipv4, icmp_frag_needed, parse_ipv4, ETHERNET_HEADER_LEN};

/// Weave's `DefaultMTU`: the overlay MTU before any PMTU information.
pub const DEFAULT_MTU: usize = 65535;
/// Smallest IPv4 MTU; smaller reported path MTUs are ignored as bogus.
pub const MIN_IPV4_MTU: usize = 68;

/// Timing and search parameters (Weave's constants by default).
#[derive(Debug, Clone)]
pub struct SleeveConfig {
    /// Heartbeat interval until the remote acknowledged one (500 ms).
    pub fast_heartbeat: Duration,
    /// Heartbeat interval afterwards (10 s).
    pub slow_heartbeat: Duration,
    /// No heartbeat from the remote for this long is fatal (60 s).
    pub heartbeat_timeout: Duration,
    /// Interval of the fragmentation test (5 min).
    pub frag_test_interval: Duration,
    /// Probes per PMTU candidate (8).
    pub mtu_verify_attempts: u32,
    /// Timeout of the first probe, doubled per attempt (10 ms).
    pub mtu_verify_timeout: Duration,
    /// The MTU assumed to work without verification (552).
    pub mtu_floor: usize,
}

impl Default for SleeveConfig {
    fn default() -> Self {
        SleeveConfig {
            fast_heartbeat: Duration::from_millis(500),
            slow_heartbeat: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(60),
            frag_test_interval: Duration::from_secs(300),
            mtu_verify_attempts: 8,
            mtu_verify_timeout: Duration::from_millis(10),
            mtu_floor: 552,
        }
    }
}

/// What a forwarder needs to know about its connection.
#[derive(Debug, Clone)]
pub struct ForwarderParams {
    /// Our peer name.
    pub local: PeerName,
    /// The remote peer.
    pub remote: PeerName,
    /// The connection UID (both ends agree on it).
    pub conn_uid: u64,
    /// Whether we dialled the connection.
    pub outbound: bool,
    /// The remote's sleeve address: known when outbound (the TCP address),
    /// `None` when inbound (learned from the first heartbeat).
    pub remote_addr: Option<SocketAddrV4>,
    /// The session key when the connection is untrusted (NaCl sleeve).
    pub session_key: Option<SessionKey>,
}

/// Why a forwarder failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwarderError {
    /// No heartbeat for the timeout.
    #[error("timed out waiting for UDP heartbeat (no sleeve heartbeat from the peer for {0:?}; is UDP port 6783 blocked?)")]
    HeartbeatTimeout(Duration),
    /// Sealing failed (sequence space exhausted).
    #[error("sleeve encryption failed: {0}")]
    Encrypt(CodecError),
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SleeveAction {
    /// Send a UDP datagram from the sleeve port; `df` selects the DF socket
    /// (`IP_PMTUDISC_DO`), otherwise the socket that never sets DF.
    SendDatagram {
        /// Destination.
        to: SocketAddrV4,
        /// Send with the don't-fragment bit.
        df: bool,
        /// The UDP payload.
        payload: Vec<u8>,
    },
    /// Send a sleeve control message over the TCP connection.
    SendControl {
        /// Sleeve sub-tag (1–3).
        sub_tag: u8,
        /// Payload.
        msg: Vec<u8>,
    },
    /// An ICMP "fragmentation needed" reply to a too-big DF frame: hand it
    /// to the router as if received from `src` for `dst` (Weave's
    /// `sendToConsumer(DstPeer, SrcPeer, ...)`).
    FragNeeded {
        /// The peer the reply pretends to come from (the original destination).
        src: PeerName,
        /// The peer it goes to (the original source, often ourself).
        dst: PeerName,
        /// The Ethernet frame.
        frame: Vec<u8>,
    },
    /// The remote acknowledged our heartbeat: the forwarder is established.
    Established,
    /// The overlay MTU changed (`verified` once the PMTU search finished).
    MtuChanged {
        /// The overlay MTU (IP packet size on the overlay).
        mtu: usize,
        /// Whether the search has finished.
        verified: bool,
    },
    /// The remote's UDP address was learned or changed.
    RemoteAddrChanged {
        /// The new address.
        addr: SocketAddrV4,
    },
    /// The forwarder failed; it does nothing more.
    Failed {
        /// Why.
        error: ForwarderError,
    },
}

/// How [`SleeveForwarder::forward`] handled a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// Queued on the DF channel.
    Df,
    /// Queued on the non-DF channel.
    NonDf,
    /// Fragmented in userspace into this many DF frames.
    Fragmented(usize),
    /// Too big with DF set: an ICMP frag-needed reply was produced.
    FragNeeded,
    /// Dropped.
    Dropped(ForwardDrop),
}

/// Why a frame was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardDrop {
    /// The remote's UDP address is not known yet ("awaiting contact").
    AwaitingContact,
    /// A too-big DF frame that was being broadcast.
    TooBigBroadcast,
    /// Does not fit even an empty datagram.
    TooBig,
    /// A frame that needed fragmenting or an ICMP reply was malformed.
    Malformed,
    /// The forwarder failed or was stopped.
    NotRunning,
}

/// Counters for diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Datagrams handed to the driver (all kinds).
    pub datagrams_sent: u64,
    /// Ordinary frames sent.
    pub frames_sent: u64,
    /// Datagrams received and decoded.
    pub datagrams_received: u64,
    /// Ordinary frames delivered to the callback.
    pub frames_received: u64,
    /// Datagrams dropped by the decoder (truncated, unauthenticated, replayed).
    pub datagrams_rejected: u64,
    /// Frames dropped while forwarding.
    pub frames_dropped: u64,
    /// ICMP frag-needed replies produced.
    pub frag_needed: u64,
    /// Frames fragmented in userspace.
    pub fragmented: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Prepared,
    Confirmed,
    Failed,
    Stopped,
}

#[derive(Debug, Clone)]
struct PmtuSearch {
    highest_good: usize,
    lowest_bad: usize,
    candidate: usize,
    tests_sent: u32,
    deadline: Millis,
}

/// One sleeve connection to a remote peer.
#[derive(Debug)]
pub struct SleeveForwarder {
    cfg: SleeveConfig,
    local: PeerName,
    remote: PeerName,
    conn_uid: u64,
    remote_addr: Option<SocketAddrV4>,
    enc: SleeveEncryptor,
    dec: SleeveDecryptor,
    /// Where encrypted datagrams are opened, reused from one to the next.
    rx_scratch: Vec<u8>,
    df_batch: DatagramBuilder,
    non_df_batch: DatagramBuilder,
    life: Lifecycle,
    heartbeat_interval: Option<Duration>,
    next_heartbeat: Option<Millis>,
    heartbeat_deadline: Option<Millis>,
    established: bool,
    acked_heartbeat: bool,
    next_frag_test: Option<Millis>,
    stack_frag: bool,
    mtu: usize,
    mtu_verified: bool,
    max_payload: usize,
    overhead_df: usize,
    underlay_pmtu: Option<usize>,
    search: Option<PmtuSearch>,
    actions: VecDeque<SleeveAction>,
    stats: ForwarderStats,
}

impl SleeveForwarder {
    /// A forwarder for a prepared (not yet confirmed) connection.
    pub fn new(params: ForwarderParams, cfg: SleeveConfig) -> Self {
        let (enc, dec) = match &params.session_key {
            Some(k) => (
                SleeveEncryptor::nacl(params.local, k, params.outbound),
                SleeveDecryptor::nacl(k, params.outbound),
            ),
            None => (
                SleeveEncryptor::plaintext(params.local),
                SleeveDecryptor::plaintext(),
            ),
        };
        let overhead_df =
            UDP_OVERHEAD + enc.packet_overhead() + FRAME_OVERHEAD + ETHERNET_HEADER_LEN;
        SleeveForwarder {
            cfg,
            local: params.local,
            remote: params.remote,
            conn_uid: params.conn_uid,
            remote_addr: params.remote_addr,
            df_batch: enc.builder(),
            non_df_batch: enc.builder(),
            enc,
            dec,
            rx_scratch: Vec::new(),
            life: Lifecycle::Prepared,
            heartbeat_interval: None,
            next_heartbeat: None,
            heartbeat_deadline: None,
            established: false,
            acked_heartbeat: false,
            next_frag_test: None,
            stack_frag: false,
            mtu: DEFAULT_MTU,
            mtu_verified: false,
            max_payload: DEFAULT_MTU - UDP_OVERHEAD,
            overhead_df,
            underlay_pmtu: None,
            search: None,
            actions: VecDeque::new(),
            stats: ForwarderStats::default(),
        }
    }

    /// The remote peer.
    pub fn remote(&self) -> PeerName {
        self.remote
    }

    /// The remote's UDP address, once known.
    pub fn remote_addr(&self) -> Option<SocketAddrV4> {
        self.remote_addr
    }

    /// Whether the remote acknowledged one of our heartbeats.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Whether the forwarder still works (not failed or stopped).
    pub fn is_running(&self) -> bool {
        matches!(self.life, Lifecycle::Prepared | Lifecycle::Confirmed)
    }

    /// Whether datagrams are NaCl-encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.enc.is_encrypted()
    }

    /// The overlay MTU: the largest IP packet forwarded without userspace
    /// fragmentation or an ICMP reply.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Whether the PMTU search has verified [`mtu`](Self::mtu).
    pub fn mtu_verified(&self) -> bool {
        self.mtu_verified
    }

    /// Bytes added to an overlay IP packet on the DF path
    /// (28 + packet overhead + 14 + 14: 62 plaintext, 86 NaCl).
    pub fn overhead_df(&self) -> usize {
        self.overhead_df
    }

    /// Whether the fragmentation test showed the kernel fragments reliably.
    pub fn stack_frag(&self) -> bool {
        self.stack_frag
    }

    /// Counters.
    pub fn stats(&self) -> ForwarderStats {
        self.stats
    }

    /// The next queued action.
    pub fn poll_action(&mut self) -> Option<SleeveAction> {
        self.actions.pop_front()
    }

    /// The connection was confirmed: start heartbeating.
    pub fn confirm(&mut self, now: Millis) {
        if self.life != Lifecycle::Prepared {
            return;
        }
        self.life = Lifecycle::Confirmed;
        self.heartbeat_interval = Some(self.cfg.fast_heartbeat);
        if self.remote_addr.is_some() {
            self.send_heartbeat(now);
        }
        self.heartbeat_deadline = Some(now + self.cfg.heartbeat_timeout);
    }

    /// Stops the forwarder: no more datagrams or timers.
    pub fn stop(&mut self) {
        if self.is_running() {
            self.life = Lifecycle::Stopped;
        }
        self.clear_timers();
    }

    fn clear_timers(&mut self) {
        self.next_heartbeat = None;
        self.heartbeat_deadline = None;
        self.next_frag_test = None;
        self.search = None;
        self.df_batch.clear();
        self.non_df_batch.clear();
    }

    fn fail(&mut self, error: ForwarderError) {
        if !self.is_running() {
            return;
        }
        self.life = Lifecycle::Failed;
        self.clear_timers();
        self.actions.push_back(SleeveAction::Failed { error });
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) must run.
    pub fn poll_timeout(&self) -> Option<Millis> {
        [
            self.next_heartbeat,
            self.heartbeat_deadline,
            self.next_frag_test,
            self.search.as_ref().map(|s| s.deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs whatever timers are due.
    pub fn handle_timeout(&mut self, now: Millis) {
        if !self.is_running() {
            return;
        }
        if self.heartbeat_deadline.is_some_and(|d| now >= d) {
            self.fail(ForwarderError::HeartbeatTimeout(self.cfg.heartbeat_timeout));
            return;
        }
        if self.next_heartbeat.is_some_and(|t| now >= t) {
            self.send_heartbeat(now);
        }
        if self.next_frag_test.is_some_and(|t| now >= t) {
            self.next_frag_test = Some(now + self.cfg.frag_test_interval);
            self.send_frag_test();
        }
        if self.search.as_ref().is_some_and(|s| now >= s.deadline) {
            self.mtu_test_failed(now);
        }
    }

    fn send_special(&mut self, df: bool, frame: &[u8]) {
        let Some(to) = self.remote_addr else {
            return;
        };
        match self.enc.single(df, self.local, self.remote, frame) {
            Ok(payload) => {
                self.stats.datagrams_sent += 1;
                self.actions
                    .push_back(SleeveAction::SendDatagram { to, df, payload });
            }
            Err(e) => self.fail(ForwarderError::Encrypt(e)),
        }
    }

    fn send_heartbeat(&mut self, now: Millis) {
        let interval = self.heartbeat_interval.unwrap_or(self.cfg.fast_heartbeat);
        self.next_heartbeat = Some(now + interval);
        self.send_special(true, &heartbeat_frame(self.conn_uid));
    }

    fn send_frag_test(&mut self) {
        self.stack_frag = false;
        self.send_special(false, &frag_test_frame());
    }

    fn control(&mut self, sub_tag: u8, msg: Vec<u8>) {
        self.actions
            .push_back(SleeveAction::SendControl { sub_tag, msg });
    }

    /// Handles the body of a datagram from the remote (the bytes after the
    /// 6-byte sender name) received from `from`. Special frames for this
    /// connection are handled here; ordinary frames go to `on_frame`.
    /// Returns the number of ordinary frames, or why the datagram was
    /// dropped (never fatal). Before [`confirm`](Self::confirm) and after a
    /// failure datagrams are ignored, as Weave only registers confirmed
    /// forwarders.
    pub fn receive(
        &mut self,
        now: Millis,
        from: SocketAddrV4,
        body: &[u8],
        on_frame: impl FnMut(SleeveFrame<'_>),
    ) -> Result<usize, CodecError> {
        if self.life != Lifecycle::Confirmed {
            return Ok(0);
        }
        let mut scratch = std::mem::take(&mut self.rx_scratch);
        let result = self.receive_with(now, from, body, &mut scratch, on_frame);
        self.rx_scratch = scratch;
        result
    }

    fn receive_with(
        &mut self,
        now: Millis,
        from: SocketAddrV4,
        body: &[u8],
        scratch: &mut Vec<u8>,
        mut on_frame: impl FnMut(SleeveFrame<'_>),
    ) -> Result<usize, CodecError> {
        let plain = match self.dec.open(body, scratch) {
            Ok((_, plain)) => plain,
            Err(e) => {
                self.stats.datagrams_rejected += 1;
                return Err(e);
            }
        };
        // Validate the whole datagram before acting on any of it.
        if let Some(Err(e)) = FrameIter::new(plain).find(Result::is_err) {
            self.stats.datagrams_rejected += 1;
            return Err(e);
        }
        self.stats.datagrams_received += 1;
        let mut delivered = 0;
        for f in FrameIter::new(plain).flatten() {
            match classify_special(f.frame) {
                Some(special) => {
                    if f.src == self.remote && f.dst == self.local {
                        self.handle_special(now, from, special);
                    }
                }
                None => {
                    delivered += 1;
                    on_frame(f);
                }
            }
        }
        self.stats.frames_received += delivered as u64;
        Ok(delivered)
    }

    fn handle_special(&mut self, now: Millis, from: SocketAddrV4, special: Special) {
        match special {
            Special::Heartbeat { conn_uid } => {
                if conn_uid != self.conn_uid {
                    return;
                }
                match self.remote_addr {
                    None => {
                        self.remote_addr = Some(from);
                        self.actions
                            .push_back(SleeveAction::RemoteAddrChanged { addr: from });
                        self.send_heartbeat(now);
                    }
                    Some(a) if a != from => {
                        self.remote_addr = Some(from);
                        self.actions
                            .push_back(SleeveAction::RemoteAddrChanged { addr: from });
                    }
                    Some(_) => {}
                }
                if !self.acked_heartbeat {
                    self.acked_heartbeat = true;
                    self.control(sleeve_tag::CONNECTION_ESTABLISHED, Vec::new());
                }
                self.heartbeat_deadline = Some(now + self.cfg.heartbeat_timeout);
            }
            Special::FragTest { intact } => {
                if intact {
                    self.control(sleeve_tag::FRAGMENTATION_RECEIVED, Vec::new());
                }
            }
            Special::PmtuProbe { candidate } => {
                // Frames are at most 65535 bytes, so candidate fits a u16.
                let v = u16::try_from(candidate).unwrap_or(u16::MAX);
                self.control(sleeve_tag::PMTU_VERIFIED, v.to_be_bytes().to_vec());
            }
        }
    }

    /// Handles a sleeve control message from the remote. Unknown sub-tags
    /// and truncated payloads are ignored (as Weave does).
    pub fn handle_control(&mut self, now: Millis, sub_tag: u8, msg: &[u8]) {
        if self.life != Lifecycle::Confirmed {
            return;
        }
        match sub_tag {
            sleeve_tag::CONNECTION_ESTABLISHED => self.heartbeat_acked(now),
            sleeve_tag::FRAGMENTATION_RECEIVED => self.stack_frag = true,
            sleeve_tag::PMTU_VERIFIED => {
                let [a, b, ..] = *msg else {
                    return;
                };
                let v = usize::from(u16::from_be_bytes([a, b]));
                if let Some(s) = &mut self.search {
                    if s.candidate == v {
                        s.highest_good = v;
                        self.search_mtu(now);
                    }
                }
            }
            _ => {}
        }
    }

    fn heartbeat_acked(&mut self, now: Millis) {
        if self.heartbeat_interval != Some(self.cfg.slow_heartbeat) {
            self.heartbeat_interval = Some(self.cfg.slow_heartbeat);
            if self.next_heartbeat.is_some() {
                self.next_heartbeat = Some(now + self.cfg.slow_heartbeat);
            }
        }
        if !self.established {
            self.established = true;
            self.actions.push_back(SleeveAction::Established);
        }
        self.next_frag_test = Some(now + self.cfg.frag_test_interval);
        self.send_frag_test();
        match self.underlay_pmtu {
            Some(pmtu) => {
                if self.search.is_none() && !self.mtu_verified {
                    self.start_search(now, pmtu);
                }
            }
            // Provoke EMSGSIZE: the driver answers with underlay_pmtu().
            None => self.send_special(true, &zero_frame(PMTU_DISCOVERY_SIZE)),
        }
    }

    /// The driver learned the underlay path MTU towards the remote (after
    /// `EMSGSIZE` on a DF send, from `IP_MTU`; or proactively from the
    /// route). Starts the PMTU search once established; once an MTU is
    /// verified only a report below it restarts the search.
    pub fn underlay_pmtu(&mut self, now: Millis, pmtu: usize) {
        if !self.is_running() || pmtu < MIN_IPV4_MTU {
            return;
        }
        self.underlay_pmtu = Some(pmtu);
        let mtu = pmtu.saturating_sub(self.overhead_df);
        if let Some(s) = &self.search {
            if mtu >= s.candidate {
                return;
            }
        } else if self.mtu_verified && mtu >= self.mtu {
            // The verified MTU stands: the kernel's idea of the path MTU may
            // be larger than what actually gets through (a black hole is
            // exactly what the search found), so only a decrease restarts it.
            return;
        }
        if self.established {
            self.start_search(now, pmtu);
        } else {
            // Use it as the working MTU until the search can run.
            self.max_payload = pmtu - UDP_OVERHEAD;
            self.set_mtu(mtu, false);
        }
    }

    fn set_mtu(&mut self, mtu: usize, verified: bool) {
        let changed = self.mtu != mtu || self.mtu_verified != verified;
        self.mtu = mtu;
        self.mtu_verified = verified;
        if changed {
            self.actions
                .push_back(SleeveAction::MtuChanged { mtu, verified });
        }
    }

    fn start_search(&mut self, now: Millis, pmtu: usize) {
        let mtu = pmtu.saturating_sub(self.overhead_df);
        self.max_payload = pmtu - UDP_OVERHEAD;
        self.set_mtu(mtu, false);
        self.search = Some(PmtuSearch {
            highest_good: self.cfg.mtu_floor.min(mtu),
            lowest_bad: mtu + 1,
            candidate: mtu,
            tests_sent: 0,
            deadline: now,
        });
        self.send_mtu_test(now);
    }

    fn send_mtu_test(&mut self, now: Millis) {
        let Some(s) = &mut self.search else {
            return;
        };
        let shift = s.tests_sent.min(16);
        s.deadline = now + self.cfg.mtu_verify_timeout * (1u32 << shift);
        s.tests_sent += 1;
        let len = s.candidate + ETHERNET_HEADER_LEN;
        self.send_special(true, &zero_frame(len));
    }

    fn mtu_test_failed(&mut self, now: Millis) {
        let Some(s) = &mut self.search else {
            return;
        };
        if s.tests_sent < self.cfg.mtu_verify_attempts {
            self.send_mtu_test(now);
        } else {
            s.lowest_bad = s.candidate;
            self.search_mtu(now);
        }
    }

    fn search_mtu(&mut self, now: Millis) {
        let Some(s) = &mut self.search else {
            return;
        };
        if s.highest_good + 1 >= s.lowest_bad {
            let mtu = s.highest_good;
            self.search = None;
            self.max_payload = mtu + self.overhead_df - UDP_OVERHEAD;
            self.set_mtu(mtu, true);
            return;
        }
        s.candidate = (s.highest_good + s.lowest_bad) / 2;
        s.tests_sent = 0;
        self.send_mtu_test(now);
    }

    /// Forwards one Ethernet frame from `src` to `dst` (peer names carried
    /// in the sleeve frame header). `broadcast` says the frame is one of
    /// several copies of a flood (too-big DF copies are then dropped rather
    /// than answered with ICMP). The decision, as Weave's:
    ///
    /// - IPv4 with DF, fitting `mtu + 14` → DF channel; too big → dropped if
    ///   broadcast, else an ICMP frag-needed reply ([`SleeveAction::FragNeeded`]);
    /// - not IPv4, or the kernel fragments reliably → non-DF channel;
    /// - IPv4 without DF: DF channel if it fits, else fragmented in userspace.
    ///
    /// Frames are queued; a datagram is emitted when the batch is full, and
    /// [`flush`](Self::flush) emits the rest.
    pub fn forward(
        &mut self,
        src: PeerName,
        dst: PeerName,
        frame: &[u8],
        broadcast: bool,
    ) -> ForwardOutcome {
        let outcome = self.decide_and_queue(src, dst, frame, broadcast);
        if let ForwardOutcome::Dropped(_) = outcome {
            self.stats.frames_dropped += 1;
        }
        outcome
    }

    fn decide_and_queue(
        &mut self,
        src: PeerName,
        dst: PeerName,
        frame: &[u8],
        broadcast: bool,
    ) -> ForwardOutcome {
        if !self.is_running() {
            return ForwardOutcome::Dropped(ForwardDrop::NotRunning);
        }
        if self.remote_addr.is_none() {
            return ForwardOutcome::Dropped(ForwardDrop::AwaitingContact);
        }
        let fits = frame.len() <= self.mtu + ETHERNET_HEADER_LEN;
        let ip = parse_ipv4(frame);
        match ip {
            Some(ip) if ip.dont_fragment => {
                if fits {
                    return self.queue(true, src, dst, frame, ForwardOutcome::Df);
                }
                if broadcast {
                    return ForwardOutcome::Dropped(ForwardDrop::TooBigBroadcast);
                }
                let mtu = u16::try_from(self.mtu).unwrap_or(u16::MAX);
                match icmp_frag_needed(frame, mtu) {
                    Ok(reply) => {
                        self.stats.frag_needed += 1;
                        self.actions.push_back(SleeveAction::FragNeeded {
                            src: dst,
                            dst: src,
                            frame: reply,
                        });
                        ForwardOutcome::FragNeeded
                    }
                    Err(_) => ForwardOutcome::Dropped(ForwardDrop::Malformed),
                }
            }
            None => self.queue(false, src, dst, frame, ForwardOutcome::NonDf),
            Some(_) if self.stack_frag => self.queue(false, src, dst, frame, ForwardOutcome::NonDf),
            Some(_) if fits => self.queue(true, src, dst, frame, ForwardOutcome::Df),
            Some(_) => {
                let mut pieces = Vec::new();
                if fragment_ipv4(frame, self.mtu, |p| pieces.push(p)).is_err() {
                    return ForwardOutcome::Dropped(ForwardDrop::Malformed);
                }
                let n = pieces.len();
                for p in pieces {
                    if let ForwardOutcome::Dropped(d) =
                        self.queue(true, src, dst, &p, ForwardOutcome::Df)
                    {
                        return ForwardOutcome::Dropped(d);
                    }
                }
                self.stats.fragmented += 1;
                ForwardOutcome::Fragmented(n)
            }
        }
    }

    fn queue(
        &mut self,
        df: bool,
        src: PeerName,
        dst: PeerName,
        frame: &[u8],
        ok: ForwardOutcome,
    ) -> ForwardOutcome {
        let first_limit = if df {
            self.max_payload
        } else {
            MAX_UDP_PAYLOAD
        };
        let batch = if df {
            &self.df_batch
        } else {
            &self.non_df_batch
        };
        // Add to a non-empty batch only if the datagram stays within the
        // DF payload limit (avoid fragmenting batches), else send it first.
        if !batch.is_empty() && !batch.fits(frame.len(), self.max_payload) {
            self.flush_channel(df);
        }
        let batch = if df {
            &mut self.df_batch
        } else {
            &mut self.non_df_batch
        };
        if batch.is_empty() && !batch.fits(frame.len(), first_limit) {
            return ForwardOutcome::Dropped(ForwardDrop::TooBig);
        }
        if batch.push(src, dst, frame).is_err() {
            return ForwardOutcome::Dropped(ForwardDrop::TooBig);
        }
        self.stats.frames_sent += 1;
        if !batch.fits(0, usize::MAX) {
            // Frame count limit reached.
            self.flush_channel(df);
        }
        ok
    }

    fn flush_channel(&mut self, df: bool) {
        let batch = if df {
            &mut self.df_batch
        } else {
            &mut self.non_df_batch
        };
        if batch.is_empty() {
            return;
        }
        let Some(to) = self.remote_addr else {
            batch.clear();
            return;
        };
        match self.enc.finish(df, batch, self.max_payload) {
            Ok(payload) => {
                self.stats.datagrams_sent += 1;
                self.actions
                    .push_back(SleeveAction::SendDatagram { to, df, payload });
            }
            Err(e) => self.fail(ForwarderError::Encrypt(e)),
        }
    }

    /// Emits the datagrams of any frames still queued.
    pub fn flush(&mut self) {
        self.flush_channel(true);
        self.flush_channel(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ether::tests::ipv4_frame;
    use crate::ether::{internet_checksum, parse_ipv4};
    use crate::sleeve::codec::{decode_frames, parse_sender, MAX_FRAMES_PER_DATAGRAM};
    use proptest::prelude::*;

    fn pn(v: u64) -> PeerName {
        PeerName::new(v).unwrap()
    }
    const A: u64 = 0x02_00_00_00_00_0a;
    const B: u64 = 0x02_00_00_00_00_0b;
    fn addr(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new([192, 168, 0, last].into(), 6783)
    }

    fn pair(key: Option<SessionKey>) -> (SleeveForwarder, SleeveForwarder) {
        let a = SleeveForwarder::new(
            ForwarderParams {
                local: pn(A),
                remote: pn(B),
                conn_uid: 77,
                outbound: true,
                remote_addr: Some(addr(2)),
                session_key: key.clone(),
            },
            SleeveConfig::default(),
        );
        let b = SleeveForwarder::new(
            ForwarderParams {
                local: pn(B),
                remote: pn(A),
                conn_uid: 77,
                outbound: false,
                remote_addr: None,
                session_key: key,
            },
            SleeveConfig::default(),
        );
        (a, b)
    }

    fn drain(f: &mut SleeveForwarder) -> Vec<SleeveAction> {
        std::iter::from_fn(|| f.poll_action()).collect()
    }

    /// Delivers `from`'s actions to `to` (datagrams, control), returns the
    /// other actions and the ordinary frames delivered.
    fn shuttle(
        now: Millis,
        from: &mut SleeveForwarder,
        from_addr: SocketAddrV4,
        to: &mut SleeveForwarder,
        max_datagram: usize,
    ) -> (Vec<SleeveAction>, Vec<Vec<u8>>) {
        let mut rest = Vec::new();
        let mut frames = Vec::new();
        for a in drain(from) {
            match a {
                SleeveAction::SendDatagram { payload, .. } => {
                    if payload.len() > max_datagram {
                        continue; // dropped by the path
                    }
                    let (sender, body) = parse_sender(&payload).unwrap();
                    assert_eq!(sender, from.local);
                    to.receive(now, from_addr, body, |f| frames.push(f.frame.to_vec()))
                        .unwrap();
                }
                SleeveAction::SendControl { sub_tag, msg } => to.handle_control(now, sub_tag, &msg),
                other => rest.push(other),
            }
        }
        (rest, frames)
    }

    #[test]
    fn heartbeat_handshake_and_slowdown() {
        let (mut a, mut b) = pair(None);
        let t0 = Millis(1000);
        a.confirm(t0);
        b.confirm(t0);
        // b is inbound: no address, no heartbeat yet.
        assert_eq!(b.remote_addr(), None);
        assert!(drain(&mut b).is_empty());
        assert_eq!(a.poll_timeout(), Some(Millis(1500)));
        // a's heartbeat teaches b the address; b heartbeats back at once and
        // acks over TCP.
        let (rest, _) = shuttle(t0, &mut a, addr(1), &mut b, usize::MAX);
        assert!(rest.is_empty());
        assert_eq!(b.remote_addr(), Some(addr(1)));
        let acts = drain(&mut b);
        assert!(matches!(acts[0], SleeveAction::RemoteAddrChanged { addr: x } if x == addr(1)));
        assert!(
            matches!(&acts[1], SleeveAction::SendDatagram { df: true, payload, .. } if payload.len() == 6 + 14 + 22)
        );
        assert_eq!(
            acts[2],
            SleeveAction::SendControl {
                sub_tag: 1,
                msg: vec![]
            }
        );
        // Feed b's heartbeat + ack to a.
        for act in acts {
            match act {
                SleeveAction::SendDatagram { payload, .. } => {
                    a.receive(t0, addr(2), &payload[6..], |_| panic!("no frames"))
                        .unwrap();
                }
                SleeveAction::SendControl { sub_tag, msg } => a.handle_control(t0, sub_tag, &msg),
                _ => {}
            }
        }
        assert!(a.is_established());
        let acts = drain(&mut a);
        // established, frag test (non-DF 60001+20 bytes), PMTU-discovery
        // probe (DF 60000+20), and a's own ack of b's heartbeat.
        assert!(acts.contains(&SleeveAction::Established));
        assert!(acts.iter().any(|x| matches!(x, SleeveAction::SendDatagram { df: false, payload, .. } if payload.len() == 6 + 14 + 60001)));
        assert!(acts.iter().any(|x| matches!(x, SleeveAction::SendDatagram { df: true, payload, .. } if payload.len() == 6 + 14 + 60000)));
        assert!(acts.contains(&SleeveAction::SendControl {
            sub_tag: 1,
            msg: vec![]
        }));
        // Heartbeats now every 10 s; the 60 s deadline was refreshed by b's heartbeat.
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        a.handle_timeout(t0 + Duration::from_secs(10));
        let hb: Vec<_> = drain(&mut a);
        assert_eq!(hb.len(), 1);
        // b has not been acked: keeps the fast interval.
        assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    }

    #[test]
    fn datagrams_before_confirmation_are_ignored() {
        let (mut a, mut b) = pair(None);
        a.confirm(Millis(0));
        let (_, frames) = shuttle(Millis(0), &mut a, addr(1), &mut b, usize::MAX);
        assert!(frames.is_empty());
        assert_eq!(b.remote_addr(), None);
        assert!(drain(&mut b).is_empty(), "no ack before confirmation");
        b.handle_control(Millis(0), 1, &[]);
        assert!(!b.is_established());
    }

    #[test]
    fn heartbeat_timeout_is_fatal_and_heartbeats_extend_it() {
        let (mut a, mut b) = pair(None);
        let t0 = Millis(0);
        a.confirm(t0);
        b.confirm(t0);
        let mut t = t0;
        // a keeps hearing from b for a while...
        for _ in 0..5 {
            t += Duration::from_secs(20);
            let hb = heartbeat_frame(77);
            let mut body = Vec::new();
            crate::sleeve::codec::encode_frame(&mut body, pn(B), pn(A), &hb).unwrap();
            a.receive(t, addr(2), &body, |_| {}).unwrap();
            a.handle_timeout(t);
            assert!(a.is_running());
        }
        // A heartbeat with the wrong UID does not count.
        let mut body = Vec::new();
        crate::sleeve::codec::encode_frame(&mut body, pn(B), pn(A), &heartbeat_frame(78)).unwrap();
        a.receive(t + Duration::from_secs(30), addr(2), &body, |_| {})
            .unwrap();
        a.handle_timeout(t + Duration::from_secs(59));
        assert!(a.is_running());
        drain(&mut a);
        a.handle_timeout(t + Duration::from_secs(60));
        assert!(!a.is_running());
        let acts = drain(&mut a);
        assert_eq!(
            acts,
            vec![SleeveAction::Failed {
                error: ForwarderError::HeartbeatTimeout(Duration::from_secs(60))
            }]
        );
        assert_eq!(a.poll_timeout(), None);
        assert_eq!(
            a.forward(pn(A), pn(B), &[0u8; 60], false),
            ForwardOutcome::Dropped(ForwardDrop::NotRunning)
        );
        let _ = b;
    }

    /// Feeds `a` a heartbeat from B at `t` (keeps it alive in long tests).
    fn hear_from_b(a: &mut SleeveForwarder, t: Millis) {
        let mut body = Vec::new();
        crate::sleeve::codec::encode_frame(&mut body, pn(B), pn(A), &heartbeat_frame(77)).unwrap();
        a.receive(t, addr(2), &body, |_| {}).unwrap();
    }

    fn establish(a: &mut SleeveForwarder, b: &mut SleeveForwarder, now: Millis) {
        a.confirm(now);
        b.confirm(now);
        for _ in 0..4 {
            shuttle(now, a, addr(1), b, usize::MAX);
            shuttle(now, b, addr(2), a, usize::MAX);
        }
        assert!(a.is_established() && b.is_established());
    }

    /// Runs a's PMTU search against a path that drops datagrams larger
    /// than `path_max` UDP payload bytes; returns the verified MTU.
    fn run_search(a: &mut SleeveForwarder, b: &mut SleeveForwarder, path_max: usize) -> usize {
        let mut t = Millis(10_000);
        for _ in 0..2000 {
            shuttle(t, a, addr(1), b, path_max);
            shuttle(t, b, addr(2), a, usize::MAX);
            if a.mtu_verified() {
                return a.mtu();
            }
            t = a.poll_timeout().unwrap();
            a.handle_timeout(t);
        }
        panic!("PMTU search did not finish");
    }

    #[test]
    fn pmtu_search_plain_and_encrypted() {
        for (key, overhead) in [(None, 62usize), (Some(SessionKey::from_bytes([5; 32])), 86)] {
            let (mut a, mut b) = pair(key);
            establish(&mut a, &mut b, Millis(0));
            drain(&mut a);
            assert_eq!(a.overhead_df(), overhead);
            // The driver got EMSGSIZE for the 60000-byte probe: underlay 1500.
            a.underlay_pmtu(Millis(10_000), 1500);
            assert_eq!(a.mtu(), 1500 - overhead);
            // Path carries full 1500-byte IP packets: first candidate works.
            let mtu = run_search(&mut a, &mut b, 1500 - 28);
            assert_eq!(mtu, 1500 - overhead, "1438 plaintext / 1414 NaCl");
        }
    }

    #[test]
    fn pmtu_binary_search_finds_the_real_path_mtu() {
        let (mut a, mut b) = pair(None);
        establish(&mut a, &mut b, Millis(0));
        drain(&mut a);
        // The kernel believes 1500, but something on the path only carries
        // 1400-byte IP packets (a black hole).
        a.underlay_pmtu(Millis(10_000), 1500);
        let mtu = run_search(&mut a, &mut b, 1400 - 28);
        assert_eq!(mtu, 1400 - 62);
        assert!(a.mtu_verified());
        // The kernel's 1500 again (or anything not below the verified MTU)
        // does not restart the search.
        drain(&mut a);
        a.underlay_pmtu(Millis(20_000), 1500);
        a.underlay_pmtu(Millis(20_000), 1338 + 62);
        assert!(drain(&mut a).is_empty());
        assert_eq!((a.mtu(), a.mtu_verified()), (1338, true));
        // A lower one does.
        a.underlay_pmtu(Millis(20_000), 1300);
        assert_eq!((a.mtu(), a.mtu_verified()), (1238, false));
        let acts = drain(&mut a);
        assert!(
            matches!(&acts[1], SleeveAction::SendDatagram { df: true, payload, .. } if payload.len() == 1300 - 28)
        );
    }

    #[test]
    fn pmtu_gives_up_to_the_floor_and_times_out_exponentially() {
        let (mut a, mut b) = pair(None);
        establish(&mut a, &mut b, Millis(0));
        drain(&mut a);
        // Past the 10 s heartbeat, so only the probe timer is pending.
        let t0 = Millis(12_000);
        a.handle_timeout(t0);
        a.underlay_pmtu(t0, 1500);
        // Nothing gets through: probe timeouts 10, 20, 40 ... ms.
        let mut t = t0;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            let next = a.poll_timeout().unwrap();
            gaps.push(next.0 - t.0);
            t = next;
            a.handle_timeout(t);
        }
        assert_eq!(gaps, vec![10, 20, 40, 80, 160, 320, 640, 1280]);
        let mtu = run_search(&mut a, &mut b, 0);
        assert_eq!(mtu, 552);
    }

    #[test]
    fn pmtu_reported_before_establishment_is_used_then_verified() {
        let (mut a, mut b) = pair(None);
        a.underlay_pmtu(Millis(0), 9000);
        assert_eq!(a.mtu(), 9000 - 62);
        assert!(!a.mtu_verified());
        a.underlay_pmtu(Millis(0), 20);
        assert_eq!(a.mtu(), 9000 - 62, "bogus PMTU ignored");
        establish(&mut a, &mut b, Millis(0));
        let mtu = run_search(&mut a, &mut b, usize::MAX);
        assert_eq!(mtu, 9000 - 62);
    }

    #[test]
    fn fragmentation_test_sets_stack_frag() {
        let (mut a, mut b) = pair(None);
        establish(&mut a, &mut b, Millis(0));
        // Test frames went through in establish(): both trust the stack.
        assert!(a.stack_frag());
        // Every 5 minutes it is re-tested; until the ack it is distrusted.
        let t = Millis(0) + Duration::from_secs(300);
        hear_from_b(&mut a, t);
        a.handle_timeout(t);
        assert!(a.is_running());
        assert!(!a.stack_frag());
        // The path now drops fragmented datagrams (anything > 1472).
        shuttle(t, &mut a, addr(1), &mut b, 1472);
        shuttle(t, &mut b, addr(2), &mut a, usize::MAX);
        assert!(!a.stack_frag());
    }

    fn established_with_mtu(mtu_underlay: usize) -> (SleeveForwarder, SleeveForwarder) {
        let (mut a, mut b) = pair(None);
        establish(&mut a, &mut b, Millis(0));
        a.underlay_pmtu(Millis(1), mtu_underlay);
        run_search(&mut a, &mut b, mtu_underlay - 28);
        drain(&mut a);
        (a, b)
    }

    fn frames_of(actions: &[SleeveAction]) -> Vec<(bool, Vec<Vec<u8>>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                SleeveAction::SendDatagram { df, payload, .. } => {
                    let (_, body) = parse_sender(payload).unwrap();
                    Some((
                        *df,
                        decode_frames(body)
                            .unwrap()
                            .iter()
                            .map(|f| f.frame.to_vec())
                            .collect(),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn forwarding_decisions() {
        let (mut a, _b) = established_with_mtu(1500);
        let mtu = a.mtu();
        assert_eq!(mtu, 1438);
        let mac1 = [2, 0, 0, 0, 0, 1];
        let mac2 = [2, 0, 0, 0, 0, 2];
        let ip1 = [10, 32, 0, 1];
        let ip2 = [10, 32, 0, 2];
        // DF that fits → DF channel.
        let f = ipv4_frame(mac1, mac2, ip1, ip2, true, mtu - 20);
        assert_eq!(f.len(), mtu + 14);
        assert_eq!(a.forward(pn(A), pn(B), &f, false), ForwardOutcome::Df);
        a.flush();
        let d = frames_of(&drain(&mut a));
        assert_eq!(d, vec![(true, vec![f.clone()])]);
        // DF too big, broadcast → dropped.
        let big = ipv4_frame(mac1, mac2, ip1, ip2, true, mtu - 19);
        assert_eq!(
            a.forward(pn(A), pn(B), &big, true),
            ForwardOutcome::Dropped(ForwardDrop::TooBigBroadcast)
        );
        // DF too big, unicast → ICMP frag-needed from B's side to A.
        assert_eq!(
            a.forward(pn(A), pn(B), &big, false),
            ForwardOutcome::FragNeeded
        );
        let acts = drain(&mut a);
        let SleeveAction::FragNeeded { src, dst, frame } = &acts[0] else {
            panic!("expected FragNeeded, got {acts:?}")
        };
        assert_eq!((*src, *dst), (pn(B), pn(A)));
        assert_eq!(&frame[0..6], &mac1);
        let ip = parse_ipv4(frame).unwrap();
        assert_eq!(ip.src.octets(), ip2);
        assert_eq!(internet_checksum(&frame[34..]), 0);
        assert_eq!(u16::from_be_bytes([frame[40], frame[41]]), mtu as u16);
        // Non-IPv4 (ARP-like) → non-DF channel, whatever the size.
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&mac1);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        assert_eq!(a.forward(pn(A), pn(B), &arp, true), ForwardOutcome::NonDf);
        // Non-DF IPv4 with a trusted stack → non-DF channel.
        let nodf = ipv4_frame(mac1, mac2, ip1, ip2, false, 3000);
        assert!(a.stack_frag());
        assert_eq!(a.forward(pn(A), pn(B), &nodf, false), ForwardOutcome::NonDf);
        a.flush();
        // The second frame would push the datagram past the DF payload
        // limit, so the first went out alone.
        let d = frames_of(&drain(&mut a));
        assert_eq!(
            d,
            vec![(false, vec![arp.clone()]), (false, vec![nodf.clone()])]
        );
        // Small frames share a datagram.
        a.forward(pn(A), pn(B), &arp, true);
        a.forward(pn(A), pn(B), &arp, true);
        a.flush();
        assert_eq!(
            frames_of(&drain(&mut a)),
            vec![(false, vec![arp.clone(), arp])]
        );
    }

    #[test]
    fn userspace_fragmentation_without_stack_frag() {
        let (mut a, mut b) = established_with_mtu(1500);
        // Distrust the stack: the 5-minute test is lost.
        let t = Millis(0) + Duration::from_secs(300);
        hear_from_b(&mut a, t);
        a.handle_timeout(t);
        drain(&mut a);
        assert!(!a.stack_frag());
        let small = ipv4_frame([2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], false, 500);
        assert_eq!(a.forward(pn(A), pn(B), &small, false), ForwardOutcome::Df);
        let big = ipv4_frame([2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], false, 4000);
        assert_eq!(
            a.forward(pn(A), pn(B), &big, false),
            ForwardOutcome::Fragmented(3)
        );
        a.flush();
        let acts = drain(&mut a);
        for act in &acts {
            if let SleeveAction::SendDatagram { df, payload, .. } = act {
                assert!(*df);
                assert!(payload.len() <= 1500 - 28, "fits the underlay");
            }
        }
        // The receiver gets the small frame plus 3 fragments that reassemble.
        let mut got = Vec::new();
        for act in acts {
            if let SleeveAction::SendDatagram { payload, .. } = act {
                b.receive(Millis(1), addr(1), &payload[6..], |f| {
                    got.push(f.frame.to_vec())
                })
                .unwrap();
            }
        }
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], small);
        let payload: Vec<u8> = got[1..]
            .iter()
            .flat_map(|f| {
                let ip = parse_ipv4(f).unwrap();
                f[34..14 + ip.total_len].to_vec()
            })
            .collect();
        assert_eq!(payload, &big[34..]);
    }

    #[test]
    fn batching_limits() {
        // No PMTU information: datagrams up to 65507 bytes.
        let (mut a, mut b) = pair(None);
        establish(&mut a, &mut b, Millis(0));
        drain(&mut a);
        // 150 small frames: 100 in the first datagram, 50 in the second.
        let arp = [0x11u8; 42];
        for _ in 0..150 {
            a.forward(pn(A), pn(B), &arp, true);
        }
        let first = frames_of(&drain(&mut a));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1.len(), MAX_FRAMES_PER_DATAGRAM);
        a.flush();
        let second = frames_of(&drain(&mut a));
        assert_eq!(second[0].1.len(), 50);
        // With a 1500-byte underlay, batches stop at 1472 bytes: 26 frames.
        let (mut a, _b) = established_with_mtu(1500);
        for _ in 0..30 {
            a.forward(pn(A), pn(B), &arp, true);
        }
        a.flush();
        let d = frames_of(&drain(&mut a));
        assert_eq!(d.iter().map(|x| x.1.len()).collect::<Vec<_>>(), vec![26, 4]);
        // Big frames are not batched beyond the DF payload limit.
        let f = ipv4_frame([2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], true, 1000);
        for _ in 0..3 {
            assert_eq!(a.forward(pn(A), pn(B), &f, false), ForwardOutcome::Df);
        }
        a.flush();
        let d = frames_of(&drain(&mut a));
        assert_eq!(d.len(), 3);
        // Nothing is sent before the remote address is known.
        let (_a2, mut b2) = pair(None);
        assert_eq!(
            b2.forward(pn(B), pn(A), &arp, true),
            ForwardOutcome::Dropped(ForwardDrop::AwaitingContact)
        );
    }

    #[test]
    fn special_frames_for_other_peers_are_ignored_and_address_changes_adopted() {
        let (mut a, mut b) = pair(None);
        establish(&mut a, &mut b, Millis(0));
        drain(&mut a);
        // A heartbeat relayed on behalf of someone else is not ours.
        let mut body = Vec::new();
        crate::sleeve::codec::encode_frame(&mut body, pn(0x99), pn(A), &heartbeat_frame(77))
            .unwrap();
        assert_eq!(a.receive(Millis(5), addr(9), &body, |_| {}).unwrap(), 0);
        assert_eq!(a.remote_addr(), Some(addr(2)));
        // B's NAT rebinding: a heartbeat from a new address is adopted.
        let mut body = Vec::new();
        crate::sleeve::codec::encode_frame(&mut body, pn(B), pn(A), &heartbeat_frame(77)).unwrap();
        a.receive(Millis(6), addr(7), &body, |_| {}).unwrap();
        assert_eq!(a.remote_addr(), Some(addr(7)));
        assert_eq!(
            drain(&mut a),
            vec![SleeveAction::RemoteAddrChanged { addr: addr(7) }]
        );
    }

    #[test]
    fn encrypted_end_to_end_and_replay() {
        let key = SessionKey::from_bytes([8; 32]);
        let (mut a, mut b) = pair(Some(key));
        establish(&mut a, &mut b, Millis(0));
        drain(&mut a);
        let f = ipv4_frame([2; 6], [4; 6], [10, 0, 0, 1], [10, 0, 0, 2], true, 200);
        a.forward(pn(A), pn(B), &f, false);
        a.flush();
        let acts = drain(&mut a);
        let SleeveAction::SendDatagram { payload, .. } = &acts[0] else {
            panic!()
        };
        let mut got = Vec::new();
        b.receive(Millis(1), addr(1), &payload[6..], |fr| {
            got.push(fr.frame.to_vec())
        })
        .unwrap();
        assert_eq!(got, vec![f]);
        assert!(b
            .receive(Millis(1), addr(1), &payload[6..], |_| {})
            .is_err());
        assert_eq!(b.stats().datagrams_rejected, 1);
    }

    proptest! {
        #[test]
        fn receive_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400), encrypted: bool) {
            let key = encrypted.then(|| SessionKey::from_bytes([1; 32]));
            let (mut a, _) = pair(key);
            a.confirm(Millis(0));
            let _ = a.receive(Millis(1), addr(2), &body, |_| {});
            a.handle_control(Millis(2), body.first().copied().unwrap_or(0), &body);
            let _ = a.forward(pn(A), pn(B), &body, false);
            a.flush();
        }
    }
}
