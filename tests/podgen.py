"""Pods the way interLink sends them, for tests: small builders, real wire shape."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from tests.deploy.helpers import e2e_scenarios

IMAGE = "debian-python"


def container(
    name: str, script: str | None = None, *, command: list[str] | None = None, **fields: Any
) -> dict[str, Any]:
    """A container running a Python snippet (or an explicit command)."""
    c: dict[str, Any] = {"name": name, "image": fields.pop("image", IMAGE)}
    if command is not None:
        c["command"] = command
    elif script is not None:
        c["command"] = ["python3", "-c", script]
    c.update(fields)
    return c


def pod(
    name: str,
    containers: list[dict[str, Any]],
    *,
    init: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    namespace: str = "default",
    uid: str | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or str(uuid.uuid4()),
            "annotations": annotations or {},
            "creationTimestamp": "2026-11-25T07:00:00Z",
        },
        "spec": {
            "containers": containers,
            "initContainers": init,
            "volumes": volumes,
            "restartPolicy": "Never",
            **spec,
        },
        "status": {"phase": "Pending"},
    }


def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default"}, "data": data}


def secret(name: str, data: dict[str, bytes | str]) -> dict[str, Any]:
    encoded = {
        k: base64.b64encode(v.encode() if isinstance(v, str) else v).decode()
        for k, v in data.items()
    }
    return {"metadata": {"name": name, "namespace": "default"}, "data": encoded, "type": "Opaque"}


def retrieved(
    the_pod: dict[str, Any],
    *,
    config_maps: list[dict[str, Any]] | None = None,
    secrets: list[dict[str, Any]] | None = None,
    projected: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """RetrievedPodData: every container gets the objects (interLink sends only the mounted
    ones per container; giving all to all is equivalent for the plugin)."""
    spec = the_pod["spec"]
    names = [c["name"] for c in (spec.get("initContainers") or []) + spec["containers"]]
    return {
        "pod": the_pod,
        "container": [
            {
                "name": n,
                "configMaps": config_maps,
                "secrets": secrets,
                "projectedvolumemaps": projected,
                "emptyDirs": None,
            }
            for n in names
        ],
        "jobConfig": {},
    }


# --- Pods as the API server defaults them ----------------------------------------------------

SA_MOUNT_PATH = e2e_scenarios().SERVICE_ACCOUNT_DIR
CA_CRT = (
    "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIBADAKBggqhkjOPQQDAjAjMSEwHwYDVQQDDBhrM3Mt\n"
    "-----END CERTIFICATE-----\n"
)
SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"


def sa_volume_name(the_pod: dict[str, Any]) -> str:
    return "kube-api-access-" + the_pod["metadata"]["uid"][:5]


def kube_retrieved(
    the_pod: dict[str, Any], *, projected_volumes: bool = True, **objects: Any
) -> dict[str, Any]:
    """RetrievedPodData of a pod as the API server admits it (its defaults, the service
    account's kube-api-access volume in every container: deploy/e2e/scenarios.py, which the e2e
    runs use too), with that volume's content as interLink packs it (none with
    ``projected_volumes=False``: interLink's DisableProjectedVolumes)."""
    admission = e2e_scenarios()
    admission.api_server_defaults(the_pod)
    entry = admission.kube_api_access(the_pod, sa_volume_name(the_pod), SA_TOKEN, CA_CRT)
    projected = list(objects.pop("projected", None) or [])
    if projected_volumes:
        projected.append(entry)
    return retrieved(the_pod, projected=projected or None, **objects)
