"""The JupyterHub example: the KubeSpawner profile, the pod it yields, the virtual node and the
site profile agree; the doc is honest about the pending wstunnel support."""

from __future__ import annotations

from typing import Any

import yaml

from interlink_slurm.config import load_settings
from tests.deploy.helpers import DOCS, EXAMPLES, LEONARDO, MANIFESTS, load_docs

VALUES = EXAMPLES / "jupyterhub" / "z2jh-values.yaml"
POD = EXAMPLES / "jupyterhub" / "jupyterlab-pod.yaml"
# KubeSpawner / Spawner traits a profile may override (kubespawner_override).
KUBESPAWNER_TRAITS = {
    "image",
    "cpu_limit",
    "cpu_guarantee",
    "mem_limit",
    "mem_guarantee",
    "extra_resource_limits",
    "extra_resource_guarantees",
    "node_selector",
    "tolerations",
    "hub_connect_url",
    "start_timeout",
    "http_timeout",
    "extra_pod_config",
    "extra_annotations",
    "environment",
    "volumes",
    "volume_mounts",
}


def gpu_profile() -> dict[str, Any]:
    values = yaml.safe_load(VALUES.read_text())
    [profile] = [p for p in values["singleuser"]["profileList"] if p.get("slug") == "leonardo-gpu"]
    return dict(profile["kubespawner_override"])


def pod() -> dict[str, Any]:
    return dict(yaml.safe_load(POD.read_text()))


def test_profile_overrides_are_kubespawner_traits() -> None:
    values = yaml.safe_load(VALUES.read_text())
    for profile in values["singleuser"]["profileList"]:
        assert set(profile) <= {
            "display_name",
            "description",
            "default",
            "slug",
            "kubespawner_override",
        }
        assert set(profile["kubespawner_override"]) <= KUBESPAWNER_TRAITS


def test_hub_settings_that_the_virtual_node_needs() -> None:
    single = yaml.safe_load(VALUES.read_text())["singleuser"]
    assert single["storage"]["type"] == "none"
    assert single["cloudMetadata"]["blockWithIptables"] is False


def test_the_pod_is_what_the_profile_yields() -> None:
    o, p = gpu_profile(), pod()
    spec = p["spec"]
    [c] = spec["containers"]
    assert c["image"] == o["image"]
    assert spec["nodeSelector"] == o["node_selector"]
    assert spec["tolerations"] == o["tolerations"]
    assert spec["activeDeadlineSeconds"] == o["extra_pod_config"]["activeDeadlineSeconds"]
    gpus = o["extra_resource_limits"]["nvidia.com/gpu"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert c["resources"]["limits"]["cpu"] == str(o["cpu_limit"])
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["JUPYTERHUB_API_URL"] == o["hub_connect_url"] + "/hub/api"
    assert [port["containerPort"] for port in c["ports"]] == [8888]
    assert "interlink.eu/wstunnel-client-commands" in p["metadata"]["annotations"]
    assert (
        "-R tcp://[::]:8888:localhost:8888"
        in p["metadata"]["annotations"]["interlink.eu/wstunnel-client-commands"]
    )


def test_the_profile_targets_the_edge_virtual_node_and_a_staged_image() -> None:
    o = gpu_profile()
    [deploy] = [
        d for d in load_docs(MANIFESTS / "edge" / "vk-deployment.yaml") if d["kind"] == "Deployment"
    ]
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert o["node_selector"] == {"kubernetes.io/hostname": env["NODENAME"]}
    assert o["image"] in load_settings(LEONARDO).images
    helm = yaml.safe_load((MANIFESTS / "helm" / "values-edge.yaml").read_text())
    assert helm["virtualNode"]["network"]["enableTunnel"] is True


def test_doc_says_how_the_wstunnel_annotation_is_run() -> None:
    doc = (DOCS / "jupyterhub.md").read_text()
    assert "interlink.eu/wstunnel-client-commands" in doc
    assert "before the containers" in doc
    assert "allow_user_shell" in doc
    for path in ("examples/jupyterhub/z2jh-values.yaml", "examples/jupyterhub/jupyterlab-pod.yaml"):
        assert path in doc


def test_the_jupyterlab_pod_renders_with_its_tunnel_started_before_the_containers() -> None:
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "interlink-slurm"
    pod = Path(__file__).resolve().parents[2] / "examples/jupyterhub/jupyterlab-pod.yaml"
    out = subprocess.run(
        [str(exe), "render", str(pod)], capture_output=True, text=True, check=True
    ).stdout
    started = out.index("bash ../tunnel.sh")  # the tunnel, in the background
    assert started < out.index("\nils_container notebook")  # before the container starts
