"""The use cases: create, delete, status, logs, ping. No HTTP here, no Slurm syntax either."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence

from interlink_slurm import jobdir
from interlink_slurm.config import Settings
from interlink_slurm.errors import NotFound, PodRejected, SchedulerError, SchedulerUnavailable
from interlink_slurm.logs import read_log
from interlink_slurm.slurm.scheduler import JobInfo, Scheduler
from interlink_slurm.slurm.states import container_statuses
from interlink_slurm.slurm.transport import Transport
from interlink_slurm.store import PodRecord, Store
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.pod import JOB_COMMENT_PREFIX, build_plan
from interlink_slurm.translate.resources import GPU_RESOURCE
from interlink_slurm.translate.script import render_script
from interlink_slurm.wire import (
    Accelerator,
    ContainerState,
    ContainerStateWaiting,
    ContainerStatus,
    CreateResponse,
    LogRequest,
    PingResources,
    PingResponse,
    Pod,
    PodStatus,
    RetrievedPodData,
)

log = logging.getLogger(__name__)

UNREACHABLE_REASON = "SlurmUnreachable"


class Service:
    def __init__(
        self, settings: Settings, scheduler: Scheduler, transport: Transport, store: Store
    ) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.transport = transport
        self.store = store
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # The last state Slurm gave for each job, served while Slurm does not answer.
        self._last_seen: dict[str, JobInfo] = {}
        self._ping: tuple[float, PingResponse] | None = None

    def _lock(self, uid: str) -> asyncio.Lock:
        lock = self._locks.get(uid)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[uid] = lock
        return lock

    # --- lifecycle ----------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Settle submissions a crash left half-done: Slurm (job comment) says if they landed."""
        for rec in await asyncio.to_thread(self.store.in_flight):
            try:
                await self._settle(rec)
            except SchedulerUnavailable as err:
                log.warning("cannot reconcile pod %s now: %s", rec.uid, err)
                return

    async def _settle(self, rec: PodRecord) -> str | None:
        job = await self.scheduler.find_by_comment(f"{JOB_COMMENT_PREFIX}{rec.uid}")
        if job is None:
            await asyncio.to_thread(self.store.forget, rec.uid)
            return None
        await asyncio.to_thread(self.store.set_job, rec.uid, job.job_id)
        log.info("pod %s: found its job %s in Slurm", rec.uid, job.job_id)
        return job.job_id

    # --- create / delete ----------------------------------------------------------------------

    async def create(self, data: RetrievedPodData) -> CreateResponse:
        pod = data.pod
        uid = pod.uid
        async with self._lock(uid):
            rec = await asyncio.to_thread(self.store.get, uid)
            if rec is not None and rec.job_id is None:
                await self._settle(rec)
                rec = await asyncio.to_thread(self.store.get, uid)
            if rec is not None and rec.job_id is not None:
                log.info("pod %s already has job %s", uid, rec.job_id)
                return CreateResponse(PodUID=uid, PodJID=rec.job_id)

            pod_dir = jobdir.pod_dir(str(self.settings.data_root), pod.namespace, pod.name, uid)
            plan = build_plan(data, self.settings, pod_dir)
            await asyncio.to_thread(self._check_mount_points, plan)
            script = render_script(plan)
            script_path = await asyncio.to_thread(jobdir.write_pod, self.transport, plan, script)
            await asyncio.to_thread(
                self.store.begin_submit,
                uid,
                pod.namespace,
                pod.name,
                pod_dir,
                [c.name for c in pod.spec.init_containers],
                [c.name for c in pod.spec.containers],
            )
            try:
                job_id = await self.scheduler.submit(script_path, pod_dir)
            except SchedulerUnavailable:
                # sbatch may have reached Slurm before failing: the row stays in flight and the
                # next create (or a restart) asks Slurm for the job by its comment.
                raise
            except SchedulerError:
                await asyncio.to_thread(self.store.forget, uid)
                await asyncio.to_thread(self.transport.remove_tree, pod_dir)
                raise
            await asyncio.to_thread(self.store.set_job, uid, job_id)
            await asyncio.to_thread(
                self.transport.write_file, f"{pod_dir}/job.id", f"{job_id}\n".encode(), 0o600
            )
            log.info("pod %s/%s (%s) submitted as job %s", pod.namespace, pod.name, uid, job_id)
            return CreateResponse(PodUID=uid, PodJID=job_id)

    def _check_mount_points(self, plan: JobPlan) -> None:
        """Charliecloud (0.31) cannot create a bind destination in a read-only image: say so at
        create time, naming the mount, rather than let the container fail on the node."""
        if self.settings.runtime != "charliecloud":
            return
        groups = (("initContainers", plan.init_containers), ("containers", plan.containers))
        for group, containers in groups:
            for i, c in enumerate(containers):
                if not c.image.startswith("/"):
                    continue
                for b in c.binds:
                    if self.transport.size(c.image.rstrip("/") + b.target) is None:
                        raise PodRejected(
                            f"spec.{group}[{i}].volumeMounts",
                            f"mount path {b.target!r} does not exist in image {c.image}; "
                            "Charliecloud cannot create mount points in a read-only image, "
                            "so the image must contain that directory (or file)",
                        )

    async def delete(self, pod: Pod) -> str:
        uid = pod.uid.lower()
        if not uid:
            return "pod has no uid: nothing to delete"
        async with self._lock(uid):
            rec = await asyncio.to_thread(self.store.get, uid)
            if rec is None:
                return f"pod {uid} is not known here: nothing to delete"
            if rec.job_id is None:
                job_id = await self._settle(rec)
                if job_id is None:
                    return f"pod {uid} had no job: nothing to delete"
            else:
                job_id = rec.job_id
            await self.scheduler.cancel(job_id)
            await asyncio.to_thread(self.store.mark_deleted, uid)
            log.info("pod %s: job %s cancelled", uid, job_id)
            return f"pod {uid}: job {job_id} cancelled"

    # --- status ---------------------------------------------------------------------------------

    async def _jobs(self, job_ids: Sequence[str]) -> tuple[dict[str, JobInfo], str | None]:
        """Slurm's view of the jobs, or the last one seen and why it is not fresh."""
        if not job_ids:
            return {}, None
        try:
            jobs = await self.scheduler.query(job_ids)
        except (SchedulerUnavailable, SchedulerError) as err:
            log.warning("serving last known job states: %s", err)
            stale = {j: self._last_seen[j] for j in job_ids if j in self._last_seen}
            for j in job_ids:
                stale.setdefault(j, JobInfo(j, "PENDING", UNREACHABLE_REASON))
            return stale, str(err)
        self._last_seen.update(jobs)
        return jobs, None

    async def status(self, pods: Sequence[Pod]) -> list[PodStatus]:
        uids = [p.uid.lower() for p in pods if p.uid]
        recs = await asyncio.to_thread(self.store.get_many, uids)
        job_ids = [r.job_id for r in recs.values() if r.job_id]
        jobs, outage = await self._jobs(job_ids)

        out = []
        for pod in pods:
            rec = recs.get(pod.uid.lower())
            if rec is None:
                continue  # not ours: an empty answer leaves the pod as it is
            images = {c.name: c.image for c in (*pod.spec.init_containers, *pod.spec.containers)}
            if rec.job_id is None:
                init, main = _all_waiting(rec, images, "ContainerCreating", "being submitted")
            else:
                files = await asyncio.to_thread(self._read_files, rec)
                init, main = container_statuses(
                    jobs.get(rec.job_id),
                    rec.job_id,
                    rec.init_containers,
                    rec.containers,
                    files,
                    images,
                    deleted=rec.deleted is not None,
                )
                if outage:
                    _note_outage((*init, *main), outage)
            out.append(
                PodStatus(
                    name=rec.name,
                    UID=rec.uid,
                    namespace=rec.namespace,
                    JID=rec.job_id or "",
                    containers=main,
                    initContainers=init,
                )
            )
        return out

    def _read_files(self, rec: PodRecord) -> dict[str, jobdir.ContainerFiles]:
        return {
            name: jobdir.read_container(self.transport, rec.pod_dir, name)
            for name in rec.all_containers
        }

    # --- logs -----------------------------------------------------------------------------------

    async def logs(self, req: LogRequest) -> bytes:
        rec = await asyncio.to_thread(self.store.get, req.PodUID)
        if rec is None:
            raise NotFound(
                f"pod {req.Namespace}/{req.PodName} (uid {req.PodUID}) is not known to this plugin"
            )
        if req.ContainerName not in rec.all_containers:
            raise NotFound(
                f"pod {rec.namespace}/{rec.name} has no container {req.ContainerName!r} "
                f"(containers: {', '.join(rec.all_containers)})"
            )
        path = jobdir.container_file(rec.pod_dir, req.ContainerName, "log")
        return await asyncio.to_thread(read_log, self.transport, path, req.Opts)

    # --- node -----------------------------------------------------------------------------------

    def _partitions(self) -> list[str]:
        parts = [self.settings.partition, self.settings.gpu_partition]
        return sorted({p for p in parts if p})

    async def ping(self) -> PingResponse:
        now = time.monotonic()
        if self._ping and now - self._ping[0] < self.settings.ping_cache_seconds:
            return self._ping[1]
        res = await self.scheduler.resources(self._partitions())
        gpus = (
            res.gpus.get(self.settings.gpu_type, 0)
            if self.settings.gpu_type
            else sum(res.gpus.values())
        )
        answer = PingResponse(
            status="ok",
            resources=PingResources(
                cpu=str(res.cpus),
                memory=f"{res.memory_mb}Mi",
                pods=str(self.settings.max_pods),
                accelerators=[Accelerator(resourceType=GPU_RESOURCE, available=str(gpus))]
                if gpus
                else [],
            ),
            taints=self.settings.taints,
        )
        self._ping = (now, answer)
        return answer

    async def ready(self) -> None:
        await self.scheduler.ping()


def _all_waiting(
    rec: PodRecord, images: dict[str, str], reason: str, message: str
) -> tuple[list[ContainerStatus], list[ContainerStatus]]:
    def one(name: str) -> ContainerStatus:
        state = ContainerState(waiting=ContainerStateWaiting(reason=reason, message=message))
        return ContainerStatus(name=name, state=state, image=images.get(name, ""))

    return [one(n) for n in rec.init_containers], [one(n) for n in rec.containers]


def _note_outage(statuses: Sequence[ContainerStatus], outage: str) -> None:
    note = f" [last known state: {outage}]"
    for st in statuses:
        inner = st.state.waiting or st.state.terminated
        if inner is not None:
            inner.message = (inner.message + note).strip()
