//! brokerctl invoked as `rabbitmqctl` or `rabbitmq-diagnostics` (issue 15): the command lines
//! OpenStack's deployment tools run against RabbitMQ — kolla-ansible's health check and precheck,
//! the community.rabbitmq Ansible modules, openstack-helm's probes — with RabbitMQ's flags, output
//! shapes and exit codes (sysexits, as RabbitMQ's CLI: 64 usage, 65 bad data, 67 no such user,
//! 69 unavailable, 70 internal, 75 timeout). A command Warren has no counterpart for fails with
//! "not supported by Warren" and 64, never a silent success.

/// `println!` that ends the program quietly when standard output is gone (`rabbitmqctl status |
/// head`): a closed pipe is the reader's choice, not an error to panic on.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::rabbit::output::say(format_args!($($arg)*))
    };
}

mod args;
mod change;
mod health;
mod listing;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::admin::Failure;
pub use args::Line;

/// The RabbitMQ release whose command-line behaviour Warren follows (what `--version` and
/// `status` report as `rabbitmq_version`, which tools compare against).
pub const RABBITMQ_COMPAT: &str = "3.13.7";

/// Which RabbitMQ tool brokerctl is standing in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Ctl,
    Diagnostics,
}

impl Tool {
    /// The tool a program name (argv[0]) stands for, if any.
    pub fn of(program: &std::ffi::OsStr) -> Option<Tool> {
        let name = std::path::Path::new(program).file_name()?.to_str()?;
        match name {
            "rabbitmqctl" => Some(Tool::Ctl),
            "rabbitmq-diagnostics" => Some(Tool::Diagnostics),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Tool::Ctl => "rabbitmqctl",
            Tool::Diagnostics => "rabbitmq-diagnostics",
        }
    }
}

/// Why a command failed, and the exit code that says so.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub message: String,
}

impl Fail {
    pub fn usage(message: impl Into<String>) -> Fail {
        Fail {
            code: 64,
            message: message.into(),
        }
    }

    pub fn data(message: impl Into<String>) -> Fail {
        Fail {
            code: 65,
            message: message.into(),
        }
    }

    pub fn no_user(user: &str) -> Fail {
        Fail {
            code: 67,
            message: format!("User \"{user}\" does not exist"),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Fail {
        Fail {
            code: 69,
            message: message.into(),
        }
    }

    pub fn timeout(message: impl Into<String>) -> Fail {
        Fail {
            code: 75,
            message: message.into(),
        }
    }
}

/// A command being run: its line and the broker's admin socket.
pub struct Ctx {
    pub line: Line,
    socket: PathBuf,
    /// The node's name, asked once (see [`Ctx::node`]).
    node: std::cell::OnceCell<String>,
}

impl Ctx {
    /// One admin request; the broker's refusal becomes RabbitMQ's exit code for it.
    pub fn call(&self, request: Value) -> Result<Value, Fail> {
        crate::admin::call(&self.socket, &request).map_err(|e| {
            let message = e.to_string();
            match e.downcast_ref::<Failure>() {
                Some(Failure::Unavailable(_)) => Fail::unavailable(format!(
                    "unable to perform an operation on node '{}'. Please see diagnostics information and suggestions below.\n\n{message}",
                    self.node()
                )),
                Some(Failure::Refused(_)) if message.contains("no such user") => Fail {
                    code: 67,
                    message,
                },
                Some(Failure::Refused(_)) => Fail::data(message),
                None => Fail::unavailable(message),
            }
        })
    }

    /// The node's name as RabbitMQ's tools print it: on a cluster node its name in the cluster
    /// (the one `cluster_status` lists), else `warren@HOST` as RabbitMQ's `rabbit@HOST`.
    pub fn node(&self) -> String {
        self.node
            .get_or_init(|| {
                let status =
                    crate::admin::call(&self.socket, &json!({"command": "cluster_status"}));
                let own = status.ok().and_then(|s| {
                    s["nodes"]
                        .as_array()?
                        .iter()
                        .find(|n| n["link"] == json!("self"))?["name"]
                        .as_str()
                        .map(str::to_string)
                });
                own.unwrap_or_else(|| {
                    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map(|h| h.trim().to_string())
                        .unwrap_or_else(|_| "localhost".into());
                    format!("warren@{host}")
                })
            })
            .clone()
    }
}

/// Runs `args` (without the program name) as `tool` would.
pub fn main(tool: Tool, socket: PathBuf, args: Vec<String>) -> ExitCode {
    let line = match Line::parse(&args) {
        Ok(line) => line,
        Err(why) => return fail(Fail::usage(why)),
    };
    if line.version || line.words.first().map(String::as_str) == Some("version") {
        say!("{RABBITMQ_COMPAT}");
        return ExitCode::SUCCESS;
    }
    let Some(verb) = line.words.first().cloned() else {
        return fail(Fail::usage(format!(
            "usage: {} [-n NODE] [-q] [-s] [--formatter json|table] COMMAND [ARGS]",
            tool.name()
        )));
    };
    let ctx = Ctx {
        line,
        socket,
        node: Default::default(),
    };
    let result = listing::run(&ctx, &verb)
        .or_else(|| health::run(&ctx, &verb))
        .or_else(|| change::run(&ctx, &verb))
        .unwrap_or_else(|| {
            Err(Fail::usage(format!(
                "{} {verb}: not supported by Warren (see docs/operations.md, \"RabbitMQ's command-line tools\")",
                tool.name()
            )))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => fail(f),
    }
}

fn fail(f: Fail) -> ExitCode {
    eprintln!("Error:\n{}", f.message);
    ExitCode::from(f.code)
}
