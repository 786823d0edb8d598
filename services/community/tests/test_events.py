"""Events: a redelivered ParkingLot event changes nothing; the service catches up from
history when started late; stopped, it changes nothing for the core; no readable token
keys means UNAVAILABLE, not a refusal of the caller."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import jwt
import nats.js.errors
import parking_sdk
import pytest
import redis.asyncio as redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nats.js import JetStreamContext
from parking_sdk.testing import LocalCluster
from parking_sdk.v1 import community_pb2, community_pb2_grpc, parking_lot_pb2

from parking_community.events import DURABLE, stream_name
from parking_community.store import Store

from .conftest import (
    REDIS_URL,
    CommunityProcess,
    connect,
    eventually,
    free_port,
    offer,
    reserve_confirmed,
    seoul_day,
)


async def settled(js: JetStreamContext, namespace: str) -> bool:
    """Whether the community's consumer has taken and acknowledged everything."""
    info = await js.consumer_info(stream_name(namespace, "parkinglot"), DURABLE)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_a_redelivered_event_changes_nothing(
    cluster: LocalCluster, community: CommunityProcess, js: JetStreamContext
) -> None:
    date = seoul_day(6)
    async with connect(cluster, "3117") as employee:
        await reserve_confirmed(employee, 3117, date)

        async def counted() -> community_pb2.EveningOffer | None:
            seen = await offer(employee, date)
            return seen if seen.occupied == 1 else None

        before = await eventually(counted, "the Occupied event to count")
    duplicates = community.metric("community_events_duplicate_total")

    # The same event again under another Nats-Msg-Id, so JetStream does not drop it.
    subject = f"{cluster.namespace}.parkinglot.Occupied"
    stream = stream_name(cluster.namespace, "parkinglot")
    last = await js.get_last_msg(stream, subject)
    assert last.data is not None
    await js.publish(subject, last.data, headers={"Nats-Msg-Id": str(uuid.uuid4())})

    async def handled() -> bool:
        return community.metric("community_events_duplicate_total") == duplicates + 1

    await eventually(handled, "the duplicate to be taken and recognised")

    async def acked() -> bool:
        return await settled(js, cluster.namespace)

    await eventually(acked, "the duplicate to be acknowledged")
    async with connect(cluster, "rosa") as rosa:
        assert await offer(rosa, date) == before


async def test_stopped_then_started_late(
    cluster: LocalCluster,
    community: CommunityProcess,
    store: Store,
    js: JetStreamContext,
) -> None:
    """With the service stopped and its store emptied (lost, or never deployed: its
    durable consumer is left where it was), the core works as before and community calls
    are UNAVAILABLE; started, it finds no record of its consumer in the store, replays the
    whole history, and its figures match ParkingLot's own."""
    # A watch open at SIGTERM ends cleanly (the stream finishes, no error).
    async with connect(cluster, "rosa") as rosa:
        booking = await rosa.community.BookEveningSpace(
            community_pb2.BookEveningSpaceRequest(date=seoul_day(8))
        )
        watch = rosa.community.WatchEveningBooking(
            community_pb2.WatchEveningBookingRequest(booking_id=booking.booking_id)
        ).__aiter__()
        await asyncio.wait_for(watch.__anext__(), 10)
        assert await community.stop() == 0
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(watch.__anext__(), 10)
    await store.delete_all()

    dates = [seoul_day(7), seoul_day(8)]
    async with connect(cluster, "3117") as employee, connect(cluster, "6") as other:
        for date in dates:
            await reserve_confirmed(employee, 3117, date)
        await reserve_confirmed(other, 6, dates[1])
        with pytest.raises(parking_sdk.Unavailable):
            await employee.community.ListEveningOffers(community_pb2.ListEveningOffersRequest())

    await community.start()
    async with connect(cluster, "admin") as admin:
        # Every date any test touched, from today on.
        for days_ahead in range(0, 9):
            date = seoul_day(days_ahead)
            lot = await admin.parking_lot.GetDailyAvailability(
                parking_lot_pb2.GetDailyAvailabilityRequest(date=date)
            )

            async def caught_up(
                date: str = date, lot: parking_lot_pb2.DailyAvailability = lot
            ) -> community_pb2.EveningOffer | None:
                seen = await offer(admin, date)
                return seen if seen.occupied == lot.occupied else None

            seen = await eventually(caught_up, f"{date}'s figures to match ParkingLot's")
            assert seen.capacity == lot.capacity
        assert (await offer(admin, dates[1])).occupied == 2


@pytest.fixture
async def own_namespace(cluster: LocalCluster, js: JetStreamContext) -> AsyncIterator[str]:
    """A namespace of its own for a throwaway instance, so it never joins the shared
    durable consumer (and acks events into a store no one reads); removed afterwards."""
    namespace = f"{cluster.namespace}-{uuid.uuid4().hex[:6]}"
    yield namespace
    for context in ("community", "parkinglot"):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(stream_name(namespace, context))
    client = redis.Redis.from_url(REDIS_URL)
    await Store(client, namespace).delete_all()
    await client.aclose()


async def test_parking_lots_stream_is_never_declared_by_community(
    cluster: LocalCluster,
    js: JetStreamContext,
    own_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The stream is ParkingLot's (declared with the deployment's STREAM_REPLICAS): started
    first, community waits for it, and declares only its own."""
    instance = CommunityProcess(
        cluster,
        tmp_path_factory.mktemp("first"),
        port=free_port(),
        EVENT_NAMESPACE=own_namespace,
    )
    await instance.start()
    try:

        async def waiting() -> bool:
            return "waiting for the stream to be declared" in instance.log_path.read_text()

        await eventually(waiting, "the service to wait for ParkingLot's stream")

        async def own_declared() -> bool | None:
            try:
                await js.stream_info(stream_name(own_namespace, "community"))
            except nats.js.errors.NotFoundError:
                return None
            return True

        await eventually(own_declared, "the community's own stream")
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info(stream_name(own_namespace, "parkinglot"))
    finally:
        assert await instance.stop() == 0


async def test_no_token_keys_is_unavailable(
    cluster: LocalCluster,
    community: CommunityProcess,
    own_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A second instance whose JWKS_URL answers nothing.
    keyless = CommunityProcess(
        cluster,
        tmp_path_factory.mktemp("keyless"),
        port=free_port(),
        EVENT_NAMESPACE=own_namespace,
        JWKS_URL=f"http://127.0.0.1:{free_port()}/.well-known/jwks.json",
    )
    await keyless.start()
    try:
        token = await cluster.tokens("rosa").atoken()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{keyless.port}") as channel:
            direct = community_pb2_grpc.CommunityParkingServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await direct.ListEveningOffers(
                    community_pb2.ListEveningOffersRequest(),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "token keys" in (refused.value.details() or "")
    finally:
        assert await keyless.stop() == 0


async def test_store_down_is_unavailable(
    cluster: LocalCluster,
    community: CommunityProcess,
    own_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A second instance on a Redis of its own, which then stops: calls say UNAVAILABLE."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server binary to start a Redis of our own")
    port = free_port()
    redis_server = subprocess.Popen(  # noqa: ASYNC220 (spawns; never waits here)
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    instance = CommunityProcess(
        cluster,
        tmp_path_factory.mktemp("storeless"),
        port=free_port(),
        EVENT_NAMESPACE=own_namespace,
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
    )
    try:
        await instance.start()
        redis_server.terminate()
        await asyncio.to_thread(redis_server.wait, 10)
        token = await cluster.tokens("rosa").atoken()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{instance.port}") as channel:
            direct = community_pb2_grpc.CommunityParkingServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await direct.ListEveningOffers(
                    community_pb2.ListEveningOffersRequest(),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=20,
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Redis" in (refused.value.details() or "")
    finally:
        redis_server.kill()
        await asyncio.to_thread(redis_server.wait, 10)
        assert await instance.stop() == 0


async def test_a_caller_parking_lot_refuses_gets_the_refusal(
    cluster: LocalCluster,
    own_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A token this instance trusts (its JWKS_URL serves a key of the test's own) but the
    gateway does not: ParkingLot's refusal is passed on, not answered from the capacity
    the store knows (that fallback is for ParkingLot being unreachable)."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": "test-own-key",
        "x": base64.urlsafe_b64encode(public).rstrip(b"=").decode(),
    }
    body = json.dumps({"keys": [jwk]}).encode()

    class Keys(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    keys = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    threading.Thread(target=keys.serve_forever, daemon=True).start()
    date = seoul_day(2)
    client = redis.Redis.from_url(REDIS_URL)
    await client.hset(f"{own_namespace}:community:day:{date}", "capacity", 5)
    await client.aclose()
    instance = CommunityProcess(
        cluster,
        tmp_path_factory.mktemp("own-keys"),
        port=free_port(),
        EVENT_NAMESPACE=own_namespace,
        JWKS_URL=f"http://127.0.0.1:{keys.server_port}/.well-known/jwks.json",
    )
    try:
        await instance.start()
        now = int(time.time())
        token = jwt.encode(
            {
                "iss": cluster.issuer,
                "aud": cluster.audience,
                "sub": "rosa",
                "role": "resident",
                "iat": now,
                "exp": now + 300,
            },
            key,
            algorithm="EdDSA",
            headers={"kid": "test-own-key"},
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{instance.port}") as channel:
            direct = community_pb2_grpc.CommunityParkingServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await direct.ListEveningOffers(
                    community_pb2.ListEveningOffersRequest(from_date=date, days=1),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "ParkingLot" in (refused.value.details() or "")
    finally:
        keys.shutdown()
        keys.server_close()
        assert await instance.stop() == 0
