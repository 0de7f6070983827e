"""Which targets a pod may go to: node selector, node affinity and tolerations judged against a
target's labels and taints, as kube-scheduler judges them against a node's. Pure.

The pod's selectors also select the virtual node itself (``type: virtual-kubelet``,
``kubernetes.io/hostname``...), which Kubernetes has already satisfied. So only the label keys
some target declares (``keys``) are judged here; a requirement on any other key counts as met.
``matchFields`` select on node fields (``metadata.name``): they concern the virtual node too and
are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

from interlink_slurm.wire import (
    NodeSelectorRequirement,
    NodeSelectorTerm,
    PodSpec,
    Taint,
    Toleration,
)

REQUIRED_FIELD = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
# Terms described in a mismatch message; the rest are counted.
_TERMS_SHOWN = 3
# A taint with another effect (PreferNoSchedule) never keeps a pod off a target.
_EXCLUDING_EFFECTS = ("NoSchedule", "NoExecute")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def label_mismatch(spec: PodSpec, labels: Mapping[str, str], keys: Collection[str]) -> str | None:
    """None when ``labels`` satisfy the pod's nodeSelector and required node affinity (judged
    on ``keys`` only), else one sentence naming the pod field and why."""
    for key, wanted in spec.node_selector.items():
        if key not in keys or labels.get(key) == wanted:
            continue
        return f"spec.nodeSelector[{key}]: the pod wants {wanted!r}, {_has(labels, key)}"
    affinity = spec.affinity.node_affinity if spec.affinity else None
    required = affinity.required_during_scheduling_ignored_during_execution if affinity else None
    if required is None:
        return None
    failures: list[str] = []
    considered = False
    for i, term in enumerate(required.node_selector_terms):
        if not (term.match_expressions or term.match_fields):
            # Kubernetes: an empty term matches no node. The pod got here through another one.
            continue
        considered = True
        why = _term_failure(term, labels, keys)
        if why is None:
            return None
        failures.append(f"term {i}: {why}")
    if not considered:
        # No usable term: Kubernetes would not have scheduled the pod at all, yet it reached us.
        return None
    shown = "; ".join(failures[:_TERMS_SHOWN])
    if len(failures) > _TERMS_SHOWN:
        shown += f"; and {len(failures) - _TERMS_SHOWN} more"
    return f"{REQUIRED_FIELD}: no nodeSelectorTerms entry matches ({shown})"


def preference(spec: PodSpec, labels: Mapping[str, str], keys: Collection[str]) -> int:
    """The summed weights of the pod's preferred node affinity terms that ``labels`` match. A term
    with no expression on a key in ``keys`` says nothing about targets and does not count."""
    affinity = spec.affinity.node_affinity if spec.affinity else None
    if affinity is None:
        return 0
    total = 0
    for preferred in affinity.preferred_during_scheduling_ignored_during_execution:
        term = preferred.preference
        if not any(r.key in keys for r in term.match_expressions):
            continue
        if _term_failure(term, labels, keys) is None:
            total += preferred.weight
    return total


def untolerated(spec: PodSpec, taints: Sequence[Taint]) -> str | None:
    """None when the pod tolerates every NoSchedule and NoExecute taint of a target, else one
    sentence naming the first taint it does not tolerate."""
    for taint in taints:
        if taint.effect not in _EXCLUDING_EFFECTS:
            continue
        if not any(_tolerates(t, taint) for t in spec.tolerations):
            return (
                f"this target has taint {_taint(taint)}, which spec.tolerations does not tolerate"
            )
    return None


# --- Kubernetes semantics -----------------------------------------------------------------------


def _term_failure(
    term: NodeSelectorTerm, labels: Mapping[str, str], keys: Collection[str]
) -> str | None:
    """The first expression of the term (ANDed) that ``labels`` fail, described; None if none."""
    for req in term.match_expressions:
        if req.key not in keys:
            continue
        why = _requirement_failure(req, labels)
        if why is not None:
            return f"{_expression(req)}: {why}"
    return None


def _requirement_failure(req: NodeSelectorRequirement, labels: Mapping[str, str]) -> str | None:
    """Why ``labels`` do not satisfy the requirement, or None: Kubernetes' label selector rules."""
    present = req.key in labels
    value = labels.get(req.key, "")
    op = req.operator
    if op == "In":
        return None if present and value in req.values else _has(labels, req.key)
    if op == "NotIn":
        return None if not present or value not in req.values else _has(labels, req.key)
    if op == "Exists":
        return None if present else _has(labels, req.key)
    if op == "DoesNotExist":
        return None if not present else _has(labels, req.key)
    if op in ("Gt", "Lt"):
        if len(req.values) != 1 or _integer(req.values[0]) is None:
            return f"{op} needs exactly one integer value"
        if not present:
            return _has(labels, req.key)
        have, bound = _integer(value), _integer(req.values[0])
        if have is None or bound is None:
            return f"this target has {value!r}, not an integer"
        return None if (have > bound if op == "Gt" else have < bound) else _has(labels, req.key)
    return f"unknown operator {op!r}"


def _tolerates(toleration: Toleration, taint: Taint) -> bool:
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.operator == "Exists":
        return not toleration.key or toleration.key == taint.key
    if toleration.operator in ("Equal", ""):
        return toleration.key == taint.key and toleration.value == taint.value
    return False


def _integer(text: str) -> int | None:
    """Go's strconv.ParseInt(text, 10, 64): optional sign, ASCII digits, 64-bit range."""
    if not _INTEGER.fullmatch(text) or len(text) > 20:
        return None
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None


def _has(labels: Mapping[str, str], key: str) -> str:
    return f"this target has {labels[key]!r}" if key in labels else "this target has no such label"


def _expression(req: NodeSelectorRequirement) -> str:
    if req.operator in ("Exists", "DoesNotExist") and not req.values:
        return f"{req.key} {req.operator}"
    return f"{req.key} {req.operator} [{', '.join(req.values)}]"


def _taint(taint: Taint) -> str:
    """As kubectl prints it: key=value:effect, or key:effect without a value."""
    return (
        f"{taint.key}={taint.value}:{taint.effect}"
        if taint.value
        else f"{taint.key}:{taint.effect}"
    )
