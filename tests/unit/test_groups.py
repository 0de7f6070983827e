"""Pod groups: membership, the durable bookkeeping of arriving members, and the group's job
(goldens of the one-allocation and the heterogeneous forms)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from interlink_slurm.cli import app
from interlink_slurm.config import Settings, load_settings
from interlink_slurm.errors import PodRejected
from interlink_slurm.groups import (
    GROUP,
    GROUP_SIZE,
    KUEUE_GROUP,
    KUEUE_TOTAL,
    PENDING_REASON,
    TIMEOUT_REASON,
    GroupBook,
    Membership,
    membership,
    missing_names,
    timeout_reason,
    waiting_status,
)
from interlink_slurm.slurm.cli import parse_squeue
from interlink_slurm.translate.group import (
    GROUP_VOLUME,
    GroupMember,
    GroupPlan,
    check_member,
    group_dir,
    group_directives,
    identical,
    member_names,
    rank_key,
    render_group_script,
    unit_directives,
    with_rendezvous,
)
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.translate.script import render_script
from interlink_slurm.wire import ObjectMeta, RetrievedPodData
from tests import podgen as pg
from tests.unit.golden import check_golden

NS = "default"


def meta(labels: dict[str, str] | None = None, **annotations: str) -> ObjectMeta:
    return ObjectMeta(name="p", namespace=NS, labels=labels or {}, annotations=annotations)


# --- membership ---------------------------------------------------------------------------------


def test_a_pod_without_group_labels_is_no_member() -> None:
    assert membership(meta(), 8) is None


def test_kueue_label_and_annotation_make_a_member() -> None:
    m = membership(meta({KUEUE_GROUP: "train"}, **{KUEUE_TOTAL: "4"}), 8)
    assert m == Membership("train", 4)


def test_our_own_annotation_pair_makes_a_member() -> None:
    assert membership(meta(**{GROUP: "sim", GROUP_SIZE: "2"}), 8) == Membership("sim", 2)


@pytest.mark.parametrize(
    ("labels", "annotations", "field", "words"),
    [
        ({KUEUE_GROUP: "g"}, {KUEUE_TOTAL: "four"}, KUEUE_TOTAL, "not a whole number"),
        ({KUEUE_GROUP: "g"}, {KUEUE_TOTAL: "0"}, KUEUE_TOTAL, "at least 1"),
        ({KUEUE_GROUP: "g"}, {KUEUE_TOTAL: "9"}, KUEUE_TOTAL, "max_group_size"),
        ({KUEUE_GROUP: "g"}, {}, KUEUE_TOTAL, "no size"),
        ({}, {GROUP_SIZE: "2"}, GROUP_SIZE, "without a group name"),
        ({}, {GROUP: "a/b", GROUP_SIZE: "2"}, GROUP, "not a group name"),
        ({KUEUE_GROUP: "g"}, {KUEUE_TOTAL: "2", GROUP_SIZE: "3"}, GROUP_SIZE, "differs"),
        ({KUEUE_GROUP: "g"}, {GROUP: "h", KUEUE_TOTAL: "2"}, GROUP, "differs"),
    ],
)
def test_a_wrong_membership_is_refused_naming_its_field(
    labels: dict[str, str], annotations: dict[str, str], field: str, words: str
) -> None:
    with pytest.raises(PodRejected) as err:
        membership(meta(labels, **annotations), 8)
    assert field in err.value.field
    assert words in err.value.reason


def test_the_controllers_master_leads_then_the_index_then_the_name() -> None:
    def pod(name: str, **labels: str) -> Any:
        the_pod = pg.pod(name, [pg.container("c", "1")])
        the_pod["metadata"]["labels"] = labels
        return RetrievedPodData.model_validate(pg.retrieved(the_pod)).pod

    worker1 = pod("job-worker-1", **{"training.kubeflow.org/replica-index": "1"})
    worker0 = pod("job-worker-0", **{"training.kubeflow.org/replica-index": "0"})
    master = pod("job-master-0", **{"training.kubeflow.org/replica-type": "master"})
    ranked = sorted([worker1, master, worker0], key=rank_key)
    assert [p.name for p in ranked] == ["job-master-0", "job-worker-0", "job-worker-1"]


@pytest.mark.parametrize(
    ("arrived", "size", "said"),
    [
        (["grp-0"], 2, "grp-1"),
        (["w-0", "w-2"], 4, "w-1, w-3"),
        (["alpha"], 3, "2 pods (arrived: alpha)"),
        ([], 1, "1 pod (arrived: none)"),
    ],
)
def test_the_missing_members_are_named_when_the_names_tell(
    arrived: list[str], size: int, said: str
) -> None:
    assert missing_names(arrived, size) == said


# --- the durable book ---------------------------------------------------------------------------


@pytest.fixture
def book(tmp_path: Path) -> Any:
    b = GroupBook(tmp_path / "state.db")
    yield b
    b.close()


def test_members_are_counted_once_each_and_survive_a_reopen(
    book: GroupBook, tmp_path: Path
) -> None:
    g = Membership("train", 3)
    group, members = book.arrive(NS, g, "u1", "train-0", "{}", 100.0)
    assert (group.size, len(members)) == (3, 1)
    _, members = book.arrive(NS, g, "u1", "train-0", "{}", 101.0)  # a retried create
    assert len(members) == 1
    book.arrive(NS, g, "u2", "train-1", "{}", 102.0)
    book.close()
    again = GroupBook(tmp_path / "state.db")  # a restart
    try:
        assert [m.name for m in again.members(NS, "train")] == ["train-0", "train-1"]
        found = again.member("u2")
        assert found is not None and found[0].first_at == 100.0
    finally:
        again.close()


def test_a_member_disagreeing_on_the_size_is_refused(book: GroupBook) -> None:
    book.arrive(NS, Membership("g", 2), "u1", "a", "{}", 1.0)
    with pytest.raises(PodRejected) as err:
        book.arrive(NS, Membership("g", 3), "u2", "b", "{}", 2.0)
    assert "started with 2" in err.value.reason


def test_groups_are_per_namespace(book: GroupBook) -> None:
    book.arrive("a", Membership("g", 2), "u1", "p", "{}", 1.0)
    _, members = book.arrive("b", Membership("g", 5), "u2", "p", "{}", 1.0)
    assert len(members) == 1


def test_a_group_not_complete_in_time_is_overdue_and_fails(book: GroupBook) -> None:
    """A fake clock: times are given, never read."""
    g = Membership("g", 2)
    book.arrive(NS, g, "u1", "g-0", '{"secret": 1}', 1000.0)
    assert book.overdue(1000.0 - 600) == []
    (late,) = book.overdue(1601.0 - 600)
    members = book.members(NS, "g")
    why = timeout_reason(late, members, 600)
    assert "1 of 2 pods arrived within 600 s" in why and "missing: g-1" in why
    book.fail(NS, "g", why)
    assert book.overdue(5000.0) == []
    assert all(m.data is None for m in book.members(NS, "g"))  # no body kept once it failed
    with pytest.raises(PodRejected, match="has failed"):
        book.arrive(NS, g, "u2", "g-1", "{}", 1700.0)


def test_submitted_groups_forget_the_bodies_and_the_last_member_leaving_ends_the_group(
    book: GroupBook,
) -> None:
    g = Membership("g", 2)
    book.arrive(NS, g, "u1", "g-0", "{}", 1.0)
    book.arrive(NS, g, "u2", "g-1", "{}", 2.0)
    assert [x.name for x in book.complete_unsubmitted()] == ["g"]
    book.submitted(NS, "g", "42", "/d/.group-g")
    assert book.complete_unsubmitted() == []
    assert [m.data for m in book.members(NS, "g")] == [None, None]
    book.ended_by(NS, "g", "pod g-0 was deleted")
    book.ended_by(NS, "g", "pod g-1 failed")  # the first cause stays
    book.leave("u1")
    found = book.member("u2")
    assert found is not None and found[0].ended_by == "pod g-0 was deleted"
    book.leave("u2")
    assert not book.any()


def test_a_waiting_member_says_how_many_arrived(book: GroupBook) -> None:
    data = RetrievedPodData.model_validate(pg.retrieved(pg.pod("g-0", [pg.container("c", "1")])))
    group, members = book.arrive(NS, Membership("g", 4), data.pod.uid, "g-0", "{}", 1.0)
    status = waiting_status(data.pod, group, members)
    waiting = status.containers[0].state.waiting
    assert waiting is not None and waiting.reason == PENDING_REASON
    assert waiting.message == "1 of 4 pods of group g arrived"
    failed = waiting_status(data.pod, group.__class__(**{**group.__dict__, "failed": "late"}), [])
    term = failed.containers[0].state.terminated
    assert term is not None and (term.reason, term.message) == (TIMEOUT_REASON, "late")


# --- the group's job ----------------------------------------------------------------------------

UIDS = (
    "0a1b2c3d-0000-4000-8000-000000000001",
    "0a1b2c3d-0000-4000-8000-000000000002",
)


def _settings(runtime: str = "charliecloud") -> Settings:
    image = "/images/debian-python" + (".sqsh" if runtime == "enroot" else "")
    return load_settings(
        None,
        data_root="/data/ils",
        runtime=runtime,
        images={pg.IMAGE: image},
        partition="cpu",
        gpu_partition="gpu",
        gpu_type="a100",
    )


def _member(
    name: str, uid: str, rank: int, ranked: list[str], gpus: int, runtime: str = "charliecloud"
) -> GroupMember:
    res = {"limits": {"nvidia.com/gpu": str(gpus), "cpu": "4", "memory": "8Gi"}}
    the_pod = pg.pod(
        name,
        [pg.container("trainer", "print(1)", resources=res)],
        uid=uid,
        annotations={KUEUE_TOTAL: "2"},
    )
    the_pod["metadata"]["labels"] = {KUEUE_GROUP: "train"}
    data = RetrievedPodData.model_validate(pg.retrieved(the_pod))
    data = with_rendezvous(data, "train", rank, ranked)
    plan = build_plan(data, _settings(runtime), f"/data/ils/{NS}/{name}-{uid}")
    return GroupMember(plan, member_names(data.pod))


def _group(gpus: tuple[int, int], runtime: str = "charliecloud") -> GroupPlan:
    ranked = ["train-master-0", "train-worker-0"]
    members = tuple(
        _member(n, u, i, ranked, g, runtime)
        for i, (n, u, g) in enumerate(zip(ranked, UIDS, gpus, strict=True))
    )
    return GroupPlan(NS, "train", group_dir(members[0].plan.pod_dir), members)


def test_identical_members_become_one_allocation_of_their_nodes_together() -> None:
    group = _group((4, 4))
    assert identical(group)
    lines = group_directives(group)
    assert "--nodes=2" in lines and "--ntasks=2" in lines and "hetjob" not in lines
    assert "--gres=gpu:a100:4" in lines  # per node, as each member asks
    script = render_group_script(group)
    assert "--relative=0" in script and "--relative=1" in script
    check_golden("group.nodes.charliecloud.sh", script)


def test_members_that_differ_become_a_heterogeneous_job() -> None:
    group = _group((4, 2))
    assert not identical(group)
    lines = group_directives(group)
    assert lines.count("hetjob") == 1
    assert lines.count("--nodes=1") == 2
    script = render_group_script(group)
    assert "--het-group=0" in script and "--het-group=1" in script
    check_golden("group.hetjob.charliecloud.sh", script)


def test_enroot_members_get_the_variables_known_when_the_job_starts(tmp_path: Path) -> None:
    """Enroot passes only the variables named on its command line (--env NAME): the nodes and
    the leader's address, which the group's script appends to the env file, are named too."""
    group = _group((4, 4), runtime="enroot")
    plan = group.members[1].plan
    argv = plan.runtime_argv["trainer"]
    for name in ("ILS_GROUP_NODES", "ILS_GROUP_LEADER_ADDR", "RANK", "ILS_GROUP_PODS"):
        assert argv[argv.index(name) - 1] == "--env", argv
    script = render_group_script(group)
    assert f"ils_group_env '' {plan.pod_dir}/containers/trainer.env" in script
    check_golden("group.nodes.enroot.sh", script)
    check_golden("group.member.enroot.sh", render_script(plan))
    # As the job applies them: the env file, then group.env's lines after it (the later wins).
    (env_file,) = (f for f in plan.files if f.path == "containers/trainer.env")
    (tmp_path / "trainer.env").write_bytes(env_file.content)
    (tmp_path / "group.env").write_text(
        "ILS_GROUP_NODES=train-master-0=n1,train-worker-0=n2\nILS_GROUP_LEADER_ADDR=10.0.0.1\n"
    )
    run = subprocess.run(
        [
            "bash",
            "-c",
            '. "$0" && ils_group_env "" trainer.env && '
            'e=(); while IFS= read -r -d "" kv; do e+=("$kv"); done < trainer.env && '
            'env -i -- "${e[@]}" env',
            str(LIBRARY),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    env = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)
    assert env["ILS_GROUP_NODES"] == "train-master-0=n1,train-worker-0=n2"
    assert env["ILS_GROUP_LEADER_ADDR"] == "10.0.0.1"


@pytest.mark.parametrize("gpus", [(4, 4), (4, 2)])
def test_the_group_script_is_valid_bash(gpus: tuple[int, int]) -> None:
    run = subprocess.run(
        ["bash", "-n"], input=render_group_script(_group(gpus)), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_rendezvous_variables_never_replace_the_controllers_own() -> None:
    the_pod = pg.pod(
        "w-0",
        [pg.container("c", "1", env=[{"name": "MASTER_ADDR", "value": "job-master-0"}])],
    )
    data = with_rendezvous(
        RetrievedPodData.model_validate(pg.retrieved(the_pod)), "g", 1, ["m-0", "w-0"]
    )
    env = {e.name: e.value for e in data.pod.spec.containers[0].env}
    assert env["MASTER_ADDR"] == "job-master-0"
    assert (env["RANK"], env["WORLD_SIZE"], env["ILS_GROUP_LEADER"]) == ("1", "2", "m-0")
    mounts = data.pod.spec.containers[0].volume_mounts
    assert [(m.name, m.mount_path, m.sub_path) for m in mounts] == [
        (GROUP_VOLUME, "/etc/hosts", "hosts")
    ]


def test_a_pod_volume_of_the_reserved_name_is_refused() -> None:
    the_pod = pg.pod(
        "w-0", [pg.container("c", "1")], volumes=[{"name": GROUP_VOLUME, "emptyDir": {}}]
    )
    with pytest.raises(PodRejected) as err:
        with_rendezvous(RetrievedPodData.model_validate(pg.retrieved(the_pod)), "g", 0, ["w-0"])
    assert err.value.field == "spec.volumes"


def test_names_a_pod_answers_to_include_the_service_form_of_a_pytorchjob() -> None:
    the_pod = pg.pod("job-master-0", [pg.container("c", "1")], namespace="ml")
    names = member_names(RetrievedPodData.model_validate(pg.retrieved(the_pod)).pod)
    assert names[0] == "job-master-0"
    assert "job-master-0.ml.svc.cluster.local" in names


def test_a_pod_of_a_group_asking_several_nodes_is_refused() -> None:
    the_pod = pg.pod("w-0", [pg.container("c", "1")], annotations={"interlink-slurm/nodes": "2"})
    plan = build_plan(RetrievedPodData.model_validate(pg.retrieved(the_pod)), _settings(), "/d/p")
    with pytest.raises(PodRejected) as err:
        check_member(plan)
    assert err.value.field == "metadata.annotations[interlink-slurm/nodes]"


def test_render_of_a_file_of_a_groups_pods_shows_the_groups_job_then_each_pods() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "gan-training-2x4xa100-group.yaml"
    leonardo = Path(__file__).resolve().parents[2] / "deploy" / "config" / "leonardo.yaml"
    result = CliRunner().invoke(app, ["render", str(example), "--config", str(leonardo)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("#!/bin/bash\n#SBATCH --job-name=gan\n")
    assert "#SBATCH --nodes=2\n" in out and "#SBATCH --gres=gpu:4\n" in out
    assert out.count("#SBATCH --job-name=gan-master-0") == 1  # its own job.sh, shown after
    assert out.index("/gan-master-0-") < out.index("/gan-worker-0-")  # the master leads


# --- the group's wait, executed -----------------------------------------------------------------

LIBRARY = Path(__file__).resolve().parents[2] / "interlink_slurm" / "jobscript" / "ils.sh"


# Job ids above Slurm's largest (67,108,863): the library's reap and /tmp sweep act on every
# process of the machine that carries the job's SLURM_JOB_ID, and the integration tests' real
# jobs run beside these tests (make test runs them in parallel).
# Not test_script_exec's: a job script run there reaps every process of its job id, these too
# when the two files' tests run at once (seen: this file's scripts ended by SIGKILL).
FAKE_JOB = "970000088"
FAKE_JOBS = "9700000"  # + "41", "43"...


def run_library(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    """bash running ``script`` after sourcing ils.sh, in tmp_path, as job FAKE_JOB, with the
    shell options of group.sh and job.sh, and a stand-in scancel that writes what it was asked
    to tmp_path/scancel."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scancel = bin_dir / "scancel"
    scancel.write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scancel\n')
    scancel.chmod(0o755)
    return subprocess.run(
        [
            "bash",
            "-c",
            'set -o nounset -o pipefail && . "$0" && cd "$1" && ' + script,
            str(LIBRARY),
            str(tmp_path),
        ],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": FAKE_JOB},
        capture_output=True,
        text=True,
        timeout=60,
    )


# How ils_group_wait learns which step ended: wait -n -p (bash 5.1 and later), or, as on bash
# 4.4 (RHEL 8), wait -n for any child and a look at which step's process is gone.
@pytest.fixture(params=["wait -n -p", "bash before 5.1"])
def wait_p(request: pytest.FixtureRequest) -> str:
    return "" if request.param == "wait -n -p" else "ILS_WAIT_P=''\n"


def _group_wait(
    tmp_path: Path, policy: str, wait_p: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """ils_group_wait over three stand-in steps: one fails (3) while another still runs; a
    stand-in scancel says what it was asked."""
    script = wait_p + (
        "pids=()\n"
        "(exit 0) & pids+=(ok $!)\n"
        "(sleep 0.5; exit 3) & pids+=(bad $!)\n"
        "(sleep 2; exit 0) & pids+=(slow $!)\n"
        f'ils_group_wait {policy} "${{pids[@]}}"\n'
    )
    return run_library(tmp_path, script), tmp_path


def test_with_fail_group_the_first_failing_pod_ends_the_others(tmp_path: Path, wait_p: str) -> None:
    run, d = _group_wait(tmp_path, "fail-group", wait_p)
    assert run.returncode == 3, run.stderr
    assert (d / "scancel").read_text() == f"--signal=URG -- {FAKE_JOB}\n"  # every step, as a delete
    assert (d / "group.ended").read_text() == "pod bad failed (exit code 3)\n"


def test_with_ignore_a_failing_pod_leaves_the_others_running(tmp_path: Path, wait_p: str) -> None:
    run, d = _group_wait(tmp_path, "ignore", wait_p)
    assert run.returncode == 3, run.stderr  # the group's job still says it failed
    assert not (d / "scancel").exists() and not (d / "group.ended").exists()


def test_a_step_that_failed_while_the_others_were_started_ends_the_group(
    tmp_path: Path, wait_p: str
) -> None:
    """A step that ends before the next one is started (bash then moves it out of the job table
    that wait -n reads) still counts: the group ends at once, with its exit code."""
    script = wait_p + (
        "pids=()\n"
        "(exit 5) & pids+=(fast $!)\n"
        "sleep 0.3\n"
        "(sleep 30) & pids+=(long $!)\n"
        "long=$!\n"
        "(sleep 0.5; ! [ -e scancel ] || kill $long) &\n"
        'ils_group_wait fail-group "${pids[@]}"\n'
    )
    run = run_library(tmp_path, script)
    assert run.returncode == 5, run.stderr
    assert (tmp_path / "scancel").read_text() == f"--signal=URG -- {FAKE_JOB}\n"
    assert (tmp_path / "group.ended").read_text() == "pod fast failed (exit code 5)\n"


def test_a_delete_s_signal_to_the_group_script_is_passed_on_to_every_step(
    tmp_path: Path, wait_p: str
) -> None:
    """scancel --full (a delete) signals the batch script only: its trap signals the steps
    (scancel without --full), and the wait for them goes on (a wait a trap cut short left its
    -p variable unset, and the script's nounset ended it: the steps had only Slurm's KillWait)."""
    script = wait_p + (
        'ILS_STOPPING="" && trap ils_group_stop URG && pids=()\n'
        "(sleep 0.3; kill -URG $$) &\n"
        "(sleep 1.5; exit 0) & pids+=(a $!)\n"
        'ils_group_wait fail-group "${pids[@]}"\n'
        'echo "rc=$? stopping=$ILS_STOPPING"\n'
    )
    run = run_library(tmp_path, script)
    assert run.stdout == "rc=0 stopping=1\n", run.stderr
    assert (tmp_path / "scancel").read_text() == f"--signal=URG -- {FAKE_JOB}\n"
    assert "trap ils_group_stop URG\n" in render_group_script(_group((4, 4)))


def test_a_group_is_estimated_and_placed_as_one_job_of_all_its_nodes() -> None:
    plan = _group((4, 4)).members[0].plan
    sized = unit_directives(plan, 3)
    assert "--nodes=3" in sized and "--ntasks=3" in sized
    assert [d for d in sized if d.startswith("--gres")] == ["--gres=gpu:a100:4"]  # per node


def test_squeue_lists_a_heterogeneous_job_by_parts_and_part_zero_speaks_for_it() -> None:
    text = (
        "4+0|RUNNING|None|n1|interlink-slurm-group:ml/gan/u\n"
        "4+1|RUNNING|None|n2|interlink-slurm-group:ml/gan/u\n"
        "5|PENDING|Resources||interlink-slurm:v\n"
    )
    jobs = parse_squeue(text)
    assert sorted(jobs) == ["4", "5"]
    assert (jobs["4"].state, jobs["4"].nodes) == ("RUNNING", "n1,n2")
    assert jobs["4"].comment == "interlink-slurm-group:ml/gan/u"


def test_a_members_tmp_sweep_removes_dead_jobs_dirs_but_never_its_siblings(tmp_path: Path) -> None:
    """Pods of a group name their /tmp directory <job>-<uid>: one of a job with no process left
    goes; a sibling's (same job, this one) stays, whatever processes it has."""
    j41, j43 = f"{FAKE_JOBS}41", f"{FAKE_JOBS}43"
    for name in (f"interlink-slurm-{j41}-aaaa", f"interlink-slurm-{j43}-bbbb"):
        (tmp_path / name).mkdir()
    (tmp_path / f"interlink-slurm-{j43}").mkdir()
    run = subprocess.run(
        ["bash", "-c", f'set -o nounset && . "$0" && ils_tmp_sweep {tmp_path}', str(LIBRARY)],
        env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": j43, "ILS_MEMBER": "cccc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"interlink-slurm-{j43}",
        f"interlink-slurm-{j43}-bbbb",
    ]


def test_threads_using_a_new_book_at_once_open_it_once_and_leave_it_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow open widens the window in which every thread finds no connection yet: each one
    # opening its own once replaced another's mid-transaction and left the file locked.
    import sqlite3
    import threading
    import time

    from interlink_slurm import groups

    opened: list[str] = []
    connect = sqlite3.connect

    def slow_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append("once")
        time.sleep(0.05)
        return connect(*args, **kwargs)

    monkeypatch.setattr(groups.sqlite3, "connect", slow_connect)
    book = GroupBook(tmp_path / "state.db")
    start = threading.Barrier(6)
    failures: list[BaseException] = []

    def use(i: int) -> None:
        start.wait()
        try:
            book.arrive(NS, Membership("g", 6), f"u{i}", f"p-{i}", "{}", float(i))
        except BaseException as e:  # collected for the assert below
            failures.append(e)

    threads = [threading.Thread(target=use, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert failures == [] and opened == ["once"]
        assert len(book.members(NS, "g")) == 6
        writer = sqlite3.connect(tmp_path / "state.db", timeout=0.5)
        writer.execute("BEGIN IMMEDIATE")  # nobody holds the file
        writer.execute("ROLLBACK")
        writer.close()
    finally:
        book.close()
