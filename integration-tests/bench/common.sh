# common.sh — what the benchmark scripts share (sourced, not run): logging, running as the
# `postgres` OS user when root, a free loopback port, and a throw-away Postgres with pgbench's
# tables, a proxy in front of it. Needs PGBIN and PGBENCH set (and PGBOUNCER_BIN for PgBouncer).

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

# pgbench_args WORKLOAD: pgbench options for `select:MODE` (-S) or `tpcb:MODE` (the default
# TPC-B-like script), MODE one of simple, extended, prepared.
pgbench_args() {
    local script=${1%%:*} mode=${1##*:}
    [[ $script == select ]] && printf -- '-S '
    printf -- '-M %s' "$mode"
}

# start_pg DIR SCALE [CONF_LINES]: a Postgres (trust logins, fsync off) in DIR/data on a free
# port (sets PG_PORT) with role and database `app` (password `app`) holding
# `pgbench -i -s SCALE`; exports PGPASSWORD=app.
start_pg() {
    local dir=$1 scale=$2 extra=${3:-}
    chmod 755 "$dir"
    mkdir -p "$dir/data" "$dir/sock"
    [[ $(id -u) -eq 0 ]] && chown -R postgres:postgres "$dir"
    PG_PORT=$(free_port)
    as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale >/dev/null
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$dir/sock'
fsync = off
synchronous_commit = off
$extra
EOF
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w start >/dev/null
    "$PGBIN/psql" -X -q -h "$dir/sock" -p "$PG_PORT" -U postgres -c "create role app login password 'app'" -c "create database app owner app"
    export PGPASSWORD=app
    "$PGBENCH" -i -s "$scale" -q -h 127.0.0.1 -p "$PG_PORT" -U app app >/dev/null 2>&1
}

# bench_tmp NAME: a fresh temp dir in TMP (/tmp/sg-NAME.XXXXXX), removed on exit together with
# the Postgres of start_pg in it and the PROXY and BENCH processes still running.
bench_tmp() {
    TMP=$(mktemp -d "/tmp/sg-$1.XXXXXX")
    PROXY= BENCH=
    trap bench_cleanup EXIT
}
bench_cleanup() {
    set +e
    [[ -n ${BENCH:-} ]] && kill "$BENCH" 2>/dev/null && wait "$BENCH" 2>/dev/null
    [[ -n ${PROXY:-} ]] && kill "$PROXY" 2>/dev/null && wait "$PROXY" 2>/dev/null
    stop_pg "$TMP"
    rm -rf "$TMP"
}

# stop_pg DIR: stops the Postgres of start_pg.
stop_pg() { as_pg "$PGBIN/pg_ctl" -D "$1/data" -m immediate -w stop >/dev/null 2>&1; }

# shardgate_toml FILE PORT POOL: a Shardgate config in FILE listening on PORT, transaction
# mode, a pool of POOL in front of the Postgres of start_pg; SHARDGATE_WORKERS [0] is its
# `[proxy] workers` (tokio worker threads, 0 = one per core, 1 = a current-thread runtime);
# SHARDGATE_PROXY_EXTRA, if set, more `[proxy]` lines (e.g. `query_stats_size = 0`).
shardgate_toml() {
    cat >"$1" <<EOF
[proxy]
listen = "127.0.0.1:$2"
pool_mode = "transaction"
workers = ${SHARDGATE_WORKERS:-0}
${SHARDGATE_PROXY_EXTRA:-}
[pool]
size = $3
[[users]]
name = "app"
password = "app"
[[databases]]
name = "app"
[[databases.shards]]
name = "s0"
primary = "127.0.0.1:$PG_PORT"
EOF
}

# pgbouncer_ini DIR PORT POOL: DIR/pgbouncer.ini (and DIR/userlist.txt) for a PgBouncer on
# PORT, transaction mode, a pool of POOL in front of the Postgres of start_pg.
pgbouncer_ini() {
    printf '"app" "app"\n' >"$1/userlist.txt"
    cat >"$1/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$PG_PORT dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
unix_socket_dir =
auth_type = plain
auth_file = $1/userlist.txt
pool_mode = transaction
default_pool_size = $3
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
logfile = $1/pgbouncer.log
EOF
}

# start_proxy DIR BIN PORT LOG [WRAPPER...]: a proxy on PORT in front of the Postgres of
# start_pg, transaction mode, a pool of 4: Shardgate (BIN, its binary) or PgBouncer (BIN =
# pgbouncer; PGBOUNCER_BIN), run under WRAPPER (valgrind, say) if given, its output in LOG; as
# root PgBouncer runs as `postgres`. MAX_CLIENTS, if set, is both proxies' client limit. Sets
# PROXY to the proxy's pid and returns once it answers (ends the script if it never does).
start_proxy() {
    local dir=$1 bin=$2 port=$3 log=$4
    shift 4
    if [[ $bin == pgbouncer ]]; then
        pgbouncer_ini "$dir" "$port" 4
        if [[ -n ${MAX_CLIENTS:-} ]]; then
            sed -i "s/^max_client_conn = .*/max_client_conn = $MAX_CLIENTS/" "$dir/pgbouncer.ini"
        fi
        chmod 644 "$dir/userlist.txt" "$dir/pgbouncer.ini"
        if [[ $(id -u) -eq 0 ]]; then
            setpriv --reuid=postgres --regid=postgres --init-groups -- \
                "$@" "$PGBOUNCER_BIN" "$dir/pgbouncer.ini" >"$log" 2>&1 &
        else
            "$@" "$PGBOUNCER_BIN" "$dir/pgbouncer.ini" >"$log" 2>&1 &
        fi
    else
        shardgate_toml "$dir/sg.toml" "$port" 4
        if [[ -n ${MAX_CLIENTS:-} ]]; then
            sed -i "s/^pool_mode = .*/&\nmax_client_connections = $MAX_CLIENTS/" "$dir/sg.toml"
        fi
        RUST_LOG=warn "$@" "$bin" run --config "$dir/sg.toml" >"$log" 2>&1 &
    fi
    PROXY=$!
    for _ in $(seq 240); do
        "$PGBIN/psql" -X -qtA -h 127.0.0.1 -p "$port" -U app -d app -c 'select 1' >/dev/null 2>&1 && return
        sleep 0.5
    done
    echo "proxy $bin did not start: $(tail -5 "$log")" >&2
    exit 1
}
