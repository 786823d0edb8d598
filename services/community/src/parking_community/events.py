"""JetStream in and out: ParkingLot's events through a durable pull consumer, and the
community's own events published from the Redis outbox.

The consumer is this service's own (`community-evening-offers`), delivers everything from
the stream's start (so its first start replays history), takes what is ready in batches,
writes each batch to Redis (idempotent by event id), and only then acks. The relay
publishes the outbox in order with `Nats-Msg-Id = event_id` (JetStream drops a re-published
duplicate), many acks in flight, and removes the acknowledged prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Sequence

import nats
import nats.errors
import nats.js.errors
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from parking_sdk.v1 import community_pb2, events_pb2

from . import metrics
from .domain import EveningBooking, ParkingLotEvent, ParkingLotEventKind
from .store import EventFactory, Store

log = logging.getLogger(__name__)

#: The durable consumer's name: shared by replicas, so each event is handled once.
DURABLE = "community-evening-offers"
#: Events taken from JetStream at once, and publish acks kept in flight by the relay.
BATCH = 256
#: The window in which JetStream drops a re-published event (as the Rust services declare).
DUPLICATE_WINDOW_SECONDS = 120.0


def stream_name(namespace: str, context: str) -> str:
    return f"{namespace}_{context}".upper().replace("-", "_")


def subject(namespace: str, context: str, event_name: str) -> str:
    return f"{namespace}.{context}.{event_name}"


async def connect(urls: str) -> NATS:
    """A client that keeps reconnecting by itself; waits until NATS first answers."""
    servers = [url.strip() for url in urls.split(",") if url.strip()]
    while True:
        try:
            return await nats.connect(
                servers=servers,
                name="parking-community",
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=2,
            )
        except (nats.errors.NoServersError, OSError, TimeoutError) as error:
            log.warning("NATS not reachable yet", extra={"error": str(error)})
            await asyncio.sleep(1.0)


async def wait_for_stream(
    js: JetStreamContext, namespace: str, context: str, stopping: asyncio.Event
) -> str | None:
    """Waits until another context's stream exists (its owner declares it, with the
    deployment's replicas), or None if stopping first. Never creates it: a stream
    declared here would have this service's settings, not its owner's."""
    name = stream_name(namespace, context)
    waited = False
    while not stopping.is_set():
        try:
            await js.stream_info(name)
            return name
        except nats.js.errors.NotFoundError:
            if not waited:
                log.info(
                    "waiting for the stream to be declared by its owner", extra={"stream": name}
                )
                waited = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=1.0)
    return None


async def ensure_stream(js: JetStreamContext, namespace: str, context: str, replicas: int) -> str:
    """Declares the service's own `<NAMESPACE>_<CONTEXT>` as the Rust services declare
    theirs (or finds it), with STREAM_REPLICAS copies."""
    name = stream_name(namespace, context)
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=name,
                subjects=[f"{namespace}.{context}.>"],
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
                num_replicas=max(1, replicas),
            )
        )
    return name


def parse_parking_lot_event(msg: Msg) -> ParkingLotEvent | None:
    """The event that changes evening spaces, or None for one that does not. Raises
    ValueError for a message that is no EventEnvelope."""
    try:
        envelope = events_pb2.EventEnvelope.FromString(msg.data)
    except Exception as error:
        raise ValueError(f"not an EventEnvelope: {error}") from None
    event_id = envelope.event_id or (msg.headers or {}).get("Nats-Msg-Id", "")
    if not event_id:
        raise ValueError("event without an event_id")
    which = envelope.WhichOneof("payload")
    if which == "occupied":
        kind, date, capacity = (
            ParkingLotEventKind.OCCUPIED,
            envelope.occupied.reservation_date,
            0,
        )
    elif which == "vacated":
        kind, date, capacity = ParkingLotEventKind.VACATED, envelope.vacated.reservation_date, 0
    elif which == "fully_occupied":
        kind, date, capacity = (
            ParkingLotEventKind.FULLY_OCCUPIED,
            envelope.fully_occupied.reservation_date,
            envelope.fully_occupied.capacity,
        )
    else:
        return None
    return ParkingLotEvent(
        event_id, kind, dt.date.fromisoformat(date), capacity, seq=msg.metadata.sequence.stream
    )


class ParkingLotFollower:
    """Follows `<ns>.parkinglot.>` and keeps the store's dates up to date."""

    def __init__(
        self,
        js: JetStreamContext,
        store: Store,
        namespace: str,
        withdrawn_event: EventFactory,
        on_withdrawn: asyncio.Event,
    ) -> None:
        self.js = js
        self.store = store
        self.namespace = namespace
        self.withdrawn_event = withdrawn_event
        #: Set after a batch withdrew bookings: wakes the relay.
        self.on_withdrawn = on_withdrawn

    async def run(self, stopping: asyncio.Event) -> None:
        stream = await wait_for_stream(self.js, self.namespace, "parkinglot", stopping)
        if stream is None:
            return
        if not await self.store.consumer_marked():
            # A fresh or lost store: the consumer's position would skip what the store
            # never got. A new consumer replays the history (applying it is idempotent).
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.js.delete_consumer(stream, DURABLE)
                log.warning(
                    "store has no record of the consumer: replaying ParkingLot's history",
                    extra={"stream": stream, "durable": DURABLE},
                )
        sub = await self.js.pull_subscribe(
            f"{self.namespace}.parkinglot.>",
            durable=DURABLE,
            stream=stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_ack_pending=4 * BATCH,
            ),
        )
        await self.store.mark_consumer(DURABLE)
        log.info("following ParkingLot's events", extra={"stream": stream, "durable": DURABLE})
        lag = asyncio.create_task(self._report_lag(sub, stopping), name="consumer-lag")
        try:
            while not stopping.is_set():
                try:
                    msgs = await sub.fetch(BATCH, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                await self.handle(msgs)
        finally:
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def handle(self, msgs: Sequence[Msg]) -> None:
        events: list[ParkingLotEvent] = []
        ignored: list[Msg] = []
        taken: list[Msg] = []
        for msg in msgs:
            try:
                event = parse_parking_lot_event(msg)
            except ValueError as error:
                # A message no redelivery can fix: dropped, said once.
                log.error(
                    "poison event dropped", extra={"subject": msg.subject, "error": str(error)}
                )
                metrics.EVENTS.labels("unknown", "poison").inc()
                await msg.term()
                continue
            if event is None:
                ignored.append(msg)
            else:
                events.append(event)
                taken.append(msg)
        try:
            applied = await self.store.apply_parking_lot_events(events, self.withdrawn_event)
        except Exception as error:
            log.error("cannot store events; retrying them later", extra={"error": str(error)})
            for msg in taken:
                await msg.nak(delay=1.0)
            await asyncio.sleep(1.0)
            return
        for msg in taken + ignored:
            await msg.ack()
        for event in events:
            metrics.EVENTS.labels(event.kind.value, "handled").inc()
        metrics.DUPLICATES.inc(applied.duplicates)
        if ignored:
            metrics.EVENTS.labels("other", "ignored").inc(len(ignored))
        if applied.withdrawn:
            for booking in applied.withdrawn:
                log.info(
                    "evening booking withdrawn: employees took the spaces",
                    extra={"booking_id": booking.booking_id, "date": booking.date.isoformat()},
                )
            self.on_withdrawn.set()

    async def _report_lag(
        self, sub: JetStreamContext.PullSubscription, stopping: asyncio.Event
    ) -> None:
        while not stopping.is_set():
            try:
                info = await sub.consumer_info()
                metrics.CONSUMER_PENDING.set(info.num_pending or 0)
            except Exception as error:  # a lag figure is not worth a warning
                log.debug("consumer lag not read", extra={"error": str(error)})
            await asyncio.sleep(5.0)


def booking_event(kind: str) -> EventFactory:
    """An outbox event for a booking: kind is evening_space_booked,
    evening_booking_canceled or evening_booking_withdrawn."""
    payload_type = {
        "evening_space_booked": community_pb2.EveningSpaceBooked,
        "evening_booking_canceled": community_pb2.EveningBookingCanceled,
        "evening_booking_withdrawn": community_pb2.EveningBookingWithdrawn,
    }[kind]

    def make(booking: EveningBooking) -> tuple[str, bytes]:
        event_id = str(uuid.uuid4())
        occurred_at = Timestamp()
        occurred_at.FromMicroseconds(booking.updated_at_us)
        envelope = community_pb2.CommunityEventEnvelope(
            event_id=event_id, correlation_id=booking.booking_id, occurred_at=occurred_at
        )
        getattr(envelope, kind).CopyFrom(
            payload_type(
                booking_id=booking.booking_id,
                resident=booking.resident,
                date=booking.date.isoformat(),
            )
        )
        return event_id, envelope.SerializeToString()

    return make


def event_name(envelope: bytes) -> str:
    """The event's name (the subject's last token), e.g. EveningSpaceBooked."""
    message = community_pb2.CommunityEventEnvelope.FromString(envelope)
    which = message.WhichOneof("payload")
    if which is None:
        raise ValueError("community event without a payload")
    payload = message.DESCRIPTOR.fields_by_name[which].message_type
    assert payload is not None  # a oneof member of a message type
    return str(payload.name)


class OutboxRelay:
    """Publishes the outbox to `<NAMESPACE>_COMMUNITY`; woken by each change, and every
    second for what an earlier run left."""

    def __init__(
        self,
        js: JetStreamContext,
        store: Store,
        namespace: str,
        wake: asyncio.Event,
        replicas: int = 1,
    ) -> None:
        self.js = js
        self.store = store
        self.namespace = namespace
        self.wake = wake
        self.replicas = replicas

    async def run(self, stopping: asyncio.Event) -> None:
        await ensure_stream(self.js, self.namespace, "community", self.replicas)
        while True:
            try:
                while await self.publish_some():
                    pass
            except Exception as error:
                log.warning("outbox not published yet", extra={"error": str(error)})
            if stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=1.0)
            self.wake.clear()

    async def publish_some(self) -> int:
        """Publishes up to BATCH events; returns how many."""
        rows = await self.store.outbox(BATCH)
        if not rows:
            return 0
        # Sent in order on one connection; the acks are awaited together.
        acks = await asyncio.gather(
            *(
                self.js.publish(
                    subject(self.namespace, "community", event_name(envelope)),
                    envelope,
                    headers={"Nats-Msg-Id": event_id},
                )
                for event_id, envelope in rows
            ),
            return_exceptions=True,
        )
        # Only the acknowledged prefix is removed: the outbox keeps a failed event ahead
        # of those after it, and all are sent again together (those JetStream already
        # stored are dropped as duplicates by their Nats-Msg-Id). With acks in flight, an
        # event after a failed one may still reach the stream before it.
        sent: list[str] = []
        for (event_id, _), ack in zip(rows, acks, strict=True):
            if isinstance(ack, BaseException):
                await self.store.outbox_sent(sent)
                metrics.PUBLISHED.inc(len(sent))
                raise RuntimeError(
                    f"event {event_id} not acknowledged ({ack}); it and the "
                    f"{len(rows) - len(sent) - 1} after it are retried"
                )
            sent.append(event_id)
        await self.store.outbox_sent(sent)
        metrics.PUBLISHED.inc(len(sent))
        return len(sent)
