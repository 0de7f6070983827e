"""Which targets can run a pod (placement, first half). Pure: the pod and the configuration in,
one candidate per target out, each with its job plan or the reason it was ruled out.

A target is ruled out, in this order, by: the pod's ``interlink-slurm/targets`` annotation, the
target's ``match`` (GPU or CPU pods only), its ``namespaces``, its taints the pod does not
tolerate, its labels against the pod's nodeSelector and required node affinity, then whatever
building the pod's job there refuses (GPUs, CPUs, memory and time per node, flags...), and last
the partition the pod's own flags ask for and the ``accounts`` it may charge.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from interlink_slurm.config import DEFAULT_CLUSTER, Settings
from interlink_slurm.errors import PodRejected
from interlink_slurm.translate import annotations as ann
from interlink_slurm.translate.matching import label_mismatch, preference, untolerated
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.pod import ImageCommands, build_plan
from interlink_slurm.translate.resources import pod_resources
from interlink_slurm.translate.site import Target
from interlink_slurm.wire import RetrievedPodData


@dataclass(frozen=True)
class Candidate:
    """One target the pod could be placed on, with its plan there or why it cannot."""

    name: str  # the target's name; "" without targets (the top-level configuration)
    cluster: str
    target: Target
    plan: JobPlan | None = None  # the pod's job there, when the target can take it
    rejected: PodRejected | None = None  # why it cannot
    preference: int = 0  # weights of the pod's preferred node-affinity terms it matches

    @property
    def partition(self) -> str | None:
        """The partition the job would go to there."""
        return directive(self.plan, "--partition") if self.plan else self.target.partition


def directive(plan: JobPlan, option: str) -> str | None:
    """The value of the last ``option=VALUE`` directive of a plan (the one sbatch heeds)."""
    values = [d.partition("=")[2] for d in plan.directives if d.startswith(f"{option}=")]
    return values[-1] if values else None


def candidates(
    data: RetrievedPodData,
    settings: Settings,
    pod_dir: Callable[[str], str],
    image_commands: ImageCommands | None = None,
    root_clusters: Collection[str] = (),
) -> list[Candidate]:
    """Every target, in the configured order, with the pod's plan there or why not.
    ``pod_dir(cluster)`` is the pod's directory on that cluster. Without targets: the one
    plan of the top-level configuration (whose PodRejected is raised as it is)."""
    if not settings.targets:
        plan = build_plan(
            data,
            settings,
            pod_dir(DEFAULT_CLUSTER),
            image_commands=image_commands,
            submit_as_root=DEFAULT_CLUSTER in root_clusters,
        )
        return [Candidate("", DEFAULT_CLUSTER, Target(), plan=plan)]
    spec = data.pod.spec
    wants_gpus = pod_resources(spec, 1, 1, settings.accelerator_names).gpus > 0
    pinned = _pinned(data, settings)
    keys = {k for t in settings.targets.values() for k in t.labels}
    out = []
    for name, t in settings.targets.items():
        cluster = t.cluster or DEFAULT_CLUSTER
        why = _before_plan(data, name, t, pinned, wants_gpus, keys)
        if why is not None:
            out.append(Candidate(name, cluster, t, rejected=why))
            continue
        try:
            plan = build_plan(
                data,
                settings,
                pod_dir(cluster),
                t,
                name,
                image_commands=image_commands,
                submit_as_root=cluster in root_clusters,
            )
        except PodRejected as err:
            out.append(Candidate(name, cluster, t, rejected=err))
            continue
        why = _after_plan(plan, t)
        if why is not None:
            out.append(Candidate(name, cluster, t, rejected=why))
            continue
        liked = preference(spec, t.labels, keys)
        out.append(Candidate(name, cluster, t, plan=plan, preference=liked))
    return out


def _pinned(data: RetrievedPodData, settings: Settings) -> list[str] | None:
    text = data.pod.metadata.annotations.get(ann.TARGETS)
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in settings.targets]
    if unknown or not names:
        raise PodRejected(
            f"metadata.annotations[{ann.TARGETS}]",
            f"no target {', '.join(map(repr, unknown)) or 'named'} here "
            f"(targets: {', '.join(settings.targets)})",
        )
    return names


def _before_plan(
    data: RetrievedPodData,
    name: str,
    t: Target,
    pinned: Sequence[str] | None,
    wants_gpus: bool,
    keys: set[str],
) -> PodRejected | None:
    pod = data.pod
    if pinned is not None and name not in pinned:
        return PodRejected(
            f"metadata.annotations[{ann.TARGETS}]", f"the pod may only go to {', '.join(pinned)}"
        )
    if t.match == "gpu" and not wants_gpus:
        return PodRejected("spec.containers.resources", "this target takes GPU pods only")
    if t.match == "cpu" and wants_gpus:
        return PodRejected("spec.containers.resources", "this target takes CPU-only pods")
    if t.namespaces is not None and pod.namespace not in t.namespaces:
        return PodRejected(
            "metadata.namespace", f"pods of namespace {pod.namespace!r} may not go here"
        )
    why = untolerated(pod.spec, t.taints)
    if why is not None:
        return PodRejected("spec.tolerations", why)
    why = label_mismatch(pod.spec, t.labels, keys)
    if why is not None:
        field, _, reason = why.partition(": ")
        return PodRejected(field, reason) if reason else PodRejected("spec", why)
    return None


def _after_plan(plan: JobPlan, t: Target) -> PodRejected | None:
    partition = directive(plan, "--partition")
    if t.partition is not None and partition != t.partition:
        return PodRejected(
            f"metadata.annotations[{ann.FLAGS}]",
            f"the pod asks for partition {partition}, this target is {t.partition}",
        )
    account = directive(plan, "--account")
    if t.accounts is not None and account not in t.accounts:
        charged = f"account {account}" if account else "no account"
        return PodRejected(
            "metadata.namespace",
            f"the pod would be charged to {charged}; here it may be {', '.join(t.accounts)}",
        )
    return None


def rejection(cands: Sequence[Candidate]) -> PodRejected:
    """The create error when no target can take the pod: the pod's own fault when every
    target says the same, else each target's reason."""
    reasons = [c.rejected for c in cands if c.rejected is not None]
    first = reasons[0]
    if len(reasons) == len(cands) and all(str(r) == str(first) for r in reasons):
        return first
    listed = "; ".join(f"target {c.name}: {c.rejected}" for c in cands)
    return PodRejected("spec", f"no target here can run this pod ({listed})")
