//! Which node a verified link certificate belongs to. rustls has checked the chain (node CA, CRLs,
//! validity); this adds what only a node certificate has. webpki accepts a client certificate with
//! no extended key usage at all (HA.md §5.6), and a user's certificate from the same CA would pass the
//! chain check, so the certificate must carry the node marker (OU `warren-node`) and both serverAuth
//! and clientAuth, as `brokerctl ca issue --node` issues them, and exactly one CN: the node's name,
//! which the caller then finds in the peer list.

use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a chain-valid certificate is not a node's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotANode {
    #[error("the certificate could not be parsed")]
    Unparsable,
    #[error(
        "the certificate is not a node certificate (no OU {})",
        warren_pki::NODE_UNIT
    )]
    NoNodeMarker,
    #[error("a node certificate needs both the serverAuth and clientAuth extended key usages")]
    KeyUsage,
    #[error("a node certificate needs exactly one CN (it has {0})")]
    CommonNames(usize),
}

/// The node name (CN) of a node certificate (DER), or why it is not one.
pub(crate) fn node_name(der: &[u8]) -> Result<String, NotANode> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| NotANode::Unparsable)?;
    let marked = cert
        .subject()
        .iter_organizational_unit()
        .any(|ou| ou.as_str() == Ok(warren_pki::NODE_UNIT));
    if !marked {
        return Err(NotANode::NoNodeMarker);
    }
    let both_usages = match cert.extended_key_usage() {
        Ok(Some(eku)) => eku.value.server_auth && eku.value.client_auth,
        _ => false,
    };
    if !both_usages {
        return Err(NotANode::KeyUsage);
    }
    let names: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .collect();
    match names.as_slice() {
        [name] => Ok((*name).to_string()),
        other => Err(NotANode::CommonNames(other.len())),
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use warren_pki::{CertificateAuthority, Validity};

    use super::*;

    fn der(pem: &warren_pki::Pem) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.cert.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn only_node_certificates_name_a_node() {
        let ca = CertificateAuthority::create("test CA").unwrap();
        let node = ca
            .issue_node("n2", &["127.0.0.12"], Validity::days(1))
            .unwrap();
        assert_eq!(node_name(&der(&node)), Ok("n2".into()));
        let user = ca.issue_client("n2", Validity::days(1)).unwrap();
        assert_eq!(node_name(&der(&user)), Err(NotANode::NoNodeMarker));
        let server = ca
            .issue_server("n2", &["127.0.0.12"], Validity::days(1))
            .unwrap();
        assert_eq!(node_name(&der(&server)), Err(NotANode::NoNodeMarker));
        assert_eq!(node_name(b"not a certificate"), Err(NotANode::Unparsable));
        // The node marker on a user's certificate (clientAuth only) is not enough.
        let mut dn = warren_pki::rcgen::DistinguishedName::new();
        dn.push(
            warren_pki::rcgen::DnType::OrganizationalUnitName,
            warren_pki::NODE_UNIT,
        );
        dn.push(warren_pki::rcgen::DnType::CommonName, "n2");
        let marked_user = ca.issue_client_with(dn, Validity::days(1)).unwrap();
        assert_eq!(node_name(&der(&marked_user)), Err(NotANode::KeyUsage));
    }
}
