#!/usr/bin/env bash
# `make run`: every service on this machine, SQLite files under ./var, NATS from NATS_URL
# or a local nats-server it starts, Redis (the community service's store) from REDIS_URL
# or 127.0.0.1:6379 or a local redis-server it starts. Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_nats
ensure_redis
cargo build --bins
# The community service (Python) and the SDK it uses, in their pinned venv.
community_bin=$(bash scripts/community-venv.sh)
mkdir -p var/log

pids=()
stop() {
  trap - INT TERM EXIT
  say ""
  say "stopping services…"
  if ((${#pids[@]})); then
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Not a bare `wait`: that would also wait for the nats-server ensure_nats started.
    wait "${pids[@]}" 2>/dev/null || true
  fi
  if [ -f var/nats.pid ]; then
    kill -TERM "$(cat var/nats.pid)" 2>/dev/null || true
    rm -f var/nats.pid
  fi
  stop_redis
  say "stopped; data stays in ./var"
}
trap stop INT TERM EXIT

# start NAME PORT [VAR=value ...]
start() {
  local name=$1 port=$2
  shift 2
  env LISTEN_ADDR="127.0.0.1:$port" "$@" "./target/debug/$name" >"var/log/$name.log" 2>&1 &
  pids+=($!)
}

# Demo accounts on first run: random passwords, kept in var/demo-passwords (owner-only);
# the gateway reads only their argon2id hashes from var/accounts.yaml.
if [ ! -f var/accounts.yaml ]; then
  umask 077
  : >var/demo-passwords
  for account in 3117:employee 6:employee manager:manager admin:admin rosa:resident; do
    name=${account%%:*} role=${account#*:}
    password=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')
    PARKING_PASSWORD=$password ./target/debug/parkingctl users add "$name" --role "$role" --file var/accounts.yaml >/dev/null
    echo "$name $password" >>var/demo-passwords
  done
  umask 022
fi
# A resident for the community service's evening spaces, also when var/accounts.yaml
# predates it.
if ! ./target/debug/parkingctl users list --file var/accounts.yaml 2>/dev/null | grep -qw rosa; then
  umask 077
  password=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')
  PARKING_PASSWORD=$password ./target/debug/parkingctl users add rosa --role resident --file var/accounts.yaml >/dev/null
  echo "rosa $password" >>var/demo-passwords
  umask 022
fi
# parking-lot's own identity for CancelDelivery (client_credentials, role service); the
# secret stays in an owner-only file the service reads.
if [ ! -f var/parking-lot.secret ]; then
  (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' >var/parking-lot.secret)
fi
# The account too whenever the accounts file lacks it (a reset of var/accounts.yaml).
if ! ./target/debug/parkingctl users list --file var/accounts.yaml 2>/dev/null | grep -qw parking-lot; then
  PARKING_PASSWORD=$(cat var/parking-lot.secret) ./target/debug/parkingctl users add parking-lot --client --role service --file var/accounts.yaml >/dev/null
fi
# A signing key that survives restarts (tokens stay valid); without openssl the gateway
# makes one per start.
if [ ! -f var/token-key.pem ] && command -v openssl >/dev/null; then
  (umask 077; openssl genpkey -algorithm ed25519 -out var/token-key.pem 2>/dev/null) || rm -f var/token-key.pem
fi
gateway_key=()
[ -f var/token-key.pem ] && gateway_key=(TOKEN_KEY_FILE=var/token-key.pem)

# Traces go to OTEL_EXPORTER_OTLP_ENDPOINT when it is set, else to a local Jaeger when one
# is installed (OTLP/gRPC on 4317, UI on 16686); without either they stay in-process.
traces="off (set OTEL_EXPORTER_OTLP_ENDPOINT, or install Jaeger)"
if [ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
  traces="OTLP to $OTEL_EXPORTER_OTLP_ENDPOINT"
else
  jaeger_bin=$(command -v jaeger-all-in-one || command -v jaeger || true)
  if [ -n "$jaeger_bin" ]; then
    COLLECTOR_OTLP_ENABLED=true "$jaeger_bin" >var/log/jaeger.log 2>&1 &
    pids+=($!)
    if wait_listening 127.0.0.1 4317 30; then
      export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317
      traces="Jaeger at http://127.0.0.1:16686 (service gateway, operation ReserveTicket)"
    else
      say "Jaeger did not start; see var/log/jaeger.log"
    fi
  fi
fi

# MTLS=1: mutual TLS between the processes, with a local CA made once in var/tls
# (`parkingctl certs`); the gateway's own port stays plain for its callers.
scheme=http
tls() { :; }
if [ "${MTLS:-0}" = 1 ]; then
  [ -f var/tls/community.pem ] || ./target/debug/parkingctl certs --dir var/tls gateway reservation parking-lot delivery status community operator >/dev/null
  scheme=https
  tls() { echo "TLS_CERT_FILE=var/tls/$1.pem TLS_KEY_FILE=var/tls/$1-key.pem TLS_CA_FILE=var/tls/ca.pem"; }
fi

# Each service's own DATABASE_URL default is a SQLite file under ./var; each checks every
# call's token against the gateway's keys (JWKS_URL's default, 127.0.0.1:8080).
unset DATABASE_URL LISTEN_ADDR
# shellcheck disable=SC2046 # tls prints words meant to be split
start delivery 50053 $(tls delivery)
# ParkingLot calls delivery through the in-process mesh, with the policy Istio would apply.
# shellcheck disable=SC2046
start parking-lot 50052 MESH_CONFIG=k8s/istio/delivery-destinationrule.yaml,k8s/istio/delivery-virtualservice.yaml CLIENT_ID=parking-lot CLIENT_SECRET_FILE=var/parking-lot.secret DELIVERY_URL=$scheme://127.0.0.1:50053 $(tls parking-lot)
# shellcheck disable=SC2046
start reservation 50051 $(tls reservation)
# shellcheck disable=SC2046
start status 50054 $(tls status)
# The single entry point; it reaches the services at their default ports.
# shellcheck disable=SC2046
start gateway 8080 METRICS_LISTEN=127.0.0.1:9450 ACCOUNTS_FILE=var/accounts.yaml MESH_CONFIG=k8s/istio/delivery-destinationrule.yaml,k8s/istio/delivery-virtualservice.yaml "${gateway_key[@]}" \
  RESERVATION_URL=$scheme://127.0.0.1:50051 PARKING_LOT_URL=$scheme://127.0.0.1:50052 DELIVERY_URL=$scheme://127.0.0.1:50053 STATUS_URL=$scheme://127.0.0.1:50054 COMMUNITY_URL=$scheme://127.0.0.1:50055 $(tls gateway)
for port in 50051 50052 50053 50054 8080; do
  wait_listening 127.0.0.1 "$port" 30 || { say "a service did not start; see var/log/"; exit 1; }
done
# The community service, after the gateway: it reads the gateway's token keys and, with
# each caller's token, the lot's capacity through it (JWKS_URL and PARKING_API_URL default
# to 127.0.0.1:8080); its own store is Redis, its events its own stream.
# shellcheck disable=SC2046
env LISTEN_ADDR=127.0.0.1:50055 METRICS_LISTEN=127.0.0.1:9464 $(tls community) "$community_bin/parking-community" >var/log/community.log 2>&1 &
pids+=($!)
wait_listening 127.0.0.1 50055 30 || { say "the community service did not start; see var/log/community.log"; exit 1; }

tomorrow=$(TZ=Asia/Seoul date -d tomorrow +%F)
password=$(awk '$1 == "3117" { print $2 }' var/demo-passwords 2>/dev/null || true)
rosa_password=$(awk '$1 == "rosa" { print $2 }' var/demo-passwords 2>/dev/null || true)
cat <<MSG

parking-mesh is running (logs in var/log/, data in var/):
  gateway      127.0.0.1:8080   one entry point: gRPC, gRPC-Web, REST/JSON, POST /oauth2/token
  parkingctl   target/debug/parkingctl --help
  reservation  127.0.0.1:50051  parking.v1.TicketReservationService
  parking-lot  127.0.0.1:50052  parking.v1.ParkingLotService
  delivery     127.0.0.1:50053  parking.v1.TicketDeliveryService
  status       127.0.0.1:50054  parking.v1.ReservationStatusService
  community    127.0.0.1:50055  parking.v1.CommunityParkingService (Python, Redis; metrics http://127.0.0.1:9464/metrics)
  metrics      http://127.0.0.1:9451/metrics .. 9454 (reservation, parking-lot, delivery, status)
  NATS         $NATS_URL
  traces       $traces
  mTLS         $( [ "$scheme" = https ] && echo "on between services (CA and certificates in var/tls; grpcurl to a service: -cacert var/tls/ca.pem -cert var/tls/operator.pem -key var/tls/operator-key.pem)" || echo "off (MTLS=1 make run turns it on)")

Demo logins (3117 and 6 are employees, then manager, admin and rosa, a resident): var/demo-passwords

Log in and reserve with parkingctl:
  PARKING_PASSWORD='$password' target/debug/parkingctl login --user 3117
  target/debug/parkingctl reserve --member 3117 --date $tomorrow

With curl (REST/JSON, the seed's routes):
  TOKEN=\$(curl -s -d grant_type=password -d username=3117 -d password='$password' http://127.0.0.1:8080/oauth2/token | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
  curl -s -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' -d '{"memberId":3117,"reservationDate":"$tomorrow"}' http://127.0.0.1:8080/ticketReservations
  curl -s -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:8080/reservationStatuses
  (httpie: http POST :8080/ticketReservations "Authorization: Bearer \$TOKEN" memberId=3117 reservationDate=$tomorrow)

Evening spaces for residents (the community service, through the gateway):
  RTOKEN=\$(curl -s -d grant_type=password -d username=rosa -d password='$rosa_password' http://127.0.0.1:8080/oauth2/token | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
  curl -s -H "Authorization: Bearer \$RTOKEN" 'http://127.0.0.1:8080/eveningOffers?fromDate=$tomorrow&days=3'
  curl -s -H "Authorization: Bearer \$RTOKEN" -H 'Content-Type: application/json' -d '{"date":"$tomorrow"}' http://127.0.0.1:8080/eveningBookings

With grpcurl (gRPC; it reads the API by reflection):
  grpcurl -plaintext -H "authorization: Bearer \$TOKEN" -d '{"member_id":3117,"reservation_date":"$tomorrow"}' 127.0.0.1:8080 parking.v1.TicketReservationService/ReserveTicket
  grpcurl -plaintext -H "authorization: Bearer \$TOKEN" -d '{"reservation_id":1}' 127.0.0.1:8080 parking.v1.ReservationStatusService/GetReservationStatus

Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
say "a service exited; see var/log/"
