//! What reading a stream takes wherever it is read (stream.rs at the home, stream_copy.rs on the
//! other nodes of a cluster): how a record becomes a delivery, and how a reader waits for the
//! stream's next append.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::consumer::{Consumer, Delivery};
use super::{Entry, Queue};
use crate::message::Message;

/// The delivery of the stream record at `offset` to `consumer` of `queue`: its offset is its
/// sequence (the `x-stream-offset` header), and nothing is stored for it (an ack removes nothing).
pub fn stream_delivery(
    consumer: Arc<Consumer>,
    queue: Arc<Queue>,
    offset: u64,
    message: Arc<Message>,
) -> Delivery {
    Delivery {
        consumer,
        queue,
        entry: Entry {
            seq: offset,
            message,
            redelivered: false,
            priority: 0,
            expires_at: None,
            returns: 0,
            store_id: None,
        },
    }
}

/// The tasks waiting for a stream's next append (the home's readers for other nodes).
#[derive(Debug, Default)]
pub(super) struct TailWaiters {
    inner: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    next_id: u64,
    wakers: Vec<(u64, Waker)>,
}

impl TailWaiters {
    /// Wakes every waiter (an append, or the stream's deletion).
    pub(super) fn wake_all(&self) {
        let wakers = std::mem::take(&mut self.inner.lock().wakers);
        for (_, w) in wakers {
            w.wake();
        }
    }

    /// Resolves once `passed()` holds, checked on every wake. `wake_all` must follow every change
    /// that can make it hold, after the change (then a waiter registered before the change is
    /// woken, and one registered after it sees it).
    pub(super) fn until<F: Fn() -> bool>(&self, passed: F) -> Until<'_, F> {
        Until {
            waiters: self,
            passed,
            id: None,
        }
    }
}

/// The future of [`TailWaiters::until`]; dropping it unregisters it.
pub struct Until<'a, F: Fn() -> bool> {
    waiters: &'a TailWaiters,
    passed: F,
    id: Option<u64>,
}

impl<F: Fn() -> bool + Unpin> Future for Until<'_, F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut waiting = this.waiters.inner.lock();
        // Checked under the waiters' lock: a change made after this check wakes the waker below.
        if (this.passed)() {
            return Poll::Ready(());
        }
        let id = *this.id.get_or_insert_with(|| {
            waiting.next_id += 1;
            waiting.next_id
        });
        match waiting.wakers.iter_mut().find(|(i, _)| *i == id) {
            Some((_, w)) => w.clone_from(cx.waker()),
            None => waiting.wakers.push((id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl<F: Fn() -> bool> Drop for Until<'_, F> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.waiters.inner.lock().wakers.retain(|(i, _)| *i != id);
        }
    }
}
