"""The service's settings: environment variables, each overridable by a flag."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Settings:
    listen_addr: str
    metrics_listen: str
    nats_url: str
    event_namespace: str
    stream_replicas: int
    redis_url: str
    jwks_url: str
    token_issuer: str
    token_audience: str
    parking_api_url: str
    time_zone: ZoneInfo
    booking_window_days: int
    capacity_ttl_seconds: float
    retention_days: int
    # Optional mutual TLS on the gRPC port, as the Rust services: all three or none.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""

    def printable(self) -> dict[str, str]:
        """For the start-up log line: URLs may carry passwords, so only their hosts."""
        shown = {k: str(v) for k, v in self.__dict__.items()}
        for key in ("nats_url", "redis_url"):
            shown[key] = ",".join(_without_password(u) for u in shown[key].split(","))
        return shown


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


# (flag, environment variable, default, help)
_OPTIONS = [
    ("--listen-addr", "LISTEN_ADDR", "127.0.0.1:50055", "gRPC address to serve on"),
    ("--metrics-listen", "METRICS_LISTEN", "127.0.0.1:9464", "Prometheus /metrics address"),
    ("--nats-url", "NATS_URL", "nats://127.0.0.1:4222", "NATS server(s), comma separated"),
    ("--event-namespace", "EVENT_NAMESPACE", "parking", "keeps streams and keys apart"),
    (
        "--stream-replicas",
        "STREAM_REPLICAS",
        "1",
        "copies of the community's own stream (3 on a JetStream cluster)",
    ),
    ("--redis-url", "REDIS_URL", "redis://127.0.0.1:6379/0", "the community's own store"),
    (
        "--jwks-url",
        "JWKS_URL",
        "http://127.0.0.1:8080/.well-known/jwks.json",
        "the gateway's token keys",
    ),
    ("--token-issuer", "TOKEN_ISSUER", "parking-mesh", "iss every token must carry"),
    ("--token-audience", "TOKEN_AUDIENCE", "parking-mesh", "aud every token must carry"),
    (
        "--parking-api-url",
        "PARKING_API_URL",
        "http://127.0.0.1:8080",
        "the gateway, for ParkingLotService.GetDailyAvailability",
    ),
    ("--time-zone", "PARKING_TIME_ZONE", "Asia/Seoul", "a date is a calendar day here"),
    ("--booking-window-days", "BOOKING_WINDOW_DAYS", "30", "how far ahead booking is open"),
    ("--capacity-ttl", "CAPACITY_TTL_SECONDS", "5", "how long a capacity read is reused"),
    (
        "--retention-days",
        "RETENTION_DAYS",
        "7",
        "days after a date its figures and bookings are kept in Redis",
    ),
    ("--tls-cert-file", "TLS_CERT_FILE", "", "mTLS: this server's certificate (PEM)"),
    ("--tls-key-file", "TLS_KEY_FILE", "", "mTLS: its private key (PEM)"),
    ("--tls-ca-file", "TLS_CA_FILE", "", "mTLS: the CA every client certificate must come from"),
]


def parse(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="parking-community",
        description="parking-mesh's community service: evening spaces for local residents",
    )
    for flag, env, default, help_text in _OPTIONS:
        parser.add_argument(
            flag, default=os.environ.get(env, default), help=f"{help_text} (env {env})"
        )
    args = parser.parse_args(argv)
    try:
        window = int(args.booking_window_days)
        replicas = int(args.stream_replicas)
        if not 1 <= replicas <= 5:
            raise ValueError(f"STREAM_REPLICAS must be 1 to 5, not {replicas}")
        ttl = float(args.capacity_ttl)
        retention = int(args.retention_days)
        if retention < 0:
            raise ValueError(f"RETENTION_DAYS must be 0 or more, not {retention}")
        zone = ZoneInfo(args.time_zone)
        tls = (args.tls_cert_file, args.tls_key_file, args.tls_ca_file)
        if any(tls) and not all(tls):
            raise ValueError("TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE go together")
    except (ValueError, KeyError) as error:
        parser.error(str(error))
    return Settings(
        listen_addr=args.listen_addr,
        metrics_listen=args.metrics_listen,
        nats_url=args.nats_url,
        event_namespace=args.event_namespace,
        stream_replicas=replicas,
        redis_url=args.redis_url,
        jwks_url=args.jwks_url,
        token_issuer=args.token_issuer,
        token_audience=args.token_audience,
        parking_api_url=args.parking_api_url,
        time_zone=zone,
        booking_window_days=window,
        capacity_ttl_seconds=ttl,
        retention_days=retention,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
        tls_ca_file=args.tls_ca_file,
    )
