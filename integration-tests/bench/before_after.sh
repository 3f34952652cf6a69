#!/usr/bin/env bash
# before_after.sh — pgbench through two Shardgate builds (and PgBouncer) in one run, interleaved,
# to show what a change costs: A = BEFORE_BIN (e.g. a release build of the previous commit),
# B = AFTER_BIN, C = PgBouncer (if installed; PGBOUNCER=0 leaves it out).
#
# Everything on 127.0.0.1 in a temp dir, torn down on exit. Starts one throw-away Postgres
# (pgbench -i -s $SCALE), the proxies in transaction mode (pool size 20), then for each workload
# of $WORKLOADS runs `pgbench [-S] -M mode -c $CLIENTS -j 2 -T $DURATION` against
# before/after/pgbouncer/before/after/... for $ROUNDS rounds, and prints TPS and proxy CPU
# seconds per 1,000 transactions for each run and the medians' ratios. Then, with STRACE_TX > 0,
# counts each proxy's system calls per transaction (`strace -c -f` attached over a fixed
# number of transactions of the first workload).
#
# Usage:
#   git worktree add /tmp/base HEAD~1 && (cd /tmp/base && cargo build --release)
#   cargo build --release
#   BEFORE_BIN=/tmp/base/target/release/shardgate AFTER_BIN=target/release/shardgate \
#       integration-tests/bench/before_after.sh
# Environment: CLIENTS [32] DURATION [15] ROUNDS [3] SCALE [10]
#   WORKLOADS ["select:simple select:extended select:prepared tpcb:simple"]
#   (select = pgbench -S; tpcb = the default TPC-B-like script)
#   STRACE_TX [20000] (0 = no syscall count)  PGBOUNCER_BIN [/usr/sbin/pgbouncer]
#   SHARDGATE_WORKERS [0] (both builds' [proxy] workers)
#   PgBouncer before 1.21 cannot run -M prepared in transaction mode: that cell is skipped.
set -euo pipefail
BEFORE_BIN=$(readlink -f "${BEFORE_BIN:?set BEFORE_BIN}")
AFTER_BIN=$(readlink -f "${AFTER_BIN:-target/release/shardgate}")
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-10}
WORKLOADS=${WORKLOADS:-select:simple select:extended select:prepared tpcb:simple}
STRACE_TX=${STRACE_TX:-20000}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
PGBOUNCER=${PGBOUNCER:-1}
[[ -x $PGBOUNCER_BIN ]] || PGBOUNCER=0
PGBIN=$(pg_config --bindir)
PGBENCH=$(command -v pgbench || echo "$PGBIN/pgbench")
CLK_TCK=$(getconf CLK_TCK)
# shellcheck source=integration-tests/bench/common.sh
source "$(dirname "$0")/common.sh"
cpu_ticks() { local s; s=$(<"/proc/$1/stat"); awk '{print $12 + $13}' <<<"${s##*) }"; }

TMP=$(mktemp -d /tmp/sg-before-after.XXXXXX)
PIDS=()
cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    stop_pg "$TMP"
    rm -rf "$TMP"
}
trap cleanup EXIT
start_pg "$TMP" "$SCALE" "max_connections = 200"

declare -A PORT PID
for t in before after; do
    PORT[$t]=$(free_port)
    bin=$BEFORE_BIN; [[ $t == after ]] && bin=$AFTER_BIN
    shardgate_toml "$TMP/$t.toml" "${PORT[$t]}" 20
    RUST_LOG=warn "$bin" run --config "$TMP/$t.toml" >"$TMP/$t.log" 2>&1 &
    PID[$t]=$!
    PIDS+=("$!")
done
TARGETS=(before after)
if [[ $PGBOUNCER == 1 ]]; then
    PORT[pgbouncer]=$(free_port)
    pgbouncer_ini "$TMP" "${PORT[pgbouncer]}" 20
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$TMP/userlist.txt" "$TMP/pgbouncer.ini"
    if [[ $(id -u) -eq 0 ]]; then
        # pgbouncer refuses to run as root; setpriv execs, so $! is pgbouncer's own pid
        setpriv --reuid=postgres --regid=postgres --init-groups -- \
            "$PGBOUNCER_BIN" "$TMP/pgbouncer.ini" >"$TMP/pgbouncer.stdout" 2>&1 &
    else
        "$PGBOUNCER_BIN" "$TMP/pgbouncer.ini" >"$TMP/pgbouncer.stdout" 2>&1 &
    fi
    PID[pgbouncer]=$!
    PIDS+=("$!")
    TARGETS+=(pgbouncer)
fi
for t in "${TARGETS[@]}"; do
    for _ in $(seq 120); do
        "$PGBIN/psql" -X -qtA -h 127.0.0.1 -p "${PORT[$t]}" -U app -d app -c 'select 1' >/dev/null 2>&1 && break
        sleep 0.5
    done
done

skip() { [[ $1 == pgbouncer && $2 == *:prepared ]] && ! "$PGBOUNCER_BIN" --version | grep -qE '1\.(2[1-9]|[3-9][0-9])'; }
run() { # run TARGET WORKLOAD SECS -> "tps cpu_per_1k"
    local t=$1 b a out tps tx
    b=$(cpu_ticks "${PID[$t]}")
    # shellcheck disable=SC2046
    out=$("$PGBENCH" $(pgbench_args "$2") -c "$CLIENTS" -j 2 -T "$3" -n -h 127.0.0.1 -p "${PORT[$t]}" -U app app 2>&1)
    a=$(cpu_ticks "${PID[$t]}")
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' <<<"$out")
    tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    awk -v tps="${tps:-0}" -v t=$((a - b)) -v hz="$CLK_TCK" -v n="${tx:-0}" \
        'BEGIN {printf "%.0f %.5f\n", tps, (n > 0 ? t / hz / (n / 1000) : 0)}'
}
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {print (NR % 2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
for w in $WORKLOADS; do
    for t in "${TARGETS[@]}"; do skip "$t" "$w" || run "$t" "$w" 3 >/dev/null; done
    echo
    echo "### $w"
    echo "| round | target | tps | proxy cpu s / 1k tx |"
    echo "|---|---|---:|---:|"
    unset TPS CPU
    declare -A TPS=() CPU=()
    for r in $(seq "$ROUNDS"); do
        for t in "${TARGETS[@]}"; do
            skip "$t" "$w" && continue
            read -r tps cpu < <(run "$t" "$w" "$DURATION")
            echo "| $r | $t | $tps | $cpu |"
            TPS[$t]+="$tps "
            CPU[$t]+="$cpu "
        done
    done
    echo
    tb=$(median "${TPS[before]}"); cb=$(median "${CPU[before]}")
    for t in "${TARGETS[@]}"; do
        [[ -n ${TPS[$t]:-} ]] || continue
        ta=$(median "${TPS[$t]}"); ca=$(median "${CPU[$t]}")
        awk -v t="$t" -v a="$ta" -v b="$tb" -v ca="$ca" -v cb="$cb" \
            'BEGIN {printf "%s: median %.0f tps, %.5f cpu s/1k tx; vs before: tps %.3f, cpu per tx %.3f\n", t, a, ca, a / b, ca / cb}'
    done
done
if [[ $STRACE_TX -gt 0 ]] && command -v strace >/dev/null; then
    w=${WORKLOADS%% *}
    per=$(( (STRACE_TX + CLIENTS - 1) / CLIENTS ))
    echo
    echo "### system calls per transaction ($w, $((per * CLIENTS)) transactions, strace -c -f)"
    for t in "${TARGETS[@]}"; do
        strace -c -f -q -p "${PID[$t]}" -o "$TMP/strace.$t" &
        st=$!
        sleep 1 # strace attaches to every thread before the run starts
        # shellcheck disable=SC2046
        "$PGBENCH" $(pgbench_args "$w") -c "$CLIENTS" -j 2 -t "$per" -n -h 127.0.0.1 -p "${PORT[$t]}" -U app app >/dev/null 2>&1
        kill -INT "$st"; wait "$st" 2>/dev/null || true
        calls=$(awk '$NF == "total" {print $4}' "$TMP/strace.$t")
        top=$(awk '$2 ~ /^[0-9.]+$/ && $NF != "total" {print $NF ":" $4}' "$TMP/strace.$t" | head -4 | tr '\n' ' ')
        awk -v t="$t" -v c="${calls:-0}" -v n=$((per * CLIENTS)) -v top="$top" \
            'BEGIN {printf "%s: %.1f syscalls/tx (%d in all; top: %s)\n", t, c / n, c, top}'
    done
fi
