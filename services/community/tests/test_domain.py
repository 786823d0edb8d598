"""The rules alone (no I/O): offers, withdrawal counts, dates, who may do what."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from zoneinfo import ZoneInfo

import pytest

from parking_community import domain
from parking_community.domain import (
    Caller,
    Day,
    ParkingLotEvent,
    ParkingLotEventKind,
    Refusal,
    RefusalKind,
    Role,
)

D = dt.date(2026, 12, 1)


def event(kind: ParkingLotEventKind, capacity: int = 0, seq: int = 0) -> ParkingLotEvent:
    return ParkingLotEvent("e", kind, D, capacity, seq)


def test_free_spaces_never_below_zero_and_none_when_fully_occupied() -> None:
    assert domain.free_spaces(Day(occupied=2, booked=1), 5) == 2
    assert domain.free_spaces(Day(occupied=5, booked=1), 5) == 0
    assert domain.free_spaces(Day(occupied=1, fully_occupied=True), 5) == 0


def test_events_move_the_day() -> None:
    day = Day()
    day = domain.apply_event(day, event(ParkingLotEventKind.OCCUPIED))
    day = domain.apply_event(day, event(ParkingLotEventKind.OCCUPIED))
    assert day.occupied == 2
    day = domain.apply_event(day, event(ParkingLotEventKind.FULLY_OCCUPIED, capacity=2, seq=3))
    assert (day.fully_occupied, day.known_capacity) == (True, 2)
    # A later freed space reopens the day; a later Occupied does not close it again.
    day = domain.apply_event(day, event(ParkingLotEventKind.VACATED, seq=4))
    assert (day.occupied, day.fully_occupied) == (1, False)
    day = domain.apply_event(day, event(ParkingLotEventKind.OCCUPIED, seq=5))
    assert (day.occupied, day.fully_occupied) == (2, False)


def test_a_vacated_before_its_occupied_is_made_up() -> None:
    day = domain.apply_event(Day(), event(ParkingLotEventKind.VACATED, seq=2))
    assert (day.occupied, day.taken) == (-1, 0)
    assert domain.offer(D, day, 5).occupied == 0
    day = domain.apply_event(day, event(ParkingLotEventKind.OCCUPIED, seq=1))
    assert (day.occupied, day.taken) == (0, 0)


def test_fully_occupied_applied_after_a_later_vacated_leaves_the_day_open() -> None:
    # In the stream: FullyOccupied (7), then Vacated (9); applied the other way round.
    day = domain.apply_event(Day(occupied=5), event(ParkingLotEventKind.VACATED, seq=9))
    day = domain.apply_event(day, event(ParkingLotEventKind.FULLY_OCCUPIED, capacity=5, seq=7))
    assert not day.fully_occupied
    assert domain.free_spaces(day, 5) == 1
    # Applied in stream order, the same result.
    same = domain.apply_event(Day(occupied=5), event(ParkingLotEventKind.FULLY_OCCUPIED, 5, 7))
    same = domain.apply_event(same, event(ParkingLotEventKind.VACATED, seq=9))
    assert (same.fully_occupied, same.occupied) == (day.fully_occupied, day.occupied)


@pytest.mark.parametrize(
    ("day", "withdraw"),
    [
        (Day(occupied=3, booked=2, known_capacity=5), 0),
        (Day(occupied=4, booked=2, known_capacity=5), 1),
        (Day(occupied=9, booked=2, known_capacity=5), 2),
        (Day(occupied=1, booked=2, fully_occupied=True, known_capacity=5), 2),
        # Without a known capacity nothing is withdrawn on a guess.
        (Day(occupied=9, booked=2), 0),
    ],
)
def test_bookings_to_withdraw(day: Day, withdraw: int) -> None:
    assert domain.bookings_to_withdraw(day) == withdraw


def test_no_space_is_failed_precondition() -> None:
    with pytest.raises(Refusal) as refused:
        domain.check_bookable_space(D, Day(occupied=5), 5)
    assert refused.value.kind is RefusalKind.FAILED_PRECONDITION


def test_dates() -> None:
    calendar = domain.Calendar(ZoneInfo("Asia/Seoul"), booking_window_days=30)
    # 20:00 UTC on 30 November is already 1 December in Seoul.
    now = dt.datetime(2026, 11, 30, 20, 0, tzinfo=dt.UTC)
    assert calendar.today(now) == D
    assert calendar.bookable_date("2026-12-31", now) == dt.date(2026, 12, 31)
    for bad in ("2026-11-30", "2027-01-01", "2026-13-01", "1.12.2026", "2026-12-1"):
        with pytest.raises(Refusal) as refused:
            calendar.bookable_date(bad, now)
        assert refused.value.kind is RefusalKind.INVALID_ARGUMENT
    assert len(calendar.offer_dates("", 0, now)) == domain.DEFAULT_OFFER_DAYS
    assert calendar.offer_dates("2026-12-05", 2, now) == [
        dt.date(2026, 12, 5),
        dt.date(2026, 12, 6),
    ]
    with pytest.raises(Refusal):
        calendar.offer_dates("", 32, now)


def test_who_may_do_what() -> None:
    rosa, ravi = Caller("rosa", Role.RESIDENT), Caller("ravi", Role.RESIDENT)
    booking = domain.EveningBooking("b", "rosa", D, domain.BookingState.CONFIRMED, 1, 1)
    domain.check_may_book(rosa)
    domain.check_may_cancel(rosa, booking)
    domain.check_may_cancel(Caller("admin", Role.ADMIN), booking)
    domain.check_may_watch(Caller("manager", Role.MANAGER), booking)
    refused_calls: list[Callable[[], None]] = [
        lambda: domain.check_may_book(Caller("3117", Role.EMPLOYEE)),
        lambda: domain.check_may_cancel(ravi, booking),
        lambda: domain.check_may_cancel(Caller("manager", Role.MANAGER), booking),
        lambda: domain.check_may_watch(ravi, booking),
        lambda: domain.check_may_watch(Caller("3117", Role.EMPLOYEE), booking),
    ]
    for refused_call in refused_calls:
        with pytest.raises(Refusal) as refused:
            refused_call()
        assert refused.value.kind is RefusalKind.PERMISSION_DENIED
    canceled = booking.with_state(domain.BookingState.CANCELED, 2)
    with pytest.raises(Refusal) as refused:
        domain.check_cancellable(canceled)
    assert refused.value.kind is RefusalKind.FAILED_PRECONDITION
