#!/usr/bin/env python3
"""Run the end-to-end scenarios through a real Kubernetes cluster with kubectl.

    python3 deploy/e2e/run_kind.py --node interlink-slurm [SCENARIO ...]

For every scenario, all at once: create its ConfigMaps and Secrets in the namespace
interlink-e2e, create its pod bound to the virtual node (nodeSelector kubernetes.io/hostname and
the toleration of virtual-node.interlink/no-schedule are added), wait for the phase Kubernetes
reports, read `kubectl logs` of every container, compare with the expectations, delete. Used by
.github/workflows/e2e-kind.yaml; run_local.py runs the same scenarios without Kubernetes.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios as sc

TOLERATION = {
    "key": "virtual-node.interlink/no-schedule",
    "operator": "Exists",
    "effect": "NoSchedule",
}


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout if proc.returncode == 0 else proc.stderr


def apply(obj: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps(obj))


def on_node(pod: dict[str, Any], node: str, namespace: str) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["metadata"]["namespace"] = namespace
    spec = pod["spec"]
    spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    tolerations = [t for t in spec.get("tolerations") or [] if t.get("key") != TOLERATION["key"]]
    spec["tolerations"] = [*tolerations, TOLERATION]
    return pod


def pod_logs(pod: dict[str, Any], name: str, namespace: str) -> dict[str, str]:
    spec = pod.get("spec", {})
    return {
        c["name"]: kubectl("logs", "-n", namespace, name, "-c", c["name"], check=False)
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
    }


def run(scenario: sc.Scenario, node: str, namespace: str) -> list[str]:
    for cm in scenario.config_maps:
        apply({**cm, "metadata": {**cm["metadata"], "namespace": namespace}})
    for secret in scenario.secrets:
        apply({**secret, "metadata": {**secret["metadata"], "namespace": namespace}})
    name = scenario.pod_name
    apply(on_node(scenario.pod, node, namespace))
    deadline = time.monotonic() + scenario.timeout + 60  # + image-less scheduling on the node
    pod: dict[str, Any] = {}
    phase = "Pending"
    try:
        while time.monotonic() < deadline:
            pod = json.loads(kubectl("get", "pod", "-n", namespace, name, "-o", "json"))
            phase = pod.get("status", {}).get("phase", "Pending")
            if sc.settled(scenario, phase, lambda p=pod: pod_logs(p, name, namespace)):
                break
            time.sleep(2)
        status = pod.get("status", {})
        create_error = status.get("message") if status.get("reason") == "ProviderFailed" else None
        logs = pod_logs(pod, name, namespace)
        problems = sc.judge(
            scenario,
            phase,
            status.get("containerStatuses") or [],
            status.get("initContainerStatuses") or [],
            logs,
            create_error=create_error,
        )
        if problems:
            problems.append("pod status: " + json.dumps(status)[:3000])
            problems += [f"log of {n}: {text[-1500:]}" for n, text in logs.items()]
        return problems
    finally:
        kubectl("delete", "pod", "-n", namespace, name, "--wait=false", check=False)
        for cm in scenario.config_maps:
            kubectl("delete", "configmap", "-n", namespace, cm["metadata"]["name"], check=False)
        for s in scenario.secrets:
            kubectl("delete", "secret", "-n", namespace, s["metadata"]["name"], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--node", default="interlink-slurm", help="the virtual node's name")
    parser.add_argument("--namespace", default=sc.NAMESPACE)
    args = parser.parse_args(argv)
    scenarios = sc.load_all(args.names or None)

    apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args.namespace}})
    # The namespace's default ServiceAccount appears shortly after the namespace.
    for _ in range(60):
        if "default" in kubectl("get", "sa", "-n", args.namespace, "-o", "name", check=False):
            break
        time.sleep(1)

    t0 = time.monotonic()

    def one(s: sc.Scenario) -> tuple[sc.Scenario, list[str], float]:
        start = time.monotonic()
        try:
            problems = run(s, args.node, args.namespace)
        except (RuntimeError, ValueError) as err:
            problems = [str(err)]
        return s, problems, time.monotonic() - start

    with ThreadPoolExecutor(max_workers=len(scenarios)) as pool:
        results = list(pool.map(one, scenarios))
    failed = 0
    for s, problems, seconds in results:
        print(f"{'FAIL' if problems else 'PASS'}  {s.name:<24} {seconds:5.1f}s")
        for p in problems:
            print(f"      - {p}")
        failed += bool(problems)
    print(
        f"e2e-kind: {len(results) - failed} passed, {failed} failed in {time.monotonic() - t0:.1f}s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
