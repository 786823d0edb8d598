"""Channels to the gateway with the bearer token attached, typed errors, and typed clients.

:func:`aio_connect` (asyncio) and :func:`connect` (blocking) give a :class:`AsyncGateway` /
:class:`Gateway`: the channel plus one generated stub per service. Every call made through
them carries ``authorization: Bearer <token>`` from a :class:`~parking_sdk.tokens.TokenSource`
(fetched and refreshed as needed) and raises :mod:`parking_sdk.errors` exceptions instead of
raw ``grpc.RpcError``; server streams raise them from the iteration. (The contract has no
client-streaming method, so only unary calls and server streams are intercepted.)

The token goes in client interceptors rather than call credentials: gRPC refuses call
credentials on an insecure channel, and a local gateway is plain HTTP/2. Use TLS
(``https://`` targets or ``credentials=``) for anything beyond one machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc
import grpc.aio

from parking_sdk.errors import Unauthenticated, from_rpc_error
from parking_sdk.tokens import TokenSource
from parking_sdk.v1 import (
    community_pb2_grpc,
    delivery_pb2_grpc,
    parking_lot_pb2_grpc,
    reservation_pb2_grpc,
    status_pb2_grpc,
)

ChannelOptions = Sequence[tuple[str, Any]]

AUTHORIZATION = "authorization"


def _target(target: str) -> tuple[str, bool]:
    """``host:port`` and whether to use TLS, from ``host:port``, ``http://..`` or ``https://..``."""
    for scheme, secure in (("https://", True), ("http://", False)):
        if target.startswith(scheme):
            return target[len(scheme) :].rstrip("/"), secure
    return target, False


def _with_token(metadata: Any, token: str | None) -> list[tuple[str, str | bytes]]:
    items: list[tuple[str, str | bytes]] = list(metadata or ())
    if token is not None and not any(key.lower() == AUTHORIZATION for key, _ in items):
        items.append((AUTHORIZATION, f"Bearer {token}"))
    return items


def _forget_refused(tokens: TokenSource | None, error: Exception, sent: str | None = None) -> None:
    # A refused token (keys rotated, revoked) is dropped, so the next call fetches a new one;
    # when the token sent is known, only that one (another caller may have a newer one).
    if tokens is not None and isinstance(error, Unauthenticated):
        tokens.invalidate(sent)


# --- asyncio ---------------------------------------------------------------------------------


def _aio_details(details: grpc.aio.ClientCallDetails, token: str | None) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*_with_token(details.metadata, token)),
        details.credentials,
        details.wait_for_ready,
    )


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, tokens: TokenSource | None) -> None:
        self._tokens = tokens

    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        token = await self._tokens.atoken() if self._tokens else None
        details = _aio_details(client_call_details, token)
        call = await continuation(details, request)
        try:
            return await call
        except grpc.RpcError as failed:
            error = from_rpc_error(failed)
            _forget_refused(self._tokens, error, token)
            raise error from None


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, tokens: TokenSource | None) -> None:
        self._tokens = tokens

    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        token = await self._tokens.atoken() if self._tokens else None
        details = _aio_details(client_call_details, token)
        call = await continuation(details, request)
        tokens = self._tokens

        async def responses() -> AsyncIterator[Any]:
            try:
                async for response in call:
                    yield response
            except grpc.RpcError as failed:
                error = from_rpc_error(failed)
                _forget_refused(tokens, error, token)
                raise error from None

        return responses()


def aio_channel(
    target: str,
    tokens: TokenSource | None = None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions = (),
) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (``host:port``, ``http://host:port`` or
    ``https://host:port``) whose calls carry ``tokens``' bearer token and raise typed errors."""
    address, secure = _target(target)
    interceptors = [_AioUnaryUnary(tokens), _AioUnaryStream(tokens)]
    if credentials is None and secure:
        credentials = grpc.ssl_channel_credentials()
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


class AsyncGateway:
    """The gateway's services over one asyncio channel; ``async with`` closes it."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        #: TicketReservationService: ReserveTicket, CancelReservation, Get/ListReservations.
        self.reservations = reservation_pb2_grpc.TicketReservationServiceStub(channel)
        #: ParkingLotService: GetDailyAvailability, SetDailyCapacity.
        self.parking_lot = parking_lot_pb2_grpc.ParkingLotServiceStub(channel)
        #: TicketDeliveryService: ListDeliveries, ShipTicket, CancelDelivery.
        self.deliveries = delivery_pb2_grpc.TicketDeliveryServiceStub(channel)
        #: ReservationStatusService: GetReservationStatus, ListReservationStatuses, WatchReservationStatus.
        self.statuses = status_pb2_grpc.ReservationStatusServiceStub(channel)
        #: CommunityParkingService: evening offers and bookings for residents.
        self.community = community_pb2_grpc.CommunityParkingServiceStub(channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def aio_connect(
    target: str,
    tokens: TokenSource | None = None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions = (),
) -> AsyncGateway:
    """The gateway's typed asyncio clients; see :func:`aio_channel` for the arguments."""
    return AsyncGateway(aio_channel(target, tokens, credentials=credentials, options=options))


# --- blocking --------------------------------------------------------------------------------


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: list[tuple[str, str | bytes]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = tuple(metadata)
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _TypedStream:
    """A server stream (the grpc call itself, still cancellable) that raises typed errors."""

    def __init__(self, call: Any, tokens: TokenSource | None) -> None:
        self._call = call
        self._tokens = tokens

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as failed:
            error = from_rpc_error(failed)
            _forget_refused(self._tokens, error)
            raise error from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _Blocking(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, tokens: TokenSource | None) -> None:
        self._tokens = tokens

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        token = self._tokens.token() if self._tokens else None
        return _CallDetails(details, _with_token(details.metadata, token))

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        outcome = continuation(self._details(client_call_details), request)
        failed = outcome if isinstance(outcome, grpc.RpcError) else outcome.exception()
        if isinstance(failed, grpc.RpcError):
            error = from_rpc_error(failed)
            _forget_refused(self._tokens, error)
            raise error from None
        return outcome

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return _TypedStream(continuation(self._details(client_call_details), request), self._tokens)


def channel(
    target: str,
    tokens: TokenSource | None = None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions = (),
) -> grpc.Channel:
    """The blocking counterpart of :func:`aio_channel`."""
    address, secure = _target(target)
    if credentials is None and secure:
        credentials = grpc.ssl_channel_credentials()
    if credentials is not None:
        raw = grpc.secure_channel(address, credentials, options=options)
    else:
        raw = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(raw, _Blocking(tokens))


class Gateway:
    """The gateway's services over one blocking channel; ``with`` closes it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.reservations = reservation_pb2_grpc.TicketReservationServiceStub(channel)
        self.parking_lot = parking_lot_pb2_grpc.ParkingLotServiceStub(channel)
        self.deliveries = delivery_pb2_grpc.TicketDeliveryServiceStub(channel)
        self.statuses = status_pb2_grpc.ReservationStatusServiceStub(channel)
        self.community = community_pb2_grpc.CommunityParkingServiceStub(channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    target: str,
    tokens: TokenSource | None = None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions = (),
) -> Gateway:
    """The gateway's typed blocking clients; see :func:`aio_channel` for the arguments."""
    return Gateway(channel(target, tokens, credentials=credentials, options=options))
