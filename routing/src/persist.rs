//! Durability: what the broker writes to the command log and how it reads it back.
//!
//! Durable metadata — vhosts, users and permissions, durable exchanges, queues and bindings between
//! durable objects — is stored as typed commands (meta/); persistent messages (delivery_mode 2) in
//! durable queues are stored as `Enqueue` records and removed when they leave the queue. A publisher
//! confirm for such a message waits until its record is fsynced (the store's group commit): the
//! channel's pending confirm counts the writes a publish is waiting for.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use warren_storage::log::medium::DiskMedium;
use warren_storage::log::record::Record;
use warren_storage::log::{LogError, Recovered};
use warren_storage::store::{Completion, Store, StoreOptions};

use crate::meta::{definitions, records, MetaCommand};
use warren_storage::definitions::Definitions;

/// Set (to anything) in the environment, the log holds its writes in the process until it syncs
/// them, so that the fault suite's kill -9 of every node loses what a power cut would lose.
pub const HOLD_UNSYNCED_ENV: &str = "WARREN_TEST_HOLD_UNSYNCED_WRITES";

/// The open store and the id sequence of stored messages.
pub struct Durability {
    store: Store,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl Durability {
    /// Opens (and replays) the log under `DATA_DIR/log`. Recovered messages are listed by id only:
    /// [`Durability::read`] brings their payloads back a batch at a time.
    pub fn open(data_dir: &Path) -> Result<(Arc<Self>, Recovered), LogError> {
        let dir = data_dir.join("log");
        let medium = if std::env::var_os(HOLD_UNSYNCED_ENV).is_some() {
            tracing::warn!(
                "{HOLD_UNSYNCED_ENV} is set: writes are held in memory until fsync (the cluster \
                 fault suite's power-loss simulation; durability of confirmed data is unchanged)"
            );
            DiskMedium::holding_unsynced(&dir)?
        } else {
            DiskMedium::new(&dir)?
        };
        let options = StoreOptions {
            recover_payloads: false,
            ..StoreOptions::default()
        };
        let (store, recovered) = Store::open(medium, options)?;
        let next_id = AtomicU64::new(recovered.next_id);
        Ok((Arc::new(Durability { store, next_id }), recovered))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        self.store.write(records, done);
    }

    /// Writes records nobody waits to be durable, reporting the outcome of writing them to
    /// `written` (see [`Store::write_unsynced`]).
    pub fn write_unsynced(&self, records: Vec<Record>, written: Completion) {
        self.store.write_unsynced(records, written);
    }

    /// Reads back stored messages of `queue` (start-up), in the order of `ids`.
    pub fn read(&self, queue: &str, ids: Vec<u64>) -> std::io::Result<Vec<(u64, Bytes)>> {
        self.store.read(queue, ids)
    }

    /// How long the store's current write has been going on (None while it is idle).
    pub fn stalled_for(&self) -> Option<std::time::Duration> {
        self.store.stalled_for()
    }

    /// Closes the log once everything written is durable (shutdown): its files are not touched
    /// again, however long other holders of it live; later writes fail.
    pub fn close(&self) {
        self.store.close();
    }

    /// Blocks until everything written is durable.
    pub fn flush(&self) -> std::io::Result<()> {
        self.store.flush()
    }

    /// Writes the record of a metadata change about one object (a declaration, a deletion).
    pub fn meta(&self, command: &MetaCommand) {
        self.write(vec![records::record(command)], None);
    }

    /// Applies `commands` to `defs` once their records are durable (meta::definitions::commit):
    /// how vhosts, users and permissions change, at start-up and through the admin API.
    pub fn commit(
        &self,
        defs: &mut Definitions,
        commands: &[MetaCommand],
    ) -> Result<(), definitions::CommitError> {
        definitions::commit(defs, commands, |records| self.write_durable(records))
    }

    /// Writes `records` and waits until they are durable (an administrative change is applied
    /// only once it will survive a crash).
    pub(crate) fn write_durable(&self, records: Vec<Record>) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.write(
            records,
            Some(Box::new(move |result| {
                let _ = tx.send(result);
            })),
        );
        rx.recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the store stopped")))
    }
}

/// The local log is where durable queues journal their messages.
impl crate::queue::sink::Journal for Durability {
    fn next_id(&self) -> u64 {
        Durability::next_id(self)
    }

    fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        Durability::write(self, records, done);
    }
}
