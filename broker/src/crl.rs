//! Certificate revocation lists, loaded only once they are known good. A CRL whose signature does not
//! verify against a CA of the bundle is refused (at start, and on SIGHUP, which keeps the running
//! configuration): rustls would otherwise accept it at load and fail every handshake after, locking
//! everyone out (PROBE F4). A CRL past its nextUpdate is refused or warned about as configured, and on
//! reload a CRL whose number is lower than the one in force for its CA is refused, so an older, validly
//! signed CRL cannot re-admit a revoked certificate (PROBE F8). The numbers in force are kept in
//! `DATA_DIR/crl-numbers.json`, so the rule holds across restarts too.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::{Deserialize, Serialize};
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::{parse_x509_crl, FromDer, X509Certificate};
use x509_parser::time::ASN1Time;

/// What to do with a CRL whose nextUpdate has passed (`[tls] crl_expired`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpiredCrl {
    /// Use it and log a warning at every load (its revocations still hold).
    #[default]
    Warn,
    /// Refuse it: the broker does not start, a reload keeps the previous configuration.
    Refuse,
}

#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("cannot read CRL {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid CRL {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("refusing CRL {path}: its signature does not verify against the CA '{issuer}' of the CA bundle")]
    BadSignature { path: PathBuf, issuer: String },
    #[error("refusing CRL {path}: its issuer '{issuer}' is not a CA of the CA bundle")]
    UnknownIssuer { path: PathBuf, issuer: String },
    #[error("refusing CRL {path}: it expired at {next_update} (nextUpdate); issue a fresh one (brokerctl ca crl), or set [tls] crl_expired = \"warn\"")]
    Expired { path: PathBuf, next_update: String },
    #[error("refusing CRL {path}: it has no CRL number, while a numbered CRL of '{issuer}' was in force; an older CRL could re-admit revoked certificates")]
    Unnumbered { path: PathBuf, issuer: String },
    #[error("{path}: {detail} (delete it to accept any CRL number again)")]
    Numbers { path: PathBuf, detail: String },
    #[error("refusing CRL {path}: its number {number} is lower than that of the CRL in force for '{issuer}' ({in_force}); an older CRL could re-admit revoked certificates")]
    RolledBack {
        path: PathBuf,
        issuer: String,
        number: BigUint,
        in_force: BigUint,
    },
}

/// The CRL number in force per issuing CA (its DER subject), to refuse a rollback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CrlNumbers(HashMap<Vec<u8>, BigUint>);

/// Where the numbers in force are kept, in the data directory.
pub(crate) const NUMBERS_FILE: &str = "crl-numbers.json";

impl CrlNumbers {
    /// The numbers kept at `path` (none when the file does not exist).
    pub fn read(path: &Path) -> Result<Self, CrlError> {
        let numbers_error = |detail: String| CrlError::Numbers {
            path: path.to_path_buf(),
            detail,
        };
        let data = match fs::read(path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(numbers_error(e.to_string())),
        };
        let map: HashMap<String, String> =
            serde_json::from_slice(&data).map_err(|e| numbers_error(e.to_string()))?;
        let mut numbers = HashMap::new();
        for (issuer, number) in map {
            let issuer = hex_decode(&issuer).ok_or_else(|| numbers_error("bad issuer".into()))?;
            let number = number
                .parse::<BigUint>()
                .map_err(|e| numbers_error(e.to_string()))?;
            numbers.insert(issuer, number);
        }
        Ok(CrlNumbers(numbers))
    }

    /// The highest number per issuer of `self` and `newer`.
    pub(crate) fn merged(&self, newer: &CrlNumbers) -> CrlNumbers {
        let mut merged = self.0.clone();
        for (issuer, number) in &newer.0 {
            let kept = merged.entry(issuer.clone()).or_default();
            if number > kept {
                *kept = number.clone();
            }
        }
        CrlNumbers(merged)
    }

    /// Keeps the highest number per issuer of `self` and `newer` at `path` (written atomically).
    pub(crate) fn merge_and_write(
        &self,
        newer: &CrlNumbers,
        path: &Path,
    ) -> std::io::Result<CrlNumbers> {
        let merged = self.merged(newer).0;
        let text: HashMap<String, String> = merged
            .iter()
            .map(|(issuer, number)| (hex_encode(issuer), number.to_string()))
            .collect();
        let data = serde_json::to_vec_pretty(&text).map_err(std::io::Error::other)?;
        warren_storage::write_atomic(path, &data, 0o600)?;
        Ok(CrlNumbers(merged))
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What one load saw of an issuer: its highest CRL number, and a file without a number.
#[derive(Default)]
struct Seen {
    highest: Option<BigUint>,
    unnumbered: Option<PathBuf>,
    last_path: PathBuf,
    name: String,
}

/// Reads every CRL of `paths`, each verified against `cas` and checked for freshness and rollback.
pub(crate) fn load(
    paths: &[PathBuf],
    cas: &[CertificateDer<'static>],
    expired: ExpiredCrl,
    in_force: &CrlNumbers,
) -> Result<(Vec<CertificateRevocationListDer<'static>>, CrlNumbers), CrlError> {
    let cas: Vec<X509Certificate<'_>> = cas
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
        .collect();
    let mut crls = Vec::new();
    let mut seen: HashMap<Vec<u8>, Seen> = HashMap::new();
    for path in paths {
        let data = fs::read(path).map_err(|source| CrlError::Read {
            path: path.clone(),
            source,
        })?;
        let before = crls.len();
        for crl in CertificateRevocationListDer::pem_slice_iter(&data) {
            let crl = crl.map_err(|e| invalid(path, e))?;
            check(path, &crl, &cas, expired, &mut seen)?;
            crls.push(crl);
        }
        if crls.len() == before {
            return Err(invalid(path, "the file holds no PEM CRL"));
        }
    }
    // Per issuer, the newest CRL of the set must not be older than the one in force.
    let mut numbers = CrlNumbers::default();
    for (issuer, s) in seen {
        if let Some(current) = in_force.0.get(&issuer) {
            match &s.highest {
                Some(highest) if highest < current => {
                    return Err(CrlError::RolledBack {
                        path: s.last_path,
                        issuer: s.name,
                        number: highest.clone(),
                        in_force: current.clone(),
                    })
                }
                None => {
                    return Err(CrlError::Unnumbered {
                        path: s.unnumbered.unwrap_or(s.last_path),
                        issuer: s.name,
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(highest) = s.highest {
            numbers.0.insert(issuer, highest);
        }
    }
    Ok((crls, numbers))
}

fn invalid(path: &Path, detail: impl std::fmt::Display) -> CrlError {
    CrlError::Invalid {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn check(
    path: &Path,
    der: &[u8],
    cas: &[X509Certificate<'_>],
    expired: ExpiredCrl,
    seen: &mut HashMap<Vec<u8>, Seen>,
) -> Result<(), CrlError> {
    let (_, crl) = parse_x509_crl(der).map_err(|e| invalid(path, e))?;
    let issuer = crl.issuer();
    let name = issuer.to_string();
    let signers: Vec<_> = cas
        .iter()
        .filter(|ca| ca.subject().as_raw() == issuer.as_raw())
        .collect();
    if signers.is_empty() {
        return Err(CrlError::UnknownIssuer {
            path: path.to_path_buf(),
            issuer: name,
        });
    }
    if !signers
        .iter()
        .any(|ca| crl.verify_signature(ca.public_key()).is_ok())
    {
        return Err(CrlError::BadSignature {
            path: path.to_path_buf(),
            issuer: name,
        });
    }
    if let Some(next) = crl.next_update() {
        if next < ASN1Time::now() {
            let next_update = next.to_string();
            match expired {
                ExpiredCrl::Refuse => {
                    return Err(CrlError::Expired {
                        path: path.to_path_buf(),
                        next_update,
                    })
                }
                ExpiredCrl::Warn => tracing::warn!(
                    crl = %path.display(),
                    %next_update,
                    "the CRL has expired (its revocations still apply); issue a fresh one"
                ),
            }
        }
    }
    let s = seen.entry(issuer.as_raw().to_vec()).or_default();
    s.last_path = path.to_path_buf();
    s.name = name;
    match crl.crl_number() {
        Some(number) => {
            if s.highest.as_ref().is_none_or(|h| number > h) {
                s.highest = Some(number.clone());
            }
        }
        None => s.unnumbered = Some(path.to_path_buf()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_pki::{CertificateAuthority, Validity};

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn only_crls_signed_by_a_ca_of_the_bundle_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create("test CA").unwrap();
        // Same subject, other key: the forgery of PROBE F4.
        let impostor = CertificateAuthority::create("test CA").unwrap();
        let stranger = CertificateAuthority::create("stranger CA").unwrap();
        let cas = vec![der(&ca.pem.cert)];
        let none = CrlNumbers::default();
        let good = write(
            dir.path(),
            "good.pem",
            &ca.revocation_list(1, &[7], Validity::days(30)).unwrap(),
        );
        let (crls, numbers) = load(&[good], &cas, ExpiredCrl::Refuse, &none).unwrap();
        assert_eq!(crls.len(), 1);
        assert_eq!(numbers.0.len(), 1);

        let forged = write(
            dir.path(),
            "forged.pem",
            &impostor
                .revocation_list(2, &[], Validity::days(30))
                .unwrap(),
        );
        let e = load(&[forged], &cas, ExpiredCrl::Warn, &none).unwrap_err();
        assert!(matches!(e, CrlError::BadSignature { .. }), "{e}");
        let foreign = write(
            dir.path(),
            "foreign.pem",
            &stranger
                .revocation_list(2, &[], Validity::days(30))
                .unwrap(),
        );
        let e = load(&[foreign], &cas, ExpiredCrl::Warn, &none).unwrap_err();
        assert!(matches!(e, CrlError::UnknownIssuer { .. }), "{e}");
        let empty = write(dir.path(), "empty.pem", "no CRL here\n");
        let e = load(&[empty], &cas, ExpiredCrl::Warn, &none).unwrap_err();
        assert!(e.to_string().starts_with("invalid CRL "), "{e}");
    }

    #[test]
    fn expired_crls_follow_the_policy_and_older_numbers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create("test CA").unwrap();
        let cas = vec![der(&ca.pem.cert)];
        let none = CrlNumbers::default();
        let now = time::OffsetDateTime::now_utc();
        let past = Validity {
            not_before: now - time::Duration::days(31),
            not_after: now - time::Duration::days(1),
        };
        let stale = write(
            dir.path(),
            "stale.pem",
            &ca.revocation_list(3, &[], past).unwrap(),
        );
        let e = load(
            std::slice::from_ref(&stale),
            &cas,
            ExpiredCrl::Refuse,
            &none,
        )
        .unwrap_err();
        assert!(matches!(e, CrlError::Expired { .. }), "{e}");
        assert!(load(&[stale], &cas, ExpiredCrl::Warn, &none).is_ok());

        let newer = write(
            dir.path(),
            "newer.pem",
            &ca.revocation_list(5, &[1], Validity::days(30)).unwrap(),
        );
        let (_, in_force) = load(
            std::slice::from_ref(&newer),
            &cas,
            ExpiredCrl::Refuse,
            &none,
        )
        .unwrap();
        let older = write(
            dir.path(),
            "older.pem",
            &ca.revocation_list(4, &[], Validity::days(30)).unwrap(),
        );
        let e = load(&[older], &cas, ExpiredCrl::Refuse, &in_force).unwrap_err();
        assert!(matches!(e, CrlError::RolledBack { .. }), "{e}");
        // The same CRL again (a plain SIGHUP) is fine.
        assert!(load(
            std::slice::from_ref(&newer),
            &cas,
            ExpiredCrl::Refuse,
            &in_force
        )
        .is_ok());
        // Two files of one CA: the newest counts, whatever the order.
        let older = write(
            dir.path(),
            "older2.pem",
            &ca.revocation_list(2, &[], Validity::days(30)).unwrap(),
        );
        let (_, both) = load(&[older, newer], &cas, ExpiredCrl::Refuse, &in_force).unwrap();
        assert_eq!(both, in_force);
        // Kept across restarts.
        let kept = dir.path().join(NUMBERS_FILE);
        let written = CrlNumbers::default().merge_and_write(&both, &kept).unwrap();
        assert_eq!(CrlNumbers::read(&kept).unwrap(), written);
    }
}
