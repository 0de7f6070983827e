"""Kubernetes resource quantities ("500m", "1.5", "256Mi", "1e3", "2G") as exact numbers."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_SUFFIX = {
    "": Decimal(1),
    "m": Decimal(1) / 1000,
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY = re.compile(
    r"([+]?[0-9]+(?:\.[0-9]*)?|[+]?\.[0-9]+)"  # the number
    r"(?:([eE][-+]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE])?)"  # exponent or suffix
)


def parse_quantity(value: str | int | float) -> Decimal:
    """The value of a quantity; raises ValueError with the reason when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"{value!r} is not a non-negative quantity")
        return Decimal(str(value))
    match = _QUANTITY.fullmatch(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 256Mi, 1Gi)")
    number, exponent, suffix = match.groups()
    try:
        amount = Decimal(number)
        if exponent:
            return amount * Decimal(10) ** int(exponent[1:])
    except (InvalidOperation, ValueError, OverflowError) as err:
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from err
    return amount * _SUFFIX[suffix or ""]


def cpus(value: str | int | float) -> int:
    """Whole CPUs, rounded up (Slurm allocates cores): "500m" → 1, "2.5" → 3."""
    return max(1, math.ceil(parse_quantity(value)))


def mebibytes(value: str | int | float) -> int:
    """MiB, rounded up: Slurm's --mem unit."""
    return max(1, math.ceil(parse_quantity(value) / (1 << 20)))
