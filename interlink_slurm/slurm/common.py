"""What the schedulers share of Slurm's words and tools: the messages that mean "Slurm is out of
reach" or "the job has already ended", the node states that give nothing, GRES strings, and the
start estimate, which every scheduler gets from ``sbatch --test-only`` through its transport
(slurmrestd has no will-run endpoint)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime

from interlink_slurm.errors import SchedulerError, SchedulerUnavailable, SubmitRejected
from interlink_slurm.sbatch_options import OptionError, scan_options
from interlink_slurm.slurm.scheduler import Estimate
from interlink_slurm.slurm.transport import CommandResult, CommandUnavailable, Transport

# Messages by which Slurm's tools say "I could not reach the controller", as opposed to
# "the controller said no". Only the first kind is worth retrying.
UNREACHABLE = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "zero bytes were transmitted",
    "communication connection failure",
    "unable to establish",
    "backup controller in standby",
    "transport endpoint",
    "munge",
)
INVALID_JOB = "invalid job id"
# What scancel and scontrol say of a job that has already ended (not the tracker's GONE state).
ALREADY_ENDED = (INVALID_JOB, "already completing or completed", "job/step already")
# Node states that give nothing to new jobs.
UNUSABLE_NODE_STATES = ("down", "drain", "fail", "inval", "maint", "future", "unknown")
_GRES = re.compile(r"^gpu(?::([^:()]+))?:(\d+)")
# Options of a job that its start estimate leaves out: they name the pod directory, which does
# not exist before the submission, or hold the job, which then never starts by itself.
NOT_ESTIMATED = frozenset({"--output", "--error", "--open-mode", "--chdir", "--hold"})
# Start times printed as epoch seconds (strftime's %s, glibc), so the time zone of the host that
# runs sbatch does not matter; TZ=UTC makes the ISO form, should %s be ignored, UTC as well.
TIME_ENV = ("TZ=UTC", "SLURM_TIME_FORMAT=%s")
# env(1) could not find or run the command.
NOT_RUNNABLE = (126, 127)
_START = re.compile(r"\bto start at (\S+)[ \t]*(.*)$", re.MULTILINE)


def tool_message(result: CommandResult, sep: str = " ") -> str:
    """What a Slurm command said (its error lines, without their "sbatch: error: " prefix)."""
    text = (result.stderr or result.stdout).strip()
    # Drop Slurm's "sbatch: error: " (and --test-only's "allocation failure: ") prefixes; keep
    # the sentence.
    lines = [
        re.sub(r"^(\w+: error: |allocation failure: )", "", line).strip()
        for line in text.splitlines()
    ]
    return sep.join(line for line in lines if line) or f"exit status {result.returncode}"


def says_unreachable(result: CommandResult) -> bool:
    """Whether a Slurm command failed for want of the controller (worth retrying)."""
    text = f"{result.stderr}\n{result.stdout}".lower()
    return any(marker in text for marker in UNREACHABLE)


def parse_gres(gres: str) -> dict[str, int]:
    """``gpu:a100:4(S:0-1),gpu:2`` → {"a100": 4, "": 2}."""
    out: dict[str, int] = {}
    if not gres or gres == "(null)":
        return out
    for item in gres.split(","):
        m = _GRES.match(item.strip())
        if m:
            kind = m.group(1) or ""
            out[kind] = out.get(kind, 0) + int(m.group(2))
    return out


def estimate_options(directives: Sequence[str]) -> list[str]:
    """The sbatch arguments of ``directives`` (one ``#SBATCH`` line each) that a start estimate
    takes: all but NOT_ESTIMATED (by exact option name, short forms included)."""
    out: list[str] = []
    for directive in directives:
        try:
            words = shlex.split(directive)
        except ValueError as err:
            raise SchedulerError(f"cannot read the sbatch option {directive!r}: {err}") from err
        try:
            options = scan_options(words)
        except OptionError:
            # An option unknown here may be known to this Slurm: sbatch judges it.
            out.extend(words)
            continue
        out.extend(
            name if value is None else f"{name}={value}"
            for _, name, value in options
            if name not in NOT_ESTIMATED
        )
    return out


def _epoch(word: str) -> float | None:
    if word.isdigit():  # before fromisoformat, which takes "20261125" for a date
        return float(word)
    try:
        when = datetime.fromisoformat(word)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def parse_estimate(text: str) -> Estimate:
    """What ``sbatch --test-only`` printed → Estimate. Slurm 22.05 prints
    ``sbatch: Job 19186 to start at 1795609155 using 2 processors on nodes vm in partition p``;
    the time is epoch seconds, or ISO 8601 (UTC unless it carries an offset)."""
    m = _START.search(text)
    start = _epoch(m.group(1)) if m else None
    if m is None or start is None:
        said = " ".join(text.split())[:300] or "nothing"
        raise SchedulerError(f"sbatch --test-only answered {said!r}, not a start time")
    return Estimate(start=start, detail=m.group(2).strip())


def _no_sbatch(sbatch: str, why: str) -> SchedulerUnavailable:
    return SchedulerUnavailable(
        f"no start time estimate: estimates run Slurm's sbatch on the transport's host, and "
        f"{sbatch} could not be run there ({why})"
    )


def _read_estimate(result: CommandResult, sbatch: str) -> Estimate:
    if result.returncode in NOT_RUNNABLE:
        raise _no_sbatch(sbatch, tool_message(result))
    if result.returncode != 0 and says_unreachable(result):
        raise SchedulerUnavailable(f"Slurm is not reachable: {tool_message(result)}")
    if result.returncode != 0:
        raise SubmitRejected(f"Slurm would not run the job: {tool_message(result, '; ')}")
    return parse_estimate(f"{result.stderr}\n{result.stdout}")


async def estimate_with_sbatch(
    transport: Transport,
    sbatch: str,
    directives: Sequence[str],
    timeout: float,
    *,
    limit: asyncio.Semaphore | None = None,
) -> Estimate:
    """The start estimate of every scheduler: ``sbatch --test-only`` through ``transport``, the
    answer within ``timeout`` seconds (waiting for a ``limit`` slot included)."""
    argv = ["env", *TIME_ENV, sbatch, "--test-only", *estimate_options(directives), "--wrap=true"]
    cap = asyncio.timeout(timeout)
    try:
        async with cap, limit if limit is not None else contextlib.nullcontext():
            # The command ends by itself within timeout if the cap leaves it behind.
            result = await asyncio.to_thread(transport.run, argv, timeout=timeout)
    except TimeoutError as err:
        if not cap.expired():
            raise
        raise SchedulerUnavailable(
            f"no start time estimate: Slurm did not answer within {timeout:g} s"
        ) from err
    except CommandUnavailable as err:
        # The transports name argv[0], which is env(1) here; sbatch is what matters.
        reason = re.sub(r"^env\b", sbatch, str(err))
        if "not installed" in reason:  # how the transports say "command not found"
            raise _no_sbatch(sbatch, reason) from err
        raise SchedulerUnavailable(f"no start time estimate: {reason}") from err
    return _read_estimate(result, sbatch)
