//! The SASL EXTERNAL identity of a TLS peer, read from its (already verified) certificate as RabbitMQ's
//! `ssl_cert_login_from` does: the subject CN (default; exactly one CN required), the whole subject
//! distinguished name, or a subject alternative name of a given type and index. An identity with
//! control characters is refused.

use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// Where the user name comes from (`[auth] cert_login_from`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertLoginFrom {
    #[default]
    CommonName,
    DistinguishedName,
    SubjectAlternativeName,
}

/// Which subject alternative names count (`[auth] cert_login_san_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SanType {
    #[default]
    Dns,
    Email,
    Uri,
}

/// The identity rule: what to read, and for SANs which type and which one of them (0 = first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IdentityRule {
    pub from: CertLoginFrom,
    pub san_type: SanType,
    pub san_index: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum IdentityError {
    #[error("client certificate could not be parsed")]
    Unparsable,
    #[error("client certificate subject has no CN")]
    NoCommonName,
    #[error("client certificate subject has {0} CNs; exactly one is required")]
    SeveralCommonNames(usize),
    #[error("client certificate has no {0:?} subject alternative name at index {1}")]
    NoSan(SanType, usize),
    #[error("a cluster node certificate cannot log in as a user")]
    NodeCertificate,
    #[error("client certificate identity is not valid (empty, not UTF-8, or contains control characters)")]
    BadIdentity,
}

/// Extracts the user name from a DER client certificate by `rule`.
pub(crate) fn identity_from_certificate(
    der: &[u8],
    rule: &IdentityRule,
) -> Result<String, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
    // A cluster node certificate never logs in as a user.
    if cert
        .subject()
        .iter_organizational_unit()
        .any(|ou| ou.as_str() == Ok(warren_pki::NODE_UNIT))
    {
        return Err(IdentityError::NodeCertificate);
    }
    let name = match rule.from {
        CertLoginFrom::CommonName => common_name(cert.subject())?,
        CertLoginFrom::DistinguishedName => distinguished_name(cert.subject())?,
        CertLoginFrom::SubjectAlternativeName => san(&cert, rule.san_type, rule.san_index)?,
    };
    // Control and format characters (U+202E and the like) could make one identity look like another.
    if warren_storage::names::check(&name).is_err() {
        return Err(IdentityError::BadIdentity);
    }
    Ok(name)
}

fn common_name(subject: &X509Name<'_>) -> Result<String, IdentityError> {
    let cns: Vec<_> = subject.iter_common_name().collect();
    match cns.as_slice() {
        [] => Err(IdentityError::NoCommonName),
        [cn] => cn
            .as_str()
            .map(str::to_string)
            .map_err(|_| IdentityError::BadIdentity),
        several => Err(IdentityError::SeveralCommonNames(several.len())),
    }
}

/// The subject as RabbitMQ prints it: RDNs most specific first, `ATTR=value` joined by commas, with
/// RFC 4514 escaping (e.g. `CN=nova,O=Example`).
fn distinguished_name(subject: &X509Name<'_>) -> Result<String, IdentityError> {
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    for rdn in subject.iter_rdn() {
        let mut attrs = Vec::new();
        for attr in rdn.iter() {
            let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                .map(str::to_string)
                .unwrap_or_else(|_| attr.attr_type().to_id_string());
            let value = attr.as_str().map_err(|_| IdentityError::BadIdentity)?;
            attrs.push(format!("{key}={}", escape_rdn_value(value)));
        }
        parts.push(attrs.join("+"));
    }
    parts.reverse();
    Ok(parts.join(","))
}

fn escape_rdn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let edge = i == 0 && (c == '#' || c == ' ') || i + 1 == value.chars().count() && c == ' ';
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn san(cert: &X509Certificate<'_>, kind: SanType, index: usize) -> Result<String, IdentityError> {
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    names
        .iter()
        .filter_map(|n| match (kind, n) {
            (SanType::Dns, GeneralName::DNSName(v)) => Some(*v),
            (SanType::Email, GeneralName::RFC822Name(v)) => Some(*v),
            (SanType::Uri, GeneralName::URI(v)) => Some(*v),
            _ => None,
        })
        .nth(index)
        .map(str::to_string)
        .ok_or(IdentityError::NoSan(kind, index))
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
        assert_eq!(
            identity_from_certificate(&der(&ok.cert), &IdentityRule::default()),
            Ok("nova".into())
        );

        let mut none = DistinguishedName::new();
        none.push(DnType::OrganizationName, "x");
        let none = ca.issue_client_with(none, Validity::days(1)).unwrap();
        assert_eq!(
            identity_from_certificate(&der(&none.cert), &IdentityRule::default()),
            Err(IdentityError::NoCommonName)
        );

        let ctl = ca.issue_client("ad\nmin", Validity::days(1)).unwrap();
        assert_eq!(
            identity_from_certificate(&der(&ctl.cert), &IdentityRule::default()),
            Err(IdentityError::BadIdentity)
        );
    }

    #[test]
    fn distinguished_name_and_san_rules() {
        let ca = CertificateAuthority::create("test CA").unwrap();
        let client = der(&ca.issue_client("nova", Validity::days(1)).unwrap().cert);
        let dn = IdentityRule {
            from: CertLoginFrom::DistinguishedName,
            ..Default::default()
        };
        assert_eq!(
            identity_from_certificate(&client, &dn),
            Ok("CN=nova,O=Warren".into())
        );

        let server = der(&ca
            .issue_server(
                "h",
                &["a.example", "b.example", "10.0.0.1"],
                Validity::days(1),
            )
            .unwrap()
            .cert);
        let san = |index| IdentityRule {
            from: CertLoginFrom::SubjectAlternativeName,
            san_type: SanType::Dns,
            san_index: index,
        };
        assert_eq!(
            identity_from_certificate(&server, &san(1)),
            Ok("b.example".into())
        );
        assert_eq!(
            identity_from_certificate(&server, &san(2)),
            Err(IdentityError::NoSan(SanType::Dns, 2))
        );
        let email = IdentityRule {
            from: CertLoginFrom::SubjectAlternativeName,
            san_type: SanType::Email,
            san_index: 0,
        };
        assert_eq!(
            identity_from_certificate(&server, &email),
            Err(IdentityError::NoSan(SanType::Email, 0))
        );
        assert_eq!(escape_rdn_value("a,b"), "a\\,b");
        let node = der(&ca
            .issue_node("node1", &["node1.example"], Validity::days(1))
            .unwrap()
            .cert);
        assert_eq!(
            identity_from_certificate(&node, &IdentityRule::default()),
            Err(IdentityError::NodeCertificate)
        );
    }
}
