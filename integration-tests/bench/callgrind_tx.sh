#!/usr/bin/env bash
# callgrind_tx.sh — instructions the proxy executes per transaction, for Shardgate builds and
# PgBouncer, counted by valgrind's callgrind: the same binary and workload give the same count
# whatever else the machine is doing, so two builds compare exactly where a timed run is noise.
#
# Starts one throw-away Postgres on 127.0.0.1 (pgbench -i -s 1), then for each binary of BINS
# (Shardgate builds; "pgbouncer" for PgBouncer) and each workload of WORKLOADS runs the proxy
# under callgrind (transaction mode, pool 4) twice, for `pgbench -t $WARM` and for
# `-t $WARM+$TX` per client, and prints the difference per transaction (start-up, logins and
# shutdown cancel out), with the functions that take most of the longer run (self cost) in
# $OUT/<name>-<workload>.txt.
#
# Usage:
#   BINS="/work/shardgate-old target/release/shardgate pgbouncer" \
#       integration-tests/bench/callgrind_tx.sh
# Environment: BINS (required) WORKLOADS ["select:simple tpcb:simple"] CLIENTS [4] TX [500]
#   (per client) WARM [50] (per client) OUT [/tmp/callgrind-tx] PGBOUNCER_BIN [/usr/sbin/pgbouncer]
#   SHARDGATE_WORKERS [0] (Shardgate's [proxy] workers) SHARDGATE_PROXY_EXTRA (more [proxy]
#   lines, e.g. "query_stats_size = 0" to compare per-shape statistics off)
set -euo pipefail
BINS=${BINS:?set BINS}
WORKLOADS=${WORKLOADS:-select:simple tpcb:simple}
CLIENTS=${CLIENTS:-4}
TX=${TX:-500}
WARM=${WARM:-50}
OUT=${OUT:-/tmp/callgrind-tx}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
PGBIN=$(pg_config --bindir)
PGBENCH=$(command -v pgbench || echo "$PGBIN/pgbench")
# shellcheck source=integration-tests/bench/common.sh
source "$(dirname "$0")/common.sh"
mkdir -p "$OUT"
bench_tmp callgrind
start_pg "$TMP" 1

# Instructions of one proxy run: start it under callgrind, run `pgbench -t $2` per client, stop
# it (callgrind writes its counts at exit).
measure() { # BIN NAME WORKLOAD TX -> total instructions
    local bin=$1 name=$2 w=$3 tx=$4 port
    rm -f "$OUT/$name".*
    port=$(free_port)
    if [[ $bin == pgbouncer && $(id -u) -eq 0 ]]; then
        chmod 777 "$OUT" # callgrind writes its output as PgBouncer's user
    fi
    start_proxy "$TMP" "$bin" "$port" "$TMP/proxy.log" \
        valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.%p.out" --dump-line=no
    # shellcheck disable=SC2046
    "$PGBENCH" $(pgbench_args "$w") -c "$CLIENTS" -j 1 -t "$tx" -n -h 127.0.0.1 -p "$port" -U app app >/dev/null 2>&1
    kill "$PROXY"
    wait "$PROXY" 2>/dev/null || true
    local pid=$PROXY
    PROXY=
    { callgrind_annotate --threshold=90 "$OUT/$name.$pid.out" 2>/dev/null || true; } | sed -n 1,80p >"$OUT/$name.txt"
    { callgrind_annotate "$OUT/$name.$pid.out" 2>/dev/null || true; } | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
for w in $WORKLOADS; do
    echo
    echo "### $w: instructions per transaction (runs of $WARM and $((WARM + TX)) transactions per client, $CLIENTS clients, subtracted)"
    for bin in $BINS; do
        name=$(basename "$bin")-$(echo "$w" | tr ':' '-')
        short=$(measure "$bin" "$name-short" "$w" "$WARM")
        long=$(measure "$bin" "$name" "$w" $((WARM + TX)))
        awk -v n="$name" -v a="${short:-0}" -v b="${long:-0}" -v tx=$((TX * CLIENTS)) \
            'BEGIN {printf "%s: %.0f instructions/tx\n", n, (b - a) / tx}'
    done
done
