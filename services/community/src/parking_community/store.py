"""The community's own store in Redis: dates, bookings, processed events and the outbox.

Every key starts with `<namespace>:community:` so runs with different EVENT_NAMESPACEs never
meet. One Redis (not a cluster): the scripts build their keys from that prefix.

- `day:<date>` (hash): occupied (signed), booked, fully_seq and vacated_seq (stream
  sequences of the last FullyOccupied and Vacated), capacity (last known), events.
- `processed:<date>` (set): ids of the date's ParkingLot events already applied.
- `booking:<id>` (hash): resident, date, state, booked_at, updated_at (microseconds).
- `confirmed:<date>` (sorted set): the date's confirmed booking ids by booked_at.
- `holder:<date>:<resident>`: the resident's confirmed booking that date (one per date).
- `request:<resident>:<request_id>`: the booking a BookEveningSpace request made.
- `consumer`: set once the durable consumer feeds this store; missing, the service
  replays ParkingLot's history into it.
- `outbox` (list of event ids, in order) and `outbox:msg` (hash id -> envelope bytes):
  events written with the change that caused them, published and removed by the relay.
- channel `changes`: a booking id, published with each change, for WatchEveningBooking.

A ParkingLot event's counters and its processed id are written by one Lua script (atomic);
bookings change in WATCH/MULTI transactions that also write their outbox rows.

A date's keys (day, processed, confirmed, holder) and its bookings expire `retention_days`
after the date (EXPIREAT), so the store does not grow without bound (the Kubernetes Redis
evicts nothing). An event of a date past retention, replayed from history, leaves nothing.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import WatchError

from .domain import (
    BookingState,
    Day,
    EveningBooking,
    ParkingLotEvent,
    ParkingLotEventKind,
    Refusal,
    RefusalKind,
    bookings_to_withdraw,
    check_bookable_space,
    check_cancellable,
)

#: Builds the outbox event (event id, envelope bytes) for a booking's new state.
EventFactory = Callable[[EveningBooking], tuple[str, bytes]]

#: How long a request_id keeps returning its first booking.
REQUEST_TTL_SECONDS = 7 * 24 * 3600

# ARGV: prefix, then (event_id, kind, date, capacity, stream sequence, expire at) per event. Returns
# how many were new, then the dates (of new and repeated events alike) where employees may
# have pushed bookings out: a quick filter, so the Python side reads only those; the rule
# itself is domain.bookings_to_withdraw, applied again there. The same rule as
# domain.apply_event: whatever order a date's events arrive in, the result is the same.
_APPLY_EVENTS = """
local prefix = ARGV[1]
local applied = 0
local touched = {}
for i = 2, #ARGV, 6 do
  local id, kind, date, capacity, seq = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    tonumber(ARGV[i + 4])
  local day = prefix .. 'day:' .. date
  local processed = prefix .. 'processed:' .. date
  if redis.call('SADD', processed, id) == 1 then
    if kind == 'occupied' then
      redis.call('HINCRBY', day, 'occupied', 1)
    elseif kind == 'vacated' then
      -- Signed: a Vacated applied before its Occupied is made up when that one arrives.
      redis.call('HINCRBY', day, 'occupied', -1)
      if seq > tonumber(redis.call('HGET', day, 'vacated_seq') or '0') then
        redis.call('HSET', day, 'vacated_seq', seq)
      end
    elseif seq > tonumber(redis.call('HGET', day, 'fully_seq') or '0') then
      redis.call('HSET', day, 'fully_seq', seq, 'capacity', capacity)
    end
    redis.call('HINCRBY', day, 'events', 1)
    applied = applied + 1
  end
  redis.call('EXPIREAT', processed, ARGV[i + 5])
  redis.call('EXPIREAT', day, ARGV[i + 5])
  -- A date past retention is gone again at once: nothing to check there.
  if redis.call('EXISTS', day) == 1 then
    touched[date] = day
  end
end
local result = {applied}
for date, day in pairs(touched) do
  local booked = tonumber(redis.call('HGET', day, 'booked') or '0')
  if booked > 0 then
    local fields = redis.call('HMGET', day, 'occupied', 'fully_seq', 'vacated_seq', 'capacity')
    local occupied = math.max(0, tonumber(fields[1] or '0'))
    local fully = tonumber(fields[2] or '0') > tonumber(fields[3] or '0')
    local capacity = tonumber(fields[4] or '-1')
    if fully or (capacity >= 0 and occupied + booked > capacity) then
      table.insert(result, date)
    end
  end
end
return result
"""


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Applied:
    """What one batch of ParkingLot's events did."""

    new: int
    duplicates: int
    withdrawn: list[EveningBooking]


#: Days after a date its keys and bookings are kept (RETENTION_DAYS).
RETENTION_DAYS = 7


class Store:
    def __init__(
        self, client: redis.Redis, namespace: str, retention_days: int = RETENTION_DAYS
    ) -> None:
        self.redis = client
        self.retention_days = retention_days
        #: Every key of this namespace's community data starts with it.
        self.prefix = f"{namespace}:community:"
        self.changes_channel = self.prefix + "changes"
        self._apply_events = client.register_script(_APPLY_EVENTS)

    def expire_at(self, date: dt.date) -> int:
        """When a date's keys go (seconds since the epoch): `retention_days` after the
        date's end, in UTC (a day's margin over any time zone)."""
        end = dt.datetime.combine(date, dt.time(), tzinfo=dt.UTC)
        return int((end + dt.timedelta(days=self.retention_days + 1)).timestamp())

    # keys
    def _day(self, date: dt.date) -> str:
        return f"{self.prefix}day:{date.isoformat()}"

    def _booking(self, booking_id: str) -> str:
        return f"{self.prefix}booking:{booking_id}"

    def _confirmed(self, date: dt.date) -> str:
        return f"{self.prefix}confirmed:{date.isoformat()}"

    def _holder(self, date: dt.date, resident: str) -> str:
        return f"{self.prefix}holder:{date.isoformat()}:{resident}"

    def _request(self, resident: str, request_id: str) -> str:
        return f"{self.prefix}request:{resident}:{request_id}"

    @property
    def _consumer_marker(self) -> str:
        return self.prefix + "consumer"

    @property
    def _outbox(self) -> str:
        return self.prefix + "outbox"

    @property
    def _outbox_msg(self) -> str:
        return self.prefix + "outbox:msg"

    # reads
    async def days(self, dates: Sequence[dt.date]) -> list[Day]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for date in dates:
                pipe.hgetall(self._day(date))
            rows = await pipe.execute()
        return [_day(row) for row in rows]

    async def remember_capacities(self, capacities: dict[dt.date, int], days: list[Day]) -> None:
        """Keeps the capacities just read from ParkingLot where they changed, for the
        withdrawal rule (which runs on events, with no caller's token to read them)."""
        changed = {
            date: capacity
            for (date, capacity), day in zip(capacities.items(), days, strict=True)
            if day.known_capacity != capacity
        }
        if changed:
            async with self.redis.pipeline(transaction=False) as pipe:
                for date, capacity in changed.items():
                    pipe.hset(self._day(date), "capacity", capacity)
                    pipe.expireat(self._day(date), self.expire_at(date))
                await pipe.execute()

    async def consumer_marked(self) -> bool:
        """Whether this store was filled through the durable consumer: without the mark
        (a fresh or lost store) the consumer's position says nothing about the store."""
        return bool(await self.redis.exists(self._consumer_marker))

    async def mark_consumer(self, durable: str) -> None:
        await self.redis.set(self._consumer_marker, durable)

    async def booking(self, booking_id: str) -> EveningBooking | None:
        row = await self.redis.hgetall(self._booking(booking_id))
        return _booking(booking_id, row) if row else None

    # ParkingLot's events
    async def apply_parking_lot_events(
        self, events: Sequence[ParkingLotEvent], withdrawn_event: EventFactory
    ) -> Applied:
        """Applies a batch (each event once, however often delivered), then withdraws the
        bookings employees pushed out on the dates the batch touched."""
        if not events:
            return Applied(new=0, duplicates=0, withdrawn=[])
        args: list[str | int] = [self.prefix]
        for event in events:
            args += [
                event.event_id,
                event.kind.value,
                event.date.isoformat(),
                event.capacity,
                event.seq,
                self.expire_at(event.date),
            ]
        new, *crowded = await self._apply_events(args=args)
        # The script names duplicates' dates too: a crash after it and before the
        # withdrawal leaves the withdrawal to the redelivery.
        withdrawn: list[EveningBooking] = []
        for date in sorted(dt.date.fromisoformat(_text(d)) for d in crowded):
            withdrawn += await self.withdraw_pushed_out(date, withdrawn_event)
        return Applied(new=int(new), duplicates=len(events) - int(new), withdrawn=withdrawn)

    async def withdraw_pushed_out(
        self, date: dt.date, withdrawn_event: EventFactory
    ) -> list[EveningBooking]:
        """Withdraws the date's newest confirmed bookings while employees need the space."""
        day_key, confirmed_key = self._day(date), self._confirmed(date)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(day_key, confirmed_key)
                    day = _day(await pipe.hgetall(day_key))
                    count = bookings_to_withdraw(day)
                    if count == 0:
                        return []
                    ids = [_text(b) for b in await pipe.zrevrange(confirmed_key, 0, count - 1)]
                    rows = [await pipe.hgetall(self._booking(i)) for i in ids]
                    now = now_us()
                    changed = [
                        _booking(i, row).with_state(BookingState.WITHDRAWN, now)
                        for i, row in zip(ids, rows, strict=True)
                        if row
                    ]
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for booking in changed:
                        self._stage_end(pipe, booking, withdrawn_event)
                    await pipe.execute()
                    return changed
                except WatchError:
                    continue

    # bookings
    async def book(
        self,
        booking: EveningBooking,
        capacity: int,
        request_id: str,
        booked_event: EventFactory,
    ) -> tuple[EveningBooking, bool]:
        """Stores a new confirmed booking, or returns the one `request_id` already made
        (with False). Refuses a second booking of the resident's for the date, or a date
        with no free evening space."""
        date, resident = booking.date, booking.resident
        day_key, holder_key = self._day(date), self._holder(date, resident)
        request_key = self._request(resident, request_id) if request_id else None
        watched = [day_key, holder_key] + ([request_key] if request_key else [])
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*watched)
                    if request_key and (earlier := await pipe.get(request_key)):
                        first = await self.booking(_text(earlier))
                        if first is not None:
                            if first.date != date:
                                raise Refusal(
                                    RefusalKind.INVALID_ARGUMENT,
                                    f"request_id {request_id!r} booked {first.date} "
                                    f"(booking {first.booking_id}), not {date}: a retry "
                                    "repeats its request; a new request needs a new request_id",
                                )
                            return first, False
                    if held := await pipe.get(holder_key):
                        raise Refusal(
                            RefusalKind.ALREADY_EXISTS,
                            f"{resident} already holds evening booking {_text(held)} on {date}",
                        )
                    day = _day(await pipe.hgetall(day_key))
                    check_bookable_space(date, day, capacity)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(
                        self._booking(booking.booking_id),
                        mapping={
                            "resident": resident,
                            "date": date.isoformat(),
                            "state": booking.state.value,
                            "booked_at": booking.booked_at_us,
                            "updated_at": booking.updated_at_us,
                        },
                    )
                    pipe.zadd(self._confirmed(date), {booking.booking_id: booking.booked_at_us})
                    pipe.set(holder_key, booking.booking_id, exat=self.expire_at(date))
                    if request_key:
                        pipe.set(request_key, booking.booking_id, ex=REQUEST_TTL_SECONDS)
                    pipe.hincrby(day_key, "booked", 1)
                    if day.known_capacity != capacity:
                        pipe.hset(day_key, "capacity", capacity)
                    for key in (self._booking(booking.booking_id), self._confirmed(date), day_key):
                        pipe.expireat(key, self.expire_at(date))
                    self._stage_event(pipe, booking, booked_event)
                    await pipe.execute()
                    return booking, True
                except WatchError:
                    continue

    async def cancel(
        self,
        booking_id: str,
        authorize: Callable[[EveningBooking], None],
        canceled_event: EventFactory,
    ) -> EveningBooking:
        key = self._booking(booking_id)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    row = await pipe.hgetall(key)
                    if not row:
                        raise Refusal(RefusalKind.NOT_FOUND, f"no evening booking {booking_id!r}")
                    booking = _booking(booking_id, row)
                    authorize(booking)
                    check_cancellable(booking)
                    canceled = booking.with_state(BookingState.CANCELED, now_us())
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._stage_end(pipe, canceled, canceled_event)
                    await pipe.execute()
                    return canceled
                except WatchError:
                    continue

    def _stage_end(
        self, pipe: redis.client.Pipeline, booking: EveningBooking, event: EventFactory
    ) -> None:
        """Queues a confirmed booking's end (cancelled or withdrawn) in a MULTI."""
        pipe.hset(
            self._booking(booking.booking_id),
            mapping={"state": booking.state.value, "updated_at": booking.updated_at_us},
        )
        pipe.zrem(self._confirmed(booking.date), booking.booking_id)
        pipe.delete(self._holder(booking.date, booking.resident))
        pipe.hincrby(self._day(booking.date), "booked", -1)
        self._stage_event(pipe, booking, event)

    def _stage_event(
        self, pipe: redis.client.Pipeline, booking: EveningBooking, event: EventFactory
    ) -> None:
        event_id, envelope = event(booking)
        pipe.rpush(self._outbox, event_id)
        pipe.hset(self._outbox_msg, event_id, envelope)
        pipe.publish(self.changes_channel, booking.booking_id)

    # outbox
    async def outbox(self, limit: int) -> list[tuple[str, bytes]]:
        """The oldest unpublished events, in the order they were written."""
        ids = [_text(i) for i in await self.redis.lrange(self._outbox, 0, limit - 1)]
        if not ids:
            return []
        envelopes = await self.redis.hmget(self._outbox_msg, ids)
        return [(i, e) for i, e in zip(ids, envelopes, strict=True) if isinstance(e, bytes)]

    async def outbox_sent(self, event_ids: Iterable[str]) -> None:
        ids = list(event_ids)
        if not ids:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for event_id in ids:
                pipe.lrem(self._outbox, 1, event_id)
            pipe.hdel(self._outbox_msg, *ids)
            await pipe.execute()

    async def outbox_length(self) -> int:
        return int(await self.redis.llen(self._outbox))

    async def delete_all(self) -> int:
        """Deletes every key of this namespace (tests and benches clean up with it)."""
        deleted = 0
        async for key in self.redis.scan_iter(match=self.prefix + "*", count=1000):
            deleted += int(await self.redis.delete(key))
        return deleted


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


#: A hash as redis-py returns it (bytes, as the client does not decode).
Row = Mapping[Any, Any]


def _field(row: Row, name: str) -> str | None:
    value = row.get(name.encode())
    return None if value is None else _text(value)


def _day(row: Row) -> Day:
    capacity = _field(row, "capacity")
    fully_seq = int(_field(row, "fully_seq") or 0)
    vacated_seq = int(_field(row, "vacated_seq") or 0)
    return Day(
        occupied=int(_field(row, "occupied") or 0),
        booked=int(_field(row, "booked") or 0),
        fully_occupied=fully_seq > vacated_seq,
        known_capacity=None if capacity is None else int(capacity),
        fully_seq=fully_seq,
        vacated_seq=vacated_seq,
    )


def _booking(booking_id: str, row: Row) -> EveningBooking:
    return EveningBooking(
        booking_id=booking_id,
        resident=_field(row, "resident") or "",
        date=dt.date.fromisoformat(_field(row, "date") or "1970-01-01"),
        state=BookingState(_field(row, "state")),
        booked_at_us=int(_field(row, "booked_at") or 0),
        updated_at_us=int(_field(row, "updated_at") or 0),
    )


__all__ = ["Applied", "EventFactory", "ParkingLotEventKind", "Store", "now_us"]
