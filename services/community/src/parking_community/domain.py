"""The community's rules, with no I/O: evening offers, bookings and the withdrawal rule.

Employees come first. A date's evening spaces are the lot's capacity less the employees'
tickets (ParkingLot's Occupied less Vacated) less the residents' confirmed bookings; a day
ParkingLot called FullyOccupied has none. When employees' tickets grow into the residents'
bookings, the newest bookings of that date are withdrawn.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, replace
from zoneinfo import ZoneInfo

#: ListEveningOffers' default and largest number of dates.
DEFAULT_OFFER_DAYS = 7
MAX_OFFER_DAYS = 31


class Refusal(Exception):
    """A request the rules turn down; `kind` says which gRPC code it becomes."""

    def __init__(self, kind: RefusalKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class RefusalKind(enum.Enum):
    """Named after the gRPC status codes they become."""

    INVALID_ARGUMENT = enum.auto()
    NOT_FOUND = enum.auto()
    ALREADY_EXISTS = enum.auto()
    #: No free space for a booking (documented choice over RESOURCE_EXHAUSTED: the state
    #: of the day, not a quota of the caller's, refuses it), or a booking not confirmed.
    FAILED_PRECONDITION = enum.auto()
    PERMISSION_DENIED = enum.auto()
    UNAUTHENTICATED = enum.auto()
    UNAVAILABLE = enum.auto()


class Role(enum.Enum):
    EMPLOYEE = "employee"
    MANAGER = "manager"
    ADMIN = "admin"
    SERVICE = "service"
    RESIDENT = "resident"


@dataclass(frozen=True)
class Caller:
    """Who a verified token says is calling."""

    subject: str
    role: Role


class BookingState(enum.Enum):
    CONFIRMED = "CONFIRMED"
    CANCELED = "CANCELED"
    WITHDRAWN = "WITHDRAWN"


@dataclass(frozen=True)
class EveningBooking:
    booking_id: str
    resident: str
    date: dt.date
    state: BookingState
    #: Microseconds since the epoch; also orders a date's bookings (newest withdrawn first).
    booked_at_us: int
    updated_at_us: int

    def with_state(self, state: BookingState, at_us: int) -> EveningBooking:
        return replace(self, state=state, updated_at_us=at_us)


@dataclass(frozen=True)
class Day:
    """What the community knows of one date from ParkingLot's events and its own bookings."""

    #: Occupied less Vacated: signed, since the events of a date may be applied out of
    #: order (redeliveries, several replicas); read it through `taken`.
    occupied: int = 0
    booked: int = 0
    #: ParkingLot turned an application away for the date and has not freed a space since:
    #: its last FullyOccupied is later in the stream than its last Vacated.
    fully_occupied: bool = False
    #: The last capacity read from ParkingLot or carried by FullyOccupied, if any.
    known_capacity: int | None = None
    #: Stream sequences of the date's last FullyOccupied and last Vacated (0: none).
    fully_seq: int = 0
    vacated_seq: int = 0

    @property
    def taken(self) -> int:
        """Spaces employees hold: never below 0 while a Vacated waits for its Occupied."""
        return max(0, self.occupied)


@dataclass(frozen=True)
class EveningOffer:
    date: dt.date
    capacity: int
    occupied: int
    booked: int
    free: int
    fully_occupied: bool


class ParkingLotEventKind(enum.Enum):
    OCCUPIED = "occupied"
    VACATED = "vacated"
    FULLY_OCCUPIED = "fully_occupied"


@dataclass(frozen=True)
class ParkingLotEvent:
    """One of ParkingLot's events that changes a date's evening spaces."""

    event_id: str
    kind: ParkingLotEventKind
    date: dt.date
    #: FullyOccupied's capacity; 0 for the others.
    capacity: int = 0
    #: Its sequence in ParkingLot's stream: orders FullyOccupied and Vacated whatever
    #: order they are applied in.
    seq: int = 0


def free_spaces(day: Day, capacity: int) -> int:
    """Evening spaces left: never below 0, none on a FullyOccupied day."""
    if day.fully_occupied:
        return 0
    return max(0, capacity - day.taken - day.booked)


def offer(date: dt.date, day: Day, capacity: int) -> EveningOffer:
    return EveningOffer(
        date=date,
        capacity=capacity,
        occupied=day.taken,
        booked=day.booked,
        free=free_spaces(day, capacity),
        fully_occupied=day.fully_occupied,
    )


def apply_event(day: Day, event: ParkingLotEvent) -> Day:
    """The date after one of ParkingLot's events (the Redis store applies the same rule).
    The result does not depend on the order events are applied in: counts add up, and
    whether the day is full is decided by the stream sequences (an Occupied reopens
    nothing)."""
    if event.kind is ParkingLotEventKind.OCCUPIED:
        return replace(day, occupied=day.occupied + 1)
    if event.kind is ParkingLotEventKind.VACATED:
        vacated_seq = max(day.vacated_seq, event.seq)
        return replace(
            day,
            occupied=day.occupied - 1,
            vacated_seq=vacated_seq,
            fully_occupied=day.fully_seq > vacated_seq,
        )
    if event.seq <= day.fully_seq:  # an older FullyOccupied: its capacity is stale
        return day
    return replace(
        day,
        fully_seq=event.seq,
        known_capacity=event.capacity,
        fully_occupied=event.seq > day.vacated_seq,
    )


def bookings_to_withdraw(day: Day) -> int:
    """How many of the date's confirmed bookings employees have pushed out."""
    if day.fully_occupied:
        return day.booked
    if day.known_capacity is None:
        return 0
    return min(day.booked, max(0, day.taken + day.booked - day.known_capacity))


def check_bookable_space(date: dt.date, day: Day, capacity: int) -> None:
    if free_spaces(day, capacity) <= 0:
        reason = (
            "ParkingLot reports the day fully occupied"
            if day.fully_occupied
            else f"capacity {capacity}, {day.taken} taken by employees, {day.booked} booked"
        )
        raise Refusal(RefusalKind.FAILED_PRECONDITION, f"no free evening space on {date}: {reason}")


def check_may_book(caller: Caller) -> None:
    if caller.role is not Role.RESIDENT:
        raise Refusal(
            RefusalKind.PERMISSION_DENIED,
            f"booking an evening space needs the resident role; you are {caller.role.value}",
        )


def check_may_cancel(caller: Caller, booking: EveningBooking) -> None:
    if caller.role is Role.ADMIN:
        return
    if caller.role is Role.RESIDENT and caller.subject == booking.resident:
        return
    raise Refusal(
        RefusalKind.PERMISSION_DENIED,
        "a resident cancels their own evening bookings only (an admin may cancel any)",
    )


def check_may_watch(caller: Caller, booking: EveningBooking) -> None:
    if caller.role in (Role.MANAGER, Role.ADMIN):
        return
    if caller.role is Role.RESIDENT and caller.subject == booking.resident:
        return
    raise Refusal(
        RefusalKind.PERMISSION_DENIED,
        "an evening booking is watched by its resident, a manager or an admin",
    )


def check_cancellable(booking: EveningBooking) -> None:
    if booking.state is not BookingState.CONFIRMED:
        raise Refusal(
            RefusalKind.FAILED_PRECONDITION,
            f"booking {booking.booking_id} is already {booking.state.value.lower()}",
        )


def parse_date(field: str, value: str) -> dt.date:
    """A calendar day written YYYY-MM-DD."""
    try:
        if len(value) != 10:
            raise ValueError
        return dt.date.fromisoformat(value)
    except ValueError:
        raise Refusal(
            RefusalKind.INVALID_ARGUMENT, f"{field} {value!r} is not a date written YYYY-MM-DD"
        ) from None


@dataclass(frozen=True)
class Calendar:
    """The car park's calendar: its time zone and how far ahead booking is open."""

    time_zone: ZoneInfo
    booking_window_days: int

    def today(self, now: dt.datetime | None = None) -> dt.date:
        return (now or dt.datetime.now(dt.UTC)).astimezone(self.time_zone).date()

    def bookable_date(self, value: str, now: dt.datetime | None = None) -> dt.date:
        date = parse_date("date", value)
        today = self.today(now)
        if date < today:
            raise Refusal(
                RefusalKind.INVALID_ARGUMENT,
                f"date {value} is in the past (today is {today} in {self.time_zone.key})",
            )
        last = today + dt.timedelta(days=self.booking_window_days)
        if date > last:
            raise Refusal(
                RefusalKind.INVALID_ARGUMENT,
                f"date {value} is beyond the booking window: evening spaces can be booked "
                f"up to {self.booking_window_days} days ahead, until {last}",
            )
        return date

    def offer_dates(
        self, from_date: str, days: int, now: dt.datetime | None = None
    ) -> list[dt.date]:
        first = parse_date("from_date", from_date) if from_date else self.today(now)
        if days < 0 or days > MAX_OFFER_DAYS:
            raise Refusal(
                RefusalKind.INVALID_ARGUMENT,
                f"days must be between 0 and {MAX_OFFER_DAYS}, not {days}",
            )
        count = days or DEFAULT_OFFER_DAYS
        return [first + dt.timedelta(days=i) for i in range(count)]
