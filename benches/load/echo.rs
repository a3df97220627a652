//! `warren-load echo-server`: the broker stand-in of the floor rows (`floor-rpc`, `floor-latency`).
//!
//! It is as little as a TLS server can be, so that what the floor rows measure is what the machine
//! costs — loopback TCP, TLS records, epoll wake-ups, context switches — and nothing a broker adds.
//! Everything the brokers' side of the connection has in common with it is the same as Warren's:
//! a multi-thread tokio runtime sized by the cores it may use (one worker thread when started under
//! `taskset -c 0`, as load.sh does), TCP_NODELAY, rustls on aws-lc-rs with TLS 1.3 and 1.2, the
//! server certificate of the run and mandatory client certificates verified against its CA. Each
//! connection is one task that writes back every read at once: one read, one write (and one TLS
//! record per read of at most 16 KiB), no buffering, no parsing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

#[derive(Parser)]
pub struct EchoArgs {
    /// Port to listen on (127.0.0.1 only).
    #[arg(long)]
    port: u16,
    /// Server certificate chain (PEM), e.g. the run's tls/server.pem.
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM), e.g. tls/server.key.
    #[arg(long)]
    key: PathBuf,
    /// CA bundle client certificates are verified against (PEM), e.g. tls/ca.pem.
    #[arg(long)]
    ca: PathBuf,
}

/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer per connection (plaintext).
const READ_BUF: usize = 64 * 1024;

pub fn echo_server(args: EchoArgs) -> Result<()> {
    let config = server_config(&args)?;
    // The brokers' runtime flavour: Warren builds a default multi-thread runtime, whose worker count
    // follows the CPU affinity it starts with (one under `taskset -c 0`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args.port, config))
}

fn server_config(args: &EchoArgs) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(&args.ca).with_context(|| args.ca.display().to_string())?
    {
        roots.add(cert.context("CA certificate")?)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("client certificate verifier")?;
    let chain = CertificateDer::pem_file_iter(&args.cert)
        .with_context(|| args.cert.display().to_string())?
        .collect::<Result<Vec<_>, _>>()
        .context("server certificate")?;
    let key =
        PrivateKeyDer::from_pem_file(&args.key).with_context(|| args.key.display().to_string())?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

async fn serve(port: u16, config: Arc<ServerConfig>) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("warren-load echo-server: listening on {addr} (TLS, client certificates required)");
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    if let Err(e) = echo(stream).await {
                        eprintln!("{peer}: {e}");
                    }
                }
                Ok(Err(e)) => eprintln!("{peer}: TLS handshake refused: {e}"),
                Err(_) => eprintln!("{peer}: TLS handshake timed out"),
            }
        });
    }
}

/// Writes back every read as it is: one read, one write (flushed), until EOF; then close_notify (a
/// client that has already closed its socket makes that fail, which is of no interest).
async fn echo(mut stream: TlsStream<TcpStream>) -> std::io::Result<()> {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
        stream.flush().await?;
    }
    let _ = stream.shutdown().await;
    Ok(())
}
