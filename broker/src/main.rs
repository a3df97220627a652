//! `warren`: parse flags, set up logging, build the configuration (from a file, or the embedded `--dev`
//! default with its own CA), bind the listener and run the broker until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use warren_broker::config::Config;
use warren_broker::pki::DevPki;
use warren_storage::dir_lock::DirLock;

#[derive(Parser, Debug)]
#[command(
    name = "warren",
    version,
    about = "A TLS-only AMQP 0-9-1 broker for OpenStack's control plane"
)]
struct Args {
    /// Run the embedded development broker: its own CA, a localhost server certificate and an `admin`
    /// client certificate under DATA_DIR/tls, vhost `/`, user `admin`.
    #[arg(long, conflicts_with = "config")]
    dev: bool,
    /// Data directory for --dev.
    #[arg(long, default_value = "./warren-dev", requires = "dev")]
    data_dir: PathBuf,
    /// Listen address for --dev (with --cluster, node i listens on its port + i - 1).
    #[arg(long, default_value = "127.0.0.1:5671", requires = "dev")]
    listen: SocketAddr,
    /// With --dev: run a development cluster of N node processes on 127.0.0.1 (node links on the
    /// AMQP ports + 20000), in the foreground until Ctrl-C.
    #[arg(long, value_name = "N", requires = "dev")]
    cluster: Option<u64>,
    /// Production configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the default configuration as TOML and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren: {}", describe(&e));
            std::process::ExitCode::FAILURE
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

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", toml::to_string_pretty(&Config::default())?);
        return Ok(());
    }
    if let (true, Some(count)) = (args.dev, args.cluster) {
        warren_broker::logging::init(&Default::default())?;
        // The PKI and the parent directory's lock first, as for a single dev broker.
        let (_, _lock) = dev_config(&args.data_dir, args.listen)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(warren_broker::cluster::dev::run(
            &args.data_dir,
            args.listen,
            count,
            shutdown_signal(),
        ));
    }
    let (config, lock) = if args.dev {
        dev_config(&args.data_dir, args.listen)?
    } else if let Some(path) = &args.config {
        (Config::load(path)?, None)
    } else {
        anyhow::bail!(
            "nothing to run: pass --dev for the embedded development broker or --config FILE"
        );
    };
    warren_broker::logging::init(&config.log).context("cannot open the log file")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(Arc::new(config), args.dev, lock))
}

/// The `--dev` configuration, its PKI created or refreshed under the data directory's lock (taken
/// first, so a second `warren --dev` on the same directory refuses before it rewrites anything).
fn dev_config(data_dir: &Path, listen: SocketAddr) -> anyhow::Result<(Config, Option<DirLock>)> {
    warren_broker::broker::create_private_dir(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let lock = DirLock::acquire(data_dir)?;
    let (_, changes) =
        DevPki::ensure_fresh(&data_dir.join("tls")).context("creating the development PKI")?;
    if changes.created {
        eprintln!(
            "warren --dev: created a CA and certificates in {}",
            data_dir.join("tls").display()
        );
    }
    for renewed in &changes.renewed {
        eprintln!("warren --dev: {renewed}");
    }
    let config = Config::dev(data_dir, listen);
    config.validate()?;
    Ok((config, Some(lock)))
}

async fn serve(config: Arc<Config>, dev: bool, lock: Option<DirLock>) -> anyhow::Result<()> {
    let addr = config.listen[0];
    let server = Arc::new(warren_broker::Server::open(config.clone(), lock)?);
    server
        .start_cluster()
        .await
        .context("cannot start the node links")?;
    let socket = config.admin_socket();
    let admin = warren_broker::admin::bind(&socket)
        .with_context(|| format!("cannot create the admin socket {}", socket.display()))?;
    tokio::spawn(warren_broker::admin::serve(server.broker.clone(), admin));
    // A node that joins a running cluster serves clients only once it is a member: before, it has
    // none of the cluster's definitions, and a client's declaration there could not be made.
    if let Some(cluster) = server.broker.cluster() {
        // (A member's groups report the membership from its log a moment after they start.)
        let settled =
            tokio::time::timeout(std::time::Duration::from_secs(2), cluster.until_member()).await;
        if settled.is_err() {
            let me = cluster.links.config().me().cloned();
            tracing::warn!(
                "this node waits to be added to its cluster before it serves clients: run \
                 `brokerctl cluster add_node {} {} {}` on a member",
                me.as_ref().map_or(0, |p| p.id),
                me.as_ref().map_or("NAME", |p| p.name.as_str()),
                me.as_ref()
                    .map_or(String::from("ADDR"), |p| p.addr.to_string()),
            );
            warren_broker::service_manager::status(
                "waiting to be added to the cluster (brokerctl cluster add_node on a member)",
            );
            tokio::select! {
                () = cluster.until_member() => tracing::info!("added to the cluster: serving clients"),
                () = shutdown_signal() => {
                    server.stop_cluster().await;
                    server.broker.close();
                    return Ok(());
                }
            }
        }
    }
    let mut listeners = Vec::new();
    for addr in &config.listen {
        listeners.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        );
    }
    let bound = listeners[0].local_addr()?;
    if dev {
        print_dev_instructions(&config, bound);
    }
    if let Some(bound) = server.serve_metrics(dev).await? {
        println!(
            "Prometheus metrics: {}://{bound}/metrics (and /metrics/per-object)",
            if config.metrics.tls { "https" } else { "http" },
        );
    }
    if let Some(pid_file) = &config.admin.pid_file {
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the pid file {}", pid_file.display()))?;
    }
    println!("Warren listening on {bound} (TLS only, client certificates required)");
    tracing::info!(%addr, "listening");
    warren_broker::service_manager::ready(&format!("serving AMQP over TLS on {bound}"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reloader = server.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangup.recv().await.is_some() {
            if let Err(e) = warren_broker::logging::reopen() {
                tracing::error!(error = %e, "SIGHUP: cannot reopen the log file; logging on to the old one");
            }
            match reloader.reload_tls() {
                Ok(()) => {
                    let crls = reloader.broker.config.tls.crls.len();
                    tracing::info!(
                        crl_files = crls,
                        "SIGHUP: reloaded the CA bundle, certificate, key and CRLs"
                    )
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: reload failed; the previous TLS configuration stays in force")
                }
            }
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let server = server.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            server
                .serve(listener, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    warren_broker::service_manager::stopping();
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    server.stop_cluster().await;
    if let Err(e) = server.broker.durability.flush() {
        tracing::error!(error = %e, "could not flush the log at shutdown");
    }
    server.broker.close();
    if let Some(pid_file) = &config.admin.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn print_dev_instructions(config: &Config, bound: SocketAddr) {
    let pki = DevPki::in_dir(&config.data_dir.join("tls"));
    let abs = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let (ca, cert, key) = (abs(&pki.ca_cert), abs(&pki.admin_cert), abs(&pki.admin_key));
    let port = bound.port();
    let socket = abs(&config.admin_socket());
    let tls_dir = abs(&config.data_dir.join("tls"));
    println!(
        r#"Warren development broker: vhost '/', user 'admin' (certificate identity, SASL EXTERNAL).

Connect with pika:

    import ssl, pika
    ctx = ssl.create_default_context(cafile="{ca}")
    ctx.load_cert_chain("{cert}", "{key}")
    params = pika.ConnectionParameters(
        host="localhost", port={port}, virtual_host="/",
        ssl_options=pika.SSLOptions(ctx, "localhost"),
        credentials=pika.credentials.ExternalCredentials())
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("hello")
    ch.basic_publish("", "hello", b"Hello from Warren")
    print(ch.basic_get("hello", auto_ack=True))
    conn.close()

Who published a message: a consumer that asks gets the publisher's authenticated identity in the
x-warren-publisher header (a client cannot forge it; nobody else sees it):

    ch.basic_consume("hello", on_message, arguments={{"x-warren-publisher": True}})

(or declare the queue with that argument, or list the vhost under [publisher_header] vhosts).

Manage it (users are certificate identities; issue their certificates from the same CA):

    brokerctl --socket {socket} add_user nova
    brokerctl --socket {socket} set_permissions -p / nova ".*" ".*" ".*"
    brokerctl ca issue --dir {tls_dir} --name nova --out .

OpenStack (oslo.messaging), in each service's configuration:

    [DEFAULT]
    transport_url = rabbit://admin@localhost:{port}/

    [oslo_messaging_rabbit]
    ssl = True
    ssl_ca_file = {ca}
    ssl_cert_file = {cert}
    ssl_key_file = {key}
    rabbit_login_method = EXTERNAL
"#
    );
}
