"""TokenSource against the gateway's real /oauth2/token endpoint."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from parking_sdk import Token, TokenError, TokenSource, Unauthenticated, connect
from parking_sdk.testing import LocalCluster
from parking_sdk.v1 import parking_lot_pb2


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


class FakeClock:
    """Seconds that move only when told: a token can be declared near expiry at once."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingSource(TokenSource):
    """A TokenSource that counts its requests to the real endpoint."""

    fetches = 0

    def fetch(self) -> Token:
        self.fetches += 1
        return super().fetch()


def test_password_grant_gives_a_token_for_that_person(cluster: LocalCluster) -> None:
    tokens = cluster.tokens("3117")
    token = tokens.token()
    assert claims(token)["sub"] == "3117"
    assert claims(token)["role"] == "employee"
    assert claims(token)["iss"] == cluster.issuer
    assert tokens.current is not None
    assert tokens.current.lifetime > 60
    # Cached: the same token until it nears its expiry.
    assert tokens.token() == token


def test_wrong_password_is_a_token_error(cluster: LocalCluster) -> None:
    tokens = TokenSource.password(cluster.token_url, "3117", "not-the-password")
    with pytest.raises(TokenError) as refused:
        tokens.token()
    assert refused.value.error == "invalid_grant"
    assert refused.value.http_status == 400
    assert "not-the-password" not in str(refused.value)


def test_a_token_near_expiry_is_refreshed_from_the_endpoint(cluster: LocalCluster) -> None:
    clock = FakeClock()
    tokens = CountingSource.password(
        cluster.token_url, "rosa", cluster.users["rosa"].password, refresh_margin=30, clock=clock
    )
    assert isinstance(tokens, CountingSource)
    with connect(cluster.gateway, tokens) as gateway:
        request = parking_lot_pb2.GetDailyAvailabilityRequest(date="2026-12-24")
        gateway.parking_lot.GetDailyAvailability(request)
        first = tokens.current
        assert first is not None
        assert tokens.fetches == 1

        # Still outside the refresh margin: the cached token is used.
        clock.now = first.expires_at - 31
        gateway.parking_lot.GetDailyAvailability(request)
        assert tokens.current is first
        assert tokens.fetches == 1

        # Inside the margin: the next call fetches a new token first, and it is accepted.
        clock.now = first.expires_at - 29
        answer = gateway.parking_lot.GetDailyAvailability(request)
        assert answer.capacity == cluster.max_parking
        second = tokens.current
        assert second is not None
        assert second is not first
        assert second.obtained_at == clock.now
        assert tokens.fetches == 2


class FailingAfterFirst(TokenSource):
    """A TokenSource whose endpoint refuses every request after the first."""

    fetches = 0

    def fetch(self) -> Token:
        self.fetches += 1
        if self.fetches > 1:
            raise TokenError("token endpoint unreachable: refresh refused for the test")
        return super().fetch()


def test_a_failed_refresh_keeps_the_old_token_until_it_expires(cluster: LocalCluster) -> None:
    clock = FakeClock()
    tokens = FailingAfterFirst.password(
        cluster.token_url, "rosa", cluster.users["rosa"].password, refresh_margin=30, clock=clock
    )
    first = tokens.token()
    current = tokens.current
    assert current is not None
    # Inside the margin the refresh fails, yet the token still valid is handed out (and the
    # server still takes it).
    clock.now = current.expires_at - 10
    assert tokens.token() == first
    with connect(cluster.gateway, tokens) as gateway:
        request = parking_lot_pb2.GetDailyAvailabilityRequest(date="2026-12-24")
        assert gateway.parking_lot.GetDailyAvailability(request).capacity == cluster.max_parking
    # Once it has expired, the failure is the caller's.
    clock.now = current.expires_at + 1
    with pytest.raises(TokenError):
        tokens.token()


async def test_concurrent_callers_share_one_fetch(cluster: LocalCluster) -> None:
    tokens = CountingSource.password(cluster.token_url, "6", cluster.users["6"].password)
    assert isinstance(tokens, CountingSource)
    got = await asyncio.gather(*(tokens.atoken() for _ in range(20)))
    assert len(set(got)) == 1
    assert tokens.fetches == 1
    assert claims(got[0])["sub"] == "6"


def test_client_credentials_grant_gives_a_program_its_token(cluster: LocalCluster) -> None:
    # local-cluster's parking-lot account: the secret is in the file it gives the service.
    secret = (cluster.folder / "parking-lot.secret").read_text().strip()
    token = TokenSource.client_credentials(cluster.token_url, "parking-lot", secret).token()
    assert claims(token)["sub"] == "client:parking-lot"
    assert claims(token)["role"] == "service"

    wrong = TokenSource.client_credentials(cluster.token_url, "parking-lot", "not-the-secret")
    with pytest.raises(TokenError) as refused:
        wrong.token()
    assert refused.value.error == "invalid_client"
    assert refused.value.http_status == 401


class RefusedFirst(CountingSource):
    """Hands out a token the servers refuse first (as after a key rotation), then real ones."""

    def fetch(self) -> Token:
        token = super().fetch()
        if self.fetches == 1:
            return Token("not.a-valid.token", expires_at=token.expires_at, obtained_at=token.obtained_at)
        return token


def test_a_refused_token_is_dropped_and_the_next_call_fetches_a_new_one(cluster: LocalCluster) -> None:
    tokens = RefusedFirst.password(cluster.token_url, "rosa", cluster.users["rosa"].password)
    assert isinstance(tokens, RefusedFirst)
    request = parking_lot_pb2.GetDailyAvailabilityRequest(date="2026-12-24")
    with connect(cluster.gateway, tokens) as gateway:
        with pytest.raises(Unauthenticated):
            gateway.parking_lot.GetDailyAvailability(request)
        assert tokens.current is None
        assert gateway.parking_lot.GetDailyAvailability(request).capacity == cluster.max_parking
    assert tokens.fetches == 2
