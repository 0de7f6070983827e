"""The kind workflow (it cannot run here): valid for GitHub Actions, and every file, object and
name it relies on exists and agrees with the manifests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


# --- the vk-test-set job: interLink's conformance suite, as the Go Slurm plugin's CI runs it ------

# interlink-hq/interlink-slurm-plugin, scripts/k3s-test-run.sh: the templates its CI leaves out.
GO_PLUGIN_FILTER = "not rclone and not limits and not stress and not multi-init and not fail"
VKTEST_CONFIG = E2E / "vktest_config.yaml"


def vk_job() -> dict[str, Any]:
    return dict(workflow()["jobs"]["vk-test-set"])


def vk_run_text() -> str:
    return "\n".join(s.get("run", "") for s in vk_job()["steps"])


def test_vk_test_set_runs_with_the_go_plugins_filter_at_a_pinned_commit() -> None:
    env = vk_job()["env"]
    assert env["VK_TEST_FILTER"] == GO_PLUGIN_FILTER
    assert re.fullmatch(r"[0-9a-f]{40}", env["VK_TEST_SET_REF"])
    assert env["VK_TEST_SET_REPO"] == "https://github.com/interlink-hq/vk-test-set.git"
    text = vk_run_text()
    assert 'pytest" -v -k "$VK_TEST_FILTER"' in text
    assert 'checkout --detach "$VK_TEST_SET_REF"' in text
    assert 'pip" install -e' in text
    assert "cp deploy/e2e/vktest_config.yaml" in text


def test_vktest_config_targets_the_virtual_node_with_the_suites_values() -> None:
    config = yaml.safe_load(VKTEST_CONFIG.read_text())
    # vk-test-set's ConfigManager forbids any other key.
    assert set(config) <= {"required_namespaces", "target_nodes", "timeout_multiplier", "values"}
    assert set(config["values"]) <= {"annotations", "namespace", "tolerations"}
    assert config["target_nodes"] == [vk_job()["env"]["NODE_NAME"]]
    assert config["target_nodes"] == [workflow()["jobs"]["e2e-kind"]["env"]["NODE_NAME"]]
    values = config["values"]
    assert values["namespace"] in config["required_namespaces"]
    assert values["annotations"] == {
        "slurm-job.vk.io/flags": "--job-name=test-pod-cfg -t 2800",
        "slurm-job.vk.io/image-root": "docker://",
    }
    assert {
        "key": "virtual-node.interlink/no-schedule",
        "operator": "Exists",
        "effect": "NoSchedule",
    } in values["tolerations"]


def test_vk_test_set_job_deploys_like_the_scenarios_job_with_apptainer() -> None:
    steps = vk_job()["steps"]
    [start] = [s for s in steps if "slurm-container.sh start" in s.get("run", "")]
    assert start["env"] == {"ILS_E2E_RUNTIME": "apptainer"}
    text = vk_run_text()
    for line in run_text().splitlines():
        if "manifests/in-cluster" in line or "endpointslice" in line or "rollout status" in line:
            assert line in text
    script = CONTAINER_SCRIPT.read_text()
    assert "apptainer_${APPTAINER_VERSION}_amd64.deb" in script
    assert '--runtime "$RUNTIME"' in script
    assert '-e ILS_E2E_RUNTIME="$RUNTIME"' in script


def test_the_apptainer_plugin_config_runs_registry_images(tmp_path: Path) -> None:
    from interlink_slurm.config import load_settings

    out = subprocess.run(
        [sys.executable, str(E2E / "scenarios.py"), "config", "--runtime", "apptainer"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ILS_IMAGE": "/images/debian-python", "SLURM_CONF": "/etc/slurm.conf"},
    )
    path = tmp_path / "config.yaml"
    path.write_text(out.stdout)
    settings = load_settings(path)
    assert settings.runtime == "apptainer"
    assert settings.images == {}
