#!/usr/bin/env bash
# The long fault matrix (HA.md §4, HA1 nightly): RUNS runs of SECONDS each, cycling the fault
# families, seeds 1..RUNS. Not CI (it takes hours); run it and report the summary it prints.
#   tests/fault/matrix.sh [RUNS=50] [SECONDS=180] [OUT=target/fault-matrix] [FIRST=1]
# FIRST > 1 runs only runs FIRST..RUNS, so the matrix can be run in slices (each run's result is
# the same whoever runs it: family and seed follow from its number). Every run's summary (with the
# commit it ran) is also kept in tests/fault/results/matrix-<SECONDS>s/, which is committed, and the
# summary printed at the end covers every run kept there.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
runs="${1:-50}"; seconds="${2:-180}"; out="${3:-$root/target/fault-matrix}"; first="${4:-1}"
kept="$root/tests/fault/results/matrix-${seconds}s"
commit="$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD || echo +changes)"
# WARREN_FAULT_FAMILIES="kill pause ... slowfollower longdown" picks others (the long ones need 180 s).
read -r -a families <<<"${WARREN_FAULT_FAMILIES:-kill pause partition lossy fsfreeze powerloss members}"
venv="${WARREN_VENV:-$root/target/python-venv}"
[ -x "$venv/bin/python" ] || bash "$root/tests/python/setup_venv.sh" || exit 1
bash "$root/tests/fault/setup_tools.sh" || exit 1
mkdir -p "$out" "$kept"
(cd "$root" && cargo build -q --bin warren --bin brokerctl) || exit 1
# The runs use a copy of what was just built, so a build beside a long matrix changes none of them.
bin="$out/bin"
mkdir -p "$bin" && cp "$root/target/debug/warren" "$root/target/debug/brokerctl" "$bin/" || exit 1
passed=0; failed=0
for ((i = first; i <= runs; i++)); do
  family="${families[$(((i - 1) % ${#families[@]}))]}"
  dir="$out/run-$i-$family"
  rm -rf "$dir"
  line="$("$venv/bin/python" "$root/tests/fault/run.py" --family "$family" --seconds "$seconds" \
    --seed "$i" --out "$dir" --bin "$bin/warren" 2>&1 | tail -1)"
  if [ -f "$dir/result.json" ] && python3 -c "import json,sys; sys.exit(0 if json.load(open('$dir/result.json'))['passed'] else 1)"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
  python3 - "$dir/result.json" "$kept/run-$i-$family.json" "$commit" "$family" "$i" <<'PY'
import json, sys
from pathlib import Path
src, dst, commit = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
r = json.loads(src.read_text()) if src.exists() else {"passed": False, "failures": ["no result.json"]}
keep = {k: (len(v) if isinstance(v, list) and k in ("lost", "unexpected", "corrupt") else v)
        for k, v in r.items() if k not in ("events", "converged", "statuses")}
keep["commit"] = commit
keep.setdefault("family", sys.argv[4])
keep.setdefault("seed", int(sys.argv[5]))
dst.write_text(json.dumps(keep, indent=1, sort_keys=True) + "\n")
PY
  echo "run $i $family: $line"
done
python3 - "$kept" <<'PY'
import json, sys
from pathlib import Path
rows = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("run-*.json"))]
tot = lambda k: sum((len(r[k]) if isinstance(r.get(k), list) else r.get(k, 0)) for r in rows)
print(f"runs {len(rows)}, passed {sum(r['passed'] for r in rows)}, acked {tot('acked')}, "
      f"lost {tot('lost')}, unexpected {tot('unexpected')}, corrupt {tot('corrupt')}, "
      f"duplicates {tot('duplicates')}, HA2 violations {tot('minority_confirms')}")
for fam in sorted({r['family'] for r in rows}):
    rs = [r for r in rows if r['family'] == fam]
    gaps = sorted(r.get('longest_gap_any_publisher_s', 0) for r in rs)
    print(f"  {fam:10} runs {len(rs)} passed {sum(r['passed'] for r in rs)} "
          f"longest gap (any publisher) max {gaps[-1] if gaps else '-'} s")
for r in rows:
    if not r['passed']:
        print(f"  FAILED {r['family']} seed {r['seed']}: {r['failures']}")
PY
[ "$failed" = 0 ]
