//! The admin API: a Unix socket (0600, peers must be root or the broker's own user, checked with
//! SO_PEERCRED) speaking one JSON request and one JSON response per line. `brokerctl` is its client.
//! Every change is audited.

pub mod definitions;
mod export;
mod import;
mod json_table;
pub mod requests;

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::warn;

use crate::broker::Broker;

/// Longest request line accepted: a request is a few hundred bytes, an imported definitions file
/// (the one large request) some megabytes; this bounds a misbehaving client of root's or the
/// broker's own user (nobody else gets this far).
const MAX_REQUEST: usize = 32 << 20;

/// Binds the admin socket at `path` (replacing a stale one) with mode 0600. A socket some process
/// still answers on is never unlinked: that would hand its brokerctl users to this broker.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "the admin socket {} is in use by a running broker",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Tells a refused peer why (it would otherwise see only "connection reset"): its request line is
/// read first (bounded, for at most a second), so that closing does not reset the answer away.
async fn refuse(stream: UnixStream, uid: u32, me: u32) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(64 << 10);
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        reader.read_line(&mut line),
    )
    .await;
    let answer = serde_json::json!({
        "ok": false,
        "error": format!("refused: uid {uid} is neither root nor the broker's user (uid {me})"),
    });
    let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
    let _ = write.shutdown().await;
}

/// Serves admin clients until the task is dropped.
pub async fn serve(broker: Arc<Broker>, listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let broker = broker.clone();
        tokio::spawn(async move { client(broker, stream).await });
    }
}

async fn client(broker: Arc<Broker>, stream: UnixStream) {
    let me = rustix::process::geteuid().as_raw();
    let uid = match stream.peer_cred() {
        Ok(cred) if cred.uid() == me || cred.uid() == 0 => cred.uid(),
        Ok(cred) => {
            warn!(
                uid = cred.uid(),
                "admin socket: refused a peer that is neither root nor the broker's user"
            );
            refuse(stream, cred.uid(), me).await;
            return;
        }
        Err(_) => return,
    };
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).take(MAX_REQUEST as u64 * 4);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n > MAX_REQUEST => return,
            Ok(_) => {}
        }
        let response = requests::handle(&broker, line.trim_end(), uid).await;
        let Ok(mut out) = serde_json::to_vec(&response) else {
            return;
        };
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
        tracing::debug!(uid, "admin request served");
    }
}
