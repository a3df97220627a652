//! `brokerctl`: the operator's CLI, with rabbitmqctl's verbs (`add_user`, `set_permissions -p / ...`).
//! Crate rule: it never reaches into the broker's internals; user, vhost, permission and listing verbs
//! are JSON requests on the broker's admin socket. The `ca` verbs work on files only: they run the
//! internal CA that issues per-service and per-node certificates (the Security Guide's "internally
//! managed CA").

mod admin;
mod ca;
mod rabbit;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "brokerctl", version, about = "Manage a Warren broker")]
struct Args {
    /// The broker's admin socket (default: $WARREN_ADMIN_SOCKET, else /var/lib/warren/admin.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Output of listing verbs: tab-separated columns with a header, or JSON.
    #[arg(long, global = true, value_enum, default_value = "table")]
    format: admin::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The internal certificate authority.
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
    /// The cluster this node belongs to.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    #[command(flatten)]
    Admin(admin::AdminCommand),
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// The cluster's nodes and this node's links to them (as `cluster_status`).
    Status,
    /// Snapshot the metadata group here and purge its log (as `cluster_snapshot`).
    Snapshot,
    /// Hand a group's leadership to another node (as `transfer_leadership`).
    #[command(name = "transfer-leadership", alias = "transfer_leadership")]
    TransferLeadership {
        #[arg(long)]
        to: Option<u64>,
        /// `metadata` (default) or `shard-N` (as `cluster status` lists them).
        #[arg(long)]
        group: Option<String>,
    },
    /// Add a node started with `join = true` to every group (as `add_node`).
    #[command(name = "add-node", alias = "add_node")]
    AddNode {
        /// Its node id (never one a removed node had).
        id: u64,
        /// Its name: its node certificate's CN.
        name: String,
        /// Its node-link address (host:port).
        addr: String,
    },
    /// Remove a node from every group (as `remove_node`); run it on another node.
    #[command(name = "remove-node", alias = "remove_node")]
    RemoveNode { id: u64 },
}

impl From<ClusterCommand> for admin::AdminCommand {
    fn from(command: ClusterCommand) -> Self {
        match command {
            ClusterCommand::Status => admin::AdminCommand::ClusterStatus,
            ClusterCommand::Snapshot => admin::AdminCommand::ClusterSnapshot,
            ClusterCommand::TransferLeadership { to, group } => {
                admin::AdminCommand::TransferLeadership { to, group }
            }
            ClusterCommand::AddNode { id, name, addr } => {
                admin::AdminCommand::AddNode { id, name, addr }
            }
            ClusterCommand::RemoveNode { id } => admin::AdminCommand::RemoveNode { id },
        }
    }
}

fn main() -> std::process::ExitCode {
    // Installed as rabbitmqctl and rabbitmq-diagnostics too: then it reads RabbitMQ's command lines.
    let mut argv = std::env::args_os();
    if let Some(tool) = argv.next().as_deref().and_then(rabbit::Tool::of) {
        let Ok(words) = argv.map(|a| a.into_string()).collect::<Result<Vec<_>, _>>() else {
            eprintln!("Error:\narguments must be UTF-8");
            return std::process::ExitCode::from(64);
        };
        return rabbit::main(tool, admin::socket_path(None), words);
    }
    let args = Args::parse();
    let result = match args.command {
        Command::Ca { command } => ca::run(command),
        Command::Cluster { command } => admin::run(args.socket, args.format, command.into()),
        Command::Admin(command) => admin::run(args.socket, args.format, command),
    };
    // Exit codes: 0 done, 1 refused or failed, 2 usage (clap), 69 the broker is unreachable.
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", describe(&e));
            match e.downcast_ref::<admin::Failure>() {
                Some(admin::Failure::Unavailable(_)) => std::process::ExitCode::from(69),
                _ => std::process::ExitCode::FAILURE,
            }
        }
    }
}

/// The error and its causes, each once: a message that already quotes its cause (thiserror's
/// `"{path}: {source}"`) is not followed by that cause again (PROBE F14: "os error 2: os error 2").
fn describe(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .fold(String::new(), |all, c| match all.is_empty() {
            true => c,
            false if all.contains(&c) => all,
            false => format!("{all}: {c}"),
        })
}
