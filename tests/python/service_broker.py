"""A ``warren --config`` process laid out as the Debian package installs it (configuration and TLS
material under ``ROOT/etc/warren``, state in ``ROOT/var/lib/warren``, runtime files in
``ROOT/run/warren``, logs in ``ROOT/var/log/warren``), with the session's dev PKI, for the tests of
what a service manager and a packaged install see: readiness notification, log formats, the
AppArmor profile and the systemd sandbox."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import conftest
import rabbitmq_target


class ServiceBroker:
    def __init__(self, exe: str, root: Path, session: conftest.Broker, extra_toml: str = "",
                 env: dict | None = None, wrapper: list[str] | None = None):
        self.exe, self.root, self.session = exe, root, session
        self.port = rabbitmq_target.free_port()
        self.metrics_port = rabbitmq_target.free_port()
        self.etc = root / "etc" / "warren"
        self.state = root / "var" / "lib" / "warren"
        self.run_dir = root / "run" / "warren"
        self.log_dir = root / "var" / "log" / "warren"
        self.config_path = self.etc / "warren.toml"
        self.stdout_path = root / "stdout.txt"
        self.stderr_path = root / "stderr.txt"
        self.extra_toml, self.env, self.wrapper = extra_toml, env or {}, wrapper or []
        self.proc: subprocess.Popen | None = None

    def write_layout(self) -> None:
        tls = self.etc / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        for d in (self.state, self.run_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o700)
        for name in ("ca.pem", "server.pem", "server.key"):
            shutil.copy(self.session.tls_dir / name, tls / name)
        os.chmod(tls / "server.key", 0o600)
        self.config_path.write_text(f"""\
listen = ["{conftest.HOST}:{self.port}"]
data_dir = "{self.state}"
vhosts = ["/"]

[tls]
ca_bundle = "{tls / 'ca.pem'}"
cert = "{tls / 'server.pem'}"
key = "{tls / 'server.key'}"

[admin]
pid_file = "{self.run_dir / 'warren.pid'}"

[metrics]
listen = "{conftest.HOST}:{self.metrics_port}"

[[users]]
name = "admin"
tags = ["administrator"]
permissions = [{{ vhost = "/", configure = ".*", write = ".*", read = ".*" }}]
{self.extra_toml}""")

    def start(self, wait: bool = True) -> None:
        self.write_layout()
        env = dict(os.environ, **self.env)
        self.proc = subprocess.Popen([*self.wrapper, self.exe, "--config", str(self.config_path)],
                                     stdout=open(self.stdout_path, "wb"),
                                     stderr=open(self.stderr_path, "wb"),
                                     stdin=subprocess.DEVNULL, env=env)
        if wait:
            self.wait_listening()

    def wait_listening(self) -> None:
        try:
            rabbitmq_target.wait_for_port(conftest.HOST, self.port,
                                          time.monotonic() + 3 * conftest.STARTUP_TIMEOUT, self.proc)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"{self.config_path.read_text()}\n{self.output()}") from e

    def client(self) -> conftest.Broker:
        """The session broker's client certificates (the same CA) pointed at this broker."""
        return conftest.Broker("warren", self.port, self.session.data_dir)

    def broker_pid(self) -> int:
        """The broker's pid: the process started, or under a wrapper (strace) the one it wrote to
        its pid file (remembered, as the broker removes the file when it stops)."""
        assert self.proc is not None
        if not self.wrapper:
            return self.proc.pid
        if getattr(self, "_pid", None) is None:
            self._pid = int((self.run_dir / "warren.pid").read_text())
        return self._pid

    def signal(self, sig: int) -> None:
        os.kill(self.broker_pid(), sig)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.signal(signal.SIGTERM)
            except (OSError, ValueError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def output(self) -> str:
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        return f"--- stdout ---\n{out}\n--- stderr ---\n{self.stderr()[-6000:]}"
