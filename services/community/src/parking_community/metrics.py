"""Prometheus figures, served on METRICS_LISTEN."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter(
    "community_events_total",
    "ParkingLot events taken from JetStream, by event and outcome",
    ["event", "outcome"],
)
DUPLICATES = Counter(
    "community_events_duplicate_total",
    "ParkingLot events delivered again and found already applied (changed nothing)",
)
CONSUMER_PENDING = Gauge(
    "community_consumer_pending",
    "ParkingLot events on the stream not yet delivered to the community's consumer",
)
PUBLISHED = Counter(
    "community_events_published_total", "Community events published from the outbox"
)
CALLS = Counter(
    "community_rpc_total", "gRPC calls handled, by method and status code", ["method", "code"]
)
