//! The controller's embedded, transactional state store (redb) in `.pangaea/state.redb`.
//!
//! Durability: every write is committed with an fsync before the caller gets its answer, so
//! nothing acknowledged is lost on a crash. To make that affordable under load (a thousand
//! agents joining at once), writes go through one writer thread that *group-commits*: it
//! takes every operation waiting in its queue, runs them in one transaction in arrival
//! order, commits once, and then answers them all.
//!
//! Rule for operations: validate first, write last. An operation that returns an error
//! must not have written anything, because the batch it shares is still committed.
//!
//! One process at a time: `.pangaea/lock` is held (flock) for the store's lifetime, and
//! records the holder's PID for the error message others get.

use crate::state_dir::StateDir;
use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};
use serde::{Serialize, de::DeserializeOwned};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Memory for redb's page cache. redb's default is 1 GiB, which the cache fills as it
/// reads: a fleet of 5,000 nodes' assignments (about 16 KiB each) would keep some 80 MiB of
/// them in memory after one reconnect storm. What is read on every call, the node records
/// (about 1 KiB each), fits; pages it evicts are read again through the kernel's page
/// cache, which the kernel can reclaim.
pub const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Bootstrap tokens by id: JSON [`TokenRecord`](crate::records::TokenRecord)s.
pub const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// Nodes by name: JSON [`NodeRecord`](crate::records::NodeRecord)s.
pub const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// Each node's current assignment by node name: protobuf `Assignment`s.
pub const ASSIGNMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("assignments");
/// Each node's latest health report by node name, as
/// [`encode_report`](crate::records::encode_report) writes it.
pub const REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("reports");

/// Why the state store could not open, read or write.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds `.pangaea/lock`; the caller should go through that process's
    /// admin socket instead of opening the store.
    #[error(
        "another pangaea-ctl process{holder} is using the state in {dir}: stop it first, or run this command while it is up so it goes through its admin socket"
    )]
    Locked {
        /// The state directory whose lock is held.
        dir: PathBuf,
        /// ` (PID n)` read from the lock file, or empty when it records no PID.
        holder: String,
    },
    /// redb or the file system failed, on the database file or on one record.
    #[error("state store {path}: {message}")]
    Db {
        /// The database file, or `table/key` for errors raised on one record.
        path: PathBuf,
        /// The underlying error's text.
        message: String,
    },
    /// A stored record does not decode: the store was damaged or written by an
    /// incompatible version.
    #[error("state store record {table}/{key} is unreadable: {message}")]
    Corrupt {
        /// The table's name.
        table: &'static str,
        /// The record's key.
        key: String,
        /// The decoder's error.
        message: String,
    },
    /// The writer thread is gone (the store is closing): nothing was written.
    #[error("state store writer has stopped")]
    WriterGone,
    /// The operation's batch was rolled back (the writer could not begin a transaction,
    /// or another operation in the batch panicked; the log says which): nothing of it was
    /// written, and it may be retried.
    #[error("state store write rolled back (see the controller log); nothing was written")]
    RolledBack,
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn FnOnce(&WriteTransaction) -> Completion + Send>;

/// The open state store: holds the directory's lock, reads from snapshots and funnels every
/// write through the group-committing writer thread. Dropping it finishes queued writes.
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    /// `None` only while dropping: closing the queue ends the writer thread.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    _lock: File,
}

impl Drop for Store {
    /// Finishes the queued writes and closes the database before the lock is released, so
    /// the next process (or test) can open it at once.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Store {
    /// Opens (creating) the store in `dir`, taking the directory's lock.
    pub fn open(dir: &StateDir) -> Result<Store, StoreError> {
        dir.ensure().map_err(|e| StoreError::Db {
            path: dir.path().to_owned(),
            message: e.to_string(),
        })?;
        let lock = take_lock(dir)?;
        let path = dir.store();
        // redb creates its file with the process umask; create it owner-only first. It holds
        // the assignments, and with them control-plane keys.
        private_file(&path).map_err(|e| StoreError::Db {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let db_err = |e: &dyn std::fmt::Display| StoreError::Db {
            path: path.clone(),
            message: e.to_string(),
        };
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| db_err(&e))?;
        let txn = db.begin_write().map_err(|e| db_err(&e))?;
        for t in [TOKENS, NODES, ASSIGNMENTS, REPORTS] {
            txn.open_table(t).map_err(|e| db_err(&e))?;
        }
        txn.commit().map_err(|e| db_err(&e))?;
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel::<Job>();
        let (wdb, wpath) = (db.clone(), path.clone());
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(wdb, &wpath, rx))
            .map_err(|e| db_err(&e))?;
        Ok(Store {
            db,
            path,
            jobs: Some(jobs),
            writer: Some(writer),
            _lock: lock,
        })
    }

    /// The database file (`.pangaea/state.redb`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` in a write transaction shared with concurrent operations; returns once the
    /// transaction is durably committed.
    pub async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(op)?.await.map_err(|_| StoreError::RolledBack)?
    }

    /// [`Store::write`] for synchronous callers (CLI commands).
    pub fn write_blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(op)?
            .blocking_recv()
            .map_err(|_| StoreError::RolledBack)?
    }

    fn submit<T: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |txn| {
            let result = op(txn);
            Box::new(move |commit| {
                let _ = tx.send(commit.and(result));
            })
        });
        self.jobs
            .as_ref()
            .ok_or(StoreError::WriterGone)?
            .send(job)
            .map_err(|_| StoreError::WriterGone)?;
        Ok(rx)
    }

    /// Runs `f` on a consistent snapshot. Reads do not wait for the writer.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(|e| StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        f(&txn)
    }

    /// Writes a copy of the store's committed content, from one snapshot, to the new
    /// database file `dest` (0600; it must not exist): consistent while writers go on,
    /// which copying the file itself would not be.
    pub fn copy_to(&self, dest: &Path) -> Result<(), StoreError> {
        use redb::ReadableTable;
        let err = |path: &Path, e: &dyn std::fmt::Display| StoreError::Db {
            path: path.to_owned(),
            message: e.to_string(),
        };
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(|e| err(dest, &e))?;
        let copy = Database::create(dest).map_err(|e| err(dest, &e))?;
        let txn = copy.begin_write().map_err(|e| err(dest, &e))?;
        self.read(|r| {
            for t in [TOKENS, NODES, ASSIGNMENTS, REPORTS] {
                let from = r.open_table(t).map_err(|e| err(&self.path, &e))?;
                let mut to = txn.open_table(t).map_err(|e| err(dest, &e))?;
                for row in from.iter().map_err(|e| err(&self.path, &e))? {
                    let (k, v) = row.map_err(|e| err(&self.path, &e))?;
                    to.insert(k.value(), v.value()).map_err(|e| err(dest, &e))?;
                }
            }
            Ok(())
        })?;
        txn.commit().map_err(|e| err(dest, &e))
    }
}

fn writer_loop(db: Arc<Database>, path: &Path, rx: mpsc::Receiver<Job>) {
    const MAX_BATCH: usize = 4096;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                let err = StoreError::Db {
                    path: path.to_owned(),
                    message: e.to_string(),
                };
                tracing::error!(error = %err, "cannot begin a state transaction");
                // Each job needs a transaction to produce its completion; without one, the
                // job's reply channel is dropped and the caller sees RolledBack.
                drop(batch);
                continue;
            }
        };
        // A panicking operation must not take the writer (and with it every later write)
        // down, nor commit what it half wrote: the batch is rolled back, the others are
        // told so, and the writer goes on.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
            for job in batch {
                completions.push(job(&txn));
            }
            completions
        }));
        let completions = match ran {
            Ok(c) => c,
            Err(_) => {
                tracing::error!("a state operation panicked; its batch is rolled back");
                let _ = txn.abort();
                continue;
            }
        };
        let committed = txn.commit().map_err(|e| StoreError::Db {
            path: path.to_owned(),
            message: e.to_string(),
        });
        if let Err(e) = &committed {
            tracing::error!(error = %e, "state commit failed; {} operations not applied", completions.len());
        }
        for c in completions {
            c(committed.clone());
        }
    }
}

/// Creates `path` empty with mode 0600 if it does not exist, and makes it 0600 if it does.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?
        .set_permissions(std::fs::Permissions::from_mode(0o600))
}

fn take_lock(dir: &StateDir) -> Result<File, StoreError> {
    let path = dir.lock();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreError::Db {
            path: path.clone(),
            message: e.to_string(),
        })?;
    if f.try_lock().is_err() {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        let holder = holder.trim();
        let holder = if holder.is_empty() {
            String::new()
        } else {
            format!(" (PID {holder})")
        };
        return Err(StoreError::Locked {
            dir: dir.path().to_owned(),
            holder,
        });
    }
    let _ = f
        .set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| write!(f, "{}", std::process::id()));
    Ok(f)
}

/// Typed JSON records in `&str -> &[u8]` tables.
pub fn get<T: DeserializeOwned>(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let Some(v) = table.get(key).map_err(|e| db_err(name, key, e))? else {
        return Ok(None);
    };
    serde_json::from_slice(v.value())
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            table: name,
            key: key.to_owned(),
            message: e.to_string(),
        })
}

/// Writes `value` as JSON under `key`; `name` is the table's name, for errors.
pub fn put<T: Serialize>(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    name: &'static str,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).expect("records serialize");
    table
        .insert(key, bytes.as_slice())
        .map_err(|e| db_err(name, key, e))?;
    Ok(())
}

/// Every record of a table, in key order; `name` is the table's name, for errors.
pub fn all<T: DeserializeOwned>(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter().map_err(|e| db_err(name, "*", e))? {
        let (k, v) = entry.map_err(|e| db_err(name, "*", e))?;
        out.push(
            serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                table: name,
                key: k.value().to_owned(),
                message: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

/// A [`StoreError::Db`] for a failure on record `table/key` (`*` for the whole table).
pub fn db_err(table: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Db {
        path: PathBuf::from(format!("{table}/{key}")),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn acknowledged_writes_survive_reopen_and_failed_ops_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(&StateDir::new(dir.path())).unwrap();
            let mut handles = Vec::new();
            let store = Arc::new(store);
            for i in 0..50 {
                let s = store.clone();
                handles.push(tokio::spawn(async move {
                    s.write(move |txn| {
                        if i % 10 == 0 {
                            return Err(StoreError::WriterGone);
                        }
                        let mut t = txn.open_table(NODES).unwrap();
                        put(&mut t, "nodes", &format!("n{i}"), &i)
                    })
                    .await
                }));
            }
            for (i, h) in handles.into_iter().enumerate() {
                assert_eq!(h.await.unwrap().is_ok(), i % 10 != 0);
            }
        }
        let store = Store::open(&StateDir::new(dir.path())).unwrap();
        let n: Vec<i32> = store
            .read(|r| all(&r.open_table(NODES).unwrap(), "nodes"))
            .unwrap();
        assert_eq!(n.len(), 45);
    }

    #[tokio::test]
    async fn a_panicking_operation_rolls_back_its_batch_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StateDir::new(dir.path())).unwrap();
        let r = store
            .write(|txn| -> Result<(), StoreError> {
                let mut t = txn.open_table(NODES).unwrap();
                put(&mut t, "nodes", "half", &1)?;
                panic!("an operation panics after writing");
            })
            .await;
        assert!(matches!(r, Err(StoreError::RolledBack)), "{r:?}");
        store
            .write(|txn| put(&mut txn.open_table(NODES).unwrap(), "nodes", "after", &2))
            .await
            .expect("later writes succeed");
        let n: Vec<i32> = store
            .read(|r| all(&r.open_table(NODES).unwrap(), "nodes"))
            .unwrap();
        assert_eq!(
            n,
            vec![2],
            "the panicking operation's write was not committed"
        );
    }

    #[test]
    fn second_process_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(&StateDir::new(dir.path())).unwrap();
        let err = Store::open(&StateDir::new(dir.path()))
            .err()
            .expect("lock is held")
            .to_string();
        assert!(
            err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
    }
}
