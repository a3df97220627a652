//! The listener: accept TCP, complete the TLS handshake (client certificate mandatory) within its
//! timeout, then hand the stream to a connection task. Plain TCP or a refused certificate never reaches
//! AMQP code. On shutdown every connection is closed with 320 CONNECTION_FORCED.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::admission::Admission;
use crate::broker::Broker;
use crate::config::Config;
use crate::connection;
use crate::crl::CrlNumbers;

/// A configured broker ready to serve listeners.
pub struct Server {
    pub broker: Arc<Broker>,
    /// Replaced as a whole on reload (SIGHUP); connections already open keep their sessions.
    acceptor: RwLock<TlsAcceptor>,
    /// The CRL numbers of the configuration in force: a reload may not go back to an older CRL.
    crl_numbers: Mutex<CrlNumbers>,
    admission: Arc<Admission>,
}

/// Records a handshake refused for the client's certificate (none, an unknown CA, expired, revoked,
/// the wrong key usage...) in the audit log: a stolen but revoked certificate being tried must show
/// there, not only in the broker log. Handshakes that fail for other reasons (not TLS at all, a
/// cipher mismatch, a dropped connection) are not authentication attempts and stay in the broker log.
fn audit_refused_certificate(broker: &Broker, peer: std::net::SocketAddr, error: &std::io::Error) {
    let Some(detail) = crate::tls::certificate_refusal(error) else {
        return;
    };
    let source = peer.to_string();
    broker.audit.record_limited(
        &peer.ip().to_string(),
        &crate::audit::Event {
            kind: "authentication",
            action: "tls handshake",
            user: "",
            source: &source,
            vhost: None,
            result: "failure",
            detail: Some(&detail),
        },
    );
}

impl Server {
    /// The TLS acceptor in force (the one a SIGHUP reload last installed).
    pub fn tls_acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().clone()
    }

    /// Starts the Prometheus listener when `[metrics] listen` is set (`next_free`: on the next
    /// free port when that one is taken); the address it listens on.
    pub async fn serve_metrics(
        self: &Arc<Self>,
        next_free: bool,
    ) -> anyhow::Result<Option<std::net::SocketAddr>> {
        let Some(addr) = self.broker.config.metrics.listen else {
            return Ok(None);
        };
        let listener = crate::metrics::http::bind(addr, next_free)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for Prometheus on {addr}: {e}"))?;
        let bound = listener.local_addr()?;
        let tls = self.broker.config.metrics.tls.then(|| {
            let server = self.clone();
            let acceptor: crate::metrics::http::Tls = Arc::new(move || server.tls_acceptor());
            acceptor
        });
        tokio::spawn(crate::metrics::http::serve(
            listener,
            Arc::downgrade(&self.broker),
            tls,
        ));
        Ok(Some(bound))
    }

    /// Loads TLS material (refusing unsafe key files) and builds the broker state.
    pub fn new(config: Arc<Config>) -> anyhow::Result<Self> {
        Self::open(config, None)
    }

    /// As [`Server::new`], holding a data-directory lock taken earlier (see [`Broker::open`]).
    pub fn open(
        config: Arc<Config>,
        lock: Option<warren_storage::dir_lock::DirLock>,
    ) -> anyhow::Result<Self> {
        // The CRL numbers in force when the broker last ran: no restart goes back to an older CRL.
        let numbers_path = config.data_dir.join(crate::crl::NUMBERS_FILE);
        let kept = CrlNumbers::read(&numbers_path)?;
        let tls = crate::tls::server_config(&config.tls, &kept)?;
        let limits = &config.limits;
        let admission = Admission::new(
            config.network.allow.clone(),
            limits.max_pending_connections,
            limits.max_pending_per_ip,
        );
        let broker = Broker::open(config, lock)?;
        // Written once this broker holds the data directory.
        let in_force = kept.merge_and_write(&tls.crl_numbers, &numbers_path)?;
        Ok(Server {
            broker,
            acceptor: RwLock::new(TlsAcceptor::from(tls.config)),
            crl_numbers: Mutex::new(in_force),
            admission,
        })
    }

    /// Starts this broker as a cluster node when `[cluster]` says so (node links, then the metadata
    /// group): before the AMQP listeners, so that peers are reachable before any client can ask
    /// for a replicated change. Then imports `[definitions] load_at_boot`.
    pub async fn start_cluster(&self) -> anyhow::Result<()> {
        if self.broker.config.cluster.is_some() {
            self.start_cluster_node().await?;
        }
        self.load_definitions_at_boot().await
    }

    /// `[definitions] load_at_boot`: a RabbitMQ definitions file applied at every start (what
    /// exists is kept). A file that cannot be read or is refused stops the start with its error.
    async fn load_definitions_at_boot(&self) -> anyhow::Result<()> {
        let Some(path) = &self.broker.config.definitions.load_at_boot else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("[definitions] load_at_boot {}: {e}", path.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "[definitions] load_at_boot {}: not JSON: {e}",
                path.display()
            )
        })?;
        let result =
            self.broker.import_definitions(&doc).await.map_err(|e| {
                anyhow::anyhow!("[definitions] load_at_boot {}: {e}", path.display())
            })?;
        for w in result["warnings"].as_array().into_iter().flatten() {
            tracing::warn!(file = %path.display(), "{}", w.as_str().unwrap_or_default());
        }
        tracing::info!(file = %path.display(), kept = %result["kept"], "definitions loaded at boot");
        Ok(())
    }

    async fn start_cluster_node(&self) -> anyhow::Result<()> {
        let Some(config) = &self.broker.config.cluster else {
            return Ok(());
        };
        // The node links check their CRLs against the numbers in force too, and what they load is
        // kept with them: no reload or restart goes back to an older node CRL either.
        let kept = self.crl_numbers.lock().clone();
        let links = crate::cluster::link::Links::start_with(config.clone(), &kept).await?;
        {
            let mut in_force = self.crl_numbers.lock();
            let path = self.broker.config.data_dir.join(crate::crl::NUMBERS_FILE);
            *in_force = in_force.merge_and_write(&links.crl_numbers(), &path)?;
        }
        let records = std::mem::take(&mut *self.broker.raft_records.lock());
        let holder: Arc<dyn crate::cluster::raft::meta::DefinitionsHolder> = self.broker.clone();
        let cluster = crate::cluster::node::Cluster::start(
            links,
            self.broker.durability.clone(),
            Arc::downgrade(&holder),
            &records,
            self.broker.audit.clone(),
            self.broker.shard_journal.clone(),
            {
                let quorum: Arc<dyn crate::cluster::quorum::QuorumHolder> = self.broker.clone();
                Arc::downgrade(&quorum)
            },
        )
        .await?;
        let weak = Arc::downgrade(&cluster);
        self.broker
            .shard_journal
            .set_proposer(Box::new(move |command| {
                let Some(cluster) = weak.upgrade() else { return };
                tokio::spawn(async move {
                    if let Err(why) = cluster.meta.propose(vec![command.clone()]).await {
                        tracing::warn!(?command, %why, "an unused queue's deletion was not made; it is tried again");
                    }
                });
            }));
        if self.broker.cluster.set(cluster.clone()).is_err() {
            anyhow::bail!("the cluster was already started");
        }
        // The removals recorded so far (those applied from now on reach the links themselves).
        for id in self.broker.definitions().removed_nodes {
            cluster.links.forget(id);
        }
        tokio::spawn(crate::cluster::home::tend(Arc::downgrade(&self.broker)));
        Ok(())
    }

    /// Stops this node's Raft groups and closes its node links (at shutdown).
    pub async fn stop_cluster(&self) {
        if let Some(cluster) = self.broker.cluster.get() {
            cluster.stop().await;
        }
    }

    /// Re-reads the CA bundle, server certificate, key and CRLs, and a cluster node's
    /// `[cluster.tls]` (SIGHUP). On any error the running configuration stays in force and the
    /// error is returned for the log.
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        let mut in_force = self.crl_numbers.lock();
        let tls = crate::tls::server_config(&self.broker.config.tls, &in_force)?;
        let cluster = self.broker.cluster();
        let links_tls = cluster.map(|c| c.links.load_tls()).transpose()?;
        let path = self.broker.config.data_dir.join(crate::crl::NUMBERS_FILE);
        let newer = match &links_tls {
            Some(fresh) => tls.crl_numbers.merged(&fresh.crl_numbers),
            None => tls.crl_numbers.clone(),
        };
        let merged = in_force.merge_and_write(&newer, &path).map_err(|e| {
            crate::tls::TlsError::Crl(crate::crl::CrlError::Numbers {
                path,
                detail: format!("cannot write: {e}"),
            })
        })?;
        *self.acceptor.write() = TlsAcceptor::from(tls.config);
        *in_force = merged;
        if let (Some(cluster), Some(fresh)) = (cluster, links_tls) {
            cluster.links.install_tls(fresh);
        }
        Ok(())
    }

    /// Serves `listener` until `shutdown` completes, then closes every connection and returns once they
    /// are gone (or after a grace period).
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        let tls_timeout = Duration::from_millis(self.broker.config.limits.tls_handshake_timeout_ms);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    if !self.broker.serving() {
                        // Stopped with `rabbitmqctl stop_app`: no client is served until start_app.
                        info!(%peer, "connection refused: the broker is stopped (stop_app)");
                        continue;
                    }
                    let slot = match self.admission.admit(peer.ip()) {
                        Ok(slot) => slot,
                        Err(why) => {
                            // Dropped before any TLS work: a refused peer costs an accept and a close.
                            info!(%peer, reason = ?why, "connection refused before TLS");
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let acceptor = self.acceptor.read().clone();
                    let broker = self.broker.clone();
                    let stop = stop_rx.clone();
                    connections.spawn(async move {
                        match tokio::time::timeout(tls_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => connection::serve(broker, stream, peer, stop, slot).await,
                            Ok(Err(e)) => {
                                info!(%peer, error = %e, "TLS handshake refused");
                                audit_refused_certificate(&broker, peer, &e);
                            }
                            Err(_) => info!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        debug!("shutting down: closing connections");
        let _ = stop_tx.send(true);
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            connections.abort_all();
        }
    }
}

/// Builds a server from `config` and serves `listener` until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = Server::new(config)?;
    server.serve(listener, shutdown).await;
    Ok(())
}
