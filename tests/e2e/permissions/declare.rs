//! Declaring and deleting: configure on the resource itself; a dead-letter or alternate exchange
//! argument also needs write on that exchange and read on what is declared; a passive declare needs
//! any permission at all.

use amq_protocol::protocol::{exchange, queue, AMQPClass};
use amq_protocol::types::FieldTable;
use warren_tests::raw::{
    exchange_declare, exchange_declare_with, exchange_delete, queue_declare, queue_declare_with,
    queue_delete, text_argument,
};
use warren_tests::users::user;

use super::{
    broker_with, denial, granted, login, refused, EXCHANGE_DECLARE, EXCHANGE_DELETE, QUEUE_DECLARE,
    QUEUE_DELETE,
};

#[tokio::test]
async fn exchange_declare_and_delete_need_configure_on_the_exchange() {
    let broker = broker_with(vec![user("bob", &[("/", "^bob\\.", ".*", ".*")])]).await;
    let mut admin = broker.raw_open().await;
    granted(
        "admin declares alice.x",
        admin.attempt(exchange_declare("alice.x", "direct")).await,
    );
    let mut bob = login(&broker, "bob", "/").await;

    let ok = granted(
        "declare bob.x",
        bob.attempt(exchange_declare("bob.x", "direct")).await,
    );
    assert!(matches!(
        ok,
        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_))
    ));
    refused(
        bob.attempt(exchange_declare("alice.y", "direct")).await,
        &denial("configure", "exchange", "alice.y", "bob"),
        EXCHANGE_DECLARE,
    );
    // Redeclaring an existing exchange needs configure just the same.
    refused(
        bob.attempt(exchange_declare("alice.x", "direct")).await,
        &denial("configure", "exchange", "alice.x", "bob"),
        EXCHANGE_DECLARE,
    );
    refused(
        bob.attempt(exchange_delete("alice.x")).await,
        &denial("configure", "exchange", "alice.x", "bob"),
        EXCHANGE_DELETE,
    );
    granted("delete bob.x", bob.attempt(exchange_delete("bob.x")).await);
    // The refused delete changed nothing.
    granted(
        "passive declare of alice.x by admin",
        admin
            .attempt(exchange_declare_with(
                "alice.x",
                "direct",
                true,
                FieldTable::default(),
            ))
            .await,
    );
}

#[tokio::test]
async fn queue_declare_and_delete_need_configure_on_the_queue() {
    let broker = broker_with(vec![user("bob", &[("/", "^bob\\.", ".*", ".*")])]).await;
    let mut admin = broker.raw_open().await;
    granted("admin declares q", admin.attempt(queue_declare("q")).await);
    let mut bob = login(&broker, "bob", "/").await;

    refused(
        bob.attempt(queue_declare("q")).await,
        &denial("configure", "queue", "q", "bob"),
        QUEUE_DECLARE,
    );
    refused(
        bob.attempt(queue_declare("alice.q")).await,
        &denial("configure", "queue", "alice.q", "bob"),
        QUEUE_DECLARE,
    );
    let ok = granted("declare bob.q", bob.attempt(queue_declare("bob.q")).await);
    assert!(
        matches!(ok, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(d)) if d.queue.as_str() == "bob.q")
    );
    // A server-named queue is checked under the name the broker generated.
    let close = bob
        .attempt(queue_declare(""))
        .await
        .expect_err("a server-named queue outside ^bob\\. was allowed");
    assert_eq!((close.code, close.class_id, close.method_id), (403, 50, 10));
    assert!(
        close
            .text
            .starts_with("ACCESS_REFUSED - configure access to queue 'amq.gen-")
            && close
                .text
                .ends_with("' in vhost '/' refused for user 'bob'"),
        "{close:?}"
    );

    refused(
        bob.attempt(queue_delete("q")).await,
        &denial("configure", "queue", "q", "bob"),
        QUEUE_DELETE,
    );
    granted("delete bob.q", bob.attempt(queue_delete("bob.q")).await);
    granted(
        "q still exists",
        admin
            .attempt(queue_declare_with("q", true, FieldTable::default()))
            .await,
    );
}

#[tokio::test]
async fn dead_letter_exchange_needs_write_on_it_and_read_on_the_queue() {
    let broker = broker_with(vec![user("bob", &[("/", ".*", "^bob\\.", "^bob\\.")])]).await;
    let mut bob = login(&broker, "bob", "/").await;
    let dlx = |name: &str| text_argument("x-dead-letter-exchange", name);

    refused(
        bob.attempt(queue_declare_with("bob.q1", false, dlx("amq.fanout")))
            .await,
        &denial("write", "exchange", "amq.fanout", "bob"),
        QUEUE_DECLARE,
    );
    refused(
        bob.attempt(queue_declare_with("bob.q2", false, dlx("")))
            .await,
        &denial("write", "exchange", "amq.default", "bob"),
        QUEUE_DECLARE,
    );
    refused(
        bob.attempt(queue_declare_with("q3", false, dlx("bob.dlx")))
            .await,
        &denial("read", "queue", "q3", "bob"),
        QUEUE_DECLARE,
    );
    granted(
        "declare bob.q4 with DLX bob.dlx",
        bob.attempt(queue_declare_with("bob.q4", false, dlx("bob.dlx")))
            .await,
    );
    // Without a DLX, configure alone is enough.
    granted("declare q5", bob.attempt(queue_declare("q5")).await);
}

#[tokio::test]
async fn alternate_exchange_needs_write_on_it_and_read_on_the_exchange() {
    let broker = broker_with(vec![user("bob", &[("/", ".*", "^bob\\.", "^bob\\.")])]).await;
    let mut bob = login(&broker, "bob", "/").await;
    let ae = |name: &str| text_argument("alternate-exchange", name);

    refused(
        bob.attempt(exchange_declare_with(
            "bob.x1",
            "direct",
            false,
            ae("amq.fanout"),
        ))
        .await,
        &denial("write", "exchange", "amq.fanout", "bob"),
        EXCHANGE_DECLARE,
    );
    refused(
        bob.attempt(exchange_declare_with("x2", "direct", false, ae("bob.ae")))
            .await,
        &denial("read", "exchange", "x2", "bob"),
        EXCHANGE_DECLARE,
    );
    granted(
        "declare bob.x3 with AE bob.ae",
        bob.attempt(exchange_declare_with(
            "bob.x3",
            "direct",
            false,
            ae("bob.ae"),
        ))
        .await,
    );
    granted(
        "declare x4",
        bob.attempt(exchange_declare("x4", "direct")).await,
    );
}

#[tokio::test]
async fn passive_declare_needs_at_least_one_permission() {
    let broker = broker_with(vec![
        user("bob", &[("/", "", "", "^visible")]),
        user("carol", &[("/", "", "^visible", "")]),
    ])
    .await;
    let mut admin = broker.raw_open().await;
    for q in ["visible-q", "hidden-q"] {
        granted(q, admin.attempt(queue_declare(q)).await);
    }
    for x in ["visible-x", "hidden-x"] {
        granted(x, admin.attempt(exchange_declare(x, "direct")).await);
    }
    let passive_q = |name: &str| queue_declare_with(name, true, FieldTable::default());
    let passive_x = |name: &str| exchange_declare_with(name, "direct", true, FieldTable::default());

    for who in ["bob", "carol"] {
        let mut raw = login(&broker, who, "/").await;
        assert!(matches!(
            granted(
                "passive visible-q",
                raw.attempt(passive_q("visible-q")).await
            ),
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
        ));
        granted(
            "passive visible-x",
            raw.attempt(passive_x("visible-x")).await,
        );
        refused(
            raw.attempt(passive_q("hidden-q")).await,
            &denial("configure", "queue", "hidden-q", who),
            QUEUE_DECLARE,
        );
        refused(
            raw.attempt(passive_x("hidden-x")).await,
            &denial("configure", "exchange", "hidden-x", who),
            EXCHANGE_DECLARE,
        );
        // Having read (or write) access is not configure access.
        refused(
            raw.attempt(queue_declare("visible-q")).await,
            &denial("configure", "queue", "visible-q", who),
            QUEUE_DECLARE,
        );
    }
}
