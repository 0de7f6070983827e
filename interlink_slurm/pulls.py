"""Image pulls on the submit host, for jobs held until their images are in the shared cache.

Compute nodes often have no internet (Leonardo's do not), so a pod whose registry images are
missing from ``image_cache_dir`` is submitted held (``#SBATCH --hold``) and its images are pulled
on the submit host: the login node, through the transport. The pull runs detached from the
service (``setsid``), from a script in the pod directory that leaves its output and exit code in
files there; the service polls those files, releases the job once every image is in the cache,
and retries with Kubernetes' back-off (ErrImagePull, then ImagePullBackOff) when a pull fails.

Detached, a pull of a large image survives a restart of the service and never holds an SSH
channel or a worker thread for its whole length. A second start of the same pull (after a
restart, or another pod with the same image) waits on the image's lock and finds it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from interlink_slurm.config import Settings
from interlink_slurm.errors import SchedulerError, SchedulerUnavailable
from interlink_slurm.slurm.scheduler import Scheduler
from interlink_slurm.slurm.transport import CommandUnavailable, Transport
from interlink_slurm.store import PodRecord, Store
from interlink_slurm.translate.plan import PlannedPull
from interlink_slurm.translate.script import render_pull_script

log = logging.getLogger(__name__)

PULL_DIR = "pull"
SCRIPT = f"{PULL_DIR}/submit-host.sh"
LOG = f"{PULL_DIR}/submit-host.log"  # every attempt's output, appended
POLL_SECONDS = 2.0
BACKOFF_SECONDS = (10.0, 300.0)  # the kubelet's image pull back-off: 10 s, doubling, 5 min
# Time a pull gets past its own timeout to report back before it counts as lost.
REPORT_GRACE_SECONDS = 60.0
LAUNCH_TIMEOUT_SECONDS = 30.0
LOG_TAIL_BYTES = 2000

# Runs the pull script in the background in a session of its own, then returns at once: the
# output is appended to LOG, the exit code lands in <tag>.rc (written whole, by a rename).
LAUNCHER = (
    'cd -- "$1" || exit 1\n'
    '( echo "interlink-slurm: $(date -u +%FT%TZ) pull $4"; timeout -k 30 "$2" bash "$3";'
    ' echo "$?" > "$4.rc.tmp" && mv -f -- "$4.rc.tmp" "$4.rc" ) < /dev/null >> "$5" 2>&1 &\n'
)

CREATING = "ContainerCreating"
NEVER_PULL = "ErrImageNeverPull"


@dataclass(frozen=True)
class PullState:
    """How a pod's image pulls stand, as its containers' waiting reason and message."""

    reason: str  # ContainerCreating, ErrImagePull, ImagePullBackOff, ErrImageNeverPull
    message: str


def encode(pulls: Sequence[PlannedPull]) -> str:
    """Planned pulls as the JSON the store keeps while the job is held."""
    return json.dumps([dataclasses.asdict(p) for p in pulls])


def decode(text: str) -> list[PlannedPull]:
    """Planned pulls back from the store's JSON."""
    return [PlannedPull(**{**p, "argv": tuple(p["argv"])}) for p in json.loads(text)]


def _sources(pulls: Sequence[PlannedPull]) -> str:
    return ", ".join(p.source for p in pulls)


def _not_present(pulls: Sequence[PlannedPull]) -> str:
    """The kubelet's words for images missing with imagePullPolicy Never."""
    images = ", ".join(f'"{p.source.removeprefix("docker://")}"' for p in pulls)
    return f"Container image {images} is not present with pull policy of Never"


class Puller:
    """Runs the pulls of held jobs on the submit host, one task per pod, and releases each
    job once its images are in the cache."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        scheduler: Scheduler,
        store: Store,
        on_release: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._scheduler = scheduler
        self._store = store
        self._on_release = on_release
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._states: dict[str, PullState] = {}
        self._slots = asyncio.Semaphore(settings.image_pull_parallel)

    def missing(self, pulls: Sequence[PlannedPull]) -> list[PlannedPull]:
        """The pulls whose image is not in the cache yet (blocking: it asks the transport)."""
        return [p for p in pulls if not self._transport.size(p.target)]

    def state(self, uid: str) -> PullState:
        """How the pod's pulls stand."""
        return self._states.get(
            uid, PullState(CREATING, "waiting to pull the pod's images on the submit host")
        )

    def start(
        self,
        uid: str,
        job_id: str,
        pod_dir: str,
        pulls: Sequence[PlannedPull],
        awaiting: Sequence[PlannedPull] = (),
    ) -> None:
        """Pull the pod's images, then release its job (once per pod) when the ``awaiting``
        ones (a pod group's other members pull them, with their own credentials) are in the
        cache too."""
        if uid in self._tasks:
            return
        to_pull = [p for p in pulls if not p.never]
        self._states[uid] = (
            PullState(CREATING, f"waiting to pull {_sources(to_pull)}")
            if to_pull
            else PullState(NEVER_PULL, _not_present(pulls))
        )
        run = self._run(uid, job_id, pod_dir, list(pulls), list(awaiting))
        task = asyncio.create_task(run, name=f"pull {uid}")
        self._tasks[uid] = task
        task.add_done_callback(lambda t: self._done(uid, t))

    def _done(self, uid: str, task: asyncio.Task[None]) -> None:
        # Only this task's own entry: a pod forgotten and started again has a new one.
        if self._tasks.get(uid) is task:
            del self._tasks[uid]

    def resume(self, recs: Sequence[PodRecord]) -> None:
        """After a restart: the pods whose held jobs still wait for their images."""
        for rec in recs:
            if rec.job_id is not None and rec.pulls is not None:
                self.start(rec.uid, rec.job_id, rec.pod_dir, decode(rec.pulls))

    def forget(self, uid: str) -> None:
        """The pod went: stop watching its pulls (a pull already running finishes for the
        cache's sake; its job is cancelled by the caller)."""
        task = self._tasks.pop(uid, None)
        if task is not None:
            task.cancel()
        self._states.pop(uid, None)

    async def stop(self) -> None:
        """Cancel the pulls under way (at shutdown); their jobs stay held, and resume starts
        them again after a restart."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- one pod's pulls ------------------------------------------------------------------------

    async def _run(
        self,
        uid: str,
        job_id: str,
        pod_dir: str,
        pulls: list[PlannedPull],
        awaiting: list[PlannedPull],
    ) -> None:
        failures = 0
        never = [p for p in pulls if p.never]
        pulls = [p for p in pulls if not p.never]
        while pulls:
            async with self._slots:
                self._states[uid] = PullState(
                    CREATING, f"pulling {_sources(pulls)} on the submit host"
                )
                why = await self._attempt(uid, pod_dir, pulls)
            if why is None:
                break
            failures += 1
            delay = min(BACKOFF_SECONDS[0] * 2 ** (failures - 1), BACKOFF_SECONDS[1])
            reason = "ErrImagePull" if failures == 1 else "ImagePullBackOff"
            self._states[uid] = PullState(
                reason, f"{why} (attempt {failures}; next attempt in {delay:g} s)"
            )
            log.warning("pod %s: image pull failed (attempt %d): %s", uid, failures, why)
            await asyncio.sleep(delay)
        while never:
            # As the kubelet: never pulled, looked for again until someone puts it there.
            with contextlib.suppress(OSError, SchedulerUnavailable):
                never = await asyncio.to_thread(self.missing, never)
            if never:
                self._states[uid] = PullState(NEVER_PULL, _not_present(never))
                await asyncio.sleep(POLL_SECONDS)
        while awaiting:
            # The cache out of reach for now: look again.
            with contextlib.suppress(OSError, SchedulerUnavailable):
                awaiting = await asyncio.to_thread(self.missing, awaiting)
            if awaiting:
                self._states[uid] = PullState(
                    CREATING, f"waiting for {_sources(awaiting)}, pulled for the pod's group"
                )
                await asyncio.sleep(POLL_SECONDS)
        await self._release(uid, job_id)

    async def _attempt(self, uid: str, pod_dir: str, pulls: Sequence[PlannedPull]) -> str | None:
        """One run of the pod's pulls; None when every image is in the cache, else why not."""
        try:
            if not await asyncio.to_thread(self.missing, pulls):
                return None
        except (OSError, SchedulerUnavailable) as err:
            return f"cannot look into the image cache: {err}"
        tag = f"{PULL_DIR}/attempt-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        timeout = self._settings.image_pull_timeout_seconds
        try:
            await asyncio.to_thread(self._launch, pod_dir, pulls, tag, timeout)
        except (OSError, SchedulerUnavailable, CommandUnavailable, RuntimeError) as err:
            return f"cannot start the pull on the submit host: {err}"
        log.info("pod %s: pulling %s on the submit host (%s)", uid, _sources(pulls), LOG)
        deadline = time.monotonic() + timeout + REPORT_GRACE_SECONDS
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                rc = await asyncio.to_thread(self._transport.read_file, f"{pod_dir}/{tag}.rc", 16)
            except (OSError, SchedulerUnavailable):
                rc = None  # the login node is out of reach for now: the pull goes on
            if rc is not None:
                break
            if time.monotonic() > deadline:
                return f"the pull of {_sources(pulls)} did not report back in {timeout:g} s"
        if rc.strip() == b"0":
            log.info("pod %s: images pulled", uid)
            return None
        return await asyncio.to_thread(self._failure, pod_dir, pulls, rc)

    def _launch(self, pod_dir: str, pulls: Sequence[PlannedPull], tag: str, timeout: float) -> None:
        self._transport.make_dirs(f"{pod_dir}/{PULL_DIR}", 0o700)
        self._transport.write_file(f"{pod_dir}/{SCRIPT}", render_pull_script(pulls).encode(), 0o700)
        result = self._transport.run(
            [
                "setsid",
                "bash",
                "-c",
                LAUNCHER,
                "ils-pull",
                pod_dir,
                f"{timeout:.0f}",
                SCRIPT,
                tag,
                LOG,
            ],
            timeout=LAUNCH_TIMEOUT_SECONDS,
        )
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
            raise RuntimeError(said)

    def _failure(self, pod_dir: str, pulls: Sequence[PlannedPull], rc: bytes) -> str:
        code = rc.decode(errors="replace").strip()
        what = "timed out" if code in ("124", "137") else f"failed (exit status {code})"
        path = f"{pod_dir}/{LOG}"
        try:
            size = self._transport.size(path) or 0
            start = max(0, size - LOG_TAIL_BYTES)
            tail = self._transport.read_range(path, start, size - start)
        except (OSError, SchedulerUnavailable):
            tail = b""
        lines = [line for line in tail.decode(errors="replace").splitlines() if line.strip()]
        said = "; ".join(lines[-3:])
        return f"pulling {_sources(pulls)} {what}" + (f": {said}" if said else "")

    async def _release(self, uid: str, job_id: str) -> None:
        """Let the job start; Slurm unreachable for a while only delays it."""
        delay = POLL_SECONDS
        while True:
            try:
                await self._scheduler.release(job_id)
                break
            except (SchedulerUnavailable, SchedulerError) as err:
                self._states[uid] = PullState(
                    CREATING, f"images pulled; cannot release job {job_id} yet: {err}"
                )
                log.warning("pod %s: cannot release job %s yet: %s", uid, job_id, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_SECONDS[1])
        await asyncio.to_thread(self._store.pulls_done, uid)
        self._states.pop(uid, None)
        log.info("pod %s: images in the cache, job %s released", uid, job_id)
        self._on_release()
