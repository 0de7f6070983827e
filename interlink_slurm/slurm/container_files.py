"""What the job wrote of one container in the pod directory, as data: jobdir.py reads it from
the files, states.py turns it into the container's status. Apart from both, so that Slurm's
package need not import the pod directory's module (which uses its transport)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ContainerFiles:
    """One container's times, exit code, restarts, readiness and back-off, as its files say;
    the termination message of its run that ended, and the run before its last restart or
    requeue."""

    started: datetime | None = None
    finished: datetime | None = None
    exit_code: int | None = None
    restarts: int = 0  # times the job restarted it (restartPolicy)
    ready: bool | None = None  # its readiness probe's last verdict; None: it has no probe
    # Waiting to be restarted: (exit code of the run that ended, back-off in seconds).
    backoff: tuple[int, int] | None = None
    message: str | None = None  # the termination message of the run that ended
    last: LastRun | None = None  # the run before its last restart or requeue (lastState)


@dataclass(frozen=True)
class LastRun:
    """A run of a container that was restarted (its restart policy, or Slurm's requeue of the
    job): how and when it ended."""

    exit_code: int
    started: datetime | None
    finished: datetime | None
    message: str | None = None  # its termination message
