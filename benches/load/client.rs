//! The load generator's side of the shared frame-level client (warren-wire-client): the TLS material
//! of a `warren --dev` directory, the negotiation the scenarios use (SASL EXTERNAL as `admin`,
//! connection.blocked advertised, frame_max up to 128 KiB), and anyhow context at the edges.
//!
//! The client pipelines the way a fast client does: publishes, acks and replies are encoded straight
//! into one buffer and written with one TLS record per burst (at most 16 KiB of plaintext), and every
//! frame that arrives in one read is handled before the next write. The same code drives Warren and
//! RabbitMQ, so any cost it has is paid equally by both.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
pub use warren_wire_client::methods::{queue_bind, queue_declare, queue_opts, QueueOpts};
use warren_wire_client::{client_config, ClientCert, Endpoint, Tuning};
pub use warren_wire_client::{
    encode_ack, encode_publish, fill, Assembler, Conn, Event, Props, Stream,
};

/// What start-ok names the client.
const PRODUCT: &str = "warren-load";
/// Largest frame this client asks for (both brokers propose 131072).
const CLIENT_FRAME_MAX: u32 = 131_072;
/// Time allowed for any single handshake or synchronous method reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// One TLS record holds at most 16 KiB of plaintext: bursts are cut there.
pub const BURST_BYTES: usize = 16 * 1024;

/// Where to connect and with which TLS material (the client certificate `admin`).
pub struct Target(Endpoint);

impl Target {
    /// `tls_dir` holds ca.pem, admin.pem and admin.key (the layout of `warren --dev`). TLS session
    /// resumption is off: every connection pays a full handshake, as a new client process would.
    pub fn new(port: u16, tls_dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            let path = tls_dir.join(name);
            std::fs::read(&path).with_context(|| path.display().to_string())
        };
        let (chain, key) = (read("admin.pem")?, read("admin.key")?);
        let identity = ClientCert {
            chain: &chain,
            key: &key,
        };
        let config = client_config(&tls_dir.join("ca.pem"), Some(identity), false)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Ok(Target(Endpoint::new(addr, config, "localhost")?))
    }

    /// TCP connect and the TLS handshake with the client certificate. AMQP connections start with
    /// this; the floor rows use the bare stream.
    pub async fn connect_tls(&self) -> Result<Stream> {
        self.0
            .connect(None)
            .await
            .with_context(|| format!("connecting to {} (TCP and TLS)", self.0.addr))
    }
}

/// An open AMQP connection: TLS, then the negotiation with SASL EXTERNAL (header, start/start-ok,
/// tune/tune-ok, open/open-ok), all within [`REPLY_TIMEOUT`]. `heartbeat` goes into tune-ok.
pub async fn open(target: &Target, heartbeat: u16) -> Result<Conn> {
    let tuning = Tuning {
        heartbeat,
        frame_max_cap: Some(CLIENT_FRAME_MAX),
        connection_blocked: true,
        ..Tuning::default()
    };
    let open = async {
        let mut conn = Conn::new(target.connect_tls().await?, REPLY_TIMEOUT);
        conn.handshake(PRODUCT, &tuning).await?;
        Ok(conn)
    };
    tokio::time::timeout(REPLY_TIMEOUT, open)
        .await
        .map_err(|_| anyhow!("connection open timed out"))?
}

/// The negotiated TLS version and cipher suite of a connection, for the record.
pub fn tls_info(stream: &Stream) -> (String, String) {
    let session = stream.get_ref().1;
    let version = session
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let suite = session
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    (version, suite)
}
