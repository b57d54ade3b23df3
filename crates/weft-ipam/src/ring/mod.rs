//! The shared address ring: which peer owns which part of the allocation range (a CRDT).
//!
//! As Weave Net's `ipam/ring` (see `weave-net-internals.md` §5.1–5.2): the allocation range
//! `[start, end)` (the *universe*, which wraps around) is cut by *tokens*. Each [`Entry`] says
//! that its peer owns the addresses from its token up to the next token (the last entry's range
//! wraps around to the first token). Only the owner of an entry changes it (or a donor creating
//! entries for the peer it gives space to, or `rmpeer` taking over a dead peer's entries), and
//! every change bumps the entry's version. Entries are reassigned, never deleted.
//!
//! Every peer holds a copy of the ring and merges the copies it receives by gossip with
//! [`Ring::merge`]: token by token, the higher version wins. The merge refuses updates that
//! would take away from us a range in which we have allocated addresses; it asks whether we
//! have allocations through the [`Allocations`] trait (implemented by [`Space`]).
//!
//! `free` is advisory: each owner reports how many addresses of its entries are free
//! ([`Ring::report_free`], [`Ring::update_free`]), and peers short of space ask the peers with
//! the most free space ([`Ring::choose_peers_to_ask_for_space`]).
//!
//! This module is sans-IO: no clock, no socket; randomness comes from the caller.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use rand::Rng;

use crate::address::{to_ipv4, Address, Range};
use crate::space::Space;

pub use weft_wire::peer_name::PeerName;

/// How much `rmpeer` ([`Ring::transfer`]) bumps the version of every entry it takes over, so
/// that the transfer beats concurrent changes by the dead peer still in flight.
pub const TRANSFER_VERSION_BUMP: u32 = 100;

/// One token of the ring: `peer` owns the addresses from `token` to the next token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    /// First address of the range.
    pub token: Address,
    /// The owner of the range.
    pub peer: PeerName,
    /// Bumped on every change; the higher version wins a merge.
    pub version: u32,
    /// How many addresses of the range the owner reports free (advisory).
    pub free: u32,
}

impl Entry {
    /// The merge order between two entries with the same token and version but different
    /// content: the higher `free` wins, then the higher peer name (so that the merge does not
    /// depend on which copy is ours).
    fn beats(&self, other: &Entry) -> bool {
        (self.free, self.peer) > (other.free, other.peer)
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} (v{}, {} free)",
            to_ipv4(self.token),
            self.peer,
            self.version,
            self.free
        )
    }
}

/// A broken ring invariant (in a ring received from a peer, or asked for by a caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    /// The universe is empty or reversed.
    #[error("the ring's allocation range {start}-{end} is empty (start must be below end)")]
    EmptyUniverse {
        /// Start of the universe.
        start: Ipv4Addr,
        /// End (exclusive) of the universe.
        end: Ipv4Addr,
    },
    /// Tokens are not in ascending order.
    #[error("ring entries are not sorted: token {token} comes after {previous}")]
    NotSorted {
        /// The token out of order.
        token: Ipv4Addr,
        /// The token before it.
        previous: Ipv4Addr,
    },
    /// The same token appears twice.
    #[error("ring token {0} appears more than once")]
    DuplicateToken(Ipv4Addr),
    /// A token outside the universe.
    #[error("ring token {token} is outside the allocation range {start}-{end} (end exclusive)")]
    TokenOutOfRange {
        /// The token.
        token: Ipv4Addr,
        /// Start of the universe.
        start: Ipv4Addr,
        /// End (exclusive) of the universe.
        end: Ipv4Addr,
    },
    /// An entry reports more free addresses than its range holds.
    #[error("ring entry at {token} reports {free} free addresses but its range holds only {span}")]
    TooMuchFree {
        /// The token.
        token: Ipv4Addr,
        /// The free count reported.
        free: u32,
        /// The size of the entry's range.
        span: u64,
    },
}

/// Errors of the local ring operations (programming or configuration errors of the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// `claim_for_peers` on a ring that already has entries.
    #[error("the ring already has entries; it can only be created once")]
    NotEmpty,
    /// `claim_for_peers` with no peer.
    #[error("cannot create a ring for an empty list of peers")]
    NoPeers,
    /// A range that is empty or not inside the universe.
    #[error("range {range} is empty or not inside the allocation range {universe}")]
    BadRange {
        /// The range given.
        range: Range,
        /// The universe.
        universe: Range,
    },
    /// A grant of addresses this peer does not own.
    #[error("cannot give away {range}: address {addr} is owned by {owner}, not by this peer")]
    NotOwner {
        /// The range to grant.
        range: Range,
        /// The first address of it we do not own.
        addr: Ipv4Addr,
        /// Its owner.
        owner: PeerName,
    },
    /// A grant from this peer to itself.
    #[error("cannot give {0} to this peer itself")]
    GrantToSelf(Range),
    /// The free counts reported for a token this peer does not own.
    #[error("cannot report free space at {0}: this peer has no ring entry there")]
    NotOurToken(Ipv4Addr),
    /// The ring is invalid.
    #[error("invalid ring: {0}")]
    Invalid(#[from] InvariantError),
}

/// Why a ring received from a peer cannot be merged into ours.
///
/// Any of these fails the gossip call, which drops the connection to that peer (as in Weave),
/// so each message says what the operator must do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The incoming ring breaks an invariant.
    #[error(
        "invalid IP allocation ring received from peer {from}: {source}; \
         that peer's IPAM state is corrupt: reset it (`weft reset` on that node)"
    )]
    InvalidRing {
        /// The peer the ring came from.
        from: PeerName,
        /// The broken invariant.
        source: InvariantError,
    },
    /// The two rings were created from different seeds (two separate initial consensuses).
    #[error(
        "IP allocation was seeded by different peers (ours: {}, peer {from}'s: {}): \
         the two sides created separate rings; one side must be reset (`weft reset` on \
         each of its nodes) so that it can rejoin and receive the other side's ring",
        names(ours),
        names(theirs)
    )]
    DifferentSeeds {
        /// The peer the ring came from.
        from: PeerName,
        /// Our seeds.
        ours: Vec<PeerName>,
        /// Their seeds.
        theirs: Vec<PeerName>,
    },
    /// The two rings cover different allocation ranges.
    #[error(
        "Incompatible IP allocation ranges: ours is {ours}, peer {from} uses {theirs}; \
         every peer must be started with the same --ipalloc-range"
    )]
    DifferentRange {
        /// The peer the ring came from.
        from: PeerName,
        /// Our universe.
        ours: Range,
        /// Their universe.
        theirs: Range,
    },
    /// An incoming token splits a range we own and takes part of it where we have allocations.
    #[error(
        "Peer {from} says {owner} owns the IP range from {token}, which I think I own and \
         where I have allocated addresses; one of the two peers has stale IPAM state \
         (a peer removed with `weft rmpeer` that came back, or rmpeer run twice): reset \
         the peer that should not own it (`weft reset`)"
    )]
    SplitsOwnRange {
        /// The peer the ring came from.
        from: PeerName,
        /// The incoming token.
        token: Ipv4Addr,
        /// The owner the incoming entry names.
        owner: PeerName,
    },
    /// Same token and version as one of our entries but different owner, where we have
    /// allocations.
    #[error(
        "Inconsistent entries for IP range I own at {token} v{version}: peer {from} says \
         owner {owner} with the same version; the ring was changed in two places at once \
         (rmpeer run on two hosts?): reset the peer that should not own it (`weft reset`)"
    )]
    InconsistentEntry {
        /// The peer the ring came from.
        from: PeerName,
        /// The token.
        token: Ipv4Addr,
        /// The version both entries carry.
        version: u32,
        /// The owner in the incoming entry.
        owner: PeerName,
    },
    /// A newer version of one of our entries names another owner, and we have allocations in it.
    #[error(
        "Received update for IP range I own at {token} v{our_version}: incoming message \
         from {from} says owner {owner} v{their_version}; this happens when `weft rmpeer` \
         was run for a peer that is still alive, or on two hosts for the same peer: reset \
         the peer that should not own the range (`weft reset`)"
    )]
    OwnRangeClaimed {
        /// The peer the ring came from.
        from: PeerName,
        /// The token.
        token: Ipv4Addr,
        /// Our version of the entry.
        our_version: u32,
        /// The owner in the incoming entry.
        owner: PeerName,
        /// The incoming version.
        their_version: u32,
    },
    /// One of our entries arrives with the highest possible version: we cannot supersede it.
    #[error(
        "peer {from} sent version {version} for our ring entry at {token}, which cannot be \
         superseded; that peer's IPAM state is corrupt: reset it (`weft reset` on that node)"
    )]
    VersionExhausted {
        /// The peer the ring came from.
        from: PeerName,
        /// The token.
        token: Ipv4Addr,
        /// The incoming version.
        version: u32,
    },
}

impl MergeError {
    /// The peer whose ring could not be merged.
    pub fn from_peer(&self) -> PeerName {
        match self {
            MergeError::InvalidRing { from, .. }
            | MergeError::DifferentSeeds { from, .. }
            | MergeError::DifferentRange { from, .. }
            | MergeError::SplitsOwnRange { from, .. }
            | MergeError::InconsistentEntry { from, .. }
            | MergeError::OwnRangeClaimed { from, .. }
            | MergeError::VersionExhausted { from, .. } => *from,
        }
    }
}

fn names(peers: &[PeerName]) -> String {
    let list: Vec<String> = peers.iter().map(PeerName::to_string).collect();
    format!("[{}]", list.join(" "))
}

/// Answers whether this peer has allocated addresses in a range (the allocator's [`Space`]
/// knows). [`Ring::merge`] asks before letting another peer take a range we own.
pub trait Allocations {
    /// True when at least one address of `range` is allocated here.
    fn has_allocations(&self, range: Range) -> bool;
}

impl Allocations for Space {
    fn has_allocations(&self, range: Range) -> bool {
        self.num_allocated_in(range) > 0
    }
}

impl<F: Fn(Range) -> bool> Allocations for F {
    fn has_allocations(&self, range: Range) -> bool {
        self(range)
    }
}

/// An [`Allocations`] that never has any (an observer, or a peer that allocated nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAllocations;

impl Allocations for NoAllocations {
    fn has_allocations(&self, _range: Range) -> bool {
        false
    }
}

/// One peer's share of the ring, for `weft status ipam`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerShare {
    /// The peer.
    pub peer: PeerName,
    /// Addresses it owns.
    pub owned: u64,
    /// Addresses it reports free.
    pub free: u64,
    /// Number of ring entries it owns.
    pub entries: usize,
}

/// One entry with the range(s) it covers, for `GET /ring`-style listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeInfo {
    /// The entry.
    pub entry: Entry,
    /// The addresses it covers: one range, or two when it wraps around the universe end.
    pub ranges: Vec<Range>,
}

/// How an entry of a merge result was chosen (to word the error when it takes our range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// Our entry, unchanged or with its version bumped.
    Ours,
    /// A token only the incoming ring has.
    NewToken,
    /// The incoming entry had a higher version.
    Newer { our_version: u32 },
    /// Same token and version, different owner; `ours_owned` when the entry was ours.
    Tie { ours_owned: bool },
}

/// A copy of the ring, held by `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    start: Address,
    end: Address,
    peer: PeerName,
    entries: Vec<Entry>,
    seeds: Vec<PeerName>,
}

impl Ring {
    /// An empty ring over `universe` held by `peer`. Fails when the universe is empty.
    pub fn new(universe: Range, peer: PeerName) -> Result<Ring, RingError> {
        if universe.is_empty() {
            return Err(InvariantError::EmptyUniverse {
                start: to_ipv4(universe.start),
                end: to_ipv4(universe.end),
            }
            .into());
        }
        Ok(Ring {
            start: universe.start,
            end: universe.end,
            peer,
            entries: Vec::new(),
            seeds: Vec::new(),
        })
    }

    /// A ring from its parts (as persisted or received), checked with
    /// [`Ring::check_invariants`].
    pub fn from_parts(
        universe: Range,
        peer: PeerName,
        entries: Vec<Entry>,
        seeds: Vec<PeerName>,
    ) -> Result<Ring, InvariantError> {
        let ring = Ring::from_parts_unchecked(universe.start, universe.end, peer, entries, seeds);
        ring.check_invariants()?;
        Ok(ring)
    }

    /// A ring as decoded from the wire: not checked. [`Ring::merge`] checks incoming rings, and
    /// every method is panic-free on an invalid ring.
    pub(crate) fn from_parts_unchecked(
        start: Address,
        end: Address,
        peer: PeerName,
        entries: Vec<Entry>,
        seeds: Vec<PeerName>,
    ) -> Ring {
        Ring {
            start,
            end,
            peer,
            entries,
            seeds,
        }
    }

    /// The universe `[start, end)`.
    pub fn universe(&self) -> Range {
        Range {
            start: self.start,
            end: self.end,
        }
    }

    /// Number of addresses in the universe.
    pub fn universe_size(&self) -> u64 {
        u64::from(self.end.saturating_sub(self.start))
    }

    /// The peer holding this copy.
    pub fn peer(&self) -> PeerName {
        self.peer
    }

    /// Changes the peer holding this copy (e.g. to merge as an observer in tests).
    pub fn set_peer(&mut self, peer: PeerName) {
        self.peer = peer;
    }

    /// The entries, sorted by token.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The peers the ring was created for (`claim_for_peers`), empty for an old-style ring.
    pub fn seeds(&self) -> &[PeerName] {
        &self.seeds
    }

    /// True when the ring has no entry (not created yet).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks the invariants: non-empty universe, tokens sorted, unique and inside the
    /// universe, and every `free` within the size of its entry's range.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        if self.start >= self.end {
            return Err(InvariantError::EmptyUniverse {
                start: to_ipv4(self.start),
                end: to_ipv4(self.end),
            });
        }
        for pair in self.entries.windows(2) {
            if pair[1].token == pair[0].token {
                return Err(InvariantError::DuplicateToken(to_ipv4(pair[1].token)));
            }
            if pair[1].token < pair[0].token {
                return Err(InvariantError::NotSorted {
                    token: to_ipv4(pair[1].token),
                    previous: to_ipv4(pair[0].token),
                });
            }
        }
        for e in &self.entries {
            if e.token < self.start || e.token >= self.end {
                return Err(InvariantError::TokenOutOfRange {
                    token: to_ipv4(e.token),
                    start: to_ipv4(self.start),
                    end: to_ipv4(self.end),
                });
            }
        }
        for i in 0..self.entries.len() {
            let span = self.span(i);
            let e = &self.entries[i];
            if u64::from(e.free) > span {
                return Err(InvariantError::TooMuchFree {
                    token: to_ipv4(e.token),
                    free: e.free,
                    span,
                });
            }
        }
        Ok(())
    }

    /// Number of addresses from `from` to `to` going up and wrapping at the universe end; the
    /// whole universe when they are equal.
    fn distance(&self, from: Address, to: Address) -> u64 {
        if to > from {
            u64::from(to - from)
        } else {
            u64::from(self.end.saturating_sub(from)) + u64::from(to.saturating_sub(self.start))
        }
    }

    /// Size of entry `i`'s range.
    fn span(&self, i: usize) -> u64 {
        span_in(&self.entries, i, self)
    }

    /// The range(s) of entry `i`: one, or two when it wraps around the universe end.
    fn entry_ranges(&self, i: usize) -> Vec<Range> {
        ranges_in(&self.entries, i, self.start, self.end)
    }

    /// Index of the entry whose range holds `addr` (None for an empty ring).
    fn index_of(&self, addr: Address) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let p = self.entries.partition_point(|e| e.token <= addr);
        Some(if p == 0 {
            self.entries.len() - 1
        } else {
            p - 1
        })
    }

    /// The owner of `addr`; `None` when the ring is empty or `addr` is outside the universe.
    pub fn owner_of(&self, addr: Address) -> Option<PeerName> {
        if addr < self.start || addr >= self.end {
            return None;
        }
        self.index_of(addr).map(|i| self.entries[i].peer)
    }

    /// The ranges `peer` owns, sorted by address (one per entry, a wrapping entry split in two).
    pub fn owned_ranges(&self, peer: PeerName) -> Vec<Range> {
        let mut out: Vec<Range> = (0..self.entries.len())
            .filter(|&i| self.entries[i].peer == peer)
            .flat_map(|i| self.entry_ranges(i))
            .collect();
        out.sort();
        out
    }

    /// Every entry with the range(s) it covers, in token order.
    pub fn range_infos(&self) -> Vec<RangeInfo> {
        (0..self.entries.len())
            .map(|i| RangeInfo {
                entry: self.entries[i],
                ranges: self.entry_ranges(i),
            })
            .collect()
    }

    /// The distinct peers owning entries, sorted.
    pub fn peers(&self) -> Vec<PeerName> {
        let mut peers: Vec<PeerName> = self.entries.iter().map(|e| e.peer).collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// Whether `peer` owns at least one entry.
    pub fn contains_peer(&self, peer: PeerName) -> bool {
        self.entries.iter().any(|e| e.peer == peer)
    }

    /// Each owning peer's share of the universe, sorted by peer.
    pub fn shares(&self) -> Vec<PeerShare> {
        let mut by_peer: BTreeMap<PeerName, PeerShare> = BTreeMap::new();
        for i in 0..self.entries.len() {
            let e = self.entries[i];
            let share = by_peer.entry(e.peer).or_insert(PeerShare {
                peer: e.peer,
                owned: 0,
                free: 0,
                entries: 0,
            });
            share.owned += self.span(i);
            share.free += u64::from(e.free);
            share.entries += 1;
        }
        by_peer.into_values().collect()
    }

    /// Creates the ring: splits the universe between `peers` by recursive halving, the first
    /// half to `peers[..n/2]` and the second to `peers[n/2..]`, which gives CIDR-aligned blocks
    /// when the universe is a CIDR (3 peers on 10.32.0.0/12: 10.32.0.0/13, 10.40.0.0/14,
    /// 10.44.0.0/14). Every entry starts at version 0 with all its addresses free, and the
    /// peer list is recorded as the seeds.
    ///
    /// The peers are used in the order given; callers pass [`normalize_peers`] of the
    /// consensus value or seed list, so that every peer builds the same ring.
    pub fn claim_for_peers(&mut self, peers: &[PeerName]) -> Result<(), RingError> {
        if !self.entries.is_empty() {
            return Err(RingError::NotEmpty);
        }
        if peers.is_empty() {
            return Err(RingError::NoPeers);
        }
        let mut entries = Vec::new();
        subdivide(
            u64::from(self.start),
            u64::from(self.end),
            peers,
            &mut entries,
        );
        self.entries = entries;
        self.seeds = peers.to_vec();
        Ok(())
    }

    /// Gives `[range.start, range.end)`, which this peer owns entirely, to `peer` (donation
    /// after a space request): a token at `range.start` owned by `peer`, and one at
    /// `range.end` owned by us unless a token is already there. Tokens in between are
    /// reassigned to `peer`; every changed entry gets a version bump. The given entries
    /// report all their addresses free (donated space is free); ours are clamped to their
    /// new size. Call [`Ring::update_free`] afterwards for exact counts.
    pub fn grant_range_to_host(&mut self, range: Range, peer: PeerName) -> Result<(), RingError> {
        let universe = self.universe();
        if range.is_empty() || !universe.contains_range(&range) || self.entries.is_empty() {
            return Err(RingError::BadRange { range, universe });
        }
        if peer == self.peer {
            return Err(RingError::GrantToSelf(range));
        }
        // Every piece of the range must be ours: the entry holding its start and every token
        // inside it.
        let check = |addr: Address, ring: &Ring| -> Result<(), RingError> {
            match ring.owner_of(addr) {
                Some(owner) if owner == ring.peer => Ok(()),
                Some(owner) => Err(RingError::NotOwner {
                    range,
                    addr: to_ipv4(addr),
                    owner,
                }),
                None => Err(RingError::BadRange { range, universe }),
            }
        };
        check(range.start, self)?;
        for e in &self.entries {
            if range.contains(e.token) {
                check(e.token, self)?;
            }
        }

        // The token after the range: `end`, or the universe start when the range reaches the
        // universe end.
        let end_token = if range.end == self.end {
            self.start
        } else {
            range.end
        };
        let us = self.peer;
        if !self.entries.iter().any(|e| e.token == end_token) {
            // The entry holding end_token is ours (it continues a range we own).
            let holder = self.index_of(end_token).map_or(0, |i| self.entries[i].free);
            let p = self.entries.partition_point(|e| e.token < end_token);
            self.entries.insert(
                p,
                Entry {
                    token: end_token,
                    peer: us,
                    version: 0,
                    free: holder,
                },
            );
        }
        match self.entries.binary_search_by_key(&range.start, |e| e.token) {
            Ok(i) => {
                let e = &mut self.entries[i];
                e.peer = peer;
                e.version = e.version.saturating_add(1);
            }
            Err(p) => self.entries.insert(
                p,
                Entry {
                    token: range.start,
                    peer,
                    version: 0,
                    free: 0,
                },
            ),
        }
        for e in self.entries.iter_mut() {
            if e.token > range.start && range.contains(e.token) {
                e.peer = peer;
                e.version = e.version.saturating_add(1);
            }
        }
        // Free counts: the granted entries are all free; ours may have shrunk.
        for i in 0..self.entries.len() {
            let span = self.span(i);
            let e = &mut self.entries[i];
            if range.contains(e.token) {
                e.free = clamp_u32(span);
            } else if u64::from(e.free) > span {
                e.free = clamp_u32(span);
                if e.peer == us && e.token != end_token {
                    e.version = e.version.saturating_add(1);
                }
            }
        }
        Ok(())
    }

    /// `rmpeer`: gives every entry of `from` to `to`, with [`TRANSFER_VERSION_BUMP`] added to
    /// its version. Returns the ranges transferred (sorted). Run it for a dead peer on
    /// exactly one host.
    pub fn transfer(&mut self, from: PeerName, to: PeerName) -> Vec<Range> {
        let ranges = self.owned_ranges(from);
        if from == to {
            return ranges;
        }
        for e in self.entries.iter_mut().filter(|e| e.peer == from) {
            e.peer = to;
            e.version = e.version.saturating_add(TRANSFER_VERSION_BUMP);
        }
        ranges
    }

    /// Records the free counts of our entries, by token (Weave's `ReportFree`). Counts above
    /// an entry's size are clamped; a changed count bumps the version. Returns whether
    /// anything changed. Tokens we do not own are an error (and nothing is changed).
    pub fn report_free(&mut self, free: &BTreeMap<Address, u64>) -> Result<bool, RingError> {
        let mut updates = Vec::with_capacity(free.len());
        for (&token, &count) in free {
            match self.entries.binary_search_by_key(&token, |e| e.token) {
                Ok(i) if self.entries[i].peer == self.peer => {
                    updates.push((i, clamp_u32(count.min(self.span(i)))))
                }
                _ => return Err(RingError::NotOurToken(to_ipv4(token))),
            }
        }
        let mut changed = false;
        for (i, count) in updates {
            let e = &mut self.entries[i];
            if e.free != count {
                e.free = count;
                e.version = e.version.saturating_add(1);
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Recomputes the free count of each of our entries with `free_in` (e.g.
    /// `|r| space.num_free_in(r)`), summing over a wrapping entry's two ranges. Returns whether
    /// anything changed (changed entries get a version bump).
    pub fn update_free(&mut self, free_in: impl Fn(Range) -> u64) -> bool {
        let mut changed = false;
        for i in 0..self.entries.len() {
            if self.entries[i].peer != self.peer {
                continue;
            }
            let count: u64 = self.entry_ranges(i).into_iter().map(&free_in).sum();
            let count = clamp_u32(count.min(self.span(i)));
            let e = &mut self.entries[i];
            if e.free != count {
                e.free = count;
                e.version = e.version.saturating_add(1);
                changed = true;
            }
        }
        changed
    }

    /// The peers to ask for space in `range`, best first: peers other than us with free
    /// addresses in entries overlapping `range`, each weighted by its total free count times a
    /// random number in [0, 1), by descending weight.
    pub fn choose_peers_to_ask_for_space<R: Rng + ?Sized>(
        &self,
        range: Range,
        rng: &mut R,
    ) -> Vec<PeerName> {
        let mut total: BTreeMap<PeerName, u64> = BTreeMap::new();
        for i in 0..self.entries.len() {
            let e = self.entries[i];
            if e.free == 0 || e.peer == self.peer {
                continue;
            }
            if self.entry_ranges(i).iter().any(|r| r.overlaps(&range)) {
                *total.entry(e.peer).or_default() += u64::from(e.free);
            }
        }
        let mut weighted: Vec<(f64, PeerName)> = total
            .into_iter()
            .map(|(peer, free)| (free as f64 * rng.random::<f64>(), peer))
            .collect();
        weighted.sort_by(|a, b| b.0.total_cmp(&a.0));
        weighted.into_iter().map(|(_, p)| p).collect()
    }

    /// Merges a ring received from another peer into ours (Weave's `Ring.Merge`); returns
    /// whether our ring changed. On error our ring is left unchanged.
    ///
    /// The incoming ring must satisfy the invariants, have the same universe, and the same
    /// seeds when both have some. Then token by token:
    /// - a token only one ring has is taken, but a token splitting a range we own, where we
    ///   have allocations in the part it takes, is [`MergeError::SplitsOwnRange`];
    /// - the higher version wins; when it names another owner for an entry of ours where we
    ///   have allocations, [`MergeError::OwnRangeClaimed`]; when it names us, we keep ours
    ///   with version theirs + 1;
    /// - same version, different owner: the higher `free` wins (then the higher peer name),
    ///   but if the entry is ours and we have allocations in it,
    ///   [`MergeError::InconsistentEntry`]. Same owner, different `free`: for our own entries
    ///   ours is kept (we are the authority on our free space), otherwise the higher wins.
    ///
    /// Finally every `free` above its entry's new size is clamped (our own entries get a
    /// version bump), and our seeds are taken from the incoming ring if we had none.
    pub fn merge(
        &mut self,
        incoming: &Ring,
        allocations: &impl Allocations,
    ) -> Result<bool, MergeError> {
        let from = incoming.peer;
        incoming
            .check_invariants()
            .map_err(|source| MergeError::InvalidRing { from, source })?;
        if !self.seeds.is_empty() && !incoming.seeds.is_empty() && self.seeds != incoming.seeds {
            return Err(MergeError::DifferentSeeds {
                from,
                ours: self.seeds.clone(),
                theirs: incoming.seeds.clone(),
            });
        }
        if self.start != incoming.start || self.end != incoming.end {
            return Err(MergeError::DifferentRange {
                from,
                ours: self.universe(),
                theirs: incoming.universe(),
            });
        }

        let us = self.peer;
        let ours = &self.entries;
        let theirs = &incoming.entries;
        let mut result: Vec<Entry> = Vec::with_capacity(ours.len().max(theirs.len()));
        // For each result entry: who owned its token's address in our ring, and how it was picked.
        let mut origin: Vec<(Option<PeerName>, Pick)> = Vec::with_capacity(result.capacity());
        // Owner, in our ring, of the addresses just before the next of our tokens.
        let mut our_owner = ours.last().map(|e| e.peer);
        let (mut i, mut j) = (0, 0);
        while i < ours.len() || j < theirs.len() {
            let take_ours = match (ours.get(i), theirs.get(j)) {
                (Some(m), Some(o)) if m.token == o.token => {
                    // Same token.
                    let (entry, pick) = merge_entry(m, o, us, from)?;
                    result.push(entry);
                    origin.push((Some(m.peer), pick));
                    our_owner = Some(m.peer);
                    i += 1;
                    j += 1;
                    continue;
                }
                (Some(m), Some(o)) => m.token < o.token,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if take_ours {
                let m = ours[i];
                result.push(m);
                origin.push((Some(m.peer), Pick::Ours));
                our_owner = Some(m.peer);
                i += 1;
            } else {
                result.push(theirs[j]);
                origin.push((our_owner, Pick::NewToken));
                j += 1;
            }
        }

        // Check what we would lose, then clamp free counts to the new spans.
        let n = result.len();
        for k in 0..n {
            let (prior, pick) = origin[k];
            let e = result[k];
            let conflict = matches!(pick, Pick::Tie { ours_owned: true });
            let lost = prior == Some(us) && e.peer != us;
            if !(lost || conflict) {
                continue;
            }
            let has = ranges_in(&result, k, self.start, self.end)
                .into_iter()
                .any(|r| allocations.has_allocations(r));
            if !has {
                continue;
            }
            let token = to_ipv4(e.token);
            return Err(match pick {
                Pick::Tie { .. } => MergeError::InconsistentEntry {
                    from,
                    token,
                    version: e.version,
                    owner: theirs
                        .binary_search_by_key(&e.token, |x| x.token)
                        .map_or(e.peer, |x| theirs[x].peer),
                },
                Pick::Newer { our_version } => MergeError::OwnRangeClaimed {
                    from,
                    token,
                    our_version,
                    owner: e.peer,
                    their_version: e.version,
                },
                Pick::NewToken | Pick::Ours => MergeError::SplitsOwnRange {
                    from,
                    token,
                    owner: e.peer,
                },
            });
        }
        for k in 0..n {
            let span = span_in(&result, k, self);
            let e = &mut result[k];
            if u64::from(e.free) > span {
                e.free = clamp_u32(span);
                if e.peer == us {
                    e.version = e.version.saturating_add(1);
                }
            }
        }

        let mut changed = result != self.entries;
        self.entries = result;
        if self.seeds.is_empty() && !incoming.seeds.is_empty() {
            self.seeds = incoming.seeds.clone();
            changed = true;
        }
        Ok(changed)
    }
}

/// Merges two entries with the same token; `us` is the peer holding our copy.
fn merge_entry(
    mine: &Entry,
    theirs: &Entry,
    us: PeerName,
    from: PeerName,
) -> Result<(Entry, Pick), MergeError> {
    use std::cmp::Ordering;
    Ok(match mine.version.cmp(&theirs.version) {
        Ordering::Greater => (*mine, Pick::Ours),
        Ordering::Equal if mine == theirs => (*mine, Pick::Ours),
        Ordering::Equal => {
            if mine.peer == us && theirs.peer == us {
                // Only `free` differs: we know our free space best.
                (*mine, Pick::Ours)
            } else if mine.peer == theirs.peer {
                let win = if theirs.free > mine.free {
                    theirs
                } else {
                    mine
                };
                (*win, Pick::Ours)
            } else {
                let win = if theirs.beats(mine) { theirs } else { mine };
                (
                    *win,
                    Pick::Tie {
                        ours_owned: mine.peer == us,
                    },
                )
            }
        }
        Ordering::Less => {
            if mine.peer == us && theirs.peer == us {
                let version =
                    theirs
                        .version
                        .checked_add(1)
                        .ok_or(MergeError::VersionExhausted {
                            from,
                            token: to_ipv4(mine.token),
                            version: theirs.version,
                        })?;
                (Entry { version, ..*mine }, Pick::Ours)
            } else {
                (
                    *theirs,
                    Pick::Newer {
                        our_version: mine.version,
                    },
                )
            }
        }
    })
}

/// Size of entry `i`'s range in `entries` (over `ring`'s universe).
fn span_in(entries: &[Entry], i: usize, ring: &Ring) -> u64 {
    let Some(e) = entries.get(i) else { return 0 };
    let next = entries
        .get(i + 1)
        .or(entries.first())
        .map_or(e.token, |n| n.token);
    ring.distance(e.token, next)
}

/// The range(s) of entry `i` in `entries` over the universe `[start, end)`.
fn ranges_in(entries: &[Entry], i: usize, start: Address, end: Address) -> Vec<Range> {
    let Some(e) = entries.get(i) else {
        return Vec::new();
    };
    match entries.get(i + 1) {
        Some(next) if next.token > e.token => vec![Range::new(e.token, next.token)],
        _ => {
            // Last entry (or an invalid order): wraps to the first token.
            let first = entries.first().map_or(e.token, |f| f.token);
            let mut out = vec![Range::new(e.token, end)];
            if first > start {
                out.push(Range::new(start, first.min(e.token)));
            }
            out.retain(|r| !r.is_empty());
            out
        }
    }
}

/// Recursive halving of `[from, to)` between `peers` (u64 bounds so the universe end fits).
fn subdivide(from: u64, to: u64, peers: &[PeerName], out: &mut Vec<Entry>) {
    if from >= to || peers.is_empty() {
        return;
    }
    if peers.len() == 1 {
        out.push(Entry {
            // from < to <= u32::MAX, so both fit.
            token: from as Address,
            peer: peers[0],
            version: 0,
            free: clamp_u32(to - from),
        });
        return;
    }
    let mid = from + (to - from) / 2;
    let half = peers.len() / 2;
    subdivide(from, mid, &peers[..half], out);
    subdivide(mid, to, &peers[half..], out);
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Sorts and de-duplicates a peer list (a consensus value or `seed=` list) so that every peer
/// creates the same ring from it.
pub fn normalize_peers(peers: &[PeerName]) -> Vec<PeerName> {
    let mut out = peers.to_vec();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests;
