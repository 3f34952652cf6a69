#!/usr/bin/env bash
# Entrypoint of the compose topology's `replica` (docker/compose.yaml): on the first start (no
# PG_VERSION in the data directory) it waits for the primary with pg_isready (bounded retries),
# clones it with pg_basebackup -R (which writes standby.signal and primary_conninfo), then runs
# postgres as a streaming hot standby. Later starts go straight to postgres.
# Mounted read-only and run with bash, so it needs no execute bit.
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
PRIMARY_HOST=${PRIMARY_HOST:-primary}
PRIMARY_PORT=${PRIMARY_PORT:-5432}
REPLICATION_USER=${REPLICATION_USER:-app}
PRIMARY_WAIT_RETRIES=${PRIMARY_WAIT_RETRIES:-60}
# libpq reads it: pg_basebackup here, and the standby's WAL receiver later.
export PGPASSWORD=${REPLICATION_PASSWORD:-app}

# As root (the image's default user): give the data directory to postgres, then run again as
# postgres (gosu is part of the postgres image).
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  exec gosu postgres bash "${BASH_SOURCE[0]}" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  tries=0
  until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER"; do
    tries=$((tries + 1))
    if [ "$tries" -ge "$PRIMARY_WAIT_RETRIES" ]; then
      echo "replica: $PRIMARY_HOST:$PRIMARY_PORT not ready after $tries tries, giving up" >&2
      exit 1
    fi
    echo "replica: waiting for $PRIMARY_HOST:$PRIMARY_PORT ($tries/$PRIMARY_WAIT_RETRIES)"
    sleep 2
  done
  # Leftovers of an interrupted first start (pg_basebackup needs an empty directory).
  mkdir -p "$PGDATA"
  find "$PGDATA" -mindepth 1 -delete
  echo "replica: cloning $PRIMARY_HOST:$PRIMARY_PORT into $PGDATA"
  pg_basebackup -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" --no-password \
    -D "$PGDATA" -R -X stream -c fast
  chmod 700 "$PGDATA"
fi

# A hot standby needs max_prepared_transactions (and max_connections, ...) at least as high
# as the primary's: the primary runs with max_prepared_transactions=64 (compose.yaml).
exec postgres -c hot_standby=on -c max_prepared_transactions=64 "$@"
