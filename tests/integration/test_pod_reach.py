"""What a pod can reach on a site with ``allow_user_shell: false``, on the real local Slurm +
Charliecloud (issue 16): each way out an attacker's pod spec found is tried again here.

Every probe names a file under /var/tmp, which the container cannot write (Charliecloud does not
bind it): if the file appears, something outside the container ran the pod's choice. The pod
must be refused (422 naming what), or run with nothing written outside its directory.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm.config import DEFAULT_PASS_ENVIRONMENT
from tests import podgen
from tests.integration.conftest import Plugin, all_terminated, slurm, squeue, states

pytestmark = pytest.mark.slurm

PROBE_DIR = Path("/var/tmp")


@pytest.fixture(scope="module")
def closed(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    """A site that runs no code of the pod's choosing on the host, with its defaults."""
    p = Plugin(tmp_path_factory.mktemp("closed"), cluster, allow_user_shell=False)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def open_site(
    cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Plugin]:
    """A site that lets pods run shell code: the pod's env still never reaches the launcher."""
    p = Plugin(tmp_path_factory.mktemp("open"), cluster)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def probe() -> Iterator[Path]:
    path = PROBE_DIR / f"ils-escape-{uuid.uuid4().hex}"
    yield path
    path.unlink(missing_ok=True)


def jobs_of(cluster: dict[str, str], pod: dict[str, Any]) -> str:
    """The jobs Slurm has for this pod (by the UID in their comment), "" when none."""
    out = slurm(cluster, "squeue", "-h", "-a", "--states=all", "-o", "%i %k")
    return " ".join(line.split()[0] for line in out.splitlines() if pod["metadata"]["uid"] in line)


def refused(plugin: Plugin, cluster: dict[str, str], pod: dict[str, Any], *words: str) -> None:
    r = plugin.create(podgen.retrieved(pod))
    assert r.status_code == 422, r.text
    for w in words:
        assert w in r.text, r.text
    assert not plugin.pod_dir(pod).exists()
    assert jobs_of(cluster, pod) == ""


def srun_pod(name: str, flags: str | None = None, **kw: Any) -> dict[str, Any]:
    annotations = {"interlink-slurm/mpi-launcher": kw.pop("launcher", "srun")}
    if flags is not None:
        annotations["slurm-job.vk.io/mpi-flags"] = flags
    return podgen.pod(
        name, [podgen.container("main", kw.pop("script", "pass"), **kw)], annotations=annotations
    )


# --- mpi-flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("launcher", "flags", "words"),
    [
        ("srun", "bash -c 'touch {probe}' x", ["'bash' is not an srun option"]),
        ("srun", "--output={probe}", ["--output", "allow_user_shell: false"]),
        ("srun", "--error {probe}", ["--error"]),
        ("srun", "--task-prolog={probe}.sh", ["--task-prolog"]),
        ("srun", "--prolog={probe}.sh", ["--prolog"]),
        ("srun", "--chdir=/var/tmp", ["--chdir"]),
        ("srun", "--export=ALL,SLURM_STDOUTMODE={probe}", ["--export"]),
        ("srun", "--multi-prog", ["--multi-prog"]),
        ("mpirun", "-x SLURM_STDOUTMODE={probe}", ["mpirun option -x"]),
        ("mpirun", "--mca plm_rsh_agent {probe}", ["--mca"]),
        ("mpiexec", "-launcher-exec {probe}", ["-launcher-exec"]),
        ("mpiexec", "-genv SLURM_TASK_PROLOG {probe}.sh", ["-genv"]),
    ],
)
def test_launcher_flags_that_reach_the_host_are_refused(
    closed: Plugin,
    cluster: dict[str, str],
    probe: Path,
    launcher: str,
    flags: str,
    words: list[str],
) -> None:
    pod = srun_pod("mpi-escape", flags.format(probe=probe), launcher=launcher)
    refused(closed, cluster, pod, "slurm-job.vk.io/mpi-flags", *words)
    assert not probe.exists()


def test_allowed_launcher_flags_run_the_containers_on_every_task(
    closed: Plugin, cluster: dict[str, str]
) -> None:
    script = "import os; print('task', os.environ['SLURM_PROCID'], os.environ['POD_SAYS'])"
    pod = srun_pod(
        "mpi-allowed",
        "-l --kill-on-bad-exit",
        script=script,
        env=[{"name": "POD_SAYS", "value": "hi"}],
    )
    pod["metadata"]["annotations"]["interlink-slurm/tasks-per-node"] = "2"
    closed.create_ok(podgen.retrieved(pod))
    status = closed.wait_for(pod, all_terminated)
    assert states(status)["main"]["terminated"]["exitCode"] == 0
    # srun --label prefixes each task's line with its rank.
    lines = sorted(closed.logs(pod, "main").text.splitlines())
    assert lines == ["0: task 0 hi", "1: task 1 hi"]


# --- the pod's environment ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["SLURM_STDOUTMODE", "SLURM_TASK_PROLOG", "SRUN_EXPORT_ENV", "OMPI_MCA_x", "PMI_FD"]
)
def test_env_a_launcher_acts_on_is_refused(
    closed: Plugin, cluster: dict[str, str], probe: Path, name: str
) -> None:
    pod = srun_pod("env-escape", env=[{"name": name, "value": str(probe)}])
    refused(closed, cluster, pod, "spec.containers[0].env[0].name", name)
    assert not probe.exists()


def test_the_pods_env_reaches_the_container_and_not_the_launcher(
    open_site: Plugin, probe: Path
) -> None:
    # With shell code allowed the pod may set such names, for its container only: srun, which
    # writes its tasks' output to SLURM_STDOUTMODE, never sees them.
    script = (
        "import os; print(os.environ['SLURM_STDOUTMODE'] == os.environ['PROBE'], "
        "os.environ['SLURM_JOB_ID'].isdigit())"
    )
    env = [
        {"name": "SLURM_STDOUTMODE", "value": str(probe)},
        {"name": "SLURM_TASK_PROLOG", "value": f"{probe}.sh"},
        {"name": "PROBE", "value": str(probe)},
    ]
    pod = srun_pod("env-kept", script=script, env=env)
    Path(f"{probe}.sh").write_text(f"#!/bin/sh\ntouch {probe}.prolog\n")
    Path(f"{probe}.sh").chmod(0o755)
    try:
        open_site.create_ok(podgen.retrieved(pod))
        status = open_site.wait_for(pod, all_terminated)
        assert states(status)["main"]["terminated"]["exitCode"] == 0
        assert open_site.logs(pod, "main").text == "True True\n"
        assert not probe.exists()
        assert not Path(f"{probe}.prolog").exists()
    finally:
        Path(f"{probe}.sh").unlink(missing_ok=True)
        Path(f"{probe}.prolog").unlink(missing_ok=True)


# --- the plugin's own environment -----------------------------------------------------------------


def test_the_plugins_own_environment_never_reaches_a_pod(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    # sbatch exports its environment to the job, and Charliecloud hands the job's to the
    # container: a unit's INTERLINK_SLURM_AUTH_TOKEN or any credential beside it would reach
    # every pod. Only what pass_environment names goes; the plugin's configuration never.
    plugin = Plugin(
        tmp_path,
        cluster,
        environ={
            "INTERLINK_SLURM_LOG_LEVEL": "debug",  # a configuration key the plugin reads
            "LAB_DB_PASSWORD": "s3cret",
            "SITE_SCRATCH": "/scratch",
        },
        pass_environment=[*DEFAULT_PASS_ENVIRONMENT, "SITE_*"],
    )
    script = (
        "import os; print(sorted(k for k in os.environ if k.startswith(('INTERLINK', 'LAB', "
        "'SITE'))), 'PATH' in os.environ, os.environ['SLURM_JOB_ID'].isdigit())"
    )
    pod = podgen.pod("own-env", [podgen.container("main", script)])
    plugin.start()
    try:
        plugin.create_ok(podgen.retrieved(pod))
        status = plugin.wait_for(pod, all_terminated)
        assert states(status)["main"]["terminated"]["exitCode"] == 0
        assert plugin.logs(pod, "main").text == "['SITE_SCRATCH'] True True\n"
    finally:
        plugin.stop()


# --- limits and bodies ----------------------------------------------------------------------------


def test_ten_thousand_containers_are_refused_naming_the_limit(
    closed: Plugin, cluster: dict[str, str]
) -> None:
    containers = [podgen.container(f"c{i}", "pass") for i in range(10_000)]
    pod = podgen.pod("crowd", containers)
    refused(closed, cluster, pod, "spec.containers", "10000 containers", "max_containers_per_pod")


def test_bad_bodies_are_4xx(closed: Plugin, cluster: dict[str, str]) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for path, method in (("/create", "POST"), ("/status", "GET"), ("/getLogs", "GET")):
        r = closed.client.request(method, path, content=deep, headers=closed.headers)
        assert r.status_code == 400 and "levels deep" in r.text, (path, r.text)
    key = "k" * 300
    mount = [{"name": "cfg", "mountPath": "/mnt/config"}]
    pod = podgen.pod(
        "long-key",
        [podgen.container("main", "pass", volumeMounts=mount)],
        volumes=[{"name": "cfg", "configMap": {"name": "settings"}}],
    )
    data = podgen.retrieved(pod, config_maps=[podgen.config_map("settings", {key: "v"})])
    r = closed.create(data)
    assert r.status_code == 422 and key in r.text, r.text
    assert jobs_of(cluster, pod) == ""


# --- safer defaults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ("--qos=normal", ["user_qos_allowed"]),
        ("--reservation=maint", ["user_reservations_allowed"]),
        ("--dependency=afterok:1", ["user_dependencies_allowed"]),
        ("--mail-user=someone@example.org", ["user_mail_allowed"]),
        ("--nice=-10", ["--nice=-10", "0 or more"]),
    ],
)
def test_open_sbatch_options_need_the_sites_list(
    closed: Plugin, cluster: dict[str, str], flags: str, words: list[str]
) -> None:
    pod = podgen.pod(
        "flags", [podgen.container("main", "pass")], annotations={"slurm-job.vk.io/flags": flags}
    )
    refused(closed, cluster, pod, "slurm-job.vk.io/flags", *words)


@pytest.mark.parametrize("image", ["/", "/var/tmp", "/etc/../var"])
def test_an_image_path_outside_the_image_roots_is_refused(
    closed: Plugin, cluster: dict[str, str], image: str
) -> None:
    pod = podgen.pod("host-root", [podgen.container("main", "pass", image=image)])
    refused(closed, cluster, pod, "spec.containers[0].image", "image_roots")


def test_another_namespace_or_name_with_the_same_uid_sees_nothing(
    closed: Plugin, cluster: dict[str, str]
) -> None:
    pod = podgen.pod(
        "owner",
        [podgen.container("main", "import time; print('mine', flush=True); time.sleep(300)")],
    )
    job_id = closed.create_ok(podgen.retrieved(pod))
    closed.wait_for(pod, lambda s: "running" in states(s)["main"])
    for change in ({"namespace": "other"}, {"name": "other"}):
        stranger = json.loads(json.dumps(pod))
        stranger["metadata"].update(change)
        r = closed.status([stranger])
        assert r.status_code == 200 and r.json() == []
        assert closed.logs(stranger, "main").status_code == 404
        r = closed.delete(stranger)
        assert r.status_code == 200 and "not known here" in r.text
        assert squeue(cluster, job_id) == "RUNNING"
    assert closed.wait_for_log(pod, "main", "mine\n")
    assert closed.delete(pod).status_code == 200
    deadline = time.monotonic() + 120
    while squeue(cluster, job_id) not in ("", "CANCELLED", "COMPLETED"):
        assert time.monotonic() < deadline, "the pod's job did not end after its delete"
        time.sleep(0.5)
