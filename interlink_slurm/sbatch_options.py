"""sbatch's command-line options: which exist, their short forms, whether they take a value, and
the one parser that reads them. Pure, with no imports from the rest of the package.

Used for the pods' ``slurm-job.vk.io/flags`` (translate/annotations.py) and for the ``#SBATCH``
lines slurmrestd is sent as job properties (slurm/rest.py), so both read an option line alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum


class Arity(Enum):
    """Whether an sbatch option takes a value: never, always, or only after '='."""

    NONE = "none"  # a switch: --hold
    REQUIRED = "required"  # --time=1:00:00, --time 1:00:00, -t 1:00:00, -t1:00:00
    OPTIONAL = "optional"  # only with '=': --exclusive=user


@dataclass(frozen=True)
class OptionSpec:
    """One sbatch option: its short form, if any, and its arity."""

    short: str | None
    arity: Arity


_R, _N, _O = Arity.REQUIRED, Arity.NONE, Arity.OPTIONAL

# sbatch's options (Slurm 22.05-23.11), long name → short form and value. Only these are known;
# an unknown or abbreviated name is refused, so nothing sbatch would read differently passes.
SBATCH_OPTIONS: dict[str, OptionSpec] = {
    "--account": OptionSpec("-A", _R),
    "--acctg-freq": OptionSpec(None, _R),
    "--array": OptionSpec("-a", _R),
    "--batch": OptionSpec(None, _R),
    "--bb": OptionSpec(None, _R),
    "--bbf": OptionSpec(None, _R),
    "--begin": OptionSpec("-b", _R),
    "--chdir": OptionSpec("-D", _R),
    "--clusters": OptionSpec("-M", _R),
    "--comment": OptionSpec(None, _R),
    "--constraint": OptionSpec("-C", _R),
    "--container": OptionSpec(None, _R),
    "--contiguous": OptionSpec(None, _N),
    "--core-spec": OptionSpec("-S", _R),
    "--cores-per-socket": OptionSpec(None, _R),
    "--cpu-freq": OptionSpec(None, _R),
    "--cpus-per-gpu": OptionSpec(None, _R),
    "--cpus-per-task": OptionSpec("-c", _R),
    "--deadline": OptionSpec(None, _R),
    "--delay-boot": OptionSpec(None, _R),
    "--dependency": OptionSpec("-d", _R),
    "--distribution": OptionSpec("-m", _R),
    "--error": OptionSpec("-e", _R),
    "--exclude": OptionSpec("-x", _R),
    "--exclusive": OptionSpec(None, _O),
    "--export": OptionSpec(None, _R),
    "--export-file": OptionSpec(None, _R),
    "--extra-node-info": OptionSpec("-B", _R),
    "--get-user-env": OptionSpec(None, _O),
    "--gid": OptionSpec(None, _R),
    "--gpu-bind": OptionSpec(None, _R),
    "--gpu-freq": OptionSpec(None, _R),
    "--gpus": OptionSpec("-G", _R),
    "--gpus-per-node": OptionSpec(None, _R),
    "--gpus-per-socket": OptionSpec(None, _R),
    "--gpus-per-task": OptionSpec(None, _R),
    "--gres": OptionSpec(None, _R),
    "--gres-flags": OptionSpec(None, _R),
    "--hint": OptionSpec(None, _R),
    "--hold": OptionSpec("-H", _N),
    "--ignore-pbs": OptionSpec(None, _N),
    "--input": OptionSpec("-i", _R),
    "--job-name": OptionSpec("-J", _R),
    "--kill-on-invalid-dep": OptionSpec(None, _R),
    "--licenses": OptionSpec("-L", _R),
    "--mail-type": OptionSpec(None, _R),
    "--mail-user": OptionSpec(None, _R),
    "--mcs-label": OptionSpec(None, _R),
    "--mem": OptionSpec(None, _R),
    "--mem-bind": OptionSpec(None, _R),
    "--mem-per-cpu": OptionSpec(None, _R),
    "--mem-per-gpu": OptionSpec(None, _R),
    "--mincpus": OptionSpec(None, _R),
    "--network": OptionSpec(None, _R),
    "--nice": OptionSpec(None, _O),
    "--no-kill": OptionSpec("-k", _O),
    "--no-requeue": OptionSpec(None, _N),
    "--nodefile": OptionSpec("-F", _R),
    "--nodelist": OptionSpec("-w", _R),
    "--nodes": OptionSpec("-N", _R),
    "--ntasks": OptionSpec("-n", _R),
    "--ntasks-per-core": OptionSpec(None, _R),
    "--ntasks-per-gpu": OptionSpec(None, _R),
    "--ntasks-per-node": OptionSpec(None, _R),
    "--ntasks-per-socket": OptionSpec(None, _R),
    "--open-mode": OptionSpec(None, _R),
    "--output": OptionSpec("-o", _R),
    "--overcommit": OptionSpec("-O", _N),
    "--oversubscribe": OptionSpec("-s", _N),
    "--parsable": OptionSpec(None, _N),
    "--partition": OptionSpec("-p", _R),
    "--power": OptionSpec(None, _R),
    "--prefer": OptionSpec(None, _R),
    "--priority": OptionSpec(None, _R),
    "--profile": OptionSpec(None, _R),
    "--propagate": OptionSpec(None, _O),
    "--qos": OptionSpec("-q", _R),
    "--quiet": OptionSpec("-Q", _N),
    "--reboot": OptionSpec(None, _N),
    "--requeue": OptionSpec(None, _N),
    "--reservation": OptionSpec(None, _R),
    "--signal": OptionSpec(None, _R),
    "--sockets-per-node": OptionSpec(None, _R),
    "--spread-job": OptionSpec(None, _N),
    "--switches": OptionSpec(None, _R),
    "--test-only": OptionSpec(None, _N),
    "--thread-spec": OptionSpec(None, _R),
    "--threads-per-core": OptionSpec(None, _R),
    "--time": OptionSpec("-t", _R),
    "--time-min": OptionSpec(None, _R),
    "--tmp": OptionSpec(None, _R),
    "--uid": OptionSpec(None, _R),
    "--use-min-nodes": OptionSpec(None, _N),
    "--verbose": OptionSpec("-v", _N),
    "--wait": OptionSpec("-W", _N),
    "--wait-all-nodes": OptionSpec(None, _R),
    "--wckey": OptionSpec(None, _R),
    "--wrap": OptionSpec(None, _R),
}


def _shorts(table: Mapping[str, OptionSpec]) -> dict[str, str]:
    return {o.short: name for name, o in table.items() if o.short}


SHORT_OPTIONS = _shorts(SBATCH_OPTIONS)


class OptionError(ValueError):
    """A word of an sbatch command line that is not an sbatch option, or one used wrongly; the
    message says which and why."""


def scan_options(
    tokens: Sequence[str],
    table: Mapping[str, OptionSpec] = SBATCH_OPTIONS,
    command: str = "sbatch",
) -> list[tuple[str, str, str | None]]:
    """(the option as written, long name, value or None) for each option of a tokenised sbatch
    command line: ``--x=v``, ``--x v``, ``-t v``, ``-t1:00`` and bundled short switches
    (``-Hk``). An optional value is only taken with '=' (``--exclusive=user``), as sbatch does.
    Unknown or abbreviated names are refused (OptionError), so nothing sbatch would read
    differently passes. ``table``: another command's options read the same way (srun's)."""
    shorts = SHORT_OPTIONS if table is SBATCH_OPTIONS else _shorts(table)
    out: list[tuple[str, str, str | None]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok.startswith("--"):
            name, eq, value = tok.partition("=")
            spec = table.get(name)
            if spec is None:
                raise OptionError(f"{name!r} is not an {command} option (write it in full)")
            if spec.arity is Arity.NONE and eq:
                raise OptionError(f"{name} takes no value")
            if spec.arity is Arity.REQUIRED and not eq:
                if i >= len(tokens):
                    raise OptionError(f"{name} needs a value")
                value = tokens[i]
                i += 1
            out.append((name, name, value if (eq or spec.arity is Arity.REQUIRED) else None))
        elif tok.startswith("-") and len(tok) > 1:
            rest = tok[1:]
            while rest:
                short = "-" + rest[0]
                name = shorts.get(short, "")
                if not name:
                    raise OptionError(f"{short!r} is not an {command} option")
                rest = rest[1:]
                if table[name].arity is Arity.REQUIRED:
                    if rest:
                        value, rest = rest, ""
                    elif i < len(tokens):
                        value = tokens[i]
                        i += 1
                    else:
                        raise OptionError(f"{short} ({name}) needs a value")
                    out.append((short, name, value))
                else:
                    out.append((short, name, None))
        else:
            raise OptionError(f"{tok!r} is not an {command} option (options start with '-')")
    return out


def parse_options(tokens: Sequence[str]) -> list[tuple[str, str | None]]:
    """(long name, value or None) for each option of a tokenised sbatch command line; see
    ``scan_options``."""
    return [(name, value) for _, name, value in scan_options(tokens)]
