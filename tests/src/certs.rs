//! Client certificates: issued by the broker's own CA (users, no CN, expired, with subject alternative
//! names or a chosen serial number for CRLs) or by a foreign CA the broker does not trust.

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{DistinguishedName, DnType};
use warren_broker::config::Config;
use warren_broker::pki::{CertificateAuthority, ClientExtras, DevPki, Pem, Validity};

use crate::TestBroker;

const DAY: Duration = Duration::from_secs(86_400);

impl TestBroker {
    /// The `admin` certificate and key `warren --dev` created.
    pub fn admin_cert(&self) -> Pem {
        Pem {
            cert: std::fs::read_to_string(&self.pki.admin_cert).expect("admin certificate"),
            key: std::fs::read_to_string(&self.pki.admin_key).expect("admin key"),
        }
    }

    /// A valid client certificate from the broker's CA with CN `common_name`.
    pub fn client_cert(&self, common_name: &str) -> Pem {
        self.ca
            .issue_client(common_name, Validity::days(1))
            .expect("client certificate")
    }

    /// A client certificate from the broker's CA whose validity ended yesterday.
    pub fn expired_client_cert(&self, common_name: &str) -> Pem {
        let now = Validity::days(0);
        let expired = Validity {
            not_before: now.not_before - 10 * DAY,
            not_after: now.not_before - DAY,
        };
        self.ca
            .issue_client(common_name, expired)
            .expect("expired client certificate")
    }

    /// A cluster node certificate from the broker's CA (which must never log in over AMQP).
    pub fn node_cert(&self, name: &str) -> Pem {
        self.ca
            .issue_node(name, &["127.0.0.1"], Validity::days(1))
            .expect("node certificate")
    }

    /// A client certificate from the broker's CA whose subject has an O but no CN.
    pub fn client_cert_without_cn(&self) -> Pem {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Warren tests");
        self.ca
            .issue_client_with(dn, Validity::days(1))
            .expect("client certificate without CN")
    }

    /// A client certificate from the broker's CA with subject `dn` plus SANs and/or a serial number.
    pub fn client_cert_with(&self, dn: DistinguishedName, extras: &ClientExtras) -> Pem {
        self.ca
            .issue_client_with_extras(dn, extras, Validity::days(1))
            .expect("client certificate with extras")
    }

    /// A PEM CRL from the broker's CA revoking the given serial numbers.
    pub fn revocation_list(&self, crl_number: u64, revoked: &[u64]) -> String {
        self.ca
            .revocation_list(crl_number, revoked, Validity::days(1))
            .expect("CRL")
    }

    /// A new server certificate for `localhost` / 127.0.0.1 from the broker's CA (for reloads).
    pub fn server_cert(&self) -> Pem {
        self.ca
            .issue_server("localhost", &["localhost", "127.0.0.1"], Validity::days(1))
            .expect("server certificate")
    }

    /// Issues a certificate for `common_name`, writes it (see [`Self::write_pem`]) and returns the
    /// paths, for amqprs.
    pub fn user_cert_files(&self, common_name: &str) -> (PathBuf, PathBuf) {
        self.write_pem(common_name, &self.client_cert(common_name))
    }

    /// Writes `pem` as `<name>.pem` / `<name>.key` in the broker's directory (for amqprs, which reads
    /// files) and returns both paths.
    pub fn write_pem(&self, name: &str, pem: &Pem) -> (PathBuf, PathBuf) {
        let cert = self.path(&format!("{name}.pem"));
        let key = self.path(&format!("{name}.key"));
        std::fs::write(&cert, &pem.cert).expect("write certificate");
        std::fs::write(&key, &pem.key).expect("write key");
        (cert, key)
    }
}

/// A client certificate for `admin` signed by a CA the broker has never seen.
pub fn foreign_client_cert(common_name: &str) -> Pem {
    let ca = CertificateAuthority::create("Foreign CA").expect("foreign CA");
    ca.issue_client(common_name, Validity::days(1))
        .expect("foreign client certificate")
}

/// A subject `O=Warren, CN=<common_name>`, as the dev CA issues (the DN identity is `CN=..,O=Warren`).
pub fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Warren");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The dev CA of a broker that has not started yet, from inside [`TestBroker::start_with`]'s
/// closure (the PKI exists by then): for CRLs and certificates the configuration must name.
pub fn dev_ca(config: &Config) -> CertificateAuthority {
    let pki = DevPki::in_dir(&config.data_dir.join("tls"));
    CertificateAuthority::from_pem(Pem {
        cert: std::fs::read_to_string(&pki.ca_cert).expect("CA certificate"),
        key: std::fs::read_to_string(&pki.ca_key).expect("CA key"),
    })
    .expect("CA loads")
}
