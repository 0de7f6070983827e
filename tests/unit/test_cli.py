"""The command line: version, render."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from interlink_slurm import __version__
from interlink_slurm.cli import app
from tests import podgen

runner = CliRunner()


def test_version_prints_the_package_version() -> None:
    r = runner.invoke(app, ["version"])
    assert r.exit_code == 0
    assert r.stdout.strip() == __version__


def test_render_prints_the_script_of_a_retrieved_pod(tmp_path: Path) -> None:
    pod = podgen.pod("render-me", [podgen.container("main", "print(1)", image="python:3.11")])
    f = tmp_path / "pod.json"
    f.write_text(json.dumps(podgen.retrieved(pod)))
    r = runner.invoke(app, ["render", str(f)])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("#!/bin/bash\n")
    assert "#SBATCH --job-name=render-me" in r.stdout
    assert "docker://python:3.11" in r.stdout
    assert "containers/main.env" in r.stdout


def test_render_accepts_a_plain_pod_manifest_in_yaml(tmp_path: Path) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}]},
    }
    f = tmp_path / "pod.yaml"
    f.write_text(yaml.safe_dump(manifest))
    r = runner.invoke(app, ["render", str(f)])
    assert r.exit_code == 0, r.output
    assert "#SBATCH --job-name=plain" in r.stdout


def test_render_explains_a_pod_it_cannot_run(tmp_path: Path) -> None:
    pod = podgen.pod(
        "bad",
        [podgen.container("main", "print(1)")],
        volumes=[{"name": "v", "cephfs": {"monitors": []}}],
    )
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "v", "mountPath": "/v"}]
    f = tmp_path / "pod.json"
    f.write_text(json.dumps({"pod": pod}))
    r = runner.invoke(app, ["render", str(f)])
    assert r.exit_code == 1
    assert "'cephfs'" in r.output


def test_render_takes_the_pod_template_of_a_workload(tmp_path: Path) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "sweep", "namespace": "science"},
        "spec": {
            "completions": 1000,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "gen", "image": "busybox", "command": ["true"]}],
                }
            },
        },
    }
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(job))
    r = runner.invoke(app, ["render", str(f)])
    assert r.exit_code == 0, r.output
    assert "#SBATCH --job-name=sweep" in r.stdout
    assert "/science/sweep-" in r.stdout


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "cannot read"),
        ("a: [unclosed", "neither JSON nor YAML"),
        ("kind: Pod\\n---\\nkind: Pod\\n", "holds 2 YAML documents"),
        ("kind: Job\\nmetadata: {name: x}\\nspec: {}\\n", "this Job has no spec.template"),
        ("- 1\\n- 2\\n", "neither a pod nor a RetrievedPodData"),
    ],
)
def test_render_says_what_is_wrong_with_the_file(
    tmp_path: Path, content: str | None, said: str
) -> None:
    f = tmp_path / "pod.yaml"
    if content is not None:
        f.write_text(content.replace("\\n", "\n"))
    r = runner.invoke(app, ["render", str(f)])
    assert r.exit_code == 2
    assert said in r.output
    assert "Traceback" not in r.output


def test_render_shows_where_a_pod_would_go_and_why(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_root": "/data/interlink",
                "targets": {
                    "booster": {"partition": "boost_usr_prod", "gpus_per_node": 4},
                    "dcgp": {"partition": "dcgp_usr_prod", "gpus_per_node": 0},
                },
            }
        )
    )
    limits = {"limits": {"nvidia.com/gpu": "2"}}
    pod = podgen.pod("gpu", [podgen.container("main", "print(1)", resources=limits)])
    f = tmp_path / "pod.json"
    f.write_text(json.dumps(podgen.retrieved(pod)))
    r = runner.invoke(app, ["render", str(f), "--config", str(config), "--no-estimate"])
    assert r.exit_code == 0, r.output
    assert "#SBATCH --partition=boost_usr_prod" in r.stdout
    placement = r.stdout.split("# Placement:\n", 1)[1].splitlines()
    assert placement == [
        "#   placed on target booster (partition boost_usr_prod), the only target that can run it",
        "#   * target booster (partition boost_usr_prod): can run it",
        "#   - target dcgp (partition dcgp_usr_prod): ruled out: "
        "spec.containers.resources.limits.nvidia.com/gpu: 2 GPUs asked, "
        "but the nodes here have none (target dcgp)",
    ]

    pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "8"
    f.write_text(json.dumps(podgen.retrieved(pod)))
    r = runner.invoke(app, ["render", str(f), "--config", str(config), "--no-estimate"])
    assert r.exit_code == 1
    assert "no target here can run this pod (target booster: " in r.output
