"""What the benchmark parts share: percentiles, the plugin's metrics, cancelling jobs."""

from __future__ import annotations

import os
import subprocess
import time

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
    """Every job of ``user`` (this one by default) on the benchmark's cluster, waited for until
    Slurm lists none (at most a minute): a job still completing holds its node's CPUs and
    memory, and the next measurement would wait for them."""
    who = user or os.environ.get("USER", "root")
    env = slurm_env(cluster)
    subprocess.run(["scancel", "--user", who], env=env, check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = subprocess.run(
            ["squeue", "-h", "--user", who, "-o", "%i"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if not listed.strip():
            return
        time.sleep(0.5)
