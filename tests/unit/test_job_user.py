"""securityContext → the job's Unix user: sbatch --uid/--gid only when the plugin submits as
root and the namespace may use the ids; otherwise the plugin's user, said in the status."""

from __future__ import annotations

from typing import Any

import pytest

from interlink_slurm.config import ConfigError, load_settings
from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.wire import RetrievedPodData
from tests import podgen as pg

RANGES = {"namespace_uids": {"team-a": "20000-20999,30000"}, "namespace_gids": {"team-a": "500"}}


def plan(
    *, root: bool = True, namespace: str = "team-a", pod_sc: Any = None, **container_sc: Any
) -> JobPlan:
    c = pg.container("main", command=["true"])
    if container_sc:
        c["securityContext"] = container_sc
    the_pod = pg.pod("p", [c], namespace=namespace)
    if pod_sc is not None:
        the_pod["spec"]["securityContext"] = pod_sc
    data = RetrievedPodData.model_validate(pg.retrieved(the_pod))
    s = load_settings(None, data_root="/data/ils", **RANGES)
    return build_plan(data, s, "/data/ils/team-a/p", submit_as_root=root)


def uid_options(p: JobPlan) -> list[str]:
    return [d for d in p.directives if d.startswith(("--uid", "--gid"))]


def test_an_allowed_uid_and_gid_become_sbatch_options_and_the_directory_s_owner() -> None:
    p = plan(pod_sc={"runAsUser": 20001, "runAsGroup": 500})
    assert uid_options(p) == ["--uid=20001", "--gid=500"]
    assert p.owner == (20001, 500)
    assert p.warnings == ()
    # The container's own wins over the pod's.
    p = plan(pod_sc={"runAsUser": 20001}, runAsUser=30000)
    assert uid_options(p) == ["--uid=30000"] and p.owner == (30000, None)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"root": False}, "does not submit jobs as root"),
        ({"namespace": "team-b"}, "namespace team-b may not run as uid 20001"),
        ({"pod_sc": {"runAsUser": 21000}}, "may not run as uid 21000"),
    ],
)
def test_a_uid_not_allowed_runs_as_the_plugin_s_user_and_says_why(
    kwargs: dict[str, Any], why: str
) -> None:
    kwargs.setdefault("pod_sc", {"runAsUser": 20001})
    p = plan(**kwargs)
    assert uid_options(p) == [] and p.owner is None
    [(container, warning)] = p.warnings
    assert container == ""  # said for every container
    assert "runAsUser" in warning and "runs as the plugin's user" in warning and why in warning


def test_a_gid_outside_its_namespace_s_range_is_not_applied() -> None:
    p = plan(pod_sc={"runAsUser": 20001, "runAsGroup": 501})
    assert uid_options(p) == ["--uid=20001"]
    assert [w for _, w in p.warnings] == [
        "spec.securityContext.runAsGroup 501 is not applied "
        "(namespace team-a may not run as gid 501 (namespace_gids))"
    ]


def test_run_as_non_root_with_a_root_job_is_refused() -> None:
    with pytest.raises(PodRejected) as info:
        plan(pod_sc={"runAsNonRoot": True})
    assert info.value.field == "spec.securityContext.runAsNonRoot"
    assert "root" in info.value.reason
    with pytest.raises(PodRejected) as info:
        plan(runAsNonRoot=True, runAsUser=21000)  # not allowed: the plugin's user, root
    assert info.value.field == "spec.containers[0].securityContext.runAsNonRoot"
    # Fine when the job runs as an allowed uid, or as a plugin user that is not root.
    assert uid_options(plan(runAsNonRoot=True, runAsUser=20001)) == ["--uid=20001"]
    assert plan(root=False, pod_sc={"runAsNonRoot": True}).warnings == ()


def test_containers_asking_for_different_users_are_refused() -> None:
    the_pod = pg.pod(
        "p",
        [
            pg.container("a", command=["true"], securityContext={"runAsUser": 20001}),
            pg.container("b", command=["true"], securityContext={"runAsUser": 20002}),
        ],
        namespace="team-a",
    )
    data = RetrievedPodData.model_validate(pg.retrieved(the_pod))
    s = load_settings(None, data_root="/data/ils", **RANGES)
    with pytest.raises(PodRejected) as info:
        build_plan(data, s, "/x", submit_as_root=True)
    assert info.value.field == "spec.containers[1].securityContext.runAsUser"
    assert "one Slurm job" in info.value.reason


def test_namespace_uid_ranges_are_checked_at_start() -> None:
    with pytest.raises(ConfigError, match="namespace_uids: team-a: '2000-1000'"):
        load_settings(None, data_root="/d", namespace_uids={"team-a": "2000-1000"})
    with pytest.raises(ConfigError, match="team-a"):
        load_settings(None, data_root="/d", namespace_uids={"team-a": "root"})
