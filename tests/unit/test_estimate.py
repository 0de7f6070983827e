"""Start estimates (sbatch --test-only) without Slurm: what is asked, how the answer is read, how
each way of failing is told apart, and the fake's scripted starts. The same on the real local
Slurm is tests/integration/test_estimate.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from interlink_slurm.config import load_settings
from interlink_slurm.errors import SchedulerError, SchedulerUnavailable, SubmitRejected
from interlink_slurm.metrics import MeteredScheduler, Metrics
from interlink_slurm.slurm import factory
from interlink_slurm.slurm.cli import CliScheduler
from interlink_slurm.slurm.common import estimate_options, parse_estimate
from interlink_slurm.slurm.fake import FakeScheduler
from interlink_slurm.slurm.pyslurm_scheduler import PyslurmScheduler
from interlink_slurm.slurm.remote_settings import RestSettings
from interlink_slurm.slurm.rest import RestScheduler
from interlink_slurm.slurm.scheduler import Estimate
from interlink_slurm.slurm.transport import CommandResult, CommandUnavailable

# What Slurm 22.05's sbatch --test-only printed on the local cluster (stderr), with
# SLURM_TIME_FORMAT=%s, then without it in TZ=UTC, and with an offset format.
EPOCH_LINE = (
    "sbatch: Job 19186 to start at 1795609155 using 2 processors on nodes vm in partition "
    "dcgp_usr_prod\n"
)
ISO_LINE = (
    "sbatch: Job 19183 to start at 2026-11-25T12:19:15 using 1 processors on nodes vm in "
    "partition dcgp_usr_prod\n"
)
OFFSET_LINE = (
    "sbatch: Job 19191 to start at 2026-11-25T13:19:15+0100 using 1 processors on nodes vm in "
    "partition dcgp_usr_prod\n"
)
POD_DIRECTIVES = [
    "--job-name=train",
    "--comment=interlink-slurm:3f6c2b1e",
    "--output=/scratch/pods/default/train-3f6c/job.out",
    "--open-mode=append",
    "--chdir=/scratch/pods/default/train-3f6c",
    "--partition=boost_usr_prod",
    "--nodes=1",
    "--ntasks=1",
    "--cpus-per-task=8",
    "--mem=32768M",
    "--gres=gpu:a100:2",
    "--time=0-01:30:00",
    "--account=proj_ai",
    "--qos=boost_qos_dbg",
    "--constraint=ib",
    "--hold",
]
KEPT = [
    "--job-name=train",
    "--comment=interlink-slurm:3f6c2b1e",
    "--partition=boost_usr_prod",
    "--nodes=1",
    "--ntasks=1",
    "--cpus-per-task=8",
    "--mem=32768M",
    "--gres=gpu:a100:2",
    "--time=0-01:30:00",
    "--account=proj_ai",
    "--qos=boost_qos_dbg",
    "--constraint=ib",
]
TIME_ENV = ["env", "TZ=UTC", "SLURM_TIME_FORMAT=%s"]
REST_URL = "unix:///run/slurmrestd/slurmrestd.socket"


class ScriptedTransport:
    """Answers every command with ``answer(argv)``; remembers what it was asked. Only ``run`` is
    needed by estimates."""

    def __init__(self, answer: Callable[[Sequence[str]], CommandResult]) -> None:
        self.answer = answer
        self.argvs: list[list[str]] = []
        self.timeouts: list[float] = []

    def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:
        self.argvs.append(list(argv))
        self.timeouts.append(timeout)
        return self.answer(argv)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"an estimate used the transport's {name}")


def says(returncode: int, stderr: str = "", stdout: str = "") -> ScriptedTransport:
    return ScriptedTransport(lambda argv: CommandResult(tuple(argv), returncode, stdout, stderr))


def estimate(transport: Any, directives: Sequence[str] = (), timeout: float = 10) -> Estimate:
    return asyncio.run(CliScheduler(transport).estimate(directives, timeout))


# --- reading the answer -------------------------------------------------------------------------


def test_epoch_seconds_are_read_as_they_are_with_slurms_words_after_them() -> None:
    assert parse_estimate(EPOCH_LINE) == Estimate(
        start=1795609155.0,
        detail="using 2 processors on nodes vm in partition dcgp_usr_prod",
    )


def test_an_iso_time_without_offset_is_utc_and_one_with_an_offset_keeps_it() -> None:
    assert parse_estimate(ISO_LINE).start == 1795609155.0
    assert parse_estimate(OFFSET_LINE).start == 1795609155.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sbatch: Job 19186 to start at Unknown using 2 processors",
        "sbatch: Job 19186 to start at %s using 2 processors",
        "Submitted batch job 42",
    ],
)
def test_an_answer_without_a_readable_start_time_is_a_scheduler_error(text: str) -> None:
    with pytest.raises(SchedulerError, match="not a start time"):
        parse_estimate(text)


# --- what is asked ------------------------------------------------------------------------------


def test_options_naming_the_pod_directory_or_holding_the_job_are_left_out() -> None:
    assert estimate_options(POD_DIRECTIVES) == KEPT


@pytest.mark.parametrize(
    "directive",
    ["-o /d/job.out", "-o/d/job.out", "--output /d/job.out", "-e /d/job.err", "-D /d", "-H"],
)
def test_short_and_spaced_forms_are_left_out_too(directive: str) -> None:
    assert estimate_options(["--nodes=1", directive, "-p boost_usr_prod"]) == [
        "--nodes=1",
        "--partition=boost_usr_prod",
    ]


def test_an_option_unknown_here_is_passed_for_sbatch_to_judge() -> None:
    assert estimate_options(["--x11-forward=all", "--mem=1G"]) == ["--x11-forward=all", "--mem=1G"]


def test_sbatch_is_asked_for_a_test_only_run_with_times_in_epoch_seconds() -> None:
    transport = says(0, EPOCH_LINE)
    scheduler = CliScheduler(transport, command={"sbatch": "/opt/slurm/bin/sbatch"})
    asyncio.run(scheduler.estimate(POD_DIRECTIVES, 7))
    assert transport.argvs == [
        [*TIME_ENV, "/opt/slurm/bin/sbatch", "--test-only", *KEPT, "--wrap=true"]
    ]
    assert transport.timeouts == [7]


# --- how failures are told apart ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("stderr", "said"),
    [
        (
            "allocation failure: Requested node configuration is not available\n",
            "Requested node configuration is not available",
        ),
        (
            "sbatch: error: invalid partition specified: nosuch\n"
            "allocation failure: Invalid partition name specified\n",
            "invalid partition specified: nosuch; Invalid partition name specified",
        ),
        (
            "sbatch: error: Invalid generic resource (gres) specification\n",
            "Invalid generic resource (gres) specification",
        ),
    ],
)
def test_slurm_refusing_the_job_is_submit_rejected_in_its_words(stderr: str, said: str) -> None:
    with pytest.raises(SubmitRejected) as caught:
        estimate(says(1, stderr))
    assert str(caught.value) == f"Slurm would not run the job: {said}"


def test_an_unreachable_controller_is_unavailable() -> None:
    stderr = "allocation failure: Unable to contact slurm controller (connect failure)\n"
    with pytest.raises(SchedulerUnavailable, match="Unable to contact slurm controller"):
        estimate(says(1, stderr))


def test_success_without_a_start_time_is_a_scheduler_error() -> None:
    with pytest.raises(SchedulerError, match="not a start time") as caught:
        estimate(says(0, "sbatch: warning: something else\n"))
    assert not isinstance(caught.value, SubmitRejected)


def test_a_missing_sbatch_is_unavailable_and_named() -> None:
    transport = says(127, "env: '/opt/slurm/bin/sbatch': No such file or directory\n")
    scheduler = CliScheduler(transport, command={"sbatch": "/opt/slurm/bin/sbatch"})
    with pytest.raises(SchedulerUnavailable, match="sbatch on the transport's host") as caught:
        asyncio.run(scheduler.estimate([], 10))
    assert "/opt/slurm/bin/sbatch could not be run there" in str(caught.value)


def test_sbatch_missing_on_the_ssh_login_node_says_estimates_need_it() -> None:
    def fail(argv: Sequence[str]) -> CommandResult:
        raise CommandUnavailable(f"{argv[0]} is not installed or not on PATH on login01")

    with pytest.raises(SchedulerUnavailable, match="estimates run Slurm's sbatch") as caught:
        estimate(ScriptedTransport(fail))
    assert "(sbatch is not installed or not on PATH on login01)" in str(caught.value)


def test_a_transport_failure_names_sbatch_not_env() -> None:
    def fail(argv: Sequence[str]) -> CommandResult:
        raise CommandUnavailable(f"{argv[0]} did not answer within 3 s")

    with pytest.raises(SchedulerUnavailable) as caught:
        estimate(ScriptedTransport(fail))
    assert str(caught.value) == "no start time estimate: sbatch did not answer within 3 s"


def test_an_answer_later_than_the_timeout_is_unavailable_without_waiting_for_it() -> None:
    def slow(argv: Sequence[str]) -> CommandResult:
        time.sleep(0.6)  # a transport that overruns its own timeout
        return CommandResult(tuple(argv), 0, "", EPOCH_LINE)

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(SchedulerUnavailable, match=r"did not answer within 0\.1 s"):
            await CliScheduler(ScriptedTransport(slow)).estimate([], 0.1)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 0.5


def test_waiting_for_a_free_command_slot_counts_in_the_timeout() -> None:
    def answer(argv: Sequence[str]) -> CommandResult:
        if argv[0] == "scontrol":
            time.sleep(0.5)  # holds the only slot
            return CommandResult(tuple(argv), 0, "Slurmctld(primary) at vm is UP\n", "")
        return CommandResult(tuple(argv), 0, "", EPOCH_LINE)

    transport = ScriptedTransport(answer)
    scheduler = CliScheduler(transport, max_concurrent=1)

    async def scenario() -> None:
        ping = asyncio.create_task(scheduler.ping())
        await asyncio.sleep(0.05)
        with pytest.raises(SchedulerUnavailable, match=r"within 0\.1 s"):
            await scheduler.estimate([], 0.1)
        await ping

    asyncio.run(scenario())
    assert [argv[0] for argv in transport.argvs] == ["scontrol"]


# --- the other schedulers estimate the same way -------------------------------------------------


def test_rest_and_pyslurm_schedulers_run_the_same_sbatch_through_their_transport() -> None:
    for make in (
        lambda t: RestScheduler(RestSettings(url=REST_URL), t, sbatch="/s/sbatch"),
        lambda t: PyslurmScheduler(t, module=object(), sbatch="/s/sbatch"),
    ):
        transport = says(0, EPOCH_LINE)
        answer = asyncio.run(make(transport).estimate(POD_DIRECTIVES, 5))
        assert answer.start == 1795609155.0
        assert transport.argvs == [[*TIME_ENV, "/s/sbatch", "--test-only", *KEPT, "--wrap=true"]]


def test_a_rest_scheduler_without_sbatch_on_its_host_says_estimates_need_it() -> None:
    transport = says(127, "env: 'sbatch': No such file or directory\n")
    scheduler = RestScheduler(RestSettings(url=REST_URL), transport)
    with pytest.raises(SchedulerUnavailable, match="estimates run Slurm's sbatch"):
        asyncio.run(scheduler.estimate([], 5))


@pytest.mark.parametrize("scheduler", ["cli", "rest"])
def test_the_factory_gives_every_scheduler_sbatch_from_slurm_bin_dir(scheduler: str) -> None:
    settings = load_settings(
        None,
        data_root="/scratch/pods",
        slurm_bin_dir="/opt/slurm/bin",
        scheduler=scheduler,
        **({"rest": {"url": REST_URL}} if scheduler == "rest" else {}),
    )
    transport = says(0, EPOCH_LINE)
    built = factory.build_scheduler(settings, transport)
    asyncio.run(built.estimate([], 5))
    assert transport.argvs[0][3] == "/opt/slurm/bin/sbatch"


# --- the fake and the metrics -------------------------------------------------------------------


def test_the_fake_starts_each_partition_when_told_and_others_now() -> None:
    fake = FakeScheduler(starts={"boost_usr_prod": 600.0, "": 60.0})

    async def scenario() -> None:
        now = time.time()
        boost = await fake.estimate(["--nodes=1", "--partition=boost_usr_prod"], 5)
        dcgp = await fake.estimate(["--partition=dcgp_usr_prod"], 5)
        default = await fake.estimate(["--nodes=1"], 5)
        assert boost.start == pytest.approx(now + 600, abs=5)
        assert dcgp.start == pytest.approx(now, abs=5)
        assert default.start == pytest.approx(now + 60, abs=5)

    asyncio.run(scenario())
    assert fake.calls == ["estimate"] * 3


def test_the_fake_can_be_slow_fail_once_or_be_down() -> None:
    fake = FakeScheduler(estimate_delay=1.0)

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fake.estimate([], 5), 0.05)
        fake.estimate_delay = 0.0
        fake.fail_next["estimate"] = SubmitRejected("Slurm would not run the job: no")
        with pytest.raises(SubmitRejected):
            await fake.estimate([], 5)
        await fake.estimate([], 5)  # only once
        fake.down = SchedulerUnavailable("Slurm is not reachable")
        with pytest.raises(SchedulerUnavailable):
            await fake.estimate([], 5)

    asyncio.run(scenario())


def test_estimates_are_counted_by_outcome() -> None:
    metrics = Metrics()
    fake = FakeScheduler()
    metered = MeteredScheduler(fake, metrics)

    async def scenario() -> None:
        await metered.estimate(["--partition=boost_usr_prod"], 5)
        fake.fail_next["estimate"] = SchedulerUnavailable("down")
        with pytest.raises(SchedulerUnavailable):
            await metered.estimate([], 5)

    asyncio.run(scenario())
    count = metrics.registry.get_sample_value
    name = "interlink_slurm_scheduler_calls_total"
    assert count(name, {"operation": "estimate", "outcome": "ok"}) == 1
    assert count(name, {"operation": "estimate", "outcome": "unavailable"}) == 1
