"""Hostile bodies on every route: nesting deep enough to exhaust the parser's stack, names longer
than a file name may be, arrays of thousands. Each is a 4xx naming what is wrong, never a 5xx
(interLink retries a 5xx; a 507 reads as a full disk)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interlink_slurm.api import MAX_JSON_DEPTH, _too_deep
from tests import podgen
from tests.unit.test_api import Harness

ROUTES = [
    ("POST", "/create"),
    ("POST", "/delete"),
    ("GET", "/status"),
    ("GET", "/getLogs"),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz-bodies"))
    yield h
    h.close()


def send(api: Harness, method: str, path: str, body: bytes) -> Any:
    return api.client.request(method, path, content=body)


def nested(depth: int, inner: bytes = b"1", kind: str = "[") -> bytes:
    close = b"]" if kind == "[" else b"}"
    opening = b"[" if kind == "[" else b'{"a":'
    return opening * depth + inner + close * depth


def pod_with(**changes: Any) -> dict[str, Any]:
    data = podgen.retrieved(podgen.pod("p", [podgen.container("c", "print(1)")]))
    for path, value in changes.items():
        target = data
        *parents, last = path.split(".")
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return data


# --- nesting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 100_000])
def test_json_nested_too_deep_is_400_on_every_route(
    api: Harness, method: str, path: str, depth: int
) -> None:
    for kind in ("[", "{"):
        r = send(api, method, path, nested(depth, kind=kind))
        assert r.status_code == 400, (path, depth, r.text[:200])
        assert f"more than {MAX_JSON_DEPTH} levels deep" in r.text


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = json.dumps({"a": "[" * 10_000, "b": '\\"{' * 5000, "c": [[1]] * 1000}).encode()
    assert not _too_deep(text)
    assert _too_deep(nested(MAX_JSON_DEPTH + 1))
    assert not _too_deep(nested(MAX_JSON_DEPTH))


def test_a_real_pod_nested_in_its_extra_fields_is_still_served(api: Harness) -> None:
    data = pod_with(**{"pod.metadata.labels": {"deep": "x"}})
    data["pod"]["spec"]["extraThing"] = json.loads(nested(50))  # kept, not read
    r = api.client.post("/create", content=json.dumps(data))
    assert r.status_code == 200, r.text


# --- names longer than a file name --------------------------------------------------------------


def test_a_config_map_key_longer_than_a_file_name_is_422_naming_the_key(api: Harness) -> None:
    key = "k" * 300
    the_pod = podgen.pod(
        "cm",
        [podgen.container("c", "print(1)", volume_mounts=[{"name": "cfg", "mountPath": "/cfg"}])],
        volumes=[{"name": "cfg", "configMap": {"name": "settings"}}],
    )
    data = podgen.retrieved(the_pod, config_maps=[podgen.config_map("settings", {key: "v"})])
    r = api.client.post("/create", content=json.dumps(data))
    assert r.status_code == 422, r.text
    assert key in r.text and "longer than the 255 bytes" in r.text
    assert "spec.volumes[0]" in r.text


# --- hypothesis: whatever the shape, a 4xx or a 200 -----------------------------------------------

NAME = st.one_of(
    st.text(min_size=0, max_size=20),
    st.integers(60, 70_000).map(lambda n: "a" * n),
    st.integers(250, 1000).map(lambda n: "é" * n),
)
DEPTH = st.integers(1, 20_000)


@st.composite
def hostile_create(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["deep", "names", "containers", "env", "keys", "mixed"]))
    if kind == "deep":
        return nested(draw(DEPTH), kind=draw(st.sampled_from(["[", "{"])))
    data = pod_with()
    pod = data["pod"]
    if kind in ("names", "mixed"):
        pod["metadata"]["name"] = draw(NAME)
        pod["metadata"]["namespace"] = draw(NAME)
        pod["spec"]["containers"][0]["name"] = draw(NAME)
        data["container"][0]["name"] = pod["spec"]["containers"][0]["name"]
    if kind in ("containers", "mixed"):
        n = draw(st.integers(0, 5000))
        pod["spec"]["containers"] = [podgen.container(f"c{i}", "print(1)") for i in range(n)]
    if kind in ("env", "mixed"):
        n = draw(st.integers(0, 20_000))
        size = draw(st.integers(0, 300))
        pod["spec"]["containers"][:1] = [
            podgen.container(
                "c", "print(1)", env=[{"name": f"V{i}", "value": "x" * size} for i in range(n)]
            )
        ]
    if kind == "keys":
        key = draw(NAME)
        pod["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "settings"}}]
        pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "cfg", "mountPath": "/cfg"}]
        data["container"][0]["configMaps"] = [podgen.config_map("settings", {key: "v"})]
    return json.dumps(data).encode()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=hostile_create())
def test_create_answers_hostile_bodies_with_a_4xx_or_a_job(api: Harness, body: bytes) -> None:
    r = send(api, "POST", "/create", body)
    assert r.status_code < 500, r.text[:300]
    assert r.status_code in (200, 400, 413, 422), r.text[:300]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(ROUTES[1:]),
    count=st.integers(0, 50_000),
    name=NAME,
    depth=st.integers(0, 400),
)
def test_other_routes_answer_huge_or_hostile_bodies_without_a_5xx(
    api: Harness, route: tuple[str, str], count: int, name: str, depth: int
) -> None:
    method, path = route
    pod = podgen.pod("p", [podgen.container("c", "print(1)")])
    pod["metadata"]["name"] = name
    if path == "/getLogs":
        one: Any = {"Namespace": name, "PodUID": name, "PodName": name, "ContainerName": name}
        body = json.dumps(one if count % 2 else [one] * count)
    elif path == "/status":
        body = json.dumps([pod] * min(count, 2000))
    else:
        body = json.dumps(pod if count % 2 else [pod] * count)
    if depth:
        body = nested(depth, body.encode()).decode()
    r = send(api, method, path, body.encode())
    assert r.status_code < 500, r.text[:300]
