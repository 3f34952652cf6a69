#!/usr/bin/env bash
# Installs the client libraries used by integration-tests/tests/drivers.rs:
#   Python: psycopg 3 (binary), psycopg2-binary, asyncpg  (into the `python3` on PATH)
#   Node:   pg, from node/package-lock.json into node/node_modules (npm ci)
#   Java:   pgjdbc from Debian (libpostgresql-jdbc-java: /usr/share/java/postgresql.jar)
# Idempotent: each step is skipped when what it installs is already there. Meant to run as root
# on Debian 12 with python3 + pip, node + npm and a JDK (javac) already present. Quiet on
# success; on any failure it prints what failed and exits non-zero.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

PY_PKGS=("psycopg[binary]==3.3.9" "psycopg2-binary==2.9.13" "asyncpg==0.32.0")
JDBC_JAR=/usr/share/java/postgresql.jar

die() {
  echo "drivers/install.sh: $*" >&2
  exit 1
}
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

for tool in python3 node npm javac java; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not on PATH; it must be installed first"
done

# --- Python -----------------------------------------------------------------------------------
# Exactly the pinned versions, checked through the same interpreter the tests run (`python3`).
py_ok() {
  python3 - <<'PY' >/dev/null 2>&1
import importlib.metadata as m
want = {"psycopg": "3.3.9", "psycopg-binary": "3.3.9", "psycopg2-binary": "2.9.13", "asyncpg": "0.32.0"}
assert all(m.version(k) == v for k, v in want.items())
import psycopg, psycopg2, asyncpg  # noqa: F401  (import works, binary parts load)
PY
}
if ! py_ok; then
  out="$(python3 -m pip install --quiet --disable-pip-version-check --no-input \
    --root-user-action=ignore "${PY_PKGS[@]}" 2>&1)" || {
    echo "$out" >&2
    die "pip install ${PY_PKGS[*]} failed"
  }
  py_ok || die "python packages installed but 'import psycopg, psycopg2, asyncpg' still fails"
fi

# --- Node -------------------------------------------------------------------------------------
# npm ci from the committed lock file; a stamp with the lock file's hash makes reruns a no-op.
stamp="$here/node/node_modules/.shardgate-lock-sha256"
want_sha="$(sha256sum "$here/node/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want_sha" ] ||
  ! (cd "$here/node" && node -e "require('pg')" >/dev/null 2>&1); then
  out="$(cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error 2>&1)" || {
    echo "$out" >&2
    die "npm ci in $here/node failed"
  }
  (cd "$here/node" && node -e "require('pg')") || die "npm ci done but require('pg') fails"
  echo "$want_sha" >"$stamp"
fi

# --- Java -------------------------------------------------------------------------------------
if [ ! -f "$JDBC_JAR" ]; then
  [ "$(id -u)" = 0 ] || die "$JDBC_JAR is missing and installing it needs root (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  out="$( (apt-get update -qq && apt-get install -y -qq libpostgresql-jdbc-java) 2>&1)" || {
    echo "$out" >&2
    die "apt-get install libpostgresql-jdbc-java failed"
  }
  [ -f "$JDBC_JAR" ] || die "libpostgresql-jdbc-java installed but $JDBC_JAR is missing"
fi
