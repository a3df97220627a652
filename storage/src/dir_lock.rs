//! An exclusive lock on a data directory, held for as long as a broker uses it: a second broker
//! started on the same directory would append to the same log, compact it under the first and take
//! over its admin socket (PROBE F5). `flock` locks belong to the open file, so the kernel drops the
//! lock when the process dies, however it dies: a stale lock file never blocks a restart.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// The name of the lock file inside the data directory.
pub(crate) const LOCK_FILE: &str = "warren.lock";

#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    #[error("cannot open the lock file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another Warren broker is using the data directory {dir} (it holds {path}); stop it first or choose another data_dir")]
    Held { dir: PathBuf, path: PathBuf },
}

/// Held while the broker runs; dropping it releases the directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock without waiting, or says which directory another broker holds.
    pub fn acquire(dir: &Path) -> Result<Self, DirLockError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| DirLockError::Open {
                path: path.clone(),
                source,
            })?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(DirLockError::Held {
                dir: dir.to_path_buf(),
                path,
            }),
            Err(e) => Err(DirLockError::Open {
                path,
                source: e.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let e = DirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(e, DirLockError::Held { .. }), "{e}");
        drop(first);
        DirLock::acquire(dir.path()).expect("released when the holder is dropped");
    }
}
