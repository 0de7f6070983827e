"""imagePullPolicy Always: which images are looked up (pure), how a tag is read in a reference,
and the registry client's token exchange, answers kept for a burst, and failures (httpx's own
MockTransport stands for registries and token services that cannot run here; the integration
test test_image_tags.py asks a real registry)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest

from interlink_slurm import registry
from interlink_slurm.registry import ANSWER_SECONDS, FAILED_SECONDS, LookupFailed, Registries
from interlink_slurm.statuses import _note_image_ids
from interlink_slurm.translate.images import (
    ManifestRef,
    image_id,
    image_ids,
    manifest_ref,
    pinned,
    pull_policy,
)
from interlink_slurm.translate.pod import build_plan, tags_to_look_up, with_images
from interlink_slurm.wire import ContainerState, ContainerStatus, RetrievedPodData, Secret
from tests import podgen as pg
from tests.unit.test_translate import settings as make_settings

DIGEST = "sha256:" + "ab" * 32
CACHE = "/shared/sif-cache"


def data_of(
    *containers: dict[str, Any], secrets: list[dict[str, Any]] | None = None, **spec: Any
) -> RetrievedPodData:
    pod = pg.pod("p", list(containers), **spec)
    return RetrievedPodData.model_validate(pg.retrieved(pod, secrets=secrets))


def container(image: str, policy: str | None = None, name: str = "main") -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": image, "command": ["true"]}
    if policy is not None:
        c["imagePullPolicy"] = policy
    return c


HUB = ("docker.io", "registry-1.docker.io")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("docker://python", (*HUB, "library/python", "latest")),
        ("docker://python:3.11", (*HUB, "library/python", "3.11")),
        ("docker://docker.io/jupyter/base:x", (*HUB, "jupyter/base", "x")),
        ("docker://index.docker.io/library/busybox", (*HUB, "library/busybox", "latest")),
        ("docker://ghcr.io/org/team/app:v1", ("ghcr.io", "ghcr.io", "org/team/app", "v1")),
        ("docker://reg.local:5000/app", ("reg.local:5000", "reg.local:5000", "app", "latest")),
        ("docker://localhost/app:2", ("localhost", "localhost", "app", "2")),
    ],
)
def test_a_references_registry_repository_and_tag(
    source: str, expected: tuple[str, str, str, str]
) -> None:
    assert manifest_ref(source) == ManifestRef(*expected)


@pytest.mark.parametrize(
    ("image", "policy", "expected"),
    [
        ("python", "", "Always"),
        ("python:latest", "", "Always"),
        ("reg.local:5000/app", "", "Always"),
        ("python:3.11", "", "IfNotPresent"),
        ("reg.local:5000/app:1", "", "IfNotPresent"),
        (f"python@{DIGEST}", "", "IfNotPresent"),
        ("python:3.11", "Always", "Always"),
        ("python", "Never", "Never"),
    ],
)
def test_the_pull_policy_is_defaulted_as_the_api_server_does(
    image: str, policy: str, expected: str
) -> None:
    assert pull_policy(image, policy) == expected


def test_a_pinned_reference_drops_the_tag_and_keeps_the_registrys_port() -> None:
    assert pinned("reg.local:5000/app:latest", DIGEST) == f"reg.local:5000/app@{DIGEST}"
    assert pinned("python", DIGEST) == f"python@{DIGEST}"
    assert pinned("docker://ghcr.io/a/b:1", DIGEST) == f"docker://ghcr.io/a/b@{DIGEST}"


def test_only_always_images_pulled_into_the_cache_by_apptainer_are_looked_up() -> None:
    s = make_settings(
        runtime="apptainer", image_cache_dir=CACHE, images={"staged:latest": "/i.sif"}
    )
    data = data_of(
        container("python", name="a"),  # defaulted to Always
        container("python:3.11", name="b"),  # IfNotPresent
        container("ghcr.io/o/app:v2", "Always", name="c"),
        container("staged:latest", name="d"),  # the site's own image
        container(f"busybox@{DIGEST}", "Always", name="e"),  # pinned already
        container("busybox", "IfNotPresent", name="f"),
        container("oras://ghcr.io/o/model:latest", "Always", name="g"),  # not docker://
    )
    assert tags_to_look_up(data, s) == {
        "python": "docker://python",
        "ghcr.io/o/app:v2": "docker://ghcr.io/o/app:v2",
    }
    # No cache (the runtime pulls on its own), lookups off, or a runtime without digests.
    assert tags_to_look_up(data, make_settings(runtime="apptainer")) == {}
    off = make_settings(runtime="apptainer", image_cache_dir=CACHE, image_tag_lookup=False)
    assert tags_to_look_up(data, off) == {}
    enroot = make_settings(runtime="enroot", image_cache_dir=CACHE, images={"x": "/x.sqsh"})
    assert tags_to_look_up(data_of(container("python", name="a")), enroot) == {}


def test_a_pinned_pod_pulls_and_runs_the_cache_file_of_the_digest() -> None:
    s = make_settings(runtime="apptainer", image_cache_dir=CACHE)
    data = data_of(container("python"), container("python", name="side"))
    pinned_data = with_images(data, {"python": f"python@{DIGEST}"})
    assert [c.image for c in data.pod.spec.containers] == ["python", "python"]
    plan = build_plan(pinned_data, s, "/data/ils/default/p")
    assert [p.source for p in plan.image_pulls] == [f"docker://python@{DIGEST}"]
    assert plan.image_pulls[0].target == plan.containers[0].image == plan.containers[1].image
    tag_plan = build_plan(data, s, "/data/ils/default/p")
    assert tag_plan.containers[0].image != plan.containers[0].image


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (f"docker://python@{DIGEST}", f"docker.io/library/python@{DIGEST}"),
        (f"docker://reg.local:5000/a/b@{DIGEST}", f"reg.local:5000/a/b@{DIGEST}"),
        ("docker://python:3.11", ""),
        (f"oras://ghcr.io/o/m@{DIGEST}", ""),
        ("/shared/images/python.sif", ""),
    ],
)
def test_the_image_id_is_the_kubelets_for_a_reference_pinned_to_a_digest(
    source: str, expected: str
) -> None:
    assert image_id(source) == expected


def test_a_plans_image_ids_follow_its_pulls_and_directly_run_references() -> None:
    data = data_of(
        container(f"python@{DIGEST}"), container("python:3.11", name="tagged"),
        init=[container(f"ghcr.io/o/i@{DIGEST}", name="setup")],
    )  # fmt: skip
    cached = build_plan(data, make_settings(runtime="apptainer", image_cache_dir=CACHE), "/d/p")
    direct = build_plan(data, make_settings(runtime="apptainer"), "/d/p")
    expected = {"setup": f"ghcr.io/o/i@{DIGEST}", "main": f"docker.io/library/python@{DIGEST}"}
    assert image_ids(cached) == image_ids(direct) == expected


def test_the_image_id_is_reported_once_the_container_has_run() -> None:
    running = ContainerState.model_validate({"running": {"startedAt": "2026-12-04T00:00:00Z"}})
    waiting = ContainerState.model_validate({"waiting": {"reason": "ContainerCreating"}})
    done = ContainerState.model_validate({"terminated": {"exitCode": 0}})
    statuses = [
        ContainerStatus(name="a", state=running),
        ContainerStatus(name="b", state=waiting),
        ContainerStatus(name="c", state=waiting, last_state=done),  # restarting
        ContainerStatus(name="d", state=done),  # no digest known
    ]
    _note_image_ids(statuses, {n: f"x@{n}" for n in "abc"})
    assert [s.image_id for s in statuses] == ["x@a", "", "x@c", ""]


# --- the registry client --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registries(
    handler: Any, asked: list[str] | None = None, **overrides: Any
) -> tuple[Registries, Clock]:
    clock = Clock()
    s = make_settings(runtime="apptainer", image_cache_dir=CACHE, **overrides)
    told = asked.append if asked is not None else lambda outcome: None
    return Registries(s, transport=httpx.MockTransport(handler), clock=clock, asked=told), clock


def docker_secret(registry: str, user: str, password: str) -> dict[str, Any]:
    config = {"auths": {registry: {"username": user, "password": password}}}
    return pg.secret("pull", {".dockerconfigjson": json.dumps(config)})


def test_a_token_is_asked_of_the_registrys_token_service_with_the_pods_credentials() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "auth.example.org":
            return httpx.Response(200, json={"token": "t0k"})
        if request.headers.get("Authorization") != "Bearer t0k":
            challenge = (
                'Bearer realm="https://auth.example.org/token",service="reg.example.org",'
                'scope="repository:team/app:pull"'
            )
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    reg, _ = registries(handler)
    data = data_of(
        container("reg.example.org/team/app"),
        secrets=[docker_secret("reg.example.org", "alice", "s3cret")],
        imagePullSecrets=[{"name": "pull"}],
    )
    out = asyncio.run(reg.pin(data))

    assert out.pod.spec.containers[0].image == f"reg.example.org/team/app@{DIGEST}"
    head, token, again = seen
    assert (head.method, str(head.url)) == (
        "HEAD",
        "https://reg.example.org/v2/team/app/manifests/latest",
    )
    assert "application/vnd.oci.image.index.v1+json" in head.headers["Accept"]
    assert token.url.params["service"] == "reg.example.org"
    assert token.url.params["scope"] == "repository:team/app:pull"
    assert token.headers["Authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert again.headers["Authorization"] == "Bearer t0k"


def test_a_basic_challenge_is_answered_with_the_pods_credentials() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") == "Basic " + base64.b64encode(b"u:p").decode():
            return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    reg, _ = registries(handler, image_registries_http=["reg.local:5000"])
    auths = {"auths": {"reg.local:5000": {"username": "u", "password": "p"}}}
    secret = Secret.model_validate(pg.secret("s", {".dockerconfigjson": json.dumps(auths)}))
    got = asyncio.run(reg.digest("docker://reg.local:5000/app", [secret]))
    assert got == DIGEST
    with pytest.raises(LookupFailed, match="asks for credentials"):
        asyncio.run(registries(handler)[0].digest("docker://reg.local:5000/app"))


def test_a_burst_of_creates_asks_once_and_a_later_create_asks_again() -> None:
    heads: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        heads.append(str(request.url))
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    asked: list[str] = []
    reg, clock = registries(handler, asked)

    async def burst() -> list[str]:
        return list(await asyncio.gather(*(reg.digest("docker://python") for _ in range(20))))

    assert asyncio.run(burst()) == [DIGEST] * 20
    assert heads == ["https://registry-1.docker.io/v2/library/python/manifests/latest"]
    clock.now += ANSWER_SECONDS - 0.1
    asyncio.run(reg.digest("docker://python"))
    assert len(heads) == 1
    clock.now += 0.2
    asyncio.run(reg.digest("docker://python"))
    assert len(heads) == 2
    assert asked == ["digest", "digest"]  # the metric counts questions, not kept answers


def test_expired_answers_are_dropped_when_many_images_were_asked_about(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "KEPT_ANSWERS", 3)
    reg, clock = registries(
        lambda r: httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})
    )
    for name in ("a", "b", "c"):
        asyncio.run(reg.digest(f"docker://ghcr.io/o/{name}"))
    clock.now += ANSWER_SECONDS + 1
    asyncio.run(reg.digest("docker://ghcr.io/o/d"))
    asyncio.run(reg.digest("docker://ghcr.io/o/e"))
    assert sorted(source for source, _ in reg._answers) == [
        "docker://ghcr.io/o/d",
        "docker://ghcr.io/o/e",
    ]


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(404), "answered 404"),
        (httpx.Response(200), "named no sha256 digest"),
        (httpx.Response(200, headers={"Docker-Content-Digest": "md5:x"}), "no sha256 digest"),
        (httpx.Response(401), r"asks for credentials \(no challenge\)"),
        (httpx.Response(401, headers={"WWW-Authenticate": 'Bearer x="y"'}), "no token service"),
        (
            httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="http://10.0.0.1/t"'}),
            "no token service over HTTPS",
        ),
        (httpx.Response(307, headers={"Location": "http://169.254.169.254/"}), "answered 307"),
    ],
)
def test_an_answer_without_a_digest_is_a_failed_lookup(
    response: httpx.Response, error: str
) -> None:
    reg, _ = registries(lambda request: response)
    with pytest.raises(LookupFailed, match=error):
        asyncio.run(reg.digest("docker://ghcr.io/o/app"))


def test_a_registry_that_cannot_be_reached_leaves_the_pods_tag_and_is_not_asked_again_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    asked: list[str] = []
    reg, clock = registries(handler, asked)
    data = data_of(container("ghcr.io/o/app"))
    assert asyncio.run(reg.pin(data)) is data
    assert asyncio.run(reg.pin(data)) is data
    assert calls == 1
    clock.now += FAILED_SECONDS + 0.1
    assert asyncio.run(reg.pin(data)) is data
    assert calls == 2
    assert asked == ["failed", "failed"]
    assert "ghcr.io/o/app runs as the tag names it in the cache" in caplog.text
    assert "connection refused" in caplog.text


def test_a_registry_that_does_not_answer_in_time_leaves_the_pods_tag() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, headers={"Docker-Content-Digest": DIGEST})

    clock = Clock()
    s = make_settings(runtime="apptainer", image_cache_dir=CACHE, image_lookup_timeout_seconds=0.05)
    reg = Registries(s, transport=httpx.MockTransport(slow), clock=clock)
    with pytest.raises(LookupFailed, match=r"no answer within 0\.05 s"):
        asyncio.run(reg.digest("docker://ghcr.io/o/app"))
