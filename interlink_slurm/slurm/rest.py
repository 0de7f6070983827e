"""The Scheduler over slurmrestd, Slurm's REST API (httpx; TCP with a JWT, or a unix socket).

slurmrestd takes a job as JSON: the script, and the job's properties beside it, which
rest_job.py makes from the plan's sbatch directives (slurmrestd does not read ``#SBATCH`` lines).

Two families of shapes: v0.0.38 (Slurm 22.05; plain numbers and strings) and the data_parser
versions v0.0.40 and later (Slurm 23.11+: numbers as ``{"set", "infinite", "number"}``, states
and flags as lists, the environment as ``NAME=value`` strings).

Errors are sorted once, in ``_answer``: slurmrestd or slurmctld out of reach →
``SchedulerUnavailable`` (503); Slurm refusing a job → ``SubmitRejected`` (422); anything else →
``SchedulerError`` (502). Every message names slurmrestd and what Slurm said.

slurmrestd has no will-run endpoint (v0.0.38 serves none), so start estimates run Slurm's
``sbatch --test-only`` through the transport: they need sbatch on the transport's host, and
they are made as the transport's user.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from interlink_slurm.errors import SchedulerError, SchedulerUnavailable, SubmitRejected
from interlink_slurm.slurm.common import (
    INVALID_JOB,
    UNREACHABLE,
    UNUSABLE_NODE_STATES,
    estimate_with_sbatch,
    parse_gres,
)
from interlink_slurm.slurm.remote_settings import RestSettings
from interlink_slurm.slurm.rest_job import submit_body
from interlink_slurm.slurm.scheduler import ClusterResources, Estimate, FromJobListing, JobInfo
from interlink_slurm.slurm.transport import Transport

log = logging.getLogger(__name__)

MAX_SCRIPT_BYTES = 4 << 20
# slurm_errno.h: 1000-1099 protocol and communication errors, 1800-1899 "unable to contact
# slurmctld", 5000-5099 socket errors (timeouts).
UNREACHABLE_ERRNO = (range(1000, 1100), range(1800, 1900), range(5000, 5100))
# ESLURM_* errors about what a job asks (2000 invalid partition, 2017 invalid job id, ...).
JOB_ERRNO = range(2000, 3000)
ESLURM_INVALID_JOB_ID = 2017
ESLURM_ALREADY_DONE = 2021
ESLURM_JOB_FINISHED = 2084
# What Slurm answers about a job that is no longer there to cancel or signal.
ALREADY_ENDED_ERRNO = frozenset({ESLURM_INVALID_JOB_ID, ESLURM_ALREADY_DONE})
# Not an error: a job submitted with "hold" is queued, and Slurm says it is held.
ESLURM_JOB_HELD = 2042
# A job update that lifts a user hold, as scontrol release does (every version).
RELEASE = {"hold": False}
ALREADY_ENDED = (INVALID_JOB, "already completing or completed")
# Slurm's name for a job state when flags are set (job_state_string(), slurm_protocol_defs.c):
# the first flag present wins over the base state.
STATE_FLAGS = (
    "COMPLETING",
    "STAGE_OUT",
    "CONFIGURING",
    "RESIZING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "SPECIAL_EXIT",
    "STOPPED",
    "REVOKED",
    "RESV_DEL_HOLD",
    "SIGNALING",
)
BASE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
    }
)
# Node state flags that make a node give nothing to new jobs (v0.0.40+: in the state list).
UNUSABLE_NODE_FLAGS = frozenset({"DRAIN", "FAIL", "MAINTENANCE", "INVALID_REG"})


class _Refused(SchedulerError):
    """slurmrestd answered with errors; the caller decides what they mean."""

    def __init__(self, message: str, numbers: Sequence[int], status: int) -> None:
        super().__init__(message)
        self.numbers = tuple(numbers)
        self.status = status


# --- answers → JobInfo, ClusterResources ---------------------------------------------------------


def _state(value: Any) -> str:
    if isinstance(value, str):
        return value.upper()
    if isinstance(value, list):
        names = [str(v).upper() for v in value]
        for flag in STATE_FLAGS:
            if flag in names:
                return flag
        for name in names:
            if name in BASE_STATES:
                return name
        return names[0] if names else "UNKNOWN"
    return "UNKNOWN"


def parse_jobs(answer: Mapping[str, Any]) -> dict[str, JobInfo]:
    """``GET /jobs`` (any version) → job id → JobInfo."""
    jobs: dict[str, JobInfo] = {}
    for job in answer.get("jobs") or []:
        job_id = job.get("job_id")
        if not isinstance(job_id, int):
            continue
        reason = str(job.get("state_reason") or "")
        comment = job.get("comment")
        nodes = job.get("nodes")
        jobs[str(job_id)] = JobInfo(
            str(job_id),
            _state(job.get("job_state")),
            "" if reason == "None" else reason,
            comment if isinstance(comment, str) else "",
            nodes if isinstance(nodes, str) else "",
        )
    return jobs


def _node_states(node: Mapping[str, Any]) -> list[str]:
    state = node.get("state")
    if isinstance(state, list):  # v0.0.40+: base state and flags together
        names = [str(s).upper() for s in state]
    else:  # v0.0.38: "idle", with flags apart
        names = [
            str(state or "unknown").upper(),
            *(str(f).upper() for f in node.get("state_flags") or []),
        ]
    base = [n for n in names if n not in UNUSABLE_NODE_FLAGS and n.isalpha()][:1]
    return [*base, *(n for n in names if n in UNUSABLE_NODE_FLAGS)]


def _count(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and value.get("set") and not value.get("infinite"):
        return int(value.get("number") or 0)
    return 0


def parse_nodes(answer: Mapping[str, Any], partitions: Sequence[str]) -> ClusterResources:
    """``GET /nodes`` (any version) → what the nodes of ``partitions`` (all if empty) give."""
    wanted = set(partitions)
    cpus = memory = count = 0
    gpus: dict[str, int] = {}
    for node in answer.get("nodes") or []:
        if wanted and not wanted & set(node.get("partitions") or []):
            continue
        states = [s.lower() for s in _node_states(node)]
        if any(bad in s for s in states for bad in UNUSABLE_NODE_STATES):
            continue
        count += 1
        cpus += _count(node.get("cpus"))
        memory += _count(node.get("real_memory"))
        for kind, n in parse_gres(str(node.get("gres") or "")).items():
            gpus[kind] = gpus.get(kind, 0) + n
    return ClusterResources(cpus=cpus, memory_mb=memory, gpus=gpus, nodes=count)


def _ping_up(answer: Mapping[str, Any]) -> bool:
    for ping in answer.get("pings") or []:
        # v0.0.38: "ping": "UP"; v0.0.40+: "pinged": "UP" (and "responding": true in later ones)
        if ping.get("ping") == "UP" or ping.get("pinged") == "UP" or ping.get("responding") is True:
            return True
    return False


# --- the scheduler ------------------------------------------------------------------------------


class RestScheduler(FromJobListing):
    """Implements the Scheduler protocol (see scheduler.py) against slurmrestd. Start estimates
    run ``sbatch --test-only`` (``sbatch``: the command's path) through the transport, as
    slurmrestd has no will-run endpoint: sbatch must be on the transport's host."""

    def __init__(
        self, settings: RestSettings, transport: Transport, *, sbatch: str = "sbatch"
    ) -> None:
        self._s = settings
        self._transport = transport  # where the job scripts are read
        self._sbatch = sbatch
        self._client: httpx.AsyncClient | None = None
        self._token: tuple[tuple[int, int, int], str] | None = None

    @property
    def where(self) -> str:
        """How errors name slurmrestd: its URL."""
        return f"slurmrestd at {self._s.url}"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            transport: httpx.AsyncHTTPTransport | None = None
            base = self._s.url
            if self._s.unix_socket is not None:
                transport = httpx.AsyncHTTPTransport(uds=self._s.unix_socket)
                base = "http://slurmrestd"
            self._client = httpx.AsyncClient(
                base_url=base, transport=transport, timeout=self._s.timeout
            )
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client (at shutdown)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _read_token(self) -> str:
        path = self._s.token_file
        assert path is not None
        try:
            st = os.stat(path)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if self._token is not None and self._token[0] == key:
                return self._token[1]
            text = path.read_text().strip()
        except OSError as err:
            raise SchedulerUnavailable(
                f"rest.token_file: cannot read {path}: {err.strerror or err}"
            ) from err
        # `scontrol token` prints SLURM_JWT=...; accept the file as it prints it.
        token = text.removeprefix("SLURM_JWT=").strip()
        if not token:
            raise SchedulerUnavailable(f"rest.token_file: {path} is empty")
        if self._token is not None:
            log.info("rest.token_file %s changed: using the new token", path)
        self._token = (key, token)
        return token

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._s.user_name:
            headers["X-SLURM-USER-NAME"] = self._s.user_name
        if self._s.token_file is not None:
            headers["X-SLURM-USER-TOKEN"] = self._read_token()
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        action: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        url = f"/slurm/{self._s.api_version}/{path}"
        try:
            response = await self._http().request(
                method, url, json=body, params=params, headers=self._headers()
            )
        except httpx.TimeoutException as err:
            raise SchedulerUnavailable(
                f"{self.where} did not answer within {self._s.timeout:g} s ({action})"
            ) from err
        except httpx.TransportError as err:
            reason = str(err) or type(err).__name__
            raise SchedulerUnavailable(
                f"{self.where} is not reachable ({action}): {reason}"
            ) from err
        return self._answer(response, method, url, action)

    def _answer(
        self, response: httpx.Response, method: str, url: str, action: str
    ) -> dict[str, Any]:
        """The one place where slurmrestd's answers become results or typed errors."""
        status = response.status_code
        body: dict[str, Any] | None
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        body = parsed if isinstance(parsed, dict) else None
        for warning in (body or {}).get("warnings") or []:
            if isinstance(warning, dict):
                log.warning(
                    "slurmrestd (%s): %s %s",
                    action,
                    warning.get("description", ""),
                    warning.get("source", ""),
                )
        errors = [
            e
            for e in (body or {}).get("errors") or []
            if isinstance(e, dict)
            and ESLURM_JOB_HELD not in (e.get("error_number"), e.get("error_code"))
        ]
        if status < 400 and not errors and body is not None:
            return body
        texts = [_error_text(e) for e in errors]
        numbers = [
            n
            for e in errors
            for n in (e.get("error_number"), e.get("error_code"))
            if isinstance(n, int)
        ]
        said = "; ".join(dict.fromkeys(texts)) or _snippet(response)
        if status in (401, 403):
            raise SchedulerUnavailable(
                f"{self.where} refused the credentials (HTTP {status}, {action}): {said}; check "
                "rest.user_name and rest.token_file (the token is read again when the file "
                "changes)"
            )
        if status == 404 and body is None:
            raise SchedulerError(
                f"{self.where} does not serve {url} (HTTP 404): is {self._s.api_version} among "
                "the versions slurmrestd was started with (slurmrestd -s list)? "
                "Set rest.api_version accordingly"
            )
        unreachable = any(n in r for n in numbers for r in UNREACHABLE_ERRNO) or any(
            marker in said.lower() for marker in UNREACHABLE
        )
        # A read slurmrestd could not do is slurmctld not answering: Slurm 22.05 then says only
        # "Failed while looking for jobs" or "Unspecified error" (errno -1), with HTTP 500.
        failed_read = method == "GET" and status >= 500
        if unreachable or failed_read or (status in (502, 503, 504) and not errors):
            raise SchedulerUnavailable(
                f"Slurm is not reachable through {self.where} ({action}): {said}"
            )
        raise _Refused(f"{self.where} answered HTTP {status} ({action}): {said}", numbers, status)

    # --- Scheduler ------------------------------------------------------------------------------

    async def submit(self, script_path: str, workdir: str, directives: Sequence[str]) -> str:
        try:
            raw = await asyncio.to_thread(
                self._transport.read_file, script_path, MAX_SCRIPT_BYTES + 1
            )
        except OSError as err:
            raise SchedulerError(
                f"cannot read the job script {script_path}: {err.strerror or err}"
            ) from err
        if raw is None:
            raise SchedulerError(f"the job script {script_path} does not exist")
        if len(raw) > MAX_SCRIPT_BYTES:
            raise SchedulerError(f"the job script {script_path} is larger than 4 MiB")
        script = raw.decode(errors="replace")
        body = submit_body(
            script,
            directives,
            self._s.api_version,
            workdir=workdir,
            environment=self._s.environment,
        )
        job = body["job"] if "job" in body else body["jobs"][0]
        try:
            answer = await self._call("POST", "job/submit", "submitting a job", body=body)
        except _Refused as err:
            queued = await self._queued_anyway(job.get("comment"), err)
            if queued is not None:
                return queued
            detail = str(err).split(": ", 1)[-1]
            if any(n in JOB_ERRNO for n in err.numbers) or (
                not err.numbers and 400 <= err.status < 500
            ):
                raise SubmitRejected(f"Slurm refused the job: {detail}") from err
            raise SchedulerError(str(err)) from err
        raw_result = answer.get("result")
        result: dict[str, Any] = raw_result if isinstance(raw_result, dict) else {}
        job_id = answer.get("job_id", result.get("job_id"))
        if not isinstance(job_id, int):
            raise SchedulerError(f"{self.where} answered the submission without a job id")
        message = answer.get("job_submit_user_msg") or result.get("job_submit_user_msg")
        if message:
            log.info("job %s: %s", job_id, message)
        return str(job_id)

    async def _queued_anyway(self, comment: Any, err: _Refused) -> str | None:
        """The job Slurm queued although slurmrestd reported an error, if it did.

        slurmctld queues a job with some errors (e.g. "Required node not available" while a
        node comes back) and answers with both a job id and the error; Slurm 22.05's slurmrestd
        reports only the error. The job's comment (the pod's UID) tells whether it exists."""
        if not isinstance(comment, str) or not comment:
            return None
        try:
            job = await self.find_by_comment(comment)
        except (SchedulerError, SchedulerUnavailable):
            return None
        if job is None:
            return None
        log.warning(
            "slurmrestd reported %r for the job with comment %s, but Slurm queued it as job %s",
            str(err),
            comment,
            job.job_id,
        )
        return job.job_id

    async def _on_job(
        self,
        method: str,
        job_id: str,
        action: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        gone: frozenset[int] = ALREADY_ENDED_ERRNO,
    ) -> None:
        """A call on one job; Slurm answering that the job is gone (``gone``) is fine."""
        if not job_id.isdigit():
            raise SchedulerError(f"{job_id!r} is not a Slurm job id")
        try:
            await self._call(method, f"job/{job_id}", action, params=params, body=body)
        except _Refused as err:
            if gone & set(err.numbers) or any(m in str(err).lower() for m in ALREADY_ENDED):
                return
            raise

    async def cancel(self, job_id: str) -> None:
        await self._on_job("DELETE", job_id, f"cancelling job {job_id}")

    async def release(self, job_id: str) -> None:
        # An update of a job that ended says so with its own number.
        await self._on_job(
            "POST",
            job_id,
            f"releasing job {job_id}",
            body=RELEASE,
            gone=ALREADY_ENDED_ERRNO | {ESLURM_JOB_FINISHED},
        )

    async def signal(self, job_id: str, signal: str) -> None:
        # The batch script gets it too, as with scancel --full (v0.0.38 does that by itself).
        params = {"signal": signal} if self._s.legacy else {"signal": signal, "flags": "FULL_JOB"}
        await self._on_job("DELETE", job_id, f"signalling job {job_id}", params=params)

    async def _jobs(self) -> dict[str, JobInfo]:
        try:
            answer = await self._call("GET", "jobs", "listing jobs")
        except _Refused as err:
            raise SchedulerError(str(err)) from err
        return parse_jobs(answer)

    async def final_states(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        # Accounting is slurmdbd's (the /slurmdb/ endpoints), not configured here.
        return {}

    async def resources(self, partitions: Sequence[str]) -> ClusterResources:
        try:
            answer = await self._call("GET", "nodes", "listing nodes")
        except _Refused as err:
            raise SchedulerError(str(err)) from err
        return parse_nodes(answer, partitions)

    async def ping(self) -> None:
        try:
            answer = await self._call("GET", "ping", "ping")
        except _Refused as err:
            raise SchedulerUnavailable(str(err)) from err
        if not _ping_up(answer):
            pings = answer.get("pings") or []
            raise SchedulerUnavailable(f"Slurm controller is not up ({self.where}: {pings})")

    async def estimate(self, directives: Sequence[str], timeout: float) -> Estimate:
        return await estimate_with_sbatch(self._transport, self._sbatch, directives, timeout)


def _error_text(error: Mapping[str, Any]) -> str:
    """Slurm's own words for one error: its errno string ("Invalid partition name specified"),
    or the description when the errno says nothing ("Unspecified error")."""
    short = str(error.get("error") or "").strip()
    long = str(error.get("description") or "").strip()
    if short and short != "Unspecified error":
        return short
    return long or short or "unknown error"


def _snippet(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    return text[:200] or f"HTTP {response.status_code} with an empty body"
