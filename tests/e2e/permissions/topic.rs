//! Topic permissions: on a topic exchange with a topic permission for the user, the routing key of
//! a publish must match `write` and the binding key of a bind or unbind must match `read`, with
//! `{username}` and `{vhost}` expanded; everything else is allowed.

use warren_broker::config::UserConfig;
use warren_tests::raw::{
    exchange_bind, exchange_declare, queue_bind, queue_declare, queue_unbind, NO_PROPERTIES,
};
use warren_tests::users::{full_access, topic, user};
use warren_tests::TestBroker;

use super::{
    broker_with, granted, login, refused, BASIC_PUBLISH, EXCHANGE_BIND, QUEUE_BIND, QUEUE_UNBIND,
};

fn with_topic_permissions(mut user: UserConfig, topics: &[(&str, &str, &str, &str)]) -> UserConfig {
    user.topic_permissions = topics
        .iter()
        .map(|(vhost, exchange, write, read)| topic(vhost, exchange, write, read))
        .collect();
    user
}

#[tokio::test]
async fn topic_publish_needs_the_routing_key_to_match_the_write_pattern() {
    let bob = with_topic_permissions(
        full_access("bob"),
        &[
            ("/", "amq.topic", "^{username}\\.", "^{username}\\."),
            ("/", "amq.direct", "^never$", "^never$"),
        ],
    );
    let broker = broker_with(vec![bob]).await;
    let mut bob = login(&broker, "bob", "/").await;

    bob.attempt_publish("amq.topic", "bob.x", NO_PROPERTIES, b"x")
        .await
        .expect("a key matching ^bob\\.");
    refused(
        bob.attempt_publish("amq.topic", "nova.x", NO_PROPERTIES, b"x")
            .await,
        "write access to topic 'nova.x' in exchange 'amq.topic' in vhost '/' refused for user 'bob'",
        BASIC_PUBLISH,
    );
    // A topic exchange without a topic permission allows every key.
    granted(
        "declare bob.events",
        bob.attempt(exchange_declare("bob.events", "topic")).await,
    );
    bob.attempt_publish("bob.events", "nova.x", NO_PROPERTIES, b"x")
        .await
        .expect("no topic permission on bob.events");
    // Topic permissions only apply to topic exchanges.
    bob.attempt_publish("amq.direct", "nova.x", NO_PROPERTIES, b"x")
        .await
        .expect("amq.direct is not a topic exchange");
}

#[tokio::test]
async fn topic_bind_needs_the_binding_key_to_match_the_read_pattern() {
    let bob = with_topic_permissions(
        full_access("bob"),
        &[("/", "amq.topic", "^{username}\\.", "^{username}\\.")],
    );
    let broker = broker_with(vec![bob]).await;
    let mut bob = login(&broker, "bob", "/").await;
    granted("declare bob.q", bob.attempt(queue_declare("bob.q")).await);
    granted(
        "declare bob.x",
        bob.attempt(exchange_declare("bob.x", "fanout")).await,
    );

    granted(
        "bind with bob.#",
        bob.attempt(queue_bind("bob.q", "amq.topic", "bob.#")).await,
    );
    refused(
        bob.attempt(queue_bind("bob.q", "amq.topic", "nova.#"))
            .await,
        "read access to topic 'nova.#' in exchange 'amq.topic' in vhost '/' refused for user 'bob'",
        QUEUE_BIND,
    );
    refused(
        bob.attempt(queue_unbind("bob.q", "amq.topic", "nova.#"))
            .await,
        "read access to topic 'nova.#' in exchange 'amq.topic' in vhost '/' refused for user 'bob'",
        QUEUE_UNBIND,
    );
    granted(
        "unbind with bob.#",
        bob.attempt(queue_unbind("bob.q", "amq.topic", "bob.#"))
            .await,
    );
    refused(
        bob.attempt(exchange_bind("bob.x", "amq.topic", "#")).await,
        "read access to topic '#' in exchange 'amq.topic' in vhost '/' refused for user 'bob'",
        EXCHANGE_BIND,
    );
    granted(
        "exchange bind with bob.*",
        bob.attempt(exchange_bind("bob.x", "amq.topic", "bob.*"))
            .await,
    );
}

#[tokio::test]
async fn topic_patterns_expand_username_and_vhost() {
    let bob = with_topic_permissions(
        user("bob", &[("prod", ".*", ".*", ".*")]),
        &[("prod", "amq.topic", "^{vhost}\\.{username}\\.", ".*")],
    );
    let broker = TestBroker::start_with(|c| {
        c.vhosts.push("prod".into());
        c.users.push(bob);
    })
    .await;
    let mut bob = login(&broker, "bob", "prod").await;
    bob.attempt_publish("amq.topic", "prod.bob.status", NO_PROPERTIES, b"x")
        .await
        .expect("prod.bob.* matches ^{vhost}\\.{username}\\.");
    refused(
        bob.attempt_publish("amq.topic", "dev.bob.status", NO_PROPERTIES, b"x")
            .await,
        "write access to topic 'dev.bob.status' in exchange 'amq.topic' in vhost 'prod' refused for user 'bob'",
        BASIC_PUBLISH,
    );
}
