//! `brokerctl`: the operator's CLI, with rabbitmqctl's verbs (`add_user`, `set_permissions -p / ...`).
//! Crate rule: it never reaches into the broker's internals; user, vhost, permission and listing verbs
//! are JSON requests on the broker's admin socket. The `ca` verbs work on files only: they run the
//! internal CA that issues per-service and per-node certificates (the Security Guide's "internally
//! managed CA").

mod admin;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use warren_pki::{write_pair, CertificateAuthority, Pem, Validity};

#[derive(Parser, Debug)]
#[command(name = "brokerctl", version, about = "Manage a Warren broker")]
struct Args {
    /// The broker's admin socket (default: $WARREN_ADMIN_SOCKET, else /var/lib/warren/admin.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The internal certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    #[command(flatten)]
    Admin(admin::AdminCommand),
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create a new CA (DIR/ca.pem and DIR/ca.key, the key 0600). Refuses to overwrite an existing one.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "Warren internal CA")]
        common_name: String,
    },
    /// Issue a client certificate whose CN is the user NAME (e.g. one per OpenStack service or node):
    /// writes OUT/NAME.pem and OUT/NAME.key (0600).
    IssueClient {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the certificate and key (default: the CA directory).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue a cluster node certificate (node-to-node mutual TLS; never accepted as a user login),
    /// valid for each --host: writes OUT/NAME.pem and OUT/NAME.key (0600).
    IssueNode {
        name: String,
        #[arg(long, required = true)]
        host: Vec<String>,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 825)]
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
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Ca { command } => ca(command),
        Command::Admin(command) => admin::run(args.socket, command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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

/// A certificate subject or file stem must be a plain name: no path separators, no control characters.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.contains('/')
        || name.starts_with('.')
        || name.chars().any(char::is_control)
    {
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

fn ca(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, common_name } => {
            if dir.join("ca.key").exists() || dir.join("ca.pem").exists() {
                bail!(
                    "{} already holds a CA; refusing to overwrite it",
                    dir.display()
                );
            }
            let ca = CertificateAuthority::create(&common_name)?;
            write(&dir, "ca", &ca.pem)
        }
        CaCommand::IssueClient {
            name,
            dir,
            out,
            days,
        } => {
            check_name(&name)?;
            let ca = load_ca(&dir)?;
            let pem = ca.issue_client(&name, Validity::days(days))?;
            write(out.as_deref().unwrap_or(&dir), &name, &pem)
        }
        CaCommand::IssueNode {
            name,
            host,
            dir,
            out,
            days,
        } => {
            check_name(&name)?;
            let ca = load_ca(&dir)?;
            let hosts: Vec<&str> = host.iter().map(String::as_str).collect();
            let pem = ca.issue_node(&name, &hosts, Validity::days(days))?;
            write(out.as_deref().unwrap_or(&dir), &name, &pem)
        }
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
    }
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
    fn init_then_issue_writes_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        ca(CaCommand::Init {
            dir: dir.path().into(),
            common_name: "t".into(),
        })
        .unwrap();
        assert!(
            ca(CaCommand::Init {
                dir: dir.path().into(),
                common_name: "t".into()
            })
            .is_err(),
            "no overwrite"
        );
        ca(CaCommand::IssueClient {
            name: "nova".into(),
            dir: dir.path().into(),
            out: None,
            days: 1,
        })
        .unwrap();
        let mode = std::fs::metadata(dir.path().join("nova.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
