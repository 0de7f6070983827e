"""Charliecloud's SquashFS images, as tests make them: a directory packed with mksquashfs, as
ch-convert packs one (squashfs-tools, which Debian's charliecloud package brings)."""

from __future__ import annotations

import subprocess
from pathlib import Path

# Nothing compressed: a copy of the whole test image packs in 0.5 s instead of 10.
UNCOMPRESSED = ("-noI", "-noD", "-noF", "-noX")


def pack(tree: Path, into: Path, *, compressed: bool = True) -> Path:
    """``tree`` packed into the SquashFS file ``into`` (replaced if there); returns ``into``."""
    flags = () if compressed else UNCOMPRESSED
    subprocess.run(
        ["mksquashfs", str(tree), str(into), "-noappend", "-quiet", *flags],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return into
