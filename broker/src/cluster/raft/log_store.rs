//! A Raft group's log, vote and progress kept in the node's command log (HA.md §5.5): each entry is
//! a `Put` under `raft/<group>/entry/<index>`, the vote, the committed id and the last purged id
//! are `Put`s under their own keys, and truncating or purging entries deletes their keys. The
//! log's last-write-wins compaction then keeps exactly the live state, and the store thread's group
//! commit gives openraft what it asks of a log store: writes applied in the order they are made,
//! and one fdatasync for a batch of appends from every group before their `IOFlushed` callbacks
//! run. Entries are also kept in memory (readable as soon as `append` returns, as openraft
//! requires); the metadata group's log is small and purged after each snapshot.
//!
//! Recovery reads the group's records back from the recovered definitions map (the broker hands
//! over every `raft/` key and reads none of them as metadata).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use parking_lot::Mutex;
use warren_storage::log::record::Record;
use warren_storage::store::Completion;

use super::codec::{decode, encode, DecodeError, Encoded};
use super::{Entry, LogId, Types, Vote};

/// Every key of every group starts with this; nothing else in the log does.
pub const KEY_PREFIX: &str = "raft/";

/// The key of a group's latest state-machine snapshot, beside its log.
pub fn snapshot_key(group: u32) -> String {
    format!("{KEY_PREFIX}{group}/sm/snapshot")
}

/// The record that stores `meta` and `data` as group `group`'s latest snapshot.
pub fn snapshot_record(
    group: u32,
    meta: &openraft::type_config::alias::SnapshotMetaOf<Types>,
    data: &[u8],
) -> Record {
    Record::Put {
        key: snapshot_key(group),
        value: Bytes::from(super::codec::encode(|w| w.snapshot_body(meta, data))),
    }
}

/// Where a group's records go: the node's command log.
pub trait RecordWriter: Send + Sync + 'static {
    /// Queues `records` (in order after everything queued before); `done` runs once they are
    /// durable, or failed.
    fn write(&self, records: Vec<Record>, done: Option<Completion>);

    /// Queues `records` that nobody waits to be durable (the next write that is waited for makes
    /// them so); `written` learns whether writing them failed. By default a write that waits.
    fn write_unsynced(&self, records: Vec<Record>, written: Completion) {
        self.write(records, Some(written));
    }

    /// Why an earlier write failed, if one did: a group stops writing after that (see
    /// [`FailFast`]).
    fn failed(&self) -> Option<String> {
        None
    }

    /// How long the disk has been busy with a write that has not completed (see the disk
    /// watchdog, `cluster::node`); None when it is idle or cannot tell.
    fn stalled_for(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A writer that remembers the first failed write, including writes nobody waits for (a
/// truncation, a purge, the state machine's progress): after one, every operation of the groups
/// using it fails, so openraft stops them on this node rather than going on from a log whose
/// writes did not all happen. A restart recovers from what is on disk.
pub struct FailFast {
    inner: Arc<dyn RecordWriter>,
    failure: Arc<Mutex<Option<String>>>,
}

impl FailFast {
    pub fn new(inner: Arc<dyn RecordWriter>) -> Self {
        FailFast {
            inner,
            failure: Arc::new(Mutex::new(None)),
        }
    }
}

impl RecordWriter for FailFast {
    fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        let waited = done.is_some();
        let failure = self.failure.clone();
        let noted = Box::new(move |result: io::Result<()>| {
            if let Err(e) = &result {
                failure.lock().get_or_insert_with(|| e.to_string());
            }
            if let Some(done) = done {
                done(result);
            }
        });
        match waited {
            // Watching a write nobody waits for must not make it cost an fsync of its own (the
            // committed index after every commit: it doubled each node's fsyncs per entry).
            false => self.inner.write_unsynced(records, noted),
            true => self.inner.write(records, Some(noted)),
        }
    }

    fn failed(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    fn stalled_for(&self) -> Option<std::time::Duration> {
        self.inner.stalled_for()
    }
}

/// Writes `records` and waits until they are durable.
pub(crate) async fn write_durable(
    writer: &dyn RecordWriter,
    records: Vec<Record>,
) -> io::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    writer.write(
        records,
        Some(Box::new(move |result| {
            let _ = tx.send(result);
        })),
    );
    rx.await
        .unwrap_or_else(|_| Err(io::Error::other("the store stopped")))
}

/// The error every operation returns after a failed write.
pub(crate) fn check_writes(writer: &dyn RecordWriter) -> io::Result<()> {
    match writer.failed() {
        None => Ok(()),
        Some(why) => Err(io::Error::other(format!(
            "an earlier write of this node's Raft records failed ({why}); restart the node"
        ))),
    }
}

impl RecordWriter for crate::persist::Durability {
    fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        crate::persist::Durability::write(self, records, done);
    }
    fn write_unsynced(&self, records: Vec<Record>, written: Completion) {
        crate::persist::Durability::write_unsynced(self, records, written);
    }

    fn stalled_for(&self) -> Option<std::time::Duration> {
        crate::persist::Durability::stalled_for(self)
    }
}

#[derive(Debug, Default)]
struct State {
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// A queue shard's `committed` not written yet: it goes with the next append.
    committed_unwritten: bool,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
    /// The stored size of `entries` (what they hold in memory, about).
    bytes: u64,
    /// Each entry's stored size, for `bytes`.
    sizes: BTreeMap<u64, u64>,
}

impl State {
    fn note(&mut self, index: u64, size: u64) {
        self.bytes += size;
        if let Some(old) = self.sizes.insert(index, size) {
            self.bytes -= old;
        }
    }

    /// Forgets the sizes of the entries from `from` on (truncated).
    fn forget_from(&mut self, from: u64) {
        let gone = self.sizes.split_off(&from);
        self.bytes -= gone.values().sum::<u64>();
    }

    /// Forgets the sizes of the entries up to `upto` (purged).
    fn forget_upto(&mut self, upto: u64) {
        let kept = self.sizes.split_off(&(upto + 1));
        let gone = std::mem::replace(&mut self.sizes, kept);
        self.bytes -= gone.values().sum::<u64>();
    }
}

/// One group's log store (and, cloned, its log reader).
#[derive(Clone)]
pub struct LogStore {
    group: u32,
    state: Arc<Mutex<State>>,
    writer: Arc<dyn RecordWriter>,
    /// The committed index is written with the next append rather than at once (queue shards).
    committed_with_appends: bool,
}

impl LogStore {
    /// The store of `group`, from whatever of its records `recovered` holds (the definitions the
    /// command log recovered; other keys are ignored).
    pub fn recover(
        group: u32,
        writer: Arc<dyn RecordWriter>,
        recovered: &BTreeMap<String, Bytes>,
    ) -> Result<LogStore, DecodeError> {
        let keys = Keys(group);
        let mut state = State::default();
        let prefix = keys.prefix();
        for (key, value) in recovered.range(prefix.clone()..) {
            let Some(name) = key.strip_prefix(&prefix) else {
                break;
            };
            match name {
                "vote" => state.vote = Some(decode(value, |r| r.vote())?),
                "committed" => state.committed = decode(value, |r| r.opt_log_id())?,
                "purged" => state.purged = decode(value, |r| r.opt_log_id())?,
                // The group's state machine keeps its own records beside the log.
                _ if name.starts_with("sm/") => {}
                _ if name.starts_with("entry/") => {
                    let mut entry = decode(value, |r| r.entry())?;
                    Encoded::keep(&mut entry, value.clone());
                    state.note(entry.log_id.index, value.len() as u64);
                    state.entries.insert(entry.log_id.index, entry);
                }
                other => {
                    return Err(DecodeError(format!(
                        "unknown Raft record {key:?} ({other})"
                    )))
                }
            }
        }
        // Entries at or below the purge point may outlive it (their deletions were not yet
        // durable when the node stopped): they are gone.
        if let Some(purged) = state.purged {
            state.entries = state.entries.split_off(&(purged.index + 1));
            state.forget_upto(purged.index);
        }
        let first = state.purged.map_or(0, |p| p.index + 1);
        for (expected, index) in (first..).zip(state.entries.keys()) {
            if *index != expected {
                return Err(DecodeError(format!(
                    "group {group}: entry {index} follows a hole (expected {expected})"
                )));
            }
        }
        Ok(LogStore {
            group,
            state: Arc::new(Mutex::new(state)),
            writer,
            committed_with_appends: false,
        })
    }

    /// Writes the committed index with the next append instead of at once: a queue shard
    /// commits an entry per publish or batch, and waking the store thread for each sits on the
    /// confirm's path. After a restart the group's state machine may then be that far behind
    /// until this node sees the next commit, which openraft allows; for a shard it is harmless
    /// (a node hosts only after committing an entry of its own term, and nobody reads a
    /// follower's replica). The metadata group keeps writing it at once, so a restarted node
    /// serves the definitions it had applied.
    pub fn committed_with_appends(mut self) -> Self {
        self.committed_with_appends = true;
        self
    }

    fn keys(&self) -> Keys {
        Keys(self.group)
    }

    /// The stored size of the entries not yet purged (they are also held in memory): what the
    /// group's size-triggered snapshot watches (node.rs).
    pub fn unpurged_bytes(&self) -> u64 {
        self.state.lock().bytes
    }
}

/// The keys of one group's records.
struct Keys(u32);

impl Keys {
    fn prefix(&self) -> String {
        format!("{KEY_PREFIX}{}/", self.0)
    }
    fn entry(&self, index: u64) -> String {
        // Zero-padded, so the recovered map lists entries in index order.
        format!("{}entry/{index:020}", self.prefix())
    }
    fn named(&self, name: &str) -> String {
        format!("{}{name}", self.prefix())
    }
}

/// A record of `value` under `key`. The log keeps the value as it is until its key is written
/// again or deleted (an entry until it is purged), so it holds no spare capacity (shrinking a
/// large allocation in place does not copy it).
fn put(key: String, value: Vec<u8>) -> Record {
    Record::Put {
        key,
        value: Bytes::from(value.into_boxed_slice()),
    }
}

impl RaftLogReader<Types> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let state = self.state.lock();
        Ok(state.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.state.lock().vote)
    }
}

impl RaftLogStorage<Types> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Types>, io::Error> {
        let state = self.state.lock();
        let last = state
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(state.purged);
        Ok(LogState {
            last_purged_log_id: state.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        check_writes(&*self.writer)?;
        self.state.lock().vote = Some(*vote);
        let record = put(self.keys().named("vote"), encode(|w| w.vote(vote)));
        write_durable(&*self.writer, vec![record]).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        check_writes(&*self.writer)?;
        if self.committed_with_appends {
            let mut state = self.state.lock();
            state.committed = committed;
            state.committed_unwritten = true;
            return Ok(());
        }
        self.state.lock().committed = committed;
        let record = put(
            self.keys().named("committed"),
            encode(|w| w.opt_log_id(&committed)),
        );
        // Its order among the other writes is what matters; nothing waits for it.
        self.writer.write(vec![record], None);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.state.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<Types>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        check_writes(&*self.writer)?;
        let keys = self.keys();
        let mut records = Vec::new();
        {
            let mut state = self.state.lock();
            for mut entry in entries {
                // A follower's entry arrives encoded; the leader's is encoded here, once, and
                // kept for the AppendEntries that carry it.
                let value = Encoded::entry(&entry);
                Encoded::keep(&mut entry, value.clone());
                state.note(entry.log_id.index, value.len() as u64);
                records.push(Record::Put {
                    key: keys.entry(entry.log_id.index),
                    value,
                });
                state.entries.insert(entry.log_id.index, entry);
            }
            if std::mem::take(&mut state.committed_unwritten) {
                // After the entries: never ahead of what this log holds.
                let committed = encode(|w| w.opt_log_id(&state.committed));
                records.push(put(keys.named("committed"), committed));
            }
        }
        self.writer.write(
            records,
            Some(Box::new(move |result| callback.io_completed(result))),
        );
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        check_writes(&*self.writer)?;
        let from = last.map_or(0, |l| l.index + 1);
        let keys = self.keys();
        let removed = {
            let mut state = self.state.lock();
            state.forget_from(from);
            state.entries.split_off(&from)
        };
        // Newest first: a crash part-way leaves a shorter log, never one with a hole.
        let records = removed
            .keys()
            .rev()
            .map(|index| Record::Delete {
                key: keys.entry(*index),
            })
            .collect();
        self.writer.write(records, None);
        Ok(())
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), io::Error> {
        check_writes(&*self.writer)?;
        let keys = self.keys();
        let purged = {
            let mut state = self.state.lock();
            let kept = state.entries.split_off(&(upto.index + 1));
            state.purged = Some(upto);
            state.forget_upto(upto.index);
            std::mem::replace(&mut state.entries, kept)
        };
        // The purge point first: a crash between the two leaves entries recovery drops anyway.
        let mut records = vec![put(
            keys.named("purged"),
            encode(|w| w.opt_log_id(&Some(upto))),
        )];
        records.extend(purged.keys().map(|index| Record::Delete {
            key: keys.entry(*index),
        }));
        self.writer.write(records, None);
        // Thousands of entries holding up to hundreds of MiB of messages: freeing them took a
        // runtime worker 100-200 ms (a confirm stall on every node at each snapshot, measured
        // with benches/quorum.sh's paced row), so they are freed on a blocking thread.
        tokio::task::spawn_blocking(move || drop(purged));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
