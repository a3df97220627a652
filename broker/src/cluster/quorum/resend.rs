//! Settlements a node sends to the holder of a queue (its subscription's acks, a basic.get's
//! ack, requeue or reject). A lost one would leave a message held at the holder for good, so each
//! is sent again until answered; settling twice is harmless there. The first send is queued on the
//! link before this returns, so it reaches the holder ahead of anything the caller sends next (a
//! basic.get after a requeue finds the message back).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::cluster::link::Links;

/// How long a node's link may be down before the holder takes back what it handed that node
/// (its subscription's window, its unsettled gets).
pub(super) const GONE_AFTER: Duration = Duration::from_secs(5);
/// Times a settlement is sent before it is given up: about 10 s of retries, past [`GONE_AFTER`],
/// after which the holder has taken the messages back anyway.
const ATTEMPTS: u32 = 10;
/// How long one send waits for its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends request `kind` with `body` to `node` (group 0) now, and again in the background until
/// it is answered; `what` names it in the warning when it never is.
pub(super) fn send_until_answered(
    links: Arc<Links>,
    node: u64,
    kind: u8,
    body: Bytes,
    what: &'static str,
) {
    let mut call = links.start_call(node, 0, kind, body.clone()).ok();
    tokio::spawn(async move {
        for attempt in 1..=ATTEMPTS {
            if let Some(sent) = call.take() {
                if sent.answer(ANSWER_TIMEOUT).await.is_ok() {
                    return;
                }
            }
            if attempt == ATTEMPTS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            call = links.start_call(node, 0, kind, body.clone()).ok();
        }
        tracing::warn!(node, what, "a settlement did not reach the queue's holder");
    });
}
