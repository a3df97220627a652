//! Warren's internal certificate authority (rcgen): the CA `warren --dev` creates, the server and client
//! certificates it issues, and `brokerctl ca` for operators issuing per-service certificates. The same
//! code issues test fixtures (foreign CAs, expired certificates, client certificates with subject
//! alternative names or chosen serial numbers, and CRLs revoking them).
//!
//! Crate rule: files and certificates only; it knows nothing of AMQP or of the broker.

/// rcgen's name types, for callers building subjects.
pub use rcgen;

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

pub mod ca_dir;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A subject alternative name of a client certificate (what `cert_login_from = subject_alternative_name`
/// reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSan {
    Dns(String),
    Email(String),
    Uri(String),
}

/// What a client certificate may carry besides its subject: subject alternative names, in order, and
/// a chosen serial number (so a CRL can revoke it; otherwise the serial is derived from the key).
#[derive(Debug, Clone, Default)]
pub struct ClientExtras {
    pub subject_alt_names: Vec<ClientSan>,
    pub serial_number: Option<u64>,
}

/// A CA able to issue certificates.
pub struct CertificateAuthority {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

/// Validity window of an issued certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew) for `days` days.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// The organisational unit that marks cluster node certificates.
pub const NODE_UNIT: &str = "warren-node";

fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Warren");
    dn.push(DnType::CommonName, common_name);
    dn
}

impl CertificateAuthority {
    /// Creates a new self-signed CA valid for ten years.
    pub fn create(common_name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let v = Validity::days(3650);
        params.not_before = v.not_before;
        params.not_after = v.not_after;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(CertificateAuthority {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(pem: Pem) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(&pem.key)?;
        let issuer = Issuer::from_ca_cert_pem(&pem.cert, key)?;
        Ok(CertificateAuthority { pem, issuer })
    }

    /// Issues a server certificate for the given DNS names and IP addresses.
    pub fn issue_server(
        &self,
        common_name: &str,
        names: &[&str],
        validity: Validity,
    ) -> Result<Pem, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for name in names {
            params
                .subject_alt_names
                .push(match name.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName((*name).try_into()?),
                });
        }
        params.distinguished_name = subject(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, validity)
    }

    /// Issues a cluster node certificate: usable for both ends of node-to-node mutual TLS, valid for
    /// `hosts`, and marked with the organisational unit [`NODE_UNIT`] so that the broker never accepts it
    /// as a user login (and a user's certificate can never join the cluster).
    pub fn issue_node(
        &self,
        node: &str,
        hosts: &[&str],
        validity: Validity,
    ) -> Result<Pem, PkiError> {
        self.issue_node_with_serial(node, hosts, validity, None)
    }

    /// [`Self::issue_node`] with a chosen serial number (so a CRL can revoke it).
    pub fn issue_node_with_serial(
        &self,
        node: &str,
        hosts: &[&str],
        validity: Validity,
        serial: Option<u64>,
    ) -> Result<Pem, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.serial_number = serial.map(SerialNumber::from);
        for host in hosts {
            params
                .subject_alt_names
                .push(match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName((*host).try_into()?),
                });
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Warren");
        dn.push(DnType::OrganizationalUnitName, NODE_UNIT);
        dn.push(DnType::CommonName, node);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params, validity)
    }

    /// Issues a client certificate whose subject is built by `dn` (normally one CN: the user's name).
    pub fn issue_client_with(
        &self,
        dn: DistinguishedName,
        validity: Validity,
    ) -> Result<Pem, PkiError> {
        self.issue_client_with_extras(dn, &ClientExtras::default(), validity)
    }

    /// Issues a client certificate with subject `dn` plus the given subject alternative names and
    /// serial number.
    pub fn issue_client_with_extras(
        &self,
        dn: DistinguishedName,
        extras: &ClientExtras,
        validity: Validity,
    ) -> Result<Pem, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        for san in &extras.subject_alt_names {
            params.subject_alt_names.push(match san {
                ClientSan::Dns(v) => SanType::DnsName(v.as_str().try_into()?),
                ClientSan::Email(v) => SanType::Rfc822Name(v.as_str().try_into()?),
                ClientSan::Uri(v) => SanType::URI(v.as_str().try_into()?),
            });
        }
        params.serial_number = extras.serial_number.map(SerialNumber::from);
        self.sign(params, validity)
    }

    /// A PEM certificate revocation list signed by this CA (number `crl_number`, valid over
    /// `validity`) revoking the certificates with the given serial numbers.
    pub fn revocation_list(
        &self,
        crl_number: u64,
        revoked_serials: &[u64],
        validity: Validity,
    ) -> Result<String, PkiError> {
        let params = CertificateRevocationListParams {
            this_update: validity.not_before,
            next_update: validity.not_after,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: validity.not_before,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Issues a client certificate for user `common_name`.
    pub fn issue_client(&self, common_name: &str, validity: Validity) -> Result<Pem, PkiError> {
        self.issue_client_with(subject(common_name), validity)
    }

    fn sign(&self, mut params: CertificateParams, validity: Validity) -> Result<Pem, PkiError> {
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Where `warren --dev` keeps its PKI, under `DATA_DIR/tls/`.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// The CA's CRL (revoking what `brokerctl ca revoke --dir DATA_DIR/tls` recorded).
    pub crl: PathBuf,
}

/// Certificates `warren --dev` renews when they have less than this left.
const RENEW_BEFORE_DAYS: i64 = 30;
/// The CRL is refreshed when it has less than this left (it is valid for 30 days).
const REFRESH_CRL_BEFORE_DAYS: i64 = 7;

/// What [`DevPki::ensure`] did, for the broker to tell the developer.
#[derive(Debug, Default)]
pub struct DevPkiChanges {
    pub created: bool,
    /// One line per renewed certificate or refreshed CRL.
    pub renewed: Vec<String>,
}

/// Whether the PEM file at `path` has less than `days` left (or cannot be read).
fn expiring(path: &Path, days: i64) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|pem| ca_dir::seconds_left(&pem))
        .is_none_or(|left| left < days * 86_400)
}

impl DevPki {
    pub fn in_dir(tls_dir: &Path) -> Self {
        DevPki {
            ca_cert: tls_dir.join("ca.pem"),
            ca_key: tls_dir.join("ca.key"),
            server_cert: tls_dir.join("server.pem"),
            server_key: tls_dir.join("server.key"),
            admin_cert: tls_dir.join("admin.pem"),
            admin_key: tls_dir.join("admin.key"),
            crl: tls_dir.join("crl.pem"),
        }
    }

    /// Creates whatever is missing: the CA first, then the server and admin certificates it signs.
    /// Existing files are reused, so a restarted dev broker keeps its clients' certificates valid.
    /// Returns whether anything was created.
    pub fn ensure(tls_dir: &Path) -> Result<(Self, bool), PkiError> {
        let (pki, changes) = Self::ensure_fresh(tls_dir)?;
        Ok((pki, changes.created))
    }

    /// [`Self::ensure`], and also: the server and admin certificates are renewed when they have less
    /// than 30 days left, and the CA's CRL (`crl.pem`, revoking what `revoked.json` lists) is
    /// written when missing or within 7 days of its nextUpdate, so the development broker can load
    /// it exactly as a production broker loads `[tls] crls`.
    pub fn ensure_fresh(tls_dir: &Path) -> Result<(Self, DevPkiChanges), PkiError> {
        let (pki, created) = Self::ensure_created(tls_dir)?;
        let mut changes = DevPkiChanges {
            created,
            renewed: Vec::new(),
        };
        let ca = pki.load_ca()?;
        if expiring(&pki.server_cert, RENEW_BEFORE_DAYS) {
            pki.issue_server(&ca)?;
            changes.renewed.push(format!(
                "renewed {} (less than {RENEW_BEFORE_DAYS} days left; valid for a year)",
                pki.server_cert.display()
            ));
        }
        if expiring(&pki.admin_cert, RENEW_BEFORE_DAYS) {
            pki.issue_admin(&ca)?;
            changes.renewed.push(format!(
                "renewed {} (less than {RENEW_BEFORE_DAYS} days left; valid for a year): clients using the old one keep working until it expires",
                pki.admin_cert.display()
            ));
        }
        if expiring(&pki.crl, REFRESH_CRL_BEFORE_DAYS) {
            let had = pki.crl.exists();
            let revoked = ca_dir::write_crl(tls_dir, &ca)?;
            if had {
                changes.renewed.push(format!(
                    "refreshed {} ({revoked} revoked; valid for {} days)",
                    pki.crl.display(),
                    ca_dir::CRL_DAYS
                ));
            }
        }
        Ok((pki, changes))
    }

    /// The server certificate for localhost, valid for a year.
    fn issue_server(&self, ca: &CertificateAuthority) -> Result<(), PkiError> {
        let pem = ca.issue_server(
            "localhost",
            &["localhost", "127.0.0.1", "::1"],
            Validity::days(365),
        )?;
        write_pair(&self.server_cert, &self.server_key, &pem)
    }

    /// The `admin` user's client certificate, valid for a year.
    fn issue_admin(&self, ca: &CertificateAuthority) -> Result<(), PkiError> {
        let pem = ca.issue_client("admin", Validity::days(365))?;
        write_pair(&self.admin_cert, &self.admin_key, &pem)
    }

    /// A cluster node's certificate and key for `warren --dev --cluster` (`nodes/<name>.pem` and
    /// `.key` beside the CA), for 127.0.0.1: issued when missing or expiring, as the others are.
    pub fn ensure_node(&self, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let dir = self
            .ca_cert
            .parent()
            .map(|tls| tls.join("nodes"))
            .unwrap_or_else(|| PathBuf::from("nodes"));
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        if !key.exists() || expiring(&cert, RENEW_BEFORE_DAYS) {
            let ca = self.load_ca()?;
            let pem = ca.issue_node(name, &["127.0.0.1", "localhost"], Validity::days(365))?;
            write_pair(&cert, &key, &pem)?;
        }
        Ok((cert, key))
    }

    /// The dev CA, from its files.
    pub fn load_ca(&self) -> Result<CertificateAuthority, PkiError> {
        let cert = std::fs::read_to_string(&self.ca_cert).map_err(io_err(&self.ca_cert))?;
        let key = std::fs::read_to_string(&self.ca_key).map_err(io_err(&self.ca_key))?;
        CertificateAuthority::from_pem(Pem { cert, key })
    }

    fn ensure_created(tls_dir: &Path) -> Result<(Self, bool), PkiError> {
        let pki = DevPki::in_dir(tls_dir);
        std::fs::create_dir_all(tls_dir).map_err(io_err(tls_dir))?;
        let ca = if pki.ca_cert.exists() && pki.ca_key.exists() {
            let cert = std::fs::read_to_string(&pki.ca_cert).map_err(io_err(&pki.ca_cert))?;
            let key = std::fs::read_to_string(&pki.ca_key).map_err(io_err(&pki.ca_key))?;
            CertificateAuthority::from_pem(Pem { cert, key })?
        } else {
            let ca = CertificateAuthority::create("Warren dev CA")?;
            write_pair(&pki.ca_cert, &pki.ca_key, &ca.pem)?;
            // A new CA invalidates certificates signed by a previous one.
            let _ = std::fs::remove_file(&pki.server_cert);
            let _ = std::fs::remove_file(&pki.admin_cert);
            let _ = std::fs::remove_file(&pki.crl);
            ca
        };
        let mut created = false;
        if !(pki.server_cert.exists() && pki.server_key.exists()) {
            pki.issue_server(&ca)?;
            created = true;
        }
        if !(pki.admin_cert.exists() && pki.admin_key.exists()) {
            pki.issue_admin(&ca)?;
            created = true;
        }
        Ok((pki, created))
    }
}

/// Writes a certificate (0644) and its key (0600), each atomically.
pub fn write_pair(cert_path: &Path, key_path: &Path, pem: &Pem) -> Result<(), PkiError> {
    warren_storage::write_atomic(key_path, pem.key.as_bytes(), 0o600).map_err(io_err(key_path))?;
    warren_storage::write_atomic(cert_path, pem.cert.as_bytes(), 0o644).map_err(io_err(cert_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;
    use x509_parser::prelude::{parse_x509_crl, FromDer, X509Certificate};

    fn der(pem: &str) -> Vec<u8> {
        parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }

    #[test]
    fn client_extras_set_the_serial_and_subject_alternative_names() {
        let ca = CertificateAuthority::create("test CA").unwrap();
        let extras = ClientExtras {
            subject_alt_names: vec![
                ClientSan::Email("bob@example.com".into()),
                ClientSan::Uri("spiffe://example/bob".into()),
                ClientSan::Dns("bob.example".into()),
            ],
            serial_number: Some(4242),
        };
        let pem = ca
            .issue_client_with_extras(subject("bob"), &extras, Validity::days(1))
            .unwrap();
        let cert_der = der(&pem.cert);
        let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
        assert_eq!(cert.raw_serial(), &[0x10, 0x92]);
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(
            sans,
            &vec![
                GeneralName::RFC822Name("bob@example.com"),
                GeneralName::URI("spiffe://example/bob"),
                GeneralName::DNSName("bob.example"),
            ]
        );
        // Without extras the serial is still set (derived from the key) and there are no SANs.
        let plain = der(&ca.issue_client("bob", Validity::days(1)).unwrap().cert);
        let (_, plain) = X509Certificate::from_der(&plain).unwrap();
        assert!(plain.subject_alternative_name().unwrap().is_none());
    }

    #[test]
    fn revocation_lists_name_the_ca_and_the_revoked_serials() {
        let ca = CertificateAuthority::create("test CA").unwrap();
        let crl = ca
            .revocation_list(7, &[4242, 1], Validity::days(1))
            .unwrap();
        assert!(crl.starts_with("-----BEGIN X509 CRL-----"), "{crl}");
        let crl_der = der(&crl);
        let (_, crl) = parse_x509_crl(&crl_der).unwrap();
        assert_eq!(crl.issuer().to_string(), "O=Warren, CN=test CA");
        let serials: Vec<_> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        assert_eq!(serials, vec![vec![0x10, 0x92], vec![0x01]]);
        assert!(
            ca.revocation_list(8, &[], Validity::days(1)).is_ok(),
            "an empty CRL"
        );
    }
}
