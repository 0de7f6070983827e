"""The seed's use cases in examples/, rendered for a Leonardo-like site: what each becomes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlink_slurm.config import Settings, load_settings
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.translate.script import render_script
from interlink_slurm.wire import RetrievedPodData

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
LEONARDO = REPO / "deploy" / "config" / "leonardo.yaml"
UID = "12345678-1234-4234-8234-123456789abc"


def leonardo(**overrides: Any) -> Settings:
    return load_settings(LEONARDO, **overrides)


def plan_of(name: str, s: Settings | None = None) -> JobPlan:
    pod = yaml.safe_load((EXAMPLES / name).read_text())
    pod["metadata"]["uid"] = UID
    data = RetrievedPodData.model_validate({"pod": pod, "container": []})
    return build_plan(data, s or leonardo(), f"/scratch/pods/{UID}")


def directives(plan: JobPlan) -> dict[str, str]:
    return {d.split("=", 1)[0]: d.partition("=")[2] for d in plan.directives}


def line_of(script: str, container: str) -> str:
    """The whole ils_container command of a container (its continuation lines joined)."""
    lines = script.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith(f"ils_container {container}"))
    out = []
    for x in lines[start:]:
        out.append(x.rstrip("\\").strip())
        if not x.endswith("\\"):
            break
    return " ".join(out)


EXAMPLE_FILES = [
    "jupyterlab-gpu.yaml",
    "gan-training-4xa100.yaml",
    "mpi-simulation-2-nodes.yaml",
    "datagen-job.yaml",
]


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_example_renders_to_valid_bash(name: str) -> None:
    script = render_script(plan_of(name))
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_jupyterlab_notebook_gets_a_gpu_the_tunnel_and_a_readiness_probe() -> None:
    plan = plan_of("jupyterlab-gpu.yaml")
    d = directives(plan)
    assert (d["--partition"], d["--gres"], d["--time"]) == ("boost_usr_prod", "gpu:1", "08:00:00")
    script = render_script(plan)
    assert plan.tunnel == "tunnel.sh"
    assert script.index("exec setsid bash ../tunnel.sh") < script.index("ils_container notebook")
    line = line_of(script, "notebook")
    assert "-P 1 OnFailure" in line
    assert "-R 9 readiness 0 10 1 1 3 tcp 127.0.0.1 8888" in line
    assert "--nv" in line
    assert "export POD_IP=10.244.7.21" in script


def test_jupyterlab_without_user_shell_is_refused_naming_the_tunnel() -> None:
    from interlink_slurm.errors import PodRejected

    with pytest.raises(PodRejected) as info:
        plan_of("jupyterlab-gpu.yaml", leonardo(allow_user_shell=False))
    assert "interlink.eu/wstunnel-client-commands" in info.value.field


def test_gan_training_takes_a_whole_booster_node() -> None:
    plan = plan_of("gan-training-4xa100.yaml")
    d = directives(plan)
    assert d["--gres"] == "gpu:4"
    assert (d["--cpus-per-task"], d["--mem"], d["--time"]) == ("32", "491520M", "1-00:00:00")
    line = line_of(render_script(plan), "train")
    assert f"/dev/shm/interlink-slurm-{UID}/shm:/dev/shm:rw" in line
    assert "--epochs=200" in line


def test_gan_training_with_more_gpus_than_a_node_is_refused_when_the_site_says_so() -> None:
    pod = yaml.safe_load((EXAMPLES / "gan-training-4xa100.yaml").read_text())
    pod["metadata"]["uid"] = UID
    pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 8
    from interlink_slurm.errors import PodRejected

    with pytest.raises(PodRejected) as info:
        build_plan(RetrievedPodData.model_validate({"pod": pod}), leonardo(gpus_per_node=4), "/s/p")
    assert "interlink-slurm/nodes" in info.value.reason


def test_mpi_simulation_spans_two_nodes_with_srun() -> None:
    plan = plan_of("mpi-simulation-2-nodes.yaml")
    d = directives(plan)
    assert (d["--nodes"], d["--ntasks-per-node"], d["--cpus-per-task"]) == ("2", "56", "1")
    assert d["--mem"] == "204800M"
    assert "--exclusive" in d and d["--constraint"] == "ib"
    script = render_script(plan)
    assert line_of(script, "solver").startswith(
        "ils_container solver -L 3 srun --mpi=pmix --cpu-bind=cores /usr/bin/singularity exec"
    )
    # The mesh is partitioned once, before the ranks start.
    assert "-L" not in line_of(script, "mesh")
    assert ". ./pre-exec.sh" in script


def test_datagen_shard_restarts_on_failure_and_knows_its_index() -> None:
    plan = plan_of("datagen-job.yaml")
    assert directives(plan)["--time"] == "0-00:10:00"
    [c] = plan.containers
    assert c.lifecycle.restart == "OnFailure"
    assert ("JOB_COMPLETION_INDEX", "7") in c.env
