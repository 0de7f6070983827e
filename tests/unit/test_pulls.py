"""Images pulled on the submit host while the job waits, held: the service's side, with a
scripted Slurm and the Apptainer stand-in run for real by bash (tests/standin.py). The same flow
on the real Slurm, locally and through slurmrestd, is tests/integration/test_image_pulls.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm import pulls
from interlink_slurm.slurm.fake import FakeScheduler
from interlink_slurm.translate.images import cached_image
from tests import podgen
from tests.standin import APPTAINER
from tests.unit.test_api import Harness

IMAGE = "ghcr.io/example/app:1"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STANDIN_PULL_SECONDS", "0.5")
    monkeypatch.setattr(pulls, "POLL_SECONDS", 0.1)
    # Long enough that a poll under load still sees ErrImagePull before the next attempt.
    monkeypatch.setattr(pulls, "BACKOFF_SECONDS", (2.0, 3.0))
    path = tmp_path / "apptainer"
    path.write_text(APPTAINER)
    path.chmod(0o755)
    return path


@pytest.fixture
def harness(tmp_path: Path, cache: Path, stand_in: Path) -> Iterator[Harness]:
    h = Harness(
        tmp_path / "plugin", runtime_path=str(stand_in), image_cache_dir=str(cache), images={}
    )
    try:
        yield h
    finally:
        h.close()


def pod_with(image: str) -> dict[str, Any]:
    return podgen.pod("app", [{"name": "main", "image": image, "command": ["true"]}])


def eventually(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def waiting(h: Harness, pod: dict[str, Any]) -> dict[str, str]:
    r = h.get("/status", [pod])
    assert r.status_code == 200, r.text
    return dict(r.json()[0]["containers"][0]["state"].get("waiting") or {})


def create(h: Harness, pod: dict[str, Any]) -> str:
    r = h.post("/create", podgen.retrieved(pod))
    assert r.status_code == 200, r.text
    return str(r.json()["PodJID"])


def test_a_missing_image_holds_the_job_until_the_pull_is_done(
    harness: Harness, cache: Path
) -> None:
    pod = pod_with(IMAGE)
    job_id = create(harness, pod)

    assert harness.scheduler.jobs[job_id].reason == "JobHeldUser"
    assert waiting(harness, pod)["reason"] == "ContainerCreating"
    assert "pulling docker://ghcr.io/example/app:1" in waiting(harness, pod)["message"]

    eventually(lambda: harness.scheduler.jobs[job_id].reason != "JobHeldUser")
    assert "release" in harness.scheduler.calls
    [sif] = cache.glob("*.sif")
    assert sif.read_text() == f"SIF of docker://{IMAGE}\n"
    # The record of the pull is dropped just after the release, in a thread of its own.
    record = harness.store.get
    eventually(lambda: record(pod["metadata"]["uid"]).pulls is None)  # type: ignore[union-attr]
    assert not list(cache.glob("*.part"))


def test_an_image_in_the_cache_is_neither_held_nor_pulled(harness: Harness, cache: Path) -> None:
    create(harness, pod_with(IMAGE))
    eventually(lambda: bool(list(cache.glob("*.sif"))))

    again = pod_with(IMAGE)
    job_id = create(harness, again)

    assert harness.scheduler.jobs[job_id].reason == "Priority"
    script = Path(harness.scheduler.scripts[job_id]).read_text()
    assert "#SBATCH --hold" not in script
    assert (cache / "pulls.log").read_text() == f"docker://{IMAGE}\n"


def test_never_is_err_image_never_pull_without_a_pull_until_the_image_is_there(
    harness: Harness, cache: Path
) -> None:
    pod = podgen.pod(
        "app", [{"name": "main", "image": IMAGE, "command": ["true"], "imagePullPolicy": "Never"}]
    )
    job_id = create(harness, pod)

    assert harness.scheduler.jobs[job_id].reason == "JobHeldUser"
    expected = {
        "reason": "ErrImageNeverPull",
        "message": f'Container image "{IMAGE}" is not present with pull policy of Never',
    }
    eventually(lambda: waiting(harness, pod) == expected)
    time.sleep(0.5)  # several polls: still nothing pulled, still held
    assert not (cache / "pulls.log").exists()
    assert harness.scheduler.jobs[job_id].reason == "JobHeldUser"
    script = Path(harness.scheduler.scripts[job_id]).read_text()
    target = cached_image(str(cache), f"docker://{IMAGE}")
    assert f"[ -s {target} ] ||" in script
    assert f"ils_pull {target}" not in script

    # An operator puts the image in the cache: the job is released, still without a pull.
    Path(target).write_text("staged by hand\n")
    eventually(lambda: harness.scheduler.jobs[job_id].reason != "JobHeldUser")
    assert not (cache / "pulls.log").exists()


def test_a_failed_pull_is_err_image_pull_then_back_off_and_the_job_stays_held(
    harness: Harness,
) -> None:
    pod = pod_with("ghcr.io/example/missing:1")
    job_id = create(harness, pod)

    eventually(lambda: waiting(harness, pod).get("reason") == "ErrImagePull")
    message = waiting(harness, pod)["message"]
    assert "pulling docker://ghcr.io/example/missing:1 failed (exit status 255)" in message
    assert "manifest unknown" in message
    eventually(lambda: waiting(harness, pod).get("reason") == "ImagePullBackOff")
    assert harness.scheduler.jobs[job_id].reason == "JobHeldUser"

    body = {
        "Namespace": "default",
        "PodUID": pod["metadata"]["uid"],
        "PodName": pod["metadata"]["name"],
        "ContainerName": "main",
        "Opts": {},
    }
    log = harness.get("/getLogs?source=pull", body)
    assert log.status_code == 200 and "FATAL" in log.text

    r = harness.post("/delete", pod)
    assert r.status_code == 200 and "cancelled" in r.text
    assert harness.scheduler.jobs[job_id].state == "CANCELLED"
    assert harness.scheduler.signals == []  # held: nothing ran that a grace period would serve


def test_pulls_cut_short_by_a_restart_resume_and_release_the_job(
    tmp_path: Path, cache: Path, stand_in: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_PULL_SECONDS", "1")
    config = {"runtime_path": str(stand_in), "image_cache_dir": str(cache), "images": {}}
    scheduler = FakeScheduler()
    first = Harness(tmp_path / "plugin", scheduler=scheduler, **config)
    pod = pod_with(IMAGE)
    job_id = create(first, pod)
    first.close()  # before the pull reports back
    assert scheduler.jobs[job_id].reason == "JobHeldUser"

    second = Harness(tmp_path / "plugin", scheduler=scheduler, **config)
    try:
        eventually(lambda: scheduler.jobs[job_id].reason != "JobHeldUser")
        assert (cache / "pulls.log").read_text().count(IMAGE) == 1  # the first pull, not redone
    finally:
        second.close()


def test_pulls_stay_in_the_job_when_configured_so(
    tmp_path: Path, cache: Path, stand_in: Path
) -> None:
    h = Harness(
        tmp_path / "plugin",
        runtime_path=str(stand_in),
        image_cache_dir=str(cache),
        images={},
        image_pull_on="compute_node",
    )
    try:
        job_id = create(h, pod_with(IMAGE))
        assert h.scheduler.jobs[job_id].reason == "Priority"
        assert "ils_pull " in Path(h.scheduler.scripts[job_id]).read_text()
    finally:
        h.close()


def group_of(*containers: dict[str, Any]) -> list[dict[str, Any]]:
    """A Kueue pod group: one member per container."""
    members = []
    for i, c in enumerate(containers):
        pod = podgen.pod(f"grp-{i}", [c])
        pod["metadata"]["labels"] = {"kueue.x-k8s.io/pod-group-name": "grp"}
        count = str(len(containers))
        pod["metadata"]["annotations"]["kueue.x-k8s.io/pod-group-total-count"] = count
        members.append(pod)
    return members


def test_a_groups_job_stays_held_until_every_members_image_is_in_the_cache(
    harness: Harness, cache: Path
) -> None:
    members = group_of(
        {"name": "main", "image": IMAGE, "command": ["true"]},
        {"name": "main", "image": "ghcr.io/example/missing:1", "command": ["true"]},
    )
    assert create(harness, members[0]) == ""
    job_id = create(harness, members[1])

    assert harness.scheduler.jobs[job_id].reason == "JobHeldUser"
    # The first member's image is pulled; the second's fails: the job stays held, and the
    # first says what it waits for.
    eventually(lambda: "waiting for" in waiting(harness, members[0]).get("message", ""))
    assert (
        "docker://ghcr.io/example/missing:1, pulled for the pod's group"
        in (waiting(harness, members[0])["message"])
    )
    eventually(lambda: waiting(harness, members[1]).get("reason") == "ErrImagePull")
    assert harness.scheduler.jobs[job_id].reason == "JobHeldUser"
    assert "release" not in harness.scheduler.calls
    assert (cache / "pulls.log").read_text().count(IMAGE) == 1
    # The second image put in the cache (as its member's next attempt would): released.
    missing = cached_image(str(cache), "docker://ghcr.io/example/missing:1", "sif")
    Path(missing).write_text("SIF\n")
    eventually(lambda: harness.scheduler.jobs[job_id].reason != "JobHeldUser")


@pytest.mark.parametrize("policies", [("Never", "IfNotPresent"), ("IfNotPresent", "Never")])
def test_a_group_member_that_may_pull_an_image_pulls_it_for_one_whose_policy_is_never(
    harness: Harness, cache: Path, policies: tuple[str, str]
) -> None:
    members = group_of(
        *({"name": "main", "image": IMAGE, "command": ["true"], "imagePullPolicy": policy}
          for policy in policies)
    )  # fmt: skip
    assert create(harness, members[0]) == ""
    job_id = create(harness, members[1])

    assert harness.scheduler.jobs[job_id].reason == "JobHeldUser"
    eventually(lambda: harness.scheduler.jobs[job_id].reason != "JobHeldUser")
    assert (cache / "pulls.log").read_text() == f"docker://{IMAGE}\n"
