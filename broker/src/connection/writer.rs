//! The socket's write side: a task that writes batches of encoded frames as they come, so a slow reader
//! on the client side never stalls frame processing beyond the bounded batch queue.

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// How many encoded batches may wait for the socket before the connection task itself waits.
pub(crate) const WRITE_QUEUE_BATCHES: usize = 64;

/// Writes every batch in order; coalesces whatever is queued into one flush. Ends when the sender is
/// dropped (after flushing) or the socket fails.
pub async fn run<W: AsyncWrite + Unpin>(mut socket: W, mut batches: mpsc::Receiver<Bytes>) {
    while let Some(first) = batches.recv().await {
        if socket.write_all(&first).await.is_err() {
            return;
        }
        while let Ok(more) = batches.try_recv() {
            if socket.write_all(&more).await.is_err() {
                return;
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
    let _ = socket.shutdown().await;
}
