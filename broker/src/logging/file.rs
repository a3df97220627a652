//! A log file that can be reopened at its path while the broker runs (logrotate's `create` mode
//! moves the file away and sends SIGHUP). Each event is one `write_all` under the lock, so a line
//! is never split between the old file and the new one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

#[derive(Clone)]
pub struct LogFile(Arc<Inner>);

struct Inner {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    /// Opens (creates with mode 0640, appends to) the file at `path`.
    pub fn open(path: &Path) -> std::io::Result<LogFile> {
        let file = open(path)?;
        Ok(LogFile(Arc::new(Inner {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })))
    }

    /// Opens the path again; on an error the current file stays in use.
    pub fn reopen(&self) -> std::io::Result<()> {
        let fresh = open(&self.0.path)?;
        *self.0.file.lock() = fresh;
        Ok(())
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// The locked file while one event is written.
pub struct Locked<'a>(MutexGuard<'a, File>);

impl Write for Locked<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogFile {
    type Writer = Locked<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Locked(self.0.file.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    #[test]
    fn reopen_follows_the_path_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.log");
        let log = LogFile::open(&path).unwrap();
        log.make_writer().write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("warren.log.1")).unwrap();
        log.make_writer().write_all(b"two\n").unwrap();
        log.reopen().unwrap();
        log.make_writer().write_all(b"three\n").unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("warren.log.1")).unwrap();
        assert_eq!(rotated, "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o137, 0, "{mode:o}");
    }
}
