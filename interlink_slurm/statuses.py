"""What /status answers: each pod's container statuses, from the status trackers' last refresh
(the jobs Slurm listed, the state files read) and the store's rows. No Slurm call and no file
read per request, but for a pod whose files no refresh could read (once, at its first /status).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence

from interlink_slurm import jobdir
from interlink_slurm.clusters import Cluster
from interlink_slurm.errors import SchedulerUnavailable
from interlink_slurm.gang import Gang
from interlink_slurm.placement import describe
from interlink_slurm.slurm.scheduler import JobInfo
from interlink_slurm.slurm.states import (
    CREATING_REASON,
    UNREACHABLE_REASON,
    WAITING,
    base_state,
    container_statuses,
    own_messages,
)
from interlink_slurm.store import PodRecord, Store
from interlink_slurm.tracker import GONE, Clock, StatusTracker
from interlink_slurm.wire import (
    ContainerState,
    ContainerStateWaiting,
    ContainerStatus,
    Pod,
    PodStatus,
)

Statuses = tuple[list[ContainerStatus], list[ContainerStatus]]  # init containers, main ones


class StatusView:
    """The pods' statuses as the trackers last saw them."""

    def __init__(
        self,
        store: Store,
        trackers: Mapping[str, StatusTracker],
        cluster_of: Callable[[PodRecord], Cluster],
        gang: Gang,
        clock: Clock,
        request_refresh: Callable[[], None],
    ) -> None:
        """``cluster_of`` raises SchedulerUnavailable for a cluster no longer configured;
        ``request_refresh`` asks for a refresh now (a job no refresh has seen yet)."""
        self.store = store
        self.trackers = trackers
        self.cluster_of = cluster_of
        self.gang = gang
        self.clock = clock
        self.request_refresh = request_refresh

    async def status(self, pods: Sequence[Pod]) -> list[PodStatus]:
        """Every known pod's status; a pod this plugin does not know is left out (or, a member
        of a pod group still waiting for the rest, said so by the gang)."""
        recs = self.store.get_many([p.uid.lower() for p in pods if p.uid])
        out = []
        unknown = []
        for pod in pods:
            rec = recs.get(pod.uid.lower())
            if rec is None or not rec.is_pod(pod.namespace, pod.name):
                unknown.append(pod)  # a member of a waiting pod group, or not ours
                continue
            out.append(await self._one(rec, pod))
        if unknown:
            out += await self.gang.waiting(unknown)
        return out

    async def _one(self, rec: PodRecord, pod: Pod) -> PodStatus:
        images = {c.name: c.image for c in (*pod.spec.init_containers, *pod.spec.containers)}
        nodes = ""
        if rec.job_id is None:
            init, main = _all_waiting(rec, images, CREATING_REASON, "being submitted to Slurm")
        elif self._held_for_images(rec):
            pull = self.cluster_of(rec).puller.state(rec.uid)
            init, main = _all_waiting(rec, images, pull.reason, pull.message)
        else:
            seen, files_outage = await self._files_of(rec)
            job = self._job_for(rec, seen)
            init, main = container_statuses(
                job,
                rec.job_id,
                rec.init_containers,
                rec.containers,
                seen.containers,
                images,
                deleted=rec.deleted is not None,
                restarts=max(0, seen.runs - 1),
                evicted=_evicted(seen, rec.final_state is not None),
            )
            every = (*init, *main)
            tracker = self.trackers.get(rec.cluster)
            outage = tracker.outage if tracker and rec.final_state is None else None
            if outage or files_outage:
                _note_outage(every, "; ".join(o for o in (outage, files_outage) if o))
            if rec.warnings:
                _note_warnings(every, rec.warnings)
            if rec.placement and job is not None and base_state(job) in WAITING:
                _note_placement(every, describe(json.loads(rec.placement), self.clock.time()))
            nodes = self.gang.node_of(rec.uid, self.nodes_of(rec))  # a member's own
            if nodes:
                _note_nodes(every, nodes)
            if rec.image_ids:
                _note_image_ids(every, dict(rec.image_ids))
            # Last: a container's own message replaces the notes above.
            own_messages(every, seen.containers, len(every))
            self.gang.note(rec.uid, every)  # which member ended its group's job
        return PodStatus(
            name=rec.name,
            UID=rec.uid,
            namespace=rec.namespace,
            JID=rec.job_id or "",
            containers=main,
            initContainers=init,
            NodeName=nodes or None,
        )

    def _job_for(self, rec: PodRecord, files: jobdir.PodFiles) -> JobInfo | None:
        """What is known of the pod's job without asking Slurm: a job the queue last showed
        waiting is running once the pod's ``files`` count a new run."""
        assert rec.job_id is not None
        tracker = self.trackers.get(rec.cluster)
        job = tracker.jobs.get(rec.job_id) if tracker else None
        started = tracker is not None and tracker.ran_since_waiting(rec, files)
        if job is not None:
            if started and base_state(job) in WAITING:
                return JobInfo(rec.job_id, "RUNNING", "", job.comment, job.nodes)
            return job
        if rec.final_state is not None:
            if rec.final_state == GONE:
                return None
            return JobInfo(rec.job_id, rec.final_state, rec.final_reason or "")
        # Submitted after the last refresh (or Slurm has not answered since): ask for one now.
        self.request_refresh()
        if started:
            return JobInfo(rec.job_id, "RUNNING", "")
        if tracker is not None and tracker.outage is not None:
            return JobInfo(rec.job_id, "PENDING", UNREACHABLE_REASON)
        return JobInfo(rec.job_id, "PENDING", CREATING_REASON)

    async def _files_of(self, rec: PodRecord) -> tuple[jobdir.PodFiles, str | None]:
        """The pod's state files as the last refresh read them, and why they could not be read
        (then they are what was read before). No file is read here, but for a pod whose job a
        refresh saw and whose files none read (the first refresh after a restart failed):
        once, at its first /status."""
        tracker = self.trackers.get(rec.cluster)
        seen = tracker.files.get(rec.uid) if tracker is not None else None
        if tracker is not None and seen is not None:
            return seen, tracker.files_outage if rec.final_state is None else None
        if tracker is not None and rec.final_state is None and rec.job_id not in tracker.jobs:
            # Submitted since the last refresh (which _job_for asks for now): its job has not
            # been seen yet, so neither have files worth a read on this call.
            return jobdir.PodFiles({}), None
        try:
            if tracker is None:
                self.cluster_of(rec)  # raises: the cluster is no longer configured
                raise AssertionError("a configured cluster has a tracker")
            return await asyncio.to_thread(tracker.read_one, rec), None
        except (SchedulerUnavailable, OSError) as err:
            # The pod's files cannot be read now (SSH to the login node down, a filesystem
            # hiccup): nothing known of its containers but what Slurm says.
            return jobdir.PodFiles({}), f"cannot read the pod's files: {err}"

    def nodes_of(self, rec: PodRecord) -> str:
        """Where the pod's job runs or ran: Slurm's node list ("" while it waits)."""
        if rec.job_id is None:
            return ""
        tracker = self.trackers.get(rec.cluster)
        job = tracker.jobs.get(rec.job_id) if tracker is not None else None
        if job is not None:
            # A requeued job waiting again runs nowhere, whatever its last run said.
            return job.nodes if base_state(job) not in WAITING else ""
        return rec.nodes or ""

    def _held_for_images(self, rec: PodRecord) -> bool:
        """Its job waits, held, for images the submit host is pulling (and no one released it
        by hand meanwhile)."""
        if rec.pulls is None or rec.deleted is not None or rec.final_state is not None:
            return False
        tracker = self.trackers.get(rec.cluster)
        if tracker is None:
            return False  # no puller to ask: its files say what they can
        assert rec.job_id is not None
        job = tracker.jobs.get(rec.job_id)
        return job is None or base_state(job) == "PENDING"


def _all_waiting(rec: PodRecord, images: dict[str, str], reason: str, message: str) -> Statuses:
    def one(name: str) -> ContainerStatus:
        state = ContainerState(waiting=ContainerStateWaiting(reason=reason, message=message))
        return ContainerStatus(name=name, state=state, image=images.get(name, ""))

    return [one(n) for n in rec.init_containers], [one(n) for n in rec.containers]


def _note_placement(statuses: Sequence[ContainerStatus], placement: str) -> None:
    for st in statuses:
        if st.state.waiting is not None:
            st.state.waiting.message = f"{st.state.waiting.message} ({placement})".strip()


def _note_image_ids(statuses: Sequence[ContainerStatus], ids: Mapping[str, str]) -> None:
    """The digest each container's image was pulled by, once the container has run (the
    kubelet's imageID, empty while an image is still awaited)."""
    for st in statuses:
        if st.name in ids and (st.state.running or st.state.terminated or st.last_state):
            st.image_id = ids[st.name]


def _note_nodes(statuses: Sequence[ContainerStatus], nodes: str) -> None:
    """Where the job runs, in the messages a status can carry (a running state has none: the
    pod's NodeName says it then). An eviction keeps the kubelet's exact words."""
    for st in statuses:
        inner = st.state.waiting or st.state.terminated
        if inner is None or (st.state.terminated and st.state.terminated.reason == "Evicted"):
            continue
        inner.message = f"{inner.message} (Slurm node {nodes})".strip()


def _note_warnings(
    statuses: Sequence[ContainerStatus], warnings: Sequence[tuple[str, str]]
) -> None:
    """What a container runs without (a volume left out...), in its status message: a
    running container's state has no message, so it is said while waiting and once ended."""
    for st in statuses:
        said = [w for c, w in warnings if c in (st.name, "")]
        inner = st.state.waiting or st.state.terminated
        if said and inner is not None:
            inner.message = " ".join([inner.message or "", *(f"[warning: {w}]" for w in said)])
            inner.message = inner.message.strip()


def _evicted(files: jobdir.PodFiles, job_ended: bool) -> str | None:
    """Only a pod whose containers have started ending can have been evicted."""
    if job_ended or any(f.exit_code is not None for f in files.containers.values()):
        return files.evicted
    return None


def _note_outage(statuses: Sequence[ContainerStatus], outage: str) -> None:
    note = f" [Slurm does not answer, last known state: {outage}]"
    for st in statuses:
        inner = st.state.waiting or st.state.terminated
        if inner is not None:
            inner.message = (inner.message + note).strip()
