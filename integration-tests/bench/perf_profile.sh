#!/usr/bin/env bash
# perf_profile.sh — where each proxy's CPU goes, by `perf record` (cycles, call graphs off):
# the share of kernel and user time, and the top symbols, for Shardgate builds and PgBouncer
# under the same pgbench load.
#
# Starts one throw-away Postgres on 127.0.0.1 (pgbench -i -s 1), then for each proxy of BINS
# (Shardgate builds; "pgbouncer" for PgBouncer): starts it (transaction mode, pool 4), runs
# `pgbench $WORKLOAD -c $CLIENTS -j 2 -T $DURATION` through it while `perf record -p` samples
# the proxy, and prints the kernel/user split and the $TOP hottest symbols
# ($OUT/<name>.perf.txt keeps the whole report).
#
# Usage:
#   BINS="target/release/shardgate pgbouncer" integration-tests/bench/perf_profile.sh
# Environment: BINS (required) WORKLOAD ["select:simple"] CLIENTS [32] DURATION [8] (s)
#   TOP [15] OUT [/tmp/perf-profile] PGBOUNCER_BIN [/usr/sbin/pgbouncer]
#   SHARDGATE_WORKERS [0] (Shardgate's [proxy] workers)
# Requires perf (Debian `linux-perf`) and the right to profile (root, or
# kernel.perf_event_paranoid <= 1).
set -euo pipefail
BINS=${BINS:?set BINS}
WORKLOAD=${WORKLOAD:-select:simple}
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-8}
TOP=${TOP:-15}
OUT=${OUT:-/tmp/perf-profile}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
PGBIN=$(pg_config --bindir)
PGBENCH=$(command -v pgbench || echo "$PGBIN/pgbench")
# shellcheck source=integration-tests/bench/common.sh
source "$(dirname "$0")/common.sh"
mkdir -p "$OUT"
bench_tmp perf
start_pg "$TMP" 1

for bin in $BINS; do
    name=$(basename "$bin")
    port=$(free_port)
    start_proxy "$TMP" "$bin" "$port" "$OUT/$name.log"
    perf record -q -e cycles -p "$PROXY" -o "$OUT/$name.perf.data" -- sleep "$DURATION" \
        >/dev/null 2>&1 &
    rec=$!
    # shellcheck disable=SC2046
    "$PGBENCH" $(pgbench_args "$WORKLOAD") -c "$CLIENTS" -j 2 -T "$DURATION" -n \
        -h 127.0.0.1 -p "$port" -U app app >"$OUT/$name.pgbench.log" 2>&1 || true
    wait "$rec" || true
    kill "$PROXY"
    wait "$PROXY" 2>/dev/null || true
    PROXY=
    perf report -i "$OUT/$name.perf.data" --stdio --sort dso,sym 2>/dev/null >"$OUT/$name.perf.txt" || true
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$OUT/$name.pgbench.log" | head -n1)
    echo
    echo "### $name ($WORKLOAD, $CLIENTS clients, ${tps:-?} tps)"
    awk '/^ +[0-9.]+%/ { gsub("%", "", $1); if ($3 == "[k]") k += $1; else u += $1 }
        END { printf "kernel %.1f%%, user %.1f%% of the proxy'\''s cycles\n", k, u }' "$OUT/$name.perf.txt"
    # awk reads the whole report (no SIGPIPE under pipefail, as `grep | head` would risk)
    awk -v n="$TOP" '/^ +[0-9.]+%/ && c++ < n' "$OUT/$name.perf.txt" | cut -c1-150
done
