"""Fixtures shared by every test suite."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory for unix sockets. A socket's path has at most 107 bytes, and pytest's
    tmp_path grows with the test's name: sockets live here instead, at a short fixed depth."""
    path = Path(tempfile.mkdtemp(prefix="ils-sock-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
