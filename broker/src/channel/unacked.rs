//! Deliveries a channel made in manual-ack mode and not yet settled, by delivery tag.
//! Tags increase, so the common case (acking the oldest, or `multiple`) pops from the front.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::ids::DeliveryTag;
use crate::queue::consumer::Consumer;
use crate::queue::{Entry, Queue};

#[derive(Debug)]
pub(crate) struct Delivered {
    pub tag: DeliveryTag,
    pub queue: Arc<Queue>,
    pub entry: Entry,
    /// The consumer whose credit this delivery holds (None for basic.get).
    pub consumer: Option<Arc<Consumer>>,
    /// For a basic.get answered by the node holding the queue: where it is settled (`queue` is
    /// then this node's copy, which never had the message).
    pub remote: Option<crate::cluster::quorum::RemoteGot>,
}

#[derive(Debug, Default)]
pub(crate) struct Unacked {
    list: VecDeque<Delivered>,
}

impl Unacked {
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn push(&mut self, d: Delivered) {
        self.list.push_back(d);
    }

    /// Removes the deliveries an ack/nack/reject names: with `multiple`, every tag up to `tag` (all of them
    /// for [`DeliveryTag::ALL`]); otherwise exactly `tag`. None if the tag is not outstanding (RabbitMQ
    /// then settles nothing).
    pub fn take(&mut self, tag: DeliveryTag, multiple: bool) -> Option<Vec<Delivered>> {
        if multiple && tag == DeliveryTag::ALL {
            return Some(self.list.drain(..).collect());
        }
        let at = self.list.binary_search_by_key(&tag, |d| d.tag).ok()?;
        if multiple {
            Some(self.list.drain(..=at).collect())
        } else {
            self.list.remove(at).map(|d| vec![d])
        }
    }

    /// Returns deliveries taken earlier (a rolled-back transaction's acks) to their places.
    pub(crate) fn put_back(&mut self, deliveries: Vec<Delivered>) {
        for d in deliveries {
            let at = self.list.partition_point(|x| x.tag < d.tag);
            self.list.insert(at, d);
        }
    }

    pub(crate) fn take_all(&mut self) -> Vec<Delivered> {
        self.list.drain(..).collect()
    }
}
