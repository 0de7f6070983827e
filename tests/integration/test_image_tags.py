"""imagePullPolicy against a real registry (Debian's docker-registry): with Always each create
asks which digest the tag names now, and the pod runs that image, pulled into the cache once;
with Never the pod waits for its image without pulling it.

The pulls go through the Apptainer stand-in of test_image_pulls.py (Apptainer is not
installable here): it records each reference it is asked to pull and writes it into the image
file, which the job prints. The registry, Slurm, the held job and the pull on the submit host
are real.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm.registry import ANSWER_SECONDS
from interlink_slurm.translate.images import cached_image
from tests import podgen, registry
from tests.integration.conftest import Plugin, all_terminated, slurm, states, user_dir
from tests.standin import APPTAINER

USER = ("robot", "pa ss:word")
LOOKUPS = 'interlink_slurm_image_lookups_total{outcome="digest"}'
Setup = tuple[Plugin, Path, registry.Registry, registry.Registry]

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not registry.available(), reason="docker-registry is not installed"),
]


@pytest.fixture(scope="module")
def setup(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = user_dir("root", "tags")
    cache = base / "cache"
    stand_in = base / "apptainer"
    stand_in.write_text(APPTAINER)
    stand_in.chmod(0o755)
    reg = registry.Registry(tmp_path_factory.mktemp("registry"))
    reg.start()
    private = registry.Registry(tmp_path_factory.mktemp("private"), user=USER)
    private.start()
    plugin = Plugin(
        tmp_path_factory.mktemp("tags"),
        cluster,
        runtime="apptainer",
        runtime_path=str(stand_in),
        images={},
        image_cache_dir=str(cache),
        image_registries_http=[reg.host, private.host],
        status_refresh_seconds=0.5,
    )
    plugin.start()
    try:
        yield plugin, cache, reg, private
    finally:
        plugin.stop()
        reg.stop()
        private.stop()


def run(
    plugin: Plugin, image: str, policy: str | None = None, secret: dict[str, Any] | None = None
) -> str:
    """Create a pod of ``image`` (its pull policy as the API server leaves it, or ``policy``;
    ``secret`` its imagePullSecret), wait for its end; what its container printed."""
    return run_pod(plugin, image, policy, secret)[0]


def run_pod(
    plugin: Plugin, image: str, policy: str | None = None, secret: dict[str, Any] | None = None
) -> tuple[str, str]:
    """As run; what its container printed and the imageID of its status."""
    c: dict[str, Any] = {"name": "main", "image": image, "command": ["echo", "ran"]}
    if policy is not None:
        c["imagePullPolicy"] = policy
    spec: dict[str, Any] = {}
    if secret is not None:
        spec["imagePullSecrets"] = [{"name": secret["metadata"]["name"]}]
    pod = podgen.pod(f"tag-{uuid.uuid4().hex[:6]}", [c], **spec)
    plugin.create_ok(podgen.retrieved(pod, secrets=[secret] if secret else None))
    status = plugin.wait_for(pod, all_terminated, timeout=120)
    assert states(status)["main"]["terminated"]["exitCode"] == 0, status
    (main,) = status["containers"]
    return plugin.logs(pod, "main").text, main.get("imageID", "")


def pulled(cache: Path) -> list[str]:
    log = cache / "pulls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_always_runs_the_image_the_tag_names_now_pulling_only_a_new_digest(
    setup: Setup,
) -> None:
    plugin, cache, reg, _ = setup
    tag = f"{reg.host}/team/app:latest"
    first = reg.push("team/app", "latest", "build one")

    # What the API server gives an image tagged latest: Always.
    printed, image_id = run_pod(plugin, tag)
    assert printed == f"image: SIF of docker://{reg.host}/team/app@{first}\nran\n"
    assert image_id == f"{reg.host}/team/app@{first}"
    assert pulled(cache) == [f"docker://{reg.host}/team/app@{first}"]

    # Unchanged in the registry: the cached file of that digest runs, nothing is pulled.
    time.sleep(ANSWER_SECONDS)
    assert (
        run(plugin, tag, "Always") == f"image: SIF of docker://{reg.host}/team/app@{first}\nran\n"
    )
    assert len(pulled(cache)) == 1

    # A new build pushed under the same tag: the next pod runs it.
    second = reg.push("team/app", "latest", "build two")
    assert second != first
    time.sleep(ANSWER_SECONDS)
    assert run(plugin, tag) == f"image: SIF of docker://{reg.host}/team/app@{second}\nran\n"
    assert pulled(cache)[1:] == [f"docker://{reg.host}/team/app@{second}"]
    metrics = plugin.client.get("/metrics").text
    [line] = [m for m in metrics.splitlines() if m.startswith(LOOKUPS)]
    assert float(line.split()[-1]) >= 3


def test_if_not_present_and_a_named_tag_keep_the_tags_first_pull(
    setup: Setup,
) -> None:
    plugin, cache, reg, _ = setup
    reg.push("team/pinned", "1.0", "one")
    reg.push("team/pinned", "latest", "one")
    before = len(pulled(cache))
    # A tag other than latest defaults to IfNotPresent: pulled by its tag, once (no digest
    # known: no imageID).
    assert run_pod(plugin, f"{reg.host}/team/pinned:1.0") == (
        f"image: SIF of docker://{reg.host}/team/pinned:1.0\nran\n",
        "",
    )
    reg.push("team/pinned", "1.0", "two")
    assert run(plugin, f"{reg.host}/team/pinned:1.0") == (
        f"image: SIF of docker://{reg.host}/team/pinned:1.0\nran\n"
    )
    # latest with IfNotPresent asked for: the tag's file, as it was pulled first.
    assert run(plugin, f"{reg.host}/team/pinned:latest", "IfNotPresent") == (
        f"image: SIF of docker://{reg.host}/team/pinned:latest\nran\n"
    )
    assert pulled(cache)[before:] == [
        f"docker://{reg.host}/team/pinned:1.0",
        f"docker://{reg.host}/team/pinned:latest",
    ]


def test_a_registry_that_cannot_be_asked_leaves_the_tag_as_it_is(
    setup: Setup,
) -> None:
    plugin, cache, reg, _ = setup
    # Nothing of that name in the registry (404): the tag is pulled as it is named, and the
    # pull says what is wrong (the stand-in fails only for names with "missing").
    image = f"{reg.host}/team/unknown:latest"
    assert run(plugin, image) == f"image: SIF of docker://{image}\nran\n"
    assert pulled(cache)[-1] == f"docker://{image}"


def test_a_private_registry_is_asked_with_the_pods_pull_secret(setup: Setup) -> None:
    plugin, cache, _, private = setup
    digest = private.push("team/secret", "latest", "private build")
    image = f"{private.host}/team/secret:latest"
    auths = {"auths": {private.host: {"username": USER[0], "password": USER[1]}}}
    secret = podgen.secret("pull", {".dockerconfigjson": json.dumps(auths)})
    secret["type"] = "kubernetes.io/dockerconfigjson"
    assert run(plugin, image, secret=secret) == (
        f"image: SIF of docker://{private.host}/team/secret@{digest}\nran\n"
    )
    # Without the secret the registry answers 401: the tag is left as the pod names it.
    assert run(plugin, image) == f"image: SIF of docker://{image}\nran\n"
    assert pulled(cache)[-2:] == [
        f"docker://{private.host}/team/secret@{digest}",
        f"docker://{image}",
    ]


def test_never_waits_for_the_image_without_pulling_it(
    setup: Setup, cluster: dict[str, str]
) -> None:
    plugin, cache, reg, _ = setup
    image = f"{reg.host}/team/never:1"
    c = {"name": "main", "image": image, "command": ["echo", "ran"], "imagePullPolicy": "Never"}
    pod = podgen.pod(f"never-{uuid.uuid4().hex[:6]}", [c])
    job_id = plugin.create_ok(podgen.retrieved(pod))

    def never_pull(status: dict[str, Any]) -> bool:
        waiting = states(status)["main"].get("waiting") or {}
        return waiting.get("reason") == "ErrImageNeverPull"

    status = plugin.wait_for(pod, never_pull, timeout=60)
    message = states(status)["main"]["waiting"]["message"]
    assert message == f'Container image "{image}" is not present with pull policy of Never'
    state, reason = slurm(cluster, "squeue", "-h", "-j", job_id, "-o", "%T %r").split()
    assert (state, reason) == ("PENDING", "JobHeldUser")

    # Put there by hand (an operator's pull): the job is released and runs that file.
    target = Path(cached_image(str(cache), f"docker://{image}", "sif"))
    target.parent.mkdir(exist_ok=True)  # no pull made it yet when this test runs first
    target.write_text("SIF put by hand\n")
    status = plugin.wait_for(pod, all_terminated, timeout=120)
    assert states(status)["main"]["terminated"]["exitCode"] == 0
    assert plugin.logs(pod, "main").text == "image: SIF put by hand\nran\n"
    assert f"docker://{image}" not in pulled(cache)
