//! Client certificates for the refusal tests: issued by the broker's own CA (unknown user, no CN,
//! expired) or by a foreign CA the broker does not trust.

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{DistinguishedName, DnType};
use warren_broker::pki::{CertificateAuthority, Pem, Validity};

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

    /// A client certificate from the broker's CA whose subject has an O but no CN.
    pub fn client_cert_without_cn(&self) -> Pem {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Warren tests");
        self.ca
            .issue_client_with(dn, Validity::days(1))
            .expect("client certificate without CN")
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
