#!/usr/bin/env bash
# Warren vs RabbitMQ load benchmark: builds (release) the broker and warren-load, then runs every
# selected scenario against Warren and against a private RabbitMQ node, both TLS-only on 127.0.0.1
# with client certificates and SASL EXTERNAL, both pinned to core 0 with the load generator on core 1.
# The floor rows (floor-rpc, floor-latency) run once, against warren-load's own TLS echo server
# started on core 0 the same way: what loopback TLS costs without any broker.
# Writes benches/results/<date>.md (the table) and appends one JSON line to benches/results/runs.jsonl.
# See benches/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: benches/load.sh [options]

  --quick               ~2 s per scenario, 500 idle connections, no queues row, one broker start
  --scenarios LIST      comma-separated subset (benches/load.sh --list shows the names)
  --brokers LIST        warren,rabbitmq (default both); the floor-* rows (TLS echo server, no
                        broker) run once whenever they are selected, whatever this says
  --sizes LIST          body sizes for message scenarios (default 16,1024)
  --duration SECS       measured window per scenario (default 10, quick 2)
  --idle-conns N        idle connections for idle-conns (default 10000, quick 500)
  --queues N            queues for the queues row (default 10000, quick 1000)
  --open-budget SECS    time allowed to open the idle connections (default 90)
  --wait-idle SECS      first wait up to SECS for the 1-min load average to drop below 0.5
  --results DIR         where the .md and runs.jsonl go (default benches/results)
  --runaway-ahead N     diagnostics: in the runaway row, keep the runaway publisher at most N
                        messages ahead of its slow consumer (what ideal flow control would do)
  --warren-bin PATH     run this warren binary instead of building the checkout's (benches/compare.sh
                        uses it to measure an older commit's build in the same way)
  --debug               debug build (development only: the numbers mean nothing)
  --list                list the scenarios and exit
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=0
SCENARIOS=""
BROKERS="warren,rabbitmq"
RUNAWAY_AHEAD=""
WARREN_BIN=""
SIZES="16,1024"
DURATION=""
IDLE_CONNS=""
QUEUES=""
OPEN_BUDGET=90
WAIT_IDLE=0
RESULTS="$ROOT/benches/results"
PROFILE=release
LIST=0
COMMAND="benches/load.sh $*"

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --scenarios) SCENARIOS="$2"; shift ;;
        --brokers) BROKERS="$2"; shift ;;
        --sizes) SIZES="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --idle-conns) IDLE_CONNS="$2"; shift ;;
        --queues) QUEUES="$2"; shift ;;
        --open-budget) OPEN_BUDGET="$2"; shift ;;
        --wait-idle) WAIT_IDLE="$2"; shift ;;
        --results) RESULTS="$2"; shift ;;
        --runaway-ahead) RUNAWAY_AHEAD="$2"; shift ;;
        --warren-bin) WARREN_BIN="$2"; shift ;;
        --debug) PROFILE=debug ;;
        --list) LIST=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ "$QUICK" = 1 ]; then
    : "${DURATION:=2}" "${IDLE_CONNS:=500}" "${QUEUES:=1000}"
    WARMUP=0.5 SETTLE=2 GAP=0.5
else
    : "${DURATION:=10}" "${IDLE_CONNS:=10000}" "${QUEUES:=10000}"
    WARMUP=1 SETTLE=5 GAP=1
fi

# ---- build ---------------------------------------------------------------------------------------
cd "$ROOT"
CARGO_FLAGS=()
[ "$PROFILE" = release ] && CARGO_FLAGS+=(--release)
log "building warren and warren-load ($PROFILE)"
cargo build "${CARGO_FLAGS[@]}" -q -p warren-broker --bin warren -p warren-benches --bin warren-load
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
: "${TARGET_DIR:=$ROOT/target}"
WARREN="${WARREN_BIN:-$TARGET_DIR/$PROFILE/warren}"
LOAD="$TARGET_DIR/$PROFILE/warren-load"

if [ "$LIST" = 1 ]; then "$LOAD" list; exit 0; fi

# ---- scenario selection and groups (each group runs on a freshly started broker) -----------------
ALL=$("$LOAD" list | awk '{print $1}' | paste -sd, -)
if [ -z "$SCENARIOS" ]; then
    if [ "$QUICK" = 1 ]; then
        SCENARIOS=$(echo "$ALL" | tr , '\n' | grep -vx queues | paste -sd, -)
    else
        SCENARIOS="$ALL"
    fi
fi
for s in ${SCENARIOS//,/ }; do
    case ",$ALL," in *",$s,"*) ;; *) echo "unknown scenario: $s (benches/load.sh --list)" >&2; exit 2 ;; esac
done
pick() { # the selected scenarios among $1, in the order of $1
    local out=""
    for s in ${1//,/ }; do case ",$SCENARIOS," in *",$s,"*) out="$out,$s" ;; esac; done
    echo "${out#,}"
}
LOAD_SCENARIOS=$(echo "$ALL" | tr , '\n' | grep -vxE 'idle-rss|idle-conns|queues|floor-.*' | paste -sd, -)
# The floor rows: against the echo server (no broker), once, after the brokers.
FLOOR_SCENARIOS=$(pick "$(echo "$ALL" | tr , '\n' | grep -xE 'floor-.*' | paste -sd, -)")
BROKER_SCENARIOS=$(echo "$SCENARIOS" | tr , '\n' | grep -vxE 'floor-.*' | paste -sd, -) || true
if [ "$QUICK" = 1 ]; then
    # One broker start per broker: the memory rows first, on the fresh broker.
    GROUPS_=("$(pick "idle-rss,idle-conns,queues,$LOAD_SCENARIOS")")
else
    GROUPS_=("$(pick idle-rss,idle-conns)" "$(pick queues)" "$(pick "$LOAD_SCENARIOS")")
fi

# ---- limits, temp dir, cleanup -------------------------------------------------------------------
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
log "open files limit: $(ulimit -n)"
if [ "$(ulimit -n)" -lt $((IDLE_CONNS + 1000)) ]; then
    IDLE_CONNS=$(( $(ulimit -n) - 1000 ))
    log "lowering --idle-conns to $IDLE_CONNS to fit the open files limit"
fi

TMP=$(mktemp -d /tmp/warren-load.XXXXXX)
LOAD_PID=""
WARREN_PID=""
RMQ_PID=""
RMQ_PGID=""
RMQ_EPMD_PORT=""
RMQ_BASE=""
ECHO_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$LOAD_PID" ]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; wait "$LOAD_PID" 2>/dev/null || true; fi
    stop_warren || true
    stop_rabbitmq || true
    stop_floor || true
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports are picked below the ephemeral range (net.ipv4.ip_local_port_range) and unused in any state:
# thousands of closed client connections leave their ephemeral ports in TIME_WAIT, where a listener
# (Erlang's distribution port, for one) cannot bind.
port_free() { ! ss -Htan "sport = :$1" 2>/dev/null | grep -q .; }
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() { # free_port LOW HIGH
    local p i
    if [ "$2" -gt "$EPHEMERAL_LOW" ]; then echo "port range [$1, $2) overlaps the ephemeral ports" >&2; return 1; fi
    for i in $(seq 1 200); do
        p=$(( $1 + RANDOM % ($2 - $1) ))
        if port_free "$p"; then echo "$p"; return 0; fi
    done
    echo "no free port in [$1, $2)" >&2; return 1
}
wait_port() { # wait_port PORT PID SECONDS
    local deadline=$(( SECONDS + $3 ))
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$2" 2>/dev/null || { echo "process $2 exited" >&2; return 1; }
        ss -Htln "sport = :$1" 2>/dev/null | grep -q . && return 0
        sleep 0.1
    done
    echo "port $1 did not open within $3 s" >&2; return 1
}
stop_pid() { # stop_pid PID SECONDS: TERM, wait, KILL
    local pid=$1 deadline=$(( SECONDS + $2 ))
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ---- Warren --------------------------------------------------------------------------------------
WARREN_N=0
start_warren() {
    WARREN_N=$((WARREN_N + 1))
    local data="$TMP/warren-$WARREN_N"
    mkdir -p "$data"
    # The first start creates the dev CA and certificates; later starts (and RabbitMQ) reuse them.
    [ -d "$TMP/tls" ] && cp -a "$TMP/tls" "$data/tls"
    WARREN_PORT=$(free_port 20000 26000)
    taskset -c 0 "$WARREN" --dev --data-dir "$data" --listen "127.0.0.1:$WARREN_PORT" \
        >"$data/stdout" 2>"$data/stderr" </dev/null &
    WARREN_PID=$!
    if ! wait_port "$WARREN_PORT" "$WARREN_PID" 30; then
        tail -n 30 "$data/stderr" >&2; return 1
    fi
    [ -d "$TMP/tls" ] || cp -a "$data/tls" "$TMP/tls"
    taskset -acp 0 "$WARREN_PID" >/dev/null
    BROKER_PID=$WARREN_PID BROKER_PORT=$WARREN_PORT BROKER_ADMIN=(--admin-socket "$data/admin.sock")
    log "warren pid $WARREN_PID on 127.0.0.1:$WARREN_PORT (core 0)"
}
stop_warren() {
    [ -n "$WARREN_PID" ] || return 0
    stop_pid "$WARREN_PID" 20
    WARREN_PID=""
}

# ---- RabbitMQ ------------------------------------------------------------------------------------
RMQ_SERVER=""
ensure_rabbitmq() {
    for d in /usr/lib/rabbitmq/bin /usr/local/lib/rabbitmq/bin; do
        [ -x "$d/rabbitmq-server" ] && { RMQ_SERVER="$d/rabbitmq-server"; return 0; }
    done
    [ "$(id -u)" = 0 ] || { echo "rabbitmq-server is missing: apt-get install -y rabbitmq-server" >&2; return 1; }
    log "installing rabbitmq-server from Debian's packages (its service is not started)"
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created=1
    fi
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq rabbitmq-server >/dev/null
    [ "$created" = 1 ] && rm -f "$policy"
    RMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
    [ -x "$RMQ_SERVER" ]
}

RMQ_N=0
rmq_env() { # the environment of our private node (never the system's /var/lib/rabbitmq)
    env -u RABBITMQ_NODENAME \
        HOME="$RMQ_BASE/home" \
        RABBITMQ_NODENAME="$RMQ_NODENAME" \
        RABBITMQ_CONF_ENV_FILE="$RMQ_BASE/rabbitmq-env.conf" \
        RABBITMQ_CONFIG_FILE="$RMQ_BASE/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$RMQ_BASE/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_BASE/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$RMQ_BASE/mnesia" \
        RABBITMQ_LOG_BASE="$RMQ_BASE/log" \
        RABBITMQ_PID_FILE="$RMQ_BASE/rabbitmq.pid" \
        RABBITMQ_DIST_PORT="$RMQ_DIST_PORT" \
        RABBITMQ_CTL_DIST_PORT_MIN="$RMQ_CTL_PORT" \
        RABBITMQ_CTL_DIST_PORT_MAX="$((RMQ_CTL_PORT + 10))" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        ERL_EPMD_PORT="$RMQ_EPMD_PORT" \
        LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        "$@"
}
rmqctl() { rmq_env timeout 120 "$(dirname "$RMQ_SERVER")/rabbitmqctl" -n "$RMQ_NODENAME" "$@"; }

start_rabbitmq() {
    RMQ_N=$((RMQ_N + 1))
    RMQ_BASE="$TMP/rabbitmq-$RMQ_N"
    RMQ_NODENAME="warrenload$$x$RMQ_N@localhost"
    RMQ_EPMD_PORT=$(free_port 26000 27000)
    RMQ_DIST_PORT=$(free_port 27000 29000)
    RMQ_CTL_PORT=$(free_port 29000 31000) # rabbitmqctl's own node: this port and the 10 after it
    RMQ_PORT=$(free_port 20000 26000)
    mkdir -p "$RMQ_BASE"/{home,mnesia,log}
    chmod 700 "$RMQ_BASE/home"
    echo "# intentionally empty" >"$RMQ_BASE/rabbitmq-env.conf"
    echo "[rabbitmq_auth_mechanism_ssl]." >"$RMQ_BASE/enabled_plugins"
    echo "[]." >"$RMQ_BASE/advanced.config"
    # The same CA, server certificate and key as Warren; TLS only, client certificate mandatory,
    # EXTERNAL with the certificate CN as the user; TLS 1.3 and 1.2 as Warren (rustls) offers.
    cat >"$RMQ_BASE/rabbitmq.conf" <<EOF
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:$RMQ_PORT
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
    # setsid: its own process group, so the whole node can be stopped by its id.
    rmq_env setsid taskset -c 0 "$RMQ_SERVER" >"$RMQ_BASE/stdout" 2>"$RMQ_BASE/stderr" </dev/null &
    RMQ_PGID=$!
    if ! rmqctl wait --timeout 120 "$RMQ_BASE/rabbitmq.pid" >"$RMQ_BASE/wait.log" 2>&1; then
        cat "$RMQ_BASE/wait.log" "$RMQ_BASE/stderr" >&2; tail -n 30 "$RMQ_BASE"/log/*.log >&2 || true
        return 1
    fi
    RMQ_PID=$(cat "$RMQ_BASE/rabbitmq.pid")
    rmqctl add_user admin "$(head -c 18 /dev/urandom | base64)" >/dev/null
    rmqctl set_user_tags admin administrator >/dev/null
    rmqctl set_permissions -p / admin '.*' '.*' '.*' >/dev/null
    rmqctl delete_user guest >/dev/null 2>&1 || true
    wait_port "$RMQ_PORT" "$RMQ_PID" 60
    taskset -acp 0 "$RMQ_PID" >/dev/null
    BROKER_PID=$RMQ_PID BROKER_PORT=$RMQ_PORT BROKER_ADMIN=()
    log "rabbitmq beam.smp pid $RMQ_PID on 127.0.0.1:$RMQ_PORT (core 0)"
}
stop_rabbitmq() {
    [ -n "$RMQ_PGID" ] || return 0
    rmqctl stop >/dev/null 2>&1 || true
    stop_pid "$RMQ_PID" 20
    kill -TERM -- "-$RMQ_PGID" 2>/dev/null || true
    sleep 0.5
    kill -KILL -- "-$RMQ_PGID" 2>/dev/null || true
    wait "$RMQ_PGID" 2>/dev/null || true
    # The node started its own epmd on our private port: stop that one (only that one).
    rmq_env timeout 10 epmd -port "$RMQ_EPMD_PORT" -kill >/dev/null 2>&1 || true
    RMQ_PGID="" RMQ_PID=""
}

# ---- the floor: a TLS echo server (no broker) ------------------------------------------------------
# warren-load's own minimal server (benches/load/echo.rs), started exactly like the brokers: under
# `taskset -c 0` (so its tokio runtime has one worker), then `taskset -acp 0`; the run's server
# certificate and key, client certificates verified against the run's CA.
start_floor() {
    ECHO_PORT=$(free_port 20000 26000)
    taskset -c 0 "$LOAD" echo-server --port "$ECHO_PORT" \
        --cert "$TMP/tls/server.pem" --key "$TMP/tls/server.key" --ca "$TMP/tls/ca.pem" \
        >"$TMP/echo.stdout" 2>"$TMP/echo.stderr" </dev/null &
    ECHO_PID=$!
    if ! wait_port "$ECHO_PORT" "$ECHO_PID" 30; then
        tail -n 30 "$TMP/echo.stderr" >&2; return 1
    fi
    taskset -acp 0 "$ECHO_PID" >/dev/null
    BROKER_PID=$ECHO_PID BROKER_PORT=$ECHO_PORT BROKER_ADMIN=()
    log "floor: TLS echo server pid $ECHO_PID on 127.0.0.1:$ECHO_PORT (core 0)"
}
stop_floor() {
    [ -n "$ECHO_PID" ] || return 0
    stop_pid "$ECHO_PID" 10
    ECHO_PID=""
}

# ---- run -----------------------------------------------------------------------------------------
if [ -n "$BROKER_SCENARIOS" ]; then
    case ",$BROKERS," in *,rabbitmq,*) ensure_rabbitmq ;; esac
fi

if [ "$WAIT_IDLE" -gt 0 ]; then
    deadline=$(( SECONDS + WAIT_IDLE ))
    while [ $SECONDS -lt $deadline ] && awk '{exit !($1 >= 0.5)}' /proc/loadavg; do
        log "waiting for the machine to be idle: load $(cut -d' ' -f1-3 /proc/loadavg)"
        sleep 15
    done
fi
log "load average: $(cut -d' ' -f1-3 /proc/loadavg); busiest processes:"
ps -eo pid,pcpu,comm --sort=-pcpu | head -n 6 >&2

run_group() { # run_group BROKER SCENARIOS
    local broker=$1 list=$2
    [ -n "$list" ] || return 0
    [ "$broker" = floor ] || case ",$BROKERS," in *",$broker,"*) ;; *) return 0 ;; esac
    log "$broker: $list"
    "start_$broker"
    # In the background and waited for, so that a signal reaches the cleanup trap at once.
    taskset -c 1 "$LOAD" run --broker "$broker" --port "$BROKER_PORT" --pid "$BROKER_PID" \
        --tls-dir "$TMP/tls" --scenarios "$list" --sizes "$SIZES" \
        --duration "$DURATION" --warmup "$WARMUP" --settle "$SETTLE" --gap "$GAP" \
        --idle-conns "$IDLE_CONNS" --queues "$QUEUES" --open-budget "$OPEN_BUDGET" \
        "${BROKER_ADMIN[@]}" ${RUNAWAY_AHEAD:+--runaway-ahead "$RUNAWAY_AHEAD"} --out "$TMP/$broker.jsonl" </dev/null &
    LOAD_PID=$!
    local rc=0
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    [ "$rc" = 0 ] || log "$broker: warren-load failed (exit $rc)"
    "stop_$broker"
}

# Warren goes first in each group: its first start also creates the TLS material both use.
if [[ ",$BROKERS," != *,warren,* ]]; then
    # RabbitMQ alone: let Warren create the certificates, then stop it.
    start_warren; stop_warren
fi
for g in "${GROUPS_[@]}"; do
    run_group warren "$g"
    run_group rabbitmq "$g"
done
if [ -n "$FLOOR_SCENARIOS" ]; then
    # The certificates come from Warren's first start; with the floor rows alone, start it once.
    [ -d "$TMP/tls" ] || { start_warren; stop_warren; }
    run_group floor "$FLOOR_SCENARIOS"
fi

# ---- report --------------------------------------------------------------------------------------
mkdir -p "$RESULTS"
STAMP=$(date +%Y-%m-%d-%H%M%S)
[ "$QUICK" = 1 ] && STAMP="$STAMP-quick"
RMQ_VERSION=$(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo "?")
ERL_VERSION=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().' 2>/dev/null || echo "?")
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
cat >"$TMP/meta.json" <<EOF
{"date": $(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)"), "command": $(json_str "$COMMAND"),
 "quick": $([ "$QUICK" = 1 ] && echo true || echo false), "profile": $(json_str "$PROFILE"),
 "warren_commit": $(json_str "${WARREN_BIN:+$WARREN_BIN, }$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown) (+ uncommitted changes)"),
 "warren_build": $(json_str "$PROFILE"),
 "rabbitmq_version": $(json_str "$RMQ_VERSION"), "erlang_version": $(json_str "$ERL_VERSION"),
 "cpu": $(json_str "$(nproc) x $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"),
 "kernel": $(json_str "Linux $(uname -r)"),
 "client": $(json_str "warren-load (own client on tokio-rustls + warren-protocol, one thread)"),
 "scenarios": $(json_str "$SCENARIOS"), "sizes": $(json_str "$SIZES"),
 "idle_conns": $IDLE_CONNS, "queues": $QUEUES, "loadavg_end": $(json_str "$(cut -d' ' -f1-3 /proc/loadavg)")}
EOF
touch "$TMP/warren.jsonl" "$TMP/rabbitmq.jsonl" "$TMP/floor.jsonl"
"$LOAD" report --warren "$TMP/warren.jsonl" --rabbitmq "$TMP/rabbitmq.jsonl" --floor "$TMP/floor.jsonl" \
    --meta "$TMP/meta.json" \
    --md "$RESULTS/$STAMP.md" --jsonl "$RESULTS/runs.jsonl"
log "wrote $RESULTS/$STAMP.md and appended to $RESULTS/runs.jsonl"
