"""The command line: version, render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    assert r.exit_code == 2
    assert r.stderr.startswith(f"interlink-slurm: error: {f}: ")
    assert "'cephfs'" in r.stderr


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


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command as a user runs it, in a 40-column terminal: its errors must not
    depend on the width (nor wrap a long path)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INTERLINK_SLURM_")}
    environ.update({"COLUMNS": "40", "LINES": "20", "TERM": "xterm-256color", **(env or {})})
    return subprocess.run(
        [sys.executable, "-c", "from interlink_slurm.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def long_dir(tmp_path: Path) -> Path:
    """A directory whose path is over 150 characters, as a deep CI checkout gives."""
    d = tmp_path / ("a-rather-long-directory-name-" * 6) / "and-one-more-level"
    d.mkdir(parents=True)
    assert len(str(d)) > 150
    return d


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "cannot read: No such file or directory"),
        ("a: [unclosed", "neither JSON nor YAML: line 1, column 13: expected ',' or ']', but got"),
        ("kind: Pod\n---\nkind: Pod\n", "holds 2 YAML documents: give it one pod (or workload)"),
        ("kind: Job\nmetadata: {name: x}\nspec: {}\n", "this Job has no spec.template"),
        ("- 1\n- 2\n", "holds neither a pod nor a RetrievedPodData"),
        (
            "kind: Pod\nmetadata: {name: 7}\nspec: {containers: []}\n",
            "invalid pod: pod.metadata.name",
        ),
    ],
)
def test_render_says_what_is_wrong_with_the_file_on_one_line(
    tmp_path: Path, content: str | None, said: str
) -> None:
    f = long_dir(tmp_path) / "pod.yaml"
    if content is not None:
        f.write_text(content.replace("\\n", "\n"))
    r = run_cli("render", str(f))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith(f"interlink-slurm: error: {f}: {said}")
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n")


CONFIG_ERRORS = [
    (
        "data_root: [unclosed",
        "not valid YAML: line 1, column 21: expected ',' or ']', but got '<stream end>'",
    ),
    ("- data_root\n", "must hold a mapping of keys to values"),
    ("data_root: /x\npartiton: boost\n", "partiton: unknown key"),
    ("data_root: relative/dir\n", "data_root: 'relative/dir' must be an absolute path"),
]


@pytest.mark.parametrize("command", ["serve", "doctor", "render"])
@pytest.mark.parametrize(("content", "said"), CONFIG_ERRORS)
def test_every_command_names_the_configuration_file_and_what_is_wrong(
    tmp_path: Path, command: str, content: str, said: str
) -> None:
    config = long_dir(tmp_path) / "config.yaml"
    config.write_text(content.replace("\\n", "\n"))
    pod = tmp_path / "pod.yaml"
    pod.write_text("kind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n")
    args = [command, str(pod)] if command == "render" else [command]
    r = run_cli(*args, "--config", str(config))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"interlink-slurm: error: {config}: {said}\n"


def test_a_misspelled_environment_variable_is_named(tmp_path: Path) -> None:
    r = run_cli("doctor", env={"INTERLINK_SLURM_DATA_ROTO": "/x"})
    assert r.returncode == 2
    assert r.stderr == (
        "interlink-slurm: error: environment: INTERLINK_SLURM_DATA_ROTO: matches no "
        "configuration key (did you mean INTERLINK_SLURM_DATA_ROOT?)\n"
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["render"], "render: Missing argument 'pod_file'. (see interlink-slurm render --help)"),
        (["serve", "--nope"], "serve: No such option: --nope (see interlink-slurm serve --help)"),
        (["bogus"], "No such command 'bogus'. (see interlink-slurm --help)"),
    ],
)
def test_usage_errors_are_one_plain_line(args: list[str], said: str) -> None:
    r = run_cli(*args)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"interlink-slurm: error: {said}\n"


def test_version_option_and_command_agree() -> None:
    assert run_cli("--version").stdout == run_cli("version").stdout == f"{__version__}\n"


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
    assert r.exit_code == 2
    assert "no target here can run this pod (target booster: " in r.stderr
