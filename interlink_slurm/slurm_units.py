"""Slurm's own notations for times and sizes, read once for the whole plugin: the time limits
of the configuration and of pods (translate/site.py) and the #SBATCH values sent to slurmrestd
(slurm/rest.py). Pure; errors are ValueError, which each caller words for its field."""

from __future__ import annotations

import re

_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
UNLIMITED = frozenset({"UNLIMITED", "INFINITE", "-1"})
_SIZE = re.compile(r"(\d+)([KMGT]?)B?")
_MIB_PER_UNIT = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def time_seconds(value: str) -> int | None:
    """A Slurm time → seconds; None for an unlimited one (UNLIMITED, INFINITE, -1).

    minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
    days-hours:minutes:seconds, as sbatch --time reads them."""
    text = value.strip()
    if text.upper() in UNLIMITED:
        return None
    m = _TIME.fullmatch(text)
    if not m:
        raise ValueError(f"{value!r} is not a Slurm time (MM, HH:MM:SS, D-HH:MM:SS...)")
    days, first, second, third = (int(g) if g else None for g in m.groups())
    if days is not None:
        hours, minutes, seconds = first or 0, second or 0, third or 0
    elif third is not None:
        hours, minutes, seconds = first or 0, second or 0, third
    elif second is not None:
        hours, minutes, seconds = 0, first or 0, second
    else:
        hours, minutes, seconds = 0, first or 0, 0
    return ((days or 0) * 24 + hours) * 3600 + minutes * 60 + seconds


def size_mebibytes(value: str) -> int:
    """A Slurm size (--mem, --tmp): a number with an optional K, M (the default), G or T suffix
    → MiB, rounded up, at least 1."""
    m = _SIZE.fullmatch(value.upper())
    if not m:
        raise ValueError(f"{value!r} is not a size like 512M or 4G")
    amount = int(m.group(1)) * _MIB_PER_UNIT[m.group(2) or "M"]
    return max(1, -int(-amount // 1))
