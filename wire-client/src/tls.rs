//! Getting a TLS stream to a broker: the rustls client configuration (aws-lc-rs, the provider the
//! broker uses) and the TCP connect, optionally from a chosen local address (allowlist tests).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

pub type Stream = TlsStream<TcpStream>;

/// A client certificate chain and its key, both PEM.
#[derive(Debug, Clone, Copy)]
pub struct ClientCert<'a> {
    pub chain: &'a [u8],
    pub key: &'a [u8],
}

/// Trusts the certificates in the PEM file `ca`; presents `identity` if given. Without `resumption`
/// every connection pays a full handshake, as a new client process would (the benchmark's churn).
pub fn client_config(
    ca: &Path,
    identity: Option<ClientCert<'_>>,
    resumption: bool,
) -> Result<Arc<ClientConfig>> {
    let tls = |what: &str, e: &dyn std::fmt::Display| Error::Tls(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(ca).map_err(|e| tls(&ca.display().to_string(), &e))?;
    for cert in certs {
        let cert = cert.map_err(|e| tls("CA certificate", &e))?;
        roots.add(cert).map_err(|e| tls("CA certificate", &e))?;
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("protocol versions", &e))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(cert) => {
            let chain = CertificateDer::pem_slice_iter(cert.chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls("client certificate", &e))?;
            let key = PrivateKeyDer::from_pem_slice(cert.key).map_err(|e| tls("client key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls("client certificate", &e))?
        }
        None => builder.with_no_client_auth(),
    };
    if !resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// A broker's address and the TLS configuration to reach it with.
pub struct Endpoint {
    pub addr: SocketAddr,
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl Endpoint {
    /// `server_name` is what the broker's certificate must be valid for ("localhost" for the dev PKI).
    pub fn new(addr: SocketAddr, config: Arc<ClientConfig>, server_name: &str) -> Result<Self> {
        let server_name = ServerName::try_from(server_name)
            .map_err(|e| Error::Tls(format!("server name {server_name:?}: {e}")))?
            .to_owned();
        Ok(Endpoint {
            addr,
            connector: TlsConnector::from(config),
            server_name,
        })
    }

    /// TCP connect (from `source` if given; TCP_NODELAY, as the brokers set on their side) and the
    /// TLS handshake. With TLS 1.3 the broker verifies the client certificate after the client's
    /// handshake completes, so a refused certificate may only show as a closed connection on the
    /// first read.
    pub async fn connect(&self, source: Option<IpAddr>) -> std::io::Result<Stream> {
        let tcp = tcp_connect(self.addr, source).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.server_name.clone(), tcp).await
    }
}

/// A TCP connection to `addr`, optionally from a chosen local address.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    match source {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        }
    }
}
