"""What the benchmark parts share: percentiles, the plugin's metrics, cancelling jobs."""

from __future__ import annotations

import os
import subprocess

from tests.integration.conftest import Plugin

HOLD = ["--hold"]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def metric(plugin: Plugin, name: str, labels: str) -> float:
    for line in plugin.client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def slurm_env(cluster: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": cluster["SLURM_CONF"]}


def cancel_all(cluster: dict[str, str], user: str | None = None) -> None:
    """Every job of ``user`` (this one by default) on the benchmark's cluster."""
    who = user or os.environ.get("USER", "root")
    subprocess.run(["scancel", "--user", who], env=slurm_env(cluster), check=False)
