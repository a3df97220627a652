"""Run a throw-away RabbitMQ node as the reference target of the conformance suite.

Used by conftest.py when ``WARREN_TEST_TARGET=rabbitmq``.  The node is
configured like ``warren --dev``: TLS only on 127.0.0.1, client certificate
mandatory, SASL EXTERNAL with the certificate CN as the user name, vhost ``/``
and a user ``admin`` with full permissions.  The certificates are generated
here in the layout ``warren --dev`` uses (``DIR/tls/ca.pem`` ...).

It never touches the system's RabbitMQ (no systemd, no /var/lib/rabbitmq):
everything lives in a temporary base directory, with its own node name, its own
epmd port and its own distribution port.

Can also be run by hand::

    python tests/python/rabbitmq_target.py /tmp/rmq    # Ctrl-C stops it
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RABBITMQ_BIN_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/sbin", "/usr/local/sbin", "/usr/bin")


# --------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------

def generate_tls(tls_dir: Path, client_cn: str = "admin") -> None:
    """Write ca.pem/ca.key, server.pem/server.key and admin.pem/admin.key.

    The server certificate is valid for localhost, 127.0.0.1 and ::1; the
    client certificate has CN=``client_cn``.  Existing files are kept.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tls_dir = Path(tls_dir)
    if all((tls_dir / f).exists() for f in ("ca.pem", "server.pem", "server.key", "admin.pem", "admin.key")):
        return
    tls_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=365)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_key(path, k):
        path.write_bytes(k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        os.chmod(path, 0o600)

    def write_cert(path, c):
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Warren test CA")])
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn, server):
        k = key()
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name)
             .public_key(k.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(later)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                          key_encipherment=True, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                                          encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage(
                 [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                 critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                            critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]), critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf("localhost", True)
    client_key, client_cert = leaf(client_cn, False)
    write_key(tls_dir / "ca.key", ca_key)
    write_cert(tls_dir / "ca.pem", ca)
    write_key(tls_dir / "server.key", server_key)
    write_cert(tls_dir / "server.pem", server_cert)
    write_key(tls_dir / "admin.key", client_key)
    write_cert(tls_dir / "admin.pem", client_cert)


# --------------------------------------------------------------------------
# RabbitMQ node
# --------------------------------------------------------------------------

def free_port(low: int | None = None, high: int | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free right now (optionally in [low, high))."""
    if low is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(200):
        port = secrets.randbelow(high - low) + low
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{low}, {high})")


def find_rabbitmq_server() -> str | None:
    for d in RABBITMQ_BIN_DIRS:
        # /usr/lib/rabbitmq/bin/rabbitmq-server is the real script; the one in
        # /usr/sbin is a wrapper that su's to the rabbitmq user and drops our
        # environment, so it is only a last resort.
        p = Path(d) / "rabbitmq-server"
        if p.exists():
            return str(p)
    return shutil.which("rabbitmq-server")


def ensure_installed() -> str:
    exe = find_rabbitmq_server()
    if exe:
        return exe
    if os.geteuid() != 0:
        raise RuntimeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, timeout=600,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "rabbitmq-server"], check=True, env=env,
                   timeout=900, stdout=subprocess.DEVNULL)
    exe = find_rabbitmq_server()
    if not exe:
        raise RuntimeError("rabbitmq-server still not found after apt-get install")
    return exe


class RabbitMQNode:
    """A private RabbitMQ node listening with TLS only on 127.0.0.1:port."""

    def __init__(self, base_dir: Path, port: int | None = None):
        self.base = Path(base_dir)
        self.tls_dir = self.base / "tls"
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.stdout_path = self.base / "rabbitmq.stdout"
        self.stderr_path = self.base / "rabbitmq.stderr"
        self.nodename = f"warrentest{os.getpid()}@localhost"
        self.epmd_port = free_port(20000, 30000)
        # CLI tools use dist_port + 10000 .. + 10010, keep that below 65535.
        self.dist_port = free_port(30000, 50000)
        self.sbin = None
        self.version = None

    # -- environment --------------------------------------------------------
    def env(self) -> dict:
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("RABBITMQ_"):
                del env[k]
        b = self.base
        env.update({
            "HOME": str(b / "home"),  # .erlang.cookie lives here
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(b / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(b / "mnesia"),
            "RABBITMQ_LOG_BASE": str(b / "log"),
            "RABBITMQ_PID_FILE": str(b / "rabbitmq.pid"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        })
        return env

    def write_config(self) -> None:
        b = self.base
        for d in ("home", "mnesia", "log"):
            (b / d).mkdir(parents=True, exist_ok=True)
        os.chmod(b / "home", 0o700)
        (b / "rabbitmq-env.conf").write_text("# intentionally empty\n")
        (b / "enabled_plugins").write_text("[rabbitmq_auth_mechanism_ssl].\n")
        t = self.tls_dir
        (b / "rabbitmq.conf").write_text(f"""\
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:{self.port}
ssl_options.cacertfile = {t / 'ca.pem'}
ssl_options.certfile = {t / 'server.pem'}
ssl_options.keyfile = {t / 'server.key'}
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
auth_mechanisms.1 = EXTERNAL
ssl_cert_login_from = common_name
log.console = true
log.console.level = info
log.file.level = info
disk_free_limit.absolute = 10MB
""")

    # -- control ------------------------------------------------------------
    def ctl(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        exe = str(Path(self.sbin) / "rabbitmqctl")
        cp = subprocess.run([exe, "-n", self.nodename, *args], env=self.env(), timeout=timeout,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if check and cp.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({cp.returncode}):\n{cp.stdout}")
        return cp

    def output(self) -> str:
        out = []
        for p in (self.stdout_path, self.stderr_path):
            if p.exists():
                out.append(f"--- {p.name} ---\n{p.read_text(errors='replace')[-20000:]}")
        return "\n".join(out)

    def start(self, timeout: float = 120) -> None:
        exe = ensure_installed()
        self.sbin = str(Path(exe).parent)
        generate_tls(self.tls_dir)
        self.write_config()
        self.proc = subprocess.Popen(
            [exe], env=self.env(), cwd=str(self.base),
            stdout=open(self.stdout_path, "wb"), stderr=open(self.stderr_path, "wb"),
            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            remaining = max(5.0, deadline - time.monotonic())
            # `wait PIDFILE` waits for the pid file, then for the app to boot.
            cp = self.ctl("wait", "--timeout", str(int(remaining)), str(self.base / "rabbitmq.pid"),
                          timeout=remaining + 10, check=False)
            if cp.returncode != 0 or self.proc.poll() is not None:
                raise RuntimeError(f"RabbitMQ did not start: {cp.stdout}")
            self.version = self.ctl("version").stdout.strip()
            # never a leading "-": rabbitmqctl would take the password for an option
            password = "p" + secrets.token_urlsafe(24)
            self.ctl("add_user", "admin", password)
            self.ctl("set_user_tags", "admin", "administrator")
            self.ctl("set_permissions", "-p", "/", "admin", ".*", ".*", ".*")
            self.ctl("delete_user", "guest", check=False)
            wait_for_port("127.0.0.1", self.port, deadline, self.proc)
        except Exception as e:
            out = self.output()
            self.stop()
            raise RuntimeError(f"{e}\n{out}") from e

    def stop(self, timeout: float = 30) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        # Stop the private epmd that the node started on our own epmd port.
        if self.sbin is not None:
            epmd = shutil.which("epmd") or _find_epmd()
            if epmd:
                try:
                    subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env(),
                                   timeout=10, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                except (subprocess.TimeoutExpired, OSError):
                    pass


def _find_epmd() -> str | None:
    for p in sorted(Path("/usr/lib/erlang/erts-").parent.glob("erts-*/bin/epmd")):
        return str(p)
    return None


def wait_for_port(host: str, port: int, deadline: float, proc: subprocess.Popen | None = None) -> None:
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker process exited with status {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError as e:
            last = e
            time.sleep(0.1)
    raise RuntimeError(f"{host}:{port} did not accept connections in time ({last})")


if __name__ == "__main__":
    base = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/warren-rabbitmq")
    base.mkdir(parents=True, exist_ok=True)
    node = RabbitMQNode(base)
    node.start()
    print(f"RabbitMQ {node.version} listening on 127.0.0.1:{node.port} (TLS), certificates in {node.tls_dir}")
    try:
        while node.proc and node.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
