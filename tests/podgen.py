"""Pods the way interLink sends them, for tests: small builders, real wire shape."""

from __future__ import annotations

import base64
import uuid
from typing import Any

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

SA_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
CA_CRT = (
    "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIBADAKBggqhkjOPQQDAjAjMSEwHwYDVQQDDBhrM3Mt\n"
    "-----END CERTIFICATE-----\n"
)
SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"


def sa_volume_name(the_pod: dict[str, Any]) -> str:
    return "kube-api-access-" + the_pod["metadata"]["uid"][:5]


def kube_defaults(the_pod: dict[str, Any]) -> dict[str, Any]:
    """What the API server adds to a pod: the service account's kube-api-access projected
    volume mounted read-only in every container, defaultMode 420, and the field defaults of
    pods and containers (vk-test-set's pods reach interLink in this shape)."""
    spec = the_pod["spec"]
    name = sa_volume_name(the_pod)
    spec["volumes"] = [
        *(spec.get("volumes") or []),
        {
            "name": name,
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {
                                        "apiVersion": "v1",
                                        "fieldPath": "metadata.namespace",
                                    },
                                }
                            ]
                        }
                    },
                ],
                "defaultMode": 420,
            },
        },
    ]
    for c in (spec.get("initContainers") or []) + spec["containers"]:
        c.setdefault("resources", {})
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("imagePullPolicy", "IfNotPresent")
        c["volumeMounts"] = [
            *(c.get("volumeMounts") or []),
            {"name": name, "readOnly": True, "mountPath": SA_MOUNT_PATH},
        ]
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", "default")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault(
        "tolerations",
        [
            {
                "key": f"node.kubernetes.io/{t}",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
            for t in ("not-ready", "unreachable")
        ],
    )
    return the_pod


def sa_projected_map(the_pod: dict[str, Any], token: str = SA_TOKEN) -> dict[str, Any]:
    """The projectedvolumemaps entry interLink sends for the service-account volume."""
    return {
        "metadata": {"name": sa_volume_name(the_pod)},
        "data": {
            "token": token,
            "ca.crt": CA_CRT,
            "namespace": the_pod["metadata"]["namespace"],
        },
    }


def kube_retrieved(
    the_pod: dict[str, Any], *, projected_volumes: bool = True, **objects: Any
) -> dict[str, Any]:
    """RetrievedPodData of an API-server-defaulted pod, with the service-account volume's
    content as interLink packs it (none with ``projected_volumes=False``: interLink's
    DisableProjectedVolumes)."""
    kube_defaults(the_pod)
    projected = list(objects.pop("projected", None) or [])
    if projected_volumes:
        projected.append(sa_projected_map(the_pod))
    return retrieved(the_pod, projected=projected or None, **objects)
