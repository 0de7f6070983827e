"""Annotations users already write (slurm-job.vk.io/*, interlink.eu/*) and our own
(interlink-slurm/*) → checked sbatch options, runtime arguments and job steps."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink_slurm.config import ConfigError, load_settings
from interlink_slurm.errors import PodRejected
from interlink_slurm.translate import annotations as ann
from interlink_slurm.translate.plan import CONTAINER_TMP
from interlink_slurm.translate.script import render_script
from tests import podgen as pg
from tests.unit.test_translate import (
    files,
    main,
    option,
    plan_of,
    pod_of,
    rejection,
    runtime_settings,
)
from tests.unit.test_translate import (
    settings as make_settings,
)

FLAGS_FIELD = f"metadata.annotations[{ann.FLAGS}]"


def annotated(notes: dict[str, str], *containers: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return pod_of(*(containers or (main(),)), annotations=notes, **kw)


def flags(text: str, **config: Any) -> list[str]:
    """The directives a pod with these flags gets, in order."""
    config.setdefault("partition", "cpu")
    config.setdefault("gpu_partition", "gpu")
    plan = plan_of(annotated({ann.FLAGS: text}), make_settings(**config))
    return list(plan.directives)


def flag_rejection(text: str, **config: Any) -> PodRejected:
    config.setdefault("partition", "cpu")
    err = rejection(annotated({ann.FLAGS: text}), make_settings(**config))
    assert err.field == FLAGS_FIELD
    return err


# --- slurm-job.vk.io/flags ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--time=01:00:00", ["--time=01:00:00"]),
        ("--time 01:00:00", ["--time=01:00:00"]),
        ("-t 30", ["--time=30"]),
        ("-t30", ["--time=30"]),
        ("-p gpu --constraint=a100", ["--partition=gpu", "--constraint=a100"]),
        ("-pgpu", ["--partition=gpu"]),
        ("--exclusive", ["--exclusive"]),
        ("--exclusive=user", ["--exclusive=user"]),
        ("-N 2 --ntasks-per-node=4", ["--nodes=2", "--ntasks-per-node=4"]),
        ("-C 'a100&nvlink'", ["--constraint=a100&nvlink"]),
        (
            "--dependency=afterok:12:13 --mail-user=a@b.eu",
            ["--dependency=afterok:12:13", "--mail-user=a@b.eu"],
        ),
        ("--gres=gpu:a100:2", ["--gres=gpu:a100:2"]),
    ],
)
def test_flags_are_read_like_a_shell_and_written_in_canonical_form(
    text: str, expected: list[str]
) -> None:
    directives = flags(text, user_dependencies_allowed="any", user_mail_allowed="any")
    assert directives[-len(expected) :] == expected


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("--uid=0", "--uid"),
        ("--gid 0", "--gid"),
        ("--output=/etc/cron.d/x", "--output"),
        ("-o /etc/passwd", "--output"),
        ("--error=/tmp/e", "--error"),
        ("--chdir=/", "--chdir"),
        ("-D /home", "--chdir"),
        ("--comment=interlink-slurm:00000000-0000-0000-0000-000000000000", "--comment"),
        ("--open-mode=truncate", "--open-mode"),
        ("--wrap=id", "--wrap"),
        ("--parsable", "--parsable"),
        ("--export-file=/etc/shadow", "--export-file"),
        ("--export=ALL", "--export"),
        ("--array=1-10", "--array"),
    ],
)
def test_flags_the_plugin_owns_are_refused_naming_the_flag(text: str, name: str) -> None:
    err = flag_rejection(text)
    assert name in err.reason
    assert "set by interlink-slurm" in err.reason


@pytest.mark.parametrize(
    ("text", "name"),
    [("--job-name=test-pod-cfg -t 2800", "test-pod-cfg"), ("-J other -t 2800", "other")],
)
def test_a_pod_may_name_its_job_and_its_uid_stays_in_the_comment(text: str, name: str) -> None:
    # vk-test-set's pods carry the first text; the comment is what finds the job again.
    pod = annotated({ann.FLAGS: text})
    directives = list(plan_of(pod, make_settings(partition="cpu")).directives)
    names = [d for d in directives if d.startswith("--job-name")]
    assert names == [f"--job-name={name}"]
    assert "--time=2800" in directives
    assert f"--comment=interlink-slurm:{pod['metadata']['uid']}" in directives


def test_flag_outside_the_allowlist_is_refused_and_allowed_when_configured() -> None:
    err = flag_rejection("--nodelist=node01")
    assert "--nodelist" in err.reason and "not allowed" in err.reason
    assert flags("-w node01", user_flags_allowed=["--nodelist"])[-1] == "--nodelist=node01"
    assert "--time" in flag_rejection("--time=5", user_flags_allowed=["--nodelist"]).reason


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("--part=gpu", ["--part", "in full"]),  # sbatch would take the abbreviation
        ("--no-such-option", ["--no-such-option"]),
        ("-Z", ["-Z"]),
        ("gpu", ["'gpu'", "start with '-'"]),
        ("--time", ["--time", "needs a value"]),
        ("--exclusive --requeue=1", ["--requeue", "no value"]),
        ("--constraint='a b'", ["--constraint", "'a b'"]),
        ("--mail-user='$(id)'", ["--mail-user"]),
        ('--constraint="x;y"', ["--constraint"]),
        ("--time='1:00\n#SBATCH --uid=0'", ["--time"]),
        ("--time='01:00", ["split like a shell"]),
        ("--time=", ["empty value"]),
    ],
)
def test_malformed_or_unknown_flags_are_refused_naming_them(text: str, words: list[str]) -> None:
    err = flag_rejection(text)
    for w in words:
        assert w in err.reason, err.reason


def test_partition_must_be_one_the_site_configures() -> None:
    assert "--partition=gpu" in flags("-p gpu")
    err = flag_rejection("--partition=admin_prod", partition="cpu", gpu_partition="gpu")
    assert "admin_prod" in err.reason and "cpu, gpu" in err.reason
    err = flag_rejection("-p cpu,admin_prod")
    assert "admin_prod" in err.reason
    assert "--partition=special" in flags("-p special", user_partitions_allowed=["special"])


def test_partition_from_flags_replaces_the_plugins_choice() -> None:
    directives = flags("-p gpu")
    assert [d for d in directives if d.startswith("--partition")] == ["--partition=gpu"]


def test_account_flag_needs_the_sites_permission() -> None:
    err = flag_rejection("-A proj1", account="site")
    assert "--account" in err.reason
    directives = flags("-A proj1", account="site", allow_account_annotation=True)
    assert [d for d in directives if d.startswith("--account")] == ["--account=proj1"]


def test_qos_flag_limited_to_the_configured_list() -> None:
    assert "--qos=anything" in flags("-q anything", user_qos_allowed="any")
    err = flag_rejection("--qos=anything")
    assert "not allowed (allowed: none; the site lists them in user_qos_allowed)" in err.reason
    err = flag_rejection("--qos=boost_qos_lprod", user_qos_allowed=["normal", "boost_qos_dbg"])
    assert "boost_qos_lprod" in err.reason and "boost_qos_dbg, normal" in err.reason
    assert "--qos=normal" in flags("--qos=normal", user_qos_allowed=["normal"])


def test_user_flags_replace_the_same_option_once_and_memory_as_a_group() -> None:
    directives = flags("--mem-per-cpu=2G --cpus-per-task=4 --time=10")
    names = [d.split("=")[0] for d in directives]
    assert "--mem" not in names
    assert names.count("--cpus-per-task") == 1 and names.count("--time") == 1
    assert directives[-3:] == ["--mem-per-cpu=2G", "--cpus-per-task=4", "--time=10"]


def test_user_flags_come_after_the_sites_extra_options() -> None:
    directives = flags("--constraint=b", sbatch_extra=["--constraint=a", "--exclusive"])
    assert directives[-2:] == ["--exclusive", "--constraint=b"]


def test_user_time_cannot_pass_the_maximum() -> None:
    err = flag_rejection("--time=2-00:00:00", max_time="1-00:00:00")
    assert "--time=2-00:00:00" in err.reason and "86400" in err.reason
    assert "--time=12:00:00" in flags("-t 12:00:00", max_time="1-00:00:00")
    assert "--time" in flag_rejection("--time=UNLIMITED", max_time=3600).reason


def test_flags_end_up_as_sbatch_lines_before_the_first_command() -> None:
    plan = plan_of(annotated({ann.FLAGS: "-C a100 --exclusive"}))
    script = render_script(plan)
    assert "#SBATCH --constraint=a100\n#SBATCH --exclusive\n#\n" in script


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"user_flags_allowed": ["--uid"]}, ["user_flags_allowed", "--uid"]),
        ({"user_flags_allowed": ["--output"]}, ["user_flags_allowed", "--output"]),
        ({"user_flags_allowed": ["-t"]}, ["user_flags_allowed", "'-t'"]),
        ({"runtime_options_allowed": ["--evil"]}, ["runtime_options_allowed", "--evil"]),
        ({"user_partitions_allowed": ["a b"]}, ["user_partitions_allowed"]),
        ({"namespace_accounts": {"ns": "a;b"}}, ["namespace_accounts"]),
    ],
)
def test_config_of_user_flags_is_checked_at_start(config: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, data_root="/data/ils", **config)
    for w in words:
        assert w in str(info.value)


SBATCH_LINE_VALUE = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                ["-p", "-t", "--time", "-C", "--uid", "-o", "--exclusive", "-N", "--mem", "'", '"']
            ),
            SBATCH_LINE_VALUE,
        ),
        max_size=6,
    ).map(" ".join)
)
def test_any_flags_text_is_refused_or_becomes_safe_sbatch_lines(text: str) -> None:
    try:
        directives = flags(text)
    except PodRejected as err:
        assert err.field == FLAGS_FIELD
        return
    owned = {"--uid", "--output", "--chdir", "--comment", "--error", "--wrap"}
    for d in directives[5:]:
        assert d.split("=")[0] not in owned
        assert not any(c.isspace() or c in "'\"#$\\;`" for c in d), d


# --- pre-exec and wstunnel: the pod's own shell code --------------------------------------------

TUNNEL = "./wstunnel client -R tcp://[::]:8888:localhost:8888 ws://x.example.org:80 &"


def test_pre_exec_is_a_file_sourced_before_the_containers() -> None:
    code = "module load cuda/12.1\nexport OMP_NUM_THREADS=4 # it's mine"
    plan = plan_of(annotated({ann.PRE_EXEC: code}, init=[pg.container("setup", "pass")]))
    assert files(plan)["pre-exec.sh"].content.decode().endswith(code + "\n")
    assert files(plan)["pre-exec.sh"].mode == 0o600
    script = render_script(plan)
    assert code not in script
    lines = script.splitlines()
    assert lines.index(". ./pre-exec.sh") < next(
        i for i, line in enumerate(lines) if line.startswith("ils_container setup")
    )


def test_wstunnel_commands_run_in_the_background_before_the_containers() -> None:
    plan = plan_of(annotated({ann.WSTUNNEL: TUNNEL}))
    assert files(plan)["tunnel.sh"].content.decode().endswith(TUNNEL + "\n")
    script = render_script(plan)
    assert TUNNEL not in script
    start = script.index("exec setsid bash ../tunnel.sh")
    assert start < script.index("ils_container main")
    assert "trap ils_cleanup EXIT" in script
    assert 'kill -TERM -- "-$ILS_TUNNEL"' in script


@pytest.mark.parametrize("key", [ann.PRE_EXEC, ann.WSTUNNEL])
def test_shell_annotations_are_refused_when_the_site_forbids_user_shell(key: str) -> None:
    err = rejection(annotated({key: "echo hi"}), make_settings(allow_user_shell=False))
    assert err.field == f"metadata.annotations[{key}]"
    assert "allow_user_shell" in err.reason and key in err.reason


def test_empty_shell_annotations_are_ignored_even_when_forbidden() -> None:
    plan = plan_of(annotated({ann.PRE_EXEC: "  "}), make_settings(allow_user_shell=False))
    assert plan.pre_exec is None


# --- interlink.eu/pod-ip -----------------------------------------------------------------------


def env_of(plan: Any, name: str = "main") -> dict[str, str]:
    raw = files(plan)[f"containers/{name}.env"].content
    entries = [e.decode() for e in raw.split(b"\0") if e]
    return dict(e.split("=", 1) for e in entries)


def test_pod_ip_is_exported_in_the_job_and_given_to_every_container() -> None:
    plan = plan_of(
        annotated({ann.POD_IP: "10.244.1.7"}, main(), init=[pg.container("setup", "pass")])
    )
    assert "export POD_IP=10.244.1.7" in render_script(plan)
    assert env_of(plan)["APPTAINERENV_POD_IP"] == "10.244.1.7"
    assert env_of(plan, "setup")["APPTAINERENV_POD_IP"] == "10.244.1.7"


def test_pods_own_pod_ip_wins_over_the_annotation() -> None:
    c = main(env=[{"name": "POD_IP", "value": "1.2.3.4"}])
    plan = plan_of(annotated({ann.POD_IP: "10.0.0.1"}, c))
    assert env_of(plan)["APPTAINERENV_POD_IP"] == "1.2.3.4"


@pytest.mark.parametrize("value", ["10.0.0.1; id", "localhost", "999.1.1.1"])
def test_pod_ip_that_is_no_address_is_refused(value: str) -> None:
    err = rejection(annotated({ann.POD_IP: value}))
    assert err.field == f"metadata.annotations[{ann.POD_IP}]"


# --- singularity-options / singularity-mounts --------------------------------------------------


def argv(notes: dict[str, str], runtime: str = "apptainer", **config: Any) -> tuple[str, ...]:
    plan = plan_of(annotated(notes, main(command=["true"])), runtime_settings(runtime, **config))
    return plan.runtime_argv["main"]


def test_singularity_options_are_added_after_the_sites_options() -> None:
    a = argv({ann.SINGULARITY_OPTIONS: "--cleanenv --env A=1 --no-mount=tmp"})
    assert a[:10] == (
        "apptainer",
        "exec",
        "--workdir",
        f"{CONTAINER_TMP}/main",
        "--containall",
        "--cleanenv",
        "--env",
        "A=1",
        "--no-mount",
        "tmp",
    )


@pytest.mark.parametrize(
    "text", ["--bind /etc:/x", "--home=/root", "--fakeroot", "--add-caps ALL", "--writable"]
)
def test_singularity_options_outside_the_allowlist_are_refused(text: str) -> None:
    err = rejection(annotated({ann.SINGULARITY_OPTIONS: text}))
    assert err.field == f"metadata.annotations[{ann.SINGULARITY_OPTIONS}]"
    assert text.split()[0].split("=")[0] in err.reason


def test_singularity_options_allowlist_is_configurable() -> None:
    a = argv({ann.SINGULARITY_OPTIONS: "--fakeroot"}, runtime_options_allowed=["--fakeroot"])
    assert "--fakeroot" in a


@pytest.mark.parametrize("key", [ann.SINGULARITY_OPTIONS, ann.SINGULARITY_MOUNTS])
@pytest.mark.parametrize("runtime", ["enroot", "charliecloud"])
def test_singularity_annotations_are_refused_for_other_runtimes(key: str, runtime: str) -> None:
    err = rejection(
        annotated({key: "--nv"}), runtime_settings(runtime, host_path_prefixes=["/data"])
    )
    assert err.field == f"metadata.annotations[{key}]" and runtime in err.reason


def test_singularity_mounts_under_the_allowed_host_paths_are_bound() -> None:
    a = argv(
        {ann.SINGULARITY_MOUNTS: "--bind /work/p1/in:/in:ro,/work/p1/out -B=/scratch/x:/x"},
        host_path_prefixes=["/work/p1", "/scratch"],
    )
    i = a.index("--bind")
    assert a[i : i + 6] == (
        "--bind",
        "/work/p1/in:/in:ro",
        "--bind",
        "/work/p1/out:/work/p1/out:rw",
        "--bind",
        "/scratch/x:/x:rw",
    )


@pytest.mark.parametrize(
    "text", ["--bind /etc:/etc", "-B /work/p1/../../etc:/x", "--bind rel:/x", "--overlay /o"]
)
def test_singularity_mounts_outside_the_allowed_host_paths_are_refused(text: str) -> None:
    err = rejection(
        annotated({ann.SINGULARITY_MOUNTS: text}), make_settings(host_path_prefixes=["/work/p1"])
    )
    assert err.field == f"metadata.annotations[{ann.SINGULARITY_MOUNTS}]"


# --- MPI: mpi-flags, nodes, tasks per node, launcher --------------------------------------------


def test_mpi_flags_launch_the_containers_with_mpiexec_on_every_task() -> None:
    plan = plan_of(annotated({ann.MPI_FLAGS: "--bind-to core --map-by 'ppr:4:node'"}))
    c = plan.containers[0]
    assert c.launcher == (
        "mpiexec",
        "-np",
        ann.NTASKS,
        "--bind-to",
        "core",
        "--map-by",
        "ppr:4:node",
    )
    script = render_script(plan)
    assert (
        "ils_container main \\\n"
        '    -L 7 mpiexec -np "${SLURM_NTASKS:-1}" --bind-to core --map-by ppr:4:node \\\n'
        "    apptainer exec"
    ) in script


def test_nodes_and_tasks_per_node_annotations_shape_the_job() -> None:
    c = main(resources={"limits": {"cpu": "64", "memory": "64Gi", "nvidia.com/gpu": "8"}})
    notes = {ann.NODES: "2", ann.TASKS_PER_NODE: "4"}
    plan = plan_of(annotated(notes, c), make_settings(gpu_type="a100", gpus_per_node=4))
    assert option(plan, "--nodes") == "2"
    assert option(plan, "--ntasks-per-node") == "4"
    assert option(plan, "--ntasks") is None
    assert option(plan, "--cpus-per-task") == "8"  # 64 CPUs over 2 nodes x 4 tasks
    assert option(plan, "--mem") == "32768M"  # per node
    assert option(plan, "--gres") == "gpu:a100:4"  # per node
    assert plan.containers[0].launcher == ("srun",)


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_mpi_launcher_annotation_chooses_the_launcher(launcher: str) -> None:
    notes = {ann.MPI_LAUNCHER: launcher}
    notes[ann.MPI_FLAGS] = "--mpi=pmix" if launcher == "srun" else "--map-by=ppr:1:node"
    plan = plan_of(annotated(notes, init=[pg.container("setup", "pass")]))
    expected = (
        ("srun", "--mpi=pmix")
        if launcher == "srun"
        else ("mpirun", "-np", ann.NTASKS, "--map-by", "ppr:1:node")
    )
    assert plan.containers[0].launcher == expected
    assert plan.init_containers[0].launcher == ()  # init containers run once


@pytest.mark.parametrize("nodes_flag", ["--nodes=2", "-N 2", "-N2 --exclusive"])
def test_nodes_in_the_sbatch_flags_spread_a_launched_pods_node_directories(
    nodes_flag: str,
) -> None:
    # The launcher runs on both nodes: each needs the containers' /tmp, as with ann.NODES.
    notes = {ann.FLAGS: nodes_flag, ann.MPI_LAUNCHER: "srun"}
    plan = plan_of(annotated(notes))
    assert option(plan, "--nodes") == "2"
    script = render_script(plan)
    assert 'srun --nodes=2 --ntasks=2 --ntasks-per-node=1 mkdir -m 700 -- "$ILS_TMP"' in script
    assert script.count("#SBATCH --nodes=") == 1


def test_nodes_in_the_sbatch_flags_without_a_launcher_run_the_containers_once() -> None:
    # As the reference plugin: the job holds the nodes, the containers run on the first.
    plan = plan_of(annotated({ann.FLAGS: "--nodes=2"}))
    assert option(plan, "--nodes") == "2"
    assert plan.containers[0].launcher == ()
    assert "srun" not in render_script(plan)


def test_a_node_range_in_the_sbatch_flags_of_a_launched_pod_is_refused() -> None:
    err = rejection(annotated({ann.FLAGS: "--nodes=2-4", ann.MPI_FLAGS: "true"}))
    assert err.field == f"metadata.annotations[{ann.FLAGS}]"
    assert "--nodes=2-4" in str(err) and ann.NODES in str(err)


@pytest.mark.parametrize(
    ("key", "value"),
    [(ann.NODES, "0"), (ann.NODES, "two"), (ann.TASKS_PER_NODE, "-1"), (ann.MPI_LAUNCHER, "pdsh")],
)
def test_bad_mpi_annotations_are_refused_naming_them(key: str, value: str) -> None:
    assert rejection(annotated({key: value})).field == f"metadata.annotations[{key}]"


def test_single_node_pod_has_no_launcher() -> None:
    plan = plan_of(annotated({}))
    assert plan.containers[0].launcher == ()
    assert "ils_container main apptainer" in render_script(plan)


def test_script_with_every_annotation_is_valid_bash() -> None:
    notes = {
        ann.FLAGS: "-C a100 --exclusive",
        ann.PRE_EXEC: "echo 'pre' && export X=1",
        ann.WSTUNNEL: TUNNEL,
        ann.POD_IP: "10.0.0.9",
        ann.MPI_FLAGS: "--bind-to core",
        ann.NODES: "2",
    }
    script = render_script(plan_of(annotated(notes)))
    run = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_every_flag_allowed_by_default_can_also_go_through_slurmrestd() -> None:
    from interlink_slurm.slurm import rest

    assert set(ann.DEFAULT_USER_FLAGS_ALLOWED) <= rest.TRANSLATED


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("--ntasks-per-node=4", "--ntasks"),
        ("--gpus=2", "--gres"),
        ("--gpus-per-node=2", "--gres"),
        ("--gres=gpu:a100:1,nvme:1", None),
    ],
)
def test_user_flags_replace_the_plugins_option_of_the_same_group(
    text: str, gone: str | None
) -> None:
    c = main(resources={"limits": {"nvidia.com/gpu": "2"}})
    plan = plan_of(annotated({ann.FLAGS: text}, c), make_settings(gpu_type="a100"))
    names = [d.split("=")[0] for d in plan.directives]
    if gone:
        assert gone not in names
    assert plan.directives[-1] == text
    assert len(names) == len(set(names))
