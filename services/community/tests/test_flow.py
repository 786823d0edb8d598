"""Through the gateway with the SDK, as a resident's app would: offers follow the employees'
tickets, a resident books, watches and cancels, and employees' tickets push bookings out."""

from __future__ import annotations

import asyncio

import grpc
import parking_sdk
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js import JetStreamContext
from parking_sdk.testing import LocalCluster
from parking_sdk.v1 import community_pb2, community_pb2_grpc, parking_lot_pb2, reservation_pb2

from .conftest import (
    CommunityProcess,
    community_events,
    connect,
    eventually,
    offer,
    reserve_confirmed,
    seoul_day,
)

CONFIRMED = community_pb2.EVENING_BOOKING_STATE_CONFIRMED
CANCELED = community_pb2.EVENING_BOOKING_STATE_CANCELED
WITHDRAWN = community_pb2.EVENING_BOOKING_STATE_WITHDRAWN


def book(date: str, request_id: str = "") -> community_pb2.BookEveningSpaceRequest:
    return community_pb2.BookEveningSpaceRequest(date=date, request_id=request_id)


async def test_offers_follow_the_employees_tickets(
    cluster: LocalCluster, community: CommunityProcess
) -> None:
    date = seoul_day(2)
    async with connect(cluster, "3117") as employee, connect(cluster, "6") as other:
        before = await offer(employee, date)
        assert (before.capacity, before.occupied, before.free) == (cluster.max_parking, 0, 5)
        await reserve_confirmed(employee, 3117, date)
        await reserve_confirmed(other, 6, date)

    async with connect(cluster, "rosa") as rosa:

        async def two_taken() -> community_pb2.EveningOffer | None:
            now = await offer(rosa, date)
            return now if now.occupied == 2 else None

        seen = await eventually(two_taken, "the two Occupied events to count")
        assert (seen.capacity, seen.occupied, seen.booked, seen.free) == (5, 2, 0, 3)
        assert not seen.fully_occupied
        # A week from today by default, one offer per date.
        week = await rosa.community.ListEveningOffers(community_pb2.ListEveningOffersRequest())
        assert [o.date for o in week.offers] == [seoul_day(i) for i in range(7)]


async def test_a_resident_books_watches_and_cancels(
    cluster: LocalCluster, community: CommunityProcess, js: JetStreamContext
) -> None:
    date = seoul_day(3)
    async with connect(cluster, "rosa") as rosa:
        free_before = (await offer(rosa, date)).free
        booking = await rosa.community.BookEveningSpace(book(date, "rosa-1"))
        assert (booking.resident, booking.date, booking.state) == ("rosa", date, CONFIRMED)
        after = await offer(rosa, date)
        assert (after.booked, after.free) == (1, free_before - 1)

        # The same request again returns the first booking; a new one is refused.
        again = await rosa.community.BookEveningSpace(book(date, "rosa-1"))
        assert again.booking_id == booking.booking_id
        # The same request_id for another date is a client's mistake, not a retry.
        with pytest.raises(parking_sdk.InvalidArgument, match="request_id"):
            await rosa.community.BookEveningSpace(book(seoul_day(9), "rosa-1"))
        with pytest.raises(parking_sdk.AlreadyExists, match="already holds"):
            await rosa.community.BookEveningSpace(book(date, "rosa-2"))

        watch = rosa.community.WatchEveningBooking(
            community_pb2.WatchEveningBookingRequest(booking_id=booking.booking_id)
        ).__aiter__()
        first = await asyncio.wait_for(watch.__anext__(), 5)
        assert first.state == CONFIRMED

        canceled = await rosa.community.CancelEveningBooking(
            community_pb2.CancelEveningBookingRequest(booking_id=booking.booking_id)
        )
        assert canceled.state == CANCELED
        seen = await asyncio.wait_for(watch.__anext__(), 5)
        assert (seen.booking_id, seen.state) == (booking.booking_id, CANCELED)
        # Cancelled is final: the watch ends.
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(watch.__anext__(), 5)
        assert (await offer(rosa, date)).free == free_before

        with pytest.raises(parking_sdk.FailedPrecondition, match="already canceled"):
            await rosa.community.CancelEveningBooking(
                community_pb2.CancelEveningBookingRequest(booking_id=booking.booking_id)
            )
        # Cancelled, the date is the resident's to book again.
        rebooked = await rosa.community.BookEveningSpace(book(date))
        assert rebooked.booking_id != booking.booking_id

    async def published() -> list[str] | None:
        names = [
            subject.rsplit(".", 1)[1]
            for subject, envelope in await community_events(js, cluster.namespace)
            if envelope.correlation_id == booking.booking_id
        ]
        return names if len(names) == 2 else None

    names = await eventually(published, "the booking's two events on the community stream")
    assert names == ["EveningSpaceBooked", "EveningBookingCanceled"]


async def test_refusals(cluster: LocalCluster, community: CommunityProcess) -> None:
    date = seoul_day(4)
    async with connect(cluster, None) as anonymous:
        with pytest.raises(parking_sdk.Unauthenticated):
            await anonymous.community.ListEveningOffers(community_pb2.ListEveningOffersRequest())
    # Straight to the service (not through the gateway): it checks tokens itself.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{community.port}") as channel:
        direct = community_pb2_grpc.CommunityParkingServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer not-a-jwt"),)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await direct.ListEveningOffers(
                    community_pb2.ListEveningOffersRequest(), metadata=metadata
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health and reflection are open.
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="parking.v1.CommunityParkingService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING

    async with connect(cluster, "3117") as employee:
        with pytest.raises(parking_sdk.PermissionDenied, match="resident role"):
            await employee.community.BookEveningSpace(book(date))
        assert (await offer(employee, date)).capacity == cluster.max_parking

    async with connect(cluster, "rosa") as rosa, connect(cluster, "ravi") as ravi:
        with pytest.raises(parking_sdk.InvalidArgument, match="in the past"):
            await rosa.community.BookEveningSpace(book(seoul_day(-1)))
        with pytest.raises(parking_sdk.InvalidArgument, match="YYYY-MM-DD"):
            await rosa.community.BookEveningSpace(book("2026-02-30"))
        with pytest.raises(parking_sdk.InvalidArgument, match="booking window"):
            await rosa.community.BookEveningSpace(book(seoul_day(40)))
        with pytest.raises(parking_sdk.InvalidArgument, match="days"):
            await rosa.community.ListEveningOffers(community_pb2.ListEveningOffersRequest(days=32))
        with pytest.raises(parking_sdk.InvalidArgument, match="UUID"):
            await rosa.community.CancelEveningBooking(
                community_pb2.CancelEveningBookingRequest(booking_id="42")
            )
        with pytest.raises(parking_sdk.NotFound):
            await rosa.community.CancelEveningBooking(
                community_pb2.CancelEveningBookingRequest(
                    booking_id="00000000-0000-4000-8000-000000000000"
                )
            )
        booking = await rosa.community.BookEveningSpace(book(date))
        with pytest.raises(parking_sdk.PermissionDenied, match="own evening bookings"):
            await ravi.community.CancelEveningBooking(
                community_pb2.CancelEveningBookingRequest(booking_id=booking.booking_id)
            )
        watch = ravi.community.WatchEveningBooking(
            community_pb2.WatchEveningBookingRequest(booking_id=booking.booking_id)
        )
        with pytest.raises(parking_sdk.PermissionDenied):
            async for _ in watch:
                pass

    async with connect(cluster, "manager") as manager, connect(cluster, "admin") as admin:
        # A manager may watch; an admin may cancel anyone's booking.
        watched = manager.community.WatchEveningBooking(
            community_pb2.WatchEveningBookingRequest(booking_id=booking.booking_id)
        ).__aiter__()
        assert (await asyncio.wait_for(watched.__anext__(), 5)).state == CONFIRMED
        with pytest.raises(parking_sdk.PermissionDenied):
            await manager.community.CancelEveningBooking(
                community_pb2.CancelEveningBookingRequest(booking_id=booking.booking_id)
            )
        canceled = await admin.community.CancelEveningBooking(
            community_pb2.CancelEveningBookingRequest(booking_id=booking.booking_id)
        )
        assert canceled.state == CANCELED
        assert (await asyncio.wait_for(watched.__anext__(), 5)).state == CANCELED


async def test_employees_push_bookings_out(
    cluster: LocalCluster, community: CommunityProcess, js: JetStreamContext
) -> None:
    """Capacity 2: two residents book both evening spaces; each employee's ticket then
    withdraws the newest booking, and a third application (FullyOccupied) closes the day."""
    date = seoul_day(5)
    async with connect(cluster, "admin") as admin:
        await admin.parking_lot.SetDailyCapacity(
            parking_lot_pb2.SetDailyCapacityRequest(date=date, capacity=2)
        )
    async with connect(cluster, "rosa") as rosa, connect(cluster, "ravi") as ravi:

        async def lowered() -> community_pb2.EveningOffer | None:
            # The service reuses a capacity it read for CAPACITY_TTL_SECONDS (5).
            seen = await offer(rosa, date)
            return seen if seen.capacity == 2 else None

        assert (await eventually(lowered, "the new capacity")).free == 2
        older = await rosa.community.BookEveningSpace(book(date))
        newer = await ravi.community.BookEveningSpace(book(date))
        assert (await offer(rosa, date)).free == 0

        newer_watch = ravi.community.WatchEveningBooking(
            community_pb2.WatchEveningBookingRequest(booking_id=newer.booking_id)
        ).__aiter__()
        older_watch = rosa.community.WatchEveningBooking(
            community_pb2.WatchEveningBookingRequest(booking_id=older.booking_id)
        ).__aiter__()
        assert (await asyncio.wait_for(newer_watch.__anext__(), 10)).state == CONFIRMED
        assert (await asyncio.wait_for(older_watch.__anext__(), 10)).state == CONFIRMED

        async with connect(cluster, "3117") as employee:
            await reserve_confirmed(employee, 3117, date)
        assert (await asyncio.wait_for(newer_watch.__anext__(), 10)).state == WITHDRAWN
        now = await offer(rosa, date)
        assert (now.occupied, now.booked, now.free) == (1, 1, 0)
        # Withdrawn, ravi holds nothing that day, and there is no space left to book.
        with pytest.raises(parking_sdk.FailedPrecondition, match="no free evening space"):
            await ravi.community.BookEveningSpace(book(date))

        async with connect(cluster, "6") as employee:
            await reserve_confirmed(employee, 6, date)
        assert (await asyncio.wait_for(older_watch.__anext__(), 10)).state == WITHDRAWN

        async with connect(cluster, "admin") as admin:
            # The admin applies for a member beyond the capacity: ParkingLot says FullyOccupied.
            await admin.reservations.ReserveTicket(
                reservation_pb2.ReserveTicketRequest(member_id=77, reservation_date=date)
            )

        async def closed() -> community_pb2.EveningOffer | None:
            seen = await offer(rosa, date)
            return seen if seen.fully_occupied else None

        full = await eventually(closed, "FullyOccupied to close the day")
        assert (full.capacity, full.occupied, full.booked, full.free) == (2, 2, 0, 0)

    async def withdrawn() -> set[str] | None:
        ids = {
            envelope.evening_booking_withdrawn.booking_id
            for subject, envelope in await community_events(js, cluster.namespace)
            if subject == f"{cluster.namespace}.community.EveningBookingWithdrawn"
        }
        return ids if {older.booking_id, newer.booking_id} <= ids else None

    await eventually(withdrawn, "EveningBookingWithdrawn for both bookings")


async def test_a_lowered_capacity_withdraws_bookings_at_once(
    cluster: LocalCluster, community: CommunityProcess
) -> None:
    """An admin lowers the day's capacity below the residents' bookings: the next capacity
    read withdraws the newest, with no ParkingLot event for the date."""
    date = seoul_day(10)
    async with connect(cluster, "rosa") as rosa, connect(cluster, "ravi") as ravi:
        older = await rosa.community.BookEveningSpace(book(date))
        newer = await ravi.community.BookEveningSpace(book(date))
        watch = ravi.community.WatchEveningBooking(
            community_pb2.WatchEveningBookingRequest(booking_id=newer.booking_id)
        ).__aiter__()
        assert (await asyncio.wait_for(watch.__anext__(), 10)).state == CONFIRMED
        async with connect(cluster, "admin") as admin:
            await admin.parking_lot.SetDailyCapacity(
                parking_lot_pb2.SetDailyCapacityRequest(date=date, capacity=1)
            )

        async def lowered() -> community_pb2.EveningOffer | None:
            # The service reuses a capacity it read for CAPACITY_TTL_SECONDS (5).
            seen = await offer(rosa, date)
            return seen if seen.capacity == 1 else None

        now = await eventually(lowered, "the lowered capacity")
        assert (now.occupied, now.booked, now.free) == (0, 1, 0)
        assert (await asyncio.wait_for(watch.__anext__(), 10)).state == WITHDRAWN
        still = (
            await rosa.community.WatchEveningBooking(
                community_pb2.WatchEveningBookingRequest(booking_id=older.booking_id)
            )
            .__aiter__()
            .__anext__()
        )
        assert still.state == CONFIRMED


async def test_two_residents_race_for_the_last_space(
    cluster: LocalCluster, community: CommunityProcess
) -> None:
    date = seoul_day(9)
    async with connect(cluster, "admin") as admin:
        await admin.parking_lot.SetDailyCapacity(
            parking_lot_pb2.SetDailyCapacityRequest(date=date, capacity=1)
        )
    async with connect(cluster, "rosa") as rosa, connect(cluster, "ravi") as ravi:

        async def one_space() -> community_pb2.EveningOffer | None:
            seen = await offer(rosa, date)
            return seen if seen.capacity == 1 else None

        await eventually(one_space, "capacity 1")
        results = await asyncio.gather(
            rosa.community.BookEveningSpace(book(date)),
            ravi.community.BookEveningSpace(book(date)),
            return_exceptions=True,
        )
        booked = [r for r in results if isinstance(r, community_pb2.EveningBooking)]
        refused = [r for r in results if isinstance(r, parking_sdk.FailedPrecondition)]
        assert (len(booked), len(refused)) == (1, 1), results
        seen = await offer(rosa, date)
        assert (seen.booked, seen.free) == (1, 0)
