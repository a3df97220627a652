"""The development broker's own PKI behaves like a production one (issue 11, PROBE F3):
``brokerctl ca revoke --dir DATA/tls`` writes the dev CA's CRL, and ``warren --dev`` loads it at
start and on SIGHUP, so a revoked certificate is refused; the server and admin certificates are
renewed when they have less than 30 days left, and the broker says so.

Warren only (it starts its own ``warren --dev`` processes)."""

from __future__ import annotations

import signal
import ssl
import subprocess
import time

import amqp
import pytest

from conftest import RPC_TIMEOUT, TARGET
from test_durability import WarrenNode

pytestmark = pytest.mark.skipif(TARGET == "rabbitmq", reason="Warren's development PKI")


def brokerctl(node: WarrenNode, *args: str) -> str:
    from pathlib import Path
    exe = Path(node.exe).with_name("brokerctl")
    cp = subprocess.run([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, timeout=30)
    assert cp.returncode == 0, f"brokerctl {' '.join(args)}: {cp.returncode}\n{cp.stdout}{cp.stderr}"
    return cp.stdout


def login(node: WarrenNode, cert: str, key: str):
    """Opens and closes a py-amqp connection with this certificate; raises if refused."""
    broker = node.broker()
    c = amqp.Connection(host=f"{broker.server_name}:{node.port}", login_method="EXTERNAL",
                        connect_timeout=RPC_TIMEOUT, read_timeout=RPC_TIMEOUT,
                        ssl={"ca_certs": broker.ca_file, "certfile": cert, "keyfile": key,
                             "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": broker.server_name})
    try:
        c.connect()
    finally:
        c.collect()


def refused(node: WarrenNode, cert: str, key: str) -> bool:
    try:
        login(node, cert, key)
    except Exception:
        return True
    return False


def test_a_revoked_certificate_is_refused_by_the_dev_broker(tmp_path):
    node = WarrenNode(tmp_path)
    node.start()
    try:
        tls = node.data_dir / "tls"
        node.ctl("add_user", "svc")
        node.ctl("set_permissions", "-p", "/", "svc", ".*", ".*", ".*")
        out = tmp_path / "svc"
        brokerctl(node, "ca", "issue", "--dir", str(tls), "--name", "svc", "--out", str(out))
        cert, key = str(out / "svc.pem"), str(out / "svc.key")
        login(node, cert, key)

        brokerctl(node, "ca", "revoke", "--dir", str(tls), "--name", "svc")
        node.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not refused(node, cert, key):
            assert time.monotonic() < deadline, "svc still logs in after revoke + SIGHUP"
            time.sleep(0.2)
        login(node, str(tls / "admin.pem"), str(tls / "admin.key"))

        node.stop()
        node.start()
        assert refused(node, cert, key), "svc logs in again after a restart"
        login(node, str(tls / "admin.pem"), str(tls / "admin.key"))
    finally:
        node.kill()


def test_certificates_about_to_expire_are_renewed_at_start(tmp_path):
    node = WarrenNode(tmp_path)
    node.start()
    node.stop()
    tls = node.data_dir / "tls"
    # An admin certificate with 10 days left, from the same CA.
    brokerctl(node, "ca", "issue", "--dir", str(tls), "--name", "admin", "--days", "10",
              "--out", str(tls))
    node.start()
    try:
        assert "renewed" in node.output() and "admin.pem" in node.output(), node.output()
        from cryptography import x509
        cert = x509.load_pem_x509_certificate((tls / "admin.pem").read_bytes())
        left = cert.not_valid_after_utc.timestamp() - time.time()
        assert left > 300 * 86400, f"admin.pem has {left / 86400:.0f} days left"
        login(node, str(tls / "admin.pem"), str(tls / "admin.key"))
    finally:
        node.kill()


def test_a_second_dev_broker_refuses_before_it_touches_the_first_ones_certificates(tmp_path):
    """The data directory's lock is taken before the PKI refresh: a second ``warren --dev`` on the
    same directory exits naming the lock, and renews nothing under the running broker."""
    node = WarrenNode(tmp_path)
    node.start()
    try:
        tls = node.data_dir / "tls"
        brokerctl(node, "ca", "issue", "--dir", str(tls), "--name", "admin", "--days", "10",
                  "--out", str(tls))
        before = (tls / "admin.pem").read_bytes()
        cp = subprocess.run([node.exe, "--dev", "--data-dir", str(node.data_dir), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        assert cp.returncode != 0, cp.stdout + cp.stderr
        assert "another Warren broker is using the data directory" in cp.stderr, cp.stderr
        assert "renewed" not in cp.stdout + cp.stderr
        assert (tls / "admin.pem").read_bytes() == before, "the second broker rewrote admin.pem"
        login(node, str(tls / "admin.pem"), str(tls / "admin.key"))
    finally:
        node.kill()
