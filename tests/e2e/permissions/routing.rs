//! Moving messages: bindings need write on the destination and read on the source, publishing
//! needs write on the exchange (the default one is `amq.default`), and consuming, getting and
//! purging need read on the queue.

use amq_protocol::protocol::{basic, queue, AMQPClass};
use warren_tests::raw::{
    basic_consume, basic_get, exchange_bind, exchange_declare, exchange_unbind, queue_bind,
    queue_declare, queue_purge, queue_unbind, NO_PROPERTIES,
};
use warren_tests::users::user;
use warren_tests::CloseInfo;

use super::{
    broker_with, denial, granted, login, refused, BASIC_CONSUME, BASIC_GET, BASIC_PUBLISH,
    EXCHANGE_BIND, EXCHANGE_UNBIND, QUEUE_BIND, QUEUE_PURGE, QUEUE_UNBIND,
};

#[tokio::test]
async fn queue_bind_and_unbind_need_write_on_the_queue_and_read_on_the_exchange() {
    let broker = broker_with(vec![user("bob", &[("/", ".*", "^bob\\.", "^bob\\.")])]).await;
    let mut admin = broker.raw_open().await;
    granted("declare other", admin.attempt(queue_declare("other")).await);
    let mut bob = login(&broker, "bob", "/").await;
    granted("declare bob.q", bob.attempt(queue_declare("bob.q")).await);
    granted(
        "declare bob.x",
        bob.attempt(exchange_declare("bob.x", "direct")).await,
    );

    granted(
        "bind bob.q to bob.x",
        bob.attempt(queue_bind("bob.q", "bob.x", "k")).await,
    );
    refused(
        bob.attempt(queue_bind("other", "bob.x", "k")).await,
        &denial("write", "queue", "other", "bob"),
        QUEUE_BIND,
    );
    refused(
        bob.attempt(queue_bind("bob.q", "amq.direct", "k")).await,
        &denial("read", "exchange", "amq.direct", "bob"),
        QUEUE_BIND,
    );
    refused(
        bob.attempt(queue_unbind("bob.q", "amq.direct", "k")).await,
        &denial("read", "exchange", "amq.direct", "bob"),
        QUEUE_UNBIND,
    );
    refused(
        bob.attempt(queue_unbind("other", "bob.x", "k")).await,
        &denial("write", "queue", "other", "bob"),
        QUEUE_UNBIND,
    );
    granted(
        "unbind bob.q from bob.x",
        bob.attempt(queue_unbind("bob.q", "bob.x", "k")).await,
    );
}

#[tokio::test]
async fn exchange_bind_and_unbind_need_write_on_the_destination_and_read_on_the_source() {
    let broker = broker_with(vec![user("bob", &[("/", ".*", "^bob\\.", "^bob\\.")])]).await;
    let mut admin = broker.raw_open().await;
    granted(
        "declare other.x",
        admin.attempt(exchange_declare("other.x", "fanout")).await,
    );
    let mut bob = login(&broker, "bob", "/").await;
    for name in ["bob.src", "bob.dst"] {
        granted(name, bob.attempt(exchange_declare(name, "fanout")).await);
    }

    granted(
        "bind bob.dst to bob.src",
        bob.attempt(exchange_bind("bob.dst", "bob.src", "")).await,
    );
    refused(
        bob.attempt(exchange_bind("other.x", "bob.src", "")).await,
        &denial("write", "exchange", "other.x", "bob"),
        EXCHANGE_BIND,
    );
    refused(
        bob.attempt(exchange_bind("bob.dst", "amq.fanout", ""))
            .await,
        &denial("read", "exchange", "amq.fanout", "bob"),
        EXCHANGE_BIND,
    );
    refused(
        bob.attempt(exchange_unbind("other.x", "bob.src", "")).await,
        &denial("write", "exchange", "other.x", "bob"),
        EXCHANGE_UNBIND,
    );
    refused(
        bob.attempt(exchange_unbind("bob.dst", "amq.fanout", ""))
            .await,
        &denial("read", "exchange", "amq.fanout", "bob"),
        EXCHANGE_UNBIND,
    );
    granted(
        "unbind bob.dst from bob.src",
        bob.attempt(exchange_unbind("bob.dst", "bob.src", "")).await,
    );
}

#[tokio::test]
async fn publish_needs_write_on_the_exchange_and_the_default_exchange_is_amq_default() {
    let broker = broker_with(vec![
        user("bob", &[("/", ".*", "^bob\\.", ".*")]),
        user("carol", &[("/", "", "^amq\\.default$", "")]),
    ])
    .await;
    let mut admin = broker.raw_open().await;
    granted("declare inbox", admin.attempt(queue_declare("inbox")).await);
    let mut bob = login(&broker, "bob", "/").await;

    refused(
        bob.attempt_publish("", "inbox", NO_PROPERTIES, b"x").await,
        &denial("write", "exchange", "amq.default", "bob"),
        BASIC_PUBLISH,
    );
    refused(
        bob.attempt_publish("amq.direct", "inbox", NO_PROPERTIES, b"x")
            .await,
        &denial("write", "exchange", "amq.direct", "bob"),
        BASIC_PUBLISH,
    );
    granted(
        "declare bob.x",
        bob.attempt(exchange_declare("bob.x", "fanout")).await,
    );
    bob.attempt_publish("bob.x", "", NO_PROPERTIES, b"x")
        .await
        .expect("publish to bob.x");
    // Write permission is checked before the exchange is looked up (RabbitMQ's order).
    refused(
        bob.attempt_publish("nope", "", NO_PROPERTIES, b"x").await,
        &denial("write", "exchange", "nope", "bob"),
        BASIC_PUBLISH,
    );
    assert_eq!(
        bob.attempt_publish("bob.nope", "", NO_PROPERTIES, b"x")
            .await
            .unwrap_err(),
        CloseInfo::new(
            404,
            "NOT_FOUND - no exchange 'bob.nope' in vhost '/'",
            60,
            40
        )
    );

    // Write on amq.default is exactly what publishing to the default exchange needs.
    let mut carol = login(&broker, "carol", "/").await;
    carol
        .attempt_publish("", "inbox", NO_PROPERTIES, b"from carol")
        .await
        .expect("carol publishes to the default exchange");
    refused(
        carol
            .attempt_publish("amq.direct", "inbox", NO_PROPERTIES, b"x")
            .await,
        &denial("write", "exchange", "amq.direct", "carol"),
        BASIC_PUBLISH,
    );
    match admin.attempt(basic_get("inbox", true)).await {
        Ok(AMQPClass::Basic(basic::AMQPMethod::GetOk(ok))) => assert_eq!(ok.message_count, 0),
        other => panic!("expected carol's message in inbox, got {other:?}"),
    }
}

#[tokio::test]
async fn consume_get_and_purge_need_read_on_the_queue() {
    let broker = broker_with(vec![user("bob", &[("/", ".*", ".*", "^bob\\.")])]).await;
    let mut admin = broker.raw_open().await;
    granted("declare other", admin.attempt(queue_declare("other")).await);
    let mut bob = login(&broker, "bob", "/").await;
    granted("declare bob.q", bob.attempt(queue_declare("bob.q")).await);

    refused(
        bob.attempt(basic_consume("other", "c1", true)).await,
        &denial("read", "queue", "other", "bob"),
        BASIC_CONSUME,
    );
    refused(
        bob.attempt(basic_get("other", true)).await,
        &denial("read", "queue", "other", "bob"),
        BASIC_GET,
    );
    refused(
        bob.attempt(queue_purge("other")).await,
        &denial("read", "queue", "other", "bob"),
        QUEUE_PURGE,
    );
    assert!(matches!(
        granted(
            "consume bob.q",
            bob.attempt(basic_consume("bob.q", "c2", true)).await
        ),
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))
    ));
    assert!(matches!(
        granted("get bob.q", bob.attempt(basic_get("bob.q", true)).await),
        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))
    ));
    assert!(matches!(
        granted("purge bob.q", bob.attempt(queue_purge("bob.q")).await),
        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(_))
    ));
}
