"""A pod group → one multi-node batch script (pure: plans in, text out).

Each member keeps its own plan and pod directory (its own job.sh, logs, state files); the
group's script only starts each member's job.sh as one ``srun`` step on its own node(s):

- members that ask for the same resources: one allocation of ``--nodes=N`` (N members times the
  nodes of one), each member's step on its own nodes (``srun --relative``);
- members that differ: a heterogeneous job (``#SBATCH hetjob`` between the members' options),
  each member's step in its own component (``srun --het-group``).

Before the steps start, the script writes the group's hosts file (each member's pod name and
aliases → the address of its first node) and env file into every member's group volume: its
containers see the hosts file at ``/etc/hosts``, and the env file's variables (the nodes of the
pods, the leader's address) are added to their environment (rendezvous).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from interlink_slurm import __version__
from interlink_slurm.errors import PodRejected
from interlink_slurm.translate.annotations import NODES
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.runtimes import RUNTIMES
from interlink_slurm.translate.script import LIBRARY_FILE
from interlink_slurm.wire import (
    EmptyDirVolumeSource,
    EnvVar,
    Pod,
    RetrievedPodData,
    Volume,
    VolumeMount,
)

# Options of a member's job that only name the member's own job (its pod): the group's job has
# its own.
_OWN = ("--job-name", "--comment", "--output", "--open-mode", "--chdir", "--hold")
# A member's accelerators: given again to its step (CUDA_VISIBLE_DEVICES...).
_GPUS = ("--gres", "--gpus", "--gpus-per-node", "--gpus-per-task")
GROUP_COMMENT_PREFIX = "interlink-slurm-group:"
GROUP_SUBDIR = "group"
# The emptyDir volume of each member that the group's script fills (hosts, group.env); its
# containers see the hosts file at /etc/hosts.
GROUP_VOLUME = "interlink-slurm-group"
HOSTS_FILE = "hosts"
ENV_FILE = "group.env"
# A member's rank, when its controller says it (PyTorchJob, JobSet / indexed Job).
_RANK_LABELS = (
    "training.kubeflow.org/replica-index",
    "batch.kubernetes.io/job-completion-index",
    "jobset.sigs.k8s.io/job-index",
)
_LEADER_TYPES = ("master", "launcher", "leader")
_REPLICA_TYPE = "training.kubeflow.org/replica-type"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
FAILURE_POLICIES = ("fail-group", "ignore")
# Runtimes that hand a container every variable of its env file (Enroot only those its command
# line names, fixed when the pod's job.sh was written).
# The variables of group.env, which the group's script writes when its job starts.
STARTED_ENV = ("ILS_GROUP_NODES", "ILS_GROUP_LEADER_ADDR")


@dataclass(frozen=True)
class GroupMember:
    """One pod of a group: its own plan, and the names the others reach it by."""

    plan: JobPlan  # the member's own job (its directory, its job.sh)
    names: tuple[str, ...]  # what the other members call it: pod name first, then aliases


@dataclass(frozen=True)
class GroupPlan:
    """A complete group, its members by rank, ready to render as one job."""

    namespace: str
    name: str
    group_dir: str  # absolute; never a pod's directory
    members: tuple[GroupMember, ...]  # by rank: the first leads
    failure_policy: str = "fail-group"
    # Submitted held (every component): the submit host pulls the members' images first.
    held: bool = False


def _option(directive: str) -> str:
    return directive.partition("=")[0]


def _shared(plan: JobPlan) -> tuple[str, ...]:
    return tuple(d for d in plan.directives if _option(d) not in _OWN)


def _value(directives: Sequence[str], option: str, default: str = "") -> str:
    values = [d.partition("=")[2] for d in directives if _option(d) == option]
    return values[-1] if values else default


def identical(group: GroupPlan) -> bool:
    """Whether every member asks for the same job (then one ``--nodes`` allocation)."""
    first = _shared(group.members[0].plan)
    return all(_shared(m.plan) == first for m in group.members[1:])


def group_dir(leader_pod_dir: str) -> str:
    """The group's own directory (group.sh, its job.out, hosts...): ``group/`` in its leader's
    pod directory, which no file of a pod is named, and which goes with the leader's directory
    when that is collected."""
    return f"{leader_pod_dir}/{GROUP_SUBDIR}"


def group_comment(group: GroupPlan) -> str:
    """The job's comment: the group, and its leader's uid (a later group of the same name
    is another job)."""
    return f"{GROUP_COMMENT_PREFIX}{group.namespace}/{group.name}/{group.members[0].plan.uid}"


def check_member(plan: JobPlan) -> None:
    """A pod of a group runs on one node (the group's pods are its nodes). Raises
    PodRejected."""
    if plan.nodes > 1:
        raise PodRejected(
            f"metadata.annotations[{NODES}]",
            f"{plan.nodes} nodes: a pod of a pod group runs on one node (the group has one pod "
            "per node; make the group larger instead)",
        )


def unit_directives(plan: JobPlan, count: int) -> tuple[str, ...]:
    """One member's directives sized for ``count`` of it (nodes and tasks): how the group is
    estimated and placed, as a unit."""
    out = []
    for d in plan.directives:
        option, _, value = d.partition("=")
        if option in ("--nodes", "--ntasks") and value.isdigit():
            d = f"{option}={int(value) * count}"
        out.append(d)
    return tuple(out)


def group_directives(group: GroupPlan) -> list[str]:
    """The #SBATCH lines of the group's job, "hetjob" between components."""
    own = [
        f"--job-name={group.name}",
        f"--comment={group_comment(group)}",
        f"--output={group.group_dir}/job.out",
        "--open-mode=append",
        f"--chdir={group.group_dir}",
    ]
    count = len(group.members)
    hold = ["--hold"] if group.held else []
    if identical(group):
        first = group.members[0].plan
        return [
            *own,
            *_shared(dataclasses.replace(first, directives=unit_directives(first, count))),
            *hold,
        ]
    out = []
    for i, m in enumerate(group.members):
        if i:
            out.append("hetjob")
        out += own if i == 0 else []
        out += [*_shared(m.plan), *hold]
    return out


def member_tasks(plan: JobPlan) -> tuple[int, int]:
    """(tasks, CPUs) of a member on its node: what its launcher starts, what its step holds."""
    d = plan.directives
    per_node = _value(d, "--ntasks-per-node") or _value(d, "--ntasks") or "1"
    tasks = int(per_node) if per_node.isdigit() else 1
    per_task = _value(d, "--cpus-per-task", "1")
    return tasks, tasks * (int(per_task) if per_task.isdigit() else 1)


def _step_argv(group: GroupPlan, rank: int, same: bool) -> list[str]:
    """The step of one member: ONE task (its job.sh) holding all of its node's CPUs and memory
    in the group's allocation; its own sruns (an MPI launcher) start its tasks on its node only,
    through the job's resources (SLURM_OVERLAP), as many as the pod asks (SLURM_NTASKS), where
    its host file says (SLURM_DISTRIBUTION=arbitrary: the member's node, once per task)."""
    m = group.members[rank].plan
    tasks, cpus = member_tasks(m)
    argv = ["srun", f"--het-group={rank}"] if not same else ["srun", f"--relative={rank}"]
    argv += ["--nodes=1", "--ntasks=1", f"--cpus-per-task={cpus}", "--mem=0"]
    argv += [d for d in m.directives if _option(d) in _GPUS]
    argv += [
        f"--job-name={m.name}",
        f"--chdir={m.pod_dir}",
        f"--output={m.pod_dir}/job.out",
        "--open-mode=append",
        "--kill-on-bad-exit=0",
        # ILS_MEMBER keys the member's reaping and /tmp apart from its siblings' on a shared
        # node (both nodes of the local cluster are one machine).
        f"--export=ALL,ILS_MEMBER={m.uid}",
        "env",
        "-u",
        "SLURM_MEM_PER_CPU",
        "-u",
        "SLURM_MEM_PER_GPU",
        "SLURM_MEM_PER_NODE=0",
        "SLURM_OVERLAP=1",
        f"SLURM_NTASKS={tasks}",
        "SLURM_DISTRIBUTION=arbitrary",
        f"SLURM_HOSTFILE={group.group_dir}/{rank}.hosts",
        "bash",
        "./job.sh",
    ]
    return argv


def _first_nodes(group: GroupPlan, same: bool) -> list[str]:
    """Bash lines setting ``nodes`` to each member's node, by rank, and writing each member's
    host file (its node once per task, for its launcher)."""
    count = len(group.members)
    if same:
        lines = [
            'mapfile -t all < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
            f"nodes=({' '.join(f'{chr(34)}${{all[{i}]}}{chr(34)}' for i in range(count))})",
        ]
    else:
        lines = ["nodes=()"]
        lines += [
            f'nodes+=("$(scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_{i}" | head -n 1)")'
            for i in range(count)
        ]
    for i, m in enumerate(group.members):
        tasks, _ = member_tasks(m.plan)
        lines.append(
            f'for ((t = 0; t < {tasks}; t++)); do echo "${{nodes[{i}]}}"; done > {i}.hosts'
            " || exit 1"
        )
    return lines


def _rendezvous(group: GroupPlan, same: bool) -> list[str]:
    """The group script's lines that write the hosts and env files of the rendezvous and copy
    them into each pod's group volume (its env files get the variables known at the start)."""
    lines = [
        "# Rendezvous: each pod's names → the address of its first node (rank order), as a hosts",
        "# file (the containers' /etc/hosts) and an env file, in each pod's group volume.",
        *_first_nodes(group, same),
        "{",
        "  cat /etc/hosts",
        f"  echo '# pod group {group.name}'",
    ]
    for i, m in enumerate(group.members):
        names = " ".join(m.names)
        lines.append(
            f'  printf \'%s %s\\n\' "$(ils_node_ip "${{nodes[{i}]}}")" {shlex.quote(names)}'
        )
    lines.append(f"}} > {HOSTS_FILE} || exit 1")
    pods = ",".join(f"{m.names[0]}=${{nodes[{i}]}}" for i, m in enumerate(group.members))
    lines += [
        "{",
        f'  echo "{STARTED_ENV[0]}={pods}"',
        f'  echo "{STARTED_ENV[1]}=$(ils_node_ip "${{nodes[0]}}")"',
        f"}} > {ENV_FILE} || exit 1",
    ]
    volume = f"volumes/{GROUP_VOLUME}"
    for m in group.members:
        target = shlex.quote(f"{m.plan.pod_dir}/{volume}/")
        lines.append(f"cp -f -- {HOSTS_FILE} {ENV_FILE} {target} || exit 1")
        prefix = RUNTIMES[m.plan.runtime].env_prefix
        files = [
            f"{m.plan.pod_dir}/containers/{c.name}.env"
            for c in (*m.plan.init_containers, *m.plan.containers)
        ]
        lines.append(
            f"ils_group_env {shlex.quote(prefix)} "
            f"{' '.join(shlex.quote(f) for f in files)} || exit 1"
        )
    return lines


def render_group_script(group: GroupPlan) -> str:
    """The group's batch script: its #SBATCH lines, then the hosts and env files, then one
    srun step per member running that member's own job.sh."""
    same = identical(group)
    count = len(group.members)
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {d}" for d in group_directives(group)]
    form = "one allocation of their nodes" if same else "a heterogeneous job, one part each"
    lines += [
        "#",
        f"# Pod group {group.namespace}/{group.name} ({count} pods started together), written by "
        f"interlink-slurm {__version__}.",
        f"# As {form}: each pod's own job.sh runs as one srun step on its own",
        "# node(s), its output, exit codes and times in the pod's directory.",
        "# To run it again by hand: sbatch group.sh",
        "",
        "set -o nounset -o pipefail",
        "umask 077",
        f"GROUP_DIR={shlex.quote(group.group_dir)}",
        'cd "$GROUP_DIR" || exit 1',
        f". ./{LIBRARY_FILE} || exit 1",
        "# A delete signals this script: it passes the signal on to every pod's step.",
        'ILS_STOPPING=""',
        "trap ils_group_stop URG",
        f"echo {shlex.quote(f'interlink-slurm: pod group {group.namespace}/{group.name}')}"
        ' "starts as job ${SLURM_JOB_ID:-?} on $SLURM_JOB_NODELIST"',
        "",
        *_rendezvous(group, same),
    ]
    policy = group.failure_policy
    say = (
        "the first pod that fails ends the others"
        if policy == "fail-group"
        else "a pod that fails leaves the others running"
    )
    lines += [
        "",
        f"# Each pod's job, on its own node(s); {say}",
        f"# (group_failure_policy: {policy}).",
        "# Deleted before they start (the signal came during the rendezvous): none starts.",
        '[ -z "${ILS_STOPPING:-}" ] || exit 143',
        "pids=()",
    ]
    for i, m in enumerate(group.members):
        argv = [shlex.quote(a) for a in _step_argv(group, i, same)]
        # The options one a line, the command last: each can be read.
        at = argv.index("env")
        lines.append(" \\\n  ".join([*argv[:at], " ".join(argv[at:])]) + " &")
        lines.append(f"pids+=({shlex.quote(m.plan.name)} $!)")
    lines += [
        f'ils_group_wait {shlex.quote(policy)} "${{pids[@]}}"',
        "",
    ]
    return "\n".join(lines)


# Set for a member's containers only where the pod's own env does not (its controller's
# PyTorchJob/JobSet variables win): torch.distributed's env:// rendezvous.
DEFAULT_MASTER_PORT = "29500"


def member_names(pod: Pod) -> tuple[str, ...]:
    """What the other members may call a pod: its name, and the DNS names a Kubernetes service
    of that name (PyTorchJob's MASTER_ADDR) or its hostname.subdomain (JobSet) would have."""
    name, ns = pod.metadata.name, pod.metadata.namespace
    names = [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
    extra = pod.spec.model_extra or {}
    host, sub = extra.get("hostname"), extra.get("subdomain")
    if isinstance(host, str) and _DNS_LABEL.fullmatch(host) and host != name:
        names.append(host)
    if (
        isinstance(host, str)
        and isinstance(sub, str)
        and _DNS_LABEL.fullmatch(host)
        and _DNS_LABEL.fullmatch(sub)
    ):
        base = f"{host}.{sub}"
        names += [base, f"{base}.{ns}", f"{base}.{ns}.svc", f"{base}.{ns}.svc.cluster.local"]
    return tuple(dict.fromkeys(names))


def with_rendezvous(
    data: RetrievedPodData, group: str, rank: int, ranked: Sequence[str]
) -> RetrievedPodData:
    """The member's pod as its group's job runs it: the group volume, bound at /etc/hosts
    in each container (unless it mounts its own), and the rendezvous variables. Raises
    PodRejected if the pod has a volume of the group volume's name."""
    pod = data.pod.model_copy(deep=True)
    if any(v.name == GROUP_VOLUME for v in pod.spec.volumes):
        raise PodRejected(
            "spec.volumes", f"the volume name {GROUP_VOLUME!r} is reserved for pod groups"
        )
    pod.spec.volumes.append(Volume(name=GROUP_VOLUME, emptyDir=EmptyDirVolumeSource()))
    ours = {
        "ILS_GROUP": group,
        "ILS_GROUP_SIZE": str(len(ranked)),
        "ILS_GROUP_RANK": str(rank),
        "ILS_GROUP_PODS": ",".join(ranked),
        "ILS_GROUP_LEADER": ranked[0],
        # Known when the job starts: the group's script appends them to each container's env
        # file, after these (the later wins). Declared here so that a runtime passing only
        # the variables named on its command line (Enroot's --env NAME) passes them too.
        **dict.fromkeys(STARTED_ENV, ""),
    }
    torch = {
        "WORLD_SIZE": str(len(ranked)),
        "RANK": str(rank),
        "MASTER_ADDR": ranked[0],
        "MASTER_PORT": DEFAULT_MASTER_PORT,
    }
    for c in (*pod.spec.init_containers, *pod.spec.containers):
        have = {e.name for e in c.env}
        c.env += [EnvVar(name=k, value=v) for k, v in {**ours, **torch}.items() if k not in have]
        if not any(m.mount_path == "/etc/hosts" for m in c.volume_mounts):
            c.volume_mounts.append(
                VolumeMount(name=GROUP_VOLUME, mountPath="/etc/hosts", subPath=HOSTS_FILE)
            )
    return data.model_copy(update={"pod": pod})


def rank_key(pod: Pod) -> tuple[int, int, str]:
    """Members are ranked by this: the controller's master/launcher first, then its index,
    then the name. Rank 0 leads (MASTER_ADDR)."""
    labels = {**pod.metadata.annotations, **pod.metadata.labels}
    leader = 0 if labels.get(_REPLICA_TYPE, "").lower() in _LEADER_TYPES else 1
    index = 0
    for key in _RANK_LABELS:
        raw = labels.get(key, "")
        if raw.isdigit():
            index = int(raw)
            break
    return (leader, index, pod.metadata.name)


def ranked(datas: Sequence[RetrievedPodData], group: str) -> list[RetrievedPodData]:
    """The members in rank order, each as its group's job runs it (with_rendezvous)."""
    order = sorted(datas, key=lambda d: rank_key(d.pod))
    names = [d.pod.name for d in order]
    return [with_rendezvous(d, group, i, names) for i, d in enumerate(order)]
