"""Typed errors: one exception class per gRPC status, raised by the SDK's calls.

The channels from :mod:`parking_sdk.channels` turn every failed call (unary calls and
streams alike) into a subclass of :class:`ParkingError`, so callers write
``except NotFound`` instead of comparing ``grpc.StatusCode`` values. Each class is still a
``grpc.RpcError``: code that already catches that keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

MetadataItems = Iterable[tuple[str, str | bytes]]


class ParkingError(grpc.RpcError):
    """A call that ended with a non-OK gRPC status.

    ``message`` is the server's text (written for a person to act on), ``retry_after``
    the seconds the server asked to wait before retrying (its ``retry-after`` metadata),
    when it sent one, and ``metadata`` the call's initial and trailing metadata.
    """

    status: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        status: grpc.StatusCode | None = None,
        retry_after: float | None = None,
        metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.metadata = metadata

    # The grpc.Call accessors, so handlers written for grpc.RpcError read these too.
    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return self.message

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}"


class Cancelled(ParkingError):
    status = grpc.StatusCode.CANCELLED


class Unknown(ParkingError):
    status = grpc.StatusCode.UNKNOWN


class InvalidArgument(ParkingError):
    """The request is wrong (a bad date or id): fix it, do not retry it."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(ParkingError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(ParkingError):
    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ParkingError):
    """E.g. a member already holds a ticket for that day."""

    status = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ParkingError):
    """The caller is known but its role may not do this."""

    status = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ParkingError):
    """A limit was hit (the gateway sheds calls over its limit); see ``retry_after``."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ParkingError):
    """The state does not allow it (e.g. cancelling a cancelled reservation)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ParkingError):
    status = grpc.StatusCode.ABORTED


class OutOfRange(ParkingError):
    status = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(ParkingError):
    status = grpc.StatusCode.UNIMPLEMENTED


class Internal(ParkingError):
    status = grpc.StatusCode.INTERNAL


class Unavailable(ParkingError):
    """Try again later; ``retry_after`` holds the server's hint when it sent one."""

    status = grpc.StatusCode.UNAVAILABLE


class DataLoss(ParkingError):
    status = grpc.StatusCode.DATA_LOSS


class Unauthenticated(ParkingError):
    """No token, or one the server does not accept (expired, wrong issuer)."""

    status = grpc.StatusCode.UNAUTHENTICATED


_BY_STATUS: dict[grpc.StatusCode, type[ParkingError]] = {
    cls.status: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_class(status: grpc.StatusCode) -> type[ParkingError]:
    """The exception class raised for ``status``."""
    return _BY_STATUS.get(status, ParkingError)


def retry_after(metadata: MetadataItems) -> float | None:
    """The server's retry hint in seconds: ``retry-after`` (the gateway's, in seconds) or
    gRPC's ``grpc-retry-pushback-ms``."""
    for key, value in metadata:
        text = value.decode() if isinstance(value, bytes) else value
        try:
            if key.lower() == "retry-after":
                return float(text)
            if key.lower() == "grpc-retry-pushback-ms":
                return int(text) / 1000
        except ValueError:
            continue
    return None


def from_rpc_error(error: grpc.RpcError) -> ParkingError:
    """The typed error for a raw ``grpc.RpcError`` (sync or asyncio); a ParkingError is
    returned as it is."""
    if isinstance(error, ParkingError):
        return error
    code = getattr(error, "code", None)
    status = code() if callable(code) else grpc.StatusCode.UNKNOWN
    details = getattr(error, "details", None)
    message = (details() if callable(details) else None) or str(error)
    metadata: list[tuple[str, str | bytes]] = []
    for accessor in ("initial_metadata", "trailing_metadata"):
        read = getattr(error, accessor, None)
        if callable(read):
            metadata.extend(read() or ())
    cls = error_class(status)
    return cls(message, status=status, retry_after=retry_after(metadata), metadata=tuple(metadata))
