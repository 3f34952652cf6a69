#!/usr/bin/env bash
# before_after.sh — pgbench -S through two Shardgate builds in one run, interleaved, to show what a
# change costs: A = BEFORE_BIN (e.g. a release build of the previous commit), B = AFTER_BIN.
#
# Everything on 127.0.0.1 in a temp dir, torn down on exit. Starts one throw-away Postgres
# (pgbench -i -s $SCALE), both proxies in transaction mode (pool size 20), then runs
# `pgbench -S -M $MODE -c $CLIENTS -j 2 -T $DURATION` against before/after/before/after... for
# $ROUNDS rounds, and prints TPS and proxy CPU seconds per 1,000 transactions for each run and
# the after/before ratio of the medians.
#
# Usage:
#   git worktree add /tmp/base HEAD~1 && (cd /tmp/base && cargo build --release)
#   cargo build --release
#   BEFORE_BIN=/tmp/base/target/release/shardgate AFTER_BIN=target/release/shardgate \
#       integration-tests/bench/before_after.sh
# Environment: CLIENTS [32] DURATION [15] ROUNDS [3] SCALE [10] MODE [simple]
set -euo pipefail
BEFORE_BIN=$(readlink -f "${BEFORE_BIN:?set BEFORE_BIN}")
AFTER_BIN=$(readlink -f "${AFTER_BIN:-target/release/shardgate}")
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-10}
MODE=${MODE:-simple}
PGBIN=$(pg_config --bindir)
PGBENCH=$(command -v pgbench || echo "$PGBIN/pgbench")
CLK_TCK=$(getconf CLK_TCK)
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]] && { echo "$p"; return; }
    done
    exit 1
}
cpu_ticks() { local s; s=$(<"/proc/$1/stat"); awk '{print $12 + $13}' <<<"${s##*) }"; }

TMP=$(mktemp -d /tmp/sg-before-after.XXXXXX)
PIDS=()
cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -m immediate -w stop >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
chmod 755 "$TMP"
mkdir -p "$TMP/data" "$TMP/sock"
[[ $(id -u) -eq 0 ]] && chown -R postgres:postgres "$TMP"
PG_PORT=$(free_port)
as_pg "$PGBIN/initdb" -D "$TMP/data" -U postgres -A trust -E UTF8 --no-locale >/dev/null
cat >>"$TMP/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/sock'
max_connections = 200
fsync = off
synchronous_commit = off
EOF
as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -l "$TMP/pg.log" -w start >/dev/null
"$PGBIN/psql" -X -q -h "$TMP/sock" -p "$PG_PORT" -U postgres -c "create role app login password 'app'" -c "create database app owner app"
export PGPASSWORD=app
"$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U app app >/dev/null 2>&1

declare -A PORT PID
for t in before after; do
    PORT[$t]=$(free_port)
    bin=$BEFORE_BIN; [[ $t == after ]] && bin=$AFTER_BIN
    cat >"$TMP/$t.toml" <<EOF
[proxy]
listen = "127.0.0.1:${PORT[$t]}"
pool_mode = "transaction"
[pool]
size = 20
[[users]]
name = "app"
password = "app"
[[databases]]
name = "app"
[[databases.shards]]
name = "s0"
primary = "127.0.0.1:$PG_PORT"
EOF
    RUST_LOG=warn "$bin" run --config "$TMP/$t.toml" >"$TMP/$t.log" 2>&1 &
    PID[$t]=$!
    PIDS+=("$!")
    for _ in $(seq 120); do
        "$PGBIN/psql" -X -qtA -h 127.0.0.1 -p "${PORT[$t]}" -U app -d app -c 'select 1' >/dev/null 2>&1 && break
        sleep 0.5
    done
done

run() { # run TARGET SECS -> "tps cpu_per_1k"
    local t=$1 b a out tps tx
    b=$(cpu_ticks "${PID[$t]}")
    out=$("$PGBENCH" -S -M "$MODE" -c "$CLIENTS" -j 2 -T "$2" -n -h 127.0.0.1 -p "${PORT[$t]}" -U app app 2>&1)
    a=$(cpu_ticks "${PID[$t]}")
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' <<<"$out")
    tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    awk -v tps="${tps:-0}" -v t=$((a - b)) -v hz="$CLK_TCK" -v n="${tx:-0}" \
        'BEGIN {printf "%.0f %.5f\n", tps, (n > 0 ? t / hz / (n / 1000) : 0)}'
}
for t in before after; do run "$t" 3 >/dev/null; done
echo "| round | build | tps | proxy cpu s / 1k tx |"
echo "|---|---|---:|---:|"
declare -A TPS CPU
for r in $(seq "$ROUNDS"); do
    for t in before after; do
        read -r tps cpu < <(run "$t" "$DURATION")
        echo "| $r | $t | $tps | $cpu |"
        TPS[$t]+="$tps "
        CPU[$t]+="$cpu "
    done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {print (NR % 2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
tb=$(median "${TPS[before]}"); ta=$(median "${TPS[after]}")
cb=$(median "${CPU[before]}"); ca=$(median "${CPU[after]}")
echo
echo "medians: before $tb tps, $cb cpu s/1k tx; after $ta tps, $ca cpu s/1k tx"
awk -v a="$ta" -v b="$tb" -v ca="$ca" -v cb="$cb" 'BEGIN {printf "after/before: tps %.3f, cpu per tx %.3f\n", a / b, ca / cb}'
