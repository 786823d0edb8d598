"""Catch-up bench (not part of `make test`): how fast the community service replays
ParkingLot's history on a cold start, and how many events per second it follows after.

It publishes `--events` ParkingLot events (Occupied, with a Vacated for every fourth, over
`--dates` dates) to a fresh namespace's stream, starts the service (`python -m
parking_community`, its own process, as deployed) with nothing in Redis and no consumer,
and times it until every event is applied; then publishes `--steady` more while it runs.
It checks the counters against the history and removes its stream and keys at the end.

    var/community-venv/bin/python services/community/bench/catchup.py

Needs NATS (NATS_URL, default nats://127.0.0.1:4222) and Redis (REDIS_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter

import nats
import redis.asyncio as redis
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext
from parking_sdk.v1 import events_pb2

from parking_community.events import ensure_stream, stream_name
from parking_community.store import Store

#: Publish acks kept in flight while filling the stream.
IN_FLIGHT = 512


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def history(count: int, dates: int, first: int = 0) -> list[tuple[str, bytes, str]]:
    """(subject suffix, envelope, date) for `count` events: per date, Occupied, Occupied,
    Occupied, Vacated, ... so the counts stay above zero."""
    start = dt.date(2027, 1, 1)
    stamp = Timestamp()
    stamp.GetCurrentTime()
    events = []
    for i in range(first, first + count):
        date = (start + dt.timedelta(days=i % dates)).isoformat()
        round_ = i // dates
        envelope = events_pb2.EventEnvelope(
            event_id=str(uuid.uuid4()), correlation_id=str(i), occurred_at=stamp
        )
        if round_ % 4 == 3:
            envelope.vacated.CopyFrom(
                events_pb2.Vacated(reservation_id=i, member_id=i, reservation_date=date)
            )
            name = "Vacated"
        else:
            envelope.occupied.CopyFrom(
                events_pb2.Occupied(
                    reservation_id=i, member_id=i, reservation_date=date, parking_lot_id=i
                )
            )
            name = "Occupied"
        events.append((name, envelope.SerializeToString(), date))
    return events


async def publish(
    js: JetStreamContext, namespace: str, events: list[tuple[str, bytes, str]]
) -> float:
    """Publishes with IN_FLIGHT acks outstanding; returns the seconds it took."""
    started = time.perf_counter()
    for i in range(0, len(events), IN_FLIGHT):
        await asyncio.gather(
            *(
                js.publish(f"{namespace}.parkinglot.{name}", data)
                for name, data, _ in events[i : i + IN_FLIGHT]
            )
        )
    return time.perf_counter() - started


def expected(events: list[tuple[str, bytes, str]]) -> Counter[str]:
    occupied: Counter[str] = Counter()
    for name, _, date in events:
        occupied[date] += 1 if name == "Occupied" else -1
    return occupied


async def applied(client: redis.Redis, store: Store, dates: list[str]) -> int:
    """Event ids in the dates' processed sets."""
    async with client.pipeline(transaction=False) as pipe:
        for date in dates:
            pipe.scard(f"{store.prefix}processed:{date}")
        return sum(int(n) for n in await pipe.execute())


async def wait_applied(
    client: redis.Redis, store: Store, dates: list[str], count: int, within: float
) -> float:
    """Seconds until the dates' processed sets hold `count` event ids."""
    started = time.perf_counter()
    while (done := await applied(client, store, dates)) < count:
        if time.perf_counter() - started > within:
            raise TimeoutError(f"only {done} of {count} applied")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--dates", type=int, default=365)
    parser.add_argument("--steady", type=int, default=20_000)
    args = parser.parse_args()
    nats_url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = "bench" + uuid.uuid4().hex[:8]

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    client = redis.Redis.from_url(redis_url)
    store = Store(client, namespace)
    process: subprocess.Popen[bytes] | None = None
    try:
        await ensure_stream(js, namespace, "parkinglot", 1)
        past = history(args.events, args.dates)
        seconds = await publish(js, namespace, past)
        print(
            f"published {len(past)} past events in {seconds:.1f} s ({len(past) / seconds:,.0f}/s)"
        )

        env = {
            **os.environ,
            "EVENT_NAMESPACE": namespace,
            "NATS_URL": nats_url,
            "REDIS_URL": redis_url,
            "LISTEN_ADDR": f"127.0.0.1:{free_port()}",
            "METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        }
        started = time.perf_counter()
        process = subprocess.Popen(  # noqa: ASYNC220 (spawns; never waits here)
            [sys.executable, "-m", "parking_community"], env=env, stderr=subprocess.DEVNULL
        )
        dates = sorted({date for _, _, date in past})
        await wait_applied(client, store, dates, len(past), within=600)
        catch_up = time.perf_counter() - started
        print(
            f"cold start: {len(past)} events applied {catch_up:.2f} s after the process "
            f"started ({len(past) / catch_up:,.0f} events/s, start-up included)"
        )
        days = await store.days([dt.date.fromisoformat(d) for d in sorted(expected(past))])
        want = expected(past)
        assert [d.occupied for d in days] == [want[d] for d in sorted(want)], "counts differ"
        print(f"checked: {len(want)} dates' occupied counts match the history")

        if args.steady:
            more = history(args.steady, args.dates, first=args.events)
            started = time.perf_counter()
            await publish(js, namespace, more)
            await wait_applied(client, store, dates, len(past) + len(more), within=600)
            steady = time.perf_counter() - started
            print(
                f"steady state: {len(more)} events published and applied in {steady:.2f} s "
                f"({len(more) / steady:,.0f} events/s end to end)"
            )
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        await store.delete_all()
        for context in ("parkinglot", "community"):
            try:
                await js.delete_stream(stream_name(namespace, context))
            except Exception as error:
                print(f"stream {context} not deleted: {error}")
        await client.aclose()
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
