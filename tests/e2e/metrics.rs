//! The Prometheus listener (issue 15): plain HTTP by default; with `[metrics] tls` the broker's
//! certificate and a client certificate from its CA, as AMQP requires, so a scraper without one
//! (or speaking plaintext) gets nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use warren_tests::TestBroker;
use warren_wire_client::{client_config, ClientCert};

const GET: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

async fn exchange(mut s: impl AsyncRead + AsyncWrite + Unpin) -> String {
    if s.write_all(GET).await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn broker_with_metrics(tls: bool) -> (TestBroker, SocketAddr) {
    let b = TestBroker::start_with(|c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        c.metrics.tls = tls;
    })
    .await;
    let addr = b
        .server
        .serve_metrics(false)
        .await
        .expect("metrics listener")
        .expect("an address");
    (b, addr)
}

async fn over_tls(b: &TestBroker, addr: SocketAddr, with_cert: bool) -> String {
    let pem = b.admin_cert();
    let cert = with_cert.then_some(ClientCert {
        chain: pem.cert.as_bytes(),
        key: pem.key.as_bytes(),
    });
    let config = client_config(&b.pki.ca_cert, cert, false).expect("client config");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    match TlsConnector::from(Arc::clone(&config))
        .connect(name, tcp)
        .await
    {
        Ok(stream) => exchange(stream).await,
        Err(_) => String::new(),
    }
}

#[tokio::test]
async fn plain_http_serves_the_metrics() {
    let (_b, addr) = broker_with_metrics(false).await;
    let answer = exchange(TcpStream::connect(addr).await.unwrap()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("rabbitmq_identity_info{"), "{answer}");
}

#[tokio::test]
async fn over_tls_a_scraper_needs_a_client_certificate_from_the_brokers_ca() {
    let (b, addr) = broker_with_metrics(true).await;
    let answer = over_tls(&b, addr, true).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("rabbitmq_build_info{"), "{answer}");
    assert_eq!(over_tls(&b, addr, false).await, "", "no client certificate");
    let plain = exchange(TcpStream::connect(addr).await.unwrap()).await;
    assert!(!plain.contains("rabbitmq_"), "plaintext got {plain:?}");
}
