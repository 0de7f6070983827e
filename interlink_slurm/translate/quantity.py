"""Kubernetes resource quantities ("500m", "1.5", "256Mi", "1e3", "2G") as exact numbers."""

from __future__ import annotations

import math
import re
from decimal import Decimal, localcontext

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
# Far beyond any real machine, and small enough that rounding and printing stay cheap.
MAX_QUANTITY = Decimal(10) ** 60
PRECISION = 80  # digits: every quantity up to MAX_QUANTITY, exactly
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
        with localcontext() as ctx:
            ctx.prec = PRECISION
            amount = Decimal(number)
            if exponent:
                amount = amount * Decimal(10) ** int(exponent[1:])
            else:
                amount = amount * _SUFFIX[suffix or ""]
    except (ArithmeticError, ValueError) as err:
        raise ValueError(f"{value!r} is out of range for a quantity") from err
    if amount > MAX_QUANTITY:
        raise ValueError(f"{value!r} is out of range for a quantity")
    return amount


def _whole(value: str | int | float, unit: int) -> int:
    """The quantity in whole units, rounded up, at least one."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        return max(1, math.ceil(parse_quantity(value) / unit))


def cpus(value: str | int | float) -> int:
    """Whole CPUs, rounded up (Slurm allocates cores): "500m" → 1, "2.5" → 3."""
    return _whole(value, 1)


def mebibytes(value: str | int | float) -> int:
    """MiB, rounded up: Slurm's --mem unit."""
    return _whole(value, 1 << 20)


def kibibytes(value: str | int | float) -> int:
    """KiB, rounded up: what ``du -sk`` counts in."""
    return _whole(value, 1 << 10)
