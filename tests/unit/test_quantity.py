"""Kubernetes resource quantities → exact numbers, whole CPUs and MiB (translate/quantity.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink_slurm.translate.quantity import cpus, mebibytes, parse_quantity

MI = 1 << 20


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("1.5", Decimal("1.5")),
        ("2", Decimal(2)),
        ("0", Decimal(0)),
        ("0.1", Decimal("0.1")),
        (".5", Decimal("0.5")),
        ("+1", Decimal(1)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("2e-3", Decimal("0.002")),
        ("100k", Decimal(100_000)),
        ("1M", Decimal(10**6)),
        ("1G", Decimal(10**9)),
        ("1T", Decimal(10**12)),
        ("1P", Decimal(10**15)),
        ("1E", Decimal(10**18)),
        ("1Ki", Decimal(1024)),
        ("256Mi", Decimal(256 * MI)),
        ("1Gi", Decimal(1 << 30)),
        ("1.5Gi", Decimal(3 << 29)),
        ("1Ti", Decimal(1 << 40)),
        ("1Pi", Decimal(1 << 50)),
        ("1Ei", Decimal(1 << 60)),
        ("128974848", Decimal(128974848)),
        (" 2 ", Decimal(2)),
    ],
)
def test_parse_quantity_reads_kubernetes_forms_exactly(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(("number", "value"), [(2, Decimal(2)), (0.5, Decimal("0.5")), (0, 0)])
def test_parse_quantity_takes_json_numbers(number: float, value: Decimal) -> None:
    assert parse_quantity(number) == value


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("500m", 1),
        ("1", 1),
        ("1.5", 2),
        ("2", 2),
        ("2.5", 3),
        ("2000m", 2),
        ("2001m", 3),
        ("1e3", 1000),
        ("100k", 100_000),
        (2, 2),
        (0.5, 1),
        (1.5, 2),
        ("0", 1),  # Slurm cannot allocate zero CPUs
    ],
)
def test_cpus_rounds_up_to_whole_cpus(quantity: str | float, expected: int) -> None:
    assert cpus(quantity) == expected


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("256Mi", 256),
        ("1Gi", 1024),
        ("1.5Gi", 1536),
        ("1G", 954),  # 10**9 / 2**20 = 953.67 → rounded up
        ("500M", 477),  # 476.84
        ("1e3", 1),
        ("100k", 1),
        ("1Ki", 1),
        ("1025Ki", 2),
        ("128974848", 123),
        ("129e6", 124),  # 123.02
        (MI, 1),
        (MI + 1, 2),
        (1.5 * MI, 2),
        ("0", 1),
    ],
)
def test_mebibytes_rounds_up_to_whole_mib(quantity: str | float, expected: int) -> None:
    assert mebibytes(quantity) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "abc",
        "-1",
        "1.2.3",
        "1Zi",
        "1Z",
        "",
        "   ",
        "Mi",
        "1 Gi",
        "1e",
        "1ee3",
        "1e3Mi",
        "1mi",
        "nan",
        "inf",
        "0x10",
        True,
        False,
        -1,
        -0.5,
        float("nan"),
        float("inf"),
    ],
)
def test_parse_quantity_rejects_what_is_not_a_quantity(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_quantity(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cpus(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mebibytes(bad)  # type: ignore[arg-type]


def test_rejection_message_quotes_the_value() -> None:
    with pytest.raises(ValueError, match=r"'1\.2\.3'"):
        parse_quantity("1.2.3")


@given(st.integers(min_value=1, max_value=10**18))
def test_n_mebibytes_is_exactly_n_mib(n: int) -> None:
    assert parse_quantity(f"{n}Mi") == n * MI
    assert mebibytes(f"{n}Mi") == n
    assert mebibytes(n * MI) == n


@given(st.integers(min_value=1, max_value=10**15), st.integers(min_value=1, max_value=999))
def test_millicores_round_up(whole: int, milli: int) -> None:
    assert cpus(f"{whole * 1000 + milli}m") == whole + 1
    assert cpus(f"{whole * 1000}m") == whole


def test_n_mebibytes_is_exact_beyond_28_digits() -> None:
    n = 2**100 + 1
    assert parse_quantity(f"{n}Mi") == n * MI
    assert mebibytes(f"{n}Mi") == n


def test_huge_exponent_is_rejected_as_value_error() -> None:
    with pytest.raises(ValueError):
        parse_quantity("1e1000000")
