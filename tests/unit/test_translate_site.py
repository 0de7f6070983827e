"""Site profiles (flavors), the namespace → account map, time defaults and maxima, GPUs per node."""

from __future__ import annotations

from typing import Any

import pytest

from interlink_slurm.config import ConfigError, load_settings
from interlink_slurm.translate.site import slurm_seconds
from tests import podgen as pg
from tests.unit.test_translate import main, option, plan_of, pod_of, rejection
from tests.unit.test_translate import settings as make_settings

GPU = "nvidia.com/gpu"
# A Leonardo-like site: a CPU partition, a Booster partition with 4 A100 per node, a debug QOS.
LEONARDO: dict[str, Any] = {
    "partition": "dcgp_usr_prod",
    "account": "site_acct",
    "gpus_per_node": 4,
    "default_time": "1:00:00",
    "max_time": "1-00:00:00",
    "profiles": {
        "booster": {
            "match": "gpu",
            "partition": "boost_usr_prod",
            "gpu_type": "a100",
            "default_cpus": 8,
            "default_memory": "120Gi",
            "max_cpus": 32,
            "max_memory": "480Gi",
            "sbatch_extra": ["--exclusive"],
        },
        "dcgp": {"match": "cpu", "partition": "dcgp_usr_prod", "max_cpus": 112},
        "debug": {
            "partition": "boost_usr_prod",
            "gpu_type": "a100",
            "qos": "boost_qos_dbg",
            "max_time": "30:00",
            "default_time": 600,
        },
    },
}


def leonardo(**overrides: Any) -> Any:
    return make_settings(**{**LEONARDO, **overrides})


def gpus(n: int, **extra: Any) -> dict[str, Any]:
    return main(resources={"limits": {GPU: str(n), **extra}})


def test_gpu_pod_gets_the_gpu_profile() -> None:
    plan = plan_of(pod_of(gpus(4)), leonardo())
    assert option(plan, "--partition") == "boost_usr_prod"
    assert option(plan, "--gres") == "gpu:a100:4"
    assert option(plan, "--cpus-per-task") == "8"  # the profile's default
    assert option(plan, "--mem") == f"{120 * 1024}M"
    assert "--exclusive" in plan.directives
    assert option(plan, "--time") == "0-01:00:00"  # the site's default time


def test_cpu_pod_gets_the_cpu_profile() -> None:
    plan = plan_of(pod_of(main(resources={"limits": {"cpu": "100"}})), leonardo())
    assert option(plan, "--partition") == "dcgp_usr_prod"
    assert option(plan, "--gres") is None
    assert "--exclusive" not in plan.directives


def test_flavor_annotation_picks_a_profile_by_name() -> None:
    p = pod_of(gpus(1), annotations={"slurm-job.vk.io/flavor": "debug"})
    plan = plan_of(p, leonardo())
    assert option(plan, "--qos") == "boost_qos_dbg"
    assert option(plan, "--time") == "0-00:10:00"


def test_unknown_flavor_is_refused_listing_the_flavors() -> None:
    err = rejection(pod_of(main(), annotations={"slurm-job.vk.io/flavor": "huge"}), leonardo())
    assert err.field == "metadata.annotations[slurm-job.vk.io/flavor]"
    assert "booster, dcgp, debug" in err.reason


def test_without_profiles_the_top_level_keys_apply() -> None:
    s = make_settings(partition="cpu", gpu_partition="gpu", gpu_type="a100")
    assert option(plan_of(pod_of(gpus(2)), s), "--partition") == "gpu"
    assert option(plan_of(pod_of(main()), s), "--partition") == "cpu"


def test_more_gpus_than_a_node_has_is_refused_with_a_way_out() -> None:
    err = rejection(pod_of(gpus(8)), leonardo())
    assert "8 GPUs on one node" in err.reason and "4" in err.reason
    assert "interlink-slurm/nodes" in err.reason and "2 nodes" in err.reason
    assert "flavor booster" in err.reason


def test_gpus_over_several_nodes_when_the_pod_asks_for_them() -> None:
    p = pod_of(gpus(8, cpu="64", memory="200Gi"), annotations={"interlink-slurm/nodes": "2"})
    plan = plan_of(p, leonardo())
    assert option(plan, "--nodes") == "2"
    assert option(plan, "--gres") == "gpu:a100:4"
    assert option(plan, "--cpus-per-task") == "32"
    assert option(plan, "--mem") == f"{100 * 1024}M"


def test_gpus_that_do_not_split_evenly_over_nodes_are_refused() -> None:
    p = pod_of(gpus(6), annotations={"interlink-slurm/nodes": "4"})
    assert "evenly" in rejection(p, leonardo()).reason


@pytest.mark.parametrize(
    ("limits", "field", "words"),
    [
        ({"cpu": "64"}, "cpu", ["64 CPUs", "32 allowed", "flavor booster"]),
        ({"memory": "500Gi"}, "memory", ["512000Mi", "491520Mi"]),
    ],
)
def test_more_than_the_profiles_maximum_is_refused(
    limits: dict[str, str], field: str, words: list[str]
) -> None:
    err = rejection(pod_of(gpus(1, **limits)), leonardo())
    assert err.field.endswith(f".{field}")
    for w in words:
        assert w in err.reason, err.reason


def test_deadline_longer_than_the_maximum_is_refused() -> None:
    err = rejection(pod_of(main(), activeDeadlineSeconds=2 * 86400), leonardo())
    assert err.field == "spec.activeDeadlineSeconds"
    assert "0-00:00:00" not in err.reason and "1-00:00:00" in err.reason
    p = pod_of(gpus(1), annotations={"slurm-job.vk.io/flavor": "debug"}, activeDeadlineSeconds=3600)
    assert "1800 s" in rejection(p, leonardo()).reason


def test_deadline_within_the_maximum_wins_over_the_default() -> None:
    plan = plan_of(pod_of(main(), activeDeadlineSeconds=7200), leonardo())
    assert option(plan, "--time") == "0-02:00:00"


def test_namespace_account_map_wins_over_the_site_account() -> None:
    s = leonardo(namespace_accounts={"team-a": "proj_a"})
    assert option(plan_of(pg.pod("p", [main()], namespace="team-a"), s), "--account") == "proj_a"
    assert option(plan_of(pg.pod("p", [main()], namespace="other"), s), "--account") == "site_acct"


def test_profile_account_and_qos() -> None:
    s = leonardo(profiles={"x": {"match": "any", "account": "px", "qos": "qx"}})
    plan = plan_of(pod_of(main()), s)
    assert (option(plan, "--account"), option(plan, "--qos")) == ("px", "qx")


def test_partitions_of_profiles_may_be_asked_in_flags() -> None:
    p = pod_of(main(), annotations={"slurm-job.vk.io/flags": "-p boost_usr_prod"})
    assert option(plan_of(p, leonardo()), "--partition") == "boost_usr_prod"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90),
        ("30", 1800),
        ("30:15", 1815),
        ("1:00:00", 3600),
        ("2-00:00:00", 172800),
        ("1-12", 129600),
        ("1-0:30", 88200),
    ],
)
def test_slurm_times(value: Any, seconds: int) -> None:
    assert slurm_seconds(value) == seconds


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"max_time": "soon"}, ["max_time", "Slurm time"]),
        ({"default_time": 0}, ["default_time"]),
        ({"profiles": {"a b": {}}}, ["profile name"]),
        ({"profiles": {"x": {"partition": "a;b"}}}, ["profiles.x.partition"]),
        ({"profiles": {"x": {"sbatch_extra": ["--output=x"]}}}, ["x.sbatch_extra", "--output"]),
        ({"profiles": {"x": {"match": "sometimes"}}}, ["profiles.x.match"]),
        ({"profiles": {"x": {"colour": "red"}}}, ["colour"]),
        ({"gpus_per_node": 0}, ["gpus_per_node"]),
        ({"max_memory": "lots"}, ["max_memory"]),
    ],
)
def test_profile_config_is_checked_at_start(config: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, data_root="/data/ils", **config)
    for w in words:
        assert w in str(info.value)
