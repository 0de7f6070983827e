"""Slurm job state + what each container wrote → Kubernetes container statuses. Pure.

Slurm knows the job as a whole; the pod directory knows each container. A container that wrote
its exit code is terminated with that code whatever the job's state. The job's state decides the
rest: containers not started yet wait (with Slurm's pending reason), started ones run while the
job is active, and when the job has ended without their exit code they are terminated with the
job's end reason (cancelled, timed out, out of memory...).

| Slurm state (or reason)        | container not started       | started, no exit code        |
|--------------------------------|-----------------------------|------------------------------|
| PENDING (reason)               | waiting: reason             | waiting (a requeued job's    |
|                                |                             | earlier run does not count)  |
| CONFIGURING, RUNNING, ...      | waiting: ContainerCreating  | running                      |
| COMPLETED / FAILED             | terminated 128 JobEnded     | terminated 137 JobEnded      |
| CANCELLED                      | terminated 128 Cancelled    | terminated 143 Cancelled     |
| TIMEOUT, DEADLINE              | terminated DeadlineExceeded | terminated 137               |
| OUT_OF_MEMORY                  | terminated OOMKilled        | terminated 137               |
| NODE_FAIL, BOOT_FAIL, PREEMPTED| terminated NodeFailure, ... | terminated 137               |
| FAILED / JobLaunchFailure      | terminated JobLaunchFailure | —                            |
| FAILED in its first minute,    | waiting FailureUnconfirmed until Slurm's accounting record  |
| its script not started         | confirms it (doubtful_failure; the service asks sacct)      |
| gone from squeue, no files     | terminated JobLost          | terminated 137 JobLost       |
| init container failed          | terminated 0 InitContainerFailed (Kubernetes' phase comes   |
|                                | from the init container's code, as the virtual kubelet does)|
| RUNNING, container waits to be | waiting CrashLoopBackOff (its restartPolicy restarts it)    |
| restarted (containers/*.backoff)|                                                            |

``ready``: running, and with a readiness probe its last verdict (containers/<name>.ready).
``restartCount``: Slurm requeues of the job plus the job's own restarts of the container
(containers/<name>.restarts). ``lastState``: the run before the job's last restart of it, or
Slurm's last requeue of the job (containers/<name>.last).

A container's termination message (containers/<name>.message: with FallbackToLogsOnError, the
end of the log of a run that failed) is its ended state's message, alone (own_messages), as the
kubelet gives it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from interlink_slurm.slurm.container_files import ContainerFiles, LastRun
from interlink_slurm.slurm.scheduler import JobInfo
from interlink_slurm.wire import (
    ContainerState,
    ContainerStateRunning,
    ContainerStateTerminated,
    ContainerStateWaiting,
    ContainerStatus,
)

log = logging.getLogger(__name__)

ACTIVE = frozenset(
    {
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "SPECIAL_EXIT",
    }
)
WAITING = frozenset({"PENDING", "RESV_DEL_HOLD"})
TERMINAL = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "DEADLINE",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "PREEMPTED",
        "REVOKED",
    }
)
# Reasons of our own for a job Slurm has not described yet.
CREATING_REASON = "ContainerCreating"
BACKOFF_REASON = "CrashLoopBackOff"  # waiting to be restarted (restartPolicy)
UNREACHABLE_REASON = "SlurmUnreachable"
# A job Slurm shows failed before its script started, in its first minute, whose failure no
# record of Slurm's confirms yet (see doubtful_failure).
UNCONFIRMED_REASON = "FailureUnconfirmed"
DOUBTFUL_FAILURE_SECONDS = 60.0


@dataclass(frozen=True)
class Ending:
    """How a pod's containers end when its job ends: the reason and message of their status,
    and the exit codes of a container never started and of one killed."""

    reason: str
    message: str
    code_not_started: int
    code_killed: int


# Why a job ended, for containers that could not say so themselves.
ENDINGS: dict[str, Ending] = {
    "CANCELLED": Ending(
        "Cancelled",
        "the Slurm job was cancelled outside Kubernetes (scancel by a Slurm user or administrator)",
        128,
        143,
    ),
    "TIMEOUT": Ending("DeadlineExceeded", "the Slurm job reached its time limit", 128, 137),
    "DEADLINE": Ending("DeadlineExceeded", "the Slurm job reached its deadline", 128, 137),
    "OUT_OF_MEMORY": Ending("OOMKilled", "the Slurm job ran out of memory", 137, 137),
    "NODE_FAIL": Ending("NodeFailure", "the node running the Slurm job failed", 128, 137),
    "BOOT_FAIL": Ending("BootFailure", "the node for the Slurm job failed to boot", 128, 137),
    "PREEMPTED": Ending("Preempted", "the Slurm job was preempted", 128, 137),
    "FAILED": Ending("JobFailed", "the Slurm job failed", 128, 137),
    "COMPLETED": Ending("JobEnded", "the Slurm job ended", 128, 137),
}
LAUNCH_FAILURE = Ending(
    "JobLaunchFailure",
    "Slurm could not launch the job (is the pod directory writable on the compute node?)",
    128,
    128,
)
LOST = Ending(
    "JobLost", "the Slurm job left the queue without recording this container's end", 128, 137
)
DELETED = Ending("Cancelled", "the pod was deleted", 128, 143)

# Slurm pending reasons, in words a Kubernetes user can act on.
PENDING_MESSAGES: dict[str, str] = {
    "Priority": "waiting in the Slurm queue behind jobs of higher priority",
    "Resources": "waiting for the cluster to have the CPUs, memory or GPUs it asks for",
    "Dependency": "waiting for a job it depends on",
    "ReqNodeNotAvail": "the nodes it needs are not available (down, drained or reserved)",
    "PartitionDown": "its Slurm partition is down",
    "PartitionInactive": "its Slurm partition is inactive",
    "JobHeldUser": "held by its user",
    "JobHeldAdmin": "held by a Slurm administrator",
    "BeginTime": "its start time has not come yet",
    UNREACHABLE_REASON: "Slurm does not answer; this is the last state known",
    CREATING_REASON: "submitted; its first state comes with the next read of the queue",
    UNCONFIRMED_REASON: "Slurm showed it failed before it started; some sites briefly show a "
    "new job so and then run it, so the failure counts once Slurm's record confirms it",
    "None": "submitted, not yet scheduled",
    "": "submitted, not yet scheduled",
}


def pending_message(job: JobInfo) -> str:
    """A sentence for why a pending job waits (Slurm's reason, in words)."""
    reason = job.reason
    if reason in PENDING_MESSAGES:
        text = PENDING_MESSAGES[reason]
    elif reason.startswith(("QOS", "Assoc")):
        text = "held back by a limit of its account or QOS"
    else:
        text = "waiting in the Slurm queue"
    return f"Slurm job {job.job_id} is pending ({reason or 'None'}): {text}"


def doubtful_failure(job: JobInfo, submitted: float, now: float, script_started: bool) -> bool:
    """A FAILED the queue shows for a job in its first minute whose script never started.
    Some sites (Leonardo) briefly show a new job so and then run it; the virtual kubelet stops
    asking about a pod once it is Failed, so believing it would end a pod that runs."""
    return (
        base_state(job) == "FAILED"
        and not script_started
        and now - submitted < DOUBTFUL_FAILURE_SECONDS
    )


def base_state(job: JobInfo | None) -> str:
    """PENDING, RUNNING, CANCELLED...: squeue may print "CANCELLED by 0", sacct "CANCELLED+"."""
    if job is None or not job.state:
        return ""
    return job.state.split()[0].rstrip("+").upper()


def ending_for(job: JobInfo | None, deleted: bool) -> Ending:
    """How the containers of an ended (or deleted, or lost) job end."""
    if job is None or (deleted and base_state(job) in ACTIVE | WAITING):
        return DELETED if deleted else LOST
    if deleted and base_state(job) == "CANCELLED":
        return DELETED
    if job.reason == "JobLaunchFailure":
        return LAUNCH_FAILURE
    state = base_state(job)
    ending = ENDINGS.get(state)
    if ending is None:
        log.warning("job %s has an unknown Slurm state %r", job.job_id, job.state)
        return Ending("JobEnded", f"the Slurm job ended in state {job.state}", 128, 137)
    return ending


def _waiting(reason: str, message: str) -> ContainerState:
    return ContainerState(waiting=ContainerStateWaiting(reason=reason, message=message))


def _terminated(code: int, reason: str, message: str, files: ContainerFiles) -> ContainerState:
    return ContainerState(
        terminated=ContainerStateTerminated(
            exit_code=code,
            reason=reason,
            message=message,
            started_at=files.started,
            finished_at=files.finished or files.started,
        )
    )


def _exited(files: ContainerFiles) -> ContainerState:
    assert files.exit_code is not None
    code = files.exit_code
    return _terminated(code, "Completed" if code == 0 else "Error", "", files)


def _last_state(last: LastRun) -> ContainerState:
    run = ContainerFiles(started=last.started, finished=last.finished, exit_code=last.exit_code)
    st = _exited(run)
    st.terminated.message = last.message or ""  # type: ignore[union-attr]
    return st


# The kubelet's bound on a pod's termination messages (MaxPodTerminationMessageLogLength): its
# status manager cuts each container's to an even share of it.
POD_MESSAGES_MAX = 12 * 1024


def own_messages(
    statuses: Sequence[ContainerStatus], files: Mapping[str, ContainerFiles], containers: int
) -> None:
    """Each ended container's termination message as its state's message, in place of what this
    plugin says there (the Slurm node, warnings): programs read it (a Tekton step's results are
    JSON in it). An eviction keeps its own words. Each message, lastState's too, is cut to its
    share of POD_MESSAGES_MAX among the pod's ``containers`` (init containers included)."""
    share = POD_MESSAGES_MAX // max(1, containers)
    for st in statuses:
        ended = st.state.terminated
        f = files.get(st.name)
        if ended is not None and f is not None and f.message and ended.reason != "Evicted":
            ended.message = f.message
        for state in (st.state, st.last_state):
            if state is not None and state.terminated is not None:
                state.terminated.message = _cut(state.terminated.message, share)


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` bytes of UTF-8, never half a character."""
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


def container_statuses(
    job: JobInfo | None,
    job_id: str,
    init_containers: Sequence[str],
    containers: Sequence[str],
    files: Mapping[str, ContainerFiles],
    images: Mapping[str, str],
    *,
    deleted: bool = False,
    restarts: int = 0,
    evicted: str | None = None,
) -> tuple[list[ContainerStatus], list[ContainerStatus]]:
    """(init container statuses, container statuses). ``evicted``: why the job evicted the
    pod, which then names the end of every container that ended."""
    view = _job_view(job, job_id, init_containers, containers, files, deleted)

    def one(name: str, is_init: bool) -> ContainerStatus:
        # A pending job runs nothing: files left by an earlier run (before a requeue) are
        # that run's, not this one's.
        f = ContainerFiles() if view.pending else files.get(name, ContainerFiles())
        started = _from_files(view, name, f)
        st = started if started is not None else _not_started(view, is_init, f)
        if evicted and st.terminated is not None:
            st.terminated.reason = "Evicted"
            st.terminated.message = evicted
        running = st.running is not None
        return ContainerStatus(
            name=name,
            state=st,
            # A container with a readiness probe is ready when the probe last said so.
            ready=running and (f.ready if f.ready is not None else True),
            restart_count=restarts + f.restarts,
            image=images.get(name, ""),
            started=running if not is_init else None,
            last_state=_last_state(f.last) if f.last is not None else None,
        )

    return ([one(n, True) for n in init_containers], [one(n, False) for n in containers])


@dataclass(frozen=True)
class _JobView:
    """What every container's status depends on: the job's state, and how the pod ends."""

    job: JobInfo | None
    job_id: str
    state: str
    pending: bool
    active: bool
    ending: Ending | None  # None while the job is pending or active
    failed_init: tuple[str, int] | None  # (init container, exit code) that failed first
    settling: bool  # every container that will run has ended: the job is about to end


def _job_view(
    job: JobInfo | None,
    job_id: str,
    init_containers: Sequence[str],
    containers: Sequence[str],
    files: Mapping[str, ContainerFiles],
    deleted: bool,
) -> _JobView:
    state = base_state(job)
    pending = job is not None and state in WAITING
    # A deleted pod's job may still run its grace period: its containers run until they end.
    active = job is not None and state in ACTIVE
    failed_init: tuple[str, int] | None = None
    for name in () if pending else init_containers:
        f = files.get(name, ContainerFiles())
        if f.exit_code not in (None, 0):
            failed_init = (name, f.exit_code or 0)
            break
    settling = (
        all(files.get(n, ContainerFiles()).exit_code is not None for n in containers)
        or failed_init is not None
    )
    ending = None if (pending or active) else ending_for(job, deleted)
    return _JobView(job, job_id, state, pending, active, ending, failed_init, settling)


def _from_files(view: _JobView, name: str, f: ContainerFiles) -> ContainerState | None:
    """The state of a container that has started (its files say so), or None."""
    ending = view.ending
    if f.exit_code is not None and f.exit_code > 128 and view.active and view.settling:
        # Killed by a signal while the job is ending: why (cancel, time limit, memory) is
        # known once Slurm says how the job ended, a refresh later. A terminal status given
        # now would stick without its reason.
        return ContainerState(running=ContainerStateRunning(started_at=f.started))
    if f.exit_code is not None:
        st = _exited(f)
        killed = f.exit_code > 128 and ending is not None
        if killed and ending is not None and ending.reason not in ("JobEnded", "JobFailed"):
            # Killed by the signal that ended the job: say why, keep its own exit code.
            st.terminated.reason = ending.reason  # type: ignore[union-attr]
            st.terminated.message = f"{ending.message} (job {view.job_id})"  # type: ignore[union-attr]
        return st
    if f.backoff is not None and view.active:
        code, seconds = f.backoff
        return _waiting(
            BACKOFF_REASON,
            f"back-off {seconds}s restarting container {name} (last exit code {code})",
        )
    if f.started is not None:
        if view.active or view.pending:
            return ContainerState(running=ContainerStateRunning(started_at=f.started))
        assert ending is not None
        return _terminated(
            ending.code_killed, ending.reason, f"{ending.message} (job {view.job_id})", f
        )
    return None


def _not_started(view: _JobView, is_init: bool, f: ContainerFiles) -> ContainerState:
    """The state of a container that has not started: after a failed init container, while
    the job waits or starts, or never, the job having ended."""
    if view.failed_init is not None:
        name, code = view.failed_init
        return _terminated(
            0,
            "InitContainerFailed",
            f"not started: init container {name!r} exited with code {code}",
            f,
        )
    if view.pending:
        job = view.job
        assert job is not None
        reason = (
            job.reason
            if job.reason in (CREATING_REASON, UNREACHABLE_REASON)
            else (job.reason or "Pending")
        )
        return _waiting(reason, pending_message(job))
    if view.active:
        return _waiting(
            "PodInitializing" if not is_init else "ContainerCreating",
            f"Slurm job {view.job_id} is {view.state.lower()}",
        )
    assert view.ending is not None
    return _terminated(
        view.ending.code_not_started,
        view.ending.reason,
        f"not started: {view.ending.message} (job {view.job_id})",
        f,
    )
