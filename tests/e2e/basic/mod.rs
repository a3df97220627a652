//! The basic class: publish and deliver (properties, large and empty bodies), consumers and their
//! tags, qos, acknowledgements, get, recover, and what happens to unacked messages and consumers when
//! channels, connections and queues go away.

mod ack;
mod consume;
mod content;

use amqprs::channel::{
    BasicAckArguments, BasicNackArguments, BasicQosArguments, BasicRejectArguments,
};
use warren_tests::{TestChannel, Timely};

pub(crate) async fn qos(ch: &TestChannel, prefetch: u16, global: bool) {
    ch.basic_qos(BasicQosArguments::new(0, prefetch, global))
        .timely()
        .await
        .expect("basic.qos");
}

pub(crate) async fn ack(ch: &TestChannel, tag: u64, multiple: bool) {
    ch.basic_ack(BasicAckArguments::new(tag, multiple))
        .timely()
        .await
        .expect("basic.ack written");
}

pub(crate) async fn nack(ch: &TestChannel, tag: u64, multiple: bool, requeue: bool) {
    ch.basic_nack(BasicNackArguments::new(tag, multiple, requeue))
        .timely()
        .await
        .expect("basic.nack written");
}

pub(crate) async fn reject(ch: &TestChannel, tag: u64, requeue: bool) {
    ch.basic_reject(BasicRejectArguments::new(tag, requeue))
        .timely()
        .await
        .expect("basic.reject written");
}

pub(crate) async fn publish_all(ch: &TestChannel, queue: &str, bodies: &[&str]) {
    for body in bodies {
        ch.publish("", queue, body.as_bytes()).await;
    }
}
