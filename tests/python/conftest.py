"""Fixtures for the Warren Python conformance suite.

Targets (environment variable ``WARREN_TEST_TARGET``):

* ``warren`` (default): start ``$WARREN_BIN`` (default
  ``<repo>/target/debug/warren``) as
  ``warren --dev --data-dir <tmp> --listen 127.0.0.1:<free port>``.
* ``rabbitmq``: start a private RabbitMQ node configured the same way
  (TLS only, client certificate, SASL EXTERNAL, user ``admin``); see
  rabbitmq_target.py.
* ``external``: use an already running broker: ``WARREN_TEST_PORT`` (on
  127.0.0.1) and ``WARREN_TEST_DATA_DIR`` (the directory holding ``tls/``).

The broker is started once per session.  Its output is attached to the report
of every failing test (the part written while that test ran) and shown in full
when it fails to start.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import rabbitmq_target  # noqa: E402

TARGET = os.environ.get("WARREN_TEST_TARGET", "warren").strip().lower() or "warren"

#: The header in which Warren gives consumers that ask (consume or queue argument of that name, or
#: the vhost's configuration) the authenticated publisher of a message. Nobody else sees it.
PUBLISHER_HEADER = "x-warren-publisher"

SERVER_NAME = "localhost"
HOST = "127.0.0.1"

# Bounded waits used throughout the suite (seconds).
STARTUP_TIMEOUT = 30
RPC_TIMEOUT = 10
DELIVERY_TIMEOUT = 5


# --------------------------------------------------------------------------
# broker processes
# --------------------------------------------------------------------------

class WarrenProcess:
    def __init__(self, exe: str, data_dir: Path, port: int):
        self.exe = exe
        self.data_dir = data_dir
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.stdout_path = data_dir.parent / "warren.stdout"
        self.stderr_path = data_dir.parent / "warren.stderr"
        self.version = None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        cmd = [self.exe, "--dev", "--data-dir", str(self.data_dir), "--listen", f"{HOST}:{self.port}"]
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(cmd, stdout=open(self.stdout_path, "wb"),
                                     stderr=open(self.stderr_path, "wb"),
                                     stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        try:
            rabbitmq_target.wait_for_port(HOST, self.port, deadline, self.proc)
            tls = self.data_dir / "tls"
            for f in ("ca.pem", "admin.pem", "admin.key"):
                while not (tls / f).exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{tls / f} was not created")
                    time.sleep(0.1)
        except Exception as e:
            out = self.output()
            self.stop()
            raise RuntimeError(f"{' '.join(cmd)}: {e}\n{out}") from e

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                return None
        return proc.returncode

    def output(self) -> str:
        out = []
        for p in (self.stdout_path, self.stderr_path):
            if p.exists():
                out.append(f"--- {p.name} ---\n{p.read_text(errors='replace')[-20000:]}")
        return "\n".join(out)


class Broker:
    """Where the broker under test listens, and how each client library reaches it."""

    def __init__(self, kind: str, port: int, data_dir: Path, log_paths=(), version=None, ctl=None,
                 rabbit_tool=None):
        self.kind = kind
        self._ctl = ctl
        self._rabbit_tool = rabbit_tool
        self.host = HOST
        self.server_name = SERVER_NAME
        self.port = port
        self.data_dir = Path(data_dir)
        self.log_paths = list(log_paths)
        self.version = version

    def ctl(self, *args: str) -> tuple[int, str]:
        """The broker's command-line tool (rabbitmqctl, or brokerctl on Warren, which takes the
        same verbs and flags): its exit code and output."""
        if self._ctl is None:
            pytest.skip(f"no command-line tool for a {self.kind} target")
        return self._ctl(*args)

    def rabbit_tool(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        """``rabbitmqctl`` or ``rabbitmq-diagnostics`` (``tool``) with ``args``, as deployment tools
        run them: RabbitMQ's own against RabbitMQ, brokerctl under those names against Warren."""
        if self._rabbit_tool is None:
            pytest.skip(f"no RabbitMQ command-line tools for a {self.kind} target")
        return self._rabbit_tool(tool, *args)

    # -- TLS material -------------------------------------------------------
    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def ca_file(self) -> str:
        return str(self.tls_dir / "ca.pem")

    @property
    def cert_file(self) -> str:
        return str(self.tls_dir / "admin.pem")

    @property
    def key_file(self) -> str:
        return str(self.tls_dir / "admin.key")

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    # -- pika -----------------------------------------------------------------
    def pika_params(self, **kw):
        import pika
        kw.setdefault("connection_attempts", 1)
        kw.setdefault("socket_timeout", RPC_TIMEOUT)
        kw.setdefault("stack_timeout", 2 * RPC_TIMEOUT)
        kw.setdefault("blocked_connection_timeout", RPC_TIMEOUT)
        return pika.ConnectionParameters(
            host=self.host, port=self.port, virtual_host="/",
            credentials=pika.credentials.ExternalCredentials(),
            ssl_options=pika.SSLOptions(self.ssl_context(), self.server_name),
            **kw)

    def pika_connection(self, **kw):
        import pika
        return pika.BlockingConnection(self.pika_params(**kw))

    # -- py-amqp / kombu ------------------------------------------------------
    def amqp_ssl_options(self) -> dict:
        # py-amqp 5.x takes a dict (an SSLContext object is *not* used: any
        # non-dict value means "TLS with default settings"), wrapped by
        # amqp.transport.SSLTransport._wrap_socket_sni.
        return {
            "ca_certs": self.ca_file,
            "certfile": self.cert_file,
            "keyfile": self.key_file,
            "cert_reqs": ssl.CERT_REQUIRED,
            "server_hostname": self.server_name,
        }

    def amqp_connection(self, **kw):
        import amqp
        kw.setdefault("connect_timeout", RPC_TIMEOUT)
        kw.setdefault("read_timeout", 2 * RPC_TIMEOUT)
        kw.setdefault("write_timeout", RPC_TIMEOUT)
        conn = amqp.Connection(host=f"{self.server_name}:{self.port}", ssl=self.amqp_ssl_options(),
                               login_method="EXTERNAL", **kw)
        conn.connect()
        return conn

    @property
    def kombu_url(self) -> str:
        return f"amqp://{self.server_name}:{self.port}//"

    def kombu_connection(self, **kw):
        import kombu
        kw.setdefault("connect_timeout", RPC_TIMEOUT)
        # confirm_publish as oslo.messaging does: publish returns once the broker acked
        kw.setdefault("transport_options", {"confirm_publish": True,
                                            "read_timeout": 2 * RPC_TIMEOUT,
                                            "write_timeout": RPC_TIMEOUT})
        return kombu.Connection(self.kombu_url, ssl=self.amqp_ssl_options(),
                                login_method="EXTERNAL", **kw)

    # -- oslo.messaging -----------------------------------------------------
    @property
    def oslo_transport_url(self) -> str:
        # No user name: with rabbit_login_method=EXTERNAL py-amqp ignores it.
        return f"rabbit://{self.server_name}:{self.port}/"

    # -- logs -----------------------------------------------------------------
    def log_sizes(self) -> dict:
        return {p: (p.stat().st_size if p.exists() else 0) for p in self.log_paths}

    def log_since(self, sizes: dict, limit: int = 8000) -> str:
        out = []
        for p in self.log_paths:
            if not p.exists():
                continue
            with open(p, "rb") as f:
                f.seek(sizes.get(p, 0))
                data = f.read().decode(errors="replace")
            if data.strip():
                if len(data) > limit:
                    data = "...\n" + data[-limit:]
                out.append(f"--- {p.name} ---\n{data}")
        return "\n".join(out)


def _warren_exe() -> str:
    exe = os.environ.get("WARREN_BIN") or str(REPO_ROOT / "target" / "debug" / "warren")
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        pytest.fail(f"warren binary not found at {exe}: build it first (cargo build), set WARREN_BIN, "
                    f"or run with WARREN_TEST_TARGET=rabbitmq", pytrace=False)
    return exe


_session_broker: Broker | None = None


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    global _session_broker
    base = tmp_path_factory.mktemp(f"broker-{TARGET}")
    if TARGET == "warren":
        proc = WarrenProcess(_warren_exe(), base / "data", rabbitmq_target.free_port())
        error = None
        try:
            proc.start()
        except RuntimeError as e:
            error = str(e)
        if error is not None:
            pytest.fail(f"warren did not start:\n{error}", pytrace=False)
        def brokerctl(*args: str) -> tuple[int, str]:
            exe = str(Path(_warren_exe()).with_name("brokerctl"))
            cp = subprocess.run([exe, "--socket", str(proc.data_dir / "admin.sock"), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
            return cp.returncode, cp.stdout

        tools = base / "rabbit-tools"
        tools.mkdir()
        for name in ("rabbitmqctl", "rabbitmq-diagnostics"):
            (tools / name).symlink_to(Path(_warren_exe()).with_name("brokerctl"))

        def rabbit_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
            env = dict(os.environ, WARREN_ADMIN_SOCKET=str(proc.data_dir / "admin.sock"))
            return subprocess.run([str(tools / tool), *args], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, timeout=60)

        b = Broker("warren", proc.port, proc.data_dir, [proc.stdout_path, proc.stderr_path],
                   ctl=brokerctl, rabbit_tool=rabbit_tool)
        _session_broker = b
        try:
            yield b
        finally:
            _session_broker = None
            was_alive = proc.alive()
            out = proc.output()
            proc.stop()
            if not was_alive:
                pytest.fail(f"warren exited during the test session:\n{out}", pytrace=False)
    elif TARGET == "rabbitmq":
        node = rabbitmq_target.RabbitMQNode(base)
        error = None
        try:
            node.start()
        except RuntimeError as e:
            error = str(e)
        if error is not None:
            pytest.fail(f"RabbitMQ did not start:\n{error}", pytrace=False)
        logs = [node.stdout_path, node.stderr_path]
        def rabbitmqctl(*args: str) -> tuple[int, str]:
            cp = node.ctl(*args, check=False)
            return cp.returncode, cp.stdout

        def rabbit_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(Path(node.sbin) / tool), "-n", node.nodename, *args],
                                  env=node.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, timeout=120)

        b = Broker("rabbitmq", node.port, node.base, logs, version=node.version, ctl=rabbitmqctl,
                   rabbit_tool=rabbit_tool)
        _session_broker = b
        try:
            yield b
        finally:
            _session_broker = None
            node.stop()
    elif TARGET == "external":
        port = int(os.environ["WARREN_TEST_PORT"])
        b = Broker("external", port, Path(os.environ["WARREN_TEST_DATA_DIR"]))
        _session_broker = b
        yield b
        _session_broker = None
    else:
        pytest.fail(f"unknown WARREN_TEST_TARGET={TARGET!r} (warren, rabbitmq or external)", pytrace=False)


def pytest_report_header(config):
    return [f"warren conformance target: {TARGET}"]


# Attach the broker output written during a failing test to its report.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    sizes = getattr(item, "_broker_log_sizes", None)
    b = _session_broker
    if rep.failed and b is not None and sizes is not None:
        text = b.log_since(sizes)
        if text:
            rep.sections.append(("broker output during this test", text))


@pytest.fixture(autouse=True)
def _broker_log_marker(request):
    b = _session_broker
    if b is not None:
        request.node._broker_log_sizes = b.log_sizes()
    yield


def pytest_sessionstart(session):
    # `timeout 300 pytest ...` sends SIGTERM: turn it into KeyboardInterrupt so
    # that the session fixture still stops the broker.
    def on_term(signum, frame):
        raise KeyboardInterrupt("SIGTERM")
    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:
        pass


# --------------------------------------------------------------------------
# small helpers for tests
# --------------------------------------------------------------------------

@pytest.fixture
def name(request):
    """A function giving unique queue/exchange names for this test."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:60]
    run = uuid.uuid4().hex[:8]
    counter = iter(range(1000))

    def make(suffix: str = "") -> str:
        n = next(counter)
        return f"t.{base}.{run}.{n}{('.' + suffix) if suffix else ''}"
    return make


def amqp_reply_text(text: str) -> str:
    """The reply-text RabbitMQ sends for `text`: a short string, so longer than
    255 bytes is cut to its first 252 bytes followed by "..."
    (rabbit_binary_generator:amqp_exception_explanation)."""
    raw = text.encode()
    if len(raw) > 255:
        raw = raw[:252] + b"..."
    return raw.decode(errors="replace")


def wait_until(predicate, timeout: float = DELIVERY_TIMEOUT, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
