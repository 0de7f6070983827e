"""Volumes beyond files in the pod directory: memory-backed emptyDirs, sizeLimit, claims on the
shared filesystem (pvc_root), downwardAPI filled from the pod itself."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm.translate.plan import Bind
from interlink_slurm.translate.script import render_script
from tests import podgen as pg
from tests.unit.test_translate import (
    POD_DIR,
    UID,
    container,
    files,
    main,
    plan_of,
    pod_of,
    rejection,
    volume_files,
)
from tests.unit.test_translate import settings as make_settings

SHM = f"/dev/shm/interlink-slurm-{UID}"


def mounted(*volumes: dict[str, Any], **mount: Any) -> dict[str, Any]:
    mounts = [{"name": v["name"], "mountPath": f"/mnt/{v['name']}", **mount} for v in volumes]
    return pod_of(main(volumeMounts=mounts), volumes=list(volumes))


def test_memory_empty_dir_lives_in_shared_memory_created_and_removed_by_the_job() -> None:
    plan = plan_of(mounted({"name": "fast", "emptyDir": {"medium": "Memory"}}))
    [bind] = container(plan).binds
    assert (bind.source, bind.target, bind.read_only) == (f"{SHM}/fast", "/mnt/fast", False)
    assert plan.node_dirs == (f"{SHM}/fast",)
    assert plan.scratch_dirs == (SHM,)
    assert "volumes/fast" not in plan.dirs
    script = render_script(plan)
    assert f"mkdir -p -m 700 -- {SHM}/fast" in script
    assert f"  rm -rf -- {SHM}\n" in script
    assert script.index("trap ils_cleanup EXIT") < script.index("ils_container main")


def test_disk_empty_dir_stays_in_the_pod_directory() -> None:
    plan = plan_of(mounted({"name": "scratch", "emptyDir": {}}))
    assert container(plan).binds[0].source == f"{POD_DIR}/volumes/scratch"
    assert plan.node_dirs == () and plan.scratch_dirs == ()
    # Only the containers' own /tmp directories are removed at the end, never the volume.
    removed = [line for line in render_script(plan).splitlines() if "rm -rf" in line]
    assert removed == ['ils_rm -rf "$ILS_TMP"', '  rm -rf -- "$ILS_TMP"']


def test_size_limits_are_watched_by_the_job_in_kib() -> None:
    plan = plan_of(
        mounted(
            {"name": "scratch", "emptyDir": {"sizeLimit": "1500M"}},
            {"name": "fast", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {"name": "free", "emptyDir": {}},
        ),
        make_settings(default_memory="1Gi"),
    )
    assert [(s.volume, s.path, s.kib, s.quantity) for s in plan.size_limits] == [
        ("scratch", f"{POD_DIR}/volumes/scratch", 1464844, "1500M"),
        ("fast", f"{SHM}/fast", 65536, "64Mi"),
    ]
    script = render_script(plan)
    watched = f"scratch {POD_DIR}/volumes/scratch 1464844 1500M fast {SHM}/fast 65536 64Mi"
    assert f"ils_size_watch {watched} &" in script
    assert 'kill "$ILS_SIZE_WATCH"' in script
    assert "ILS_GRACE=" in script
    assert "ils_size_watch" not in render_script(plan_of(mounted({"name": "x", "emptyDir": {}})))


def test_memory_empty_dir_larger_than_the_pods_memory_is_refused() -> None:
    vol = {"name": "fast", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}
    err = rejection(mounted(vol), make_settings(default_memory="1Gi"))
    assert err.field == "spec.volumes[0].emptyDir.sizeLimit"
    assert "1024Mi" in err.reason
    assert plan_of(mounted(vol), make_settings(default_memory="4Gi")).node_dirs


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"sizeLimit": "lots"}, "spec.volumes[0].emptyDir.sizeLimit"),
        ({"medium": "HugePages"}, "spec.volumes[0].emptyDir.medium"),
    ],
)
def test_bad_empty_dir_is_refused_naming_the_field(source: dict[str, str], field: str) -> None:
    assert rejection(mounted({"name": "x", "emptyDir": source})).field == field


def test_claim_becomes_a_directory_under_pvc_root_per_namespace() -> None:
    vol = {"name": "data", "persistentVolumeClaim": {"claimName": "results-2024"}}
    plan = plan_of(mounted(vol), make_settings(pvc_root="/shared/claims"))
    [bind] = container(plan).binds
    assert (bind.source, bind.read_only) == ("/shared/claims/default/results-2024", False)
    assert plan.node_dirs == ("/shared/claims/default/results-2024",)
    assert plan.scratch_dirs == ()  # a claim outlives the pod
    assert "mkdir -p -m 700 -- /shared/claims/default/results-2024" in render_script(plan)


def test_read_only_claim_or_mount_is_bound_read_only() -> None:
    s = make_settings(pvc_root="/shared/claims")
    vol = {"name": "data", "persistentVolumeClaim": {"claimName": "c", "readOnly": True}}
    assert container(plan_of(mounted(vol), s)).binds[0].read_only
    vol = {"name": "data", "persistentVolumeClaim": {"claimName": "c"}}
    assert container(plan_of(mounted(vol, readOnly=True), s)).binds[0].read_only


def test_claim_with_sub_path() -> None:
    vol = {"name": "data", "persistentVolumeClaim": {"claimName": "c"}}
    plan = plan_of(mounted(vol, subPath="run1/out"), make_settings(pvc_root="/shared/claims"))
    assert container(plan).binds[0].source == "/shared/claims/default/c/run1/out"


def test_claim_without_pvc_root_is_refused_naming_the_key() -> None:
    vol = {"name": "data", "persistentVolumeClaim": {"claimName": "c"}}
    err = rejection(mounted(vol))
    assert err.field == "spec.volumes[0].persistentVolumeClaim"
    assert "pvc_root" in err.reason


@pytest.mark.parametrize("claim", ["../etc", "a/b", "UPPER", "x y"])
def test_claim_name_that_is_no_dns_name_is_refused(claim: str) -> None:
    vol = {"name": "data", "persistentVolumeClaim": {"claimName": claim}}
    err = rejection(mounted(vol), make_settings(pvc_root="/shared/claims"))
    assert err.field == "spec.volumes[0].persistentVolumeClaim.claimName"


def downward(*items: dict[str, Any], **source: Any) -> dict[str, Any]:
    return {"name": "info", "downwardAPI": {"items": list(items), **source}}


def test_downward_api_without_interlinks_content_is_filled_from_the_pod() -> None:
    p = mounted(
        downward(
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
            {"path": "meta/uid", "fieldRef": {"fieldPath": "metadata.uid"}, "mode": 0o600},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "team", "fieldRef": {"fieldPath": "metadata.labels['team']"}},
        )
    )
    p["metadata"]["labels"] = {"team": "hpc", "app": 'say "hi"'}
    got = volume_files(plan_of(p), "info")
    assert got["name"].content == b"p"
    assert got["ns"].content == b"default"
    assert got["meta/uid"].content == UID.encode()
    assert got["meta/uid"].mode == 0o600
    assert got["labels"].content == b'app="say \\"hi\\""\nteam="hpc"\n'
    assert got["team"].content == b"hpc"


def test_downward_api_sent_by_interlink_is_used_as_sent() -> None:
    p = mounted(downward({"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}))
    projected = [{"metadata": {"name": "info"}, "data": {"name": "from-interlink"}}]
    assert volume_files(plan_of(p, projected=projected), "info")["name"].content == (
        b"from-interlink"
    )


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}}, "items[0]"),
        ({"path": "x", "fieldRef": {"fieldPath": "status.podIP"}}, "items[0].fieldRef.fieldPath"),
        ({"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}, "items[0].path"),
    ],
)
def test_downward_api_items_the_cluster_cannot_fill_are_refused(
    item: dict[str, Any], field: str
) -> None:
    err = rejection(mounted(downward(item)))
    assert err.field == f"spec.volumes[0].downwardAPI.{field}"


def test_node_directories_script_is_valid_bash() -> None:
    vols = [
        {"name": "fast", "emptyDir": {"medium": "Memory"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "c"}},
    ]
    script = render_script(plan_of(mounted(*vols), make_settings(pvc_root="/shared/claims")))
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "pod.json" in files(plan_of(mounted(*vols), make_settings(pvc_root="/x")))


def test_host_aliases_are_bound_at_etc_hosts_in_every_container_after_the_nodes_own(
    tmp_path: Path,
) -> None:
    aliases = [
        {"ip": "10.9.8.7", "hostnames": ["db.internal", "cache"]},
        {"ip": "10.0.0.1", "hostnames": []},  # names nothing: left out, as the kubelet does
    ]
    p = pod_of(main(), init=[pg.container("setup", "pass")], hostAliases=aliases)
    plan = plan_of(p)
    assert plan.host_aliases == (("10.9.8.7", ("db.internal", "cache")),)
    for c in (*plan.init_containers, *plan.containers):
        assert c.binds[-1] == Bind(f"{POD_DIR}/hosts", "/etc/hosts", read_only=True)
    script = render_script(plan)
    line = (
        "{ cat /etc/hosts; echo '# Entries added by HostAliases.';"
        " printf '%s\\t%s\\n' 10.9.8.7 'db.internal cache'; }"
        " > .hosts.tmp && mv -f .hosts.tmp hosts || exit 1"
    )
    assert line in script
    assert script.index(line) < script.index("ils_container setup")
    # What that line writes, run by bash.
    done = subprocess.run(
        ["bash", "-c", line.replace("/etc/hosts", "/dev/null") + "; cat hosts"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "# Entries added by HostAliases.\n10.9.8.7\tdb.internal cache\n"


def test_no_host_aliases_no_hosts_file() -> None:
    plan = plan_of(pod_of(main()))
    assert plan.host_aliases == ()
    assert all(b.target != "/etc/hosts" for b in plan.containers[0].binds)
    assert "HostAliases" not in render_script(plan)


def test_host_aliases_leave_a_mounted_etc_hosts_alone_and_say_so() -> None:
    vol = {"name": "h", "emptyDir": {}}
    mine = main(volumeMounts=[{"name": "h", "mountPath": "/etc/hosts", "subPath": "hosts"}])
    aliases = [{"ip": "10.9.8.7", "hostnames": ["db.internal"]}]
    plan = plan_of(pod_of(mine, pg.container("side", "pass"), volumes=[vol], hostAliases=aliases))
    main_plan, side = plan.containers
    assert [b.source for b in main_plan.binds if b.target == "/etc/hosts"] == [
        f"{POD_DIR}/volumes/h/hosts"
    ]
    assert [b.source for b in side.binds if b.target == "/etc/hosts"] == [f"{POD_DIR}/hosts"]
    assert ("main", "hostAliases are not applied: /etc/hosts is mounted") in plan.warnings
