"""Applies for a parking ticket and watches it until ParkingLot settles it.

    PARKING_PASSWORD=... python reserve.py 3117 [YYYY-MM-DD]

The gateway is ``$PARKING_GATEWAY`` (default ``http://127.0.0.1:8080``, where ``make run``
serves it); the date defaults to tomorrow in the car park's time zone.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
import uuid
from zoneinfo import ZoneInfo

import parking_sdk
from parking_sdk.v1 import reservation_pb2, status_pb2

GATEWAY = os.environ.get("PARKING_GATEWAY", "http://127.0.0.1:8080")
TOKEN_URL = f"{GATEWAY.rstrip('/')}/oauth2/token"


async def reserve(member: str, password: str, date: str) -> int:
    tokens = parking_sdk.TokenSource.password(TOKEN_URL, member, password)
    async with parking_sdk.aio_connect(GATEWAY, tokens) as gateway:
        try:
            ticket = await gateway.reservations.ReserveTicket(
                reservation_pb2.ReserveTicketRequest(
                    member_id=int(member), reservation_date=date, request_id=str(uuid.uuid4())
                )
            )
        except parking_sdk.AlreadyExists as held:
            print(f"already applied: {held.message}")
            return 1
        except (parking_sdk.InvalidArgument, parking_sdk.PermissionDenied) as refused:
            print(f"refused: {refused}")
            return 2
        print(f"reservation {ticket.id} for {date}: {reservation_pb2.ReservationState.Name(ticket.state)}")

        # The current status first, then every change: wait until ParkingLot has decided.
        watch = status_pb2.WatchReservationStatusRequest(reservation_id=ticket.id)
        async for status in gateway.statuses.WatchReservationStatus(watch):
            print(f"  {status_pb2.ReservationStage.Name(status.stage)}")
            if status.stage == status_pb2.STAGE_FULLY_OCCUPIED:
                print("the car park is full that day")
                return 3
            if status.stage != status_pb2.STAGE_RESERVED:
                print(f"ticket reserved: space {status.space_number}")
                return 0
    return 4


def main() -> int:
    member = sys.argv[1] if len(sys.argv) > 1 else "3117"
    tomorrow = datetime.datetime.now(ZoneInfo("Asia/Seoul")).date() + datetime.timedelta(days=1)
    date = sys.argv[2] if len(sys.argv) > 2 else tomorrow.isoformat()
    try:
        return asyncio.run(reserve(member, os.environ["PARKING_PASSWORD"], date))
    except parking_sdk.TokenError as refused:
        print(refused)
        return 2


if __name__ == "__main__":
    sys.exit(main())
