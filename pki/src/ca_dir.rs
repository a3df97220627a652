//! The files of a CA directory besides the CA itself: `revoked.json` (what `brokerctl ca revoke`
//! recorded) and `crl.pem` (the CRL a broker loads), shared by brokerctl and `warren --dev`, which
//! refreshes its own CA's CRL at start. A CRL's number is the time it was written, so a fresh CRL
//! always outnumbers an older one (the broker refuses to go back to a lower number on reload).

use std::path::Path;

use time::OffsetDateTime;
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::{parse_x509_crl, FromDer, X509Certificate};
use x509_parser::time::ASN1Time;

use crate::{io_err, CertificateAuthority, PkiError, Validity};

/// How long a CRL written here is valid.
pub const CRL_DAYS: i64 = 30;

/// The serial numbers listed in `dir/revoked.json` (none when the file does not exist).
pub(crate) fn revoked_serials(dir: &Path) -> Result<Vec<u64>, PkiError> {
    let path = dir.join("revoked.json");
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let list: Vec<serde_json::Value> = serde_json::from_slice(&data)
        .map_err(|e| io_err(&path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    Ok(list.iter().filter_map(|r| r["serial"].as_u64()).collect())
}

/// Writes `dir/crl.pem` revoking every serial of `revoked.json`, valid for [`CRL_DAYS`]; returns how
/// many it revokes.
pub fn write_crl(dir: &Path, ca: &CertificateAuthority) -> Result<usize, PkiError> {
    let serials = revoked_serials(dir)?;
    let number = OffsetDateTime::now_utc().unix_timestamp().max(1) as u64;
    let pem = ca.revocation_list(number, &serials, Validity::days(CRL_DAYS))?;
    let path = dir.join("crl.pem");
    warren_storage::write_atomic(&path, pem.as_bytes(), 0o644).map_err(io_err(&path))?;
    Ok(serials.len())
}

/// Seconds until the first PEM certificate (or CRL's nextUpdate) in `pem` expires; `None` when it
/// cannot be read (callers then replace it).
pub(crate) fn seconds_left(pem: &str) -> Option<i64> {
    let (_, block) = parse_x509_pem(pem.as_bytes()).ok()?;
    let now = ASN1Time::now().timestamp();
    if block.label == "X509 CRL" {
        let (_, crl) = parse_x509_crl(&block.contents).ok()?;
        Some(crl.next_update()?.timestamp() - now)
    } else {
        let (_, cert) = X509Certificate::from_der(&block.contents).ok()?;
        Some(cert.validity().not_after.timestamp() - now)
    }
}
