//! The metrics listener: HTTP/1.1 (hyper) on the `[metrics] listen` address, GET only, two paths.
//! Prometheus scrapes it on the management network; it serves no AMQP and accepts no changes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Weak;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::broker::Broker;

/// Binds `addr`; with `next_free`, the next ports up to 20 further when it is taken (`warren
/// --dev`). The address bound.
pub async fn bind(addr: SocketAddr, next_free: bool) -> std::io::Result<TcpListener> {
    let tries = if next_free { 20 } else { 1 };
    let mut last = None;
    for i in 0..tries {
        let mut at = addr;
        at.set_port(addr.port().saturating_add(i));
        match TcpListener::bind(at).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port to bind")))
}

/// Where a TLS listener gets its acceptor (the broker's, as reloaded).
pub type Tls = std::sync::Arc<dyn Fn() -> tokio_rustls::TlsAcceptor + Send + Sync>;

/// How long a scraper has to finish its TLS handshake.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves scrapes on `listener` until the broker is gone; over TLS with `tls`.
pub async fn serve(listener: TcpListener, broker: Weak<Broker>, tls: Option<Tls>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if broker.strong_count() == 0 {
            return;
        }
        let broker = broker.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(broker.clone(), req));
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                }
                Some(tls) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(TLS_HANDSHAKE, tls().accept(tcp)).await
                    else {
                        return;
                    };
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

async fn answer(
    broker: Weak<Broker>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    };
    let per_object = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => false,
        (&Method::GET, "/metrics/per-object") => true,
        (&Method::GET, _) => {
            return Ok(reply(
                StatusCode::NOT_FOUND,
                "not found: /metrics or /metrics/per-object\n".into(),
            ))
        }
        _ => return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into())),
    };
    let Some(broker) = broker.upgrade() else {
        return Ok(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is stopping\n".into(),
        ));
    };
    // Reading every queue is quick but not free: off the runtime's worker for large brokers.
    let body = tokio::task::spawn_blocking(move || super::scrape::render(&broker, per_object))
        .await
        .unwrap_or_else(|e| format!("# the scrape failed: {e}\n"));
    Ok(reply(StatusCode::OK, body))
}
