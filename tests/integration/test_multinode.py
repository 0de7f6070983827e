"""Pods over several nodes, for real: the local cluster's nodes n1 and n2 run the tasks of one
job, started by srun (the MPI launcher every Slurm has); each task says where it ran, and the
pod's log and status are read back through the HTTP API as interLink reads them.

The nodes share this machine, so a task tells its node by $SLURMD_NODENAME (not the hostname).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from tests import podgen
from tests.integration.conftest import REPO, Plugin, all_terminated, nodes, states

pytestmark = pytest.mark.slurm

MPI_EXAMPLE = REPO / "examples" / "mpi-simulation-2-nodes.yaml"
# Each task: its rank, the task count, its node, its rank as an MPI library gets it from Slurm's
# PMI-2 (PMI_RANK, set by srun --mpi=pmi2), and OMP_NUM_THREADS (exported by the pre-exec).
RANK = (
    "import os; e = os.environ; "
    "print('rank', e['SLURM_PROCID'], 'of', e['SLURM_NTASKS'], 'on', e['SLURMD_NODENAME'], "
    "'pmi', e.get('PMI_RANK'), 'omp', e.get('OMP_NUM_THREADS'), flush=True)"
)


def example_annotations() -> dict[str, str]:
    """The MPI example's annotations (2 nodes, srun, its launcher flags, pre-exec), sized for the
    local nodes: 2 tasks per node instead of 56; PMI-2 instead of PMIx (Slurm's PMIx plugin
    needs libpmix-dev, which the local cluster does not install); no sbatch flags (the local
    nodes have no "ib" feature, and --exclusive would wait for other tests' jobs)."""
    example: dict[str, Any] = yaml.safe_load(MPI_EXAMPLE.read_text())
    annotations: dict[str, str] = dict(example["metadata"]["annotations"])
    annotations["interlink-slurm/tasks-per-node"] = "2"
    flags = annotations["slurm-job.vk.io/mpi-flags"]
    assert "--mpi=pmix" in flags
    annotations["slurm-job.vk.io/mpi-flags"] = flags.replace("--mpi=pmix", "--mpi=pmi2")
    del annotations["slurm-job.vk.io/flags"]
    return annotations


def ranks(log: str) -> list[tuple[int, str, str, str, str]]:
    """(rank, task count, node, PMI rank, OMP_NUM_THREADS) of each task's line, by rank. srun's
    own lines (its warning that this cluster does not bind CPUs) are left out."""
    found = []
    for line in log.splitlines():
        if line.startswith("srun: "):
            continue
        words = line.split()
        assert words[0] == "rank" and words[2] == "of", log
        found.append((int(words[1]), words[3], words[5], words[7], words[9]))
    return sorted(found)


def test_the_mpi_example_runs_its_ranks_on_both_nodes(plugin: Plugin) -> None:
    assert len(nodes(plugin.cluster)) >= 2, "the local cluster needs two nodes (ILS_NODES)"
    resources = {"limits": {"cpu": "4", "memory": "2Gi"}}
    pod = podgen.pod(
        "mpi-two-nodes",
        [podgen.container("solver", RANK, resources=resources)],
        annotations=example_annotations(),
    )
    plugin.create_ok(podgen.retrieved(pod))

    status = plugin.wait_for(pod, all_terminated, timeout=120)

    term = states(status)["solver"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (0, "Completed"), status
    assert status["NodeName"] == "n[1-2]"
    log = plugin.logs(pod, "solver").text
    assert ranks(log) == [
        (0, "4", "n1", "0", "1"),
        (1, "4", "n1", "1", "1"),
        (2, "4", "n2", "2", "1"),
        (3, "4", "n2", "3", "1"),
    ], log


def test_a_rank_failing_on_the_second_node_fails_the_pod_with_its_exit_code(
    plugin: Plugin,
) -> None:
    script = (
        "import os, sys; node = os.environ['SLURMD_NODENAME']; print('on', node, flush=True); "
        "sys.exit(7 if node == 'n2' else 0)"
    )
    pod = podgen.pod(
        "mpi-fails-on-n2",
        [podgen.container("main", script, resources={"limits": {"cpu": "2"}})],
        annotations={"interlink-slurm/nodes": "2", "interlink-slurm/mpi-launcher": "srun"},
    )
    plugin.create_ok(podgen.retrieved(pod))

    status = plugin.wait_for(pod, all_terminated, timeout=120)

    term = states(status)["main"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (7, "Error"), status
    # srun says which task failed where, in the container's log.
    assert sorted(plugin.logs(pod, "main").text.splitlines()) == [
        "on n1",
        "on n2",
        "srun: error: n2: task 1: Exited with exit code 7",
    ]


def test_nodes_asked_in_the_sbatch_flags_run_the_launcher_on_both_nodes(plugin: Plugin) -> None:
    """--nodes in slurm-job.vk.io/flags (as pods written for the reference plugin ask for
    nodes) with a launcher: the containers run on every node, each with its own /tmp."""
    script = (
        "import os; open('/tmp/mine', 'x').write('x'); "
        "print('on', os.environ['SLURMD_NODENAME'], flush=True)"
    )
    pod = podgen.pod(
        "flags-two-nodes",
        [podgen.container("main", script)],
        annotations={
            "slurm-job.vk.io/flags": "--nodes=2 --ntasks-per-node=1",
            "interlink-slurm/mpi-launcher": "srun",
        },
    )
    plugin.create_ok(podgen.retrieved(pod))

    status = plugin.wait_for(pod, all_terminated, timeout=120)

    term = states(status)["main"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (0, "Completed"), status
    assert sorted(plugin.logs(pod, "main").text.splitlines()) == ["on n1", "on n2"]


# Each rank writes up.<rank> once its SIGTERM handler is in place, and term.<rank> when SIGTERM
# comes.
TERM_RANK = (
    "import os, signal, sys, time\n"
    "rank = os.environ['SLURM_PROCID']\n"
    "def term(*_):\n"
    "    open(f'/mnt/work/term.{rank}', 'w').write('x')\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "open(f'/mnt/work/up.{rank}', 'w').write('x')\n"
    "time.sleep(600)\n"
)


def two_ranks(name: str, **container: Any) -> dict[str, Any]:
    """A pod of TERM_RANK on two nodes under srun, with a long grace period."""
    return podgen.pod(
        name,
        [
            podgen.container(
                "main",
                TERM_RANK,
                resources={"limits": {"cpu": "2"}},
                volumeMounts=[{"name": "work", "mountPath": "/mnt/work"}],
                **container,
            )
        ],
        volumes=[{"name": "work", "emptyDir": {}}],
        annotations={"interlink-slurm/nodes": "2", "interlink-slurm/mpi-launcher": "srun"},
        terminationGracePeriodSeconds=600,
    )


def work_files(plugin: Plugin, pod: dict[str, Any]) -> list[str]:
    return sorted(p.name for p in (plugin.pod_dir(pod) / "volumes" / "work").iterdir())


def test_a_deleted_pods_ranks_on_both_nodes_get_sigterm(plugin: Plugin) -> None:
    """srun answers SIGTERM by killing its step (SIGKILL): a delete must reach the ranks
    themselves with SIGTERM, as the kubelet's would reach a container, so that they can save
    their work within the grace period."""
    pod = two_ranks("mpi-deleted")
    plugin.create_ok(podgen.retrieved(pod))
    deadline = time.monotonic() + 120
    while work_files(plugin, pod) != ["up.0", "up.1"]:
        assert time.monotonic() < deadline, work_files(plugin, pod)
        time.sleep(0.3)

    assert plugin.delete(pod).status_code == 200

    status = plugin.wait_for(pod, all_terminated, timeout=120)
    assert work_files(plugin, pod) == ["term.0", "term.1", "up.0", "up.1"], status
    assert states(status)["main"]["terminated"]["exitCode"] == 0, status


def test_a_failed_liveness_probe_stops_the_ranks_with_sigterm(plugin: Plugin) -> None:
    """A container that fails its liveness probe is stopped as on a delete: under srun, its
    ranks get SIGTERM through Slurm, not srun's kill of the step."""
    # It fails once both ranks have their handler in place.
    check = "import os, sys; sys.exit(all(os.path.exists(f'/mnt/work/up.{r}') for r in (0, 1)))"
    probe = {
        "exec": {"command": ["python3", "-c", check]},
        "initialDelaySeconds": 0,
        "periodSeconds": 1,
        "timeoutSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 1,
    }
    pod = two_ranks("mpi-not-alive", livenessProbe=probe)
    plugin.create_ok(podgen.retrieved(pod))

    status = plugin.wait_for(pod, all_terminated, timeout=120)
    assert work_files(plugin, pod) == ["term.0", "term.1", "up.0", "up.1"], status
