"""The plan's sbatch directives → slurmrestd job properties (rest_job, one table per API family):
slurmrestd does not read #SBATCH lines, so each directive is translated, or the job is refused
naming the option that has no translation."""

from __future__ import annotations

from typing import Any

import pytest

from interlink_slurm.errors import SchedulerError
from interlink_slurm.slurm.rest_job import (
    Option,
    components,
    directive_options,
    rest_job,
    submit_body,
)
from interlink_slurm.translate.script import render_script
from tests.unit.test_translate import GOLDEN_PODS, golden_plan

ENV = {"PATH": "/usr/bin:/bin"}


def props(*directives: str, legacy: bool = False) -> dict[str, Any]:
    version = "v0.0.38" if legacy else "v0.0.41"
    job = rest_job(directives, version, workdir="/work", environment=ENV)
    job.pop("environment")
    return job


def test_each_directive_is_read_as_sbatch_reads_its_line() -> None:
    # One directive may hold several options, short ones included, as an #SBATCH line may.
    assert directive_options(["--job-name=a", "-p boost_usr_prod --ntasks 2"]) == [
        Option("--job-name", "a"),
        Option("--partition", "boost_usr_prod"),
        Option("--ntasks", "2"),
    ]


@pytest.mark.parametrize("version", ["v0.0.40", "v0.0.41", "v0.0.42"])
def test_every_data_parser_version_takes_the_current_table(version: str) -> None:
    job = rest_job(["--mem=1G", "--gpus=2"], version, workdir="/w", environment=ENV)
    assert job["memory_per_node"] == {"set": True, "infinite": False, "number": 1024}
    assert job["tres_per_job"] == "gres/gpu:2"
    assert job["environment"] == ["PATH=/usr/bin:/bin"]


def test_v0_0_38_takes_the_legacy_table() -> None:
    job = rest_job(["--mem=1G", "--gpus=2"], "v0.0.38", workdir="/w", environment=ENV)
    assert (job["memory_per_node"], job["gpus"], job["environment"]) == (1024, "2", ENV)


def test_quoted_values_keep_their_spaces() -> None:
    assert props("--comment='two words'")["comment"] == "two words"


def test_the_workdir_is_the_working_directory_unless_chdir_says_otherwise() -> None:
    assert props()["current_working_directory"] == "/work"
    assert props("--chdir=/elsewhere")["current_working_directory"] == "/elsewhere"


@pytest.mark.parametrize(
    ("value", "minutes"),
    [
        ("30", 30),
        ("0:30", 1),  # minutes:seconds, rounded up as Slurm does
        ("1:00:00", 60),
        ("0-01:30:00", 90),
        ("2-00:00:00", 2880),
        ("1-0", 1440),
        ("1-2:3", 1563),
        ("0-00:00:01", 1),
    ],
)
def test_slurm_time_formats_become_minutes(value: str, minutes: int) -> None:
    assert props(f"--time={value}", legacy=True)["time_limit"] == minutes
    assert props(f"--time={value}")["time_limit"] == {
        "set": True,
        "infinite": False,
        "number": minutes,
    }


def test_unlimited_time_is_infinite_from_v0_0_40_and_refused_by_v0_0_38() -> None:
    assert props("--time=UNLIMITED")["time_limit"] == {"set": True, "infinite": True, "number": 0}
    with pytest.raises(SchedulerError, match=r"v0\.0\.38"):
        props("--time=UNLIMITED", legacy=True)


@pytest.mark.parametrize(
    ("value", "mib"), [("512", 512), ("512M", 512), ("4G", 4096), ("1T", 1 << 20), ("1536K", 2)]
)
def test_memory_sizes_become_mebibytes(value: str, mib: int) -> None:
    assert props(f"--mem={value}", legacy=True)["memory_per_node"] == mib
    assert props(f"--mem-per-cpu={value}")["memory_per_cpu"]["number"] == mib


def test_node_ranges() -> None:
    assert props("--nodes=2-4", legacy=True)["nodes"] == "2-4"
    assert props("--nodes=2", legacy=True)["nodes"] == "2-2"
    job = props("-N 3")
    assert (job["minimum_nodes"], job["maximum_nodes"]) == (3, 3)


@pytest.mark.parametrize(
    ("directive", "legacy", "expected"),
    [
        ("--exclusive", True, {"exclusive": "exclusive"}),
        ("--exclusive=user", True, {"exclusive": "user"}),
        ("--exclusive", False, {"shared": ["none"]}),
        ("--exclusive=mcs", False, {"shared": ["mcs"]}),
        ("--gres=gpu:2,gres:nvme:1", False, {"tres_per_node": "gres/gpu:2,gres/nvme:1"}),
        ("--gres=gpu:2", True, {"gres": "gpu:2"}),
        ("--gpus=a100:2", False, {"tres_per_job": "gres/gpu:a100:2"}),
        ("--requeue", False, {"requeue": True}),
        ("--no-requeue", True, {"requeue": False}),
        ("--mail-type=END,fail", False, {"mail_type": ["END", "FAIL"]}),
        ("--mail-type=END,fail", True, {"mail_type": "END,FAIL"}),
        ("--open-mode=truncate", False, {"open_mode": ["TRUNCATE"]}),
        ("--reservation=maint", False, {"reservation": "maint"}),
        ("-C 'ib&gpu'", False, {"constraints": "ib&gpu"}),
        ("-A proj -q dbg", True, {"account": "proj", "qos": "dbg"}),
        ("--licenses=matlab:1", False, {"licenses": "matlab:1"}),
    ],
)
def test_common_extra_options_are_translated(
    directive: str, legacy: bool, expected: dict[str, Any]
) -> None:
    job = props(directive, legacy=legacy)
    job.pop("current_working_directory")
    assert job == expected


@pytest.mark.parametrize(
    ("directive", "legacy", "expected"),
    [
        ("--ntasks-per-node=4", False, {"tasks_per_node": 4}),
        ("--threads-per-core=1", True, {"threads_per_core": 1}),
        ("--dependency=afterok:12", False, {"dependency": "afterok:12"}),
        ("-m block:cyclic", True, {"distribution": "block:cyclic"}),
        ("--prefer=a100", False, {"prefer": "a100"}),
        ("--nice", False, {"nice": 100}),
        ("--nice=-5", True, {"nice": -5}),
        ("--gpus-per-node=2", True, {"gpus_per_node": "2"}),
        ("--gpus-per-task=1", False, {"tres_per_task": "gres/gpu:1"}),
        ("--cpus-per-gpu=8", False, {"cpus_per_tres": "gres/gpu:8"}),
        ("--gpu-bind=closest", False, {"tres_bind": "gres/gpu:closest"}),
        ("--mem-per-gpu=16G", True, {"memory_per_gpu": 16384}),
        ("--mem-per-gpu=16G", False, {"memory_per_tres": "gres/gpu:16384"}),
        ("--tmp=10G", False, {"temporary_disk_per_node": 10240}),
        ("--ntasks-per-gpu=2", False, {"ntasks_per_tres": 2}),
        ("--hint=nomultithread", True, {"cpu_binding_hint": "nomultithread"}),
        ("--signal=USR1@90", True, {"signal": "USR1@90"}),
        (
            "--signal=B:USR1@90",
            False,
            {
                "kill_warning_signal": "USR1",
                "kill_warning_delay": {"set": True, "infinite": False, "number": 90},
                "kill_warning_flags": ["BATCH_JOB"],
            },
        ),
        (
            "--signal=TERM",
            False,
            {
                "kill_warning_signal": "TERM",
                "kill_warning_delay": {"set": True, "infinite": False, "number": 60},
            },
        ),
    ],
)
def test_the_default_pod_flags_are_translated(
    directive: str, legacy: bool, expected: dict[str, Any]
) -> None:
    job = props(directive, legacy=legacy)
    job.pop("current_working_directory")
    assert job == expected


def test_v0_0_38_cannot_signal_the_batch_shell_only() -> None:
    # Seen on Slurm 22.05: "Invalid SIGNAL specification" for "B:USR1@30".
    with pytest.raises(SchedulerError, match="takes no B: prefix; use --signal=USR1@30"):
        props("--signal=B:USR1@30", legacy=True)


def test_gpus_per_node_joins_the_gres_in_tres_per_node() -> None:
    job = props("--gres=gpu:a100:2", "--gpus-per-node=a100:2", "--gres=nvme:1")
    assert job["tres_per_node"] == "gres/gpu:a100:2,gres/gpu:a100:2,gres/nvme:1"


@pytest.mark.parametrize(
    ("directive", "legacy", "named"),
    [
        ("--array=1-4", False, "--array"),
        ("--export=NONE", True, "--export"),
        ("-w node01", False, "-w"),
        ("--begin=now+60", False, "--begin"),
        ("--switches=1", False, "--switches"),
        ("--hint=nomultithread", False, "--hint"),
        ("--gres-flags=enforce-binding", False, "--gres-flags"),
        ("--tmp=10G", True, "--tmp"),
        ("--ntasks-per-gpu=2", True, "--ntasks-per-gpu"),
    ],
)
def test_an_option_without_translation_is_refused_naming_it(
    directive: str, legacy: bool, named: str
) -> None:
    with pytest.raises(SchedulerError, match=f"sbatch option {named} .*scheduler: cli"):
        props(directive, legacy=legacy)


@pytest.mark.parametrize(
    ("directive", "words"),
    [
        ("--mem=lots", "--mem=lots"),
        ("--time=soon", "--time=soon"),
        ("--ntasks=two", "--ntasks=two"),
        ("--open-mode=rewrite", "--open-mode=rewrite"),
        ("--exclusive=always", "--exclusive=always"),
        ("--requeue=yes", "--requeue takes no value"),
        ("--nice=much", "--nice=much"),
        ("--signal=B:USR1@soon", "--signal=B:USR1@soon"),
        ("--partition", "--partition needs a value"),
        ("--comment='unclosed", "cannot read the job script line"),
    ],
)
def test_a_bad_value_is_named(directive: str, words: str) -> None:
    with pytest.raises(SchedulerError) as err:
        props(directive)
    assert words in str(err.value)


def test_the_environment_takes_each_versions_shape() -> None:
    env = {"PATH": "/bin", "LANG": "C.UTF-8"}

    assert rest_job((), "v0.0.38", workdir="/w", environment=env)["environment"] == env
    assert rest_job((), "v0.0.40", workdir="/w", environment=env)["environment"] == [
        "PATH=/bin",
        "LANG=C.UTF-8",
    ]


@pytest.mark.parametrize("pod_name", list(GOLDEN_PODS))
def test_the_directives_sent_are_the_scripts_sbatch_lines(pod_name: str) -> None:
    # slurmrestd gets the plan's directives, sbatch the script's #SBATCH lines: the same ones.
    plan = golden_plan(pod_name, "apptainer")
    script = render_script(plan).splitlines()
    assert script[1 : 1 + len(plan.directives)] == [f"#SBATCH {d}" for d in plan.directives]
    assert not script[1 + len(plan.directives)].startswith("#SBATCH")
    job = rest_job(plan.directives, "v0.0.41", workdir=plan.pod_dir, environment=ENV)
    assert job["comment"] == f"interlink-slurm:{plan.uid}"


# --- the submit body: one job description, or a heterogeneous job's list of them -------------

HET = [
    "--job-name=g",
    "--comment=c",
    "--cpus-per-task=1",
    "hetjob",
    "--cpus-per-task=2",
    "--mem=2G",
]


def test_hetjob_separates_the_components_as_sbatch_reads_the_script() -> None:
    assert components(HET) == [
        ["--job-name=g", "--comment=c", "--cpus-per-task=1"],
        ["--cpus-per-task=2", "--mem=2G"],
    ]
    assert components(["--ntasks=2"]) == [["--ntasks=2"]]
    assert components([]) == [[]]


@pytest.mark.parametrize(
    ("version", "het", "expected"),
    [
        # v0.0.38: the script beside the description(s); "jobs" for a heterogeneous job.
        (
            "v0.0.38",
            False,
            {"script": "S", "job": {"name": "g", "comment": "c", "cpus_per_task": 1}},
        ),
        (
            "v0.0.38",
            True,
            {
                "script": "S",
                "jobs": [
                    {"name": "g", "comment": "c", "cpus_per_task": 1},
                    {"cpus_per_task": 2, "memory_per_node": 2048},
                ],
            },
        ),
        # v0.0.40+: the script in the (first) description.
        (
            "v0.0.41",
            False,
            {"job": {"name": "g", "comment": "c", "cpus_per_task": 1, "script": "S"}},
        ),
        (
            "v0.0.40",
            True,
            {
                "jobs": [
                    {"name": "g", "comment": "c", "cpus_per_task": 1, "script": "S"},
                    {
                        "cpus_per_task": 2,
                        "memory_per_node": {"set": True, "infinite": False, "number": 2048},
                    },
                ]
            },
        ),
    ],
)
def test_the_submit_body_of_each_api_version(
    version: str, het: bool, expected: dict[str, Any]
) -> None:
    directives = HET if het else HET[:3]
    body = submit_body("S", directives, version, workdir="/w", environment=ENV)
    for job in body.get("jobs", [body.get("job")]):
        # Every component runs in the job's directory with the site's environment.
        assert job.pop("current_working_directory") == "/w"
        assert job.pop("environment") in (ENV, ["PATH=/usr/bin:/bin"])
    assert body == expected


def test_a_component_with_an_untranslatable_option_stops_the_submission() -> None:
    with pytest.raises(SchedulerError, match="--tmp"):
        submit_body(
            "S", ["--ntasks=1", "hetjob", "--tmp=1G"], "v0.0.38", workdir="/w", environment=ENV
        )
