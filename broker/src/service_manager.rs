//! The service manager's readiness protocol (systemd's `Type=notify`, `sd_notify(3)`): when
//! `NOTIFY_SOCKET` names a datagram socket, Warren sends `READY=1` once every listener is bound and
//! recovery is done, and `STOPPING=1` when it begins to shut down, so `systemctl start` returns
//! only when clients can connect and units ordered after Warren start after it is really up.
//! Without `NOTIFY_SOCKET` (any other way of running it) nothing is sent. The protocol is one
//! datagram per state change to a path or, with a leading `@`, an abstract socket name; it needs no
//! library.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Tells the service manager that Warren serves clients; `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}",
        std::process::id()
    ));
}

/// Shows `status` in `systemctl status` while starting (a node waiting to be added, say).
pub fn status(status: &str) {
    send(&format!("STATUS={status}"));
}

/// Tells the service manager that Warren is shutting down (so a stop is not mistaken for a crash).
pub fn stopping() {
    send("STOPPING=1\nSTATUS=shutting down");
}

fn send(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&socket, state.as_bytes()) {
        tracing::warn!(socket = ?socket, error = %e, "cannot notify the service manager");
    }
}

fn send_to(socket: &std::ffi::OsStr, datagram: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = socket.as_bytes();
    let sender = UnixDatagram::unbound()?;
    let sent = match path.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(datagram, &address)?
        }
        None if path.starts_with(b"/") => sender.send_to(datagram, socket)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor an abstract name (@...)",
            ))
        }
    };
    match sent == datagram.len() {
        true => Ok(()),
        false => Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("warren-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&address).unwrap();
        send_to(std::ffi::OsStr::new(&format!("@{name}")), b"STOPPING=1").unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_relative_socket_name_is_refused() {
        let err = send_to(std::ffi::OsStr::new("notify"), b"READY=1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
