//! The TLS gate: only clients presenting a valid certificate from the configured CA ever reach AMQP.
//! Everything else fails the TLS handshake or sees the socket close without a connection.start.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_protocol::constants::PROTOCOL_HEADER;
use warren_tests::certs::foreign_client_cert;
use warren_tests::{Identity, RawClient, TestBroker, TIMEOUT};

/// Asserts a client with `identity` gets no AMQP byte: the TLS handshake fails, or (TLS 1.3 verifies
/// the client certificate after the client's handshake is done) the connection closes before any
/// connection.start arrives.
async fn assert_never_reaches_amqp(broker: &TestBroker, identity: Identity) {
    let what = format!("{identity:?}").chars().take(40).collect::<String>();
    match RawClient::connect(broker, identity).await {
        Err(_) => {}
        Ok(mut raw) => {
            let _ = raw.try_send(PROTOCOL_HEADER).await;
            let received = raw.read_until_closed().await;
            assert!(
                received.is_empty(),
                "a client with {what}… received {} octets of AMQP: {:?}",
                received.len(),
                &received[..received.len().min(32)]
            );
        }
    }
}

#[tokio::test]
async fn admin_certificate_reaches_connection_start() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    let start = raw.start().await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
}

#[tokio::test]
async fn client_without_certificate_never_reaches_amqp() {
    let broker = TestBroker::start().await;
    assert_never_reaches_amqp(&broker, Identity::None).await;
}

#[tokio::test]
async fn certificate_from_a_foreign_ca_never_reaches_amqp() {
    let broker = TestBroker::start().await;
    assert_never_reaches_amqp(&broker, Identity::Cert(foreign_client_cert("admin"))).await;
}

#[tokio::test]
async fn expired_certificate_never_reaches_amqp() {
    let broker = TestBroker::start().await;
    let expired = broker.expired_client_cert("admin");
    assert_never_reaches_amqp(&broker, Identity::Cert(expired)).await;
}

#[tokio::test]
async fn amqprs_with_a_refused_certificate_fails_to_connect() {
    let broker = TestBroker::start().await;
    let (cert, key) = broker.write_pem("foreign", &foreign_client_cert("admin"));
    assert!(broker.connect_as(&cert, &key, None).await.is_err());
    let (cert, key) = broker.write_pem("expired", &broker.expired_client_cert("admin"));
    assert!(broker.connect_as(&cert, &key, None).await.is_err());
    // The same broker still accepts the real admin.
    broker.connect().await.close().await;
}

#[tokio::test]
async fn plain_tcp_never_reaches_amqp() {
    let broker = TestBroker::start().await;
    let mut tcp = TcpStream::connect(("127.0.0.1", broker.port))
        .await
        .unwrap();
    tcp.write_all(PROTOCOL_HEADER).await.unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the broker kept a plain TCP client open");
    assert!(
        !received.starts_with(b"AMQP") && !received.windows(4).any(|w| w == [0, 10, 0, 10]),
        "a plain TCP client received AMQP: {received:?}"
    );
    // Anything sent back can only be a TLS alert record (content type 21).
    assert!(
        received.is_empty() || received[0] == 21,
        "a plain TCP client received non-TLS bytes: {received:?}"
    );
}

#[tokio::test]
async fn silent_tcp_client_is_dropped_after_the_tls_handshake_timeout() {
    let broker = TestBroker::start_with(|c| c.limits.tls_handshake_timeout_ms = 300).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", broker.port))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a client that never starts TLS is still connected after 3 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "dropped before the handshake timeout ({:?})",
        started.elapsed()
    );
}
