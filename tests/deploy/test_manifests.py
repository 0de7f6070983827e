"""Kubernetes manifests, Helm values and every pod we ship, validated against the Kubernetes
schemas (kubernetes-validate, offline, strict: unknown fields are errors), and the names that
tie them together checked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from interlink_slurm.config import load_settings
from tests.deploy.helpers import (
    E2E,
    EXAMPLES,
    LEONARDO,
    LOCAL,
    MANIFESTS,
    e2e_scenarios,
    load_docs,
    rel,
)

# The oldest Kubernetes a site is likely to run, and the newest the validator knows.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
HELM_VALUES = sorted((MANIFESTS / "helm").glob("*.yaml"))
MANIFEST_FILES = sorted(
    p for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml" and "helm" not in p.parts
)
KUSTOMIZATIONS = sorted(MANIFESTS.rglob("kustomization.yaml"))

# Keys of the virtual kubelet's configuration (interLink 0.6, pkg/virtualkubelet/config.go).
VK_KEYS = {
    "InterlinkURL",
    "InterlinkPort",
    "KubernetesApiAddr",
    "KubernetesApiPort",
    "KubernetesApiCaCrt",
    "DisableProjectedVolumes",
    "VKConfigPath",
    "VKTokenFile",
    "ServiceAccount",
    "Namespace",
    "PodIP",
    "VerboseLogging",
    "ErrorsOnlyLogging",
    "HTTP",
    "KubeletHTTP",
    "Resources",
    "NodeLabels",
    "NodeTaints",
    "Network",
    "TLS",
    "PodCIDR",
    "JobScriptBuilderURL",
    "ExportPodData",
}
# Keys of interLink's API configuration (pkg/interlink/config.go).
API_KEYS = {
    "InterlinkAddress",
    "InterlinkPort",
    "SidecarURL",
    "SidecarPort",
    "VerboseLogging",
    "ErrorsOnlyLogging",
    "DataRootFolder",
    "TLS",
    "ExportPodData",
    "JobScriptBuildConfig",
    "JobScriptTemplate",
}
# Value paths of interLink's Helm chart (interlink-hq/interlink-helm-chart, interlink/values.yaml)
# that these values may set; maps and lists of Kubernetes objects are leaves.
CHART_PATHS = {
    "nodeName",
    "interlink.enabled",
    "interlink.image",
    "interlink.address",
    "interlink.port",
    "interlink.socket",
    "interlink.exportPodData",
    "interlink.disableProjectedVolumes",
    "interlink.logging.verboseLogging",
    "interlink.logging.errorsOnlyLogging",
    "interlink.pluginEndpoint.url",
    "interlink.pluginEndpoint.port",
    "interlink.tls.enabled",
    "interlink.tls.certFile",
    "interlink.tls.keyFile",
    "interlink.tls.caCertFile",
    "virtualNode.image",
    "virtualNode.resources.CPUs",
    "virtualNode.resources.memGiB",
    "virtualNode.resources.pods",
    "virtualNode.resources.accelerators",
    "virtualNode.HTTP.insecure",
    "virtualNode.HTTP.CACert",
    "virtualNode.kubeletHTTP.insecure",
    "virtualNode.nodeLabels",
    "virtualNode.nodeTaints",
    "virtualNode.network.enableTunnel",
    "virtualNode.network.wildcardDNS",
    "virtualNode.network.templateType",
    "virtualNode.network.tunnelImage",
    "virtualNode.network.ingressTLS",
    "plugin.enabled",
    "OAUTH.enabled",
    "OAUTH.TokenURL",
    "OAUTH.ClientID",
    "OAUTH.ClientSecret",
    "OAUTH.RefreshToken",
    "OAUTH.GrantType",
    "OAUTH.Audience",
    "podScheduling.nodeSelector",
    "podScheduling.tolerations",
}
LEAF_MAPS = {"podScheduling.nodeSelector"}
TAINT_KEY = "virtual-node.interlink/no-schedule"


def validate(obj: dict[str, Any], where: str) -> None:
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            pytest.fail(
                f"{where}: {obj.get('kind')} invalid for Kubernetes {version} at {path}: "
                f"{err.message}"
            )


def all_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in MANIFEST_FILES for d in load_docs(p)]


def by_kind(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d
        for _, d in all_objects()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def embedded(config_map: dict[str, Any]) -> dict[str, Any]:
    return dict(yaml.safe_load(config_map["data"]["InterLinkConfig.yaml"]))


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    [c] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in c.get("env") or []}


# --- schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=rel)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    docs = load_docs(path)
    assert docs
    for d in docs:
        validate(d, rel(path))


def kustomize_files(directory: Path) -> list[Path]:
    """The files `kubectl apply -k directory` reads, following kustomize's rule that a resource
    outside the kustomization's directory must be a directory holding a kustomization."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert k["kind"] == "Kustomization" and set(k) == {"apiVersion", "kind", "resources"}
    files: list[Path] = []
    for resource in k["resources"]:
        target = (directory / resource).resolve()
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), f"{resource}: no kustomization.yaml"
            files += kustomize_files(target)
        else:
            assert target.exists(), f"{rel(directory)}: {resource} does not exist"
            assert target.parent == directory.resolve(), (
                f"{rel(directory)}: {resource} is outside the kustomization's directory "
                "(kustomize refuses it; reference a directory with a kustomization instead)"
            )
            files.append(target)
    return files


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=rel)
def test_kustomization_builds_from_every_manifest_of_its_directory(path: Path) -> None:
    files = kustomize_files(path.parent)
    assert len(files) == len(set(files)), "a file is included twice"
    here = {p.resolve() for p in path.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
    # The token Secret is a placeholder: it is created by hand from a real token.
    here -= {(path.parent / "vk-token-secret.yaml").resolve()}
    assert here <= set(files), sorted(str(p) for p in here - set(files))
    if path.parent != MANIFESTS / "base":
        assert (MANIFESTS / "base" / "rbac.yaml").resolve() in files
        kinds = [d["kind"] for f in files for d in load_docs(f)]
        assert kinds.count("Namespace") == 1 and "Deployment" in kinds and "ConfigMap" in kinds


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=rel)
def test_kubectl_kustomize_builds_valid_objects(path: Path) -> None:
    """`kubectl kustomize` (offline, client side) builds what `kubectl apply -k` would apply."""
    r = subprocess.run(
        ["kubectl", "kustomize", str(path.parent)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    built = [d for d in yaml.safe_load_all(r.stdout) if d]
    expected = [d for f in kustomize_files(path.parent) for d in load_docs(f)]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in expected
    )
    for d in built:
        validate(d, f"kubectl kustomize {rel(path.parent)}")


def example_pods() -> list[tuple[str, dict[str, Any]]]:
    """Every pod of examples/, a file of a pod group holding several (one YAML document each)."""
    pods = []
    for p in sorted(EXAMPLES.rglob("*")):
        if p.suffix in (".yaml", ".json") and p.is_file():
            docs = [d for d in yaml.safe_load_all(p.read_text()) if d]
            for i, data in enumerate(docs):
                if isinstance(data, dict) and data.get("kind") == "Pod":
                    pods.append((rel(p) if len(docs) == 1 else f"{rel(p)}#{i}", data))
    return pods


@pytest.mark.parametrize(("where", "pod"), example_pods(), ids=[w for w, _ in example_pods()])
def test_example_pod_is_valid_kubernetes(where: str, pod: dict[str, Any]) -> None:
    validate(pod, where)


def test_hello_example_pod_is_valid_kubernetes() -> None:
    data = yaml.safe_load((EXAMPLES / "hello-pod.json").read_text())
    validate(data["pod"], "examples/hello-pod.json pod")
    for c in data["container"]:
        for cm in c["configMaps"] or []:
            validate({"apiVersion": "v1", "kind": "ConfigMap", **cm}, "hello-pod.json configMap")


def scenario_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for s in e2e_scenarios().load_all():
        out.append((f"{s.name} pod", s.pod))
        out += [(f"{s.name} configMap", cm) for cm in s.config_maps]
        out += [(f"{s.name} secret", sec) for sec in s.secrets]
    return out


@pytest.mark.parametrize(
    ("where", "obj"), scenario_objects(), ids=[w for w, _ in scenario_objects()]
)
def test_e2e_scenario_objects_are_valid_kubernetes(where: str, obj: dict[str, Any]) -> None:
    validate(obj, f"{rel(E2E)}/scenarios: {where}")


# --- Helm values ----------------------------------------------------------------------------------


def leaf_paths(data: Any, prefix: str = "") -> set[str]:
    if isinstance(data, dict) and prefix not in LEAF_MAPS:
        paths: set[str] = set()
        for k, v in data.items():
            paths |= leaf_paths(v, f"{prefix}.{k}" if prefix else str(k))
        return paths
    return {prefix}


@pytest.mark.parametrize("path", HELM_VALUES, ids=rel)
def test_helm_values_set_only_keys_of_interlinks_chart(path: Path) -> None:
    values = yaml.safe_load(path.read_text())
    unknown = leaf_paths(values) - CHART_PATHS
    assert not unknown, f"{rel(path)}: not values of the interLink chart: {sorted(unknown)}"


@pytest.mark.parametrize("path", HELM_VALUES, ids=rel)
def test_helm_values_kubernetes_fragments_are_valid(path: Path) -> None:
    values = yaml.safe_load(path.read_text())
    sched = values.get("podScheduling", {})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "vk"},
        "spec": {
            "containers": [{"name": "vk", "image": values["virtualNode"]["image"]}],
            "nodeSelector": sched.get("nodeSelector") or {},
            "tolerations": sched.get("tolerations") or [],
        },
    }
    validate(pod, f"{rel(path)} podScheduling")
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": values["nodeName"],
            "labels": dict(label.split("=", 1) for label in values["virtualNode"]["nodeLabels"]),
        },
        "spec": {"taints": values["virtualNode"]["nodeTaints"]},
    }
    validate(node, f"{rel(path)} nodeName/nodeLabels/nodeTaints")


def test_helm_values_describe_the_same_nodes_as_the_manifests() -> None:
    edge = yaml.safe_load((MANIFESTS / "helm" / "values-edge.yaml").read_text())
    [edge_deploy] = by_kind("Deployment", "leonardo-slurm-vk")
    edge_vk = embedded(by_kind("ConfigMap", "leonardo-slurm-vk-config")[0])
    assert edge["nodeName"] == env_of(container(edge_deploy, "vk"))["NODENAME"]
    assert edge["interlink"]["address"] == edge_vk["InterlinkURL"]
    assert str(edge["interlink"]["port"]) == edge_vk["InterlinkPort"]
    assert edge["virtualNode"]["image"] == container(edge_deploy, "vk")["image"]
    assert edge["virtualNode"]["nodeLabels"] == edge_vk["NodeLabels"]

    inc = yaml.safe_load((MANIFESTS / "helm" / "values-in-cluster.yaml").read_text())
    [inc_deploy] = by_kind("Deployment", "interlink-slurm-vk")
    api = embedded(by_kind("ConfigMap", "interlink-slurm-api-config")[0])
    assert inc["nodeName"] == env_of(container(inc_deploy, "vk"))["NODENAME"]
    assert inc["interlink"]["pluginEndpoint"] == {
        "url": api["SidecarURL"],
        "port": api["SidecarPort"],
    }
    assert inc["interlink"]["image"] == container(inc_deploy, "interlink")["image"]


# --- names that tie the pieces together -----------------------------------------------------------


def test_embedded_interlink_configurations_use_interlinks_keys() -> None:
    for cm in by_kind("ConfigMap"):
        config = embedded(cm)
        keys = API_KEYS if "SidecarURL" in config else VK_KEYS
        assert set(config) <= keys, (cm["metadata"]["name"], set(config) - keys)
        for k in ("InterlinkPort", "SidecarPort"):
            if k in config:
                assert isinstance(config[k], str), f"{k} is a string in interLink's Go struct"


def test_every_deployment_runs_as_the_bound_service_account_with_its_config() -> None:
    [sa] = by_kind("ServiceAccount")
    [binding] = by_kind("ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "interlink"}
    ]
    assert binding["roleRef"]["name"] in {r["metadata"]["name"] for r in by_kind("ClusterRole")}
    config_maps = {cm["metadata"]["name"]: cm for cm in by_kind("ConfigMap")}
    for deploy in by_kind("Deployment"):
        spec = deploy["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == sa["metadata"]["name"]
        assert deploy["spec"]["replicas"] == 1
        volumes = {v["name"]: v for v in spec["volumes"]}
        vk = container(deploy, "vk")
        for c in spec["containers"]:
            for m in c.get("volumeMounts") or []:
                assert m["name"] in volumes
        [config_mount] = [
            m for m in vk["volumeMounts"] if m["mountPath"] == env_of(vk)["CONFIGPATH"]
        ]
        vk_config = embedded(config_maps[volumes[config_mount["name"]]["configMap"]["name"]])
        assert vk_config["ServiceAccount"] == sa["metadata"]["name"]
        assert vk_config["Namespace"] == deploy["metadata"]["namespace"]
        token = vk_config["VKTokenFile"]
        if token != "/dev/null":
            assert any(token.startswith(m["mountPath"] + "/") for m in vk["volumeMounts"])


def test_edge_token_secret_matches_the_deployment() -> None:
    [secret] = load_docs(MANIFESTS / "edge" / "vk-token-secret.yaml")
    [deploy] = by_kind("Deployment", "leonardo-slurm-vk")
    secrets = [
        v["secret"]["secretName"]
        for v in deploy["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    ]
    assert secrets == [secret["metadata"]["name"]]
    assert "token" in secret["stringData"]


def test_in_cluster_interlink_reaches_the_plugin_through_its_service() -> None:
    api = embedded(by_kind("ConfigMap", "interlink-slurm-api-config")[0])
    [svc] = by_kind("Service", "interlink-slurm-plugin")
    [eps] = by_kind("EndpointSlice")
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert api["SidecarURL"] == f"http://{host}"
    assert api["SidecarPort"] == str(svc["spec"]["ports"][0]["port"])
    assert "selector" not in svc["spec"]
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == svc["metadata"]["name"]
    assert eps["ports"][0]["port"] == svc["spec"]["ports"][0]["targetPort"]
    # The in-cluster VK talks to interLink in its own pod.
    vk = embedded(by_kind("ConfigMap", "interlink-slurm-vk-config")[0])
    assert (vk["InterlinkURL"], vk["InterlinkPort"]) == ("http://localhost", api["InterlinkPort"])


def test_interlink_images_are_pinned_to_one_release() -> None:
    images = {
        c["image"]
        for d in by_kind("Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    tags = {i.rsplit(":", 1)[1] for i in images}
    assert len(tags) == 1 and "latest" not in tags, images


def test_pods_we_ship_tolerate_the_virtual_nodes_taint() -> None:
    """The taint the virtual kubelet always sets is the one the plugin's ping sends, and every
    example pod meant for the virtual node tolerates it."""
    for config in (LEONARDO, LOCAL):
        assert [t.key for t in load_settings(config).taints] == [TAINT_KEY]
    for where, pod in example_pods():
        keys = {t["key"] for t in pod["spec"].get("tolerations") or []}
        assert TAINT_KEY in keys, f"{where} does not tolerate {TAINT_KEY}"
