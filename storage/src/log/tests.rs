//! The log's contract, run over every medium; then crash, torn-write, corruption and full-disk cases
//! over the fault-injecting medium.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::medium::{DiskMedium, FaultyMedium, Medium, MemoryMedium};
use super::record::Record;
use super::{Log, LogError};
use crate::store::{Store, StoreOptions};

fn enqueue(q: &str, id: u64, body: &str) -> Record {
    Record::Enqueue {
        queue: q.into(),
        id,
        payload: Bytes::from(body.to_string()),
    }
}

fn remove(q: &str, id: u64) -> Record {
    Record::Remove {
        queue: q.into(),
        id,
    }
}

fn put(k: &str, v: &str) -> Record {
    Record::Put {
        key: k.into(),
        value: Bytes::from(v.to_string()),
    }
}

/// Runs `check` with a fresh medium of each kind and a way to reopen the same contents.
fn each_medium(check: impl Fn(&dyn Fn() -> Box<dyn FnMut() -> Box<dyn MediumBox>>)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    check(&move || {
        let path = path.clone();
        Box::new(move || Box::new(DiskMedium::new(&path).unwrap()) as Box<dyn MediumBox>)
    });
    let held = tempfile::tempdir().unwrap();
    let path = held.path().to_path_buf();
    check(&move || {
        let path = path.clone();
        Box::new(move || {
            Box::new(DiskMedium::holding_unsynced(&path).unwrap()) as Box<dyn MediumBox>
        })
    });
    let memory = MemoryMedium::default();
    check(&move || {
        let m = memory.clone();
        Box::new(move || Box::new(m.clone()) as Box<dyn MediumBox>)
    });
    let faulty = FaultyMedium::default();
    check(&move || {
        let m = faulty.clone();
        Box::new(move || Box::new(m.clone()) as Box<dyn MediumBox>)
    });
}

/// Object-safe wrapper so the contract can be written once.
trait MediumBox: Medium {}
impl<T: Medium> MediumBox for T {}
impl Medium for Box<dyn MediumBox> {
    fn list(&mut self) -> std::io::Result<Vec<u64>> {
        (**self).list()
    }
    fn read(&mut self, id: u64) -> std::io::Result<Bytes> {
        (**self).read(id)
    }
    fn read_at(&mut self, id: u64, offset: u64, len: usize) -> std::io::Result<Bytes> {
        (**self).read_at(id, offset, len)
    }
    fn create(&mut self, id: u64) -> std::io::Result<()> {
        (**self).create(id)
    }
    fn append(&mut self, id: u64, data: &[u8]) -> std::io::Result<()> {
        (**self).append(id, data)
    }
    fn sync(&mut self, id: u64) -> std::io::Result<()> {
        (**self).sync(id)
    }
    fn truncate(&mut self, id: u64, len: u64) -> std::io::Result<()> {
        (**self).truncate(id, len)
    }
    fn remove(&mut self, id: u64) -> std::io::Result<()> {
        (**self).remove(id)
    }
    fn describe(&self, id: u64) -> String {
        (**self).describe(id)
    }
}

#[test]
fn contract_replays_definitions_and_live_messages() {
    each_medium(|medium| {
        let mut open = medium();
        let (mut log, recovered) = Log::open(open(), 1 << 20).unwrap();
        assert_eq!(recovered.next_id, 0);
        log.append(&[
            put("q/a", "1"),
            put("q/b", "2"),
            enqueue("a", 1, "m1"),
            enqueue("a", 2, "m2"),
        ])
        .unwrap();
        log.append(&[
            enqueue("b", 3, "m3"),
            remove("a", 1),
            Record::Delete { key: "q/b".into() },
        ])
        .unwrap();
        log.append(&[Record::DropQueue { queue: "b".into() }, put("q/a", "1b")])
            .unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, r) = Log::open(open(), 1 << 20).unwrap();
        assert_eq!(
            r.definitions,
            BTreeMap::from([("q/a".to_string(), Bytes::from("1b"))])
        );
        assert_eq!(
            r.queues
                .get("a")
                .map(|q| q.keys().copied().collect::<Vec<_>>()),
            Some(vec![2])
        );
        assert!(!r.queues.contains_key("b"));
        assert_eq!(r.next_id, 4);
        assert_eq!(r.truncated, None);
    });
}

fn padded(id: u64) -> String {
    format!("{id:0>200}")
}

#[test]
fn contract_recovery_by_id_reads_payloads_back_wherever_compaction_moved_them() {
    each_medium(|medium| {
        let mut open = medium();
        let (mut log, _) = Log::open(open(), 4096).unwrap();
        for id in 0..400 {
            log.append(&[enqueue("q", id, &padded(id))]).unwrap();
        }
        let removals: Vec<Record> = (0..400)
            .filter(|i| i % 10 != 0)
            .map(|i| remove("q", i))
            .collect();
        log.append(&removals).unwrap();
        log.sync().unwrap();
        let before = log.segment_ids();
        for _ in 0..10 {
            log.reclaim().unwrap();
        }
        assert_ne!(log.segment_ids(), before, "reclaiming moved records");
        assert_eq!(
            log.read_message("q", 10).unwrap(),
            Some(Bytes::from(padded(10)))
        );
        assert_eq!(log.read_message("q", 11).unwrap(), None, "removed");
        assert_eq!(log.read_message("other", 10).unwrap(), None);
        drop(log);

        let (mut log, r) = Log::open_with(open(), 4096, false).unwrap();
        let ids: Vec<u64> = r.queues["q"].keys().copied().collect();
        assert_eq!(ids, (0..400).step_by(10).collect::<Vec<_>>());
        assert!(r.queues["q"].values().all(Bytes::is_empty), "ids only");
        for id in ids {
            assert_eq!(
                log.read_message("q", id).unwrap(),
                Some(Bytes::from(padded(id)))
            );
        }
    });
}

#[test]
fn the_store_reads_recovered_messages_back_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        segment_bytes: 4096,
        recover_payloads: false,
        ..StoreOptions::default()
    };
    {
        let (store, _) = Store::open(DiskMedium::new(dir.path()).unwrap(), options).unwrap();
        store.write(
            (0..100).map(|id| enqueue("q", id, &padded(id))).collect(),
            None,
        );
        store.write(vec![remove("q", 5)], None);
        store.flush().unwrap();
    }
    let (store, r) = Store::open(DiskMedium::new(dir.path()).unwrap(), options).unwrap();
    let ids: Vec<u64> = r.queues["q"].keys().copied().collect();
    assert_eq!(ids.len(), 99);
    store.write(vec![remove("q", 7)], None);
    let got = store.read("q", ids).unwrap();
    let want: Vec<(u64, Bytes)> = (0..100)
        .filter(|i| *i != 5 && *i != 7)
        .map(|i| (i, Bytes::from(padded(i))))
        .collect();
    assert_eq!(
        got, want,
        "in order, without what was removed before the read"
    );
}

#[test]
fn contract_space_follows_the_backlog() {
    each_medium(|medium| {
        let mut open = medium();
        let (mut log, _) = Log::open(open(), 4096).unwrap();
        log.append(&[put("q/a", "def")]).unwrap();
        let body = "x".repeat(500);
        // One long-lived message at the start, then a lot of short-lived traffic.
        log.append(&[enqueue("a", 0, "pinned")]).unwrap();
        for id in 1..400 {
            log.append(&[enqueue("a", id, &body)]).unwrap();
            log.append(&[remove("a", id)]).unwrap();
            log.sync().unwrap();
            log.reclaim().unwrap();
        }
        assert!(
            log.segment_ids().len() <= 5,
            "segments kept: {:?}",
            log.segment_ids()
        );
        drop(log);
        let (_, r) = Log::open(open(), 4096).unwrap();
        assert_eq!(r.queues["a"].len(), 1, "only the pinned message is live");
        assert_eq!(r.queues["a"][&0], Bytes::from("pinned"));
        assert_eq!(r.definitions["q/a"], Bytes::from("def"));
    });
}

#[test]
fn torn_tail_is_cut_and_reported_never_served() {
    let medium = FaultyMedium::default();
    let (mut log, _) = Log::open(medium.clone(), 1 << 20).unwrap();
    log.append(&[enqueue("a", 1, "synced")]).unwrap();
    log.sync().unwrap();
    log.append(&[enqueue("a", 2, "lost in the crash")]).unwrap();
    drop(log);
    medium.crash(11); // part of the second record's frame reached the disk
    let (mut log, r) = Log::open(medium.reopen(), 1 << 20).unwrap();
    assert_eq!(r.queues["a"].keys().copied().collect::<Vec<_>>(), vec![1]);
    let (_, offset, dropped) = r.truncated.clone().expect("the torn tail is reported");
    assert!(offset > 0 && dropped == 11, "{:?}", r.truncated);
    // The log keeps working after the cut.
    log.append(&[enqueue("a", 3, "after")]).unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, r) = Log::open(medium.reopen(), 1 << 20).unwrap();
    assert_eq!(
        r.queues["a"].keys().copied().collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert_eq!(r.truncated, None);
}

#[test]
fn corruption_before_the_end_stops_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(DiskMedium::new(dir.path()).unwrap(), 4096).unwrap();
    for id in 0..40 {
        log.append(&[enqueue("a", id, &"y".repeat(300))]).unwrap();
    }
    log.sync().unwrap();
    assert!(log.segment_ids().len() > 1);
    drop(log);
    let first = dir.path().join(format!("{:020}.seg", 1));
    let mut data = std::fs::read(&first).unwrap();
    data[400] ^= 0xff;
    std::fs::write(&first, data).unwrap();
    match Log::open(DiskMedium::new(dir.path()).unwrap(), 4096) {
        Err(LogError::Corrupt { segment, offset }) => {
            assert!(segment.ends_with("00000000000000000001.seg"), "{segment}");
            assert!(offset <= 400, "{offset}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("corruption in the middle must not be accepted"),
    }
}

#[test]
fn a_medium_holding_unsynced_writes_loses_exactly_them_when_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) =
        Log::open(DiskMedium::holding_unsynced(dir.path()).unwrap(), 1 << 20).unwrap();
    log.append(&[enqueue("q", 1, "synced")]).unwrap();
    log.sync().unwrap();
    log.append(&[enqueue("q", 2, "held")]).unwrap();
    // The process still reads what it wrote...
    assert_eq!(
        log.read_message("q", 2).unwrap().as_deref(),
        Some(&b"held"[..])
    );
    // ...but a kill -9 now (no drop, no sync) leaves only the synced record on disk.
    std::mem::forget(log);
    let (_, recovered) = Log::open(DiskMedium::new(dir.path()).unwrap(), 1 << 20).unwrap();
    let ids: Vec<u64> = recovered.queues["q"].keys().copied().collect();
    assert_eq!(ids, vec![1]);
}

/// A tiny deterministic generator (xorshift) so the crash workload is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Many simulated power losses through the group-committing store: every message whose write was
/// confirmed and not removed comes back; nothing appears that was never written.
#[test]
fn power_loss_loses_no_confirmed_message() {
    let medium = FaultyMedium::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let options = StoreOptions {
        segment_bytes: 16 << 10,
        max_batch: 64,
        recover_payloads: true,
    };
    let mut next_id = 0u64;
    let mut removed_confirmed: BTreeSet<u64> = BTreeSet::new();
    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let mut written: BTreeSet<u64> = BTreeSet::new();
    for crash in 0..120 {
        let (store, recovered) = Store::open(medium.reopen(), options).unwrap();
        let live: BTreeSet<u64> = recovered
            .queues
            .get("q")
            .map(|q| q.keys().copied().collect())
            .unwrap_or_default();
        let must_have: BTreeSet<u64> = confirmed
            .lock()
            .unwrap()
            .difference(&removed_confirmed)
            .copied()
            .collect();
        let lost: Vec<_> = must_have.difference(&live).collect();
        assert!(
            lost.is_empty(),
            "crash {crash}: lost confirmed messages {lost:?}"
        );
        let unexpected: Vec<_> = live.difference(&written).collect();
        assert!(
            unexpected.is_empty(),
            "crash {crash}: messages never written {unexpected:?}"
        );
        next_id = next_id.max(recovered.next_id);
        let mut live: Vec<u64> = live.into_iter().collect();
        for _ in 0..(rng.next() % 60) {
            if rng.next().is_multiple_of(3) && !live.is_empty() {
                let id = live.swap_remove((rng.next() as usize) % live.len());
                // A removal may be lost in the crash (the message comes back, a duplicate): only
                // removals that were themselves synced are counted as gone.
                let removed = Arc::new(Mutex::new(false));
                let r = removed.clone();
                store.write(
                    vec![remove("q", id)],
                    Some(Box::new(move |res| *r.lock().unwrap() = res.is_ok())),
                );
                store.flush().unwrap();
                if *removed.lock().unwrap() {
                    removed_confirmed.insert(id);
                }
            } else {
                let id = next_id;
                next_id += 1;
                written.insert(id);
                let c = confirmed.clone();
                store.write(
                    vec![enqueue("q", id, &"z".repeat((rng.next() % 700) as usize))],
                    Some(Box::new(move |res| {
                        if res.is_ok() {
                            c.lock().unwrap().insert(id);
                        }
                    })),
                );
                live.push(id);
            }
        }
        // Crash without waiting for the queued writes: some are confirmed, some are not.
        std::mem::forget(store);
        medium.crash((rng.next() % 40) as usize);
    }
    assert!(
        confirmed.lock().unwrap().len() > 500,
        "the workload confirmed enough messages"
    );
}

#[test]
fn full_disk_fails_the_batch_and_recovers_when_space_returns() {
    let medium = FaultyMedium::default();
    let (store, _) = Store::open(medium.clone(), StoreOptions::default()).unwrap();
    store.write(vec![enqueue("q", 1, "before")], None);
    store.flush().unwrap();
    medium.set_space(Some(10));
    let (tx, rx) = std::sync::mpsc::channel();
    store.write(
        vec![enqueue("q", 2, "does not fit")],
        Some(Box::new(move |r| tx.send(r.is_ok()).unwrap())),
    );
    assert!(!rx.recv().unwrap(), "no confirm without durable storage");
    medium.set_space(None);
    let (tx, rx) = std::sync::mpsc::channel();
    store.write(
        vec![enqueue("q", 3, "after")],
        Some(Box::new(move |r| tx.send(r.is_ok()).unwrap())),
    );
    assert!(
        rx.recv().unwrap(),
        "writes succeed again once space is freed"
    );
    drop(store);
    medium.crash(0);
    let (_, r) = Log::open(medium.reopen(), 1 << 20).unwrap();
    assert_eq!(
        r.queues["q"].keys().copied().collect::<Vec<_>>(),
        vec![1, 3]
    );
}

#[test]
fn failed_fsync_poisons_the_store() {
    let medium = FaultyMedium::default();
    let (store, _) = Store::open(medium.clone(), StoreOptions::default()).unwrap();
    medium.fail_next_sync();
    assert!(store.flush().is_err());
    store.write(vec![enqueue("q", 1, "x")], None);
    assert!(
        store.flush().is_err(),
        "after a failed fsync nothing is confirmed until restart"
    );
}

#[test]
fn compaction_copies_pinned_messages_forward() {
    let medium = MemoryMedium::default();
    let (mut log, _) = Log::open(medium.clone(), 4096).unwrap();
    log.set_compact_after(1);
    log.append(&[enqueue("a", 0, "pinned")]).unwrap();
    for id in 1..60 {
        log.append(&[enqueue("a", id, &"w".repeat(400)), remove("a", id)])
            .unwrap();
        log.sync().unwrap();
        log.reclaim().unwrap();
    }
    assert!(
        !log.segment_ids().contains(&1),
        "the pinned first segment was compacted away"
    );
    drop(log);
    let (_, r) = Log::open(medium, 4096).unwrap();
    assert_eq!(r.queues["a"].keys().copied().collect::<Vec<_>>(), vec![0]);
}

#[test]
fn a_dead_active_segment_is_retired() {
    let medium = MemoryMedium::default();
    let (mut log, _) = Log::open(medium.clone(), 64 << 10).unwrap();
    log.append(&[put("q/a", "definition")]).unwrap();
    for id in 0..60 {
        log.append(&[enqueue("a", id, &"v".repeat(500))]).unwrap();
    }
    let ids: Vec<Record> = (0..60).map(|id| remove("a", id)).collect();
    log.append(&ids).unwrap();
    log.sync().unwrap();
    let before = log.segment_ids();
    log.reclaim().unwrap();
    let after = log.segment_ids();
    assert_eq!(after.len(), 1, "{before:?} -> {after:?}");
    assert_ne!(
        after, before,
        "the dead segment was replaced by a fresh one"
    );
    drop(log);
    let (_, r) = Log::open(medium, 64 << 10).unwrap();
    assert_eq!(
        r.definitions["q/a"],
        Bytes::from("definition"),
        "live definitions were carried over"
    );
    assert!(r.queues.get("a").is_none_or(|q| q.is_empty()));
}

#[test]
fn removals_free_space_even_on_a_full_disk() {
    let medium = FaultyMedium::default();
    let (store, _) = Store::open(
        medium.clone(),
        StoreOptions {
            segment_bytes: 64 << 10,
            max_batch: 64,
            recover_payloads: true,
        },
    )
    .unwrap();
    for id in 0..50 {
        store.write(vec![enqueue("q", id, &"f".repeat(1000))], None);
    }
    store.flush().unwrap();
    medium.set_space(Some(0));
    // The disk is full: the removals cannot be written, yet acknowledging everything frees the segment.
    let (tx, rx) = std::sync::mpsc::channel();
    store.write(
        (0..50).map(|id| remove("q", id)).collect(),
        Some(Box::new(move |r| tx.send(r.is_ok()).unwrap())),
    );
    assert!(!rx.recv().unwrap(), "the removals could not be written");
    medium.set_space(Some(10_000));
    store.write(vec![enqueue("q", 100, "fits again")], None);
    store.flush().unwrap();
    drop(store);
    let (_, r) = Log::open(medium.reopen(), 64 << 10).unwrap();
    assert_eq!(r.queues["q"].keys().copied().collect::<Vec<_>>(), vec![100]);
}

#[test]
fn a_quiet_store_retires_its_dead_active_segment_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        segment_bytes: 64 << 20,
        ..StoreOptions::default()
    };
    let (store, _) = Store::open(DiskMedium::new(dir.path()).unwrap(), options).unwrap();
    let disk_use = || -> u64 {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let body = "x".repeat(10_000);
    for round in 0..2u64 {
        let ids = round * 1000..round * 1000 + 200;
        store.write(
            ids.clone().map(|id| enqueue("q", id, &body)).collect(),
            None,
        );
        store.flush().unwrap();
        store.write(ids.map(|id| remove("q", id)).collect(), None);
        store.flush().unwrap();
    }
    // The first round's segment was retired at once; the second waits out the interval (no more
    // writes come to trigger it) and is retired by the idle store.
    assert!(disk_use() > 1 << 20, "retiring is rate-limited");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while disk_use() > 64 << 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} bytes still used",
            disk_use()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A checksummed record holding the largest id (only a corrupt log has one) does not overflow the
/// next id at recovery (found by a fuzzing helper: a panic in debug builds, a wrap in release).
#[test]
fn the_largest_message_id_does_not_overflow_recovery() {
    let memory = MemoryMedium::default();
    let (mut log, _) = Log::open(memory.clone(), 1 << 20).unwrap();
    log.append(&[enqueue("q", u64::MAX, "x")]).unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, recovered) = Log::open(memory, 1 << 20).unwrap();
    assert_eq!(recovered.next_id, u64::MAX);
}

/// A medium whose fdatasync blocks until the test lets it go (a frozen filesystem).
#[derive(Clone, Default)]
struct StallingMedium {
    inner: MemoryMedium,
    frozen: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl StallingMedium {
    fn set_frozen(&self, frozen: bool) {
        *self.frozen.0.lock().unwrap() = frozen;
        self.frozen.1.notify_all();
    }
}

impl Medium for StallingMedium {
    fn list(&mut self) -> std::io::Result<Vec<u64>> {
        self.inner.list()
    }
    fn read(&mut self, id: u64) -> std::io::Result<Bytes> {
        self.inner.read(id)
    }
    fn create(&mut self, id: u64) -> std::io::Result<()> {
        self.inner.create(id)
    }
    fn append(&mut self, id: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.append(id, data)
    }
    fn sync(&mut self, id: u64) -> std::io::Result<()> {
        let (lock, thawed) = &*self.frozen;
        let mut frozen = lock.lock().unwrap();
        while *frozen {
            frozen = thawed.wait(frozen).unwrap();
        }
        self.inner.sync(id)
    }
    fn truncate(&mut self, id: u64, len: u64) -> std::io::Result<()> {
        self.inner.truncate(id, len)
    }
    fn remove(&mut self, id: u64) -> std::io::Result<()> {
        self.inner.remove(id)
    }
    fn describe(&self, id: u64) -> String {
        self.inner.describe(id)
    }
}

#[test]
fn a_stalled_disk_shows_as_a_growing_stall_until_it_completes() {
    let medium = StallingMedium::default();
    let (store, _) = Store::open(medium.clone(), StoreOptions::default()).unwrap();
    assert_eq!(store.stalled_for(), None);
    medium.set_frozen(true);
    let (tx, rx) = std::sync::mpsc::channel();
    store.write(
        vec![enqueue("q", 1, "a")],
        Some(Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        })),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.stalled_for() < Some(std::time::Duration::from_millis(200)) {
        assert!(std::time::Instant::now() < deadline, "no stall reported");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        rx.try_recv().is_err(),
        "nothing completes while the disk is frozen"
    );
    medium.set_frozen(false);
    assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap());
    store.flush().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.stalled_for().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "still stalled after the thaw"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_closed_store_has_written_everything_and_touches_its_files_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(
        DiskMedium::new(dir.path()).unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    store.write(vec![put("kept", "1")], None);
    store.close();
    let (tx, rx) = std::sync::mpsc::channel();
    store.write(
        vec![put("late", "2")],
        Some(Box::new(move |result| {
            let _ = tx.send(result);
        })),
    );
    assert!(rx.recv().unwrap().is_err(), "a write after close fails");
    // Another store may now own the directory: the closed one is still alive and writes nothing.
    let (_, recovered) = Store::open(
        DiskMedium::new(dir.path()).unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    assert!(recovered.definitions.contains_key("kept"));
    assert!(!recovered.definitions.contains_key("late"));
    drop(store);
}

#[test]
fn a_segment_full_of_live_definitions_waits_for_their_deletion_instead_of_being_copied() {
    let big = |k: &str| Record::Put {
        key: k.into(),
        value: Bytes::from(vec![7u8; 1500]),
    };
    let (mut log, _) = Log::open(MemoryMedium::default(), 4096).unwrap();
    // Segment 1: two large live definitions (a cluster node's Raft entries, say).
    log.append(&[big("raft/1/entry/1"), big("raft/1/entry/2")])
        .unwrap();
    // Segment 2 takes what comes next.
    log.append(&[big("raft/1/entry/3"), big("raft/1/entry/4")])
        .unwrap();
    log.sync().unwrap();
    log.reclaim().unwrap();
    assert!(
        log.segment_ids().contains(&1),
        "not copied forward while its definitions live"
    );
    log.append(&[
        Record::Delete {
            key: "raft/1/entry/1".into(),
        },
        Record::Delete {
            key: "raft/1/entry/2".into(),
        },
    ])
    .unwrap();
    log.sync().unwrap();
    log.reclaim().unwrap();
    assert!(
        !log.segment_ids().contains(&1),
        "gone once they are deleted"
    );

    // A segment with only a small definition left is copied forward and goes.
    let (mut log, _) = Log::open(MemoryMedium::default(), 4096).unwrap();
    log.append(&[put("vhost", "/")]).unwrap();
    log.append(&[big("a"), big("b"), big("c")]).unwrap();
    log.sync().unwrap();
    log.reclaim().unwrap();
    assert!(!log.segment_ids().contains(&1));
}

#[test]
fn segments_of_live_definitions_are_neither_retired_nor_copied_as_if_they_were_dead() {
    let big = |k: String| Record::Put {
        key: k,
        value: Bytes::from(vec![7u8; 1500]),
    };
    let (mut log, _) = Log::open(MemoryMedium::default(), 4096).unwrap();
    // Many segments, each two large live definitions: crowded, and free of messages.
    for i in 0..8 {
        log.append(&[
            big(format!("raft/1/entry/{}", 2 * i)),
            big(format!("raft/1/entry/{}", 2 * i + 1)),
        ])
        .unwrap();
    }
    log.sync().unwrap();
    let before = log.segment_ids();
    std::thread::sleep(super::RETIRE_INTERVAL);
    log.reclaim().unwrap();
    assert_eq!(
        log.segment_ids(),
        before,
        "live definitions are live bytes: no segment is sparse, the active one is not dead"
    );
}

#[test]
fn a_write_nobody_waits_for_is_synced_with_the_next_one_someone_does() {
    let medium = StallingMedium::default();
    let (store, _) = Store::open(medium.clone(), StoreOptions::default()).unwrap();
    medium.set_frozen(true);
    store.write(vec![enqueue("q", 1, "a")], None);
    // Taken and written without a sync: a read after it is answered although the disk is frozen
    // (reads are answered after their batch's writes).
    let taken = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        let store = &store;
        scope.spawn(move || {
            let _ = tx.send(store.read("q", vec![1]).map(|r| r.len()));
        });
        let taken = rx.recv_timeout(std::time::Duration::from_secs(5));
        // (Thawed before the scope joins its reader, should it still wait.)
        if taken.is_err() {
            medium.set_frozen(false);
        }
        taken
    });
    assert_eq!(
        taken.ok().and_then(Result::ok),
        Some(1),
        "the read waited for a sync of a write nobody waits for"
    );
    // The next write someone waits for syncs both (a quiet store syncs what it wrote, too).
    a_waited_write_completes_once_thawed(&store, &medium);
}

/// On `medium`, frozen: a write someone waits for completes only once the disk is thawed.
fn a_waited_write_completes_once_thawed(store: &Store, medium: &StallingMedium) {
    let (tx, rx) = std::sync::mpsc::channel();
    store.write(
        vec![enqueue("q", 2, "b")],
        Some(Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        })),
    );
    assert!(rx
        .recv_timeout(std::time::Duration::from_millis(300))
        .is_err());
    medium.set_frozen(false);
    assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap());
}

#[test]
fn definitions_move_forward_a_bounded_amount_per_reclaim() {
    // 3 MiB of live definitions (a cluster node's unpurged Raft entries) in the first segment,
    // under a quarter of the 64 MiB segment limit: worth copying, but in COPY_BUDGET steps, so no
    // single reclaim writes it all while commits wait.
    let medium = MemoryMedium::default();
    let (mut log, _) = Log::open(medium.clone(), 64 << 20).unwrap();
    let value = "v".repeat(100 << 10);
    for i in 0..30 {
        log.append(&[put(&format!("keep/{i:02}"), &value)]).unwrap();
    }
    // Start a new segment so the first is no longer the active one.
    log.append(&[put("big", &"x".repeat(62 << 20))]).unwrap();
    log.append(&[put("after", "1")]).unwrap();
    log.sync().unwrap();
    assert!(log.segment_ids().len() >= 2, "{:?}", log.segment_ids());
    let first = log.segment_ids()[0];
    let len_before = medium_len(&medium);
    log.reclaim().unwrap();
    let copied = medium_len(&medium) - len_before;
    assert!(
        log.segment_ids().contains(&first),
        "one reclaim did not copy everything"
    );
    assert!(
        copied <= (2 << 20) + (200 << 10),
        "{copied} bytes copied at once"
    );
    for _ in 0..4 {
        log.reclaim().unwrap();
    }
    assert!(
        !log.segment_ids().contains(&first),
        "drained after a few reclaims"
    );
    drop(log);
    let (_, r) = Log::open(medium, 64 << 20).unwrap();
    for i in 0..30 {
        assert_eq!(r.definitions[&format!("keep/{i:02}")].len(), 100 << 10);
    }
}

fn medium_len(medium: &MemoryMedium) -> u64 {
    let mut m = medium.clone();
    m.list()
        .unwrap()
        .into_iter()
        .map(|id| m.read(id).unwrap().len() as u64)
        .sum()
}

#[test]
fn a_write_unsynced_is_reported_once_written_without_a_sync_of_its_own() {
    let medium = StallingMedium::default();
    let (store, _) = Store::open(medium.clone(), StoreOptions::default()).unwrap();
    medium.set_frozen(true);
    let (reported, rx) = std::sync::mpsc::channel();
    store.write_unsynced(
        vec![enqueue("q", 1, "a")],
        Box::new(move |r| {
            let _ = reported.send(r.is_ok());
        }),
    );
    // Reported while the disk cannot sync: nothing waited for an fsync.
    let outcome = rx.recv_timeout(std::time::Duration::from_secs(5));
    if outcome.is_err() {
        medium.set_frozen(false); // (so the store can stop)
    }
    assert_eq!(
        outcome.ok(),
        Some(true),
        "the unsynced write waited for a sync"
    );
    // A write someone waits for still waits for the sync that makes both durable.
    a_waited_write_completes_once_thawed(&store, &medium);
}
