//! The internal CA, offline on its files (never through the broker): create it, issue per-service
//! client certificates, cluster node certificates and broker server certificates, revoke them.
//!
//! CA_DIR holds `ca.pem`, `ca.key` (0600), `issued.json` (what was issued: name, serial, kind, expiry),
//! `revoked.json` and `crl.pem` — point the broker's `[tls] crls` at the latter and send it SIGHUP.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};
use warren_pki::{write_pair, CertificateAuthority, ClientExtras, Pem, Validity};

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a new CA (DIR/ca.pem and DIR/ca.key, the key 0600). Refuses to overwrite an existing one.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "Warren internal CA")]
        common_name: String,
    },
    /// Issue a certificate: a user's client certificate (CN = NAME), or with --node a cluster node
    /// certificate that can never log in as a user. Writes OUT/NAME.pem and OUT/NAME.key (0600).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// A cluster node certificate (needs --host).
        #[arg(long)]
        node: bool,
        /// DNS names or IP addresses of the node.
        #[arg(long)]
        host: Vec<String>,
        /// Validity in days, 1 to 3650.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=MAX_DAYS))]
        days: i64,
        /// Where to write the certificate and key (default: the CA directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Same as `issue --name NAME` (kept for the spelling in older notes).
    #[command(hide = true)]
    IssueClient {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days, 1 to 3650.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=MAX_DAYS))]
        days: i64,
    },
    /// Issue a server certificate for the broker, valid for each --host (DNS name or IP address).
    IssueServer {
        #[arg(long, required = true)]
        host: Vec<String>,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        /// File name stem of the written files.
        #[arg(long, default_value = "server")]
        stem: String,
        /// Validity in days, 1 to 3650.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=MAX_DAYS))]
        days: i64,
    },
    /// Revoke every certificate issued to NAME and rewrite CA_DIR/crl.pem (then SIGHUP the broker).
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Rewrite CA_DIR/crl.pem (it is valid for 30 days: refresh it before then).
    Crl {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn load_ca(dir: &Path) -> anyhow::Result<CertificateAuthority> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (run `brokerctl ca init` first?)",
                path.display()
            )
        })
    };
    Ok(CertificateAuthority::from_pem(Pem {
        cert: read("ca.pem")?,
        key: read("ca.key")?,
    })?)
}

/// The longest validity `--days` accepts (ten years; a client certificate should be far shorter).
const MAX_DAYS: i64 = 3650;

/// A certificate subject or file stem must be a plain name: no path separators, no control or
/// invisible formatting characters (the broker refuses such identities anyway).
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if name.contains('/') || name.starts_with('.') || warren_storage::names::check(name).is_err() {
        bail!("invalid name {name:?}: use letters, digits, '-', '_' or '.' (not leading)");
    }
    Ok(())
}

fn write(out: &Path, stem: &str, pem: &Pem) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (cert, key) = (
        out.join(format!("{stem}.pem")),
        out.join(format!("{stem}.key")),
    );
    write_pair(&cert, &key, pem)?;
    println!(
        "wrote {} and {} (key mode 0600)",
        cert.display(),
        key.display()
    );
    Ok(())
}

fn read_list(path: &Path) -> anyhow::Result<Vec<Value>> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .with_context(|| format!("cannot parse {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_list(path: &Path, list: &[Value]) -> anyhow::Result<()> {
    let data = serde_json::to_vec_pretty(list)?;
    replace_file(path, &data)
}

/// Crash-safe replacement (the storage crate's temp file, fsync, rename, fsync dir), readable by all:
/// these files hold serial numbers and CRLs, no secrets.
fn replace_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    warren_storage::write_atomic(path, data, 0o644)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A fresh, random, positive 63-bit serial number.
fn new_serial() -> u64 {
    rand::random::<u64>() >> 1 | 1
}

fn record_issue(dir: &Path, name: &str, kind: &str, serial: u64, days: i64) -> anyhow::Result<()> {
    let path = dir.join("issued.json");
    let mut issued = read_list(&path)?;
    issued.push(json!({"name": name, "kind": kind, "serial": serial, "days": days}));
    write_list(&path, &issued)
}

fn write_crl(dir: &Path, ca: &CertificateAuthority) -> anyhow::Result<usize> {
    let revoked = warren_pki::ca_dir::write_crl(dir, ca)?;
    println!(
        "wrote {} ({revoked} revoked; valid for {} days; reload the broker with SIGHUP)",
        dir.join("crl.pem").display(),
        warren_pki::ca_dir::CRL_DAYS
    );
    Ok(revoked)
}

pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, common_name } => {
            if dir.join("ca.key").exists() || dir.join("ca.pem").exists() {
                bail!(
                    "{} already holds a CA; refusing to overwrite it",
                    dir.display()
                );
            }
            let ca = CertificateAuthority::create(&common_name)?;
            write(&dir, "ca", &ca.pem)?;
            write_crl(&dir, &ca).map(|_| ())
        }
        CaCommand::Issue {
            dir,
            name,
            node,
            host,
            days,
            out,
        } => issue(&dir, &name, node, &host, days, out),
        CaCommand::IssueClient {
            name,
            dir,
            out,
            days,
        } => issue(&dir, &name, false, &[], days, out),
        CaCommand::IssueServer {
            host,
            dir,
            out,
            stem,
            days,
        } => {
            check_name(&stem)?;
            let ca = load_ca(&dir)?;
            let hosts: Vec<&str> = host.iter().map(String::as_str).collect();
            let pem = ca.issue_server(hosts[0], &hosts, Validity::days(days))?;
            write(out.as_deref().unwrap_or(&dir), &stem, &pem)
        }
        CaCommand::Revoke { dir, name } => {
            let ca = load_ca(&dir)?;
            let issued = read_list(&dir.join("issued.json"))?;
            let mine: Vec<Value> = issued
                .into_iter()
                .filter(|i| i["name"] == name.as_str())
                .collect();
            if mine.is_empty() {
                bail!(
                    "no certificate was issued to '{name}' by the CA in {}",
                    dir.display()
                );
            }
            let path = dir.join("revoked.json");
            let mut revoked = read_list(&path)?;
            for i in mine {
                if !revoked.iter().any(|r| r["serial"] == i["serial"]) {
                    revoked.push(i);
                }
            }
            write_list(&path, &revoked)?;
            write_crl(&dir, &ca).map(|_| ())
        }
        CaCommand::Crl { dir } => {
            let ca = load_ca(&dir)?;
            write_crl(&dir, &ca).map(|_| ())
        }
    }
}

fn issue(
    dir: &Path,
    name: &str,
    node: bool,
    hosts: &[String],
    days: i64,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    check_name(name)?;
    let ca = load_ca(dir)?;
    let serial = new_serial();
    let pem = if node {
        if hosts.is_empty() {
            bail!("a node certificate needs at least one --host (its DNS name or address)");
        }
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        ca.issue_node_with_serial(name, &hosts, Validity::days(days), Some(serial))?
    } else {
        let extras = ClientExtras {
            serial_number: Some(serial),
            ..Default::default()
        };
        let mut dn = warren_pki::rcgen::DistinguishedName::new();
        dn.push(warren_pki::rcgen::DnType::OrganizationName, "Warren");
        dn.push(warren_pki::rcgen::DnType::CommonName, name);
        ca.issue_client_with_extras(dn, &extras, Validity::days(days))?
    };
    record_issue(
        dir,
        name,
        if node { "node" } else { "client" },
        serial,
        days,
    )?;
    write(out.as_deref().unwrap_or(dir), name, &pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        for bad in ["", "../x", "a/b", ".hidden", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("nova-compute.node1").unwrap();
    }

    #[test]
    fn init_issue_revoke() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        run(CaCommand::Init {
            dir: d.clone(),
            common_name: "t".into(),
        })
        .unwrap();
        assert!(
            run(CaCommand::Init {
                dir: d.clone(),
                common_name: "t".into()
            })
            .is_err(),
            "no overwrite"
        );
        run(CaCommand::Issue {
            dir: d.clone(),
            name: "nova".into(),
            node: false,
            host: vec![],
            days: 1,
            out: None,
        })
        .unwrap();
        run(CaCommand::Issue {
            dir: d.clone(),
            name: "compute01".into(),
            node: true,
            host: vec!["compute01.example".into()],
            days: 1,
            out: None,
        })
        .unwrap();
        // PROBE F13: out-of-range validity is refused by the parser, not a panic or an expired
        // certificate.
        for days in ["0", "-5", "3651", "99999999"] {
            let parsed =
                <CaCommand as clap::Subcommand>::augment_subcommands(clap::Command::new("ca"))
                    .try_get_matches_from([
                        "ca", "issue", "--dir", "x", "--name", "n", "--days", days,
                    ]);
            assert!(parsed.is_err(), "--days {days} was accepted");
        }
        let mode = std::fs::metadata(d.join("nova.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(run(CaCommand::Revoke {
            dir: d.clone(),
            name: "nobody".into()
        })
        .is_err());
        run(CaCommand::Revoke {
            dir: d.clone(),
            name: "nova".into(),
        })
        .unwrap();
        let revoked = read_list(&d.join("revoked.json")).unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(std::fs::read_to_string(d.join("crl.pem"))
            .unwrap()
            .contains("BEGIN X509 CRL"));
    }
}
