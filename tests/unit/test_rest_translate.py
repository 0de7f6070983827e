"""#SBATCH lines → slurmrestd job properties: slurmrestd does not read them, so the REST scheduler
translates each one, or refuses the job naming the option it cannot translate."""

from __future__ import annotations

from typing import Any

import pytest

from interlink_slurm.errors import SchedulerError
from interlink_slurm.slurm.rest import Option, job_description, sbatch_options

ENV = {"PATH": "/usr/bin:/bin"}


def props(*directives: str, legacy: bool = False) -> dict[str, Any]:
    script = "#!/bin/bash\n" + "".join(f"#SBATCH {d}\n" for d in directives) + "echo hi\n"
    job = job_description(script, "/work", legacy=legacy, environment=ENV)
    job.pop("environment")
    return job


def test_options_are_read_from_the_top_until_the_first_command() -> None:
    script = (
        "#!/bin/bash\n"
        "#SBATCH --job-name=a\n"
        "\n"
        "# a comment does not end them\n"
        "#SBATCH -p boost_usr_prod --ntasks 2\n"
        "#SBATCHnot-an-option\n"
        "echo start\n"
        "#SBATCH --partition=too-late\n"
    )

    assert sbatch_options(script) == [
        Option("--job-name", "a"),
        Option("--partition", "boost_usr_prod"),
        Option("--ntasks", "2"),
    ]


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
    script = "#!/bin/bash\ntrue\n"
    env = {"PATH": "/bin", "LANG": "C.UTF-8"}

    assert job_description(script, "/w", legacy=True, environment=env)["environment"] == env
    assert job_description(script, "/w", legacy=False, environment=env)["environment"] == [
        "PATH=/bin",
        "LANG=C.UTF-8",
    ]
