#!/usr/bin/env bash
# The quorum-queue benchmark row (issue 13, HA.md HA9): 1 KiB persistent publishes with confirms at
# window 1 and window 1000, a manual-ack consumer keeping up, into
#   warren-1     a single-node Warren durable queue            (scenarios persistent-w1, persistent)
#   warren-3     a three-node Warren quorum queue              (quorum-w1, quorum)
#   rabbitmq-1   a single-node RabbitMQ durable queue           (scenarios persistent-w1, persistent)
#   rabbitmq-3   a three-node RabbitMQ quorum queue (Debian's 3.10, joined with join_cluster)
# in one run, on loopback, every broker process on core 0 and the client (warren-load) on core 1, the
# same TLS material (Warren's dev CA), EXTERNAL login. Records confirm p50/p99 and msg/s.
# `--cores spread` lets every process (brokers and client) run on both cores instead: the one
# broker and the three nodes then get the same two cores, not one core each.
#
#   benches/quorum.sh [--duration SECS] [--sizes 1024] [--brokers warren-1,warren-3,rabbitmq-1,rabbitmq-3]
#                     [--prefetch 1000] [--cores pinned|spread]
# WARREN=/path/to/warren runs another build of Warren (an A/B of two commits); the load client is
# always this tree's.
#
# Output: a table on stdout and in benches/results/quorum-<date>.md; raw JSON lines beside it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The consumer's prefetch: 1000 lets either broker's quorum-queue consumer keep up (the issue's
# condition for the window-1000 row); at 100 neither does on this machine, a settle's round trip
# through Raft holding each message's credit, and the row measures the consumer instead.
duration=10 sizes=1024 brokers="warren-1,warren-3,rabbitmq-1,rabbitmq-3" prefetch=1000 cores=pinned
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        --sizes) sizes="$2"; shift 2 ;;
        --brokers) brokers="$2"; shift 2 ;;
        --prefetch) prefetch="$2"; shift 2 ;;
        --cores) cores="$2"; shift 2 ;;
        *) sed -n '2,17p' "$0"; exit 2 ;;
    esac
done
case "$cores" in
    pinned) BROKER_CPUS=0 CLIENT_CPUS=1 placement="Every broker process on core 0, the client on core 1" ;;
    spread) BROKER_CPUS=0,1 CLIENT_CPUS=0,1 placement="Every process (brokers and client) on both cores" ;;
    *) echo "--cores is pinned or spread" >&2; exit 2 ;;
esac
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cargo build -q --release --bin warren --bin brokerctl
cargo build -q --release -p warren-benches --bin warren-load
WARREN="${WARREN:-$root/target/release/warren}" LOAD="$root/target/release/warren-load"
TMP="$(mktemp -d /tmp/warren-quorum-bench.XXXXXX)"
stamp="$(date +%Y-%m-%d-%H%M%S)"
mkdir -p benches/results
RAW="benches/results/quorum-$stamp.jsonl" MD="benches/results/quorum-$stamp.md"
PIDS=() PGIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for g in "${PGIDS[@]:-}"; do [ -n "$g" ] && kill -TERM -- "-$g" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
    sleep 1
    for g in "${PGIDS[@]:-}"; do [ -n "$g" ] && kill -KILL -- "-$g" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
    [ -n "${EPMD_PORT:-}" ] && ERL_EPMD_PORT="$EPMD_PORT" timeout 10 epmd -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! ss -Htan "sport = :$1" 2>/dev/null | grep -q .; }
free_port() { # free_port LOW HIGH [COUNT]: COUNT consecutive free ports from the one printed
    local p i k ok
    for i in $(seq 1 200); do
        p=$(( $1 + RANDOM % ($2 - $1) )); ok=1
        for k in $(seq 0 $(( ${3:-1} - 1 ))); do port_free $((p + k)) || ok=0; done
        [ "$ok" = 1 ] && { echo "$p"; return 0; }
    done
    echo "no free port in [$1, $2)" >&2; return 1
}
wait_port() { # wait_port PORT SECONDS
    local deadline=$(( SECONDS + $2 ))
    while [ $SECONDS -lt $deadline ]; do
        ss -Htln "sport = :$1" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    echo "port $1 did not open within $2 s" >&2; return 1
}
run_load() { # run_load BROKER PORT PIDS SCENARIOS (PIDS: every node's, comma-separated)
    log "$1: $4"
    taskset -c "$CLIENT_CPUS" "$LOAD" run --broker "$1" --port "$2" --pid "$3" \
        --broker-cpus "$BROKER_CPUS" --tls-dir "$TMP/tls" \
        --scenarios "$4" --sizes "$sizes" --duration "$duration" --prefetch "$prefetch" --out "$RAW" >&2
}
want() { [[ ",$brokers," == *",$1,"* ]]; }
# Each broker starts with the disk idle: a window-1000 run writes gigabytes, and the virtual
# disk's flushes stay slow for a while after (the three Warren nodes measured right after the
# single node confirmed half as fast, at 1.7x the CPU per message, as when measured first).
settle_disk() { sync; sleep "${SETTLE_SECS:-30}"; }

# The dev CA (and the single node, if asked for).
mkdir -p "$TMP/w1"
port=$(free_port 12000 12500 1)
taskset -c "$BROKER_CPUS" "$WARREN" --dev --data-dir "$TMP/w1" --listen "127.0.0.1:$port" >"$TMP/w1.log" 2>&1 &
pid=$!; PIDS+=("$pid")
wait_port "$port" 30
cp -a "$TMP/w1/tls" "$TMP/tls"
if want warren-1; then
    run_load warren-1 "$port" "$pid" persistent-w1,persistent
fi
kill -TERM "$pid"; wait "$pid" || true
settle_disk

if want warren-3; then
    mkdir -p "$TMP/w3"; cp -a "$TMP/tls" "$TMP/w3/tls"
    port=$(free_port 12000 12500 3)
    setsid taskset -c "$BROKER_CPUS" "$WARREN" --dev --cluster 3 --data-dir "$TMP/w3" --listen "127.0.0.1:$port" \
        >"$TMP/w3.log" 2>&1 </dev/null &
    sup=$!; PGIDS+=("$sup")
    for i in 0 1 2; do wait_port $((port + i)) 60; done
    n1=$(pgrep -f "$TMP/w3/n1/warren.toml" | head -1)
    for p in $(pgrep -f "$TMP/w3/n"); do taskset -acp "$BROKER_CPUS" "$p" >/dev/null; done
    # Every shard is led by its preferred node (cluster::balance: shard g by node (g-1) mod 3 + 1),
    # so node 1, where the client declares the queue (and RabbitMQ's client-local locator puts its
    # leader), leads shards that stay there, and hosts them (a new leader refuses publishes until
    # its first entry is applied).
    for _ in $(seq 1 60); do
        "$root/target/release/brokerctl" --socket "$TMP/w3/n1/admin.sock" --format json cluster status \
            2>/dev/null | python3 -c '
import json, sys
shards = [g for g in json.load(sys.stdin)["groups"] if g["group"].startswith("shard-")]
ok = shards and all(g.get("leader") == (int(g["group"][6:]) - 1) % 3 + 1 for g in shards)
ok = ok and all(g.get("hosting") for g in shards if g.get("leader") == 1)
sys.exit(0 if ok else 1)' && break
        sleep 0.5
    done
    others=$(pgrep -f "$TMP/w3/n[23]/warren.toml" | paste -sd, -)
    run_load warren-3 "$port" "$n1,$others" quorum-w1,quorum,quorum-paced
    kill -INT "$sup"; wait "$sup" || true
    settle_disk
fi

if want rabbitmq-1 || want rabbitmq-3; then
    RMQ_BIN=/usr/lib/rabbitmq/bin
    if [ ! -x "$RMQ_BIN/rabbitmq-server" ]; then
        log "installing rabbitmq-server from Debian's packages (its service is not started)"
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
        rm -f /usr/sbin/policy-rc.d
    fi
    EPMD_PORT=$(free_port 26000 27000)
    mkdir -p "$TMP/rmq-home"; chmod 700 "$TMP/rmq-home"
    declare -A AMQP DIST CTL
    rmq_env() { # rmq_env N CMD...: the environment of our private node N
        local n=$1; shift
        local base="$TMP/rmq$n"
        env -u RABBITMQ_NODENAME HOME="$TMP/rmq-home" RABBITMQ_NODENAME="rq$n@localhost" \
            RABBITMQ_CONF_ENV_FILE="$base/rabbitmq-env.conf" RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf" \
            RABBITMQ_ADVANCED_CONFIG_FILE="$base/advanced.config" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" RABBITMQ_MNESIA_BASE="$base/mnesia" \
            RABBITMQ_LOG_BASE="$base/log" RABBITMQ_PID_FILE="$base/rabbitmq.pid" \
            RABBITMQ_DIST_PORT="${DIST[$n]}" RABBITMQ_CTL_DIST_PORT_MIN="${CTL[$n]}" \
            RABBITMQ_CTL_DIST_PORT_MAX="$(( ${CTL[$n]} + 10 ))" \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
            RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
            ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$EPMD_PORT" LANG=C.UTF-8 LC_ALL=C.UTF-8 "$@"
    }
    rmqctl() { local n=$1; shift; rmq_env "$n" timeout 120 "$RMQ_BIN/rabbitmqctl" -n "rq$n@localhost" "$@"; }
    nodes="1"; if want rabbitmq-3; then nodes="1 2 3"; fi
    for n in $nodes; do
        base="$TMP/rmq$n"; mkdir -p "$base"/{mnesia,log}
        AMQP[$n]=$(free_port 20000 26000); DIST[$n]=$(free_port 27000 29000); CTL[$n]=$(free_port 29000 31000 11)
        echo "# empty" >"$base/rabbitmq-env.conf"
        echo "[rabbitmq_auth_mechanism_ssl]." >"$base/enabled_plugins"
        echo "[]." >"$base/advanced.config"
        cat >"$base/rabbitmq.conf" <<EOF
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:${AMQP[$n]}
ssl_options.cacertfile = $TMP/tls/ca.pem
ssl_options.certfile = $TMP/tls/server.pem
ssl_options.keyfile = $TMP/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
auth_mechanisms.1 = EXTERNAL
ssl_cert_login_from = common_name
log.console = false
log.file.level = info
disk_free_limit.absolute = 64MB
EOF
        rmq_env "$n" setsid taskset -c "$BROKER_CPUS" "$RMQ_BIN/rabbitmq-server" >"$base/stdout" 2>"$base/stderr" </dev/null &
        PGIDS+=("$!")
        rmqctl "$n" wait --timeout 120 "$base/rabbitmq.pid" >/dev/null
        if [ "$n" != 1 ]; then
            rmqctl "$n" stop_app >/dev/null
            rmqctl "$n" join_cluster rq1@localhost >/dev/null
            rmqctl "$n" start_app >/dev/null
        fi
        wait_port "${AMQP[$n]}" 60
        taskset -acp "$BROKER_CPUS" "$(cat "$base/rabbitmq.pid")" >/dev/null
        if [ "$n" = 1 ]; then
            rmqctl 1 add_user admin "$(head -c 18 /dev/urandom | base64)" >/dev/null
            rmqctl 1 set_permissions -p / admin '.*' '.*' '.*' >/dev/null
            # RabbitMQ's own single node before the others join: the same HA9 ratios for RabbitMQ.
            if want rabbitmq-1; then
                run_load rabbitmq-1 "${AMQP[1]}" "$(cat "$base/rabbitmq.pid")" persistent-w1,persistent
            fi
        fi
    done
    if want rabbitmq-3; then
        rmqctl 1 cluster_status | grep -A4 -i "running nodes" >&2 || true
        rpids=$(for n in $nodes; do echo "$(cat "$TMP/rmq$n/rabbitmq.pid")"; done | paste -sd, -)
        run_load rabbitmq-3 "${AMQP[1]}" "$rpids" quorum-w1,quorum,quorum-paced
    fi
    for n in $nodes; do rmqctl "$n" stop >/dev/null 2>&1 || true; done
fi

python3 - "$RAW" "$MD" "$duration" "$prefetch" "$placement" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"scenario":"_meta"' not in l]
out = [f"# Quorum queues: 1 KiB persistent publishes with confirms, consumer acking with prefetch {sys.argv[4]} ({sys.argv[3]} s windows)\n",
       f"{sys.argv[5]}; confirm latency: publish written → ack read.",
       "Consumer behind: published − consumed at the end; the load client publishes at most 10,000 ahead,",
       "so a row at 10,000 ran at its consumer's pace with the publisher's window mostly not full. A",
       "publisher that keeps its window full waits window ÷ rate on average (Little's law): with the",
       "consumer keeping up, the window-1000 p50 is about 1000 ÷ msg/s.\n",
       "| broker | queue | window | msg/s | confirm p50 µs | confirm p99 µs | consumer behind | broker µs CPU/msg (all its nodes) |",
       "|---|---|--:|--:|--:|--:|--:|--:|"]
by = {}
for r in rows:
    kind = "quorum, 3 nodes" if r["scenario"].startswith("quorum") else "durable, 1 node"
    window = 1 if r["scenario"].endswith("-w1") else 1000
    if r["scenario"].endswith("-paced"):
        window = f"1000 at {r.get('extra', {}).get('rate_target', 0):,.0f}/s"
    by[(r["broker"], r["scenario"])] = r
    err = r.get("extra", {}).get("error")
    if err:
        out.append(f"| {r['broker']} | {kind} | {window} | FAILED: {err} | | | | |")
        continue
    extra = r.get("extra", {})
    behind = extra.get("published", 0) - extra.get("delivered", 0)
    out.append(f"| {r['broker']} | {kind} | {window} | {r['rate']:.0f} | {r.get('confirm_p50_us', 0):.0f} | "
               f"{r.get('confirm_p99_us', 0):.0f} | {behind} | {r['cpu_us_per_op']:.1f} |")
def ratio(a, b, f):
    x, y = by.get(a), by.get(b)
    return f"{x[f] / y[f]:.2f}" if x and y and y.get(f) else "-"
out.append("")
out.append(f"- Warren QQ ÷ RabbitMQ QQ msg/s at window 1000: {ratio(('warren-3','quorum'), ('rabbitmq-3','quorum'), 'rate')} (target ≥ 3)")
out.append(f"- Warren QQ ÷ RabbitMQ QQ confirm p50, window 1: {ratio(('warren-3','quorum-w1'), ('rabbitmq-3','quorum-w1'), 'confirm_p50_us')}, window 1000: {ratio(('warren-3','quorum'), ('rabbitmq-3','quorum'), 'confirm_p50_us')}, window 1000 at the same offered load: {ratio(('warren-3','quorum-paced'), ('rabbitmq-3','quorum-paced'), 'confirm_p50_us')} (target < 1)")
for b in ("warren", "rabbitmq"):
    three, one = f"{b}-3", f"{b}-1"
    out.append(f"- {b} QQ ÷ {b} single-node durable, window-1 p50: {ratio((three,'quorum-w1'), (one,'persistent-w1'), 'confirm_p50_us')}, p99: {ratio((three,'quorum-w1'), (one,'persistent-w1'), 'confirm_p99_us')}; window-1000 msg/s: {ratio((three,'quorum'), (one,'persistent'), 'rate')}" + (" (HA9 budget: ≤ 2.5, ≤ 3, ≥ 0.33)" if b == "warren" else " (the same ratios for RabbitMQ)"))
text = "\n".join(out) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
PY
