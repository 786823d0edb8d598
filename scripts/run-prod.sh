#!/usr/bin/env bash
# `make run-prod`: the prod overlay's topology (k8s/overlays/prod) on this machine.
#   PostgreSQL   127.0.0.1:5432 (or PROD_POSTGRES_URL), one database per service
#   NATS         three nats-server processes in one JetStream cluster, streams replicated 3 times
#   services     two replicas of reservation, parking-lot, delivery and status
#   gateway      two replicas sharing one signing key
# Data under var/prod/ (NATS stores, accounts, key), logs under var/prod/log/. Ctrl-C stops
# everything; the databases and NATS stores stay for the next start.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

PROD=var/prod
LOG=$PROD/log
NAMESPACE=${EVENT_NAMESPACE:-parking}
PG_ADMIN=${PROD_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
PG_BASE=${PG_ADMIN%/*}
# Ports: NATS clients 4241-4243 (routes 6241-6243, monitoring 8241-8243); replica 1 of
# each service on 5006x, replica 2 on 5007x; gateways 8180 and 8181 (make run's 8080 stays
# free, so both can run side by side); metrics 946x/947x, gateways' 9455 and 9456.
NATS_CLIENT=(4241 4242 4243)
NATS_ROUTE=(6241 6242 6243)
NATS_HTTP=(8241 8242 8243)
GATEWAYS=(8180 8181)
declare -A PORT1=([reservation]=50061 [parking-lot]=50062 [delivery]=50063 [status]=50064)
declare -A PORT2=([reservation]=50071 [parking-lot]=50072 [delivery]=50073 [status]=50074)
declare -A METRICS1=([reservation]=9461 [parking-lot]=9462 [delivery]=9463 [status]=9464)
declare -A METRICS2=([reservation]=9471 [parking-lot]=9472 [delivery]=9473 [status]=9474)
declare -A DATABASE=([reservation]=reservation [parking-lot]=parking_lot [delivery]=delivery [status]=status)

for port in "${NATS_CLIENT[@]}" "${NATS_ROUTE[@]}" "${NATS_HTTP[@]}" "${GATEWAYS[@]}" "${PORT1[@]}" "${PORT2[@]}"; do
  if listening 127.0.0.1 "$port"; then
    say "port $port is taken (is make run or make run-prod already running?)"
    exit 1
  fi
done

nats_bin=$(nats_server_bin)
"$nats_bin" --version >&2
ensure_postgres
for db in "${DATABASE[@]}"; do ensure_pg_database "$PG_ADMIN" "$db"; done
cargo build --workspace --bins
mkdir -p "$LOG"

pids=() names=()
stop() {
  trap - INT TERM EXIT
  say ""
  say "stopping (SIGTERM: services drain and flush their outboxes, then the NATS servers stop)…"
  # Services first (they flush their outboxes into NATS), then the NATS servers.
  local pid
  # A bare `wait` (no pids left) would wait for every child, the NATS servers included.
  if ((${#pids[@]} > 3)); then
    for pid in "${pids[@]:3}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait "${pids[@]:3}" 2>/dev/null || true
  fi
  if ((${#pids[@]} > 0)); then
    for pid in "${pids[@]:0:3}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait "${pids[@]:0:3}" 2>/dev/null || true
  fi
  say "stopped; data stays in $PROD and the PostgreSQL databases ${DATABASE[*]}"
}
trap stop INT TERM EXIT

# The three NATS servers: each its own store, routes to all three (as the StatefulSet's pods).
for i in 0 1 2; do
  name=nats-$i
  mkdir -p "$PROD/$name"
  write_nats_node_conf "$PROD/$name.conf" "$name" "${NATS_CLIENT[$i]}" "${NATS_ROUTE[$i]}" "${NATS_HTTP[$i]}" "$PWD/$PROD/$name" "${NATS_ROUTE[@]}"
  "$nats_bin" -c "$PROD/$name.conf" >"$LOG/$name.log" 2>&1 &
  pids+=($!) names+=("$name")
done
for i in 0 1 2; do
  wait_jetstream_cluster "${NATS_HTTP[$i]}" 60 || { say "NATS nats-$i is not ready; see $LOG/nats-$i.log"; exit 1; }
done
nats_url=$(printf 'nats://127.0.0.1:%s,' "${NATS_CLIENT[@]}")
nats_url=${nats_url%,}
# Every process gets the three servers, each its own order (replica 1 the first server
# first, replica 2 the second, the gateways the third and the first), so the clients spread
# over the cluster; each moves to another server when its own goes.
servers() {
  local first=$1 i out=""
  for i in 0 1 2; do out+="nats://127.0.0.1:${NATS_CLIENT[$(((first + i) % 3))]},"; done
  echo "${out%,}"
}

# Accounts (demo users with random passwords, parking-lot's client identity) and the
# signing key both gateway replicas share.
accounts=$PROD/accounts.yaml
if [ ! -f "$accounts" ]; then
  umask 077
  : >"$PROD/demo-passwords"
  for account in 3117:employee 6:employee manager:manager admin:admin; do
    name=${account%%:*} role=${account#*:}
    password=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')
    PARKING_PASSWORD=$password ./target/debug/parkingctl users add "$name" --role "$role" --file "$accounts" >/dev/null
    echo "$name $password" >>"$PROD/demo-passwords"
  done
  head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$PROD/parking-lot.secret"
  PARKING_PASSWORD=$(cat "$PROD/parking-lot.secret") ./target/debug/parkingctl users add parking-lot --client --role service --file "$accounts" >/dev/null
  umask 022
fi
if [ ! -f "$PROD/token-key.pem" ]; then
  command -v openssl >/dev/null || apt_install openssl
  (umask 077; openssl genpkey -algorithm ed25519 -out "$PROD/token-key.pem")
fi

mesh=k8s/istio/delivery-destinationrule.yaml,k8s/istio/delivery-virtualservice.yaml
urls() { echo "http://127.0.0.1:${PORT1[$1]},http://127.0.0.1:${PORT2[$1]}"; }
# What every process shares (the prod overlay's ConfigMap).
common=(
  EVENT_NAMESPACE="$NAMESPACE" STREAM_REPLICAS=3
  RUST_LOG="${RUST_LOG:-info,sqlx=warn,sea_orm=warn,async_nats=warn}"
)

# start NAME LOGNAME PORT METRICS [VAR=value ...]
start() {
  local name=$1 logname=$2 port=$3 metrics=$4
  shift 4
  env -u DATABASE_URL "${common[@]}" LISTEN_ADDR="127.0.0.1:$port" METRICS_LISTEN="127.0.0.1:$metrics" "$@" \
    "./target/debug/$name" >"$LOG/$logname.log" 2>&1 &
  pids+=($!) names+=("$logname")
}

# The gateways first: the backends check every call's token against gateway 1's JWK set,
# and parking-lot takes its own token from gateway 1's token endpoint.
for i in 0 1; do
  start gateway "gateway-$((i + 1))" "${GATEWAYS[$i]}" "945$((i + 5))" NATS_URL="$(servers $(((i + 2) % 3)))" \
    ACCOUNTS_FILE="$accounts" TOKEN_KEY_FILE="$PROD/token-key.pem" MESH_CONFIG="$mesh" \
    RESERVATION_URL="$(urls reservation)" PARKING_LOT_URL="$(urls parking-lot)" \
    DELIVERY_URL="$(urls delivery)" STATUS_URL="$(urls status)"
done
wait_listening 127.0.0.1 "${GATEWAYS[0]}" 60 || { say "gateway-1 did not start; see $LOG/gateway-1.log"; exit 1; }
auth=(JWKS_URL="http://127.0.0.1:${GATEWAYS[0]}/.well-known/jwks.json")
for svc in reservation parking-lot delivery status; do
  extra=()
  if [ "$svc" = parking-lot ]; then
    extra=(DELIVERY_URL="$(urls delivery)" MESH_CONFIG="$mesh"
      TOKEN_URL="http://127.0.0.1:${GATEWAYS[0]}/oauth2/token" CLIENT_ID=parking-lot
      CLIENT_SECRET_FILE="$PROD/parking-lot.secret")
  fi
  db="$PG_BASE/${DATABASE[$svc]}"
  start "$svc" "$svc-1" "${PORT1[$svc]}" "${METRICS1[$svc]}" NATS_URL="$(servers 0)" DATABASE_URL="$db" "${auth[@]}" "${extra[@]}"
  start "$svc" "$svc-2" "${PORT2[$svc]}" "${METRICS2[$svc]}" NATS_URL="$(servers 1)" DATABASE_URL="$db" "${auth[@]}" "${extra[@]}"
done
for port in "${GATEWAYS[@]}" "${PORT1[@]}" "${PORT2[@]}"; do
  wait_listening 127.0.0.1 "$port" 60 || { say "a process did not start on $port; see $LOG/"; exit 1; }
done

cat <<MSG

parking-mesh (prod topology) is running; logs in $LOG/, data in $PROD/:
  gateway      127.0.0.1:${GATEWAYS[0]}, 127.0.0.1:${GATEWAYS[1]}   gRPC, gRPC-Web, REST/JSON, POST /oauth2/token (one key)
  reservation  $(urls reservation)
  parking-lot  $(urls parking-lot)
  delivery     $(urls delivery)
  status       $(urls status)
  metrics      http://127.0.0.1:9461/metrics .. 9464 (replica 1), 9471 .. 9474 (replica 2), gateways 9455, 9456
  NATS         $nats_url  (JetStream cluster parking-prod, monitoring http://127.0.0.1:${NATS_HTTP[0]}/jsz)
  streams      ${NAMESPACE^^}_RESERVATION, ${NAMESPACE^^}_PARKINGLOT, ${NAMESPACE^^}_DELIVERY, 3 replicas each
  PostgreSQL   $PG_BASE/{${DATABASE[*]}}

Demo logins (3117 and 6 are employees, then manager and admin): $PROD/demo-passwords
  export PARKING_SERVER=http://127.0.0.1:${GATEWAYS[0]}
  PARKING_PASSWORD=... target/debug/parkingctl login --user 3117
  target/debug/parkingctl reserve --member 3117 --date \$(TZ=Asia/Seoul date -d tomorrow +%F)

Ctrl-C stops everything.
MSG
exited=
wait -n -p exited "${pids[@]}" || true
for i in "${!pids[@]}"; do
  [ "${pids[$i]}" = "$exited" ] && say "${names[$i]} exited; see $LOG/${names[$i]}.log"
done
