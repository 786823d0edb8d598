"""The community service was added with no change to the existing services' code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

#: The last commit before the community work began.
BEFORE_COMMUNITY = "436f336"
EXISTING = ["services/reservation", "services/parking-lot", "services/delivery", "services/status"]


def test_existing_services_unchanged() -> None:
    root = Path(__file__).resolve().parents[3]
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        pytest.skip("no git checkout here: the diff cannot be taken")
    known = subprocess.run(
        [git, "-C", str(root), "cat-file", "-e", f"{BEFORE_COMMUNITY}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    if known.returncode != 0:
        pytest.skip(f"commit {BEFORE_COMMUNITY} is not in this clone's history (shallow?)")
    diff = subprocess.run(
        [git, "-C", str(root), "diff", "--stat", BEFORE_COMMUNITY, "--", *EXISTING],
        capture_output=True,
        text=True,
        check=True,
    )
    assert diff.stdout == "", f"the existing services changed:\n{diff.stdout}"
