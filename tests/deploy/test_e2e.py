"""The e2e scenarios as data: well formed, runnable on the local image, translatable by the plugin;
the phase derivation and the judge; and `make test` running `make e2e-local` (which runs them)."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from interlink_slurm.cli import app
from interlink_slurm.config import load_settings
from tests.deploy.helpers import DEPLOY, LOCAL, REPO, e2e_scenarios

sc = e2e_scenarios()
SCENARIOS = sc.load_all()
IMAGE = "/var/cache/interlink-slurm/images/debian-python"


def mount_points() -> set[str]:
    """Directories cluster.sh creates in the local Charliecloud image (MOUNT_POINTS=(...))."""
    text = (DEPLOY / "local" / "cluster.sh").read_text()
    match = re.search(r"^MOUNT_POINTS=\((.*?)\)", text, re.S | re.M)
    assert match, "MOUNT_POINTS not found in cluster.sh"
    return {"/" + w for w in shlex.split(match.group(1), comments=True)}


def e2e_config(tmp_path: Path) -> Path:
    config = sc.plugin_config(
        LOCAL,
        listen="127.0.0.1:4000",
        data_root=str(tmp_path / "pods"),
        image=IMAGE,
        slurm_conf="/etc/slurm/slurm.conf",
        images=set().union(*(s.images for s in SCENARIOS)),
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_scenarios_cover_the_features_that_work_today() -> None:
    names = {s.name for s in SCENARIOS}
    for feature in (
        "hello",
        "exit-code",
        "init-containers",
        "init-failure",
        "configmap-secret",
        "shared-emptydir",
        "gpu",
        "service-account",
        "unsupported-volume",
        "deadline",
        # What vk-test-set's templates check, on pods shaped as Kubernetes makes them.
        "env-key-refs",
        "env-from",
        "env-quotes",
        "job-pod",
        "probes",
        "lifecycle-hooks",
        "projected-newlines",
        "args-only",
        "no-command",
        "failing-containers",
        "command-not-found",
        "host-aliases",
    ):
        assert any(n.endswith(feature) for n in names), f"no scenario for {feature}"
    assert {s.phase for s in SCENARIOS} == {"Succeeded", "Failed", "Running"}


def test_every_scenario_pod_carries_the_service_account_volume() -> None:
    # As Kubernetes adds it: to every pod but those that opt out, here only the examples/ pods.
    opted_out = {
        s.name for s in SCENARIOS if s.pod["spec"].get("automountServiceAccountToken") is False
    }
    assert opted_out == {"07-gpu", "10-offload-basics"}
    for s in (s for s in SCENARIOS if s.name not in opted_out):
        body = sc.retrieved_pod_data(s, sc.NAMESPACE, "00000000-0000-0000-0000-000000000009")
        for c in body["pod"]["spec"]["containers"]:
            mounts = [m["mountPath"] for m in c.get("volumeMounts") or []]
            assert sc.SERVICE_ACCOUNT_DIR in mounts, f"{s.name}: {c['name']}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_mounts_and_working_dirs_exist_in_the_local_image(scenario: Any) -> None:
    existing = mount_points()
    pod, _ = sc.admitted_pod(scenario, sc.NAMESPACE, "00000000-0000-0000-0000-000000000001")
    spec = pod["spec"]
    for c in (spec.get("initContainers") or []) + spec["containers"]:
        for m in c.get("volumeMounts") or []:
            assert m["mountPath"] in existing, f"{c['name']}: {m['mountPath']} not in the image"
        if c.get("workingDir"):
            assert c["workingDir"] in existing


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_is_translated_by_the_plugin_as_expected(scenario: Any, tmp_path: Path) -> None:
    """What /create will do with it: a script, or the refusal the scenario expects."""
    body = sc.retrieved_pod_data(scenario, sc.NAMESPACE, "00000000-0000-0000-0000-000000000002")
    pod_file = tmp_path / "pod.json"
    pod_file.write_text(json.dumps(body))
    result = CliRunner().invoke(
        app, ["render", str(pod_file), "--config", str(e2e_config(tmp_path))]
    )
    if scenario.create_error:
        assert result.exit_code == 2
        for fragment in scenario.create_error:
            assert fragment in result.output
    else:
        assert result.exit_code == 0, result.output
        # The pod's own --job-name (vk-test-set's flags) wins over the pod name.
        flags = body["pod"]["metadata"]["annotations"].get("slurm-job.vk.io/flags", "")
        name = "test-pod-cfg" if "--job-name=test-pod-cfg" in flags else scenario.pod_name
        assert f"#SBATCH --job-name={name}" in result.output


def test_e2e_config_loads_and_maps_every_scenario_image(tmp_path: Path) -> None:
    settings = load_settings(e2e_config(tmp_path))
    for s in SCENARIOS:
        assert s.images <= set(settings.images)
    assert set(settings.images.values()) == {IMAGE}


def test_scenario_files_are_rejected_when_malformed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pod": {"kind": "Pod"}, "expect": {"phase": "Done"}}))
    with pytest.raises(sc.ScenarioError, match=r"expect\.phase"):
        sc.load(bad)
    bad.write_text(yaml.safe_dump({"pod": {}, "podFile": "x", "expect": {"phase": "Failed"}}))
    with pytest.raises(sc.ScenarioError, match="exactly one"):
        sc.load(bad)


# --- what interLink would send --------------------------------------------------------------------


def by_name(scenario_name: str) -> Any:
    [s] = [s for s in SCENARIOS if s.name.endswith(scenario_name)]
    return s


def test_service_account_volume_is_added_unless_automount_is_off() -> None:
    uid = "00000000-0000-0000-0000-000000000003"
    body = sc.retrieved_pod_data(by_name("service-account"), sc.NAMESPACE, uid)
    [c] = body["container"]
    [projected] = c["projectedvolumemaps"]
    assert projected["data"]["namespace"] == sc.NAMESPACE
    mounts = body["pod"]["spec"]["containers"][0]["volumeMounts"]
    assert {
        "name": projected["metadata"]["name"],
        "mountPath": sc.SERVICE_ACCOUNT_DIR,
        "readOnly": True,
    } in mounts
    hello = by_name("hello")
    off = dataclasses.replace(
        hello,
        pod={**hello.pod, "spec": {**hello.pod["spec"], "automountServiceAccountToken": False}},
    )
    body = sc.retrieved_pod_data(off, sc.NAMESPACE, uid)
    assert body["container"][0]["projectedvolumemaps"] is None
    assert not body["pod"]["spec"].get("volumes")


def test_the_pod_gets_the_api_servers_defaults() -> None:
    body = sc.retrieved_pod_data(
        by_name("probes"), sc.NAMESPACE, "00000000-0000-0000-0000-00000000000a"
    )
    spec = body["pod"]["spec"]
    assert spec["dnsPolicy"] == "ClusterFirst" and spec["terminationGracePeriodSeconds"] == 30
    assert spec["serviceAccountName"] == "default" and spec["enableServiceLinks"] is True
    assert {t["key"] for t in spec["tolerations"]} >= {"node.kubernetes.io/not-ready"}
    [c] = spec["containers"]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["imagePullPolicy"] == "IfNotPresent"  # a tag other than latest
    assert c["ports"] == [{"containerPort": 18119, "protocol": "TCP"}]
    assert c["readinessProbe"]["timeoutSeconds"] == 1
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTP"


def test_env_is_resolved_as_the_virtual_kubelet_does() -> None:
    uid = "00000000-0000-0000-0000-00000000000b"
    body = sc.retrieved_pod_data(by_name("env-key-refs"), sc.NAMESPACE, uid)
    env = {e["name"]: e for e in body["pod"]["spec"]["containers"][0]["env"]}
    assert all("valueFrom" not in e for e in env.values())
    assert env["APP_NAME"]["value"] == "config-test-app"
    assert env["API_KEY"]["value"] == "secret-api-key-12345"
    assert env["POD_NAMESPACE"]["value"] == sc.NAMESPACE
    body = sc.retrieved_pod_data(by_name("env-from"), sc.NAMESPACE, uid)
    [c] = body["pod"]["spec"]["containers"]
    assert "envFrom" not in c
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["LOG_LEVEL"] == "explicit-wins"  # env wins over envFrom
    assert env["CFG_MODE"] == "batch"  # the prefix
    assert env["AWS_DEFAULT_REGION"] == "us-west-2"


def test_a_projected_configmap_is_sent_as_a_projected_volume_map() -> None:
    uid = "00000000-0000-0000-0000-00000000000c"
    body = sc.retrieved_pod_data(by_name("projected-newlines"), sc.NAMESPACE, uid)
    [c] = body["container"]
    maps = {m["metadata"]["name"]: m["data"] for m in c["projectedvolumemaps"]}
    assert maps["projected-config"]["multiline.txt"] == "line one\nline two\nline three\n"
    assert "ca.crt" in maps["kube-api-access-e2e"]


def test_a_running_scenario_settles_once_its_logs_are_complete() -> None:
    s = by_name("probes")
    partial = {"probe-test": "Starting HTTP server on port 18119\n"}
    full = {"probe-test": "".join(f"{line}\n" for line in s.containers["probe-test"].logs)}
    assert not sc.settled(s, "Pending", lambda: full)
    assert not sc.settled(s, "Running", lambda: partial)
    assert sc.settled(s, "Running", lambda: full)
    assert sc.settled(s, "Failed", lambda: {})  # a final phase ends the wait (and fails judge)
    assert sc.judge(s, "Running", [], [], full) == []
    assert not sc.settled(by_name("hello"), "Running", lambda: {})


def test_each_container_gets_only_what_it_mounts_and_secrets_in_base64() -> None:
    body = sc.retrieved_pod_data(
        by_name("configmap-secret"), sc.NAMESPACE, "00000000-0000-0000-0000-000000000004"
    )
    [c] = body["container"]
    assert [cm["metadata"]["name"] for cm in c["configMaps"]] == ["e2e-app-config"]
    [secret] = c["secrets"]
    assert "stringData" not in secret
    assert base64.b64decode(secret["data"]["password"]) == b's3cr3t-with-$pecial"chars'
    body = sc.retrieved_pod_data(
        by_name("init-containers"), sc.NAMESPACE, "00000000-0000-0000-0000-000000000005"
    )
    assert [c["name"] for c in body["container"]] == ["first", "second", "main"]
    assert all(c["configMaps"] is None and c["secrets"] is None for c in body["container"])


# --- the virtual kubelet's phase, and the judge ---------------------------------------------------


def status(state: str, code: int = 0, name: str = "main") -> dict[str, Any]:
    detail: dict[str, Any] = (
        {"terminated": {"exitCode": code}} if state == "terminated" else {state: {}}
    )
    return {"name": name, "state": detail}


@pytest.mark.parametrize(
    ("containers", "inits", "phase"),
    [
        ([], [], "Pending"),
        ([status("waiting")], [], "Pending"),
        ([status("waiting")], [status("running", name="i")], "Pending"),
        ([status("running")], [status("terminated", name="i")], "Running"),
        ([status("running"), status("terminated", 1, "b")], [], "Running"),
        ([status("terminated")], [status("terminated", name="i")], "Succeeded"),
        ([status("terminated"), status("terminated", 3, "b")], [], "Failed"),
        ([status("terminated")], [status("terminated", 2, "i")], "Failed"),
        ([status("terminated"), status("waiting", name="b")], [], "Pending"),
    ],
)
def test_pod_phase_is_derived_like_the_virtual_kubelet(
    containers: list[Any], inits: list[Any], phase: str
) -> None:
    assert sc.pod_phase({"containers": containers, "initContainers": inits}) == phase


def test_judge_passes_a_matching_outcome_and_names_each_difference() -> None:
    s = by_name("exit-code")
    ok = [{"name": "main", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]
    assert sc.judge(s, "Failed", ok, [], {"main": "about to fail\n"}) == []
    wrong = [{"name": "main", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]
    problems = sc.judge(s, "Succeeded", wrong, [], {"main": "about to\n"})
    assert any("phase Succeeded" in p for p in problems)
    assert any("exit code 1, expected 3" in p for p in problems)
    assert any("no line 'about to fail'" in p for p in problems)
    running = [{"name": "main", "state": {"running": {}}}]
    assert any("running, expected terminated" in p for p in sc.judge(s, "Running", running, [], {}))


def test_judge_checks_each_text_of_an_expected_termination_message() -> None:
    s = by_name("failing-containers")
    texts = s.containers["python-exception"].message
    assert texts and all(t.endswith("\n") for t in texts)
    ended = {"exitCode": 1, "reason": "Error", "message": "x\n" + "".join(texts)}
    other = {"exitCode": 0, "reason": "Completed"}
    statuses = [
        {"name": "exit-failure", "state": {"terminated": {"exitCode": 42, "reason": "Error"}}},
        {"name": "python-exception", "state": {"terminated": ended}},
        {"name": "success-container", "state": {"terminated": other}},
    ]
    logs = {
        "exit-failure": "ERROR: Simulated application failure\nExit code: 42\n",
        "python-exception": "".join(texts),
        "success-container": "Completed successfully\n",
    }
    assert sc.judge(s, "Failed", statuses, [], logs) == []
    ended["message"] = texts[0]
    assert [p for p in sc.judge(s, "Failed", statuses, [], logs) if "message" in p] == [
        f"containers.python-exception: message {texts[0]!r} has no {texts[1]!r}"
    ]


def test_judge_checks_create_refusals() -> None:
    s = by_name("unsupported-volume")
    assert (
        sc.judge(
            s,
            "Failed",
            [],
            [],
            {},
            create_error="volume 'data' has type 'nfs', which this plugin does not support",
        )
        == []
    )
    assert sc.judge(s, "Failed", [], [], {}, create_error="something else")
    assert sc.judge(s, "Failed", [], [], {})  # accepted, but a refusal was expected
    assert sc.judge(by_name("hello"), "Failed", [], [], {}, create_error="boom")


# --- make test runs make e2e-local ----------------------------------------------------------------


def makefile_recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_make_test_runs_the_e2e_scenarios_after_pytest() -> None:
    recipe = makefile_recipe("test")
    pytest_at = next(i for i, line in enumerate(recipe) if "pytest" in line)
    e2e_at = recipe.index("$(MAKE) e2e-local")
    assert e2e_at > pytest_at
    e2e = makefile_recipe("e2e-local")
    assert any("deploy/e2e/run_local.py" in line and "$(CLUSTER) env" in line for line in e2e)
    head = next(
        line
        for line in (REPO / "Makefile").read_text().splitlines()
        if line.startswith("e2e-local:")
    )
    assert "cluster-up" in head and "$(STAMP)" in head
