//! Field tables built to crash the decoder (PROBE F1): a `U` entry (the spec's short int, which the
//! parser accepts) once stopped the nesting scan, so tables nested 18,000 deep behind it overflowed a
//! worker's stack and aborted the whole broker. Any logged-in user, even one with no permissions, could
//! do it. Each case must cost only the sender's connection.

use warren_tests::users::user;
use warren_tests::{Identity, RawClient, TestBroker, Tuning};

const METHOD: u8 = 1;
const HEADER: u8 = 2;

fn shortstr(s: &str) -> Vec<u8> {
    let mut out = vec![s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// A table body: `first` (raw entries), then one key whose value is tables nested `depth` deep.
fn deep_table(first: &[u8], depth: usize) -> Vec<u8> {
    let mut v = b"V".to_vec();
    for _ in 0..depth {
        let mut body = shortstr("k");
        body.extend_from_slice(&v);
        v = b"F".to_vec();
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(&body);
    }
    let mut table = first.to_vec();
    table.extend_from_slice(&shortstr("b"));
    table.extend_from_slice(&v);
    let mut out = (table.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&table);
    out
}

/// `U` (short int 0) then the deep tables.
fn hidden_behind_u(depth: usize) -> Vec<u8> {
    let mut first = shortstr("a");
    first.extend_from_slice(b"U\x00\x00");
    deep_table(&first, depth)
}

async fn no_permissions_user(broker: &TestBroker) -> RawClient {
    let mut raw = RawClient::connect(broker, Identity::Cert(broker.client_cert("mallory")))
        .await
        .expect("TLS handshake");
    raw.handshake_with(Tuning::default()).await;
    raw.open_channel(1).await;
    raw
}

async fn broker() -> TestBroker {
    // A permission entry whose patterns are all empty: mallory may log in and do nothing.
    TestBroker::start_with(|c| c.users.push(user("mallory", &[("/", "", "", "")]))).await
}

async fn others_still_served(broker: &TestBroker) {
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("survivor").await;
    ch.publish("", "survivor", b"alive").await;
    assert_eq!(
        ch.get("survivor", true).await.expect("round trip").body,
        b"alive"
    );
    client.close().await;
}

#[tokio::test]
async fn a_short_int_entry_does_not_hide_deep_tables_in_method_arguments() {
    let broker = broker().await;
    let bystander = broker.connect().await;
    let mut raw = no_permissions_user(&broker).await;
    let mut payload = vec![0, 50, 0, 10, 0, 0];
    payload.extend_from_slice(&shortstr("x"));
    payload.push(0);
    payload.extend_from_slice(&hidden_behind_u(18_000));
    raw.send_frame(METHOD, 1, &payload).await;
    let close = raw.expect_connection_close().await;
    assert_eq!(
        (close.code, close.class_id, close.method_id),
        (501, 50, 10),
        "{close:?}"
    );
    assert!(
        close.text.starts_with("FRAME_ERROR - cannot decode"),
        "{close:?}"
    );
    others_still_served(&broker).await;
    let ch = bystander.channel().await;
    ch.declare_queue("still-here").await;
}

#[tokio::test]
async fn a_short_int_entry_does_not_hide_deep_tables_in_message_headers() {
    let broker = broker().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_method(1, warren_tests::raw::basic_publish("", "q", false))
        .await;
    let table = hidden_behind_u(2_000);
    // class 60, weight 0, body size 0, flags: headers only
    let mut header = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0x00];
    header.extend_from_slice(&table);
    raw.send_frame(HEADER, 1, &header).await;
    let close = raw.expect_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    others_still_served(&broker).await;
}

#[tokio::test]
async fn a_client_sending_connection_start_cannot_smuggle_deep_tables() {
    let broker = broker().await;
    let mut raw = no_permissions_user(&broker).await;
    let mut payload = vec![0, 10, 0, 10, 0, 9];
    payload.extend_from_slice(&hidden_behind_u(18_000));
    payload.extend_from_slice(&[0, 0, 0, 8]);
    payload.extend_from_slice(b"EXTERNAL");
    payload.extend_from_slice(&[0, 0, 0, 5]);
    payload.extend_from_slice(b"en_US");
    raw.send_frame(METHOD, 0, &payload).await;
    let close = raw.expect_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    others_still_served(&broker).await;
}

#[tokio::test]
async fn unknown_field_types_are_refused_not_skipped() {
    let broker = broker().await;
    let mut raw = no_permissions_user(&broker).await;
    let mut first = shortstr("a");
    first.extend_from_slice(b"Z\x00\x00");
    let mut payload = vec![0, 50, 0, 10, 0, 0];
    payload.extend_from_slice(&shortstr("x"));
    payload.push(0);
    payload.extend_from_slice(&deep_table(&first, 3));
    raw.send_frame(METHOD, 1, &payload).await;
    let close = raw.expect_connection_close().await;
    assert_eq!(
        (close.code, close.class_id, close.method_id),
        (501, 50, 10),
        "{close:?}"
    );
    others_still_served(&broker).await;
}

/// Properties every decoder must read alike (review of PROBE F1's fix): a continuation flag word,
/// which RabbitMQ, py-amqp and amq-protocol ignore and read as property data, once let a deep table
/// reach the re-encoder at dead-lettering (a crash) and let trailing bytes carry a header that
/// py-amqp consumers saw and Warren did not (a forged x-warren-publisher). Both are refused at
/// publish now, as are bytes after the last property.
#[tokio::test]
async fn properties_that_decoders_would_read_differently_are_refused() {
    let broker = broker().await;
    let deep = deep_table(b"", 5_000);
    let mut continued = vec![0xA0, 0x01, 0x06, 0x00, 0x00, 0, 0, 0, 0];
    continued.extend_from_slice(&deep);
    let mut trailing = vec![0x10, 0x00, 0x02];
    trailing.extend_from_slice(b"\x01a");
    for properties in [continued, trailing] {
        let mut raw = broker.raw_open().await;
        raw.open_channel(1).await;
        raw.send_method(1, warren_tests::raw::basic_publish("", "q", false))
            .await;
        let mut header = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        header.extend_from_slice(&properties);
        raw.send_frame(HEADER, 1, &header).await;
        let close = raw.expect_connection_close().await;
        assert_eq!(close.code, 501, "{close:?}");
        assert!(
            close.text.contains("cannot decode content header"),
            "{close:?}"
        );
    }
    others_still_served(&broker).await;
}
