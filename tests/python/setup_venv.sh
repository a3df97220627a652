#!/usr/bin/env bash
# Create (or refresh) the virtualenv used by the Python conformance tests.
#
#   tests/python/setup_venv.sh            # venv at <repo>/target/python-venv
#   WARREN_VENV=/some/dir tests/python/setup_venv.sh
#
# Idempotent: requirements are reinstalled only when requirements.txt changed
# (its sha256 is kept in a stamp file inside the venv).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
venv="${WARREN_VENV:-$repo_root/target/python-venv}"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "python venv $venv is up to date"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating python venv at $venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi

rm -f "$stamp"
"$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
"$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
echo "$want" > "$stamp"
echo "python venv $venv ready"
