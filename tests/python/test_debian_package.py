"""The Debian package (issue 15 point 3): built with packaging/build-deb.sh from the binaries the
suite already built, its contents, conffiles and control fields, lintian, the systemd unit
(`systemd-analyze verify` and its `security` score), the AppArmor profile (`apparmor_parser`), and a
traced run of the packaged broker checked against the profile and the unit's sandbox: every file it
opened, socket it made and system call it used is one they allow. Warren only; needs root to
install the Debian tools it uses when they are missing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

import conftest
import sandbox_rules
from conftest import TARGET
from service_broker import ServiceBroker

pytestmark = pytest.mark.skipif(TARGET == "rabbitmq", reason="Warren's own package")

TOOLS = {"lintian": "lintian", "apparmor_parser": "apparmor", "help2man": "help2man",
         "dpkg-shlibdeps": "dpkg-dev", "fakeroot": "fakeroot", "strace": "strace",
         "systemd-analyze": "systemd", "strip": "binutils"}
#: The exposure `systemd-analyze security` gives the unit (docs/operations.md states it).
EXPOSURE_AT_MOST = 1.5
CONFFILES = {"/etc/warren/warren.toml", "/etc/apparmor.d/usr.sbin.warren", "/etc/logrotate.d/warren"}


def need_tools() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)})
    if missing and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        if subprocess.run(install, env=env, timeout=900, stdout=subprocess.DEVNULL).returncode:
            subprocess.run(["apt-get", "update"], env=env, timeout=600, stdout=subprocess.DEVNULL)
            subprocess.run(install, env=env, timeout=900, stdout=subprocess.DEVNULL, check=True)
    still = [tool for tool in TOOLS if not shutil.which(tool)]
    if still:
        pytest.skip(f"missing {still} (apt-get install {' '.join(TOOLS[t] for t in still)})")


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    need_tools()
    exe = Path(conftest._warren_exe())
    profile = exe.parent.name
    if profile not in ("debug", "release") or not (exe.parent / "brokerctl").exists():
        pytest.skip(f"{exe} is not a cargo build beside brokerctl")
    out = tmp_path_factory.mktemp("deb")
    cp = subprocess.run(["bash", str(conftest.REPO_ROOT / "packaging" / "build-deb.sh"),
                         "--profile", profile, "--no-build", "--out", str(out)],
                        capture_output=True, text=True, timeout=600)
    assert cp.returncode == 0, cp.stderr
    path = Path(cp.stdout.strip().splitlines()[-1])
    assert path.exists() and path.name.startswith("warren_") and path.suffix == ".deb", cp.stdout
    return path


def extract(deb: Path, root: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(root / "DEBIAN")], check=True)
    return root


def test_contents_conffiles_and_control(deb, tmp_path):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    entries = {}
    for line in listing.splitlines():
        mode, owner, _size, _date, _time, path, *link = line.split(None, 6)
        entries[path.removeprefix(".")] = (mode, owner, link[0] if link else "")
    for path, mode in (("/usr/sbin/warren", "-rwxr-xr-x"), ("/usr/bin/brokerctl", "-rwxr-xr-x"),
                       ("/etc/warren/warren.toml", "-rw-r--r--"),
                       ("/lib/systemd/system/warren.service", "-rw-r--r--"),
                       ("/etc/apparmor.d/usr.sbin.warren", "-rw-r--r--"),
                       ("/etc/logrotate.d/warren", "-rw-r--r--"),
                       ("/usr/share/man/man8/warren.8.gz", "-rw-r--r--"),
                       ("/usr/share/man/man1/brokerctl.1.gz", "-rw-r--r--"),
                       ("/usr/share/doc/warren/copyright", "-rw-r--r--"),
                       ("/usr/lib/tmpfiles.d/warren.conf", "-rw-r--r--")):
        assert path in entries, f"{path} not in the package:\n{listing}"
        assert entries[path][0] == mode and entries[path][1] == "root/root", (path, entries[path])
    for alias in ("rabbitmqctl", "rabbitmq-diagnostics"):
        assert entries[f"/usr/sbin/{alias}"][2] == "-> ../bin/brokerctl", entries[f"/usr/sbin/{alias}"]
    assert "/etc/warren/tls/" in entries

    root = extract(deb, tmp_path / "root")
    assert set((root / "DEBIAN" / "conffiles").read_text().split()) == CONFFILES
    control = dict(re.findall(r"^([\w-]+): (.*)$", (root / "DEBIAN" / "control").read_text(), re.M))
    assert control["Package"] == "warren" and control["Conflicts"] == "rabbitmq-server", control
    depends = control["Depends"]
    assert "adduser" in depends and re.search(r"libc6 \(>= 2\.\d+\)", depends), depends
    for script in ("postinst", "prerm", "postrm"):
        path = root / "DEBIAN" / script
        assert os.access(path, os.X_OK), script
        subprocess.run(["sh", "-n", str(path)], check=True)

    # The packaged programs run, under each name, and the packaged configuration is valid: it
    # fails only for want of the TLS material an operator puts in /etc/warren/tls.
    version = subprocess.run([str(root / "usr/sbin/warren"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    assert version.startswith("warren "), version
    tool = subprocess.run([str(root / "usr/sbin/rabbitmq-diagnostics"), "--version"],
                          capture_output=True, text=True)
    assert tool.returncode == 0 and tool.stdout.strip(), (tool.stdout, tool.stderr)
    cp = subprocess.run([str(root / "usr/sbin/warren"), "--config",
                         str(root / "etc/warren/warren.toml")], capture_output=True, text=True,
                        timeout=30)
    assert cp.returncode != 0 and "/etc/warren/tls/" in cp.stderr, cp.stderr


def test_lintian_finds_nothing(deb):
    cp = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)], capture_output=True,
                        text=True, timeout=600)
    tags = [l for l in (cp.stdout + cp.stderr).splitlines() if re.match(r"^[EW]: ", l)]
    assert cp.returncode == 0 and not tags, cp.stdout + cp.stderr


def unit_root(deb: Path, tmp_path: Path) -> Path:
    """The package's files plus what the unit refers to on any Debian system (the standard targets
    and /bin/kill), for systemd-analyze --root."""
    root = extract(deb, tmp_path / "root")
    units = root / "lib/systemd/system"
    for pattern in ("*.target", "*.slice"):
        for unit in Path("/lib/systemd/system").glob(pattern):
            if unit.is_file() and not (units / unit.name).exists():
                shutil.copy(unit, units / unit.name)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy("/bin/kill", root / "bin/kill")
    return root


def test_the_unit_verifies_and_is_sandboxed(deb, tmp_path):
    root = unit_root(deb, tmp_path)
    unit = root / "lib/systemd/system/warren.service"
    cp = subprocess.run(["systemd-analyze", "verify", f"--root={root}", str(unit)],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and not (cp.stdout + cp.stderr).strip(), cp.stdout + cp.stderr
    # A misspelt setting is only a warning to systemd: the check above must see it.
    broken = unit.with_name("warren-broken.service")
    broken.write_text(unit.read_text().replace("UMask=", "UMsk="))
    cp = subprocess.run(["systemd-analyze", "verify", f"--root={root}", str(broken)],
                        capture_output=True, text=True, timeout=60)
    assert "Unknown key" in cp.stdout + cp.stderr
    broken.unlink()

    cp = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                         str(unit)], capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for warren\.service: ([\d.]+) (\w+)", cp.stdout)
    assert score, cp.stdout + cp.stderr
    assert float(score.group(1)) <= EXPOSURE_AT_MOST, cp.stdout

    settings = sandbox_rules.unit_settings(unit.read_text())
    assert settings["Type"] == ["notify"] and settings["User"] == ["warren"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["LimitNOFILE"] == ["65536"] and settings["Restart"] == ["on-failure"]
    assert settings["CapabilityBoundingSet"] == [""] and settings["UMask"] == ["0027"]
    assert settings["ProtectSystem"] == ["strict"]


def test_the_apparmor_profile_parses(tmp_path):
    need_tools()
    profile = conftest.REPO_ROOT / "packaging/debian/usr.sbin.warren"
    cp = subprocess.run(["apparmor_parser", "--skip-kernel-load", "--skip-cache", "-Q", str(profile)],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    broken = tmp_path / "usr.sbin.warren"
    broken.write_text(profile.read_text().replace("/etc/warren/ r,", "/etc/warren/ r"))
    cp = subprocess.run(["apparmor_parser", "--skip-kernel-load", "--skip-cache", "-Q", str(broken)],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode != 0


def test_the_profile_and_the_sandbox_allow_everything_the_broker_does(broker, deb, tmp_path):
    """The packaged broker, laid out as installed (paths under a scratch root), traced with strace
    through a start, TLS logins, a durable queue with confirms and acks, a metrics scrape, an
    admin request, SIGHUP and SIGTERM. AppArmor and systemd are not running here to enforce the
    profile and the unit, so the trace is checked against them instead."""
    root = extract(deb, tmp_path / "root")
    unit = sandbox_rules.unit_settings((root / "lib/systemd/system/warren.service").read_text())
    notify = root / "run/systemd/notify"
    notify.parent.mkdir(parents=True)
    import socket
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(120)
    trace_path = tmp_path / "trace.txt"
    service = ServiceBroker(str(root / "usr/sbin/warren"), root, broker,
                            extra_toml=f'\n[log]\nformat = "rabbitmq"\nfile = "{root}/var/log/warren/warren.log"\n',
                            env={"NOTIFY_SOCKET": str(notify)},
                            wrapper=["strace", "-f", "-y", "-qq", "-s", "512", "-o", str(trace_path)])
    try:
        service.start(wait=False)
        assert "READY=1" in listener.recv(4096).decode()
        pid = service.broker_pid()
        client = service.client()
        conn = client.pika_connection()
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("packaged", durable=True)
        import pika
        for i in range(20):
            ch.basic_publish("", "packaged", f"m{i}".encode(),
                             pika.BasicProperties(delivery_mode=2), mandatory=True)
        got = 0
        for method, _props, _body in ch.consume("packaged", inactivity_timeout=5):
            if method is None:
                break
            ch.basic_ack(method.delivery_tag)
            got += 1
            if got == 20:
                break
        assert got == 20
        conn.close()
        with urllib.request.urlopen(f"http://{conftest.HOST}:{service.metrics_port}/metrics",
                                    timeout=30) as r:
            assert b"rabbitmq_identity_info" in r.read()
        brokerctl = Path(conftest._warren_exe()).parent / "brokerctl"
        listed = subprocess.run([str(brokerctl), "--socket", str(service.state / "admin.sock"),
                                 "--format", "json", "list_queues"], capture_output=True, text=True,
                                timeout=60)
        assert listed.returncode == 0 and "packaged" in listed.stdout, listed.stderr
        service.signal(signal.SIGHUP)
        conftest.wait_until(lambda: "SIGHUP" in (root / "var/log/warren/warren.log").read_text(),
                            timeout=30, what="the reload")
    finally:
        code = service.stop(timeout=60)
        listener.close()
    assert code == 0, service.output()

    trace = sandbox_rules.parse_strace(trace_path.read_text(errors="replace"))
    profile = sandbox_rules.Profile(root / "etc/apparmor.d/usr.sbin.warren")
    refused = []
    for path, needed, line in trace.accesses:
        if path.startswith(str(root) + "/"):
            path = path[len(str(root)):]
        elif not path.startswith("/"):
            refused.append(f"relative path {path!r}: {line}")
            continue
        path = re.sub(r"^/proc/self/", f"/proc/{pid}/", path)
        path = re.sub(r"^/proc/thread-self/", f"/proc/{pid}/task/{pid}/", path)
        if not profile.allows(path, needed):
            refused.append(f"{path} {''.join(sorted(needed))}: {line}")
    assert not refused, "the AppArmor profile would refuse:\n" + "\n".join(sorted(set(refused))[:40])

    families = set(unit["RestrictAddressFamilies"][0].split())
    for family, kind in trace.sockets:
        assert family in families, (family, kind, families)
        aa = {"AF_INET": "inet", "AF_INET6": "inet6", "AF_UNIX": "unix"}[family]
        aa_kind = {"SOCK_STREAM": "stream", "SOCK_DGRAM": "dgram"}.get(kind, kind)
        assert (aa, aa_kind) in profile.network, (family, kind, profile.network)
    assert not trace.wx_mappings, trace.wx_mappings[:5]   # MemoryDenyWriteExecute=yes

    allowed = sandbox_rules.allowed_syscalls(unit)
    # strace's own start (execve of the broker) is the only call made before the filter applies.
    used = trace.syscalls - {"execve"}
    assert used <= allowed, f"SystemCallFilter= would refuse {sorted(used - allowed)}"
    assert len(used) > 30, sorted(used)   # the trace really was parsed
