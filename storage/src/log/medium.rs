//! Where segments live. The log is written against this trait so that one contract suite can run it
//! over real files, plain memory, and a fault-injecting medium that forgets everything not synced when
//! it "loses power" (optionally leaving a torn last write behind).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Segment storage: numbered append-only files.
pub trait Medium: Send + 'static {
    /// Existing segment ids, ascending.
    fn list(&mut self) -> io::Result<Vec<u64>>;
    fn read(&mut self, id: u64) -> io::Result<Bytes>;
    /// `len` bytes of segment `id` from `offset` (one record read back).
    fn read_at(&mut self, id: u64, offset: u64, len: usize) -> io::Result<Bytes> {
        let data = self.read(id)?;
        record_in(data, offset, len, || self.describe(id))
    }
    /// Creates an empty segment; durable once this returns.
    fn create(&mut self, id: u64) -> io::Result<()>;
    fn append(&mut self, id: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every byte appended to `id` so far durable (fdatasync).
    fn sync(&mut self, id: u64) -> io::Result<()>;
    /// Cuts `id` to `len` bytes (a torn tail, or a failed append) durably.
    fn truncate(&mut self, id: u64, len: u64) -> io::Result<()>;
    /// Deletes a segment durably.
    fn remove(&mut self, id: u64) -> io::Result<()>;
    /// A human-readable location for error messages.
    fn describe(&self, id: u64) -> String;
}

/// `len` bytes from `offset` of a whole segment's `data` (`segment` names it for the error).
fn record_in(
    data: Bytes,
    offset: u64,
    len: usize,
    segment: impl FnOnce() -> String,
) -> io::Result<Bytes> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    match start.checked_add(len) {
        Some(end) if end <= data.len() => Ok(data.slice(start..end)),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} ends before offset {offset} + {len}", segment()),
        )),
    }
}

/// Segments as files `NNNNNNNNNNNNNNNNNNNN.seg` in one directory.
///
/// Deleting a 64 MiB segment takes ext4 ~15 ms (freeing its extents and a directory fsync), which
/// would hold up every commit behind it; deletions are therefore done by a helper thread, in order.
/// That is safe for the log: segments are deleted oldest-first, and one that survives a crash only
/// replays records that newer segments still cancel or repeat.
pub struct DiskMedium {
    dir: PathBuf,
    open: Option<(u64, File)>,
    deleter: Option<(
        std::sync::mpsc::Sender<PathBuf>,
        std::thread::JoinHandle<()>,
    )>,
    /// The segment last read from with `read_at` (recovery reads runs of records from one segment).
    reading: Option<(u64, File)>,
    /// Power-loss simulation ([`DiskMedium::holding_unsynced`]): appends not yet synced.
    held: Option<Held>,
}

/// Appends held in the process until `sync` writes them out (the power-loss simulation).
#[derive(Default)]
struct Held {
    /// The segment they belong to (only the active segment is ever appended to).
    segment: u64,
    /// Its length on disk: the held bytes follow it.
    written: u64,
    bytes: Vec<u8>,
}

impl DiskMedium {
    pub fn new(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(DiskMedium {
            dir: dir.to_path_buf(),
            open: None,
            reading: None,
            deleter: None,
            held: None,
        })
    }

    /// For the cluster fault suite's coordinated power loss only: appends stay in this process until
    /// `sync` writes and fdatasyncs them, so a kill -9 loses exactly what a power cut could lose
    /// (everything not synced), not the page cache's copy. Durability at `sync` is unchanged.
    pub fn holding_unsynced(dir: &Path) -> io::Result<Self> {
        let mut medium = Self::new(dir)?;
        medium.held = Some(Held::default());
        Ok(medium)
    }

    /// The held bytes of segment `id` and where they start, if any.
    fn held_of(&self, id: u64) -> Option<(u64, &[u8])> {
        self.held
            .as_ref()
            .filter(|h| h.segment == id && !h.bytes.is_empty())
            .map(|h| (h.written, h.bytes.as_slice()))
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.seg"))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn file(&mut self, id: u64) -> io::Result<&mut File> {
        if self.open.as_ref().map(|(open, _)| *open) != Some(id) {
            let f = OpenOptions::new().append(true).open(self.path(id))?;
            self.open = Some((id, f));
        }
        match &mut self.open {
            Some((_, f)) => Ok(f),
            None => Err(io::Error::other("segment not open")),
        }
    }
}

impl Medium for DiskMedium {
    fn list(&mut self) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn read(&mut self, id: u64) -> io::Result<Bytes> {
        let mut data = fs::read(self.path(id))?;
        if let Some((_, held)) = self.held_of(id) {
            data.extend_from_slice(held);
        }
        Ok(Bytes::from(data))
    }

    fn read_at(&mut self, id: u64, offset: u64, len: usize) -> io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        if let Some((written, _)) = self.held_of(id) {
            if offset.saturating_add(len as u64) > written {
                // Part of the record is still held: read the segment as the process sees it.
                let data = self.read(id)?;
                return record_in(data, offset, len, || self.describe(id));
            }
        }
        if self.reading.as_ref().map(|(r, _)| *r) != Some(id) {
            self.reading = Some((id, File::open(self.path(id))?));
        }
        let Some((_, file)) = &self.reading else {
            return Err(io::Error::other("segment not open"));
        };
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }

    fn create(&mut self, id: u64) -> io::Result<()> {
        OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(self.path(id))?
            .sync_all()?;
        self.sync_dir()
    }

    fn append(&mut self, id: u64, data: &[u8]) -> io::Result<()> {
        let path = self.path(id);
        match &mut self.held {
            None => self.file(id)?.write_all(data),
            Some(held) => {
                if held.segment != id {
                    // The log syncs a segment before it moves on, so nothing older is held.
                    *held = Held {
                        segment: id,
                        written: fs::metadata(path)?.len(),
                        bytes: Vec::new(),
                    };
                }
                held.bytes.extend_from_slice(data);
                Ok(())
            }
        }
    }

    fn sync(&mut self, id: u64) -> io::Result<()> {
        if let Some(mut held) = self.held.take() {
            let out = if held.segment == id && !held.bytes.is_empty() {
                self.file(id).and_then(|f| f.write_all(&held.bytes))
            } else {
                Ok(())
            };
            if out.is_ok() {
                held.written += held.bytes.len() as u64;
                held.bytes.clear();
            }
            self.held = Some(held);
            out?;
        }
        self.file(id)?.sync_data()
    }

    fn truncate(&mut self, id: u64, len: u64) -> io::Result<()> {
        if let Some(held) = self.held.as_mut().filter(|h| h.segment == id) {
            if len >= held.written {
                held.bytes.truncate((len - held.written) as usize);
                return Ok(());
            }
            held.bytes.clear();
            held.written = len;
        }
        let f = OpenOptions::new().write(true).open(self.path(id))?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn remove(&mut self, id: u64) -> io::Result<()> {
        if self.open.as_ref().map(|(open, _)| *open) == Some(id) {
            self.open = None;
        }
        if self.reading.as_ref().map(|(r, _)| *r) == Some(id) {
            self.reading = None;
        }
        if let Some(held) = self.held.as_mut().filter(|h| h.segment == id) {
            *held = Held::default();
        }
        let path = self.path(id);
        let deleter = match &mut self.deleter {
            Some((tx, _)) => tx,
            None => {
                let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
                let dir = self.dir.clone();
                let thread = std::thread::Builder::new()
                    .name("warren-unlink".into())
                    .spawn(move || {
                        while let Ok(path) = rx.recv() {
                            if fs::remove_file(&path).is_ok() {
                                let _ = File::open(&dir).and_then(|d| d.sync_all());
                            }
                        }
                    })?;
                &self.deleter.insert((tx, thread)).0
            }
        };
        deleter
            .send(path)
            .map_err(|_| io::Error::other("deleter gone"))
    }

    fn describe(&self, id: u64) -> String {
        self.path(id).display().to_string()
    }
}

impl Drop for DiskMedium {
    /// Waits for queued deletions.
    fn drop(&mut self) {
        if let Some((tx, thread)) = self.deleter.take() {
            drop(tx);
            let _ = thread.join();
        }
    }
}

/// Segments in memory; every write is immediately "durable". Shared between clones, so a test can
/// reopen the log over the same contents.
#[derive(Clone, Default)]
pub struct MemoryMedium {
    segments: Arc<Mutex<BTreeMap<u64, Vec<u8>>>>,
}

fn lock<T>(m: &Mutex<T>) -> io::Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| io::Error::other("medium lock poisoned"))
}

fn missing(id: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("segment {id} does not exist"),
    )
}

impl Medium for MemoryMedium {
    fn list(&mut self) -> io::Result<Vec<u64>> {
        Ok(lock(&self.segments)?.keys().copied().collect())
    }
    fn read(&mut self, id: u64) -> io::Result<Bytes> {
        lock(&self.segments)?
            .get(&id)
            .map(|s| Bytes::from(s.clone()))
            .ok_or_else(|| missing(id))
    }
    fn create(&mut self, id: u64) -> io::Result<()> {
        lock(&self.segments)?.insert(id, Vec::new());
        Ok(())
    }
    fn append(&mut self, id: u64, data: &[u8]) -> io::Result<()> {
        lock(&self.segments)?
            .get_mut(&id)
            .ok_or_else(|| missing(id))?
            .extend_from_slice(data);
        Ok(())
    }
    fn sync(&mut self, _id: u64) -> io::Result<()> {
        Ok(())
    }
    fn truncate(&mut self, id: u64, len: u64) -> io::Result<()> {
        lock(&self.segments)?
            .get_mut(&id)
            .ok_or_else(|| missing(id))?
            .truncate(len as usize);
        Ok(())
    }
    fn remove(&mut self, id: u64) -> io::Result<()> {
        lock(&self.segments)?.remove(&id);
        Ok(())
    }
    fn describe(&self, id: u64) -> String {
        format!("memory segment {id}")
    }
}

#[cfg(test)]
#[derive(Default)]
struct FaultyState {
    /// What survives a power loss.
    durable: BTreeMap<u64, Vec<u8>>,
    /// What the running process sees (durable plus unsynced appends).
    visible: BTreeMap<u64, Vec<u8>>,
    /// Fail appends once this many more bytes have been written (a full disk).
    space_left: Option<usize>,
    fail_sync: bool,
    /// Incremented by every crash; handles from before it are dead (their process "died").
    epoch: u64,
}

/// A medium that models a page cache: appends are visible at once but survive a simulated power loss
/// only after `sync`. `crash` drops unsynced bytes, optionally keeping a torn prefix of them; a disk
/// can be made full or made to fail its next fsync.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct FaultyMedium {
    state: Arc<Mutex<FaultyState>>,
    epoch: u64,
}

#[cfg(test)]
impl FaultyMedium {
    /// Power loss: every segment falls back to its synced bytes, plus `torn` bytes of what followed
    /// (a partially written sector). Segments created but never synced keep their synced (empty) state.
    pub fn crash(&self, torn: usize) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let st = &mut *st;
        for (id, visible) in &st.visible {
            let durable = st.durable.entry(*id).or_default();
            let extra = visible.len().saturating_sub(durable.len()).min(torn);
            let keep = durable.len() + extra;
            *durable = visible[..keep].to_vec();
        }
        st.durable.retain(|id, _| st.visible.contains_key(id));
        st.visible = st.durable.clone();
        st.epoch += 1;
    }

    /// A handle for the process that starts after the last crash (older handles fail every call).
    pub(crate) fn reopen(&self) -> FaultyMedium {
        let epoch = self.state.lock().map_or(0, |st| st.epoch);
        FaultyMedium {
            state: self.state.clone(),
            epoch,
        }
    }

    fn live(&self) -> io::Result<std::sync::MutexGuard<'_, FaultyState>> {
        let st = lock(&self.state)?;
        if st.epoch != self.epoch {
            return Err(io::Error::other("this process crashed"));
        }
        Ok(st)
    }

    /// Appends fail with ENOSPC after `bytes` more bytes (None: unlimited).
    pub(crate) fn set_space(&self, bytes: Option<usize>) {
        if let Ok(mut st) = self.state.lock() {
            st.space_left = bytes;
        }
    }

    pub(crate) fn fail_next_sync(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.fail_sync = true;
        }
    }
}

#[cfg(test)]
impl Medium for FaultyMedium {
    fn list(&mut self) -> io::Result<Vec<u64>> {
        Ok(self.live()?.visible.keys().copied().collect())
    }
    fn read(&mut self, id: u64) -> io::Result<Bytes> {
        self.live()?
            .visible
            .get(&id)
            .map(|s| Bytes::from(s.clone()))
            .ok_or_else(|| missing(id))
    }
    fn create(&mut self, id: u64) -> io::Result<()> {
        let mut st = self.live()?;
        st.visible.insert(id, Vec::new());
        st.durable.insert(id, Vec::new());
        Ok(())
    }
    fn append(&mut self, id: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.live()?;
        if let Some(left) = st.space_left {
            if data.len() > left {
                // A full disk takes what fits, then fails, like write(2) returning a short count.
                st.space_left = Some(0);
                let fits = data[..left].to_vec();
                st.visible
                    .get_mut(&id)
                    .ok_or_else(|| missing(id))?
                    .extend_from_slice(&fits);
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on device",
                ));
            }
            st.space_left = Some(left - data.len());
        }
        st.visible
            .get_mut(&id)
            .ok_or_else(|| missing(id))?
            .extend_from_slice(data);
        Ok(())
    }
    fn sync(&mut self, id: u64) -> io::Result<()> {
        let mut st = self.live()?;
        if std::mem::take(&mut st.fail_sync) {
            return Err(io::Error::other("fsync failed (injected)"));
        }
        let visible = st.visible.get(&id).ok_or_else(|| missing(id))?.clone();
        st.durable.insert(id, visible);
        Ok(())
    }
    fn truncate(&mut self, id: u64, len: u64) -> io::Result<()> {
        let mut guard = self.live()?;
        let st = &mut *guard;
        for map in [&mut st.visible, &mut st.durable] {
            if let Some(s) = map.get_mut(&id) {
                s.truncate(len as usize);
            }
        }
        Ok(())
    }
    fn remove(&mut self, id: u64) -> io::Result<()> {
        let mut st = self.live()?;
        st.visible.remove(&id);
        st.durable.remove(&id);
        Ok(())
    }
    fn describe(&self, id: u64) -> String {
        format!("faulty segment {id}")
    }
}
