"""Gang submission of pod groups (groups.py): the service's part that keeps arriving members,
answers their creates at once, submits one job for a complete group, fails a group that does
not complete in time, and says in the members' statuses what ended their group.

A member is still a pod of its own for the rest of the service: once its group's job is
submitted, each member has its own row in the store (all with the group's job id), its own
directory, job.sh, statuses and logs; deleting one deletes the group's job (every member is
signalled), and the others then say which member ended it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

from interlink_slurm import jobdir, submission
from interlink_slurm.book import PlacementBook
from interlink_slurm.clusters import Cluster
from interlink_slurm.config import Settings
from interlink_slurm.errors import PodRejected, SchedulerError, SchedulerUnavailable, StorageError
from interlink_slurm.groups import (
    Group,
    GroupBook,
    Member,
    Membership,
    arrival_message,
    membership,
    note_ended,
    timeout_reason,
    waiting_status,
)
from interlink_slurm.metrics import Metrics
from interlink_slurm.placement import Placement
from interlink_slurm.pulls import encode
from interlink_slurm.slurm.transport import CommandUnavailable
from interlink_slurm.store import PodRecord, Store
from interlink_slurm.tracker import Clock
from interlink_slurm.translate.group import (
    GroupMember,
    GroupPlan,
    check_member,
    group_comment,
    group_dir,
    group_directives,
    identical,
    member_names,
    ranked,
    render_group_script,
    unit_directives,
    with_rendezvous,
)
from interlink_slurm.translate.images import image_ids
from interlink_slurm.translate.plan import JobPlan, PlannedPull
from interlink_slurm.translate.pod import ImageCommands, build_plan
from interlink_slurm.translate.script import LIBRARY, LIBRARY_FILE, render_script
from interlink_slurm.translate.targets import Candidate, candidates
from interlink_slurm.wire import ContainerStatus, CreateResponse, Pod, PodStatus, RetrievedPodData

log = logging.getLogger(__name__)

GROUP_SCRIPT = "group.sh"
ENDED_FILE = "group.ended"  # written by the group's job when a failing member ended it


class Host(Protocol):
    """What of the service the gang uses to turn a member into its job."""

    settings: Settings
    store: Store
    clusters: dict[str, Cluster]
    root_clusters: set[str]
    book: PlacementBook
    metrics: Metrics
    clock: Clock

    def request_refresh(self, new_pod: bool = False) -> None: ...

    def targets_for(
        self, data: RetrievedPodData, image_commands: ImageCommands | None = None
    ) -> list[Candidate]: ...

    async def decide(self, cands: Sequence[Candidate]) -> Placement: ...


class Gang:
    """The service's groups: members kept until their group is complete, then one job."""

    def __init__(self, host: Host, book: GroupBook) -> None:
        self.host = host
        self.book = book
        self._lock = asyncio.Lock()  # one group submission at a time
        # Member uid → (namespace, group), loaded from the book at first use: a /status of a
        # pod that is no member touches no table of the book.
        self._members: dict[str, tuple[str, str]] | None = None
        self._ended: dict[tuple[str, str], str] = {}
        self._loading = threading.Lock()
        self._nodes: dict[str, str] = {}  # member uid → its node, as its group's job said
        # Groups whose job had ended (and been explained) before this start: their members'
        # nodes are read once, by the first tick.
        self._ended_before: list[tuple[Group, list[Member]]] = []

    def _known(self) -> dict[str, tuple[str, str]]:
        """The members, loaded once (in a worker thread: the tick's and a status' may race)."""
        with self._loading:
            if self._members is None:
                known: dict[str, tuple[str, str]] = {}
                for group, members in self.book.all():
                    for m in members:
                        known[m.uid] = (m.namespace, m.group)
                    if group.ended_by:
                        self._ended[(group.namespace, group.name)] = group.ended_by
                    if group.ended_by is not None and group.group_dir is not None:
                        self._ended_before.append((group, members))
                self._members = known
            return self._members

    # --- create ---------------------------------------------------------------------------------

    def joining(self, pod: Pod) -> Membership | None:
        """The pod's group, or None; raises PodRejected naming a wrong label or annotation."""
        return membership(pod.metadata, self.host.settings.max_group_size)

    async def create(self, data: RetrievedPodData, joining: Membership) -> CreateResponse:
        """Keep the member; when it completes its group, submit the group's job. Answers at
        once: the job id while the group waits is "" (interLink keeps it as the pod's JobID
        annotation), the group's job id once submitted."""
        pod = data.pod
        settings = self.host.settings
        # A member that can never run is refused now, not when its group completes.
        commands = await self._commands(data)
        alone = with_rendezvous(data, joining.group, 0, [pod.name])
        cands = candidates(alone, settings, lambda _: "/nonexistent", commands, ())
        if not any(c.plan is not None for c in cands):
            for c in cands:
                if c.rejected is not None:
                    raise c.rejected
        for c in cands:
            if c.plan is not None:
                check_member(c.plan)
        now = self.host.clock.time()
        body = data.model_dump_json(by_alias=True, exclude_none=True)
        group, members = await asyncio.to_thread(
            self.book.arrive, pod.namespace, joining, pod.uid, pod.name, body, now
        )
        await asyncio.to_thread(self._known)
        assert self._members is not None
        self._members[pod.uid] = (pod.namespace, joining.group)
        if group.job_id is None and len(members) == 1:
            # A new group of an old one's name: what ended the old one says nothing of it.
            self._ended.pop((pod.namespace, joining.group), None)
        if group.job_id is not None:
            return CreateResponse(PodUID=pod.uid, PodJID=group.job_id)
        log.info("pod %s/%s: %s", pod.namespace, pod.name, arrival_message(group, len(members)))
        if len(members) < group.size:
            return CreateResponse(PodUID=pod.uid, PodJID="")
        job_id = await self._submit(group.namespace, group.name)
        return CreateResponse(PodUID=pod.uid, PodJID=job_id or "")

    async def _commands(self, data: RetrievedPodData) -> ImageCommands:
        """The images' own commands, looked up as the service's create looks them up."""
        host = self.host
        if not submission.needs_image_commands(data, host.settings):
            return {}
        transports = {n: c.transport for n, c in host.clusters.items()}
        return await asyncio.to_thread(submission.image_commands, data, host.settings, transports)

    async def _submit(self, namespace: str, name: str) -> str | None:
        """Submit a complete group (once, whoever asks); its job id."""
        async with self._lock:
            members = await asyncio.to_thread(self.book.members, namespace, name)
            found = await asyncio.to_thread(self.book.member, members[0].uid) if members else None
            if found is None:
                return None
            group = found[0]
            if group.job_id is not None or group.failed is not None:
                return group.job_id
            if len(members) < group.size:
                return None
            try:
                return await self._submit_members(group, members)
            except PodRejected as err:
                self._failed(err, members)
                # It can never run: every member says why, rather than wait for nothing.
                why = f"group {name} cannot run: {err}"
                await asyncio.to_thread(self.book.fail, namespace, name, why)
                raise
            except (SchedulerUnavailable, SchedulerError, StorageError) as err:
                self._failed(err, members)
                raise
            except BaseException:
                for m in members:
                    self.host.book.forget(m.uid)
                raise

    def _failed(self, err: Exception, members: Sequence[Member]) -> None:
        """A group's submission that failed: its pods in the metrics as a pod's would be, and
        no longer waiting on the target it was placed on (a job that landed anyway is
        counted again when the refresher sees it)."""
        self.host.metrics.submit_failures.labels(type(err).__name__).inc(len(members))
        for m in members:
            self.host.book.forget(m.uid)

    async def _submit_members(self, group: Group, members: Sequence[Member]) -> str:
        host = self.host
        settings = host.settings
        datas = [
            RetrievedPodData.model_validate_json(m.data) for m in members if m.data is not None
        ]
        if len(datas) != len(members):
            raise StorageError(f"group {group.name}: a member's create was not kept")
        datas = ranked(datas, group.name)
        names = [d.pod.name for d in datas]
        leader = datas[0]
        commands = await self._commands(leader)
        placement, chosen = await self._place(datas, commands)
        if settings.targets:
            host.book.placed(placement, [d.pod.uid for d in datas])
        cluster = host.clusters[chosen.cluster]
        plans: list[JobPlan] = []
        for data in datas:
            plans.append(await self._member_job(cluster, chosen, data, commands))
        where = group_dir(plans[0].pod_dir)
        pulls = await asyncio.to_thread(self._missing_pulls, cluster, plans)
        gplan = GroupPlan(
            group.namespace,
            group.name,
            where,
            tuple(GroupMember(p, member_names(d.pod)) for p, d in zip(plans, datas, strict=True)),
            settings.group_failure_policy,
            held=bool(pulls),
        )
        script = render_group_script(gplan)
        await asyncio.to_thread(_write_group, cluster, where, script, plans[0].owner)
        comment = group_comment(gplan)
        landed = await cluster.scheduler.find_by_comment(comment)
        if landed is not None:
            job_id = landed.job_id  # submitted before a crash or an outage cut the create short
        else:
            try:
                job_id = await cluster.scheduler.submit(
                    f"{where}/{GROUP_SCRIPT}", where, group_directives(gplan)
                )
            except SchedulerError:
                for p in plans:
                    await asyncio.to_thread(cluster.transport.remove_tree, p.pod_dir)
                await asyncio.to_thread(cluster.transport.remove_tree, where)
                raise
        record = placement.record() if settings.targets else None
        owns = {p.uid: [x for x in pulls if x in p.image_pulls] for p in plans}
        for p in plans:
            await asyncio.to_thread(self._record, cluster, p, job_id, record, owns[p.uid])
        if pulls:
            # Each member pulls its own images (with its own credentials) and waits for the
            # others': the first to see all of them in the cache releases the group's job (a
            # second release changes nothing).
            for p in plans:
                others = [x for x in pulls if x not in owns[p.uid]]
                cluster.puller.start(p.uid, job_id, p.pod_dir, owns[p.uid], others)
        await asyncio.to_thread(self.book.submitted, group.namespace, group.name, job_id, where)
        host.request_refresh(new_pod=True)
        form = "one allocation" if identical(gplan) else "a heterogeneous job"
        log.info(
            "pod group %s/%s (%s) submitted as job %s, %s",
            group.namespace,
            group.name,
            ", ".join(names),
            job_id,
            form,
        )
        return job_id

    async def _place(
        self, datas: Sequence[RetrievedPodData], commands: ImageCommands
    ) -> tuple[Placement, Candidate]:
        """Where the group goes, as a unit: the leader's plan on each target, sized for the
        whole group (the members' nodes together), estimated as one job; the decision and the
        leader's own (unsized) candidate there."""
        host = self.host
        cands = host.targets_for(datas[0], commands)
        sized = [
            dataclasses.replace(
                c, plan=dataclasses.replace(c.plan, directives=unit_directives(c.plan, len(datas)))
            )
            if c.plan is not None
            else c
            for c in cands
        ]
        placement = await host.decide(sized)
        chosen = placement.chosen
        for c in cands:
            if c.name == chosen.name:
                return placement, c
        return placement, chosen

    async def _member_job(
        self, cluster: Cluster, chosen: Candidate, data: RetrievedPodData, commands: ImageCommands
    ) -> JobPlan:
        """The member's own job (plan, directory, job.sh) where its group goes."""
        host = self.host
        pod = data.pod
        pod_dir = jobdir.pod_dir(cluster.data_root, pod.namespace, pod.name, pod.uid)
        more = await self._commands(data)
        plan = build_plan(
            data,
            host.settings,
            pod_dir,
            chosen.target if chosen.name else None,
            chosen.name,
            image_commands={**commands, **more},
            submit_as_root=chosen.cluster in host.root_clusters,
        )
        plan = await asyncio.to_thread(
            submission.in_images,
            cluster.transport,
            host.settings,
            data,
            chosen,
            plan,
            {**commands, **more},
            submit_as_root=chosen.cluster in host.root_clusters,
        )
        check_member(plan)
        if plan.owner is not None and plan.owner[1] is None:
            plan = await asyncio.to_thread(submission.primary_group, cluster.transport, plan)
        script = render_script(plan)
        await asyncio.to_thread(jobdir.write_pod, cluster.transport, plan, script)
        if plan.owner is not None:
            await asyncio.to_thread(submission.hand_over, cluster.transport, plan)
        return plan

    def _missing_pulls(self, cluster: Cluster, plans: Sequence[JobPlan]) -> list[PlannedPull]:
        """The members' images the submit host must pull before the group's job may start
        (image_pull_on: submit_host), each once."""
        if self.host.settings.image_pull_on != "submit_host":
            return []
        wanted: dict[str, PlannedPull] = {}
        for pull in (x for p in plans for x in p.image_pulls):
            # A member that may pull an image pulls it for those whose policy is Never.
            if pull.target not in wanted or wanted[pull.target].never:
                wanted[pull.target] = pull
        return cluster.puller.missing(list(wanted.values())) if wanted else []

    def _record(
        self,
        cluster: Cluster,
        plan: JobPlan,
        job_id: str,
        placement: str | None,
        pulls: Sequence[PlannedPull],
    ) -> None:
        store = self.host.store
        store.begin_submit(
            plan.uid,
            plan.namespace,
            plan.name,
            plan.pod_dir,
            [c.name for c in plan.init_containers],
            [c.name for c in plan.containers],
            cluster=cluster.name,
            placement=placement,
            pulls=encode(pulls) if pulls else None,
            warnings=plan.warnings,
            image_ids=image_ids(plan),
        )
        store.set_job(plan.uid, job_id)

    # --- status ---------------------------------------------------------------------------------

    async def waiting(self, pods: Sequence[Pod]) -> list[PodStatus]:
        """The statuses of members whose group's job does not exist (yet)."""
        known = await asyncio.to_thread(self._known)
        ours = [p for p in pods if p.uid.lower() in known]
        if not ours:
            return []
        found = await asyncio.to_thread(self.book.members_of, [p.uid.lower() for p in ours])
        out = []
        for pod in ours:
            hit = found.get(pod.uid.lower())
            if hit is None or hit[1].namespace != pod.namespace or hit[1].name != pod.name:
                continue
            group = hit[0]
            if group.job_id is not None:
                continue  # submitted: its row in the store answers (a crash in between: soon)
            members = await asyncio.to_thread(self.book.members, group.namespace, group.name)
            out.append(waiting_status(pod, group, members))
        return out

    def note(self, uid: str, statuses: Sequence[ContainerStatus]) -> None:
        """Say in a member's ended containers what ended its group's job (as known in memory:
        the book is loaded by the first tick, never here, in the event loop)."""
        key = (self._members or {}).get(uid)
        why = self._ended.get(key) if key is not None else None
        if why:
            note_ended(statuses, why)

    # --- delete ---------------------------------------------------------------------------------

    async def delete(self, pod: Pod) -> str | None:
        """A member deleted: one whose group waits leaves it (the answer); one whose group's
        job exists names itself as what ends it, and None lets the delete end the job."""
        uid = pod.uid.lower()
        if uid not in await asyncio.to_thread(self._known):
            return None
        hit = await asyncio.to_thread(self.book.member, uid)
        if hit is None or hit[1].namespace != pod.namespace or hit[1].name != pod.name:
            return None
        group, _ = hit
        key = (group.namespace, group.name)
        await asyncio.to_thread(self.book.leave, uid)
        if group.job_id is None:
            assert self._members is not None
            self._members.pop(uid, None)
            return f"pod {uid} left group {group.name}, which had not started"
        why = f"pod {pod.name} was deleted"
        await asyncio.to_thread(self.book.ended_by, group.namespace, group.name, why)
        self._ended.setdefault(key, why)
        return None

    # --- the refresher's tick -------------------------------------------------------------------

    async def tick(self) -> None:
        """Fail groups that did not complete in time; submit complete groups a failure or a
        restart left unsubmitted; learn which member ended a group's job that ended."""
        if not await asyncio.to_thread(self._has_groups):
            return
        host = self.host
        timeout = host.settings.group_timeout_seconds
        for group in await asyncio.to_thread(self.book.overdue, host.clock.time() - timeout):
            members = await asyncio.to_thread(self.book.members, group.namespace, group.name)
            if len(members) >= group.size:
                continue
            why = timeout_reason(group, members, timeout)
            await asyncio.to_thread(self.book.fail, group.namespace, group.name, why)
            log.warning("pod group %s/%s failed: %s", group.namespace, group.name, why)
        for group in await asyncio.to_thread(self.book.complete_unsubmitted):
            try:
                await self._submit(group.namespace, group.name)
            except (PodRejected, SchedulerUnavailable, SchedulerError, StorageError) as err:
                log.warning("pod group %s/%s: %s", group.namespace, group.name, err)
        for group in await asyncio.to_thread(self.book.running):
            await self._learn_end(group)
        ended, self._ended_before = self._ended_before, []
        for group, members in ended:
            cluster = await self._cluster_of(members)
            if cluster is not None and group.group_dir is not None:
                await self._learn_nodes(cluster, group.group_dir, members)

    def _has_groups(self) -> bool:
        return bool(self._known()) or self.book.any()

    async def _learn_end(self, group: Group) -> None:
        """Once started: each member's node (group.env); once ended: what ended it."""
        members = await asyncio.to_thread(self.book.members, group.namespace, group.name)
        recs = await asyncio.to_thread(self.host.store.get_many, [m.uid for m in members])
        cluster = self._cluster_of_recs(recs)
        if cluster is None or group.group_dir is None:
            return
        begun = any(r.started is not None or r.final_state is not None for r in recs.values())
        if begun and any(m.uid not in self._nodes for m in members):
            await self._learn_nodes(cluster, group.group_dir, members)
        if all(r.final_state is None for r in recs.values()):
            return  # still running
        try:
            raw = await asyncio.to_thread(
                cluster.transport.read_file, f"{group.group_dir}/{ENDED_FILE}", 4096
            )
        except (OSError, SchedulerUnavailable):
            return
        why = raw.decode(errors="replace").strip() if raw else ""
        await asyncio.to_thread(self.book.ended_by, group.namespace, group.name, why)
        if why:
            self._ended.setdefault((group.namespace, group.name), why)

    def _cluster_of_recs(self, recs: Mapping[str, PodRecord]) -> Cluster | None:
        rec = next(iter(recs.values()), None)
        return self.host.clusters.get(rec.cluster) if rec is not None else None

    async def _cluster_of(self, members: Sequence[Member]) -> Cluster | None:
        """The cluster of a submitted group's job (its members' rows say)."""
        recs = await asyncio.to_thread(self.host.store.get_many, [m.uid for m in members])
        return self._cluster_of_recs(recs)

    async def _learn_nodes(self, cluster: Cluster, where: str, members: Sequence[Member]) -> None:
        try:
            raw = await asyncio.to_thread(cluster.transport.read_file, f"{where}/group.env", 65536)
        except (OSError, SchedulerUnavailable):
            return
        nodes = member_nodes(raw.decode(errors="replace")) if raw else {}
        for m in members:
            if m.name in nodes:
                self._nodes[m.uid] = nodes[m.name]

    def node_of(self, uid: str, nodes: str) -> str:
        """Where a member runs: its own node once its group's job said so (while the job is
        placed: ``nodes``, the job's node list, is not empty), else ``nodes``."""
        return self._nodes.get(uid, nodes) if nodes else nodes


def member_nodes(env: str) -> dict[str, str]:
    """Pod name → its node, from group.env's ILS_GROUP_NODES=pod=node,..."""
    for line in env.splitlines():
        if line.startswith("ILS_GROUP_NODES="):
            pairs = (p.partition("=") for p in line.removeprefix("ILS_GROUP_NODES=").split(","))
            return {pod: node for pod, _, node in pairs if pod and node}
    return {}


def _write_group(
    cluster: Cluster, group_dir: str, script: str, owner: tuple[int, int | None] | None
) -> None:
    transport = cluster.transport
    try:
        transport.make_dirs(group_dir, jobdir.POD_DIR_MODE)
        transport.write_file(f"{group_dir}/{LIBRARY_FILE}", LIBRARY.encode(), 0o600)
        transport.write_file(f"{group_dir}/{GROUP_SCRIPT}", script.encode(), jobdir.SCRIPT_MODE)
    except OSError as err:
        transport.remove_tree(group_dir)
        raise StorageError(f"cannot write the group directory {group_dir}: {err}") from err
    if owner is not None:
        who = f"{owner[0]}:{owner[1]}" if owner[1] is not None else str(owner[0])
        try:
            result = transport.run(["chown", "-R", "--", who, group_dir], timeout=60)
        except SchedulerUnavailable:
            raise  # over SSH the login node's outage (also a CommandUnavailable): 503
        except CommandUnavailable as err:
            raise StorageError(f"cannot hand {group_dir} to uid {who}: {err}") from err
        if result.returncode != 0:
            raise StorageError(f"cannot hand {group_dir} to uid {who}: {result.stderr.strip()}")
