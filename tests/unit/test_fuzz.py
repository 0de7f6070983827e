"""Schema-driven fuzzing of the HTTP API (schemathesis), bounded so CI stays fast: whatever it
sends, no 5xx, no crash, nothing written outside data_root. Slurm is the scripted fake here:
this is about what the API does with hostile input, not about Slurm."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case

from tests.unit.test_api import Harness

ROOT = Path(os.environ.get("ILS_FUZZ_ROOT", "/tmp/ils-fuzz"))
ROOT.mkdir(parents=True, exist_ok=True)
# Not entered: schemathesis runs the app (and its lifespan) in its own event loop.
_harness = Harness(ROOT / f"run-{os.getpid()}", enter=False)
schema = schemathesis.openapi.from_asgi("/openapi.json", _harness.app)
OUTSIDE = Path("/tmp")


def _snapshot() -> set[str]:
    """Names directly under /tmp other than our own root: a fuzz case must not add any."""
    return {p.name for p in OUTSIDE.iterdir()} - {ROOT.name}


BEFORE = _snapshot()


@pytest.fixture(scope="module", autouse=True)
def _close() -> object:
    yield
    _harness.close()
    shutil.rmtree(_harness.root, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_answers_5xx_to_generated_requests(case: Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
    for dirpath, _, names in os.walk(_harness.root):
        for name in names:
            real = Path(dirpath, name).resolve()
            assert real.is_relative_to(_harness.root.resolve()), real


def test_nothing_was_written_outside_the_data_root() -> None:
    # Other processes may come and go in /tmp; names looking like ours would be ours. Real jobs
    # running beside this test (other suites, the local cluster) keep their containers' /tmp in
    # /tmp/interlink-slurm-<job id> while they run: not the API's doing.
    new = {
        n
        for n in _snapshot() - BEFORE
        if ("interlink" in n or n.startswith(("pod", "..")))
        and not re.fullmatch(r"interlink-slurm-(pid)?[0-9]+", n)
    }
    assert not new
