"""Golden files: compare rendered text with tests/golden/<name>; UPDATE_GOLDEN=1 rewrites them."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from interlink_slurm import __version__

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"
VERSION_PLACEHOLDER = "interlink-slurm <version>"


def normalise(text: str) -> str:
    """The text with the package version replaced, so goldens survive a release."""
    return text.replace(f"interlink-slurm {__version__}", VERSION_PLACEHOLDER)


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN_DIR / name
    text = normalise(actual)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; create it with UPDATE_GOLDEN=1", False)
    expected = path.read_bytes().decode()
    if expected != text:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"tests/golden/{name}",
                tofile="rendered",
            )
        )
        pytest.fail(
            f"rendered text differs from tests/golden/{name} "
            f"(if the change is intended, rerun with UPDATE_GOLDEN=1):\n{diff}",
            False,
        )
