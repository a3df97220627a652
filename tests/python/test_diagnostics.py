"""Start-up errors are clear (PROBE F14): each printed once, naming the right file. Warren only."""

from __future__ import annotations

import subprocess

import pytest

import conftest
from conftest import TARGET

pytestmark = pytest.mark.skipif(TARGET == "rabbitmq", reason="Warren's own start-up errors")


def start_error(*args: str) -> str:
    cp = subprocess.run([conftest._warren_exe(), *args], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, timeout=30)
    assert cp.returncode != 0, cp.stdout
    return cp.stderr


def test_a_missing_configuration_file_is_reported_once(tmp_path):
    err = start_error("--config", str(tmp_path / "missing.toml"))
    assert "missing.toml" in err
    assert err.count("No such file or directory") == 1, err


def test_a_toml_syntax_error_is_reported_once_with_its_position(tmp_path):
    path = tmp_path / "warren.toml"
    path.write_text('listen = ["127.0.0.1:5671"\n')
    err = start_error("--config", str(path))
    assert str(path) in err
    assert err.count("TOML parse error") == 1, err
    assert "line" in err, err


def test_the_dev_broker_starts_under_a_group_writable_umask(tmp_path):
    """Ubuntu and Fedora give users umask 002: the data directory the broker creates must still be
    one it accepts (0700), not group-writable."""
    import os
    import signal
    import time

    import rabbitmq_target
    port = rabbitmq_target.free_port()
    data = tmp_path / "fresh" / "data"
    proc = subprocess.Popen([conftest._warren_exe(), "--dev", "--data-dir", str(data), "--listen",
                             f"{conftest.HOST}:{port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=lambda: os.umask(0o002))
    try:
        rabbitmq_target.wait_for_port(conftest.HOST, port, time.monotonic() + 30, proc)
        assert oct(data.stat().st_mode & 0o777) == "0o700"
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert "refusing" not in out, out
