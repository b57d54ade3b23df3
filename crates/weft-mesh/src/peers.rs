//! The topology table: every peer we know of, its connections, and the rules for
//! merging what other peers tell us about them.
//!
//! Each peer is identified by its [`PeerName`] (a MAC-flavoured 48-bit name) and,
//! per process incarnation, by a random non-zero UID. A peer's *version* counts
//! changes to its own entry: it is bumped by the owner on every connection added,
//! deleted or established and on every short-ID change, and only ever by the owner
//! (with one exception, below). Entries travel in topology gossip; a receiver keeps
//! the "better" of what it has and what it is told ([`Peers::apply_update`]):
//!
//! - an update about **ourself** is ignored, unless it carries a different UID:
//!   then it describes an older incarnation of us, and our version jumps to
//!   `incoming + 1` so our own entry supersedes it everywhere
//!   ([`PeerChanges::local_peer_modified`] tells the caller to re-broadcast);
//! - an update about another peer is ignored when its version is lower, or equal
//!   with a lower UID, or equal with the same UID and it does not bring a short ID
//!   we lacked; otherwise it replaces version, UID, nickname, connections and
//!   short ID;
//! - names mentioned only as the remote end of a connection become *placeholders*
//!   (UID 0, version 0) until their own entry arrives.
//!
//! After every update, peers that cannot be reached from us over *any*
//! connection (each peer's own connection list is followed, ignoring the
//! established flag) and that no local connection references (their *local ref
//! count* is zero) are garbage collected. This keeps departed peers and stale
//! placeholders from circulating forever.
//!
//! **Short IDs** (12 bits, used for the fastdp VXLAN VNI) are chosen at random, so
//! they can collide. The peer with the lowest name keeps a contested ID; when the
//! local peer loses it picks a new one (ten random tries, then a uniform pick among
//! the free IDs), bumps its version and reports [`PeerChanges::local_peer_modified`]
//! so the caller re-broadcasts. Any change to which peer owns which short ID sets
//! [`PeerChanges::short_ids_invalidated`] (fastdp must flush its flows).
//!
//! Everything here is deterministic given the injected random number generator.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::{Rng, RngCore};
use weft_wire::{PeerName, ShortId};

use crate::routes::Graph;
use crate::topology::{assemble_update, EncodedEntry, TopologyEncodeError};

/// A peer's per-incarnation UID (`PeerUID`); 0 marks a placeholder.
pub type PeerUid = u64;

/// One connection in a peer's topology entry, as gossiped (`connectionSummary`
/// without the name, which is the key of [`Peer::connections`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnSummary {
    /// The remote TCP address as the owning peer sees it (`ip:port`). For inbound
    /// connections the port is the remote's ephemeral port.
    pub remote_tcp_addr: String,
    /// Whether the owning peer dialled the connection.
    pub outbound: bool,
    /// Whether the data-plane overlay of the connection is established.
    pub established: bool,
}

/// A peer as the topology table knows it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's name.
    pub name: PeerName,
    /// Human-readable nickname (the node name on Kubernetes).
    pub nickname: String,
    /// Per-incarnation UID; 0 for a placeholder.
    pub uid: PeerUid,
    /// Version of this entry, bumped by the owner on every change.
    pub version: u64,
    /// The short ID, meaningful only when `has_short_id`.
    pub short_id: ShortId,
    /// Whether the peer has announced a short ID.
    pub has_short_id: bool,
    /// The peer's connections, by remote peer name.
    pub connections: BTreeMap<PeerName, ConnSummary>,
    local_ref_count: u32,
    /// This entry's wire encoding, made on first use and dropped on change.
    encoded: OnceCell<Arc<EncodedEntry>>,
}

impl PartialEq for Peer {
    fn eq(&self, o: &Peer) -> bool {
        self.name == o.name
            && self.nickname == o.nickname
            && self.uid == o.uid
            && self.version == o.version
            && self.short_id == o.short_id
            && self.has_short_id == o.has_short_id
            && self.connections == o.connections
            && self.local_ref_count == o.local_ref_count
    }
}

impl Eq for Peer {}

impl Peer {
    /// A placeholder for a peer known only by name (UID 0, version 0).
    pub fn placeholder(name: PeerName) -> Peer {
        Peer {
            name,
            nickname: String::new(),
            uid: 0,
            version: 0,
            short_id: ShortId::default(),
            has_short_id: false,
            connections: BTreeMap::new(),
            local_ref_count: 0,
            encoded: OnceCell::new(),
        }
    }

    /// Whether this entry is a placeholder (UID 0).
    pub fn is_placeholder(&self) -> bool {
        self.uid == 0
    }

    /// How many local connections reference this peer.
    pub fn local_ref_count(&self) -> u32 {
        self.local_ref_count
    }

    /// This entry as an update record (what topology gossip carries).
    pub fn to_update(&self) -> PeerUpdate {
        PeerUpdate {
            name: self.name,
            nickname: self.nickname.clone(),
            uid: self.uid,
            version: self.version,
            short_id: self.short_id,
            has_short_id: self.has_short_id,
            connections: self
                .connections
                .iter()
                .map(|(n, c)| (*n, c.clone()))
                .collect(),
        }
    }
}

/// One peer's entry as carried by a topology update: a `peerSummary` followed by
/// its `[]connectionSummary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    /// The peer's name (`NameByte`).
    pub name: PeerName,
    /// `NickName`.
    pub nickname: String,
    /// `UID`.
    pub uid: PeerUid,
    /// `Version`.
    pub version: u64,
    /// `ShortID`.
    pub short_id: ShortId,
    /// `HasShortID`.
    pub has_short_id: bool,
    /// The connections, in wire order; a later duplicate name overrides an earlier one.
    pub connections: Vec<(PeerName, ConnSummary)>,
}

/// Side effects of a table operation the caller must act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerChanges {
    /// Peers removed by garbage collection (their `OnGC` work is due).
    pub removed: Vec<Peer>,
    /// The short-ID → peer mapping changed: fastdp flows must be flushed.
    pub short_ids_invalidated: bool,
    /// The table changed the local peer's entry by itself (version pushed past an
    /// older incarnation, or short ID reassigned): the local peer must be gossiped.
    pub local_peer_modified: bool,
}

/// The outcome of [`Peers::apply_update`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppliedUpdate {
    /// Every peer named by the update (what `OnGossipBroadcast` relays).
    pub received: BTreeSet<PeerName>,
    /// Peers that were new or improved and survived garbage collection (the
    /// delta `OnGossip` relays).
    pub improved: BTreeSet<PeerName>,
}

/// Owners of one short ID: the primary (lowest name) and the others.
#[derive(Debug, Clone)]
struct ShortIdEntry {
    peer: PeerName,
    others: Vec<PeerName>,
}

/// Identity of the local peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIdentity {
    /// Our name.
    pub name: PeerName,
    /// Our nickname.
    pub nickname: String,
    /// Our UID for this incarnation (must not be 0).
    pub uid: PeerUid,
    /// Our initial short ID.
    pub short_id: ShortId,
}

/// The topology table (Weave's `Peers`), local peer included.
#[derive(Debug, Clone)]
pub struct Peers {
    ourself: PeerName,
    by_name: BTreeMap<PeerName, Peer>,
    by_short_id: BTreeMap<ShortId, ShortIdEntry>,
    /// The topology graph, built on demand and dropped on every change.
    graph: OnceCell<Arc<Graph>>,
}

/// Number of random short-ID picks before falling back to a uniform pick among
/// the free IDs.
const SHORT_ID_RANDOM_TRIES: usize = 10;
/// Number of distinct short IDs.
const SHORT_ID_COUNT: u16 = 1 << ShortId::BITS;

impl Peers {
    /// A table holding only the local peer (version 0, no connections).
    pub fn new(local: LocalIdentity) -> Peers {
        let mut by_name = BTreeMap::new();
        by_name.insert(
            local.name,
            Peer {
                name: local.name,
                nickname: local.nickname,
                uid: local.uid,
                version: 0,
                short_id: local.short_id,
                has_short_id: true,
                connections: BTreeMap::new(),
                local_ref_count: 0,
                encoded: OnceCell::new(),
            },
        );
        let mut by_short_id = BTreeMap::new();
        by_short_id.insert(
            local.short_id,
            ShortIdEntry {
                peer: local.name,
                others: Vec::new(),
            },
        );
        Peers {
            ourself: local.name,
            by_name,
            by_short_id,
            graph: OnceCell::new(),
        }
    }

    /// Our name.
    pub fn our_name(&self) -> PeerName {
        self.ourself
    }

    /// The local peer's entry.
    pub fn ourself(&self) -> &Peer {
        self.by_name
            .get(&self.ourself)
            .expect("the local peer is never removed from the table")
    }

    fn ourself_mut(&mut self) -> &mut Peer {
        self.graph.take();
        let p = self
            .by_name
            .get_mut(&self.ourself)
            .expect("the local peer is never removed from the table");
        p.encoded.take();
        p
    }

    /// The topology as an index-based graph (cached until the next change).
    pub(crate) fn graph(&self) -> Arc<Graph> {
        self.graph
            .get_or_init(|| Arc::new(Graph::build(self)))
            .clone()
    }

    /// The entry for `name`, placeholders included.
    pub fn get(&self, name: PeerName) -> Option<&Peer> {
        self.by_name.get(&name)
    }

    /// Whether `name` is in the table.
    pub fn contains(&self, name: PeerName) -> bool {
        self.by_name.contains_key(&name)
    }

    /// All peers, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.by_name.values()
    }

    /// All peer names, sorted.
    pub fn names(&self) -> BTreeSet<PeerName> {
        self.by_name.keys().copied().collect()
    }

    /// Number of peers (local peer and placeholders included).
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Never true: the local peer is always present.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The peer that owns `id` (the lowest-named claimant).
    pub fn short_id_owner(&self, id: ShortId) -> Option<PeerName> {
        self.by_short_id.get(&id).map(|e| e.peer)
    }

    /// Whether the local peer owns its short ID.
    pub fn local_owns_short_id(&self) -> bool {
        let me = self.ourself();
        self.short_id_owner(me.short_id) == Some(self.ourself)
    }

    // ----- local peer ---------------------------------------------------------

    /// Records a local connection to `remote` and bumps our version.
    pub fn add_local_connection(&mut self, remote: PeerName, summary: ConnSummary) {
        let me = self.ourself_mut();
        me.connections.insert(remote, summary);
        me.version += 1;
    }

    /// Removes our connection to `remote`, bumping our version; `false` if there
    /// was none.
    pub fn remove_local_connection(&mut self, remote: PeerName) -> bool {
        let me = self.ourself_mut();
        if me.connections.remove(&remote).is_some() {
            me.version += 1;
            true
        } else {
            false
        }
    }

    /// Marks our connection to `remote` established, bumping our version; `false`
    /// if there is no such connection or it already was.
    pub fn set_local_connection_established(&mut self, remote: PeerName) -> bool {
        let me = self.ourself_mut();
        match me.connections.get_mut(&remote) {
            Some(c) if !c.established => {
                c.established = true;
                me.version += 1;
                true
            }
            _ => false,
        }
    }

    /// Makes our version exceed `version` (Weave's `setVersionBeyond`).
    pub fn set_local_version_beyond(&mut self, version: u64) {
        let me = self.ourself_mut();
        if version >= me.version {
            me.version = version.saturating_add(1);
        }
    }

    // ----- references from local connections ----------------------------------

    /// Registers the remote of a new local connection (Weave's
    /// `fetchWithDefault`): an existing entry gets a reference and is returned
    /// unchanged (its UID may be stale — compare it with `uid` to detect a
    /// restarted peer); an unknown name is added with the handshake's details.
    /// Returns the UID the table held before (0 for a placeholder), or `None` if
    /// the peer was new.
    pub fn fetch_with_default(
        &mut self,
        name: PeerName,
        nickname: &str,
        uid: PeerUid,
        short_id: Option<ShortId>,
        rng: &mut dyn RngCore,
        changes: &mut PeerChanges,
    ) -> Option<PeerUid> {
        if let Some(p) = self.by_name.get_mut(&name) {
            p.local_ref_count += 1;
            return Some(p.uid);
        }
        let peer = Peer {
            name,
            nickname: nickname.to_string(),
            uid,
            version: 0,
            short_id: short_id.unwrap_or_default(),
            has_short_id: short_id.is_some(),
            connections: BTreeMap::new(),
            local_ref_count: 1,
            encoded: OnceCell::new(),
        };
        self.graph.take();
        self.by_name.insert(name, peer);
        self.add_by_short_id(name, rng, changes);
        None
    }

    /// Adds a reference to a known peer (Weave's `fetchAndAddRef`); returns its
    /// UID, or `None` (and adds nothing) if the name is unknown.
    pub fn fetch_and_add_ref(&mut self, name: PeerName) -> Option<PeerUid> {
        let p = self.by_name.get_mut(&name)?;
        p.local_ref_count += 1;
        Some(p.uid)
    }

    /// Drops a reference taken by [`fetch_with_default`](Self::fetch_with_default)
    /// or [`fetch_and_add_ref`](Self::fetch_and_add_ref). The peer is not
    /// collected here; call [`garbage_collect`](Self::garbage_collect).
    pub fn dereference(&mut self, name: PeerName) {
        if let Some(p) = self.by_name.get_mut(&name) {
            p.local_ref_count = p.local_ref_count.saturating_sub(1);
        }
    }

    // ----- gossip ---------------------------------------------------------------

    /// The update records for `names` (unknown names and placeholders skipped),
    /// sorted by name.
    pub fn updates_for<'a>(
        &self,
        names: impl IntoIterator<Item = &'a PeerName>,
    ) -> Vec<PeerUpdate> {
        let mut v: Vec<PeerUpdate> = names
            .into_iter()
            .filter_map(|n| self.by_name.get(n))
            .filter(|p| !p.is_placeholder())
            .map(Peer::to_update)
            .collect();
        v.sort_by_key(|u| u.name);
        v.dedup_by_key(|u| u.name);
        v
    }

    /// Encodes the entries of `names` (unknown names and placeholders skipped)
    /// as one topology update, sorted by name; `None` if there are none.
    /// Entries are encoded once and reused until they change.
    pub fn encode_update(
        &self,
        names: &BTreeSet<PeerName>,
    ) -> Result<Option<Vec<u8>>, TopologyEncodeError> {
        let mut parts = Vec::new();
        for p in names.iter().filter_map(|n| self.by_name.get(n)) {
            if p.is_placeholder() {
                continue;
            }
            let e = match p.encoded.get() {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(EncodedEntry::new(&p.to_update())?);
                    let _ = p.encoded.set(e.clone());
                    e
                }
            };
            parts.push(e);
        }
        if parts.is_empty() {
            return Ok(None);
        }
        Ok(Some(assemble_update(parts.iter().map(|e| &**e))))
    }

    /// Merges a decoded topology update into the table (Weave's `applyUpdate`),
    /// then garbage-collects. See the module docs for the rules.
    pub fn apply_update(
        &mut self,
        update: &[PeerUpdate],
        rng: &mut dyn RngCore,
        changes: &mut PeerChanges,
    ) -> AppliedUpdate {
        let (mut applied, changed) = self.merge_update(update, rng, changes);
        // Nothing changed, nothing to collect (the table is collected after
        // every change, so it holds no garbage already).
        if changed {
            let before = changes.removed.len();
            self.garbage_collect(rng, changes);
            for p in &changes.removed[before..] {
                applied.improved.remove(&p.name);
            }
        }
        applied
    }

    /// [`apply_update`](Self::apply_update) without the garbage collection; the
    /// second result says whether the table changed (a collection is then due
    /// before anything derived from the table is sent: collected peers are
    /// simply left out when encoding).
    pub fn merge_update(
        &mut self,
        update: &[PeerUpdate],
        rng: &mut dyn RngCore,
        changes: &mut PeerChanges,
    ) -> (AppliedUpdate, bool) {
        let received: BTreeSet<PeerName> = update.iter().map(|u| u.name).collect();

        // Entries for peers we did not know, inserted as received (the last
        // occurrence of a name wins), plus placeholders for unknown names that
        // appear only as connection targets.
        let mut fresh: BTreeMap<PeerName, usize> = BTreeMap::new();
        for (i, u) in update.iter().enumerate() {
            if !self.by_name.contains_key(&u.name) {
                fresh.insert(u.name, i);
            }
        }
        let mut placeholders = BTreeSet::new();
        for u in update {
            for (remote, _) in &u.connections {
                if !received.contains(remote) && !self.by_name.contains_key(remote) {
                    placeholders.insert(*remote);
                }
            }
        }
        for (&name, &i) in &fresh {
            let u = &update[i];
            let peer = Peer {
                name,
                nickname: u.nickname.clone(),
                uid: u.uid,
                version: u.version,
                short_id: u.short_id,
                has_short_id: u.has_short_id,
                connections: u.connections.iter().cloned().collect(),
                local_ref_count: 0,
                encoded: OnceCell::new(),
            };
            self.graph.take();
            self.by_name.insert(name, peer);
            self.add_by_short_id(name, rng, changes);
        }
        let added_placeholders = !placeholders.is_empty();
        for name in placeholders {
            self.graph.take();
            self.by_name.insert(name, Peer::placeholder(name));
        }

        let mut improved = BTreeSet::new();
        for (i, u) in update.iter().enumerate() {
            if u.name == self.ourself {
                if u.uid != self.ourself().uid {
                    self.set_local_version_beyond(u.version);
                    changes.local_peer_modified = true;
                }
                continue;
            }
            if fresh.get(&u.name) == Some(&i) {
                improved.insert(u.name);
                continue;
            }
            let Some(old) = self.by_name.get(&u.name) else {
                continue;
            };
            if !supersedes(u, old) {
                continue;
            }
            let short_id_changed = u.short_id != old.short_id || u.has_short_id != old.has_short_id;
            if short_id_changed {
                self.delete_by_short_id(u.name, changes);
            }
            self.graph.take();
            let p = self.by_name.get_mut(&u.name).expect("peer looked up above");
            p.encoded.take();
            p.version = u.version;
            p.uid = u.uid;
            p.nickname.clone_from(&u.nickname);
            p.connections = u.connections.iter().cloned().collect();
            if short_id_changed {
                p.short_id = u.short_id;
                p.has_short_id = u.has_short_id;
                self.add_by_short_id(u.name, rng, changes);
            }
            improved.insert(u.name);
        }

        let changed = !improved.is_empty() || added_placeholders;
        (AppliedUpdate { received, improved }, changed)
    }

    /// The set of peers reachable from us over all connections (each peer's own
    /// list, ignoring the established flag), ourself included.
    pub fn reachable(&self) -> BTreeSet<PeerName> {
        self.graph().reachable_from(self.ourself)
    }

    /// Removes peers unreachable from us that no local connection references
    /// (Weave's `garbageCollect`). If anything was removed and we do not own our
    /// short ID, tries again to pick a free one.
    pub fn garbage_collect(&mut self, rng: &mut dyn RngCore, changes: &mut PeerChanges) {
        let reached = self.reachable();
        let doomed: Vec<PeerName> = self
            .by_name
            .values()
            .filter(|p| p.local_ref_count == 0 && !reached.contains(&p.name))
            .map(|p| p.name)
            .collect();
        if doomed.is_empty() {
            return;
        }
        self.graph.take();
        for name in doomed {
            self.delete_by_short_id(name, changes);
            if let Some(p) = self.by_name.remove(&name) {
                changes.removed.push(p);
            }
        }
        if !self.local_owns_short_id() {
            self.reassign_local_short_id(rng, changes);
        }
    }

    // ----- short IDs ------------------------------------------------------------

    fn add_by_short_id(&mut self, name: PeerName, rng: &mut dyn RngCore, ch: &mut PeerChanges) {
        let Some(p) = self.by_name.get(&name) else {
            return;
        };
        if !p.has_short_id {
            return;
        }
        let id = p.short_id;
        let mut local_lost = false;
        match self.by_short_id.get_mut(&id) {
            None => {
                self.by_short_id.insert(
                    id,
                    ShortIdEntry {
                        peer: name,
                        others: Vec::new(),
                    },
                );
                ch.short_ids_invalidated = true;
            }
            Some(e) if name < e.peer => {
                local_lost = e.peer == self.ourself;
                e.others.push(e.peer);
                e.peer = name;
                ch.short_ids_invalidated = true;
            }
            Some(e) => e.others.push(name),
        }
        if local_lost {
            self.reassign_local_short_id(rng, ch);
        }
    }

    fn delete_by_short_id(&mut self, name: PeerName, ch: &mut PeerChanges) {
        let Some(p) = self.by_name.get(&name) else {
            return;
        };
        if !p.has_short_id {
            return;
        }
        let id = p.short_id;
        let Some(e) = self.by_short_id.get_mut(&id) else {
            return;
        };
        if e.peer == name {
            match e.others.iter().enumerate().min_by_key(|(_, n)| **n) {
                None => {
                    self.by_short_id.remove(&id);
                }
                Some((i, _)) => {
                    e.peer = e.others.swap_remove(i);
                }
            }
            ch.short_ids_invalidated = true;
        } else if let Some(i) = e.others.iter().position(|n| *n == name) {
            e.others.swap_remove(i);
        }
    }

    /// Picks a short ID nobody owns: ten random tries, then a uniform pick among
    /// the free IDs. `None` if all 4096 are taken.
    pub fn choose_short_id(&self, rng: &mut dyn RngCore) -> Option<ShortId> {
        let free = |id: u16| {
            let id = ShortId::new(id).expect("below 4096");
            (!self.by_short_id.contains_key(&id)).then_some(id)
        };
        for _ in 0..SHORT_ID_RANDOM_TRIES {
            if let Some(id) = free(rng.random_range(0..SHORT_ID_COUNT)) {
                return Some(id);
            }
        }
        let available = usize::from(SHORT_ID_COUNT) - self.by_short_id.len();
        if available == 0 {
            return None;
        }
        let n = rng.random_range(0..available);
        (0..SHORT_ID_COUNT).filter_map(free).nth(n)
    }

    fn reassign_local_short_id(&mut self, rng: &mut dyn RngCore, ch: &mut PeerChanges) {
        if let Some(id) = self.choose_short_id(rng) {
            self.set_local_short_id(id, rng, ch);
        }
        // Otherwise every ID is taken; garbage collection retries later.
    }

    /// Gives the local peer a new short ID, bumping its version.
    pub fn set_local_short_id(&mut self, id: ShortId, rng: &mut dyn RngCore, ch: &mut PeerChanges) {
        let me = self.ourself;
        self.delete_by_short_id(me, ch);
        let p = self.ourself_mut();
        p.short_id = id;
        p.has_short_id = true;
        p.version += 1;
        ch.local_peer_modified = true;
        self.add_by_short_id(me, rng, ch);
    }

    /// Checks the table's internal invariants (for tests and debugging): the
    /// short-ID index matches the entries, each primary is the lowest claimant,
    /// and the local peer is present.
    pub fn check_invariants(&self) -> Result<(), String> {
        if !self.by_name.contains_key(&self.ourself) {
            return Err("local peer missing".into());
        }
        let mut expected: BTreeMap<ShortId, Vec<PeerName>> = BTreeMap::new();
        for p in self.by_name.values().filter(|p| p.has_short_id) {
            expected.entry(p.short_id).or_default().push(p.name);
        }
        if expected.len() != self.by_short_id.len() {
            return Err(format!(
                "short-ID index has {} entries, expected {}",
                self.by_short_id.len(),
                expected.len()
            ));
        }
        for (id, names) in expected {
            let e = self
                .by_short_id
                .get(&id)
                .ok_or_else(|| format!("short ID {id} not indexed"))?;
            let mut got: Vec<PeerName> = e.others.clone();
            got.push(e.peer);
            got.sort();
            if got != names {
                return Err(format!("short ID {id}: index {got:?}, peers {names:?}"));
            }
            if Some(&e.peer) != names.iter().min() {
                return Err(format!("short ID {id}: primary is not the lowest name"));
            }
        }
        Ok(())
    }
}

/// Whether update `u` replaces entry `old` (Weave's merge rule, inverted).
fn supersedes(u: &PeerUpdate, old: &Peer) -> bool {
    if u.version != old.version {
        return u.version > old.version;
    }
    if u.uid != old.uid {
        return u.uid > old.uid;
    }
    u.has_short_id && !old.has_short_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn pn(v: u64) -> PeerName {
        PeerName::new(v).unwrap()
    }

    fn sid(v: u16) -> ShortId {
        ShortId::new(v).unwrap()
    }

    fn conn(est: bool) -> ConnSummary {
        ConnSummary {
            remote_tcp_addr: "10.0.0.1:6783".into(),
            outbound: true,
            established: est,
        }
    }

    fn upd(name: u64, uid: u64, version: u64, conns: &[u64]) -> PeerUpdate {
        PeerUpdate {
            name: pn(name),
            nickname: format!("n{name}"),
            uid,
            version,
            short_id: sid((name % 4096) as u16),
            has_short_id: true,
            connections: conns.iter().map(|c| (pn(*c), conn(true))).collect(),
        }
    }

    /// Us (1) connected to 2, as after a handshake.
    fn table() -> (Peers, StdRng) {
        let mut rng = StdRng::seed_from_u64(1);
        let mut p = Peers::new(LocalIdentity {
            name: pn(1),
            nickname: "me".into(),
            uid: 100,
            short_id: sid(1),
        });
        let mut ch = PeerChanges::default();
        assert_eq!(
            p.fetch_with_default(pn(2), "n2", 2, Some(sid(2)), &mut rng, &mut ch),
            None
        );
        p.add_local_connection(pn(2), conn(true));
        (p, rng)
    }

    fn apply(p: &mut Peers, rng: &mut StdRng, u: &[PeerUpdate]) -> (AppliedUpdate, PeerChanges) {
        let mut ch = PeerChanges::default();
        let a = p.apply_update(u, rng, &mut ch);
        p.check_invariants().unwrap();
        (a, ch)
    }

    #[test]
    fn version_and_uid_rules() {
        let (mut p, mut rng) = table();
        let (a, _) = apply(&mut p, &mut rng, &[upd(2, 2, 5, &[1])]);
        assert_eq!(a.improved, [pn(2)].into());
        assert_eq!(p.get(pn(2)).unwrap().version, 5);
        // Older version: ignored.
        let (a, _) = apply(&mut p, &mut rng, &[upd(2, 2, 4, &[])]);
        assert!(a.improved.is_empty());
        assert_eq!(a.received, [pn(2)].into());
        assert_eq!(p.get(pn(2)).unwrap().connections.len(), 1);
        // Same version, lower UID: ignored; higher UID: replaces.
        let (a, _) = apply(&mut p, &mut rng, &[upd(2, 1, 5, &[])]);
        assert!(a.improved.is_empty());
        let (a, _) = apply(&mut p, &mut rng, &[upd(2, 3, 5, &[1])]);
        assert_eq!(a.improved, [pn(2)].into());
        assert_eq!(p.get(pn(2)).unwrap().uid, 3);
        // Same version and UID: only gaining a short ID counts.
        let mut same = upd(2, 3, 5, &[1]);
        same.nickname = "changed".into();
        let (a, _) = apply(&mut p, &mut rng, std::slice::from_ref(&same));
        assert!(a.improved.is_empty());
        assert_eq!(p.get(pn(2)).unwrap().nickname, "n2");
        // Newer version replaces everything, short ID included.
        let mut newer = upd(2, 3, 6, &[1]);
        newer.has_short_id = false;
        newer.nickname = "two".into();
        apply(&mut p, &mut rng, &[newer]);
        let e = p.get(pn(2)).unwrap();
        assert_eq!(
            (e.version, e.nickname.as_str(), e.has_short_id),
            (6, "two", false)
        );
        assert_eq!(p.short_id_owner(sid(2)), None);
        let mut regain = upd(2, 3, 6, &[1]);
        regain.nickname = "two".into();
        let (a, ch) = apply(&mut p, &mut rng, &[regain]);
        assert_eq!(
            a.improved,
            [pn(2)].into(),
            "gaining a short ID at equal version"
        );
        assert!(ch.short_ids_invalidated);
        assert_eq!(p.short_id_owner(sid(2)), Some(pn(2)));
    }

    #[test]
    fn updates_about_ourself() {
        let (mut p, mut rng) = table();
        let v = p.ourself().version;
        let (a, ch) = apply(&mut p, &mut rng, &[upd(1, 100, v + 50, &[])]);
        assert!(a.improved.is_empty());
        assert!(!ch.local_peer_modified, "same UID: ignored");
        assert_eq!(p.ourself().version, v);
        assert_eq!(p.ourself().connections.len(), 1);
        // An older incarnation of us (different UID) at a higher version.
        let (a, ch) = apply(&mut p, &mut rng, &[upd(1, 99, v + 50, &[])]);
        assert!(a.improved.is_empty());
        assert!(ch.local_peer_modified);
        assert_eq!(p.ourself().version, v + 51);
        assert_eq!(p.ourself().uid, 100);
        assert_eq!(p.ourself().connections.len(), 1, "our own data is kept");
        // Already beyond: the version stays.
        apply(&mut p, &mut rng, &[upd(1, 99, 3, &[])]);
        assert_eq!(p.ourself().version, v + 51);
    }

    #[test]
    fn placeholders_and_garbage_collection() {
        let (mut p, mut rng) = table();
        // 2 is connected to 3, which we only know by name; 4 is in the update.
        let (a, ch) = apply(
            &mut p,
            &mut rng,
            &[upd(2, 2, 1, &[1, 3, 4]), upd(4, 4, 1, &[2])],
        );
        assert_eq!(a.improved, [pn(2), pn(4)].into());
        assert!(ch.removed.is_empty());
        let ph = p.get(pn(3)).unwrap();
        assert!(ph.is_placeholder());
        assert_eq!((ph.uid, ph.version, ph.has_short_id), (0, 0, false));
        assert!(!p.get(pn(4)).unwrap().is_placeholder());
        assert_eq!(p.len(), 4);
        // Placeholders are not gossiped.
        assert_eq!(p.updates_for(&p.names()).len(), 3);
        // 2 drops its connections to 3 and 4: both become unreachable and go.
        let (a, ch) = apply(&mut p, &mut rng, &[upd(2, 2, 2, &[1])]);
        assert_eq!(a.improved, [pn(2)].into());
        let removed: BTreeSet<PeerName> = ch.removed.iter().map(|p| p.name).collect();
        assert_eq!(removed, [pn(3), pn(4)].into());
        assert!(ch.short_ids_invalidated, "4's short ID was freed");
        assert_eq!(p.names(), [pn(1), pn(2)].into());
        // An update naming only unreachable peers is collected at once and
        // reported as no improvement.
        let (a, ch) = apply(&mut p, &mut rng, &[upd(7, 7, 1, &[8])]);
        assert!(a.improved.is_empty());
        assert_eq!(ch.removed.len(), 2);
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn local_references_protect_from_collection() {
        let (mut p, mut rng) = table();
        // We lose the topology link to 2 but still hold a connection reference.
        assert!(p.remove_local_connection(pn(2)));
        let mut ch = PeerChanges::default();
        p.garbage_collect(&mut rng, &mut ch);
        assert!(ch.removed.is_empty());
        assert_eq!(p.get(pn(2)).unwrap().local_ref_count(), 1);
        p.dereference(pn(2));
        p.garbage_collect(&mut rng, &mut ch);
        assert_eq!(ch.removed.len(), 1);
        assert!(p.get(pn(2)).is_none());
        // fetch_and_add_ref only works for known names.
        assert_eq!(p.fetch_and_add_ref(pn(2)), None);
        assert_eq!(p.fetch_and_add_ref(pn(1)), Some(100));
    }

    #[test]
    fn fetch_with_default_reports_restarts() {
        let (mut p, mut rng) = table();
        let mut ch = PeerChanges::default();
        // Known peer: the previous UID is returned and the entry is unchanged.
        assert_eq!(
            p.fetch_with_default(pn(2), "x", 77, None, &mut rng, &mut ch),
            Some(2)
        );
        assert_eq!(p.get(pn(2)).unwrap().uid, 2);
        assert_eq!(p.get(pn(2)).unwrap().local_ref_count(), 2);
    }

    #[test]
    fn local_changes_bump_the_version() {
        let (mut p, _) = table();
        let v = p.ourself().version;
        assert!(
            p.set_local_connection_established(pn(2))
                || p.ourself().connections[&pn(2)].established
        );
        p.add_local_connection(pn(3), conn(false));
        assert_eq!(p.ourself().version, v + 1);
        assert!(p.set_local_connection_established(pn(3)));
        assert!(
            !p.set_local_connection_established(pn(3)),
            "already established"
        );
        assert_eq!(p.ourself().version, v + 2);
        assert!(p.remove_local_connection(pn(3)));
        assert!(!p.remove_local_connection(pn(3)));
        assert_eq!(p.ourself().version, v + 3);
    }

    #[test]
    fn short_id_collision_lowest_name_keeps_it() {
        let (mut p, mut rng) = table();
        // Peer 5 claims short ID 9; then peer 3 (lower name) claims it too.
        let mut five = upd(5, 5, 1, &[1]);
        five.short_id = sid(9);
        let mut two = upd(2, 2, 1, &[1, 3, 5]);
        two.short_id = sid(2);
        apply(&mut p, &mut rng, &[two, five]);
        assert_eq!(p.short_id_owner(sid(9)), Some(pn(5)));
        let mut three = upd(3, 3, 1, &[2]);
        three.short_id = sid(9);
        let (_, ch) = apply(&mut p, &mut rng, &[three]);
        assert!(ch.short_ids_invalidated);
        assert_eq!(p.short_id_owner(sid(9)), Some(pn(3)));
        // When 3 moves away, 5 gets the ID back.
        let mut three = upd(3, 3, 2, &[2]);
        three.short_id = sid(10);
        apply(&mut p, &mut rng, &[three]);
        assert_eq!(p.short_id_owner(sid(9)), Some(pn(5)));
    }

    #[test]
    fn local_peer_losing_its_short_id_picks_another() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut p = Peers::new(LocalIdentity {
            name: pn(10),
            nickname: "me".into(),
            uid: 1,
            short_id: sid(77),
        });
        p.add_local_connection(pn(2), conn(true));
        let v = p.ourself().version;
        let mut two = upd(2, 2, 1, &[10]);
        two.short_id = sid(77);
        let (_, ch) = apply(&mut p, &mut rng, &[two]);
        assert!(ch.local_peer_modified);
        assert!(ch.short_ids_invalidated);
        assert_eq!(p.short_id_owner(sid(77)), Some(pn(2)));
        assert_ne!(p.ourself().short_id, sid(77));
        assert!(p.local_owns_short_id());
        assert_eq!(p.ourself().version, v + 1);
        // A higher name claiming our new ID does not dislodge us.
        let mine = p.ourself().short_id;
        let mut three = upd(30, 30, 1, &[10]);
        three.short_id = mine;
        let mut two = upd(2, 2, 2, &[10, 30]);
        two.short_id = sid(77);
        let (_, ch) = apply(&mut p, &mut rng, &[two, three]);
        assert!(!ch.local_peer_modified);
        assert_eq!(p.ourself().short_id, mine);
    }

    #[test]
    fn choose_short_id_falls_back_to_a_free_one() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut p = Peers::new(LocalIdentity {
            name: pn(1),
            nickname: "me".into(),
            uid: 1,
            short_id: sid(0),
        });
        // Every ID but 1234 taken by peers reachable from us.
        let mut ups = Vec::new();
        let mut conns = Vec::new();
        for id in 1..4096u64 {
            if id == 1234 {
                continue;
            }
            let mut u = upd(1000 + id, id, 1, &[]);
            u.short_id = sid(id as u16);
            ups.push(u);
            conns.push(1000 + id);
        }
        for c in &conns {
            p.add_local_connection(pn(*c), conn(true));
        }
        let mut ch = PeerChanges::default();
        p.apply_update(&ups, &mut rng, &mut ch);
        assert_eq!(p.choose_short_id(&mut rng), Some(sid(1234)));
        // Now full.
        let mut last = upd(9999, 9, 1, &[]);
        last.short_id = sid(1234);
        p.add_local_connection(pn(9999), conn(true));
        p.apply_update(&[last], &mut rng, &mut ch);
        assert_eq!(p.choose_short_id(&mut rng), None);
        p.check_invariants().unwrap();
    }

    #[test]
    fn merging_is_idempotent() {
        let (mut p, mut rng) = table();
        let u = [upd(2, 2, 3, &[1, 3]), upd(3, 3, 1, &[2, 4])];
        let (a, _) = apply(&mut p, &mut rng, &u);
        assert!(!a.improved.is_empty());
        let snapshot: Vec<Peer> = p.iter().cloned().collect();
        let (a, ch) = apply(&mut p, &mut rng, &u);
        assert!(a.improved.is_empty());
        assert_eq!(ch, PeerChanges::default());
        assert_eq!(p.iter().cloned().collect::<Vec<_>>(), snapshot);
    }

    #[test]
    fn encoded_entries_follow_changes() {
        let (mut p, mut rng) = table();
        apply(&mut p, &mut rng, &[upd(2, 2, 1, &[1])]);
        let names = p.names();
        let a = p.encode_update(&names).unwrap().unwrap();
        assert_eq!(
            a,
            crate::topology::encode_update(&p.updates_for(&names)).unwrap()
        );
        p.add_local_connection(pn(3), conn(false));
        apply(&mut p, &mut rng, &[upd(2, 2, 2, &[1])]);
        let b = p.encode_update(&names).unwrap().unwrap();
        assert_ne!(a, b);
        assert_eq!(
            b,
            crate::topology::encode_update(&p.updates_for(&names)).unwrap()
        );
        assert_eq!(p.encode_update(&[pn(99)].into()).unwrap(), None);
    }
}
