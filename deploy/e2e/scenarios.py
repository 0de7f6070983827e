"""End-to-end scenarios: a pod, the objects it mounts, and what must become of it.

One YAML file per scenario in ``scenarios/``::

    description: one sentence
    pod: {a v1.Pod manifest}          # or  podFile: examples/x.yaml  (relative to the repository)
    configMaps: [v1.ConfigMap, ...]   # created before the pod (kind) / sent with it (local)
    secrets: [v1.Secret, ...]         # stringData allowed: turned into base64 data as the API
                                      # server does
    timeoutSeconds: 90                # until the pod must reach its final phase
    expect:
      phase: Succeeded | Failed | Running   # Running: a pod that serves until deleted (probes,
                                            # hooks) passes once it runs and its logs hold
                                            # every expected line; then it is deleted
      createError: [text, ...]        # /create must be refused with a message holding each
                                      # text (the pod Fails, reason ProviderFailed)
      initContainers: {name: {exitCode: 0, reason: Completed, logs: [line, ...]}}
      containers:     {name: {exitCode: 0, reason: Completed, logs: [line, ...],
                              message: [text, ...]}}

Every expected log line must appear as a whole line of the container's log; each ``message``
text, within its terminated state's message (a termination message). The phase is derived
from the container statuses the way interLink's virtual kubelet does (``pod_phase``), so the same
expectations hold for the plugin's raw HTTP answers (run_local.py) and for a real cluster
(run_kind.py, where Kubernetes reports the phase).

Without Kubernetes (run_local.py), the pod is first made what the API server and interLink's
virtual kubelet would send: the API server's defaults (``api_server_defaults``), the
service-account volume on every pod unless ``automountServiceAccountToken: false``, and env
``valueFrom``/``envFrom`` resolved from the scenario's ConfigMaps and Secrets
(``resolve_env``), as the virtual kubelet does before calling interLink.
"""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
NAMESPACE = "interlink-e2e"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PHASES = ("Succeeded", "Failed")
RUNNING = "Running"  # an expected phase the pod reaches and keeps until it is deleted

_SCENARIO_KEYS = {
    "description",
    "pod",
    "podFile",
    "configMaps",
    "secrets",
    "timeoutSeconds",
    "expect",
}
_EXPECT_KEYS = {"phase", "createError", "initContainers", "containers"}
_CONTAINER_KEYS = {"exitCode", "reason", "logs", "message"}


class ScenarioError(Exception):
    """A scenario file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class ContainerExpectation:
    exit_code: int | None = None
    reason: str | None = None
    logs: tuple[str, ...] = ()
    message: tuple[str, ...] = ()  # texts its terminated state's message holds


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str
    pod: dict[str, Any]
    config_maps: tuple[dict[str, Any], ...]
    secrets: tuple[dict[str, Any], ...]
    timeout: float
    phase: str
    create_error: tuple[str, ...] | None = None
    init_containers: dict[str, ContainerExpectation] = field(default_factory=dict)
    containers: dict[str, ContainerExpectation] = field(default_factory=dict)

    @property
    def images(self) -> set[str]:
        spec = self.pod["spec"]
        return {c["image"] for c in (spec.get("initContainers") or []) + spec["containers"]}

    @property
    def pod_name(self) -> str:
        return str(self.pod["metadata"]["name"])


def _fail(path: Path, msg: str) -> ScenarioError:
    return ScenarioError(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {msg}")


def _containers(path: Path, where: str, data: Any) -> dict[str, ContainerExpectation]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _fail(path, f"{where} must map container names to expectations")
    out = {}
    for name, exp in data.items():
        exp = exp or {}
        unknown = set(exp) - _CONTAINER_KEYS
        if unknown:
            raise _fail(path, f"{where}.{name}: unknown keys {sorted(unknown)}")
        logs = exp.get("logs") or []
        if not all(isinstance(line, str) for line in logs):
            raise _fail(path, f"{where}.{name}.logs must be a list of strings")
        message = exp.get("message") or []
        if not all(isinstance(text, str) and text for text in message):
            raise _fail(path, f"{where}.{name}.message must be a list of texts")
        out[str(name)] = ContainerExpectation(
            exp.get("exitCode"), exp.get("reason"), tuple(logs), tuple(message)
        )
    return out


def _fragments(path: Path, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(path, "expect.createError must be a text or a list of texts")
    return tuple(value)


def load(path: Path) -> Scenario:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise _fail(path, "must hold a mapping")
    unknown = set(data) - _SCENARIO_KEYS
    if unknown:
        raise _fail(path, f"unknown keys {sorted(unknown)}")
    if ("pod" in data) == ("podFile" in data):
        raise _fail(path, "give exactly one of pod and podFile")
    pod = data.get("pod")
    if "podFile" in data:
        pod = yaml.safe_load((REPO / data["podFile"]).read_text())
    if not isinstance(pod, dict) or pod.get("kind") != "Pod":
        raise _fail(path, "pod must be a v1.Pod manifest (kind: Pod)")
    expect = data.get("expect") or {}
    unknown = set(expect) - _EXPECT_KEYS
    if unknown:
        raise _fail(path, f"expect: unknown keys {sorted(unknown)}")
    if expect.get("phase") not in (*PHASES, RUNNING):
        raise _fail(path, f"expect.phase must be one of {(*PHASES, RUNNING)}")
    spec = pod["spec"]
    names = {c["name"] for c in spec["containers"]}
    init_names = {c["name"] for c in spec.get("initContainers") or []}
    containers = _containers(path, "expect.containers", expect.get("containers"))
    init = _containers(path, "expect.initContainers", expect.get("initContainers"))
    if not set(containers) <= names or not set(init) <= init_names:
        raise _fail(path, "expect names a container the pod does not have")
    return Scenario(
        name=path.stem,
        path=path,
        description=str(data.get("description", "")),
        pod=pod,
        config_maps=tuple(data.get("configMaps") or ()),
        secrets=tuple(data.get("secrets") or ()),
        timeout=float(data.get("timeoutSeconds", 90)),
        phase=expect["phase"],
        create_error=_fragments(path, expect.get("createError")),
        init_containers=init,
        containers=containers,
    )


def load_all(names: list[str] | None = None) -> list[Scenario]:
    scenarios = [load(p) for p in sorted(SCENARIO_DIR.glob("*.yaml"))]
    if names:
        missing = set(names) - {s.name for s in scenarios}
        if missing:
            raise ScenarioError(f"no such scenario: {', '.join(sorted(missing))}")
        scenarios = [s for s in scenarios if s.name in names]
    return scenarios


def plugin_config(
    base: Path, *, listen: str, data_root: str, image: str, slurm_conf: str, images: set[str]
) -> dict[str, Any]:
    """The plugin's configuration for a run: ``base`` (deploy/config/local.yaml) with every image
    the scenarios name mapped to the one local image directory."""
    config = yaml.safe_load(base.read_text())
    config["listen"] = listen
    config["data_root"] = data_root
    config["images"] = {ref: image for ref in sorted(images | set(config.get("images") or {}))}
    config["slurm_conf"] = slurm_conf
    config["log_level"] = "info"
    return dict(config)


# --- what the API server and the virtual kubelet would have done to the objects -----------------


def stored_secret(secret: dict[str, Any]) -> dict[str, Any]:
    """The Secret as the API server stores it: stringData merged into base64 ``data``."""
    out = copy.deepcopy(secret)
    data = dict(out.get("data") or {})
    for key, value in (out.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    out["data"] = data
    out.setdefault("type", "Opaque")
    return out


def api_server_defaults(pod: dict[str, Any]) -> None:
    """The fields the API server fills in a pod it admits (v1 defaulting), in place."""
    spec = pod["spec"]
    for key, value in (
        ("restartPolicy", "Always"),
        ("dnsPolicy", "ClusterFirst"),
        ("schedulerName", "default-scheduler"),
        ("securityContext", {}),
        ("terminationGracePeriodSeconds", 30),
        ("serviceAccountName", "default"),
        ("serviceAccount", "default"),
        ("enableServiceLinks", True),
        ("preemptionPolicy", "PreemptLowerPriority"),
        ("priority", 0),
    ):
        spec.setdefault(key, copy.deepcopy(value))
    # The DefaultTolerationSeconds admission plugin.
    tolerations = spec.setdefault("tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") == key for t in tolerations):
            tolerations.append(
                {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            )
    for c in (spec.get("initContainers") or []) + spec["containers"]:
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        latest = ":" not in c["image"].rsplit("/", 1)[-1] or c["image"].endswith(":latest")
        c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        c.setdefault("resources", {})
        for port in c.get("ports") or []:
            port.setdefault("protocol", "TCP")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if c.get(probe):
                for key, value in (
                    ("timeoutSeconds", 1),
                    ("periodSeconds", 10),
                    ("successThreshold", 1),
                    ("failureThreshold", 3),
                ):
                    c[probe].setdefault(key, value)
                if "httpGet" in c[probe]:
                    c[probe]["httpGet"].setdefault("scheme", "HTTP")


def resolve_env(
    pod: dict[str, Any], config_maps: list[dict[str, Any]], secrets: list[dict[str, Any]]
) -> None:
    """What interLink's virtual kubelet does to env before it sends a pod (execute.go): every
    ``valueFrom`` it can read becomes a ``value`` (fieldRef metadata.name/namespace/uid and
    annotations, configMapKeyRef, secretKeyRef), and ``envFrom`` becomes env entries (with its
    prefix; a name given in ``env`` wins). In place."""
    meta = pod["metadata"]
    cms = {cm["metadata"]["name"]: cm.get("data") or {} for cm in config_maps}
    sec = {
        s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        for s in secrets
    }
    fields = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
    }
    for c in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]:
        env = c.get("env") or []
        for var in env:
            ref = var.pop("valueFrom", None)
            if ref is None:
                continue
            if "fieldRef" in ref:
                path = ref["fieldRef"]["fieldPath"]
                if path.startswith("metadata.annotations['"):
                    var["value"] = (meta.get("annotations") or {}).get(path[22:-2], "")
                else:
                    var["value"] = fields.get(path, "")
            elif "configMapKeyRef" in ref:
                sel = ref["configMapKeyRef"]
                var["value"] = cms[sel["name"]][sel["key"]]
            elif "secretKeyRef" in ref:
                sel = ref["secretKeyRef"]
                var["value"] = sec[sel["name"]][sel["key"]]
            else:
                var["valueFrom"] = ref  # not resolved by the virtual kubelet either
        explicit = {var["name"] for var in env}
        for source in c.pop("envFrom", None) or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = cms.get(source["configMapRef"]["name"], {})
            else:
                data = sec.get(source["secretRef"]["name"], {})
            for key, value in data.items():
                if prefix + key not in explicit:
                    env = [v for v in env if v["name"] != prefix + key]
                    env.append({"name": prefix + key, "value": value})
        if env:
            c["env"] = env


def admitted_pod(scenario: Scenario, namespace: str, uid: str) -> tuple[dict[str, Any], list[Any]]:
    """The pod as interLink receives it from a cluster, and its projected volumes' contents.

    Like the ServiceAccount admission plugin, it adds the kube-api-access projected volume
    (token, ca.crt, namespace) to every container unless automountServiceAccountToken is false;
    like the virtual kubelet, it sends that volume's files as a projectedvolumemaps entry.
    """
    pod = copy.deepcopy(scenario.pod)
    meta = pod.setdefault("metadata", {})
    meta.update({"namespace": namespace, "uid": uid})
    meta.setdefault("annotations", {})
    meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
    spec = pod["spec"]
    api_server_defaults(pod)
    projected: list[Any] = []
    if spec.get("automountServiceAccountToken") is not False:
        ca = "-----BEGIN CERTIFICATE-----\ne2e\n-----END CERTIFICATE-----\n"
        projected.append(
            kube_api_access(pod, "kube-api-access-e2e", "e2e-service-account-token", ca)
        )
    pod["status"] = {"phase": "Pending"}
    return pod, projected


def kube_api_access(pod: dict[str, Any], volume: str, token: str, ca: str) -> dict[str, Any]:
    """Like the ServiceAccount admission plugin, the kube-api-access projected volume (token,
    ca.crt, namespace) mounted read-only in every container, in place; returns the
    projectedvolumemaps entry the virtual kubelet sends for it."""
    spec = pod["spec"]
    spec["volumes"] = [*(spec.get("volumes") or []), _kube_api_access_volume(volume)]
    for c in (spec.get("initContainers") or []) + spec["containers"]:
        mount = {"name": volume, "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}
        c["volumeMounts"] = [*(c.get("volumeMounts") or []), mount]
    namespace = pod["metadata"]["namespace"]
    return {
        "metadata": {"name": volume, "namespace": namespace},
        "data": {"token": token, "ca.crt": ca, "namespace": namespace},
    }


def _kube_api_access_volume(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "projected": {
            "defaultMode": 420,
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
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }
                        ]
                    }
                },
            ],
        },
    }


def retrieved_pod_data(scenario: Scenario, namespace: str, uid: str) -> dict[str, Any]:
    """The /create body interLink sends: the pod, and per container what it mounts."""
    pod, projected = admitted_pod(scenario, namespace, uid)
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    config_maps = [_in_namespace(cm, namespace) for cm in scenario.config_maps]
    secrets = [_in_namespace(stored_secret(s), namespace) for s in scenario.secrets]
    resolve_env(pod, config_maps, secrets)
    projected += _projected_volumes(spec, config_maps, secrets, namespace)
    containers = []
    for c in (spec.get("initContainers") or []) + spec["containers"]:
        mounted = [volumes[m["name"]] for m in c.get("volumeMounts") or [] if m["name"] in volumes]
        cm_names = {v["configMap"]["name"] for v in mounted if "configMap" in v}
        secret_names = {v["secret"]["secretName"] for v in mounted if "secret" in v}
        projected_names = {v["name"] for v in mounted if "projected" in v or "downwardAPI" in v}
        containers.append(
            {
                "name": c["name"],
                "configMaps": [cm for cm in config_maps if cm["metadata"]["name"] in cm_names]
                or None,
                "secrets": [s for s in secrets if s["metadata"]["name"] in secret_names] or None,
                "projectedvolumemaps": [
                    p for p in projected if p["metadata"]["name"] in projected_names
                ]
                or None,
                "emptyDirs": None,
            }
        )
    return {"pod": pod, "container": containers, "jobConfig": {}}


def _projected_volumes(
    spec: dict[str, Any],
    config_maps: list[dict[str, Any]],
    secrets: list[dict[str, Any]],
    namespace: str,
) -> list[dict[str, Any]]:
    """The pod's own projected volumes of ConfigMaps and Secrets, as the virtual kubelet sends
    them: one map per volume, its data keyed by file path (the service account's is added by
    admitted_pod)."""
    cms = {cm["metadata"]["name"]: cm.get("data") or {} for cm in config_maps}
    sec = {
        s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        for s in secrets
    }
    out = []
    for vol in spec.get("volumes") or []:
        sources = (vol.get("projected") or {}).get("sources")
        if not sources or vol["name"].startswith("kube-api-access"):
            continue
        data: dict[str, str] = {}
        for source in sources:
            for kind, objects in (("configMap", cms), ("secret", sec)):
                if kind in source:
                    values = objects[source[kind]["name"]]
                    items = source[kind].get("items") or [{"key": k, "path": k} for k in values]
                    for item in items:
                        data[item["path"]] = values[item["key"]]
        out.append({"metadata": {"name": vol["name"], "namespace": namespace}, "data": data})
    return out


def _in_namespace(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out.setdefault("metadata", {})["namespace"] = namespace
    return out


# --- judging the outcome -------------------------------------------------------------------------


def _state(status: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    state = status.get("state") or {}
    for kind in ("terminated", "running", "waiting"):
        if state.get(kind) is not None:
            return kind, state[kind]
    return "waiting", {}


def pod_phase(status: dict[str, Any]) -> str:
    """The phase interLink's virtual kubelet derives from a plugin's /status answer.

    All containers terminated: Succeeded, or Failed when any exit code (init containers
    included) is not 0. Any container running: Running. Otherwise Pending.
    """
    containers = status.get("containers") or []
    inits = status.get("initContainers") or []
    if not containers:
        return "Pending"
    kinds = [_state(c)[0] for c in containers]
    if all(k == "terminated" for k in kinds):
        codes = [
            _state(c)[1].get("exitCode", 0)
            for c in inits + containers
            if _state(c)[0] == "terminated"
        ]
        return "Failed" if any(code != 0 for code in codes) else "Succeeded"
    if "running" in kinds:
        return "Running"
    return "Pending"


def logs_complete(scenario: Scenario, logs: dict[str, str]) -> bool:
    """Every expected log line is there (how a pod expected Running is seen to have done its
    part before it is deleted)."""
    for expectations in (scenario.init_containers, scenario.containers):
        for name, exp in expectations.items():
            lines = {line.rstrip("\r") for line in logs.get(name, "").splitlines()}
            if not set(exp.logs) <= lines:
                return False
    return True


def settled(scenario: Scenario, phase: str, logs: Any) -> bool:
    """Whether to stop waiting: a final phase, or the Running a scenario expects with its logs
    complete (``logs()`` reads them, only then)."""
    if phase in PHASES:
        return True
    return scenario.phase == RUNNING and phase == RUNNING and logs_complete(scenario, logs())


def judge(
    scenario: Scenario,
    phase: str,
    containers: list[dict[str, Any]],
    init_containers: list[dict[str, Any]],
    logs: dict[str, str],
    create_error: str | None = None,
) -> list[str]:
    """What differs from the expectations (an empty list when the scenario passed)."""
    problems: list[str] = []
    if scenario.create_error is not None:
        if create_error is None:
            problems.append(
                f"create was accepted; expected a refusal naming {scenario.create_error}"
            )
        else:
            missing = [f for f in scenario.create_error if f not in create_error]
            if missing:
                problems.append(f"create was refused with {create_error!r}, which lacks {missing}")
    elif create_error is not None:
        problems.append(f"create was refused: {create_error}")
    if phase != scenario.phase:
        problems.append(f"phase {phase}, expected {scenario.phase}")
    for group, expectations, statuses in (
        ("initContainers", scenario.init_containers, init_containers),
        ("containers", scenario.containers, containers),
    ):
        by_name = {s.get("name"): s for s in statuses}
        for name, exp in expectations.items():
            status = by_name.get(name)
            kind, detail = _state(status or {})
            where = f"{group}.{name}"
            if exp.exit_code is not None or exp.reason is not None or exp.message:
                if status is None or kind != "terminated":
                    problems.append(f"{group}.{name}: {kind}, expected terminated")
                else:
                    if exp.exit_code is not None and detail.get("exitCode") != exp.exit_code:
                        code = detail.get("exitCode")
                        problems.append(f"{where}: exit code {code}, expected {exp.exit_code}")
                    if exp.reason is not None and detail.get("reason") != exp.reason:
                        reason = detail.get("reason")
                        problems.append(f"{where}: reason {reason!r}, expected {exp.reason!r}")
                    said = str(detail.get("message") or "")
                    for want in exp.message:
                        if want not in said:
                            problems.append(f"{where}: message {said!r} has no {want!r}")
            lines = {line.rstrip("\r") for line in logs.get(name, "").splitlines()}
            for want in exp.logs:
                if want not in lines:
                    problems.append(f"{group}.{name}: log has no line {want!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python3 scenarios.py config --listen 0.0.0.0:4000 --data-root D``: print the plugin's
    configuration for the scenarios (used by the kind workflow's Slurm container)."""
    import argparse
    import os

    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["config", "list"])
    parser.add_argument("--listen", default="127.0.0.1:4000")
    parser.add_argument("--data-root", default="/var/tmp/interlink-slurm/pods")
    parser.add_argument(
        "--runtime",
        choices=["charliecloud", "apptainer"],
        default="charliecloud",
        help="apptainer: images from their registries (vk-test-set), none mapped",
    )
    args = parser.parse_args(argv)
    scenarios = load_all()
    if args.command == "list":
        for s in scenarios:
            print(f"{s.name}: {s.description}")
        return 0
    config = plugin_config(
        REPO / "deploy" / "config" / "local.yaml",
        listen=args.listen,
        data_root=args.data_root,
        image=os.environ["ILS_IMAGE"],
        slurm_conf=os.environ["SLURM_CONF"],
        images=set().union(*(s.images for s in scenarios)),
    )
    if args.runtime == "apptainer":
        config["runtime"] = "apptainer"
        config["images"] = {}  # docker:// references: the job pulls them
    print(yaml.safe_dump(config, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
