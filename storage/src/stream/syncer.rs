//! Group commit for streams: appends are written by whoever publishes, and their confirms wait here
//! for one fdatasync of their file. One thread serves every stream of the broker: it takes all that
//! is waiting, syncs each file once, then runs the completions — one fsync per file per batch, not
//! per message, and no thread per stream.

use std::fs::File;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::store::Completion;

type Waiting = (Arc<File>, Completion);

/// The syncing thread's handle; dropping it lets the thread finish what is queued and stop.
#[derive(Debug)]
pub struct Syncer {
    tx: Mutex<Option<Sender<Waiting>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Syncer {
    pub fn start() -> io::Result<Arc<Syncer>> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("warren-stream-sync".into())
            .spawn(move || run(rx))?;
        Ok(Arc::new(Syncer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Calls `done` once everything written to `file` so far is durable (or failed to be).
    pub fn sync(&self, file: Arc<File>, done: Completion) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match tx {
            Some(tx) => {
                if let Err(mpsc::SendError((_, done))) = tx.send((file, done)) {
                    done(Err(io::Error::other("the stream syncer has stopped")));
                }
            }
            None => done(Err(io::Error::other("the stream syncer has stopped"))),
        }
    }

    /// Syncs what is queued and stops the thread.
    pub fn stop(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(rx: Receiver<Waiting>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut files: Vec<(Arc<File>, io::Result<()>)> = Vec::new();
        for (file, _) in &batch {
            if !files.iter().any(|(f, _)| Arc::ptr_eq(f, file)) {
                let result = file.sync_data();
                files.push((file.clone(), result));
            }
        }
        for (file, done) in batch {
            let result = files
                .iter()
                .find(|(f, _)| Arc::ptr_eq(f, &file))
                .map(|(_, r)| match r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                })
                .unwrap_or(Ok(()));
            done(result);
        }
    }
}
