"""Wiring: the store, the token check, the gRPC server, JetStream in and out, metrics, and
a graceful stop on SIGTERM (new calls refused, open watches ended, the consumer's batch
finished and acked, the outbox flushed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import redis.asyncio as redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from parking_sdk import aio_channel
from parking_sdk.v1 import community_pb2, community_pb2_grpc
from prometheus_client import start_http_server

from . import domain, events
from .auth import TokenVerifier
from .capacity import CapacityReader
from .config import Settings
from .service import CommunityService
from .store import Store
from .watch import BookingChanges

log = logging.getLogger("parking_community")

SERVICE_NAME = community_pb2.DESCRIPTOR.services_by_name["CommunityParkingService"].full_name
#: How long a stopping server lets calls in flight finish.
GRACE_SECONDS = 5.0


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """mTLS when TLS_* are set: only clients with a certificate of the CA connect (the
    gateway under MTLS=1), as the Rust services do. Read once, at start."""
    if not settings.tls_cert_file:
        return None
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())],
        root_certificates=Path(settings.tls_ca_file).read_bytes(),
        require_client_auth=True,
    )


async def _supervised(
    name: str, run: Callable[[], Awaitable[None]], stopping: asyncio.Event
) -> None:
    """Runs a background part until stopping, restarting it a second after a failure."""
    while not stopping.is_set():
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting it", name)
            await asyncio.sleep(1.0)


async def _connect_redis(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url)
    while True:
        try:
            await client.ping()
            return client
        except (redis.ConnectionError, OSError) as error:
            log.warning("Redis not reachable yet", extra={"error": str(error)})
            await asyncio.sleep(1.0)


async def serve(settings: Settings, stopping: asyncio.Event | None = None) -> None:
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info("starting", extra={"settings": settings.printable()})

    client = await _connect_redis(settings.redis_url)
    store = Store(client, settings.event_namespace, settings.retention_days)
    verifier = TokenVerifier(settings.jwks_url, settings.token_issuer, settings.token_audience)
    verifier.start()
    # No token of the service's own: each capacity read carries its caller's.
    channel = aio_channel(settings.parking_api_url)
    changes = BookingChanges(client, store.changes_channel)
    outbox_written = asyncio.Event()
    calendar = domain.Calendar(settings.time_zone, settings.booking_window_days)
    service = CommunityService(
        store, verifier, CapacityReader(channel, settings.capacity_ttl_seconds), changes, calendar
    )
    service.outbox_written = outbox_written.set

    server = grpc.aio.server()
    community_pb2_grpc.add_CommunityParkingServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    credentials = _server_credentials(settings)
    if credentials is not None:
        bound = server.add_secure_port(settings.listen_addr, credentials)
    else:
        bound = server.add_insecure_port(settings.listen_addr)
    if not bound:
        raise OSError(f"cannot listen on {settings.listen_addr}")
    host, _, port = settings.metrics_listen.rpartition(":")
    metrics_server, _ = start_http_server(int(port), addr=host or "127.0.0.1")

    async def follow_and_publish() -> None:
        nc = await events.connect(settings.nats_url)
        js = nc.jetstream()
        follower = events.ParkingLotFollower(
            js,
            store,
            settings.event_namespace,
            events.booking_event("evening_booking_withdrawn"),
            outbox_written,
        )
        relay = events.OutboxRelay(
            js, store, settings.event_namespace, outbox_written, settings.stream_replicas
        )
        try:
            await asyncio.gather(
                _supervised("ParkingLot follower", lambda: follower.run(stopping), stopping),
                _supervised("outbox relay", lambda: relay.run(stopping), stopping),
            )
        finally:
            # Acks and publishes are sent by then; close without drain's wait on the
            # pull subscription's inbox.
            with contextlib.suppress(Exception):
                await nc.flush(timeout=2)
            await nc.close()

    background = [
        asyncio.create_task(changes.run(), name="booking-changes"),
        asyncio.create_task(follow_and_publish(), name="jetstream"),
    ]
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        extra={
            "listen": settings.listen_addr,
            "metrics": settings.metrics_listen,
            "service": SERVICE_NAME,
        },
    )

    await stopping.wait()
    log.info("stopping")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    changes.close()
    await server.stop(GRACE_SECONDS)
    jetstream = background[1]
    outbox_written.set()  # the relay's last round
    try:
        await asyncio.wait_for(asyncio.shield(jetstream), timeout=GRACE_SECONDS)
    except TimeoutError:
        jetstream.cancel()
    background[0].cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await verifier.stop()
    await channel.close()
    await client.aclose()
    metrics_server.shutdown()
    log.info("stopped")
