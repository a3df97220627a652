use std::time::Instant;

use bytes::Bytes;

use super::*;
use crate::message::memory::MemoryAccount;
use crate::message::Message;

fn message(n: u64, priority: u8, persistent: bool) -> Arc<Message> {
    Arc::new(Message {
        exchange: "x".into(),
        routing_key: format!("k{n}"),
        publisher: Arc::from("nova"),
        properties: Bytes::from_static(&[0x10, 0x00, 0x02]),
        body: Bytes::from(format!("body-{n:08}").repeat(10)),
        priority,
        expiration_ms: None,
        charge: None,
        persistent,
        published_at_ms: 1_700_000_000_000 + n,
        stored: std::sync::OnceLock::new(),
    })
}

fn entry(seq: u64, priority: u8) -> Entry {
    Entry {
        seq,
        message: message(seq, priority, seq.is_multiple_of(3)),
        redelivered: seq.is_multiple_of(5),
        priority,
        expires_at: seq
            .is_multiple_of(7)
            .then(|| Instant::now() + std::time::Duration::from_secs(60)),
        returns: seq % 4,
        store_id: seq.is_multiple_of(3).then_some(1000 + seq),
    }
}

fn setup(budget: u64) -> (tempfile::TempDir, Arc<Account>, Ready) {
    let dir = tempfile::tempdir().unwrap();
    let alarms = Arc::new(Account::new(1 << 40));
    let paging = Paging::new(
        &dir.path().join("spill"),
        budget,
        alarms.clone(),
        0.5,
        Instant::now(),
    )
    .unwrap();
    let ready = Ready::new(Some((paging.clone(), paging.budget(false, None, None))));
    (dir, alarms, ready)
}

fn spill_files(dir: &tempfile::TempDir) -> usize {
    std::fs::read_dir(dir.path().join("spill")).unwrap().count()
}

#[test]
fn a_backlog_past_the_budget_is_paged_and_comes_back_whole_and_in_order() {
    let (dir, alarms, mut ready) = setup(64 << 10);
    for seq in 0..5000 {
        ready.push(entry(seq, 0));
    }
    assert_eq!(ready.len(), 5000);
    assert!(ready.paged() > 4500, "paged {}", ready.paged());
    assert!(ready.memory_cost <= 64 << 10);
    assert!(spill_files(&dir) >= 1);
    let mut seq = 0;
    while let Some(e) = ready.pop_front() {
        let want = entry(seq, 0);
        assert_eq!(
            (e.seq, e.redelivered, e.returns, e.store_id, e.priority),
            (want.seq, want.redelivered, want.returns, want.store_id, 0)
        );
        assert_eq!(e.expires_at.is_some(), want.expires_at.is_some());
        assert_eq!(e.message.body, want.message.body);
        assert_eq!(e.message.routing_key, want.message.routing_key);
        assert_eq!(e.message.properties, want.message.properties);
        assert_eq!(e.message.publisher, want.message.publisher);
        assert_eq!(e.message.persistent, want.message.persistent);
        assert_eq!(e.message.published_at_ms, want.message.published_at_ms);
        assert!(
            ready.memory_cost <= (64 << 10) + (1 << 20),
            "reading back stays near the budget"
        );
        seq += 1;
    }
    assert_eq!(
        (seq, ready.len(), ready.bytes(), ready.paged()),
        (5000, 0, 0, 0)
    );
    assert_eq!(
        alarms.used(),
        0,
        "messages read back are charged, then released"
    );
}

#[test]
fn priorities_stay_in_order_across_memory_and_runs() {
    let (_dir, _alarms, mut ready) = setup(8 << 10);
    let mut pushed = Vec::new();
    for seq in 0..3000u64 {
        let priority = ((seq * 7919) % 5) as u8;
        ready.push(entry(seq, priority));
        pushed.push((std::cmp::Reverse(priority), seq));
        // Take a few now and then, as consumers would.
        if seq % 10 == 9 {
            pushed.sort();
            let e = ready.pop_front().unwrap();
            let first = pushed.remove(0);
            assert_eq!((std::cmp::Reverse(e.priority), e.seq), first);
        }
    }
    pushed.sort();
    for want in pushed {
        let e = ready.pop_front().unwrap();
        assert_eq!((std::cmp::Reverse(e.priority), e.seq), want);
    }
    assert!(ready.is_empty());
}

#[test]
fn requeued_entries_go_back_before_the_paged_ones() {
    let (_dir, _alarms, mut ready) = setup(4 << 10);
    for seq in 0..500 {
        ready.push(entry(seq, 0));
    }
    let taken: Vec<Entry> = (0..20).map(|_| ready.pop_front().unwrap()).collect();
    for e in taken.into_iter().rev() {
        ready.insert(e);
    }
    for seq in 500..600 {
        ready.push(entry(seq, 0));
    }
    let order: Vec<u64> = std::iter::from_fn(|| ready.pop_front().map(|e| e.seq)).collect();
    assert_eq!(order, (0..600).collect::<Vec<_>>());
}

#[test]
fn clearing_returns_the_log_ids_of_paged_entries_and_deletes_the_files() {
    let (dir, _alarms, mut ready) = setup(4 << 10);
    for seq in 0..300 {
        ready.push(entry(seq, (seq % 2) as u8));
    }
    let (entries, ids) = ready.clear(true);
    let mut all: Vec<u64> = entries
        .iter()
        .filter_map(|e| e.store_id)
        .chain(ids)
        .collect();
    all.sort_unstable();
    let want: Vec<u64> = (0..300).filter(|s| s % 3 == 0).map(|s| 1000 + s).collect();
    assert_eq!(all, want);
    assert_eq!((ready.len(), ready.bytes()), (0, 0));
    assert_eq!(spill_files(&dir), 0);
}

#[test]
fn a_lazy_queue_keeps_one_message_in_memory_and_a_length_budget_counts_messages() {
    let dir = tempfile::tempdir().unwrap();
    let alarms = Arc::new(Account::new(1 << 40));
    let paging = Paging::new(
        &dir.path().join("spill"),
        1 << 30,
        alarms,
        0.5,
        Instant::now(),
    )
    .unwrap();
    let mut lazy = Ready::new(Some((paging.clone(), paging.budget(true, None, None))));
    for seq in 0..10 {
        lazy.push(entry(seq, 0));
    }
    assert_eq!((lazy.len(), lazy.paged()), (10, 9));
    let mut short = Ready::new(Some((paging.clone(), paging.budget(false, None, Some(3)))));
    for seq in 0..10 {
        short.push(entry(seq, 0));
    }
    assert_eq!(short.paged(), 7);
    assert_eq!(
        paging.budget(false, Some(1 << 40), None).bytes,
        1 << 30,
        "a queue cannot raise the operator's budget"
    );
    assert_eq!(
        paging.budget(true, Some(1000), None).bytes,
        0,
        "nor raise a lazy queue's"
    );
}

#[test]
fn memory_pressure_pages_new_arrivals_of_any_queue_with_a_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let alarms = Arc::new(Account::new(10_000));
    let paging = Paging::new(
        &dir.path().join("spill"),
        1 << 30,
        alarms.clone(),
        0.5,
        Instant::now(),
    )
    .unwrap();
    let mut ready = Ready::new(Some((paging.clone(), paging.budget(false, None, None))));
    ready.push(entry(0, 0));
    ready.push(entry(1, 0));
    assert_eq!(ready.paged(), 0);
    alarms.charge(6_000);
    ready.push(entry(2, 0));
    assert_eq!(ready.paged(), 1);
    alarms.release(6_000);
}

/// A memory account that only counts (the broker's is its memory alarm).
#[derive(Debug)]
struct Account {
    used: std::sync::atomic::AtomicU64,
    high_watermark: u64,
}

impl Account {
    fn new(high_watermark: u64) -> Self {
        Account {
            used: std::sync::atomic::AtomicU64::new(0),
            high_watermark,
        }
    }
}

impl MemoryAccount for Account {
    fn charge(&self, bytes: u64) {
        self.used
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn release(&self, bytes: u64) {
        self.used
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn high_watermark(&self) -> u64 {
        self.high_watermark
    }
}
