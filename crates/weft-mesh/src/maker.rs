//! The connection maker: which addresses to dial, when, and what became of them.
//!
//! **Targets** come from two sources:
//!
//! - *direct peers*: the command line, a `WEAVE_PEERS`-style list, `/connect`
//!   ([`ConnectionMaker::initiate_connections`], optionally replacing the list) and
//!   `/forget` ([`ConnectionMaker::forget_connections`]). A direct peer is
//!   `host[:port]`; a missing port is completed with our listening port, and for
//!   such a port-less peer no outbound connection is attempted while an
//!   *inbound* connection from that host exists.
//! - *discovered peers* (unless discovery is off): for every connection of every
//!   other peer in the topology, its remote address if the connection is outbound,
//!   or `remoteIP:ourPort` if it is inbound (its remote port is ephemeral). Peers
//!   we are already connected to are skipped.
//!
//! **Backoff.** A new target is tried immediately; its retry interval starts at
//! 2 s. After each failure the next try is at `now + interval/2 + rand(interval)`
//! and the interval grows ×1.5 up to 6 min. A connection that lasted more than
//! 1 min past its try time is retried immediately (interval reset). Connecting to
//! ourself and a peer-name collision make a target *never retry*.
//!
//! The maker is sans-IO: [`ConnectionMaker::check`] returns the addresses to dial
//! now and [`ConnectionMaker::next_wakeup`] when to check again; outcomes are fed
//! back with [`connection_aborted`](ConnectionMaker::connection_aborted),
//! [`connection_created`](ConnectionMaker::connection_created) and
//! [`connection_terminated`](ConnectionMaker::connection_terminated). The
//! [`Mesh`](crate::Mesh) does all of that; the type is public for status and tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::{Rng, RngCore};
use weft_wire::PeerName;

use crate::peers::Peers;
use crate::time::Millis;

/// Weave's default TCP port.
pub const DEFAULT_PORT: u16 = 6783;
/// First retry interval.
pub const INITIAL_INTERVAL: Duration = Duration::from_secs(2);
/// Largest retry interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(6 * 60);
/// A connection that lasted this long past its try time is retried at once.
pub const RESET_AFTER: Duration = Duration::from_secs(60);

/// A malformed peer address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer address {input:?}: {reason}; expected host[:port], e.g. 192.168.1.2 or 192.168.1.2:6783")]
pub struct PeerAddrError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A direct peer: `host[:port]` with port 0 meaning "not given".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerAddr {
    /// Host name or IPv4 address.
    pub host: String,
    /// Port, 0 if not given.
    pub port: u16,
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| PeerAddrError {
            input: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it contains whitespace"));
        }
        let (host, port) = match s.rsplit_once(':') {
            None => (s, 0),
            Some((h, p)) => {
                if h.contains(':') {
                    return Err(bad("IPv6 addresses are not supported"));
                }
                let port: u16 = p
                    .parse()
                    .map_err(|_| bad("the port is not a number up to 65535"))?;
                if port == 0 {
                    return Err(bad("port 0 cannot be dialled"));
                }
                (h, port)
            }
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        Ok(PeerAddr {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 0 {
            write!(f, "{}", self.host)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetState {
    /// Waiting for its next try.
    Waiting,
    /// A dial (or handshake) is in progress.
    Attempting,
    /// Connected.
    Connected,
    /// A direct peer not to be dialled for now (already connected through an
    /// inbound connection from its host).
    Suspended,
}

/// The state kept per target address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Current state.
    pub state: TargetState,
    /// Why the last attempt or connection ended.
    pub last_error: Option<String>,
    /// When to try next; `None` = never (ourself, or a name collision).
    pub try_after: Option<Millis>,
    /// The current retry interval.
    pub try_interval: Duration,
}

impl Target {
    fn new(now: Millis) -> Target {
        Target {
            state: TargetState::Waiting,
            last_error: None,
            try_after: Some(now),
            try_interval: INITIAL_INTERVAL,
        }
    }

    fn next_try_now(&mut self, now: Millis) {
        self.try_after = Some(now);
        self.try_interval = INITIAL_INTERVAL;
    }

    fn next_try_never(&mut self) {
        self.try_after = None;
        self.try_interval = MAX_INTERVAL;
    }

    /// The delay of the n-th retry is uniform in `[i/2, 3i/2)` with
    /// `i = 2 s × 1.5^(n-1)`, capped at 6 min.
    fn next_try_later(&mut self, now: Millis, rng: &mut dyn RngCore) {
        let i = u64::try_from(self.try_interval.as_millis()).unwrap_or(u64::MAX);
        let jitter = if i == 0 { 0 } else { rng.random_range(0..i) };
        self.try_after = Some(now + Duration::from_millis(i / 2 + jitter));
        self.try_interval = (self.try_interval * 3 / 2).min(MAX_INTERVAL);
    }
}

/// One of our live connections, as the maker needs to see it.
#[derive(Debug, Clone, Copy)]
pub struct OurConnection<'a> {
    /// The remote peer.
    pub remote: PeerName,
    /// The remote address (`ip:port`); for outbound connections, the target dialled.
    pub address: &'a str,
    /// Whether we dialled it.
    pub outbound: bool,
}

fn host_of(address: &str) -> Option<&str> {
    address.rsplit_once(':').map(|(h, _)| h)
}

/// The connection maker (Weave's `connectionMaker`).
#[derive(Debug, Clone)]
pub struct ConnectionMaker {
    port: u16,
    discovery: bool,
    direct: BTreeMap<String, PeerAddr>,
    targets: BTreeMap<String, Target>,
    termination_count: u64,
}

impl ConnectionMaker {
    /// A maker for a router listening on `port`, with peer discovery on or off.
    pub fn new(port: u16, discovery: bool) -> ConnectionMaker {
        ConnectionMaker {
            port,
            discovery,
            direct: BTreeMap::new(),
            targets: BTreeMap::new(),
            termination_count: 0,
        }
    }

    /// Whether peer discovery is on.
    pub fn discovery(&self) -> bool {
        self.discovery
    }

    /// Adds direct peers (or, with `replace`, makes them the whole list). Every
    /// address is validated first; if any is malformed nothing changes.
    pub fn initiate_connections<S: AsRef<str>>(
        &mut self,
        peers: &[S],
        replace: bool,
    ) -> Result<(), Vec<PeerAddrError>> {
        let mut parsed = Vec::new();
        let mut errors = Vec::new();
        for p in peers {
            match p.as_ref().parse::<PeerAddr>() {
                Ok(a) => parsed.push(a),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if replace {
            self.direct.clear();
        }
        for a in parsed {
            self.direct.insert(a.to_string(), a);
        }
        Ok(())
    }

    /// Removes direct peers (given as they were added, `host[:port]`).
    pub fn forget_connections<S: AsRef<str>>(&mut self, peers: &[S]) {
        for p in peers {
            let p = p.as_ref();
            let key = p
                .parse::<PeerAddr>()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| p.to_string());
            self.direct.remove(&key);
        }
    }

    /// The direct peers, as given (`host[:port]`), sorted.
    pub fn direct_peers(&self) -> Vec<String> {
        self.direct.keys().cloned().collect()
    }

    /// Whether `address` (a completed `host:port`) is a direct peer's.
    pub fn is_direct(&self, address: &str) -> bool {
        self.direct.values().any(|a| self.complete(a) == address)
    }

    fn complete(&self, a: &PeerAddr) -> String {
        let port = if a.port == 0 { self.port } else { a.port };
        format!("{}:{}", a.host, port)
    }

    /// All targets by address.
    pub fn targets(&self) -> &BTreeMap<String, Target> {
        &self.targets
    }

    /// Connections that ended, except those to ourself.
    pub fn termination_count(&self) -> u64 {
        self.termination_count
    }

    /// Recomputes the target set and returns the addresses to dial now (they are
    /// marked [`TargetState::Attempting`]).
    pub fn check(
        &mut self,
        now: Millis,
        conns: &[OurConnection<'_>],
        peers: &Peers,
    ) -> Vec<String> {
        let mut connected_peers = BTreeSet::new();
        let mut connected_addrs = BTreeSet::new();
        let mut inbound_hosts = BTreeSet::new();
        for c in conns {
            connected_peers.insert(c.remote);
            connected_addrs.insert(c.address.to_string());
            if !c.outbound {
                if let Some(h) = host_of(c.address) {
                    inbound_hosts.insert(h.to_string());
                }
            }
        }

        let mut valid = BTreeSet::new();
        let mut direct = BTreeSet::new();
        let mut add = |targets: &mut BTreeMap<String, Target>, address: String| {
            if connected_addrs.contains(&address) {
                return;
            }
            targets
                .entry(address.clone())
                .or_insert_with(|| Target::new(now));
            valid.insert(address);
        };
        for a in self.direct.values() {
            let address = self.complete(a);
            direct.insert(address.clone());
            if a.port == 0 && inbound_hosts.contains(&a.host) {
                continue;
            }
            add(&mut self.targets, address);
        }
        if self.discovery {
            let me = peers.our_name();
            for p in peers.iter().filter(|p| p.name != me) {
                for (other, c) in &p.connections {
                    if *other == me || connected_peers.contains(other) {
                        continue;
                    }
                    if c.outbound {
                        add(&mut self.targets, c.remote_tcp_addr.clone());
                    } else if let Some(h) = host_of(&c.remote_tcp_addr) {
                        add(&mut self.targets, format!("{h}:{}", self.port));
                    }
                }
            }
        }

        let mut dial = Vec::new();
        self.targets.retain(|address, t| {
            if t.state != TargetState::Waiting && t.state != TargetState::Suspended {
                return true;
            }
            if !valid.contains(address) {
                if direct.contains(address) {
                    t.state = TargetState::Suspended;
                    return true;
                }
                return false;
            }
            let Some(at) = t.try_after else {
                return true;
            };
            t.state = TargetState::Waiting;
            if at <= now {
                t.state = TargetState::Attempting;
                dial.push(address.clone());
            }
            true
        });
        dial
    }

    /// When a waiting target is next due, if any.
    pub fn next_wakeup(&self) -> Option<Millis> {
        self.targets
            .values()
            .filter(|t| t.state == TargetState::Waiting)
            .filter_map(|t| t.try_after)
            .min()
    }

    /// A dial or handshake to `address` failed before a connection was added.
    pub fn connection_aborted(
        &mut self,
        address: &str,
        error: String,
        never_retry: bool,
        now: Millis,
        rng: &mut dyn RngCore,
    ) {
        if let Some(t) = self.targets.get_mut(address) {
            t.state = TargetState::Waiting;
            t.last_error = Some(error);
            if never_retry {
                t.next_try_never();
            } else {
                t.next_try_later(now, rng);
            }
        }
    }

    /// An outbound connection to `address` was added.
    pub fn connection_created(&mut self, address: &str) {
        if let Some(t) = self.targets.get_mut(address) {
            t.state = TargetState::Connected;
        }
    }

    /// A connection to/from `address` ended with `error`.
    pub fn connection_terminated(
        &mut self,
        address: &str,
        error: String,
        never_retry: bool,
        to_self: bool,
        now: Millis,
        rng: &mut dyn RngCore,
    ) {
        if !to_self {
            self.termination_count += 1;
        }
        if let Some(t) = self.targets.get_mut(address) {
            t.state = TargetState::Waiting;
            t.last_error = Some(error);
            if never_retry {
                t.next_try_never();
            } else if t.try_after.is_some_and(|a| now > a + RESET_AFTER) {
                t.next_try_now(now);
            } else {
                t.next_try_later(now, rng);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{ConnSummary, LocalIdentity, PeerUpdate};
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use weft_wire::ShortId;

    fn pn(v: u64) -> PeerName {
        PeerName::new(v).unwrap()
    }

    fn peers() -> Peers {
        Peers::new(LocalIdentity {
            name: pn(1),
            nickname: "me".into(),
            uid: 11,
            short_id: ShortId::new(1).unwrap(),
        })
    }

    #[test]
    fn parse_peer_addr() {
        assert_eq!(
            "10.0.0.1".parse::<PeerAddr>().unwrap(),
            PeerAddr {
                host: "10.0.0.1".into(),
                port: 0
            }
        );
        assert_eq!(
            "node-2:7000".parse::<PeerAddr>().unwrap().to_string(),
            "node-2:7000"
        );
        for bad in [
            "",
            ":6783",
            "1.2.3.4:x",
            "1.2.3.4:70000",
            "::1",
            "a b",
            "h:0",
        ] {
            assert!(bad.parse::<PeerAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backoff_sequence() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut m = ConnectionMaker::new(DEFAULT_PORT, false);
        m.initiate_connections(&["10.0.0.2"], false).unwrap();
        let p = peers();
        let t0 = Millis(1_000);
        assert_eq!(m.check(t0, &[], &p), vec!["10.0.0.2:6783".to_string()]);
        // Nothing more to dial while the attempt is in flight.
        assert!(m.check(t0, &[], &p).is_empty());
        let mut now = t0;
        let mut interval = Duration::from_secs(2);
        for _ in 0..20 {
            let interval_ms = interval.as_millis() as u64;
            m.connection_aborted("10.0.0.2:6783", "refused".into(), false, now, &mut rng);
            let t = &m.targets()["10.0.0.2:6783"];
            let at = t.try_after.unwrap();
            let delay = at.0 - now.0;
            assert!(
                delay >= interval_ms / 2 && delay < interval_ms / 2 + interval_ms,
                "delay {delay} for interval {interval_ms}"
            );
            interval = (interval * 3 / 2).min(MAX_INTERVAL);
            assert_eq!(t.try_interval, interval);
            assert_eq!(m.next_wakeup(), Some(at));
            assert!(m.check(Millis(at.0 - 1), &[], &p).is_empty());
            now = at;
            assert_eq!(m.check(now, &[], &p), vec!["10.0.0.2:6783".to_string()]);
        }
        assert_eq!(interval, MAX_INTERVAL, "capped at 6 minutes");
    }

    #[test]
    fn long_lived_connection_resets_backoff() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut m = ConnectionMaker::new(DEFAULT_PORT, false);
        m.initiate_connections(&["10.0.0.2:6783"], false).unwrap();
        let p = peers();
        let addr = "10.0.0.2:6783";
        m.check(Millis(0), &[], &p);
        m.connection_aborted(addr, "refused".into(), false, Millis(0), &mut rng);
        let at = m.targets()[addr].try_after.unwrap();
        assert_eq!(m.check(at, &[], &p), vec![addr.to_string()]);
        m.connection_created(addr);
        assert_eq!(m.targets()[addr].state, TargetState::Connected);
        // Short-lived: back off further.
        m.connection_terminated(
            addr,
            "EOF".into(),
            false,
            false,
            at + Duration::from_secs(5),
            &mut rng,
        );
        let t = &m.targets()[addr];
        assert!(t.try_after.unwrap() > at + Duration::from_secs(5));
        assert_eq!(
            t.try_interval,
            Duration::from_secs(4) + Duration::from_millis(500)
        );
        let at2 = t.try_after.unwrap();
        assert_eq!(m.check(at2, &[], &p).len(), 1);
        m.connection_created(addr);
        // Lasted more than a minute: immediate retry with the interval reset.
        let end = at2 + Duration::from_secs(61);
        m.connection_terminated(addr, "EOF".into(), false, false, end, &mut rng);
        let t = &m.targets()[addr];
        assert_eq!(t.try_after, Some(end));
        assert_eq!(t.try_interval, INITIAL_INTERVAL);
        assert_eq!(m.termination_count(), 2);
    }

    #[test]
    fn never_retry_and_port_zero_rule() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut m = ConnectionMaker::new(DEFAULT_PORT, false);
        m.initiate_connections(&["10.0.0.2", "10.0.0.3:7000"], false)
            .unwrap();
        let p = peers();
        let dials = m.check(Millis(0), &[], &p);
        assert_eq!(
            dials,
            vec!["10.0.0.2:6783".to_string(), "10.0.0.3:7000".into()]
        );
        m.connection_aborted(
            "10.0.0.3:7000",
            "cannot connect to ourself".into(),
            true,
            Millis(0),
            &mut rng,
        );
        assert_eq!(m.targets()["10.0.0.3:7000"].try_after, None);
        assert_eq!(m.next_wakeup(), None);
        assert!(m.check(Millis(10_000_000), &[], &p).is_empty());
        // An inbound connection from 10.0.0.2 suspends the port-less target.
        m.connection_aborted(
            "10.0.0.2:6783",
            "refused".into(),
            false,
            Millis(0),
            &mut rng,
        );
        let inbound = [OurConnection {
            remote: pn(2),
            address: "10.0.0.2:45678",
            outbound: false,
        }];
        assert!(m.check(Millis(10_000_000), &inbound, &p).is_empty());
        assert_eq!(m.targets()["10.0.0.2:6783"].state, TargetState::Suspended);
        // Without it the target is dialled again.
        assert_eq!(m.check(Millis(10_000_000), &[], &p).len(), 1);
        // Forgetting a direct peer drops its waiting target.
        m.forget_connections(&["10.0.0.3:7000"]);
        m.check(Millis(10_000_000), &[], &p);
        assert!(!m.targets().contains_key("10.0.0.3:7000"));
        assert_eq!(m.direct_peers(), vec!["10.0.0.2".to_string()]);
        // Replace swaps the whole list; a bad address changes nothing.
        assert!(m
            .initiate_connections(&["10.0.0.9", "bad addr"], true)
            .is_err());
        assert_eq!(m.direct_peers(), vec!["10.0.0.2".to_string()]);
        m.initiate_connections(&["10.0.0.9"], true).unwrap();
        assert_eq!(m.direct_peers(), vec!["10.0.0.9".to_string()]);
    }

    #[test]
    fn discovery_from_topology() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut p = peers();
        let mut ch = Default::default();
        // Peer 2 (connected to us) has an outbound connection to 3 and an inbound one from 4.
        p.add_local_connection(
            pn(2),
            ConnSummary {
                remote_tcp_addr: "10.0.0.2:6783".into(),
                outbound: true,
                established: true,
            },
        );
        p.apply_update(
            &[PeerUpdate {
                name: pn(2),
                nickname: "two".into(),
                uid: 2,
                version: 3,
                short_id: ShortId::new(2).unwrap(),
                has_short_id: true,
                connections: vec![
                    (
                        pn(1),
                        ConnSummary {
                            remote_tcp_addr: "10.0.0.1:5555".into(),
                            outbound: false,
                            established: true,
                        },
                    ),
                    (
                        pn(3),
                        ConnSummary {
                            remote_tcp_addr: "10.0.0.3:6783".into(),
                            outbound: true,
                            established: true,
                        },
                    ),
                    (
                        pn(4),
                        ConnSummary {
                            remote_tcp_addr: "10.0.0.4:40000".into(),
                            outbound: false,
                            established: false,
                        },
                    ),
                ],
            }],
            &mut rng,
            &mut ch,
        );
        let conns = [OurConnection {
            remote: pn(2),
            address: "10.0.0.2:6783",
            outbound: true,
        }];
        let mut m = ConnectionMaker::new(DEFAULT_PORT, true);
        let dials = m.check(Millis(0), &conns, &p);
        assert_eq!(
            dials,
            vec!["10.0.0.3:6783".to_string(), "10.0.0.4:6783".into()]
        );
        // Once connected to 3, its target is no longer valid and is forgotten.
        let conns2 = [
            conns[0],
            OurConnection {
                remote: pn(3),
                address: "10.0.0.3:6783",
                outbound: true,
            },
        ];
        m.connection_aborted("10.0.0.3:6783", "x".into(), false, Millis(0), &mut rng);
        m.check(Millis(0), &conns2, &p);
        assert!(!m.targets().contains_key("10.0.0.3:6783"));
        // Without discovery nothing is learnt.
        let mut m = ConnectionMaker::new(DEFAULT_PORT, false);
        assert!(m.check(Millis(0), &conns, &p).is_empty());
    }
}
