//! openraft's storage test suite against the log store on the memory and disk media, and recovery
//! from the command log: what was appended, voted, committed, truncated and purged comes back.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use futures_util::TryStreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::vote::leader_id_adv::LeaderId;
use openraft::{EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, StorageError};
use parking_lot::Mutex;
use warren_storage::log::medium::{DiskMedium, Medium, MemoryMedium};
use warren_storage::log::record::Record;
use warren_storage::store::{Completion, Store, StoreOptions};

use super::{LogStore, RecordWriter};
use crate::cluster::raft::codec::{decode, encode};
use crate::cluster::raft::{Answer, Entry, LogId, StoredMembership, Types, Vote};

struct StoreWriter(Store);

impl RecordWriter for StoreWriter {
    fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        self.0.write(records, done);
    }
}

/// A state machine that only counts what it applies: the suite needs one beside the log store.
#[derive(Clone, Default)]
struct CountingMachine(Arc<Mutex<Counted>>);

#[derive(Default)]
struct Counted {
    applied: Option<LogId>,
    membership: StoredMembership,
    proposals: u64,
    snapshot: Option<(SnapshotMetaOf<Types>, Vec<u8>)>,
}

impl RaftSnapshotBuilder<Types> for CountingMachine {
    type SnapshotData = Vec<u8>;
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<Types, Vec<u8>>, io::Error> {
        let mut c = self.0.lock();
        let meta = SnapshotMetaOf::<Types> {
            last_log_id: c.applied,
            last_membership: c.membership.clone(),
        };
        let data = c.proposals.to_be_bytes().to_vec();
        c.snapshot = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<Types, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<Types> for CountingMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let c = self.0.lock();
        Ok((c.applied, c.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<Types>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            {
                let mut c = self.0.lock();
                c.applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(_) => c.proposals += 1,
                    EntryPayload::Membership(m) => {
                        c.membership = StoredMembership::new(Some(entry.log_id), m)
                    }
                }
            }
            if let Some(responder) = responder {
                responder.send(Answer(Ok(())));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<Types>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let mut c = self.0.lock();
        let count: [u8; 8] = snapshot
            .as_slice()
            .try_into()
            .map_err(|_| io::Error::other("snapshot"))?;
        c.proposals = u64::from_be_bytes(count);
        c.applied = meta.last_log_id;
        c.membership = meta.last_membership.clone();
        c.snapshot = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<Types, Vec<u8>>>, io::Error> {
        Ok(self
            .0
            .lock()
            .snapshot
            .clone()
            .map(|(meta, snapshot)| SnapshotOf::<Types, Vec<u8>> { meta, snapshot }))
    }
}

fn open<M: Medium>(medium: M) -> (Arc<StoreWriter>, BTreeMap<String, bytes::Bytes>) {
    let (store, recovered) = Store::open(medium, StoreOptions::default()).expect("store opens");
    (Arc::new(StoreWriter(store)), recovered.definitions)
}

struct OnMemory;

impl StoreBuilder<Types, LogStore, CountingMachine, ()> for OnMemory {
    async fn build(&self) -> Result<((), LogStore, CountingMachine), StorageError<Types>> {
        let (writer, recovered) = open(MemoryMedium::default());
        let store = LogStore::recover(0, writer, &recovered).expect("empty log");
        Ok(((), store, CountingMachine::default()))
    }
}

struct OnDisk;

impl StoreBuilder<Types, LogStore, CountingMachine, tempfile::TempDir> for OnDisk {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, CountingMachine), StorageError<Types>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (writer, recovered) = open(DiskMedium::new(dir.path()).expect("disk medium"));
        let store = LogStore::recover(7, writer, &recovered).expect("empty log");
        Ok((dir, store, CountingMachine::default()))
    }
}

#[tokio::test]
async fn openraft_storage_suite_on_the_memory_medium() {
    Suite::test_all(OnMemory).await.expect("suite passes");
}

#[tokio::test]
async fn openraft_storage_suite_on_the_disk_medium() {
    Suite::test_all(OnDisk).await.expect("suite passes");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id: 1 }, index)
}

#[tokio::test]
async fn a_reopened_log_has_what_was_appended_voted_committed_truncated_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (writer, recovered) = open(DiskMedium::new(dir.path()).unwrap());
        let mut store = LogStore::recover(3, writer.clone(), &recovered).unwrap();
        let (tx, rx) = <Types as openraft::type_config::TypeConfigExt>::oneshot();
        let entries: Vec<Entry> = (0..10).map(|i| Entry::new_blank(log_id(1, i))).collect();
        store
            .append(entries, openraft::storage::IOFlushed::signal(tx))
            .await
            .unwrap();
        rx.await.unwrap().unwrap();
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        store.save_committed(Some(log_id(1, 6))).await.unwrap();
        store.truncate_after(Some(log_id(1, 7))).await.unwrap();
        store.purge(log_id(1, 2)).await.unwrap();
        // Another group's records live beside this one's and stay apart.
        let mut other = LogStore::recover(4, writer.clone(), &BTreeMap::new()).unwrap();
        other.save_vote(&Vote::new(9, 3)).await.unwrap();
        writer.0.flush().unwrap();
    }
    let (writer, recovered) = open(DiskMedium::new(dir.path()).unwrap());
    let mut store = LogStore::recover(3, writer.clone(), &recovered).unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 7)));
    let indexes: Vec<u64> = store
        .try_get_log_entries(0..100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, vec![3, 4, 5, 6, 7]);
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 1))
    );
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 6)));
    let mut other = LogStore::recover(4, writer, &recovered).unwrap();
    assert_eq!(other.read_vote().await.unwrap(), Some(Vote::new(9, 3)));
}

#[test]
fn a_hole_in_a_recovered_log_is_refused() {
    let mut recovered = BTreeMap::new();
    for index in [0u64, 1, 3] {
        let entry = Entry::new_blank(log_id(1, index));
        recovered.insert(
            format!("raft/0/entry/{index:020}"),
            bytes::Bytes::from(encode(|w| w.entry(&entry))),
        );
    }
    let (writer, _) = open(MemoryMedium::default());
    let error = LogStore::recover(0, writer, &recovered)
        .err()
        .expect("refused");
    assert!(error.0.contains("hole"), "{error}");
    // The codec's own check is what a corrupt value meets.
    assert!(decode(b"\x01", |r| r.entry()).is_err());
}

/// Keeps what the log store writes, completing every write at once.
#[derive(Default)]
struct Spy(Mutex<Vec<Record>>);

impl RecordWriter for Spy {
    fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        self.0.lock().extend(records);
        if let Some(done) = done {
            done(Ok(()));
        }
    }
}

#[tokio::test]
async fn truncation_deletes_the_newest_entries_first() {
    let spy = Arc::new(Spy::default());
    let mut store = LogStore::recover(0, spy.clone(), &BTreeMap::new()).unwrap();
    let entries: Vec<Entry> = (0..5).map(|i| Entry::new_blank(log_id(1, i))).collect();
    store
        .append(entries, openraft::storage::IOFlushed::noop())
        .await
        .unwrap();
    spy.0.lock().clear();
    store.truncate_after(Some(log_id(1, 1))).await.unwrap();
    let deleted: Vec<String> = spy
        .0
        .lock()
        .iter()
        .map(|r| match r {
            Record::Delete { key } => key.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    // A crash part-way leaves a shorter log, never one with a hole.
    let expected: Vec<String> = [4u64, 3, 2]
        .iter()
        .map(|i| format!("raft/0/entry/{i:020}"))
        .collect();
    assert_eq!(deleted, expected);
}

/// Fails every write.
struct Failing;

impl RecordWriter for Failing {
    fn write(&self, _records: Vec<Record>, done: Option<Completion>) {
        if let Some(done) = done {
            done(Err(io::Error::other("disk full")));
        }
    }
}

#[tokio::test]
async fn after_a_failed_write_nobody_waited_for_every_operation_fails() {
    let writer = Arc::new(super::FailFast::new(Arc::new(Failing)));
    let mut store = LogStore::recover(0, writer, &BTreeMap::new()).unwrap();
    // A purge waits for nothing: its failure is only remembered...
    store.purge(log_id(1, 0)).await.unwrap();
    // ...and every later operation reports it, so openraft stops the group on this node.
    let error = store
        .append(
            vec![Entry::new_blank(log_id(1, 1))],
            openraft::storage::IOFlushed::noop(),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("disk full"), "{error}");
    assert!(store.save_vote(&Vote::new(2, 1)).await.is_err());
}

/// Notes which writes asked to be waited for (a sync) and which did not.
#[derive(Default)]
struct SyncSpy(Mutex<Vec<(&'static str, bool)>>);

impl RecordWriter for SyncSpy {
    fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        self.note(&records, done.is_some());
        if let Some(done) = done {
            done(Ok(()));
        }
    }
    fn write_unsynced(&self, records: Vec<Record>, written: Completion) {
        self.note(&records, false);
        written(Err(io::Error::other("disk full")));
    }
}

impl SyncSpy {
    fn note(&self, records: &[Record], waits: bool) {
        let kind = match &records[0] {
            Record::Put { key, .. } if key.contains("/entry/") => "entry",
            Record::Put { key, .. } if key.ends_with("committed") => "committed",
            Record::Put { key, .. } if key.ends_with("vote") => "vote",
            _ => "other",
        };
        self.0.lock().push((kind, waits));
    }
}

#[tokio::test]
async fn only_what_openraft_waits_for_costs_a_sync_and_a_failure_of_the_rest_is_still_seen() {
    let spy = Arc::new(SyncSpy::default());
    let writer = Arc::new(super::FailFast::new(spy.clone()));
    let mut store = LogStore::recover(0, writer, &BTreeMap::new()).unwrap();
    store.save_vote(&Vote::new(1, 1)).await.unwrap();
    store
        .append(
            vec![Entry::new_blank(log_id(1, 0))],
            openraft::storage::IOFlushed::noop(),
        )
        .await
        .unwrap();
    // The committed index after every commit: nothing waits for it (it doubled the fsyncs).
    store.save_committed(Some(log_id(1, 0))).await.unwrap();
    assert_eq!(
        *spy.0.lock(),
        vec![("vote", true), ("entry", true), ("committed", false)]
    );
    // Its (reported) failure stops the group all the same.
    let error = store.save_vote(&Vote::new(2, 1)).await.unwrap_err();
    assert!(error.to_string().contains("disk full"), "{error}");
}

/// The keys `spy` was given, in order, and forgets them.
fn written_keys(spy: &Spy) -> Vec<String> {
    std::mem::take(&mut *spy.0.lock())
        .into_iter()
        .map(|r| match r {
            Record::Put { key, .. } | Record::Delete { key } => key,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_shards_committed_goes_with_its_next_append_and_otherwise_at_once() {
    let spy = Arc::new(Spy::default());
    let mut shard = LogStore::recover(3, spy.clone(), &BTreeMap::new())
        .unwrap()
        .committed_with_appends();
    let append = |i: u64| vec![Entry::new_blank(log_id(1, i))];
    let noop = openraft::storage::IOFlushed::noop;
    shard.append(append(0), noop()).await.unwrap();
    written_keys(&spy);
    shard.save_committed(Some(log_id(1, 0))).await.unwrap();
    assert_eq!(written_keys(&spy), Vec::<String>::new());
    assert_eq!(shard.read_committed().await.unwrap(), Some(log_id(1, 0)));
    shard.append(append(1), noop()).await.unwrap();
    assert_eq!(
        written_keys(&spy),
        ["raft/3/entry/00000000000000000001", "raft/3/committed"]
    );
    // Once written, it is not written again with the next append.
    shard.append(append(2), noop()).await.unwrap();
    assert_eq!(written_keys(&spy), ["raft/3/entry/00000000000000000002"]);
    let recovered: BTreeMap<String, bytes::Bytes> = BTreeMap::from([(
        "raft/3/committed".to_string(),
        bytes::Bytes::from(encode(|w| w.opt_log_id(&Some(log_id(1, 0))))),
    )]);
    let mut again = LogStore::recover(3, spy.clone(), &recovered).unwrap();
    assert_eq!(again.read_committed().await.unwrap(), Some(log_id(1, 0)));

    let mut meta = LogStore::recover(0, spy.clone(), &BTreeMap::new()).unwrap();
    meta.append(append(0), noop()).await.unwrap();
    written_keys(&spy);
    meta.save_committed(Some(log_id(1, 0))).await.unwrap();
    assert_eq!(written_keys(&spy), ["raft/0/committed"]);
}

/// The record values `spy` was given, and forgets them.
fn written_values(spy: &Spy) -> Vec<bytes::Bytes> {
    std::mem::take(&mut *spy.0.lock())
        .into_iter()
        .filter_map(|r| match r {
            Record::Put { value, .. } => Some(value),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_entry_is_encoded_once_for_the_leaders_log_the_request_and_the_followers_log() {
    use crate::cluster::raft::codec::Encoded;
    use crate::cluster::raft::{Proposal, QueueOp};
    use openraft::raft::AppendEntriesRequest;

    let proposal = Proposal {
        origin: 1,
        ops: vec![QueueOp::Enqueue {
            queue: "/\nnotifications.info".into(),
            id: 9,
            payload: bytes::Bytes::from(vec![7u8; 1024]),
        }]
        .into(),
        ..Default::default()
    };
    let entry = Entry::new_normal(log_id(2, 0), proposal.clone());
    let noop = openraft::storage::IOFlushed::noop;

    // The leader's log encodes the entry and keeps that encoding with it.
    let leader_spy = Arc::new(Spy::default());
    let mut leader = LogStore::recover(3, leader_spy.clone(), &BTreeMap::new()).unwrap();
    leader.append(vec![entry.clone()], noop()).await.unwrap();
    let [logged] = <[bytes::Bytes; 1]>::try_from(written_values(&leader_spy)).unwrap();
    assert_eq!(decode(&logged, |r| r.entry()).unwrap(), entry);
    let read = leader.try_get_log_entries(0..1).await.unwrap();
    assert_eq!(Encoded::entry(&read[0]).as_ptr(), logged.as_ptr());

    // The request carries those bytes; the follower keeps them as a slice of what it received
    // and writes that slice as its record.
    let request = AppendEntriesRequest::<Types> {
        vote: Vote::new_committed(2, 1),
        prev_log_id: None,
        entries: read,
        leader_commit: None,
    };
    let body = bytes::Bytes::from(encode(|w| w.append_request(&request)));
    let received = decode(&body, |r| r.append_request(Some(&body))).unwrap();
    assert_eq!(received.entries, vec![entry.clone()]);
    let follower_spy = Arc::new(Spy::default());
    let mut follower = LogStore::recover(3, follower_spy.clone(), &BTreeMap::new()).unwrap();
    follower.append(received.entries, noop()).await.unwrap();
    let [stored] = <[bytes::Bytes; 1]>::try_from(written_values(&follower_spy)).unwrap();
    assert_eq!(stored, logged);
    let within = body.as_ptr_range();
    assert!(
        within.contains(&stored.as_ptr()),
        "the follower copied the entry"
    );

    // The same proposal in another entry (a new leader's) is encoded for that entry.
    let moved = Entry::new_normal(log_id(3, 0), proposal);
    let mut carried = moved.clone();
    Encoded::keep(&mut carried, logged.clone());
    let again = Encoded::entry(&carried);
    assert_ne!(again, logged);
    assert_eq!(decode(&again, |r| r.entry()).unwrap(), moved);
    assert_eq!(encode(|w| w.entry(&carried)), again.to_vec());
}
