"""The community service was added with no change to the existing services' code.

Checked: services/reservation, parking-lot, delivery, status, common and parkingctl, against
the last commit before the community work. One deliberate exception: the resident role in
services/common/src/identity.rs (a resident may call GetDailyAvailability and nothing else
of the core), which the community's callers need. Changed later for the mesh, not for
the community: the mesh's endpoints speak TLS themselves (2026-11-30), so common's `Tls`
also builds the mesh's `ClientTls` (common/Cargo.toml, common/src/tls.rs) and parking-lot
hands that to its mesh client (parking-lot/src/lib.rs).

mesh/ is left out: it changed since that commit for the sidecar's performance work
(mesh/benches/layers.rs, mesh/src/classify.rs, mesh/Cargo.toml, mesh/README.md), which has
nothing to do with the community service, so a diff there would say nothing about it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

#: The last commit before the community work began.
BEFORE_COMMUNITY = "436f336"
EXISTING = [
    "services/reservation",
    "services/parking-lot",
    "services/delivery",
    "services/status",
    "services/common",
    "services/parkingctl",
]
#: The deliberate changes (as git lists them): the resident role; the mesh's own TLS.
EXCEPTIONS = [
    "services/common/Cargo.toml",
    "services/common/src/identity.rs",
    "services/common/src/tls.rs",
    "services/parking-lot/src/lib.rs",
]


def test_existing_services_unchanged() -> None:
    root = Path(__file__).resolve().parents[3]
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        pytest.skip(
            "no git checkout here: the diff against the code before community cannot be taken"
        )
    known = subprocess.run(
        [git, "-C", str(root), "cat-file", "-e", f"{BEFORE_COMMUNITY}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if known.returncode != 0:
        pytest.skip(
            f"commit {BEFORE_COMMUNITY} (the last before the community work) is not in this "
            "clone's history (a shallow clone?): fetch it to check the existing services"
        )
    diff = subprocess.run(
        [git, "-C", str(root), "diff", "--name-only", BEFORE_COMMUNITY, "--", *EXISTING],
        capture_output=True,
        text=True,
        check=True,
    )
    assert diff.stdout.split() == EXCEPTIONS, f"the existing services changed:\n{diff.stdout}"
