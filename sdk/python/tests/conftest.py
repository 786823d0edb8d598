"""One local-cluster for the whole session (it takes a second or two to start and its
services hold state). Tests keep out of each other's way by date: each takes its own days
from ``days``, and the daily capacity (5) is far above what one test reserves."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest

from parking_sdk.testing import LocalCluster

# The car park's time zone (local-cluster's default): "today" for the booking window.
CAR_PARK_ZONE = ZoneInfo("Asia/Seoul")


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as running:
        yield running


_offsets = itertools.count(2)


class Days:
    """Dates inside the booking window (it opens 30 days ahead), a new one per call, so no
    two tests of the session reserve the same member on the same day."""

    def next(self) -> str:
        offset = next(_offsets)
        assert offset < 29, "more test dates than the booking window holds"
        today = datetime.datetime.now(CAR_PARK_ZONE).date()
        return (today + datetime.timedelta(days=offset)).isoformat()


@pytest.fixture
def days() -> Days:
    return Days()
