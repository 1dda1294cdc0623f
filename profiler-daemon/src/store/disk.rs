//! The on-disk profile store: closed windows in a redb database under `--data-dir`.
//!
//! redb gives ACID transactions with a crash-safe commit, checksummed pages and concurrent
//! readers, in pure Rust: each closed window is one transaction, so a `kill -9` loses at most
//! the window that was open. Windows refer to deduplicated frames, stacks and labels
//! ([`super::codec`]), and every window is also merged into its minute and hour rollups in the
//! same transaction, so that a range query reads at most a few dozen records ([`super::plan`]).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use prost::Message as _;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase as _, ReadableTable as _,
    ReadableTableMetadata as _, TableDefinition,
};
use thiserror::Error;
use tracing::{debug, info, warn};

use super::{
    codec::{self, Damaged, Decoder, Dictionary, LiveIds, Table, WindowRecord},
    lost::LostWindows,
    plan::{self, LEVELS_NS, Piece},
};
use crate::{
    aggregate::{MergedProfile, Mode, SampleKind, Tally, Window, window::PersistState},
    selector::Selector,
};

const WINDOWS: TableDefinition<i64, &[u8]> = TableDefinition::new("windows");
const ROLLUPS: TableDefinition<(u8, i64), &[u8]> = TableDefinition::new("rollups");
/// Encoded bytes past which a rollup is given up rather than merged with the next window: a
/// host whose stacks keep changing (a compiler's, a fuzzer's) gives an hour's rollup millions
/// of entries, and rewriting it at every window took seconds of the writer's time and held
/// it several times over. Queries read a given-up bucket from the level below (minute
/// rollups, or raw windows), which stays exact.
pub const MAX_ROLLUP_BYTES: usize = 4 << 20;
/// redb's page cache. Its default (1 GiB) would keep every page the daemon ever wrote in
/// memory, growing the daemon by the store's size; queries read the rest through the kernel's
/// page cache.
const CACHE_BYTES: usize = 16 << 20;
const FRAMES: TableDefinition<u64, &[u8]> = TableDefinition::new("frames");
const STACKS: TableDefinition<u64, &[u8]> = TableDefinition::new("stacks");
const LABELS: TableDefinition<u64, &[u8]> = TableDefinition::new("labels");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Per exporter, the start of the last window it delivered.
const EXPORTS: TableDefinition<&str, i64> = TableDefinition::new("exports");

/// The dictionaries are swept of what no stored record refers to any more (after retention
/// dropped the windows that did) once they hold twice as many entries as after the last sweep,
/// and at least this many. A sweep reads every stored record, so it runs about once per
/// doubling: with processes coming and going, the dictionaries stay within twice what the
/// kept windows need, in memory and on disk.
const SWEEP_MIN: usize = 10_000;
/// Version of the record layout; a store written by a newer layout is refused.
const SCHEMA_VERSION: u64 = 1;
/// The database file in the data directory.
pub const FILE_NAME: &str = "profiles.redb";

/// What the store keeps.
#[derive(Clone, Copy, Debug)]
pub struct DiskRetention {
    /// Windows that started longer ago than this are dropped.
    pub max_age: Duration,
    /// Once the records take more than this many bytes, the oldest hours are dropped.
    pub max_bytes: u64,
}

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source} (choose another with --data-dir)")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the store open.
    #[error(
        "the profile store {0} is in use by another process (another profilerd?); stop it or \
         choose another --data-dir"
    )]
    InUse(PathBuf),
    /// The file is damaged.
    #[error(
        "the profile store {path} is damaged ({reason}). Start profilerd with --repair to move \
         it aside (it is kept as {path}.corrupt-<time>) and start an empty store, or move it \
         away yourself"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file was written by a newer profilerd.
    #[error(
        "the profile store {path} has layout {found}; this profilerd reads up to {SCHEMA_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u64,
    },
    /// Any other database error.
    #[error("profile store {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<redb::Error>,
    },
}

/// Sizes and counters for `Status`.
#[derive(Clone, Debug, Default)]
pub struct StoreStatus {
    /// The database file.
    pub path: PathBuf,
    /// Bytes of stored records (the file is somewhat larger).
    pub bytes: u64,
    /// The file's size.
    pub file_bytes: u64,
    /// Windows stored.
    pub windows: u64,
    /// Windows dropped by retention since start.
    pub evicted: u64,
    /// Distinct frames, stacks and labels stored.
    pub dictionary: u64,
    /// Dictionary entries forgotten by sweeps since start.
    pub dictionary_swept: u64,
    /// Dictionary entries whose ids are remembered in memory (at most
    /// [`codec::DICTIONARY_CAPACITY`] per table).
    pub dictionary_cached: u64,
    /// Dictionary rows waiting to be written (writes failed since they were made).
    pub dictionary_pending: u64,
    /// Times the dictionary started over because too many rows were waiting
    /// ([`codec::MAX_PENDING_ROWS`]).
    pub dictionary_restarts: u64,
    /// End of the newest stored window.
    pub persisted_until_ns: i64,
    /// Windows that could not be stored since start (the writer was behind, or a write
    /// failed).
    pub unstored: u64,
}

/// The store. Shared by the writer thread and the query handlers.
#[derive(Debug)]
pub struct Store {
    /// The open database; `None` while it is being reopened after an I/O error.
    db: RwLock<Option<Arc<Database>>>,
    /// Set by an I/O error: redb refuses every later transaction on that handle, so the next
    /// write reopens the file first (which also runs redb's repair).
    reopen: AtomicBool,
    /// Held across a commit and the marking of its window as stored, and while a query takes
    /// its snapshot and picks the in-memory windows that are not stored: each window is then
    /// counted exactly once, from the store or from memory.
    visible: Mutex<()>,
    path: PathBuf,
    retention: DiskRetention,
    dict: Mutex<Dictionary>,
    bytes: AtomicU64,
    windows: AtomicU64,
    evicted: AtomicU64,
    persisted_until: AtomicI64,
    durable: std::sync::atomic::AtomicBool,
    /// Held by an append and a sweep from start to commit: ids handed out for a window must
    /// not be swept before it is written.
    writing: Mutex<()>,
    /// Dictionary rows stored (frames, stacks and label sets).
    rows: AtomicUsize,
    /// Dictionary rows at which the next sweep runs.
    sweep_at: AtomicUsize,
    /// Dictionary entries forgotten by sweeps since start.
    swept: AtomicU64,
    /// Rows that may wait to be written before the dictionary starts over.
    max_pending_rows: usize,
    /// Encoded bytes past which a rollup is given up (see [`MAX_ROLLUP_BYTES`]).
    max_rollup_bytes: usize,
    /// Times it did.
    restarts: AtomicU64,
    /// Windows that could not be stored.
    lost: LostWindows,
    /// Per exporter, the windows retention dropped before it delivered them.
    unexported: Mutex<HashMap<String, u64>>,
}

impl Store {
    /// Whether each append waits for the disk (the default). Bulk loads, such as the
    /// benchmarks' day of windows, can turn it off; a crash may then lose recent windows.
    pub fn set_durable(&self, durable: bool) {
        self.durable.store(durable, Relaxed);
    }

    /// Opens (or creates) the store in `dir`. With `repair`, a store that cannot be read is
    /// renamed aside and a new one is created.
    pub fn open(dir: &Path, retention: DiskRetention, repair: bool) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::Dir { path: dir.to_owned(), source })?;
        let path = dir.join(FILE_NAME);
        match Store::open_file(&path, retention) {
            Err(StoreError::Damaged { reason, .. }) if repair => {
                let aside = PathBuf::from(format!(
                    "{}.corrupt-{}",
                    path.display(),
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                ));
                std::fs::rename(&path, &aside)
                    .map_err(|source| StoreError::Dir { path: path.clone(), source })?;
                warn!(moved_to = %aside.display(), %reason, "the profile store was damaged; starting a new one");
                Store::open_file(&path, retention)
            }
            other => other,
        }
    }

    fn open_file(path: &Path, retention: DiskRetention) -> Result<Store, StoreError> {
        let db_err = |e: redb::Error| classify(path, e);
        let db = open_database(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.to_owned()),
            e => db_err(e.into()),
        })?;
        Store::with_database(db, path, retention)
    }

    /// A store on a database in `path` that goes through `backend`, for tests that inject
    /// I/O errors. Reopening after an error opens `path` directly.
    #[cfg(test)]
    fn open_with_backend(
        path: &Path,
        backend: impl redb::StorageBackend,
        retention: DiskRetention,
    ) -> Result<Store, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|e| classify(path, e.into()))?;
        Store::with_database(db, path, retention)
    }

    /// A store on `db`, whose file is `path` (for messages and for reopening).
    fn with_database(
        db: Database,
        path: &Path,
        retention: DiskRetention,
    ) -> Result<Store, StoreError> {
        let db_err = |e: redb::Error| classify(path, e);
        let store = Store {
            db: RwLock::new(Some(Arc::new(db))),
            reopen: AtomicBool::new(false),
            visible: Mutex::new(()),
            path: path.to_owned(),
            retention,
            dict: Mutex::new(Dictionary::default()),
            bytes: AtomicU64::new(0),
            windows: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            unexported: Mutex::default(),
            persisted_until: AtomicI64::new(0),
            durable: std::sync::atomic::AtomicBool::new(true),
            writing: Mutex::new(()),
            rows: AtomicUsize::new(0),
            sweep_at: AtomicUsize::new(SWEEP_MIN),
            swept: AtomicU64::new(0),
            max_pending_rows: codec::MAX_PENDING_ROWS,
            max_rollup_bytes: MAX_ROLLUP_BYTES,
            restarts: AtomicU64::new(0),
            lost: LostWindows::default(),
        };
        store.load().map_err(|e| match e {
            LoadError::Db(e) => db_err(e),
            LoadError::Damaged(d) => StoreError::Damaged { path: path.to_owned(), reason: d.0 },
            LoadError::Version(found) => StoreError::Version { path: path.to_owned(), found },
        })?;
        info!(
            path = %path.display(),
            windows = store.windows.load(Relaxed),
            bytes = store.bytes.load(Relaxed),
            "profile store opened"
        );
        Ok(store)
    }

    /// Creates the tables, checks the layout version and loads the dictionaries.
    fn load(&self) -> Result<(), LoadError> {
        let txn = self.database()?.begin_write().map_err(redb::Error::from)?;
        {
            let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
            let version = meta.get("schema").map_err(redb::Error::from)?.map(|v| v.value());
            match version {
                Some(v) if v > SCHEMA_VERSION => return Err(LoadError::Version(v)),
                Some(_) => {}
                None => {
                    meta.insert("schema", SCHEMA_VERSION).map_err(redb::Error::from)?;
                }
            }
            txn.open_table(ROLLUPS).map_err(redb::Error::from)?;
            // The dictionary rows are checked, not kept: queries read them from the file.
            let mut dict = self.dict.lock().unwrap_or_else(PoisonError::into_inner);
            let (mut bytes, mut rows) = (0u64, 0usize);
            for (def, table) in
                [(FRAMES, Table::Frames), (STACKS, Table::Stacks), (LABELS, Table::Labels)]
            {
                let t = txn.open_table(def).map_err(redb::Error::from)?;
                for row in t.iter().map_err(redb::Error::from)? {
                    let (k, v) = row.map_err(redb::Error::from)?;
                    let (id, value) = (k.value(), v.value());
                    bytes += value.len() as u64 + 8;
                    rows += 1;
                    codec::check_row(table, value)
                        .map_err(|e| Damaged(format!("{} (id {id})", e.0)))?;
                    dict.ids_above(id);
                }
            }
            self.rows.store(rows, Relaxed);
            let windows = txn.open_table(WINDOWS).map_err(redb::Error::from)?;
            for row in windows.iter().map_err(redb::Error::from)? {
                let (_, v) = row.map_err(redb::Error::from)?;
                bytes += v.value().len() as u64 + 8;
            }
            self.windows.store(windows.len().map_err(redb::Error::from)?, Relaxed);
            if let Some(last) = windows.last().map_err(redb::Error::from)? {
                let record = WindowRecord::decode(last.1.value())
                    .map_err(|e| Damaged(format!("window {}: {e}", last.0.value())))?;
                self.persisted_until.store(record.end_ns, Relaxed);
            }
            let rollups = txn.open_table(ROLLUPS).map_err(redb::Error::from)?;
            for row in rollups.iter().map_err(redb::Error::from)? {
                let (_, v) = row.map_err(redb::Error::from)?;
                bytes += v.value().len() as u64 + 9;
            }
            self.bytes.store(bytes, Relaxed);
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Replaces the dictionary's memory with one that remembers `capacity` entries per table
    /// (tests: the default is large).
    #[cfg(test)]
    fn remember_at_most(&self, capacity: usize) {
        *self.dict.lock().unwrap_or_else(PoisonError::into_inner) = {
            let mut d = Dictionary::with_capacity(capacity);
            d.ids_above(u64::MAX / 2);
            d
        };
    }

    /// Windows that could not be stored.
    pub fn lost(&self) -> &LostWindows {
        &self.lost
    }

    /// End of the newest stored window.
    pub fn persisted_until(&self) -> i64 {
        self.persisted_until.load(Relaxed)
    }

    /// The open database.
    fn database(&self) -> Result<Arc<Database>, redb::Error> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(redb::Error::PreviousIo)
    }

    /// Closes and reopens the file after an I/O error. Fails while a query still holds the
    /// old handle (the file lock is per handle); the next write tries again.
    fn reopen_database(&self) -> Result<(), redb::Error> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        drop(slot.take());
        let db = open_database(&self.path)?;
        *slot = Some(Arc::new(db));
        self.reopen.store(false, Relaxed);
        info!(path = %self.path.display(), "profile store reopened after a write error");
        Ok(())
    }

    /// Stores a closed window, merges it into its rollups and applies retention as of `now_ns`,
    /// in one transaction, and marks the window stored. A window whose start is already stored
    /// (the daemon restarted inside that window) is merged into the stored record, and only
    /// the new samples go into the rollups. Nothing in memory changes unless the transaction
    /// commits: a failed write leaves the dictionaries, their pending rows and the counters as
    /// they were, so the next window writes what this one could not.
    pub fn append(&self, window: &Window, now_ns: i64) -> Result<(), StoreError> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if self.reopen.load(Relaxed) {
            self.reopen_database().map_err(|e| classify(&self.path, e))?;
        }
        let result = self.append_inner(window, now_ns);
        if let Err(e) = &result
            && matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
        {
            self.reopen.store(true, Relaxed);
        }
        result.map_err(|e| classify(&self.path, e))?;
        self.persisted_until.fetch_max(window.end_ns, Relaxed);
        Ok(())
    }

    fn append_inner(&self, window: &Window, now_ns: i64) -> Result<(), redb::Error> {
        let (record, pending) = {
            let mut dict = self.dict.lock().unwrap_or_else(PoisonError::into_inner);
            if dict.pending.len() > self.max_pending_rows {
                let dropped = dict.start_over();
                self.restarts.fetch_add(1, Relaxed);
                warn!(
                    path = %self.path.display(),
                    rows = dropped,
                    "writes have failed for long: the dictionary rows waiting for them are \
                     dropped, and later windows write theirs again"
                );
            }
            let mut record = WindowRecord {
                start_ns: window.start_ns,
                end_ns: window.end_ns,
                samples: window.samples,
                drops: window.drops.0.to_vec(),
                entries: Vec::new(),
                calls: Vec::with_capacity(window.calls.len() * 3),
                windows: 1,
                tallies: Vec::with_capacity(window.entries.len() * 5),
            };
            for e in &window.entries {
                record.tallies.extend([
                    e.kind.code(),
                    dict.labels_id(&e.labels),
                    dict.stack_id(&e.stack),
                    e.count,
                    e.value,
                ]);
            }
            for c in &window.calls {
                record.calls.extend([
                    dict.labels_id(&c.labels),
                    dict.frame_id(&c.function),
                    c.count,
                ]);
            }
            // Copied, not taken: the rows leave the queue only once they are committed.
            (record, dict.pending.clone())
        };
        let mut txn = self.database()?.begin_write()?;
        if !self.durable.load(Relaxed) {
            txn.set_durability(Durability::None)?;
        }
        let mut delta = Delta::default();
        {
            for (table, id, bytes) in &pending {
                let def = match table {
                    Table::Frames => FRAMES,
                    Table::Stacks => STACKS,
                    Table::Labels => LABELS,
                };
                txn.open_table(def)?.insert(id, bytes.as_slice())?;
                delta.bytes += bytes.len() as i64 + 8;
            }
            let mut windows = txn.open_table(WINDOWS)?;
            let stored = windows
                .get(window.start_ns)?
                .map(|old| (WindowRecord::decode(old.value()), old.value().len() as i64 + 8));
            let (encoded, rollup_part) = match stored {
                Some((Ok(mut old), old_len)) => {
                    // The same window, written again after a restart: one window, more samples.
                    let windows_before = old.windows;
                    old.merge(&record);
                    old.windows = windows_before;
                    delta.bytes -= old_len;
                    (old.encode_to_vec(), WindowRecord { windows: 0, ..record })
                }
                Some((Err(e), old_len)) => {
                    warn!(start_ns = window.start_ns, error = %e, "a stored window does not decode; it is replaced");
                    delta.bytes -= old_len;
                    (record.encode_to_vec(), WindowRecord { windows: 0, ..record })
                }
                None => {
                    delta.windows += 1;
                    (record.encode_to_vec(), record)
                }
            };
            windows.insert(window.start_ns, encoded.as_slice())?;
            delta.bytes += encoded.len() as i64 + 8;
            let mut rollups = txn.open_table(ROLLUPS)?;
            for level in 0..LEVELS_NS.len() {
                let key = (level as u8, plan::bucket(level, window.start_ns));
                let stored = rollups.get(key)?.map(|v| {
                    let old = v.value();
                    let keep = !old.is_empty() && old.len() <= self.max_rollup_bytes;
                    (old.len(), keep.then(|| WindowRecord::decode(old).unwrap_or_default()))
                });
                let (mut merged, old_len) = match stored {
                    // Given up before: queries read its bucket from the level below.
                    Some((0, _)) => continue,
                    Some((len, None)) => {
                        // Rewriting it at every window would take ever longer and hold it
                        // several times over meanwhile: an empty value marks it given up.
                        rollups.insert(key, [].as_slice())?;
                        delta.bytes -= len as i64;
                        debug!(
                            level,
                            bucket = key.1,
                            bytes = len,
                            "a rollup grew too large; given up"
                        );
                        continue;
                    }
                    Some((len, Some(old))) => (old, len as i64 + 9),
                    None => (WindowRecord::default(), 0),
                };
                merged.merge(&rollup_part);
                let bytes = merged.encode_to_vec();
                rollups.insert(key, bytes.as_slice())?;
                delta.bytes += bytes.len() as i64 + 9 - old_len;
            }
        }
        let expired = self.expire(&txn, now_ns, &mut delta)?;
        let rows = self.rows.load(Relaxed) + pending.len();
        let dead = if expired > 0 && rows >= self.sweep_at.load(Relaxed) {
            self.sweep(&txn, &mut delta)?
        } else {
            Vec::new()
        };
        {
            let _visible = self.visible.lock().unwrap_or_else(PoisonError::into_inner);
            txn.commit()?;
            window.persisted.set(PersistState::Stored);
        }
        self.apply(&delta);
        self.dict.lock().unwrap_or_else(PoisonError::into_inner).pending.drain(..pending.len());
        self.rows.fetch_add(pending.len(), Relaxed);
        self.forget(&dead);
        Ok(())
    }

    /// Applies the counter changes of a committed transaction.
    fn apply(&self, delta: &Delta) {
        self.add_bytes(delta.bytes);
        if delta.windows >= 0 {
            self.windows.fetch_add(delta.windows.unsigned_abs(), Relaxed);
        } else {
            let gone = delta.windows.unsigned_abs();
            let _ = self.windows.fetch_update(Relaxed, Relaxed, |w| Some(w.saturating_sub(gone)));
        }
        self.evicted.fetch_add(delta.evicted, Relaxed);
        if !delta.unexported.is_empty() {
            let mut lost = self.unexported.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, n) in &delta.unexported {
                *lost.entry(name.clone()).or_default() += n;
            }
        }
    }

    /// Windows that retention dropped before exporter `name` had delivered them, since start.
    pub fn evicted_before_export(&self, name: &str) -> u64 {
        self.unexported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// A consistent view for one query: the store as committed now, and those of `windows`
    /// (recent windows held in memory) that it does not hold, because they are not written
    /// yet or could not be written.
    pub fn snapshot(
        &self,
        windows: Vec<Arc<Window>>,
    ) -> Result<(Snapshot<'_>, Vec<Arc<Window>>), StoreError> {
        let _visible = self.visible.lock().unwrap_or_else(PoisonError::into_inner);
        let txn = self
            .database()
            .and_then(|db| db.begin_read().map_err(redb::Error::from))
            .map_err(|e| classify(&self.path, e))?;
        let unstored =
            windows.into_iter().filter(|w| w.persisted.get() != PersistState::Stored).collect();
        Ok((Snapshot { store: self, txn }, unstored))
    }

    /// Sweeps the dictionaries now, whatever their size; the writer does it by itself once
    /// they have doubled. For benchmarks and tools.
    pub fn sweep_now(&self) -> Result<(), StoreError> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let run = || -> Result<(Vec<(Table, u64)>, Delta), redb::Error> {
            let txn = self.database()?.begin_write()?;
            let mut delta = Delta::default();
            let dead = self.sweep(&txn, &mut delta)?;
            txn.commit()?;
            Ok((dead, delta))
        };
        let (dead, delta) = run().map_err(|e| classify(&self.path, e))?;
        self.apply(&delta);
        self.forget(&dead);
        Ok(())
    }

    /// Deletes, in `txn`, the frames, stacks and labels that no stored window or rollup refers
    /// to, and returns them, for [`Store::forget`] once `txn` is committed. A record that does
    /// not decode stops the sweep (what it refers to is unknown) until the dictionaries double
    /// again.
    fn sweep(
        &self,
        txn: &redb::WriteTransaction,
        delta: &mut Delta,
    ) -> Result<Vec<(Table, u64)>, redb::Error> {
        // The rows this transaction adds count too.
        let pending = self.dict.lock().unwrap_or_else(PoisonError::into_inner).pending.len();
        let entries = self.rows.load(Relaxed) + pending;
        self.sweep_at.store(SWEEP_MIN.max(2 * entries), Relaxed);
        let mut live = LiveIds::default();
        for row in txn.open_table(WINDOWS)?.iter()? {
            let (key, value) = row?;
            let Ok(record) = WindowRecord::decode(value.value()) else {
                warn!(window = key.value(), "a stored window does not decode; sweep skipped");
                return Ok(Vec::new());
            };
            live.add(&record);
        }
        for row in txn.open_table(ROLLUPS)?.iter()? {
            let Ok(record) = WindowRecord::decode(row?.1.value()) else {
                warn!("a stored rollup does not decode; sweep skipped");
                return Ok(Vec::new());
            };
            live.add(&record);
        }
        // The frames of the live stacks, by id, as stored.
        let stack_ids: Vec<u64> = live.stacks().collect();
        {
            let stacks = txn.open_table(STACKS)?;
            for id in stack_ids {
                let Some(value) = stacks.get(id)? else { continue };
                match codec::stack_frames(value.value()) {
                    Ok(frames) => live.add_frames(frames),
                    Err(e) => {
                        warn!(stack = id, error = %e, "a stored stack does not decode; sweep skipped");
                        return Ok(Vec::new());
                    }
                }
            }
        }
        // Every stored row, and the rows of this transaction's window, that nothing refers
        // to.
        let mut dead = Vec::new();
        for (def, table) in
            [(FRAMES, Table::Frames), (STACKS, Table::Stacks), (LABELS, Table::Labels)]
        {
            for row in txn.open_table(def)?.iter()? {
                let id = row?.0.value();
                if !live.holds(table, id) {
                    dead.push((table, id));
                }
            }
        }
        self.sweep_at.store(SWEEP_MIN.max(2 * (entries - dead.len().min(entries))), Relaxed);
        let mut freed = 0u64;
        for (def, table) in
            [(FRAMES, Table::Frames), (STACKS, Table::Stacks), (LABELS, Table::Labels)]
        {
            let mut t = txn.open_table(def)?;
            for (_, id) in dead.iter().filter(|(in_table, _)| *in_table == table) {
                if let Some(v) = t.remove(id)? {
                    freed += v.value().len() as u64 + 8;
                }
            }
        }
        delta.bytes -= freed as i64;
        Ok(dead)
    }

    /// Forgets, in memory, what a committed sweep deleted.
    fn forget(&self, dead: &[(Table, u64)]) {
        if dead.is_empty() {
            return;
        }

        let gone: std::collections::HashSet<(Table, u64)> = dead.iter().copied().collect();
        self.dict.lock().unwrap_or_else(PoisonError::into_inner).forget(&gone);
        let kept = self.rows.fetch_sub(dead.len(), Relaxed).saturating_sub(dead.len());
        self.swept.fetch_add(dead.len() as u64, Relaxed);
        info!(forgotten = dead.len(), kept, "profile store: dictionary swept");
    }

    fn add_bytes(&self, delta: i64) {
        if delta >= 0 {
            self.bytes.fetch_add(delta as u64, Relaxed);
        } else {
            let _ = self
                .bytes
                .fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(delta.unsigned_abs())));
        }
    }

    /// Drops windows older than the retention age, then whole oldest hours while the records
    /// are over the size bound. Rollups go with their last window. Returns the windows dropped.
    fn expire(
        &self,
        txn: &redb::WriteTransaction,
        now_ns: i64,
        delta: &mut Delta,
    ) -> Result<u64, redb::Error> {
        let max_age = i64::try_from(self.retention.max_age.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = now_ns.saturating_sub(max_age);
        let mut dropped = self.drop_before(txn, cutoff, delta)?;
        while self.bytes.load(Relaxed).saturating_add_signed(delta.bytes) > self.retention.max_bytes
        {
            let oldest = txn.open_table(WINDOWS)?.first()?.map(|(k, _)| k.value());
            let Some(oldest) = oldest else { break };
            let hour_end = plan::bucket(0, oldest) + LEVELS_NS[0];
            match self.drop_before(txn, hour_end, delta)? {
                0 => break,
                n => dropped += n,
            }
        }
        Ok(dropped)
    }

    /// Deletes windows that start before `cutoff` and the rollups that end by it; returns the
    /// windows deleted.
    fn drop_before(
        &self,
        txn: &redb::WriteTransaction,
        cutoff: i64,
        delta: &mut Delta,
    ) -> Result<u64, redb::Error> {
        let mut windows = txn.open_table(WINDOWS)?;
        let mut freed = 0u64;
        let mut dropped = 0u64;
        let mut starts = Vec::new();
        for row in windows.extract_from_if(..cutoff, |_, _| true)? {
            let (k, v) = row?;
            freed += v.value().len() as u64 + 8;
            dropped += 1;
            starts.push(k.value());
        }
        // Windows after an exporter's last delivered one go undelivered.
        if !starts.is_empty() {
            let exports = txn.open_table(EXPORTS)?;
            for row in exports.iter()? {
                let (name, cursor) = row?;
                let cursor = cursor.value();
                let lost = starts.iter().filter(|&&start| start > cursor).count() as u64;
                if lost > 0 {
                    delta.unexported.push((name.value().to_owned(), lost));
                }
            }
        }
        let mut rollups = txn.open_table(ROLLUPS)?;
        for (level, len) in LEVELS_NS.iter().enumerate() {
            let from = (level as u8, i64::MIN);
            let to = (level as u8, cutoff.saturating_sub(*len).saturating_add(1));
            for row in rollups.extract_from_if(from..to, |_, _| true)? {
                let (_, v) = row?;
                freed += v.value().len() as u64 + 9;
            }
        }
        delta.windows -= dropped as i64;
        delta.evicted += dropped;
        delta.bytes -= freed as i64;
        Ok(dropped)
    }

    /// Merges the stored windows that overlap `[start_ns, end_ns)` and match `selector`, in
    /// `mode` (idle threads left out).
    pub fn merge(
        &self,
        start_ns: i64,
        end_ns: i64,
        selector: &Selector,
        mode: Mode,
    ) -> Result<MergedProfile, StoreError> {
        let mut merged = MergedProfile::new(mode, false);
        self.snapshot(Vec::new())?.0.merge_into(start_ns, end_ns, selector, &mut merged)?;
        merged.finish();
        Ok(merged)
    }

    /// The start of the last window that exporter `name` delivered, if it delivered one.
    pub fn export_cursor(&self, name: &str) -> Result<Option<i64>, StoreError> {
        let read = || -> Result<Option<i64>, redb::Error> {
            let txn = self.database()?.begin_read()?;
            let table = match txn.open_table(EXPORTS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(table.get(name)?.map(|v| v.value()))
        };
        read().map_err(|e| classify(&self.path, e))
    }

    /// Records that exporter `name` delivered the window that starts at `start_ns`.
    pub fn set_export_cursor(&self, name: &str, start_ns: i64) -> Result<(), StoreError> {
        let write = || -> Result<(), redb::Error> {
            let txn = self.database()?.begin_write()?;
            txn.open_table(EXPORTS)?.insert(name, start_ns)?;
            txn.commit()?;
            Ok(())
        };
        write().map_err(|e| classify(&self.path, e))
    }

    /// The first `max` stored windows that start after `after_ns`, as (start, end), oldest
    /// first.
    pub fn windows_after(&self, after_ns: i64, max: usize) -> Result<Vec<(i64, i64)>, StoreError> {
        let read = || -> Result<Vec<(i64, i64)>, redb::Error> {
            let txn = self.database()?.begin_read()?;
            let windows = txn.open_table(WINDOWS)?;
            let mut out = Vec::new();
            for row in windows.range(after_ns.saturating_add(1)..)?.take(max) {
                let (start, record) = row?;
                let start = start.value();
                // A damaged record still spans its window, by the window length around it.
                let end = WindowRecord::decode(record.value()).map_or(start, |r| r.end_ns);
                out.push((start, end.max(start)));
            }
            Ok(out)
        };
        read().map_err(|e| classify(&self.path, e))
    }

    /// The start of the newest stored window.
    pub fn newest_window(&self) -> Result<Option<i64>, StoreError> {
        let read = || -> Result<Option<i64>, redb::Error> {
            let txn = self.database()?.begin_read()?;
            let windows = txn.open_table(WINDOWS)?;
            Ok(windows.last()?.map(|(start, _)| start.value()))
        };
        read().map_err(|e| classify(&self.path, e))
    }

    /// Rough bytes the store holds in memory: its dictionary, with the rows waiting to be
    /// written, and redb's page cache at its bound.
    pub fn memory_bytes(&self) -> usize {
        let dict = self.dict.lock().unwrap_or_else(PoisonError::into_inner).approx_bytes();
        dict + CACHE_BYTES
    }

    /// Sizes and counters.
    pub fn status(&self) -> StoreStatus {
        let (cached, pending) = {
            let dict = self.dict.lock().unwrap_or_else(PoisonError::into_inner);
            (dict.len() as u64, dict.pending.len() as u64)
        };
        StoreStatus {
            path: self.path.clone(),
            bytes: self.bytes.load(Relaxed),
            file_bytes: std::fs::metadata(&self.path).map_or(0, |m| m.len()),
            windows: self.windows.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            dictionary: self.rows.load(Relaxed) as u64,
            dictionary_cached: cached,
            dictionary_swept: self.swept.load(Relaxed),
            dictionary_pending: pending,
            dictionary_restarts: self.restarts.load(Relaxed),
            persisted_until_ns: self.persisted_until(),
            unstored: self.lost.count(),
        }
    }
}

/// What the store holds at one moment, for one query.
#[derive(Debug)]
pub struct Snapshot<'a> {
    store: &'a Store,
    txn: redb::ReadTransaction,
}

impl Snapshot<'_> {
    /// Adds the stored windows that overlap `[start_ns, end_ns)` and match `selector` to
    /// `merged` (which the caller finishes).
    pub fn merge_into(
        &self,
        start_ns: i64,
        end_ns: i64,
        selector: &Selector,
        merged: &mut MergedProfile,
    ) -> Result<(), StoreError> {
        self.merge_inner(start_ns, end_ns, selector, merged)
            .map_err(|e| classify(&self.store.path, e))
    }

    fn merge_inner(
        &self,
        start_ns: i64,
        end_ns: i64,
        selector: &Selector,
        merged: &mut MergedProfile,
    ) -> Result<(), redb::Error> {
        // Frames, stacks and labels are read from this snapshot's rows.
        let (frames, stacks, labels) = (
            self.txn.open_table(FRAMES)?,
            self.txn.open_table(STACKS)?,
            self.txn.open_table(LABELS)?,
        );
        let mut decoder = Decoder::new(|table, id| {
            let rows = match table {
                Table::Frames => &frames,
                Table::Stacks => &stacks,
                Table::Labels => &labels,
            };
            rows.get(id).ok().flatten().map(|v| v.value().to_vec())
        });
        let mut acc = Accumulator::default();
        if start_ns >= end_ns {
            acc.finish(&mut decoder, selector, merged);
            return Ok(());
        }
        let windows = self.txn.open_table(WINDOWS)?;
        let rollups = self.txn.open_table(ROLLUPS)?;
        // Only the stored span is planned over, so that open-ended ranges stay cheap.
        let (Some(first), Some(last)) = (windows.first()?, windows.last()?) else {
            acc.finish(&mut decoder, selector, merged);
            return Ok(());
        };
        let start_ns = start_ns.max(first.0.value());
        let end_ns = end_ns.min(last.0.value().saturating_add(1));
        drop((first, last));
        // A window that started before the range but reaches into it.
        if let Some(row) = windows.range(..start_ns)?.next_back() {
            let (_, v) = row?;
            if let Ok(r) = WindowRecord::decode(v.value())
                && r.end_ns > start_ns
            {
                acc.add(&r);
            }
        }
        let mut pieces = plan::plan(start_ns, end_ns);
        while let Some(piece) = pieces.pop() {
            match piece {
                Piece::Rollup { level, start } => {
                    if let Some(v) = rollups.get((level as u8, start))? {
                        if v.value().is_empty() {
                            // Given up as too large: its windows are read from the level
                            // below.
                            pieces.extend(plan::below(level, start));
                        } else {
                            acc.add_bytes(v.value());
                        }
                    }
                }
                Piece::Raw { start, end } => {
                    for row in windows.range(start..end)? {
                        acc.add_bytes(row?.1.value());
                    }
                }
            }
        }
        acc.finish(&mut decoder, selector, merged);
        Ok(())
    }
}

/// Counter changes made inside a write transaction, applied once it commits.
#[derive(Debug, Default)]
struct Delta {
    bytes: i64,
    windows: i64,
    evicted: u64,
    /// Per exporter, the windows evicted before it delivered them.
    unexported: Vec<(String, u64)>,
}

fn open_database(path: &Path) -> Result<Database, DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

enum LoadError {
    Db(redb::Error),
    Damaged(Damaged),
    Version(u64),
}

impl From<redb::Error> for LoadError {
    fn from(e: redb::Error) -> Self {
        LoadError::Db(e)
    }
}

impl From<Damaged> for LoadError {
    fn from(e: Damaged) -> Self {
        LoadError::Damaged(e)
    }
}

/// Corruption becomes [`StoreError::Damaged`], with its recovery path; the rest stays a
/// database error.
fn classify(path: &Path, e: redb::Error) -> StoreError {
    match e {
        redb::Error::Corrupted(reason) => StoreError::Damaged { path: path.to_owned(), reason },
        redb::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            StoreError::Damaged { path: path.to_owned(), reason: io.to_string() }
        }
        redb::Error::DatabaseAlreadyOpen => StoreError::InUse(path.to_owned()),
        e => StoreError::Db { path: path.to_owned(), source: Box::new(e) },
    }
}

/// Sums of stored records by id, resolved once at the end.
#[derive(Default)]
struct Accumulator {
    start_ns: Option<i64>,
    end_ns: i64,
    windows: u64,
    drops: crate::stats::DropSnapshot,
    // Every stored entry of the range passes through here: foldhash rather than SipHash.
    entries: HashMap<(u64, u64, u64), Tally, foldhash::fast::RandomState>,
    calls: HashMap<(u64, u64), u64, foldhash::fast::RandomState>,
    damaged: u64,
}

impl Accumulator {
    fn add_bytes(&mut self, bytes: &[u8]) {
        match WindowRecord::decode(bytes) {
            Ok(r) => self.add(&r),
            Err(_) => self.damaged += 1,
        }
    }

    fn add(&mut self, r: &WindowRecord) {
        self.start_ns = Some(self.start_ns.map_or(r.start_ns, |s| s.min(r.start_ns)));
        self.end_ns = self.end_ns.max(r.end_ns);
        // Saturating: a damaged record can hold any counts.
        self.windows = self.windows.saturating_add(r.windows);
        self.drops.add(&r.drop_snapshot());
        for (kind, labels, stack, tally) in r.each_tally() {
            self.entries.entry((kind, labels, stack)).or_default().add(tally);
        }
        for t in r.calls.chunks_exact(3) {
            let slot = self.calls.entry((t[0], t[1])).or_insert(0);
            *slot = slot.saturating_add(t[2]);
        }
    }

    fn finish<R: FnMut(Table, u64) -> Option<Vec<u8>>>(
        self,
        dict: &mut Decoder<R>,
        selector: &Selector,
        merged: &mut MergedProfile,
    ) {
        let mut matches: HashMap<u64, bool> = HashMap::new();
        let mut keep = |id: u64, dict: &mut Decoder<R>| {
            *matches
                .entry(id)
                .or_insert_with(|| dict.labels(id).is_some_and(|l| selector.matches(&l)))
        };
        if let Some(start_ns) = self.start_ns {
            merged.add_span(start_ns, self.end_ns, self.windows, &self.drops);
        }
        let mut damaged = self.damaged;
        for ((kind, labels, stack), tally) in self.entries {
            if kind == SampleKind::Cpu.code()
                && let Some(l) = dict.labels(labels)
            {
                merged.note_ran(&l);
            }
            if !keep(labels, dict) {
                continue;
            }
            match (SampleKind::from_code(kind), dict.labels(labels), dict.stack(stack)) {
                (Some(kind), Some(l), Some(s)) => merged.add_entry(kind, &l, &s, tally),
                _ => damaged += 1,
            }
        }
        for ((labels, frame), count) in self.calls {
            if !keep(labels, dict) {
                continue;
            }
            if let (Some(l), Some(f)) = (dict.labels(labels), dict.frame(frame)) {
                let slot = merged.calls.entry((l, f)).or_insert(0);
                *slot = slot.saturating_add(count);
            }
        }
        if damaged > 0 {
            warn!(damaged, "stored records that could not be read were skipped");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::aggregate::{Frame, Labels, window::WindowEntry};

    const S: i64 = 1_000_000_000;

    fn entry(pid: u32, function: &str, count: u64) -> WindowEntry {
        let labels = Arc::new(Labels { pid, comm: "app".into(), ..Labels::default() });
        let frame = Arc::new(Frame {
            kind: crate::aggregate::FrameKind::Native,
            ..Frame::marker(function)
        });
        WindowEntry {
            kind: SampleKind::Cpu,
            labels,
            stack: vec![frame].into(),
            count,
            value: count,
        }
    }

    /// A 10 s window starting at `start`.
    fn window_of(start: i64, entries: Vec<WindowEntry>) -> Window {
        Window {
            start_ns: start,
            end_ns: start + 10 * S,
            samples: entries.iter().map(|e| e.count).sum(),
            drops: crate::stats::DropSnapshot::default(),
            entries,
            calls: Vec::new(),
            persisted: Default::default(),
        }
    }

    fn window(start: i64, pid: u32, function: &str, count: u64) -> Window {
        window_of(start, vec![entry(pid, function, count)])
    }

    fn retention() -> DiskRetention {
        DiskRetention { max_age: Duration::from_secs(48 * 3600), max_bytes: 1 << 30 }
    }

    fn counts(m: &MergedProfile) -> Vec<(String, u64)> {
        let mut v: Vec<_> =
            m.entries.iter().map(|((_, s), t)| (s[0].function.to_string(), t.count)).collect();
        v.sort();
        v
    }

    #[test]
    fn windows_survive_a_reopen_and_merge_through_rollups() {
        let dir = tempdir("reopen");
        let base = 1_700_000_000 * S - (1_700_000_000 * S).rem_euclid(3600 * S);
        {
            let store = Store::open(&dir, retention(), false).unwrap();
            // Two hours of windows, 10 s each: 720 windows of 2 stacks.
            for i in 0..720 {
                let w =
                    window_of(base + i * 10 * S, vec![entry(1, "steady", 3), entry(2, "other", 1)]);
                store.append(&w, base + 7200 * S).unwrap();
            }
        }
        let store = Store::open(&dir, retention(), false).unwrap();
        let status = store.status();
        assert_eq!(status.windows, 720);
        assert_eq!(status.dictionary, 4 + 2, "2 frames + 2 stacks + 2 labels, stored once");
        let all = store.merge(base, base + 7200 * S, &Selector::default(), Mode::Cpu).unwrap();
        assert_eq!(counts(&all), [("other".into(), 720), ("steady".into(), 2160)]);
        assert_eq!(all.windows, 720);
        // An unaligned range: raw edges plus minute rollups.
        let part =
            store.merge(base + 95 * S, base + 3695 * S, &Selector::default(), Mode::Cpu).unwrap();
        // Windows starting in [95 s, 3695 s), plus the one that started at 90 s.
        assert_eq!(counts(&part)[1], ("steady".into(), 3 * 361));
        let only =
            store.merge(base, base + 7200 * S, &"pid=2".parse().unwrap(), Mode::Cpu).unwrap();
        assert_eq!(counts(&only), [("other".into(), 720)]);
    }

    #[test]
    fn a_rollup_too_large_to_rewrite_is_given_up_and_read_from_below() {
        let dir = tempdir("rollup_given_up");
        let base = 1_700_000_000 * S - (1_700_000_000 * S).rem_euclid(3600 * S);
        let mut store = Store::open(&dir, retention(), false).unwrap();
        // Six windows of 20 entries fit in the bound; thirty do not.
        store.max_rollup_bytes = 2_000;
        // Five minutes of windows whose stacks never repeat.
        for i in 0..30 {
            let entries = (0..20).map(|j| entry(1, &format!("f{i}_{j}"), 1 + j)).collect();
            store.append(&window_of(base + i * 10 * S, entries), base + 300 * S).unwrap();
        }
        let rollup = |level: u8, start: i64| {
            let txn = store.database().unwrap().begin_read().unwrap();
            let table = txn.open_table(ROLLUPS).unwrap();
            table.get((level, start)).unwrap().map(|v| v.value().len())
        };
        assert_eq!(rollup(0, base), Some(0), "the hour's rollup is given up");
        assert!(rollup(1, base).is_some_and(|len| len > 0), "its minutes are kept");
        // The hour reads the same from minute rollups as the windows hold.
        let hour = store.merge(base, base + 3600 * S, &Selector::default(), Mode::Cpu).unwrap();
        assert_eq!(hour.windows, 30);
        assert_eq!(hour.entries.len(), 600);
        let total: u64 = hour.entries.values().map(|t| t.count).sum();
        assert_eq!(total, 30 * (1..=20).sum::<u64>());
        let (_, one) = counts(&hour).into_iter().find(|(f, _)| f == "f29_19").unwrap();
        assert_eq!(one, 20);
    }

    /// A new store that keeps an hour, and the start of an hour to fill it from.
    fn hour_store(name: &str) -> (Store, i64) {
        let dir = tempdir(name);
        let base = 1_700_000_000 * S - (1_700_000_000 * S).rem_euclid(3600 * S);
        let store = Store::open(
            &dir,
            DiskRetention { max_age: Duration::from_secs(3600), max_bytes: 1 << 30 },
            false,
        )
        .unwrap();
        (store, base)
    }

    #[test]
    fn retention_drops_the_oldest_first_and_counts_them() {
        let (store, base) = hour_store("retention");
        for i in 0..720 {
            store.append(&window(base + i * 10 * S, 1, "f", 1), base + (i + 1) * 10 * S).unwrap();
        }
        let status = store.status();
        assert_eq!(status.windows, 360, "one hour kept");
        assert_eq!(status.evicted, 360);
        let all = store.merge(0, i64::MAX, &Selector::default(), Mode::Cpu).unwrap();
        assert_eq!(all.samples, 360);
    }

    #[test]
    fn windows_evicted_before_an_exporter_delivered_them_are_counted_for_it() {
        let (store, base) = hour_store("unexported");
        // One exporter delivered the first 100 windows, the other none.
        store.set_export_cursor("caught up", base + 99 * 10 * S).unwrap();
        store.set_export_cursor("behind", i64::MIN).unwrap();
        for i in 0..400 {
            store.append(&window(base + i * 10 * S, 1, "f", 1), base + (i + 1) * 10 * S).unwrap();
        }
        // An hour is 360 windows: the first 40 went.
        assert_eq!(store.status().evicted, 40);
        assert_eq!(store.evicted_before_export("behind"), 40);
        assert_eq!(store.evicted_before_export("caught up"), 0);
        assert_eq!(store.windows_after(base + 99 * 10 * S, 2).unwrap()[0].0, base + 100 * 10 * S);
    }

    #[test]
    fn a_size_bound_drops_whole_oldest_hours() {
        let dir = tempdir("size");
        let base = 1_700_000_000 * S - (1_700_000_000 * S).rem_euclid(3600 * S);
        let store = Store::open(
            &dir,
            DiskRetention { max_age: Duration::from_secs(1 << 30), max_bytes: 40_000 },
            false,
        )
        .unwrap();
        for i in 0..1080 {
            store.append(&window(base + i * 10 * S, 1, "f", 1), base).unwrap();
        }
        let status = store.status();
        assert!(status.bytes <= 40_000, "{status:?}");
        assert!(status.evicted > 0 && status.evicted.is_multiple_of(360), "{status:?}");
        let kept = store.merge(0, i64::MAX, &Selector::default(), Mode::Cpu).unwrap();
        assert_eq!(kept.samples, status.windows);
    }

    #[test]
    fn a_damaged_file_is_refused_with_a_way_out_and_repaired_on_request() {
        let dir = tempdir("damaged");
        {
            let store = Store::open(&dir, retention(), false).unwrap();
            for i in 0..50 {
                store.append(&window(i * 10 * S, 1, "f", 1), 0).unwrap();
            }
        }
        let path = dir.join(FILE_NAME);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / 2).unwrap();
        drop(file);
        let err = Store::open(&dir, retention(), false).unwrap_err().to_string();
        assert!(err.contains("is damaged") && err.contains("--repair"), "{err}");
        let store = Store::open(&dir, retention(), true).unwrap();
        assert_eq!(store.status().windows, 0);
        let aside: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "the damaged file is kept");
    }

    #[test]
    fn windows_dropped_by_retention_take_their_dictionary_entries_along() {
        let dir = tempdir("sweep");
        let base = 1_700_000_000 * S - (1_700_000_000 * S).rem_euclid(3600 * S);
        let hour = DiskRetention { max_age: Duration::from_secs(3600), max_bytes: 1 << 30 };
        let at = |i: i64| base + i * 10 * S;
        {
            let store = Store::open(&dir, hour, false).unwrap();
            // An hour of short-lived processes, each with its own function, then an hour of
            // one steady process, which pushes the first hour out.
            for i in 0..360 {
                let w = window(at(i), 1000 + i as u32, &format!("gone{i}"), 1);
                store.append(&w, at(i + 1)).unwrap();
            }
            for i in 360..720 {
                store.append(&window(at(i), 1, "steady", 1), at(i + 1)).unwrap();
            }
            let status = store.status();
            assert_eq!(status.windows, 360);
            assert_eq!(
                (status.dictionary, status.dictionary_swept),
                (3 * 361, 0),
                "under {SWEEP_MIN} entries nothing is swept"
            );
            store.sweep_at.store(0, Relaxed);
            store.append(&window(at(720), 1, "steady", 1), at(721)).unwrap();
            let status = store.status();
            assert_eq!(
                (status.dictionary, status.dictionary_swept),
                (3, 3 * 360),
                "only the steady process's frame, stack and labels are referenced"
            );
            let all = store.merge(0, i64::MAX, &Selector::default(), Mode::Cpu).unwrap();
            assert_eq!(counts(&all), [("steady".into(), 360)]);
        }
        // The tables were swept too.
        let store = Store::open(&dir, hour, false).unwrap();
        assert_eq!(store.status().dictionary, 3);
        // An entry seen again gets a new id, and what is stored reads back.
        store.append(&window(at(721), 1000, "gone0", 2), at(722)).unwrap();
        let last = store.merge(at(721), i64::MAX, &Selector::default(), Mode::Cpu).unwrap();
        assert_eq!(counts(&last), [("gone0".into(), 2)]);
        let all = store.merge(0, i64::MAX, &Selector::default(), Mode::Cpu).unwrap();
        assert_eq!(counts(&all), [("gone0".into(), 2), ("steady".into(), 359)]);
    }

    #[test]
    fn the_dictionary_remembers_a_bounded_number_of_entries_and_queries_read_the_rest() {
        let dir = tempdir("bounded-dictionary");
        let base = 1_700_000_000 * S - (1_700_000_000 * S).rem_euclid(3600 * S);
        let expected: Vec<(String, u64)> = (0..300).map(|i| (format!("f{i:03}"), 1)).collect();
        {
            let store = Store::open(&dir, retention(), false).unwrap();
            store.remember_at_most(16);
            for i in 0..300 {
                let w = window(base + i * 10 * S, 1 + i as u32, &format!("f{i:03}"), 1);
                store.append(&w, base).unwrap();
            }
            // A function seen again after it was forgotten: a second row, read back as one.
            store.append(&window(base + 300 * 10 * S, 1, "f000", 1), base).unwrap();
            let status = store.status();
            assert!(status.dictionary_cached <= 3 * 16, "{}", status.dictionary_cached);
            assert!(status.dictionary >= 3 * 300, "{}", status.dictionary);
            let all = store.merge(0, i64::MAX, &Selector::default(), Mode::Cpu).unwrap();
            let mut want = expected.clone();
            want[0].1 = 2;
            assert_eq!(counts(&all), want);
        }
        // After a restart nothing is loaded into memory, and everything reads back.
        let store = Store::open(&dir, retention(), false).unwrap();
        assert_eq!(store.status().dictionary_cached, 0);
        let all = store.merge(0, base + 300 * 10 * S, &Selector::default(), Mode::Cpu).unwrap();
        assert_eq!(counts(&all), expected);
    }

    #[test]
    fn a_window_written_again_after_a_restart_is_merged_once() {
        let dir = tempdir("restart-window");
        let base = 1_700_000_000 * S - (1_700_000_000 * S).rem_euclid(3600 * S);
        let again = base + 50 * S;
        {
            let store = Store::open(&dir, retention(), false).unwrap();
            for i in 0..720 {
                let start = base + i * 10 * S;
                let mut entries = vec![entry(1, "steady", 1)];
                if start == again {
                    entries.push(entry(1, "first_run", 3));
                }
                store.append(&window_of(start, entries), base + 7200 * S).unwrap();
            }
        }
        // A restart inside the window that starts at `again`: the new run's first window has
        // the same start.
        {
            let store = Store::open(&dir, retention(), false).unwrap();
            let second = window_of(again, vec![entry(1, "steady", 1), entry(1, "second_run", 2)]);
            store.append(&second, base + 7200 * S).unwrap();
            assert_eq!(store.status().windows, 720, "still one record per window");
        }
        // Read it all back after a second restart too.
        let store = Store::open(&dir, retention(), false).unwrap();
        let q = |from: i64, to: i64| {
            let merged = store.merge(from, to, &Selector::default(), Mode::Cpu).unwrap();
            (counts(&merged), merged.windows)
        };
        let both = |steady: u64| {
            vec![("first_run".into(), 3), ("second_run".into(), 2), ("steady".into(), steady)]
        };
        // The raw window alone.
        assert_eq!(q(again, again + S), (both(2), 1));
        // The minute rollup that holds it.
        assert_eq!(q(base, base + 60 * S), (both(7), 6));
        // The hour rollup.
        assert_eq!(q(base, base + 3600 * S), (both(361), 360));
        assert_eq!(store.status().windows, 720);
    }

    /// Storage that fails every write while `fail` is set, like a full disk.
    #[derive(Debug)]
    struct Failing {
        inner: redb::backends::FileBackend,
        fail: Arc<AtomicBool>,
    }

    impl Failing {
        fn check(&self) -> Result<(), std::io::Error> {
            if self.fail.load(Relaxed) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for Failing {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.write(offset, data)
        }
        fn close(&self) -> Result<(), std::io::Error> {
            self.inner.close()
        }
        fn try_lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.inner.try_lock_range(start, end)
        }
        fn try_lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.inner.try_lock_shared_range(start, end)
        }
        fn lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.inner.lock_range(start, end)
        }
        fn lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.inner.lock_shared_range(start, end)
        }
        fn unlock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.inner.unlock_range(start, end)
        }
        fn query_lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.inner.query_lock_range(start, end)
        }
    }

    /// A store in a new directory `name` whose writes fail while the flag is set (until the
    /// store reopens its file after the failure).
    fn failing_store(name: &str) -> (PathBuf, Store, Arc<AtomicBool>) {
        let dir = tempdir(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let backend =
            Failing { inner: redb::backends::FileBackend::new(file).unwrap(), fail: fail.clone() };
        let store = Store::open_with_backend(&path, backend, retention()).unwrap();
        (dir, store, fail)
    }

    #[test]
    fn a_failed_write_changes_nothing_and_the_next_write_stores_what_it_needs() {
        let (dir, store, fail) = failing_store("failed-write");
        let base = 1_700_000_000 * S - (1_700_000_000 * S).rem_euclid(3600 * S);
        {
            let store = store;
            store.append(&window(base, 1, "before", 1), base).unwrap();
            let before = store.status();
            // The disk fills up: a window with new frames, stacks and labels fails.
            fail.store(true, Relaxed);
            let lost = window(base + 10 * S, 2, "during", 1);
            let err = store.append(&lost, base).unwrap_err();
            assert!(err.to_string().contains(&dir.join(FILE_NAME).display().to_string()), "{err}");
            assert_ne!(lost.persisted.get(), PersistState::Stored);
            let after = store.status();
            assert_eq!(
                (after.bytes, after.windows, after.evicted, after.dictionary),
                (before.bytes, before.windows, before.evicted, before.dictionary),
                "counters move only on a commit"
            );
            assert_eq!(
                after.dictionary_cached,
                before.dictionary_cached + 3,
                "the new entries are remembered, and their rows wait to be written"
            );
            // Space again: the next window uses the same frame, stack and labels, whose rows
            // must now be written with it. The store reopens its file by itself.
            fail.store(false, Relaxed);
            let next = window(base + 20 * S, 2, "during", 4);
            store.append(&next, base).unwrap();
            assert_eq!(next.persisted.get(), PersistState::Stored);
            assert_eq!(store.status().windows, 2);
        }
        let store = Store::open(&dir, retention(), false).unwrap();
        let all = store.merge(0, i64::MAX, &Selector::default(), Mode::Cpu).unwrap();
        assert_eq!(counts(&all), [("before".into(), 1), ("during".into(), 4)]);
        assert_eq!(store.status().windows, 2);
    }

    #[test]
    fn rows_waiting_past_their_bound_are_dropped_and_later_windows_write_theirs_again() {
        let (dir, store, fail) = failing_store("failing-disk");
        let base = 1_700_000_000 * S - (1_700_000_000 * S).rem_euclid(3600 * S);
        {
            let mut store = store;
            store.append(&window(base, 1, "before", 1), base).unwrap();
            // A failed write leaves the rows of a new frame, stack and label set waiting.
            fail.store(true, Relaxed);
            assert!(store.append(&window(base + 10 * S, 2, "during", 1), base).is_err());
            assert_eq!(store.status().dictionary_pending, 3);
            // With fewer allowed to wait, the next write drops them and starts over: it
            // writes the rows its window needs again, under new ids.
            fail.store(false, Relaxed);
            store.max_pending_rows = 2;
            store.append(&window(base + 20 * S, 2, "during", 5), base).unwrap();
            let status = store.status();
            assert_eq!((status.dictionary_pending, status.dictionary_restarts), (0, 1));
        }
        let store = Store::open(&dir, retention(), false).unwrap();
        let all = store.merge(0, i64::MAX, &Selector::default(), Mode::Cpu).unwrap();
        assert_eq!(counts(&all), [("before".into(), 1), ("during".into(), 5)]);
    }

    #[test]
    fn a_snapshot_counts_each_window_once_from_the_store_or_from_memory() {
        let dir = tempdir("snapshot");
        let store = Store::open(&dir, retention(), false).unwrap();
        let base = 1_700_000_000 * S - (1_700_000_000 * S).rem_euclid(3600 * S);
        let stored = Arc::new(window(base, 1, "stored", 1));
        store.append(&stored, base).unwrap();
        let pending = Arc::new(window(base + 10 * S, 1, "pending", 1));
        let lost = Arc::new(window(base + 20 * S, 1, "lost", 1));
        store.lost().record(&lost);
        let (snapshot, memory) =
            store.snapshot(vec![stored.clone(), pending.clone(), lost.clone()]).unwrap();
        let starts: Vec<i64> = memory.iter().map(|w| w.start_ns).collect();
        assert_eq!(starts, [base + 10 * S, base + 20 * S]);
        let from_store = {
            let mut m = MergedProfile::new(Mode::Cpu, false);
            snapshot.merge_into(0, i64::MAX, &Selector::default(), &mut m).unwrap();
            m.finish();
            m
        };
        assert_eq!(counts(&from_store), [("stored".into(), 1)]);
        assert_eq!(store.lost().overlapping(base, base + 30 * S), [(base + 20 * S, base + 30 * S)]);
        assert_eq!(store.status().unstored, 1);
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("profiler-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
