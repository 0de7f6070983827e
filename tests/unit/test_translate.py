"""A pod as interLink sends it → the JobPlan and batch script of its Slurm job (translate/*).

Pods are built with tests/podgen.py (the wire shape interLink really sends) and parsed with the
same model the API uses; every rejection is checked for the field it names.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from interlink_slurm.config import Settings, load_settings
from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.plan import CONTAINER_TMP, Bind, FileSpec, JobPlan
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.translate.script import render_script
from interlink_slurm.wire import RetrievedPodData
from tests import podgen as pg
from tests.unit.golden import check_golden

UID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
TMP_MAIN = f"{CONTAINER_TMP}/main"  # the container's own /tmp, as its argv says it
POD_DIR = f"/data/ils/pods/{UID}"
GPU = "nvidia.com/gpu"
RUNTIMES = ["apptainer", "singularity", "enroot", "charliecloud"]
ENV_PREFIX = {
    "apptainer": "APPTAINERENV_",
    "singularity": "SINGULARITYENV_",
    "enroot": "",
    "charliecloud": "",
}
LOCAL_IMAGE = {
    "apptainer": "/images/debian-python.sif",
    "singularity": "/images/debian-python.sif",
    "enroot": "/images/debian-python.sqsh",
    "charliecloud": "/images/debian-python",
}


# --- helpers ------------------------------------------------------------------------------------


def settings(**overrides: Any) -> Settings:
    return load_settings(None, data_root="/data/ils", **overrides)


def runtime_settings(runtime: str, **overrides: Any) -> Settings:
    """Settings for a runtime; the local-image runtimes get the test image mapped."""
    if runtime in ("enroot", "charliecloud"):
        overrides.setdefault("images", {pg.IMAGE: LOCAL_IMAGE[runtime]})
    return settings(runtime=runtime, **overrides)


def pod_of(*containers: dict[str, Any], uid: str = UID, **kw: Any) -> dict[str, Any]:
    return pg.pod("p", list(containers), uid=uid, **kw)


def main(**fields: Any) -> dict[str, Any]:
    """The container "main", running a command unless told otherwise."""
    fields.setdefault("command", ["true"])
    return pg.container("main", **fields)


def plan_of(the_pod: dict[str, Any], s: Settings | None = None, **objects: Any) -> JobPlan:
    data = RetrievedPodData.model_validate(pg.retrieved(the_pod, **objects))
    return build_plan(data, s or settings(), POD_DIR)


def rejection(the_pod: dict[str, Any], s: Settings | None = None, **objects: Any) -> PodRejected:
    with pytest.raises(PodRejected) as info:
        plan_of(the_pod, s, **objects)
    return info.value


def files(plan: JobPlan) -> dict[str, FileSpec]:
    return {f.path: f for f in plan.files}


def volume_files(plan: JobPlan, volume: str) -> dict[str, FileSpec]:
    prefix = f"volumes/{volume}/"
    return {p.removeprefix(prefix): f for p, f in files(plan).items() if p.startswith(prefix)}


def option(plan: JobPlan, name: str) -> str | None:
    """The value of an sbatch option, None when absent."""
    values = [d.split("=", 1)[1] for d in plan.directives if d.startswith(f"{name}=")]
    assert len(values) <= 1, plan.directives
    return values[0] if values else None


def container(plan: JobPlan, name: str = "main") -> Any:
    return next(c for c in (*plan.init_containers, *plan.containers) if c.name == name)


def resources(**kinds: dict[str, Any]) -> dict[str, Any]:
    return {"resources": kinds}


def cpu(value: Any, kind: str = "limits") -> dict[str, Any]:
    return resources(**{kind: {"cpu": value}})


def memory(value: Any, kind: str = "limits") -> dict[str, Any]:
    return resources(**{kind: {"memory": value}})


def gpus(value: Any) -> dict[str, Any]:
    return resources(limits={GPU: value}, requests={GPU: value})


GPU_SETTINGS = {"partition": "cpu", "gpu_partition": "gpu", "gpu_type": "a100"}


# --- resources ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("regular", "init", "expected"),
    [
        (["1", "1500m"], ["2"], "3"),  # the regular containers run together: 2.5 → 3
        (["1", "1"], ["500m", "5"], "5"),  # the largest init container wins
        (["2", None], [], "2"),  # a container asking nothing adds nothing
        ([None], ["3"], "3"),
    ],
)
def test_cpus_are_the_larger_of_containers_sum_and_largest_init(
    regular: list[str | None], init: list[str], expected: str
) -> None:
    containers = [
        pg.container(f"c{i}", "pass", **(cpu(v) if v else {})) for i, v in enumerate(regular)
    ]
    inits = [pg.container(f"i{i}", "pass", **cpu(v)) for i, v in enumerate(init)]
    plan = plan_of(pod_of(*containers, init=inits))
    assert option(plan, "--cpus-per-task") == expected


@pytest.mark.parametrize(
    ("regular", "init", "expected"),
    [
        (["256Mi", "256Mi"], ["1Gi"], "1024M"),
        (["1Gi", "1Gi"], ["1Gi"], "2048M"),
        (["100Mi", "1"], [], "101M"),  # 104857601 bytes → rounded up
        (["1G"], [], "954M"),
    ],
)
def test_memory_is_the_larger_of_containers_sum_and_largest_init_in_mib_rounded_up(
    regular: list[str], init: list[str], expected: str
) -> None:
    containers = [pg.container(f"c{i}", "pass", **memory(v)) for i, v in enumerate(regular)]
    inits = [pg.container(f"i{i}", "pass", **memory(v)) for i, v in enumerate(init)]
    assert option(plan_of(pod_of(*containers, init=inits)), "--mem") == expected


def test_limit_wins_over_request() -> None:
    c = main(
        resources={
            "requests": {"cpu": "1", "memory": "4Gi"},
            "limits": {"cpu": "3", "memory": "1Gi"},
        }
    )
    plan = plan_of(pod_of(c))
    assert option(plan, "--cpus-per-task") == "3"
    assert option(plan, "--mem") == "1024M"


def test_request_counts_when_no_limit() -> None:
    plan = plan_of(pod_of(main(resources={"requests": {"cpu": "2", "memory": "512Mi"}})))
    assert option(plan, "--cpus-per-task") == "2"
    assert option(plan, "--mem") == "512M"


def test_defaults_apply_when_nothing_is_asked() -> None:
    plan = plan_of(pod_of(main()), settings(default_cpus=4, default_memory="2Gi"))
    assert option(plan, "--cpus-per-task") == "4"
    assert option(plan, "--mem") == "2048M"


def test_empty_pod_gets_the_default_memory_not_one_mib() -> None:
    plan = plan_of(pod_of(main(), pg.container("side", "pass")))
    assert option(plan, "--mem") == "1024M"
    assert "--mem=1M" not in plan.directives
    assert option(plan, "--cpus-per-task") == "1"
    assert {"--nodes=1", "--ntasks=1"} <= set(plan.directives)


def test_gpu_pod_gets_typed_gres_and_gpu_partition() -> None:
    plan = plan_of(pod_of(main(**gpus(2))), settings(**GPU_SETTINGS))
    assert option(plan, "--gres") == "gpu:a100:2"
    assert option(plan, "--partition") == "gpu"


def test_gpu_pod_without_gpu_type_gets_untyped_gres() -> None:
    plan = plan_of(pod_of(main(**gpus("1"))), settings(partition="cpu", gpu_partition="gpu"))
    assert option(plan, "--gres") == "gpu:1"
    assert option(plan, "--partition") == "gpu"


def test_gpu_pod_without_gpu_partition_uses_the_partition() -> None:
    plan = plan_of(pod_of(main(**gpus(1))), settings(partition="cpu"))
    assert option(plan, "--partition") == "cpu"
    assert option(plan, "--gres") == "gpu:1"


def test_cpu_pod_goes_to_the_partition_without_gres() -> None:
    plan = plan_of(pod_of(main(**cpu("2"))), settings(**GPU_SETTINGS))
    assert option(plan, "--partition") == "cpu"
    assert option(plan, "--gres") is None


def test_no_partition_configured_means_no_partition_option() -> None:
    assert option(plan_of(pod_of(main())), "--partition") is None


def test_gpus_add_up_over_containers() -> None:
    plan = plan_of(
        pod_of(main(**gpus(1)), pg.container("b", "pass", **gpus(2))), settings(**GPU_SETTINGS)
    )
    assert option(plan, "--gres") == "gpu:a100:3"


@pytest.mark.parametrize("value", ["500m", "1.5", 0.5])
def test_fractional_gpu_is_rejected(value: Any) -> None:
    err = rejection(pod_of(main(**gpus(value))), settings(**GPU_SETTINGS))
    assert GPU in err.field


def test_gpu_quantity_split_in_millis_across_containers_is_rejected() -> None:
    p = pod_of(main(**gpus("500m")), pg.container("b", "pass", **gpus("500m")))
    rejection(p, settings(**GPU_SETTINGS))


def test_fractional_gpu_split_across_containers_is_rejected() -> None:
    p = pod_of(main(**gpus(0.5)), pg.container("b", "pass", **gpus(0.5)))
    rejection(p, settings(**GPU_SETTINGS))


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("limits", "amd.com/gpu"),
        ("requests", "amd.com/gpu"),
        ("limits", "hugepages-2Mi"),
        ("requests", "example.com/fpga"),
    ],
)
def test_unknown_resource_is_rejected_naming_the_field(kind: str, name: str) -> None:
    err = rejection(pod_of(main(resources={kind: {name: "1"}})))
    assert err.field == f"spec.containers[0].resources.{kind}.{name}"
    assert name in err.reason


def test_unknown_resource_in_init_container_names_the_init_container() -> None:
    init = pg.container("setup", "pass", resources={"limits": {"amd.com/gpu": "1"}})
    err = rejection(pod_of(main(), init=[init]))
    assert err.field == "spec.initContainers[0].resources.limits.amd.com/gpu"


def test_unknown_resource_in_second_container_names_its_index() -> None:
    err = rejection(pod_of(main(), pg.container("b", "pass", resources={"limits": {"x/y": "1"}})))
    assert err.field == "spec.containers[1].resources.limits.x/y"


def test_ephemeral_storage_is_accepted_and_ignored() -> None:
    c = main(
        resources={"limits": {"ephemeral-storage": "10Gi"}, "requests": {"ephemeral-storage": "1"}}
    )
    plan = plan_of(pod_of(c))
    assert not any("ephemeral" in d or "tmp" in d for d in plan.directives)
    assert option(plan, "--mem") == "1024M"


@pytest.mark.parametrize("kind", ["limits", "requests"])
def test_bad_quantity_is_rejected_naming_the_field(kind: str) -> None:
    err = rejection(pod_of(main(**cpu("lots", kind))))
    assert err.field == f"spec.containers[0].resources.{kind}.cpu"
    assert "lots" in err.reason


@pytest.mark.parametrize(("resource", "value"), [("cpu", "1e5000"), ("memory", "1e1000000")])
def test_absurd_quantity_is_rejected(resource: str, value: str) -> None:
    rejection(pod_of(main(resources={"limits": {resource: value}})))


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(3725, "0-01:02:05"), (59, "0-00:00:59"), (86400, "1-00:00:00"), (90061, "1-01:01:01")],
)
def test_active_deadline_becomes_time_limit(seconds: int, expected: str) -> None:
    plan = plan_of(pod_of(main(), activeDeadlineSeconds=seconds))
    assert option(plan, "--time") == expected


def test_no_deadline_means_no_time_limit() -> None:
    assert option(plan_of(pod_of(main())), "--time") is None


@pytest.mark.parametrize("seconds", [0, -5])
def test_non_positive_deadline_is_rejected(seconds: int) -> None:
    err = rejection(pod_of(main(), activeDeadlineSeconds=seconds))
    assert err.field == "spec.activeDeadlineSeconds"


def test_account_qos_and_extra_options_are_sbatch_lines_extra_last() -> None:
    s = settings(account="proj42", qos="normal", sbatch_extra=["--exclusive", "--constraint=ib"])
    plan = plan_of(pod_of(main()), s)
    assert plan.directives[-4:] == (
        "--account=proj42",
        "--qos=normal",
        "--exclusive",
        "--constraint=ib",
    )
    sbatch = [line for line in render_script(plan).splitlines() if line.startswith("#SBATCH ")]
    assert sbatch[-4:] == [
        "#SBATCH --account=proj42",
        "#SBATCH --qos=normal",
        "#SBATCH --exclusive",
        "#SBATCH --constraint=ib",
    ]


def test_no_account_or_qos_unless_configured() -> None:
    plan = plan_of(pod_of(main()))
    assert option(plan, "--account") is None
    assert option(plan, "--qos") is None


# --- volumes ------------------------------------------------------------------------------------

CM_VOLUME = {"name": "cfg", "configMap": {"name": "app-config"}}
CM_MOUNT = {"name": "cfg", "mountPath": "/etc/app"}
APP_CONFIG = pg.config_map("app-config", {"app.yaml": "port: 8080\n", "motd": "héllo\n"})


def with_mounts(*mounts: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return main(volumeMounts=list(mounts), **fields)


def test_config_map_volume_gets_all_keys_as_files() -> None:
    plan = plan_of(pod_of(with_mounts(CM_MOUNT), volumes=[CM_VOLUME]), config_maps=[APP_CONFIG])
    vf = volume_files(plan, "cfg")
    assert set(vf) == {"app.yaml", "motd"}
    assert vf["app.yaml"].content == b"port: 8080\n"
    assert vf["motd"].content == "héllo\n".encode()
    assert {f.mode for f in vf.values()} == {0o644}
    assert "volumes/cfg" in plan.dirs
    assert container(plan).binds == (Bind(f"{POD_DIR}/volumes/cfg", "/etc/app", True),)


def test_config_map_binary_data_is_decoded() -> None:
    cm = {**pg.config_map("app-config", {}), "binaryData": {"blob": "AP8K"}}
    plan = plan_of(pod_of(with_mounts(CM_MOUNT), volumes=[CM_VOLUME]), config_maps=[cm])
    assert volume_files(plan, "cfg")["blob"].content == b"\x00\xff\n"


def test_config_map_items_map_keys_to_paths() -> None:
    vol = {
        "name": "cfg",
        "configMap": {
            "name": "app-config",
            "items": [
                {"key": "app.yaml", "path": "conf/app.yaml"},
                {"key": "motd", "path": "a/b.txt"},
            ],
        },
    }
    plan = plan_of(pod_of(with_mounts(CM_MOUNT), volumes=[vol]), config_maps=[APP_CONFIG])
    vf = volume_files(plan, "cfg")
    assert set(vf) == {"conf/app.yaml", "a/b.txt"}
    assert vf["conf/app.yaml"].content == b"port: 8080\n"
    assert vf["a/b.txt"].content == "héllo\n".encode()


@pytest.mark.parametrize(
    ("default_mode", "item_mode", "expected_default", "expected_item"),
    [
        (0o440, 0o400, 0o440, 0o400),
        (None, 0o444, 0o644, 0o444),
        (0o400, None, 0o400, 0o400),
        # Never writable or executable by others, always readable by the owner.
        (0o777, 0o000, 0o644, 0o400),
    ],
)
def test_config_map_default_mode_and_item_mode(
    default_mode: int | None, item_mode: int | None, expected_default: int, expected_item: int
) -> None:
    item: dict[str, Any] = {"key": "motd", "path": "motd"}
    if item_mode is not None:
        item["mode"] = item_mode
    source: dict[str, Any] = {
        "name": "app-config",
        "items": [{"key": "app.yaml", "path": "app.yaml"}, item],
    }
    if default_mode is not None:
        source["defaultMode"] = default_mode
    vol = {"name": "cfg", "configMap": source}
    plan = plan_of(pod_of(with_mounts(CM_MOUNT), volumes=[vol]), config_maps=[APP_CONFIG])
    vf = volume_files(plan, "cfg")
    assert vf["app.yaml"].mode == expected_default
    assert vf["motd"].mode == expected_item


def test_missing_config_map_is_rejected_naming_its_volume() -> None:
    vols = [{"name": "scratch", "emptyDir": {}}, CM_VOLUME]
    mounts = [{"name": "scratch", "mountPath": "/scratch"}, CM_MOUNT]
    err = rejection(pod_of(with_mounts(*mounts), volumes=vols))
    assert err.field == "spec.volumes[1].configMap.name"
    assert "app-config" in err.reason


def test_optional_missing_config_map_gives_an_empty_volume() -> None:
    vol = {"name": "cfg", "configMap": {"name": "app-config", "optional": True}}
    plan = plan_of(pod_of(with_mounts(CM_MOUNT), volumes=[vol]))
    assert volume_files(plan, "cfg") == {}
    assert "volumes/cfg" in plan.dirs
    assert container(plan).binds == (Bind(f"{POD_DIR}/volumes/cfg", "/etc/app", True),)


def test_config_map_item_naming_a_missing_key_is_rejected() -> None:
    vol = {"name": "cfg", "configMap": {"name": "app-config", "items": [{"key": "x", "path": "x"}]}}
    err = rejection(pod_of(with_mounts(CM_MOUNT), volumes=[vol]), config_maps=[APP_CONFIG])
    assert err.field == "spec.volumes[0].configMap.items[0].key"


def test_config_map_key_that_is_no_file_name_is_rejected() -> None:
    cm = pg.config_map("app-config", {"..": "x"})
    err = rejection(pod_of(with_mounts(CM_MOUNT), volumes=[CM_VOLUME]), config_maps=[cm])
    assert err.field.startswith("spec.volumes[0]")


SECRET_BYTES = {"token": "s3crét\n".encode(), "blob": b"\x00\x01\xfe\xff", "empty": b""}
SECRET_VOLUME = {"name": "creds", "secret": {"secretName": "db", "defaultMode": 0o644}}
SECRET_MOUNT = {"name": "creds", "mountPath": "/run/creds"}


def test_secret_is_decoded_byte_exact_with_owner_only_mode() -> None:
    plan = plan_of(
        pod_of(with_mounts(SECRET_MOUNT), volumes=[SECRET_VOLUME]),
        secrets=[pg.secret("db", SECRET_BYTES)],
    )
    vf = volume_files(plan, "creds")
    assert {k: f.content for k, f in vf.items()} == SECRET_BYTES
    assert {f.mode for f in vf.values()} == {0o600}
    assert container(plan).binds == (Bind(f"{POD_DIR}/volumes/creds", "/run/creds", True),)


def test_secret_items_keep_owner_only_mode_whatever_their_mode() -> None:
    vol = {
        "name": "creds",
        "secret": {
            "secretName": "db",
            "items": [{"key": "token", "path": "t/token", "mode": 0o755}],
        },
    }
    plan = plan_of(
        pod_of(with_mounts(SECRET_MOUNT), volumes=[vol]), secrets=[pg.secret("db", SECRET_BYTES)]
    )
    vf = volume_files(plan, "creds")
    assert set(vf) == {"t/token"}
    assert vf["t/token"].content == SECRET_BYTES["token"]
    assert vf["t/token"].mode == 0o600


def test_secret_string_data_is_used_as_is() -> None:
    secret = {**pg.secret("db", {}), "stringData": {"user": "admin"}}
    plan = plan_of(pod_of(with_mounts(SECRET_MOUNT), volumes=[SECRET_VOLUME]), secrets=[secret])
    assert volume_files(plan, "creds")["user"].content == b"admin"


def test_bad_base64_secret_is_rejected_without_echoing_the_value() -> None:
    value = "hunter2-is-not-base64!"
    secret = {**pg.secret("db", {}), "data": {"password": value}}
    err = rejection(pod_of(with_mounts(SECRET_MOUNT), volumes=[SECRET_VOLUME]), secrets=[secret])
    assert err.field.startswith("spec.volumes[0]")
    assert "password" in err.reason
    assert value not in str(err)
    assert "hunter2" not in str(err)
    assert err.__cause__ is None or "hunter2" not in str(err.__cause__)


def test_missing_secret_is_rejected_naming_its_volume() -> None:
    err = rejection(pod_of(with_mounts(SECRET_MOUNT), volumes=[SECRET_VOLUME]))
    assert err.field == "spec.volumes[0].secret.secretName"


def test_optional_missing_secret_gives_no_files() -> None:
    vol = {"name": "creds", "secret": {"secretName": "db", "optional": True}}
    plan = plan_of(pod_of(with_mounts(SECRET_MOUNT), volumes=[vol]))
    assert volume_files(plan, "creds") == {}


PROJECTED = "kube-api-access-x7k2p"
PROJECTED_VOLUME = {
    "name": PROJECTED,
    "projected": {
        "defaultMode": 0o644,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {
                "configMap": {
                    "name": "kube-root-ca.crt",
                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                }
            },
        ],
    },
}
PROJECTED_MOUNT = {"name": PROJECTED, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}


def test_projected_volume_comes_from_projectedvolumemaps_named_like_the_volume() -> None:
    content = {
        "token": "eyJhbGciOi.x.y",
        "ca.crt": "-----BEGIN CERTIFICATE-----\n",
        "namespace": "default",
    }
    plan = plan_of(
        pod_of(with_mounts(PROJECTED_MOUNT), volumes=[PROJECTED_VOLUME]),
        projected=[pg.config_map(PROJECTED, content)],
    )
    vf = volume_files(plan, PROJECTED)
    assert {k: f.content.decode() for k, f in vf.items()} == content
    assert {f.mode for f in vf.values()} == {0o600}
    (bind,) = container(plan).binds
    assert bind == Bind(f"{POD_DIR}/volumes/{PROJECTED}", PROJECTED_MOUNT["mountPath"], True)


def test_projected_volume_without_its_map_is_left_out_with_a_warning() -> None:
    # interLink's DisableProjectedVolumes: no content is sent; the pod runs without it.
    other = pg.config_map("kube-api-access-other", {"token": "t"})
    plan = plan_of(
        pod_of(with_mounts(PROJECTED_MOUNT), volumes=[PROJECTED_VOLUME]), projected=[other]
    )
    assert container(plan).binds == ()
    assert volume_files(plan, PROJECTED) == {}
    [(name, warning)] = plan.warnings
    assert name == "main"
    assert PROJECTED in warning and "DisableProjectedVolumes" in warning


def test_api_server_defaulted_pod_mounts_the_service_account_volume_in_every_container() -> None:
    the_pod = pg.pod("p", [main()], init=[pg.container("init", command=["true"])], uid=UID)
    data = RetrievedPodData.model_validate(pg.kube_retrieved(the_pod))
    plan = build_plan(data, settings(), POD_DIR)
    name = pg.sa_volume_name(the_pod)
    vf = volume_files(plan, name)
    assert vf["ca.crt"].content.decode() == pg.CA_CRT
    assert vf["namespace"].content == b"default"
    for c in (*plan.init_containers, *plan.containers):
        assert Bind(f"{POD_DIR}/volumes/{name}", pg.SA_MOUNT_PATH, True) in c.binds
    assert plan.warnings == ()


def test_api_server_defaulted_pod_runs_without_the_token_under_disable_projected_volumes() -> None:
    the_pod = pg.pod("p", [main()], uid=UID)
    data = RetrievedPodData.model_validate(pg.kube_retrieved(the_pod, projected_volumes=False))
    plan = build_plan(data, settings(), POD_DIR)
    assert container(plan).binds == ()
    assert [c for c, _ in plan.warnings] == ["main"]


def test_mount_targets_found_in_the_image_replace_the_pod_s_paths() -> None:
    s = runtime_settings("charliecloud")
    image = LOCAL_IMAGE["charliecloud"]
    mounts = [PROJECTED_MOUNT, {"name": "scratch", "mountPath": "/mnt/absent"}]
    the_pod = pod_of(
        with_mounts(*mounts), volumes=[PROJECTED_VOLUME, {"name": "scratch", "emptyDir": {}}]
    )
    data = RetrievedPodData.model_validate(
        pg.retrieved(the_pod, projected=[pg.config_map(PROJECTED, {"token": "t"})])
    )
    found = {
        (image, PROJECTED_MOUNT["mountPath"]): "/run/secrets/kubernetes.io/serviceaccount",
        (image, "/mnt/absent"): None,
    }
    plan = build_plan(data, s, POD_DIR, mount_targets=found)
    (bind,) = container(plan).binds
    assert bind.target == "/run/secrets/kubernetes.io/serviceaccount"
    assert "-b" in plan.runtime_argv["main"]
    assert f"{bind.source}:{bind.target}" in plan.runtime_argv["main"]
    [(name, warning)] = plan.warnings
    assert name == "main" and "/mnt/absent" in warning and "does not exist in image" in warning


def test_empty_dir_is_a_directory_only_and_read_write() -> None:
    vol = {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}
    plan = plan_of(pod_of(with_mounts({"name": "scratch", "mountPath": "/scratch"}), volumes=[vol]))
    assert "volumes/scratch" in plan.dirs
    assert volume_files(plan, "scratch") == {}
    assert container(plan).binds == (Bind(f"{POD_DIR}/volumes/scratch", "/scratch", False),)


def test_empty_dir_mounted_read_only_is_read_only() -> None:
    vol = {"name": "scratch", "emptyDir": {}}
    mount = {"name": "scratch", "mountPath": "/scratch", "readOnly": True}
    plan = plan_of(pod_of(with_mounts(mount), volumes=[vol]))
    assert container(plan).binds[0].read_only


@pytest.mark.parametrize("read_only", [False, True])
def test_config_map_and_secret_binds_are_read_only_whatever_the_mount_says(
    read_only: bool,
) -> None:
    mounts = [{**CM_MOUNT, "readOnly": read_only}, {**SECRET_MOUNT, "readOnly": read_only}]
    plan = plan_of(
        pod_of(with_mounts(*mounts), volumes=[CM_VOLUME, SECRET_VOLUME]),
        config_maps=[APP_CONFIG],
        secrets=[pg.secret("db", SECRET_BYTES)],
    )
    assert [b.read_only for b in container(plan).binds] == [True, True]


HOST_PREFIXES = {"host_path_prefixes": ["/data", "/scratch/shared/"]}


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("/data", "/data"),
        ("/data/in", "/data/in"),
        ("/data/in/", "/data/in"),
        ("/data/./in//x", "/data/in/x"),
        ("/scratch/shared/run1", "/scratch/shared/run1"),
    ],
)
def test_host_path_inside_an_allowed_prefix_is_bound(path: str, source: str) -> None:
    vol = {"name": "host", "hostPath": {"path": path, "type": "Directory"}}
    plan = plan_of(
        pod_of(with_mounts({"name": "host", "mountPath": "/in"}), volumes=[vol]),
        settings(**HOST_PREFIXES),
    )
    assert container(plan).binds == (Bind(source, "/in", False),)
    assert not any("host" in d for d in plan.dirs)
    assert volume_files(plan, "host") == {}


@pytest.mark.parametrize("path", ["/etc", "/data2", "/data2/x", "/dat", "/data/../etc", "/scratch"])
def test_host_path_outside_the_allowed_prefixes_is_rejected(path: str) -> None:
    vol = {"name": "host", "hostPath": {"path": path}}
    err = rejection(
        pod_of(with_mounts({"name": "host", "mountPath": "/in"}), volumes=[vol]),
        settings(**HOST_PREFIXES),
    )
    assert err.field == "spec.volumes[0].hostPath.path"


def test_host_path_is_rejected_when_no_prefix_is_configured() -> None:
    vol = {"name": "host", "hostPath": {"path": "/data/in"}}
    err = rejection(pod_of(with_mounts({"name": "host", "mountPath": "/in"}), volumes=[vol]))
    assert err.field == "spec.volumes[0].hostPath.path"


@pytest.mark.parametrize("path", ["data/in", "/data/a:b", "/data/a,b"])
def test_unusable_host_path_is_rejected(path: str) -> None:
    vol = {"name": "host", "hostPath": {"path": path}}
    err = rejection(
        pod_of(with_mounts({"name": "host", "mountPath": "/in"}), volumes=[vol]),
        settings(**HOST_PREFIXES),
    )
    assert err.field == "spec.volumes[0].hostPath.path"


def test_persistent_volume_claim_is_rejected_naming_the_type() -> None:
    vol = {"name": "data", "persistentVolumeClaim": {"claimName": "pvc-1"}}
    err = rejection(pod_of(with_mounts({"name": "data", "mountPath": "/d"}), volumes=[vol]))
    assert err.field == "spec.volumes[0].persistentVolumeClaim"
    assert "persistentVolumeClaim" in err.reason


def test_unknown_volume_type_is_rejected_naming_the_type() -> None:
    vol = {"name": "share", "nfs": {"server": "nfs.example", "path": "/exports"}}
    err = rejection(pod_of(with_mounts({"name": "share", "mountPath": "/d"}), volumes=[vol]))
    assert err.field == "spec.volumes[0]"
    assert "'nfs'" in err.reason
    assert "share" in err.reason


def test_mount_naming_no_volume_is_rejected_naming_the_mount() -> None:
    err = rejection(pod_of(with_mounts({"name": "nowhere", "mountPath": "/x"})))
    assert err.field == "spec.containers[0].volumeMounts[0].name"
    assert "nowhere" in err.reason


def test_init_container_mount_naming_no_volume_is_rejected_naming_it() -> None:
    init = pg.container(
        "setup", "pass", volumeMounts=[CM_MOUNT, {"name": "gone", "mountPath": "/g"}]
    )
    err = rejection(pod_of(main(), init=[init], volumes=[CM_VOLUME]), config_maps=[APP_CONFIG])
    assert err.field == "spec.initContainers[0].volumeMounts[1].name"


def test_sub_path_is_appended_to_the_bind_source() -> None:
    mount = {"name": "cfg", "mountPath": "/etc/app/app.yaml", "subPath": "app.yaml"}
    plan = plan_of(pod_of(with_mounts(mount), volumes=[CM_VOLUME]), config_maps=[APP_CONFIG])
    (bind,) = container(plan).binds
    assert bind.source == f"{POD_DIR}/volumes/cfg/app.yaml"
    assert bind.source.endswith("/app.yaml")
    assert bind.target == "/etc/app/app.yaml"


def test_sub_path_of_a_host_path() -> None:
    vol = {"name": "host", "hostPath": {"path": "/data/in"}}
    mount = {"name": "host", "mountPath": "/in", "subPath": "run/7"}
    plan = plan_of(pod_of(with_mounts(mount), volumes=[vol]), settings(**HOST_PREFIXES))
    assert container(plan).binds[0].source == "/data/in/run/7"


def test_each_container_gets_only_its_own_binds() -> None:
    side = pg.container("side", "pass", volumeMounts=[SECRET_MOUNT])
    plan = plan_of(
        pod_of(with_mounts(CM_MOUNT), side, volumes=[CM_VOLUME, SECRET_VOLUME]),
        config_maps=[APP_CONFIG],
        secrets=[pg.secret("db", SECRET_BYTES)],
    )
    assert [b.target for b in container(plan).binds] == ["/etc/app"]
    assert [b.target for b in container(plan, "side").binds] == ["/run/creds"]


def test_unmounted_volumes_are_ignored_even_when_their_data_is_missing() -> None:
    vols = [
        {"name": "cfg", "configMap": {"name": "missing"}},
        {"name": "creds", "secret": {"secretName": "missing"}},
        {"name": "share", "nfs": {"server": "x", "path": "/"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "c"}},
        {"name": "host", "hostPath": {"path": "/etc"}},
        PROJECTED_VOLUME,
    ]
    plan = plan_of(pod_of(main(), volumes=vols))
    assert plan.dirs == ("containers",)
    assert not any(p.startswith("volumes/") for p in files(plan))


@pytest.mark.parametrize("sub_path", ["app:v2.yaml", "a,b.yaml"])
def test_sub_path_cannot_break_an_apptainer_bind_spec(sub_path: str) -> None:
    cm = pg.config_map("app-config", {sub_path: "x"})
    mount = {"name": "cfg", "mountPath": "/etc/app.yaml", "subPath": sub_path}
    try:
        plan = plan_of(pod_of(with_mounts(mount), volumes=[CM_VOLUME]), config_maps=[cm])
    except (PodRejected, ValidationError):
        return  # rejecting such a subPath is a fine answer too
    argv = plan.runtime_argv["main"]
    spec = argv[argv.index("--bind") + 1]
    assert "," not in spec
    assert spec.split(":") == [f"{POD_DIR}/volumes/cfg/{sub_path}", "/etc/app.yaml", "ro"]


def test_enroot_mount_entry_survives_a_space_in_the_mount_path() -> None:
    vol = {"name": "scratch", "emptyDir": {}}
    mount = {"name": "scratch", "mountPath": "/my data"}
    try:
        plan = plan_of(pod_of(with_mounts(mount), volumes=[vol]), runtime_settings("enroot"))
    except PodRejected:
        return
    argv = plan.runtime_argv["main"]
    entry = argv[argv.index("--mount") + 1]
    assert len(entry.split()) == 4, entry


# --- images -------------------------------------------------------------------------------------


def image_of(
    ref: str, runtime: str = "apptainer", annotations: dict[str, str] | None = None, **kw: Any
) -> str:
    plan = plan_of(
        pod_of(main(image=ref), annotations=annotations), settings(runtime=runtime, **kw)
    )
    c = container(plan)
    assert c.image_ref == ref
    return str(c.image)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_images_map_is_used_first(runtime: str) -> None:
    images = {"python:3.12": "/images/python-3.12", "docker://x": "/images/x"}
    assert image_of("python:3.12", runtime, images=images) == "/images/python-3.12"
    assert image_of("docker://x", runtime, images=images) == "/images/x"


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_reference_without_scheme_is_pulled_from_docker(runtime: str) -> None:
    assert image_of("python:3.12", runtime) == "docker://python:3.12"
    assert image_of("ghcr.io/org/app@sha256:abc", runtime) == "docker://ghcr.io/org/app@sha256:abc"


@pytest.mark.parametrize("ref", ["docker://python:3.12", "oras://reg/x:1", "/abs/path.sif"])
def test_scheme_or_absolute_path_is_kept(ref: str) -> None:
    assert image_of(ref, image_roots=["/abs"]) == ref


def test_absolute_path_is_kept_for_local_image_runtimes() -> None:
    assert image_of("/images/app", "charliecloud", image_roots=["/images"]) == "/images/app"
    assert image_of("/images/app.sqsh", "enroot", image_roots=["/images"]) == "/images/app.sqsh"


@pytest.mark.parametrize(
    ("ref", "annotations", "config"),
    [
        ("/etc", None, {}),  # no image_roots: no host path at all
        ("/images2/app", None, {"image_roots": ["/images"]}),
        ("/images/../etc", None, {"image_roots": ["/images"]}),
        ("etc", {"slurm-job.vk.io/image-root": "/"}, {"image_roots": ["/images"]}),
        ("../../etc", None, {"image_root": "/images"}),
    ],
)
def test_an_image_path_outside_the_image_roots_is_refused(
    ref: str, annotations: dict[str, str] | None, config: dict[str, Any]
) -> None:
    err = rejection(pod_of(main(image=ref), annotations=annotations), settings(**config))
    assert err.field == "spec.containers[0].image"
    assert "outside the directories images may come from" in err.reason


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("/images", "/images/python:3.12"),
        ("/images/", "/images/python:3.12"),
        ("docker://registry.example:5000", "docker://registry.example:5000/python:3.12"),
        ("docker://", "docker://python:3.12"),
    ],
)
def test_image_root_is_a_prefix(root: str, expected: str) -> None:
    assert image_of("python:3.12", image_root=root) == expected


def test_image_root_annotation_wins_over_config() -> None:
    annotations = {"slurm-job.vk.io/image-root": "/project/images"}
    assert (
        image_of("app:1", annotations=annotations, image_root="/images", image_roots=["/project"])
        == "/project/images/app:1"
    )


@pytest.mark.parametrize("runtime", ["enroot", "charliecloud"])
def test_image_root_lets_local_image_runtimes_run_unmapped_refs(runtime: str) -> None:
    assert image_of("app", runtime, image_root="/images") == "/images/app"


@pytest.mark.parametrize("runtime", ["enroot", "charliecloud"])
def test_local_image_runtime_rejects_an_unmapped_ref(runtime: str) -> None:
    err = rejection(pod_of(main(image="python:3.12")), settings(runtime=runtime))
    assert err.field == "spec.containers[0].image"
    assert "python:3.12" in err.reason


def test_local_image_runtime_rejection_names_the_init_container() -> None:
    init = pg.container("setup", "pass", image="busybox")
    s = settings(runtime="charliecloud", images={pg.IMAGE: "/images/x"})
    err = rejection(pod_of(main(), init=[init]), s)
    assert err.field == "spec.initContainers[0].image"


def test_empty_image_is_rejected() -> None:
    err = rejection(pod_of(main(image="")))
    assert err.field == "spec.containers[0].image"


@pytest.mark.parametrize("runtime", ["enroot", "charliecloud"])
def test_local_image_runtime_rejects_an_unmapped_docker_url(runtime: str) -> None:
    err = rejection(pod_of(main(image="docker://python:3.12")), settings(runtime=runtime))
    assert err.field == "spec.containers[0].image"


@pytest.mark.parametrize(
    ("image", "annotations"),
    [("--bind=/:/host://x", None), (pg.IMAGE, {"slurm-job.vk.io/image-root": "--bind=/:/host"})],
)
def test_image_cannot_inject_runtime_options(
    image: str, annotations: dict[str, str] | None
) -> None:
    try:
        plan = plan_of(pod_of(main(image=image), annotations=annotations))
    except PodRejected:
        return
    assert not container(plan).image.startswith("-")


# --- environment and command --------------------------------------------------------------------


def env(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"name": n, "value": v} for n, v in pairs]


def test_references_are_expanded_in_command_and_args() -> None:
    c = main(
        command=["echo", "$(GREETING)"],
        args=["$(GREETING), $(NAME)!", "$$(GREETING)", "$(NOPE)", "a$$b", "$(GREETING", "$HOME"],
        env=env(("GREETING", "hello"), ("NAME", "world")),
    )
    cp = container(plan_of(pod_of(c)))
    assert cp.command == ("echo", "hello")
    assert cp.args == ("hello, world!", "$(GREETING)", "$(NOPE)", "a$b", "$(GREETING", "$HOME")


def test_env_values_see_earlier_variables_only() -> None:
    c = main(
        env=env(
            ("A", "a"),
            ("B", "$(A)-b"),
            ("C", "$(D)"),  # D comes later: kept as written
            ("D", "d"),
            ("E", "$$(A)"),
            ("F", "$(A)$(B)$(NOPE)"),
        )
    )
    assert dict(container(plan_of(pod_of(c))).env) == {
        "HOSTNAME": "p",
        "A": "a",
        "B": "a-b",
        "C": "$(D)",
        "D": "d",
        "E": "$(A)",
        "F": "aa-b$(NOPE)",
    }


def test_command_sees_the_final_value_of_a_variable() -> None:
    c = main(command=["echo", "$(A)"], env=env(("A", "1"), ("A", "$(A)2")))
    cp = container(plan_of(pod_of(c)))
    assert cp.env == (("HOSTNAME", "p"), ("A", "12"))
    assert cp.command == ("echo", "12")


def test_duplicate_env_names_last_wins() -> None:
    c = main(env=env(("A", "1"), ("B", "2"), ("A", "3")))
    cp = container(plan_of(pod_of(c)))
    assert dict(cp.env) == {"HOSTNAME": "p", "A": "3", "B": "2"}
    assert len(cp.env) == 3


def test_env_var_without_value_is_empty() -> None:
    c = main(env=[{"name": "EMPTY"}, {"name": "NULL", "value": None}])
    assert container(plan_of(pod_of(c))).env == (("HOSTNAME", "p"), ("EMPTY", ""), ("NULL", ""))


def test_nul_in_env_value_is_rejected_naming_it() -> None:
    err = rejection(pod_of(main(env=env(("OK", "1"), ("BAD", "a\x00b")))))
    assert err.field == "spec.containers[0].env[1].value"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_env_file_is_nul_separated_with_the_runtime_prefix(runtime: str) -> None:
    c = main(env=env(("A", "1"), ("MULTI", "line1\nline2\n"), ("EQ", "x=y"), ("U", "ünï €")))
    plan = plan_of(pod_of(c), runtime_settings(runtime))
    f = files(plan)["containers/main.env"]
    p = ENV_PREFIX[runtime].encode()
    assert (
        f.content
        == (p + b"HOSTNAME=p\0" + p + b"A=1\0" + p + b"MULTI=line1\nline2\n\0" + p + b"EQ=x=y\0")
        + p
        + "U=ünï €\0".encode()
    )
    assert f.mode == 0o600


def test_container_without_env_has_only_the_pods_hostname() -> None:
    plan = plan_of(pod_of(main()))
    assert files(plan)["containers/main.env"].content == b"APPTAINERENV_HOSTNAME=p\0"


@pytest.mark.parametrize(
    ("spec", "env", "expected"),
    [
        ({}, [], "p"),
        ({"hostname": "web-0"}, [], "web-0"),
        ({}, [{"name": "HOSTNAME", "value": "mine"}], "mine"),
    ],
)
def test_every_container_gets_the_pods_hostname_as_kubernetes_gives_it(
    spec: dict[str, Any], env: list[dict[str, str]], expected: str
) -> None:
    plan = plan_of(pod_of(main(env=env), init=[pg.container("setup", "pass")], **spec))
    (setup,), (main_plan,) = plan.init_containers, plan.containers
    assert dict(main_plan.env)["HOSTNAME"] == expected
    assert dict(setup.env)["HOSTNAME"] == spec.get("hostname", "p")  # sets none of its own
    for c in (setup, main_plan):
        assert [n for n, _ in c.env].count("HOSTNAME") == 1


def test_a_long_pod_name_is_cut_to_a_hostname() -> None:
    name = "a" * 62 + "-b"
    plan = plan_of(pg.pod(name, [main()]))
    assert dict(plan.containers[0].env)["HOSTNAME"] == "a" * 62


def test_environment_values_never_appear_in_the_script() -> None:
    plan = plan_of(pod_of(main(env=env(("TOKEN", "very-secret-value")))))
    assert "very-secret-value" not in render_script(plan)


def test_relative_working_dir_is_rejected() -> None:
    err = rejection(pod_of(main(workingDir="srv")))
    assert err.field == "spec.containers[0].workingDir"


@pytest.mark.parametrize(
    ("arg", "expected"),
    [("$($$)", "$($$)"), ("$(X $(B)", "$(X $(B)"), ("$(A:B)", "colon"), ("$(1X)", "digit")],
)
def test_expansion_follows_kubernetes(arg: str, expected: str) -> None:
    c = main(command=["echo", arg], env=env(("B", "b"), ("A:B", "colon"), ("1X", "digit")))
    assert container(plan_of(pod_of(c))).command == ("echo", expected)


# --- runtime argv -------------------------------------------------------------------------------


def argv_of(c: dict[str, Any], runtime: str = "apptainer", **kw: Any) -> tuple[str, ...]:
    plan = plan_of(pod_of(c, volumes=kw.pop("volumes", None)), runtime_settings(runtime, **kw))
    return plan.runtime_argv[c["name"]]


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_apptainer_execs_a_command_and_runs_args_alone(runtime: str) -> None:
    with_command = argv_of(main(command=["python3"], args=["-V"]), runtime)
    assert with_command == (
        runtime,
        "exec",
        "--workdir",
        TMP_MAIN,
        "--containall",
        f"docker://{pg.IMAGE}",
        "python3",
        "-V",
    )
    args_only = argv_of(pg.container("main", args=["serve", "--port=80"]), runtime)
    assert args_only == (
        runtime,
        "run",
        "--workdir",
        TMP_MAIN,
        "--containall",
        f"docker://{pg.IMAGE}",
        "serve",
        "--port=80",
    )
    neither = argv_of(pg.container("main"), runtime)
    assert neither == (
        runtime,
        "run",
        "--workdir",
        TMP_MAIN,
        "--containall",
        f"docker://{pg.IMAGE}",
    )


def test_apptainer_binds_and_working_directory() -> None:
    vols = [{"name": "scratch", "emptyDir": {}}, {"name": "ro", "emptyDir": {}}]
    c = main(
        workingDir="/srv",
        volumeMounts=[
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "ro", "mountPath": "/ro", "readOnly": True},
        ],
    )
    assert argv_of(c, volumes=vols) == (
        "apptainer",
        "exec",
        "--workdir",
        TMP_MAIN,
        "--containall",
        "--bind",
        f"{POD_DIR}/volumes/scratch:/scratch:rw",
        "--bind",
        f"{POD_DIR}/volumes/ro:/ro:ro",
        "--pwd",
        "/srv",
        f"docker://{pg.IMAGE}",
        "true",
    )


def test_nv_only_for_containers_with_gpus() -> None:
    p = pod_of(main(**gpus(1)), pg.container("side", "pass"))
    plan = plan_of(p, settings(**GPU_SETTINGS))
    assert "--nv" in plan.runtime_argv["main"]
    assert "--nv" not in plan.runtime_argv["side"]
    assert container(plan).gpus == 1
    assert container(plan, "side").gpus == 0


def test_runtime_path_and_options_are_used() -> None:
    s = settings(runtime_path="/opt/apptainer/bin/apptainer", runtime_options=["--cleanenv"])
    argv = plan_of(pod_of(main()), s).runtime_argv["main"]
    assert argv == (
        "/opt/apptainer/bin/apptainer",
        "exec",
        "--contain",  # a private /tmp, which the site's options no longer give
        "--workdir",
        TMP_MAIN,
        "--cleanenv",
        f"docker://{pg.IMAGE}",
        "true",
    )


def test_enroot_mounts_env_names_and_working_directory() -> None:
    vols = [{"name": "scratch", "emptyDir": {}}, CM_VOLUME]
    c = main(
        command=["python3", "app.py"],
        workingDir="/srv",
        env=env(("A", "1"), ("B", "2")),
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}, CM_MOUNT],
    )
    plan = plan_of(pod_of(c, volumes=vols), runtime_settings("enroot"), config_maps=[APP_CONFIG])
    assert plan.runtime_argv["main"] == (
        "enroot",
        "start",
        "--mount",
        f"{TMP_MAIN} /tmp none x-create=dir,rbind",
        "--mount",
        f"{POD_DIR}/volumes/scratch /scratch none x-create=auto,rbind",
        "--mount",
        f"{POD_DIR}/volumes/cfg /etc/app none x-create=auto,rbind,ro",
        "--env",
        "HOSTNAME",
        "--env",
        "A",
        "--env",
        "B",
        LOCAL_IMAGE["enroot"],
        "/bin/sh",
        "-c",
        'cd -- "$0" && exec "$@"',
        "/srv",
        "python3",
        "app.py",
    )


def test_enroot_working_directory_wrapper_really_changes_directory(tmp_path: Any) -> None:
    argv = argv_of(main(command=["pwd"], workingDir="/srv"), "enroot")
    wrapper = list(argv[argv.index(LOCAL_IMAGE["enroot"]) + 1 :])
    wrapper[3] = str(tmp_path)  # the working directory, made real
    out = subprocess.run(wrapper, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(tmp_path)


def test_enroot_working_directory_without_command_still_runs_something() -> None:
    try:
        argv = argv_of(pg.container("main", workingDir="/w"), "enroot")
    except PodRejected:
        return
    after_image = argv[argv.index(LOCAL_IMAGE["enroot"]) + 1 :]
    if after_image[:3] == ("/bin/sh", "-c", 'cd -- "$0" && exec "$@"'):
        assert after_image[4:], "the wrapper has nothing to exec: it exits 0, running nothing"


def test_enroot_create_mode_names_each_distinct_image_in_order_of_first_use() -> None:
    images = {"a": "/images/a.sqsh", "b": "/images/b.sqsh", "a2": "/images/a.sqsh"}
    s = runtime_settings(
        "enroot", images=images, enroot_create_dir="/local/enroot", runtime_path="/opt/enroot"
    )
    the_pod = pod_of(
        main(image="b", readinessProbe={"exec": {"command": ["cat", "/ok"]}}),
        pg.container("side", command=["true"], image="a2"),
        init=[pg.container("setup", command=["true"], image="a")],
    )
    plan = plan_of(the_pod, s)
    assert plan.enroot_data_path == f"/local/enroot/interlink-slurm-{UID}"
    assert [(c.name, c.image, c.argv) for c in plan.enroot_creates] == [
        ("ils-0", "/images/a.sqsh", ("/opt/enroot", "create", "--name", "ils-0", "/images/a.sqsh")),
        ("ils-1", "/images/b.sqsh", ("/opt/enroot", "create", "--name", "ils-1", "/images/b.sqsh")),
    ]
    assert {c.name: c.image for c in (*plan.init_containers, *plan.containers)} == {
        "setup": "ils-0",
        "main": "ils-1",
        "side": "ils-0",
    }
    tmp = ("--mount", f"{TMP_MAIN} /tmp none x-create=dir,rbind", "--env", "HOSTNAME")
    assert plan.runtime_argv["main"] == ("/opt/enroot", "start", *tmp, "ils-1", "true")
    probe = container(plan).lifecycle.readiness
    assert probe[-9:] == ("/opt/enroot", "start", *tmp, "ils-1", "cat", "/ok")
    # The job's own directory, made and removed on the node; nothing about it in the pod's dirs.
    assert plan.node_dirs == () and plan.scratch_dirs == ()
    script = render_script(plan)
    assert f"export ENROOT_DATA_PATH=/local/enroot/interlink-slurm-{UID}\n" in script
    assert (
        "/opt/enroot create --name ils-1 /images/b.sqsh || "
        "{ echo 'interlink-slurm: cannot unpack /images/b.sqsh'; exit 1; }\n"
    ) in script


def test_enroot_without_create_dir_starts_the_image_file() -> None:
    plan = plan_of(pod_of(main()), runtime_settings("enroot"))
    assert plan.enroot_data_path is None and plan.enroot_creates == ()
    assert LOCAL_IMAGE["enroot"] in plan.runtime_argv["main"]
    assert "ENROOT_DATA_PATH" not in render_script(plan)


def test_charliecloud_binds_working_directory_and_separator() -> None:
    vols = [{"name": "scratch", "emptyDir": {}}]
    c = main(
        command=["python3", "--", "-x"],
        args=["--flag"],
        workingDir="/srv",
        volumeMounts=[{"name": "scratch", "mountPath": "/mnt/0"}],
    )
    assert argv_of(c, "charliecloud", volumes=vols) == (
        "ch-run",
        "--set-env=containers/main.image-env",
        "-c",
        "/srv",
        "-b",
        f"{TMP_MAIN}:/tmp",
        "-b",
        f"{POD_DIR}/volumes/scratch:/mnt/0",
        LOCAL_IMAGE["charliecloud"],
        "--",
        "python3",
        "--",
        "-x",
        "--flag",
    )


@pytest.mark.parametrize(
    ("runtime", "options", "expected"),
    [
        ("apptainer", [], ("--contain", "--workdir", TMP_MAIN)),
        ("apptainer", ["--containall"], ("--workdir", TMP_MAIN, "--containall")),
        ("singularity", ["--contain"], ("--workdir", TMP_MAIN, "--contain")),
        ("apptainer", ["--workdir=/site/tmp"], ("--contain", "--workdir=/site/tmp")),
        ("charliecloud", [], ("-b", f"{TMP_MAIN}:/tmp")),
        ("charliecloud", ["-t"], ("-t",)),
        ("enroot", [], ("--mount", f"{TMP_MAIN} /tmp none x-create=dir,rbind")),
    ],
)
def test_every_container_gets_a_private_tmp_said_once(
    runtime: str, options: list[str], expected: tuple[str, ...]
) -> None:
    """One /tmp of the container's own (its exec probes and hooks share it), unless the site's
    options already give /tmp a place."""
    plan = plan_of(pod_of(main()), runtime_settings(runtime, runtime_options=options))
    argv = plan.runtime_argv["main"]
    # Charliecloud: after the image's ENV file and working directory (--set-env=F -c DIR).
    start = 4 if runtime == "charliecloud" else 2
    assert argv[start : start + len(expected)] == expected
    assert sum("/tmp" in a or a in ("--contain", "--containall", "-t") for a in argv) == sum(
        "/tmp" in a or a in ("--contain", "--containall", "-t") for a in expected
    )


def test_a_containers_tmp_is_made_on_the_node_and_shared_with_its_exec_hooks() -> None:
    c = main(lifecycle={"postStart": {"exec": {"command": ["touch", "/tmp/started"]}}})
    prep = pg.container("prep", "print(0)")
    plan = plan_of(pod_of(c, init=[prep]), runtime_settings("charliecloud"))
    hook = plan.containers[0].lifecycle.post_start
    assert hook[hook.index("-b") + 1] == f"{TMP_MAIN}:/tmp"
    script = render_script(plan)
    # A pod of a group (ILS_MEMBER) shares the job with its siblings: its own directory.
    own = "${SLURM_JOB_ID:-pid$$}${ILS_MEMBER:+-$ILS_MEMBER}"
    assert f'ILS_TMP="${{TMPDIR:-/tmp}}/interlink-slurm-{own}"' in script
    assert 'ils_tmp_sweep "${TMPDIR:-/tmp}" &\n' in script  # never delays the containers
    assert 'mkdir -m 1777 -- "$ILS_TMP"/prep "$ILS_TMP"/main || exit 1' in script
    assert "'-b' \"$ILS_TMP\"'/main:/tmp'" not in script
    assert '-b "$ILS_TMP"/main:/tmp' in script
    assert '  rm -rf -- "$ILS_TMP"\n' in script  # when the job ends


def test_charliecloud_read_only_volumes_are_made_read_only_by_the_job_and_writable_after() -> None:
    vols = [CM_VOLUME, {"name": "scratch", "emptyDir": {}}]
    c = main(volumeMounts=[CM_MOUNT, {"name": "scratch", "mountPath": "/scratch"}])
    plan = plan_of(
        pod_of(c, volumes=vols), runtime_settings("charliecloud"), config_maps=[APP_CONFIG]
    )
    assert plan.read_only_dirs == ("volumes/cfg",)
    script = render_script(plan)
    assert "\nchmod -R a-w -- volumes/cfg\n" in script
    assert "\n  chmod -R u+w -- volumes/cfg\n" in script
    # Runtimes with read-only binds need none of it.
    plan = plan_of(pod_of(c, volumes=vols), runtime_settings("apptainer"), config_maps=[APP_CONFIG])
    assert plan.read_only_dirs == ()


def test_charliecloud_runs_args_alone_as_the_command() -> None:
    argv = argv_of(pg.container("main", args=["python3", "-V"]), "charliecloud")
    assert argv[-3:] == ("--", "python3", "-V")


def test_charliecloud_rejects_a_container_without_command_or_args() -> None:
    err = rejection(pod_of(pg.container("main")), runtime_settings("charliecloud"))
    assert err.field == "spec.containers[0].command"
    err = rejection(pod_of(main(), init=[pg.container("setup")]), runtime_settings("charliecloud"))
    assert err.field == "spec.initContainers[0].command"


# --- golden scripts: 3 pods x 4 runtimes ----------------------------------------------------------

SIMPLE_UID = "11111111-2222-4333-8444-555555555555"
RUN_UID = "22222222-3333-4444-8555-666666666666"
GPU_UID = "33333333-4444-4555-8666-777777777777"


def simple_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    p = pg.pod(
        "hello",
        [pg.container("main", "print('hello, world')")],
        namespace="team-a",
        uid=SIMPLE_UID,
    )
    return p, {}


def run_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    web = pg.container(
        "web",
        args=["serve", "--port=8080", "--motd=it's $(HOME) & `date`"],
        workingDir="/srv/app",
        volumeMounts=[
            {"name": "config", "mountPath": "/etc/app"},
            {"name": "cache", "mountPath": "/cache", "readOnly": True},
        ],
    )
    p = pg.pod(
        "web-7d9f",
        [web],
        volumes=[
            {"name": "config", "configMap": {"name": "web-config"}},
            {"name": "cache", "emptyDir": {}},
        ],
        uid=RUN_UID,
    )
    return p, {"config_maps": [pg.config_map("web-config", {"app.yaml": "port: 8080\n"})]}


def gpu_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    train = pg.container(
        "train",
        command=["python3", "train.py"],
        args=["--epochs=$(EPOCHS)", "--data=$(DATA_DIR)"],
        env=env(("EPOCHS", "10"), ("DATA_DIR", "/data/in"), ("NOTE", "two\nlines")),
        resources={
            "limits": {GPU: "2", "cpu": "8", "memory": "32Gi"},
            "requests": {GPU: "2", "cpu": "4", "memory": "16Gi"},
        },
    )
    monitor = pg.container(
        "monitor",
        command=["sh", "-c", "while sleep 30; do date; done"],
        env=env(("INTERVAL", "30")),
        resources={"limits": {"cpu": "500m", "memory": "128Mi"}},
    )
    p = pg.pod("train-job", [train, monitor], uid=GPU_UID, activeDeadlineSeconds=7200)
    return p, {}


GOLDEN_PODS: dict[str, Callable[[], tuple[dict[str, Any], dict[str, Any]]]] = {
    "simple": simple_pod,
    "run": run_pod,
    "gpu": gpu_pod,
}


def golden_plan(pod_name: str, runtime: str) -> JobPlan:
    the_pod, objects = GOLDEN_PODS[pod_name]()
    data = RetrievedPodData.model_validate(pg.retrieved(the_pod, **objects))
    s = runtime_settings(runtime, **GPU_SETTINGS)
    return build_plan(data, s, f"/data/ils/pods/{the_pod['metadata']['uid']}")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("pod_name", list(GOLDEN_PODS))
def test_rendered_script_matches_golden(pod_name: str, runtime: str) -> None:
    check_golden(f"{pod_name}.{runtime}.sh", render_script(golden_plan(pod_name, runtime)))


def test_every_pod_directory_gets_the_job_script_library_which_matches_its_golden() -> None:
    """The goldens hold what is specific to each pod; what they all source is this one."""
    files = {f.path: f for f in golden_plan("simple", "apptainer").files}
    library = files["ils.sh"]
    assert library.mode == 0o600
    assert ". ./ils.sh || exit 1" in render_script(golden_plan("simple", "apptainer"))
    check_golden("ils.sh", library.content.decode())


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("pod_name", list(GOLDEN_PODS))
def test_rendered_script_is_valid_bash(pod_name: str, runtime: str) -> None:
    script = render_script(golden_plan(pod_name, runtime))
    run = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_golden_apptainer_argv_semantics() -> None:
    simple = golden_plan("simple", "apptainer").runtime_argv["main"]
    assert simple[:2] == ("apptainer", "exec")
    run = golden_plan("run", "apptainer").runtime_argv["web"]
    assert run[:2] == ("apptainer", "run")
    assert f"/data/ils/pods/{RUN_UID}/volumes/config:/etc/app:ro" in run
    assert f"/data/ils/pods/{RUN_UID}/volumes/cache:/cache:ro" in run
    assert run[run.index("--pwd") + 1] == "/srv/app"
    gpu = golden_plan("gpu", "apptainer")
    assert "--nv" in gpu.runtime_argv["train"]
    assert "--nv" not in gpu.runtime_argv["monitor"]
    assert gpu.runtime_argv["train"][-2:] == ("--epochs=10", "--data=/data/in")


# --- script structure ---------------------------------------------------------------------------

FAIL_FAST = 'rc=$?; [ "$rc" -eq 0 ] || exit "$rc"'


def test_script_runs_init_containers_in_order_then_containers_together() -> None:
    p = pod_of(
        main(),
        pg.container("side", "pass"),
        init=[pg.container("first", "pass"), pg.container("second", "pass")],
    )
    lines = render_script(plan_of(p)).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("ils_container ")]
    names = [lines[i].split()[1] for i in starts]
    assert names == ["first", "second", "main", "side"]
    for i in starts[:2]:
        assert not lines[i].endswith("&")
        assert lines[i + 1] == FAIL_FAST
    for i in starts[2:]:
        assert lines[i].endswith(" &")
        assert lines[i + 1] == "pids+=($!)"
    assert starts[1] < lines.index("pids=()") < starts[2]
    assert lines[-1] == 'exit "$status"'


def test_script_without_init_containers_has_no_fail_fast_line() -> None:
    assert FAIL_FAST not in render_script(plan_of(pod_of(main())))


def test_script_header_identifies_the_pod() -> None:
    plan = plan_of(pod_of(main()))
    lines = render_script(plan).splitlines()
    assert lines[0] == "#!/bin/bash"
    assert f"#SBATCH --comment=interlink-slurm:{UID}" in lines
    assert f"#SBATCH --output={POD_DIR}/job.out" in lines
    assert f"#SBATCH --chdir={POD_DIR}" in lines
    assert "#SBATCH --job-name=p" in lines
    # sbatch reads #SBATCH lines only up to the first command.
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))


def test_pod_uid_is_lower_cased_in_the_comment() -> None:
    plan = plan_of(pod_of(main(), uid=UID.upper()))
    assert option(plan, "--comment") == f"interlink-slurm:{UID}"


def test_plan_writes_the_pod_and_one_env_file_per_container() -> None:
    p = pod_of(main(), init=[pg.container("setup", "pass")])
    plan = plan_of(p)
    assert {"containers/main.env", "containers/setup.env", "pod.json"} <= set(files(plan))
    assert json.loads(files(plan)["pod.json"].content)["metadata"]["uid"] == UID
    assert plan.dirs[0] == "containers"


@pytest.mark.parametrize(
    ("runtime", "name"),
    [
        ("charliecloud", "LD_PRELOAD"),
        ("charliecloud", "GLIBC_TUNABLES"),
        ("charliecloud", "CH_RUN_STORAGE"),
        ("enroot", "LD_LIBRARY_PATH"),
        ("enroot", "BASH_ENV"),
        ("enroot", "BASH_FUNC_ls%%"),
        ("enroot", "HOME"),
        ("enroot", "ENROOT_CONFIG_PATH"),
        ("enroot", "PATH"),
    ],
)
def test_env_the_host_runtime_would_heed_is_refused_without_user_shell(
    runtime: str, name: str
) -> None:
    pod = pod_of(main(env=[{"name": "OK", "value": "1"}, {"name": name, "value": "/tmp/x"}]))
    strict = settings(runtime=runtime, allow_user_shell=False, images={pg.IMAGE: "/img"})
    err = rejection(pod, strict)
    assert err.field == "spec.containers[0].env[1].name"
    assert name in err.reason and "allow_user_shell: false" in err.reason
    # With host-side shell allowed (the default), the pod could run such code anyway.
    lenient = settings(runtime=runtime, images={pg.IMAGE: "/img"})
    assert (name, "/tmp/x") in container(plan_of(pod, lenient)).env


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PATH", "HOME", "LDFLAGS", "CHUNK"])
def test_apptainer_keeps_the_environment_out_of_the_runtimes_way(name: str) -> None:
    pod = pod_of(main(env=[{"name": name, "value": "v"}]))
    strict = settings(allow_user_shell=False)
    assert (name, "v") in container(plan_of(pod, strict)).env
    # Prefix entries, not whole names: these are plain variables for every runtime.
    if name in ("LDFLAGS", "CHUNK"):
        loose = settings(runtime="charliecloud", allow_user_shell=False, images={pg.IMAGE: "/i"})
        assert (name, "v") in container(plan_of(pod, loose)).env
