"""Tokens from the gateway's OAuth2 endpoint (``POST /oauth2/token``), cached and refreshed.

People use the password grant (:meth:`TokenSource.password`), programs the
client-credentials grant (:meth:`TokenSource.client_credentials`). A source keeps its token
and fetches a new one ``refresh_margin`` seconds before the old one expires, so a call never
leaves with a token about to lapse.

The HTTP request uses the standard library's urllib: one request per token lifetime (15
minutes by default) does not justify an HTTP client dependency, and urllib keeps the SDK's
dependencies to grpcio and protobuf. The async path runs it in a worker thread.

One ``threading.Lock`` guards the fetch, so concurrent callers (threads, or coroutines on any
event loop via :meth:`TokenSource.atoken`) share one request instead of each sending one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass


class TokenError(Exception):
    """The token endpoint refused (``error`` is its OAuth2 error code) or could not be reached."""

    def __init__(self, message: str, *, error: str = "", http_status: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.http_status = http_status


@dataclass(frozen=True)
class Token:
    """An access token and when it stops being good, on the source's clock."""

    access_token: str
    expires_at: float
    obtained_at: float

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at


class TokenSource:
    """Fetches, caches and refreshes a bearer token for one identity.

    ``clock`` gives seconds on a monotonic scale (``time.monotonic`` by default); tests
    inject one to declare a token near its expiry without waiting.
    """

    def __init__(
        self,
        token_url: str,
        form: dict[str, str],
        *,
        basic_auth: tuple[str, str] | None = None,
        refresh_margin: float = 60.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if urllib.parse.urlsplit(token_url).scheme not in ("http", "https"):
            raise ValueError(f"token_url must be http:// or https://, not {token_url!r}")
        self.token_url = token_url
        self._form = form
        self._basic_auth = basic_auth
        self.refresh_margin = refresh_margin
        self.timeout = timeout
        self.clock = clock
        # The token in use; replaced whole, so readers need no lock.
        self._token: Token | None = None
        # Held while fetching, so concurrent callers wait for one request.
        self._lock = threading.Lock()

    @classmethod
    def password(
        cls,
        token_url: str,
        username: str,
        password: str,
        *,
        refresh_margin: float = 60.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> TokenSource:
        """A person's token (password grant): employees, the manager, admins, residents."""
        form = {"grant_type": "password", "username": username, "password": password}
        return cls(token_url, form, refresh_margin=refresh_margin, timeout=timeout, clock=clock)

    @classmethod
    def client_credentials(
        cls,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        refresh_margin: float = 60.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> TokenSource:
        """A program's token (client-credentials grant, secret sent with HTTP Basic)."""
        return cls(
            token_url,
            {"grant_type": "client_credentials"},
            basic_auth=(client_id, client_secret),
            refresh_margin=refresh_margin,
            timeout=timeout,
            clock=clock,
        )

    @property
    def current(self) -> Token | None:
        """The cached token, if one was fetched (it may be stale)."""
        return self._token

    def _fresh(self, token: Token | None) -> bool:
        if token is None:
            return False
        # Never refresh more often than half the token's lifetime, whatever the margin.
        margin = min(self.refresh_margin, token.lifetime / 2)
        return self.clock() < token.expires_at - margin

    def token(self) -> str:
        """A valid access token, fetched only when the cached one is missing or near expiry."""
        token = self._token
        if self._fresh(token):
            assert token is not None
            return token.access_token
        with self._lock:
            # Another caller may have refreshed it while this one waited.
            if not self._fresh(self._token):
                try:
                    self._token = self.fetch()
                except TokenError:
                    # A refresh ahead of expiry that failed: the old token still works
                    # until it expires, and the next call tries the endpoint again.
                    old = self._token
                    if old is None or self.clock() >= old.expires_at:
                        raise
            assert self._token is not None
            return self._token.access_token

    async def atoken(self) -> str:
        """:meth:`token` for asyncio: the cached token at once, a fetch in a worker thread."""
        token = self._token
        if self._fresh(token):
            assert token is not None
            return token.access_token
        return await asyncio.to_thread(self.token)

    def invalidate(self, access_token: str | None = None) -> None:
        """Forgets the cached token (e.g. after the server refused it). With
        `access_token`, only if that is still the cached one: a token another caller has
        just fetched is kept."""
        with self._lock:
            if access_token is None or (self._token is not None and self._token.access_token == access_token):
                self._token = None

    def fetch(self) -> Token:
        """Asks the endpoint for a new token (always a request; prefer :meth:`token`)."""
        body = urllib.parse.urlencode(self._form).encode()
        # The scheme was checked in __init__ (http or https only).
        request = urllib.request.Request(self.token_url, data=body, method="POST")  # noqa: S310
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        request.add_header("Accept", "application/json")
        if self._basic_auth is not None:
            # RFC 6749 2.3.1: each part form-url-encoded before base64.
            pair = ":".join(urllib.parse.quote(part, safe="") for part in self._basic_auth)
            request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
        started = self.clock()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                answer = json.loads(response.read())
        except urllib.error.HTTPError as refused:
            raise _refusal(refused) from None
        except (urllib.error.URLError, OSError) as failed:
            raise TokenError(f"token endpoint {self.token_url} unreachable: {failed}") from failed
        try:
            access_token = str(answer["access_token"])
            expires_in = float(answer["expires_in"])
        except (KeyError, TypeError, ValueError) as bad:
            raise TokenError(f"token endpoint answered without access_token/expires_in: {bad}") from bad
        # Counted from before the request: the token can only expire later than this says.
        return Token(access_token, expires_at=started + expires_in, obtained_at=started)


def _refusal(refused: urllib.error.HTTPError) -> TokenError:
    """The endpoint's OAuth2 error ({error, error_description}) as a TokenError; never
    includes the request, which holds the password or secret."""
    error, description = "", ""
    try:
        body = json.loads(refused.read())
        error = str(body.get("error", ""))
        description = str(body.get("error_description", ""))
    except (ValueError, OSError, AttributeError):
        pass
    text = f"token endpoint refused ({refused.code}): {error or 'error'}"
    if description:
        text += f": {description}"
    return TokenError(text, error=error, http_status=refused.code)
