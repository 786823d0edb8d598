"""The store's Lua script against a real Redis: the same rules as domain.apply_event,
whatever order a date's events are applied in; and the outbox relay against real NATS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
import uuid
from collections.abc import AsyncIterator

import nats
import nats.js.errors
import pytest
import redis.asyncio as redis
from nats.js.api import DiscardPolicy, StreamConfig

from parking_community.domain import (
    BookingState,
    EveningBooking,
    ParkingLotEvent,
    ParkingLotEventKind,
)
from parking_community.events import OutboxRelay, booking_event, stream_name
from parking_community.store import Store

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
#: A date ahead (a past one's keys would expire at once).
D = dt.date.today() + dt.timedelta(days=3)


def no_event(booking: EveningBooking) -> tuple[str, bytes]:
    return str(uuid.uuid4()), b""


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    client = redis.Redis.from_url(REDIS_URL)
    kept = Store(client, f"test-store-{uuid.uuid4().hex[:8]}")
    yield kept
    await kept.delete_all()
    await client.aclose()


def event(kind: ParkingLotEventKind, seq: int, capacity: int = 0) -> ParkingLotEvent:
    return ParkingLotEvent(str(uuid.uuid4()), kind, D, capacity, seq)


async def test_a_vacated_before_its_occupied_leaves_no_space_counted(store: Store) -> None:
    await store.apply_parking_lot_events([event(ParkingLotEventKind.VACATED, 2)], no_event)
    [day] = await store.days([D])
    assert (day.occupied, day.taken) == (-1, 0)
    await store.apply_parking_lot_events([event(ParkingLotEventKind.OCCUPIED, 1)], no_event)
    [day] = await store.days([D])
    assert (day.occupied, day.taken) == (0, 0)


async def test_fully_occupied_applied_after_a_later_vacated_leaves_the_day_open(
    store: Store,
) -> None:
    occupied = [event(ParkingLotEventKind.OCCUPIED, seq) for seq in range(1, 6)]
    await store.apply_parking_lot_events(occupied, no_event)
    await store.apply_parking_lot_events([event(ParkingLotEventKind.VACATED, 9)], no_event)
    full = event(ParkingLotEventKind.FULLY_OCCUPIED, 7, capacity=5)
    await store.apply_parking_lot_events([full], no_event)
    [day] = await store.days([D])
    assert (day.fully_occupied, day.taken, day.known_capacity) == (False, 4, 5)
    # A later FullyOccupied closes it again; an Occupied after it does not reopen it.
    await store.apply_parking_lot_events(
        [
            event(ParkingLotEventKind.FULLY_OCCUPIED, 11, capacity=5),
            event(ParkingLotEventKind.OCCUPIED, 10),
            event(ParkingLotEventKind.OCCUPIED, 12),
        ],
        no_event,
    )
    [day] = await store.days([D])
    assert (day.fully_occupied, day.taken) == (True, 6)


async def test_the_relay_removes_only_the_acknowledged_prefix(store: Store) -> None:
    """A stream that refuses a second event per subject fails the middle of three: the
    first is removed, the failed one and the one after it stay, in order."""
    namespace = store.prefix.split(":")[0]
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    name = stream_name(namespace, "community")
    try:
        await js.add_stream(
            StreamConfig(
                name=name,
                subjects=[f"{namespace}.community.>"],
                max_msgs_per_subject=1,
                discard=DiscardPolicy.NEW,
                discard_new_per_subject=True,
            )
        )
        booked, canceled = (
            booking_event("evening_space_booked"),
            booking_event("evening_booking_canceled"),
        )
        booking = EveningBooking("b", "rosa", D, BookingState.CONFIRMED, 1, 1)
        rows = [booked(booking), booked(booking), canceled(booking)]
        async with store.redis.pipeline(transaction=True) as pipe:
            for event_id, envelope in rows:
                pipe.rpush(store.prefix + "outbox", event_id)
                pipe.hset(store.prefix + "outbox:msg", event_id, envelope)
            await pipe.execute()
        relay = OutboxRelay(js, store, namespace, asyncio.Event())
        with pytest.raises(RuntimeError, match="not acknowledged"):
            await relay.publish_some()
        assert [i for i, _ in await store.outbox(10)] == [rows[1][0], rows[2][0]]
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(name)
        await nc.close()


async def test_a_dates_keys_and_bookings_expire_after_the_date(store: Store) -> None:
    await store.apply_parking_lot_events([event(ParkingLotEventKind.OCCUPIED, 1)], no_event)
    booking = EveningBooking(str(uuid.uuid4()), "rosa", D, BookingState.CONFIRMED, 1, 1)
    await store.book(booking, 5, "request-1", no_event)
    keys = [
        f"day:{D}",
        f"processed:{D}",
        f"confirmed:{D}",
        f"holder:{D}:rosa",
        f"booking:{booking.booking_id}",
    ]
    expected = store.expire_at(D) - time.time()
    assert expected > 7 * 86400
    for key in keys:
        ttl = await store.redis.ttl(store.prefix + key)
        assert abs(ttl - expected) < 5, f"{key}: TTL {ttl} s, expected {expected:.0f} s"

    # A date past retention, replayed from history, leaves nothing behind.
    old = dt.date.today() - dt.timedelta(days=store.retention_days + 2)
    replayed = ParkingLotEvent(str(uuid.uuid4()), ParkingLotEventKind.OCCUPIED, old, 0, 2)
    await store.apply_parking_lot_events([replayed], no_event)
    assert (
        await store.redis.exists(store.prefix + f"day:{old}", store.prefix + f"processed:{old}")
        == 0
    )
