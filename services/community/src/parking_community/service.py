"""parking.v1.CommunityParkingService over gRPC: checks the caller, applies the rules of
`domain`, reads and writes through `store`.

Each handler raises a domain Refusal for a request it turns down; `_observed` turns it into
the gRPC status of the same name and counts every call by method and code.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from parking_sdk.v1 import community_pb2, community_pb2_grpc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import domain, metrics
from .auth import TokenVerifier
from .capacity import CapacityReader
from .domain import BookingState, Caller, EveningBooking, Refusal, RefusalKind
from .events import booking_event
from .store import Store, now_us
from .watch import BookingChanges

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]

_STATES = {
    BookingState.CONFIRMED: community_pb2.EVENING_BOOKING_STATE_CONFIRMED,
    BookingState.CANCELED: community_pb2.EVENING_BOOKING_STATE_CANCELED,
    BookingState.WITHDRAWN: community_pb2.EVENING_BOOKING_STATE_WITHDRAWN,
}

STORE_DOWN = "the community's store (Redis) cannot be reached; retry in a moment"

#: request_id is a client's key: bounded so it cannot grow the store without limit.
MAX_REQUEST_ID = 128


def _observed(
    handler: Callable[[Any, Request, Context], Awaitable[Response]],
) -> Callable[[Any, Request, Context], Awaitable[Response]]:
    @functools.wraps(handler)
    async def call(self: Any, request: Request, context: Context) -> Response:
        code = "OK"
        try:
            return await handler(self, request, context)
        except Refusal as refusal:
            code = refusal.kind.name
            await context.abort(grpc.StatusCode[refusal.kind.name], refusal.message)
            raise  # abort raises; this satisfies the type checker
        except grpc.aio.AbortError:
            raise
        except (RedisConnectionError, RedisTimeoutError):
            code = "UNAVAILABLE"
            await context.abort(grpc.StatusCode.UNAVAILABLE, STORE_DOWN)
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("call failed", extra={"method": handler.__name__})
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; retry later")
            raise
        finally:
            metrics.CALLS.labels(handler.__name__, code).inc()

    return call


class CommunityService(community_pb2_grpc.CommunityParkingServiceServicer):
    def __init__(
        self,
        store: Store,
        verifier: TokenVerifier,
        capacity: CapacityReader,
        changes: BookingChanges,
        calendar: domain.Calendar,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.capacity = capacity
        self.changes = changes
        self.calendar = calendar
        self._booked = booking_event("evening_space_booked")
        self._canceled = booking_event("evening_booking_canceled")
        self._withdrawn = booking_event("evening_booking_withdrawn")
        #: Set when the outbox has something new: wakes the relay.
        self.outbox_written: Callable[[], None] = lambda: None

    async def _caller(self, context: Context) -> tuple[Caller, str]:
        """The verified caller and their token (forwarded to ParkingLot, never logged)."""
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode()
        caller = await self.verifier.verify(authorization)
        token = (authorization or "").partition(" ")[2].strip()
        return caller, token

    @_observed
    async def ListEveningOffers(
        self, request: community_pb2.ListEveningOffersRequest, context: Context
    ) -> community_pb2.ListEveningOffersResponse:
        _, token = await self._caller(context)
        dates = self.calendar.offer_dates(request.from_date, request.days)
        days = await self.store.days(dates)
        capacities, withdrew = await self._capacities(dates, days, token)
        if withdrew:
            days = await self.store.days(dates)
        offers = [
            domain.offer(date, day, capacities[date]) for date, day in zip(dates, days, strict=True)
        ]
        return community_pb2.ListEveningOffersResponse(
            offers=[
                community_pb2.EveningOffer(
                    date=o.date.isoformat(),
                    capacity=o.capacity,
                    occupied=o.occupied,
                    booked=o.booked,
                    free=o.free,
                    fully_occupied=o.fully_occupied,
                )
                for o in offers
            ]
        )

    @_observed
    async def BookEveningSpace(
        self, request: community_pb2.BookEveningSpaceRequest, context: Context
    ) -> community_pb2.EveningBooking:
        caller, token = await self._caller(context)
        domain.check_may_book(caller)
        date = self.calendar.bookable_date(request.date)
        if len(request.request_id) > MAX_REQUEST_ID:
            raise Refusal(
                RefusalKind.INVALID_ARGUMENT,
                f"request_id is longer than {MAX_REQUEST_ID} characters",
            )
        [day] = await self.store.days([date])
        capacity = (await self._capacities([date], [day], token))[0][date]
        now = now_us()
        booking = EveningBooking(
            booking_id=str(uuid.uuid4()),
            resident=caller.subject,
            date=date,
            state=BookingState.CONFIRMED,
            booked_at_us=now,
            updated_at_us=now,
        )
        stored, created = await self.store.book(booking, capacity, request.request_id, self._booked)
        if created:
            self.outbox_written()
            log.info(
                "evening space booked",
                extra={"booking_id": stored.booking_id, "date": date.isoformat()},
            )
        return to_message(stored)

    @_observed
    async def CancelEveningBooking(
        self, request: community_pb2.CancelEveningBookingRequest, context: Context
    ) -> community_pb2.EveningBooking:
        caller, _ = await self._caller(context)
        booking_id = _booking_id(request.booking_id)
        canceled = await self.store.cancel(
            booking_id, lambda booking: domain.check_may_cancel(caller, booking), self._canceled
        )
        self.outbox_written()
        log.info("evening booking canceled", extra={"booking_id": booking_id})
        return to_message(canceled)

    async def WatchEveningBooking(
        self, request: community_pb2.WatchEveningBookingRequest, context: Context
    ) -> AsyncIterator[community_pb2.EveningBooking]:
        code = "OK"
        try:
            caller, _ = await self._caller(context)
            booking_id = _booking_id(request.booking_id)
            # Listening before the first read: a change in between is not missed.
            with self.changes.watch(booking_id) as changed:
                booking = await self._found(booking_id)
                domain.check_may_watch(caller, booking)
                yield to_message(booking)
                # Cancelled or withdrawn is final: nothing more to watch.
                while booking.state is BookingState.CONFIRMED and await changed.get():
                    now = await self._found(booking_id)
                    if now != booking:
                        booking = now
                        yield to_message(booking)
        except Refusal as refusal:
            code = refusal.kind.name
            await context.abort(grpc.StatusCode[refusal.kind.name], refusal.message)
        except (RedisConnectionError, RedisTimeoutError):
            code = "UNAVAILABLE"
            await context.abort(grpc.StatusCode.UNAVAILABLE, STORE_DOWN)
        except asyncio.CancelledError:
            code = "CANCELLED"  # the client went away
            raise
        finally:
            metrics.CALLS.labels("WatchEveningBooking", code).inc()

    async def _capacities(
        self, dates: list[dt.date], days: list[domain.Day], token: str
    ) -> tuple[dict[dt.date, int], bool]:
        """The dates' capacities, kept in the store, and whether bookings were withdrawn:
        a capacity lowered below what employees and residents hold withdraws the newest
        bookings now, not at the date's next ParkingLot event."""
        capacities = await self.capacity.capacities(dates, days, token)
        await self.store.remember_capacities(capacities, days)
        withdrew = False
        for date, day in zip(dates, days, strict=True):
            if day.booked > 0 and capacities[date] < day.taken + day.booked:
                withdrawn = await self.store.withdraw_pushed_out(date, self._withdrawn)
                for booking in withdrawn:
                    log.info(
                        "evening booking withdrawn: the lot's capacity was lowered",
                        extra={"booking_id": booking.booking_id, "date": date.isoformat()},
                    )
                if withdrawn:
                    withdrew = True
                    self.outbox_written()
        return capacities, withdrew

    async def _found(self, booking_id: str) -> EveningBooking:
        booking = await self.store.booking(booking_id)
        if booking is None:
            raise Refusal(RefusalKind.NOT_FOUND, f"no evening booking {booking_id!r}")
        return booking


def _booking_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Refusal(
            RefusalKind.INVALID_ARGUMENT, f"booking_id {value!r} is not a booking id (a UUID)"
        ) from None


def _timestamp(us: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMicroseconds(us)
    return stamp


def to_message(booking: EveningBooking) -> community_pb2.EveningBooking:
    return community_pb2.EveningBooking(
        booking_id=booking.booking_id,
        resident=booking.resident,
        date=booking.date.isoformat(),
        state=_STATES[booking.state],
        booked_at=_timestamp(booking.booked_at_us),
        updated_at=_timestamp(booking.updated_at_us),
    )
