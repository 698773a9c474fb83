#!/usr/bin/env bash
# Runs a command with a reachable Postgres and Redis for the tests.
#
# It uses, in order: PALISADE_TEST_DATABASE_URL / PALISADE_TEST_REDIS_URL, then DATABASE_URL /
# REDIS_URL, then the standard local ports. When nothing answers, it starts throwaway servers
# from the installed binaries in a temp dir on free ports and stops them afterwards. When the
# binaries are missing too, it says exactly what to install. It never needs Docker.
#
# Usage: scripts/test-services.sh <command> [args...]
set -euo pipefail

pg_url=${PALISADE_TEST_DATABASE_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
redis_url=${PALISADE_TEST_REDIS_URL:-${REDIS_URL:-redis://127.0.0.1:6379}}
workdir=""
started_pg=""
started_redis=""

cleanup() {
  local rc=$?
  if [[ -n "$started_pg" ]]; then
    run_as_pg "$started_pg" -D "$workdir/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [[ -n "$started_redis" ]]; then
    kill "$(cat "$workdir/redis.pid" 2>/dev/null)" 2>/dev/null || true
  fi
  if [[ -n "$workdir" ]]; then rm -rf "$workdir"; fi
  # The command's status is the script's, whatever the cleanup did.
  exit "$rc"
}
trap cleanup EXIT

free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  echo "no free port found" >&2
  exit 1
}

find_pg_bin() {
  local name=$1 dir
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  for dir in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin /opt/homebrew/bin /usr/local/bin; do
    [[ -x "$dir/$name" ]] && { echo "$dir/$name"; return; }
  done
  return 1
}

# initdb and postgres refuse to run as root; use the postgres system user when we are root.
run_as_pg() {
  local bin=$1; shift
  if [[ $(id -u) -eq 0 ]]; then
    if id postgres >/dev/null 2>&1; then
      chown -R postgres "$workdir"
      runuser -u postgres -- "$bin" "$@"
    else
      echo "running as root without a 'postgres' user: create one or run as a normal user" >&2
      return 1
    fi
  else
    "$bin" "$@"
  fi
}

pg_reachable() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -d "$pg_url" -t 2
  elif command -v psql >/dev/null 2>&1; then
    psql "$pg_url" -qAtc 'select 1' >/dev/null 2>&1
  else
    local hostport=${pg_url#*@}; hostport=${hostport%%/*}
    (exec 3<>"/dev/tcp/${hostport%%:*}/${hostport##*:}") 2>/dev/null
  fi
}

redis_reachable() {
  if command -v redis-cli >/dev/null 2>&1; then
    [[ $(redis-cli -u "$redis_url" ping 2>/dev/null) == PONG ]]
  else
    local hostport=${redis_url#redis://}; hostport=${hostport##*@}; hostport=${hostport%%/*}
    (exec 3<>"/dev/tcp/${hostport%%:*}/${hostport##*:}") 2>/dev/null
  fi
}

ensure_workdir() {
  [[ -n "$workdir" ]] || workdir=$(mktemp -d "${TMPDIR:-/tmp}/palisade-test-services.XXXXXX")
  chmod 755 "$workdir"
}

if ! pg_reachable; then
  initdb=$(find_pg_bin initdb) && pg_ctl=$(find_pg_bin pg_ctl) || {
    echo "Postgres is not reachable at $pg_url and no initdb/pg_ctl binaries were found." >&2
    echo "Install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@16)" >&2
    echo "or set PALISADE_TEST_DATABASE_URL to a server the tests may create databases on." >&2
    exit 1
  }
  ensure_workdir
  port=$(free_port)
  echo "starting a throwaway Postgres on 127.0.0.1:$port" >&2
  run_as_pg "$initdb" -D "$workdir/pg" -U postgres --auth=trust -E UTF8 >/dev/null
  run_as_pg "$pg_ctl" -D "$workdir/pg" -l "$workdir/pg.log" -w \
    -o "-p $port -k $workdir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >/dev/null
  started_pg=$pg_ctl
  pg_url="postgres://postgres@127.0.0.1:$port/postgres"
fi

if ! redis_reachable; then
  redis_server=$(command -v redis-server) || {
    echo "Redis is not reachable at $redis_url and no redis-server binary was found." >&2
    echo "Install Redis (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)" >&2
    echo "or set PALISADE_TEST_REDIS_URL." >&2
    exit 1
  }
  ensure_workdir
  port=$(free_port)
  echo "starting a throwaway Redis on 127.0.0.1:$port" >&2
  "$redis_server" --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --maxmemory-policy noeviction --daemonize yes --dir "$workdir" \
    --pidfile "$workdir/redis.pid" --logfile "$workdir/redis.log"
  started_redis=yes
  for _ in $(seq 1 50); do redis_url="redis://127.0.0.1:$port"; redis_reachable && break; sleep 0.1; done
fi

export PALISADE_TEST_DATABASE_URL=$pg_url
export PALISADE_TEST_REDIS_URL=$redis_url
"$@"
