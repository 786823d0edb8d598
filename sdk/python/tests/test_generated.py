"""The generated code: fresh (regenerated and compared), self-contained, and usable on both
sides of a call (a servicer base served in-process, called through the SDK's channel)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

import parking_sdk
from parking_sdk.testing import LocalCluster
from parking_sdk.v1 import community_pb2, community_pb2_grpc

PACKAGE = Path(parking_sdk.__file__).resolve().parent
REPO = PACKAGE.parents[3]
GENERATED = ("v1", "google", "_version.py")


def files(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name in GENERATED:
        top = root / name
        paths = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        found.update({str(p.relative_to(root)): p for p in paths if "__pycache__" not in p.parts})
    return found


def test_committed_code_is_what_the_generator_makes_from_proto(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(REPO / "scripts" / "gen-sdk-python.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh, committed = files(tmp_path), files(PACKAGE)
    assert sorted(fresh) == sorted(committed), "files differ: run scripts/gen-sdk-python.sh"
    stale = [name for name in fresh if not filecmp.cmp(fresh[name], committed[name], shallow=False)]
    assert stale == [], f"stale generated files {stale}: run scripts/gen-sdk-python.sh"


def test_version_is_the_contract_version() -> None:
    assert parking_sdk.__version__ == (REPO / "proto" / "VERSION").read_text().strip()


def test_generated_imports_stay_inside_the_package() -> None:
    for path in files(PACKAGE).values():
        for line in path.read_text().splitlines():
            if line.startswith(("from ", "import ")):
                module = line.split()[1]
                assert not module.startswith(("parking.", "google.api")), f"{path.name}: {line}"


Context = grpc.aio.ServicerContext[object, object]


class Offers(community_pb2_grpc.CommunityParkingServiceServicer):
    """A servicer built on the SDK's base class, as the community service builds its own."""

    async def ListEveningOffers(
        self, request: community_pb2.ListEveningOffersRequest, context: Context
    ) -> community_pb2.ListEveningOffersResponse:
        offers = [community_pb2.EveningOffer(date=request.from_date, capacity=5, free=3)]
        return community_pb2.ListEveningOffersResponse(offers=offers)

    async def BookEveningSpace(
        self, request: community_pb2.BookEveningSpaceRequest, context: Context
    ) -> community_pb2.EveningBooking:
        context.set_trailing_metadata((("retry-after", "7"),))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the car park's figures are not in yet")

    async def CancelEveningBooking(
        self, request: community_pb2.CancelEveningBookingRequest, context: Context
    ) -> community_pb2.EveningBooking:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "already canceled")

    async def WatchEveningBooking(
        self, request: community_pb2.WatchEveningBookingRequest, context: Context
    ) -> AsyncIterator[community_pb2.EveningBooking]:
        yield community_pb2.EveningBooking(booking_id=request.booking_id)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no booking {request.booking_id}")


async def test_servicer_base_serves_and_errors_carry_the_retry_hint() -> None:
    server = grpc.aio.server()
    community_pb2_grpc.add_CommunityParkingServiceServicer_to_server(Offers(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with parking_sdk.aio_connect(f"127.0.0.1:{port}") as client:
            offers = await client.community.ListEveningOffers(
                community_pb2.ListEveningOffersRequest(from_date="2026-12-01", days=1)
            )
            assert [offer.free for offer in offers.offers] == [3]

            with pytest.raises(parking_sdk.Unavailable) as unavailable:
                await client.community.BookEveningSpace(
                    community_pb2.BookEveningSpaceRequest(date="2026-12-01")
                )
            assert unavailable.value.retry_after == 7
            assert unavailable.value.message == "the car park's figures are not in yet"

            got = []
            with pytest.raises(parking_sdk.NotFound):
                async for booking in client.community.WatchEveningBooking(
                    community_pb2.WatchEveningBookingRequest(booking_id="b-1")
                ):
                    got.append(booking.booking_id)
            assert got == ["b-1"]
    finally:
        await server.stop(None)


IMPORTS = {
    # googleapis-common-protos's google.api first, then the SDK, and the other way round:
    # protobuf's descriptor pool refuses a second, different google/api/http.proto.
    "theirs first": "import google.api.annotations_pb2, google.api.http_pb2\nimport parking_sdk",
    "ours first": "import parking_sdk.v1.reservation_pb2\nimport google.api.annotations_pb2",
    # Without googleapis-common-protos the SDK's own copy is used.
    "ours alone": "import sys\nsys.modules['google.api'] = None\nimport parking_sdk",
}


@pytest.mark.parametrize("order", IMPORTS)
def test_google_api_annotations_never_clash(order: str) -> None:
    check = (
        IMPORTS[order]
        + "\nfrom parking_sdk.google.api import annotations_pb2"
        + "\nfrom parking_sdk.v1 import reservation_pb2"
        + "\nmethod = reservation_pb2.DESCRIPTOR.services_by_name['TicketReservationService']"
        + ".methods_by_name['ReserveTicket']"
        + "\nprint(method.GetOptions().Extensions[annotations_pb2.http].post, annotations_pb2.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "/ticketReservations"


async def test_gateway_routes_community_calls_to_a_servicer_built_on_the_sdk() -> None:
    """What the community service does: a servicer on the SDK's base class, on the port
    given to local-cluster as COMMUNITY_PORT, called through the gateway (async LocalCluster)."""
    server = grpc.aio.server()
    community_pb2_grpc.add_CommunityParkingServiceServicer_to_server(Offers(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with LocalCluster(env={"COMMUNITY_PORT": str(port)}) as cluster:
            assert cluster.community_port == port
            async with cluster.aio_connect("rosa") as gateway:
                offers = await gateway.community.ListEveningOffers(
                    community_pb2.ListEveningOffersRequest(from_date="2026-12-01", days=1)
                )
                assert [offer.date for offer in offers.offers] == ["2026-12-01"]
                with pytest.raises(parking_sdk.Unavailable) as unavailable:
                    await gateway.community.BookEveningSpace(
                        community_pb2.BookEveningSpaceRequest(date="2026-12-01")
                    )
                assert unavailable.value.retry_after == 7
                got = []
                with pytest.raises(parking_sdk.NotFound):
                    async for booking in gateway.community.WatchEveningBooking(
                        community_pb2.WatchEveningBookingRequest(booking_id="b-2")
                    ):
                        got.append(booking.booking_id)
                assert got == ["b-2"]
    finally:
        await server.stop(None)
