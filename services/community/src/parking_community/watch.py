"""Tells WatchEveningBooking streams when their booking changed.

Every change to a booking publishes its id on the store's Redis channel (in the same MULTI
as the change), so a booking changed by any replica reaches every replica's watchers. One
subscription per process fans the ids out to the streams watching them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator

import redis.asyncio as redis

log = logging.getLogger(__name__)


class BookingChanges:
    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._redis = client
        self._channel = channel
        #: booking id -> the queues of the streams watching it. A queue gets True for "read
        #: the booking again" and False for "the service is stopping".
        self._watchers: dict[str, set[asyncio.Queue[bool]]] = defaultdict(set)
        self._closed = False

    @contextlib.contextmanager
    def watch(self, booking_id: str) -> Iterator[asyncio.Queue[bool]]:
        queue: asyncio.Queue[bool] = asyncio.Queue()
        if self._closed:
            queue.put_nowait(False)
        self._watchers[booking_id].add(queue)
        try:
            yield queue
        finally:
            watchers = self._watchers.get(booking_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[booking_id]

    def close(self) -> None:
        """Ends every open watch (graceful shutdown)."""
        self._closed = True
        for watchers in self._watchers.values():
            for queue in watchers:
                queue.put_nowait(False)

    def _wake(self, booking_id: str | None) -> None:
        targets = (
            self._watchers.get(booking_id, set())
            if booking_id is not None
            else {q for watchers in self._watchers.values() for q in watchers}
        )
        for queue in targets:
            queue.put_nowait(True)

    async def run(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    # Anything changed while unsubscribed: every watcher reads again.
                    self._wake(None)
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=5.0
                        )
                        if message and message.get("type") == "message":
                            data = message["data"]
                            self._wake(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("booking changes unsubscribed; retrying", extra={"error": str(error)})
                await asyncio.sleep(1.0)
