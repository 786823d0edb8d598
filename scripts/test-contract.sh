#!/usr/bin/env bash
# Contract checks (run by scripts/test.sh; buf.yaml says which rules and why):
#   1. buf lint over proto/;
#   2. buf breaking: proto/ against the newest released image in proto/released/
#      (scripts/release-contract.sh cuts one), so a wire-breaking change fails CI;
#   3. both checks can fail: copies of proto/ with one breaking change each (a field
#      deleted, a field's type changed, a JSON name changed, an enum value renamed, an RPC
#      deleted) must be refused, and an additive change (a new field, a new RPC) accepted;
#      lint must refuse a new enum without its prefix (the exemption is for three released
#      files only) and a field not in lower_snake_case.
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

# check COMMAND NAME want(pass|fail) FILE SED-SCRIPT: applies the edit to a fresh copy of
# the contract and runs buf COMMAND (breaking or lint) on it.
failed=0
check() {
  local command=$1 name=$2 want=$3 file=$4 edit=$5 copy="$WORK/$2"
  local args=(breaking --against "$PWD/$RELEASED")
  [ "$command" = lint ] && args=(lint)
  mkdir -p "$copy"
  cp -r buf.yaml proto "$copy/"
  sed -i -e "$edit" "$copy/proto/parking/v1/$file"
  if cmp -s "proto/parking/v1/$file" "$copy/proto/parking/v1/$file"; then
    say "test-contract: FAIL $name: the edit changed nothing"
    failed=1
    return
  fi
  local got=pass
  (cd "$copy" && "$BUF" "${args[@]}" >"$copy.log" 2>&1) || got=fail
  if [ "$got" = "$want" ]; then
    say "test-contract: ok   $name: $got$([ "$got" = fail ] && printf ' (%s)' "$(head -n 1 "$copy.log")")"
  else
    say "test-contract: FAIL $name: buf $command said $got, want $want"
    cat "$copy.log" >&2
    failed=1
  fi
}
check breaking field-deleted fail reservation.proto '/^  string request_id = 3;$/d'
check breaking field-type-changed fail reservation.proto 's/^  int64 member_id = 1;$/  string member_id = 1;/'
check breaking json-name-changed fail reservation.proto 's/^  string reservation_date = 3;$/  string reserve_date = 3;/'
check breaking enum-value-renamed fail reservation.proto 's/^  CANCELED = 4;$/  CANCELLED = 4;/'
check breaking rpc-deleted fail delivery.proto '/^  rpc ShipTicket(/,/^  }$/d'
check breaking field-added pass reservation.proto 's/^  string request_id = 5;$/&\n  string note = 6;/'
check breaking rpc-added pass parking_lot.proto 's/^service ParkingLotService {$/&\n  rpc Ping(GetDailyAvailabilityRequest) returns (DailyAvailability);/'
check lint enum-without-prefix fail community.proto '$a\\nenum EveningSlot {\n  EVENING_SLOT_UNSPECIFIED = 0;\n  LATE = 1;\n}'
check lint field-not-snake-case fail community.proto 's/^  int32 booked = 4;$/  int32 bookedCount = 4;/'
[ "$failed" = 0 ] || { say "test-contract: buf did not judge the edits as it should"; exit 1; }
say "test-contract: passed in $((SECONDS - started)) s"
