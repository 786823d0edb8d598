"""The lot's daily capacity, read from ParkingLot through the gateway with the caller's token.

The community service has no credential of its own: a ListEveningOffers or BookEveningSpace
caller (resident, employee, manager or admin) may read the lot's daily figures, so their
token is forwarded. What was read is kept a few seconds per date, and kept in the store
(the withdrawal rule runs on events, with no caller to read for).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence

import grpc
from parking_sdk import errors
from parking_sdk.v1 import parking_lot_pb2, parking_lot_pb2_grpc

from .domain import Day, Refusal, RefusalKind

log = logging.getLogger(__name__)

#: How long one call to GetDailyAvailability may take.
CALL_TIMEOUT_SECONDS = 3.0
#: ParkingLot turned the caller down: passed on, never answered from the stored capacity
#: (the fallback is for ParkingLot being unreachable, not for a caller it refuses).
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


class CapacityReader:
    def __init__(self, channel: grpc.aio.Channel, ttl_seconds: float) -> None:
        """`channel`: the SDK's `aio_channel` to the gateway, with no token of its own (each
        call carries its caller's), so failures arrive as the SDK's typed errors."""
        self._lot = parking_lot_pb2_grpc.ParkingLotServiceStub(channel)
        self._ttl = ttl_seconds
        #: date -> (capacity, monotonic time it goes stale).
        self._cache: dict[dt.date, tuple[int, float]] = {}

    async def capacities(
        self, dates: Sequence[dt.date], days: Sequence[Day], token: str
    ) -> dict[dt.date, int]:
        """Each date's capacity: fresh from the cache, else read; when ParkingLot cannot
        be read, the last capacity the store knows; else (and always when ParkingLot
        refused the caller) the read's error as a Refusal."""
        now = time.monotonic()
        result: dict[dt.date, int] = {}
        missing = []
        for date in dates:
            cached = self._cache.get(date)
            if cached and cached[1] > now:
                result[date] = cached[0]
            else:
                missing.append(date)
        reads = await asyncio.gather(
            *(self._read(date, token) for date in missing), return_exceptions=True
        )
        known = dict(zip(dates, days, strict=True))
        for date, read in zip(missing, reads, strict=True):
            if isinstance(read, int):
                self._cache[date] = (read, now + self._ttl)
                result[date] = read
            elif isinstance(read, errors.ParkingError):
                fallback = known[date].known_capacity
                if fallback is None or read.status in REFUSED:
                    raise _refusal(date, read)
                log.warning(
                    "capacity read failed; using the last known",
                    extra={"date": date.isoformat(), "code": read.status.name},
                )
                result[date] = fallback
            elif isinstance(read, BaseException):
                raise read
        return {date: result[date] for date in dates}

    async def _read(self, date: dt.date, token: str) -> int:
        answer = await self._lot.GetDailyAvailability(
            parking_lot_pb2.GetDailyAvailabilityRequest(date=date.isoformat()),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return int(answer.capacity)


def _refusal(date: dt.date, error: errors.ParkingError) -> Refusal:
    code = error.status
    kind = {
        grpc.StatusCode.PERMISSION_DENIED: RefusalKind.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED: RefusalKind.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT: RefusalKind.INVALID_ARGUMENT,
    }.get(code, RefusalKind.UNAVAILABLE)
    return Refusal(
        kind,
        f"cannot read the lot's capacity for {date} from ParkingLot ({code.name}: {error.message})",
    )
