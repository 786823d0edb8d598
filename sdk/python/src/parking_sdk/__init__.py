"""parking-mesh SDK: generated gRPC code for the parking.v1 contract plus what every user needs.

Layout (stable; other code imports these paths):

- ``parking_sdk.v1``: generated from proto/parking/v1, one module pair per proto file:
  ``reservation_pb2`` (messages) and ``reservation_pb2_grpc`` (client stubs, servicer base
  classes, ``add_*Servicer_to_server``); likewise ``parking_lot``, ``delivery``, ``status``,
  ``community``, and ``events_pb2`` (event envelopes; no service). Typed by .pyi stubs.
- ``parking_sdk.google.api``: the HTTP annotations the protos import (internal).
- ``parking_sdk.tokens``: :class:`TokenSource`, tokens from the gateway's /oauth2/token.
- ``parking_sdk.channels``: :func:`aio_connect` / :func:`connect`, channels with the token
  attached and typed clients.
- ``parking_sdk.errors``: one exception per gRPC status (:class:`NotFound`, ...).
- ``parking_sdk.testing``: :class:`LocalCluster`, the whole system on free ports for tests.

``__version__`` is the contract version (proto/VERSION) the code was generated from.
"""

from parking_sdk._version import __version__
from parking_sdk.channels import AsyncGateway, Gateway, aio_channel, aio_connect, channel, connect
from parking_sdk.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ParkingError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from parking_sdk.tokens import Token, TokenError, TokenSource

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncGateway",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Gateway",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "ParkingError",
    "PermissionDenied",
    "ResourceExhausted",
    "Token",
    "TokenError",
    "TokenSource",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "__version__",
    "aio_channel",
    "aio_connect",
    "channel",
    "connect",
]
