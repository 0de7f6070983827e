"""The kind workflow (it cannot run here): valid for GitHub Actions, and every file, object and
name it relies on exists and agrees with the manifests."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

from tests.deploy.helpers import E2E, MANIFESTS, REPO, load_docs

WORKFLOW = REPO / ".github" / "workflows" / "e2e-kind.yaml"
CONTAINER_SCRIPT = E2E / "kind" / "slurm-container.sh"


def workflow() -> dict[str, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1); GitHub reads it as "on".
    data = yaml.safe_load(WORKFLOW.read_text())
    if True in data:
        data["on"] = data.pop(True)
    return dict(data)


def run_text() -> str:
    steps = workflow()["jobs"]["e2e-kind"]["steps"]
    return "\n".join(s.get("run", "") for s in steps)


def test_workflow_is_valid_for_github_actions() -> None:
    schema = get_builtin_schema("vendor.github-workflows")
    jsonschema.validate(workflow(), schema)


def test_workflow_runs_on_pull_requests_with_read_only_token() -> None:
    wf = workflow()
    assert "pull_request" in wf["on"] and "workflow_dispatch" in wf["on"]
    assert wf["permissions"] == {"contents": "read"}
    assert wf["jobs"]["e2e-kind"]["timeout-minutes"] <= 60


def test_actions_are_pinned_to_a_major_version() -> None:
    uses = [s["uses"] for s in workflow()["jobs"]["e2e-kind"]["steps"] if "uses" in s]
    assert any(u.startswith("helm/kind-action@") for u in uses)
    for u in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", u), u


def test_every_repository_path_the_workflow_names_exists() -> None:
    text = run_text()
    paths = set(re.findall(r"(?:deploy|manifests)/[\w./-]+", text))
    assert paths
    for p in paths:
        assert (REPO / p).exists(), p
    for script in ("deploy/e2e/kind/slurm-container.sh", "deploy/e2e/run_kind.py"):
        assert script in text
        assert os.access(REPO / script, os.X_OK), f"{script} is not executable"


def test_workflow_names_match_the_in_cluster_manifests() -> None:
    wf = workflow()
    node = wf["jobs"]["e2e-kind"]["env"]["NODE_NAME"]
    docs = [d for p in (MANIFESTS / "in-cluster").glob("*.yaml") for d in load_docs(p)]
    [deploy] = [d for d in docs if d["kind"] == "Deployment"]
    [vk] = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "vk"]
    assert {"name": "NODENAME", "value": node} in vk["env"]
    text = run_text()
    assert f"deployment/{deploy['metadata']['name']}" in text
    [eps] = [d for d in docs if d["kind"] == "EndpointSlice"]
    assert f"endpointslice {eps['metadata']['name']}" in text
    assert "/endpoints/0/addresses/0" in text
    assert "kubectl apply -k manifests/in-cluster" in text


def test_run_kind_targets_the_workflows_node_by_default() -> None:
    node = workflow()["jobs"]["e2e-kind"]["env"]["NODE_NAME"]
    assert f'default="{node}"' in (E2E / "run_kind.py").read_text()


@pytest.mark.parametrize("script", [CONTAINER_SCRIPT], ids=lambda p: p.name)
def test_container_script_is_valid_bash_with_its_subcommands(script: Path) -> None:
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    for sub in ("start)", "inside)", "logs)", "stop)"):
        assert sub in text
    # The plugin in the container listens where the EndpointSlice points (port 4000, all
    # interfaces) and is configured for every scenario image.
    assert "--listen 0.0.0.0:4000" in text
    assert "deploy/e2e/scenarios.py config" in text
    assert "deploy/local/cluster.sh up" in text
