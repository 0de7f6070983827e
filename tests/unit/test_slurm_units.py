"""Slurm's times and sizes, read by one module for the configuration, the pods and slurmrestd."""

from __future__ import annotations

import pytest

from interlink_slurm.slurm_units import size_mebibytes, time_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 1800),
        ("0", 0),
        ("1:30", 90),
        ("1:30:00", 5400),
        ("2-00:00:00", 172800),
        ("1-12", 129600),
        ("1-0:1", 86460),
        (" 5 ", 300),
        ("UNLIMITED", None),
        ("infinite", None),
        ("-1", None),
    ],
)
def test_slurm_times_in_every_notation_sbatch_reads(text: str, seconds: int | None) -> None:
    assert time_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "1h", "1:2:3:4", "-5", "1-", "a-1"])
def test_what_is_no_slurm_time_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="is not a Slurm time"):
        time_seconds(text)


@pytest.mark.parametrize(
    ("text", "mib"),
    [("512", 512), ("512M", 512), ("4G", 4096), ("4gb", 4096), ("1T", 1048576), ("1K", 1)],
)
def test_slurm_sizes_in_mebibytes_rounded_up(text: str, mib: int) -> None:
    assert size_mebibytes(text) == mib


@pytest.mark.parametrize("text", ["", "4X", "1.5G", "-1"])
def test_what_is_no_slurm_size_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        size_mebibytes(text)
