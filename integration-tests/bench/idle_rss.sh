#!/usr/bin/env bash
# idle_rss.sh — memory per idle logged-in client, for Shardgate builds and PgBouncer.
#
# Starts one throw-away Postgres on 127.0.0.1, then for each proxy of BINS (Shardgate builds;
# "pgbouncer" for PgBouncer): starts it (transaction mode, pool 4), logs in $CLIENTS pgbench
# clients that only `\sleep` (every client is logged in before any runs its script), waits until
# every socket is established and $SETTLE seconds more, and reports the growth of the proxy's
# VmRSS per client. With MALLOC_STATS=1 it also prints glibc's malloc_stats() of each
# Shardgate (through gdb) into $OUT/<name>.log, to tell live memory from freed-but-kept pages.
#
# Usage:
#   BINS="target/release/shardgate pgbouncer" integration-tests/bench/idle_rss.sh
#   CLIENTS=10000 BINS="target/release/shardgate pgbouncer" integration-tests/bench/idle_rss.sh
# Environment: BINS (required) CLIENTS [1000] SETTLE [4] (s) THREADS [2] OUT [/tmp/idle-rss]
#   MALLOC_STATS [0] PGBOUNCER_BIN [/usr/sbin/pgbouncer]
#   SHARDGATE_WORKERS [0] (Shardgate's [proxy] workers)
set -euo pipefail
BINS=${BINS:?set BINS}
CLIENTS=${CLIENTS:-1000}
SETTLE=${SETTLE:-4}
THREADS=${THREADS:-2}
OUT=${OUT:-/tmp/idle-rss}
MALLOC_STATS=${MALLOC_STATS:-0}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
PGBIN=$(pg_config --bindir)
PGBENCH=$(command -v pgbench || echo "$PGBIN/pgbench")
# shellcheck source=integration-tests/bench/common.sh
source "$(dirname "$0")/common.sh"
mkdir -p "$OUT"
# every client is a socket in pgbench and one in the proxy (separate processes)
want=$((CLIENTS + 1000)) hard=$(ulimit -Hn)
[[ $hard != unlimited && $hard -lt $want ]] && want=$hard
ulimit -n "$want"
bench_tmp idle
start_pg "$TMP" 1 "max_connections = 100"
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
established_to() { ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l; }
printf '\\sleep 600 s\n' >"$TMP/idle.sql"

echo "| proxy | idle VmRSS (KiB) | with $CLIENTS clients (KiB) | per client (KiB) | sockets |"
echo "|---|---:|---:|---:|---:|"
for bin in $BINS; do
    name=$(basename "$bin")
    port=$(free_port)
    MAX_CLIENTS=$((CLIENTS + 100)) start_proxy "$TMP" "$bin" "$port" "$OUT/$name.log"
    sleep 1
    before=$(rss_kib "$PROXY")
    "$PGBENCH" -n -f "$TMP/idle.sql" -c "$CLIENTS" -j "$THREADS" -t 1 \
        -h 127.0.0.1 -p "$port" -U app app >"$OUT/$name-pgbench.log" 2>&1 &
    BENCH=$!
    n=0
    for _ in $(seq 1200); do   # up to 5 minutes for every login
        n=$(established_to "$port")
        [[ $n -ge $CLIENTS ]] && break
        kill -0 "$BENCH" 2>/dev/null || break
        sleep 0.25
    done
    sleep "$SETTLE"
    after=$(rss_kib "$PROXY")
    n=$(established_to "$port")
    if [[ $MALLOC_STATS == 1 && $bin != pgbouncer ]]; then
        gdb -p "$PROXY" -batch -ex 'call (void) malloc_stats()' >/dev/null 2>&1 || true
    fi
    awk -v p="$name" -v a="$before" -v b="$after" -v n="$n" \
        'BEGIN {printf "| %s | %d | %d | %.2f | %d |\n", p, a, b, (b - a) / (n ? n : 1), n}'
    kill "$BENCH" 2>/dev/null || true
    wait "$BENCH" 2>/dev/null || true
    BENCH=
    kill "$PROXY"
    wait "$PROXY" 2>/dev/null || true
    PROXY=
done
