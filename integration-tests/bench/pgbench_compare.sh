#!/usr/bin/env bash
# pgbench_compare.sh — compare Shardgate with PgBouncer and direct Postgres using pgbench.
#
# What it does (everything on 127.0.0.1, everything torn down on exit):
#   1. Starts a throw-away PostgreSQL cluster (binaries from `pg_config --bindir`) in a temp
#      dir on a free loopback port, creates role/db `app` (password `app`, SCRAM) and runs
#      `pgbench -i -s $SCALE` against it directly.
#   2. Starts Shardgate (transaction mode, pool size 20) and PgBouncer (transaction mode,
#      default_pool_size 20, SCRAM) in front of it, each on its own free port.
#   3. For each pgbench -M mode in $MODES, runs `pgbench -S -c $CLIENTS -j $THREADS -T $DURATION -n`
#      against direct / shardgate / pgbouncer, interleaved (A/B/C/A/B/C...) for $ROUNDS rounds.
#      Records TPS, failed transactions and, for the proxies, the proxy's CPU time
#      (utime+stime from /proc/PID/stat) per 1,000 transactions.
#   4. Measures each proxy's RSS (VmRSS) idle and with $IDLE_CLIENTS logged-in idle clients
#      (a pgbench custom script that only does `\sleep`).
#   5. Prints a markdown report and writes it to $OUT; proxy logs are copied next to it.
#
# Usage:
#   cargo build --release            # or set SHARDGATE_BIN
#   integration-tests/bench/pgbench_compare.sh
#   DURATION=5 ROUNDS=1 integration-tests/bench/pgbench_compare.sh            # quick check
#   MODES="simple extended prepared" integration-tests/bench/pgbench_compare.sh
#
# Environment (defaults in brackets):
#   SHARDGATE_BIN  [target/release/shardgate]   PGBOUNCER_BIN [/usr/sbin/pgbouncer]
#   CLIENTS [32]  THREADS [2]  DURATION [15] (s)  ROUNDS [2]  MODES ["simple"]
#   SCALE [10]  WARMUP [3] (s per target, 0 = none)  IDLE_CLIENTS [1000]
#   IDLE_SECS [30] (how long each idle client stays logged in)  RUST_LOG [info] (Shardgate)
#   SHARDGATE_WORKERS [0] (Shardgate's [proxy] workers: tokio worker threads, 0 = one per core)
#   OUT [/tmp/shardgate-bench.md]   KEEP_TMP [0] (1 = keep the temp dir for debugging)
#
# Requirements: PostgreSQL server + client (pg_config, initdb, pg_ctl, psql, pgbench),
# pgbouncer (`apt-get install -y pgbouncer`), iproute2 (`ss`), util-linux (`runuser`, `setpriv`).
# May run as root (Postgres and PgBouncer are then run as the `postgres` user) or as a
# normal user. PgBouncer in transaction mode cannot run `-M prepared`; that cell is "n/a".
set -euo pipefail

SHARDGATE_BIN=${SHARDGATE_BIN:-target/release/shardgate}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
CLIENTS=${CLIENTS:-32}
THREADS=${THREADS:-2}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-2}
MODES=${MODES:-simple}
SCALE=${SCALE:-10}
WARMUP=${WARMUP:-3}
IDLE_CLIENTS=${IDLE_CLIENTS:-1000}
IDLE_SECS=${IDLE_SECS:-30}
OUT=${OUT:-/tmp/shardgate-bench.md}
KEEP_TMP=${KEEP_TMP:-0}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in CLIENTS THREADS DURATION ROUNDS SCALE WARMUP IDLE_CLIENTS IDLE_SECS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
for m in $MODES; do
    case $m in simple|extended|prepared) ;; *) die "unknown pgbench mode '$m' in MODES" ;; esac
done

[[ -x $SHARDGATE_BIN ]] || die "Shardgate binary $SHARDGATE_BIN not found (cargo build --release, or set SHARDGATE_BIN)"
SHARDGATE_BIN=$(readlink -f "$SHARDGATE_BIN")
[[ -x $PGBOUNCER_BIN ]] || die "pgbouncer not found at $PGBOUNCER_BIN (apt-get install -y pgbouncer)"
command -v pg_config >/dev/null || die "pg_config not found"
PGBIN=$(pg_config --bindir)
for b in initdb pg_ctl; do [[ -x $PGBIN/$b ]] || die "$PGBIN/$b not found"; done
PSQL=$(command -v psql || echo "$PGBIN/psql")
PGBENCH=$(command -v pgbench || echo "$PGBIN/pgbench")
command -v ss >/dev/null || die "ss (iproute2) not found"

CLK_TCK=$(getconf CLK_TCK)
IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1

# 1,000 idle clients need well over 1,000 descriptors in pgbench and in each proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

# ---------------------------------------------------------------------------------------------
# Cleanup
# ---------------------------------------------------------------------------------------------
TMP=""
PG_STARTED=0
SG_PID=""
PGB_PID=""
BG_PIDS=()

as_pg() { # run a command as the postgres OS user when we are root
    if [[ $IS_ROOT -eq 1 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_pid() { # stop_pid PID — SIGTERM, wait up to 15 s, then SIGKILL
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    for p in "${BG_PIDS[@]}"; do stop_pid "$p"; done
    stop_pid "$SG_PID"
    stop_pid "$PGB_PID"
    if [[ $PG_STARTED -eq 1 ]]; then
        as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -m fast -w -t 60 stop >/dev/null 2>&1
    fi
    if [[ -n $TMP && -d $TMP ]]; then
        # keep the proxy logs next to the report
        [[ -f $TMP/shardgate.log ]] && sed 's/\x1b\[[0-9;]*m//g' "$TMP/shardgate.log" >"${OUT%.md}.shardgate.log"
        [[ -f $TMP/pgbouncer.log ]] && cp "$TMP/pgbouncer.log" "${OUT%.md}.pgbouncer.log"
        if [[ $rc -ne 0 && -f $TMP/postgres.log ]]; then
            log "postgres log tail:"; tail -n 20 "$TMP/postgres.log" >&2
        fi
        if [[ $KEEP_TMP -eq 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
USED_PORTS=" "
free_port() { # a loopback TCP port nobody listens on (bounded tries)
    local i p
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 40000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]]; then
            USED_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

wait_ready() { # wait_ready NAME PORT PID — poll `psql -c 'select 1'` for up to 60 s
    local name=$1 port=$2 pid=${3:-} i
    for ((i = 0; i < 120; i++)); do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            die "$name (pid $pid) exited during start-up"
        fi
        if PGPASSWORD=app PGCONNECT_TIMEOUT=3 "$PSQL" -X -q -h 127.0.0.1 -p "$port" -U app -d app \
            -tAc 'select 1' >/dev/null 2>&1; then
            log "$name accepts connections on 127.0.0.1:$port"
            return 0
        fi
        sleep 0.5
    done
    die "$name did not accept connections on 127.0.0.1:$port within 60 s"
}

cpu_ticks() { # utime+stime (fields 14, 15 of /proc/PID/stat) in clock ticks
    local stat rest
    stat=$(<"/proc/$1/stat")
    rest=${stat##*) }           # drop "pid (comm) " — comm may contain spaces
    # rest starts at field 3 (state): field 14 is word 12, field 15 is word 13
    awk '{print $12 + $13}' <<<"$rest"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

established_to() { # number of established client sockets to a local listening port
    ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l
}

# ---------------------------------------------------------------------------------------------
# 1. Postgres
# ---------------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/shardgate-bench.XXXXXX)
mkdir -p "$TMP/data" "$TMP/sock"
chmod 755 "$TMP"
if [[ $IS_ROOT -eq 1 ]]; then chown -R postgres:postgres "$TMP"; fi

PG_PORT=$(free_port)
SG_PORT=$(free_port)
PGB_PORT=$(free_port)

log "initdb in $TMP/data ($("$PGBIN/postgres" --version))"
as_pg "$PGBIN/initdb" -D "$TMP/data" -U postgres -A trust -E UTF8 --no-locale >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
cat >>"$TMP/data/postgresql.conf" <<EOF

# pgbench_compare.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/sock'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
password_encryption = 'scram-sha-256'
EOF
cat >"$TMP/data/pg_hba.conf" <<EOF
local all all trust
host  all all 127.0.0.1/32 scram-sha-256
EOF
as_pg "$PGBIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -t 60 start >/dev/null \
    || die "pg_ctl start failed"
PG_STARTED=1

PSQL_LOCAL=("$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$TMP/sock" -p "$PG_PORT" -U postgres -d postgres)
"${PSQL_LOCAL[@]}" -c "CREATE ROLE app LOGIN PASSWORD 'app'" >/dev/null
"${PSQL_LOCAL[@]}" -c "CREATE DATABASE app OWNER app" >/dev/null
wait_ready postgres "$PG_PORT"

export PGPASSWORD=app
log "pgbench -i -s $SCALE (direct)"
"$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U app app >"$TMP/pgbench-init.log" 2>&1 \
    || { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ---------------------------------------------------------------------------------------------
# 2. Proxies
# ---------------------------------------------------------------------------------------------
MAX_CLIENT=$((IDLE_CLIENTS + 1000))
cat >"$TMP/shardgate.toml" <<EOF
[proxy]
listen = "127.0.0.1:$SG_PORT"
pool_mode = "transaction"
max_client_connections = $MAX_CLIENT
workers = ${SHARDGATE_WORKERS:-0}

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
log "starting Shardgate ($SHARDGATE_BIN) on 127.0.0.1:$SG_PORT"
NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$SHARDGATE_BIN" run --config "$TMP/shardgate.toml" >"$TMP/shardgate.log" 2>&1 &
SG_PID=$!

cat >"$TMP/userlist.txt" <<'EOF'
"app" "app"
EOF
cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$PG_PORT dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir = $TMP/sock
auth_type = scram-sha-256
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = $MAX_CLIENT
ignore_startup_parameters = extra_float_digits
logfile = $TMP/pgbouncer.log
EOF
if [[ $IS_ROOT -eq 1 ]]; then chown postgres:postgres "$TMP/userlist.txt" "$TMP/pgbouncer.ini"; fi
log "starting PgBouncer ($("$PGBOUNCER_BIN" --version | head -n1)) on 127.0.0.1:$PGB_PORT"
if [[ $IS_ROOT -eq 1 ]]; then
    # pgbouncer refuses to run as root; setpriv execs, so $! is pgbouncer's own pid
    setpriv --reuid=postgres --regid=postgres --init-groups -- \
        "$PGBOUNCER_BIN" "$TMP/pgbouncer.ini" >>"$TMP/pgbouncer.stdout" 2>&1 &
else
    "$PGBOUNCER_BIN" "$TMP/pgbouncer.ini" >>"$TMP/pgbouncer.stdout" 2>&1 &
fi
PGB_PID=$!

wait_ready shardgate "$SG_PORT" "$SG_PID"
wait_ready pgbouncer "$PGB_PORT" "$PGB_PID"

declare -A PORT=([direct]=$PG_PORT [shardgate]=$SG_PORT [pgbouncer]=$PGB_PORT)
declare -A PID=([direct]="" [shardgate]=$SG_PID [pgbouncer]=$PGB_PID)
TARGETS=(direct shardgate pgbouncer)

# ---------------------------------------------------------------------------------------------
# 3. Throughput
# ---------------------------------------------------------------------------------------------
RESULTS=$TMP/results.tsv   # run target mode tps failed cpu_per_1k tx cpu_s
: >"$RESULTS"
RUN_LOG=$TMP/pgbench-runs.log
: >"$RUN_LOG"

run_pgbench() { # run_pgbench TARGET MODE SECONDS LABEL — prints "tps failed tx cpu_s cpu_per_1k"
    local target=$1 mode=$2 secs=$3 label=$4 pid=${PID[$1]} before=0 after=0 rc=0 out
    local tps failed tx cpu_s per1k
    if [[ -n $pid ]]; then before=$(cpu_ticks "$pid"); fi
    out=$("$PGBENCH" -S -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$secs" -n \
        -h 127.0.0.1 -p "${PORT[$target]}" -U app app 2>&1) || rc=$?
    if [[ -n $pid ]]; then after=$(cpu_ticks "$pid"); fi
    { echo "=== $label target=$target mode=$mode rc=$rc"; echo "$out"; } >>"$RUN_LOG"
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' <<<"$out" | head -n1)
    tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out" | head -n1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out" | head -n1)
    tps=${tps:-0}; tx=${tx:-0}; failed=${failed:-0}
    if [[ $rc -ne 0 ]]; then
        failed="${failed}(aborted)"
        log "  $target/$mode: pgbench exited $rc; first error: $(grep -m1 -iE 'error|fatal|abort' <<<"$out" || true)"
    fi
    if [[ -n $pid ]]; then
        cpu_s=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
        per1k=$(awk -v c="$cpu_s" -v n="$tx" 'BEGIN {if (n > 0) printf "%.5f", c / (n / 1000); else print "n/a"}')
    else
        cpu_s="-"; per1k="-"
    fi
    echo "$tps $failed $tx $cpu_s $per1k"
}

skip_cell() { [[ $1 == pgbouncer && $2 == prepared ]]; }

if [[ $WARMUP -gt 0 ]]; then
    for mode in $MODES; do
        for t in "${TARGETS[@]}"; do
            skip_cell "$t" "$mode" && continue
            log "warm-up $t/$mode (${WARMUP}s)"
            run_pgbench "$t" "$mode" "$WARMUP" warmup >/dev/null
        done
    done
fi

declare -A RSS_WARM
for t in shardgate pgbouncer; do RSS_WARM[$t]=$(rss_kib "${PID[$t]}"); done

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for mode in $MODES; do
    for ((r = 1; r <= ROUNDS; r++)); do
        for t in "${TARGETS[@]}"; do
            if skip_cell "$t" "$mode"; then
                printf '%s\t%s\t%s\tn/a\tn/a\tn/a\tn/a\tn/a\n' "$r" "$t" "$mode" >>"$RESULTS"
                log "round $r $t/$mode: n/a (PgBouncer transaction mode does not support -M prepared)"
                continue
            fi
            log "round $r/$ROUNDS $t/$mode: pgbench -S -c $CLIENTS -j $THREADS -T $DURATION"
            read -r tps failed tx cpu_s per1k < <(run_pgbench "$t" "$mode" "$DURATION" "round$r")
            log "  tps=$tps failed=$failed tx=$tx proxy_cpu_s=$cpu_s cpu_s_per_1k_tx=$per1k"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$mode" "$tps" "$failed" "$per1k" "$tx" "$cpu_s" >>"$RESULTS"
        done
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# 4. Memory: idle, then with IDLE_CLIENTS logged-in idle clients
# ---------------------------------------------------------------------------------------------
printf '\\sleep %s s\n' "$IDLE_SECS" >"$TMP/idle.sql"
declare -A RSS_IDLE RSS_LOADED CONNECTED LOGGED_IN LOGIN_MS
for t in shardgate pgbouncer; do
    pid=${PID[$t]}
    sleep 2
    RSS_IDLE[$t]=$(rss_kib "$pid")
    log "$t: $IDLE_CLIENTS idle clients (pgbench -t 1 -f idle.sql: log in, sleep ${IDLE_SECS}s); idle VmRSS ${RSS_IDLE[$t]} KiB"
    # pgbench opens every client's connection before any client runs the script, so all
    # IDLE_CLIENTS are logged in at once while they \sleep.
    "$PGBENCH" -n -f "$TMP/idle.sql" -c "$IDLE_CLIENTS" -j "$THREADS" -t 1 \
        -h 127.0.0.1 -p "${PORT[$t]}" -U app app >"$TMP/idle-$t.log" 2>&1 &
    bench=$!
    BG_PIDS=("$bench")
    n=0
    for ((i = 0; i < IDLE_SECS * 4; i++)); do   # up to IDLE_SECS seconds
        n=$(established_to "${PORT[$t]}")
        [[ $n -ge $IDLE_CLIENTS ]] && break
        kill -0 "$bench" 2>/dev/null || break
        sleep 0.25
    done
    sleep 2   # let the proxy settle after the last login
    CONNECTED[$t]=$(established_to "${PORT[$t]}")
    RSS_LOADED[$t]=$(rss_kib "$pid")
    log "  ${CONNECTED[$t]} client sockets established; VmRSS ${RSS_LOADED[$t]} KiB; waiting for the clients to finish"
    for ((i = 0; i < (IDLE_SECS + 60) * 4; i++)); do   # bounded wait for pgbench to end
        kill -0 "$bench" 2>/dev/null || break
        sleep 0.25
    done
    stop_pid "$bench"   # normally already finished; stop_pid also reaps it
    BG_PIDS=()
    # "number of transactions actually processed: 1000/1000" proves every client logged in
    LOGGED_IN[$t]=$(sed -n 's|^number of transactions actually processed: \([0-9]*\)/.*|\1|p' "$TMP/idle-$t.log" | head -n1)
    LOGGED_IN[$t]=${LOGGED_IN[$t]:-0}
    LOGIN_MS[$t]=$(sed -n 's/^initial connection time = \([0-9.]*\) ms.*/\1/p' "$TMP/idle-$t.log" | head -n1)
    LOGIN_MS[$t]=${LOGIN_MS[$t]:-n/a}
    log "  pgbench: ${LOGGED_IN[$t]}/$IDLE_CLIENTS clients completed; initial connection time ${LOGIN_MS[$t]} ms"
    if [[ ${LOGGED_IN[$t]} -lt $IDLE_CLIENTS ]]; then
        log "  not every client logged in; pgbench said:"
        grep -m5 -iE 'error|fatal|abort' "$TMP/idle-$t.log" >&2 || tail -n 5 "$TMP/idle-$t.log" >&2
    fi
    { echo "=== idle-clients target=$t"; cat "$TMP/idle-$t.log"; } >>"$RUN_LOG"
done

# ---------------------------------------------------------------------------------------------
# 5. Report
# ---------------------------------------------------------------------------------------------
sg_errors=$(sed 's/\x1b\[[0-9;]*m//g' "$TMP/shardgate.log" | grep -cE ' (ERROR|WARN) ' || true)
pgb_errors=$(grep -cE ' (ERROR|WARNING|FATAL) ' "$TMP/pgbouncer.log" || true)
{
    echo "# Shardgate vs PgBouncer vs direct Postgres (pgbench -S)"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%SZ'); host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "- $("$PGBIN/postgres" --version); $("$PGBOUNCER_BIN" --version | head -n1); shardgate: $SHARDGATE_BIN ($("$SHARDGATE_BIN" --version 2>/dev/null || echo '?'))"
    echo "- pgbench -S -c $CLIENTS -j $THREADS -T $DURATION -n, scale $SCALE, $ROUNDS round(s) interleaved, modes: $MODES, warm-up ${WARMUP}s per target"
    echo "- pool size 20 (Shardgate [pool] size, PgBouncer default_pool_size), transaction mode, SCRAM client auth"
    echo "- load average before/after the timed runs: $LOAD_BEFORE / $LOAD_AFTER"
    echo "- cpu_s_per_1k_tx = proxy utime+stime (s) / (transactions / 1000); cpu_s = proxy CPU seconds during the run"
    echo
    echo "| run | target | mode | tps | failed | cpu_s_per_1k_tx | transactions | cpu_s |"
    echo "|---|---|---|---:|---:|---:|---:|---:|"
    awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8}' "$RESULTS"
    echo
    echo "## Averages"
    echo
    echo "| target | mode | runs | avg tps | tps vs direct | failed (sum) | avg cpu_s_per_1k_tx |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    awk -F'\t' -v modes="$MODES" '
        { key = $2 SUBSEP $3; runs[key]++
          if ($4 != "n/a") { tps[key] += $4; n[key]++ }
          f = $5; sub(/\(.*/, "", f); if (f != "n/a") failed[key] += f
          if ($5 ~ /aborted/) aborted[key] = 1
          if ($6 != "-" && $6 != "n/a") { cpu[key] += $6; nc[key]++ } }
        END {
          nm = split(modes, M, " "); split("direct shardgate pgbouncer", T, " ")
          for (i = 1; i <= nm; i++) {
            d = (n["direct" SUBSEP M[i]] > 0) ? tps["direct" SUBSEP M[i]] / n["direct" SUBSEP M[i]] : 0
            for (j = 1; j <= 3; j++) {
              key = T[j] SUBSEP M[i]
              if (!(key in runs)) continue
              if (n[key] == 0) { printf "| %s | %s | %d | n/a | n/a | n/a | n/a |\n", T[j], M[i], runs[key]; continue }
              avg = tps[key] / n[key]
              rel = (d > 0) ? sprintf("%.1f%%", 100 * avg / d) : "n/a"
              c = (T[j] == "direct") ? "-" : ((nc[key] > 0) ? sprintf("%.5f", cpu[key] / nc[key]) : "n/a")
              printf "| %s | %s | %d | %.1f | %s | %d%s | %s |\n", T[j], M[i], runs[key], avg, rel, failed[key], (aborted[key] ? " (aborted)" : ""), c
            }
          }
        }' "$RESULTS"
    echo
    echo "## Memory (VmRSS)"
    echo
    echo "| proxy | after warm-up (MiB) | idle before test (MiB) | with $IDLE_CLIENTS idle clients (MiB) | delta (MiB) | per client (KiB) | sockets at sample | clients logged in | pgbench initial connection time (ms) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in shardgate pgbouncer; do
        awk -v t="$t" -v w="${RSS_WARM[$t]}" -v a="${RSS_IDLE[$t]}" -v b="${RSS_LOADED[$t]}" -v c="${CONNECTED[$t]}" \
            -v l="${LOGGED_IN[$t]}" -v ms="${LOGIN_MS[$t]}" 'BEGIN {
            printf "| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %d | %d | %s |\n", t, w/1024, a/1024, b/1024, (b-a)/1024, (c > 0 ? (b-a)/c : 0), c, l, ms }'
    done
    echo
    for t in shardgate pgbouncer; do
        awk -v t="$t" -v a="${RSS_IDLE[$t]}" -v b="${RSS_LOADED[$t]}" -v n="$IDLE_CLIENTS" 'BEGIN {
            printf "- %s RSS: idle %.1f MiB, with %d idle clients %.1f MiB, delta %.1f MiB\n", t, a/1024, n, b/1024, (b-a)/1024 }'
    done
    echo
    echo "Log lines at WARN/ERROR level: shardgate $sg_errors, pgbouncer $pgb_errors (logs: ${OUT%.md}.shardgate.log, ${OUT%.md}.pgbouncer.log)."
} >"$TMP/report.md"

cp "$TMP/report.md" "$OUT"
cp "$RUN_LOG" "${OUT%.md}.pgbench.log"
echo
cat "$OUT"
log "report written to $OUT (raw pgbench output: ${OUT%.md}.pgbench.log)"
