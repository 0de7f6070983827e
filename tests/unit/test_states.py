"""Slurm job state + container files → Kubernetes container statuses (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from interlink_slurm.slurm.cli import parse_sinfo, parse_squeue
from interlink_slurm.slurm.common import parse_gres
from interlink_slurm.slurm.container_files import ContainerFiles, LastRun
from interlink_slurm.slurm.scheduler import JobInfo
from interlink_slurm.slurm.states import POD_MESSAGES_MAX, container_statuses, own_messages

T0 = datetime(2026, 11, 25, 7, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 25, 7, 0, 5, tzinfo=UTC)


def run(
    job: JobInfo | None,
    files: dict[str, ContainerFiles],
    *,
    init: tuple[str, ...] = (),
    main: tuple[str, ...] = ("c",),
    deleted: bool = False,
) -> tuple[dict, dict]:
    i, m = container_statuses(job, "7", init, main, files, {}, deleted=deleted)
    dump = lambda cs: {c.name: c.state.model_dump(exclude_none=True) for c in cs}  # noqa: E731
    return dump(i), dump(m)


def test_pending_job_waits_with_slurm_reason_and_readable_message() -> None:
    _, main = run(JobInfo("7", "PENDING", "Resources"), {})
    waiting = main["c"]["waiting"]
    assert waiting["reason"] == "Resources"
    assert "Slurm job 7 is pending (Resources)" in waiting["message"]
    assert "GPUs" in waiting["message"]


def test_running_job_container_with_start_file_is_running_from_its_own_start_time() -> None:
    _, main = run(JobInfo("7", "RUNNING"), {"c": ContainerFiles(started=T0)})
    assert main["c"] == {"running": {"started_at": T0}}


def test_exit_file_wins_over_the_job_state() -> None:
    files = {"c": ContainerFiles(started=T0, finished=T1, exit_code=42)}
    for job in (JobInfo("7", "RUNNING"), JobInfo("7", "FAILED", "NonZeroExitCode"), None):
        _, main = run(job, files)
        term = main["c"]["terminated"]
        assert (term["exit_code"], term["reason"]) == (42, "Error")
        assert (term["started_at"], term["finished_at"]) == (T0, T1)


@pytest.mark.parametrize(
    ("state", "reason", "code"),
    [
        ("TIMEOUT", "DeadlineExceeded", 137),
        ("OUT_OF_MEMORY", "OOMKilled", 137),
        ("CANCELLED", "Cancelled", 143),
        ("CANCELLED by 0", "Cancelled", 143),
        ("NODE_FAIL", "NodeFailure", 137),
        ("PREEMPTED", "Preempted", 137),
    ],
)
def test_job_ending_kills_started_containers_with_its_reason(
    state: str, reason: str, code: int
) -> None:
    _, main = run(JobInfo("7", state), {"c": ContainerFiles(started=T0)})
    term = main["c"]["terminated"]
    assert (term["reason"], term["exit_code"]) == (reason, code)
    assert term["started_at"] == T0


def test_launch_failure_is_named() -> None:
    _, main = run(JobInfo("7", "FAILED", "JobLaunchFailure"), {})
    assert main["c"]["terminated"]["reason"] == "JobLaunchFailure"


def test_job_gone_without_files_is_lost_not_unknown() -> None:
    _, main = run(None, {})
    assert main["c"]["terminated"]["reason"] == "JobLost"
    _, main = run(None, {}, deleted=True)
    assert main["c"]["terminated"]["reason"] == "Cancelled"


def test_failed_init_container_leaves_the_rest_not_started_with_exit_code_zero() -> None:
    files = {
        "a": ContainerFiles(started=T0, finished=T1, exit_code=0),
        "b": ContainerFiles(started=T0, finished=T1, exit_code=3),
    }
    init, main = run(JobInfo("7", "FAILED"), files, init=("a", "b", "x"))
    assert init["b"]["terminated"]["exit_code"] == 3
    assert init["x"]["terminated"]["reason"] == "InitContainerFailed"
    term = main["c"]["terminated"]
    # exit 0 so that the virtual kubelet reports the init container's code as the pod's reason
    assert (term["exit_code"], term["reason"]) == (0, "InitContainerFailed")
    assert "'b' exited with code 3" in term["message"]


def test_containers_wait_while_init_containers_run() -> None:
    init, main = run(JobInfo("7", "RUNNING"), {"a": ContainerFiles(started=T0)}, init=("a",))
    assert "running" in init["a"]
    assert main["c"]["waiting"]["reason"] == "PodInitializing"


def test_squeue_lines_parse_with_comment_last() -> None:
    text = "12|PENDING|Priority||interlink-slurm:u|x\n13|RUNNING|None|lrdn[0001-0002]|(null)\n\n"
    jobs = parse_squeue(text)
    assert jobs["12"] == JobInfo("12", "PENDING", "Priority", "interlink-slurm:u|x")
    assert jobs["13"] == JobInfo("13", "RUNNING", "", "", "lrdn[0001-0002]")


def test_sinfo_counts_each_node_once_and_skips_unusable_nodes() -> None:
    text = (
        # %N|%c|%m|%G|%T, one line per node and partition
        "n1|32|20000|gpu:a100:4|idle\n"
        "n1|32|20000|gpu:a100:4|idle\n"
        "n2|32|20000|gpu:a100:4(S:0-1)|mixed\n"
        "n3|32|20000|gpu:a100:4|down*\n"
        "n4|64|50000|(null)|allocated\n"
    )
    res = parse_sinfo(text)
    assert (res.cpus, res.memory_mb, res.gpus, res.nodes) == (128, 90000, {"a100": 8}, 3)


def test_gres_strings_parse() -> None:
    assert parse_gres("gpu:a100:4(S:0-1),gpu:2,shard:8") == {"a100": 4, "": 2}
    assert parse_gres("(null)") == {}


def test_requeued_pending_job_ignores_the_files_of_its_earlier_run() -> None:
    files = {"c": ContainerFiles(started=T0, finished=T1, exit_code=0)}
    _, main = run(JobInfo("7", "PENDING", "BeginTime"), files)
    assert main["c"]["waiting"]["reason"] == "BeginTime"


def test_container_killed_while_its_job_ends_waits_for_the_jobs_reason() -> None:
    files = {"c": ContainerFiles(started=T0, finished=T1, exit_code=143)}
    _, main = run(JobInfo("7", "RUNNING"), files)
    assert "running" in main["c"]
    _, main = run(JobInfo("7", "CANCELLED"), files)
    term = main["c"]["terminated"]
    assert (term["reason"], term["exit_code"]) == ("Cancelled", 143)


def test_container_killed_while_others_run_is_terminated_at_once() -> None:
    files = {
        "a": ContainerFiles(started=T0, finished=T1, exit_code=139),
        "b": ContainerFiles(started=T0),
    }
    _, main = run(JobInfo("7", "RUNNING"), files, main=("a", "b"))
    assert main["a"]["terminated"]["exit_code"] == 139
    assert "running" in main["b"]


def test_deleted_pod_in_its_grace_period_still_runs() -> None:
    _, main = run(JobInfo("7", "RUNNING"), {"c": ContainerFiles(started=T0)}, deleted=True)
    assert "running" in main["c"]


# --- restarts (restartPolicy) and readiness --------------------------------------------------


def statuses(job: JobInfo | None, files: dict[str, ContainerFiles], restarts: int = 0) -> dict:
    _, m = container_statuses(job, "7", (), ("c",), files, {}, restarts=restarts)
    return {c.name: c for c in m}


def test_container_waiting_to_be_restarted_is_in_crash_loop_back_off() -> None:
    files = {"c": ContainerFiles(started=T0, finished=T1, restarts=2, backoff=(3, 40))}
    c = statuses(JobInfo("7", "RUNNING"), files)["c"]
    assert c.state.waiting is not None
    assert c.state.waiting.reason == "CrashLoopBackOff"
    assert "back-off 40s" in c.state.waiting.message and "exit code 3" in c.state.waiting.message
    assert c.restart_count == 2
    assert not c.ready


def test_the_run_before_a_restart_is_the_last_state_with_its_message() -> None:
    last = LastRun(1, T0, T1, "Traceback...\nValueError: bad input\n")
    files = {"c": ContainerFiles(started=T1, restarts=1, last=last)}
    c = statuses(JobInfo("7", "RUNNING"), files)["c"]
    assert c.state.running is not None and c.last_state is not None
    assert c.last_state.model_dump(exclude_none=True) == {
        "terminated": {
            "exit_code": 1,
            "reason": "Error",
            "message": "Traceback...\nValueError: bad input\n",
            "started_at": T0,
            "finished_at": T1,
        }
    }
    assert (
        statuses(JobInfo("7", "RUNNING"), {"c": ContainerFiles(started=T1)})["c"].last_state is None
    )


def test_a_termination_message_replaces_the_plugin_s_notes_but_not_an_eviction() -> None:
    files = {
        "a": ContainerFiles(started=T0, finished=T1, exit_code=1, message='{"result": 1}'),
        "b": ContainerFiles(started=T0, finished=T1, exit_code=1, message="out of space"),
        "c": ContainerFiles(started=T0, finished=T1, exit_code=1),
    }
    _, main = container_statuses(JobInfo("7", "FAILED"), "7", (), ("a", "b", "c"), files, {})
    for st in main:
        assert st.state.terminated is not None
        st.state.terminated.message = "(Slurm node n1)"  # as statuses.py notes it
    main[1].state.terminated.reason = "Evicted"  # type: ignore[union-attr]
    own_messages(main, files, 3)
    assert [st.state.terminated.message for st in main if st.state.terminated] == [
        '{"result": 1}',
        "(Slurm node n1)",
        "(Slurm node n1)",
    ]


def test_each_message_is_cut_to_its_share_of_the_pod_s_12_kib_whole_characters_only() -> None:
    text = "é" * 4000  # 8000 bytes of UTF-8
    last = LastRun(1, T0, T1, text)
    files = {
        n: ContainerFiles(started=T0, finished=T1, exit_code=1, message=text, last=last, restarts=1)
        for n in "ab"
    }
    init, main = container_statuses(None, "7", ("a",), ("b",), files, {})
    own_messages([*init, *main], files, 5)  # three more containers, which have none
    share = POD_MESSAGES_MAX // 5  # 2457: an odd share would cut an é in two
    for st in (*init, *main):
        for state in (st.state, st.last_state):
            assert state is not None and state.terminated is not None
            assert state.terminated.message == "é" * (share // 2)


def test_restart_count_adds_the_jobs_restarts_to_slurm_requeues() -> None:
    files = {"c": ContainerFiles(started=T0, restarts=3)}
    c = statuses(JobInfo("7", "RUNNING"), files, restarts=1)["c"]
    assert c.state.running is not None
    assert c.restart_count == 4


def test_back_off_file_of_an_ended_job_is_ignored() -> None:
    files = {"c": ContainerFiles(started=T0, restarts=1, backoff=(1, 10))}
    c = statuses(JobInfo("7", "CANCELLED"), files)["c"]
    assert c.state.terminated is not None and c.state.terminated.reason == "Cancelled"


@pytest.mark.parametrize(("ready", "expected"), [(None, True), (True, True), (False, False)])
def test_ready_follows_the_readiness_probe_while_running(
    ready: bool | None, expected: bool
) -> None:
    files = {"c": ContainerFiles(started=T0, ready=ready)}
    assert statuses(JobInfo("7", "RUNNING"), files)["c"].ready is expected


def test_ended_container_is_never_ready() -> None:
    files = {"c": ContainerFiles(started=T0, finished=T1, exit_code=0, ready=True)}
    assert statuses(JobInfo("7", "RUNNING"), files)["c"].ready is False


def test_container_files_are_read_back_with_restarts_readiness_and_back_off(
    tmp_path: Path,
) -> None:
    from interlink_slurm.jobdir import read_container
    from interlink_slurm.slurm.transport import LocalTransport

    d = tmp_path / "containers"
    d.mkdir()
    (d / "c.started").write_text("2026-11-25T07:00:00.123456789Z\n")
    (d / "c.restarts").write_text("2\n")
    (d / "c.ready").write_text("true\n")
    (d / "c.backoff").write_text("137 20\n")
    f = read_container(LocalTransport(), str(tmp_path), "c")
    assert (f.restarts, f.ready, f.backoff, f.exit_code) == (2, True, (137, 20), None)
    (d / "c.exit").write_text("0\n")
    f = read_container(LocalTransport(), str(tmp_path), "c")
    assert (f.restarts, f.ready, f.backoff, f.exit_code) == (2, None, None, 0)


def test_an_evicted_pod_names_the_eviction_on_every_ended_container() -> None:
    why = 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi".'
    files = {
        "c": ContainerFiles(started=T0, finished=T1, exit_code=143),
        "d": ContainerFiles(started=T0),  # killed after the grace period: no exit file
    }
    _, main = container_statuses(
        JobInfo("7", "FAILED"), "7", (), ("c", "d"), files, {}, evicted=why
    )
    for status, code in zip(main, (143, 137), strict=True):
        term = status.state.terminated
        assert term is not None
        assert (term.reason, term.message, term.exit_code) == ("Evicted", why, code)
    # While the pod is being evicted, a container still stopping is still running.
    _, main = container_statuses(
        JobInfo("7", "RUNNING"), "7", (), ("c", "d"), files, {}, evicted=why
    )
    assert main[1].state.running is not None


def test_evicted_is_read_only_once_containers_end(tmp_path: Path) -> None:
    from interlink_slurm.jobdir import read_pod
    from interlink_slurm.slurm.transport import LocalTransport

    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / "c.started").write_text("2026-11-25T07:00:00.000000001Z\n")
    (tmp_path / "job.evicted").write_text("over the limit\n")
    assert read_pod(LocalTransport(), str(tmp_path), ["c"]).evicted is None
    assert read_pod(LocalTransport(), str(tmp_path), ["c"], job_ended=True).evicted == (
        "over the limit"
    )
    (tmp_path / "containers" / "c.exit").write_text("143\n")
    assert read_pod(LocalTransport(), str(tmp_path), ["c"]).evicted == "over the limit"
