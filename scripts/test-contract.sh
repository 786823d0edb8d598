#!/usr/bin/env bash
# Contract checks (run by scripts/test.sh; buf.yaml says which rules and why):
#   1. buf lint over proto/;
#   2. buf breaking: proto/ against the newest released image in proto/released/
#      (scripts/release-contract.sh cuts one), so a wire-breaking change fails CI;
#   3. that check can fail: copies of proto/ with one breaking change each (a field
#      deleted, a field's type changed, a JSON name changed, an enum value renamed, an RPC
#      deleted) must be refused, and an additive change (a new field, a new RPC) accepted.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '%s\n' "$*" >&2; }
started=$SECONDS
BUF="$(bash scripts/tools.sh)/buf"

say "test-contract: buf lint"
"$BUF" lint

RELEASED=$(find proto/released -name 'parking-v*.binpb' | sort -V | tail -n 1)
[ -n "$RELEASED" ] || { say "test-contract: no released image in proto/released"; exit 1; }
say "test-contract: buf breaking against $RELEASED"
"$BUF" breaking --against "$RELEASED"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# check NAME want(pass|fail) FILE SED-SCRIPT: applies the edit to a fresh copy of the
# contract and runs buf breaking on it.
failed=0
check() {
  local name=$1 want=$2 file=$3 edit=$4 copy="$WORK/$1"
  mkdir -p "$copy"
  cp -r buf.yaml proto "$copy/"
  sed -i -e "$edit" "$copy/proto/parking/v1/$file"
  if cmp -s "proto/parking/v1/$file" "$copy/proto/parking/v1/$file"; then
    say "test-contract: FAIL $name: the edit changed nothing"
    failed=1
    return
  fi
  local got=pass
  (cd "$copy" && "$BUF" breaking --against "$OLDPWD/$RELEASED" >"$copy.log" 2>&1) || got=fail
  if [ "$got" = "$want" ]; then
    say "test-contract: ok   $name: $got$([ "$got" = fail ] && printf ' (%s)' "$(head -n 1 "$copy.log")")"
  else
    say "test-contract: FAIL $name: buf breaking said $got, want $want"
    cat "$copy.log" >&2
    failed=1
  fi
}
check field-deleted fail reservation.proto '/^  string request_id = 3;$/d'
check field-type-changed fail reservation.proto 's/^  int64 member_id = 1;$/  string member_id = 1;/'
check json-name-changed fail reservation.proto 's/^  string reservation_date = 3;$/  string reserve_date = 3;/'
check enum-value-renamed fail reservation.proto 's/^  CANCELED = 4;$/  CANCELLED = 4;/'
check rpc-deleted fail delivery.proto '/^  rpc ShipTicket(/,/^  }$/d'
check field-added pass reservation.proto 's/^  string request_id = 5;$/&\n  string note = 6;/'
check rpc-added pass parking_lot.proto 's/^service ParkingLotService {$/&\n  rpc Ping(GetDailyAvailabilityRequest) returns (DailyAvailability);/'
[ "$failed" = 0 ] || { say "test-contract: buf breaking did not judge the edits as it should"; exit 1; }
say "test-contract: passed in $((SECONDS - started)) s"
