"""Checks every caller's bearer token itself, against the gateway's published keys.

Zero trust: the gateway passes the caller's token on and this service verifies it (EdDSA
over Ed25519, issuer and audience as configured). The JWK set is read at start, again at
least every `refresh_seconds`, and at once when a token names a key not seen yet (at most
every 0.5 s, so a stream of forged kids cannot hammer the gateway).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from typing import Any

import jwt

from .domain import Caller, Refusal, RefusalKind, Role

log = logging.getLogger(__name__)

#: The least time between two reads of the key set prompted by unknown kids.
MIN_REFETCH_GAP = 0.5
#: Clock skew tolerated on exp/nbf (the Rust services allow the same).
LEEWAY_SECONDS = 5


class TokenVerifier:
    def __init__(
        self, jwks_url: str, issuer: str, audience: str, refresh_seconds: float = 60.0
    ) -> None:
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.refresh_seconds = refresh_seconds
        #: kid -> public key; replaced whole on each successful read.
        self._keys: dict[str, jwt.PyJWK] = {}
        #: monotonic time of the last read attempt, for the 0.5 s gap.
        self._last_fetch = -MIN_REFETCH_GAP
        #: One read at a time; callers that arrive meanwhile share its result.
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop(), name="jwks-refresh")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _refresh_loop(self) -> None:
        while True:
            await self.refresh(force=True)
            # Retry soon while no key is known: every call is refused until then.
            await asyncio.sleep(self.refresh_seconds if self._keys else 1.0)

    async def refresh(self, force: bool = False) -> None:
        async with self._lock:
            if not force and time.monotonic() - self._last_fetch < MIN_REFETCH_GAP:
                return
            self._last_fetch = time.monotonic()
            try:
                document = await asyncio.to_thread(_get_json, self.jwks_url)
                keys = _parse_jwks(document)
            except Exception as error:  # keep the keys we have; say why once per read
                log.warning(
                    "cannot read the token keys", extra={"url": self.jwks_url, "error": str(error)}
                )
                return
            if keys.keys() != self._keys.keys():
                log.info("token keys read", extra={"kids": sorted(keys)})
            self._keys = keys

    async def verify(self, authorization: str | None) -> Caller:
        """The caller `authorization` ("Bearer <token>") proves, or a Refusal:
        UNAUTHENTICATED for a missing or bad token, UNAVAILABLE while no key is readable."""
        token = _bearer(authorization)
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise _unauthenticated("the access token is not a JWT") from None
        if not isinstance(kid, str):
            raise _unauthenticated("the access token names no signing key (kid)")
        if kid not in self._keys:
            await self.refresh()
        if not self._keys:
            raise Refusal(
                RefusalKind.UNAVAILABLE,
                "the gateway's token keys cannot be read yet; retry in a moment",
            )
        key = self._keys.get(kid)
        if key is None:
            raise _unauthenticated("the access token was signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=["EdDSA"],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthenticated("access token expired; log in again") from None
        except jwt.PyJWTError as error:
            raise _unauthenticated(f"invalid access token: {error}") from None
        try:
            role = Role(claims.get("role"))
        except ValueError:
            raise _unauthenticated("the access token carries no known role") from None
        return Caller(subject=str(claims["sub"]), role=role)


def _unauthenticated(message: str) -> Refusal:
    return Refusal(RefusalKind.UNAUTHENTICATED, message)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise _unauthenticated(
            "missing access token: send `authorization: Bearer <token>` "
            "(get one at POST /oauth2/token)"
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthenticated("the authorization header is not `Bearer <token>`")
    return token.strip()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=3) as answer:  # noqa: S310 (configured URL)
        return json.load(answer)


def _parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in document.get("keys", []):
        kid = jwk.get("kid")
        if isinstance(kid, str) and jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            keys[kid] = jwt.PyJWK(jwk, algorithm="EdDSA")
    return keys
