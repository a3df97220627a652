//! The command log: definitions and persistent messages as records appended to numbered segments,
//! replayed at start to the exact state of the last sync.
//!
//! Space follows the live backlog, not the history: every record's segment is tracked while it matters
//! (a message until it is removed, a definition until it is replaced or deleted). The oldest segment is
//! deleted once nothing in it is live; if a few live messages pin it while newer segments pile up, they
//! are copied forward first. Segments are only ever deleted oldest-first, so a removal or deletion record
//! never disappears before the older record it cancels.

pub mod medium;
pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;

use medium::Medium;
use record::{read_at, Read, Record};

/// What recovery found: definitions and each queue's messages (id order), as of the last sync.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub definitions: BTreeMap<String, Bytes>,
    /// Each queue's messages by id: their payloads, or (when opened with `payloads` false) empty
    /// placeholders, the payloads to be read back with [`Log::read_message`] in batches.
    pub queues: BTreeMap<String, BTreeMap<u64, Bytes>>,
    /// One more than the highest message id ever seen.
    pub next_id: u64,
    /// A torn or corrupt tail that was cut off: (segment description, offset, bytes dropped).
    pub truncated: Option<(String, u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    #[error(
        "corrupt record in {segment} at offset {offset}, before the end of the log; refusing to start \
         (restore the file, or move it away to discard what it holds)"
    )]
    Corrupt { segment: String, offset: u64 },
}

#[derive(Debug, Default)]
struct Segment {
    len: u64,
    /// Messages enqueued in this segment and not yet removed, and their payload bytes.
    live_messages: u64,
    live_bytes: u64,
    /// Definitions whose current value was written in this segment, and their bytes.
    live_definitions: u64,
    live_definition_bytes: u64,
}

/// The log over a medium. Not thread-safe by itself: the store (`store.rs`, its thread) owns it on one thread.
pub struct Log<M: Medium> {
    medium: M,
    segments: BTreeMap<u64, Segment>,
    /// Where each live message was written: queue → id → its record's place.
    messages: HashMap<String, HashMap<u64, Place>>,
    /// Current definitions and the segment holding each.
    definitions: HashMap<String, (Bytes, u64)>,
    segment_limit: u64,
    /// Sealed segments tolerated behind a pinned oldest one before its live messages are copied forward.
    compact_after: usize,
    /// When the active segment was last retired: under steady traffic full segments roll over by
    /// themselves, so retiring (two directory fsyncs) is kept to once per [`RETIRE_INTERVAL`].
    last_retired: Option<Instant>,
    /// The last write failed for lack of space: reclaim without waiting.
    space_short: bool,
    /// The buffer each append encodes its records into, kept: a batch of Raft entries is a
    /// megabyte or more, and a fresh buffer that size is fresh pages the kernel zeroes each time.
    encoded: Vec<u8>,
}

/// Reading one record at its place costs about as much as reading this many bytes sequentially;
/// copying forward reads records one by one while that is cheaper than reading the segment whole.
const PLACE_READ_COST: u64 = 2048;

/// Least time between two retirements of a mostly dead active segment (unless space is short).
pub(crate) const RETIRE_INTERVAL: Duration = Duration::from_secs(1);
/// The largest encode buffer an append keeps for the next one.
const KEPT_ENCODE_BUFFER: usize = 16 << 20;
/// The most definition bytes one reclaim copies forward (see `Log::copy_forward`).
const COPY_BUDGET: u64 = 2 << 20;

/// Where a record is: segment, offset and framed length.
#[derive(Debug, Clone, Copy)]
struct Place {
    segment: u64,
    offset: u64,
    len: u64,
}

impl<M: Medium> Log<M> {
    /// Opens the log, replaying every segment. A bad record at the end of the last segment (a torn
    /// write) is cut off and reported; a bad record anywhere else is an error.
    pub fn open(medium: M, segment_limit: u64) -> Result<(Self, Recovered), LogError> {
        Self::open_with(medium, segment_limit, true)
    }

    /// [`Log::open`]; without `payloads`, recovered messages are listed by id only, so recovery
    /// holds one segment at a time in memory rather than the whole backlog.
    pub(crate) fn open_with(
        mut medium: M,
        segment_limit: u64,
        payloads: bool,
    ) -> Result<(Self, Recovered), LogError> {
        let ids = medium.list()?;
        let mut log = Log {
            medium,
            segments: BTreeMap::new(),
            messages: HashMap::new(),
            definitions: HashMap::new(),
            segment_limit: segment_limit.max(4096),
            compact_after: 3,
            last_retired: None,
            space_short: false,
            encoded: Vec::new(),
        };
        let mut recovered = Recovered::default();
        for (i, id) in ids.iter().enumerate() {
            let data = log.medium.read(*id)?;
            let mut offset = 0;
            loop {
                match read_at(&data, offset) {
                    Read::Record(r, next) => {
                        let place = Place {
                            segment: *id,
                            offset: offset as u64,
                            len: (next - offset) as u64,
                        };
                        log.apply(place, &r, &mut recovered, payloads);
                        offset = next;
                    }
                    Read::End => break,
                    Read::Invalid if i + 1 == ids.len() => {
                        log.medium.truncate(*id, offset as u64)?;
                        recovered.truncated = Some((
                            log.medium.describe(*id),
                            offset as u64,
                            (data.len() - offset) as u64,
                        ));
                        break;
                    }
                    Read::Invalid => {
                        return Err(LogError::Corrupt {
                            segment: log.medium.describe(*id),
                            offset: offset as u64,
                        })
                    }
                }
            }
            log.segments.entry(*id).or_default().len = offset as u64;
        }
        if log.segments.is_empty() {
            log.medium.create(1)?;
            log.segments.insert(1, Segment::default());
        }
        Ok((log, recovered))
    }

    fn active(&self) -> u64 {
        self.segments.keys().next_back().copied().unwrap_or(1)
    }

    /// Tracks a record written at `place` (during replay also builds `recovered`).
    fn apply(&mut self, place: Place, record: &Record, recovered: &mut Recovered, payloads: bool) {
        // A definition's value is copied: a slice would keep the whole segment read at replay in
        // memory.
        let owned = match record {
            Record::Put { value, .. } => Some(Bytes::copy_from_slice(value)),
            _ => None,
        };
        self.track(place, record, owned.clone());
        match record {
            Record::Put { key, .. } => {
                recovered
                    .definitions
                    .insert(key.clone(), owned.unwrap_or_default());
            }
            Record::Delete { key } => {
                recovered.definitions.remove(key);
            }
            Record::Enqueue { queue, id, payload } => {
                recovered.queues.entry(queue.clone()).or_default().insert(
                    *id,
                    if payloads {
                        payload.clone()
                    } else {
                        Bytes::new()
                    },
                );
                // A corrupt but checksummed record may hold any id: never overflow on it.
                recovered.next_id = recovered.next_id.max(id.saturating_add(1));
            }
            Record::Remove { queue, id } => {
                if let Some(q) = recovered.queues.get_mut(queue) {
                    q.remove(id);
                }
            }
            Record::DropQueue { queue } => {
                recovered.queues.remove(queue);
            }
        }
    }

    fn release_definition(&mut self, segment: u64, bytes: u64) {
        if let Some(s) = self.segments.get_mut(&segment) {
            s.live_definitions = s.live_definitions.saturating_sub(1);
            s.live_definition_bytes = s.live_definition_bytes.saturating_sub(bytes);
        }
    }

    fn release_message(&mut self, place: Place) {
        if let Some(s) = self.segments.get_mut(&place.segment) {
            s.live_messages = s.live_messages.saturating_sub(1);
            s.live_bytes = s.live_bytes.saturating_sub(place.len);
        }
    }

    /// Reads back the payload of a live message (None if it is not live).
    pub(crate) fn read_message(&mut self, queue: &str, id: u64) -> io::Result<Option<Bytes>> {
        let Some(place) = self.messages.get(queue).and_then(|q| q.get(&id)).copied() else {
            return Ok(None);
        };
        let data = self
            .medium
            .read_at(place.segment, place.offset, place.len as usize)?;
        match read_at(&data, 0) {
            Read::Record(Record::Enqueue { payload, .. }, _) => Ok(Some(payload)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} at offset {}: the message record no longer reads back",
                    self.medium.describe(place.segment),
                    place.offset
                ),
            )),
        }
    }

    /// Tracks a record written at `place`; a definition's value is kept as `owned` when given
    /// (a copy made at replay), else as the appended record holds it (no copy).
    fn track(&mut self, place: Place, record: &Record, owned: Option<Bytes>) {
        let segment = place.segment;
        match record {
            Record::Put { key, value } => {
                let kept = owned.unwrap_or_else(|| value.clone());
                if let Some((old_value, old)) =
                    self.definitions.insert(key.clone(), (kept, segment))
                {
                    self.release_definition(old, (key.len() + old_value.len()) as u64);
                }
                let seg = self.segments.entry(segment).or_default();
                seg.live_definitions += 1;
                seg.live_definition_bytes += (key.len() + value.len()) as u64;
            }
            Record::Delete { key } => {
                if let Some((old_value, old)) = self.definitions.remove(key) {
                    self.release_definition(old, (key.len() + old_value.len()) as u64);
                }
            }
            Record::Enqueue { queue, id, .. } => {
                if let Some(old) = self
                    .messages
                    .entry(queue.clone())
                    .or_default()
                    .insert(*id, place)
                {
                    self.release_message(old);
                }
                let seg = self.segments.entry(segment).or_default();
                seg.live_messages += 1;
                seg.live_bytes += place.len;
            }
            Record::Remove { queue, id } => {
                if let Some(old) = self.messages.get_mut(queue).and_then(|q| q.remove(id)) {
                    self.release_message(old);
                }
            }
            Record::DropQueue { queue } => {
                for (_, old) in self.messages.remove(queue).unwrap_or_default() {
                    self.release_message(old);
                }
            }
        }
    }

    /// Appends records to the active segment (starting a new one when it is full). Not durable until
    /// [`Log::sync`]. On a failed write the segment is cut back, so the log stays well-formed.
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.encoded);
        buf.clear();
        let appended = self.append_encoded(records, &mut buf);
        // Kept unless a rare huge write grew it (a large message): that goes back to the allocator.
        if buf.capacity() <= KEPT_ENCODE_BUFFER {
            self.encoded = buf;
        }
        appended
    }

    fn append_encoded(&mut self, records: &[Record], buf: &mut Vec<u8>) -> io::Result<()> {
        let mut spans = Vec::with_capacity(records.len());
        for r in records {
            let start = buf.len();
            r.encode(buf);
            spans.push((start as u64, (buf.len() - start) as u64));
        }
        let mut active = self.active();
        let len = self.segments.get(&active).map_or(0, |s| s.len);
        if len > 0 && len + buf.len() as u64 > self.segment_limit {
            self.medium.sync(active)?;
            active += 1;
            self.medium.create(active)?;
            self.segments.insert(active, Segment::default());
        }
        let len = self.segments.get(&active).map_or(0, |s| s.len);
        if let Err(e) = self.medium.append(active, buf) {
            let _ = self.medium.truncate(active, len);
            return Err(e);
        }
        if let Some(s) = self.segments.get_mut(&active) {
            s.len += buf.len() as u64;
        }
        for (r, (start, size)) in records.iter().zip(spans) {
            let place = Place {
                segment: active,
                offset: len + start,
                len: size,
            };
            self.track(place, r, None);
        }
        self.space_short = false;
        Ok(())
    }

    /// After a write failed for lack of space: removals in it still count for space accounting, so
    /// reclaiming can free the segments they empty. Safe because deleting a segment is itself the
    /// removal; if the segment stays, a crash can only bring such a message back once more (allowed).
    pub(crate) fn account_unwritten_removals(&mut self, records: &[Record]) {
        self.space_short = true;
        let active = self.active();
        for r in records {
            if matches!(r, Record::Remove { .. } | Record::DropQueue { .. }) {
                let place = Place {
                    segment: active,
                    offset: 0,
                    len: 0,
                };
                self.track(place, r, None);
            }
        }
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.medium.sync(self.active())
    }

    /// Deletes leading segments that hold nothing live. When too many segments wait behind an oldest
    /// one that is mostly dead (under a quarter of a segment still live), copies its live records
    /// forward — at most once per call, so the work per batch stays bounded. Call after a sync.
    pub(crate) fn reclaim(&mut self) -> io::Result<()> {
        // A large active segment that is mostly dead is retired too (its few live records copied into a
        // fresh segment), so acked messages free their space even when traffic never fills a segment
        // (a small disk, a quiet broker).
        let active = self.active();
        let due = self.space_short
            || self
                .last_retired
                .is_none_or(|t| t.elapsed() >= RETIRE_INTERVAL);
        if let Some(seg) = self.segments.get(&active) {
            if due
                && seg.len > (self.segment_limit / 4).min(1 << 20)
                && seg.live_bytes + seg.live_definition_bytes < seg.len / 8
            {
                self.last_retired = Some(Instant::now());
                self.medium.create(active + 1)?;
                self.segments.insert(active + 1, Segment::default());
                self.copy_forward(active)?;
            }
        }
        let mut copied = false;
        loop {
            let active = self.active();
            let Some((&oldest, seg)) = self.segments.iter().next() else {
                return Ok(());
            };
            if oldest == active {
                return Ok(());
            }
            if seg.live_messages == 0 && seg.live_definitions == 0 {
                self.medium.remove(oldest)?;
                self.segments.remove(&oldest);
                continue;
            }
            // Only a few definitions left: always worth copying. Not many: a cluster node's Raft
            // entries are definitions until their group purges them, and copying a segment full of
            // them forward at every reclaim would rewrite the log over and over; such a segment
            // goes when the purge comes. A few live messages: only once enough segments wait
            // behind this one.
            let only_definitions =
                seg.live_messages == 0 && seg.live_definition_bytes < self.segment_limit / 4;
            let sparse = seg.live_bytes + seg.live_definition_bytes < self.segment_limit / 4;
            let crowded = self.segments.len() > self.compact_after + 1;
            if copied || !(only_definitions || sparse && crowded) {
                return Ok(());
            }
            self.copy_forward(oldest)?;
            copied = true;
        }
    }

    /// Re-appends the live records of segment `id` to the active segment and syncs them. Live
    /// definitions come from memory and live messages are read one by one at their places, so a
    /// large segment pinned by a few records is never read whole (a 64 MiB read stalled every
    /// commit behind it by ~40 ms); with many live messages, one sequential read of the segment is
    /// cheaper.
    fn copy_forward(&mut self, id: u64) -> io::Result<()> {
        let (live_messages, len) = self
            .segments
            .get(&id)
            .map_or((0, 0), |s| (s.live_messages, s.len));
        // Definitions only (a cluster node's Raft entries): at most COPY_BUDGET bytes of them
        // per call, so one reclaim never holds the store thread (and every commit waiting on
        // it) for a multi-MiB write; the rest move at the next reclaims, the segment going
        // once nothing live is left in it.
        let budget = if live_messages == 0 {
            COPY_BUDGET
        } else {
            u64::MAX
        };
        let mut taken = 0u64;
        let mut complete = true;
        let mut live: Vec<Record> = Vec::new();
        for (key, (value, seg)) in &self.definitions {
            if *seg != id {
                continue;
            }
            if taken > 0 && taken + (key.len() + value.len()) as u64 > budget {
                complete = false;
                break;
            }
            taken += (key.len() + value.len()) as u64;
            live.push(Record::Put {
                key: key.clone(),
                value: value.clone(),
            });
        }
        if live_messages.saturating_mul(PLACE_READ_COST) > len {
            let data = self.medium.read(id)?;
            let mut offset = 0;
            while let Read::Record(r, next) = read_at(&data, offset) {
                offset = next;
                if let Record::Enqueue { queue, id: msg, .. } = &r {
                    let here = self
                        .messages
                        .get(queue)
                        .and_then(|q| q.get(msg))
                        .is_some_and(|place| place.segment == id);
                    if here {
                        live.push(r);
                    }
                }
            }
        } else if live_messages > 0 {
            let mut places: Vec<Place> = self
                .messages
                .values()
                .flat_map(|q| q.values())
                .filter(|place| place.segment == id)
                .copied()
                .collect();
            places.sort_unstable_by_key(|p| p.offset);
            for place in places {
                let data = self
                    .medium
                    .read_at(place.segment, place.offset, place.len as usize)?;
                match read_at(&data, 0) {
                    Read::Record(r @ Record::Enqueue { .. }, _) => live.push(r),
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{} at offset {}: a live message record no longer reads back",
                                self.medium.describe(id),
                                place.offset
                            ),
                        ))
                    }
                }
            }
        }
        self.append(&live)?;
        self.sync()?;
        if !complete {
            // What was copied was released from the segment by `append` (track).
            return Ok(());
        }
        if let Some(s) = self.segments.get_mut(&id) {
            // Everything live was re-tracked in the active segment by `append`.
            s.live_messages = 0;
            s.live_bytes = 0;
            s.live_definitions = 0;
            s.live_definition_bytes = 0;
        }
        Ok(())
    }

    /// Segment ids currently on the medium.
    #[cfg(test)]
    pub(crate) fn segment_ids(&self) -> Vec<u64> {
        self.segments.keys().copied().collect()
    }

    #[cfg(test)]
    fn set_compact_after(&mut self, n: usize) {
        self.compact_after = n;
    }
}

#[cfg(test)]
mod tests;
