//! Durable IPAM state in one redb file (Weave's `<db-prefix>data.db`, §5.7).
//!
//! Layout:
//!
//! | Table            | Key               | Value                                               |
//! |------------------|-------------------|-----------------------------------------------------|
//! | `top`            | `version`         | schema version, raw bytes `[major, minor]`          |
//! | `top`            | `peername`        | this peer's name, UTF-8                             |
//! | `top`            | `ring`            | JSON [`RingRecord`] (the allocation range for now)  |
//! | `top`            | `ringState`       | the whole ring, gob `*ring.Ring` ([`crate::node`])  |
//! | `top`            | other keys        | free for other users ([`Store::put_top`])           |
//! | `ownedAddresses` | identifier        | JSON [`OwnedData`]                                  |
//!
//! Weave keeps the whole owned map under one `top` key; here each identifier is its own row, so
//! an allocation rewrites one small record instead of the whole map.
//!
//! Every write is one redb transaction committed with [`redb::Durability::Immediate`]: when a
//! write method returns `Ok`, the change survives a crash or `kill -9`.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::owned::OwnedData;

/// Result of [`Store`] operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Errors of the IPAM database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file is held by another process.
    #[error(
        "IPAM database {path} is already open in another process; \
         is another weft router running on this host?"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },

    /// The database file was written by a newer Weft.
    #[error(
        "IPAM database {path} has schema version {found}, newer than version {supported} \
         that this weft understands; run a newer weft, or remove the file to start with \
         empty IPAM state"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The version found (`major.minor`).
        found: String,
        /// The version this build writes.
        supported: String,
    },

    /// The database file is damaged or not an IPAM database.
    #[error(
        "IPAM database {path} is corrupt or not a weft database ({detail}); \
         move it away or remove it to start with empty IPAM state"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// The database failed (I/O error, full disk, ...).
    #[error("IPAM database {path}: {op} failed: {detail}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The underlying error.
        detail: String,
    },
}

/// The schema version this build writes: `[major, minor]`. A file with another major is refused.
pub const SCHEMA_VERSION: [u8; 2] = [1, 0];

const TOP: TableDefinition<&str, &[u8]> = TableDefinition::new("top");
const OWNED: TableDefinition<&str, &[u8]> = TableDefinition::new("ownedAddresses");

/// Key of the schema version in `top`.
pub const KEY_VERSION: &str = "version";
/// Key of the peer name in `top`.
pub const KEY_PEERNAME: &str = "peername";
/// Key of the ring in `top`.
pub const KEY_RING: &str = "ring";

/// Key of the whole ring in `top`: Weave's gob `*ring.Ring` encoding
/// ([`crate::gossip::encode_ring`]), written by the ring-aware [`crate::node::NodeIpam`].
pub const KEY_RING_STATE: &str = "ringState";

/// The ring as [`Store::save_batch`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct RingWrite<'a> {
    /// This peer's name (`peername`).
    pub peer_name: &'a str,
    /// The ring record (`ring`).
    pub record: &'a RingRecord,
    /// The whole ring, gob-encoded (`ringState`).
    pub state: &'a [u8],
}

/// What is persisted under `ring`. For now only the allocation range, so that changing
/// `--ipalloc-range` discards the old state; the ring issue extends this record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingRecord {
    /// The allocation range (`--ipalloc-range`).
    pub universe: Ipv4Net,
}

/// Everything [`Store::load`] reads back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistedState {
    /// The peer name, if one was written.
    pub peer_name: Option<String>,
    /// The ring record, if one was written.
    pub ring: Option<RingRecord>,
    /// Identifier → addresses.
    pub owned: BTreeMap<String, OwnedData>,
}

/// The IPAM database.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating it if missing, and checks its schema version.
    ///
    /// The whole file is integrity-checked on open, so a damaged file gives
    /// [`StoreError::Corrupt`] rather than a panic later.
    pub fn open(path: &Path) -> Result<Store> {
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let mut builder = Database::builder();
            builder
                .set_cache_size(4 * 1024 * 1024)
                .set_check_integrity_on_open(true);
            builder.create(path)
        }));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(map_err(path, "open", e)),
            Err(_) => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: "the storage engine failed while reading it".into(),
                })
            }
        };
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        store.check_version()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_version(&self) -> Result<()> {
        let found = self.get_top(KEY_VERSION)?;
        match found {
            None => self.write("write the schema version", |txn| {
                let mut top = txn.open_table(TOP)?;
                top.insert(KEY_VERSION, &SCHEMA_VERSION[..])?;
                Ok(())
            }),
            Some(v) if v.len() == 2 && v[0] == SCHEMA_VERSION[0] => Ok(()),
            Some(v) if v.len() == 2 && v[0] > SCHEMA_VERSION[0] => Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found: format!("{}.{}", v[0], v[1]),
                supported: format!("{}.{}", SCHEMA_VERSION[0], SCHEMA_VERSION[1]),
            }),
            Some(v) => Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "unsupported schema version bytes {v:?} (this weft writes {SCHEMA_VERSION:?})"
                ),
            }),
        }
    }

    /// Reads the peer name, the ring record and every owned record.
    pub fn load(&self) -> Result<PersistedState> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| map_err(&self.path, "read", e))?;
        let mut state = PersistedState::default();
        match txn.open_table(TOP) {
            Ok(top) => {
                let get = |key: &str| -> Result<Option<Vec<u8>>> {
                    top.get(key)
                        .map(|v| v.map(|g| g.value().to_vec()))
                        .map_err(|e| map_err(&self.path, "read", e))
                };
                if let Some(name) = get(KEY_PEERNAME)? {
                    state.peer_name =
                        Some(String::from_utf8(name).map_err(|_| StoreError::Corrupt {
                            path: self.path.clone(),
                            detail: "the peer name is not UTF-8".into(),
                        })?);
                }
                if let Some(ring) = get(KEY_RING)? {
                    state.ring =
                        Some(
                            serde_json::from_slice(&ring).map_err(|e| StoreError::Corrupt {
                                path: self.path.clone(),
                                detail: format!("unreadable ring record: {e}"),
                            })?,
                        );
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(map_err(&self.path, "read", e)),
        }
        match txn.open_table(OWNED) {
            Ok(owned) => {
                let iter = owned.iter().map_err(|e| map_err(&self.path, "read", e))?;
                for row in iter {
                    let (k, v) = row.map_err(|e| map_err(&self.path, "read", e))?;
                    let id = k.value().to_string();
                    let data: OwnedData =
                        serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                            path: self.path.clone(),
                            detail: format!("unreadable owned-address record for {id:?}: {e}"),
                        })?;
                    state.owned.insert(id, data);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(map_err(&self.path, "read", e)),
        }
        Ok(state)
    }

    /// Discards every owned record and writes the version, `peer_name` and `ring`, in one
    /// durable transaction. Other `top` keys are kept.
    pub fn reset(&self, peer_name: &str, ring: &RingRecord) -> Result<()> {
        let ring = to_json(ring);
        self.write("reset", |txn| {
            txn.delete_table(OWNED)?;
            txn.open_table(OWNED)?;
            let mut top = txn.open_table(TOP)?;
            top.insert(KEY_VERSION, &SCHEMA_VERSION[..])?;
            top.insert(KEY_PEERNAME, peer_name.as_bytes())?;
            top.insert(KEY_RING, ring.as_slice())?;
            Ok(())
        })
    }

    /// Writes `peer_name` and `ring` (Weave's `persistRing`), durably.
    pub fn save_ring(&self, peer_name: &str, ring: &RingRecord) -> Result<()> {
        let ring = to_json(ring);
        self.write("save the ring", |txn| {
            let mut top = txn.open_table(TOP)?;
            top.insert(KEY_PEERNAME, peer_name.as_bytes())?;
            top.insert(KEY_RING, ring.as_slice())?;
            Ok(())
        })
    }

    /// Writes the record of `id`, durably; an empty `data.cidrs` deletes it.
    pub fn save_owned(&self, id: &str, data: &OwnedData) -> Result<()> {
        let value = (!data.cidrs.is_empty()).then(|| to_json(data));
        self.write("save owned addresses", |txn| {
            let mut owned = txn.open_table(OWNED)?;
            match &value {
                Some(v) => {
                    owned.insert(id, v.as_slice())?;
                }
                None => {
                    owned.remove(id)?;
                }
            }
            Ok(())
        })
    }

    /// Writes, in one durable transaction, the ring (peer name, ring record and the whole ring
    /// under [`KEY_RING_STATE`]) when given, and the owned records (an empty record deletes
    /// its identifier). Nothing is written when the transaction fails.
    pub fn save_batch(
        &self,
        ring: Option<RingWrite<'_>>,
        owned: &[(&str, &OwnedData)],
    ) -> Result<()> {
        let owned: Vec<(&str, Option<Vec<u8>>)> = owned
            .iter()
            .map(|(id, d)| (*id, (!d.cidrs.is_empty()).then(|| to_json(*d))))
            .collect();
        let record = ring.map(|r| to_json(r.record));
        self.write("save IPAM state", |txn| {
            if let (Some(r), Some(record)) = (ring, &record) {
                let mut top = txn.open_table(TOP)?;
                top.insert(KEY_PEERNAME, r.peer_name.as_bytes())?;
                top.insert(KEY_RING, record.as_slice())?;
                top.insert(KEY_RING_STATE, r.state)?;
            }
            if !owned.is_empty() {
                let mut table = txn.open_table(OWNED)?;
                for (id, value) in &owned {
                    match value {
                        Some(v) => {
                            table.insert(*id, v.as_slice())?;
                        }
                        None => {
                            table.remove(*id)?;
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// Like [`Store::reset`] (every owned record discarded, version, peer name and ring record
    /// written), and also sets the whole ring under [`KEY_RING_STATE`], or deletes it when
    /// `state` is `None`, in the same durable transaction.
    pub fn reset_with_ring_state(
        &self,
        peer_name: &str,
        ring: &RingRecord,
        state: Option<&[u8]>,
    ) -> Result<()> {
        let ring = to_json(ring);
        self.write("reset", |txn| {
            txn.delete_table(OWNED)?;
            txn.open_table(OWNED)?;
            let mut top = txn.open_table(TOP)?;
            top.insert(KEY_VERSION, &SCHEMA_VERSION[..])?;
            top.insert(KEY_PEERNAME, peer_name.as_bytes())?;
            top.insert(KEY_RING, ring.as_slice())?;
            match state {
                Some(s) => {
                    top.insert(KEY_RING_STATE, s)?;
                }
                None => {
                    top.remove(KEY_RING_STATE)?;
                }
            }
            Ok(())
        })
    }

    /// Reads any `top` key (for example `directPeers` or `flag:peer-reclaim`).
    pub fn get_top(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| map_err(&self.path, "read", e))?;
        let top = match txn.open_table(TOP) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(map_err(&self.path, "read", e)),
        };
        let value = top.get(key).map_err(|e| map_err(&self.path, "read", e))?;
        Ok(value.map(|g| g.value().to_vec()))
    }

    /// Writes any `top` key durably (for example `directPeers` or `flag:peer-reclaim`).
    pub fn put_top(&self, key: &str, value: &[u8]) -> Result<()> {
        self.write("write", |txn| {
            txn.open_table(TOP)?.insert(key, value)?;
            Ok(())
        })
    }

    /// Runs `f` in one write transaction and commits it durably.
    fn write<F>(&self, op: &'static str, f: F) -> Result<()>
    where
        F: FnOnce(&WriteTransaction) -> std::result::Result<(), redb::Error>,
    {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| map_err(&self.path, op, e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| map_err(&self.path, op, e))?;
        f(&txn).map_err(|e| map_err(&self.path, op, e))?;
        txn.commit().map_err(|e| map_err(&self.path, op, e))
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings, bools and CIDRs always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Turns a redb error into ours, singling out the cases an operator can act on.
fn map_err(path: &Path, op: &'static str, e: impl Into<redb::Error>) -> StoreError {
    let path = path.to_path_buf();
    match e.into() {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            StoreError::Locked { path }
        }
        redb::Error::Corrupted(detail) => StoreError::Corrupt { path, detail },
        redb::Error::UpgradeRequired(v) => StoreError::Corrupt {
            path,
            detail: format!("written in storage file format {v}, which this weft cannot read"),
        },
        m @ redb::Error::TableTypeMismatch { .. } => StoreError::Corrupt {
            path,
            detail: m.to_string(),
        },
        // redb reports "not a redb database" (bad magic number) and short reads as I/O errors.
        redb::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            StoreError::Corrupt {
                path,
                detail: io.to_string(),
            }
        }
        other => StoreError::Db {
            path,
            op,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> RingRecord {
        RingRecord {
            universe: "10.32.0.0/12".parse().unwrap(),
        }
    }

    #[test]
    fn fresh_store_has_version_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weave-netdata.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.get_top(KEY_VERSION).unwrap(),
            Some(SCHEMA_VERSION.to_vec())
        );
        assert_eq!(store.load().unwrap(), PersistedState::default());
    }

    #[test]
    fn round_trip_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.db");
        {
            let store = Store::open(&path).unwrap();
            store.save_ring("aa:bb:cc:dd:ee:ff", &ring()).unwrap();
            let data = OwnedData {
                is_container: true,
                cidrs: vec!["10.32.0.1/12".parse().unwrap()],
            };
            store.save_owned("c1", &data).unwrap();
            store.save_owned("c2", &data).unwrap();
            store.save_owned("c2", &OwnedData::default()).unwrap();
            store.put_top("flag:peer-reclaim", b"ok").unwrap();
        }
        let store = Store::open(&path).unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.peer_name.as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        assert_eq!(state.ring, Some(ring()));
        assert_eq!(state.owned.keys().collect::<Vec<_>>(), ["c1"]);
        store.reset("11:22:33:44:55:66", &ring()).unwrap();
        let state = store.load().unwrap();
        assert!(state.owned.is_empty());
        assert_eq!(state.peer_name.as_deref(), Some("11:22:33:44:55:66"));
        assert_eq!(
            store.get_top("flag:peer-reclaim").unwrap(),
            Some(b"ok".to_vec())
        );
    }

    #[test]
    fn newer_major_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.db");
        Store::open(&path)
            .unwrap()
            .put_top(KEY_VERSION, &[2, 3])
            .unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::NewerSchema { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("schema version 2.3") && msg.contains("1.0"),
            "{msg}"
        );
        // A newer minor is fine.
        let dir2 = tempfile::tempdir().unwrap();
        let path2 = dir2.path().join("data.db");
        Store::open(&path2)
            .unwrap()
            .put_top(KEY_VERSION, &[1, 7])
            .unwrap();
        Store::open(&path2).unwrap();
    }

    #[test]
    fn second_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.db");
        let _first = Store::open(&path).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    }

    #[test]
    fn unreadable_records_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.db");
        let store = Store::open(&path).unwrap();
        store.put_top(KEY_RING, b"{not json").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Corrupt { .. })));
        store.put_top(KEY_RING, &to_json(&ring())).unwrap();
        store
            .write("test", |txn| {
                txn.open_table(OWNED)?.insert("c1", &b"[1,2"[..])?;
                Ok(())
            })
            .unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("\"c1\""), "{err}");
    }
}
