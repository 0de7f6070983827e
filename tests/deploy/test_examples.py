"""Every example in examples/ is rendered with `interlink-slurm render`; those that can run on the
local cluster are run by an e2e scenario (make e2e-local)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from interlink_slurm.cli import app
from interlink_slurm.config import load_settings
from tests.deploy.helpers import EXAMPLES, LEONARDO, LOCAL, REPO, e2e_scenarios, rel

# Files of examples/ that are not pods, and why.
NOT_PODS = {
    "hello-logs.json": "the body of a /getLogs request (README walkthrough)",
    "hello-status.json": "the body of a /status request, holding hello-pod.json's pod",
    "jupyterhub/z2jh-values.yaml": "Zero to JupyterHub Helm values",
}
# Pods that cannot run on the local cluster, and why.
RENDER_ONLY = {
    "jupyterhub/jupyterlab-pod.yaml": "needs a JupyterLab image, GPUs and interLink's wstunnel",
    # Issue 3's use cases (their renders are pinned in tests/unit/test_translate_examples.py):
    "jupyterlab-gpu.yaml": "needs a JupyterLab CUDA image and interLink's wstunnel",
    "gan-training-4xa100.yaml": "needs an NVIDIA PyTorch image and four real A100",
    # Its launch, sized down, runs on the local nodes in tests/integration/test_multinode.py.
    "mpi-simulation-2-nodes.yaml": "needs an MPI solver image and an ib feature",
    # Run on the local 2-node cluster by tests/integration/test_pod_groups.py, which maps it.
    "gan-training-2x4xa100-group.yaml": "names the NVIDIA PyTorch image local.yaml does not map",
}
# Run by the integration tests of the README walkthrough instead of an e2e scenario.
RUN_ELSEWHERE = {
    "hello-pod.json",
    "datagen-job.yaml",  # run by tests/integration/test_fidelity.py
}


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml"))


def name(path: Path) -> str:
    return str(path.relative_to(EXAMPLES))


POD_FILES = [p for p in example_files() if name(p) not in NOT_PODS]


def render(path: Path, config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["render", str(path), "--config", str(config)])
    return result.exit_code, result.output


def images(path: Path) -> set[str]:
    out = set()
    for data in yaml.safe_load_all(path.read_text()):  # a pod group: one document a pod
        if isinstance(data, list):
            [data] = data
        pod = data.get("pod", data)
        spec = pod["spec"]
        out |= {c["image"] for c in (spec.get("initContainers") or []) + spec["containers"]}
    return out


def test_every_file_in_examples_is_a_pod_or_explained() -> None:
    for p in example_files():
        if name(p) in NOT_PODS:
            continue
        for data in yaml.safe_load_all(p.read_text()):  # a pod group: one document a pod
            if isinstance(data, list) and len(data) == 1:
                data = data[0]
            assert isinstance(data, dict) and (data.get("kind") == "Pod" or "pod" in data), (
                f"{rel(p)}: neither a pod nor a RetrievedPodData; add it to NOT_PODS with a reason"
            )


@pytest.mark.parametrize("path", POD_FILES, ids=name)
def test_example_renders_for_leonardo(path: Path) -> None:
    code, out = render(path, LEONARDO)
    assert code == 0, out
    assert out.startswith("#!/bin/bash\n")
    assert "#SBATCH --account=CHANGEME_account" in out
    assert "# Files written in /leonardo_scratch/" in out


@pytest.mark.parametrize("path", POD_FILES, ids=name)
def test_example_renders_for_the_local_cluster_when_its_images_are_there(path: Path) -> None:
    code, out = render(path, LOCAL)
    local_images = set(load_settings(LOCAL).images)
    if images(path) <= local_images:
        assert code == 0, out
        assert "ch-run" in out
    else:
        assert name(path) in RENDER_ONLY, f"{rel(path)} names images the local profile lacks"
        assert code == 2 and "image" in out


@pytest.fixture(scope="module")
def dev_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The configuration `make run` writes (deploy/local/dev-config.sh), for a cluster dir of
    its own (it only prints paths: no cluster is needed)."""
    d = tmp_path_factory.mktemp("dev-config")
    out = subprocess.run(
        [str(REPO / "deploy" / "local" / "dev-config.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "ILS_CLUSTER_DIR": str(d / "cluster")},
    ).stdout
    (d / "config.yaml").write_text(out)
    return d / "config.yaml"


@pytest.mark.parametrize("path", POD_FILES, ids=name)
def test_every_example_renders_with_the_dev_config_of_make_run(
    path: Path, dev_config: Path
) -> None:
    assert images(path) <= set(load_settings(dev_config).images)
    code, out = render(path, dev_config)
    assert code == 0, out
    assert "ch-run" in out


def test_runnable_examples_are_run_by_an_e2e_scenario() -> None:
    local_images = set(load_settings(LOCAL).images)
    run: set[str] = set()
    for s in e2e_scenarios().load_all():
        text = yaml.safe_load(s.path.read_text())
        if "podFile" in text:
            run.add(str(Path(text["podFile"]).relative_to("examples")))
    for path in POD_FILES:
        n = name(path)
        if n in RENDER_ONLY:
            continue
        assert images(path) <= local_images, f"{n}: not runnable locally; add to RENDER_ONLY"
        assert n in run or n in RUN_ELSEWHERE, f"{n} can run locally but no scenario runs it"


def test_gpu_example_asks_two_gpus_on_the_gpu_partition() -> None:
    _, local = render(EXAMPLES / "gpu-check.yaml", LOCAL)
    assert "#SBATCH --partition=boost_usr_prod" in local
    assert "#SBATCH --gres=gpu:a100:2" in local
    _, leonardo = render(EXAMPLES / "gpu-check.yaml", LEONARDO)
    assert "#SBATCH --gres=gpu:2" in leonardo  # Leonardo's GRES has no type


def test_offload_basics_resources_become_what_its_comments_say() -> None:
    _, out = render(EXAMPLES / "offload-basics.yaml", LEONARDO)
    for directive in (
        "--partition=dcgp_usr_prod",
        "--cpus-per-task=2",
        "--mem=1024M",
        "--time=0-00:10:00",
    ):
        assert f"#SBATCH {directive}\n" in out


def test_jupyterlab_pod_becomes_a_booster_job_with_two_gpus_for_eight_hours() -> None:
    _, out = render(EXAMPLES / "jupyterhub" / "jupyterlab-pod.yaml", LEONARDO)
    for directive in (
        "--partition=boost_usr_prod",
        "--gres=gpu:2",
        "--cpus-per-task=16",
        "--time=0-08:00:00",
    ):
        assert f"#SBATCH {directive}\n" in out
    assert "pytorch-notebook_cuda12.sif" in out


def test_render_command_line_itself_works_on_an_example() -> None:
    exe = Path(sys.executable).parent / "interlink-slurm"
    r = subprocess.run(
        [str(exe), "render", str(EXAMPLES / "offload-basics.yaml"), "--config", str(LOCAL)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --job-name=offload-basics" in r.stdout
