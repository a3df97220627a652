//! [`TestBroker`]: one broker per test, in its own temporary directory with its own dev PKI, serving a
//! listener bound to `127.0.0.1:0` (no port races) on the test's tokio runtime until dropped.

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
    pub(crate) ca: CertificateAuthority,
    dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<()>>,
}

impl TestBroker {
    /// A broker with the `warren --dev` configuration (vhost `/`, user `admin`, default limits).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A broker whose configuration `adjust` changes first (limits, vhosts, users).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (pki, _) = DevPki::ensure(&dir.path().join("tls")).expect("dev PKI");
        let mut config = Config::dev(dir.path(), "127.0.0.1:0".parse().unwrap());
        adjust(&mut config);
        config.validate().expect("test configuration is valid");
        let config = Arc::new(config);

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let server = Server::new(config.clone()).expect("broker starts");
        let (shutdown, stop) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            server
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
            ca,
            dir,
            shutdown: Some(shutdown),
            served: Some(served),
        }
    }

    /// The broker's data directory (also where tests write extra PEM files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path for a test file inside the broker's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Shuts the broker down and waits for `serve` to return (it closes every connection first).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(served) = self.served.take() {
            tokio::time::timeout(Duration::from_secs(15), served)
                .await
                .expect("broker shut down within 15 s")
                .expect("broker task did not panic");
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
