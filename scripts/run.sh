#!/usr/bin/env bash
# `make run`: every service on this machine, SQLite files under ./var, NATS from NATS_URL
# or a local nats-server it starts. Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_nats
cargo build --bins
mkdir -p var/log

pids=()
stop() {
  trap - INT TERM EXIT
  say ""
  say "stopping services…"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  if [ -f var/nats.pid ]; then
    kill -TERM "$(cat var/nats.pid)" 2>/dev/null || true
    rm -f var/nats.pid
  fi
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

# Each service's own DATABASE_URL default is a SQLite file under ./var.
unset DATABASE_URL LISTEN_ADDR
start delivery 50053
# ParkingLot calls delivery through the in-process mesh, with the policy Istio would apply.
start parking-lot 50052 MESH_CONFIG=k8s/istio/delivery-destinationrule.yaml,k8s/istio/delivery-virtualservice.yaml
start reservation 50051
start status 50054
# The single entry point; it reaches the services at their default addresses.
start gateway 8080 METRICS_LISTEN=127.0.0.1:9450
for port in 50051 50052 50053 50054 8080; do
  wait_listening 127.0.0.1 "$port" 30 || { say "a service did not start; see var/log/"; exit 1; }
done

tomorrow=$(TZ=Asia/Seoul date -d tomorrow +%F)
cat <<MSG

parking-mesh is running (logs in var/log/, data in var/):
  gateway      127.0.0.1:8080   every service below, one entry point (gRPC)
  parkingctl   target/debug/parkingctl --help
  reservation  127.0.0.1:50051  parking.v1.TicketReservationService
  parking-lot  127.0.0.1:50052  parking.v1.ParkingLotService
  delivery     127.0.0.1:50053  parking.v1.TicketDeliveryService
  status       127.0.0.1:50054  parking.v1.ReservationStatusService
  metrics      http://127.0.0.1:9451/metrics .. 9454 (reservation, parking-lot, delivery, status)
  NATS         $NATS_URL

Try it through the gateway (grpcurl reads the API by reflection):
  grpcurl -plaintext -d '{"member_id":3117,"reservation_date":"$tomorrow"}' 127.0.0.1:8080 parking.v1.TicketReservationService/ReserveTicket
  grpcurl -plaintext -d '{"reservation_id":1}' 127.0.0.1:8080 parking.v1.ReservationStatusService/GetReservationStatus

Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
say "a service exited; see var/log/"
