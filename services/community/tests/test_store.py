"""The store's Lua script against a real Redis: the same rules as domain.apply_event,
whatever order a date's events are applied in."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from parking_community.domain import EveningBooking, ParkingLotEvent, ParkingLotEventKind
from parking_community.store import Store

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
D = dt.date(2026, 12, 1)


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
