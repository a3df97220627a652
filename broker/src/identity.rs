//! The SASL EXTERNAL identity of a TLS peer: the subject CN of its (already verified) certificate.
//! Exactly one CN is required; a certificate with none or several, or a CN with control characters,
//! has no identity (RabbitMQ's `ssl_cert_login_from = common_name`).

use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("client certificate could not be parsed")]
    Unparsable,
    #[error("client certificate subject has no CN")]
    NoCommonName,
    #[error("client certificate subject has {0} CNs; exactly one is required")]
    SeveralCommonNames(usize),
    #[error(
        "client certificate CN is not a valid identity (not UTF-8 or contains control characters)"
    )]
    BadCommonName,
}

/// Extracts the user name from a DER client certificate.
pub fn identity_from_certificate(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
    let cns: Vec<_> = cert.subject().iter_common_name().collect();
    match cns.as_slice() {
        [] => Err(IdentityError::NoCommonName),
        [cn] => {
            let name = cn.as_str().map_err(|_| IdentityError::BadCommonName)?;
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(IdentityError::BadCommonName);
            }
            Ok(name.to_string())
        }
        several => Err(IdentityError::SeveralCommonNames(several.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, Validity};
    use rcgen::{DistinguishedName, DnType};
    use rustls::pki_types::{pem::PemObject, CertificateDer};

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn exactly_one_clean_cn_is_an_identity() {
        let ca = CertificateAuthority::create("test CA").unwrap();
        let ok = ca.issue_client("nova", Validity::days(1)).unwrap();
        assert_eq!(identity_from_certificate(&der(&ok.cert)), Ok("nova".into()));

        let mut none = DistinguishedName::new();
        none.push(DnType::OrganizationName, "x");
        let none = ca.issue_client_with(none, Validity::days(1)).unwrap();
        assert_eq!(
            identity_from_certificate(&der(&none.cert)),
            Err(IdentityError::NoCommonName)
        );

        let ctl = ca.issue_client("ad\nmin", Validity::days(1)).unwrap();
        assert_eq!(
            identity_from_certificate(&der(&ctl.cert)),
            Err(IdentityError::BadCommonName)
        );
    }
}
