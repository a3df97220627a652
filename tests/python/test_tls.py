"""The TLS listener and SASL EXTERNAL, seen from raw sockets and py-amqp.

The broker accepts only TLS connections with a client certificate issued by
its CA; the user is the certificate's CN.
"""

from __future__ import annotations

import datetime
import socket
import ssl

import amqp
import amqp.exceptions
import pytest

import rabbitmq_target
from conftest import RPC_TIMEOUT, TARGET

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def read_some(sock, timeout=5.0, limit=65536):
    """What the peer sends: up to the end of the first AMQP frame, or until it
    closes the connection, or until timeout."""
    sock.settimeout(timeout)
    data = b""
    try:
        while len(data) < limit:
            if len(data) >= 7 and data[:1] == b"\x01":
                size = int.from_bytes(data[3:7], "big")
                if len(data) >= 7 + size + 1:
                    break
            chunk = sock.recv(limit)
            if not chunk:
                break
            data += chunk
    except (ssl.SSLError, ConnectionError, OSError):
        pass
    return data


def assert_not_connection_start(data):
    # a connection.start frame begins with frame type 1, channel 0 and the
    # method (10, 10); a protocol header reply begins with b"AMQP"
    assert not data.startswith(b"AMQP"), data[:16]
    assert not data.startswith(b"\x01\x00\x00"), data[:16]


def client_context(broker, cert=None, key=None, cafile=None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile or broker.ca_file)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_exchange(broker, ctx):
    """Open TLS, send the AMQP header, return what comes back."""
    raw = socket.create_connection((broker.host, broker.port), timeout=RPC_TIMEOUT)
    try:
        try:
            s = ctx.wrap_socket(raw, server_hostname=broker.server_name)
        except (ssl.SSLError, ConnectionError, OSError):
            return b""  # refused during the handshake
        try:
            s.sendall(AMQP_HEADER)
        except (ssl.SSLError, ConnectionError, OSError):
            return b""
        return read_some(s)
    finally:
        raw.close()


def make_client_cert(broker, tmp_path, cn, ca_dir=None, extra_cns=()):
    """A client certificate for `cn` (plus any `extra_cns`) signed by the broker's CA (or another one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_dir = ca_dir or broker.tls_dir
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n) for n in (cn, *extra_cns)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{cn}.pem", tmp_path / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_admin_certificate_gets_connection_start(broker):
    data = tls_exchange(broker, broker.ssl_context())
    assert data.startswith(b"\x01\x00\x00"), data[:16]  # connection.start on channel 0
    assert data[7:11] == b"\x00\x0a\x00\x0a"  # class 10, method 10
    assert data[11:13] == b"\x00\x09"  # version 0-9
    size = int.from_bytes(data[3:7], "big")
    assert data[7 + size:8 + size] == b"\xce"  # frame end


def test_plain_tcp_is_not_spoken(broker):
    with socket.create_connection((broker.host, broker.port), timeout=RPC_TIMEOUT) as s:
        s.sendall(AMQP_HEADER)
        assert_not_connection_start(read_some(s))


def test_client_without_certificate_is_refused(broker):
    assert_not_connection_start(tls_exchange(broker, client_context(broker)))


def test_certificate_from_another_ca_is_refused(broker, tmp_path):
    other = tmp_path / "other-ca"
    rabbitmq_target.generate_tls(other)  # a different CA, same layout
    ctx = client_context(broker, str(other / "admin.pem"), str(other / "admin.key"))
    assert_not_connection_start(tls_exchange(broker, ctx))


def test_server_certificate_names(broker):
    ctx = broker.ssl_context()
    with socket.create_connection((broker.host, broker.port), timeout=RPC_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            san = s.getpeercert().get("subjectAltName", ())
    assert ("DNS", "localhost") in san
    assert ("IP Address", "127.0.0.1") in san
    assert ("IP Address", "0:0:0:0:0:0:0:1") in san
    # and the certificate verifies for the address too
    with socket.create_connection((broker.host, broker.port), timeout=RPC_TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_versions(broker, version):
    ctx = broker.ssl_context()
    ctx.minimum_version = ctx.maximum_version = version
    data = tls_exchange(broker, ctx)
    assert data.startswith(b"\x01\x00\x00"), f"no connection.start over {version.name}: {data[:16]!r}"


def test_unknown_user_is_refused(broker, tmp_path):
    cert, key = make_client_cert(broker, tmp_path, "nobody")
    with pytest.raises(amqp.exceptions.AccessRefused) as ei:
        c = amqp.Connection(host=f"{broker.server_name}:{broker.port}", login_method="EXTERNAL",
                            connect_timeout=RPC_TIMEOUT, read_timeout=RPC_TIMEOUT,
                            ssl={"ca_certs": broker.ca_file, "certfile": cert, "keyfile": key,
                                 "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": broker.server_name})
        try:
            c.connect()
        finally:
            c.collect()
    assert ei.value.reply_code == 403
    assert ei.value.reply_text == ("ACCESS_REFUSED - Login was refused using authentication mechanism "
                                   "EXTERNAL. For details see the broker logfile.")


def test_user_is_certificate_common_name(broker, tmp_path):
    # admin.pem says CN=admin: publishing with user_id=admin is accepted, as
    # test_pika.py checks; here a second certificate for the same CN works too.
    cert, key = make_client_cert(broker, tmp_path, "admin")
    c = amqp.Connection(host=f"{broker.server_name}:{broker.port}", login_method="EXTERNAL",
                        connect_timeout=RPC_TIMEOUT, read_timeout=RPC_TIMEOUT, confirm_publish=True,
                        ssl={"ca_certs": broker.ca_file, "certfile": cert, "keyfile": key,
                             "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": broker.server_name})
    c.connect()
    try:
        ch = c.channel()
        q = "tls.cn." + tmp_path.name
        ch.queue_declare(q, exclusive=True)
        ch.basic_publish(amqp.Message(b"x", user_id="admin"), routing_key=q)
        assert ch.basic_get(q, no_ack=True).body == b"x"
    finally:
        c.close()


@pytest.mark.skipif(TARGET == "rabbitmq", reason="RabbitMQ takes the first CN; Warren requires exactly one")
def test_certificate_with_two_common_names_is_refused(broker, tmp_path):
    cert, key = make_client_cert(broker, tmp_path, "admin", extra_cns=("nova",))
    with pytest.raises(amqp.exceptions.AccessRefused) as ei:
        c = amqp.Connection(host=f"{broker.server_name}:{broker.port}", login_method="EXTERNAL",
                            connect_timeout=RPC_TIMEOUT, read_timeout=RPC_TIMEOUT,
                            ssl={"ca_certs": broker.ca_file, "certfile": cert, "keyfile": key,
                                 "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": broker.server_name})
        try:
            c.connect()
        finally:
            c.collect()
    assert ei.value.reply_code == 403


@pytest.mark.skipif(TARGET == "rabbitmq", reason="Warren's node certificates (brokerctl ca issue --node)")
def test_node_certificate_cannot_log_in_as_a_user(broker, tmp_path):
    import os
    import subprocess
    from pathlib import Path

    from conftest import REPO_ROOT
    warren = os.environ.get("WARREN_BIN") or str(REPO_ROOT / "target" / "debug" / "warren")
    brokerctl = str(Path(warren).with_name("brokerctl"))
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    # A CA directory holding the broker's CA, so the node certificate chains to the trusted root.
    for f in ("ca.pem", "ca.key"):
        (ca_dir / f).write_bytes((broker.tls_dir / f).read_bytes())
        os.chmod(ca_dir / f, 0o600)
    # The node is named like an existing user: the node mark alone must keep it out.
    subprocess.run([brokerctl, "ca", "issue", "--dir", str(ca_dir), "--name", "admin", "--node",
                    "--host", "node1.example", "--days", "1", "--out", str(tmp_path / "out")],
                   check=True, timeout=30, capture_output=True)
    cert, key = str(tmp_path / "out" / "admin.pem"), str(tmp_path / "out" / "admin.key")
    with pytest.raises(amqp.exceptions.AccessRefused) as ei:
        c = amqp.Connection(host=f"{broker.server_name}:{broker.port}", login_method="EXTERNAL",
                            connect_timeout=RPC_TIMEOUT, read_timeout=RPC_TIMEOUT,
                            ssl={"ca_certs": broker.ca_file, "certfile": cert, "keyfile": key,
                                 "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": broker.server_name})
        try:
            c.connect()
        finally:
            c.collect()
    assert ei.value.reply_code == 403
