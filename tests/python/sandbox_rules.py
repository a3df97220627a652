"""Just enough of AppArmor's and systemd's rule languages to check a trace of the broker against them:
which files an AppArmor profile (with its includes and variables) lets a program open, and which
system calls and socket families a systemd unit's SystemCallFilter= and RestrictAddressFamilies=
allow. Used by test_debian_package.py, where neither AppArmor nor systemd is running to enforce."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

APPARMOR_DIR = Path("/etc/apparmor.d")


# --------------------------------------------------------------------------
# AppArmor
# --------------------------------------------------------------------------

@dataclass
class FileRule:
    pattern: re.Pattern
    perms: set[str]
    deny: bool
    text: str


def _glob_to_regex(glob: str) -> str:
    """AppArmor's globbing: ``**`` any characters, ``*`` and ``?`` within a path component,
    ``{a,b}`` alternatives (nested), ``[...]`` character classes."""
    out, i, depth = [], 0, 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "{":
            out.append("(?:")
            depth += 1
        elif c == "}" and depth:
            out.append(")")
            depth -= 1
        elif c == "," and depth:
            out.append("|")
        elif c == "[":
            end = glob.index("]", i)
            out.append(glob[i:end + 1])
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class Profile:
    """The file rules of one profile file, its includes followed and its variables expanded."""

    def __init__(self, path: Path, base: Path = APPARMOR_DIR):
        self.base = base
        self.variables: dict[str, list[str]] = {}
        self.rules: list[FileRule] = []
        self.network: set[tuple[str, str]] = set()
        self._raw: list[tuple[str, str, bool]] = []
        self._read(path, seen=set())
        for glob, perms, deny in self._raw:
            for expanded in self._expand(glob):
                expanded = re.sub(r"/+", "/", expanded)   # @{PROC}/x is /proc//x: one slash
                self.rules.append(FileRule(re.compile(_glob_to_regex(expanded) + r"\Z"),
                                           set(perms), deny, f"{glob} {perms}"))

    def _read(self, path: Path, seen: set) -> None:
        if path in seen:
            return
        seen.add(path)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file():
                    self._read(child, seen)
            return
        for raw in path.read_text().splitlines():
            line = raw.split("#", 1)[0].strip() if not raw.strip().startswith("#include") else raw.strip()
            if not line:
                continue
            include = re.match(r"^#?include\s+(if\s+exists\s+)?<([^>]+)>", line)
            if include:
                target = self.base / include.group(2)
                if target.exists():
                    self._read(target, seen)
                elif not include.group(1):
                    raise FileNotFoundError(target)
                continue
            var = re.match(r"^@\{(\w+)\}\s*(\+?=)\s*(.*)$", line)
            if var:
                values = var.group(3).split()
                if var.group(2) == "+=":
                    self.variables.setdefault(var.group(1), []).extend(values)
                else:
                    self.variables[var.group(1)] = values
                continue
            net = re.match(r"^network\s+(\w+)\s+(\w+)\s*,$", line)
            if net:
                self.network.add((net.group(1), net.group(2)))
                continue
            rule = re.match(r"^(?:audit\s+)?(deny\s+)?(?:owner\s+)?((?:/|@\{)\S*)\s+([rwaxmlkiuUpPcC]+)\s*"
                            r"(?:->\s*\S+)?\s*,$", line)
            if rule:
                self._raw.append((rule.group(2), rule.group(3), bool(rule.group(1))))

    def _expand(self, glob: str, depth: int = 0) -> list[str]:
        m = re.search(r"@\{(\w+)\}", glob)
        if not m:
            return [glob]
        if depth > 20 or m.group(1) not in self.variables:
            return []
        out = []
        for value in self.variables[m.group(1)]:
            out.extend(self._expand(glob[:m.start()] + value + glob[m.end():], depth + 1))
        return out

    def allows(self, path: str, needed: set[str]) -> bool:
        granted, denied = set(), set()
        for rule in self.rules:
            if rule.pattern.match(path):
                (denied if rule.deny else granted).update(rule.perms)
        if "w" in granted:
            granted.add("a")
        return needed <= granted and not (needed & denied)


# --------------------------------------------------------------------------
# what a traced process did (strace -f -y -qq -s 512)
# --------------------------------------------------------------------------

@dataclass
class Trace:
    accesses: list[tuple[str, set[str], str]]   # (path, permissions needed, the trace line)
    syscalls: set[str]
    sockets: set[tuple[str, str]]               # (AF_INET, SOCK_STREAM) ...
    wx_mappings: list[str]


_FD_PATH = re.compile(r'^(\d+)<(.*)>$')


def _open_perms(flags: str) -> set[str]:
    perms = set()
    if "O_RDWR" in flags:
        perms |= {"r", "w"}
    elif "O_WRONLY" in flags:
        perms.add("a" if "O_APPEND" in flags else "w")
    else:
        perms.add("r")
    if "O_CREAT" in flags or "O_TRUNC" in flags:
        perms.add("w")
    return perms


def parse_strace(text: str) -> Trace:
    accesses, syscalls, sockets, wx = [], set(), set(), []
    for line in text.splitlines():
        m = re.match(r"^\d+\s+(?:<\.\.\. )?(\w+)(\(| resumed>)", line)
        if not m:
            continue
        name = m.group(1)
        syscalls.add(name)
        args = line[m.end():]
        strings = re.findall(r'"((?:[^"\\]|\\.)*)"', args)
        if name in ("open", "openat", "openat2") and strings:
            dirfd = re.match(r"(\d+)<([^>]*)>,", args)
            path = strings[0]
            if not path.startswith("/") and dirfd:
                path = dirfd.group(2).rstrip("/") + "/" + path
            flags = args.split('",', 1)[1] if '",' in args else ""
            if "O_DIRECTORY" in flags or Path(path).is_dir():   # (a directory opened to fsync it)
                path = path.rstrip("/") + "/"
            accesses.append((path, _open_perms(flags), line))
        elif name in ("mkdir", "mkdirat") and strings:
            accesses.append((strings[0].rstrip("/") + "/", {"w"}, line))
        elif name in ("rename", "renameat", "renameat2") and len(strings) >= 2:
            accesses.append((strings[0], {"w"}, line))
            accesses.append((strings[1], {"w"}, line))
        elif name in ("unlink", "unlinkat") and strings:
            accesses.append((strings[0], {"w"}, line))
        elif name in ("link", "linkat", "symlink", "symlinkat") and len(strings) >= 2:
            accesses.append((strings[-1], {"l"}, line))
        elif name in ("bind", "connect", "sendto", "sendmsg") and "sun_path=" in args:
            sun = re.search(r'sun_path="((?:[^"\\]|\\.)*)"', args)
            if sun and sun.group(1).startswith("/"):
                accesses.append((sun.group(1), {"w"}, line))
        elif name == "flock":
            fd = re.match(r"(\d+)<([^>]*)>", args)
            if fd:
                accesses.append((fd.group(2), {"k"}, line))
        elif name == "mmap" and "PROT_EXEC" in args:
            fd = re.search(r"MAP_\w+(?:\|MAP_\w+)*, (\d+)<([^>]*)>", args)
            if fd:
                accesses.append((fd.group(2), {"m"}, line))
        if name in ("mmap", "mprotect", "pkey_mprotect") and "PROT_EXEC" in args and "PROT_WRITE" in args:
            wx.append(line)
        if name == "socket":
            sock = re.match(r"(AF_\w+), (SOCK_\w+)", args)
            if sock and " = -1 " not in line:
                sockets.add((sock.group(1), sock.group(2)))
    return Trace(accesses, syscalls, sockets, wx)


# --------------------------------------------------------------------------
# systemd
# --------------------------------------------------------------------------

def syscall_groups() -> dict[str, list[str]]:
    """systemd-analyze's system call groups, each with its members (names and nested @groups)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                         check=True).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand_syscalls(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for item in items:
        if item.startswith("@"):
            out |= expand_syscalls(groups[item], groups)
        else:
            out.add(item)
    return out


def unit_settings(unit_text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit_text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def allowed_syscalls(settings: dict[str, list[str]]) -> set[str]:
    """What SystemCallFilter= lines allow: the first allow-list, less every ``~`` deny-list (and
    @default, which systemd always permits)."""
    groups = syscall_groups()
    allowed = expand_syscalls(["@default"], groups)
    allow_lists = [v.split() for v in settings.get("SystemCallFilter", []) if not v.startswith("~")]
    deny_lists = [v[1:].split() for v in settings.get("SystemCallFilter", []) if v.startswith("~")]
    for items in allow_lists:
        allowed |= expand_syscalls(items, groups)
    for items in deny_lists:
        allowed -= expand_syscalls(items, groups) - expand_syscalls(["@default"], groups)
    return allowed
