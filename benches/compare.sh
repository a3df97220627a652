#!/usr/bin/env bash
# Warren against an earlier commit of itself, for a change that must not cost speed (issue 12: the
# core boundary, "within 5%"): builds BASE's warren (release) in a scratch worktree, then runs
# benches/load.sh --brokers warren with each build in turn, ROUNDS times alternating (BASE, HEAD,
# BASE, HEAD, ...) so that drift on this noisy machine falls on both, and prints HEAD ÷ BASE per
# row from the mean rates. Writes benches/results/compare-<date>.md.
#
#   benches/compare.sh BASE [--rounds N] [--scenarios LIST] [--sizes LIST] [--duration SECS]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=${1:?usage: benches/compare.sh BASE [--rounds N] [--scenarios LIST] [--sizes LIST] [--duration SECS]}
COMMAND="benches/compare.sh $*"
shift
ROUNDS=2
SCENARIOS="publish,pubsub,confirms,fanout,topic,persistent,rpc-8x2"
SIZES="16,1024"
DURATION=10
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --scenarios) SCENARIOS="$2"; shift ;;
        --sizes) SIZES="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cd "$ROOT"
BASE_SHA=$(git rev-parse --short "$BASE")
HEAD_SHA=$(git rev-parse --short HEAD)
WORK=$(mktemp -d /tmp/warren-compare.XXXXXX)
cleanup() { git -C "$ROOT" worktree remove --force "$WORK/base" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

log "building $BASE_SHA (release) in a scratch worktree"
git worktree add --detach "$WORK/base" "$BASE_SHA" >/dev/null
(cd "$WORK/base" && CARGO_TARGET_DIR="$ROOT/target/compare-base" cargo build --release -q -p warren-broker --bin warren)
BASE_BIN="$ROOT/target/compare-base/release/warren"
log "building $HEAD_SHA (release)"
cargo build --release -q -p warren-broker --bin warren
HEAD_BIN="$ROOT/target/release/warren"

for i in $(seq 1 "$ROUNDS"); do
    for which in base head; do
        bin=$BASE_BIN; [ "$which" = head ] && bin=$HEAD_BIN
        log "round $i: $which"
        "$ROOT/benches/load.sh" --brokers warren --scenarios "$SCENARIOS" --sizes "$SIZES" \
            --duration "$DURATION" --warren-bin "$bin" --results "$WORK/$which-$i" >&2
    done
done

mkdir -p "$ROOT/benches/results"
OUT="$ROOT/benches/results/compare-$(date +%Y-%m-%d-%H%M%S).md"
python3 - "$WORK" "$ROUNDS" "$BASE_SHA" "$HEAD_SHA" "$COMMAND" >"$OUT" <<'PY'
import json, sys, statistics
from pathlib import Path
work, rounds, base, head, command = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def rates(which):
    got = {}
    for i in range(1, rounds + 1):
        for line in (work / f"{which}-{i}" / "runs.jsonl").read_text().splitlines():
            for row in json.loads(line).get("warren", []):
                if row.get("scenario", "_meta") == "_meta" or "rate" not in row:
                    continue
                got.setdefault((row["scenario"], row.get("body", 0)), []).append(row["rate"])
    return got
b, h = rates("base"), rates("head")
print(f"# Warren {head} against {base}\n")
print(f"Command: `{command}`; {rounds} rounds, alternating {base} and {head}, each a full "
      "`benches/load.sh --brokers warren` run (10 s windows); mean rate of the rounds.\n")
print(f"| scenario | body | {base} /s | {head} /s | {head} ÷ {base} | rounds {base} | rounds {head} |")
print("|---|--:|--:|--:|--:|---|---|")
worst = None
for key in sorted(b.keys() & h.keys()):
    mb, mh = statistics.mean(b[key]), statistics.mean(h[key])
    ratio = mh / mb if mb else float("nan")
    worst = ratio if worst is None else min(worst, ratio)
    fmt = lambda xs: ", ".join(f"{x:,.0f}" for x in xs)
    print(f"| {key[0]} | {key[1]} | {mb:,.0f} | {mh:,.0f} | {ratio:.3f} | {fmt(b[key])} | {fmt(h[key])} |")
print(f"\nLowest ratio: {worst:.3f} (target: every row ≥ 0.95).")
PY
log "wrote $OUT"
cat "$OUT"
