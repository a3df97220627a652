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
