"""One local-cluster (the four Rust services and the gateway, on free ports, a fresh event
namespace) for the whole session, and the community service run beside it as its own
process, the way `make run` and Kubernetes run it: real gRPC, real NATS, real Redis.

Everything a test leaves is removed at the end: the service's Redis keys (all under
`<namespace>:community:`) and its stream; local-cluster removes its own streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

import grpc
import nats
import nats.js.errors
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from parking_sdk import AsyncGateway
from parking_sdk.testing import LocalCluster
from parking_sdk.v1 import community_pb2, events_pb2, reservation_pb2

from parking_community.events import DURABLE, stream_name
from parking_community.store import Store

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def seoul_day(days_ahead: int) -> str:
    """A date the car park's calendar (Asia/Seoul) counts as `days_ahead` from today."""
    today = dt.datetime.now(ZoneInfo("Asia/Seoul")).date()
    return (today + dt.timedelta(days=days_ahead)).isoformat()


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, within: float = 15.0
) -> T:
    """Polls `check` until it returns something other than None (or False)."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class CommunityProcess:
    """The community service as a subprocess (python -m parking_community)."""

    def __init__(
        self, cluster: LocalCluster, log_dir: Path, port: int | None = None, **env: str
    ) -> None:
        #: The port the gateway sends community calls to, unless told otherwise.
        self.port = port or cluster.community_port
        self.metrics_port = free_port()
        self.log_path = log_dir / f"community-{self.port}.log"
        self.env = {
            **os.environ,
            "LISTEN_ADDR": f"127.0.0.1:{self.port}",
            "METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
            "EVENT_NAMESPACE": cluster.namespace,
            "NATS_URL": cluster.nats_url,
            "REDIS_URL": REDIS_URL,
            "JWKS_URL": cluster.jwks_url,
            "TOKEN_ISSUER": cluster.issuer,
            "TOKEN_AUDIENCE": cluster.audience,
            "PARKING_API_URL": cluster.gateway_url,
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> CommunityProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220 (spawns; never waits here)
                [sys.executable, "-m", "parking_community"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def serving() -> bool | None:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"community exited; see {self.log_path}")
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                except grpc.aio.AioRpcError:
                    return None
                return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

            await eventually(serving, "the community service to serve")
        return self

    async def stop(self) -> int:
        """SIGTERM, as Kubernetes stops it; returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return 0
        process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(process.wait, 20)

    def metric(self, name: str) -> float:
        """One sample's value from /metrics (0 when absent)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(name + " ") or (line.startswith(name + "{") and " " in line):
                    key, value = line.rsplit(" ", 1)
                    if key == name:
                        return float(value)
        return 0.0


@pytest.fixture(scope="session")
async def cluster() -> AsyncIterator[LocalCluster]:
    async with LocalCluster(env={"COMMUNITY_PORT": str(free_port())}) as started:
        yield started


@pytest.fixture(scope="session")
async def store(cluster: LocalCluster) -> AsyncIterator[Store]:
    client = redis.Redis.from_url(REDIS_URL)
    kept = Store(client, cluster.namespace)
    yield kept
    await kept.delete_all()
    await client.aclose()


@pytest.fixture(scope="session")
async def js(cluster: LocalCluster) -> AsyncIterator[JetStreamContext]:
    nc: NATS = await nats.connect(cluster.nats_url)
    yield nc.jetstream()
    # Its own stream, and its consumer on ParkingLot's (already gone if local-cluster
    # removed that stream first).
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_stream(stream_name(cluster.namespace, "community"))
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_consumer(stream_name(cluster.namespace, "parkinglot"), DURABLE)
    await nc.close()


@pytest.fixture(scope="session")
async def community(
    cluster: LocalCluster,
    store: Store,
    js: JetStreamContext,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[CommunityProcess]:
    """The service, running; a test that stops it starts it again before it ends."""
    service = CommunityProcess(cluster, tmp_path_factory.mktemp("logs"))
    await service.start()
    yield service
    code = await service.stop()
    assert code == 0, f"community did not stop cleanly; see {service.log_path}"


def connect(cluster: LocalCluster, user: str | None) -> AsyncGateway:
    return cluster.aio_connect(user)


async def reserve_confirmed(gateway: AsyncGateway, member_id: int, date: str) -> int:
    """An employee's ticket for `date`, once ParkingLot took a space (Occupied)."""
    reservation = await gateway.reservations.ReserveTicket(
        reservation_pb2.ReserveTicketRequest(member_id=member_id, reservation_date=date)
    )

    async def settled() -> int | None:
        now = await gateway.reservations.GetReservation(
            reservation_pb2.GetReservationRequest(id=reservation.id)
        )
        if now.state == reservation_pb2.REQUESTED:
            return None
        return int(now.state)

    state = await eventually(settled, f"reservation {reservation.id} to settle")
    assert state == reservation_pb2.CONFIRMED
    return int(reservation.id)


async def offer(gateway: AsyncGateway, date: str) -> community_pb2.EveningOffer:
    answer = await gateway.community.ListEveningOffers(
        community_pb2.ListEveningOffersRequest(from_date=date, days=1)
    )
    [one] = answer.offers
    return one


async def community_events(
    js: JetStreamContext, namespace: str
) -> list[tuple[str, community_pb2.CommunityEventEnvelope]]:
    """Every event on the community's stream so far: (subject, envelope)."""
    name = stream_name(namespace, "community")
    info = await js.stream_info(name)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(name, seq)
        assert msg.data is not None
        found.append((str(msg.subject), community_pb2.CommunityEventEnvelope.FromString(msg.data)))
    return found


def parking_lot_envelope(data: bytes) -> events_pb2.EventEnvelope:
    return events_pb2.EventEnvelope.FromString(data)
