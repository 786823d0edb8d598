"""Calls through the gateway with the SDK: a ticket reserved and watched, and typed errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from conftest import Days

import parking_sdk
from parking_sdk.testing import LocalCluster
from parking_sdk.v1 import community_pb2, reservation_pb2, status_pb2


def reserve(member_id: int, date: str) -> reservation_pb2.ReserveTicketRequest:
    return reservation_pb2.ReserveTicketRequest(
        member_id=member_id, reservation_date=date, request_id=str(uuid.uuid4())
    )


async def test_reserved_ticket_is_watched_until_occupied(cluster: LocalCluster, days: Days) -> None:
    async with cluster.aio_connect("3117") as gateway:
        ticket = await gateway.reservations.ReserveTicket(reserve(3117, days.next()))
        assert ticket.state == reservation_pb2.REQUESTED
        assert ticket.member_id == 3117

        # The watch sends the current status, then each change. The stream may start after
        # Occupied already happened (and DeliveryRequested with it), so the history tells.
        watch = status_pb2.WatchReservationStatusRequest(reservation_id=ticket.id)
        async with asyncio.timeout(30):
            async for status in gateway.statuses.WatchReservationStatus(watch):
                assert status.reservation_id == ticket.id
                seen = [event.stage for event in status.history]
                if status_pb2.STAGE_OCCUPIED in seen:
                    break
        assert status.parking_lot_id > 0
        assert status_pb2.STAGE_FULLY_OCCUPIED not in seen

        # ParkingLot's Occupied settles the reservation.
        async with asyncio.timeout(30):
            while True:
                got = await gateway.reservations.GetReservation(
                    reservation_pb2.GetReservationRequest(id=ticket.id)
                )
                if got.state != reservation_pb2.REQUESTED:
                    break
                await asyncio.sleep(0.05)
        assert got.state == reservation_pb2.CONFIRMED


async def test_second_reservation_same_day_is_already_exists(cluster: LocalCluster, days: Days) -> None:
    date = days.next()
    async with cluster.aio_connect("6") as gateway:
        await gateway.reservations.ReserveTicket(reserve(6, date))
        with pytest.raises(parking_sdk.AlreadyExists) as refused:
            await gateway.reservations.ReserveTicket(reserve(6, date))
    assert "one ticket per day" in refused.value.message
    # Still a grpc.RpcError for code written against grpc.
    assert isinstance(refused.value, grpc.RpcError)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_no_token_is_unauthenticated_for_calls_and_streams(cluster: LocalCluster, days: Days) -> None:
    async with cluster.aio_connect() as gateway:
        with pytest.raises(parking_sdk.Unauthenticated):
            await gateway.reservations.ReserveTicket(reserve(3117, days.next()))
        watch = status_pb2.WatchReservationStatusRequest(reservation_id=1)
        with pytest.raises(parking_sdk.Unauthenticated):
            async for _ in gateway.statuses.WatchReservationStatus(watch):
                pass


async def test_resident_may_not_call_reservations(cluster: LocalCluster, days: Days) -> None:
    async with cluster.aio_connect("rosa") as gateway:
        with pytest.raises(parking_sdk.PermissionDenied):
            await gateway.reservations.ReserveTicket(reserve(3117, days.next()))
        with pytest.raises(parking_sdk.PermissionDenied):
            await gateway.reservations.ListReservations(reservation_pb2.ListReservationsRequest())


async def test_bad_date_is_invalid_argument(cluster: LocalCluster) -> None:
    async with cluster.aio_connect("3117") as gateway:
        with pytest.raises(parking_sdk.InvalidArgument) as refused:
            await gateway.reservations.ReserveTicket(reserve(3117, "2026-02-30"))
    assert "2026-02-30" in refused.value.message


async def test_unknown_reservation_is_not_found(cluster: LocalCluster) -> None:
    async with cluster.aio_connect("3117") as gateway:
        with pytest.raises(parking_sdk.NotFound):
            await gateway.reservations.GetReservation(reservation_pb2.GetReservationRequest(id=987654321))


async def test_absent_community_service_is_unavailable(cluster: LocalCluster) -> None:
    # local-cluster routes community calls to a port where nothing listens in this suite.
    async with cluster.aio_connect("rosa") as gateway:
        with pytest.raises(parking_sdk.Unavailable):
            await gateway.community.ListEveningOffers(community_pb2.ListEveningOffersRequest(days=1))


def test_blocking_client_reserves_watches_and_raises_typed_errors(cluster: LocalCluster, days: Days) -> None:
    date = days.next()
    with cluster.connect("6") as gateway:
        ticket = gateway.reservations.ReserveTicket(reserve(6, date))
        watch = gateway.statuses.WatchReservationStatus(
            status_pb2.WatchReservationStatusRequest(reservation_id=ticket.id)
        )
        first = next(iter(watch))
        assert first.reservation_id == ticket.id
        watch.cancel()
        with pytest.raises(parking_sdk.AlreadyExists):
            gateway.reservations.ReserveTicket(reserve(6, date))
    with cluster.connect() as anonymous, pytest.raises(parking_sdk.Unauthenticated):
        for _ in anonymous.statuses.WatchReservationStatus(
            status_pb2.WatchReservationStatusRequest(reservation_id=ticket.id)
        ):
            pass


def test_readme_example_reserves_a_ticket(cluster: LocalCluster, days: Days) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "reserve.py"
    env = {
        **os.environ,
        "PARKING_GATEWAY": cluster.gateway_url,
        "PARKING_PASSWORD": cluster.users["3117"].password,
    }
    done = subprocess.run(
        [sys.executable, str(example), "3117", days.next()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ticket reserved: space" in done.stdout
