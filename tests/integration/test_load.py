"""16 clients mixing create / status / logs / delete against the real Slurm for a bounded time:
no 5xx, no request that hangs, memory that stays put. ILS_LOAD_SECONDS makes it longer by hand."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests import podgen
from tests.integration.conftest import Plugin

# 16 clients for 40 s: other tests' timings would measure this load.
pytestmark = [pytest.mark.slurm, pytest.mark.alone]
CLIENTS = 16
SECONDS = float(os.environ.get("ILS_LOAD_SECONDS", "40"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_sixteen_clients_mixing_every_call_get_no_5xx_and_memory_stays_bounded(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    plugin = Plugin(tmp_path, cluster, log_level="info", status_refresh_seconds=1)
    plugin.start()
    assert plugin.proc is not None
    codes: Counter[tuple[str, int]] = Counter()
    slowest = [0.0]
    lock = threading.Lock()
    stop_at = time.monotonic() + SECONDS
    warm_rss: list[float] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        http = httpx.Client(base_url=plugin.url, timeout=60, headers=plugin.headers)
        mine: list[dict[str, object]] = []
        n = 0
        while time.monotonic() < stop_at:
            action = rng.choice(["create", "status", "status", "status", "logs", "delete"])
            started = time.monotonic()
            if action == "create" or not mine:
                n += 1
                pod = podgen.pod(
                    f"load-{seed}-{n}",
                    [podgen.container("main", f"print('client {seed} pod {n}')")],
                )
                r = http.post("/create", content=json.dumps(podgen.retrieved(pod)))
                mine.append(pod)
                action = "create"
            elif action == "status":
                r = http.request("GET", "/status", content=json.dumps([rng.choice(mine)]))
            elif action == "logs":
                pod = rng.choice(mine)
                meta = pod["metadata"]
                assert isinstance(meta, dict)
                body = {
                    "Namespace": "default",
                    "PodUID": meta["uid"],
                    "PodName": meta["name"],
                    "ContainerName": "main",
                    "Opts": {"Tail": 10},
                }
                r = http.request("GET", "/getLogs", content=json.dumps(body))
            else:
                r = http.post("/delete", content=json.dumps(mine.pop(rng.randrange(len(mine)))))
            with lock:
                codes[(action, r.status_code)] += 1
                slowest[0] = max(slowest[0], time.monotonic() - started)
        http.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(min(10.0, SECONDS / 3))
    warm_rss.append(rss_mib(plugin.proc.pid))
    for t in threads:
        t.join(timeout=SECONDS + 120)
        assert not t.is_alive(), "a client hung: deadlock or a request without an answer"
    end_rss = rss_mib(plugin.proc.pid)
    try:
        assert not [k for k in codes if k[1] >= 500], codes
        assert sum(codes.values()) > 200, codes
        assert codes[("create", 200)] > 20, codes
        assert slowest[0] < 30, f"slowest request took {slowest[0]:.1f} s"
        # Memory after warm-up may grow with the pods it tracks, not without bound.
        assert end_rss - warm_rss[0] < 60, (warm_rss, end_rss)
        assert plugin.client.get("/readyz").status_code == 200
    finally:
        plugin.stop()
