"""Errors as types. The HTTP layer maps each to a status code in one place (api.py)."""

from __future__ import annotations


class PluginError(Exception):
    """Base class: ``str(error)`` is a sentence a user can act on."""


class BadRequest(PluginError):
    """The request itself is malformed (not JSON, wrong shape)."""


class PodRejected(PluginError):
    """The pod asks for something this plugin or cluster cannot honour."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class NotFound(PluginError):
    """The pod or container named in the request is not known here."""


class SchedulerUnavailable(PluginError):
    """Slurm (or the way to reach it) does not answer; worth retrying later."""


class SchedulerError(PluginError):
    """Slurm answered with an error that retrying will not fix."""


class SubmitRejected(SchedulerError):
    """Slurm refused the job for what it asks (partition, GPUs, account...)."""


class StorageError(PluginError):
    """The pod's files could not be written (disk full, permissions...)."""


def describe_validation_error(err: object, prefix: str = "") -> str:
    """One line per problem, each naming the field: ``pod.metadata.uid: Field required``."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return str(err)
    lines = []
    for problem in err.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in problem["loc"] if p not in ("function-after",))
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)
