//! A queue's ready messages: in delivery order — priority descending, then enqueue sequence — partly in
//! memory and, past the queue's memory budget, partly in spill runs (one per priority level).
//!
//! The invariant that keeps this simple: for each priority, every entry in memory comes before every
//! entry in that priority's run. New messages therefore go to the run whenever it is not empty (or the
//! budget is spent), and requeued ones always go back to memory (they were read from the front). The
//! head is in memory unless a run holds a higher priority than memory's first entry, in which case a
//! batch of that run is read in first.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use warren_storage::spill::Spill;

use super::counters::ReadyCounters;
use super::paging::{cost, Budget, Paging};
use super::Entry;

#[derive(Debug)]
pub(crate) struct Ready {
    memory: VecDeque<Entry>,
    /// What the entries in memory are counted for (see [`cost`]).
    memory_cost: u64,
    /// Body bytes of every ready message, in memory or paged (for `x-max-length-bytes`).
    bytes: u64,
    /// Paged entries by priority, highest first; a run is removed when it empties.
    runs: BTreeMap<Reverse<u8>, Spill>,
    /// Where to page and the queue's budget (None: everything stays in memory).
    paging: Option<(Arc<Paging>, Budget)>,
    /// Spill writes are failing (logged once, until they succeed again).
    spill_failing: bool,
    /// Arrivals and departures, readable without the queue's lock (flow control).
    flow: Arc<ReadyCounters>,
}

/// Where `entry` belongs in memory. A fresh publish almost always goes last (its sequence number is
/// the highest), so that is checked before searching.
fn position(memory: &VecDeque<Entry>, entry: &Entry) -> usize {
    match memory.back() {
        None => 0,
        Some(last) if last.order() < entry.order() => memory.len(),
        Some(_) => memory.partition_point(|e| e.order() < entry.order()),
    }
}

impl Ready {
    /// Its budget from now on, for these arguments (a policy changed `queue-mode` or the
    /// in-memory limits): new arrivals page past it; what is in memory stays there.
    pub fn rebudget(&mut self, lazy: bool, max_bytes: Option<u64>, max_length: Option<u64>) {
        if let Some((paging, budget)) = &mut self.paging {
            *budget = paging.budget(lazy, max_bytes, max_length);
        }
    }

    /// Without `paging`, everything stays in memory (unit tests, benchmarks).
    pub fn new(paging: Option<(Arc<Paging>, Budget)>) -> Self {
        Ready {
            memory: VecDeque::new(),
            memory_cost: 0,
            bytes: 0,
            runs: BTreeMap::new(),
            paging,
            spill_failing: false,
            flow: Arc::default(),
        }
    }

    /// The counters flow control reads (ready = arrived − departed).
    pub fn flow(&self) -> &Arc<ReadyCounters> {
        &self.flow
    }

    pub fn len(&self) -> u64 {
        self.memory.len() as u64 + self.paged()
    }

    /// [`Ready::len`] as AMQP's 32-bit message counts carry it (saturating).
    pub(crate) fn len_u32(&self) -> u32 {
        u32::try_from(self.len()).unwrap_or(u32::MAX)
    }

    pub fn is_empty(&self) -> bool {
        // A run is removed when it empties.
        self.memory.is_empty() && self.runs.is_empty()
    }

    /// Body bytes of every ready message.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries held on disk rather than in memory.
    pub fn paged(&self) -> u64 {
        self.runs.values().map(Spill::len).sum()
    }

    /// Adds a new message (a publish, or one recovered at start-up). Returns whether it became the
    /// head (its deadline then needs watching).
    pub fn push(&mut self, entry: Entry) -> bool {
        self.bytes += entry.message.body_size();
        self.flow.arrive(1);
        let level = Reverse(entry.priority);
        if let Some((paging, budget)) = &self.paging {
            if self.runs.contains_key(&level) || self.over_budget(paging, budget, &entry) {
                let run = self.runs.entry(level).or_insert_with(|| paging.new_run());
                match paging.write(run, &entry) {
                    // Kept in the run's write buffer all the same (see Spill::push).
                    Err(e) if !self.spill_failing => {
                        self.spill_failing = true;
                        tracing::warn!(error = %e, "cannot write a queue's backlog to its spill file; it stays in memory until a write succeeds");
                    }
                    Ok(()) if self.spill_failing && run.buffered() == 0 => {
                        self.spill_failing = false;
                        tracing::info!("a queue's spill file takes writes again");
                    }
                    _ => {}
                }
                return false;
            }
        }
        self.keep_in_memory(entry) == 0
    }

    /// Puts back an entry that was taken from the front (requeue, an undeliverable push), in its
    /// original place. Returns whether it became the head.
    pub fn insert(&mut self, entry: Entry) -> bool {
        self.bytes += entry.message.body_size();
        self.flow.arrive(1);
        self.keep_in_memory(entry) == 0
    }

    fn over_budget(&self, paging: &Paging, budget: &Budget, entry: &Entry) -> bool {
        // One entry is always let in, so a consumer that keeps up never waits for the disk.
        !self.memory.is_empty()
            && (self.memory_cost + cost(entry) > budget.bytes
                || budget
                    .messages
                    .is_some_and(|max| self.memory.len() as u64 >= max)
                || paging.under_pressure())
    }

    fn keep_in_memory(&mut self, entry: Entry) -> usize {
        self.memory_cost += cost(&entry);
        let at = position(&self.memory, &entry);
        self.memory.insert(at, entry);
        at
    }

    /// The next entry to deliver (reading a batch back from disk when it is there).
    pub fn front(&mut self) -> Option<&Entry> {
        while let Some(&Reverse(top)) = self.runs.keys().next() {
            if self.memory.front().is_some_and(|e| e.priority >= top) {
                break;
            }
            self.page_in(top);
        }
        self.memory.front()
    }

    pub fn pop_front(&mut self) -> Option<Entry> {
        self.front()?;
        let e = self.memory.pop_front()?;
        self.memory_cost -= cost(&e);
        self.bytes -= e.message.body_size();
        self.flow.depart(1);
        debug_assert_eq!(self.flow.backlog(), self.len(), "flow counters track len()");
        Some(e)
    }

    /// Reads a batch of the run of priority `level` into memory.
    fn page_in(&mut self, level: u8) {
        let (Some((paging, budget)), Some(run)) =
            (&self.paging, self.runs.get_mut(&Reverse(level)))
        else {
            return;
        };
        let batch = (budget.bytes / 4).clamp(16 << 10, 1 << 20) as usize;
        let mut lost = 0u64;
        let mut entries = Vec::new();
        match run.pop(batch) {
            Ok(records) => {
                for record in records {
                    match paging.read(record) {
                        Some(e) => entries.push(e),
                        None => lost += 1,
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = run.len(), "cannot read a queue's backlog back from its spill file; those messages are lost (persistent ones return from the log at the next start)");
                lost += run.len();
                run.clear();
            }
        }
        if run.is_empty() {
            self.runs.remove(&Reverse(level));
        }
        for e in entries {
            self.keep_in_memory(e);
        }
        self.flow.depart(lost);
        if lost > 0 && self.runs.is_empty() {
            // The lost messages' sizes are unknown; with nothing left on disk the count is exact again.
            self.bytes = self.memory.iter().map(|e| e.message.body_size()).sum();
        }
    }

    /// Every ready entry in delivery order, for a snapshot. Paged entries are read back for it and
    /// written to fresh runs, so they stay paged.
    pub fn entries(&mut self) -> Vec<Entry> {
        let mut all: Vec<Entry> = self.memory.iter().cloned().collect();
        let mut lost = 0;
        if let Some((paging, _)) = &self.paging {
            for run in self.runs.values_mut() {
                let mut fresh = paging.new_run();
                while !run.is_empty() {
                    let records = match run.pop(1 << 20) {
                        Ok(records) => records,
                        Err(e) => {
                            tracing::error!(error = %e, messages = run.len(), "cannot read a queue's backlog back from its spill file for a snapshot; those messages are lost (persistent ones return from the log at the next start)");
                            lost += run.len();
                            run.clear();
                            break;
                        }
                    };
                    for record in records {
                        let Some(entry) = paging.read(record.clone()) else {
                            lost += 1;
                            continue;
                        };
                        all.push(entry);
                        // Kept in the run's write buffer when the write fails (see Spill::push).
                        if let Err(e) = fresh.push(&[&record]) {
                            tracing::warn!(error = %e, "cannot rewrite a queue's spill file for a snapshot");
                        }
                    }
                }
                *run = fresh;
            }
        }
        // A run is removed when it empties.
        self.runs.retain(|_, run| !run.is_empty());
        self.flow.depart(lost);
        all.sort_by_key(Entry::order);
        all
    }

    /// Drops every ready entry. Returns those that were in memory and, when `want_ids`, the log ids of
    /// the paged ones (read from their records), so a durable queue can forget them.
    pub fn clear(&mut self, want_ids: bool) -> (Vec<Entry>, Vec<u64>) {
        self.flow.depart(self.len());
        let entries: Vec<Entry> = self.memory.drain(..).collect();
        let mut ids = Vec::new();
        // Dropping a run deletes its files.
        for (_, mut run) in std::mem::take(&mut self.runs) {
            while want_ids && !run.is_empty() {
                match run.pop(1 << 20) {
                    Ok(records) => ids.extend(records.iter().filter_map(Paging::store_id)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read a purged queue's spill file; its persistent messages return at the next start");
                        break;
                    }
                }
            }
        }
        self.memory_cost = 0;
        self.bytes = 0;
        (entries, ids)
    }
}

#[cfg(test)]
mod tests;
