#!/usr/bin/env bash
# `deno task serve-postgres`: the service on a local PostgreSQL in one command. The cluster lives
# in .pgdata/ (created on first use, trust auth, 127.0.0.1:${PGPORT:-55432} only) and stays up
# between runs, so a second replica is `PORT=50052 deno task serve-postgres`. Stop it with
#   pg_ctl -D .pgdata/data stop      (as the postgres user when you are root)
# Flags pass through to the service (`deno task serve-postgres --port 50052`).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$BIN" ] && command -v initdb >/dev/null; then BIN=$(dirname "$(command -v initdb)"); fi
if [ -z "$BIN" ]; then
  echo "error: PostgreSQL is missing (apt-get install postgresql)" >&2
  exit 1
fi
PGPORT=${PGPORT:-55432}
DIR=$PWD/.pgdata
# PostgreSQL refuses to run as root: as root, the package's postgres user runs it.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -d "$DIR/data" ]; then
  mkdir -p "$DIR"
  if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; fi
  as_pg "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
fi
if ! as_pg "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
  as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$PGPORT -c unix_socket_directories=$DIR" start >/dev/null
fi
export DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
exec node_modules/deno/deno task serve "$@"
