"""What one pod may ask on a site (issue 16): the MPI launcher's options through their table,
the pod's variables kept from Slurm and the launchers, counts and sizes, and the sbatch options
that need the site's own list."""

from __future__ import annotations

from typing import Any

import pytest

from interlink_slurm.config import ConfigError, load_settings
from interlink_slurm.errors import PodRejected
from interlink_slurm.launcher_options import (
    DEFAULT_MPI_FLAGS_ALLOWED,
    LAUNCHER_OPTIONS,
    MPIEXEC,
    MPIRUN,
    SRUN,
    scan_launcher_options,
)
from interlink_slurm.sbatch_options import OptionError
from interlink_slurm.translate import annotations as ann
from interlink_slurm.translate.runtimes import launcher_heeded
from tests import podgen as pg
from tests.unit.test_annotations import flag_rejection
from tests.unit.test_annotations import flags as flags_of
from tests.unit.test_translate import main, plan_of, pod_of, rejection, runtime_settings
from tests.unit.test_translate import settings as make_settings

MPI_FIELD = f"metadata.annotations[{ann.MPI_FLAGS}]"


def launcher_of(launcher: str, flags: str, **config: Any) -> tuple[str, ...]:
    annotations = {ann.MPI_LAUNCHER: launcher, ann.MPI_FLAGS: flags}
    plan = plan_of(pod_of(main(), annotations=annotations), make_settings(**config))
    return plan.containers[0].launcher


def mpi_rejection(launcher: str, flags: str, **config: Any) -> PodRejected:
    annotations = {ann.MPI_LAUNCHER: launcher, ann.MPI_FLAGS: flags}
    err = rejection(pod_of(main(), annotations=annotations), make_settings(**config))
    assert err.field == MPI_FIELD
    return err


# --- the launcher-option table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "line", "expected"),
    [
        (SRUN, "--mpi=pmix", [("--mpi", "--mpi", ["pmix"])]),
        (SRUN, "--cpu-bind cores", [("--cpu-bind", "--cpu-bind", ["cores"])]),
        (SRUN, "-lu", [("-l", "--label", []), ("-u", "--unbuffered", [])]),
        (SRUN, "-mblock", [("-m", "--distribution", ["block"])]),
        (SRUN, "-K", [("-K", "--kill-on-bad-exit", [])]),
        (MPIRUN, "-bind-to core", [("-bind-to", "--bind-to", ["core"])]),
        (MPIRUN, "--map-by=ppr:2:node", [("--map-by", "--map-by", ["ppr:2:node"])]),
        (MPIRUN, "-x FOO", [("-x", "-x", ["FOO"])]),
        (MPIRUN, "--mca btl self", [("--mca", "--mca", ["btl", "self"])]),
        (MPIEXEC, "-genv A 1", [("-genv", "--genv", ["A", "1"])]),
        (MPIEXEC, "-ppn 2", [("-ppn", "--ppn", ["2"])]),
    ],
)
def test_launcher_options_are_read_as_the_launcher_reads_them(
    table: Any, line: str, expected: list[tuple[str, str, list[str]]]
) -> None:
    assert scan_launcher_options(line.split(), table) == expected


@pytest.mark.parametrize(
    ("table", "line", "says"),
    [
        (SRUN, "bash -c 'id' x", "'bash' is not an srun option"),
        (SRUN, "--cpu", "'--cpu' is not an srun option (write it in full)"),
        (SRUN, "--mpi", "--mpi needs a value"),
        (SRUN, "--label=1", "--label takes no value"),
        (MPIRUN, "-np 4", "-np is set by interlink-slurm"),
        (MPIRUN, "--mca btl", "--mca needs two values"),
        (MPIRUN, "--no-such", "'--no-such' is not a mpirun option this plugin knows"),
        (MPIEXEC, "true", "'true' is not a mpiexec option"),
    ],
)
def test_what_is_not_an_option_of_the_launcher_is_refused(table: Any, line: str, says: str) -> None:
    with pytest.raises(OptionError) as err:
        scan_launcher_options(line.split(), table)
    assert says in str(err.value)


def test_the_default_allowlists_hold_no_option_that_acts_on_the_host() -> None:
    for launcher, names in DEFAULT_MPI_FLAGS_ALLOWED.items():
        table = LAUNCHER_OPTIONS[launcher]
        assert set(names) <= set(table.options)
        assert not set(names) & table.host


# What the probe found open, and the rest of each launcher's ways to the host.
HOST_FLAGS = [
    ("srun", "bash -c 'touch /var/tmp/X' x", "'bash' is not an srun option"),
    ("srun", "--output=/var/tmp/X", "srun option --output runs a program, names a file"),
    ("srun", "-o /var/tmp/X", "srun option -o runs a program"),
    ("srun", "--task-prolog=/var/tmp/p.sh", "--task-prolog runs"),
    ("srun", "--chdir=/var/tmp", "--chdir runs"),
    ("srun", "-D/var/tmp", "-D runs"),
    ("srun", "--export=ALL,LD_PRELOAD=/x.so", "--export runs"),
    ("srun", "--uid=0", "--uid runs"),
    ("srun", "--jobid=1", "--jobid runs"),
    ("srun", "--multi-prog", "--multi-prog runs"),
    ("srun", "--bcast=/var/tmp/x", "--bcast runs"),
    ("mpirun", "-x LD_PRELOAD=/x.so", "mpirun option -x runs"),
    ("mpirun", "--mca plm_rsh_agent /var/tmp/a", "--mca runs"),
    ("mpirun", "-launch-agent /var/tmp/a", "-launch-agent runs"),
    ("mpirun", "--output-filename /var/tmp/o", "--output-filename runs"),
    ("mpirun", "-wdir /var/tmp", "-wdir runs"),
    ("mpiexec", "-genv SLURM_TASK_PROLOG /x", "mpiexec option -genv runs"),
    ("mpiexec", "-launcher-exec /var/tmp/a", "-launcher-exec runs"),
    ("mpiexec", "-outfile-pattern /var/tmp/o", "-outfile-pattern runs"),
]


@pytest.mark.parametrize(("launcher", "flags", "says"), HOST_FLAGS)
def test_launcher_options_that_act_on_the_host_are_refused_naming_the_flag(
    launcher: str, flags: str, says: str
) -> None:
    err = mpi_rejection(launcher, flags, allow_user_shell=False)
    assert says in err.reason


def test_a_site_that_runs_pod_shell_code_may_allow_a_host_option() -> None:
    allowed = {"srun": ["--export", "--mpi"]}
    assert launcher_of("srun", "--export=ALL --mpi=pmix", mpi_flags_allowed=allowed) == (
        "srun",
        "--export=ALL",
        "--mpi=pmix",
    )
    # ...but not with allow_user_shell: false, where the configuration itself is refused.
    with pytest.raises(ConfigError, match=r"mpi_flags_allowed\.srun: --export acts on the host"):
        load_settings(None, data_root="/tmp/x", allow_user_shell=False, mpi_flags_allowed=allowed)


def test_a_launcher_option_off_the_allowlist_is_refused_with_the_list() -> None:
    err = mpi_rejection("srun", "--ntasks=64")
    assert "srun option --ntasks is not allowed here" in err.reason
    assert "--cpu-bind" in err.reason and "mpi_flags_allowed" in err.reason


def test_allowed_launcher_options_are_written_in_the_launchers_own_form() -> None:
    assert launcher_of("srun", "-m block --cpu-bind cores -l") == (
        "srun",
        "--distribution=block",
        "--cpu-bind=cores",
        "--label",
    )
    assert launcher_of("mpiexec", "-bind-to core -map-by=ppr:4:node") == (
        "mpiexec",
        "-np",
        ann.NTASKS,
        "--bind-to",
        "core",
        "--map-by",
        "ppr:4:node",
    )


def test_a_value_that_would_read_as_an_option_is_refused() -> None:
    err = mpi_rejection("mpirun", "--bind-to=-x")
    assert "'-x' is not a value" in err.reason


def test_config_refuses_an_unknown_launcher_option() -> None:
    with pytest.raises(ConfigError, match=r"mpi_flags_allowed\.mpirun: '--bogus' is not"):
        load_settings(None, data_root="/tmp/x", mpi_flags_allowed={"mpirun": ["--bogus"]})


# --- the pod's environment ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "SLURM_STDOUTMODE",
        "SLURM_TASK_PROLOG",
        "SLURM_PROLOG",
        "SLURM_WORKING_DIR",
        "SLURM_EXPORT_ENV",
        "SRUN_EXPORT_ENV",
        "SALLOC_PARTITION",
        "SBATCH_QOS",
        "OMPI_MCA_plm_rsh_agent",
        "PRTE_MCA_plm",
        "PMIX_MCA_pmdl",
        "PMI_FD",
        "PMIX_RANK",
        "HYDRA_LAUNCHER_EXEC",
        "MPIEXEC_TIMEOUT",
        "I_MPI_HYDRA_BOOTSTRAP_EXEC",
    ],
)
def test_env_names_a_launcher_acts_on_are_refused_without_user_shell(name: str) -> None:
    assert launcher_heeded(name)
    c = main(env=[{"name": "OK", "value": "1"}, {"name": name, "value": "/var/tmp/X"}])
    for runtime in ("apptainer", "charliecloud"):
        err = rejection(pod_of(c), runtime_settings(runtime, allow_user_shell=False))
        assert err.field == "spec.containers[0].env[1].name"
        assert name in err.reason and "allow_user_shell: false" in err.reason
    # A site that runs pods' shell code keeps them: the job applies them after the launcher.
    plan = plan_of(pod_of(c), make_settings())
    assert (name, "/var/tmp/X") in plan.containers[0].env


@pytest.mark.parametrize("name", ["SLURMISH", "MY_SLURM_X", "OMPI", "PATH_X", "HOME"])
def test_other_env_names_are_kept_without_user_shell(name: str) -> None:
    c = main(env=[{"name": name, "value": "v"}])
    plan = plan_of(pod_of(c), make_settings(allow_user_shell=False))
    assert (name, "v") in plan.containers[0].env


def test_an_init_containers_env_is_named_in_its_own_list() -> None:
    p = pod_of(main(), init=[pg.container("setup", "pass", env=[{"name": "PMI_X", "value": "1"}])])
    err = rejection(p, make_settings(allow_user_shell=False))
    assert err.field == "spec.initContainers[0].env[0].name"


def test_env_beyond_the_size_limit_is_refused_naming_the_limit() -> None:
    env = [{"name": f"V{i}", "value": "x" * 1000} for i in range(3)]
    assert plan_of(pod_of(main(env=env)), make_settings(max_env_bytes_per_container=4096))
    err = rejection(pod_of(main(env=env)), make_settings(max_env_bytes_per_container=2048))
    assert err.field == "spec.containers[0].env"
    assert "3012 bytes" in err.reason and "max_env_bytes_per_container" in err.reason


# --- containers per pod ---------------------------------------------------------------------------


def test_containers_beyond_the_limit_are_refused_naming_the_limit() -> None:
    many = [pg.container(f"c{i}", "pass") for i in range(64)]
    assert len(plan_of(pod_of(*many), make_settings()).containers) == 64
    err = rejection(pod_of(*many, init=[pg.container("setup", "pass")]), make_settings())
    assert err.field == "spec.containers"
    assert "65 containers" in err.reason and "max_containers_per_pod" in err.reason
    err = rejection(pod_of(*many[:3]), make_settings(max_containers_per_pod=2))
    assert "more than the 2 a pod may have" in err.reason


# --- sbatch options that need the site's list -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("--qos=high", "user_qos_allowed"),
        ("--reservation=maint", "user_reservations_allowed"),
        ("--dependency=afterok:4242", "user_dependencies_allowed"),
        ("-d singleton", "user_dependencies_allowed"),
        ("--mail-user=someone@example.org", "user_mail_allowed"),
    ],
)
def test_listed_options_are_refused_until_the_site_lists_their_values(text: str, key: str) -> None:
    err = flag_rejection(text)
    assert f"the site lists them in {key}" in err.reason
    assert err.reason.startswith(("--qos", "--reservation", "--dependency", "--mail-user"))
    assert flags_of(text, **{key: "any"})[-1] == text.replace("-d ", "--dependency=")


def test_listed_values_are_checked_one_by_one() -> None:
    allow = {
        "user_reservations_allowed": ["maint"],
        "user_dependencies_allowed": ["afterok", "singleton"],
        "user_mail_allowed": ["boss@site.org", "@lab.site.org"],
    }
    text = (
        "--reservation=maint --dependency=afterok:1:2,singleton "
        "--mail-user=a@lab.site.org,boss@site.org"
    )
    assert flags_of(text, **allow)[-3:] == text.split()
    assert "--dependency afterany" in flag_rejection("-d afterok:1,afterany:2", **allow).reason
    assert "x@evil.org" in flag_rejection("--mail-user=a@lab.site.org,x@evil.org", **allow).reason
    assert "a@site.org" in flag_rejection("--mail-user=a@site.org", **allow).reason
    assert "other" in flag_rejection("--reservation=other", **allow).reason


@pytest.mark.parametrize("value", ["-5", "-0", "+3", "x"])
def test_nice_takes_only_non_negative_values(value: str) -> None:
    err = flag_rejection(f"--nice={value}")
    assert f"--nice={value}: only a whole number of 0 or more" in err.reason


@pytest.mark.parametrize("text", ["--nice=0", "--nice=100", "--nice"])
def test_nice_may_lower_the_pods_own_priority(text: str) -> None:
    assert flags_of(text)[-1] == text


def test_config_checks_the_listed_values() -> None:
    with pytest.raises(ConfigError, match="user_mail_allowed"):
        load_settings(None, data_root="/tmp/x", user_mail_allowed=["nobody"])
    with pytest.raises(ConfigError, match="user_dependencies_allowed"):
        load_settings(None, data_root="/tmp/x", user_dependencies_allowed=["afterall"])
    with pytest.raises(ConfigError, match="image_roots"):
        load_settings(None, data_root="/tmp/x", image_roots=["images"])
