//! [`TestBroker`]: one broker per test, in its own temporary directory with its own dev PKI, serving a
//! listener bound to `127.0.0.1:0` (no port races) and its admin socket (`DATA_DIR/admin.sock`) on the
//! test's tokio runtime until dropped. [`TestBroker::restart`] starts a new broker on the same data
//! directory, as an operator's restart would.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warren_broker::config::Config;
use warren_broker::pki::{CertificateAuthority, DevPki, Pem};
use warren_broker::Server;

/// A running broker and the PKI its clients need.
pub struct TestBroker {
    pub port: u16,
    pub pki: DevPki,
    pub config: Arc<Config>,
    /// The broker itself: `server.broker` for its state, `server.reload_tls()` for a SIGHUP.
    pub server: Arc<Server>,
    pub(crate) ca: CertificateAuthority,
    /// Always Some; an Option only so that [`TestBroker::restart`] can move it to the next broker.
    dir: Option<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
}

impl TestBroker {
    /// A broker with the `warren --dev` configuration (vhost `/`, user `admin`, default limits).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A broker whose configuration `adjust` changes first (limits, vhosts, users). When `adjust`
    /// runs, `config.data_dir` is the broker's directory and the dev PKI already exists under
    /// `DATA_DIR/tls` (see [`crate::certs::dev_ca`] for files that must exist before the start).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        DevPki::ensure(&dir.path().join("tls")).expect("dev PKI");
        let mut config = Config::dev(dir.path(), "127.0.0.1:0".parse().unwrap());
        adjust(&mut config);
        config.validate().expect("test configuration is valid");
        Self::launch(dir, Arc::new(config)).await
    }

    async fn launch(dir: TempDir, config: Arc<Config>) -> Self {
        let (pki, _) = DevPki::ensure(&dir.path().join("tls")).expect("dev PKI");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let server = Arc::new(Server::new(config.clone()).expect("broker starts"));
        server
            .start_cluster()
            .await
            .expect("the cluster node starts");
        let socket = warren_broker::admin::bind(&config.admin_socket()).expect("admin socket");
        let admin = tokio::spawn(warren_broker::admin::serve(server.broker.clone(), socket));
        let (shutdown, stop) = oneshot::channel::<()>();
        let serving = server.clone();
        let served = tokio::spawn(async move {
            serving
                .serve(listener, async {
                    let _ = stop.await;
                })
                .await;
        });

        let ca = CertificateAuthority::from_pem(Pem {
            cert: std::fs::read_to_string(&pki.ca_cert).expect("CA certificate"),
            key: std::fs::read_to_string(&pki.ca_key).expect("CA key"),
        })
        .expect("CA loads");
        TestBroker {
            port,
            pki,
            config,
            server,
            ca,
            dir: Some(dir),
            shutdown: Some(shutdown),
            served: Some(served),
            admin: Some(admin),
        }
    }

    /// The broker's data directory (also where tests write extra PEM files).
    /// Queue `name` of vhost `/`, to read its state directly (depth, paged count).
    pub fn queue(&self, name: &str) -> Option<Arc<warren_broker::queue::Queue>> {
        self.server.broker.vhost("/")?.find_queue(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the data directory").path()
    }

    /// A path for a test file inside the broker's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// The command log's segments, in order, with their modes: where definitions and messages are
    /// stored.
    pub fn log_segments(&self) -> Vec<(Vec<u8>, u32)> {
        use std::os::unix::fs::PermissionsExt;
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.path("log"))
            .expect("the log directory")
            .map(|e| e.expect("entry").path())
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| {
                let mode = std::fs::metadata(p).expect("segment").permissions().mode();
                (std::fs::read(p).expect("segment"), mode & 0o777)
            })
            .collect()
    }

    /// Shuts the broker down and waits for `serve` to return (it closes every connection first).
    pub async fn stop(mut self) {
        self.shut_down().await;
    }

    /// Stops this broker, then starts a new one with the same configuration on the same data
    /// directory (definitions, PKI and audit log carry over; the port is new).
    pub async fn restart(mut self) -> Self {
        self.shut_down().await;
        let dir = self.dir.take().expect("the data directory");
        let config = self.config.clone();
        // The old broker must be gone before the new one takes the data directory's lock.
        drop(self);
        Self::launch(dir, config).await
    }

    /// Shuts the broker down and keeps its data directory, to start it again later (a cluster node
    /// that is down while the others go on).
    pub async fn stop_keeping_data(mut self) -> StoppedBroker {
        self.shut_down().await;
        let dir = self.dir.take().expect("the data directory");
        let config = self.config.clone();
        drop(self);
        StoppedBroker { dir, config }
    }

    /// [`Self::restart`], running `between` on the data directory while no broker holds it.
    pub async fn restart_after(mut self, between: impl FnOnce(&Path)) -> Self {
        self.shut_down().await;
        let dir = self.dir.take().expect("the data directory");
        let config = self.config.clone();
        drop(self);
        between(dir.path());
        Self::launch(dir, config).await
    }

    async fn shut_down(&mut self) {
        if let Some(admin) = self.admin.take() {
            admin.abort();
            let _ = admin.await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(served) = self.served.take() {
            tokio::time::timeout(Duration::from_secs(15), served)
                .await
                .expect("broker shut down within 15 s")
                .expect("broker task did not panic");
            // As `warren` does at shutdown: the cluster's groups and links stop, and everything
            // written so far is on disk before a restart.
            self.server.stop_cluster().await;
            self.server
                .broker
                .durability
                .flush()
                .expect("log flushed at shutdown");
            // Tasks may outlive the broker a moment with the store in hand: its files must not
            // be touched, nor its directory kept, once the next broker wants it.
            self.server.broker.close();
        }
    }
}

/// A broker shut down with its data directory kept.
pub struct StoppedBroker {
    dir: TempDir,
    config: Arc<Config>,
}

impl StoppedBroker {
    /// Starts it again on the same data directory and configuration (a new AMQP port).
    pub async fn start(self) -> TestBroker {
        TestBroker::launch(self.dir, self.config).await
    }

    /// Why it does not start again as it is, its broker or its cluster node (panics if it starts).
    pub async fn start_error(&self) -> String {
        let server = match Server::new(self.config.clone()) {
            Ok(server) => server,
            Err(e) => return format!("{e:#}"),
        };
        match server.start_cluster().await {
            Ok(()) => panic!("the broker and its cluster node started"),
            Err(e) => format!("{e:#}"),
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(admin) = self.admin.take() {
            admin.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
