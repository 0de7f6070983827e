"""The one sbatch option parser, and the two readers that share it: the pods' sbatch flags
(translate/annotations.py) and the directives sent to slurmrestd (slurm/rest_job.py)."""

from __future__ import annotations

import shlex

import pytest

from interlink_slurm.errors import PodRejected, SchedulerError
from interlink_slurm.sbatch_options import (
    SBATCH_OPTIONS,
    SHORT_OPTIONS,
    Arity,
    OptionError,
    parse_options,
    scan_options,
)
from interlink_slurm.slurm import rest_job
from interlink_slurm.translate import annotations as ann

ENV = {"PATH": "/usr/bin:/bin"}


@pytest.mark.parametrize(
    ("line", "options"),
    [
        ("--time=1:00:00", [("--time", "1:00:00")]),
        ("--time 1:00:00", [("--time", "1:00:00")]),
        ("--comment=", [("--comment", "")]),
        ("-t 1:00:00", [("--time", "1:00:00")]),
        ("-t1:00:00", [("--time", "1:00:00")]),
        ("-N2 -n 8", [("--nodes", "2"), ("--ntasks", "8")]),
        ("--hold", [("--hold", None)]),
        ("-H", [("--hold", None)]),
        # bundled switches, the last one may take the rest of the word or the next word
        ("-HQ", [("--hold", None), ("--quiet", None)]),
        ("-HN2", [("--hold", None), ("--nodes", "2")]),
        ("-Hp debug", [("--hold", None), ("--partition", "debug")]),
        # an optional value only with '='
        ("--exclusive", [("--exclusive", None)]),
        ("--exclusive=user", [("--exclusive", "user")]),
        ("--nice=-5 --nice", [("--nice", "-5"), ("--nice", None)]),
        ("-k", [("--no-kill", None)]),
        # a value is taken as it is, even when it looks like an option
        ("--job-name --hold", [("--job-name", "--hold")]),
        ("", []),
    ],
)
def test_options_are_read_as_sbatch_reads_them(
    line: str, options: list[tuple[str, str | None]]
) -> None:
    assert parse_options(shlex.split(line)) == options


def test_scan_says_how_each_option_was_written() -> None:
    assert scan_options(["-Hw", "node01", "--time=5"]) == [
        ("-H", "--hold", None),
        ("-w", "--nodelist", "node01"),
        ("--time", "--time", "5"),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("--tim=5", "'--tim' is not an sbatch option (write it in full)"),
        ("--bogus", "'--bogus' is not an sbatch option (write it in full)"),
        ("-y", "'-y' is not an sbatch option"),
        ("-Hy", "'-y' is not an sbatch option"),
        ("--time", "--time needs a value"),
        ("-t", "-t (--time) needs a value"),
        ("-Ht", "-t (--time) needs a value"),
        ("--hold=yes", "--hold takes no value"),
        ("debug", "'debug' is not an sbatch option (options start with '-')"),
        ("-", "'-' is not an sbatch option (options start with '-')"),
        # an optional value is not taken from the next word
        ("--exclusive user", "'user' is not an sbatch option (options start with '-')"),
    ],
)
def test_what_is_not_an_sbatch_option_is_refused_saying_why(line: str, reason: str) -> None:
    with pytest.raises(OptionError) as err:
        parse_options(shlex.split(line))
    assert str(err.value) == reason
    assert isinstance(err.value, ValueError)


def test_each_short_form_stands_for_one_long_option() -> None:
    assert len(SHORT_OPTIONS) == sum(1 for o in SBATCH_OPTIONS.values() if o.short)
    assert all(SBATCH_OPTIONS[n].short == s for s, n in SHORT_OPTIONS.items())
    assert all(s.startswith("-") and len(s) == 2 for s in SHORT_OPTIONS)
    assert all(n.startswith("--") for n in SBATCH_OPTIONS)


# --- the two readers agree ----------------------------------------------------------------------

LINE = "-N2 --ntasks-per-node 4 --exclusive=user -t 1:00:00"
POLICY = ann.FlagPolicy(
    allowed=ann.DEFAULT_USER_FLAGS_ALLOWED, partitions=None, qos=None, account=False
)


@pytest.mark.parametrize("legacy", [True, False])
def test_the_rest_path_and_the_annotation_path_read_an_option_line_alike(legacy: bool) -> None:
    directives = ann.user_flags(LINE, POLICY)
    from_rest = rest_job.directive_options([LINE])

    assert directives == ["--nodes=2", "--ntasks-per-node=4", "--exclusive=user", "--time=1:00:00"]
    assert [(o.name, o.value) for o in from_rest] == parse_options(shlex.split(LINE))
    assert [f"{o.name}={o.value}" for o in from_rest] == directives
    # the canonical directives the annotation path writes give slurmrestd the same job
    version = "v0.0.38" if legacy else "v0.0.41"
    assert rest_job.rest_job(
        directives, version, workdir="/w", environment=ENV
    ) == rest_job.rest_job([LINE], version, workdir="/w", environment=ENV)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("--tim=5", "'--tim' is not an sbatch option (write it in full)"),
        ("-t", "-t (--time) needs a value"),
        ("--requeue=yes", "--requeue takes no value"),
    ],
)
def test_both_paths_refuse_a_malformed_option_with_the_parsers_reason(
    line: str, reason: str
) -> None:
    with pytest.raises(PodRejected) as pod:
        ann.user_flags(line, POLICY)
    with pytest.raises(SchedulerError) as job:
        rest_job.directive_options([line])

    assert reason in str(pod.value)
    assert reason in str(job.value)


def test_hold_goes_to_slurmrestd_in_either_form() -> None:
    for line in ("--hold", "-H", "-HN2"):
        job = rest_job.rest_job([line], "v0.0.41", workdir="/w", environment=ENV)
        assert job["hold"] is True


def test_an_option_sbatch_knows_but_rest_cannot_translate_is_named_as_written() -> None:
    with pytest.raises(
        SchedulerError, match=r"sbatch option -w in the job script .*scheduler: cli"
    ):
        rest_job.directive_options(["-Hw node01"])
    with pytest.raises(SchedulerError, match="sbatch option --nodelist in the job script"):
        rest_job.directive_options(["--nodelist=node01"])


@pytest.mark.parametrize("name", sorted(rest_job.TRANSLATED))
def test_every_translated_option_has_a_translation_in_some_version(name: str) -> None:
    if SBATCH_OPTIONS[name].arity is not Arity.REQUIRED:
        directive = name
    else:
        directive = f"{name}={'append' if name == '--open-mode' else '1'}"
    translated = []
    for version in ("v0.0.38", "v0.0.41"):
        try:
            job = rest_job.rest_job([directive], version, workdir="/w", environment=ENV)
        except SchedulerError as err:
            assert "cannot be sent to slurmrestd" in str(err)
            continue
        translated.append(version)
        assert job != rest_job.rest_job([], version, workdir="/w", environment=ENV)
    assert translated, f"{name} is in TRANSLATED but no version translates it"
