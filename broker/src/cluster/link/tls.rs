//! The node links' TLS: TLS 1.3 only, ALPN `warren-cluster/1`, the node certificate on both ends,
//! and peers verified against the node CA bundle and its CRLs in both directions. The dialling side
//! checks the peer's certificate against the address it dialled (a SAN match), as any TLS client
//! does; both sides then check that the certificate is a node's ([`super::identity`]) and the node
//! one of the configured peers, before a single cluster message is read.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::cluster::config::ClusterTlsConfig;
use crate::crl::{CrlNumbers, ExpiredCrl};
use crate::tls::{check_material, read_certs, read_key, read_roots, TlsError};

/// The application protocol of node links; the AMQP listener never offers it.
pub(crate) const ALPN: &[u8] = b"warren-cluster/1";

/// Both ends of the node links' TLS.
#[derive(Clone)]
pub(crate) struct LinkTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
    /// The chain, CA and CRL check of the acceptor, to re-check links already up on a reload.
    pub verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The CRL numbers of the CRLs it checks against, per issuer.
    pub crl_numbers: CrlNumbers,
}

/// Builds both ends from `[cluster.tls]`, refusing unsafe key files and untrusted paths as the AMQP
/// listener does. A CRL past its nextUpdate is used (its revocations still hold) and warned about;
/// one older than the CRL of its issuer `in_force` (a lower CRL number) is refused, as on the AMQP
/// listener, so that no reload or restart re-admits a revoked node.
pub(crate) fn link_tls(tls: &ClusterTlsConfig, in_force: &CrlNumbers) -> Result<LinkTls, TlsError> {
    check_material(&tls.key, &tls.ca_bundle, &tls.crls)?;
    let (roots, cas) = read_roots(&tls.ca_bundle)?;
    let roots = Arc::new(roots);
    let (crls, crl_numbers) = crate::crl::load(&tls.crls, &cas, ExpiredCrl::Warn, in_force)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let bundle_error = |e: rustls::server::VerifierBuilderError| TlsError::CaBundle {
        path: tls.ca_bundle.clone(),
        detail: e.to_string(),
    };

    let chain = read_certs(&tls.cert)?;
    let key = read_key(&tls.key)?;

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(crls.clone())
            .build()
            .map_err(bundle_error)?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier.clone())
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls)
        .build()
        .map_err(bundle_error)?;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    Ok(LinkTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
        verifier: client_verifier,
        crl_numbers,
    })
}
