//! The TLS side of the listener: a rustls server configuration that accepts only TLS 1.2/1.3 clients
//! presenting a certificate chained to the configured CA bundle (never the system roots), and the
//! start-up check that refuses key files other users could read.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;
use crate::crl::{CrlError, CrlNumbers};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found ({detail})")]
    Pem {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error(
        "refusing to start: key file {path} has mode {mode:04o}; it must not be readable by group or others (chmod 600 {path})"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("refusing to start: key file {path} is owned by uid {owner}, not by the broker's user (uid {me})")]
    KeyOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("invalid CA bundle {path}: {detail}")]
    CaBundle { path: PathBuf, detail: String },
    #[error("invalid server certificate or key: {0}")]
    Config(#[from] rustls::Error),
    #[error(transparent)]
    Crl(#[from] CrlError),
    #[error(
        "refusing to start: {path} has mode {mode:04o}; group or others could write it (chmod go-w {path})"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("refusing to start: {path} is owned by uid {owner}, neither root nor the broker's user (uid {me})")]
    Owner { path: PathBuf, owner: u32, me: u32 },
}

/// Refuses a file or directory the broker trusts (the CA bundle, a CRL, the data directory) when
/// someone other than root or the broker's user owns it, or group or others may write it: whoever
/// can write the CA bundle can add a trust anchor, and the data directory holds the definitions.
pub(crate) fn check_trusted_path(path: &Path) -> Result<(), TlsError> {
    let (owner, mode, me) = ownership(path)?;
    if mode & 0o022 != 0 {
        return Err(TlsError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    if owner != me && owner != 0 {
        return Err(TlsError::Owner {
            path: path.to_path_buf(),
            owner,
            me,
        });
    }
    Ok(())
}

/// The owner and permission bits of `path` (links followed), and the broker's own uid.
fn ownership(path: &Path) -> Result<(u32, u32, u32), TlsError> {
    let meta = fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let me = rustix::process::geteuid().as_raw();
    Ok((meta.uid(), meta.permissions().mode() & 0o7777, me))
}

/// Refuses a private key readable by group or others, or owned by another user.
pub(crate) fn check_key_file(path: &Path) -> Result<(), TlsError> {
    let (owner, mode, me) = ownership(path)?;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if owner != me {
        return Err(TlsError::KeyOwner {
            path: path.to_path_buf(),
            owner,
            me,
        });
    }
    Ok(())
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
            detail: "empty".into(),
        });
    }
    Ok(certs)
}

/// The reason a TLS handshake failed, when it failed for the peer's certificate (none, an unknown
/// CA, expired, revoked, the wrong key usage...): what the audit log records as a refused
/// authentication. Other failures (not TLS at all, a dropped connection) give None.
pub(crate) fn certificate_refusal(error: &std::io::Error) -> Option<String> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    matches!(
        tls,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_)
    )
    .then(|| tls.to_string())
}

/// Refuses a set of TLS files before any is read: the key (see [`check_key_file`]), the CA bundle
/// and the CRLs (see [`check_trusted_path`]).
pub(crate) fn check_material(
    key: &Path,
    ca_bundle: &Path,
    crls: &[PathBuf],
) -> Result<(), TlsError> {
    check_key_file(key)?;
    check_trusted_path(ca_bundle)?;
    for path in crls {
        check_trusted_path(path)?;
    }
    Ok(())
}

/// The PEM private key at `path` (its mode and owner checked by [`check_key_file`] first).
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: "private key",
        detail: e.to_string(),
    })
}

/// The trust anchors of a CA bundle, and the CA certificates themselves (CRLs are checked against
/// them).
pub(crate) fn read_roots(
    path: &Path,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), TlsError> {
    let cas = read_certs(path)?;
    let mut roots = RootCertStore::empty();
    for ca in &cas {
        roots.add(ca.clone()).map_err(|e| TlsError::CaBundle {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    Ok((roots, cas))
}

/// The server configuration, and the CRL numbers it put in force (see [`crate::crl`]).
pub(crate) struct Loaded {
    pub config: Arc<ServerConfig>,
    pub crl_numbers: CrlNumbers,
}

/// Builds the server configuration from the configured files (checked first). `in_force` holds the
/// CRL numbers of the configuration being replaced (empty at start).
pub(crate) fn server_config(tls: &TlsConfig, in_force: &CrlNumbers) -> Result<Loaded, TlsError> {
    check_material(&tls.key, &tls.ca_bundle, &tls.crls)?;
    let (roots, cas) = read_roots(&tls.ca_bundle)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (crls, crl_numbers) = crate::crl::load(&tls.crls, &cas, tls.crl_expired, in_force)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| TlsError::CaBundle {
            path: tls.ca_bundle.clone(),
            detail: e.to_string(),
        })?;
    let chain = read_certs(&tls.cert)?;
    let key = read_key(&tls.key)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Loaded {
        config: Arc::new(config),
        crl_numbers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("server.key");
        std::fs::write(&key, "x").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o644, false),
        ] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let result = check_key_file(&key);
            assert_eq!(result.is_ok(), ok, "mode {mode:o}: {result:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let tls = TlsConfig {
            ca_bundle: "/nonexistent/ca.pem".into(),
            cert: "/nonexistent/s.pem".into(),
            key: "/nonexistent/s.key".into(),
            crls: Vec::new(),
            crl_expired: Default::default(),
        };
        let e = match server_config(&tls, &CrlNumbers::default()) {
            Ok(_) => panic!("loaded without files"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("/nonexistent/s.key"), "{e}");
    }
}
